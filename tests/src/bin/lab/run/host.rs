//! `cargo xtask run --scenario host` (the default): seed §4, doolittle ↔ calculon.

use anyhow::{Context, Result};
use ipip_tests::perf::Iperf;
use ipip_tests::traffic::{ping, tcp_transfer};
use ipip_tests::{HostToHost, IpipUser, Node, Underlay};

use super::indent;

pub fn run(keep: bool) -> Result<()> {
    println!("==> creating namespaces doolittle and calculon (seed §4)");
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    for n in [d, c] {
        println!(
            "    {:<9} netns {:<22} {} {}/24, owns {} ({} on lo), peers file {}",
            n.name,
            n.ns.name(),
            n.iface,
            n.underlay,
            n.prefix,
            n.private,
            n.peers.display()
        );
    }
    println!(
        "==> {} peers file:\n{}",
        d.name,
        indent(&std::fs::read_to_string(&d.peers)?)
    );
    show_ping(d, c, 1, "before attach (no route: expected to fail)")?;
    for n in [d, c] {
        attach(&ipip, n)?;
    }
    for n in [d, c] {
        println!("==> {}: ip route show proto 156", n.name);
        print!(
            "{}",
            indent(&n.ns.exec(&["ip", "route", "show", "proto", "156"])?)
        );
    }
    show_ping(d, c, 3, "through the tunnel")?;
    show_ping(c, d, 3, "through the tunnel")?;
    for (from, to, port) in [(d, c, 7001), (c, d, 7002)] {
        let len = 8 << 20;
        println!(
            "==> TCP: {} → {}:{port}, 8 MiB, every byte checked",
            from.name, to.private
        );
        let x = tcp_transfer(&from.ns, &to.ns, to.private, port, len)?;
        println!("    {} bytes arrived intact", x.bytes);
    }
    iperf(d, c)?;
    println!("==> detaching doolittle (seed §4.7: `ifconfig tunl1 down`)");
    print!("{}", indent(&ipip.detach(&d.ns, d.iface)?));
    show_ping(d, c, 1, "after detach (expected to fail)")?;
    attach(&ipip, d)?;
    show_ping(d, c, 3, "after attaching again")?;
    for n in [d, c] {
        println!("==> {}: ipip-user stats", n.name);
        print!("{}", indent(&ipip.run(&n.ns, &["stats"])?));
    }
    if keep {
        keep_up(t, &ipip);
        return Ok(());
    }
    println!("==> cleaning up");
    for n in [d, c] {
        ipip.detach(&n.ns, n.iface)
            .with_context(|| format!("detach on {}", n.name))?;
    }
    let names: Vec<String> = [d, c].iter().map(|n| n.ns.name().to_string()).collect();
    drop(t);
    let left = crate::stdout_of(&["ip", "netns", "list"]).unwrap_or_default();
    anyhow::ensure!(
        !names.iter().any(|n| left.contains(n.as_str())),
        "namespaces still present after cleanup:\n{left}"
    );
    println!("==> done: namespaces {} removed", names.join(", "));
    Ok(())
}

fn attach(ipip: &IpipUser, n: &Node) -> Result<()> {
    println!(
        "==> {}: ipip-user attach {} --peers {}",
        n.name,
        n.iface,
        n.peers.display()
    );
    let out = ipip.attach(&n.ns, n.iface, &n.peers)?;
    print!("{}", indent(&out));
    Ok(())
}

/// Throughput through the tunnel, and plain routing on the same veth next to it (2-second
/// iperf3 runs; skipped without iperf3).
fn iperf(from: &Node, to: &Node) -> Result<()> {
    if crate::stdout_of(&["iperf3", "--version"]).is_none() {
        println!("==> iperf3 not installed; skipping the throughput run");
        return Ok(());
    }
    println!(
        "==> iperf3 TCP {} → {} for 2 s, through the tunnel and then without it",
        from.name, to.name
    );
    let run = |src, dst, port| {
        Iperf {
            client: &from.ns,
            server: &to.ns,
            src,
            dst,
            port,
            seconds: 2,
            pin: None,
        }
        .tcp(1)
    };
    let tunnel = run(from.private, to.private, 5201)?;
    let plain = run(from.underlay, to.underlay, 5202)?;
    println!(
        "    ipip {:.1} Gbit/s, plain routing {:.1} Gbit/s on the same veth ({:.0}%)",
        tunnel.gbit_s,
        plain.gbit_s,
        100.0 * tunnel.gbit_s / plain.gbit_s
    );
    Ok(())
}

fn show_ping(from: &Node, to: &Node, count: u32, what: &str) -> Result<()> {
    println!(
        "==> {}: ping -c {count} -I {} {} ({what})",
        from.name, from.private, to.private
    );
    let out = ping(&from.ns, from.private, to.private, count)?;
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    print!("{}", indent(&String::from_utf8_lossy(&out.stderr)));
    println!(
        "    => {}",
        if out.status.success() {
            "replies received"
        } else {
            "no replies"
        }
    );
    Ok(())
}

fn keep_up(t: HostToHost, ipip: &IpipUser) {
    let bin = ipip.path().display().to_string();
    println!(
        "==> leaving the topology up (--keep); peers files in {}",
        t.dir().display()
    );
    for n in [&t.doolittle, &t.calculon] {
        println!(
            "    step into {}:  nsenter --net=/run/netns/{} bash",
            n.name,
            n.ns.name()
        );
    }
    println!("    clean up:");
    for n in [&t.doolittle, &t.calculon] {
        println!(
            "      {bin} --netns {ns} detach {}; ip netns del {ns}",
            n.iface,
            ns = n.ns.name()
        );
    }
    println!("      rm -r {}", t.dir().display());
    std::mem::forget(t);
}
