//! The maps, defined once. Types come from ipip-common; names are the pin names.

use aya_ebpf::{
    macros::map,
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf,
    },
};
use ipip_common::{
    FragKey, FragPiece, FragPieceKey, FragState, PeerConfig, PeerCounters, PeerName, PeerPmtu,
    Reason, RouteKey, TunnelConfig, DROP_LOG_BYTES, FRAG_MAX_PIECES, MAX_FRAG_DATAGRAMS,
    MAX_FWD_DEVS, MAX_PEERS, MAX_ROUTES, PATH_COUNT, REASON_COUNT,
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

/// Drop records while `ipip-user log` runs (see trace).
#[map(name = "drop_log")]
pub static DROP_LOG: RingBuf = RingBuf::with_byte_size(DROP_LOG_BYTES, 0);

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

/// The peer whose remote underlay address is `remote`.
#[inline(always)]
pub fn peer_by_remote(remote: [u8; 4]) -> Option<u32> {
    // SAFETY: a u32 written only by the loader; a torn read is impossible.
    unsafe { PEER_BY_REMOTE.get(remote) }.copied()
}

/// The MAC of LAN interface `ifindex`, if it runs the fast path.
#[inline(always)]
pub fn lan_mac(ifindex: u32) -> Option<[u8; 6]> {
    // SAFETY: a 6-byte value written only by the loader.
    unsafe { LAN_MACS.get(ifindex) }.copied()
}

/// `peer`'s learned-PMTU slot. Concurrent writers on other CPUs write the same kind of value
/// and the last one wins, as with the kernel's PMTU exceptions.
#[inline(always)]
pub fn pmtu_slot(peer: u32) -> Option<&'static mut PeerPmtu> {
    // SAFETY: an array slot of our own map, alive as long as the program; see above for
    // concurrent writers (plain integers, no invariant spans fields).
    PEER_PMTU.get_ptr_mut(peer).map(|p| unsafe { &mut *p })
}

/// The datagram in reassembly under `key`. Two CPUs holding pieces of one datagram at the
/// same instant may lose one of them (it then times out): fragments of a datagram share their
/// addresses, so RSS keeps them on one CPU.
#[inline(always)]
pub fn frag_state(key: FragKey) -> Option<&'static mut FragState> {
    // SAFETY: our own map's value, valid until deleted, which only this program does after
    // its last use here; see above for concurrency.
    FRAGS.get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

/// This CPU's scratch piece.
#[inline(always)]
pub fn frag_scratch() -> Option<&'static mut FragPiece> {
    // SAFETY: per-CPU slot, used by nothing else while this program runs on this CPU.
    FRAG_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// A held piece.
#[inline(always)]
pub fn frag_piece(key: FragPieceKey) -> Option<&'static FragPiece> {
    // SAFETY: read-only use of our own map's value, before the caller deletes it.
    unsafe { FRAG_PIECES.get(key) }
}

/// The tunnel MTU toward `peer` now: the configured one, or a lower one learned from ICMP and
/// not yet expired.
#[inline(always)]
pub fn tunnel_mtu(idx: u32, peer: &PeerConfig) -> u16 {
    match PEER_PMTU.get(idx) {
        Some(p) if p.mtu != 0 => p.effective(peer.mtu, crate::packet::kernel::now_ns()),
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
