//! What a router does to a packet it forwards: the TTL goes down by one and the header
//! checksum follows (RFC 1624), as Linux's ip_decrease_ttl does.

use crate::checksum;

/// The TTL and header checksum after one hop, for a header with `ttl`, `proto` and `check`
/// (host order). The caller has made sure `ttl > 1`.
#[inline(always)]
pub const fn decrement_ttl(ttl: u8, proto: u8, check: u16) -> (u8, u16) {
    let new_ttl = ttl - 1;
    let old = ((ttl as u16) << 8) | proto as u16;
    let new = ((new_ttl as u16) << 8) | proto as u16;
    (new_ttl, checksum::update(check, old, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_full_recompute() {
        for ttl in [2u8, 64, 128, 255] {
            let mut h: [u8; 20] = [
                0x45, 0x00, 0x05, 0xdc, 0x12, 0x34, 0x40, 0x00, ttl, 0x06, 0, 0, 192, 168, 1, 10,
                192, 168, 104, 100,
            ];
            let check = checksum::finish(checksum::add_words(0, &h));
            let (new_ttl, new_check) = decrement_ttl(ttl, 6, check);
            h[8] = new_ttl;
            assert_eq!(new_ttl, ttl - 1);
            assert_eq!(
                new_check,
                checksum::finish(checksum::add_words(0, &h)),
                "ttl {ttl}"
            );
        }
    }
}
