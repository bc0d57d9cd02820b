//! Seed §5 (desktop doolittle → head node ps3 → compute node jill) end to end, on the kernel
//! path and on the fast path. Every test builds its own namespaces (unique names, removed on
//! drop even when the test panics) and must run as root.
//!
//! FAST PATH: the `fast_path_*` tests attach ps3 with `--lan eth1` (XDP on the cluster-facing
//! interface). They fail with "unexpected argument '--lan'" until ipip-user has that option.

use std::net::IpAddr;

use anyhow::{ensure, Context, Result};
use ipip_tests::topology::cluster::{JILL, PS3, PS3_LAN, PS3_TUNNEL};
use ipip_tests::traffic::{must_ping, ping_ttl, tcp_source_seen, tcp_transfer, time_exceeded_from};
use ipip_tests::{require_root, Cluster, DataPath, IpipUser};

const LEN: usize = 4 << 20;

fn attached(path: DataPath) -> Result<(Cluster, IpipUser)> {
    require_root()?;
    let t = Cluster::new()?;
    let ipip = IpipUser::new()?;
    t.attach(&ipip, path)?;
    Ok((t, ipip))
}

/// The topology alone: the sites reach each other only through wan, and jill is out of
/// doolittle's reach until the tunnel is up.
#[test]
fn underlay_is_routed_and_the_cluster_is_private() -> Result<()> {
    require_root()?;
    let t = Cluster::new()?;
    must_ping(&t.doolittle.ns, PS3, 2, "doolittle → ps3 (via wan)")?;
    must_ping(&t.jill.ns, PS3_LAN, 2, "jill → ps3")?;
    let routes = t
        .doolittle
        .ns
        .exec(&["ip", "-4", "route", "get", &PS3.to_string()])?;
    ensure!(
        routes.contains("via 192.0.2.250"),
        "ps3 should be reached through wan, not on-link: {routes}"
    );
    let out = ping_ttl(&t.doolittle.ns, JILL, 1, None)?;
    ensure!(
        !out.status.success(),
        "doolittle reached jill without a tunnel"
    );
    Ok(())
}

fn carries_ping_and_tcp_both_ways(path: DataPath) -> Result<()> {
    let (t, ipip) = attached(path)?;
    let (d, p, j) = (&t.doolittle, &t.ps3, &t.jill);
    must_ping(&d.ns, JILL, 3, "doolittle → jill")?;
    must_ping(&j.ns, d.tunnel, 3, "jill → doolittle")?;
    must_ping(&d.ns, PS3_TUNNEL, 2, "doolittle → ps3's tunnel address")?;

    // Seed §5.4: "Last login: ... from 10.200.100.100".
    let seen = tcp_source_seen(&d.ns, &j.ns, JILL, 2201).context("doolittle → jill")?;
    ensure!(
        seen.ip() == IpAddr::V4(d.tunnel),
        "jill saw the connection from {seen}, expected doolittle's tunnel address {}",
        d.tunnel
    );

    // The path counters are read around the transfers, and checked after them: the traffic
    // must cross whatever the counters say.
    let d0 = ipip.paths(&d.ns, d.underlay_if);
    let p0 = ipip.paths(&p.ns, p.underlay_if);
    let x = tcp_transfer(&d.ns, &j.ns, JILL, 2202, LEN).context("doolittle → jill")?;
    ensure!(x.bytes == LEN);
    let x = tcp_transfer(&j.ns, &d.ns, d.tunnel, 2203, LEN).context("jill → doolittle")?;
    ensure!(x.bytes == LEN);
    let dd = ipip.paths(&d.ns, d.underlay_if)?.since(&d0?);
    let dp = ipip.paths(&p.ns, p.underlay_if)?.since(&p0?);
    // ps3 forwards: on the fast path its XDP programs must have done the bulk of it (4 MiB
    // is ~2900 full-sized segments each way).
    dp.check("ps3", path, 1000)?;
    // doolittle has no LAN: it attaches the same way on both paths.
    dd.check("doolittle", DataPath::Kernel, 0)?;
    Ok(())
}

#[test]
fn kernel_path_carries_ping_and_tcp_both_ways() -> Result<()> {
    carries_ping_and_tcp_both_ways(DataPath::Kernel)
}

/// FAST PATH (needs `ipip-user attach --lan`).
#[test]
fn fast_path_carries_ping_and_tcp_both_ways() -> Result<()> {
    carries_ping_and_tcp_both_ways(DataPath::Fast)
}

/// A router answers TTL expiry, on either side of ps3:
/// - jill → doolittle with TTL 1 expires when ps3 forwards it toward the tunnel;
/// - doolittle → jill with TTL 1 inside the tunnel expires when ps3 forwards the
///   decapsulated packet. With the seed's `ttl inherit` the outer header would carry TTL 1
///   too and die at wan, so doolittle uses a fixed outer TTL here (`ttl = 64`); ps3's answer
///   comes back through the tunnel from its tunnel address.
fn ttl_expiry_is_answered_by_ps3(path: DataPath) -> Result<()> {
    require_root()?;
    let t = Cluster::new()?;
    let ipip = IpipUser::new()?;
    let mut peers = t.doolittle_peers();
    peers.ttl = "64".into();
    peers.write(&t.doolittle.peers)?;
    t.attach(&ipip, path)?;
    let (d, p, j) = (&t.doolittle, &t.ps3, &t.jill);
    must_ping(&d.ns, JILL, 1, "doolittle → jill")?;
    let expired0 = ipip.reason_total(&p.ns, "ttl_expired");

    for (who, ns, dst, router) in [
        ("jill → doolittle", &j.ns, d.tunnel, PS3_LAN),
        ("doolittle → jill", &d.ns, JILL, PS3_TUNNEL),
    ] {
        let out = ping_ttl(ns, dst, 1, Some(1))?;
        let from = time_exceeded_from(&out);
        ensure!(
            from == Some(router),
            "{who} with TTL 1: expected \"Time to live exceeded\" from {router} (ps3), got \
             {from:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    if path == DataPath::Fast {
        let before = expired0.context("stats before the expiring pings")?;
        let after = ipip.reason_total(&p.ns, "ttl_expired")?;
        ensure!(
            after >= before + 2,
            "ps3's fast path should hand both TTL-1 packets to the kernel and count \
             ttl_expired: {before} → {after}"
        );
    }
    Ok(())
}

#[test]
fn kernel_path_ttl_expiry_is_answered_by_ps3() -> Result<()> {
    ttl_expiry_is_answered_by_ps3(DataPath::Kernel)
}

/// FAST PATH (needs `ipip-user attach --lan`).
#[test]
fn fast_path_ttl_expiry_is_answered_by_ps3() -> Result<()> {
    ttl_expiry_is_answered_by_ps3(DataPath::Fast)
}

/// Detaching the head node cuts jill off; attaching again restores her.
#[test]
fn detaching_ps3_cuts_the_cluster_off() -> Result<()> {
    let (t, ipip) = attached(DataPath::Kernel)?;
    let (d, p) = (&t.doolittle, &t.ps3);
    must_ping(&d.ns, JILL, 1, "doolittle → jill")?;
    p.detach(&ipip)?;
    let out = ping_ttl(&d.ns, JILL, 1, None)?;
    ensure!(
        !out.status.success(),
        "jill still answers with ps3 detached"
    );
    p.attach(&ipip, DataPath::Kernel)?;
    must_ping(&d.ns, JILL, 3, "doolittle → jill after attaching ps3 again")?;
    Ok(())
}
