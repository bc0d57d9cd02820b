//! Seed §6 (desktop calculon → desktop gateway doolittle → tunnel → head node rfe → compute
//! node comp000, and back) end to end, on the kernel path and on the fast path: traffic, NAT
//! that spares the tunnel, a spoofer, TTL expiry. Every test builds its own namespaces
//! (unique names, removed on drop even when the test panics) and must run as root.
//!
//! FAST PATH: the `fast_path_*` tests attach doolittle with `--lan eth1` and rfe with
//! `--lan eth0`. They fail with "unexpected argument '--lan'" until ipip-user has that option.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ipip_tests::packet::{ipip_packet, send_ipip, send_raw_ipv4, udp};
use ipip_tests::topology::gateways::{
    CALCULON, COMP000, DOOLITTLE, DOOLITTLE_LAN, DOOLITTLE_TUNNEL, RFE, RFE_LAN, RFE_TUNNEL,
};
use ipip_tests::traffic::{
    eventually, must_ping, ping_ttl, tcp_source_seen, tcp_transfer, time_exceeded_from, udp_send,
    UdpSink,
};
use ipip_tests::{require_root, DataPath, Gateways, IpipUser};

const LEN: usize = 4 << 20;

fn attached(path: DataPath) -> Result<(Gateways, IpipUser)> {
    require_root()?;
    let t = Gateways::new()?;
    let ipip = IpipUser::new()?;
    t.attach(&ipip, path)?;
    Ok((t, ipip))
}

/// The topology alone: every hop of the underlay and both LANs work, the public side is
/// reachable from the compute node through rfe's NAT, and the two private LANs do not reach
/// each other until the tunnel is up.
#[test]
fn underlay_works_and_the_private_lans_are_apart() -> Result<()> {
    require_root()?;
    let t = Gateways::new()?;
    must_ping(&t.calculon.ns, DOOLITTLE_LAN, 1, "calculon → doolittle")?;
    must_ping(&t.doolittle.ns, RFE, 2, "doolittle → rfe (via pub and wan)")?;
    must_ping(&t.mallory.ns, RFE, 1, "mallory → rfe")?;
    must_ping(&t.comp000.ns, RFE_LAN, 1, "comp000 → rfe")?;
    must_ping(&t.comp000.ns, DOOLITTLE, 2, "comp000 → doolittle (NAT)")?;
    let out = ping_ttl(&t.calculon.ns, COMP000, 1, None)?;
    ensure!(
        !out.status.success(),
        "calculon reached comp000 without a tunnel"
    );
    Ok(())
}

fn carries_ping_and_tcp_both_ways(path: DataPath) -> Result<()> {
    let (t, ipip) = attached(path)?;
    let (c, d, r, k) = (&t.calculon, &t.doolittle, &t.rfe, &t.comp000);
    must_ping(&c.ns, COMP000, 3, "calculon → comp000")?;
    must_ping(&k.ns, CALCULON, 3, "comp000 → calculon")?;
    must_ping(&d.ns, COMP000, 2, "doolittle → comp000")?;
    must_ping(&c.ns, RFE_TUNNEL, 2, "calculon → rfe's tunnel address")?;

    let d0 = ipip.paths(&d.ns, d.underlay_if);
    let r0 = ipip.paths(&r.ns, r.underlay_if);
    let x = tcp_transfer(&c.ns, &k.ns, COMP000, 2401, LEN).context("calculon → comp000")?;
    ensure!(x.bytes == LEN);
    let x = tcp_transfer(&k.ns, &c.ns, CALCULON, 2402, LEN).context("comp000 → calculon")?;
    ensure!(x.bytes == LEN);
    let dd = ipip.paths(&d.ns, d.underlay_if)?.since(&d0?);
    let dr = ipip.paths(&r.ns, r.underlay_if)?.since(&r0?);
    // Both gateways forward ~2900 full-sized segments each way.
    dd.check("doolittle", path, 1000)?;
    dr.check("rfe", path, 1000)?;
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

/// Seed §6.5: comp000 reaches the public side masqueraded as rfe ("Masquerading"), while
/// tunnel traffic keeps its sources ("Tunnelling", "N.B. No masquerading required or
/// wanted"): the NAT rule on rfe must not catch packets that ipip encapsulates after
/// POSTROUTING.
fn nat_reaches_the_public_side_and_spares_the_tunnel(path: DataPath) -> Result<()> {
    let (t, _ipip) = attached(path)?;
    let (c, d, k) = (&t.calculon, &t.doolittle, &t.comp000);
    let cases = [
        (
            "comp000 → doolittle's public address",
            &k.ns,
            &d.ns,
            DOOLITTLE,
            RFE,
            2501,
        ),
        ("comp000 → calculon", &k.ns, &c.ns, CALCULON, COMP000, 2502),
        ("calculon → comp000", &c.ns, &k.ns, COMP000, CALCULON, 2503),
    ];
    for (what, client, server, dst, want, port) in cases {
        let seen = tcp_source_seen(client, server, dst, port).context(what)?;
        ensure!(
            seen.ip() == IpAddr::V4(want),
            "{what}: the server saw the connection from {seen}, expected {want}"
        );
    }
    Ok(())
}

#[test]
fn kernel_path_nat_reaches_the_public_side_and_spares_the_tunnel() -> Result<()> {
    nat_reaches_the_public_side_and_spares_the_tunnel(DataPath::Kernel)
}

/// FAST PATH (needs `ipip-user attach --lan`).
#[test]
fn fast_path_nat_reaches_the_public_side_and_spares_the_tunnel() -> Result<()> {
    nat_reaches_the_public_side_and_spares_the_tunnel(DataPath::Fast)
}

/// The seed's "security issues" note: someone else could send what rfe accepts from
/// doolittle. Mallory, on doolittle's public segment, tries twice; neither datagram reaches
/// comp000, and rfe counts why.
///
/// A forged outer source WITH an allowed inner source (192.0.2.58 carrying 192.168.1.10) is
/// indistinguishable from doolittle: IPIP has no authentication, as with Linux's ipip. Only
/// the underlay's own filtering (BCP 38 at wan) could stop that one.
fn spoofer_is_dropped_and_counted(path: DataPath) -> Result<()> {
    let (t, ipip) = attached(path)?;
    let (c, m, r, k) = (&t.calculon, &t.mallory, &t.rfe, &t.comp000);
    let port = 4000;
    let sink = UdpSink::bind(&k.ns, SocketAddrV4::new(COMP000, port))?;
    const QUIET: Duration = Duration::from_secs(1);
    const N: u64 = 3;

    // The control: what calculon sends arrives, so silence below means something.
    udp_send(&c.ns, SocketAddrV4::new(COMP000, port), b"from calculon")?;
    let got = sink
        .receive_within(Duration::from_secs(3))?
        .context("calculon's datagram did not reach comp000")?;
    ensure!(
        got.0 == b"from calculon" && got.1.ip() == IpAddr::V4(CALCULON),
        "comp000 received {got:?}"
    );
    let rx0 = ipip
        .peer_stats(&r.ns, r.underlay_if, "doolittle")?
        .rx_packets;

    // 1. Mallory is nobody's peer, but claims to carry calculon's traffic.
    let unknown0 = ipip.reason(&r.ns, r.underlay_if, "unknown_peer")?;
    let inner = udp(CALCULON, COMP000, 4444, port, b"mallory as calculon");
    send_ipip(&m.ns, RFE, &inner, N as usize)?;
    eventually(Duration::from_secs(3), || {
        let now = ipip.reason(&r.ns, r.underlay_if, "unknown_peer")?;
        ensure!(
            now - unknown0 == N,
            "rfe's unknown_peer went from {unknown0} to {now}, expected +{N}"
        );
        Ok(())
    })?;
    if let Some(got) = sink.receive_within(QUIET)? {
        anyhow::bail!("mallory's IPIP from a non-peer reached comp000: {got:?}");
    }

    // 2. Mallory forges doolittle's outer source, but 10.9.9.9 is not among the sources
    //    doolittle may send.
    let spoofed0 = ipip.reason(&r.ns, r.underlay_if, "spoofed_inner_source")?;
    let inner = udp(
        Ipv4Addr::new(10, 9, 9, 9),
        COMP000,
        4444,
        port,
        b"mallory as 10.9.9.9",
    );
    send_raw_ipv4(&m.ns, &ipip_packet(DOOLITTLE, RFE, &inner), N as usize)?;
    eventually(Duration::from_secs(3), || {
        let now = ipip.reason(&r.ns, r.underlay_if, "spoofed_inner_source")?;
        ensure!(
            now - spoofed0 == N,
            "rfe's spoofed_inner_source went from {spoofed0} to {now}, expected +{N}"
        );
        Ok(())
    })?;
    if let Some(got) = sink.receive_within(QUIET)? {
        anyhow::bail!("mallory's forged IPIP reached comp000: {got:?}");
    }
    let rx1 = ipip
        .peer_stats(&r.ns, r.underlay_if, "doolittle")?
        .rx_packets;
    ensure!(
        rx1 == rx0,
        "rfe counted mallory's packets as doolittle's: rx_packets {rx0} → {rx1}"
    );
    Ok(())
}

#[test]
fn kernel_path_spoofer_is_dropped_and_counted() -> Result<()> {
    spoofer_is_dropped_and_counted(DataPath::Kernel)
}

/// FAST PATH (needs `ipip-user attach --lan`).
#[test]
fn fast_path_spoofer_is_dropped_and_counted() -> Result<()> {
    spoofer_is_dropped_and_counted(DataPath::Fast)
}

/// Routers answer TTL expiry wherever it happens:
/// - TTL 1 from a LAN host expires at its own gateway, before the tunnel;
/// - TTL 2 survives the first gateway and expires at the far gateway after decapsulation,
///   answered through the tunnel from the far gateway's tunnel address. That needs a fixed
///   outer TTL (`ttl = 64`): with the seed's `ttl inherit` the outer header leaves with the
///   inner TTL (1) and dies at wan, whose answer goes to the gateway's underlay address.
fn ttl_expiry_is_answered_by_the_gateways(path: DataPath) -> Result<()> {
    require_root()?;
    let t = Gateways::new()?;
    let ipip = IpipUser::new()?;
    for (h, mut peers) in [(&t.doolittle, t.doolittle_peers()), (&t.rfe, t.rfe_peers())] {
        peers.ttl = "64".into();
        peers.write(&h.peers)?;
    }
    t.attach(&ipip, path)?;
    let (c, d, r, k) = (&t.calculon, &t.doolittle, &t.rfe, &t.comp000);
    must_ping(&c.ns, COMP000, 1, "calculon → comp000")?;
    let before = [
        ipip.reason_total(&d.ns, "ttl_expired"),
        ipip.reason_total(&r.ns, "ttl_expired"),
    ];
    for (who, ns, dst, ttl, router) in [
        ("calculon → comp000", &c.ns, COMP000, 1, DOOLITTLE_LAN),
        ("comp000 → calculon", &k.ns, CALCULON, 1, RFE_LAN),
        ("calculon → comp000", &c.ns, COMP000, 2, RFE_TUNNEL),
        ("comp000 → calculon", &k.ns, CALCULON, 2, DOOLITTLE_TUNNEL),
    ] {
        let out = ping_ttl(ns, dst, 1, Some(ttl))?;
        let from = time_exceeded_from(&out);
        ensure!(
            from == Some(router),
            "{who} with TTL {ttl}: expected \"Time to live exceeded\" from {router}, got \
             {from:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    if path == DataPath::Fast {
        for ((name, h), before) in [("doolittle", d), ("rfe", r)].into_iter().zip(before) {
            let before = before.with_context(|| format!("{name}: stats before the pings"))?;
            let after = ipip.reason_total(&h.ns, "ttl_expired")?;
            ensure!(
                after >= before + 2,
                "{name}'s fast path should hand its two TTL-expired packets (one from its \
                 LAN, one decapsulated) to the kernel and count ttl_expired: {before} → {after}"
            );
        }
    }
    Ok(())
}

#[test]
fn kernel_path_ttl_expiry_is_answered_by_the_gateways() -> Result<()> {
    ttl_expiry_is_answered_by_the_gateways(DataPath::Kernel)
}

/// FAST PATH (needs `ipip-user attach --lan`).
#[test]
fn fast_path_ttl_expiry_is_answered_by_the_gateways() -> Result<()> {
    ttl_expiry_is_answered_by_the_gateways(DataPath::Fast)
}
