//! ECN across the tunnel, as Linux does it (include/net/inet_ecn.h, RFC 6040).

pub const ECN_MASK: u8 = 0b11;
pub const NOT_ECT: u8 = 0b00;
pub const ECT_0: u8 = 0b10;
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

/// What decapsulation does to the inner packet's ECN field (`INET_ECN_decapsulate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decap {
    /// Leave the inner header as it is.
    Keep,
    /// Set CE on the inner header (congestion seen on the underlay).
    SetCe,
    /// Outer CE on a not-ECT inner packet: the congestion mark can't be carried, drop.
    Drop,
}

#[inline(always)]
pub const fn decap(outer_tos: u8, inner_tos: u8) -> Decap {
    let outer = outer_tos & ECN_MASK;
    let inner = inner_tos & ECN_MASK;
    if inner == NOT_ECT {
        if outer == CE {
            Decap::Drop
        } else {
            Decap::Keep
        }
    } else if outer == CE && inner != CE {
        Decap::SetCe
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

    #[test]
    fn decap_follows_rfc6040_table() {
        // (outer, inner) → action, RFC 6040 section 4.2 as Linux implements it.
        let table = [
            (NOT_ECT, NOT_ECT, Decap::Keep),
            (ECT_0, NOT_ECT, Decap::Keep),
            (CE, NOT_ECT, Decap::Drop),
            (NOT_ECT, ECT_0, Decap::Keep),
            (ECT_0, ECT_0, Decap::Keep),
            (CE, ECT_0, Decap::SetCe),
            (CE, 0b01, Decap::SetCe),
            (CE, CE, Decap::Keep),
            (NOT_ECT, CE, Decap::Keep),
        ];
        for (outer, inner, want) in table {
            assert_eq!(
                decap(outer, inner),
                want,
                "outer {outer:#b} inner {inner:#b}"
            );
        }
    }
}
