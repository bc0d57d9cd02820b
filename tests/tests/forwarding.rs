//! Gateway fast-path tests: the LAN encapsulator (`ipip_xdp_lan`) and the forwarding half of the
//! XDP decapsulator run with BPF_PROG_TEST_RUN inside a private network namespace, so that
//! `bpf_fib_lookup` answers from a known topology (veth pairs, routes, static neighbours). Each
//! case asserts the exact verdict, the exact output bytes and the exact deltas of the reasons,
//! paths and peer counters. Expected frames are built with etherparse, never with our encoder.
//!
//! Needs root: `sudo -E cargo test -p ipip-tests --test forwarding`.
//!
//! The gateway's namespace:
//!
//! ```text
//!   lan0 192.168.104.1/24   hosts .100 (neighbour), .101 (no neighbour), .200 (route mtu 1000)
//!   lan1 192.168.105.1/24   forwarding disabled
//!   wan0 192.0.2.58/24      gateway 192.0.2.250 (neighbour), 192.0.2.251 (no neighbour)
//!   wan1 203.0.113.1/24     gateway 203.0.113.250 (neighbour); not a fast-path interface
//!
//!   198.51.100.56 via 192.0.2.250 (far)          198.51.100.57 via 192.0.2.251 (noneigh)
//!   blackhole 198.51.100.58 (blackholed)         198.51.100.59 via 203.0.113.250 (slow)
//!   198.51.100.60 via 192.0.2.250 mtu lock 1400  100.64.0.1: no route (unroutable)
//!   172.20.0.0/16 via 203.0.113.250              blackhole 172.21.0.0/16
//!   10.200.100.0/24, 10.201-205.0.0/24 via 192.0.2.250 dev wan0 mtu 1480 proto 156 (every
//!   peer's routes, as attach installs them: into the tunnel through TC egress on the
//!   underlay; the fast path's first lookup, of the inner packet, must land there)
//! ```

use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header};
use ipip_common::{Path, Reason, PATH_COUNT, TUNNEL_FLAG_FAST_PATH};
use ipip_tests::fixture::*;
use ipip_tests::Netns;
use ipip_user::datapath::Datapath;

// ---------------------------------------------------------------------------------------------
// The namespace.

const LAN0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const WAN0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
/// The LAN host 192.168.104.100.
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x64];
/// The LAN host 192.168.104.200 (behind a route with mtu lock 1000).
const HOST200_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0xc8];
/// The underlay gateway 192.0.2.250.
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0xfa];

/// Our underlay address: wan0's.
const LOCAL_WAN: [u8; 4] = [192, 0, 2, 58];
const HOST: [u8; 4] = [192, 168, 104, 100];
const LAN_ADDR: [u8; 4] = [192, 168, 104, 1];
const FAR: [u8; 4] = [198, 51, 100, 56];
/// A host in far's routes.
const REMOTE_HOST: [u8; 4] = [10, 200, 100, 5];

/// The gateway topology described at the top of the file.
fn gateway() -> Netns {
    require_root();
    let ns = Netns::new("ipipfwd").expect("creating the gateway's namespace");
    ns.script(
        "
        ip link set lo up
        ip link add lan0 address 02:00:00:00:01:01 type veth peer name lan0p address 02:00:00:00:01:02
        ip link add lan1 address 02:00:00:00:05:01 type veth peer name lan1p address 02:00:00:00:05:02
        ip link add wan0 address 02:00:00:00:02:01 type veth peer name wan0p address 02:00:00:00:02:02
        ip link add wan1 address 02:00:00:00:03:01 type veth peer name wan1p address 02:00:00:00:03:02
        ip link set lan0 up
        ip link set lan0p up
        ip link set lan1 up
        ip link set lan1p up
        ip link set wan0 up
        ip link set wan0p up
        ip link set wan1 up
        ip link set wan1p up
        ip addr add 192.168.104.1/24 dev lan0
        ip addr add 192.168.105.1/24 dev lan1
        ip addr add 192.0.2.58/24 dev wan0
        ip addr add 203.0.113.1/24 dev wan1
        sysctl -q -w net.ipv4.ip_forward=1
        sysctl -q -w net.ipv4.conf.all.forwarding=1
        sysctl -q -w net.ipv4.conf.lan0.forwarding=1
        sysctl -q -w net.ipv4.conf.wan0.forwarding=1
        sysctl -q -w net.ipv4.conf.wan1.forwarding=1
        sysctl -q -w net.ipv4.conf.lan1.forwarding=0
        ip route add 198.51.100.56/32 via 192.0.2.250 dev wan0
        ip route add 198.51.100.57/32 via 192.0.2.251 dev wan0
        ip route add blackhole 198.51.100.58/32
        ip route add 198.51.100.59/32 via 203.0.113.250 dev wan1
        ip route add 198.51.100.60/32 via 192.0.2.250 dev wan0 mtu lock 1400
        ip route add 172.20.0.0/16 via 203.0.113.250 dev wan1
        ip route add blackhole 172.21.0.0/16
        ip route add 192.168.104.200/32 dev lan0 mtu lock 1000
        ip route add 10.204.0.0/24 via 192.0.2.250 dev wan0 mtu 1480 proto 156
        ip route add 10.200.100.0/24 via 192.0.2.250 dev wan0 mtu 1480 proto 156
        ip route add 10.201.0.0/24 via 192.0.2.250 dev wan0 mtu 1480 proto 156
        ip route add 10.202.0.0/24 via 192.0.2.250 dev wan0 mtu 1480 proto 156
        ip route add 10.203.0.0/24 via 192.0.2.250 dev wan0 mtu 1480 proto 156
        ip route add 10.205.0.0/24 via 192.0.2.250 dev wan0 mtu 1480 proto 156
        ip neigh replace 192.0.2.250 lladdr 02:00:00:00:02:fa dev wan0 nud permanent
        ip neigh replace 203.0.113.250 lladdr 02:00:00:00:03:fa dev wan1 nud permanent
        ip neigh replace 192.168.104.100 lladdr 02:00:00:00:01:64 dev lan0 nud permanent
        ip neigh replace 192.168.104.200 lladdr 02:00:00:00:01:c8 dev lan0 nud permanent
        ",
    )
    .expect("building the gateway's namespace");
    ns
}

/// One peer per way the FIB can answer for its remote (see the topology above).
const PEERS: &str = r#"
[[peer]]
name = "far"
remote = "198.51.100.56"
routes = ["10.200.100.0/24"]

[[peer]]
name = "noneigh"
remote = "198.51.100.57"
routes = ["10.201.0.0/24"]

[[peer]]
name = "blackholed"
remote = "198.51.100.58"
routes = ["10.202.0.0/24"]

[[peer]]
name = "slow"
remote = "198.51.100.59"
routes = ["10.203.0.0/24"]

[[peer]]
name = "narrow"
remote = "198.51.100.60"
routes = ["10.204.0.0/24"]

[[peer]]
name = "unroutable"
remote = "100.64.0.1"
routes = ["10.205.0.0/24"]
"#;
const PEER_COUNT: u32 = 6;
const P_FAR: u32 = 0;

/// Loads the data path from `toml` (underlay wan0, 1500 bytes) with the tunnel flags `flags`
/// and lets the fast path redirect to `fwd_devs`. Call on a thread inside the namespace: the
/// device map resolves ifindexes in the caller's namespace.
fn gateway_datapath(toml: &str, flags: u32, fwd_devs: &[&str]) -> Datapath {
    let mut dp = datapath_with(toml, LOCAL_WAN, |plan| {
        plan.tunnel.flags |= flags;
        plan.tunnel.ifindex = ifindex("wan0");
    });
    let devs: Vec<u32> = fwd_devs.iter().map(|d| ifindex(d)).collect();
    dp.allow_forwarding_to(&devs)
        .expect("filling the fwd_devs device map");
    // Both LANs run the LAN program (as `--lan` interfaces do), whatever the device map holds.
    let macs: Vec<(u32, [u8; 6])> = ["lan0", "lan1"]
        .iter()
        .map(|d| (ifindex(d), mac_of(d)))
        .collect();
    dp.accept_frames_to(&macs)
        .expect("filling the lan_macs map");
    dp
}

// ---------------------------------------------------------------------------------------------
// Cases.

/// A case run as received on interface `ingress`, with the path counter expected to move.
struct Fwd {
    ingress: &'static str,
    case: Case,
    path: Option<Path>,
}

fn run_fwd_table(dp: &mut Datapath, prog: Prog, cases: &[Fwd]) {
    let mut failed = Vec::new();
    for c in cases {
        let before = paths(dp);
        let mut errors = Vec::new();
        if let Err(e) = check_on(dp, prog, Some(ifindex(c.ingress)), PEER_COUNT, &c.case) {
            errors.push(e);
        }
        let delta: Vec<u64> = paths(dp)
            .iter()
            .zip(&before)
            .map(|(a, b)| a.wrapping_sub(*b))
            .collect();
        let mut want = vec![0u64; PATH_COUNT as usize];
        if let Some(p) = c.path {
            want[p as usize] = 1;
        }
        if delta != want {
            errors.push(format!(
                "paths moved: {}; want: {}",
                describe_paths(&delta),
                describe_paths(&want)
            ));
        }
        let name = c.case.name;
        if errors.is_empty() {
            eprintln!("ok    {prog:?} {name}");
        } else {
            let e = errors.join("\n  ");
            eprintln!("FAIL  {prog:?} {name}\n  {e}");
            failed.push(format!("{name}:\n  {e}"));
        }
    }
    assert_all_passed(prog, cases.len(), &failed);
}

/// An Ethernet header (14 bytes) for IPv4.
fn eth_header(destination: [u8; 6], source: [u8; 6]) -> Vec<u8> {
    Ethernet2Header {
        destination,
        source,
        ether_type: EtherType::IPV4,
    }
    .to_bytes()
    .to_vec()
}

/// A frame from the LAN host to lan0.
fn from_lan(packet: &[u8]) -> Vec<u8> {
    eth4_with(LAN0_MAC, HOST_MAC, packet)
}

/// The outer header the fast path must write for a packet to `remote` (ID filled in from the
/// output, checksum by etherparse).
fn outer_to(remote: [u8; 4], tos: u8, ttl: u8, inner: &[u8]) -> Ipv4Header {
    let mut h = V4::new(LOCAL_WAN, remote).tos(tos).ttl(ttl).df(true);
    h.id = 0;
    h.header(IpNumber::IPV4, inner.len())
}

/// A LAN packet handed to the kernel unchanged, `reason` counted.
fn lan_pass(name: &'static str, input: Vec<u8>, reason: Option<Reason>) -> Fwd {
    lan_pass_on("lan0", name, input, reason)
}

fn lan_pass_on(
    ingress: &'static str,
    name: &'static str,
    input: Vec<u8>,
    reason: Option<Reason>,
) -> Fwd {
    Fwd {
        ingress,
        case: Case {
            name,
            input,
            verdict: XDP_PASS,
            output: Expect::Unchanged,
            reason,
            peer: None,
        },
        path: None,
    }
}

/// A LAN packet encapsulated and redirected to the underlay gateway: `before` goes in, `after`
/// (TTL down) is the inner packet of the output under an outer header with `tos` and `ttl`.
fn lan_fast(
    name: &'static str,
    before: &[u8],
    after: &[u8],
    remote: [u8; 4],
    tos: u8,
    ttl: u8,
    peer: u32,
) -> Fwd {
    Fwd {
        ingress: "lan0",
        case: Case {
            name,
            input: from_lan(before),
            verdict: XDP_REDIRECT,
            output: Expect::EncapEth {
                eth: eth_header(GW_MAC, WAN0_MAC),
                outer: outer_to(remote, tos, ttl, after),
                inner: after.to_vec(),
            },
            reason: None,
            peer: Some((peer, tx(before.len()))),
        },
        path: Some(Path::EncapFast),
    }
}

/// From the LAN host to `dst`, as the LAN host sends it.
fn lan_v4(dst: [u8; 4]) -> V4 {
    V4::new(HOST, dst)
}

#[test]
fn lan_encap_fast_path() {
    let ns = gateway();
    ns.within(|| {
        let mut dp = gateway_datapath(PEERS, 0, &["lan0", "wan0"]);
        let v = lan_v4(REMOTE_HOST);
        let udp_in = udp(&v, 200);
        let udp_out = udp(&v.clone().ttl(63), 200);
        let ef_ce = v.clone().tos(0xb8 | 0b11).ttl(17);
        let icmp_in = icmp(&ef_ce, 84);
        let icmp_out = icmp(&ef_ce.clone().ttl(16), 84);
        let ect1 = v.clone().tos(0x28 | 0b01).ttl(2).df(false);
        let ect1_in = udp(&ect1, 60);
        let ect1_out = udp(&ect1.clone().ttl(1), 60);
        let full_in = udp(&v, 1480);
        let full_out = udp(&v.clone().ttl(63), 1480);
        let narrow = lan_v4([10, 204, 0, 9]);
        let narrow_fits_in = udp(&narrow, 1380);
        let narrow_fits_out = udp(&narrow.clone().ttl(63), 1380);

        // A minimum-size Ethernet frame: 40 bytes of IPv4 and 6 bytes of padding. The outer
        // header describes the packet; the padding stays behind it (as on decap).
        let small_in = udp(&v, 40);
        let small_out = udp(&v.clone().ttl(63), 40);
        let mut padded = from_lan(&small_in);
        padded.extend_from_slice(&[0; 6]);
        let mut padded_out = small_out.clone();
        padded_out.extend_from_slice(&[0; 6]);

        let mut not_ipv4_unicast = from_lan(&udp_in);
        not_ipv4_unicast[..6].copy_from_slice(&[0xff; 6]);
        let mut multicast = from_lan(&udp_in);
        multicast[..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0x00, 0x00, 0x05]);
        let mut truncated = from_lan(&udp_in);
        truncated.truncate(14 + 150);

        let cases = vec![
            lan_fast(
                "routed UDP, ttl 64 -> outer ttl 63 (inherit), DF, tos 0",
                &udp_in,
                &udp_out,
                FAR,
                0,
                63,
                P_FAR,
            ),
            lan_fast(
                "routed ICMP EF+CE ttl 17 -> outer DSCP 0 + ECT(0), ttl 16",
                &icmp_in,
                &icmp_out,
                FAR,
                0b10,
                16,
                P_FAR,
            ),
            lan_fast(
                "AF11+ECT(1), ttl 2, no DF -> inner ttl 1, outer ECT(1), ttl 1, DF (pmtudisc)",
                &ect1_in,
                &ect1_out,
                FAR,
                0b01,
                1,
                P_FAR,
            ),
            lan_fast(
                "inner exactly the peer MTU (1480)",
                &full_in,
                &full_out,
                FAR,
                0,
                63,
                P_FAR,
            ),
            lan_fast(
                "outer exactly the route's locked MTU (1400)",
                &narrow_fits_in,
                &narrow_fits_out,
                [198, 51, 100, 60],
                0,
                63,
                4,
            ),
            Fwd {
                ingress: "lan0",
                case: Case {
                    name: "Ethernet padding after a 40-byte packet stays behind it",
                    input: padded,
                    verdict: XDP_REDIRECT,
                    output: Expect::EncapEth {
                        eth: eth_header(GW_MAC, WAN0_MAC),
                        outer: outer_to(FAR, 0, 63, &small_out),
                        inner: padded_out,
                    },
                    reason: None,
                    peer: Some((P_FAR, tx(40))),
                },
                path: Some(Path::EncapFast),
            },
            lan_pass(
                "ttl 1 -> kernel (ICMP time exceeded)",
                from_lan(&udp(&v.clone().ttl(1), 200)),
                Some(Reason::PassTtlExpired),
            ),
            lan_pass(
                "ttl 0 -> kernel",
                from_lan(&udp(&v.clone().ttl(0), 200)),
                Some(Reason::PassTtlExpired),
            ),
            lan_pass(
                "IP options -> kernel",
                from_lan(&udp(&v.clone().options(&[1, 1, 1, 0]), 204)),
                Some(Reason::PassIpOptions),
            ),
            lan_pass(
                "inner one byte over the peer MTU (1481) -> kernel",
                from_lan(&udp(&v, 1481)),
                Some(Reason::PassNeedsFrag),
            ),
            lan_pass(
                "outer one byte over the route's locked MTU (1400) -> kernel",
                from_lan(&udp(&narrow, 1381)),
                Some(Reason::PassNeedsFrag),
            ),
            lan_pass(
                "peer remote's gateway has no neighbour entry",
                from_lan(&udp(&lan_v4([10, 201, 0, 9]), 200)),
                Some(Reason::PassNoNeighbour),
            ),
            lan_pass(
                "peer remote routed out of wan1: no route to it out of the underlay",
                from_lan(&udp(&lan_v4([10, 203, 0, 9]), 200)),
                Some(Reason::PassFibNoRoute),
            ),
            lan_pass(
                "peer remote blackholed",
                from_lan(&udp(&lan_v4([10, 202, 0, 9]), 200)),
                Some(Reason::PassFibNoRoute),
            ),
            lan_pass(
                "no route to the peer remote",
                from_lan(&udp(&lan_v4([10, 205, 0, 9]), 200)),
                Some(Reason::PassFibNoRoute),
            ),
            lan_pass_on(
                "lan1",
                "arrived on an interface with forwarding disabled",
                eth4_with([0x02, 0, 0, 0, 0x05, 0x01], HOST_MAC, &udp_in),
                Some(Reason::PassFibNoRoute),
            ),
            lan_pass(
                "destination in no peer's routes",
                from_lan(&udp(&lan_v4([172, 20, 1, 1]), 200)),
                None,
            ),
            lan_pass(
                "destination is the gateway itself",
                from_lan(&udp(&lan_v4(LAN_ADDR), 200)),
                None,
            ),
            lan_pass("broadcast destination MAC", not_ipv4_unicast, None),
            lan_pass("multicast destination MAC", multicast, None),
            lan_pass("truncated (total length beyond the frame)", truncated, None),
            lan_pass("ARP", arp(), None),
            lan_pass("IPv6", eth6(&udp6(100)), None),
        ];
        run_fwd_table(&mut dp, Prog::XdpLan, &cases);

        // Independently of the table: both checksums verify and only the TTL changed inside.
        let (verdict, out) = run_on(
            &mut dp,
            Prog::XdpLan,
            &from_lan(&icmp_in),
            Some(ifindex("lan0")),
        )
        .expect("test run");
        assert_eq!(verdict, XDP_REDIRECT);
        assert_ipv4_checksum("outer", &out[14..]).unwrap();
        assert_ipv4_checksum("inner", &out[34..]).unwrap();
        let (inner, _) = Ipv4Header::from_slice(&out[34..]).unwrap();
        assert_eq!(inner.time_to_live, 16);
        assert_eq!(inner.dscp.value(), 0xb8 >> 2);
        assert_eq!(inner.ecn.value(), 0b11, "inner ECN untouched");
    });
}

#[test]
fn lan_encap_fixed_ttl_tos_inherit() {
    let ns = gateway();
    ns.within(|| {
        let file = format!("[tunnel]\nttl = 64\ntos = \"inherit\"\n{PEERS}");
        let mut dp = gateway_datapath(&file, 0, &["lan0", "wan0"]);
        let v = lan_v4(REMOTE_HOST).tos(0xb8 | 0b11).ttl(17);
        let cases = vec![lan_fast(
            "EF+CE ttl 17 -> inner ttl 16, outer EF+ECT(0), ttl 64",
            &udp(&v, 100),
            &udp(&v.clone().ttl(16), 100),
            FAR,
            0xb8 | 0b10,
            64,
            P_FAR,
        )];
        run_fwd_table(&mut dp, Prog::XdpLan, &cases);
    });
}

#[test]
fn lan_encap_egress_not_in_fwd_devs() {
    let ns = gateway();
    ns.within(|| {
        let mut dp = gateway_datapath(PEERS, 0, &["lan0"]);
        let cases = vec![lan_pass(
            "wan0 not listed -> kernel",
            from_lan(&udp(&lan_v4(REMOTE_HOST), 200)),
            Some(Reason::PassEgressNotFast),
        )];
        run_fwd_table(&mut dp, Prog::XdpLan, &cases);
    });
}

// ---------------------------------------------------------------------------------------------
// Decapsulation with forwarding.

/// Outer header from far to us, as a Linux ipip peer sends it.
fn from_far() -> V4 {
    V4::new(FAR, LOCAL_WAN).id(0x0101)
}

/// Inner packet from the remote host to `dst`.
fn to_lan(dst: [u8; 4]) -> V4 {
    V4::new(REMOTE_HOST, dst)
}

/// Decapsulated and redirected: `after` behind the MACs the FIB gives.
fn decap_fast(name: &'static str, outer: V4, before: &[u8], after: Vec<u8>) -> Fwd {
    Fwd {
        ingress: "wan0",
        case: Case {
            name,
            input: ipip(&outer, before),
            verdict: XDP_REDIRECT,
            output: Expect::Frame(after),
            reason: None,
            peer: Some((P_FAR, rx(before.len()))),
        },
        path: Some(Path::DecapFast),
    }
}

/// Decapsulated and handed to the kernel as the plain decapsulator does, `reason` counted.
fn decap_kernel(name: &'static str, inner: Vec<u8>, reason: Option<Reason>) -> Fwd {
    Fwd {
        ingress: "wan0",
        case: Case {
            name,
            input: ipip(&from_far(), &inner),
            verdict: XDP_PASS,
            output: Expect::Frame(eth4(&inner)),
            reason,
            peer: Some((P_FAR, rx(inner.len()))),
        },
        path: Some(Path::DecapKernel),
    }
}

#[test]
fn decap_fast_path() {
    let ns = gateway();
    ns.within(|| {
        let mut dp = gateway_datapath(PEERS, TUNNEL_FLAG_FAST_PATH, &["lan0", "wan0"]);
        let v = to_lan(HOST);
        let udp_in = udp(&v, 200);
        let udp_out = eth4_with(HOST_MAC, LAN0_MAC, &udp(&v.clone().ttl(63), 200));
        let ttl2_in = icmp(&v.clone().ttl(2), 84);
        let ttl2_out = eth4_with(HOST_MAC, LAN0_MAC, &icmp(&v.clone().ttl(1), 84));
        let ect0 = v.clone().tos(0xb8 | 0b10);
        let ect0_in = udp(&ect0, 100);
        let ce_out = eth4_with(
            HOST_MAC,
            LAN0_MAC,
            &udp(&ect0.clone().tos(0xb8 | 0b11).ttl(63), 100),
        );
        let full_in = udp(&v, 1480);
        let full_out = eth4_with(HOST_MAC, LAN0_MAC, &udp(&v.clone().ttl(63), 1480));
        let host200 = to_lan([192, 168, 104, 200]);
        let h200_in = udp(&host200, 1000);
        let h200_out = eth4_with(HOST200_MAC, LAN0_MAC, &udp(&host200.clone().ttl(63), 1000));

        let cases = vec![
            decap_fast(
                "to the LAN host: decapsulated, ttl 63, LAN MACs, redirected",
                from_far(),
                &udp_in,
                udp_out,
            ),
            decap_fast(
                "inner ttl 2 -> forwarded with ttl 1",
                from_far(),
                &ttl2_in,
                ttl2_out,
            ),
            decap_fast(
                "outer CE + inner ECT(0): inner CE and ttl 63, checksum follows both",
                from_far().tos(0b11),
                &ect0_in,
                ce_out,
            ),
            decap_fast(
                "inner 1480 bytes (outer 1500)",
                from_far(),
                &full_in,
                full_out,
            ),
            decap_fast(
                "inner exactly the locked route MTU (1000)",
                from_far(),
                &h200_in,
                h200_out,
            ),
            decap_kernel(
                "inner ttl 1 -> kernel (ICMP time exceeded)",
                udp(&v.clone().ttl(1), 200),
                Some(Reason::PassTtlExpired),
            ),
            decap_kernel(
                "inner ttl 0 -> kernel",
                udp(&v.clone().ttl(0), 200),
                Some(Reason::PassTtlExpired),
            ),
            decap_kernel(
                "inner ttl 1 to a local address -> local delivery, nothing counted",
                udp(&to_lan(LAN_ADDR).ttl(1), 200),
                None,
            ),
            decap_kernel(
                "inner to the gateway's LAN address -> local delivery",
                udp(&to_lan(LAN_ADDR), 200),
                None,
            ),
            decap_kernel(
                "inner to the gateway's underlay address -> local delivery",
                udp(&to_lan(LOCAL_WAN), 200),
                None,
            ),
            decap_kernel(
                "inner with IP options -> kernel",
                udp(&v.clone().options(&[1, 1, 1, 0]), 204),
                Some(Reason::PassIpOptions),
            ),
            decap_kernel(
                "LAN host without a neighbour entry",
                udp(&to_lan([192, 168, 104, 101]), 200),
                Some(Reason::PassNoNeighbour),
            ),
            decap_kernel(
                "inner one byte over the locked route MTU (1000)",
                udp(&host200, 1001),
                Some(Reason::PassNeedsFrag),
            ),
            decap_kernel(
                "inner routed out of wan1 (not in fwd_devs)",
                udp(&to_lan([172, 20, 0, 1]), 200),
                Some(Reason::PassEgressNotFast),
            ),
            decap_kernel(
                "inner destination blackholed",
                udp(&to_lan([172, 21, 0, 1]), 200),
                Some(Reason::PassFibNoRoute),
            ),
            decap_kernel(
                "no route to the inner destination -> kernel, nothing counted",
                udp(&to_lan([172, 22, 0, 1]), 200),
                None,
            ),
            // A hub relaying between peers: the FIB sends far's packet for narrow's routes
            // back out of the underlay, where attach routes peer prefixes for TC egress to
            // encapsulate. An XDP_REDIRECT (ndo_xdp_xmit) never meets TC egress and would put
            // the bare inner packet on the underlay: it must go to the kernel.
            decap_kernel(
                "inner for another peer's routes (back out of the underlay) -> kernel",
                udp(&to_lan([10, 204, 0, 9]), 200),
                Some(Reason::PassEgressNotFast),
            ),
            decap_kernel(
                "inner to the LAN broadcast address -> kernel, nothing counted",
                udp(&to_lan([192, 168, 104, 255]), 200),
                None,
            ),
        ];
        run_fwd_table(&mut dp, Prog::Xdp, &cases);

        // Independently of the table: the forwarded inner header verifies.
        let (verdict, out) = run_on(
            &mut dp,
            Prog::Xdp,
            &ipip(&from_far().tos(0b11), &ect0_in),
            Some(ifindex("wan0")),
        )
        .expect("test run");
        assert_eq!(verdict, XDP_REDIRECT);
        assert_ipv4_checksum("inner after CE and ttl", &out[14..]).unwrap();
    });
}

#[test]
fn decap_fast_path_off() {
    let ns = gateway();
    ns.within(|| {
        let mut dp = gateway_datapath(PEERS, 0, &["lan0", "wan0"]);
        let cases = vec![
            decap_kernel(
                "FIB could forward, fast path off -> plain decap",
                udp(&to_lan(HOST), 200),
                None,
            ),
            decap_kernel(
                "inner ttl 1, fast path off -> plain decap, nothing counted",
                udp(&to_lan(HOST).ttl(1), 200),
                None,
            ),
        ];
        run_fwd_table(&mut dp, Prog::Xdp, &cases);
    });
}

#[test]
fn decap_fast_path_lan_not_in_fwd_devs() {
    let ns = gateway();
    ns.within(|| {
        let mut dp = gateway_datapath(PEERS, TUNNEL_FLAG_FAST_PATH, &["wan0"]);
        let cases = vec![decap_kernel(
            "lan0 not listed -> plain decap",
            udp(&to_lan(HOST), 200),
            Some(Reason::PassEgressNotFast),
        )];
        run_fwd_table(&mut dp, Prog::Xdp, &cases);
    });
}

#[test]
fn namespace_is_deleted_on_panic() {
    let name = {
        let ns = gateway();
        let name = ns.name().to_string();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ns.within(|| panic!("deliberate"));
        }));
        assert!(r.is_err(), "the panic reaches the caller");
        name
    };
    assert!(
        !std::path::Path::new(&format!("/run/netns/{name}")).exists(),
        "namespace {name} deleted"
    );
}
