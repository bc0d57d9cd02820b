//! Types that cross the kernel/user boundary. Everything here is `#[repr(C)]` and free of
//! padding so that the eBPF programs and `ipip-user` agree byte for byte; `const` asserts pin
//! the sizes. Addresses are stored as network-order `[u8; 4]` and read through accessors.
#![no_std]

mod bench;
mod counters;
mod droplog;
mod maps;

pub use bench::{
    BenchFrame, BENCH_FRAME_MAX, MAP_BENCH_FRAME, MAP_BENCH_TC_TARGET, MAP_BENCH_XDP_TARGET,
    PROG_BENCH_TC, PROG_BENCH_TC_OK, PROG_BENCH_XDP, PROG_BENCH_XDP_PASS, PROG_BENCH_XDP_REF_ENCAP,
    PROG_BENCH_XDP_TX,
};

pub use counters::{Path, PeerCounters, Reason, PATH_COUNT, REASON_COUNT};
pub use droplog::{DropRecord, Hook, DROP_HAS_INNER, DROP_HAS_IP, DROP_LOG_BYTES, MAP_DROP_LOG};
pub use maps::{
    FragKey, FragPiece, FragPieceKey, FragState, PeerConfig, PeerName, PeerPmtu, RouteKey,
    TunnelConfig, FRAG_MAX_PIECES, FRAG_PIECE_MAX, FRAG_SLOT, FRAG_TIMEOUT_NS, MAP_CONFIG,
    MAP_FRAGS, MAP_FRAG_PIECES, MAP_FRAG_SCRATCH, MAP_FWD_DEVS, MAP_LAN_MACS, MAP_PATHS, MAP_PEERS,
    MAP_PEER_BY_REMOTE, MAP_PEER_NAMES, MAP_PEER_PMTU, MAP_PEER_STATS, MAP_REASONS, MAP_ROUTES,
    MAX_FRAG_DATAGRAMS, MAX_FWD_DEVS, MAX_PEERS, MAX_ROUTES, MIN_PEERS_CAPACITY,
    MIN_ROUTES_CAPACITY, PEER_FLAG_PMTUDISC, PEER_FLAG_TOS_INHERIT, PEER_MAPS, PEER_NAME_LEN,
    PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP_DECAP, PROG_XDP_LAN, TTL_INHERIT,
    TUNNEL_FLAG_ADDRESS_ADDED, TUNNEL_FLAG_DECAP_TC, TUNNEL_FLAG_FAST_PATH,
    TUNNEL_FLAG_FWD_USE_PMTU, TUNNEL_FLAG_LOG_DROPS, TUNNEL_FLAG_XDP_GENERIC,
};

/// IP protocol number of IPv4-in-IPv4 (RFC 2003). network-types calls it `IpProto::Ipv4`.
pub const IPPROTO_IPIP: u8 = 4;
/// Size of the outer IPv4 header we add (no options, IHL 5).
pub const OUTER_HEADER_LEN: usize = 20;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte arrays, have no
    // padding (checked by the const asserts next to them) and accept any bit pattern.
    unsafe impl aya::Pod for PeerConfig {}
    unsafe impl aya::Pod for TunnelConfig {}
    unsafe impl aya::Pod for DropRecord {}
    unsafe impl aya::Pod for PeerCounters {}
    unsafe impl aya::Pod for PeerName {}
    unsafe impl aya::Pod for PeerPmtu {}
    unsafe impl aya::Pod for BenchFrame {}
    unsafe impl bytemuck::Zeroable for PeerCounters {}
    unsafe impl bytemuck::Pod for PeerCounters {}
}
