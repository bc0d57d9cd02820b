//! attach and detach: the lifecycle of one attachment, in named steps. Attach validates
//! everything it can before touching the system ([`prepare`]), builds the data path in a
//! staging pin folder ([`install`]), makes its changes outside the pins, each recorded before
//! it is made ([`network`]), and then makes the attachment visible under its name with one
//! rename (record); on any failure it undoes what it did ([`teardown`], the rollback). Detach
//! removes exactly what attach recorded.

mod install;
mod network;
mod prepare;
mod teardown;

use std::{collections::HashSet, net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;

pub use crate::cli::{DecapArg, XdpModeArg};
use crate::{
    config::Capacity,
    lock,
    netif::Netlink,
    pins::{ensure_bpffs, PinDir},
};
pub use prepare::{next_hop, refuse_routes_over_local};
pub use teardown::{detach, Detached};

/// Announces a lifecycle step (`RUST_LOG=ipip_user::step=debug` shows them): the kill tests
/// name the step each kill landed in from these lines.
pub fn step(command: &str, name: &str) {
    log::debug!(target: "ipip_user::step", "{command}: {name}");
}

/// What attach did, for the report.
#[derive(Debug, serde::Serialize)]
pub struct Attached {
    pub interface: String,
    pub pin_dir: String,
    /// `xdp (native)`, `xdp (generic)` or `tc`.
    pub decap: String,
    /// Why that hook: the flag that asked for it, or what `--decap auto` saw.
    pub decap_reason: String,
    /// LAN interfaces with the fast path, and their XDP mode.
    pub lans: Vec<String>,
    pub local: Ipv4Addr,
    pub address: Option<String>,
    pub address_added: bool,
    pub tunnel_mtu: u32,
    pub peers: usize,
    pub routes: Vec<String>,
    /// What the peer and route maps were sized for.
    pub capacity: Capacity,
    /// Things that work but deserve a look (routes of someone else's without the tunnel MTU).
    pub warnings: Vec<String>,
}

/// What to attach, from the command line.
pub struct AttachRequest<'a> {
    pub interface: &'a str,
    pub peers: &'a Path,
    pub decap: DecapArg,
    pub xdp_mode: XdpModeArg,
    /// LAN interfaces for the fast path, besides those the peers file names.
    pub lans: &'a [String],
}

pub async fn attach(req: &AttachRequest<'_>) -> Result<Attached> {
    let (interface, mode) = (req.interface, req.xdp_mode);
    // Held to the end: a concurrent attach or detach of this interface waits, then sees
    // what this one did, and never undoes it.
    let _lock = lock::lock(&PinDir::for_interface(interface)?)?;
    let nl = Netlink::open()?;
    step("attach", "prepare");
    let prepared = prepare::prepare(&nl, req).await?;
    ensure_bpffs()?;
    let mut made = Made::default();
    let done = async {
        step("attach", "install");
        let mut installed = install::install(&prepared, mode)?;
        step("attach", "network");
        let routes = network::configure(&nl, &prepared, &mut installed, &mut made).await?;
        step("attach", "record");
        // Complete: only now does the attachment appear under its name.
        prepared.dir.commit(&prepared.staging).with_context(|| {
            format!(
                "renaming {} to {}",
                prepared.staging.path.display(),
                prepared.dir.path.display()
            )
        })?;
        Ok::<_, anyhow::Error>((installed, routes))
    }
    .await;
    let (installed, routes) = match done {
        Ok(done) => done,
        Err(e) => {
            step("attach", "rollback");
            log::debug!("attach failed, rolling back: {e:#}");
            let added = prepared.plan.address.filter(|_| made.address);
            let cleanup = teardown::teardown(
                &nl,
                &prepared.staging,
                prepared.link.index,
                added,
                made.fwd_use_pmtu,
                Some(&made.routes),
            )
            .await;
            return match cleanup {
                Ok(()) => Err(e.context(format!("attach to {interface} failed; nothing was left behind"))),
                Err(c) => Err(e.context(format!(
                    "attach to {interface} failed, and cleaning up failed too ({c:#}); run `ipip-user detach {interface}`"
                ))),
            };
        }
    };
    let p = &prepared;
    let warnings = unsized_route_warnings(&nl, p).await;
    Ok(Attached {
        interface: p.link.name.clone(),
        pin_dir: p.dir.path.display().to_string(),
        decap: installed.decap,
        decap_reason: installed.decap_reason,
        lans: installed.lans,
        local: Ipv4Addr::from(p.plan.tunnel.local),
        address: p.plan.address.map(|a| a.to_string()),
        address_added: made.address,
        tunnel_mtu: p.plan.tunnel_mtu,
        peers: p.plan.peers.len(),
        routes,
        capacity: p.plan.capacity,
        warnings,
    })
}

/// Routes someone else installed into the tunnel's prefixes without the tunnel MTU: packets
/// to them reach the tunnel unsized (see `doctor`'s `route mtu`). A failed lookup only costs
/// the warning.
async fn unsized_route_warnings(nl: &Netlink, p: &prepare::Prepared) -> Vec<String> {
    let Ok(foreign) = nl.foreign_routes(p.link.index).await else {
        return Vec::new();
    };
    let prefixes: Vec<ipnet::Ipv4Net> = p
        .plan
        .peers
        .iter()
        .flat_map(|peer| peer.routes.iter().copied())
        .collect();
    let mtu = p.plan.tunnel_mtu;
    crate::netif::unsized_routes(&foreign, &prefixes, mtu)
        .into_iter()
        .map(|r| {
            format!(
                "{}: packets over {mtu} bytes to it reach the tunnel unsized (those without DF lose one per destination); give it `mtu {mtu}`: {}",
                r.describe(&p.link.name),
                r.fix(&p.link.name, mtu)
            )
        })
        .collect()
}

/// Route requests kept in flight on the netlink socket: the kernel handles them one by one,
/// but waiting for each answer before sending the next would cost a round trip per route.
const NETLINK_IN_FLIGHT: usize = 256;

/// What an attach changed outside its pins, for the rollback to undo.
#[derive(Default)]
struct Made {
    address: bool,
    fwd_use_pmtu: bool,
    /// Routes this attach installed: the rollback removes these and no others.
    routes: HashSet<Ipv4Net>,
}

fn ip_forwarding() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1")
}
