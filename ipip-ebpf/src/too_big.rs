//! A packet too big for the tunnel at TC egress, answered as Linux's ipip driver answers it
//! (`tnl_update_pmtu`). Such a packet got here through a route without the tunnel MTU (the
//! routes attach installs carry it, so the kernel sized the packet before); the frame itself
//! is rewritten into the answer, since BPF can't make a new one:
//!
//! - **DF set**: ICMP "fragmentation needed" with next-hop MTU = tunnel MTU, quoting as much
//!   of the packet as fits in 576 bytes. A forwarded sender gets it from this host's address
//!   on the route back to it (redirected out of that route's interface); a sender on this host
//!   gets it through the underlay's receive path (from the peer's address: a packet from one
//!   of our own addresses would be refused there as a martian), so its socket learns at once.
//! - **DF clear**: the packet is lost, and the kernel is told the tunnel MTU for its
//!   destination (the same quote the decapsulators use, see `pmtu::echo_reply_quote`): a PMTU
//!   exception, under which the kernel fragments the packets that follow.

use aya_ebpf::{bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, programs::TcContext};
use ipip_common::{PeerConfig, Reason};
use ipip_ebpf::{
    checksum,
    error::Error,
    icmp::{self, ERROR_HEADERS, MAX_QUOTE},
    outer::IP_DF,
    pmtu::{self, IPPROTO_ICMP, QUOTE_LEN},
};
use network_types::ip::Ipv4Hdr;

use crate::{
    fib,
    maps::CONFIG,
    packet::{kernel, EthRaw, Frame, ETH_LEN},
};

/// Where the quote starts in the rewritten frame.
const QUOTE: usize = ETH_LEN + ERROR_HEADERS;

/// Answers `ip` (the packet's header), too big for the tunnel MTU `mtu` toward `peer`.
/// Returns what the program's verdict is made of: `Answered` once the frame is redirected,
/// a counted drop when no answer may or can be sent.
#[inline(always)]
pub fn answer(frame: &mut Frame<TcContext>, peer: &PeerConfig, ip: &Ipv4Hdr, mtu: u16) -> Error {
    let frag_off = u16::from_be_bytes(ip.frags);
    let result = if frag_off & IP_DF == 0 {
        tell_kernel(frame, peer, ip.dst_addr, mtu)
    } else {
        tell_sender(frame, peer, ip, mtu)
    };
    match result {
        Ok(e) | Err(e) => e,
    }
}

const UNANSWERED: Error = Error::Drop(Reason::DropTooBig);

/// The original Ethernet header turned around: the frame then arrives from the next hop at
/// our own MAC.
#[inline(always)]
fn turned_around(frame: &Frame<TcContext>) -> Result<EthRaw, Error> {
    let eth: EthRaw = frame.read(0).ok_or(UNANSWERED)?;
    Ok(EthRaw {
        dst: eth.src,
        src: eth.dst,
        proto: eth.proto,
    })
}

/// Where the kernel's own traffic into the tunnel comes from (see TunnelConfig).
#[inline(always)]
fn our_address() -> Result<[u8; 4], Error> {
    Ok(CONFIG.get(0).ok_or(UNANSWERED)?.source_address())
}

#[inline(always)]
fn tell_sender(
    frame: &mut Frame<TcContext>,
    peer: &PeerConfig,
    ip: &Ipv4Hdr,
    mtu: u16,
) -> Result<Error, Error> {
    let hlen = ((ip.vihl & 0xf) as usize) * 4;
    let icmp_type: u8 = if ip.proto == IPPROTO_ICMP {
        frame.load(ETH_LEN + (hlen & 0x3c)).ok_or(UNANSWERED)?
    } else {
        0
    };
    let frag_off = u16::from_be_bytes(ip.frags);
    // The quote is a fixed 548 bytes, which any packet over a tunnel MTU of 548 or more has.
    if !icmp::may_answer(frag_off, ip.src_addr, ip.proto, icmp_type)
        || frame.len() < ETH_LEN + MAX_QUOTE
    {
        return Err(UNANSWERED);
    }
    let ingress = frame.ingress_ifindex();
    let (from, route) = if ingress == 0 {
        (peer.remote, None)
    } else {
        let r = fib::reply_route(frame, ip.src_addr, ingress).ok_or(UNANSWERED)?;
        let from = if r.src != [0; 4] {
            r.src
        } else {
            our_address()?
        };
        (from, Some(r))
    };
    let eth = turned_around(frame)?;

    // [eth][original, cut to the quote] → [eth][IPv4][ICMP][quote]. Cutting first also
    // ends GSO on the skb.
    frame.change_tail((ETH_LEN + MAX_QUOTE) as u32)?;
    frame.adjust_room(ERROR_HEADERS as i32, BPF_ADJ_ROOM_MAC, 0)?;
    let mut quote_sum = frame.sum::<512>(QUOTE).ok_or(UNANSWERED)?
        + frame
            .sum::<{ MAX_QUOTE - 512 }>(QUOTE + 512)
            .ok_or(UNANSWERED)?;
    if let (0x45, Some(at)) = (ip.vihl, icmp::transport_check_offset(ip.proto)) {
        // See offload_proof_field: the quote's transport checksum field may be filled in by
        // the device after us.
        let field_off = QUOTE + 20 + at;
        let field: [u8; 2] = frame.read(field_off).ok_or(UNANSWERED)?;
        let header = frame.sum::<20>(QUOTE).ok_or(UNANSWERED)?;
        // rest = quote − header − field, in one's-complement arithmetic.
        let rest = quote_sum + !checksum::fold(header) as u32 + !u16::from_be_bytes(field) as u32;
        let proof = icmp::offload_proof_field(rest);
        frame.store(field_off, &proof.to_be_bytes(), 0)?;
        quote_sum = header + rest + proof as u32;
    }
    let icmp = icmp::frag_needed_header(mtu, quote_sum);
    let iph = icmp::error_ip_header(
        from,
        ip.src_addr,
        ip.tos,
        kernel::random_id(),
        (ERROR_HEADERS + MAX_QUOTE) as u16,
    );
    frame.store(0, &eth, 0)?;
    frame.store(ETH_LEN, &iph, 0)?;
    frame.store(ETH_LEN + 20, &icmp, 0)?;
    match route {
        None => {
            let ifindex = frame.ifindex();
            frame.redirect_ingress(ifindex)?
        }
        Some(r) => frame.redirect_neigh(r.ifindex, r.nexthop)?,
    };
    Ok(Error::Answered(Reason::DropTooBig))
}

#[inline(always)]
fn tell_kernel(
    frame: &mut Frame<TcContext>,
    peer: &PeerConfig,
    dst: [u8; 4],
    mtu: u16,
) -> Result<Error, Error> {
    let lost = Error::Drop(Reason::DropTooBigNoDf);
    let ours = our_address().map_err(|_| lost)?;
    let eth = turned_around(frame).map_err(|_| lost)?;
    const LEN: usize = ERROR_HEADERS + QUOTE_LEN;
    let quote = pmtu::echo_reply_quote(ours, dst);
    let icmp = icmp::frag_needed_header(mtu, checksum::add_words(0, &quote));
    let iph = icmp::error_ip_header(peer.remote, ours, 0, kernel::random_id(), LEN as u16);
    frame.change_tail((ETH_LEN + LEN) as u32)?;
    frame.store(0, &eth, 0)?;
    frame.store(ETH_LEN, &iph, 0)?;
    frame.store(ETH_LEN + 20, &icmp, 0)?;
    frame.store(QUOTE, &quote, 0)?;
    let ifindex = frame.ifindex();
    frame.redirect_ingress(ifindex)?;
    Ok(Error::Answered(Reason::DropTooBigNoDf))
}
