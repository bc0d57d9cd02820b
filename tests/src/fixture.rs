//! Shared machinery of the packet tests: loading a data path from a peers file, building frames
//! with an independent packet library (etherparse, never our own encoder), running the programs
//! with `BPF_PROG_TEST_RUN`, reading the counters, and checking a table of cases.

use std::{fmt::Write as _, net::Ipv4Addr, path::Path};

use aya::maps::Array;
use aya::{
    maps::PerCpuArray,
    programs::{ProgramError, TestRun, TestRunOptions},
};
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, EtherType, Ethernet2Header, Icmpv4Slice, Icmpv4Type, IpDscp,
    IpEcn, IpFragOffset, IpHeaders, IpNumber, Ipv4Header, PacketBuilder, SingleVlanHeader, VlanId,
    VlanPcp,
};
use ipip_common::{
    Path as DataPath, PeerCounters, PeerPmtu, Reason, MAP_PATHS, MAP_PEER_PMTU, MAP_PEER_STATS,
    MAP_REASONS, PATH_COUNT, REASON_COUNT,
};
use ipip_user::{
    config::PeersFile,
    datapath::Datapath,
    plan::{Plan, Underlay},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_STOLEN: u32 = 4;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Destination and source MAC of every test frame.
pub const MAC_DST: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const MAC_SRC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// Our underlay address in every single-ended test.
pub const LOCAL: [u8; 4] = [192, 0, 2, 58];

/// Fails the test with a clear message unless we can run BPF_PROG_TEST_RUN.
pub fn require_root() {
    if let Err(e) = crate::require_root() {
        panic!("packet tests need root (BPF_PROG_TEST_RUN): {e}");
    }
}

/// Loads the object and fills its maps from `toml` on a 1500-byte underlay with address `local`.
pub fn datapath(toml: &str, local: [u8; 4]) -> Datapath {
    datapath_with(toml, local, |_| {})
}

/// Like [`datapath`], with `adjust` applied to the plan before the maps are filled (e.g. to set
/// tunnel flags).
pub fn datapath_with(toml: &str, local: [u8; 4], adjust: impl FnOnce(&mut Plan)) -> Datapath {
    require_root();
    let file = PeersFile::parse(toml, Path::new("test.toml")).expect("test peers file parses");
    let mut plan = Plan::new(
        &file,
        &Underlay {
            ifindex: 1,
            mtu: 1500,
            local: Ipv4Addr::from(local),
        },
    );
    // TC ingress decapsulates here (as with `attach --decap tc`); with the flag clear it only
    // reassembles fragments for XDP. XDP decapsulates either way.
    plan.tunnel.flags |= ipip_common::TUNNEL_FLAG_DECAP_TC;
    adjust(&mut plan);
    let mut dp = Datapath::load(plan.capacity).unwrap_or_else(|e| {
        panic!(
            "packet tests need root (BPF_PROG_TEST_RUN); loading the data path failed: {}",
            error_chain(&e)
        )
    });
    dp.fill(&plan).expect("filling the maps");
    dp
}

// ---------------------------------------------------------------------------------------------
// Frames, all built with etherparse.

/// Fields of an IPv4 header a test cares about; everything else is etherparse's default.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    /// Whole TOS byte: DSCP << 2 | ECN.
    pub tos: u8,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub options: Vec<u8>,
}

impl V4 {
    pub fn new(src: [u8; 4], dst: [u8; 4]) -> Self {
        V4 {
            src,
            dst,
            ttl: 64,
            tos: 0,
            id: 0x1c46,
            df: true,
            mf: false,
            frag_offset: 0,
            options: Vec::new(),
        }
    }
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }
    pub fn id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }
    pub fn df(mut self, df: bool) -> Self {
        self.df = df;
        self
    }
    pub fn mf(mut self, mf: bool) -> Self {
        self.mf = mf;
        self
    }
    pub fn frag_offset(mut self, units: u16) -> Self {
        self.frag_offset = units;
        self
    }
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    /// The etherparse header for a payload of `payload_len` bytes, checksum computed by
    /// etherparse.
    pub fn header(&self, protocol: IpNumber, payload_len: usize) -> Ipv4Header {
        let mut h = Ipv4Header::new(0, self.ttl, protocol, self.src, self.dst).unwrap();
        h.dscp = IpDscp::try_new(self.tos >> 2).unwrap();
        h.ecn = IpEcn::try_new(self.tos & 0b11).unwrap();
        h.identification = self.id;
        h.dont_fragment = self.df;
        h.more_fragments = self.mf;
        h.fragment_offset = IpFragOffset::try_new(self.frag_offset).unwrap();
        h.options = self.options.as_slice().try_into().unwrap();
        h.set_payload_len(payload_len).unwrap();
        h.header_checksum = h.calc_header_checksum();
        h
    }
}

fn ip_headers(v4: &V4) -> IpHeaders {
    // Length, protocol and checksum are filled in by PacketBuilder.
    IpHeaders::Ipv4(v4.header(IpNumber::ICMP, 0), Default::default())
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// An ICMP echo request IPv4 packet of `total_len` bytes (>= 28).
pub fn icmp(v4: &V4, total_len: usize) -> Vec<u8> {
    let b = PacketBuilder::ip(ip_headers(v4)).icmpv4_echo_request(0x4242, 7);
    let mut out = Vec::new();
    b.write(&mut out, &payload(total_len - 28 - v4.options.len()))
        .unwrap();
    assert_eq!(out.len(), total_len);
    out
}

/// A TCP IPv4 packet of `total_len` bytes (>= 40), header without options.
pub fn tcp(v4: &V4, total_len: usize) -> Vec<u8> {
    let b = PacketBuilder::ip(ip_headers(v4)).tcp(40000, 80, 0x1234_5678, 64240);
    let mut out = Vec::new();
    b.write(&mut out, &payload(total_len - 40 - v4.options.len()))
        .unwrap();
    assert_eq!(out.len(), total_len);
    out
}

/// A UDP IPv4 packet of `total_len` bytes (>= 28).
pub fn udp(v4: &V4, total_len: usize) -> Vec<u8> {
    let b = PacketBuilder::ip(ip_headers(v4)).udp(40000, 53);
    let mut out = Vec::new();
    b.write(&mut out, &payload(total_len - 28 - v4.options.len()))
        .unwrap();
    assert_eq!(out.len(), total_len);
    out
}

/// A UDP IPv6 packet (not an Ethernet frame).
pub fn udp6(len: usize) -> Vec<u8> {
    let b = PacketBuilder::ipv6(
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        64,
    )
    .udp(40000, 53);
    let mut out = Vec::new();
    b.write(&mut out, &payload(len - 48)).unwrap();
    out
}

/// `payload` behind an Ethernet header with the test MACs.
pub fn eth(ether_type: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut out = Ethernet2Header {
        source: MAC_SRC,
        destination: MAC_DST,
        ether_type,
    }
    .to_bytes()
    .to_vec();
    out.extend_from_slice(payload);
    out
}

/// An IPv4 packet in an Ethernet frame.
pub fn eth4(packet: &[u8]) -> Vec<u8> {
    eth(EtherType::IPV4, packet)
}

/// An IPv4 packet in an Ethernet frame with the given MACs.
pub fn eth4_with(destination: [u8; 6], source: [u8; 6], packet: &[u8]) -> Vec<u8> {
    let mut out = Ethernet2Header {
        source,
        destination,
        ether_type: EtherType::IPV4,
    }
    .to_bytes()
    .to_vec();
    out.extend_from_slice(packet);
    out
}

/// An IPv6 packet in an Ethernet frame.
pub fn eth6(packet: &[u8]) -> Vec<u8> {
    eth(EtherType::IPV6, packet)
}

/// An ARP request in an Ethernet frame.
pub fn arp() -> Vec<u8> {
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: MAC_SRC,
        sender_ipv4: [192, 0, 2, 129],
        target_mac: [0; 6],
        target_ipv4: LOCAL,
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_SRC, MAC_DST)
        .arp(arp.to_arp_packet())
        .write(&mut out)
        .unwrap();
    out
}

/// The outer IPv4 header of an IPIP packet carrying `inner_len` bytes, as etherparse builds it.
pub fn outer_header(outer: &V4, inner_len: usize) -> Ipv4Header {
    outer.header(IpNumber::IPV4, inner_len)
}

/// An IPIP frame: Ethernet + outer header (`outer`, protocol 4) + `inner`.
pub fn ipip(outer: &V4, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_SRC, MAC_DST)
        .ip(IpHeaders::Ipv4(
            outer.header(IpNumber::IPV4, 0),
            Default::default(),
        ))
        .write(&mut out, IpNumber::IPV4, inner)
        .unwrap();
    out
}

/// An IPIP packet without the Ethernet header: outer header (`outer`, protocol 4) + `inner`.
pub fn ipip_packet(outer: &V4, inner: &[u8]) -> Vec<u8> {
    ipip(outer, inner)[14..].to_vec()
}

/// An Ethernet frame with one 802.1Q (`tpid` 0x8100) or 802.1ad (0x88a8) tag of VLAN
/// `vlan_id` after the MACs, then `ether_type` and `payload`.
pub fn eth_vlan(tpid: EtherType, vlan_id: u16, ether_type: EtherType, payload: &[u8]) -> Vec<u8> {
    let tag = SingleVlanHeader {
        pcp: VlanPcp::ZERO,
        drop_eligible_indicator: false,
        vlan_id: VlanId::try_new(vlan_id).unwrap(),
        ether_type,
    };
    let mut out = eth(tpid, &tag.to_bytes());
    out.extend_from_slice(payload);
    out
}

/// An ICMP message of type `icmp_type` with `payload` (for errors: the quote) in IPv4 (`ip`)
/// in an Ethernet frame; lengths and both checksums computed by etherparse.
pub fn eth_icmp(ip: &V4, icmp_type: Icmpv4Type, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_SRC, MAC_DST)
        .ip(ip_headers(ip))
        .icmpv4(icmp_type)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// An ICMP "fragmentation needed" (type 3 code 4) with next-hop MTU `mtu` quoting `quote`.
pub fn frag_needed(ip: &V4, mtu: u16, quote: &[u8]) -> Vec<u8> {
    eth_icmp(
        ip,
        Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
        ),
        quote,
    )
}

/// A bare ICMP echo reply from `src` to `dst` as an IPv4 packet of 28 bytes: IPv4 {tos 0, id 0,
/// no flags, ttl 64}, ICMP {id 0, seq 0}; what the decapsulators quote for forwarded traffic
/// in a "fragmentation needed" they hand inward.
pub fn echo_reply_quote(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let v4 = V4::new(src, dst).id(0).df(false).ttl(64);
    let mut out = Vec::new();
    PacketBuilder::ip(ip_headers(&v4))
        .icmpv4_echo_reply(0, 0)
        .write(&mut out, &[])
        .unwrap();
    assert_eq!(out.len(), 28);
    out
}

/// An IPIP frame whose outer total length is `tot_len` whatever the real length (checksum
/// still valid), for truncation cases.
pub fn ipip_with_tot_len(outer: &V4, tot_len: u16, inner: &[u8]) -> Vec<u8> {
    let mut h = outer.header(IpNumber::IPV4, 0);
    h.total_len = tot_len;
    h.header_checksum = h.calc_header_checksum();
    let mut out = eth4(&h.to_bytes());
    out.extend_from_slice(inner);
    out
}

/// Asserts that the IPv4 header at the start of `packet` has a valid checksum (etherparse).
pub fn assert_ipv4_checksum(what: &str, packet: &[u8]) -> Result<(), String> {
    let (h, _) = Ipv4Header::from_slice(packet)
        .map_err(|e| format!("{what}: etherparse cannot parse the IPv4 header: {e}"))?;
    if h.calc_header_checksum() != h.header_checksum {
        return Err(format!(
            "{what}: IPv4 header checksum {:#06x}, etherparse computes {:#06x}",
            h.header_checksum,
            h.calc_header_checksum()
        ));
    }
    Ok(())
}

/// Asserts that the ICMP message `icmp` (header and everything after it) has a valid checksum
/// (etherparse).
pub fn assert_icmpv4_checksum(what: &str, icmp: &[u8]) -> Result<(), String> {
    let msg = Icmpv4Slice::from_slice(icmp)
        .map_err(|e| format!("{what}: etherparse cannot parse the ICMP message: {e}"))?;
    let want = msg.header().icmp_type.calc_checksum(msg.payload());
    if msg.checksum() != want {
        return Err(format!(
            "{what}: ICMP checksum {:#06x}, etherparse computes {want:#06x}",
            msg.checksum()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running programs.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    /// The XDP decapsulator.
    Xdp,
    /// The TC egress encapsulator.
    Tc,
    /// The TC ingress decapsulator.
    TcDecap,
    /// The gateway fast path's encapsulator on LAN interfaces.
    XdpLan,
}

/// A decapsulator: the same acceptance logic (`decap::classify`) behind two program types,
/// which differ in how they remove the outer header and in their return codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    pub fn prog(self) -> Prog {
        match self {
            Hook::Xdp => Prog::Xdp,
            Hook::Tc => Prog::TcDecap,
        }
    }

    /// The return code for "pass / decapsulated".
    pub fn pass(self) -> u32 {
        match self {
            Hook::Xdp => XDP_PASS,
            Hook::Tc => TC_ACT_OK,
        }
    }

    /// The return code for "kept by the program" (a fragment held for reassembly).
    pub fn stolen(self) -> u32 {
        match self {
            Hook::Xdp => XDP_DROP,
            Hook::Tc => TC_ACT_STOLEN,
        }
    }

    /// The return code for "drop".
    pub fn shot(self) -> u32 {
        match self {
            Hook::Xdp => XDP_DROP,
            Hook::Tc => TC_ACT_SHOT,
        }
    }
}

/// Runs `prog` once on `frame`: (return value, output frame).
pub fn run(dp: &mut Datapath, prog: Prog, frame: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
    run_on(dp, prog, frame, None)
}

/// The `xdp_md` context of an XDP test run on `len` bytes received on `ingress_ifindex`:
/// data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> Vec<u8> {
    [0, len as u32, 0, ingress_ifindex, 0, 0]
        .into_iter()
        .flat_map(u32::to_ne_bytes)
        .collect()
}

/// The ifindex of `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("no interface {name}: {e}"))
}

/// The MAC of `name` in the calling thread's namespace.
pub fn mac_of(name: &str) -> [u8; 6] {
    nix::ifaddrs::getifaddrs()
        .expect("getifaddrs")
        .filter(|a| a.interface_name == name)
        .find_map(|a| {
            a.address
                .and_then(|s| s.as_link_addr().and_then(|l| l.addr()))
        })
        .unwrap_or_else(|| panic!("no MAC for {name}"))
}

/// Runs `prog` once on `frame`, for XDP programs as received on `ingress` (an ifindex in the
/// calling thread's network namespace) when given: (return value, output frame).
pub fn run_on(
    dp: &mut Datapath,
    prog: Prog,
    frame: &[u8],
    ingress: Option<u32>,
) -> Result<(u32, Vec<u8>), ProgramError> {
    let mut out = vec![0u8; 4096];
    let ctx = ingress.map(|i| xdp_md(frame.len(), i));
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx.as_deref(),
        ..Default::default()
    };
    let r = match prog {
        Prog::Xdp => dp.xdp().expect("xdp program").test_run(opts)?,
        Prog::Tc => dp.tc().expect("tc program").test_run(opts)?,
        Prog::TcDecap => dp.tc_decap().expect("tc decap program").test_run(opts)?,
        Prog::XdpLan => dp.xdp_lan().expect("xdp lan program").test_run(opts)?,
    };
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

// ---------------------------------------------------------------------------------------------
// Counters.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    pub reasons: Vec<u64>,
    pub peers: Vec<PeerCounters>,
}

/// Sums every reason and the first `peers` peer slots over all CPUs.
pub fn counters(dp: &Datapath, peers: u32) -> Counters {
    let reasons_map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(dp.ebpf.map(MAP_REASONS).expect("reasons map")).unwrap();
    let reasons = (0..REASON_COUNT)
        .map(|i| reasons_map.get(&i, 0).unwrap().iter().sum())
        .collect();
    let stats: PerCpuArray<_, PeerCounters> =
        PerCpuArray::try_from(dp.ebpf.map(MAP_PEER_STATS).expect("peer_stats map")).unwrap();
    let peers = (0..peers)
        .map(|i| {
            stats
                .get(&i, 0)
                .unwrap()
                .iter()
                .fold(PeerCounters::default(), |a, c| PeerCounters {
                    rx_packets: a.rx_packets + c.rx_packets,
                    rx_bytes: a.rx_bytes + c.rx_bytes,
                    tx_packets: a.tx_packets + c.tx_packets,
                    tx_bytes: a.tx_bytes + c.tx_bytes,
                })
        })
        .collect();
    Counters { reasons, peers }
}

/// The `peer_pmtu` slot of peer `peer`: what the decapsulators learned from ICMP.
pub fn peer_pmtu(dp: &Datapath, peer: u32) -> PeerPmtu {
    let map: Array<_, PeerPmtu> =
        Array::try_from(dp.ebpf.map(MAP_PEER_PMTU).expect("peer_pmtu map")).unwrap();
    map.get(&peer, 0).unwrap()
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Every path counter, summed over all CPUs, in [`DataPath`] index order.
pub fn paths(dp: &Datapath) -> Vec<u64> {
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(dp.ebpf.map(MAP_PATHS).expect("paths map")).unwrap();
    (0..PATH_COUNT)
        .map(|i| map.get(&i, 0).unwrap().iter().sum())
        .collect()
}

/// Describes a paths delta, e.g. "encap_fast+1".
pub fn describe_paths(delta: &[u64]) -> String {
    let s: Vec<String> = DataPath::ALL
        .iter()
        .zip(delta)
        .filter(|(_, n)| **n != 0)
        .map(|(p, n)| format!("{}+{n}", p.name()))
        .collect();
    if s.is_empty() {
        "nothing".to_string()
    } else {
        s.join(" ")
    }
}

impl Counters {
    pub fn delta(&self, before: &Counters) -> Counters {
        Counters {
            reasons: self
                .reasons
                .iter()
                .zip(&before.reasons)
                .map(|(a, b)| a.wrapping_sub(*b))
                .collect(),
            peers: self
                .peers
                .iter()
                .zip(&before.peers)
                .map(|(a, b)| PeerCounters {
                    rx_packets: a.rx_packets.wrapping_sub(b.rx_packets),
                    rx_bytes: a.rx_bytes.wrapping_sub(b.rx_bytes),
                    tx_packets: a.tx_packets.wrapping_sub(b.tx_packets),
                    tx_bytes: a.tx_bytes.wrapping_sub(b.tx_bytes),
                })
                .collect(),
        }
    }

    /// The delta a case expects: `reason` +1 (if any), `peer` moved by its counters (if any),
    /// everything else 0.
    pub fn expected(peers: u32, reason: Option<Reason>, peer: Option<(u32, PeerCounters)>) -> Self {
        let mut c = Counters {
            reasons: vec![0; REASON_COUNT as usize],
            peers: vec![PeerCounters::default(); peers as usize],
        };
        if let Some(r) = reason {
            c.reasons[r as usize] = 1;
        }
        if let Some((i, p)) = peer {
            c.peers[i as usize] = p;
        }
        c
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for (r, n) in Reason::ALL.iter().zip(&self.reasons) {
            if *n != 0 {
                let _ = write!(s, "{}+{n} ", r.name());
            }
        }
        for (i, p) in self.peers.iter().enumerate() {
            if *p != PeerCounters::default() {
                let _ = write!(
                    s,
                    "peer{i}{{rx {}/{}B tx {}/{}B}} ",
                    p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes
                );
            }
        }
        if s.is_empty() {
            s.push_str("nothing");
        }
        s.trim_end().to_string()
    }
}

/// Peer counters moved by one received packet of `bytes` inner bytes.
pub fn rx(bytes: usize) -> PeerCounters {
    PeerCounters {
        rx_packets: 1,
        rx_bytes: bytes as u64,
        ..Default::default()
    }
}

/// Peer counters moved by one sent packet of `bytes` inner bytes.
pub fn tx(bytes: usize) -> PeerCounters {
    PeerCounters {
        tx_packets: 1,
        tx_bytes: bytes as u64,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Cases.

/// What the output frame must be.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Byte-identical to the input.
    Unchanged,
    /// Exactly these bytes.
    Frame(Vec<u8>),
    /// The input's Ethernet header, then `outer` (its ID taken from the output, its checksum
    /// then computed by etherparse), then `inner` byte for byte.
    Encap { outer: Ipv4Header, inner: Vec<u8> },
    /// `eth` (a whole Ethernet header), then `outer` (its ID taken from the output, its
    /// checksum then computed by etherparse), then `inner` byte for byte: an encapsulated frame
    /// with new MACs.
    EncapEth {
        eth: Vec<u8>,
        outer: Ipv4Header,
        inner: Vec<u8>,
    },
    /// An ICMP "fragmentation needed" answering the input: the input's MACs swapped (the frame
    /// turned around), then `ip` (its ID taken from the output), next-hop MTU `mtu`, quoting
    /// `quote`, all built by etherparse. The two quote bytes at `proof` (the transport checksum
    /// field the program rewrites, see `ipip_ebpf::icmp::offload_proof_field`) are taken from
    /// the output; the message must verify as sent and after a device fills that field in.
    FragNeeded {
        ip: V4,
        mtu: u16,
        quote: Vec<u8>,
        proof: Option<usize>,
    },
    /// Not checked (the packet is dropped).
    Dropped,
    /// The kernel refuses the test run with EINVAL before the program runs (TC test runs on
    /// frames too short for the skb the kernel builds); nothing may move. Should a kernel run
    /// the program anyway, the case is checked as [`Expect::Unchanged`].
    RefusedOrUnchanged,
}

pub struct Case {
    pub name: &'static str,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Expect,
    /// The one reason expected to move by exactly 1.
    pub reason: Option<Reason>,
    /// The one peer expected to move, and by how much.
    pub peer: Option<(u32, PeerCounters)>,
}

/// Whether a test run failed with EINVAL (the kernel refused the input).
pub fn is_einval(e: &ProgramError) -> bool {
    let einval = nix::errno::Errno::EINVAL as i32;
    matches!(e, ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(einval))
}

/// An error with all its sources, e.g. "`bpf_prog_test_run` failed: Invalid argument".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    s
}

fn hex(b: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in b.chunks(16).enumerate() {
        let _ = write!(s, "\n      {:04x}:", i * 16);
        for x in chunk {
            let _ = write!(s, " {x:02x}");
        }
    }
    s
}

fn compare_frames(got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    Err(format!(
        "output differs from expected at byte {first} (got {} bytes, want {}):\n    got:{}\n    want:{}",
        got.len(),
        want.len(),
        hex(got),
        hex(want)
    ))
}

/// The expected encapsulated frame given the output (whose ID it copies).
pub fn expected_encap(input: &[u8], got: &[u8], outer: &Ipv4Header, inner: &[u8]) -> Vec<u8> {
    expected_encap_eth(&input[..14], got, outer, inner)
}

/// The expected encapsulated frame behind the Ethernet header `eth`, given the output (whose
/// ID it copies).
pub fn expected_encap_eth(eth: &[u8], got: &[u8], outer: &Ipv4Header, inner: &[u8]) -> Vec<u8> {
    let mut outer = outer.clone();
    if got.len() >= 14 + 6 {
        outer.identification = u16::from_be_bytes([got[18], got[19]]);
    }
    outer.header_checksum = outer.calc_header_checksum();
    let mut want = eth.to_vec();
    want.extend_from_slice(&outer.to_bytes());
    want.extend_from_slice(inner);
    want
}

/// Where an answer's quote starts: Ethernet, IPv4 and ICMP headers.
const ANSWER_QUOTE: usize = 14 + 20 + 8;

/// The expected answer to `input` (see [`Expect::FragNeeded`]) given the output.
fn expected_answer(
    input: &[u8],
    got: &[u8],
    ip: &V4,
    mtu: u16,
    quote: &[u8],
    proof: Option<usize>,
) -> Vec<u8> {
    let mut ip = ip.clone();
    let mut quote = quote.to_vec();
    if got.len() >= ANSWER_QUOTE + quote.len() {
        ip = ip.id(u16::from_be_bytes([got[18], got[19]]));
        if let Some(p) = proof {
            quote[p..p + 2].copy_from_slice(&got[ANSWER_QUOTE + p..ANSWER_QUOTE + p + 2]);
        }
    }
    let mut want = frag_needed(&ip, mtu, &quote);
    want[..6].copy_from_slice(&input[6..12]);
    want[6..12].copy_from_slice(&input[..6]);
    want
}

/// What a device does to a packet whose transport checksum was left to it (skb_checksum_help):
/// the one's-complement sum from the transport header (behind the quoted 20-byte IPv4 header)
/// to the end, into the field at `proof`; the ICMP message must still verify.
fn assert_offload_proof(got: &[u8], proof: Option<usize>) -> Result<(), String> {
    let Some(p) = proof else { return Ok(()) };
    let mut filled = got.to_vec();
    let region = ANSWER_QUOTE + 20;
    let field = ANSWER_QUOTE + p;
    let mut c = crate::packet::checksum(&filled[region..]);
    if c == 0 {
        c = 0xffff;
    }
    filled[field..field + 2].copy_from_slice(&c.to_be_bytes());
    assert_icmpv4_checksum(
        "after a device filled in the quoted transport checksum",
        &filled[14 + 20..],
    )
}

/// Checks one case against a fresh run; `peers` is the number of configured peers.
pub fn check(dp: &mut Datapath, prog: Prog, peers: u32, case: &Case) -> Result<(), String> {
    check_on(dp, prog, None, peers, case)
}

/// Like [`check`], for XDP programs as received on `ingress` when given (see [`run_on`]).
pub fn check_on(
    dp: &mut Datapath,
    prog: Prog,
    ingress: Option<u32>,
    peers: u32,
    case: &Case,
) -> Result<(), String> {
    let before = counters(dp, peers);
    let (verdict, got) = match run_on(dp, prog, &case.input, ingress) {
        Ok(r) => r,
        Err(e) if matches!(case.output, Expect::RefusedOrUnchanged) && is_einval(&e) => {
            let delta = counters(dp, peers).delta(&before);
            let want = Counters::expected(peers, None, None);
            if delta != want {
                return Err(format!(
                    "refused by the kernel, yet counters moved: {}",
                    delta.describe()
                ));
            }
            eprintln!(
                "      {} bytes refused by the kernel: {}",
                case.input.len(),
                error_chain(&e)
            );
            return Ok(());
        }
        Err(e) => return Err(format!("test_run failed: {}", error_chain(&e))),
    };
    let delta = counters(dp, peers).delta(&before);
    let mut errors = Vec::new();
    if verdict != case.verdict {
        errors.push(format!("verdict {verdict}, want {}", case.verdict));
    }
    let frame = match &case.output {
        Expect::Unchanged | Expect::RefusedOrUnchanged => compare_frames(&got, &case.input),
        Expect::Frame(want) => compare_frames(&got, want),
        Expect::Encap { outer, inner } => {
            let want = expected_encap(&case.input, &got, outer, inner);
            compare_frames(&got, &want).and_then(|()| assert_ipv4_checksum("outer", &got[14..]))
        }
        Expect::EncapEth { eth, outer, inner } => {
            let want = expected_encap_eth(eth, &got, outer, inner);
            compare_frames(&got, &want).and_then(|()| assert_ipv4_checksum("outer", &got[14..]))
        }
        Expect::FragNeeded {
            ip,
            mtu,
            quote,
            proof,
        } => {
            let want = expected_answer(&case.input, &got, ip, *mtu, quote, *proof);
            compare_frames(&got, &want).and_then(|()| assert_offload_proof(&got, *proof))
        }
        Expect::Dropped => Ok(()),
    };
    if let Err(e) = frame {
        errors.push(e);
    }
    let want = Counters::expected(peers, case.reason, case.peer);
    if delta != want {
        errors.push(format!(
            "counters moved: {}; want: {}",
            delta.describe(),
            want.describe()
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n  "))
    }
}

/// Runs every case on `dp`; fails listing every case that did not hold.
pub fn run_table(dp: &mut Datapath, prog: Prog, peers: u32, cases: &[Case]) {
    let mut failed = Vec::new();
    for case in cases {
        match check(dp, prog, peers, case) {
            Ok(()) => eprintln!("ok    {:?} {}", prog, case.name),
            Err(e) => {
                eprintln!("FAIL  {:?} {}\n  {e}", prog, case.name);
                failed.push(format!("{}:\n  {e}", case.name));
            }
        }
    }
    assert_all_passed(prog, cases.len(), &failed);
}

/// Fails the test with every failed case of a table, after all of them ran.
pub fn assert_all_passed(prog: Prog, total: usize, failed: &[String]) {
    assert!(
        failed.is_empty(),
        "{} of {total} {prog:?} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
