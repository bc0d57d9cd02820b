//! Which hook decapsulates on an interface when the user doesn't say (`--decap auto`).
//!
//! XDP runs before the kernel builds an skb, so it wins where the driver hands XDP_PASS
//! frames to GRO afterwards (native XDP on NICs). It loses where attaching it costs offloads:
//! a veth with an XDP program turns GSO/TSO off on its peer, so every TCP segment crosses at
//! MTU size (`cargo xtask bench`: TCP about five times slower than TC ingress on veth), and
//! virtio_net turns the host's receive offloads off. Generic XDP always loses to TC ingress:
//! it linearises every GRO-merged packet and runs after GRO, so nothing merges the inner ones.

use crate::{cli::DecapArg, netif::Link};

/// Where decapsulation will run, before attach tries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
    /// XDP if the driver runs it natively, TC ingress otherwise.
    NativeXdpElseTc,
}

/// The hook and the reason attach reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub hook: Hook,
    pub why: String,
}

/// Drivers whose native XDP costs the offloads TCP needs more than XDP saves.
const XDP_COSTS_OFFLOADS: &[(&str, &str)] = &[(
    "virtio_net",
    "XDP on virtio_net turns the host's receive offloads (guest TSO/LRO) off",
)];

/// What `--decap` resolves to on `link` (`driver` as `ethtool -i` names it). `explicit_xdp_mode`
/// is a `--xdp-mode` other than auto: a request for XDP.
pub fn choose(
    arg: DecapArg,
    link: &Link,
    driver: Option<&str>,
    fast_path: bool,
    explicit_xdp_mode: bool,
) -> Choice {
    let choice = |hook, why: &str| Choice {
        hook,
        why: why.to_string(),
    };
    match arg {
        DecapArg::Xdp => return choice(Hook::Xdp, "--decap xdp"),
        DecapArg::Tc => return choice(Hook::Tc, "--decap tc"),
        DecapArg::Auto => {}
    }
    if fast_path {
        return choice(
            Hook::Xdp,
            "auto: the fast path (--lan) decapsulates and forwards in XDP",
        );
    }
    if explicit_xdp_mode {
        return choice(Hook::Xdp, "auto: --xdp-mode asks for XDP");
    }
    if link.veth {
        return choice(
            Hook::Tc,
            "auto: veth, where an XDP program turns GSO/TSO off on the peer and TCP crosses in MTU-sized segments; TC ingress keeps GRO-merged packets (--decap xdp overrides)",
        );
    }
    if let Some((d, why)) = driver.and_then(|d| XDP_COSTS_OFFLOADS.iter().find(|(n, _)| *n == d)) {
        return Choice {
            hook: Hook::Tc,
            why: format!("auto: {why} ({d}; --decap xdp overrides)"),
        };
    }
    choice(
        Hook::NativeXdpElseTc,
        "auto: native XDP decapsulates before the skb is built and GRO still merges what it passes",
    )
}

/// Why auto fell back to TC ingress when native XDP could not be attached.
pub fn fallback_reason(iface: &str, error: &anyhow::Error) -> String {
    format!(
        "auto: native XDP unavailable on {iface} ({}); generic XDP would linearise every GRO-merged packet, so TC ingress",
        error.root_cause()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(veth: bool) -> Link {
        Link {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            up: true,
            veth,
            loopback: false,
            not_ethernet: None,
            mac: [2, 0, 0, 0, 0, 1],
            xdp_prog: None,
        }
    }

    #[test]
    fn explicit_hooks_are_kept_everywhere() {
        for veth in [false, true] {
            for fast in [false, true] {
                let l = link(veth);
                assert_eq!(choose(DecapArg::Xdp, &l, None, fast, false).hook, Hook::Xdp);
                assert_eq!(choose(DecapArg::Tc, &l, None, fast, false).hook, Hook::Tc);
            }
        }
    }

    #[test]
    fn auto_picks_tc_on_veth_and_offload_losing_drivers() {
        let c = choose(DecapArg::Auto, &link(true), Some("veth"), false, false);
        assert_eq!(c.hook, Hook::Tc);
        assert!(c.why.contains("GSO"), "{}", c.why);
        let c = choose(
            DecapArg::Auto,
            &link(false),
            Some("virtio_net"),
            false,
            false,
        );
        assert_eq!(c.hook, Hook::Tc);
        assert!(c.why.contains("virtio_net"), "{}", c.why);
    }

    #[test]
    fn auto_tries_native_xdp_on_other_devices() {
        for driver in [Some("mlx5_core"), Some("i40e"), None] {
            let c = choose(DecapArg::Auto, &link(false), driver, false, false);
            assert_eq!(c.hook, Hook::NativeXdpElseTc, "{driver:?}");
        }
    }

    #[test]
    fn auto_uses_xdp_when_the_fast_path_or_an_xdp_mode_asks() {
        for veth in [false, true] {
            let c = choose(DecapArg::Auto, &link(veth), None, true, false);
            assert_eq!(c.hook, Hook::Xdp);
            let c = choose(DecapArg::Auto, &link(veth), None, false, true);
            assert_eq!(c.hook, Hook::Xdp);
        }
    }

    #[test]
    fn the_fallback_names_the_interface_and_the_cause() {
        let e = anyhow::anyhow!("Operation not supported").context("attaching");
        let why = fallback_reason("br0", &e);
        assert!(
            why.contains("br0") && why.contains("Operation not supported"),
            "{why}"
        );
    }
}
