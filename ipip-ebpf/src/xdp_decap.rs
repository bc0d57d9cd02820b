//! XDP on the underlay: decapsulate IPIP from configured peers, drop and count all other IPIP
//! addressed to us, pass everything else untouched. With the fast path on, decapsulated
//! transit traffic is forwarded straight to its LAN interface.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use ipip_common::{Path, Reason, OUTER_HEADER_LEN, TUNNEL_FLAG_FAST_PATH};
use ipip_ebpf::{error::Error, forward::decrement_ttl, pmtu::QUOTE_LEN};
use network_types::ip::Ipv4Hdr;

use crate::{
    decap::{
        classify, Accepted, FragNeeded, Ours, FN_ICMP, FN_IP, FN_QUOTED_INNER, FN_QUOTED_OUTER,
    },
    fib::{self, Fib},
    maps::redirect,
    packet::{EthRaw, Frame, ETH_LEN, ETH_P_IP},
    stats, verdict,
};

#[xdp]
pub fn ipip_xdp_decap(ctx: XdpContext) -> u32 {
    let mut frame = Frame::new(ctx);
    let result = try_decap(&mut frame);
    verdict::xdp(&frame, ipip_common::Hook::Xdp, result)
}

#[inline(always)]
fn try_decap(frame: &mut Frame<XdpContext>) -> Result<u32, Error> {
    match classify(frame)? {
        Ours::Ipip(accepted) => decap(frame, accepted),
        Ours::FragNeeded(f) => {
            rewrite_frag_needed(frame, &f)?;
            stats::count_reason(Reason::PassPmtuLearned);
            Ok(xdp_action::XDP_PASS)
        }
        // Reassembly needs an skb: TC ingress (always attached) holds and counts it.
        Ours::Fragment(_) => Ok(xdp_action::XDP_PASS),
    }
}

#[inline(always)]
fn decap(frame: &mut Frame<XdpContext>, accepted: Accepted) -> Result<u32, Error> {
    // 20..=60, and the verifier is told so.
    let hlen = accepted.outer_hlen & 0x3c;
    if accepted.tunnel_flags & TUNNEL_FLAG_FAST_PATH != 0 {
        if let Some(action) = forward_fast(frame, &accepted, hlen)? {
            return Ok(action);
        }
    }
    // Slide the Ethernet header forward over the outer IPv4 header (options included), then
    // drop what is in front of it. The EtherType (IPv4) stays valid for the inner packet.
    let mac: EthRaw = *frame.get::<EthRaw>(0).ok_or(Error::NotOurs)?;
    *frame.get_mut::<EthRaw>(hlen).ok_or(Error::NotOurs)? = mac;
    frame.adjust_head(hlen as i32)?;
    stats::count_rx(accepted.peer, accepted.inner_len as u64);
    stats::count_path(Path::DecapKernel);
    Ok(xdp_action::XDP_PASS)
}

/// Turns an ICMP "fragmentation needed" about our outer packet into one about the inner
/// packet (see [`FragNeeded`]): everything in front of the quoted outer header moves 20 bytes
/// forward over it, with the new ICMP header and IP length, and the head follows.
#[inline(always)]
fn rewrite_frag_needed(frame: &mut Frame<XdpContext>, f: &FragNeeded) -> Result<(), Error> {
    let failed = Error::Drop(Reason::DropHelperFailed);
    if let Some(q) = &f.quote {
        *frame
            .get_mut::<[u8; QUOTE_LEN]>(FN_QUOTED_INNER)
            .ok_or(failed)? = *q;
    }
    let mut head: [u8; FN_QUOTED_OUTER] = *frame.get(0).ok_or(failed)?;
    head[FN_IP + 2..FN_IP + 4].copy_from_slice(&f.ip_len);
    head[FN_IP + 10..FN_IP + 12].copy_from_slice(&f.ip_check);
    head[FN_ICMP..FN_QUOTED_OUTER].copy_from_slice(&f.icmp);
    *frame
        .get_mut::<[u8; FN_QUOTED_OUTER]>(OUTER_HEADER_LEN)
        .ok_or(failed)? = head;
    frame.adjust_head(OUTER_HEADER_LEN as i32)
}

/// The decapsulating half of the fast path (called only when it is on): an accepted packet in
/// transit to a LAN is forwarded right here (TTL down, MACs from the FIB, XDP_REDIRECT).
/// `None`: not possible, the caller hands the inner packet to the kernel (counted here when
/// it could have been forwarded but wasn't).
#[inline(always)]
fn forward_fast(
    frame: &mut Frame<XdpContext>,
    accepted: &Accepted,
    hlen: usize,
) -> Result<Option<u32>, Error> {
    let (peer, inner_len) = (accepted.peer, accepted.inner_len);
    let (src, dst, tos, vihl, ttl, proto, check) = {
        let h: &Ipv4Hdr = frame.get(ETH_LEN + hlen).ok_or(Error::NotOurs)?;
        (
            h.src_addr, h.dst_addr, h.tos, h.vihl, h.ttl, h.proto, h.check,
        )
    };
    // Traffic for the tunnel address is delivered here: no lookup can make it transit.
    if accepted.tunnel_address != [0; 4] && dst == accepted.tunnel_address {
        return Ok(None);
    }
    let ingress = frame.ingress_ifindex();
    let fib = fib::lookup(
        frame,
        src,
        dst,
        tos,
        inner_len as u16,
        ingress,
        fib::Mode::Input,
    );
    let (smac, dmac, ifindex) = match fib {
        // Back out of the underlay (transit between two peers): that needs encapsulating
        // again, which only the kernel path (routes + TC egress) does. A redirect would put
        // the bare inner packet on the underlay.
        Fib::Forward { ifindex, .. } if ifindex == ingress => {
            stats::count_reason(Reason::PassEgressNotFast);
            return Ok(None);
        }
        Fib::Local => return Ok(None),
        Fib::Kernel(r) => {
            stats::count_reason(r);
            return Ok(None);
        }
        Fib::Forward { .. } if vihl != 0x45 => {
            stats::count_reason(Reason::PassIpOptions);
            return Ok(None);
        }
        Fib::Forward { .. } if ttl <= 1 => {
            stats::count_reason(Reason::PassTtlExpired);
            return Ok(None);
        }
        Fib::Forward {
            ifindex,
            smac,
            dmac,
        } => (smac, dmac, ifindex),
    };
    let (ttl, check) = decrement_ttl(ttl, proto, u16::from_be_bytes(check));
    let hdr: &mut Ipv4Hdr = frame.get_mut(ETH_LEN + hlen).ok_or(Error::NotOurs)?;
    hdr.ttl = ttl;
    hdr.check = check.to_be_bytes();
    // The new Ethernet header goes right in front of the inner packet.
    *frame.get_mut::<EthRaw>(hlen).ok_or(Error::NotOurs)? = EthRaw {
        dst: dmac,
        src: smac,
        proto: ETH_P_IP,
    };
    frame.adjust_head(hlen as i32)?;
    let action = redirect(ifindex)?;
    stats::count_rx(peer, inner_len as u64);
    stats::count_path(Path::DecapFast);
    Ok(Some(action))
}
