//! What is attached in this namespace, and whether it is intact.

use std::fmt::Write as _;

use anyhow::Result;

use crate::{
    netif::Netlink,
    pins::{
        is_stale, lan_links, programs, read_tunnel, PinDir, Program, LINK_TC_EGRESS,
        LINK_TC_INGRESS, LINK_XDP,
    },
};

#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub interface: String,
    pub netns: u64,
    pub pin_dir: String,
    pub ifindex: u32,
    /// `ok`, or what is wrong.
    pub state: String,
    pub local: String,
    pub address: Option<String>,
    pub peers: u32,
    pub routes_installed: usize,
    /// `xdp` or `tc`: where decapsulation runs.
    pub decap: &'static str,
    /// LAN interfaces with the XDP fast path.
    pub lans: Vec<String>,
    /// Drop records on: an `ipip-user log` is reading.
    pub drop_log: bool,
    /// The pinned programs, as the kernel reports them.
    pub programs: Vec<Program>,
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
            "{ROOT} is readable by root only (the pins are root's): run `ipip-user status` as root"
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
        // TC ingress is always linked (it reassembles fragments); XDP only with `--decap xdp`.
        let decap_link = dir.link(LINK_TC_INGRESS).exists();
        let encap_link = dir.link(LINK_TC_EGRESS).exists();
        let decap = if dir.link(LINK_XDP).exists() {
            "xdp"
        } else {
            "tc"
        };
        let (state, ifindex, local, address, peers, routes) = match read_tunnel(&dir) {
            Err(e) => (
                format!(
                    "incomplete: {e:#}; run `ipip-user detach {}`",
                    dir.interface
                ),
                0,
                String::new(),
                None,
                0,
                0,
            ),
            Ok(t) if is_stale(&dir) => (
                format!(
                    "stale: left by a deleted network namespace; `ipip-user detach {}` removes it",
                    dir.interface
                ),
                t.ifindex,
                std::net::Ipv4Addr::from(t.local).to_string(),
                None,
                t.peer_count,
                0,
            ),
            Ok(t) => {
                let link = nl.link_by_index(t.ifindex).await?;
                let state = match link {
                    Some(l) if l.name == dir.interface && decap_link && encap_link => {
                        "ok".to_string()
                    }
                    Some(l) if l.name == dir.interface => {
                        "programs missing: run `ipip-user detach` and attach again".to_string()
                    }
                    _ => format!("interface gone: run `ipip-user detach {}`", dir.interface),
                };
                let address = (t.address != [0; 4]).then(|| {
                    format!(
                        "{}/{}",
                        std::net::Ipv4Addr::from(t.address),
                        t.address_prefix_len
                    )
                });
                let routes = nl.our_routes(t.ifindex).await?.len();
                (
                    state,
                    t.ifindex,
                    std::net::Ipv4Addr::from(t.local).to_string(),
                    address,
                    t.peer_count,
                    routes,
                )
            }
        };
        out.push(Status {
            interface: dir.interface.clone(),
            netns: dir.netns,
            pin_dir: dir.path.display().to_string(),
            ifindex,
            state,
            local,
            address,
            peers,
            routes_installed: routes,
            decap,
            lans: lan_links(&dir),
            drop_log: read_tunnel(&dir)
                .is_ok_and(|t| t.flags & ipip_common::TUNNEL_FLAG_LOG_DROPS != 0),
            programs: programs(&dir),
        });
    }
    Ok(out)
}

pub fn render(all: &[Status]) -> String {
    if all.is_empty() {
        return "nothing attached in this network namespace\n".into();
    }
    let mut o = String::new();
    for s in all {
        let _ = writeln!(
            o,
            "{}: {}  decap {}  fast path {}  local {}  tunnel address {}  peers {}  routes {}  pins {}",
            s.interface,
            s.state,
            s.decap,
            if s.lans.is_empty() { "off".to_string() } else { format!("on ({})", s.lans.join(", ")) },
            s.local,
            s.address.as_deref().unwrap_or("none"),
            s.peers,
            s.routes_installed,
            s.pin_dir
        );
    }
    o
}
