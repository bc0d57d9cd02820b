//! The outer IPv4 header, built as Linux's ip_tunnel_xmit builds it. The loader precomputes the
//! per-peer constant part of the checksum (`csum_base`); per packet only the variable fields are
//! added.

use ipip_common::{PeerConfig, IPPROTO_IPIP, OUTER_HEADER_LEN, TTL_INHERIT};

use crate::{checksum, ecn};

pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;
const VERSION_IHL: u8 = 0x45;

/// Unfolded sum of the outer header's constant words: version/IHL, protocol, addresses.
/// Computed once per peer by the loader and stored in `PeerConfig::csum_base`.
pub const fn csum_base(local: [u8; 4], remote: [u8; 4]) -> u32 {
    let sum = ((VERSION_IHL as u32) << 8) + IPPROTO_IPIP as u32;
    checksum::add_words(checksum::add_words(sum, &local), &remote)
}

/// The inner header fields the outer header depends on.
#[derive(Clone, Copy, Debug)]
pub struct Inner {
    pub tos: u8,
    pub ttl: u8,
    /// Raw `frag_off` field (flags + offset), host order.
    pub frag_off: u16,
    /// Total length of the inner packet, host order.
    pub tot_len: u16,
}

/// Outer header for `inner` sent to `peer` with IP ID `id`.
#[inline(always)]
pub fn build(peer: &PeerConfig, inner: Inner, id: u16) -> [u8; OUTER_HEADER_LEN] {
    let dscp = if peer.tos_inherit() {
        inner.tos
    } else {
        peer.tos
    } & !ecn::ECN_MASK;
    let tos = dscp | ecn::encap(inner.tos);
    let ttl = if peer.ttl == TTL_INHERIT {
        inner.ttl
    } else {
        peer.ttl
    };
    // pmtudisc: DF always; nopmtudisc: copy the inner DF (ip_tunnel_xmit).
    let frag_off = if peer.pmtudisc() {
        IP_DF
    } else {
        inner.frag_off & IP_DF
    };
    let tot_len = inner.tot_len.wrapping_add(OUTER_HEADER_LEN as u16);
    let sum = peer.csum_base
        + tos as u32
        + ((ttl as u32) << 8)
        + tot_len as u32
        + id as u32
        + frag_off as u32;
    let check = checksum::finish(sum);
    let [tl0, tl1] = tot_len.to_be_bytes();
    let [id0, id1] = id.to_be_bytes();
    let [fo0, fo1] = frag_off.to_be_bytes();
    let [c0, c1] = check.to_be_bytes();
    let s = peer.local;
    let d = peer.remote;
    [
        VERSION_IHL,
        tos,
        tl0,
        tl1,
        id0,
        id1,
        fo0,
        fo1,
        ttl,
        IPPROTO_IPIP,
        c0,
        c1,
        s[0],
        s[1],
        s[2],
        s[3],
        d[0],
        d[1],
        d[2],
        d[3],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipip_common::{PEER_FLAG_PMTUDISC, PEER_FLAG_TOS_INHERIT};

    fn peer(ttl: u8, tos: u8, flags: u32) -> PeerConfig {
        let local = [192, 0, 2, 58];
        let remote = [192, 0, 2, 129];
        PeerConfig {
            remote,
            local,
            ttl,
            tos,
            mtu: 1480,
            flags,
            csum_base: csum_base(local, remote),
            in_use: 1,
        }
    }

    fn inner(tos: u8, ttl: u8, frag_off: u16) -> Inner {
        Inner {
            tos,
            ttl,
            frag_off,
            tot_len: 84,
        }
    }

    #[test]
    fn checksum_verifies() {
        for p in [
            peer(0, 0, PEER_FLAG_PMTUDISC),
            peer(17, 0x28, 0),
            peer(255, 0, PEER_FLAG_TOS_INHERIT),
        ] {
            for id in [0u16, 1, 0x1234, 0xffff] {
                let h = build(&p, inner(0xbb, 64, IP_DF), id);
                assert_eq!(
                    checksum::finish(checksum::add_words(0, &h)),
                    0,
                    "{p:?} id {id}"
                );
            }
        }
    }

    #[test]
    fn defaults_match_linux_ipip() {
        // ttl inherit, tos 0 (not inherit), pmtudisc.
        let h = build(
            &peer(TTL_INHERIT, 0, PEER_FLAG_PMTUDISC),
            inner(0xb9, 63, 0),
            7,
        );
        assert_eq!(h[0], 0x45);
        assert_eq!(h[1], 0x01, "DSCP 0, ECN ECT(1) copied");
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 104);
        assert_eq!(u16::from_be_bytes([h[4], h[5]]), 7);
        assert_eq!(u16::from_be_bytes([h[6], h[7]]), IP_DF, "pmtudisc sets DF");
        assert_eq!(h[8], 63, "ttl inherited");
        assert_eq!(h[9], 4);
        assert_eq!(&h[12..16], &[192, 0, 2, 58]);
        assert_eq!(&h[16..20], &[192, 0, 2, 129]);
    }

    #[test]
    fn nopmtudisc_copies_inner_df_only() {
        let p = peer(64, 0, 0);
        assert_eq!(
            u16::from_be_bytes(
                build(&p, inner(0, 9, IP_DF | 5), 0)[6..8]
                    .try_into()
                    .unwrap()
            ),
            IP_DF
        );
        assert_eq!(
            u16::from_be_bytes(build(&p, inner(0, 9, IP_MF), 0)[6..8].try_into().unwrap()),
            0
        );
    }

    #[test]
    fn tos_inherit_and_fixed() {
        let inherit = build(
            &peer(64, 0, PEER_FLAG_TOS_INHERIT),
            inner(0xb8 | ecn::CE, 9, 0),
            0,
        );
        assert_eq!(inherit[1], 0xb8 | ecn::ECT_0, "DSCP copied, CE → ECT(0)");
        let fixed = build(&peer(64, 0x28, 0), inner(0xb8 | 0b10, 9, 0), 0);
        assert_eq!(fixed[1], 0x28 | 0b10);
        assert_eq!(fixed[8], 64, "fixed ttl");
    }
}
