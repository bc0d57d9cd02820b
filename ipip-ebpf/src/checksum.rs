//! Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// Adds the 16-bit big-endian words of `bytes` (even length) to an unfolded sum.
#[inline(always)]
pub const fn add_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += ((bytes[i] as u32) << 8) | bytes[i + 1] as u32;
        i += 2;
    }
    sum
}

/// Folds a 32-bit one's-complement sum to 16 bits (not inverted).
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field value for a header whose words sum to `sum`.
#[inline(always)]
pub const fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub const fn update(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + new as u32;
    !fold(sum)
}

/// The new checksum after data summing to `old` (folded or not) was replaced by data summing to
/// `new`, at even offsets: removing bytes is replacing them by nothing (`new` = 0).
#[inline(always)]
pub const fn replace(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check as u32) + (!fold(old) as u32) + fold(new) as u32;
    !fold(sum)
}

/// Whether a header whose 16-bit words (checksum field included) sum to `sum` verifies.
#[inline(always)]
pub const fn verifies(sum: u32) -> bool {
    fold(sum) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071's worked example header (Wikipedia's IPv4 header checksum example).
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn known_header_checksum() {
        assert_eq!(finish(add_words(0, &HEADER)), 0xb861);
    }

    #[test]
    fn header_with_its_checksum_verifies_to_zero() {
        let mut h = HEADER;
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(finish(add_words(0, &h)), 0);
    }

    #[test]
    fn fold_carries_twice() {
        assert_eq!(fold(0x0001_ffff), 0x0001);
        assert_eq!(fold(0xffff_ffff), 0xffff);
    }

    #[test]
    fn incremental_update_matches_full_recompute() {
        for (old_tos, new_tos) in [(0x00u8, 0x03u8), (0x01, 0x03), (0xb8, 0xbb), (0xfe, 0xff)] {
            let mut h = HEADER;
            h[1] = old_tos;
            let check = finish(add_words(0, &h));
            h[1] = new_tos;
            let expect = finish(add_words(0, &h));
            let got = update(check, 0x4500 | old_tos as u16, 0x4500 | new_tos as u16);
            assert_eq!(got, expect, "tos {old_tos:#x} -> {new_tos:#x}");
        }
    }

    #[test]
    fn replace_matches_full_recompute_when_words_change_and_vanish() {
        // A message of 40 bytes; bytes 8..28 are removed and word 6..8 rewritten.
        let msg: Vec<u8> = (0u8..40).map(|b| b.wrapping_mul(37) ^ 0x5a).collect();
        let check = finish(add_words(0, &msg));
        let mut out = msg[..8].to_vec();
        out[6..8].copy_from_slice(&[0x05, 0x64]);
        out.extend_from_slice(&msg[28..]);
        let old = add_words(add_words(0, &msg[6..8]), &msg[8..28]);
        let got = replace(check, old, add_words(0, &out[6..8]));
        assert_eq!(got, finish(add_words(0, &out)));
        assert!(verifies(add_words(add_words(0, &out), &got.to_be_bytes())));
    }

    #[test]
    fn verifies_tells_good_from_bad() {
        let mut h = HEADER;
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verifies(add_words(0, &h)));
        h[10] ^= 1;
        assert!(!verifies(add_words(0, &h)));
    }
}
