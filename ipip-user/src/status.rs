//! What is attached in this namespace, and whether it is intact.

use std::{fmt::Write as _, net::Ipv4Addr};

use anyhow::{Context as _, Result};

use ipip_common::{TUNNEL_FLAG_LOG_DROPS, TUNNEL_FLAG_XDP_GENERIC};

use crate::{
    netif::{route_prefix, Netlink},
    pins::{
        is_stale, lan_links, link_ifindex, orphaned, peers_in_use, placement, programs,
        read_routes, read_tunnel, PinDir, Placement, Program, LINK_TC_EGRESS, LINK_TC_INGRESS,
        LINK_XDP,
    },
};

#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub interface: String,
    pub netns: u64,
    pub pin_dir: String,
    pub ifindex: u32,
    /// One word: ok, incomplete, stale, renamed, moved, gone, orphaned.
    pub health: &'static str,
    /// `ok`, or what is wrong and the command that repairs it.
    pub state: String,
    pub local: String,
    pub address: Option<String>,
    /// Peers configured now.
    pub peers: u32,
    /// Routes of this attachment in the kernel now.
    pub routes_installed: usize,
    /// `xdp` or `tc`: where decapsulation runs.
    pub decap: &'static str,
    /// `native` or `generic` with XDP decap; `null` with TC (attached as TCX links).
    pub xdp_mode: Option<&'static str>,
    /// Tunnel MTU toward the peers (underlay MTU − 20); `null` with no peer.
    pub tunnel_mtu: Option<u16>,
    /// The pinned bpf_links (each holds one program on one interface and hook).
    pub links: Vec<String>,
    /// LAN interfaces with the XDP fast path.
    pub lans: Vec<String>,
    /// Drop records on: an `ipip-user log` is reading.
    pub drop_log: bool,
    /// The pinned programs, as the kernel reports them.
    pub programs: Vec<Program>,
    /// Fleet mode: the peers learned from the routing table and the routes refused, as the
    /// `run` following it last wrote them.
    pub fleet: Option<serde_json::Value>,
}

/// Why this process can't see attachments at all, if it can't: bpffs hidden (`ip netns
/// exec` remounts /sys), or the root-only pin folder unreadable.
fn blind_spot() -> Option<String> {
    use crate::pins::{BPFFS, ROOT};
    if !crate::pins::is_bpffs(std::path::Path::new(BPFFS)) {
        return Some(format!(
            "{BPFFS} is not a BPF filesystem here, so attachments can't be seen (under `ip netns exec`, /sys is remounted and bpffs hidden): use `ipip-user --netns NAME status` or `nsenter --net=/run/netns/NAME`"
        ));
    }
    match std::fs::read_dir(ROOT) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(format!(
            "{ROOT} is readable by root only: status needs {}",
            crate::privileges::NEEDED
        )),
        _ => None,
    }
}

pub async fn collect() -> Result<Vec<Status>> {
    if let Some(why) = blind_spot() {
        anyhow::bail!(why);
    }
    let nl = Netlink::open()?;
    let mut out = Vec::new();
    for dir in PinDir::list()? {
        out.push(
            one(&nl, &dir)
                .await
                .with_context(|| format!("reading {}", dir.path.display()))?,
        );
    }
    for dir in orphaned().context("listing the pin folders of other namespaces")? {
        let mut s = blank(&dir);
        s.health = "orphaned";
        s.state = format!(
            "orphaned: network namespace {} is gone (deleted without detach), and its interface, routes and address with it; `ipip-user prune` removes these pins",
            dir.netns
        );
        s.programs = programs(&dir);
        out.push(s);
    }
    Ok(out)
}

fn blank(dir: &PinDir) -> Status {
    Status {
        interface: dir.interface.clone(),
        netns: dir.netns,
        pin_dir: dir.path.display().to_string(),
        ifindex: 0,
        health: "incomplete",
        state: String::new(),
        local: String::new(),
        address: None,
        peers: 0,
        routes_installed: 0,
        decap: if dir.link(LINK_XDP).exists() {
            "xdp"
        } else {
            "tc"
        },
        lans: lan_links(dir),
        xdp_mode: None,
        tunnel_mtu: None,
        links: std::fs::read_dir(dir.path.join("links"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        drop_log: false,
        programs: Vec::new(),
        fleet: std::fs::read_to_string(crate::fleet::record_path(dir))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok()),
    }
}

async fn one(nl: &Netlink, dir: &PinDir) -> Result<Status> {
    let mut s = blank(dir);
    s.programs = programs(dir);
    let iface = &dir.interface;
    let t = match read_tunnel(dir) {
        Ok(t) => t,
        Err(e) => {
            s.state = format!("incomplete: {e:#}; run `ipip-user detach {iface}`");
            return Ok(s);
        }
    };
    s.ifindex = t.ifindex;
    s.local = Ipv4Addr::from(t.local).to_string();
    s.address = (t.address != [0; 4])
        .then(|| format!("{}/{}", Ipv4Addr::from(t.address), t.address_prefix_len));
    s.drop_log = t.flags & TUNNEL_FLAG_LOG_DROPS != 0;
    s.xdp_mode = (s.decap == "xdp").then_some(if t.flags & TUNNEL_FLAG_XDP_GENERIC != 0 {
        "generic"
    } else {
        "native"
    });
    (s.peers, s.tunnel_mtu) = peers_in_use(dir, t.peer_count).unwrap_or((t.peer_count, None));
    if is_stale(dir) {
        s.health = "stale";
        s.state = format!("stale: left by a deleted network namespace whose inode this one reuses; `ipip-user detach {iface}` removes it");
        return Ok(s);
    }
    // Only the routes this attachment recorded as its own.
    let ours = read_routes(dir).unwrap_or_default();
    s.routes_installed = nl
        .our_routes(t.ifindex)
        .await?
        .iter()
        .filter(|r| route_prefix(r).is_some_and(|p| ours.contains(&p)))
        .count();
    let name_here = nl.link_by_index(t.ifindex).await?.map(|l| l.name);
    let linked = link_ifindex(&dir.link(LINK_TC_INGRESS));
    (s.health, s.state) = match placement(iface, t.ifindex, linked, name_here.as_deref()) {
        Placement::Here if dir.link(LINK_TC_INGRESS).exists() && dir.link(LINK_TC_EGRESS).exists() => {
            ("ok", "ok".to_string())
        }
        Placement::Here => (
            "incomplete",
            format!("programs missing: run `ipip-user detach {iface}` and attach again"),
        ),
        Placement::Renamed(now) => (
            "renamed",
            format!("renamed: {iface} (ifindex {}) is now called {now} and still runs this attachment; `ipip-user detach {iface}` removes it, then attach {now}", t.ifindex),
        ),
        Placement::Moved => (
            "moved",
            format!("moved: {iface} left this network namespace with the programs still on it (see `ip -all netns exec ip link`); `ipip-user detach {iface}` here removes them"),
        ),
        Placement::Gone => (
            "gone",
            format!("interface gone: {iface} was deleted, and its routes and address with it; `ipip-user detach {iface}` removes the pins"),
        ),
    };
    Ok(s)
}

pub fn render(all: &[Status]) -> String {
    if all.is_empty() {
        return "nothing attached in this network namespace\n".into();
    }
    let mut o = String::new();
    for s in all {
        let decap = match (s.decap, s.xdp_mode) {
            ("xdp", Some(m)) => format!("xdp ({m})"),
            (d, _) => format!("{d} (tcx)"),
        };
        let _ = writeln!(
            o,
            "{}: {}  decap {decap}  fast path {}  local {}  tunnel address {}  tunnel MTU {}  peers {}  routes {}",
            s.interface,
            s.state,
            if s.lans.is_empty() { "off".to_string() } else { format!("on ({})", s.lans.join(", ")) },
            if s.local.is_empty() { "-" } else { &s.local },
            s.address.as_deref().unwrap_or("none"),
            s.tunnel_mtu.map_or_else(|| "-".to_string(), |m| m.to_string()),
            s.peers,
            s.routes_installed,
        );
        let progs: Vec<String> = s
            .programs
            .iter()
            .map(|p| match p.verified_insns {
                Some(n) => format!("{} id {} ({n} insns)", p.name, p.id),
                None => format!("{} id {}", p.name, p.id),
            })
            .collect();
        let _ = writeln!(
            o,
            "  programs {}",
            if progs.is_empty() {
                "none".into()
            } else {
                progs.join(", ")
            }
        );
        let _ = writeln!(
            o,
            "  links {}  pins {}",
            if s.links.is_empty() {
                "none".into()
            } else {
                s.links.join(", ")
            },
            s.pin_dir
        );
        if let Some(f) = &s.fleet {
            let names: Vec<&str> = f["learned_peers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str())
                .collect();
            let _ = writeln!(
                o,
                "  fleet: {} learned peer(s) {}; {} route(s) refused (static peers win)",
                names.len(),
                names.join(", "),
                f["refused"].as_array().map_or(0, Vec::len)
            );
        }
    }
    o
}
