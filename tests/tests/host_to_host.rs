//! Seed §4 (doolittle ↔ calculon) end to end: traffic, detach/attach, cleanup, counters,
//! spoofing and bad input. Every test builds its own namespaces (unique names, removed on
//! drop even when the test panics) and must run as root.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ipip_tests::ipip::describe;
use ipip_tests::packet::{icmp_echo, send_ipip};
use ipip_tests::query::{tcx_prog_count, BPF_TCX_EGRESS, BPF_TCX_INGRESS};
use ipip_tests::traffic::{eventually, must_ping_from, ping_ok, tcp_transfer};
use ipip_tests::{require_root, HostToHost, IpipUser, Node, Underlay};

fn topology(underlay: Underlay) -> Result<(HostToHost, IpipUser)> {
    require_root()?;
    let t = HostToHost::new(underlay)?;
    let ipip = IpipUser::new()?;
    Ok((t, ipip))
}

fn attach(ipip: &IpipUser, n: &Node) -> Result<()> {
    ipip.attach(&n.ns, n.iface, &n.peers)
        .with_context(|| format!("attach on {}", n.name))?;
    Ok(())
}

fn attach_both(ipip: &IpipUser, t: &HostToHost) -> Result<()> {
    attach(ipip, &t.doolittle)?;
    attach(ipip, &t.calculon)
}

/// `attach` with extra arguments (e.g. `--decap xdp`); returns what it printed.
fn attach_with(ipip: &IpipUser, n: &Node, extra: &[&str]) -> Result<String> {
    let peers = n.peers.to_string_lossy();
    let mut args = vec!["attach", n.iface, "--peers", &peers];
    args.extend_from_slice(extra);
    ipip.run(&n.ns, &args)
        .with_context(|| format!("attach {} on {}", extra.join(" "), n.name))
}

/// Pings `to`'s private address from `from`'s; fails with ping's output unless all replies came.
fn must_ping(from: &Node, to: &Node, count: u32) -> Result<()> {
    let what = format!("{} → {} from {}", from.name, to.name, from.private);
    must_ping_from(&from.ns, from.private, to.private, count, &what)
}

fn must_not_ping(from: &Node, to: &Node) -> Result<()> {
    ensure!(
        !ping_ok(&from.ns, from.private, to.private, 1)?,
        "ping {} → {} ({} → {}) got through but should not have",
        from.name,
        to.name,
        from.private,
        to.private
    );
    Ok(())
}

fn pinned(dir: &Path) -> Vec<String> {
    ipip_tests::netns::pins_under(dir, false)
}

fn stderr_and_stdout(out: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

// a.
#[test]
fn icmp_crosses_the_tunnel_both_ways() -> Result<()> {
    let (t, ipip) = topology(Underlay::Direct)?;
    let (d, c) = (&t.doolittle, &t.calculon);
    must_not_ping(d, c).context("before attach")?;
    must_not_ping(c, d).context("before attach")?;
    attach_both(&ipip, &t)?;
    must_ping(d, c, 3)?;
    must_ping(c, d, 3)?;
    Ok(())
}

/// `--decap auto` (the default) on a veth: TC ingress, and attach says why; `--decap xdp`
/// still gets XDP, and carries the same traffic.
#[test]
fn decap_hook_is_picked_per_interface_and_can_be_overridden() -> Result<()> {
    let (t, ipip) = topology(Underlay::Direct)?;
    let (d, c) = (&t.doolittle, &t.calculon);
    let out = attach_with(&ipip, d, &[])?;
    ensure!(
        out.contains("decap tc") && out.contains("veth") && out.contains("GSO"),
        "auto on a veth did not pick TC ingress with its reason:\n{out}"
    );
    let json = attach_with(&ipip, c, &["--decap", "xdp", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&json).context("attach --json")?;
    ensure!(
        v["decap"].as_str().is_some_and(|h| h.starts_with("xdp"))
            && v["decap_reason"] == "--decap xdp",
        "--decap xdp was not honoured: {v}"
    );
    let link = c.ns.exec(&["ip", "-d", "link", "show", c.iface])?;
    ensure!(link.contains("xdp"), "no XDP on {}: {link}", c.iface);
    let link = d.ns.exec(&["ip", "-d", "link", "show", d.iface])?;
    ensure!(
        !link.contains("xdp"),
        "XDP on {} with auto: {link}",
        d.iface
    );
    let status = ipip.run(&d.ns, &["status"])?;
    ensure!(status.contains("decap tc"), "status: {status}");
    // Mixed hooks, same wire: ICMP and TCP both ways.
    must_ping(d, c, 3)?;
    must_ping(c, d, 3)?;
    const LEN: usize = 2 << 20;
    for (from, to, port) in [(d, c, 5011), (c, d, 5012)] {
        let x = tcp_transfer(&from.ns, &to.ns, to.private, port, LEN)
            .with_context(|| format!("{} → {}", from.name, to.name))?;
        ensure!(x.bytes == LEN);
    }
    // Both ends on XDP.
    ipip.detach(&d.ns, d.iface)?;
    attach_with(&ipip, d, &["--decap", "xdp"])?;
    must_ping(d, c, 3)?;
    let x = tcp_transfer(&c.ns, &d.ns, d.private, 5013, LEN).context("calculon → doolittle")?;
    ensure!(x.bytes == LEN);
    Ok(())
}

// b.
#[test]
fn tcp_larger_than_the_mtu_arrives_intact_both_ways() -> Result<()> {
    let (t, ipip) = topology(Underlay::Direct)?;
    let (d, c) = (&t.doolittle, &t.calculon);
    attach_both(&ipip, &t)?;
    const LEN: usize = 4 << 20;
    let x = tcp_transfer(&d.ns, &c.ns, c.private, 5001, LEN).context("doolittle → calculon")?;
    ensure!(x.bytes == LEN);
    let x = tcp_transfer(&c.ns, &d.ns, d.private, 5002, LEN).context("calculon → doolittle")?;
    ensure!(x.bytes == LEN);
    Ok(())
}

// c. Seed §4.7: take one end down, traffic stops; bring it back, traffic flows.
#[test]
fn detach_stops_traffic_and_attach_restores_it() -> Result<()> {
    let (t, ipip) = topology(Underlay::Direct)?;
    let (d, c) = (&t.doolittle, &t.calculon);
    attach_both(&ipip, &t)?;
    must_ping(d, c, 1)?;
    ipip.detach(&d.ns, d.iface)?;
    must_not_ping(d, c).context("after detaching doolittle")?;
    must_not_ping(c, d).context("after detaching doolittle")?;
    attach(&ipip, d)?;
    must_ping(d, c, 3).context("after attaching doolittle again")?;
    must_ping(c, d, 3).context("after attaching doolittle again")?;
    Ok(())
}

fn routes_proto_156(n: &Node) -> Result<String> {
    Ok(n.ns
        .exec(&["ip", "-4", "route", "show", "table", "all", "proto", "156"])?
        .trim()
        .to_string())
}

// d.
#[test]
fn detach_leaves_nothing_behind() -> Result<()> {
    let (t, ipip) = topology(Underlay::Direct)?;
    // Without its private address on lo, each host gets its tunnel address from attach, and
    // detach must take it away again.
    for n in [&t.doolittle, &t.calculon] {
        n.ns.exec(&[
            "ip",
            "addr",
            "del",
            &format!("{}/32", n.private),
            "dev",
            "lo",
        ])?;
    }
    // doolittle gets the default hook (TC ingress on a veth), calculon XDP: detach must
    // remove either kind.
    attach(&ipip, &t.doolittle)?;
    attach_with(&ipip, &t.calculon, &["--decap", "xdp"])?;
    must_ping(&t.doolittle, &t.calculon, 1)?;
    for n in [&t.doolittle, &t.calculon] {
        // What attach made, so that its absence later means something.
        let addrs = n.ns.exec(&["ip", "-4", "-o", "addr", "show"])?;
        let tunnel = format!("{}/24", n.private);
        ensure!(
            addrs.contains(&tunnel),
            "{}: attach did not assign {tunnel}:\n{addrs}",
            n.name
        );
        ensure!(
            !pinned(&n.ns.pin_dir()).is_empty(),
            "{}: nothing pinned under {}",
            n.name,
            n.ns.pin_dir().display()
        );
        ensure!(
            !routes_proto_156(n)?.is_empty(),
            "{}: attach installed no route with proto 156",
            n.name
        );
        let link = n.ns.exec(&["ip", "-d", "link", "show", n.iface])?;
        let want_xdp = n.name == t.calculon.name;
        ensure!(
            link.contains("xdp") == want_xdp,
            "{}: XDP {} on {} after attach: {link}",
            n.name,
            if want_xdp { "missing" } else { "present" },
            n.iface
        );
    }
    for n in [&t.doolittle, &t.calculon] {
        ipip.detach(&n.ns, n.iface)?;
    }
    for n in [&t.doolittle, &t.calculon] {
        let left = pinned(&n.ns.pin_dir());
        ensure!(
            left.is_empty(),
            "{}: pins left after detach: {left:?}",
            n.name
        );
        let routes = routes_proto_156(n)?;
        ensure!(
            routes.is_empty(),
            "{}: routes left after detach:\n{routes}",
            n.name
        );
        let link = n.ns.exec(&["ip", "-d", "link", "show", n.iface])?;
        ensure!(
            !link.contains("xdp"),
            "{}: XDP still on {} after detach:\n{link}",
            n.name,
            n.iface
        );
        for (hook, ty) in [("ingress", BPF_TCX_INGRESS), ("egress", BPF_TCX_EGRESS)] {
            let count = tcx_prog_count(&n.ns, n.iface, ty)?;
            ensure!(
                count == 0,
                "{}: {count} TCX {hook} programs left on {}",
                n.name,
                n.iface
            );
            let out =
                n.ns.output(&["tc", "filter", "show", "dev", n.iface, hook])?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(
                !text.contains("bpf"),
                "{}: tc {hook} filter left on {}:\n{text}",
                n.name,
                n.iface
            );
        }
        let addrs = n.ns.exec(&["ip", "-4", "-o", "addr", "show"])?;
        let tunnel = format!("{}/", n.private);
        ensure!(
            !addrs.contains(&tunnel),
            "{}: tunnel address {} left after detach:\n{addrs}",
            n.name,
            n.private
        );
    }
    Ok(())
}

// e.
#[test]
fn stats_count_exactly_the_pings() -> Result<()> {
    let (t, ipip) = topology(Underlay::Direct)?;
    let (d, c) = (&t.doolittle, &t.calculon);
    attach_both(&ipip, &t)?;
    must_ping(d, c, 1)?; // resolves ARP on the underlay
    let d0 = ipip.peer_stats(&d.ns, d.iface, c.name)?;
    let c0 = ipip.peer_stats(&c.ns, c.iface, d.name)?;
    const N: u64 = 5;
    must_ping(d, c, N as u32)?;
    let d1 = ipip.peer_stats(&d.ns, d.iface, c.name)?;
    let c1 = ipip.peer_stats(&c.ns, c.iface, d.name)?;
    for (who, a, b) in [("doolittle", d0, d1), ("calculon", c0, c1)] {
        ensure!(
            b.tx_packets - a.tx_packets == N && b.rx_packets - a.rx_packets == N,
            "{who}: {N} pings should count {N} tx and {N} rx packets; before {a:?}, after {b:?}"
        );
        // 84-byte inner packets (20 IP + 8 ICMP + 56 data), counted with or without
        // the outer IP and Ethernet headers.
        for (dir, bytes) in [
            ("tx", b.tx_bytes - a.tx_bytes),
            ("rx", b.rx_bytes - a.rx_bytes),
        ] {
            ensure!(
                (N * 84..=N * (84 + 20 + 14)).contains(&bytes),
                "{who}: {dir}_bytes grew by {bytes} for {N} 84-byte pings; before {a:?}, after {b:?}"
            );
        }
    }
    Ok(())
}

// f.
#[test]
fn spoofed_ipip_is_dropped_and_counted() -> Result<()> {
    let (t, ipip) = topology(Underlay::Bridge)?;
    let (d, c) = (&t.doolittle, &t.calculon);
    let m = t.mallory.as_ref().context("bridge topology has mallory")?;
    attach_both(&ipip, &t)?;
    must_ping(d, c, 1)?;
    const N: u64 = 3;
    let before = ipip.peer_stats(&d.ns, d.iface, c.name)?;

    // Mallory is nobody's peer but claims to carry calculon's traffic.
    let unknown0 = ipip.reason(&d.ns, d.iface, "unknown_peer")?;
    let inner = icmp_echo(c.private, d.private, 0x4d41, 1, b"mallory was here");
    send_ipip(&m.ns, d.underlay, &inner, N as usize)?;
    eventually(Duration::from_secs(3), || {
        let now = ipip.reason(&d.ns, d.iface, "unknown_peer")?;
        ensure!(
            now - unknown0 == N,
            "unknown_peer went from {unknown0} to {now}, expected +{N}"
        );
        Ok(())
    })?;

    // Calculon is a peer, but 10.9.9.9 is not among the sources it may send.
    let spoofed0 = ipip.reason(&d.ns, d.iface, "spoofed_inner_source")?;
    let inner = icmp_echo(
        Ipv4Addr::new(10, 9, 9, 9),
        d.private,
        0x4d42,
        1,
        b"not from calculon",
    );
    send_ipip(&c.ns, d.underlay, &inner, N as usize)?;
    eventually(Duration::from_secs(3), || {
        let now = ipip.reason(&d.ns, d.iface, "spoofed_inner_source")?;
        ensure!(
            now - spoofed0 == N,
            "spoofed_inner_source went from {spoofed0} to {now}, expected +{N}"
        );
        Ok(())
    })?;

    let after = ipip.peer_stats(&d.ns, d.iface, c.name)?;
    ensure!(
        after.rx_packets == before.rx_packets && after.tx_packets == before.tx_packets,
        "spoofed packets were accepted or answered: before {before:?}, after {after:?}"
    );
    Ok(())
}

// g.
#[test]
fn bad_input_is_refused_clearly() -> Result<()> {
    let (t, ipip) = topology(Underlay::Direct)?;
    let (d, c) = (&t.doolittle, &t.calculon);
    let peers = d.peers.to_string_lossy().into_owned();

    let out = ipip.output(&d.ns, &["attach", "nosuch0", "--peers", &peers])?;
    let msg = stderr_and_stdout(&out);
    ensure!(
        !out.status.success(),
        "attach to a missing interface succeeded: {}",
        describe(&out)
    );
    ensure!(
        msg.contains("nosuch0"),
        "error does not name the interface: {msg}"
    );
    let left = pinned(&d.ns.pin_dir());
    ensure!(left.is_empty(), "failed attach left pins: {left:?}");

    // Refused before anything is touched: the loopback device, and a route that contains
    // the interface's own address (the file alone can't know it).
    let out = ipip.output(&d.ns, &["attach", "lo", "--peers", &peers])?;
    let msg = stderr_and_stdout(&out);
    ensure!(
        !out.status.success() && msg.contains("loopback"),
        "attach lo: {msg}"
    );
    let covering = t.dir().join("covering.toml");
    std::fs::write(
        &covering,
        format!(
            "[[peer]]\nname = \"calculon\"\nremote = \"{}\"\nroutes = [\"{}\", \"192.0.2.0/26\"]\n",
            c.underlay, c.prefix
        ),
    )?;
    let f = covering.to_string_lossy();
    let out = ipip.output(&d.ns, &["attach", d.iface, "--peers", &f])?;
    let msg = stderr_and_stdout(&out);
    ensure!(
        !out.status.success()
            && msg.contains("192.0.2.0/26")
            && msg.contains(&d.underlay.to_string()),
        "a route containing the interface's address was not refused clearly: {msg}"
    );
    let routes = routes_proto_156(d)?;
    ensure!(
        routes.is_empty() && pinned(&d.ns.pin_dir()).is_empty(),
        "refused attaches left routes or pins: {routes}"
    );

    attach_both(&ipip, &t)?;
    let out = ipip.output(&d.ns, &["attach", d.iface, "--peers", &peers])?;
    let msg = stderr_and_stdout(&out);
    ensure!(
        !out.status.success(),
        "second attach succeeded: {}",
        describe(&out)
    );
    let lower = msg.to_lowercase();
    ensure!(
        lower.contains("already attached") && lower.contains("detach"),
        "second attach should say it is already attached and mention detach: {msg}"
    );
    must_ping(d, c, 1).context("after the refused second attach")?;

    let syntax = t.dir().join("syntax.toml");
    std::fs::write(&syntax, "[tunnel]\naddress = \"10.0.1.1/24\"\nttl = = 3\n")?;
    let semantic = t.dir().join("semantic.toml");
    std::fs::write(
        &semantic,
        "[tunnel]\naddress = \"10.0.1.1/24\"\n\n[[peer]]\nname = \"calculon\"\nroutes = [\"10.0.2.0/24\"]\nremote = \"192.0.2.300\"\n",
    )?;
    for (file, line) in [(&syntax, 3), (&semantic, 7)] {
        let f = file.to_string_lossy();
        let out = ipip.output(&d.ns, &["check", &f])?;
        let msg = stderr_and_stdout(&out);
        ensure!(
            !out.status.success(),
            "check {f} succeeded: {}",
            describe(&out)
        );
        ensure!(
            msg.contains(&format!("{f}:{line}")),
            "check {f}: message lacks {f}:{line}: {msg}"
        );
    }
    Ok(())
}

// d'. An address attach found already there is not attach's to remove.
#[test]
fn detach_keeps_a_tunnel_address_it_did_not_add() -> Result<()> {
    let (t, ipip) = topology(Underlay::Direct)?;
    let d = &t.doolittle;
    attach_both(&ipip, &t)?;
    ipip.detach(&d.ns, d.iface)?;
    let addrs =
        d.ns.exec(&["ip", "-4", "-o", "addr", "show", "dev", "lo"])?;
    let own = format!("{}/32", d.private);
    ensure!(
        addrs.contains(&own),
        "detach removed the pre-existing {own} on lo:\n{addrs}"
    );
    Ok(())
}

/// Beyond the old fixed map sizes (1,024 peers, 16,384 routes): the maps follow the file.
/// 20,001 routes toward calculon are installed, carry traffic, and detach removes them all.
#[test]
fn maps_and_routes_follow_a_large_peers_file() -> Result<()> {
    let (t, ipip) = topology(Underlay::Direct)?;
    let (d, c) = (&t.doolittle, &t.calculon);
    const EXTRA: u32 = 20_000;
    let mut routes = vec![format!("\"{}\"", c.prefix)];
    let base = u32::from(Ipv4Addr::new(10, 100, 0, 0));
    routes.extend((0..EXTRA).map(|i| format!("\"{}/32\"", Ipv4Addr::from(base + i))));
    let file = t.dir().join("doolittle-large.toml");
    std::fs::write(
        &file,
        format!(
            "[[peer]]\nname = \"calculon\"\nremote = \"{}\"\nroutes = [{}]\n",
            c.underlay,
            routes.join(", ")
        ),
    )?;
    let peers = file.to_string_lossy();
    let started = std::time::Instant::now();
    let out = ipip.run(&d.ns, &["attach", d.iface, "--peers", &peers, "--json"])?;
    eprintln!(
        "attach with {} routes took {:.2?}",
        EXTRA + 1,
        started.elapsed()
    );
    let v: serde_json::Value = serde_json::from_str(&out).context("attach --json")?;
    ensure!(
        v["capacity"]["routes"].as_u64() == Some(65_536) && v["capacity"]["peers"] == 64,
        "capacity not sized from the file: {}",
        v["capacity"]
    );
    let installed = routes_proto_156(d)?.lines().count();
    ensure!(
        installed == (EXTRA + 1) as usize,
        "{installed} routes installed, not {}",
        EXTRA + 1
    );
    attach(&ipip, c)?;
    must_ping(d, c, 2)?;
    let started = std::time::Instant::now();
    ipip.detach(&d.ns, d.iface)?;
    eprintln!("detach took {:.2?}", started.elapsed());
    let left = routes_proto_156(d)?;
    ensure!(
        left.is_empty(),
        "{} routes left after detach",
        left.lines().count()
    );
    Ok(())
}
