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
    packet::{ETH_LEN, ETH_P_IP},
    reassembly, stats, verdict,
};

#[classifier]
pub fn ipip_tc_decap(ctx: TcContext) -> i32 {
    verdict::tc(&ctx, "tc-ingress", try_decap(&ctx))
}

#[inline(always)]
fn try_decap(ctx: &TcContext) -> Result<(), Error> {
    // Classify from the skb (which reads outside the linear area too) before touching
    // anything: traffic that isn't ours is never pulled, so never dropped by a failed pull.
    let ether_type: [u8; 2] = ctx.load(12).map_err(|_| Error::NotOurs)?;
    if ether_type != ETH_P_IP {
        // A tag still in the frame (QinQ, or a device that doesn't strip it): the shared
        // check counts tagged IPIP and passes it, as on XDP.
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            return match classify(ctx) {
                Err(e) => Err(e),
                Ok(_) => Err(Error::NotOurs),
            };
        }
        return Err(Error::NotOurs);
    }
    let proto: u8 = ctx.load(ETH_LEN + 9).map_err(|_| Error::NotOurs)?;
    let decap_here = CONFIG
        .get(0)
        .is_some_and(|c| c.flags & TUNNEL_FLAG_DECAP_TC != 0);
    if !decap_here {
        // XDP decapsulates; only outer fragments, which it passes up, are left for us.
        let frags: [u8; 2] = ctx.load(ETH_LEN + 6).map_err(|_| Error::NotOurs)?;
        if proto != IPPROTO_IPIP || u16::from_be_bytes(frags) & (IP_MF | IP_OFFSET) == 0 {
            return Err(Error::NotOurs);
        }
    }
    let wanted = match proto {
        IPPROTO_IPIP => ETH_LEN + MAX_IP_HLEN + OUTER_HEADER_LEN,
        IPPROTO_ICMP => FN_QUOTED_INNER + ipip_ebpf::pmtu::QUOTE_LEN,
        _ => return Err(Error::NotOurs),
    };
    // SAFETY: reading a plain integer field of our own __sk_buff.
    if decap_here && proto == IPPROTO_IPIP && unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        // The tag was taken off into the skb's metadata before TC: IPIP of a VLAN is the
        // VLAN device's (as on XDP, where the tag is still in the frame).
        return Err(Error::Pass(Reason::PassVlan));
    }
    // GRO-merged skbs may keep headers outside the linear area; bring them in.
    let want = (wanted as u32).min(ctx.len());
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        ctx.pull_data(want)
            .map_err(|_| Error::Drop(Reason::DropHelperFailed))?;
    }
    match classify(ctx)? {
        Ours::Fragment(f) => {
            if !reassembly::add(ctx, &f)? {
                return Err(Error::Held(Reason::HeldOuterFragment));
            }
            // The whole datagram is in the skb now: classify it again, as one packet.
            let want = (wanted as u32).min(ctx.len());
            ctx.pull_data(want)
                .map_err(|_| Error::Drop(Reason::DropHelperFailed))?;
            match classify(ctx)? {
                Ours::Ipip(accepted) => decap(ctx, &accepted),
                _ => Err(Error::Drop(Reason::DropMalformedOuter)),
            }
        }
        _ if !decap_here => Err(Error::NotOurs),
        Ours::Ipip(accepted) => decap(ctx, &accepted),
        Ours::FragNeeded(f) => {
            rewrite_frag_needed(ctx, &f)?;
            stats::count_reason(Reason::PassPmtuLearned);
            Ok(())
        }
    }
}

#[inline(always)]
fn decap(ctx: &TcContext, accepted: &Accepted) -> Result<(), Error> {
    ctx.adjust_room(
        -((accepted.outer_hlen & 0x3c) as i32),
        BPF_ADJ_ROOM_MAC,
        (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4) as u64,
    )
    .map_err(|_| Error::Drop(Reason::DropHelperFailed))?;
    stats::count_rx(accepted.peer, accepted.inner_len as u64);
    stats::count_path(Path::DecapKernel);
    Ok(())
}

/// The TC form of the rewrite (see [`FragNeeded`]): the new ICMP header goes right behind the
/// quoted outer header, then the 20 bytes in front of it (old ICMP header and most of the
/// quote) are removed behind the IP header. Writes go through the store helper with
/// `BPF_F_RECOMPUTE_CSUM`, so a checksum-complete skb stays consistent.
#[inline(always)]
fn rewrite_frag_needed(ctx: &TcContext, f: &FragNeeded) -> Result<(), Error> {
    let failed = |_| Error::Drop(Reason::DropHelperFailed);
    let flags = BPF_F_RECOMPUTE_CSUM as u64;
    if let Some(q) = &f.quote {
        ctx.store(FN_QUOTED_INNER, q, flags).map_err(failed)?;
    }
    ctx.store(FN_QUOTED_INNER - 8, &f.icmp, flags)
        .map_err(failed)?;
    // BPF_ADJ_ROOM_NET removes right behind the (20-byte) IPv4 header: [FN_ICMP, FN_QUOTED_INNER - 8).
    ctx.adjust_room(-(OUTER_HEADER_LEN as i32), BPF_ADJ_ROOM_NET, 0)
        .map_err(failed)?;
    ctx.store(FN_IP + 2, &f.ip_len, flags).map_err(failed)?;
    ctx.store(FN_IP + 10, &f.ip_check, flags).map_err(failed)?;
    Ok(())
}
