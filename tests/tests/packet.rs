//! Packet tests: the loaded XDP and TC programs run on crafted frames with BPF_PROG_TEST_RUN;
//! each case asserts the exact verdict, the exact output bytes and the exact counter deltas.
//! Expected frames are built with etherparse, never with our own encoder. The decapsulation
//! tables are defined once and run against both decapsulators (XDP and TC ingress, [`Hook`]).
//!
//! Needs root: `sudo -E cargo test -p ipip-tests --test packet`.

use etherparse::{icmpv4::DestUnreachableHeader, EtherType, Icmpv4Type, IpNumber, Ipv4Header};
use ipip_common::Reason;
use ipip_tests::fixture::*;
use ipip_user::datapath::Datapath;

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

/// An outer fragment of IPIP from a peer: XDP passes it up untouched and uncounted (TC
/// ingress reassembles); TC holds it, counted.
fn fragment(hook: Hook, name: &'static str, input: Vec<u8>) -> Case {
    match hook {
        Hook::Xdp => untouched(name, input, hook.pass()),
        Hook::Tc => Case {
            name,
            input,
            verdict: hook.stolen(),
            output: Expect::Dropped,
            reason: Some(Reason::HeldOuterFragment),
            peer: None,
        },
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
    let mut inner_version_5 = icmp(&to_host([10, 0, 2, 7]), 84);
    inner_version_5[0] = 0x55;

    // Outer IHL below 5 (the checksum is not what stops them: IHL is checked first).
    let outer_ihl = |vihl: u8| {
        let mut f = ipip(&from(CALCULON), &icmp_in);
        f[14] = vihl;
        f
    };
    // Outer checksum wrong: in the fixed header, and in an option byte (the checksum covers
    // IHL × 4 bytes). A NOP (1) turned into an EOL (0) changes nothing else.
    let mut bad_checksum = ipip(&from(CALCULON), &icmp_in);
    bad_checksum[14 + 10] ^= 0x5a;
    let mut bad_checksum_stranger = ipip(&from(STRANGER), &icmp_in);
    bad_checksum_stranger[14 + 11] ^= 0x01;
    let mut bad_option = ipip(&from(CALCULON).options(&[1, 1, 1, 1, 1, 1, 1, 0]), &icmp_in);
    bad_option[14 + 20 + 2] = 0;

    // Outer IP options of every length, stripped with the header (ip_rcv parses them, the
    // ipip driver pulls IHL × 4).
    let router_alert = [0x94, 0x04, 0x00, 0x00, 1, 1, 1, 0]; // RFC 2113, NOPs, EOL: IHL 7
    let mut forty = [1u8; 40]; // 39 NOPs + EOL: IHL 15
    forty[39] = 0;
    // IHL 15 but the frame ends after 24 bytes of IP (total length still says 60 + 84).
    let ihl_15_cut = ipip(&from(CALCULON).options(&forty), &icmp_in)[..14 + 24].to_vec();
    // IHL 6 whose total length (20) covers less than its header (24).
    let ihl_6_short_len = {
        let mut h = outer_header(&from(CALCULON).options(&[1, 1, 1, 0]), 0);
        h.total_len = 20;
        h.header_checksum = h.calc_header_checksum();
        let mut f = eth4(&h.to_bytes());
        f.extend_from_slice(&icmp_in);
        f
    };

    // IPIP in IPIP: one layer comes off, the rest is the kernel's (its ipip driver, or a
    // local tunnel socket) like any other inner packet.
    let nested = ipip_packet(
        &to_host([10, 0, 2, 7]),
        &icmp(&V4::new([10, 0, 2, 8], [10, 0, 1, 9]), 84),
    );

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
        fragment(
            hook,
            "outer fragment: MF set (first fragment), held",
            ipip(
                &from(CALCULON).df(false).mf(true).id(0x0201),
                &icmp_in[..80],
            ),
        ),
        fragment(
            hook,
            "outer fragment: offset set (last fragment), held",
            ipip(
                &from(CALCULON).df(false).frag_offset(185).id(0x0202),
                &icmp_in,
            ),
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
        dropped(
            hook,
            "inner version 5",
            ipip(&from(CALCULON), &inner_version_5),
            Reason::DropMalformedInner,
        ),
        pass_decap(
            hook,
            "outer TTL 0 (not checked on local delivery, as in Linux)",
            from(CALCULON).ttl(0),
            icmp_in.clone(),
            0,
        ),
        pass_decap(
            hook,
            "outer TTL 1 with DF",
            from(CALCULON).ttl(1),
            icmp_in.clone(),
            0,
        ),
        fragment(
            hook,
            "outer fragment: MF and offset set (middle fragment), held",
            ipip(
                &from(CALCULON)
                    .df(false)
                    .mf(true)
                    .frag_offset(185)
                    .id(0x0203),
                &icmp_in[..80],
            ),
        ),
        dropped(
            hook,
            "bad outer checksum (fixed header)",
            bad_checksum,
            Reason::DropOuterChecksum,
        ),
        dropped(
            hook,
            "bad outer checksum from a stranger (checked before the peer, as ip_rcv does)",
            bad_checksum_stranger,
            Reason::DropOuterChecksum,
        ),
        dropped(
            hook,
            "bad outer checksum: IHL 7, an option byte changed",
            bad_option,
            Reason::DropOuterChecksum,
        ),
        pass_decap(
            hook,
            "outer IHL 7 (router alert + NOPs + EOL): stripped with the header",
            from(CALCULON).options(&router_alert),
            icmp_in.clone(),
            0,
        ),
        pass_decap(
            hook,
            "outer IHL 15 (40 bytes of options): stripped with the header",
            from(CALCULON).options(&forty),
            icmp_in.clone(),
            0,
        ),
        pass_decap(
            hook,
            "outer IHL 15, inner UDP from bender",
            from(BENDER).options(&forty),
            udp(&to_host([10, 0, 3, 4]), 200),
            1,
        ),
        dropped(
            hook,
            "outer IHL 4 with protocol 4",
            outer_ihl(0x44),
            Reason::DropMalformedOuter,
        ),
        dropped(
            hook,
            "outer IHL 0 with protocol 4",
            outer_ihl(0x40),
            Reason::DropMalformedOuter,
        ),
        dropped(
            hook,
            "outer IHL 15, frame ends after 24 bytes of IP",
            ihl_15_cut,
            Reason::DropMalformedOuter,
        ),
        dropped(
            hook,
            "outer total length 19 (below the 20-byte header)",
            ipip_with_tot_len(&from(CALCULON), 19, &icmp_in),
            Reason::DropMalformedOuter,
        ),
        dropped(
            hook,
            "outer IHL 6, total length 20 (below the 24-byte header)",
            ihl_6_short_len,
            Reason::DropMalformedOuter,
        ),
        dropped(
            hook,
            "outer complete, inner cut at 1 byte",
            ipip(&from(CALCULON), &icmp_in[..1]),
            Reason::DropMalformedInner,
        ),
        dropped(
            hook,
            "outer complete, inner cut at 19 bytes",
            ipip(&from(CALCULON), &icmp_in[..19]),
            Reason::DropMalformedInner,
        ),
        pass_decap(
            hook,
            "nested IPIP: one layer decapsulated, inner IPIP handed on",
            from(CALCULON),
            nested,
            0,
        ),
        untouched(
            "LLDP (EtherType 0x88cc)",
            eth(EtherType(0x88cc), &[0x02, 0x07, 0x04, 2, 0, 0, 0, 0, 2]),
            hook.pass(),
        ),
        untouched(
            "non-IPIP IPv4 with a bad checksum (not ours to judge)",
            {
                let mut f = eth4(&udp(&V4::new(CALCULON, LOCAL), 100));
                f[14 + 10] ^= 0xff;
                f
            },
            hook.pass(),
        ),
    ];
    run_table(&mut dp, hook.prog(), 2, &cases);
}

#[test]
fn xdp_decap() {
    decap_table(Hook::Xdp);
}

#[test]
fn tc_decap() {
    decap_table(Hook::Tc);
}

const NOT_ECT: u8 = 0b00;
const ECT_1: u8 = 0b01;
const ECT_0: u8 = 0b10;
const CE: u8 = 0b11;

/// Linux's `INET_ECN_decapsulate` (include/net/inet_ecn.h, RFC 6040 normal mode) for every
/// (outer, inner) pair, written out: the inner codepoint after decapsulation, `None` = drop.
const ECN_DECAP: [(&str, u8, u8, Option<u8>); 16] = [
    (
        "ECN: outer not-ECT, inner not-ECT -> unchanged",
        NOT_ECT,
        NOT_ECT,
        Some(NOT_ECT),
    ),
    (
        "ECN: outer not-ECT, inner ECT(1) -> unchanged",
        NOT_ECT,
        ECT_1,
        Some(ECT_1),
    ),
    (
        "ECN: outer not-ECT, inner ECT(0) -> unchanged",
        NOT_ECT,
        ECT_0,
        Some(ECT_0),
    ),
    (
        "ECN: outer not-ECT, inner CE -> unchanged",
        NOT_ECT,
        CE,
        Some(CE),
    ),
    (
        "ECN: outer ECT(1), inner not-ECT -> unchanged",
        ECT_1,
        NOT_ECT,
        Some(NOT_ECT),
    ),
    (
        "ECN: outer ECT(1), inner ECT(1) -> unchanged",
        ECT_1,
        ECT_1,
        Some(ECT_1),
    ),
    (
        "ECN: outer ECT(1), inner ECT(0) -> inner ECT(1)",
        ECT_1,
        ECT_0,
        Some(ECT_1),
    ),
    (
        "ECN: outer ECT(1), inner CE -> unchanged",
        ECT_1,
        CE,
        Some(CE),
    ),
    (
        "ECN: outer ECT(0), inner not-ECT -> unchanged",
        ECT_0,
        NOT_ECT,
        Some(NOT_ECT),
    ),
    (
        "ECN: outer ECT(0), inner ECT(1) -> unchanged",
        ECT_0,
        ECT_1,
        Some(ECT_1),
    ),
    (
        "ECN: outer ECT(0), inner ECT(0) -> unchanged",
        ECT_0,
        ECT_0,
        Some(ECT_0),
    ),
    (
        "ECN: outer ECT(0), inner CE -> unchanged",
        ECT_0,
        CE,
        Some(CE),
    ),
    ("ECN: outer CE, inner not-ECT -> drop", CE, NOT_ECT, None),
    (
        "ECN: outer CE, inner ECT(1) -> inner CE",
        CE,
        ECT_1,
        Some(CE),
    ),
    (
        "ECN: outer CE, inner ECT(0) -> inner CE",
        CE,
        ECT_0,
        Some(CE),
    ),
    ("ECN: outer CE, inner CE -> unchanged", CE, CE, Some(CE)),
];

/// Every (outer, inner) ECN pair on decapsulation. The inner packet carries DSCP EF and the
/// outer one AF11: the inner DSCP must survive (it is never copied from the outer header),
/// and the inner checksum must be right whenever the ECN field changed (the expected packet
/// is built, checksum included, by etherparse with the expected TOS).
fn ecn_decap_table(hook: Hook) {
    let mut dp = datapath(TWO_PEERS, LOCAL);
    let inner_v4 = |ecn: u8| {
        V4::new([10, 0, 2, 7], [10, 0, 1, 1])
            .ttl(63)
            .tos(0xb8 | ecn)
    };
    let cases: Vec<Case> = ECN_DECAP
        .iter()
        .map(|&(name, outer, inner, result)| {
            let outer = from(CALCULON).tos(0x28 | outer);
            let input = udp(&inner_v4(inner), 100);
            match result {
                Some(ecn) => Case {
                    name,
                    input: ipip(&outer, &input),
                    verdict: hook.pass(),
                    output: Expect::Frame(eth4(&udp(&inner_v4(ecn), 100))),
                    reason: None,
                    peer: Some((0, rx(100))),
                },
                None => dropped(hook, name, ipip(&outer, &input), Reason::DropEcnNotEct),
            }
        })
        .collect();
    run_table(&mut dp, hook.prog(), 2, &cases);

    // Independently of the table: the rewritten inner headers verify, DSCP untouched.
    for (outer, inner, want) in [(CE, ECT_0, CE), (CE, ECT_1, CE), (ECT_1, ECT_0, ECT_1)] {
        let frame = ipip(
            &from(CALCULON).tos(0x28 | outer),
            &udp(&inner_v4(inner), 100),
        );
        let (_, out) = run(&mut dp, hook.prog(), &frame).unwrap();
        assert_ipv4_checksum("inner after the ECN rewrite", &out[14..]).unwrap();
        let (h, _) = Ipv4Header::from_slice(&out[14..]).unwrap();
        assert_eq!(
            h.ecn.value(),
            want,
            "inner ECN {outer:#04b} over {inner:#04b}"
        );
        assert_eq!(h.dscp.value(), 0xb8 >> 2, "inner DSCP untouched");
    }
}

#[test]
fn xdp_decap_ecn() {
    ecn_decap_table(Hook::Xdp);
}

#[test]
fn tc_decap_ecn() {
    ecn_decap_table(Hook::Tc);
}

/// VLAN-tagged frames on the underlay: tagged IPIP is the kernel's (or a VLAN device's),
/// passed unchanged and counted; tagged non-IPIP is not ours at all. XDP sees the tag in the
/// frame. A TC test run keeps it in the frame too (eth_type_trans leaves it there, nothing
/// moves it into the skb's metadata as receive does: the tagged UDP and ARP cases come out
/// byte for byte with their tag), and the decapsulators share one in-frame check, so both
/// hooks expect the same.
fn vlan_table(hook: Hook) {
    let mut dp = datapath(TWO_PEERS, LOCAL);
    let inner = icmp(&V4::new([10, 0, 2, 7], [10, 0, 1, 1]), 84);
    let ipip_from_calculon = ipip_packet(&from(CALCULON), &inner);
    let cases = vec![
        vlan_passed(
            hook,
            "802.1Q VLAN 100, IPIP from calculon",
            eth_vlan(
                EtherType::VLAN_TAGGED_FRAME,
                100,
                EtherType::IPV4,
                &ipip_from_calculon,
            ),
        ),
        vlan_passed(
            hook,
            "802.1ad VLAN 200, IPIP from calculon",
            eth_vlan(
                EtherType::PROVIDER_BRIDGING,
                200,
                EtherType::IPV4,
                &ipip_from_calculon,
            ),
        ),
        vlan_passed(
            hook,
            "802.1Q VLAN 100, IPIP from a stranger (never looked at)",
            eth_vlan(
                EtherType::VLAN_TAGGED_FRAME,
                100,
                EtherType::IPV4,
                &ipip_packet(&from(STRANGER), &inner),
            ),
        ),
        untouched(
            "802.1Q VLAN 100, UDP",
            eth_vlan(
                EtherType::VLAN_TAGGED_FRAME,
                100,
                EtherType::IPV4,
                &udp(&V4::new(CALCULON, LOCAL), 100),
            ),
            hook.pass(),
        ),
        untouched(
            "802.1ad VLAN 200, UDP",
            eth_vlan(
                EtherType::PROVIDER_BRIDGING,
                200,
                EtherType::IPV4,
                &udp(&V4::new(CALCULON, LOCAL), 100),
            ),
            hook.pass(),
        ),
        untouched(
            "802.1Q VLAN 100, ARP-typed payload",
            eth_vlan(
                EtherType::VLAN_TAGGED_FRAME,
                100,
                EtherType::ARP,
                &arp()[14..],
            ),
            hook.pass(),
        ),
    ];
    run_table(&mut dp, hook.prog(), 2, &cases);
}

/// Tagged IPIP as XDP sees it: passed unchanged, counted.
fn vlan_passed(hook: Hook, name: &'static str, input: Vec<u8>) -> Case {
    Case {
        name,
        input,
        verdict: hook.pass(),
        output: Expect::Unchanged,
        reason: Some(Reason::PassVlan),
        peer: None,
    }
}

#[test]
fn xdp_decap_vlan() {
    vlan_table(Hook::Xdp);
}

#[test]
fn tc_decap_vlan() {
    vlan_table(Hook::Tc);
}

// ---------------------------------------------------------------------------------------------
// ICMP "fragmentation needed" about our outer packets (Linux's ipip_err): the peer's path MTU
// is learned and the message is handed inward as one about the inner packet.

/// An underlay router between us and the peers.
const ROUTER: [u8; 4] = [192, 0, 2, 1];
/// The `[tunnel] address` of [`with_address`].
const TUNNEL_ADDRESS: [u8; 4] = [10, 0, 1, 1];
/// A host behind us whose traffic we forward into the tunnel.
const LAN_HOST: [u8; 4] = [10, 0, 1, 9];

/// [`TWO_PEERS`] with a tunnel address.
fn with_address() -> String {
    format!("[tunnel]\naddress = \"10.0.1.1/24\"\n{TWO_PEERS}")
}

/// The ICMP error's own IPv4 header, from a router to `dst`, as Linux sends errors (tos 0xc0,
/// no DF).
fn router_to(dst: [u8; 4]) -> V4 {
    V4::new(ROUTER, dst).tos(0xc0).df(false).id(0x7777).ttl(254)
}

/// One of our outer packets as TC egress sends it (DF, tos 0): `outer_src` → `remote`,
/// carrying a 1480-byte UDP packet `src` → `dst`.
fn sent_by(outer_src: [u8; 4], remote: [u8; 4], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let inner = udp(&V4::new(src, dst).ttl(63), 1480);
    ipip_packet(&V4::new(outer_src, remote).id(0x3c3c), &inner)
}

/// [`sent_by`] from our local address.
fn sent(remote: [u8; 4], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    sent_by(LOCAL, remote, src, dst)
}

/// A "fragmentation needed" from the router to us reporting `mtu` about `packet`, quoting its
/// first `quoted` bytes.
fn report(mtu: u16, packet: &[u8], quoted: usize) -> Vec<u8> {
    frag_needed(&router_to(LOCAL), mtu, &packet[..quoted])
}

/// A report the decapsulators turn into one about the inner packet with next-hop MTU `told`:
/// the quoted outer header removed and, for a packet that was not this host's own (`echo_from`
/// = the address the data path answers for), the first 28 bytes of the inner quote replaced by
/// an echo reply from `echo_from` to the inner destination. Built by etherparse: IPv4 length
/// and checksum, ICMP checksum over the whole message.
fn pmtu_learned(
    hook: Hook,
    name: &'static str,
    sent: &[u8],
    quoted: usize,
    reported: u16,
    told: u16,
    echo_from: Option<[u8; 4]>,
) -> Case {
    let inner_quote = &sent[20..quoted];
    let quote = match echo_from {
        None => inner_quote.to_vec(),
        Some(src) => {
            let dst: [u8; 4] = inner_quote[16..20].try_into().unwrap();
            let mut q = echo_reply_quote(src, dst);
            q.extend_from_slice(&inner_quote[28..]);
            q
        }
    };
    Case {
        name,
        input: report(reported, sent, quoted),
        verdict: hook.pass(),
        output: Expect::Frame(frag_needed(&router_to(LOCAL), told, &quote)),
        reason: Some(Reason::PassPmtuLearned),
        peer: None,
    }
}

/// Checks a peer's `peer_pmtu` slot: `Some((mtu, reported))` learned from a report of
/// `reported` at some time in `[t0, t1]` and holding for 600 s (the default
/// `net.ipv4.route.mtu_expires`), or `None`: nothing ever learned.
fn pmtu_is(
    dp: &Datapath,
    peer: u32,
    want: Option<(u32, u32)>,
    (t0, t1): (u64, u64),
) -> Result<(), String> {
    const EXPIRES: u64 = 600_000_000_000;
    let p = peer_pmtu(dp, peer);
    let ok = match want {
        None => p == Default::default(),
        Some(learned) => {
            (p.mtu, p.reported) == learned && (t0 + EXPIRES..=t1 + EXPIRES).contains(&p.expires_ns)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "peer_pmtu[{peer}] is {p:?}; want {want:?} (mtu, reported) expiring 600 s after \
             a time in [{t0}, {t1}]"
        ))
    }
}

/// Reports in a sequence whose order matters (what is in force decides what is told), then
/// everything that is not a report about our packets.
fn pmtu_table(hook: Hook) {
    let mut dp = datapath(&with_address(), LOCAL);
    let own = sent(CALCULON, TUNNEL_ADDRESS, [10, 0, 2, 7]);
    let forwarded = sent(CALCULON, LAN_HOST, [10, 0, 2, 7]);
    let to_bender = sent(BENDER, TUNNEL_ADDRESS, [10, 0, 3, 9]);
    let t0 = monotonic_ns();
    let learning = vec![
        pmtu_learned(
            hook,
            "1400 for calculon: 1380 learned, our own packet's quote kept",
            &own,
            20 + 28,
            1400,
            1380,
            None,
        ),
        pmtu_learned(
            hook,
            "1450 while 1380 is in force: 1380 told, forwarded packet's quote replaced",
            &forwarded,
            20 + 28,
            1450,
            1380,
            Some(TUNNEL_ADDRESS),
        ),
        pmtu_learned(
            hook,
            "1500 (not lower): 1380 told; forwarded, 128 quoted: bytes after the 28 kept",
            &forwarded,
            20 + 128,
            1500,
            1380,
            Some(TUNNEL_ADDRESS),
        ),
        pmtu_learned(
            hook,
            "1400 again, Linux-sized quote (576-byte ICMP), our own packet: all kept",
            &own,
            576 - 28,
            1400,
            1380,
            None,
        ),
        pmtu_learned(
            hook,
            "1300 for bender: 1280 learned for bender only",
            &to_bender,
            20 + 28,
            1300,
            1280,
            None,
        ),
    ];
    run_table(&mut dp, hook.prog(), 2, &learning);
    let t1 = monotonic_ns();
    // The 1450 and 1500 reports taught nothing: what the 1400 one did stays.
    pmtu_is(&dp, 0, Some((1380, 1400)), (t0, t1)).unwrap();
    pmtu_is(&dp, 1, Some((1280, 1300)), (t0, t1)).unwrap();

    // Independently of etherparse's expected frames: the output verifies on its own.
    let (_, out) = run(&mut dp, hook.prog(), &report(1400, &forwarded, 20 + 128)).unwrap();
    assert_ipv4_checksum("rewritten ICMP's IPv4 header", &out[14..]).unwrap();
    assert_icmpv4_checksum("rewritten ICMP", &out[14 + 20..]).unwrap();
    assert_ipv4_checksum("synthetic quote's IPv4 header", &out[14 + 28..]).unwrap();
    assert_icmpv4_checksum("synthetic quote's ICMP", &out[14 + 28 + 20..14 + 28 + 28]).unwrap();
    assert_eq!(u16::from_be_bytes([out[14 + 26], out[14 + 27]]), 1380);

    let quote = |packet: &[u8]| packet[..20 + 28].to_vec();
    let mut icmp_with_options = router_to(LOCAL);
    icmp_with_options.options = vec![1, 1, 1, 0];
    let quoted_options = ipip_packet(
        &V4::new(LOCAL, CALCULON).options(&[1, 1, 1, 0]),
        &udp(&V4::new(TUNNEL_ADDRESS, [10, 0, 2, 7]), 1480),
    );
    let mut claims_more = report(1000, &own, 20 + 28);
    claims_more[14 + 3] += 1; // IPv4 total length one beyond the frame
    claims_more[14 + 11] = claims_more[14 + 11].wrapping_sub(1); // checksum kept right
    let not_ours = vec![
        untouched(
            "quoted outer source not our local address",
            report(
                1000,
                &sent_by([192, 0, 2, 57], CALCULON, TUNNEL_ADDRESS, [10, 0, 2, 7]),
                48,
            ),
            hook.pass(),
        ),
        untouched(
            "quoted protocol not 4 (UDP we sent to calculon)",
            frag_needed(
                &router_to(LOCAL),
                1000,
                &quote(&udp(&V4::new(LOCAL, CALCULON), 1500)),
            ),
            hook.pass(),
        ),
        untouched(
            "quoted destination not a configured peer",
            report(1000, &sent(STRANGER, TUNNEL_ADDRESS, [10, 0, 2, 7]), 48),
            hook.pass(),
        ),
        untouched(
            "quoted outer header with options (IHL 6, never ours)",
            report(1000, &quoted_options, 24 + 28),
            hook.pass(),
        ),
        untouched(
            "ICMP not addressed to our local address",
            frag_needed(&router_to([192, 0, 2, 99]), 1000, &quote(&own)),
            hook.pass(),
        ),
        untouched(
            "ICMP in an IPv4 header with options (IHL 6)",
            frag_needed(&icmp_with_options, 1000, &quote(&own)),
            hook.pass(),
        ),
        untouched(
            "ICMP type 3 code 1 (host unreachable) about our packet",
            eth_icmp(
                &router_to(LOCAL),
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
                &quote(&own),
            ),
            hook.pass(),
        ),
        untouched(
            "ICMP echo request to us",
            eth4(&icmp(&router_to(LOCAL), 84)),
            hook.pass(),
        ),
        dropped(
            hook,
            "report whose IPv4 total length is beyond the frame",
            claims_more,
            Reason::DropMalformedOuter,
        ),
        dropped(
            hook,
            "quote ends inside the inner header (outer + 19 bytes)",
            report(1100, &own, 20 + 19),
            Reason::DropPmtuShortQuote,
        ),
    ];
    run_table(&mut dp, hook.prog(), 2, &not_ours);
    // Only the last case taught anything (a short quote still does: the MTU is learned before
    // the quote is judged); had one of the others learned its 1000 (980), 1080 would not have
    // lowered it.
    pmtu_is(&dp, 0, Some((1080, 1100)), (t1, monotonic_ns())).unwrap();
    pmtu_is(&dp, 1, Some((1280, 1300)), (t0, t1)).unwrap();
}

#[test]
fn xdp_decap_pmtu() {
    pmtu_table(Hook::Xdp);
}

#[test]
fn tc_decap_pmtu() {
    pmtu_table(Hook::Tc);
}

/// Reports that each need a data path that has learned nothing yet.
fn pmtu_fresh(hook: Hook) {
    let own = sent(CALCULON, TUNNEL_ADDRESS, [10, 0, 2, 7]);
    let forwarded = sent(CALCULON, LAN_HOST, [10, 0, 2, 7]);
    // (case, peer 0's learned (mtu, reported) afterwards, if anything)
    let cases: Vec<(Case, Option<(u32, u32)>)> = vec![
        (
            pmtu_learned(
                hook,
                "report 0 (pre-RFC 1191 router): 552 - 20 = 532",
                &own,
                48,
                0,
                532,
                None,
            ),
            Some((532, 0)),
        ),
        (
            pmtu_learned(
                hook,
                "report 68: raised to 552, 532 told",
                &forwarded,
                48,
                68,
                532,
                Some(TUNNEL_ADDRESS),
            ),
            Some((532, 68)),
        ),
        (
            pmtu_learned(hook, "report 552 (min_pmtu): 532", &own, 48, 552, 532, None),
            Some((532, 552)),
        ),
        (
            pmtu_learned(hook, "report 1499: 1479", &own, 48, 1499, 1479, None),
            Some((1479, 1499)),
        ),
        (
            pmtu_learned(
                hook,
                "report 1500 (the underlay MTU): 1480 told, nothing learned",
                &own,
                48,
                1500,
                1480,
                None,
            ),
            None,
        ),
        (
            pmtu_learned(
                hook,
                "report 9000: 1480 told, nothing learned",
                &forwarded,
                48,
                9000,
                1480,
                Some(TUNNEL_ADDRESS),
            ),
            None,
        ),
        (
            dropped(
                hook,
                "quote of RFC 792's minimum (outer header + 8 bytes): learned, dropped",
                report(1400, &own, 20 + 8),
                Reason::DropPmtuShortQuote,
            ),
            Some((1380, 1400)),
        ),
    ];
    let mut failed = Vec::new();
    for (case, learned) in &cases {
        let mut dp = datapath(&with_address(), LOCAL);
        let t0 = monotonic_ns();
        let result = check(&mut dp, hook.prog(), 2, case);
        let t1 = monotonic_ns();
        let result = result
            .and_then(|()| pmtu_is(&dp, 0, *learned, (t0, t1)))
            .and_then(|()| pmtu_is(&dp, 1, None, (t0, t1)));
        match result {
            Ok(()) => eprintln!("ok    {:?} {}", hook.prog(), case.name),
            Err(e) => {
                eprintln!("FAIL  {:?} {}\n  {e}", hook.prog(), case.name);
                failed.push(format!("{}:\n  {e}", case.name));
            }
        }
    }
    assert_all_passed(hook.prog(), cases.len(), &failed);
}

#[test]
fn xdp_decap_pmtu_fresh() {
    pmtu_fresh(Hook::Xdp);
}

#[test]
fn tc_decap_pmtu_fresh() {
    pmtu_fresh(Hook::Tc);
}

/// Without a `[tunnel] address`, this host's packets are the ones from the local address.
fn pmtu_without_address(hook: Hook) {
    let mut dp = datapath(TWO_PEERS, LOCAL);
    let cases = vec![
        pmtu_learned(
            hook,
            "no tunnel address: a packet from the local address is our own, quote kept",
            &sent(CALCULON, LOCAL, [10, 0, 2, 7]),
            48,
            1400,
            1380,
            None,
        ),
        pmtu_learned(
            hook,
            "no tunnel address: 10.0.1.1 is forwarded, echo reply from the local address",
            &sent(CALCULON, TUNNEL_ADDRESS, [10, 0, 2, 7]),
            48,
            1400,
            1380,
            Some(LOCAL),
        ),
    ];
    run_table(&mut dp, hook.prog(), 2, &cases);
}

#[test]
fn xdp_decap_pmtu_without_address() {
    pmtu_without_address(Hook::Xdp);
}

#[test]
fn tc_decap_pmtu_without_address() {
    pmtu_without_address(Hook::Tc);
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
    let ef_not_ect = udp(&to_peer([10, 0, 2, 7]).tos(0xb8), 100);
    let af41_ect0 = udp(&to_peer([10, 0, 3, 9]).tos(0x88 | 0b10), 100);
    let cs1_ect1 = udp(&to_peer([10, 0, 2, 7]).tos(0x20 | 0b01), 100);
    let ce_only = udp(&to_peer([10, 0, 2, 7]).tos(0b11), 100);
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
            "ECN encap: EF + not-ECT -> outer tos 0",
            ef_not_ect.clone(),
            outer(CALCULON, 0, 64, true, &ef_not_ect),
            0,
        ),
        encap(
            "ECN encap: AF41 + ECT(0) -> outer DSCP 0, ECT(0)",
            af41_ect0.clone(),
            outer(BENDER, 0b10, 64, true, &af41_ect0),
            1,
        ),
        encap(
            "ECN encap: CS1 + ECT(1) -> outer DSCP 0, ECT(1)",
            cs1_ect1.clone(),
            outer(CALCULON, 0b01, 64, true, &cs1_ect1),
            0,
        ),
        encap(
            "ECN encap: DSCP 0 + CE -> outer ECT(0)",
            ce_only.clone(),
            outer(CALCULON, 0b10, 64, true, &ce_only),
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
            name: "inner one byte over the tunnel MTU (1481, DF, no GSO): answered",
            input: eth4(&too_big),
            verdict: TC_ACT_REDIRECT,
            output: answer(&too_big, Some(UDP_CHECK)),
            reason: Some(Reason::DropTooBig),
            peer: None,
        },
        Case {
            name: "inner one byte over the tunnel MTU (1481, no DF, no GSO): kernel told",
            input: eth4(&too_big_no_df),
            verdict: TC_ACT_REDIRECT,
            output: told([10, 0, 2, 7]),
            reason: Some(Reason::DropTooBigNoDf),
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

/// Where a quoted UDP / TCP packet (20-byte IPv4 header) keeps its transport checksum.
const UDP_CHECK: usize = 20 + 6;
const TCP_CHECK: usize = 20 + 16;

/// The "fragmentation needed" (next-hop MTU 1480) a sender on this host gets for `packet`, too
/// big for calculon's tunnel: from calculon's address, TOS 0xc0 with the packet's TOS bits,
/// TTL 64, no DF, quoting its first 548 bytes.
fn answer(packet: &[u8], proof: Option<usize>) -> Expect {
    let tos_bits = packet[1] & 0x1e;
    Expect::FragNeeded {
        ip: V4::new(CALCULON, [packet[12], packet[13], packet[14], packet[15]])
            .tos(0xc0 | tos_bits)
            .df(false),
        mtu: 1480,
        quote: packet[..548].to_vec(),
        proof,
    }
}

/// What the kernel is told for a too-big packet to `dst` without DF: the tunnel MTU for `dst`,
/// as the decapsulators tell it for forwarded traffic (an echo reply quote from our address).
fn told(dst: [u8; 4]) -> Expect {
    Expect::FragNeeded {
        ip: V4::new(CALCULON, LOCAL).tos(0xc0).df(false),
        mtu: 1480,
        quote: echo_reply_quote(LOCAL, dst),
        proof: None,
    }
}

/// Too big for the tunnel at TC egress (a route without the tunnel MTU led here), as Linux's
/// tnl_update_pmtu answers: ICMP "fragmentation needed" to the sender where RFC 1122 allows
/// one, the kernel told the MTU for packets without DF, nothing sent unencapsulated.
#[test]
fn tc_encap_answers_too_big() {
    let mut dp = datapath(TWO_PEERS, LOCAL);
    let dst = [10, 0, 2, 7];
    let udp_big = udp(&to_peer(dst).tos(0xbb), 1500);
    let tcp_big = tcp(&to_peer(dst), 1500);
    let echo_big = icmp(&to_peer(dst), 1481);
    let options_big = udp(&to_peer(dst).options(&[1, 1, 1, 0]), 1500);
    let tcp_no_df = tcp(&to_peer(dst).df(false), 1500);
    let later_fragment = udp(&to_peer(dst).frag_offset(185), 1500);
    let from_nowhere = udp(&V4::new([0, 0, 0, 0], dst), 1500);
    let from_loopback = udp(&V4::new([127, 0, 0, 1], dst), 1500);
    let error = eth_icmp(
        &to_peer(dst),
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
        &payload_of(1481 - 28),
    );
    let unanswered = |name, input| Case {
        name,
        input,
        verdict: TC_ACT_SHOT,
        output: Expect::Dropped,
        reason: Some(Reason::DropTooBig),
        peer: None,
    };
    let answered = |name, packet: &Vec<u8>, proof| Case {
        name,
        input: eth4(packet),
        verdict: TC_ACT_REDIRECT,
        output: answer(packet, proof),
        reason: Some(Reason::DropTooBig),
        peer: None,
    };
    let cases = vec![
        answered(
            "UDP, TOS 0xbb: TOS bits kept under precedence 6, checksum field proofed",
            &udp_big,
            Some(UDP_CHECK),
        ),
        answered("TCP: checksum field proofed", &tcp_big, Some(TCP_CHECK)),
        answered("ICMP echo: quoted as it is", &echo_big, None),
        answered("inner IP options: quoted as they are", &options_big, None),
        Case {
            name: "TCP without DF: the kernel told the MTU toward the destination",
            input: eth4(&tcp_no_df),
            verdict: TC_ACT_REDIRECT,
            output: told(dst),
            reason: Some(Reason::DropTooBigNoDf),
            peer: None,
        },
        unanswered("not the first fragment (RFC 1122)", eth4(&later_fragment)),
        unanswered("an ICMP error is never answered", error),
        unanswered("source 0.0.0.0 is no host to answer", eth4(&from_nowhere)),
        unanswered("loopback source", eth4(&from_loopback)),
    ];
    run_table(&mut dp, Prog::Tc, 2, &cases);
}

fn payload_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + 1) as u8).collect()
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
    let d = udp(&to_peer([10, 0, 2, 7]).ttl(9).tos(0xb8 | 0b10), 100);
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
        encap(
            "EF+ECT(0) -> outer EF+ECT(0), ttl 64",
            d.clone(),
            outer(CALCULON, 0xb8 | 0b10, 64, true, &d),
            0,
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
    let c = icmp(&to_peer([10, 0, 2, 7]).ttl(17).tos(0xb8), 84);
    let d = icmp(&to_peer([10, 0, 3, 9]).ttl(17).tos(0b10), 84);
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
        encap(
            "fixed tos 0x28, inner EF not-ECT -> outer 0x28",
            c.clone(),
            outer(CALCULON, 0x28, 17, true, &c),
            0,
        ),
        encap(
            "fixed tos 0x28, inner ECT(0) -> outer 0x28+ECT(0)",
            d.clone(),
            outer(BENDER, 0x28 | 0b10, 17, true, &d),
            1,
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

// ---------------------------------------------------------------------------------------------
// Outer fragments: held by TC ingress, reassembled, then decapsulated.

/// Outer fragments of `inner` from `remote` with IP ID `id`, cut at the payload offsets
/// `cuts` (multiples of 8), built by etherparse as a router fragmenting our outer packet would.
fn outer_fragments(remote: [u8; 4], inner: &[u8], cuts: &[usize], id: u16) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(inner.len());
    bounds
        .windows(2)
        .map(|w| {
            let last = w[1] == inner.len();
            let v4 = from(remote)
                .df(false)
                .mf(!last)
                .frag_offset((w[0] / 8) as u16)
                .id(id);
            ipip(&v4, &inner[w[0]..w[1]])
        })
        .collect()
}

fn held(name: &'static str, input: Vec<u8>) -> Case {
    fragment(Hook::Tc, name, input)
}

fn reassembled(name: &'static str, input: Vec<u8>, inner: &[u8]) -> Case {
    Case {
        name,
        input,
        verdict: TC_ACT_OK,
        output: Expect::Frame(eth4(inner)),
        reason: Some(Reason::PassFragReassembled),
        peer: Some((0, rx(inner.len()))),
    }
}

/// The reassembly table, for TC ingress as the decapsulator (`--decap tc`) or as XDP's
/// reassembler (`xdp_mode`: it then leaves everything but fragments alone).
fn reassembly_table(xdp_mode: bool) {
    let mut dp = datapath_with(TWO_PEERS, LOCAL, |p| {
        if xdp_mode {
            p.tunnel.flags &= !ipip_common::TUNNEL_FLAG_DECAP_TC;
        }
    });
    let to_host = |src: [u8; 4]| V4::new(src, [10, 0, 1, 1]).ttl(63);
    let inner = udp(&to_host([10, 0, 2, 7]), 1000);
    let two = outer_fragments(CALCULON, &inner, &[504], 0x1001);
    let swapped = outer_fragments(CALCULON, &inner, &[504], 0x1002);
    let three = outer_fragments(CALCULON, &inner, &[400, 800], 0x1003);
    let dup = outer_fragments(CALCULON, &inner, &[504], 0x1004);
    let overlapping_a = outer_fragments(CALCULON, &inner, &[504], 0x1005);
    let overlapping_b = outer_fragments(CALCULON, &inner, &[496], 0x1005);
    let small = udp(&to_host([10, 0, 2, 7]), 200);
    let nine: Vec<usize> = (1..=8).map(|i| i * 8).collect();
    let nine = outer_fragments(CALCULON, &small, &nine, 0x1006);
    let big = udp(&to_host([10, 0, 2, 7]), 2000);
    let too_big = outer_fragments(CALCULON, &big, &[1488], 0x1007);
    let stranger = outer_fragments(STRANGER, &inner, &[504], 0x1008);
    let odd = outer_fragments(CALCULON, &inner, &[500], 0x1009);

    let mut cases = vec![
        held("first of two fragments: held", two[0].clone()),
        reassembled(
            "second of two completes the datagram: reassembled and decapsulated",
            two[1].clone(),
            &inner,
        ),
        held("last fragment first: held", swapped[1].clone()),
        reassembled("then the first: reassembled", swapped[0].clone(), &inner),
        held("three fragments, middle first: held", three[1].clone()),
        held("then the last: held", three[2].clone()),
        reassembled("then the first: reassembled", three[0].clone(), &inner),
        held("a fragment ...", dup[0].clone()),
        dropped(
            Hook::Tc,
            "... and the same fragment again: the datagram is dropped",
            dup[0].clone(),
            Reason::DropFragOverlap,
        ),
        held(
            "a first fragment of 504 bytes ...",
            overlapping_a[0].clone(),
        ),
        dropped(
            Hook::Tc,
            "... and a last one starting inside it (496): dropped",
            overlapping_b[1].clone(),
            Reason::DropFragOverlap,
        ),
        dropped(
            Hook::Tc,
            "a fragment of 1488 bytes: beyond a reassembly slot",
            too_big[0].clone(),
            Reason::DropFragTooBig,
        ),
        dropped(
            Hook::Tc,
            "a fragment from a stranger: never held",
            stranger[0].clone(),
            Reason::DropUnknownPeer,
        ),
        dropped(
            Hook::Tc,
            "a non-last fragment whose length is not a multiple of 8",
            odd[0].clone(),
            Reason::DropMalformedOuter,
        ),
    ];
    for (i, f) in nine[..8].iter().enumerate() {
        cases.push(held(
            [
                "piece 1 of 9",
                "piece 2 of 9",
                "piece 3 of 9",
                "piece 4 of 9",
                "piece 5 of 9",
                "piece 6 of 9",
                "piece 7 of 9",
                "piece 8 of 9",
            ][i],
            f.clone(),
        ));
    }
    cases.push(dropped(
        Hook::Tc,
        "piece 9 of 9: more pieces than a datagram may have",
        nine[8].clone(),
        Reason::DropFragTooMany,
    ));
    if xdp_mode {
        cases.push(untouched(
            "with XDP decapsulating, an unfragmented IPIP packet is not TC's business",
            ipip(&from(CALCULON), &inner),
            TC_ACT_OK,
        ));
    }
    run_table(&mut dp, Prog::TcDecap, 2, &cases);
}

#[test]
fn tc_reassembly_as_decapsulator() {
    reassembly_table(false);
}

#[test]
fn tc_reassembly_for_xdp() {
    reassembly_table(true);
}
