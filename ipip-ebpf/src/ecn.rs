//! ECN across the tunnel, as Linux does it (include/net/inet_ecn.h, RFC 6040).

pub const ECN_MASK: u8 = 0b11;
pub const NOT_ECT: u8 = 0b00;
pub const ECT_0: u8 = 0b10;
pub const ECT_1: u8 = 0b01;
pub const CE: u8 = 0b11;

/// Outer ECN bits on encapsulation: the inner codepoint, except CE becomes ECT(0)
/// (`INET_ECN_encapsulate`).
#[inline(always)]
pub const fn encap(inner_tos: u8) -> u8 {
    let inner = inner_tos & ECN_MASK;
    if inner == CE {
        ECT_0
    } else {
        inner
    }
}

/// What decapsulation does to the inner packet's ECN field (`INET_ECN_decapsulate`, RFC
/// 6040's normal mode as Linux implements it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decap {
    /// Leave the inner header as it is.
    Keep,
    /// Rewrite the inner ECN field to this codepoint (CE from the underlay, or ECT(1) over
    /// ECT(0)).
    Set(u8),
    /// Outer CE on a not-ECT inner packet: the congestion mark can't be carried, drop.
    Drop,
}

#[inline(always)]
pub const fn decap(outer_tos: u8, inner_tos: u8) -> Decap {
    let outer = outer_tos & ECN_MASK;
    let inner = inner_tos & ECN_MASK;
    if inner == NOT_ECT {
        // Linux logs ECT-over-not-ECT (rc 1) but delivers; only CE (rc 2) is dropped.
        return if outer == CE {
            Decap::Drop
        } else {
            Decap::Keep
        };
    }
    if outer == CE {
        if inner == CE {
            Decap::Keep
        } else {
            Decap::Set(CE)
        }
    } else if outer == ECT_1 && inner == ECT_0 {
        // INET_ECN_set_ect1: only an ECT(0) inner packet takes ECT(1) from the outer one.
        Decap::Set(ECT_1)
    } else {
        Decap::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encap_copies_ect_and_maps_ce_to_ect0() {
        assert_eq!(encap(0b00), NOT_ECT);
        assert_eq!(encap(0b01), 0b01);
        assert_eq!(encap(0b10), ECT_0);
        assert_eq!(encap(0xb8 | CE), ECT_0);
    }

    /// Linux's result for every (outer, inner) pair: include/net/inet_ecn.h,
    /// `__INET_ECN_decapsulate` + `INET_ECN_decapsulate`, written out as a table.
    fn linux_decap(outer: u8, inner: u8) -> Option<u8> {
        const TABLE: [[Option<u8>; 4]; 4] = [
            // outer: not-ECT,  ECT(1),      ECT(0),      CE          (rows: inner)
            [Some(NOT_ECT), Some(NOT_ECT), Some(NOT_ECT), None], // inner not-ECT
            [Some(ECT_1), Some(ECT_1), Some(ECT_1), Some(CE)],   // inner ECT(1)
            [Some(ECT_0), Some(ECT_1), Some(ECT_0), Some(CE)],   // inner ECT(0)
            [Some(CE), Some(CE), Some(CE), Some(CE)],            // inner CE
        ];
        TABLE[inner as usize][outer as usize]
    }

    #[test]
    fn decap_matches_linux_for_all_16_pairs() {
        for outer in 0..4u8 {
            for inner in 0..4u8 {
                let got = match decap(0xb8 | outer, 0x28 | inner) {
                    Decap::Keep => Some(inner),
                    Decap::Set(v) => Some(v),
                    Decap::Drop => None,
                };
                assert_eq!(
                    got,
                    linux_decap(outer, inner),
                    "outer {outer:#04b} inner {inner:#04b}"
                );
            }
        }
    }

    #[test]
    fn encap_matches_linux_for_all_4_codepoints() {
        // INET_ECN_encapsulate: outer = inner, except CE -> ECT(0).
        for (inner, outer) in [
            (NOT_ECT, NOT_ECT),
            (ECT_1, ECT_1),
            (ECT_0, ECT_0),
            (CE, ECT_0),
        ] {
            assert_eq!(encap(0xfc | inner), outer, "inner {inner:#04b}");
        }
    }
}
