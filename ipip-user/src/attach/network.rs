//! Attach step 3, network: the changes outside the pins (tunnel address, forwarding sysctl,
//! routes), each recorded in the staging folder's maps before it is made, so that detach or
//! the rollback removes exactly these.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use ipip_common::{TUNNEL_FLAG_ADDRESS_ADDED, TUNNEL_FLAG_FWD_USE_PMTU};
use ipnet::Ipv4Net;

use super::{install::Installed, ip_forwarding, prepare::Prepared, Made, NETLINK_IN_FLIGHT};
use crate::{forward_pmtu, netif::Netlink};

/// Above this many routes attach says what it is doing while it does it.
const ROUTES_WORTH_A_NOTE: usize = 10_000;

/// Returns the routes, as the report lists them.
pub(super) async fn configure(
    nl: &Netlink,
    p: &Prepared,
    i: &mut Installed,
    made: &mut Made,
) -> Result<Vec<String>> {
    let (iface, dp, tunnel) = (&p.link.name, &mut i.dp, &mut i.tunnel);
    let src = p.plan.address.map(|a| a.addr());
    if let Some(addr) = p.plan.address.filter(|_| !p.address_present) {
        // Recorded before it is made: killed in between, the record makes detach remove it
        // (an address already gone is fine to remove).
        tunnel.flags |= TUNNEL_FLAG_ADDRESS_ADDED;
        dp.set_tunnel(tunnel)?;
        made.address = true;
        nl.add_address(p.link.index, addr).await?;
    }
    // A gateway's forwarding path must obey the PMTU the data path learns (see forward_pmtu).
    // Only if it is off, and recorded before it is switched, like the address.
    if ip_forwarding() && !forward_pmtu::is_on()? {
        tunnel.flags |= TUNNEL_FLAG_FWD_USE_PMTU;
        dp.set_tunnel(tunnel)?;
        made.fwd_use_pmtu = true;
        forward_pmtu::turn_on()?;
    }
    // Via the underlay next hop toward the peer: the Ethernet header the kernel builds is then
    // already right for the encapsulated packet, on-link peer or behind a router.
    let wanted: Vec<(ipnet::Ipv4Net, Ipv4Addr, &str)> = p
        .plan
        .peers
        .iter()
        .zip(&p.next_hops)
        .flat_map(|(peer, hop)| {
            let gateway = hop.unwrap_or(Ipv4Addr::from(peer.config.remote));
            peer.routes
                .iter()
                .map(move |r| (*r, gateway, peer.name.as_str()))
        })
        .collect();
    if wanted.len() >= ROUTES_WORTH_A_NOTE {
        eprintln!("installing {} routes on {iface}...", wanted.len());
    }
    let results: Vec<(Ipv4Net, Result<()>)> =
        futures::stream::iter(wanted.iter().map(|(r, gateway, name)| async move {
            let done = nl
                .add_route(*r, Some(*gateway), p.link.index, src, p.plan.tunnel_mtu)
                .await
                .with_context(|| format!("installing the route for peer {name}"));
            (*r, done)
        }))
        .buffer_unordered(NETLINK_IN_FLIGHT)
        .collect()
        .await;
    let mut failed = None;
    for (r, done) in results {
        match done {
            Ok(()) => {
                made.routes.insert(r);
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let routes = wanted
        .iter()
        .map(|(r, gateway, name)| format!("{r} via {gateway} ({name})"))
        .collect();
    Ok(routes)
}
