//! Path MTU across the tunnel, as Linux's `ipip_err` → `ipv4_update_pmtu` and
//! `tnl_update_pmtu` do it. An ICMP "fragmentation needed" about one of our outer packets is
//! turned into one about the inner packet with the tunnel MTU (outer MTU − 20) and handed to
//! the kernel, whose own PMTU machinery then lowers the inner route's MTU for that
//! destination (a PMTU exception that ages out after `net.ipv4.route.mtu_expires`), tells a
//! local socket, and answers forwarded senders with its own "fragmentation needed".

use ipip_common::{IPPROTO_IPIP, OUTER_HEADER_LEN};

use crate::checksum;

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_ECHOREPLY: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
/// The kernel's default `net.ipv4.route.min_pmtu` (ip_rt_min_pmtu): reports below it are
/// raised to it, as `__ip_rt_update_pmtu` does.
pub const MIN_PMTU: u16 = 552;
/// What the kernel needs quoted: an IPv4 header and 8 bytes of what follows (icmp_unreach).
pub const QUOTE_LEN: usize = OUTER_HEADER_LEN + 8;

/// The tunnel MTU to learn from a report of `reported` (next-hop MTU of the outer packet) for
/// a peer whose tunnel MTU is now `current`; `None` when it would not lower it.
#[inline(always)]
pub const fn learn(reported: u16, current: u16) -> Option<u16> {
    let outer = if reported < MIN_PMTU {
        MIN_PMTU
    } else {
        reported
    };
    let inner = outer - OUTER_HEADER_LEN as u16;
    if inner < current {
        Some(inner)
    } else {
        None
    }
}

/// Whether a quoted outer header (the first 20 bytes an ICMP error quotes) is one of ours:
/// IPv4 without options, IPIP, from our local address. The caller matches the destination
/// against the peers.
#[inline(always)]
pub fn is_our_outer(quoted: &[u8; OUTER_HEADER_LEN], local: [u8; 4]) -> bool {
    quoted[0] == 0x45 && quoted[9] == IPPROTO_IPIP && quoted[12..16] == local
}

/// A quote that makes the kernel lower its PMTU for `dst` whoever the sender was: an ICMP echo
/// reply from `src` (one of our addresses) to `dst`. For such a quote `icmp_err` always calls
/// `ipv4_update_pmtu` (no socket needed), which resolves the route `src → dst` — the inner
/// route to the peer — and records the exception there, so that the kernel's forwarding path
/// then answers too-big packets of any sender with the lowered MTU, as `tnl_update_pmtu` does.
#[inline(always)]
pub fn echo_reply_quote(src: [u8; 4], dst: [u8; 4]) -> [u8; QUOTE_LEN] {
    let mut q = [0u8; QUOTE_LEN];
    q[0] = 0x45;
    q[3] = QUOTE_LEN as u8; // total length 28
    q[8] = 64;
    q[9] = IPPROTO_ICMP;
    q[12..16].copy_from_slice(&src);
    q[16..20].copy_from_slice(&dst);
    let check = checksum::finish(checksum::add_words(0, &q[..20]));
    q[10..12].copy_from_slice(&check.to_be_bytes());
    q[20] = ICMP_ECHOREPLY;
    let icmp_check = checksum::finish(checksum::add_words(0, &q[20..]));
    q[22..24].copy_from_slice(&icmp_check.to_be_bytes());
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_outer_minus_20_and_only_downwards() {
        assert_eq!(learn(1400, 1480), Some(1380));
        assert_eq!(learn(1500, 1480), None, "not lower");
        assert_eq!(learn(1499, 1480), Some(1479));
        assert_eq!(learn(1400, 1380), None, "already learned");
        assert_eq!(learn(1300, 1380), Some(1280));
    }

    #[test]
    fn tiny_and_zero_reports_are_raised_to_min_pmtu() {
        // Pre-RFC 1191 routers report 0; Linux raises anything below min_pmtu to it.
        assert_eq!(learn(0, 1480), Some(MIN_PMTU - 20));
        assert_eq!(learn(68, 1480), Some(MIN_PMTU - 20));
        assert_eq!(learn(400, MIN_PMTU - 20), None);
    }

    #[test]
    fn our_outer_is_told_from_others() {
        let mut q = [0u8; 20];
        q[0] = 0x45;
        q[9] = 4;
        q[12..16].copy_from_slice(&[192, 0, 2, 58]);
        assert!(is_our_outer(&q, [192, 0, 2, 58]));
        assert!(!is_our_outer(&q, [192, 0, 2, 59]), "another source");
        q[9] = 17;
        assert!(!is_our_outer(&q, [192, 0, 2, 58]), "not IPIP");
        q[9] = 4;
        q[0] = 0x46;
        assert!(!is_our_outer(&q, [192, 0, 2, 58]), "options: never ours");
    }

    #[test]
    fn echo_reply_quote_is_a_valid_packet() {
        let q = echo_reply_quote([10, 0, 1, 1], [10, 0, 2, 7]);
        assert!(checksum::verifies(checksum::add_words(0, &q[..20])));
        assert!(checksum::verifies(checksum::add_words(0, &q[20..])));
        assert_eq!(q[9], IPPROTO_ICMP);
        assert_eq!(q[20], ICMP_ECHOREPLY);
        assert_eq!(&q[12..16], &[10, 0, 1, 1]);
        assert_eq!(&q[16..20], &[10, 0, 2, 7]);
    }
}
