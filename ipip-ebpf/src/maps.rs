//! The maps, defined once. Types come from ipip-common; names are the pin names.

use aya_ebpf::{
    macros::map,
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, DevMapHash, HashMap, LruHashMap, PerCpuArray,
    },
};
use ipip_common::{
    FragKey, FragPiece, FragPieceKey, FragState, PeerConfig, PeerCounters, PeerName, PeerPmtu,
    Reason, RouteKey, TunnelConfig, FRAG_MAX_PIECES, MAX_FRAG_DATAGRAMS, MAX_FWD_DEVS, MAX_PEERS,
    MAX_ROUTES, PATH_COUNT, REASON_COUNT,
};
use ipip_ebpf::error::Error;

/// Inner prefix → peer index: what to encapsulate, and which inner sources a peer may use.
#[map(name = "routes")]
pub static ROUTES: LpmTrie<RouteKey, u32> = LpmTrie::with_max_entries(MAX_ROUTES, 0);

#[map(name = "peers")]
pub static PEERS: Array<PeerConfig> = Array::with_max_entries(MAX_PEERS, 0);

/// Remote underlay address (network order) → peer index.
#[map(name = "peer_by_remote")]
pub static PEER_BY_REMOTE: HashMap<[u8; 4], u32> = HashMap::with_max_entries(MAX_PEERS, 0);

#[map(name = "config")]
pub static CONFIG: Array<TunnelConfig> = Array::with_max_entries(1, 0);

#[map(name = "peer_stats")]
pub static PEER_STATS: PerCpuArray<PeerCounters> = PerCpuArray::with_max_entries(MAX_PEERS, 0);

#[map(name = "reasons")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Only read by user space (stats from another process); the programs never touch it.
#[map(name = "peer_names")]
pub static PEER_NAMES: Array<PeerName> = Array::with_max_entries(MAX_PEERS, 0);

#[map(name = "paths")]
pub static PATHS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PATH_COUNT, 0);

/// Learned path MTU per peer: written by the decapsulators (ICMP), read by the encapsulators.
#[map(name = "peer_pmtu")]
pub static PEER_PMTU: Array<PeerPmtu> = Array::with_max_entries(MAX_PEERS, 0);

/// Outer datagrams being reassembled (see reassembly).
#[map(name = "frags")]
pub static FRAGS: LruHashMap<FragKey, FragState> =
    LruHashMap::with_max_entries(MAX_FRAG_DATAGRAMS, 0);

/// Their held pieces.
#[map(name = "frag_pieces")]
pub static FRAG_PIECES: LruHashMap<FragPieceKey, FragPiece> =
    LruHashMap::with_max_entries(MAX_FRAG_DATAGRAMS * FRAG_MAX_PIECES as u32, 0);

/// One piece's worth of per-CPU scratch space: too big for the BPF stack.
#[map(name = "frag_scratch")]
pub static FRAG_SCRATCH: PerCpuArray<FragPiece> = PerCpuArray::with_max_entries(1, 0);

/// LAN interface ifindex → its MAC: the fast path forwards only frames addressed to it.
#[map(name = "lan_macs")]
pub static LAN_MACS: HashMap<u32, [u8; 6]> = HashMap::with_max_entries(MAX_FWD_DEVS, 0);

/// Where the fast path may redirect: the underlay and the LAN interfaces, by ifindex.
#[map(name = "fwd_devs")]
pub static FWD_DEVS: DevMapHash = DevMapHash::with_max_entries(MAX_FWD_DEVS, 0);

/// The tunnel MTU toward `peer` now: the configured one, or a lower one learned from ICMP and
/// not yet expired.
#[inline(always)]
pub fn tunnel_mtu(idx: u32, peer: &PeerConfig) -> u16 {
    match PEER_PMTU.get(idx) {
        Some(p) if p.mtu != 0 => {
            // SAFETY: helper without arguments.
            p.effective(peer.mtu, unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() })
        }
        _ => peer.mtu,
    }
}

/// XDP_REDIRECT to `ifindex` through the fast path's device map. The FIB answer was checked
/// against the map already; should the entry have gone since (a detach racing), the
/// rewritten packet is dropped and counted, never aborted.
#[inline(always)]
pub fn redirect(ifindex: u32) -> Result<u32, Error> {
    FWD_DEVS
        .redirect(ifindex, 0)
        .map_err(|_| Error::Drop(Reason::DropHelperFailed))
}

/// The peer that `dst` is routed to, or `NotOurs` when no route covers it.
#[inline(always)]
pub fn route_to(dst: [u8; 4]) -> Result<(u32, &'static PeerConfig), Error> {
    let idx = *ROUTES.get(Key::new(32, dst)).ok_or(Error::NotOurs)?;
    match PEERS.get(idx) {
        Some(peer) if peer.in_use != 0 => Ok((idx, peer)),
        _ => Err(Error::Drop(Reason::DropNoPeer)),
    }
}
