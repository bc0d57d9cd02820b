//! A routed underlay with a smaller hop in the middle, the shape real underlays have and a
//! single veth doesn't:
//!
//! ```text
//!  doolittle ──1500── r1 ══MTU══ r2 ──1500── calculon
//!  192.0.2.58     192.0.2.1  198.51.100.1/.2  203.0.113.1   203.0.113.129
//!  10.0.1.0/24                                               10.0.2.0/24
//! ```
//!
//! The routers are plain Linux routers (forwarding on, default PMTU behaviour): a DF packet
//! too big for the middle hop is answered with ICMP "fragmentation needed" (next-hop MTU =
//! MTU), one without DF is fragmented. With a LAN, doolittle is a gateway: jill
//! (192.168.1.2) sits behind it on `lan0` (192.168.1.1), and calculon accepts her sources.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use super::build::{add_addr, default_via, forwarding, link, LanHost, TempDir};
use super::host::{node, peers_toml, Node};
use super::IFACE;
use crate::netns::Netns;

/// r1 on doolittle's segment (192.0.2.0/24): its hosts' default gateway.
pub const R1_NEAR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const R1_MID: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const R2_MID: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// r2 on calculon's segment (203.0.113.0/24): its hosts' default gateway.
pub const R2_NEAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// The two plain Linux routers of the line: joined by `mid` (the small hop), each routing
/// the other's near /24, forwarding on. Their near sides are the caller's to wire (a veth, a
/// guest's tap), addressed [`R1_NEAR`] and [`R2_NEAR`].
#[derive(Debug)]
pub struct Routers {
    pub r1: Netns,
    pub r2: Netns,
}

impl Routers {
    pub fn new(hop_mtu: u32) -> Result<Self> {
        let r1 = Netns::new("r1")?;
        let r2 = Netns::new("r2")?;
        // GRO on: the fast path's redirects need it on the receiving veths.
        link(&r1, "mid", &r2, "mid")?;
        let mtu = hop_mtu.to_string();
        for (r, addr, far, via) in [
            (&r1, R1_MID, "203.0.113.0/24", R2_MID),
            (&r2, R2_MID, "192.0.2.0/24", R1_MID),
        ] {
            r.exec(&["ip", "link", "set", "mid", "mtu", &mtu])?;
            add_addr(r, "mid", addr, 24)?;
            r.exec(&["ip", "route", "add", far, "via", &via.to_string()])?;
            forwarding(r)?;
        }
        Ok(Routers { r1, r2 })
    }
}

#[derive(Debug)]
pub struct Routed {
    pub doolittle: Node,
    pub r1: Netns,
    pub r2: Netns,
    pub calculon: Node,
    /// The host behind doolittle, when built [`Routed::with_lan`].
    pub jill: Option<LanHost>,
    /// MTU of the middle hop.
    pub hop_mtu: u32,
    _dir: TempDir,
}

impl Routed {
    /// Builds the line with a middle hop of `hop_mtu` bytes and writes both peers files, with
    /// `pmtudisc` as given (Linux's default is on).
    pub fn new(hop_mtu: u32, pmtudisc: bool) -> Result<Self> {
        Self::build(hop_mtu, pmtudisc, false)
    }

    /// The same line with jill behind doolittle, which forwards for her.
    pub fn with_lan(hop_mtu: u32, pmtudisc: bool) -> Result<Self> {
        Self::build(hop_mtu, pmtudisc, true)
    }

    fn build(hop_mtu: u32, pmtudisc: bool, lan: bool) -> Result<Self> {
        let dir = TempDir::new("ipip-routed")?;
        let d_ns = Netns::new("doolittle")?;
        let Routers { r1, r2 } = Routers::new(hop_mtu)?;
        let c_ns = Netns::new("calculon")?;
        // GRO everywhere: the fast path's redirects need it on the receiving veths.
        link(&d_ns, IFACE, &r1, "to-a")?;
        link(&r2, "to-b", &c_ns, IFACE)?;
        add_addr(&r1, "to-a", R1_NEAR, 24)?;
        add_addr(&r2, "to-b", R2_NEAR, 24)?;
        let doolittle = host(
            d_ns,
            "doolittle",
            [192, 0, 2, 58],
            R1_NEAR.octets(),
            1,
            &dir,
        )?;
        let calculon = host(
            c_ns,
            "calculon",
            [203, 0, 113, 129],
            R2_NEAR.octets(),
            2,
            &dir,
        )?;
        let jill = if lan {
            let jill = LanHost::new(
                "jill",
                Ipv4Addr::new(192, 168, 1, 2),
                &doolittle.ns,
                "lan0",
                Ipv4Addr::new(192, 168, 1, 1),
            )?;
            add_addr(&doolittle.ns, "lan0", Ipv4Addr::new(192, 168, 1, 1), 24)?;
            forwarding(&doolittle.ns)?;
            Some(jill)
        } else {
            None
        };
        for (me, peer) in [(&doolittle, &calculon), (&calculon, &doolittle)] {
            let mut toml = peers_toml(me, peer);
            if lan && me.name == "calculon" {
                toml = toml.replace(
                    &format!("routes = [\"{}\"]", peer.prefix),
                    &format!("routes = [\"{}\", \"192.168.1.0/24\"]", peer.prefix),
                );
            }
            let toml = toml.replace(
                "pmtudisc = true",
                if pmtudisc {
                    "pmtudisc = true"
                } else {
                    "pmtudisc = false"
                },
            );
            std::fs::write(&me.peers, toml)
                .with_context(|| format!("cannot write {}", me.peers.display()))?;
        }
        Ok(Routed {
            doolittle,
            r1,
            r2,
            calculon,
            jill,
            hop_mtu,
            _dir: dir,
        })
    }
}

/// A tunnel host of the line: a §4 host whose default route points at its router.
fn host(
    ns: Netns,
    name: &'static str,
    underlay: [u8; 4],
    gateway: [u8; 4],
    subnet: u8,
    dir: &TempDir,
) -> Result<Node> {
    let n = node(ns, name, underlay, subnet, dir)?;
    default_via(&n.ns, Ipv4Addr::from(gateway))?;
    Ok(n)
}
