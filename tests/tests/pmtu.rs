//! Path MTU across a routed underlay with a smaller hop (doolittle — r1 —MTU— r2 — calculon):
//! what a real network does to a tunnel and a single veth never shows. With Linux's ipip the
//! routers' ICMP "fragmentation needed" about the outer packets lowers the tunnel's PMTU and
//! TCP through the tunnel adapts; without it, bulk TCP stalls (a PMTU black hole).

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use ipip_tests::topology::build::{tx_checksum_offload, wire_checksums};
use ipip_tests::topology::Routed;
use ipip_tests::traffic::{must_ping, tcp_transfer};
use ipip_tests::{require_root, IpipUser, Netns, Node};

const HOP_MTU: u32 = 1400;
/// What both ends must learn: the hop's MTU less the outer header.
const LEARNED: u64 = HOP_MTU as u64 - 20;
const TRANSFER: usize = 2 * 1024 * 1024;

fn attach(ipip: &IpipUser, n: &Node) -> Result<()> {
    ipip.attach(&n.ns, n.iface, &n.peers)
        .with_context(|| format!("attach on {}", n.name))?;
    Ok(())
}

/// The peer's entry of `stats --json` on `n`.
fn peer_entry(ipip: &IpipUser, n: &Node, peer: &str) -> Result<serde_json::Value> {
    let v = ipip.stats(&n.ns)?;
    v.as_array()
        .and_then(|a| a.iter().find(|e| e["interface"] == n.iface))
        .and_then(|e| e["peers"].as_array())
        .and_then(|ps| ps.iter().find(|p| p["name"] == peer))
        .cloned()
        .with_context(|| format!("no peer {peer} in stats of {}: {v}", n.name))
}

/// `ip route get DST from SRC` on `n`: the kernel's view, PMTU exception included.
fn route_get(n: &Node, dst: &str) -> Result<String> {
    n.ns.exec(&["ip", "route", "get", dst, "from", &n.private.to_string()])
}

/// `TRANSFER` bytes of TCP from `from` to `to`'s private address on `port`, after each of
/// `forget` flushed its route cache (the path is then learned afresh); `what` names it.
fn transfer(from: &Netns, to: &Node, port: u16, forget: &[&Netns], what: &str) -> Result<()> {
    for ns in forget {
        ns.exec(&["ip", "route", "flush", "cache"])?;
    }
    let done = tcp_transfer(from, &to.ns, to.private, port, TRANSFER)
        .with_context(|| format!("{what} stalled: PMTU black hole"))?;
    ensure!(done.bytes == TRANSFER, "{what}: {} bytes", done.bytes);
    eprintln!("{what}: {} bytes in {:?}", done.bytes, done.elapsed);
    Ok(())
}

fn transfer_both_ways(pmtudisc: bool) -> Result<()> {
    require_root()?;
    let t = Routed::new(HOP_MTU, pmtudisc)?;
    let ipip = IpipUser::new()?;
    attach(&ipip, &t.doolittle)?;
    attach(&ipip, &t.calculon)?;
    must_ping(
        &t.doolittle.ns,
        t.calculon.private,
        2,
        "doolittle → calculon",
    )?;

    for (from, to, port) in [
        (&t.doolittle, &t.calculon, 5201),
        (&t.calculon, &t.doolittle, 5202),
    ] {
        let what = format!(
            "{} MiB TCP {} → {} across a {HOP_MTU}-byte hop (pmtudisc {pmtudisc})",
            TRANSFER >> 20,
            from.name,
            to.name
        );
        // Each direction learns on its own: forget what the other taught (the receiver's
        // route would otherwise advertise the smaller MSS and spare the sender the lesson).
        transfer(
            &from.ns,
            to,
            port,
            &[&t.doolittle.ns, &t.calculon.ns],
            &what,
        )?;

        // The sender's ipip learned the path MTU from the router's ICMP, visibly ...
        let peer = peer_entry(&ipip, from, to.name)?;
        ensure!(
            peer["learned_mtu"].as_u64() == Some(LEARNED),
            "{}: stats --json should show learned_mtu {LEARNED} for {}: {peer}",
            from.name,
            to.name
        );
        let expires = peer["learned_mtu_expires_in_s"].as_u64().unwrap_or(0);
        ensure!(
            expires > 0 && expires <= 600,
            "{}: learned MTU should expire within mtu_expires (600 s): {peer}",
            from.name
        );
        ensure!(
            ipip.reason(&from.ns, from.iface, "pmtu_learned")? >= 1,
            "{}: no pmtu_learned counted",
            from.name
        );
        // ... and the kernel's inner route to the far host carries it, as after
        // tnl_update_pmtu: a PMTU exception that ages out like any other.
        let route = route_get(from, &to.private.to_string())?;
        ensure!(
            route.contains(&format!("mtu {LEARNED}")) && route.contains("expires"),
            "{}: the route to {} should carry the learned PMTU {LEARNED}: {route}",
            from.name,
            to.private
        );
    }
    // Nothing was dropped on the way for want of an MTU (the kernel sized every packet).
    for n in [&t.doolittle, &t.calculon] {
        let too_big = ipip.reason(&n.ns, n.iface, "too_big")?;
        eprintln!("{}: too_big {too_big}", n.name);
    }
    Ok(())
}

#[test]
fn tcp_adapts_to_a_smaller_hop_with_pmtudisc() -> Result<()> {
    transfer_both_ways(true)
}

#[test]
fn tcp_adapts_to_a_smaller_hop_without_pmtudisc() -> Result<()> {
    transfer_both_ways(false)
}

/// jill, behind gateway doolittle, sends bulk TCP to calculon through the tunnel. Nobody on
/// doolittle has a socket to tell, so the kernel's forwarding path must learn the smaller
/// MTU and answer jill with its own "fragmentation needed", as Linux's tnl_update_pmtu does.
fn forwarded_transfer(pmtudisc: bool, fast_path: bool) -> Result<()> {
    require_root()?;
    let t = Routed::with_lan(HOP_MTU, pmtudisc)?;
    let jill = t.jill.as_ref().context("the topology has jill")?;
    let ipip = IpipUser::new()?;
    let peers = t.doolittle.peers.display().to_string();
    let mut args = vec!["attach", t.doolittle.iface, "--peers", &peers];
    if fast_path {
        // The fast path's veth conditions (see wire_checksums).
        for ns in [&jill.ns, &t.doolittle.ns, &t.r1, &t.r2, &t.calculon.ns] {
            wire_checksums(ns)?;
        }
        args.extend(["--lan", "lan0"]);
    }
    ipip.run(&t.doolittle.ns, &args)
        .context("attach on doolittle")?;
    attach(&ipip, &t.calculon)?;
    must_ping(&jill.ns, t.calculon.private, 2, "jill → calculon")?;

    let what = format!(
        "{} MiB TCP jill → calculon through gateway doolittle across a {HOP_MTU}-byte hop \
         (pmtudisc {pmtudisc}, fast path {fast_path})",
        TRANSFER >> 20
    );
    transfer(&jill.ns, &t.calculon, 5203, &[], &what)?;

    let peer = peer_entry(&ipip, &t.doolittle, t.calculon.name)?;
    ensure!(
        peer["learned_mtu"].as_u64() == Some(LEARNED),
        "doolittle: stats --json should show learned_mtu {LEARNED}: {peer}"
    );
    ensure!(
        ipip.reason(&t.doolittle.ns, t.doolittle.iface, "pmtu_learned")? >= 1,
        "doolittle: no pmtu_learned counted"
    );
    if fast_path {
        // Too big for the learned MTU: the fast path hands off to the kernel, which answers.
        ensure!(
            ipip.reason_total(&t.doolittle.ns, "needs_fragmentation")? >= 1,
            "doolittle: the fast path should have handed too-big packets to the kernel"
        );
    }
    // The gateway's route toward calculon carries the PMTU ...
    let route = route_get(&t.doolittle, &t.calculon.private.to_string())?;
    ensure!(
        route.contains(&format!("mtu {LEARNED}")),
        "doolittle: the route to {} should carry the learned PMTU {LEARNED}: {route}",
        t.calculon.private
    );
    // ... and jill was told by the gateway's kernel, in her own route cache.
    let seen = jill
        .ns
        .exec(&["ip", "route", "get", &t.calculon.private.to_string()])?;
    ensure!(
        seen.contains(&format!("mtu {LEARNED}")),
        "jill should have learned PMTU {LEARNED} toward {} from the gateway's ICMP: {seen}",
        t.calculon.private
    );
    // Forwarding obeys it because attach asked the kernel to (ip_forward_use_pmtu, off by
    // default); detach puts it back.
    ensure!(
        fwd_use_pmtu(&t.doolittle)? == "1",
        "doolittle: attach on a gateway should turn net.ipv4.ip_forward_use_pmtu on"
    );
    ipip.detach(&t.doolittle.ns, t.doolittle.iface)?;
    ensure!(
        fwd_use_pmtu(&t.doolittle)? == "0",
        "doolittle: detach should turn net.ipv4.ip_forward_use_pmtu off again"
    );
    Ok(())
}

fn fwd_use_pmtu(n: &Node) -> Result<String> {
    Ok(n.ns
        .exec(&["sysctl", "-n", "net.ipv4.ip_forward_use_pmtu"])?
        .trim()
        .to_string())
}

#[test]
fn forwarded_tcp_adapts_on_the_kernel_path() -> Result<()> {
    forwarded_transfer(true, false)
}

#[test]
fn forwarded_tcp_adapts_on_the_kernel_path_without_pmtudisc() -> Result<()> {
    forwarded_transfer(false, false)
}

#[test]
fn forwarded_tcp_adapts_on_the_fast_path() -> Result<()> {
    forwarded_transfer(true, true)
}

/// With `pmtudisc = false` and inner packets without DF, the outer packets are fragmented at
/// the small hop; the receiving ipip must reassemble them before decapsulating, as Linux
/// does (`ip_defrag` before `ipip_rcv`). 20 pings of 1400 bytes without DF, both ways
/// (the replies are as big), with each decapsulation hook.
fn fragments_reassembled(decap: &str) -> Result<()> {
    require_root()?;
    let t = Routed::new(HOP_MTU, false)?;
    let ipip = IpipUser::new()?;
    for n in [&t.doolittle, &t.calculon] {
        let peers = n.peers.display().to_string();
        ipip.run(
            &n.ns,
            &["attach", n.iface, "--peers", &peers, "--decap", decap],
        )
        .with_context(|| format!("attach on {}", n.name))?;
    }
    const COUNT: u64 = 20;
    // 1372 bytes of ICMP data: 1400-byte inner packets, 1420-byte outer ones.
    let out = t.doolittle.ns.output(&[
        "ping",
        "-n",
        "-c",
        &COUNT.to_string(),
        "-i",
        "0.05",
        "-W",
        "2",
        "-M",
        "dont",
        "-s",
        "1372",
        "-I",
        &t.doolittle.private.to_string(),
        &t.calculon.private.to_string(),
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains(&format!("{COUNT} received")),
        "1400-byte pings without DF over a {HOP_MTU}-byte hop (decap {decap}): {}",
        ipip_tests::ipip::describe(&out)
    );
    for n in [&t.doolittle, &t.calculon] {
        let held = ipip.reason(&n.ns, n.iface, "outer_fragment_held")?;
        let whole = ipip.reason(&n.ns, n.iface, "reassembled")?;
        eprintln!(
            "{} (decap {decap}): {held} fragments held, {whole} reassembled",
            n.name
        );
        ensure!(
            whole >= COUNT && held >= COUNT,
            "{}: expected at least {COUNT} datagrams reassembled from held fragments, got \
             {whole} from {held}",
            n.name
        );
    }
    Ok(())
}

#[test]
fn outer_fragments_are_reassembled_with_xdp_decap() -> Result<()> {
    fragments_reassembled("xdp")
}

#[test]
fn outer_fragments_are_reassembled_with_tc_decap() -> Result<()> {
    fragments_reassembled("tc")
}

/// Routes `dst` on `n` around ipip's route the way an admin might: the same next hop,
/// interface and source, but no MTU. Traffic to it then reaches the tunnel unsized by the
/// kernel, the case Linux's `tnl_update_pmtu` answers for a tunnel device.
fn route_without_mtu(n: &Node, dst: Ipv4Addr) -> Result<()> {
    let ours = n.ns.exec(&["ip", "-o", "route", "get", &dst.to_string()])?;
    let after = |key: &str| -> Result<String> {
        let mut words = ours.split_whitespace();
        words
            .find(|w| *w == key)
            .and(words.next())
            .map(str::to_string)
            .with_context(|| format!("{}: no `{key}` in `ip route get {dst}`: {ours}", n.name))
    };
    let (via, dev, src) = (after("via")?, after("dev")?, after("src")?);
    n.ns.exec(&[
        "ip",
        "route",
        "add",
        &format!("{dst}/32"),
        "via",
        &via,
        "dev",
        &dev,
        "src",
        &src,
    ])?;
    n.ns.exec(&["ip", "route", "flush", "cache"])?;
    Ok(())
}

/// `ping -M MODE -s SIZE` from `ns` (from `src` when given) to `dst`: its output.
fn ping_sized(
    ns: &Netns,
    src: Option<Ipv4Addr>,
    dst: Ipv4Addr,
    mode: &str,
    size: usize,
    count: u32,
) -> Result<String> {
    let (size, count, dst) = (size.to_string(), count.to_string(), dst.to_string());
    let mut args = vec![
        "ping", "-n", "-c", &count, "-i", "0.2", "-W", "2", "-M", mode, "-s", &size,
    ];
    let src = src.map(|s| s.to_string());
    if let Some(s) = &src {
        args.extend(["-I", s]);
    }
    args.push(&dst);
    let out = ns.output(&args)?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Both ends route each other's host past ipip's routes (no MTU): a 1500-byte DF packet is
/// too big for the 1480-byte tunnel only at TC egress. The sender on this host must be told
/// at once (ICMP "fragmentation needed", mtu 1480) and bulk TCP must adapt in both directions.
#[test]
fn local_senders_are_answered_past_a_route_without_the_tunnel_mtu() -> Result<()> {
    require_root()?;
    let t = Routed::new(1500, true)?;
    let ipip = IpipUser::new()?;
    attach(&ipip, &t.doolittle)?;
    attach(&ipip, &t.calculon)?;
    route_without_mtu(&t.doolittle, t.calculon.private)?;
    route_without_mtu(&t.calculon, t.doolittle.private)?;
    must_ping(
        &t.doolittle.ns,
        t.calculon.private,
        2,
        "doolittle → calculon",
    )?;

    let told = ping_sized(
        &t.doolittle.ns,
        Some(t.doolittle.private),
        t.calculon.private,
        "do",
        1472,
        1,
    )?;
    ensure!(
        told.contains("mtu = 1480") || told.contains("mtu=1480"),
        "a 1500-byte DF ping past a route without MTU should be told the tunnel MTU: {told}"
    );
    ensure!(
        ipip.reason(&t.doolittle.ns, t.doolittle.iface, "too_big")? >= 1,
        "doolittle: too_big not counted"
    );
    // The socket's error handler recorded the tunnel MTU on the route, as for any PMTU.
    let route = route_get(&t.doolittle, &t.calculon.private.to_string())?;
    ensure!(
        route.contains("mtu 1480"),
        "doolittle: the route to {} should carry the tunnel MTU now: {route}",
        t.calculon.private
    );

    for (from, to, port) in [
        (&t.doolittle, &t.calculon, 5211),
        (&t.calculon, &t.doolittle, 5212),
    ] {
        let what = format!(
            "{} MiB TCP {} → {} past a route without the tunnel MTU",
            TRANSFER >> 20,
            from.name,
            to.name
        );
        // Forget what the ping taught on both ends (the receiver's route would advertise the
        // tunnel's MSS), so that the sender's first segments are too big and answered.
        let answered = ipip.reason(&from.ns, from.iface, "too_big")?;
        transfer(
            &from.ns,
            to,
            port,
            &[&t.doolittle.ns, &t.calculon.ns],
            &what,
        )?;
        ensure!(
            ipip.reason(&from.ns, from.iface, "too_big")? > answered,
            "{what}: no segment was too big, so nothing tested the answer to TCP"
        );
    }
    Ok(())
}

/// Without DF the first too-big packet is lost and the kernel learns the tunnel MTU for the
/// destination; from then on it fragments before the tunnel, so every other one arrives.
#[test]
fn packets_without_df_are_fragmented_past_a_route_without_the_tunnel_mtu() -> Result<()> {
    require_root()?;
    let t = Routed::new(1500, true)?;
    let ipip = IpipUser::new()?;
    attach(&ipip, &t.doolittle)?;
    attach(&ipip, &t.calculon)?;
    route_without_mtu(&t.doolittle, t.calculon.private)?;
    must_ping(
        &t.doolittle.ns,
        t.calculon.private,
        2,
        "doolittle → calculon",
    )?;
    const COUNT: u32 = 20;
    let out = ping_sized(
        &t.doolittle.ns,
        Some(t.doolittle.private),
        t.calculon.private,
        "dont",
        1472,
        COUNT,
    )?;
    let received = out
        .split(", ")
        .find_map(|w| w.strip_suffix(" received"))
        .and_then(|n| n.parse::<u32>().ok())
        .with_context(|| format!("no ping summary: {out}"))?;
    let lost = ipip.reason(&t.doolittle.ns, t.doolittle.iface, "too_big_no_df")?;
    eprintln!("{received} of {COUNT} 1500-byte pings without DF arrived; too_big_no_df {lost}");
    ensure!(
        received >= COUNT - 1 && lost >= 1 && u64::from(COUNT - received) <= lost,
        "only the first 1500-byte ping without DF may be lost (and counted): {received} of \
         {COUNT} arrived, too_big_no_df {lost}: {out}"
    );
    let route = route_get(&t.doolittle, &t.calculon.private.to_string())?;
    ensure!(
        route.contains("mtu 1480"),
        "doolittle: the kernel should hold the tunnel MTU for {}: {route}",
        t.calculon.private
    );
    Ok(())
}

/// jill, behind gateway doolittle, whose route toward calculon has no MTU: her too-big DF
/// packets must be answered by the gateway, from its own address on her side, and her bulk
/// TCP must adapt. With `device_fills_checksums`, the gateway's veths compute checksums in
/// software on the way out (TX offload off): jill's TCP segments arrive with their checksum
/// left to "the device" (CHECKSUM_PARTIAL), so the answer quoting one has its quoted TCP
/// checksum filled in after the program checksummed the ICMP; it must still verify at jill's.
fn forwarded_senders_answered(device_fills_checksums: bool) -> Result<()> {
    require_root()?;
    let t = Routed::with_lan(1500, true)?;
    let jill = t.jill.as_ref().context("the topology has jill")?;
    if device_fills_checksums {
        tx_checksum_offload(&t.doolittle.ns, false)?;
    }
    let ipip = IpipUser::new()?;
    attach(&ipip, &t.doolittle)?;
    attach(&ipip, &t.calculon)?;
    route_without_mtu(&t.doolittle, t.calculon.private)?;
    // calculon's way back to jill too, or it advertises the tunnel's MSS and jill never sends
    // a segment too big.
    route_without_mtu(&t.calculon, jill.addr)?;
    must_ping(&jill.ns, t.calculon.private, 2, "jill → calculon")?;

    let told = ping_sized(&jill.ns, None, t.calculon.private, "do", 1472, 1)?;
    ensure!(
        told.contains("From 192.168.1.1") && told.contains("mtu = 1480"),
        "jill's 1500-byte DF ping should be answered by the gateway (192.168.1.1) with the \
         tunnel MTU: {told}"
    );
    let answered = ipip.reason(&t.doolittle.ns, t.doolittle.iface, "too_big")?;
    let what = format!(
        "{} MiB TCP jill → calculon past a route without the tunnel MTU (device fills \
         checksums: {device_fills_checksums})",
        TRANSFER >> 20
    );
    // Forget what the ping taught, so that TCP starts with a segment too big and is answered.
    transfer(&jill.ns, &t.calculon, 5213, &[&jill.ns], &what)?;
    ensure!(
        ipip.reason(&t.doolittle.ns, t.doolittle.iface, "too_big")? > answered,
        "{what}: no segment was too big, so nothing tested the answer to TCP"
    );
    let seen = jill
        .ns
        .exec(&["ip", "route", "get", &t.calculon.private.to_string()])?;
    ensure!(
        seen.contains("mtu 1480"),
        "jill should have learned the tunnel MTU toward {}: {seen}",
        t.calculon.private
    );
    Ok(())
}

#[test]
fn forwarded_senders_are_answered_past_a_route_without_the_tunnel_mtu() -> Result<()> {
    forwarded_senders_answered(false)
}

#[test]
fn answers_quoting_offloaded_checksums_verify_after_the_device_fills_them() -> Result<()> {
    forwarded_senders_answered(true)
}
