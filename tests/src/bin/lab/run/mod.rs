//! `cargo xtask run`: the seed's examples in network namespaces: §4 host to host
//! ([`host`]), §5 desktop to cluster ([`cluster`]), §6 gateway to gateway ([`gateways`]).

mod cluster;
mod fleet;
mod gateways;
mod host;

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use ipip_tests::topology::build::wire_checksums;
use ipip_tests::topology::TunnelHost;
use ipip_tests::traffic::{ping_ttl, tcp_source_seen, tcp_transfer};
use ipip_tests::{DataPath, IpipUser, Netns};

#[derive(Clone, Copy, ValueEnum)]
pub enum Scenario {
    /// Seed §4: host to host, doolittle ↔ calculon.
    Host,
    /// Seed §5: desktop doolittle → head node ps3 → compute node jill.
    Cluster,
    /// Seed §6: desktop calculon → gateway doolittle → head node rfe → compute node comp000,
    /// with NAT on rfe and a spoofer on the public segment.
    Gateways,
    /// Seed §4 with calculon a stock Linux box (Debian's kernel under qemu, `ip tunnel add
    /// tunl1 mode ipip`) and doolittle our endpoint.
    LinuxPeer,
    /// Seed §6 at scale: sites that learn each other's prefixes from BGP (BIRD 2 and a
    /// route reflector) with `ipip-user run` in fleet mode.
    Fleet,
}

#[derive(Args)]
pub struct RunArgs {
    /// Which of the seed's examples to bring up.
    #[arg(long, value_enum, default_value = "host")]
    scenario: Scenario,
    /// Leave the namespaces up with the tunnel attached, and print how to step in.
    #[arg(long)]
    keep: bool,
    /// Gateways forward with the XDP fast path (`ipip-user attach ... --lan LAN`); cluster
    /// and gateways only.
    #[arg(long)]
    fast_path: bool,
}

pub fn run(args: &RunArgs) -> Result<()> {
    ipip_tests::require_root()?;
    if args.fast_path
        && matches!(
            args.scenario,
            Scenario::Host | Scenario::LinuxPeer | Scenario::Fleet
        )
    {
        anyhow::bail!(
            "--fast-path needs a gateway: use it with --scenario cluster or --scenario gateways \
             (in the host scenario nobody forwards)"
        );
    }
    let path = if args.fast_path {
        DataPath::Fast
    } else {
        DataPath::Kernel
    };
    match args.scenario {
        Scenario::Host => host::run(args.keep),
        Scenario::Cluster => cluster::run(args.keep, path),
        Scenario::Gateways => gateways::run(args.keep, path),
        Scenario::LinuxPeer => crate::guest::run_linux_peer(args.keep),
        Scenario::Fleet => fleet::run(args.keep),
    }
}

/// Indents every line by four spaces.
pub(crate) fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// Prints the namespaces of a topology.
fn list_namespaces(namespaces: &[(&str, &Netns)]) {
    for (name, ns) in namespaces {
        println!("    {name:<9} netns {}", ns.name());
    }
}

/// Prints a peers file.
fn show_peers(h: &TunnelHost) -> Result<()> {
    let text = std::fs::read_to_string(&h.peers)
        .with_context(|| format!("cannot read {}", h.peers.display()))?;
    println!(
        "==> {} peers file {}:\n{}",
        h.name,
        h.peers.display(),
        indent(&text)
    );
    Ok(())
}

/// Attaches every endpoint for `path` (switching TX checksum offload off everywhere first
/// for the fast path, see `wire_checksums`) and prints each command, what it said and the
/// routes it installed.
fn attach_all(
    ipip: &IpipUser,
    namespaces: &[(&str, &Netns)],
    hosts: &[&TunnelHost],
    path: DataPath,
) -> Result<()> {
    if path == DataPath::Fast {
        for (_, ns) in namespaces {
            wire_checksums(ns)?;
        }
    }
    for h in hosts {
        println!(
            "==> {}: ipip-user {}",
            h.name,
            h.attach_args(path).join(" ")
        );
        print!("{}", indent(&h.attach(ipip, path)?));
        println!("    routes it installed (ip route show proto 156):");
        print!(
            "{}",
            indent(&h.ns.exec(&["ip", "route", "show", "proto", "156"])?)
        );
    }
    Ok(())
}

/// `ping -c COUNT DST` from `from` (`name`), printed with its outcome.
fn show_ping(name: &str, from: &Netns, dst: Ipv4Addr, count: u32, what: &str) -> Result<bool> {
    println!("==> {name}: ping -c {count} {dst} ({what})");
    let out = ping_ttl(from, dst, count, None)?;
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    print!("{}", indent(&String::from_utf8_lossy(&out.stderr)));
    let ok = out.status.success();
    println!(
        "    => {}",
        if ok { "replies received" } else { "no replies" }
    );
    Ok(ok)
}

/// A TCP connection from `client` to `server`'s `dst:port`: prints the source the server saw.
fn show_source(
    what: &str,
    client: &Netns,
    server: &Netns,
    dst: Ipv4Addr,
    port: u16,
    note: &str,
) -> Result<()> {
    let seen = tcp_source_seen(client, server, dst, port).context(what.to_string())?;
    println!("==> TCP {what}: the server sees the connection from {seen} ({note})");
    Ok(())
}

/// An 8 MiB TCP transfer, every byte checked at the receiver.
fn show_transfer(
    what: &str,
    client: &Netns,
    server: &Netns,
    dst: Ipv4Addr,
    port: u16,
) -> Result<()> {
    let len = 8 << 20;
    println!("==> TCP {what} ({dst}:{port}), 8 MiB, every byte checked");
    let x = tcp_transfer(client, server, dst, port, len).context(what.to_string())?;
    println!(
        "    {} bytes arrived intact in {:.2?} ({:.2} Gbit/s)",
        x.bytes,
        x.elapsed,
        x.bytes as f64 * 8.0 / x.elapsed.as_secs_f64() / 1e9
    );
    Ok(())
}

/// `ipip-user stats` of each endpoint.
fn show_stats(ipip: &IpipUser, hosts: &[&TunnelHost]) -> Result<()> {
    for h in hosts {
        println!("==> {}: ipip-user stats", h.name);
        print!("{}", indent(&ipip.run(&h.ns, &["stats"])?));
    }
    Ok(())
}

/// What to type to step into a kept topology and to remove it.
fn print_keep(ipip: &IpipUser, namespaces: &[(&str, &Netns)], hosts: &[&TunnelHost], dir: &Path) {
    let bin = ipip.path().display().to_string();
    println!(
        "==> leaving the topology up (--keep); files in {}",
        dir.display()
    );
    for (name, ns) in namespaces {
        println!(
            "    step into {name}:{:pad$}nsenter --net=/run/netns/{} bash",
            "",
            ns.name(),
            pad = 10 - name.len().min(9)
        );
    }
    println!("    clean up:");
    for h in hosts {
        println!(
            "      {bin} --netns {} detach {}",
            h.ns.name(),
            h.underlay_if
        );
    }
    let names: Vec<&str> = namespaces.iter().map(|(_, ns)| ns.name()).collect();
    println!(
        "      for n in {}; do ip netns del $n; done",
        names.join(" ")
    );
    println!("      rm -r {}", dir.display());
}

/// Detaches every endpoint (the caller then drops the topology).
fn detach_all(ipip: &IpipUser, hosts: &[&TunnelHost]) -> Result<()> {
    println!("==> cleaning up");
    for h in hosts {
        print!("{}", indent(&h.detach(ipip)?));
    }
    Ok(())
}

/// Checks that the namespaces `names` are gone.
fn ensure_gone(names: &[String]) -> Result<()> {
    let left = crate::stdout_of(&["ip", "netns", "list"]).unwrap_or_default();
    let listed = |n: &String| {
        left.lines()
            .any(|l| l.split_whitespace().next() == Some(n.as_str()))
    };
    anyhow::ensure!(
        !names.iter().any(listed),
        "namespaces still present after cleanup:\n{left}"
    );
    println!("==> done: namespaces {} removed", names.join(", "));
    Ok(())
}
