//! XDP on the underlay: decapsulate IPIP from configured peers, drop and count all other IPIP
//! addressed to us, pass everything else untouched.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use ipip_common::{Reason, IPPROTO_IPIP, OUTER_HEADER_LEN};
use ipip_ebpf::{
    checksum,
    ecn::{self, Decap},
    error::{Error, Verdict},
    outer::{IP_MF, IP_OFFSET},
};
use network_types::ip::Ipv4Hdr;

use crate::{
    maps::{CONFIG, PEER_BY_REMOTE, ROUTES},
    packet::ref_mut_at,
    stats, trace,
};

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: [u8; 2] = [0x08, 0x00];

/// The Ethernet header as bytes: alignment 1, so any packet offset is a valid reference.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthRaw {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

#[xdp]
pub fn ipip_xdp_decap(ctx: XdpContext) -> u32 {
    match try_decap(&ctx) {
        Ok(action) => action,
        Err(e) => {
            let (verdict, reason) = e.verdict();
            if let Some(r) = reason {
                stats::count_reason(r);
            }
            match verdict {
                Verdict::Pass => xdp_action::XDP_PASS,
                Verdict::Drop => {
                    if let Some(r) = reason {
                        trace::drop(&ctx, "xdp", r, ETH_LEN);
                    }
                    xdp_action::XDP_DROP
                }
            }
        }
    }
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<u32, Error> {
    let eth: &mut EthRaw = ref_mut_at(ctx, 0).ok_or(Error::NotOurs)?;
    if eth.proto != ETH_P_IP {
        return Err(Error::NotOurs);
    }
    let outer: &mut Ipv4Hdr = ref_mut_at(ctx, ETH_LEN).ok_or(Error::NotOurs)?;
    if outer.proto != IPPROTO_IPIP {
        return Err(Error::NotOurs);
    }
    let config = CONFIG.get(0).ok_or(Error::NotOurs)?;
    if outer.dst_addr != config.local {
        return Err(Error::Pass(Reason::PassIpipNotLocal));
    }
    // SAFETY: the value is a u32 written only by the loader; a torn read is impossible.
    let peer = *unsafe { PEER_BY_REMOTE.get(outer.src_addr) }
        .ok_or(Error::Drop(Reason::DropUnknownPeer))?;
    if outer.vihl != 0x45 {
        return Err(Error::Drop(
            if outer.vihl >> 4 == 4 && outer.vihl & 0xf > 5 {
                Reason::DropOuterOptions
            } else {
                Reason::DropMalformedOuter
            },
        ));
    }
    if u16::from_be_bytes(outer.frags) & (IP_MF | IP_OFFSET) != 0 {
        return Err(Error::Drop(Reason::DropOuterFragment));
    }
    let outer_len = u16::from_be_bytes(outer.tot_len) as usize;
    if ctx.data() + ETH_LEN + outer_len > ctx.data_end() {
        return Err(Error::Drop(Reason::DropMalformedOuter));
    }
    let outer_tos = outer.tos;

    let inner: &mut Ipv4Hdr = ref_mut_at(ctx, ETH_LEN + OUTER_HEADER_LEN)
        .ok_or(Error::Drop(Reason::DropMalformedInner))?;
    let inner_len = u16::from_be_bytes(inner.tot_len) as usize;
    if inner.vihl >> 4 != 4
        || inner.vihl & 0xf < 5
        || inner_len < ((inner.vihl & 0xf) as usize) * 4
        || inner_len + OUTER_HEADER_LEN > outer_len
    {
        return Err(Error::Drop(Reason::DropMalformedInner));
    }
    // The same prefixes that route to the peer are the only sources it may use (AllowedIPs).
    let key = aya_ebpf::maps::lpm_trie::Key::new(32, inner.src_addr);
    match ROUTES.get(key) {
        Some(owner) if *owner == peer => {}
        _ => return Err(Error::Drop(Reason::DropSpoofedSource)),
    }
    match ecn::decap(outer_tos, inner.tos) {
        Decap::Keep => {}
        Decap::Drop => return Err(Error::Drop(Reason::DropEcnNotEct)),
        Decap::SetCe => {
            let old = u16::from_be_bytes([inner.vihl, inner.tos]);
            inner.tos |= ecn::CE;
            let new = u16::from_be_bytes([inner.vihl, inner.tos]);
            let check = checksum::update(u16::from_be_bytes(inner.check), old, new);
            inner.check = check.to_be_bytes();
        }
    }

    // Slide the Ethernet header forward over the outer IPv4 header, then drop the 20 bytes in
    // front of it. The EtherType (IPv4) stays valid for the inner packet.
    let mac = *eth;
    let moved: &mut EthRaw =
        ref_mut_at(ctx, OUTER_HEADER_LEN).ok_or(Error::Drop(Reason::DropMalformedOuter))?;
    *moved = mac;
    // SAFETY: plain helper call on our own context.
    let rc = unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, OUTER_HEADER_LEN as i32) };
    if rc != 0 {
        return Err(Error::Drop(Reason::DropHelperFailed));
    }
    // Every packet pointer is stale from here on; nothing below touches the packet.
    stats::count_rx(peer, inner_len as u64);
    Ok(xdp_action::XDP_PASS)
}
