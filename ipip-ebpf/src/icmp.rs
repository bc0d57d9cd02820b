//! ICMP errors this host sends about a packet it can't tunnel, built as Linux's `__icmp_send`
//! builds them: who may be answered (RFC 1122 3.2.2), the IPv4 header (TOS bits of the
//! original with precedence "internetwork control", TTL 64, no DF), the ICMP header, and how
//! much of the original is quoted (as much as fits in 576 bytes).

use crate::{
    checksum,
    outer::IP_OFFSET,
    pmtu::{ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, IPPROTO_ICMP},
};

/// Bytes of the original packet an error quotes: 576 less the IPv4 and ICMP headers.
pub const MAX_QUOTE: usize = 576 - 20 - 8;
/// IPv4 + ICMP header in front of the quote.
pub const ERROR_HEADERS: usize = 20 + 8;
/// `net.ipv4.ip_default_ttl`'s default.
pub const ERROR_TTL: u8 = 64;
const IPTOS_PREC_INTERNETCONTROL: u8 = 0xc0;
const IPTOS_TOS_MASK: u8 = 0x1e;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// ICMP types Linux treats as errors (`icmp_pointers[].error`), unknown ones included.
#[inline(always)]
pub const fn is_error_type(t: u8) -> bool {
    matches!(t, 1..=7 | 9..=12) || t > 18
}

/// Whether an ICMP error may answer a packet with these header fields (`frag_off` in host
/// order; `icmp_type` only read for ICMP): only its first fragment, never an ICMP error, and
/// never a source that is no single host (this network, loopback, multicast, reserved,
/// broadcast), as `__icmp_send` and its route lookup refuse them.
#[inline(always)]
pub const fn may_answer(frag_off: u16, src: [u8; 4], proto: u8, icmp_type: u8) -> bool {
    if frag_off & IP_OFFSET != 0 {
        return false;
    }
    if proto == IPPROTO_ICMP && is_error_type(icmp_type) {
        return false;
    }
    !(src[0] == 0 || src[0] == 127 || src[0] >= 224)
}

/// The IPv4 header of an ICMP error of `total_len` bytes from `src` to `dst`, about a packet
/// whose TOS was `orig_tos`.
#[inline(always)]
pub fn error_ip_header(
    src: [u8; 4],
    dst: [u8; 4],
    orig_tos: u8,
    id: u16,
    total_len: u16,
) -> [u8; 20] {
    let [l0, l1] = total_len.to_be_bytes();
    let [i0, i1] = id.to_be_bytes();
    let mut h = [
        0x45,
        (orig_tos & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL,
        l0,
        l1,
        i0,
        i1,
        0,
        0,
        ERROR_TTL,
        IPPROTO_ICMP,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let [c0, c1] = checksum::finish(checksum::add_words(0, &h)).to_be_bytes();
    h[10] = c0;
    h[11] = c1;
    h
}

/// The ICMP "fragmentation needed" header with next-hop MTU `mtu`, its checksum covering a
/// quote whose 16-bit words sum to `quote_sum`.
#[inline(always)]
pub fn frag_needed_header(mtu: u16, quote_sum: u32) -> [u8; 8] {
    let [m0, m1] = mtu.to_be_bytes();
    let mut h = [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0, m0, m1];
    let [c0, c1] = checksum::finish(checksum::add_words(quote_sum, &h)).to_be_bytes();
    h[2] = c0;
    h[3] = c1;
    h
}

/// Where a quoted TCP or UDP header keeps its checksum.
#[inline(always)]
pub const fn transport_check_offset(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        _ => None,
    }
}

/// The value to write into the quoted transport checksum field so that the ICMP checksum holds
/// whether or not the device fills that field in on the way out. A packet whose transport
/// checksum was left to the device (CHECKSUM_PARTIAL: local TCP/UDP, GRO-merged TCP) keeps
/// that state when it becomes the quote, and the device then writes the one's-complement sum
/// of everything from the transport header to the end into the field; BPF can't see or clear
/// that state. `rest` is the sum of those bytes without the field. With the field `f` the
/// bytes sum to `rest + f`; after the device's write to `-f` (its value is `-(rest + f)`).
/// Both agree when `2f = -rest`, and doubling modulo 0xffff is a one-bit rotation, so `f` is
/// `-rest` rotated right by one.
#[inline(always)]
pub const fn offload_proof_field(rest: u32) -> u16 {
    (!checksum::fold(rest)).rotate_right(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_like_icmp_send() {
        let host = [10, 0, 1, 1];
        assert!(
            may_answer(0x4000, host, IPPROTO_UDP, 0),
            "DF, first fragment"
        );
        assert!(may_answer(0x2000, host, IPPROTO_TCP, 0), "MF, offset 0");
        assert!(
            !may_answer(0x4001, host, IPPROTO_UDP, 0),
            "not the first fragment"
        );
        assert!(may_answer(0x4000, host, IPPROTO_ICMP, 8), "echo request");
        assert!(may_answer(0x4000, host, IPPROTO_ICMP, 0), "echo reply");
        assert!(may_answer(0x4000, host, IPPROTO_ICMP, 13), "timestamp");
        for error in [3u8, 4, 5, 11, 12, 1, 19, 255] {
            assert!(
                !may_answer(0x4000, host, IPPROTO_ICMP, error),
                "type {error}"
            );
        }
        for src in [[0, 0, 0, 0], [127, 0, 0, 1], [224, 0, 0, 5], [240, 1, 1, 1]] {
            assert!(!may_answer(0x4000, src, IPPROTO_UDP, 0), "{src:?}");
        }
        assert!(!may_answer(0x4000, [255; 4], IPPROTO_UDP, 0), "broadcast");
    }

    #[test]
    fn headers_verify() {
        let ip = error_ip_header([192, 0, 2, 1], [10, 0, 1, 1], 0xbb, 0x1234, 576);
        assert!(checksum::verifies(checksum::add_words(0, &ip)));
        assert_eq!(
            ip[1],
            0xc0 | 0x1a,
            "precedence 6 | the TOS bits, no DSCP, no ECN"
        );
        assert_eq!(&ip[6..8], &[0, 0], "no DF");
        assert_eq!(ip[8], 64);
        let quote: Vec<u8> = (0..MAX_QUOTE as u32).map(|i| (i * 7 + 3) as u8).collect();
        let sum = checksum::add_words(0, &quote);
        let icmp = frag_needed_header(1480, sum);
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1480);
        assert!(checksum::verifies(checksum::add_words(sum, &icmp)));
    }

    /// What a device does to a CHECKSUM_PARTIAL packet (skb_checksum_help).
    fn device_fill(region: &mut [u8], field: usize) {
        let mut c = checksum::finish(checksum::add_words(0, region));
        if c == 0 {
            c = 0xffff;
        }
        region[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn offload_proof_field_keeps_the_icmp_checksum_either_way() {
        for seed in 0u32..300 {
            // A quote: 20-byte IP header, then the transport header and data (the region).
            let mut quote: Vec<u8> = (0..MAX_QUOTE as u32)
                .map(|i| (i.wrapping_mul(seed * 2 + 1) ^ seed) as u8)
                .collect();
            let field = 20 + 16;
            quote[field] = 0;
            quote[field + 1] = 0;
            let rest = checksum::add_words(0, &quote[20..]);
            let f = offload_proof_field(rest);
            quote[field..field + 2].copy_from_slice(&f.to_be_bytes());
            let icmp = frag_needed_header(1480, checksum::add_words(0, &quote));
            let valid = |q: &[u8]| {
                checksum::verifies(checksum::add_words(0, &icmp) + checksum::add_words(0, q))
            };
            assert!(valid(&quote), "seed {seed}: as sent");
            device_fill(&mut quote[20..], 16);
            assert!(
                valid(&quote),
                "seed {seed}: after the device filled the field"
            );
        }
    }
}
