//! What the decapsulators accept, shared by the XDP and the TC-ingress programs, in the order
//! Linux checks it (ip_rcv, then ipip_rcv): a well-formed outer header (version, IHL, length,
//! checksum; options allowed and stripped with it), not a fragment, outer destination our
//! tunnel address, outer source a configured peer, inner source inside that peer's routes (the
//! WireGuard AllowedIPs idea). ECN is resolved here too (RFC 6040), in the inner header.
//!
//! The other message the decapsulators own is ICMP "fragmentation needed" about one of our
//! outer packets (Linux's `ipip_err`): classified here, rewritten by the caller.
//!
//! The caller then removes the outer header (or rewrites the ICMP) in its own program type's
//! way.

use ipip_common::{FragKey, PeerPmtu, Reason, IPPROTO_IPIP, OUTER_HEADER_LEN};
use ipip_ebpf::{
    checksum,
    ecn::{self, Decap},
    error::Error,
    outer::{IP_MF, IP_OFFSET},
    pmtu::{self, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, IPPROTO_ICMP, QUOTE_LEN},
};
use network_types::ip::Ipv4Hdr;

use crate::{
    maps::{peer_by_remote, pmtu_slot, CONFIG, PEERS, ROUTES},
    packet::{kernel, EthRaw, Frame, Packet, ETH_LEN, ETH_P_IP},
};

pub const ETH_P_8021Q: [u8; 2] = [0x81, 0x00];
pub const ETH_P_8021AD: [u8; 2] = [0x88, 0xa8];
/// Where the IPv4 protocol byte sits.
const IP_PROTO_OFF: usize = 9;
/// Longest IPv4 header (IHL 15).
pub const MAX_IP_HLEN: usize = 60;

/// What the decapsulators have to do with a frame.
pub enum Ours {
    /// IPIP from a peer, accepted: remove the outer header.
    Ipip(Accepted),
    /// ICMP "fragmentation needed" about one of our outer packets: rewrite it.
    FragNeeded(FragNeeded),
    /// An outer fragment of IPIP from a peer: hold it until its datagram is whole.
    Fragment(Fragment),
}

/// One outer fragment of IPIP from a peer, as classification found it.
pub struct Fragment {
    pub key: FragKey,
    /// Payload offset in bytes and payload length.
    pub off: u32,
    pub len: u32,
    /// More fragments follow (MF).
    pub more: bool,
    /// Outer header length (the payload starts behind it).
    pub hlen: usize,
    pub tos: u8,
    pub ttl: u8,
}

/// An accepted packet: whose it is, how long its parts are.
pub struct Accepted {
    pub peer: u32,
    pub inner_len: usize,
    /// Outer header length (IHL × 4): what to remove.
    pub outer_hlen: usize,
    /// The tunnel's `TUNNEL_FLAG_*`, read once here for the caller.
    pub tunnel_flags: u32,
    /// The tunnel (overlay) address, network order (0 when none): what the fast path
    /// delivers locally without a FIB lookup.
    pub tunnel_address: [u8; 4],
}

/// Layout of an ICMP "fragmentation needed" as the decapsulators see it, from the frame start.
pub const FN_IP: usize = ETH_LEN;
pub const FN_ICMP: usize = FN_IP + OUTER_HEADER_LEN;
/// The quoted outer header: the 20 bytes the rewrite removes.
pub const FN_QUOTED_OUTER: usize = FN_ICMP + 8;
pub const FN_QUOTED_INNER: usize = FN_QUOTED_OUTER + OUTER_HEADER_LEN;

/// An ICMP "fragmentation needed" about our outer packet, with everything its rewrite into
/// one about the inner packet needs. The rewrite: write `quote` (if any) at
/// [`FN_QUOTED_INNER`], set the ICMP header to `icmp`, remove the 20 bytes at
/// [`FN_QUOTED_OUTER`], and fix the IP header's length and checksum (`ip_len`, `ip_check`).
pub struct FragNeeded {
    /// The ICMP header after the rewrite (type, code, checksum, unused, next-hop MTU).
    pub icmp: [u8; 8],
    /// A quote to write over the inner one: for senders that are not this host (see
    /// [`pmtu::echo_reply_quote`]).
    pub quote: Option<[u8; QUOTE_LEN]>,
    pub ip_len: [u8; 2],
    pub ip_check: [u8; 2],
}

/// Classifies an Ethernet frame. `Err(NotOurs)` for everything that isn't IPIP or an ICMP
/// error about our IPIP; on `Ok(Ipip)` the inner header is final (ECN applied).
#[inline(always)]
pub fn classify<C: Packet>(frame: &mut Frame<C>) -> Result<Ours, Error> {
    let eth_proto = frame.get::<EthRaw>(0).ok_or(Error::NotOurs)?.proto;
    if eth_proto == ETH_P_8021Q || eth_proto == ETH_P_8021AD {
        return vlan(frame);
    }
    if eth_proto != ETH_P_IP {
        return Err(Error::NotOurs);
    }
    match *frame
        .get::<u8>(ETH_LEN + IP_PROTO_OFF)
        .ok_or(Error::NotOurs)?
    {
        IPPROTO_IPIP => ipip(frame),
        IPPROTO_ICMP => frag_needed(frame).map(Ours::FragNeeded),
        _ => Err(Error::NotOurs),
    }
}

/// IPIP in an 802.1Q/802.1ad tag: not decapsulated on the underlay (the kernel, or a VLAN
/// device on it, owns tagged traffic), but counted so that a tagged peer is noticed.
#[inline(always)]
fn vlan<C: Packet>(frame: &Frame<C>) -> Result<Ours, Error> {
    const TAG: usize = 4;
    let inner_type: &[u8; 2] = frame.get(ETH_LEN + TAG - 2).ok_or(Error::NotOurs)?;
    if *inner_type != ETH_P_IP {
        return Err(Error::NotOurs);
    }
    match frame.get::<u8>(ETH_LEN + TAG + IP_PROTO_OFF) {
        Some(p) if *p == IPPROTO_IPIP => Err(Error::Pass(Reason::PassVlan)),
        _ => Err(Error::NotOurs),
    }
}

/// Checks an outer IPv4 header the way ip_rcv does: version 4, IHL ≥ 5, the header inside the
/// frame, total length covering the header and inside the frame, checksum right. Returns the
/// header length.
#[inline(always)]
fn outer_header<C: Packet>(frame: &Frame<C>, outer: &Ipv4Hdr) -> Result<usize, Error> {
    let malformed = Error::Drop(Reason::DropMalformedOuter);
    if outer.vihl >> 4 != 4 || outer.vihl & 0xf < 5 {
        return Err(malformed);
    }
    let hlen = ((outer.vihl & 0xf) as usize) * 4;
    let tot_len = u16::from_be_bytes(outer.tot_len) as usize;
    if tot_len < hlen || ETH_LEN + tot_len > frame.len() {
        return Err(malformed);
    }
    let fixed: &[u8; OUTER_HEADER_LEN] = frame.get(ETH_LEN).ok_or(malformed)?;
    let mut sum = checksum::add_words(0, fixed);
    // Options, one 32-bit word at a time (at most 10).
    let mut off = OUTER_HEADER_LEN;
    while off < MAX_IP_HLEN {
        if off >= hlen {
            break;
        }
        let word: &[u8; 4] = frame.get(ETH_LEN + off).ok_or(malformed)?;
        sum = checksum::add_words(sum, word);
        off += 4;
    }
    if !checksum::verifies(sum) {
        return Err(Error::Drop(Reason::DropOuterChecksum));
    }
    Ok(hlen)
}

/// An outer header that passed: whose packet it is and what decapsulation needs of it.
struct Outer {
    peer: u32,
    hlen: usize,
    len: usize,
    tos: u8,
    tunnel_flags: u32,
    /// The tunnel (overlay) address, network order; 0 when none.
    address: [u8; 4],
}

enum Checked {
    Whole(Outer),
    Fragment(Fragment),
}

/// The outer header's checks; the header is only borrowed here (registers, not stack, carry
/// what the caller needs on).
#[inline(always)]
fn check_outer<C: Packet>(frame: &Frame<C>) -> Result<Checked, Error> {
    // Protocol 4 but not even a whole IPv4 header: ip_rcv would drop it as well.
    let outer: &Ipv4Hdr = frame
        .get(ETH_LEN)
        .ok_or(Error::Drop(Reason::DropMalformedOuter))?;
    let outer_hlen = outer_header(frame, outer)?;
    let outer_len = u16::from_be_bytes(outer.tot_len) as usize;
    let config = CONFIG.get(0).ok_or(Error::NotOurs)?;
    if outer.dst_addr != config.local {
        return Err(Error::Pass(Reason::PassIpipNotLocal));
    }
    let peer = peer_by_remote(outer.src_addr).ok_or(Error::Drop(Reason::DropUnknownPeer))?;
    let frags = u16::from_be_bytes(outer.frags);
    if frags & (IP_MF | IP_OFFSET) != 0 {
        let len = (outer_len - outer_hlen) as u32;
        let more = frags & IP_MF != 0;
        // Every piece but the last carries a multiple of 8 bytes (RFC 791).
        if more && !len.is_multiple_of(8) {
            return Err(Error::Drop(Reason::DropMalformedOuter));
        }
        return Ok(Checked::Fragment(Fragment {
            key: FragKey {
                src: outer.src_addr,
                dst: outer.dst_addr,
                id: outer.id,
                _pad: [0; 2],
            },
            off: (frags & IP_OFFSET) as u32 * 8,
            len,
            more,
            hlen: outer_hlen,
            tos: outer.tos,
            ttl: outer.ttl,
        }));
    }
    Ok(Checked::Whole(Outer {
        peer,
        hlen: outer_hlen,
        len: outer_len,
        tos: outer.tos,
        tunnel_flags: config.flags,
        address: config.address,
    }))
}

#[inline(always)]
fn ipip<C: Packet>(frame: &mut Frame<C>) -> Result<Ours, Error> {
    let Outer {
        peer,
        hlen: outer_hlen,
        len: outer_len,
        tos: outer_tos,
        tunnel_flags,
        address,
    } = match check_outer(frame)? {
        Checked::Whole(o) => o,
        Checked::Fragment(f) => return Ok(Ours::Fragment(f)),
    };

    // The verifier knows outer_hlen is 20..=60, so this offset stays bounded.
    let inner: &mut Ipv4Hdr = frame
        .get_mut(ETH_LEN + (outer_hlen & 0x3c))
        .ok_or(Error::Drop(Reason::DropMalformedInner))?;
    let inner_len = u16::from_be_bytes(inner.tot_len) as usize;
    if inner.vihl >> 4 != 4
        || inner.vihl & 0xf < 5
        || inner_len < ((inner.vihl & 0xf) as usize) * 4
        || inner_len + outer_hlen > outer_len
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
        Decap::Set(codepoint) => {
            let old = u16::from_be_bytes([inner.vihl, inner.tos]);
            inner.tos = (inner.tos & !ecn::ECN_MASK) | codepoint;
            let new = u16::from_be_bytes([inner.vihl, inner.tos]);
            let check = checksum::update(u16::from_be_bytes(inner.check), old, new);
            inner.check = check.to_be_bytes();
        }
    }

    Ok(Ours::Ipip(Accepted {
        peer,
        inner_len,
        outer_hlen,
        tunnel_flags,
        tunnel_address: address,
    }))
}

/// ICMP "fragmentation needed" to our local address that quotes one of our outer packets to a
/// peer: learn the peer's path MTU and prepare the message's rewrite. Any other ICMP is not
/// ours.
#[inline(always)]
fn frag_needed<C: Packet>(frame: &Frame<C>) -> Result<FragNeeded, Error> {
    let ip: &Ipv4Hdr = frame.get(FN_IP).ok_or(Error::NotOurs)?;
    let icmp: &[u8; 8] = frame.get(FN_ICMP).ok_or(Error::NotOurs)?;
    if ip.vihl != 0x45 || icmp[0] != ICMP_DEST_UNREACH || icmp[1] != ICMP_FRAG_NEEDED {
        return Err(Error::NotOurs);
    }
    let config = CONFIG.get(0).ok_or(Error::NotOurs)?;
    let quoted: &[u8; OUTER_HEADER_LEN] = frame.get(FN_QUOTED_OUTER).ok_or(Error::NotOurs)?;
    if ip.dst_addr != config.local || !pmtu::is_our_outer(quoted, config.local) {
        return Err(Error::NotOurs);
    }
    let remote = [quoted[16], quoted[17], quoted[18], quoted[19]];
    let peer = peer_by_remote(remote).ok_or(Error::NotOurs)?;
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ETH_LEN + tot_len > frame.len() || tot_len < FN_QUOTED_INNER - ETH_LEN {
        return Err(Error::Drop(Reason::DropMalformedOuter));
    }
    let reported = u16::from_be_bytes([icmp[6], icmp[7]]);
    let mtu = learn(peer, reported, config.pmtu_expires_ns);

    // The kernel needs the inner header and 8 bytes after it to act on the message.
    let inner: &[u8; QUOTE_LEN] = match frame.get::<[u8; QUOTE_LEN]>(FN_QUOTED_INNER) {
        Some(q) if tot_len >= FN_QUOTED_INNER - ETH_LEN + QUOTE_LEN && q[0] == 0x45 => q,
        _ => return Err(Error::Drop(Reason::DropPmtuShortQuote)),
    };
    // A sender on this host (the tunnel address is the source the routes give it) is told
    // through its own quote: the socket learns at once. Anyone else is forwarded traffic: a
    // quote that makes the kernel record the MTU on the inner route (see echo_reply_quote).
    let src = [inner[12], inner[13], inner[14], inner[15]];
    let dst = [inner[16], inner[17], inner[18], inner[19]];
    let ours = config.source_address();
    let quote = if src == ours {
        None
    } else {
        Some(pmtu::echo_reply_quote(ours, dst))
    };

    let mut new_icmp = *icmp;
    let [m0, m1] = mtu.to_be_bytes();
    new_icmp[6] = m0;
    new_icmp[7] = m1;
    let removed_sum = checksum::add_words(0, quoted);
    let mut old = removed_sum + u16::from_be_bytes([icmp[6], icmp[7]]) as u32;
    let mut new = mtu as u32;
    if let Some(q) = &quote {
        old += checksum::add_words(0, inner);
        new += checksum::add_words(0, q);
    }
    let check = checksum::replace(u16::from_be_bytes([icmp[2], icmp[3]]), old, new);
    let [c0, c1] = check.to_be_bytes();
    new_icmp[2] = c0;
    new_icmp[3] = c1;

    let new_len = (tot_len - OUTER_HEADER_LEN) as u16;
    let ip_check = checksum::update(u16::from_be_bytes(ip.check), tot_len as u16, new_len);
    Ok(FragNeeded {
        icmp: new_icmp,
        quote,
        ip_len: new_len.to_be_bytes(),
        ip_check: ip_check.to_be_bytes(),
    })
}

/// Records what a "fragmentation needed" for `peer` teaches and returns the tunnel MTU to
/// report inward: the learned one, or the one already in force when the report doesn't
/// lower it.
#[inline(always)]
fn learn(peer: u32, reported: u16, expires_ns: u64) -> u16 {
    let configured = PEERS.get(peer).map(|p| p.mtu).unwrap_or(0);
    let now = kernel::now_ns();
    let Some(cur) = pmtu_slot(peer) else {
        return configured;
    };
    let current = cur.effective(configured, now);
    match pmtu::learn(reported, current) {
        Some(mtu) => {
            *cur = PeerPmtu {
                expires_ns: now + expires_ns,
                mtu: mtu as u32,
                reported: reported as u32,
            };
            mtu
        }
        None => current,
    }
}
