//! Counter indices. Every drop and every hand-off to the kernel's slow path has one reason,
//! defined once here and reused by the programs, `ipip-user stats`, its JSON and metrics.

/// Why a packet left the fast path. The discriminant is the index into the per-CPU reasons map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Frame too short for the Ethernet + outer IPv4 headers it claims, or a bad outer header.
    DropMalformedOuter = 0,
    /// Outer fragment of IPIP from a peer, held until its datagram is complete (not a loss:
    /// the completed datagram is decapsulated and counted as received).
    HeldOuterFragment = 1,
    /// IPIP addressed to our tunnel address from an address that is not a configured peer.
    DropUnknownPeer = 2,
    /// Inner header missing, truncated or not IPv4.
    DropMalformedInner = 3,
    /// Inner source is outside the prefixes configured for the peer that sent it (spoofing).
    DropSpoofedSource = 4,
    /// Outer ECN CE on an inner packet that is not ECN-capable (RFC 6040 says drop).
    DropEcnNotEct = 5,
    /// Packet to encapsulate (or a GSO segment of it) larger than the tunnel MTU, with DF: it
    /// reached the tunnel through a route without the tunnel MTU. Dropped, and the sender is
    /// answered with ICMP "fragmentation needed" (next-hop MTU = tunnel MTU) wherever RFC 1122
    /// allows an answer, as `tnl_update_pmtu` does.
    DropTooBig = 6,
    /// A kernel helper (adjust_head/adjust_room/store) failed.
    DropHelperFailed = 7,
    /// A route points at a peer slot that holds no peer (a reload in progress).
    DropNoPeer = 8,
    /// IPIP not addressed to our tunnel address: left to the kernel (transit traffic).
    PassIpipNotLocal = 9,
    /// Outer IPv4 header checksum does not verify (ip_rcv drops these too).
    DropOuterChecksum = 10,
    /// Forwarded packet whose TTL runs out here: the kernel answers with ICMP time exceeded.
    PassTtlExpired = 11,
    /// The next hop's MAC is not known yet: the kernel resolves it (and queues the packet).
    PassNoNeighbour = 12,
    /// Larger than the egress MTU: the kernel fragments it or answers "fragmentation needed".
    PassNeedsFrag = 13,
    /// Forwarded packet with IP options: left to the kernel.
    PassIpOptions = 14,
    /// The FIB has no forwarding answer (no route, blackhole, forwarding disabled, ...).
    PassFibNoRoute = 15,
    /// The FIB's egress interface is not one the fast path may send on.
    PassEgressNotFast = 16,
    /// IPIP inside a VLAN tag on the underlay: not decapsulated here, left to the kernel (and
    /// to a VLAN device, if one is configured).
    PassVlan = 17,
    /// ICMP "fragmentation needed" about one of our outer packets: the peer's path MTU is
    /// learned and the message, turned into one about the inner packet, goes to the kernel
    /// (which updates the inner route's PMTU and tells the socket), as `ipip_err` does.
    PassPmtuLearned = 18,
    /// ICMP "fragmentation needed" about one of our outer packets that quotes too little of
    /// it to name the inner packet (RFC 792's 8 bytes): the MTU is learned, the message dropped.
    DropPmtuShortQuote = 19,
    /// Outer fragments whose datagram did not complete within the reassembly timeout
    /// (`net.ipv4.ipfrag_time`, 30 s): the held pieces are discarded.
    DropFragTimeout = 20,
    /// An outer fragment overlapping or repeating one already held: the datagram is dropped,
    /// as Linux does since RFC 5722's reasoning applies to IPv4 too.
    DropFragOverlap = 21,
    /// An outer datagram in more pieces, or longer, than the reassembly bounds allow.
    DropFragTooMany = 22,
    /// An outer fragment larger than a reassembly slot holds (underlays above 1500 bytes).
    DropFragTooBig = 23,
    /// Outer datagrams put back together from their fragments (then decapsulated).
    PassFragReassembled = 24,
    /// Like `DropTooBig`, without DF: this packet is lost, and the kernel is told the tunnel MTU
    /// for its destination (a PMTU exception, as `tnl_update_pmtu` records), so that it
    /// fragments the ones that follow before they reach the tunnel.
    DropTooBigNoDf = 25,
}

/// Number of reasons; the size of the reasons map.
pub const REASON_COUNT: u32 = 26;

impl Reason {
    /// All reasons in index order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::DropMalformedOuter,
        Reason::HeldOuterFragment,
        Reason::DropUnknownPeer,
        Reason::DropMalformedInner,
        Reason::DropSpoofedSource,
        Reason::DropEcnNotEct,
        Reason::DropTooBig,
        Reason::DropHelperFailed,
        Reason::DropNoPeer,
        Reason::PassIpipNotLocal,
        Reason::DropOuterChecksum,
        Reason::PassTtlExpired,
        Reason::PassNoNeighbour,
        Reason::PassNeedsFrag,
        Reason::PassIpOptions,
        Reason::PassFibNoRoute,
        Reason::PassEgressNotFast,
        Reason::PassVlan,
        Reason::PassPmtuLearned,
        Reason::DropPmtuShortQuote,
        Reason::DropFragTimeout,
        Reason::DropFragOverlap,
        Reason::DropFragTooMany,
        Reason::DropFragTooBig,
        Reason::PassFragReassembled,
        Reason::DropTooBigNoDf,
    ];

    /// Stable snake_case name used in `stats`, JSON and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::DropMalformedOuter => "malformed_outer",
            Reason::HeldOuterFragment => "outer_fragment_held",
            Reason::DropUnknownPeer => "unknown_peer",
            Reason::DropMalformedInner => "malformed_inner",
            Reason::DropSpoofedSource => "spoofed_inner_source",
            Reason::DropEcnNotEct => "ecn_ce_on_not_ect",
            Reason::DropTooBig => "too_big",
            Reason::DropHelperFailed => "helper_failed",
            Reason::DropNoPeer => "no_peer",
            Reason::PassIpipNotLocal => "ipip_not_local",
            Reason::DropOuterChecksum => "bad_outer_checksum",
            Reason::PassTtlExpired => "ttl_expired",
            Reason::PassNoNeighbour => "no_neighbour",
            Reason::PassNeedsFrag => "needs_fragmentation",
            Reason::PassIpOptions => "ip_options",
            Reason::PassFibNoRoute => "fib_no_route",
            Reason::PassEgressNotFast => "egress_not_fast",
            Reason::PassVlan => "vlan_tagged",
            Reason::PassPmtuLearned => "pmtu_learned",
            Reason::DropPmtuShortQuote => "pmtu_short_quote",
            Reason::DropFragTimeout => "fragment_timeout",
            Reason::DropFragOverlap => "fragment_overlap",
            Reason::DropFragTooMany => "fragment_too_many",
            Reason::DropFragTooBig => "fragment_too_big",
            Reason::PassFragReassembled => "reassembled",
            Reason::DropTooBigNoDf => "too_big_no_df",
        }
    }

    /// Whether the packet was dropped (as opposed to handed to the kernel).
    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Reason::PassIpipNotLocal
                | Reason::PassTtlExpired
                | Reason::PassNoNeighbour
                | Reason::PassNeedsFrag
                | Reason::PassIpOptions
                | Reason::PassFibNoRoute
                | Reason::PassEgressNotFast
                | Reason::PassVlan
                | Reason::PassPmtuLearned
                | Reason::HeldOuterFragment
                | Reason::PassFragReassembled
        )
    }

    /// One-line explanation for operators.
    pub const fn help(self) -> &'static str {
        match self {
            Reason::DropMalformedOuter => {
                "IPIP frame with a truncated or invalid outer IPv4 header"
            }
            Reason::HeldOuterFragment => {
                "outer fragment held for reassembly (peer sent without DF over a smaller MTU)"
            }
            Reason::DropUnknownPeer => {
                "IPIP to our tunnel address from a source that is not a configured peer"
            }
            Reason::DropMalformedInner => "IPIP whose inner packet is truncated or not IPv4",
            Reason::DropSpoofedSource => {
                "inner source outside the routes configured for the sending peer"
            }
            Reason::DropEcnNotEct => "outer ECN CE on a not-ECT inner packet (RFC 6040)",
            Reason::DropTooBig => {
                "larger than the tunnel MTU with DF: sender sent ICMP fragmentation needed"
            }
            Reason::DropHelperFailed => "kernel helper failed while rewriting the packet",
            Reason::DropNoPeer => "route points at an empty peer slot",
            Reason::PassIpipNotLocal => {
                "IPIP not addressed to the tunnel's local address, left to the kernel"
            }
            Reason::DropOuterChecksum => "IPIP whose outer IPv4 header checksum is wrong",
            Reason::PassTtlExpired => {
                "forwarded packet's TTL ran out: the kernel sends ICMP time exceeded"
            }
            Reason::PassNoNeighbour => "next hop's MAC unknown yet: the kernel resolves it",
            Reason::PassNeedsFrag => {
                "larger than the egress MTU: the kernel fragments or sends ICMP"
            }
            Reason::PassIpOptions => "forwarded packet with IP options",
            Reason::PassFibNoRoute => "no forwarding route in the FIB (or forwarding disabled)",
            Reason::PassEgressNotFast => "FIB egress interface is not a fast-path interface",
            Reason::PassVlan => "VLAN-tagged IPIP on the underlay, left to the kernel",
            Reason::PassPmtuLearned => {
                "ICMP fragmentation needed for a tunnel packet: peer MTU learned, kernel told"
            }
            Reason::DropPmtuShortQuote => {
                "ICMP fragmentation needed quoting too little to name the inner packet"
            }
            Reason::DropFragTimeout => "outer datagram incomplete after the reassembly timeout",
            Reason::DropFragOverlap => "outer fragment overlapping one already held",
            Reason::DropFragTooMany => "outer datagram beyond the reassembly bounds",
            Reason::DropFragTooBig => "outer fragment larger than a reassembly slot",
            Reason::PassFragReassembled => "outer datagram reassembled from its fragments",
            Reason::DropTooBigNoDf => {
                "larger than the tunnel MTU without DF: lost, the kernel told to fragment the next"
            }
        }
    }
}

/// Which path a packet took through the tunnel, so an operator can see whether the XDP fast
/// path or the kernel does the work. The discriminant indexes the per-CPU paths map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Encapsulated by XDP on a LAN interface and redirected out of the underlay.
    EncapFast = 0,
    /// Encapsulated by TC egress: traffic the host originates or the kernel forwards.
    EncapKernel = 1,
    /// Decapsulated and redirected straight to a LAN interface by XDP.
    DecapFast = 2,
    /// Decapsulated and handed to the kernel (local delivery or kernel forwarding).
    DecapKernel = 3,
}

pub const PATH_COUNT: u32 = 4;

impl Path {
    pub const ALL: [Path; PATH_COUNT as usize] = [
        Path::EncapFast,
        Path::EncapKernel,
        Path::DecapFast,
        Path::DecapKernel,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Path::EncapFast => "encap_fast",
            Path::EncapKernel => "encap_kernel",
            Path::DecapFast => "decap_fast",
            Path::DecapKernel => "decap_kernel",
        }
    }
}

/// Per-peer traffic counters, one slot per peer in a per-CPU array.
/// Bytes count the inner IPv4 packet, as `ip -s link` does on a tunnel device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PeerCounters>() == 32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_indexed_densely() {
        for (i, p) in Path::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "{p:?} out of order");
        }
    }

    #[test]
    fn reasons_are_indexed_densely_and_named_uniquely() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} out of order");
            for other in &Reason::ALL[..i] {
                assert_ne!(r.name(), other.name());
            }
        }
    }
}
