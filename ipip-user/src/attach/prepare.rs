//! Attach step 1, prepare: read and check everything, resolve the interface, addresses and
//! next hops, choose the decap hook. Nothing on the system changes here.

use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Context as _, Result};
use ipip_common::{PROG_TC_INGRESS, TUNNEL_FLAG_FAST_PATH};

use super::{ip_forwarding, teardown::clean, AttachRequest, XdpModeArg};
use crate::{
    cli::DecapArg,
    config::PeersFile,
    hook::{self, Choice},
    netif::{self, Link, Netlink},
    pins::{is_stale, netns_cookie, read_tunnel, PinDir},
    plan::{Plan, Underlay},
};

/// Everything attach resolved before making any change.
pub(super) struct Prepared {
    pub(super) link: Link,
    pub(super) dir: PinDir,
    /// Where install pins everything before renaming it to `dir`.
    pub(super) staging: PinDir,
    pub(super) plan: Plan,
    /// Next hop toward each peer's remote, by peer index.
    pub(super) next_hops: Vec<Option<Ipv4Addr>>,
    pub(super) address_present: bool,
    /// LAN interfaces that get the XDP fast path.
    pub(super) lans: Vec<Link>,
    /// Where decapsulation runs, and why.
    pub(super) choice: Choice,
}

pub(super) async fn prepare(nl: &Netlink, req: &AttachRequest<'_>) -> Result<Prepared> {
    let (interface, peers_path, extra_lans) = (req.interface, req.peers, req.lans);
    let (decap, xdp_mode) = (req.decap, req.xdp_mode);
    let file = PeersFile::load(peers_path)?;
    let link = nl.link(interface).await?;
    if link.loopback {
        bail!("{interface} is the loopback device: nothing sent there reaches a peer. Attach to the interface that faces the peers (see `ip route get <peer remote>`)");
    }
    if let Some(kind) = &link.not_ethernet {
        bail!("{interface} has no Ethernet framing (link layer {kind}): ipip's programs read Ethernet frames. Attach to the Ethernet interface the traffic leaves by (see `ip route get <peer remote>`)");
    }
    let mut lans: Vec<Link> = Vec::new();
    for name in file.tunnel.lan.iter().chain(extra_lans) {
        if let Err(why) = crate::config::check_interface_name(name) {
            bail!("LAN interface {name:?}: {why}");
        }
        if name == interface {
            bail!("{name} is the underlay interface; a LAN interface must be another one");
        }
        if lans.iter().any(|l| &l.name == name) {
            continue;
        }
        let lan = match nl.link(name).await {
            Ok(lan) => lan,
            Err(crate::netif::NetError::NoSuchInterface(_)) => bail!(
                "LAN interface {name} does not exist in this network namespace (see `ip link`)"
            ),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("LAN interface {name}"))),
        };
        if lan.loopback {
            bail!("LAN interface {name} is the loopback device: a LAN interface faces the hosts the gateway forwards for");
        }
        if let Some(kind) = &lan.not_ethernet {
            bail!("LAN interface {name} has no Ethernet framing (link layer {kind}): the fast path forwards Ethernet frames");
        }
        lans.push(lan);
    }
    if !lans.is_empty() && decap == DecapArg::Tc {
        bail!("the XDP fast path (--lan) decapsulates with XDP: drop --decap tc, or drop the LAN interfaces");
    }
    let veths: Vec<String> = if lans.is_empty() {
        Vec::new()
    } else {
        lans.iter()
            .chain([&link])
            .filter(|l| l.veth)
            .map(|l| l.name.clone())
            .collect()
    };
    if !veths.is_empty() {
        // Both are silent losses otherwise: nothing on this host can count them.
        log::warn!(
            "fast path over veth ({}): the far ends must send full checksums (`ethtool -K <peer> tx off`) and receive with GRO on (`ethtool -K <peer> gro on`) or an XDP program, or redirected frames are lost",
            veths.join(", ")
        );
        // Measured by `cargo xtask bench` (gateway line): XDP on a veth costs its peer GSO/TSO.
        log::warn!(
            "on veth the fast path is slower than the kernel path (XDP turns GSO/TSO off on each veth's peer): attach without --lan unless the interfaces are NICs with native XDP"
        );
    }
    if !lans.is_empty() && !ip_forwarding() {
        log::warn!("net.ipv4.ip_forward is 0: this host forwards nothing, fast path or not (sysctl -w net.ipv4.ip_forward=1)");
    }
    let dir = PinDir::for_interface(interface)?;
    if dir
        .finish_removal()
        .with_context(|| format!("finishing an interrupted detach of {interface}"))?
    {
        log::warn!("{interface}: finished removing the pins of an interrupted detach");
    }
    if dir.staging().exists() {
        log::warn!("{interface}: cleaning up after an interrupted attach");
        clean(nl, &dir.staging()).await?;
    }
    if dir.exists() && is_stale(&dir) {
        log::warn!(
            "removing {}: left by a deleted network namespace whose inode this one reuses",
            dir.path.display()
        );
        dir.remove()
            .with_context(|| format!("removing stale pins {}", dir.path.display()))?;
    }
    if dir.exists() {
        bail!(
            "{interface} is already attached (pins in {}): nothing changed. Run `ipip-user detach {interface}` first, then attach again",
            dir.path.display()
        );
    }
    refuse_foreign_programs(&link)?;
    let addrs = nl.ipv4_addresses().await?;
    let local = match file.tunnel.local {
        Some(l) => {
            if !addrs.iter().any(|(a, _, _)| *a == l) {
                bail!(
                    "{}: [tunnel] local {l} is not an address of this host; the peer would send to an address nobody here owns (see `ip -4 addr`)",
                    peers_path.display()
                );
            }
            l
        }
        None => addrs
            .iter()
            .find(|(_, _, idx)| *idx == link.index)
            .map(|(a, _, _)| *a)
            .ok_or_else(|| {
                anyhow!(
                    "{interface} has no IPv4 address to use as the tunnel's underlay source: add one, or set [tunnel] local in {}",
                    peers_path.display()
                )
            })?,
    };
    // The file could only check an explicit [tunnel] local; the interface's own address must
    // stay outside the routes too, or the tunnel's packets would be routed into it.
    refuse_routes_over_local(&file, local, interface, peers_path)?;
    let mut next_hops = Vec::with_capacity(file.peers.len());
    for peer in &file.peers {
        next_hops.push(next_hop(nl, &link, peer).await?);
    }
    let address_present = file
        .tunnel
        .address
        .is_some_and(|n| addrs.iter().any(|(a, _, _)| *a == n.addr()));
    let mut plan = Plan::new(
        &file,
        &Underlay {
            ifindex: link.index,
            mtu: link.mtu,
            local,
        },
    );
    plan.tunnel.netns_cookie = netns_cookie()?;
    plan.tunnel.pmtu_expires_ns = mtu_expires_s() * 1_000_000_000;
    if !lans.is_empty() {
        plan.tunnel.flags |= TUNNEL_FLAG_FAST_PATH;
    }
    let choice = hook::choose(
        decap,
        &link,
        netif::driver(interface).as_deref(),
        !lans.is_empty(),
        xdp_mode != XdpModeArg::Auto,
    );
    Ok(Prepared {
        link,
        staging: dir.staging(),
        dir,
        plan,
        next_hops,
        address_present,
        choice,
        lans,
    })
}

/// The underlay next hop toward `peer` (`None`: on-link), which must be through `link`.
pub async fn next_hop(
    nl: &Netlink,
    link: &Link,
    peer: &crate::config::Peer,
) -> Result<Option<Ipv4Addr>> {
    let interface = &link.name;
    let hop = match nl.route_get(peer.remote).await {
        Ok(hop) => hop,
        // The kernel's own refusal says all there is to say (`ip route get` prints the same).
        Err(e) => match e.os_error() {
            Some(kernel) => bail!(
                "peer {} ({}) is unreachable: {}; add an underlay route to it out of {interface}",
                peer.name,
                peer.remote,
                strip_os_error(&kernel)
            ),
            None => {
                return Err(anyhow::Error::new(e).context(format!(
                    "peer {} ({}) is unreachable",
                    peer.name, peer.remote
                )))
            }
        },
    };
    if hop.oif != link.index {
        let via = nl
            .link_by_index(hop.oif)
            .await?
            .map_or_else(|| format!("interface #{}", hop.oif), |l| l.name);
        if via == "lo" {
            bail!(
                "peer {} ({}) is an address of this host (reached through lo): a peer's remote is the far end's underlay address",
                peer.name,
                peer.remote
            );
        }
        bail!(
            "peer {} ({}) is reached through {via}, not {interface}: attach to {via}, or fix the underlay route",
            peer.name,
            peer.remote
        );
    }
    Ok(hop.gateway)
}

/// "Network is unreachable" of "Network is unreachable (os error 101)".
fn strip_os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// How long learned path MTUs hold: this namespace's `net.ipv4.route.mtu_expires` (seconds),
/// the lifetime of the kernel's own PMTU exceptions, so that both age out together.
fn mtu_expires_s() -> u64 {
    const PATH: &str = "/proc/sys/net/ipv4/route/mtu_expires";
    match std::fs::read_to_string(PATH).map(|v| v.trim().parse::<u64>()) {
        Ok(Ok(s)) if s > 0 => s,
        other => {
            log::debug!("{PATH}: {other:?}; using the kernel default");
            crate::plan::DEFAULT_MTU_EXPIRES_S
        }
    }
}

/// Refuses an interface that already runs ipip's programs without an attachment of that name
/// here: renamed since its attachment (which still has the old name), or moved in from
/// another network namespace with its programs. A second set would process every packet twice.
fn refuse_foreign_programs(link: &Link) -> Result<()> {
    use aya::programs::{tc::TcAttachType, SchedClassifier};
    let iface = &link.name;
    for other in PinDir::list()? {
        if read_tunnel(&other).is_ok_and(|t| t.ifindex == link.index) && other.interface != *iface {
            bail!(
                "{iface} already runs ipip: it was attached as {old} and renamed since; run `ipip-user detach {old}` first, then attach {iface}",
                old = other.interface
            );
        }
    }
    let ours = SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
        .map(|(_, progs)| {
            progs
                .into_iter()
                .filter(|p| p.name_as_str() == Some(PROG_TC_INGRESS))
                .map(|p| p.id().to_string())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !ours.is_empty() {
        bail!(
            "{iface} already runs ipip's programs (TC ingress program id {}) that no attachment in this network namespace owns: it was attached in another namespace and moved here. Run `ipip-user detach {iface}` in the namespace it came from (its `ipip-user status` says \"moved\"), or, if that namespace is gone, `ipip-user prune`",
            ours.join(", ")
        );
    }
    Ok(())
}

/// The file could only check an explicit [tunnel] local; the interface's own address must
/// stay outside the routes too, or the tunnel's packets would be routed into it. Attach and
/// reload both check it.
pub fn refuse_routes_over_local(
    file: &PeersFile,
    local: Ipv4Addr,
    interface: &str,
    peers_path: &std::path::Path,
) -> Result<()> {
    if let Some((peer, net)) = file
        .peers
        .iter()
        .find_map(|p| p.routes.iter().find(|r| r.contains(&local)).map(|r| (p, r)))
    {
        bail!(
            "{}: route {net} of peer {} contains {local}, {interface}'s address that the tunnel sends from: the tunnel would route its own packets into itself",
            peers_path.display(),
            peer.name
        );
    }
    Ok(())
}
