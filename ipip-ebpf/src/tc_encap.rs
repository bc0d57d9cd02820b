//! TC egress on the underlay: encapsulate IPv4 whose destination lies in a routed prefix.
//!
//! The Ethernet header is kept as the kernel built it: the routes attach installs send routed
//! prefixes via the underlay next hop toward the peer, so its MAC is already the right one.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    macros::classifier,
    programs::TcContext,
};
use ipip_common::{Path, Reason, OUTER_HEADER_LEN};
use ipip_ebpf::{
    error::Error,
    icmp::{IPPROTO_TCP, IPPROTO_UDP},
    outer::{self, Inner},
};
use network_types::ip::Ipv4Hdr;

use crate::{
    maps::route_to,
    packet::{kernel, Frame, ETH_LEN, ETH_P_IP},
    stats, too_big, verdict,
};

/// IPv4 + TCP headers without options: no GSO segment is shorter than its payload plus these.
const MIN_SEGMENT_HEADERS: u32 = 40;

#[classifier]
pub fn ipip_tc_encap(ctx: TcContext) -> i32 {
    let mut frame = Frame::new(ctx);
    let result = try_encap(&mut frame);
    verdict::tc(&frame, ipip_common::Hook::TcEgress, result)
}

#[inline(always)]
fn try_encap(frame: &mut Frame<TcContext>) -> Result<(), Error> {
    // Classify (from the linear area, or through the skb) before touching anything: only a routed packet is ever pulled,
    // and a failed pull of someone else's packet would drop it.
    let ether_type: [u8; 2] = frame.read(12).ok_or(Error::NotOurs)?;
    if ether_type != ETH_P_IP {
        return Err(Error::NotOurs);
    }
    let dst: [u8; 4] = frame.read(ETH_LEN + 16).ok_or(Error::NotOurs)?;
    let (peer_idx, peer) = route_to(dst)?;
    if frame.linear_len() < ETH_LEN + 20 {
        // Header not in the linear area (rare on egress): pull it in, or refuse to send it
        // unencapsulated.
        frame.pull((ETH_LEN + 20) as u32)?;
    }
    let ip: Ipv4Hdr = *frame
        .get::<Ipv4Hdr>(ETH_LEN)
        .ok_or(Error::Drop(Reason::DropHelperFailed))?;
    let (gso_segs, gso_size) = frame.gso();
    // Like Linux (ip_local_out sets tot_len from skb->len), the outer length follows the
    // packet's real length, not what the inner header claims; GSO rewrites it per segment.
    let inner_len = (frame.len() as u32).saturating_sub(ETH_LEN as u32);
    // Only the configured MTU is enforced here. A learned, lower one is the kernel's to apply
    // per inner destination (it was told, see pmtu); a packet for a destination it hasn't
    // heard of yet goes out and the underlay's ICMP teaches it, where a drop here would
    // black-hole that destination. What must fit is the packet, or each GSO segment of it.
    let mtu = peer.mtu as u32;
    let too_big = if gso_size == 0 {
        inner_len > mtu
    } else {
        gso_size + MIN_SEGMENT_HEADERS > mtu && segment_len(frame, &ip, gso_size) > mtu
    };
    if too_big {
        return Err(too_big::answer(frame, peer, &ip, peer.mtu));
    }
    let inner = Inner {
        tos: ip.tos,
        ttl: ip.ttl,
        frag_off: u16::from_be_bytes(ip.frags),
        tot_len: inner_len.min(u16::MAX as u32) as u16,
    };
    let header = outer::build(peer, inner, kernel::random_id());

    frame.adjust_room(
        OUTER_HEADER_LEN as i32,
        BPF_ADJ_ROOM_MAC,
        (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4) as u64,
    )?;
    frame.store(ETH_LEN, &header, 0)?;
    stats::count_tx(peer_idx, gso_segs.max(1) as u64, inner_len as u64);
    stats::count_path(Path::EncapKernel);
    Ok(())
}

/// The length of the IPv4 packets a GSO skb will be cut into (skb_gso_network_seglen): the
/// segment payload behind the IP and transport headers.
#[inline(always)]
fn segment_len(frame: &Frame<TcContext>, ip: &Ipv4Hdr, gso_size: u32) -> u32 {
    let hlen = ((ip.vihl & 0xf) as usize) * 4;
    let transport = match ip.proto {
        IPPROTO_TCP => match frame.load::<u8>(ETH_LEN + hlen + 12) {
            Some(doff) => ((doff >> 4) as u32) * 4,
            None => 20,
        },
        IPPROTO_UDP => 8,
        _ => 0,
    };
    hlen as u32 + transport + gso_size
}
