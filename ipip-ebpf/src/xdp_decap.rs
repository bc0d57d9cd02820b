//! XDP on the underlay: decapsulate IPIP from configured peers, drop and count all other IPIP
//! addressed to us, pass everything else untouched.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use ipip_common::OUTER_HEADER_LEN;
use ipip_ebpf::error::Error;

use crate::{
    decap::classify,
    packet::{ref_mut_at, EthRaw},
    stats, verdict,
};

#[xdp]
pub fn ipip_xdp_decap(ctx: XdpContext) -> u32 {
    verdict::xdp(&ctx, "xdp", try_decap(&ctx))
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<u32, Error> {
    let accepted = classify(ctx)?;
    // Slide the Ethernet header forward over the outer IPv4 header, then drop the 20 bytes in
    // front of it. The EtherType (IPv4) stays valid for the inner packet.
    let mac: EthRaw = *ref_mut_at::<EthRaw>(ctx, 0).ok_or(Error::NotOurs)?;
    let moved: &mut EthRaw = ref_mut_at(ctx, OUTER_HEADER_LEN).ok_or(Error::NotOurs)?;
    *moved = mac;
    // SAFETY: plain helper call on our own context.
    let rc = unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, OUTER_HEADER_LEN as i32) };
    if rc != 0 {
        return Err(Error::Drop(ipip_common::Reason::DropHelperFailed));
    }
    // Every packet pointer is stale from here on; nothing below touches the packet.
    stats::count_rx(accepted.peer, accepted.inner_len as u64);
    Ok(xdp_action::XDP_PASS)
}
