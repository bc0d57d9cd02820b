//! TC ingress on the underlay: the same decapsulation as XDP, for hosts that terminate bulk
//! TCP. It sees GRO-merged packets, so the stack above keeps large packets (an XDP program on
//! a veth turns GSO off on its peer).
//!
//! It is attached with XDP decapsulation too, for what XDP can't do: reassembling outer
//! fragments (which XDP passes up). In that mode everything else here is XDP's business.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::{BPF_ADJ_ROOM_MAC, BPF_ADJ_ROOM_NET},
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_RECOMPUTE_CSUM,
    },
    macros::classifier,
    programs::TcContext,
};
use ipip_common::{Path, Reason, IPPROTO_IPIP, OUTER_HEADER_LEN, TUNNEL_FLAG_DECAP_TC};
use ipip_ebpf::{
    error::Error,
    outer::{IP_MF, IP_OFFSET},
    pmtu::IPPROTO_ICMP,
};

use crate::{
    decap::{
        classify, Accepted, FragNeeded, Ours, ETH_P_8021AD, ETH_P_8021Q, FN_IP, FN_QUOTED_INNER,
        MAX_IP_HLEN,
    },
    maps::CONFIG,
    packet::{Frame, ETH_LEN, ETH_P_IP},
    reassembly, stats, verdict,
};

#[classifier]
pub fn ipip_tc_decap(ctx: TcContext) -> i32 {
    let mut frame = Frame::new(ctx);
    let result = try_decap(&mut frame);
    verdict::tc(&frame, ipip_common::Hook::TcIngress, result)
}

#[inline(always)]
fn try_decap(frame: &mut Frame<TcContext>) -> Result<(), Error> {
    // Classify (from the linear area, or through the skb where it ends) before touching
    // anything: traffic that isn't ours is never pulled, so never dropped by a failed pull.
    let ether_type: [u8; 2] = frame.read(12).ok_or(Error::NotOurs)?;
    if ether_type != ETH_P_IP {
        // A tag still in the frame (QinQ, or a device that doesn't strip it): the shared
        // check counts tagged IPIP and passes it, as on XDP.
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            return match classify(frame) {
                Err(e) => Err(e),
                Ok(_) => Err(Error::NotOurs),
            };
        }
        return Err(Error::NotOurs);
    }
    let proto: u8 = frame.read(ETH_LEN + 9).ok_or(Error::NotOurs)?;
    let decap_here = CONFIG
        .get(0)
        .is_some_and(|c| c.flags & TUNNEL_FLAG_DECAP_TC != 0);
    if !decap_here {
        // XDP decapsulates; only outer fragments, which it passes up, are left for us.
        let frags: [u8; 2] = frame.read(ETH_LEN + 6).ok_or(Error::NotOurs)?;
        if proto != IPPROTO_IPIP || u16::from_be_bytes(frags) & (IP_MF | IP_OFFSET) == 0 {
            return Err(Error::NotOurs);
        }
    }
    let wanted = match proto {
        IPPROTO_IPIP => ETH_LEN + MAX_IP_HLEN + OUTER_HEADER_LEN,
        IPPROTO_ICMP => FN_QUOTED_INNER + ipip_ebpf::pmtu::QUOTE_LEN,
        _ => return Err(Error::NotOurs),
    };
    if decap_here && proto == IPPROTO_IPIP && frame.vlan_present() {
        // The tag was taken off into the skb's metadata before TC: IPIP of a VLAN is the
        // VLAN device's (as on XDP, where the tag is still in the frame).
        return Err(Error::Pass(Reason::PassVlan));
    }
    // GRO-merged skbs may keep headers outside the linear area; bring them in.
    let want = (wanted as u32).min(frame.len() as u32);
    if (frame.linear_len() as u32) < want {
        frame.pull(want)?;
    }
    match classify(frame)? {
        Ours::Fragment(f) => {
            if !reassembly::add(frame, &f)? {
                return Err(Error::Held(Reason::HeldOuterFragment));
            }
            // The whole datagram is in the skb now: classify it again, as one packet.
            let want = (wanted as u32).min(frame.len() as u32);
            frame.pull(want)?;
            match classify(frame)? {
                Ours::Ipip(accepted) => decap(frame, &accepted),
                _ => Err(Error::Drop(Reason::DropMalformedOuter)),
            }
        }
        _ if !decap_here => Err(Error::NotOurs),
        Ours::Ipip(accepted) => decap(frame, &accepted),
        Ours::FragNeeded(f) => {
            rewrite_frag_needed(frame, &f)?;
            stats::count_reason(Reason::PassPmtuLearned);
            Ok(())
        }
    }
}

#[inline(always)]
fn decap(frame: &mut Frame<TcContext>, accepted: &Accepted) -> Result<(), Error> {
    frame.adjust_room(
        -((accepted.outer_hlen & 0x3c) as i32),
        BPF_ADJ_ROOM_MAC,
        (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4) as u64,
    )?;
    stats::count_rx(accepted.peer, accepted.inner_len as u64);
    stats::count_path(Path::DecapKernel);
    Ok(())
}

/// The TC form of the rewrite (see [`FragNeeded`]): the new ICMP header goes right behind the
/// quoted outer header, then the 20 bytes in front of it (old ICMP header and most of the
/// quote) are removed behind the IP header. Writes go through the store helper with
/// `BPF_F_RECOMPUTE_CSUM`, so a checksum-complete skb stays consistent.
#[inline(always)]
fn rewrite_frag_needed(frame: &mut Frame<TcContext>, f: &FragNeeded) -> Result<(), Error> {
    let flags = BPF_F_RECOMPUTE_CSUM as u64;
    if let Some(q) = &f.quote {
        frame.store(FN_QUOTED_INNER, q, flags)?;
    }
    frame.store(FN_QUOTED_INNER - 8, &f.icmp, flags)?;
    // BPF_ADJ_ROOM_NET removes right behind the (20-byte) IPv4 header: [FN_ICMP, FN_QUOTED_INNER - 8).
    frame.adjust_room(-(OUTER_HEADER_LEN as i32), BPF_ADJ_ROOM_NET, 0)?;
    frame.store(FN_IP + 2, &f.ip_len, flags)?;
    frame.store(FN_IP + 10, &f.ip_check, flags)
}
