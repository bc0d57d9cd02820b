//! Packet tests: the loaded XDP and TC programs run on crafted frames with BPF_PROG_TEST_RUN;
//! each case asserts the exact verdict, the exact output bytes and the exact counter deltas.
//! Expected frames are built with etherparse, never with our own encoder. The decapsulation
//! tables are defined once and run against both decapsulators (XDP and TC ingress, [`Hook`]).
//!
//! Needs root: `sudo -E cargo test -p ipip-user --test packet`.

mod common;

use common::*;
use etherparse::{IpNumber, Ipv4Header};
use ipip_common::Reason;

/// Two peers, the seed's calculon plus a second one, so that "inside another peer's prefix"
/// can be told apart from "inside no prefix".
const TWO_PEERS: &str = r#"
[[peer]]
name = "calculon"
remote = "192.0.2.129"
routes = ["10.0.2.0/24", "10.10.10.0/24"]

[[peer]]
name = "bender"
remote = "192.0.2.130"
routes = ["10.0.3.0/24"]
"#;

const CALCULON: [u8; 4] = [192, 0, 2, 129];
const BENDER: [u8; 4] = [192, 0, 2, 130];
const STRANGER: [u8; 4] = [192, 0, 2, 200];

/// An outer header from `remote` to us, as a Linux ipip peer sends it (DF, ttl 64, tos 0).
fn from(remote: [u8; 4]) -> V4 {
    V4::new(remote, LOCAL).id(0x0101)
}

fn pass_decap(hook: Hook, name: &'static str, outer: V4, inner: Vec<u8>, peer: u32) -> Case {
    Case {
        name,
        input: ipip(&outer, &inner),
        verdict: hook.pass(),
        output: Expect::Frame(eth4(&inner)),
        reason: None,
        peer: Some((peer, rx(inner.len()))),
    }
}

fn dropped(hook: Hook, name: &'static str, input: Vec<u8>, reason: Reason) -> Case {
    Case {
        name,
        input,
        verdict: hook.shot(),
        output: Expect::Dropped,
        reason: Some(reason),
        peer: None,
    }
}

fn untouched(name: &'static str, input: Vec<u8>, verdict: u32) -> Case {
    Case {
        name,
        input,
        verdict,
        output: Expect::Unchanged,
        reason: None,
        peer: None,
    }
}

/// A frame too short to hold an outer IPv4 header, which the decapsulator must leave alone.
///
/// XDP runs the program on any frame of at least ETH_HLEN bytes. A TC test run builds an skb
/// and the kernel (6.18 at least) refuses an ETH_P_IP frame without a whole IPv4 header with
/// EINVAL before the program runs, so on TC the case can only check that nothing moved. Such a
/// frame can still reach real TC ingress (ip_rcv's checks come after it); classify's bounds
/// checks are shared with XDP, which covers it. Should a kernel run the program here, the frame
/// must come out untouched.
fn short(hook: Hook, name: &'static str, input: Vec<u8>) -> Case {
    Case {
        name,
        input,
        verdict: hook.pass(),
        output: match hook {
            Hook::Xdp => Expect::Unchanged,
            Hook::Tc => Expect::RefusedOrUnchanged,
        },
        reason: None,
        peer: None,
    }
}

/// IPIP whose outer header is cut short: counted and dropped (ip_rcv drops it too). On TC the
/// kernel refuses such a test run (see [`short`]).
fn truncated(hook: Hook, name: &'static str, input: Vec<u8>) -> Case {
    match hook {
        Hook::Xdp => dropped(hook, name, input, Reason::DropMalformedOuter),
        Hook::Tc => short(hook, name, input),
    }
}

/// The decapsulation table, defined once and run for both decapsulators.
fn decap_table(hook: Hook) {
    let mut dp = datapath(TWO_PEERS, LOCAL);
    let to_host = |src: [u8; 4]| V4::new(src, [10, 0, 1, 1]).ttl(63);
    let icmp_in = icmp(&to_host([10, 0, 2, 7]), 84);
    let mut ecn_ce_ect0 = to_host([10, 0, 2, 7]).tos(0xb8 | 0b10);
    let ce_ect0_in = udp(&ecn_ce_ect0, 100);
    ecn_ce_ect0.tos = 0xb8 | 0b11;
    let ce_ect0_out = udp(&ecn_ce_ect0, 100);
    let mut ecn_ce_ect1 = to_host([10, 0, 2, 7]).tos(0b01);
    let ce_ect1_in = udp(&ecn_ce_ect1, 60);
    ecn_ce_ect1.tos = 0b11;
    let ce_ect1_out = udp(&ecn_ce_ect1, 60);
    let ce = from(CALCULON).tos(0b11);

    // Ethernet padding/trailer after the outer packet. Neither hook trims to the outer total
    // length: XDP moves the head, bpf_skb_adjust_room removes 20 bytes behind the MAC header,
    // so the trailer stays behind the inner packet in both, and ip_rcv trims it (to the inner
    // total length) as it does for any padded frame. Same expectation for both hooks.
    let mut trailer = ipip(&from(CALCULON), &icmp_in);
    trailer.extend_from_slice(&[0xee; 6]);
    let mut trailer_out = eth4(&icmp_in);
    trailer_out.extend_from_slice(&[0xee; 6]);

    // The smallest inner packet there is: a bare IPv4 header (protocol 59, no next header).
    // bpf_skb_adjust_room refuses to leave less than an IPv4 header behind the MAC header with
    // DECAP_L3_IPV4; this is exactly that minimum.
    let bare_inner = to_host([10, 0, 2, 7])
        .header(IpNumber::IPV6_NO_NEXT_HEADER, 0)
        .to_bytes()
        .to_vec();

    let mut bad_version = ipip(&from(CALCULON), &icmp_in);
    bad_version[14] = 0x55;
    let mut inner_ihl_4 = icmp(&to_host([10, 0, 2, 7]), 84);
    inner_ihl_4[0] = 0x44;

    let cases = vec![
        pass_decap(
            hook,
            "valid ICMP inner from calculon",
            from(CALCULON),
            icmp_in.clone(),
            0,
        ),
        pass_decap(
            hook,
            "valid UDP inner from bender",
            from(BENDER),
            udp(&to_host([10, 0, 3, 4]), 200),
            1,
        ),
        pass_decap(
            hook,
            "inner source in calculon's second prefix",
            from(CALCULON),
            icmp(&to_host([10, 10, 10, 3]), 64),
            0,
        ),
        pass_decap(
            hook,
            "outer without DF, ttl 1, id 0 (outer fields are not the inner's business)",
            from(CALCULON).df(false).ttl(1).id(0),
            icmp_in.clone(),
            0,
        ),
        pass_decap(
            hook,
            "inner fragment (MF) is decapsulated as is",
            from(CALCULON),
            udp(&to_host([10, 0, 2, 7]).df(false).mf(true), 1000),
            0,
        ),
        pass_decap(
            hook,
            "inner with IP options is decapsulated as is",
            from(CALCULON),
            icmp(&to_host([10, 0, 2, 7]).options(&[1, 1, 1, 0]), 88),
            0,
        ),
        pass_decap(
            hook,
            "inner is a bare 20-byte IPv4 header",
            from(CALCULON),
            bare_inner,
            0,
        ),
        Case {
            name: "Ethernet trailer after the outer packet is kept behind the inner one",
            input: trailer,
            verdict: hook.pass(),
            output: Expect::Frame(trailer_out),
            reason: None,
            peer: Some((0, rx(84))),
        },
        dropped(
            hook,
            "unknown peer (outer source not configured)",
            ipip(&from(STRANGER), &icmp(&to_host([10, 0, 2, 7]), 84)),
            Reason::DropUnknownPeer,
        ),
        dropped(
            hook,
            "inner source outside every prefix",
            ipip(&from(CALCULON), &icmp(&to_host([10, 99, 0, 1]), 84)),
            Reason::DropSpoofedSource,
        ),
        dropped(
            hook,
            "inner source inside the OTHER peer's prefix",
            ipip(&from(CALCULON), &icmp(&to_host([10, 0, 3, 4]), 84)),
            Reason::DropSpoofedSource,
        ),
        dropped(
            hook,
            "inner source is the tunnel's own outer source",
            ipip(&from(CALCULON), &icmp(&to_host(CALCULON), 84)),
            Reason::DropSpoofedSource,
        ),
        Case {
            name: "outer destination is not our local address",
            input: ipip(&V4::new(CALCULON, [192, 0, 2, 99]), &icmp_in),
            verdict: hook.pass(),
            output: Expect::Unchanged,
            reason: Some(Reason::PassIpipNotLocal),
            peer: None,
        },
        untouched(
            "non-IPIP IPv4 (UDP) to us",
            eth4(&udp(&V4::new(CALCULON, LOCAL), 100)),
            hook.pass(),
        ),
        untouched("ARP", arp(), hook.pass()),
        untouched("IPv6", eth6(&udp6(100)), hook.pass()),
        untouched(
            "IPv6 carrying a 4 in the IPv4 protocol position",
            {
                let mut f = eth6(&udp6(100));
                f[14 + 9] = 4;
                f
            },
            hook.pass(),
        ),
        short(hook, "Ethernet header only (IPv4 type)", eth4(&[])),
        truncated(
            hook,
            "outer IPv4 header (protocol 4) cut at 19 bytes",
            ipip(&from(CALCULON), &icmp_in)[..14 + 19].to_vec(),
        ),
        truncated(
            hook,
            "outer IPv4 header (protocol 4) cut at 10 bytes",
            ipip(&from(CALCULON), &icmp_in)[..14 + 10].to_vec(),
        ),
        short(
            hook,
            "IPv4 cut at 9 bytes (protocol unknown)",
            ipip(&from(CALCULON), &icmp_in)[..14 + 9].to_vec(),
        ),
        dropped(
            hook,
            "outer header only, no inner bytes",
            ipip(&from(CALCULON), &[]),
            Reason::DropMalformedInner,
        ),
        dropped(
            hook,
            "inner header cut: outer valid, 10 inner bytes",
            ipip(&from(CALCULON), &icmp_in[..10]),
            Reason::DropMalformedInner,
        ),
        dropped(
            hook,
            "outer total length larger than the frame",
            ipip_with_tot_len(&from(CALCULON), 20 + 84 + 1, &icmp_in),
            Reason::DropMalformedOuter,
        ),
        dropped(
            hook,
            "outer total length smaller than inner total length",
            ipip_with_tot_len(&from(CALCULON), 20 + 83, &icmp_in),
            Reason::DropMalformedInner,
        ),
        dropped(
            hook,
            "outer version 5 with protocol 4",
            bad_version,
            Reason::DropMalformedOuter,
        ),
        dropped(
            hook,
            "outer fragment: MF set",
            ipip(&from(CALCULON).df(false).mf(true), &icmp_in),
            Reason::DropOuterFragment,
        ),
        dropped(
            hook,
            "outer fragment: offset set (last fragment)",
            ipip(&from(CALCULON).df(false).frag_offset(185), &icmp_in),
            Reason::DropOuterFragment,
        ),
        pass_decap(
            hook,
            "outer IHL 6 (IP options): stripped with the header, as Linux does",
            from(CALCULON).options(&[1, 1, 1, 0]),
            icmp_in.clone(),
            0,
        ),
        dropped(
            hook,
            "inner version 6",
            ipip(&from(CALCULON), &udp6(100)),
            Reason::DropMalformedInner,
        ),
        dropped(
            hook,
            "inner IHL 4",
            ipip(&from(CALCULON), &inner_ihl_4),
            Reason::DropMalformedInner,
        ),
        Case {
            name: "ECN: outer CE + inner ECT(0) -> inner CE, checksum updated",
            input: ipip(&ce, &ce_ect0_in),
            verdict: hook.pass(),
            output: Expect::Frame(eth4(&ce_ect0_out)),
            reason: None,
            peer: Some((0, rx(100))),
        },
        Case {
            name: "ECN: outer CE + inner ECT(1) -> inner CE, checksum updated",
            input: ipip(&ce, &ce_ect1_in),
            verdict: hook.pass(),
            output: Expect::Frame(eth4(&ce_ect1_out)),
            reason: None,
            peer: Some((0, rx(60))),
        },
        pass_decap(
            hook,
            "ECN: outer CE + inner CE -> unchanged",
            ce.clone(),
            udp(&to_host([10, 0, 2, 7]).tos(0b11), 60),
            0,
        ),
        pass_decap(
            hook,
            "ECN: outer ECT(0) + inner not-ECT -> unchanged",
            from(CALCULON).tos(0b10),
            icmp_in.clone(),
            0,
        ),
        pass_decap(
            hook,
            "ECN: outer not-ECT + inner ECT(0) -> unchanged",
            from(CALCULON),
            udp(&to_host([10, 0, 2, 7]).tos(0b10), 60),
            0,
        ),
        dropped(
            hook,
            "ECN: outer CE + inner not-ECT",
            ipip(&ce, &icmp_in),
            Reason::DropEcnNotEct,
        ),
    ];
    run_table(&mut dp, hook.prog(), 2, &cases);

    // Independently of the table: the CE-marked inner packet's checksum verifies.
    let (_, out) = run(&mut dp, hook.prog(), &ipip(&ce, &ce_ect0_in)).unwrap();
    assert_ipv4_checksum("inner after CE marking", &out[14..]).unwrap();
    let (h, _) = Ipv4Header::from_slice(&out[14..]).unwrap();
    assert_eq!(h.ecn.value(), 0b11, "inner ECN is CE");
    assert_eq!(h.dscp.value(), 0xb8 >> 2, "inner DSCP untouched");
}

#[test]
fn xdp_decap() {
    decap_table(Hook::Xdp);
}

#[test]
fn tc_decap() {
    decap_table(Hook::Tc);
}

/// The kernel refuses test runs on less than ETH_HLEN bytes for both program types.
fn decap_rejects_frames_shorter_than_ethernet(hook: Hook) {
    let mut dp = datapath(TWO_PEERS, LOCAL);
    let before = counters(&dp, 2);
    let r = run(&mut dp, hook.prog(), &[0u8; 13]);
    assert!(
        r.is_err(),
        "the kernel refuses {hook:?} test runs on less than ETH_HLEN bytes, got {r:?}"
    );
    assert_eq!(counters(&dp, 2), before, "no counter moved");
}

#[test]
fn xdp_decap_rejects_frames_shorter_than_ethernet() {
    decap_rejects_frames_shorter_than_ethernet(Hook::Xdp);
}

#[test]
fn tc_decap_rejects_frames_shorter_than_ethernet() {
    decap_rejects_frames_shorter_than_ethernet(Hook::Tc);
}

#[test]
fn tc_short_ipv4_frames_are_refused_or_untouched() {
    // The kernel builds the skb for a TC test run itself and (6.18 at least) refuses an
    // ETH_P_IP frame without a whole IPv4 header with EINVAL. Should a kernel accept one, the
    // program must leave it alone.
    let mut dp = datapath(TWO_PEERS, LOCAL);
    let full = eth4(&icmp(&to_peer([10, 0, 2, 7]), 84));
    for len in [14, 14 + 1, 14 + 19] {
        let frame = &full[..len];
        let before = counters(&dp, 2);
        match run(&mut dp, Prog::Tc, frame) {
            Err(e) => eprintln!(
                "{len}-byte frame refused by the kernel: {}",
                error_chain(&e)
            ),
            Ok((verdict, out)) => {
                assert_eq!(verdict, TC_ACT_OK, "{len}-byte frame");
                assert_eq!(out, frame, "{len}-byte frame left as it is");
            }
        }
        assert_eq!(
            counters(&dp, 2),
            before,
            "{len}-byte frame: no counter moved"
        );
    }
}

#[test]
fn tc_encap_outer_length_is_the_packet_length() {
    // Linux's ipip driver writes the outer total length from the skb (ip_local_out:
    // iph->tot_len = htons(skb->len)), not from the inner header. A frame whose inner header
    // claims more (or fewer) bytes than the frame holds can reach TC egress (AF_PACKET on the
    // underlay, another program); the outer header must still describe the packet it heads.
    let mut dp = datapath(TWO_PEERS, LOCAL);
    let full = icmp(&to_peer([10, 0, 2, 7]), 84);
    let claims_more = full[..20].to_vec();
    let mut trailing = full.clone();
    trailing.extend_from_slice(&[0xee; 6]);
    let outer_for = |bytes: &[u8]| outer(CALCULON, 0, 64, true, bytes);
    let cases = vec![
        Case {
            name: "inner header claims 84 bytes, frame holds 20",
            input: eth4(&claims_more),
            verdict: TC_ACT_OK,
            output: Expect::Encap {
                outer: outer_for(&claims_more),
                inner: claims_more.clone(),
            },
            reason: None,
            peer: Some((0, tx(20))),
        },
        Case {
            name: "6 bytes after the inner packet",
            input: eth4(&trailing),
            verdict: TC_ACT_OK,
            output: Expect::Encap {
                outer: outer_for(&trailing),
                inner: trailing.clone(),
            },
            reason: None,
            peer: Some((0, tx(90))),
        },
    ];
    run_table(&mut dp, Prog::Tc, 2, &cases);
}

/// Outer header of a packet encapsulated by `peer` remote: tos, ttl and DF given, the rest as
/// Linux's ipip driver sends it. ID and checksum are filled in from the output.
fn outer(remote: [u8; 4], tos: u8, ttl: u8, df: bool, inner: &[u8]) -> Ipv4Header {
    let mut h = V4::new(LOCAL, remote).tos(tos).ttl(ttl).df(df);
    h.id = 0;
    h.header(IpNumber::IPV4, inner.len())
}

fn encap(name: &'static str, inner: Vec<u8>, outer: Ipv4Header, peer: u32) -> Case {
    Case {
        name,
        input: eth4(&inner),
        verdict: TC_ACT_OK,
        output: Expect::Encap {
            outer,
            inner: inner.clone(),
        },
        reason: None,
        peer: Some((peer, tx(inner.len()))),
    }
}

fn to_peer(dst: [u8; 4]) -> V4 {
    V4::new([10, 0, 1, 1], dst)
}

#[test]
fn tc_encap_defaults() {
    // Defaults: ttl inherit, tos 0 (outer DSCP 0, ECN from inner with CE -> ECT(0)), pmtudisc.
    let mut dp = datapath(TWO_PEERS, LOCAL);
    let a = icmp(&to_peer([10, 0, 2, 7]).ttl(17), 84);
    let b = udp(&to_peer([10, 0, 3, 9]).tos(0xb8 | 0b11).ttl(200), 300);
    let c = udp(&to_peer([10, 10, 10, 1]).tos(0x28 | 0b01), 60);
    let d = udp(&to_peer([10, 0, 2, 7]).tos(0b10).df(false), 60);
    let e = udp(&to_peer([10, 0, 2, 7]).df(false).mf(true), 1000);
    let fits = udp(&to_peer([10, 0, 2, 7]), 1480);
    let too_big = udp(&to_peer([10, 0, 2, 7]), 1481);
    let too_big_no_df = udp(&to_peer([10, 0, 2, 7]).df(false), 1481);
    let cases = vec![
        encap(
            "ICMP to calculon, ttl 17 inherited, not-ECT",
            a.clone(),
            outer(CALCULON, 0, 17, true, &a),
            0,
        ),
        encap(
            "UDP to bender, EF+CE -> outer DSCP 0, ECT(0)",
            b.clone(),
            outer(BENDER, 0b10, 200, true, &b),
            1,
        ),
        encap(
            "calculon's second prefix, AF11+ECT(1) -> outer ECT(1)",
            c.clone(),
            outer(CALCULON, 0b01, 64, true, &c),
            0,
        ),
        encap(
            "inner DF clear: pmtudisc sets outer DF anyway, ECT(0) copied",
            d.clone(),
            outer(CALCULON, 0b10, 64, true, &d),
            0,
        ),
        encap(
            "inner fragment (MF): outer DF set, MF clear",
            e.clone(),
            outer(CALCULON, 0, 64, true, &e),
            0,
        ),
        encap(
            "inner exactly the tunnel MTU (1480)",
            fits.clone(),
            outer(CALCULON, 0, 64, true, &fits),
            0,
        ),
        Case {
            name: "inner one byte over the tunnel MTU (1481, DF, no GSO)",
            input: eth4(&too_big),
            verdict: TC_ACT_SHOT,
            output: Expect::Dropped,
            reason: Some(Reason::DropTooBig),
            peer: None,
        },
        Case {
            name: "inner one byte over the tunnel MTU (1481, no DF, no GSO)",
            input: eth4(&too_big_no_df),
            verdict: TC_ACT_SHOT,
            output: Expect::Dropped,
            reason: Some(Reason::DropTooBig),
            peer: None,
        },
        untouched(
            "destination not routed",
            eth4(&icmp(&to_peer([10, 9, 9, 9]), 84)),
            TC_ACT_OK,
        ),
        untouched(
            "destination is the peer's underlay address (not routed)",
            eth4(&icmp(&to_peer(CALCULON), 84)),
            TC_ACT_OK,
        ),
        untouched("ARP", arp(), TC_ACT_OK),
        untouched("IPv6", eth6(&udp6(100)), TC_ACT_OK),
    ];
    run_table(&mut dp, Prog::Tc, 2, &cases);
}

#[test]
fn tc_encap_fixed_ttl_tos_inherit() {
    let file = format!("[tunnel]\nttl = 64\ntos = \"inherit\"\n{TWO_PEERS}");
    let mut dp = datapath(&file, LOCAL);
    let a = icmp(&to_peer([10, 0, 2, 7]).ttl(17).tos(0xb8 | 0b11), 84);
    let b = udp(&to_peer([10, 0, 3, 9]).ttl(255).tos(0x28), 100);
    let c = udp(
        &to_peer([10, 0, 3, 9]).ttl(1).tos(0x28 | 0b01).df(false),
        100,
    );
    let cases = vec![
        encap(
            "EF+CE, ttl 17 -> outer EF+ECT(0), ttl 64",
            a.clone(),
            outer(CALCULON, 0xb8 | 0b10, 64, true, &a),
            0,
        ),
        encap(
            "AF11 not-ECT, ttl 255 -> outer AF11, ttl 64",
            b.clone(),
            outer(BENDER, 0x28, 64, true, &b),
            1,
        ),
        encap(
            "AF11+ECT(1), ttl 1, no DF -> outer AF11+ECT(1), ttl 64, DF",
            c.clone(),
            outer(BENDER, 0x28 | 0b01, 64, true, &c),
            1,
        ),
    ];
    run_table(&mut dp, Prog::Tc, 2, &cases);
}

#[test]
fn tc_encap_fixed_tos() {
    let file = format!("[tunnel]\ntos = 0x28\n{TWO_PEERS}");
    let mut dp = datapath(&file, LOCAL);
    let a = icmp(&to_peer([10, 0, 2, 7]).ttl(17).tos(0xb8 | 0b01), 84);
    let b = icmp(&to_peer([10, 0, 2, 7]).ttl(17).tos(0b11), 84);
    let cases = vec![
        encap(
            "fixed tos 0x28, inner EF+ECT(1) -> outer 0x28+ECT(1)",
            a.clone(),
            outer(CALCULON, 0x28 | 0b01, 17, true, &a),
            0,
        ),
        encap(
            "fixed tos 0x28, inner CE -> outer 0x28+ECT(0)",
            b.clone(),
            outer(CALCULON, 0x28 | 0b10, 17, true, &b),
            0,
        ),
    ];
    run_table(&mut dp, Prog::Tc, 2, &cases);
}

#[test]
fn tc_encap_nopmtudisc() {
    let file = format!("[tunnel]\npmtudisc = false\n{TWO_PEERS}");
    let mut dp = datapath(&file, LOCAL);
    let df = icmp(&to_peer([10, 0, 2, 7]).ttl(17), 84);
    let no_df = icmp(&to_peer([10, 0, 2, 7]).ttl(17).df(false), 84);
    let frag = udp(
        &to_peer([10, 0, 2, 7]).df(false).mf(true).frag_offset(3),
        500,
    );
    let cases = vec![
        encap(
            "inner DF set -> outer DF set",
            df.clone(),
            outer(CALCULON, 0, 17, true, &df),
            0,
        ),
        encap(
            "inner DF clear -> outer DF clear",
            no_df.clone(),
            outer(CALCULON, 0, 17, false, &no_df),
            0,
        ),
        encap(
            "inner fragment (MF, offset 24) -> outer DF, MF and offset clear",
            frag.clone(),
            outer(CALCULON, 0, 64, false, &frag),
            0,
        ),
    ];
    run_table(&mut dp, Prog::Tc, 2, &cases);
}

const NESTED: &str = r#"
[[peer]]
name = "a"
remote = "192.0.2.129"
routes = ["10.0.0.0/8"]

[[peer]]
name = "b"
remote = "192.0.2.130"
routes = ["10.1.0.0/16"]
"#;

#[test]
fn longest_prefix_match_encap() {
    let mut dp = datapath(NESTED, LOCAL);
    let to_b = icmp(&to_peer([10, 1, 2, 3]), 84);
    let to_a = icmp(&to_peer([10, 2, 0, 1]), 84);
    let to_a_edge = icmp(&to_peer([10, 255, 255, 255]), 84);
    let to_b_edge = icmp(&to_peer([10, 1, 255, 255]), 84);
    let tc_cases = vec![
        encap(
            "10.1.2.3 -> b (10.1.0.0/16 beats 10.0.0.0/8)",
            to_b.clone(),
            outer(BENDER, 0, 64, true, &to_b),
            1,
        ),
        encap(
            "10.2.0.1 -> a",
            to_a.clone(),
            outer(CALCULON, 0, 64, true, &to_a),
            0,
        ),
        encap(
            "10.255.255.255 -> a",
            to_a_edge.clone(),
            outer(CALCULON, 0, 64, true, &to_a_edge),
            0,
        ),
        encap(
            "10.1.255.255 -> b",
            to_b_edge.clone(),
            outer(BENDER, 0, 64, true, &to_b_edge),
            1,
        ),
        untouched(
            "11.0.0.1 -> not routed",
            eth4(&icmp(&to_peer([11, 0, 0, 1]), 84)),
            TC_ACT_OK,
        ),
    ];
    run_table(&mut dp, Prog::Tc, 2, &tc_cases);
}

/// Source validation with nested prefixes: the longest prefix decides whose a source is.
fn longest_prefix_match_decap(hook: Hook) {
    let mut dp = datapath(NESTED, LOCAL);
    let to_host = |src: [u8; 4]| V4::new(src, [10, 200, 0, 1]);
    let cases = vec![
        pass_decap(
            hook,
            "from b, source 10.1.2.3 (b's /16)",
            V4::new(BENDER, LOCAL),
            icmp(&to_host([10, 1, 2, 3]), 84),
            1,
        ),
        pass_decap(
            hook,
            "from a, source 10.2.0.1 (a's /8)",
            V4::new(CALCULON, LOCAL),
            icmp(&to_host([10, 2, 0, 1]), 84),
            0,
        ),
        dropped(
            hook,
            "from a, source 10.1.2.3 (inside a's /8 but b owns the /16)",
            ipip(
                &V4::new(CALCULON, LOCAL),
                &icmp(&to_host([10, 1, 2, 3]), 84),
            ),
            Reason::DropSpoofedSource,
        ),
        dropped(
            hook,
            "from b, source 10.2.0.1 (a's)",
            ipip(&V4::new(BENDER, LOCAL), &icmp(&to_host([10, 2, 0, 1]), 84)),
            Reason::DropSpoofedSource,
        ),
    ];
    run_table(&mut dp, hook.prog(), 2, &cases);
}

#[test]
fn xdp_decap_longest_prefix_match() {
    longest_prefix_match_decap(Hook::Xdp);
}

#[test]
fn tc_decap_longest_prefix_match() {
    longest_prefix_match_decap(Hook::Tc);
}

/// TC encap on the head node, then `hook` decap on calculon: the frame comes back unchanged.
fn round_trip(hook: Hook) {
    // Head node (192.0.2.58, LAN 10.0.1.0/24) and calculon (192.0.2.129, LAN 10.0.2.0/24).
    let head_file = r#"
[[peer]]
name = "calculon"
remote = "192.0.2.129"
routes = ["10.0.2.0/24"]
"#;
    let calculon_file = r#"
[[peer]]
name = "head"
remote = "192.0.2.58"
routes = ["10.0.1.0/24"]
"#;
    let mut head = datapath(head_file, LOCAL);
    let mut calculon = datapath(calculon_file, CALCULON);
    let packets = [
        (
            "ICMP",
            icmp(&V4::new([10, 0, 1, 5], [10, 0, 2, 7]).ttl(63), 84),
        ),
        (
            "UDP EF+ECT(0) no DF",
            udp(
                &V4::new([10, 0, 1, 5], [10, 0, 2, 7])
                    .tos(0xb8 | 0b10)
                    .df(false),
                1000,
            ),
        ),
        (
            "UDP CE, full MTU",
            udp(&V4::new([10, 0, 1, 5], [10, 0, 2, 7]).tos(0b11), 1480),
        ),
    ];
    let mut failed = Vec::new();
    for (name, inner) in packets {
        let failures = failed.len();
        let frame = eth4(&inner);
        let (v, wire) = run(&mut head, Prog::Tc, &frame).unwrap();
        if v != TC_ACT_OK || wire.len() != frame.len() + 20 {
            failed.push(format!(
                "{name}: encap verdict {v}, {} bytes out of {}",
                wire.len(),
                frame.len()
            ));
            continue;
        }
        let before = counters(&calculon, 1);
        let (v, back) = run(&mut calculon, hook.prog(), &wire).unwrap();
        let delta = counters(&calculon, 1).delta(&before);
        if v != hook.pass() {
            failed.push(format!("{name}: decap verdict {v}"));
        }
        if back != frame {
            failed.push(format!("{name}: round trip changed the frame"));
        }
        if delta != Counters::expected(1, None, Some((0, rx(inner.len())))) {
            failed.push(format!("{name}: counters {delta:?}"));
        }
        eprintln!(
            "round trip TC encap -> {hook:?} decap, {name}: {}",
            if failed.len() == failures {
                "ok"
            } else {
                "FAIL"
            }
        );
    }
    assert!(
        failed.is_empty(),
        "round trip (TC encap -> {hook:?} decap) failures:\n{}",
        failed.join("\n")
    );
}

#[test]
fn round_trip_tc_encap_xdp_decap() {
    round_trip(Hook::Xdp);
}

#[test]
fn round_trip_tc_encap_tc_decap() {
    round_trip(Hook::Tc);
}
