//! Seed §4, host to host: doolittle ↔ calculon, on one veth pair or a bridge with a spoofer.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::build::{veth, TempDir};
use crate::netns::Netns;

use super::IFACE;

/// One host of a topology.
#[derive(Debug)]
pub struct Node {
    /// The seed's host name ("doolittle", "calculon", ...).
    pub name: &'static str,
    pub ns: Netns,
    /// Underlay interface name.
    pub iface: &'static str,
    /// Underlay address (on `iface`, /24).
    pub underlay: Ipv4Addr,
    /// This host's private address (on `lo`, /32), also its tunnel address.
    pub private: Ipv4Addr,
    /// This host's private /24, e.g. "10.0.1.0/24".
    pub prefix: String,
    /// Its peers file (written for doolittle and calculon only).
    pub peers: PathBuf,
}

/// How the hosts' underlay interfaces are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    /// One veth pair between doolittle and calculon (the seed's §4 as drawn).
    Direct,
    /// A Linux bridge in its own namespace with doolittle, calculon and mallory (a spoofer
    /// at 192.0.2.66 that is nobody's peer) plugged in.
    Bridge,
}

/// Seed §4: doolittle (192.0.2.58, owns 10.0.1.0/24) ↔ calculon (192.0.2.129, owns
/// 10.0.2.0/24), each with a peers file naming the other. Nothing is attached yet.
#[derive(Debug)]
pub struct HostToHost {
    pub doolittle: Node,
    pub calculon: Node,
    /// Present with [`Underlay::Bridge`].
    pub mallory: Option<Node>,
    /// The namespace holding the bridge, with [`Underlay::Bridge`].
    pub lan: Option<Netns>,
    dir: TempDir,
}

impl HostToHost {
    /// Builds the topology: namespaces, veths, addresses, peers files.
    pub fn new(underlay: Underlay) -> Result<Self> {
        let dir = TempDir::new("ipip-h2h")?;
        let d_ns = Netns::new("doolittle")?;
        let c_ns = Netns::new("calculon")?;
        let (m_ns, lan) = match underlay {
            Underlay::Direct => {
                veth(&d_ns, IFACE, &c_ns, IFACE)?;
                (None, None)
            }
            Underlay::Bridge => {
                let lan = Netns::new("lan")?;
                let m_ns = Netns::new("mallory")?;
                lan.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
                lan.exec(&["ip", "link", "set", "br0", "up"])?;
                for (ns, port) in [
                    (&d_ns, "p-doolittle"),
                    (&c_ns, "p-calculon"),
                    (&m_ns, "p-mallory"),
                ] {
                    veth(ns, IFACE, &lan, port)?;
                    lan.exec(&["ip", "link", "set", port, "master", "br0"])?;
                }
                (Some(m_ns), Some(lan))
            }
        };
        let doolittle = node(d_ns, "doolittle", [192, 0, 2, 58], 1, &dir)?;
        let calculon = node(c_ns, "calculon", [192, 0, 2, 129], 2, &dir)?;
        let mallory = match m_ns {
            Some(ns) => Some(node(ns, "mallory", [192, 0, 2, 66], 66, &dir)?),
            None => None,
        };
        write_peers(&doolittle, &calculon)?;
        write_peers(&calculon, &doolittle)?;
        Ok(HostToHost {
            doolittle,
            calculon,
            mallory,
            lan,
            dir,
        })
    }

    /// The folder holding the peers files.
    /// Attaches ipip on both hosts with their own peers files: the working tunnel most
    /// tests start from.
    pub fn tunnel_up(&self, ipip: &crate::IpipUser) -> Result<()> {
        for n in [&self.doolittle, &self.calculon] {
            ipip.attach(&n.ns, n.iface, &n.peers)
                .with_context(|| format!("attach on {}", n.name))?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

/// A §4-style host: `underlay`/24 on [`IFACE`], 10.0.`subnet`.1/32 on `lo`, its peers file
/// named after it in `dir`.
pub(super) fn node(
    ns: Netns,
    name: &'static str,
    underlay: [u8; 4],
    subnet: u8,
    dir: &TempDir,
) -> Result<Node> {
    let underlay = Ipv4Addr::from(underlay);
    let private = Ipv4Addr::new(10, 0, subnet, 1);
    ns.exec(&["ip", "addr", "add", &format!("{underlay}/24"), "dev", IFACE])?;
    ns.exec(&["ip", "addr", "add", &format!("{private}/32"), "dev", "lo"])?;
    Ok(Node {
        name,
        ns,
        iface: IFACE,
        underlay,
        private,
        prefix: format!("10.0.{subnet}.0/24"),
        peers: dir.0.join(format!("{name}.toml")),
    })
}

/// The peers file of `me` with `peer` as its only peer.
pub fn peers_toml(me: &Node, peer: &Node) -> String {
    format!(
        "# {me} ↔ {peer}, seed §4\n\
         [tunnel]\n\
         local = \"{local}\"\n\
         address = \"{addr}/24\"\n\
         ttl = \"inherit\"\n\
         pmtudisc = true\n\
         \n\
         [[peer]]\n\
         name = \"{peer}\"\n\
         remote = \"{remote}\"\n\
         routes = [\"{prefix}\"]\n",
        me = me.name,
        peer = peer.name,
        local = me.underlay,
        addr = me.private,
        remote = peer.underlay,
        prefix = peer.prefix,
    )
}

fn write_peers(me: &Node, peer: &Node) -> Result<()> {
    std::fs::write(&me.peers, peers_toml(me, peer))
        .with_context(|| format!("cannot write {}", me.peers.display()))
}
