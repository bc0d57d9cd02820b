//! XDP on a LAN interface of a gateway: the encapsulating half of the fast path. A forwarded
//! IPv4 packet whose destination lies in a peer's routes is turned into IPIP right here and
//! redirected out of the underlay with the MACs the FIB gives, never touching the stack.
//! Whatever can't be finished here goes to the kernel unchanged and counted; the kernel path
//! (routes + TC egress) then does the same job.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, macros::xdp, programs::XdpContext};
use ipip_common::{Path, Reason, OUTER_HEADER_LEN};
use ipip_ebpf::{
    error::Error,
    forward::decrement_ttl,
    outer::{self, Inner},
};
use network_types::ip::Ipv4Hdr;

use crate::{
    fib::{self, Fib},
    maps::{redirect, route_to, tunnel_mtu, CONFIG, LAN_MACS},
    packet::{ref_mut_at, EthRaw, ETH_LEN, ETH_P_IP},
    stats, verdict,
};

#[xdp]
pub fn ipip_xdp_lan(ctx: XdpContext) -> u32 {
    verdict::xdp(&ctx, "xdp-lan", try_encap(&ctx))
}

#[inline(always)]
fn try_encap(ctx: &XdpContext) -> Result<u32, Error> {
    let eth: &EthRaw = ref_mut_at(ctx, 0).ok_or(Error::NotOurs)?;
    if eth.proto != ETH_P_IP || eth.dst[0] & 1 != 0 {
        return Err(Error::NotOurs);
    }
    // Only frames addressed to this interface are ours to route: on a bridge port, in
    // promiscuous mode or with flooded unicast others arrive too (PACKET_OTHERHOST to Linux,
    // which drops them; the kernel still sees them here, untouched).
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: a 6-byte value written only by the loader.
    match unsafe { LAN_MACS.get(ingress) } {
        Some(mac) if *mac == eth.dst => {}
        _ => return Err(Error::NotOurs),
    }
    let ip: &mut Ipv4Hdr = ref_mut_at(ctx, ETH_LEN).ok_or(Error::NotOurs)?;
    let (peer_idx, peer) = route_to(ip.dst_addr)?;
    if ip.vihl != 0x45 {
        return Err(Error::Pass(Reason::PassIpOptions));
    }
    if ip.ttl <= 1 {
        return Err(Error::Pass(Reason::PassTtlExpired));
    }
    let inner_len = u16::from_be_bytes(ip.tot_len);
    if ETH_LEN + inner_len as usize > ctx.data_end() - ctx.data() || (inner_len as usize) < 20 {
        // Truncated: the kernel's IP layer judges it.
        return Err(Error::NotOurs);
    }
    // Larger than the path toward the peer is known to take: the kernel path answers (or
    // fragments) by the route's PMTU, which the ICMP that taught us also lowered.
    if inner_len > tunnel_mtu(peer_idx, peer) {
        return Err(Error::Pass(Reason::PassNeedsFrag));
    }
    let underlay = CONFIG.get(0).ok_or(Error::NotOurs)?.ifindex;
    // Two lookups, as the kernel path makes two decisions. First the inner packet is routed
    // as it arrived (forwarding enabled here, policy rules, and our route to the underlay:
    // anything else means the kernel would not tunnel it at all).
    match fib::lookup(
        ctx,
        ip.src_addr,
        ip.dst_addr,
        ip.tos,
        0,
        ingress,
        fib::Mode::InputRoute,
    ) {
        Fib::Forward { ifindex, .. } if ifindex == underlay => {}
        Fib::Forward { .. } => return Err(Error::Pass(Reason::PassEgressNotFast)),
        Fib::Local => return Err(Error::Pass(Reason::PassFibNoRoute)),
        Fib::Kernel(r) => return Err(Error::Pass(r)),
    }
    // Then the outer packet, as TC egress's output is routed: from this host, out of the
    // underlay.
    let (smac, dmac, ifindex) = match fib::lookup(
        ctx,
        peer.local,
        peer.remote,
        0,
        inner_len + OUTER_HEADER_LEN as u16,
        underlay,
        fib::Mode::Output,
    ) {
        Fib::Forward {
            ifindex,
            smac,
            dmac,
        } => (smac, dmac, ifindex),
        Fib::Local => return Err(Error::Pass(Reason::PassFibNoRoute)),
        Fib::Kernel(r) => return Err(Error::Pass(r)),
    };

    let (ttl, check) = decrement_ttl(ip.ttl, ip.proto, u16::from_be_bytes(ip.check));
    ip.ttl = ttl;
    ip.check = check.to_be_bytes();
    let inner = Inner {
        tos: ip.tos,
        ttl,
        frag_off: u16::from_be_bytes(ip.frags),
        tot_len: inner_len,
    };
    // RFC 6864: any ID is fine for atomic datagrams; a random one also serves non-DF ones.
    // SAFETY: helper without arguments.
    let id = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() } as u16;
    let header = outer::build(peer, inner, id);

    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER_HEADER_LEN as i32)) } != 0 {
        return Err(Error::Drop(Reason::DropHelperFailed));
    }
    // Every earlier packet pointer is stale: re-derive.
    let new_eth: &mut EthRaw = ref_mut_at(ctx, 0).ok_or(Error::Drop(Reason::DropHelperFailed))?;
    *new_eth = EthRaw {
        dst: dmac,
        src: smac,
        proto: ETH_P_IP,
    };
    let outer_hdr: &mut [u8; OUTER_HEADER_LEN] =
        ref_mut_at(ctx, ETH_LEN).ok_or(Error::Drop(Reason::DropHelperFailed))?;
    *outer_hdr = header;
    let action = redirect(ifindex)?;
    stats::count_tx(peer_idx, 1, inner_len as u64);
    stats::count_path(Path::EncapFast);
    Ok(action)
}
