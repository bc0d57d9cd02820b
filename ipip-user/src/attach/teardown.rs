//! Removing an attachment: the rollback of a failed attach, detach, and the cleanup of what
//! an interrupted attach left. Only what the attachment recorded as its own is removed.

use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::{bail, Context as _, Result};
use futures::StreamExt as _;
use ipip_common::{MAP_CONFIG, TUNNEL_FLAG_ADDRESS_ADDED, TUNNEL_FLAG_FWD_USE_PMTU};
use ipnet::Ipv4Net;

use super::NETLINK_IN_FLIGHT;
use crate::{
    forward_pmtu, lock,
    netif::{route_prefix, NetError, Netlink},
    pins::{is_stale, read_routes, read_tunnel, PinDir},
};

/// Removes the routes ours (tagged with our protocol on `ifindex` and in `ours`: what a
/// failed attach installed, or the attachment's route map), the tunnel address if attach
/// added it, and every pin. Used by detach and by a failed attach. Routes of someone else's
/// (another attachment's, the admin's own `proto 156`) stay.
pub(super) async fn teardown(
    nl: &Netlink,
    dir: &PinDir,
    ifindex: u32,
    added_address: Option<ipnet::Ipv4Net>,
    release_fwd_pmtu: bool,
    ours: Option<&HashSet<Ipv4Net>>,
) -> Result<()> {
    let mut first_err = None;
    if release_fwd_pmtu {
        if let Err(e) = forward_pmtu::release(dir) {
            first_err.get_or_insert(e);
        }
    }
    super::step("teardown", "routes");
    let tagged = nl.our_routes(ifindex).await?;
    let mine: Vec<_> = match ours {
        Some(set) => tagged
            .into_iter()
            .filter(|r| route_prefix(r).is_some_and(|p| set.contains(&p)))
            .collect(),
        None => {
            if !tagged.is_empty() {
                log::warn!(
                    "the route map is unreadable, so no route is known to be ours: check `ip route show proto 156 dev <interface>` and remove ours by hand"
                );
            }
            Vec::new()
        }
    };
    let results: Vec<Result<(), NetError>> =
        futures::stream::iter(mine.into_iter().map(|r| nl.del_route(r)))
            .buffer_unordered(NETLINK_IN_FLIGHT)
            .collect()
            .await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        first_err.get_or_insert(anyhow::Error::new(e));
    }
    super::step("teardown", "address");
    if let Some(addr) = added_address {
        match nl.del_address(ifindex, addr).await {
            Err(NetError::Netlink {
                source: rtnetlink::Error::NetlinkError(e),
                ..
            }) if e.raw_code() == -libc::EADDRNOTAVAIL || e.raw_code() == -libc::ENODEV => {
                log::info!("address {addr} was already removed (or its interface is gone)");
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::Error::new(e));
            }
            Ok(()) => {}
        }
    }
    super::step("teardown", "pins");
    if let Err(e) = dir.remove() {
        first_err.get_or_insert(
            anyhow::Error::new(e).context(format!("removing {}", dir.path.display())),
        );
    }
    first_err.map_or(Ok(()), Err)
}

#[derive(Debug, serde::Serialize)]
pub struct Detached {
    pub interface: String,
    pub routes_removed: usize,
    pub address_removed: Option<String>,
    /// What an interrupted attach had left was cleaned up too.
    pub interrupted_attach_removed: bool,
    /// What a killed detach had left (pins being removed) was removed.
    pub interrupted_detach_finished: bool,
}

pub async fn detach(interface: &str) -> Result<Detached> {
    let dir = PinDir::for_interface(interface)?;
    let held = lock::lock(&dir)?;
    super::step("detach", "prepare");
    let nl = Netlink::open()?;
    let staging = dir.staging();
    // A detach killed while its pins went: its routes and address are gone already.
    let interrupted_detach = dir
        .finish_removal()
        .with_context(|| format!("finishing an interrupted detach of {interface}"))?;
    let interrupted = staging.exists();
    if interrupted {
        log::warn!("{interface}: cleaning up after an interrupted attach");
        clean(&nl, &staging).await?;
    }
    if !dir.exists() {
        if interrupted || interrupted_detach {
            return Ok(Detached {
                interface: interface.to_string(),
                routes_removed: 0,
                address_removed: None,
                interrupted_attach_removed: interrupted,
                interrupted_detach_finished: interrupted_detach,
            });
        }
        bail!("{interface} is not attached in this network namespace (nothing under {}); `ipip-user status` lists what is", dir.path.display());
    }
    let mut done = clean(&nl, &dir).await?;
    let _ = std::fs::remove_file(crate::fleet::record_path(&dir));
    held.remove_file();
    done.interrupted_attach_removed = interrupted;
    done.interrupted_detach_finished = interrupted_detach;
    Ok(done)
}

/// Removes one attachment (or what an interrupted attach left in its staging folder): its
/// routes, the address if attach added it, the sysctl hold, and every pin.
pub(super) async fn clean(nl: &Netlink, dir: &PinDir) -> Result<Detached> {
    let interface = dir.interface.clone();
    let nothing = |interface| Detached {
        interface,
        routes_removed: 0,
        address_removed: None,
        interrupted_attach_removed: false,
        interrupted_detach_finished: false,
    };
    if is_stale(dir) {
        // Its namespace (and with it the interface, routes and address) is gone already.
        dir.remove()
            .with_context(|| format!("removing {}", dir.path.display()))?;
        return Ok(nothing(interface));
    }
    let tunnel = match read_tunnel(dir) {
        Ok(t) => t,
        // Pinned first of all: without it nothing outside the pins was made yet.
        Err(_)
            if dir
                .path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(crate::pins::STAGING_PREFIX)) =>
        {
            dir.remove()
                .with_context(|| format!("removing {}", dir.path.display()))?;
            return Ok(nothing(interface));
        }
        Err(e) => return Err(e.context(format!("reading {}", dir.map(MAP_CONFIG).display()))),
    };
    let ours = read_routes(dir).ok();
    let routes_removed = match &ours {
        Some(set) => nl
            .our_routes(tunnel.ifindex)
            .await?
            .iter()
            .filter(|r| route_prefix(r).is_some_and(|p| set.contains(&p)))
            .count(),
        None => 0,
    };
    let address = (tunnel.flags & TUNNEL_FLAG_ADDRESS_ADDED != 0).then(|| {
        ipnet::Ipv4Net::new(
            Ipv4Addr::from(tunnel.address),
            tunnel.address_prefix_len as u8,
        )
        .expect("prefix length was validated at attach")
    });
    teardown(
        nl,
        dir,
        tunnel.ifindex,
        address,
        tunnel.flags & TUNNEL_FLAG_FWD_USE_PMTU != 0,
        ours.as_ref(),
    )
    .await?;
    Ok(Detached {
        interface,
        routes_removed,
        address_removed: address.map(|a| a.to_string()),
        interrupted_attach_removed: false,
        interrupted_detach_finished: false,
    })
}
