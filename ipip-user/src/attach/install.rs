//! Attach step 2, install: load the programs, fill their maps, pin everything and attach
//! the links, all in the staging folder. Until the record step renames it, a kill here
//! leaves only that folder, which the next attach or detach removes.

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use aya::programs::{links::FdLink, xdp::XdpMode, TcAttachType};
use ipip_common::{
    TunnelConfig, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP_DECAP, PROG_XDP_LAN,
    TUNNEL_FLAG_DECAP_TC, TUNNEL_FLAG_XDP_GENERIC,
};

use super::{prepare::Prepared, XdpModeArg};
use crate::{
    datapath::Datapath,
    hook::{self, Hook},
    netif::Link,
    pins::{LINK_TC_EGRESS, LINK_TC_INGRESS, LINK_XDP, LINK_XDP_LAN_PREFIX},
};

/// The loaded data path and what the report says about it.
pub(super) struct Installed {
    pub(super) dp: Datapath,
    /// The tunnel settings as written to the config map so far.
    pub(super) tunnel: TunnelConfig,
    pub(super) decap: String,
    pub(super) decap_reason: String,
    pub(super) lans: Vec<String>,
}

pub(super) fn install(p: &Prepared, mode: XdpModeArg) -> Result<Installed> {
    let iface = &p.link.name;
    let mut dp = Datapath::load(p.plan.capacity)?;
    dp.fill(&p.plan)?;
    p.staging
        .create()
        .with_context(|| format!("creating pin folder {}", p.staging.path.display()))?;
    // Section maps (.rodata, .bss) are held by the programs themselves and can't be pinned
    // under a dotted name; every named map is pinned.
    for (name, map) in dp.ebpf.maps().filter(|(n, _)| !n.starts_with('.')) {
        map.pin(p.staging.map(name))
            .with_context(|| format!("pinning map {name}"))?;
    }
    dp.xdp()?
        .pin(p.staging.prog(PROG_XDP_DECAP))
        .context("pinning the XDP program")?;
    dp.tc()?
        .pin(p.staging.prog(PROG_TC_EGRESS))
        .context("pinning the TC egress program")?;
    dp.tc_decap()?
        .pin(p.staging.prog(PROG_TC_INGRESS))
        .context("pinning the TC ingress program")?;

    let mut tunnel = p.plan.tunnel;
    let xdp_pin = p.staging.link(LINK_XDP);
    let mut decap_reason = p.choice.why.clone();
    let xdp_how = match p.choice.hook {
        Hook::Xdp => Some(attach_xdp_to(dp.xdp()?, &p.link, mode, &xdp_pin)?),
        Hook::Tc => None,
        Hook::NativeXdpElseTc => {
            match attach_xdp_to(dp.xdp()?, &p.link, XdpModeArg::Native, &xdp_pin) {
                Ok(how) => Some(how),
                Err(e) => {
                    decap_reason = hook::fallback_reason(iface, &e);
                    None
                }
            }
        }
    };
    let decap = match xdp_how {
        Some(how) => {
            if how == "generic" {
                tunnel.flags |= TUNNEL_FLAG_XDP_GENERIC;
                dp.set_tunnel(&tunnel)?;
            }
            format!("xdp ({how})")
        }
        None => {
            tunnel.flags |= TUNNEL_FLAG_DECAP_TC;
            dp.set_tunnel(&tunnel)?;
            "tc".to_string()
        }
    };
    log::info!("{iface}: decap {decap}: {decap_reason}");
    // TC ingress runs with either hook: it decapsulates with `--decap tc`, and reassembles
    // outer fragments (which XDP passes up) in both cases.
    attach_tc(dp.tc_decap()?, p, TcAttachType::Ingress, LINK_TC_INGRESS)?;
    attach_tc(dp.tc()?, p, TcAttachType::Egress, LINK_TC_EGRESS)?;
    let mut lans = Vec::new();
    if !p.lans.is_empty() {
        let mut devs = vec![p.link.index];
        devs.extend(p.lans.iter().map(|l| l.index));
        dp.allow_forwarding_to(&devs)?;
        let macs: Vec<(u32, [u8; 6])> = p.lans.iter().map(|l| (l.index, l.mac)).collect();
        dp.accept_frames_to(&macs)?;
        dp.xdp_lan()?
            .pin(p.staging.prog(PROG_XDP_LAN))
            .context("pinning the LAN XDP program")?;
        for lan in &p.lans {
            let how = attach_xdp_to(
                dp.xdp_lan()?,
                lan,
                mode,
                &p.staging
                    .link(&format!("{LINK_XDP_LAN_PREFIX}{}", lan.name)),
            )?;
            lans.push(format!("{} (xdp {how})", lan.name));
        }
    }
    Ok(Installed {
        dp,
        tunnel,
        decap,
        decap_reason,
        lans,
    })
}

fn attach_tc(
    prog: &mut aya::programs::SchedClassifier,
    p: &Prepared,
    at: TcAttachType,
    pin: &str,
) -> Result<()> {
    let iface = &p.link.name;
    let id = prog
        .attach(iface, at)
        .with_context(|| format!("attaching the TC {at:?} program to {iface}"))?;
    let link: FdLink = prog.take_link(id)?.try_into().map_err(|_| {
        anyhow!("the kernel attached TC through netlink, not a TCX link: ipip needs Linux >= 6.6")
    })?;
    link.pin(p.staging.link(pin))
        .with_context(|| format!("pinning the TC {at:?} link"))?;
    Ok(())
}

/// Attaches `prog` to `link` as a pinned bpf_link, native first when `mode` allows; returns
/// the mode it got.
fn attach_xdp_to(
    prog: &mut aya::programs::Xdp,
    link: &Link,
    mode: XdpModeArg,
    pin: &Path,
) -> Result<&'static str> {
    let iface = &link.name;
    let tries: &[(XdpMode, &'static str)] = match mode {
        XdpModeArg::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
        XdpModeArg::Native => &[(XdpMode::Driver, "native")],
        XdpModeArg::Generic => &[(XdpMode::Skb, "generic")],
    };
    let mut last = None;
    for (m, label) in tries {
        match prog.attach_to_if_index(link.index, *m) {
            Ok(id) => {
                let fd_link: FdLink = prog.take_link(id)?.try_into().map_err(|_| {
                    anyhow!("XDP on {iface} attached through legacy netlink instead of a bpf_link; it could not be pinned and has been removed")
                })?;
                fd_link
                    .pin(pin)
                    .with_context(|| format!("pinning the XDP link of {iface}"))?;
                return Ok(label);
            }
            Err(e) => {
                log::info!("{label} XDP on {iface} failed: {e}");
                last = Some(e);
            }
        }
    }
    let e = last.expect("at least one mode is tried");
    Err(anyhow::Error::new(e).context(format!(
        "attaching XDP to {iface} (is another XDP program attached? see `ip link show {iface}`)"
    )))
}
