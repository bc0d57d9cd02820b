//! Counter updates. Per-CPU maps: plain adds, no atomics.

use ipip_common::{Path, Reason};

use crate::maps::{PATHS, PEER_STATS, REASONS};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_rx(peer: u32, bytes: u64) {
    if let Some(c) = PEER_STATS.get_ptr_mut(peer) {
        // SAFETY: as above.
        unsafe {
            (*c).rx_packets += 1;
            (*c).rx_bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_tx(peer: u32, packets: u64, bytes: u64) {
    if let Some(c) = PEER_STATS.get_ptr_mut(peer) {
        // SAFETY: as above.
        unsafe {
            (*c).tx_packets += packets;
            (*c).tx_bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_path(path: Path) {
    if let Some(c) = PATHS.get_ptr_mut(path as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}
