//! Seed §6, gateway to gateway: desktops on doolittle's LAN reach the compute nodes behind the
//! head node rfe, through a tunnel between the desktop gateway doolittle and rfe; the compute
//! nodes reach the public side through rfe's NAT; a spoofer sits on the public segment.
//!
//! ```text
//! calculon eth0 ── eth1 doolittle eth0 ── pub (bridge) ── eth0 wan eth1 ── eth3 rfe eth0 ── eth0 comp000
//! 192.168.1.10  192.168.1.1   192.0.2.58      │       192.0.2.250 198.51.100.250 │  192.168.104.253  192.168.104.100
//!                        tunnel 10.200.100.100 │            198.51.100.200 tunnel 10.200.200.200
//!                                 mallory eth0 192.0.2.66 (nobody's peer)
//! ```

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};

use super::build::{
    add_addr, attach_all, default_via, forwarding, link, Bridge, LanHost, Peer, PeersFile, TempDir,
    TunnelHost,
};
use crate::ipip::{DataPath, IpipUser};
use crate::netns::Netns;

pub const CALCULON: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
pub const DOOLITTLE_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
pub const DOOLITTLE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 58);
pub const MALLORY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
pub const WAN_WEST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 250);
pub const WAN_EAST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 250);
pub const RFE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
pub const RFE_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 104, 253);
pub const COMP000: Ipv4Addr = Ipv4Addr::new(192, 168, 104, 100);
pub const DOOLITTLE_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 200, 100, 100);
pub const RFE_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 200, 200, 200);

/// rfe's NAT (seed §6.2, `-t nat -A POSTROUTING -s 192.168.104.0/24 -j MASQUERADE`), made
/// to spare the tunnel. ipip encapsulates at TC egress of eth3, after netfilter's
/// POSTROUTING has seen the inner packet leave through eth3: a plain `oifname "eth3"
/// masquerade` would rewrite the source of tunnel-bound packets too (and doolittle would then
/// drop them: 198.51.100.200 is not among rfe's prefixes). So the routed prefixes are excluded.
pub const RFE_NAT: &str = "\
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 192.168.104.0/24 ip daddr != { 192.168.1.0/24, 10.200.100.0/24 } oifname \"eth3\" masquerade
    }
}
";

/// Seed §6 in namespaces, peers files written, NAT on rfe, nothing attached.
#[derive(Debug)]
pub struct Gateways {
    /// A desktop on doolittle's LAN.
    pub calculon: LanHost,
    /// The desktop gateway.
    pub doolittle: TunnelHost,
    /// The public segment: doolittle, mallory and wan on one bridge.
    pub public: Bridge,
    /// A spoofer on the public segment, nobody's peer.
    pub mallory: LanHost,
    /// The router between the public segment and rfe.
    pub wan: Netns,
    /// The cluster's head node.
    pub rfe: TunnelHost,
    /// A compute node.
    pub comp000: LanHost,
    dir: TempDir,
}

impl Gateways {
    pub fn new() -> Result<Self> {
        let dir = TempDir::new("ipip-gateways")?;
        let public = Bridge::new("pub")?;
        let wan = Netns::new("wan")?;
        forwarding(&wan)?;
        public.plug(&wan, "eth0", "p-wan")?;
        add_addr(&wan, "eth0", WAN_WEST, 24)?;

        let d_ns = Netns::new("doolittle")?;
        public.plug(&d_ns, "eth0", "p-doolittle")?;
        add_addr(&d_ns, "eth0", DOOLITTLE, 24)?;
        default_via(&d_ns, WAN_WEST)?;
        forwarding(&d_ns)?;
        let calculon = LanHost::new("calculon", CALCULON, &d_ns, "eth1", DOOLITTLE_LAN)?;
        add_addr(&d_ns, "eth1", DOOLITTLE_LAN, 24)?;

        let m_ns = Netns::new("mallory")?;
        public.plug(&m_ns, "eth0", "p-mallory")?;
        add_addr(&m_ns, "eth0", MALLORY, 24)?;
        default_via(&m_ns, WAN_WEST)?;
        let mallory = LanHost {
            name: "mallory",
            ns: m_ns,
            iface: "eth0",
            addr: MALLORY,
        };

        let r_ns = Netns::new("rfe")?;
        link(&r_ns, "eth3", &wan, "eth1")?;
        add_addr(&wan, "eth1", WAN_EAST, 24)?;
        add_addr(&r_ns, "eth3", RFE, 24)?;
        default_via(&r_ns, WAN_EAST)?;
        forwarding(&r_ns)?;
        let comp000 = LanHost::new("comp000", COMP000, &r_ns, "eth0", RFE_LAN)?;
        add_addr(&r_ns, "eth0", RFE_LAN, 24)?;
        nft(&r_ns, RFE_NAT, &dir.0.join("rfe-nat.nft")).context("rfe's NAT")?;

        let doolittle = TunnelHost {
            name: "doolittle",
            ns: d_ns,
            underlay_if: "eth0",
            underlay: DOOLITTLE,
            lan_if: Some("eth1"),
            lan: Some(DOOLITTLE_LAN),
            tunnel: DOOLITTLE_TUNNEL,
            peers: dir.0.join("doolittle.toml"),
        };
        let rfe = TunnelHost {
            name: "rfe",
            ns: r_ns,
            underlay_if: "eth3",
            underlay: RFE,
            lan_if: Some("eth0"),
            lan: Some(RFE_LAN),
            tunnel: RFE_TUNNEL,
            peers: dir.0.join("rfe.toml"),
        };
        let t = Gateways {
            calculon,
            doolittle,
            public,
            mallory,
            wan,
            rfe,
            comp000,
            dir,
        };
        t.doolittle_peers().write(&t.doolittle.peers)?;
        t.rfe_peers().write(&t.rfe.peers)?;
        Ok(t)
    }

    /// Seed §6.3: routes to rfe's tunnel /24 and the compute nodes.
    pub fn doolittle_peers(&self) -> PeersFile {
        PeersFile::new(
            "doolittle, seed §6.3: the desktop gateway",
            "10.200.100.100/24",
            vec![Peer {
                name: "rfe",
                remote: RFE,
                routes: vec!["10.200.200.0/24", "192.168.104.0/24"],
            }],
        )
    }

    /// Seed §6.2: routes to doolittle's tunnel /24 and the desktops behind it (the seed's
    /// FORWARD rules that admit only those sources are the same prefixes, built in).
    pub fn rfe_peers(&self) -> PeersFile {
        PeersFile::new(
            "rfe, seed §6.2: the cluster's head node",
            "10.200.200.200/24",
            vec![Peer {
                name: "doolittle",
                remote: DOOLITTLE,
                routes: vec!["10.200.100.0/24", "192.168.1.0/24"],
            }],
        )
    }

    /// The tunnel endpoints.
    pub fn endpoints(&self) -> [&TunnelHost; 2] {
        [&self.doolittle, &self.rfe]
    }

    /// Attaches doolittle and the head node for `path` (see [`attach_all`]).
    pub fn attach(&self, ipip: &IpipUser, path: DataPath) -> Result<()> {
        let namespaces: Vec<&Netns> = self.namespaces().into_iter().map(|(_, ns)| ns).collect();
        attach_all(ipip, path, &self.endpoints(), &namespaces)
    }

    /// Every namespace, for listings.
    pub fn namespaces(&self) -> Vec<(&'static str, &Netns)> {
        vec![
            ("calculon", &self.calculon.ns),
            ("doolittle", &self.doolittle.ns),
            ("pub", &self.public.ns),
            ("mallory", &self.mallory.ns),
            ("wan", &self.wan),
            ("rfe", &self.rfe.ns),
            ("comp000", &self.comp000.ns),
        ]
    }

    /// The folder holding the peers files and rfe's NAT rules.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

/// Loads an nftables ruleset into `ns` (`nft -f FILE`, the file written from `rules`).
pub fn nft(ns: &Netns, rules: &str, file: &Path) -> Result<()> {
    std::fs::write(file, rules).with_context(|| format!("cannot write {}", file.display()))?;
    ns.exec(&["nft", "-f", &file.to_string_lossy()])
        .context("nft -f failed (is the nftables package installed?)")?;
    Ok(())
}
