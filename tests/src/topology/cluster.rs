//! Seed §5, desktop to cluster: doolittle (a desktop on the public network) reaches jill, a
//! compute node on ps3's private cluster network, through a tunnel to the head node ps3.
//!
//! ```text
//! doolittle eth0 ── eth0 wan eth1 ── eth0 ps3 eth1 ── eth0 jill
//! 192.0.2.58    192.0.2.250  198.51.100.250  198.51.100.56  10.10.10.1  10.10.10.54
//!   tunnel 10.200.100.100/24          tunnel 10.200.200.200/24
//! ```
//!
//! The underlay has a router in between (wan), so the peers are not on-link: each reaches
//! the other through its default route.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;

use super::build::{
    add_addr, attach_all, default_via, forwarding, link, LanHost, Peer, PeersFile, TempDir,
    TunnelHost,
};
use crate::ipip::{DataPath, IpipUser};
use crate::netns::Netns;

pub const DOOLITTLE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 58);
pub const WAN_WEST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 250);
pub const WAN_EAST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 250);
pub const PS3: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 56);
pub const PS3_LAN: Ipv4Addr = Ipv4Addr::new(10, 10, 10, 1);
pub const JILL: Ipv4Addr = Ipv4Addr::new(10, 10, 10, 54);
pub const DOOLITTLE_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 200, 100, 100);
pub const PS3_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 200, 200, 200);

/// Seed §5 in namespaces, peers files written, nothing attached.
#[derive(Debug)]
pub struct Cluster {
    pub doolittle: TunnelHost,
    /// The router between the two sites.
    pub wan: Netns,
    pub ps3: TunnelHost,
    pub jill: LanHost,
    dir: TempDir,
}

impl Cluster {
    pub fn new() -> Result<Self> {
        let dir = TempDir::new("ipip-cluster")?;
        let wan = Netns::new("wan")?;
        forwarding(&wan)?;

        let d_ns = Netns::new("doolittle")?;
        link(&d_ns, "eth0", &wan, "eth0")?;
        add_addr(&wan, "eth0", WAN_WEST, 24)?;
        add_addr(&d_ns, "eth0", DOOLITTLE, 24)?;
        default_via(&d_ns, WAN_WEST)?;

        let p_ns = Netns::new("ps3")?;
        link(&p_ns, "eth0", &wan, "eth1")?;
        add_addr(&wan, "eth1", WAN_EAST, 24)?;
        add_addr(&p_ns, "eth0", PS3, 24)?;
        default_via(&p_ns, WAN_EAST)?;
        forwarding(&p_ns)?;

        let jill = LanHost::new("jill", JILL, &p_ns, "eth1", PS3_LAN)?;
        add_addr(&p_ns, "eth1", PS3_LAN, 24)?;

        let doolittle = TunnelHost {
            name: "doolittle",
            ns: d_ns,
            underlay_if: "eth0",
            underlay: DOOLITTLE,
            lan_if: None,
            lan: None,
            tunnel: DOOLITTLE_TUNNEL,
            peers: dir.0.join("doolittle.toml"),
        };
        let ps3 = TunnelHost {
            name: "ps3",
            ns: p_ns,
            underlay_if: "eth0",
            underlay: PS3,
            lan_if: Some("eth1"),
            lan: Some(PS3_LAN),
            tunnel: PS3_TUNNEL,
            peers: dir.0.join("ps3.toml"),
        };
        let t = Cluster {
            doolittle,
            wan,
            ps3,
            jill,
            dir,
        };
        t.doolittle_peers().write(&t.doolittle.peers)?;
        t.ps3_peers().write(&t.ps3.peers)?;
        Ok(t)
    }

    /// Seed §5.2: `ip tunnel add tunl1 mode ipip remote <ps3>`, `ifconfig tunl1
    /// 10.200.100.100/24`, routes to ps3's tunnel /24 and its cluster network.
    pub fn doolittle_peers(&self) -> PeersFile {
        PeersFile::new(
            "doolittle, seed §5.2: the desktop",
            "10.200.100.100/24",
            vec![Peer {
                name: "ps3",
                remote: PS3,
                routes: vec!["10.200.200.0/24", "10.10.10.0/24"],
            }],
        )
    }

    /// Seed §5.3: `ip tunnel add tunl1 mode ipip remote <doolittle>`, `ifconfig tunl1
    /// 10.200.200.200/24`, a route to doolittle's tunnel /24.
    pub fn ps3_peers(&self) -> PeersFile {
        PeersFile::new(
            "ps3, seed §5.3: the cluster's head node",
            "10.200.200.200/24",
            vec![Peer {
                name: "doolittle",
                remote: DOOLITTLE,
                routes: vec!["10.200.100.0/24"],
            }],
        )
    }

    /// The tunnel endpoints.
    pub fn endpoints(&self) -> [&TunnelHost; 2] {
        [&self.doolittle, &self.ps3]
    }

    /// Attaches doolittle and the head node for `path` (see [`attach_all`]).
    pub fn attach(&self, ipip: &IpipUser, path: DataPath) -> Result<()> {
        let namespaces: Vec<&Netns> = self.namespaces().into_iter().map(|(_, ns)| ns).collect();
        attach_all(ipip, path, &self.endpoints(), &namespaces)
    }

    /// Every namespace, for listings.
    pub fn namespaces(&self) -> Vec<(&'static str, &Netns)> {
        vec![
            ("doolittle", &self.doolittle.ns),
            ("wan", &self.wan),
            ("ps3", &self.ps3.ns),
            ("jill", &self.jill.ns),
        ]
    }

    /// The folder holding the peers files.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}
