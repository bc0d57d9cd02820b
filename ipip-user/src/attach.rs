//! attach and detach: the lifecycle of one attachment. Attach validates everything it can
//! before touching the system, and on any later failure undoes what it did; detach removes
//! exactly what attach made.

use std::{collections::HashSet, net::Ipv4Addr, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, LpmTrie, MapData},
    programs::{links::FdLink, xdp::XdpMode, TcAttachType},
};
use futures::StreamExt as _;
use ipip_common::{
    TunnelConfig, MAP_CONFIG, MAP_ROUTES, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP_DECAP,
    PROG_XDP_LAN, TUNNEL_FLAG_ADDRESS_ADDED, TUNNEL_FLAG_DECAP_TC, TUNNEL_FLAG_FAST_PATH,
    TUNNEL_FLAG_FWD_USE_PMTU,
};
use ipnet::Ipv4Net;

use crate::{
    config::{Capacity, PeersFile},
    datapath::Datapath,
    forward_pmtu,
    hook::{self, Choice, DecapArg, Hook},
    lock,
    netif::{self, route_prefix, Link, NetError, Netlink},
    pins::{ensure_bpffs, netns_cookie, PinDir},
    plan::{Plan, Underlay},
};

/// Which XDP mode to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    Auto,
    /// Driver mode only; fail if the driver can't.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
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
}

/// Everything attach resolved before making any change.
struct Prepared {
    link: Link,
    dir: PinDir,
    /// Where install pins everything before renaming it to `dir`.
    staging: PinDir,
    plan: Plan,
    /// Next hop toward each peer's remote, by peer index.
    next_hops: Vec<Option<Ipv4Addr>>,
    address_present: bool,
    /// LAN interfaces that get the XDP fast path.
    lans: Vec<Link>,
    /// Where decapsulation runs, and why.
    choice: Choice,
}

async fn prepare(
    nl: &Netlink,
    interface: &str,
    peers_path: &Path,
    extra_lans: &[String],
    decap: DecapArg,
    xdp_mode: XdpModeArg,
) -> Result<Prepared> {
    let file = PeersFile::load(peers_path)?;
    let link = nl.link(interface).await?;
    if link.loopback {
        bail!("{interface} is the loopback device: nothing sent there reaches a peer. Attach to the interface that faces the peers (see `ip route get <peer remote>`)");
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
        let lan = nl
            .link(name)
            .await
            .with_context(|| format!("LAN interface {name}"))?;
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
    let hop = nl
        .route_get(peer.remote)
        .await
        .with_context(|| format!("peer {} ({}) is unreachable", peer.name, peer.remote))?;
    if hop.oif != link.index {
        let via = nl
            .link_by_index(hop.oif)
            .await?
            .map_or_else(|| format!("interface #{}", hop.oif), |l| l.name);
        bail!(
            "peer {} ({}) is reached through {via}, not {interface}: attach to {via}, or fix the underlay route",
            peer.name,
            peer.remote
        );
    }
    Ok(hop.gateway)
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
    let (interface, decap, mode) = (req.interface, req.decap, req.xdp_mode);
    // Held to the end: a concurrent attach or detach of this interface waits, then sees
    // what this one did, and never undoes it.
    let _lock = lock::lock(&PinDir::for_interface(interface)?)?;
    let nl = Netlink::open()?;
    let prepared = prepare(&nl, interface, req.peers, req.lans, decap, mode).await?;
    ensure_bpffs()?;
    let mut made = Made::default();
    match install(&nl, &prepared, mode, &mut made).await {
        Ok(attached) => Ok(attached),
        Err(e) => {
            log::debug!("attach failed, rolling back: {e:#}");
            let added = prepared.plan.address.filter(|_| made.address);
            let cleanup = teardown(
                &nl,
                &prepared.staging,
                prepared.link.index,
                added,
                made.fwd_use_pmtu,
                Some(&made.routes),
            )
            .await;
            match cleanup {
                Ok(()) => Err(e.context(format!("attach to {interface} failed; nothing was left behind"))),
                Err(c) => Err(e.context(format!(
                    "attach to {interface} failed, and cleaning up failed too ({c:#}); run `ipip-user detach {interface}`"
                ))),
            }
        }
    }
}

/// Route requests kept in flight on the netlink socket: the kernel handles them one by one,
/// but waiting for each answer before sending the next would cost a round trip per route.
const NETLINK_IN_FLIGHT: usize = 256;
/// Above this many routes attach says what it is doing while it does it.
const ROUTES_WORTH_A_NOTE: usize = 10_000;

/// What an attach changed outside its pins, for the rollback to undo.
#[derive(Default)]
struct Made {
    address: bool,
    fwd_use_pmtu: bool,
    /// Routes this attach installed: the rollback removes these and no others.
    routes: HashSet<Ipv4Net>,
}

async fn install(
    nl: &Netlink,
    p: &Prepared,
    mode: XdpModeArg,
    made: &mut Made,
) -> Result<Attached> {
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
        Some(how) => format!("xdp ({how})"),
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

    let src = p.plan.address.map(|a| a.addr());
    if let Some(addr) = p.plan.address.filter(|_| !p.address_present) {
        // Recorded before it is made: killed in between, the record makes detach remove it
        // (an address already gone is fine to remove).
        tunnel.flags |= TUNNEL_FLAG_ADDRESS_ADDED;
        dp.set_tunnel(&tunnel)?;
        made.address = true;
        nl.add_address(p.link.index, addr).await?;
    }
    // A gateway's forwarding path must obey the PMTU the data path learns (see forward_pmtu).
    if ip_forwarding() && forward_pmtu::enable()? {
        made.fwd_use_pmtu = true;
        tunnel.flags |= TUNNEL_FLAG_FWD_USE_PMTU;
        dp.set_tunnel(&tunnel)?;
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
    // Complete: only now does the attachment appear under its name.
    p.dir.commit(&p.staging).with_context(|| {
        format!(
            "renaming {} to {}",
            p.staging.path.display(),
            p.dir.path.display()
        )
    })?;
    Ok(Attached {
        interface: iface.clone(),
        pin_dir: p.dir.path.display().to_string(),
        decap,
        decap_reason,
        lans,
        local: Ipv4Addr::from(p.plan.tunnel.local),
        address: p.plan.address.map(|a| a.to_string()),
        address_added: made.address,
        tunnel_mtu: p.plan.tunnel_mtu,
        peers: p.plan.peers.len(),
        routes,
        capacity: p.plan.capacity,
    })
}

/// Pin names of the links: XDP (with `--decap xdp`), TC ingress (always: decapsulation with
/// `--decap tc`, reassembly of outer fragments either way) and TC egress.
pub const LINK_XDP: &str = "xdp";
pub const LINK_TC_INGRESS: &str = "tc_ingress";
pub const LINK_TC_EGRESS: &str = "tc_egress";
/// One link per LAN interface: `xdp_lan_<interface>`.
pub const LINK_XDP_LAN_PREFIX: &str = "xdp_lan_";

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

fn ip_forwarding() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1")
}

/// Removes the routes ours (tagged with our protocol on `ifindex` and in `ours`: what a
/// failed attach installed, or the attachment's route map), the tunnel address if attach
/// added it, and every pin. Used by detach and by a failed attach. Routes of someone else's
/// (another attachment's, the admin's own `proto 156`) stay.
async fn teardown(
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
}

pub async fn detach(interface: &str) -> Result<Detached> {
    let dir = PinDir::for_interface(interface)?;
    let _lock = lock::lock(&dir)?;
    let nl = Netlink::open()?;
    let staging = dir.staging();
    let interrupted = staging.exists();
    if interrupted {
        log::warn!("{interface}: cleaning up after an interrupted attach");
        clean(&nl, &staging).await?;
    }
    if !dir.exists() {
        if interrupted {
            return Ok(Detached {
                interface: interface.to_string(),
                routes_removed: 0,
                address_removed: None,
                interrupted_attach_removed: true,
            });
        }
        bail!("{interface} is not attached in this network namespace (nothing under {}); `ipip-user status` lists what is", dir.path.display());
    }
    let mut done = clean(&nl, &dir).await?;
    done.interrupted_attach_removed = interrupted;
    Ok(done)
}

/// Removes one attachment (or what an interrupted attach left in its staging folder): its
/// routes, the address if attach added it, the sysctl hold, and every pin.
async fn clean(nl: &Netlink, dir: &PinDir) -> Result<Detached> {
    let interface = dir.interface.clone();
    let nothing = |interface| Detached {
        interface,
        routes_removed: 0,
        address_removed: None,
        interrupted_attach_removed: false,
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
    })
}

/// Whether an attachment's pins were left by a deleted namespace that had the same inode as
/// this one (inodes are reused at once; the namespace cookie is not).
pub fn is_stale(dir: &PinDir) -> bool {
    match (read_tunnel(dir), netns_cookie()) {
        (Ok(t), Ok(cookie)) => t.netns_cookie != cookie,
        _ => false,
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

/// The tunnel settings of an attachment, from its pinned config map.
/// The prefixes in an attachment's pinned route map: the routes it installed.
pub fn read_routes(dir: &PinDir) -> Result<HashSet<Ipv4Net>> {
    let data = MapData::from_pin(dir.map(MAP_ROUTES))?;
    let map: LpmTrie<MapData, [u8; 4], u32> = LpmTrie::try_from(aya::maps::Map::LpmTrie(data))?;
    let mut out = HashSet::new();
    for key in map.keys() {
        let key = key?;
        out.insert(Ipv4Net::new(
            Ipv4Addr::from(key.data()),
            key.prefix_len() as u8,
        )?);
    }
    Ok(out)
}

pub fn read_tunnel(dir: &PinDir) -> Result<TunnelConfig> {
    let data = MapData::from_pin(dir.map(MAP_CONFIG))?;
    let map: Array<MapData, TunnelConfig> = Array::try_from(aya::maps::Map::Array(data))?;
    Ok(map.get(&0, 0)?)
}

/// Sets or clears `TUNNEL_FLAG_*` bits in an attachment's pinned config map.
pub fn set_tunnel_flags(dir: &PinDir, flags: u32, on: bool) -> Result<()> {
    let data = MapData::from_pin(dir.map(MAP_CONFIG))?;
    let mut map: Array<MapData, TunnelConfig> = Array::try_from(aya::maps::Map::Array(data))?;
    let mut t = map.get(&0, 0)?;
    if on {
        t.flags |= flags;
    } else {
        t.flags &= !flags;
    }
    map.set(0, t, 0)?;
    Ok(())
}
