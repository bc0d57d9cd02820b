//! Wire behaviour against the stock Linux ipip endpoint across a routed underlay with a
//! 1400-byte hop (`ipip_tests::vm::routed`: doolittle (ours) — r1 ══1400══ r2 — calculon, the
//! Linux guest): path MTU discovery both ways, outer fragments both ways without pmtudisc,
//! and ECN: all 16 (outer, inner) combinations through Linux's decapsulation and ours, and
//! the outer ECN (with the TTL/TOS/DF around it) each end puts on for every inner codepoint
//! under Linux's `ttl`/`tos`/`nopmtudisc` variants and ours configured the same.
//!
//! The guests run one at a time (TCG is slow and this machine small): each test takes
//! [`serial`] first and boots its own guest. Every wait is bounded.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ipip_tests::ipip::describe;
use ipip_tests::packet::{checksum, ipip_packet, send_raw_ipv4, udp};
use ipip_tests::traffic::ping;
use ipip_tests::vm::capture::{Capture, Frame, Ipv4Header};
use ipip_tests::vm::peer::Ours;
use ipip_tests::vm::routed::{
    LinuxRouted, CALCULON_PRIVATE, CALCULON_UNDERLAY, DOOLITTLE_PRIVATE, DOOLITTLE_UNDERLAY,
    HOP_MTU, R2_NEAR, TAP, UNDERLAY_IF,
};
use ipip_tests::vm::traffic::{tcp_from_guest, tcp_to_guest};
use ipip_tests::vm::{LinuxTunnel, Ttl};
use ipip_tests::{require_root, IpipUser};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What both ends must learn across the hop: its MTU less the outer header.
const LEARNED: u64 = HOP_MTU as u64 - 20;

/// Boots the routed bed, attaches ours and brings up Linux's `tunl1` as `tunnel`.
fn up(ours: &Ours, tunnel: &LinuxTunnel) -> Result<(LinuxRouted, IpipUser)> {
    require_root()?;
    let ipip = IpipUser::new()?;
    let t = LinuxRouted::boot(ours)?;
    eprintln!(
        "guest booted in {:.1?} ({})",
        t.guest.boot_time(),
        t.guest.description()
    );
    t.attach(&ipip, ours)?;
    t.guest.add_tunnel(tunnel).context("calculon's tunl1")?;
    Ok((t, ipip))
}

fn doolittle_pings(t: &LinuxRouted, count: u32) -> Result<()> {
    let out = ping(&t.doolittle, DOOLITTLE_PRIVATE, CALCULON_PRIVATE, count)?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains(&format!("{count} received")),
        "ping doolittle → calculon (Linux) through the tunnel failed: {}\ncalculon's tunl1:\n{}",
        describe(&out),
        t.guest.link_stats("tunl1").unwrap_or_default()
    );
    Ok(())
}

/// calculon's entry for doolittle's underlay in `stats --json`.
fn calculon_entry(ipip: &IpipUser, t: &LinuxRouted) -> Result<serde_json::Value> {
    let v = ipip.stats(&t.doolittle)?;
    v.as_array()
        .and_then(|a| a.iter().find(|e| e["interface"] == UNDERLAY_IF))
        .and_then(|e| e["peers"].as_array())
        .and_then(|ps| ps.iter().find(|p| p["name"] == "calculon"))
        .cloned()
        .with_context(|| format!("no peer calculon in doolittle's stats: {v}"))
}

// PMTU both ways: 2 MiB of TCP each way across the 1400-byte hop completes, each sender
// having learned the path MTU from the routers' ICMP "fragmentation needed" (ours:
// learned_mtu 1380 for calculon; Linux: a PMTU exception of 1380 on its route to doolittle's
// private address). With pmtudisc on both ends (Linux's default and ours), and off on both
// (`nopmtudisc`: the outer DF then follows TCP's inner DF, so the lesson is the same).
fn pmtu_both_ways(pmtudisc: bool) -> Result<()> {
    let _g = serial();
    let ours = if pmtudisc {
        Ours::default()
    } else {
        Ours {
            tunnel_lines: vec!["pmtudisc = false".into()],
            ..Ours::default()
        }
    };
    let mut linux = LinuxRouted::linux_tunnel();
    linux.pmtudisc = pmtudisc;
    let (t, ipip) = up(&ours, &linux)?;
    doolittle_pings(&t, 2)?;
    const LEN: usize = 2 << 20;

    t.flush_route_caches()?;
    let a =
        tcp_to_guest(&t.doolittle, &t.guest, CALCULON_PRIVATE, 5301, LEN).with_context(|| {
            format!("2 MiB TCP doolittle → calculon (Linux) across a {HOP_MTU}-byte hop")
        })?;
    let peer = calculon_entry(&ipip, &t)?;
    ensure!(
        peer["learned_mtu"].as_u64() == Some(LEARNED),
        "doolittle: stats --json should show learned_mtu {LEARNED} for calculon after \
         sending to it across the {HOP_MTU}-byte hop: {peer}"
    );
    ensure!(
        ipip.reason(&t.doolittle, UNDERLAY_IF, "pmtu_learned")? >= 1,
        "doolittle: no pmtu_learned counted"
    );
    let route = t.doolittle.exec(&[
        "ip",
        "route",
        "get",
        &CALCULON_PRIVATE.to_string(),
        "from",
        &DOOLITTLE_PRIVATE.to_string(),
    ])?;
    ensure!(
        route.contains(&format!("mtu {LEARNED}")),
        "doolittle: the route to {CALCULON_PRIVATE} should carry the learned PMTU {LEARNED}: \
         {route}"
    );

    // Each direction learns on its own: forget the kernels' PMTU exceptions (the receiver's
    // route would otherwise advertise the smaller MSS and spare the sender the lesson).
    t.flush_route_caches()?;
    let b = tcp_from_guest(&t.doolittle, &t.guest, DOOLITTLE_PRIVATE, 5302, LEN).with_context(
        || format!("2 MiB TCP calculon (Linux) → doolittle across a {HOP_MTU}-byte hop"),
    )?;
    let seen = t.guest.exec(&format!("ip route get {DOOLITTLE_PRIVATE}"))?;
    ensure!(
        seen.contains(&format!("mtu {LEARNED}")),
        "calculon (Linux): its route to {DOOLITTLE_PRIVATE} should carry the PMTU {LEARNED} \
         its tunl1 learned: {seen}"
    );
    eprintln!(
        "2 MiB across the {HOP_MTU}-byte hop (pmtudisc {pmtudisc}): to Linux in {a:.2?}, \
         from Linux in {b:.2?}"
    );
    Ok(())
}

#[test]
fn pmtu_both_ways_across_a_smaller_hop_with_linux() -> Result<()> {
    pmtu_both_ways(true)
}

#[test]
fn pmtu_both_ways_across_a_smaller_hop_with_linux_nopmtudisc() -> Result<()> {
    pmtu_both_ways(false)
}

/// The reassembly counters of ours: (outer_fragment_held, reassembled).
fn reassembly(ipip: &IpipUser, t: &LinuxRouted) -> Result<(u64, u64)> {
    Ok((
        ipip.reason(&t.doolittle, UNDERLAY_IF, "outer_fragment_held")?,
        ipip.reason(&t.doolittle, UNDERLAY_IF, "reassembled")?,
    ))
}

// Outer fragments both ways: Linux with `nopmtudisc`, ours with `pmtudisc = false` (both
// with ttl inherit, as they require), 20 pings of 1400 bytes without DF each way across the
// 1400-byte hop: every one is answered; the outer packets (1420 bytes, no DF) are
// fragmented by the routers and reassembled by the receiving end before decapsulation
// (ours: outer_fragment_held and reassembled; Linux: Ip ReasmOKs).
//
// busybox's ping has no `-M dont`: the guest sends without DF through Linux's own knob for
// that, `net.ipv4.ip_no_pmtu_disc = 1` (new sockets default to IP_PMTUDISC_DONT); the
// capture on doolittle's underlay proves its outer packets came without DF, in pieces.
#[test]
fn outer_fragments_both_ways_with_linux_nopmtudisc() -> Result<()> {
    let _g = serial();
    let ours = Ours {
        tunnel_lines: vec!["pmtudisc = false".into()],
        ..Ours::default()
    };
    let mut linux = LinuxRouted::linux_tunnel();
    linux.pmtudisc = false;
    let (t, ipip) = up(&ours, &linux)?;
    doolittle_pings(&t, 2)?;
    const COUNT: u64 = 20;

    // ours → Linux: doolittle's echo requests are reassembled by Linux, Linux's replies
    // (as big, ICMP replies never carry DF) by ours.
    let (held0, whole0) = reassembly(&ipip, &t)?;
    let linux0 = t.guest.snmp("Ip", "ReasmOKs")?;
    let out = t.doolittle.output(&[
        "ping",
        "-n",
        "-c",
        &COUNT.to_string(),
        "-i",
        "0.2",
        "-W",
        "3",
        "-M",
        "dont",
        "-s",
        "1372",
        "-I",
        &DOOLITTLE_PRIVATE.to_string(),
        &CALCULON_PRIVATE.to_string(),
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains(&format!("{COUNT} received")),
        "1400-byte pings without DF doolittle → calculon (Linux, nopmtudisc) over a \
         {HOP_MTU}-byte hop: {}\ncalculon's tunl1:\n{}",
        describe(&out),
        t.guest.link_stats("tunl1").unwrap_or_default()
    );
    let (held1, whole1) = reassembly(&ipip, &t)?;
    let linux1 = t.guest.snmp("Ip", "ReasmOKs")?;
    eprintln!(
        "ours → Linux: Linux reassembled {}, ours held {} and reassembled {}",
        linux1 - linux0,
        held1 - held0,
        whole1 - whole0
    );
    ensure!(
        linux1 - linux0 >= COUNT,
        "calculon (Linux) should have reassembled at least {COUNT} datagrams (Ip ReasmOKs), \
         got {}",
        linux1 - linux0
    );
    ensure!(
        whole1 - whole0 >= COUNT && held1 - held0 >= COUNT,
        "doolittle should have reassembled at least {COUNT} of Linux's replies from held \
         fragments, got {} from {}",
        whole1 - whole0,
        held1 - held0
    );

    // Linux → ours: the guest's echo requests, without DF.
    t.guest.sysctl("net.ipv4.ip_no_pmtu_disc", "1")?;
    let capture = Capture::open(&t.doolittle, UNDERLAY_IF)?;
    let cmd = format!("ping -c {COUNT} -i 0.2 -w 40 -s 1372 {DOOLITTLE_PRIVATE}");
    let (pieces, answer) = std::thread::scope(|s| {
        let collector = s.spawn(|| {
            capture.collect(Duration::from_secs(50), 2 * COUNT as usize, |f| {
                let h = f.header();
                !f.outgoing
                    && h.protocol() == 4
                    && h.src() == CALCULON_UNDERLAY
                    && (h.mf() || h.frag_offset() != 0)
            })
        });
        let answer = t.guest.run_timeout(&cmd, Duration::from_secs(60));
        let pieces = collector
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread panicked"));
        (pieces, answer)
    });
    let (st, text) = answer?;
    let pieces = pieces??;
    ensure!(
        st == 0 && text.contains(&format!("{COUNT} packets received")),
        "calculon (Linux, nopmtudisc): `{cmd}` failed ({st}):\n{text}"
    );
    let (held2, whole2) = reassembly(&ipip, &t)?;
    let linux2 = t.guest.snmp("Ip", "ReasmOKs")?;
    eprintln!(
        "Linux → ours: {} outer fragments from Linux captured, ours held {} and reassembled \
         {}, Linux reassembled {}",
        pieces.len(),
        held2 - held1,
        whole2 - whole1,
        linux2 - linux1
    );
    // A router fragments only what has no DF: pieces prove the guest sent without it.
    let first = pieces
        .iter()
        .filter(|f| f.header().frag_offset() == 0)
        .count();
    ensure!(
        first >= COUNT as usize,
        "Linux's outer packets should have reached doolittle in pieces (no DF, fragmented \
         at the {HOP_MTU}-byte hop): {} fragments captured, {first} of them first pieces",
        pieces.len()
    );
    ensure!(
        whole2 - whole1 >= COUNT && held2 - held1 >= COUNT,
        "doolittle should have reassembled at least {COUNT} of Linux's echo requests from \
         held fragments, got {} from {}",
        whole2 - whole1,
        held2 - held1
    );
    ensure!(
        linux2 - linux1 >= COUNT,
        "calculon (Linux) should have reassembled at least {COUNT} of ours' replies (Ip \
         ReasmOKs), got {}",
        linux2 - linux1
    );
    Ok(())
}

const NOT_ECT: u8 = 0b00;
const ECT_1: u8 = 0b01;
const ECT_0: u8 = 0b10;
const CE: u8 = 0b11;
const CODEPOINTS: [u8; 4] = [NOT_ECT, ECT_1, ECT_0, CE];

fn ecn_name(c: u8) -> &'static str {
    match c & 3 {
        NOT_ECT => "not-ECT",
        ECT_1 => "ECT(1)",
        ECT_0 => "ECT(0)",
        _ => "CE",
    }
}

/// The decapsulation rule (RFC 6040 normal mode as Linux's `INET_ECN_decapsulate`), written
/// out independently of the data path: the inner codepoint delivered, `None` = dropped.
fn decap_rule(outer: u8, inner: u8) -> Option<u8> {
    match (outer, inner) {
        (CE, NOT_ECT) => None,
        (_, NOT_ECT) => Some(NOT_ECT),
        (CE, _) => Some(CE),
        (ECT_1, ECT_0) => Some(ECT_1),
        _ => Some(inner),
    }
}

/// The encapsulation rule (`INET_ECN_encapsulate`): the inner codepoint, CE as ECT(0).
fn encap_rule(inner: u8) -> u8 {
    if inner == CE {
        ECT_0
    } else {
        inner
    }
}

/// DSCPs that make a copied TOS byte visible: EF on the outer header, AF11 on the inner.
const OUTER_DSCP: u8 = 0xb8;
const INNER_DSCP: u8 = 0x28;
/// Where the decapsulated packets go so that a router forwards them, unchanged but for the
/// TTL, out of a plain interface we can capture on.
const REFLECT: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);

/// `p` (an IPv4 packet) with its TOS byte, TTL and DF as given and the header checksum
/// recomputed.
fn stamp(mut p: Vec<u8>, tos: u8, ttl: u8, df: bool) -> Vec<u8> {
    p[1] = tos;
    p[8] = ttl;
    if df {
        p[6] |= 0x40;
    } else {
        p[6] &= !0x40;
    }
    p[10..12].copy_from_slice(&[0, 0]);
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let c = checksum(&p[..ihl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

/// The UDP destination port of an IPv4 header, if it carries UDP.
fn udp_dport(h: Ipv4Header<'_>) -> Option<u16> {
    let at = h.ihl();
    (h.protocol() == 17 && h.0.len() >= at + 4)
        .then(|| u16::from_be_bytes([h.0[at + 2], h.0[at + 3]]))
}

/// The 16 (outer, inner) pairs, numbered for the UDP port that tells them apart.
fn pairs() -> Vec<(usize, u8, u8)> {
    let mut v = Vec::new();
    for (o, &outer) in CODEPOINTS.iter().enumerate() {
        for (i, &inner) in CODEPOINTS.iter().enumerate() {
            v.push((o * 4 + i, outer, inner));
        }
    }
    v
}

/// One decapsulator under test: who sends the 16 crafted IPIP packets (with the outer
/// addresses the decapsulator accepts) and where the forwarded inner packets are captured.
struct DecapBed<'a> {
    who: &'static str,
    sender: &'a ipip_tests::Netns,
    outer: (Ipv4Addr, Ipv4Addr),
    inner_src: Ipv4Addr,
    capture_ns: &'a ipip_tests::Netns,
    capture_if: &'static str,
    /// The forwarded packet leaves the capture namespace (`true`) or arrives in it.
    outgoing: bool,
    port_base: u16,
}

/// Sends the 16 combinations through `bed`'s decapsulator; returns, per pair index, the TOS
/// byte of the inner packet it delivered (absent: dropped).
fn decap_through(bed: &DecapBed<'_>) -> Result<BTreeMap<usize, u8>> {
    let capture = Capture::open(bed.capture_ns, bed.capture_if)?;
    for (n, outer, inner) in pairs() {
        let port = bed.port_base + n as u16;
        let payload = format!("ecn {} over {}", ecn_name(outer), ecn_name(inner));
        let inner_pkt = stamp(
            udp(bed.inner_src, REFLECT, port, port, payload.as_bytes()),
            INNER_DSCP | inner,
            64,
            true,
        );
        let pkt = stamp(
            ipip_packet(bed.outer.0, bed.outer.1, &inner_pkt),
            OUTER_DSCP | outer,
            64,
            true,
        );
        send_raw_ipv4(bed.sender, &pkt, 1)
            .with_context(|| format!("sending {payload} toward {}", bed.who))?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let range = bed.port_base..bed.port_base + 16;
    // 15 come through; waiting for the 16th bounds the wait and catches a late one.
    let frames = capture.collect(Duration::from_secs(6), 16, |f: &Frame| {
        let h = f.header();
        f.outgoing == bed.outgoing
            && h.dst() == REFLECT
            && h.src() == bed.inner_src
            && udp_dport(h).is_some_and(|p| range.contains(&p))
    })?;
    let mut got = BTreeMap::new();
    for f in &frames {
        let h = f.header();
        let n = usize::from(udp_dport(h).context("udp")? - bed.port_base);
        ensure!(
            got.insert(n, h.tos()).is_none(),
            "{}: pair {n} delivered twice",
            bed.who
        );
    }
    Ok(got)
}

/// Every pair whose delivered result differs from the rule, one line each.
fn decap_mismatches(who: &str, got: &BTreeMap<usize, u8>) -> Vec<String> {
    let mut bad = Vec::new();
    for (n, outer, inner) in pairs() {
        let want = decap_rule(outer, inner).map(|c| INNER_DSCP | c);
        let have = got.get(&n).copied();
        if have != want {
            let show = |v: Option<u8>| {
                v.map_or("dropped".to_string(), |t| {
                    format!("tos {t:#04x} ({})", ecn_name(t))
                })
            };
            bad.push(format!(
                "{who}: outer {} over inner {}: delivered {}, the rule says {}",
                ecn_name(outer),
                ecn_name(inner),
                show(have),
                show(want)
            ));
        }
    }
    bad
}

/// One tunnel configuration both ends get for the encapsulation check.
struct Variant {
    what: &'static str,
    ours: &'static [&'static str],
    linux_ttl: Option<Ttl>,
    linux_tos: Option<&'static str>,
    pmtudisc: bool,
    /// The outer TTL: fixed, or `None` for the inner one.
    ttl: Option<u8>,
    /// The outer TOS before ECN: fixed, or `None` for the inner one.
    tos: Option<u8>,
    /// DF on the crafted inner packets.
    inner_df: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        what: "defaults (ttl inherit, tos 0, pmtudisc)",
        ours: &[],
        linux_ttl: None,
        linux_tos: None,
        pmtudisc: true,
        ttl: None,
        tos: Some(0),
        inner_df: true,
    },
    Variant {
        what: "ttl 64, tos inherit",
        ours: &["ttl = 64", "tos = \"inherit\""],
        linux_ttl: Some(Ttl::Fixed(64)),
        linux_tos: Some("inherit"),
        pmtudisc: true,
        ttl: Some(64),
        tos: None,
        inner_df: true,
    },
    Variant {
        what: "tos 0xb8 (EF)",
        ours: &["tos = 184"],
        linux_ttl: None,
        linux_tos: Some("0xb8"),
        pmtudisc: true,
        ttl: None,
        tos: Some(0xb8),
        inner_df: true,
    },
    Variant {
        what: "nopmtudisc, tos inherit, inner without DF",
        ours: &["pmtudisc = false", "tos = \"inherit\""],
        linux_ttl: Some(Ttl::Inherit),
        linux_tos: Some("inherit"),
        pmtudisc: false,
        ttl: None,
        tos: None,
        inner_df: false,
    },
];

/// The inner TTL as each tunnel sees it (Linux forwards, so it receives one more).
const ENCAP_INNER_TTL: u8 = 40;

/// For each inner codepoint, a packet encapsulated by ours (sent from doolittle to calculon's
/// private address) and one by Linux (sent from r2 to doolittle's private address, which the
/// guest forwards into its tunl1), each captured where its sender puts it on the wire (ours
/// on doolittle's eth0, Linux's on r2's tap: no router has touched either); checks each
/// outer header against the rule and ours' against Linux's, field by field.
fn encap_check(t: &LinuxRouted, v: &Variant) -> Result<Vec<String>> {
    let ours_wire = Capture::open(&t.doolittle, UNDERLAY_IF)?;
    let linux_wire = Capture::open(&t.r2, TAP)?;
    for &e in &CODEPOINTS {
        let tos = INNER_DSCP | e;
        let port = 6200 + u16::from(e);
        let mine = stamp(
            udp(
                DOOLITTLE_PRIVATE,
                CALCULON_PRIVATE,
                port,
                port,
                b"ecn encap, ours",
            ),
            tos,
            ENCAP_INNER_TTL,
            v.inner_df,
        );
        send_raw_ipv4(&t.doolittle, &mine, 1).context("sending through ours")?;
        let port = 6300 + u16::from(e);
        let linux = stamp(
            udp(R2_NEAR, DOOLITTLE_PRIVATE, port, port, b"ecn encap, Linux"),
            tos,
            ENCAP_INNER_TTL + 1,
            v.inner_df,
        );
        send_raw_ipv4(&t.r2, &linux, 1).context("sending through Linux")?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let keep = |src: Ipv4Addr, ports: std::ops::Range<u16>| {
        move |f: &Frame| {
            let h = f.header();
            h.protocol() == 4
                && h.src() == src
                && f.inner()
                    .and_then(udp_dport)
                    .is_some_and(|p| ports.contains(&p))
        }
    };
    let mut frames = ours_wire.collect(
        Duration::from_secs(5),
        4,
        keep(DOOLITTLE_UNDERLAY, 6200..6204),
    )?;
    frames.extend(linux_wire.collect(
        Duration::from_secs(8),
        4,
        keep(CALCULON_UNDERLAY, 6300..6304),
    )?);
    let find = |src: Ipv4Addr, port: u16| {
        frames
            .iter()
            .find(|f| f.header().src() == src && f.inner().and_then(udp_dport) == Some(port))
    };
    let mut bad = Vec::new();
    for &e in &CODEPOINTS {
        let inner_tos = INNER_DSCP | e;
        let want_tos = (v.tos.unwrap_or(inner_tos) & !3) | encap_rule(e);
        let want_ttl = v.ttl.unwrap_or(ENCAP_INNER_TTL);
        let want_df = v.pmtudisc || v.inner_df;
        let (Some(mine), Some(linux)) = (
            find(DOOLITTLE_UNDERLAY, 6200 + u16::from(e)),
            find(CALCULON_UNDERLAY, 6300 + u16::from(e)),
        ) else {
            bad.push(format!(
                "{}: inner {}: captured {} of ours and {} of Linux's outer packets",
                v.what,
                ecn_name(e),
                usize::from(find(DOOLITTLE_UNDERLAY, 6200 + u16::from(e)).is_some()),
                usize::from(find(CALCULON_UNDERLAY, 6300 + u16::from(e)).is_some())
            ));
            continue;
        };
        for (who, f) in [("Linux", linux), ("ours", mine)] {
            let (o, i) = (f.header(), f.inner().context("inner")?);
            if o.tos() != want_tos || o.ttl() != want_ttl || o.df() != want_df {
                bad.push(format!(
                    "{}: inner {} (tos {:#04x}, TTL {}, DF {}): {who}'s outer tos {:#04x} \
                     ({}), TTL {}, DF {}; expected tos {want_tos:#04x} ({}), TTL {want_ttl}, \
                     DF {want_df}",
                    v.what,
                    ecn_name(e),
                    i.tos(),
                    i.ttl(),
                    i.df(),
                    o.tos(),
                    ecn_name(o.tos()),
                    o.ttl(),
                    o.df(),
                    ecn_name(want_tos)
                ));
            }
            if i.tos() != inner_tos {
                bad.push(format!(
                    "{}: {who} changed the inner tos {inner_tos:#04x} to {:#04x}",
                    v.what,
                    i.tos()
                ));
            }
        }
        let (a, b) = (mine.header().outer_fields(), linux.header().outer_fields());
        if a != b {
            bad.push(format!(
                "{}: inner {}: ours' outer header {a:?} differs from Linux's {b:?}",
                v.what,
                ecn_name(e)
            ));
        }
    }
    Ok(bad)
}

// ECN against Linux. (i) Decapsulation: the 16 (outer, inner) codepoint pairs as crafted
// IPIP (outer DSCP EF, inner AF11) through Linux's tunl1 and through ours; each forwards the
// decapsulated packet to 10.0.9.1 out of a plain interface, where it is captured: both
// deliver exactly what RFC 6040's rule as Linux implements it says (outer CE over not-ECT
// dropped and counted, CE marks ECT, ECT(1) over ECT(0) gives ECT(1), otherwise unchanged;
// the outer DSCP never copied in). (ii) Encapsulation: for each inner codepoint, ours and
// Linux put the same outer header on (ECN copied, CE as ECT(0); TTL, TOS and DF as the
// tunnel options say), under Linux's ttl/tos/nopmtudisc variants and ours configured alike.
#[test]
fn ecn_all_sixteen_combinations_and_encap_agree_with_linux() -> Result<()> {
    let _g = serial();
    let ours = Ours::default();
    let mut linux = LinuxRouted::linux_tunnel();
    let (t, ipip) = up(&ours, &linux)?;
    // Both decapsulators forward what they decapsulate to 10.0.9.0/24 (the guest out of its
    // eth0 toward r2, doolittle out of eth0 toward r1); r2 sends plain traffic for
    // doolittle's private prefix to the guest, which forwards it into its tunl1.
    t.guest.sysctl("net.ipv4.ip_forward", "1")?;
    t.guest
        .exec(&format!("ip route add 10.0.9.0/24 via {R2_NEAR} dev eth0"))?;
    t.doolittle
        .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    t.r2.exec(&[
        "ip",
        "route",
        "add",
        "10.0.1.0/24",
        "via",
        &CALCULON_UNDERLAY.to_string(),
    ])?;
    doolittle_pings(&t, 2)?;

    let mut bad = Vec::new();
    let frame_errors0 = t.guest.dev_stat("tunl1", "rx_frame_errors")?;
    let linux_got = decap_through(&DecapBed {
        who: "Linux",
        sender: &t.doolittle,
        outer: (DOOLITTLE_UNDERLAY, CALCULON_UNDERLAY),
        inner_src: DOOLITTLE_PRIVATE,
        capture_ns: &t.r2,
        capture_if: TAP,
        outgoing: false,
        port_base: 6000,
    })?;
    let frame_errors = t.guest.dev_stat("tunl1", "rx_frame_errors")? - frame_errors0;
    bad.extend(decap_mismatches("Linux", &linux_got));
    if frame_errors != 1 {
        bad.push(format!(
            "Linux: tunl1 should count the one CE-over-not-ECT drop in rx_frame_errors, \
             counted {frame_errors}"
        ));
    }
    let drops0 = ipip.reason(&t.doolittle, UNDERLAY_IF, "ecn_ce_on_not_ect")?;
    let ours_got = decap_through(&DecapBed {
        who: "ours",
        sender: &t.r2,
        outer: (CALCULON_UNDERLAY, DOOLITTLE_UNDERLAY),
        inner_src: Ipv4Addr::new(10, 0, 2, 7),
        capture_ns: &t.doolittle,
        capture_if: UNDERLAY_IF,
        outgoing: true,
        port_base: 6100,
    })?;
    let drops = ipip.reason(&t.doolittle, UNDERLAY_IF, "ecn_ce_on_not_ect")? - drops0;
    bad.extend(decap_mismatches("ours", &ours_got));
    if drops != 1 {
        bad.push(format!(
            "ours: ecn_ce_on_not_ect should count the one CE-over-not-ECT drop, counted {drops}"
        ));
    }
    if linux_got != ours_got {
        bad.push(format!(
            "ours and Linux decapsulate differently (pair index → delivered tos): Linux \
             {linux_got:02x?}, ours {ours_got:02x?}"
        ));
    }
    eprintln!(
        "decap: Linux delivered {} of 16, ours {} of 16",
        linux_got.len(),
        ours_got.len()
    );

    for (k, v) in VARIANTS.iter().enumerate() {
        if k > 0 {
            linux.ttl = v.linux_ttl;
            linux.tos = v.linux_tos.map(str::to_string);
            linux.pmtudisc = v.pmtudisc;
            let ours = Ours {
                tunnel_lines: v.ours.iter().map(|s| s.to_string()).collect(),
                ..Ours::default()
            };
            t.reconfigure(&ipip, &ours, &linux)
                .with_context(|| format!("reconfiguring both ends for {}", v.what))?;
            doolittle_pings(&t, 1)?;
        }
        let start = Instant::now();
        let found = encap_check(&t, v)?;
        eprintln!(
            "encap, {}: {} mismatches ({:.1?})",
            v.what,
            found.len(),
            start.elapsed()
        );
        bad.extend(found);
    }
    ensure!(
        bad.is_empty(),
        "ECN against Linux, {} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    Ok(())
}
