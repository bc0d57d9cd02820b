//! Outer fragments put back together before decapsulation, as Linux reassembles (`ip_defrag`
//! in ip_local_deliver) before `ipip_rcv`. Runs at TC ingress, which can rebuild a packet of
//! any length in an skb; with XDP decapsulation, XDP passes fragments up to it.
//!
//! Bounds (documented in the README): at most [`MAX_FRAG_DATAGRAMS`] datagrams in progress
//! (LRU: the oldest is evicted), [`FRAG_MAX_PIECES`] pieces of at most [`FRAG_PIECE_MAX`]
//! bytes each, the rebuilt packet no longer than the underlay's MTU, and a datagram not
//! complete within [`FRAG_TIMEOUT_NS`] is discarded when its next piece arrives. Overlapping
//! or repeated pieces discard the datagram. Only IPIP to our local address from a configured
//! peer is held; the inner source is checked once the datagram is whole.

use aya_ebpf::{bindings::BPF_F_RECOMPUTE_CSUM, programs::TcContext};
use ipip_common::{
    FragKey, FragPieceKey, FragState, Reason, FRAG_MAX_PIECES, FRAG_PIECE_MAX, FRAG_SLOT,
    FRAG_TIMEOUT_NS, IPPROTO_IPIP, OUTER_HEADER_LEN,
};
use ipip_ebpf::{checksum, error::Error};

use crate::{
    decap::Fragment,
    maps::{frag_piece, frag_scratch, frag_state, FRAGS, FRAG_PIECES},
    packet::{kernel, Frame, ETH_LEN},
    stats,
};

/// Holds `f`. `Ok(true)`: it completed its datagram, which is now rebuilt in this skb as one
/// unfragmented outer packet (classify it again); `Ok(false)`: held, the skb is consumed.
///
/// A function of its own in the object (a BPF-to-BPF call): its locals stay off the
/// program's stack, which the drop log's call also needs room on.
#[inline(never)]
pub fn add(frame: &mut Frame<TcContext>, f: &Fragment) -> Result<bool, Error> {
    if f.len as usize > FRAG_PIECE_MAX {
        forget(&f.key);
        return Err(Error::Drop(Reason::DropFragTooBig));
    }
    let now = kernel::now_ns();
    let s = match frag_state(f.key) {
        Some(s) if now.wrapping_sub(s.first_ns) <= FRAG_TIMEOUT_NS => s,
        found => {
            if found.is_some() {
                stats::count_reason(Reason::DropFragTimeout);
                forget(&f.key);
            }
            let fresh = FragState {
                first_ns: now,
                ..FragState::default()
            };
            FRAGS
                .insert(f.key, fresh, 0)
                .map_err(|_| Error::Drop(Reason::DropFragTooMany))?;
            frag_state(f.key).ok_or(Error::Drop(Reason::DropFragTooMany))?
        }
    };
    let pieces = s.pieces as usize;
    if pieces >= FRAG_MAX_PIECES || f.off + f.len > u16::MAX as u32 - OUTER_HEADER_LEN as u32 {
        forget(&f.key);
        return Err(Error::Drop(Reason::DropFragTooMany));
    }
    let end = f.off + f.len;
    // Constant bounds (the verifier follows them); `pieces` picks the slots in use.
    for i in 0..FRAG_MAX_PIECES {
        let (o, l) = (s.off[i] as u32, s.len[i] as u32);
        if i < pieces && f.off < o + l && o < end {
            forget(&f.key);
            return Err(Error::Drop(Reason::DropFragOverlap));
        }
    }
    // The last piece fixes the length; nothing may lie beyond it, and it comes once.
    if s.total != 0 && (!f.more || end > s.total) {
        forget(&f.key);
        return Err(Error::Drop(Reason::DropFragOverlap));
    }

    // The payload goes through a per-CPU scratch slot: it is too big for the BPF stack.
    let scratch = frag_scratch().ok_or(Error::Drop(Reason::DropHelperFailed))?;
    let len = (f.len as usize).min(FRAG_PIECE_MAX);
    if len > 0 {
        // aya's load_bytes re-derives a length the verifier can't prove non-zero.
        frame.load_into(ETH_LEN + (f.hlen & 0x3c), &mut scratch.data, slot_len(len))?;
    }
    scratch.len = len as u32;
    let idx = pieces & (FRAG_MAX_PIECES - 1);
    // By reference: a copy of the 2 KiB piece would not fit the BPF stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    FRAG_PIECES
        .insert(
            FragPieceKey {
                datagram: f.key,
                index: idx as u32,
            },
            &*scratch,
            0,
        )
        .map_err(|_| Error::Drop(Reason::DropFragTooMany))?;
    s.off[idx] = f.off as u16;
    s.len[idx] = f.len as u16;
    s.pieces += 1;
    s.have += f.len;
    if f.off == 0 {
        s.has_first = 1;
        s.tos = f.tos;
        s.ttl = f.ttl;
    }
    if !f.more {
        s.total = end;
    }
    if s.total == 0 || s.have != s.total || s.has_first == 0 {
        return Ok(false);
    }
    rebuild(frame, &f.key, s)?;
    stats::count_reason(Reason::PassFragReassembled);
    Ok(true)
}

/// Writes the whole datagram into this skb: a fresh 20-byte outer header (options are
/// dropped with the fragments' headers; decapsulation strips the header anyway), then every
/// piece at its offset. The held state goes either way.
#[inline(always)]
fn rebuild(frame: &mut Frame<TcContext>, key: &FragKey, s: &FragState) -> Result<(), Error> {
    let result = write_datagram(frame, key, s);
    forget_pieces(key, s.pieces as usize);
    let _ = FRAGS.remove(key);
    result
}

#[inline(always)]
fn write_datagram(frame: &mut Frame<TcContext>, key: &FragKey, s: &FragState) -> Result<(), Error> {
    let tot_len = (OUTER_HEADER_LEN as u32 + s.total) as u16;
    // Fails when longer than this interface can carry.
    frame
        .change_tail((ETH_LEN as u32) + tot_len as u32)
        .map_err(|_| Error::Drop(Reason::DropFragTooMany))?;
    let [l0, l1] = tot_len.to_be_bytes();
    let mut header = [
        0x45,
        s.tos,
        l0,
        l1,
        key.id[0],
        key.id[1],
        0,
        0,
        s.ttl,
        IPPROTO_IPIP,
        0,
        0,
        key.src[0],
        key.src[1],
        key.src[2],
        key.src[3],
        key.dst[0],
        key.dst[1],
        key.dst[2],
        key.dst[3],
    ];
    let [c0, c1] = checksum::finish(checksum::add_words(0, &header)).to_be_bytes();
    header[10] = c0;
    header[11] = c1;
    frame.store(ETH_LEN, &header, BPF_F_RECOMPUTE_CSUM as u64)?;
    for i in 0..FRAG_MAX_PIECES {
        if i >= s.pieces as usize {
            break;
        }
        let off = s.off[i];
        let pk = FragPieceKey {
            datagram: *key,
            index: i as u32,
        };
        let piece = frag_piece(pk).ok_or(Error::Drop(Reason::DropFragTimeout))?;
        let len = (piece.len as usize).min(FRAG_PIECE_MAX);
        if len > 0 {
            let at = ETH_LEN + OUTER_HEADER_LEN + off as usize;
            frame.store_from(at, &piece.data, slot_len(len), BPF_F_RECOMPUTE_CSUM as u64)?;
        }
    }
    Ok(())
}

/// `len` (1..=FRAG_SLOT) in a form the verifier can bound to 1..=FRAG_SLOT, whatever the
/// compiler did to the caller's `len > 0` check.
#[inline(always)]
fn slot_len(len: usize) -> u32 {
    (((len as u32).wrapping_sub(1)) & (FRAG_SLOT as u32 - 1)) + 1
}

/// Discards a datagram in progress and its pieces.
#[inline(always)]
fn forget(key: &FragKey) {
    if let Some(s) = frag_state(*key) {
        forget_pieces(key, s.pieces as usize);
    }
    let _ = FRAGS.remove(key);
}

#[inline(always)]
fn forget_pieces(key: &FragKey, pieces: usize) {
    for i in 0..pieces.min(FRAG_MAX_PIECES) {
        let _ = FRAG_PIECES.remove(FragPieceKey {
            datagram: *key,
            index: i as u32,
        });
    }
}
