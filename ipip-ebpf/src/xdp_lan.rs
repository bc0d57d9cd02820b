//! XDP on a LAN interface of a gateway: the encapsulating half of the fast path. A forwarded
//! IPv4 packet whose destination lies in a peer's routes is turned into IPIP right here and
//! redirected out of the underlay with the MACs the FIB gives, never touching the stack.
//! Whatever can't be finished here goes to the kernel unchanged and counted; the kernel path
//! (routes + TC egress) then does the same job.

use aya_ebpf::{macros::xdp, programs::XdpContext};
use ipip_common::{Path, Reason, OUTER_HEADER_LEN};
use ipip_ebpf::{
    error::Error,
    forward::decrement_ttl,
    outer::{self, Inner},
};
use network_types::ip::Ipv4Hdr;

use crate::{
    fib::{self, Fib},
    maps::{lan_mac, redirect, route_to, tunnel_mtu, CONFIG},
    packet::{kernel, EthRaw, Frame, ETH_LEN, ETH_P_IP},
    stats, verdict,
};

#[xdp]
pub fn ipip_xdp_lan(ctx: XdpContext) -> u32 {
    let mut frame = Frame::new(ctx);
    let result = try_encap(&mut frame);
    verdict::xdp(&frame, ipip_common::Hook::XdpLan, result)
}

#[inline(always)]
fn try_encap(frame: &mut Frame<XdpContext>) -> Result<u32, Error> {
    let eth: EthRaw = *frame.get::<EthRaw>(0).ok_or(Error::NotOurs)?;
    if eth.proto != ETH_P_IP || eth.dst[0] & 1 != 0 {
        return Err(Error::NotOurs);
    }
    // Only frames addressed to this interface are ours to route: on a bridge port, in
    // promiscuous mode or with flooded unicast others arrive too (PACKET_OTHERHOST to Linux,
    // which drops them; the kernel still sees them here, untouched).
    let ingress = frame.ingress_ifindex();
    if lan_mac(ingress) != Some(eth.dst) {
        return Err(Error::NotOurs);
    }
    let ip: Ipv4Hdr = *frame.get::<Ipv4Hdr>(ETH_LEN).ok_or(Error::NotOurs)?;
    let (peer_idx, peer) = route_to(ip.dst_addr)?;
    if ip.vihl != 0x45 {
        return Err(Error::Pass(Reason::PassIpOptions));
    }
    if ip.ttl <= 1 {
        return Err(Error::Pass(Reason::PassTtlExpired));
    }
    let inner_len = u16::from_be_bytes(ip.tot_len);
    if ETH_LEN + inner_len as usize > frame.linear_len() || (inner_len as usize) < 20 {
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
        frame,
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
        frame,
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
    let hdr: &mut Ipv4Hdr = frame.get_mut(ETH_LEN).ok_or(Error::NotOurs)?;
    hdr.ttl = ttl;
    hdr.check = check.to_be_bytes();
    let inner = Inner {
        tos: ip.tos,
        ttl,
        frag_off: u16::from_be_bytes(ip.frags),
        tot_len: inner_len,
    };
    let header = outer::build(peer, inner, kernel::random_id());

    frame.adjust_head(-(OUTER_HEADER_LEN as i32))?;
    let failed = Error::Drop(Reason::DropHelperFailed);
    *frame.get_mut::<EthRaw>(0).ok_or(failed)? = EthRaw {
        dst: dmac,
        src: smac,
        proto: ETH_P_IP,
    };
    *frame
        .get_mut::<[u8; OUTER_HEADER_LEN]>(ETH_LEN)
        .ok_or(failed)? = header;
    let action = redirect(ifindex)?;
    stats::count_tx(peer_idx, 1, inner_len as u64);
    stats::count_path(Path::EncapFast);
    Ok(action)
}
