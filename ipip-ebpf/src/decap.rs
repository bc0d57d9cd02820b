//! Which IPIP we accept, shared by the XDP and the TC-ingress decapsulators: outer destination
//! our tunnel address, outer source a configured peer, inner source inside that peer's routes
//! (the WireGuard AllowedIPs idea). ECN is resolved here too (RFC 6040), in the inner header.
//! The caller then removes the outer header in its own program type's way.

use ipip_common::{Reason, IPPROTO_IPIP, OUTER_HEADER_LEN};
use ipip_ebpf::{
    checksum,
    ecn::{self, Decap},
    error::Error,
    outer::{IP_MF, IP_OFFSET},
};
use network_types::ip::Ipv4Hdr;

use crate::{
    maps::{CONFIG, PEER_BY_REMOTE, ROUTES},
    packet::{ref_mut_at, EthRaw, Packet, ETH_LEN, ETH_P_IP},
};

/// An accepted packet: whose it is and how long the inner packet is.
pub struct Accepted {
    pub peer: u32,
    pub inner_len: usize,
    /// The tunnel's `TUNNEL_FLAG_*`, read once here for the caller.
    pub tunnel_flags: u32,
}

/// Checks an Ethernet frame; on success the inner header is final (ECN applied) and the
/// caller only has to remove the outer header.
#[inline(always)]
pub fn classify<C: Packet>(ctx: &C) -> Result<Accepted, Error> {
    let eth: &EthRaw = ref_mut_at(ctx, 0).ok_or(Error::NotOurs)?;
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
    if ETH_LEN + outer_len > ctx.len() {
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

    Ok(Accepted {
        peer,
        inner_len,
        tunnel_flags: config.flags,
    })
}
