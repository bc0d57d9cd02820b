//! Seed §5 (desktop → head node → compute node) with the Linux guest in one of the tunnel
//! roles and our endpoint in the other. The underlay is one segment (a bridge in its own
//! namespace, the guest's tap plugged in); no router in between.
//!
//! ```text
//! LinuxDesktop:  guest doolittle eth0 ─ br0 ─ eth0 ps3 (ours, forwarding) eth1 ─ eth0 jill
//! LinuxHeadNode: doolittle (ours) eth0 ─ br0 ─ eth0 guest ps3 (forwarding) eth1 ─ br1 ─ eth0 jill
//!                192.0.2.58                    192.0.2.56    10.10.10.1              10.10.10.54
//!   doolittle's tunnel 10.200.100.100/24, ps3's 10.200.200.200/24 (the seed's addresses)
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::admin::LinuxTunnel;
use super::guest::{GuestConfig, LinuxGuest};
use crate::ipip::IpipUser;
use crate::netns::Netns;
use crate::topology::build::{add_addr, forwarding, veth, Bridge, LanHost};
use crate::topology::{Peer, PeersFile, TempDir};

pub const DOOLITTLE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 58);
pub const PS3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 56);
pub const PS3_LAN: Ipv4Addr = Ipv4Addr::new(10, 10, 10, 1);
pub const JILL: Ipv4Addr = Ipv4Addr::new(10, 10, 10, 54);
pub const DOOLITTLE_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 200, 100, 100);
pub const PS3_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 200, 200, 200);

/// Seed §5.2 on Linux: doolittle's `tunl1` toward ps3.
pub fn desktop_tunnel() -> LinuxTunnel {
    LinuxTunnel::new(
        PS3,
        DOOLITTLE,
        &format!("{DOOLITTLE_TUNNEL}/24"),
        &["10.200.200.0/24", "10.10.10.0/24"],
    )
}

/// Seed §5.3 on Linux: ps3's `tunl1` toward doolittle.
pub fn head_node_tunnel() -> LinuxTunnel {
    LinuxTunnel::new(
        DOOLITTLE,
        PS3,
        &format!("{PS3_TUNNEL}/24"),
        &["10.200.100.0/24"],
    )
}

fn desktop_peers() -> PeersFile {
    let mut p = PeersFile::new(
        "doolittle, seed §5.2: the desktop",
        &format!("{DOOLITTLE_TUNNEL}/24"),
        vec![Peer {
            name: "ps3",
            remote: PS3,
            routes: vec!["10.200.200.0/24", "10.10.10.0/24"],
        }],
    );
    p.comment.push_str(" (its peer ps3 is a stock Linux box)");
    p
}

fn head_node_peers() -> PeersFile {
    PeersFile::new(
        "ps3, seed §5.3: the cluster's head node (its peer doolittle is a stock Linux box)",
        &format!("{PS3_TUNNEL}/24"),
        vec![Peer {
            name: "doolittle",
            remote: DOOLITTLE,
            routes: vec!["10.200.100.0/24"],
        }],
    )
}

/// The guest is the desktop doolittle; ps3 (ours, forwarding) and jill are namespaces.
/// Fields drop in order: the guest first.
#[derive(Debug)]
pub struct LinuxDesktop {
    pub guest: LinuxGuest,
    pub segment: Bridge,
    pub ps3: Netns,
    pub jill: LanHost,
    pub peers: PathBuf,
    pub dir: TempDir,
}

impl LinuxDesktop {
    /// Builds and boots everything, configures the guest's tunnel, attaches ps3.
    pub fn up(ipip: &IpipUser) -> Result<Self> {
        let dir = TempDir::new("ipip-linux-desktop")?;
        let segment = Bridge::new("seg")?;
        let ps3 = Netns::new("ps3")?;
        veth(&ps3, "eth0", &segment.ns, "p-ps3")?;
        segment
            .ns
            .exec(&["ip", "link", "set", "p-ps3", "master", "br0"])?;
        add_addr(&ps3, "eth0", PS3, 24)?;
        forwarding(&ps3)?;
        let jill = lan_host(&ps3)?;
        let guest = LinuxGuest::boot(&segment.ns, "tap0")?;
        segment
            .ns
            .exec(&["ip", "link", "set", "tap0", "master", "br0"])?;
        guest.underlay(&format!("{DOOLITTLE}/24"))?;
        guest
            .add_tunnel(&desktop_tunnel())
            .context("doolittle's tunl1")?;
        let peers = dir.0.join("ps3.toml");
        head_node_peers().write(&peers)?;
        let p = peers.display().to_string();
        ipip.run(&ps3, &["attach", "eth0", "--peers", &p])
            .context("ipip-user attach on ps3")?;
        Ok(LinuxDesktop {
            guest,
            segment,
            ps3,
            jill,
            peers,
            dir,
        })
    }
}

/// jill behind ps3's eth1 (10.10.10.54, default route via 10.10.10.1).
fn lan_host(ps3: &Netns) -> Result<LanHost> {
    let jill = Netns::new("jill")?;
    veth(&jill, "eth0", ps3, "eth1")?;
    add_addr(ps3, "eth1", PS3_LAN, 24)?;
    add_addr(&jill, "eth0", JILL, 24)?;
    jill.exec(&["ip", "route", "add", "default", "via", &PS3_LAN.to_string()])?;
    Ok(LanHost {
        name: "jill",
        ns: jill,
        iface: "eth0",
        addr: JILL,
    })
}

/// Our endpoint is the desktop doolittle; the guest is the head node ps3 (forwarding, with
/// a second NIC on the cluster network); jill is a namespace on that network.
#[derive(Debug)]
pub struct LinuxHeadNode {
    pub guest: LinuxGuest,
    pub segment: Bridge,
    pub doolittle: Netns,
    pub jill: Netns,
    pub peers: PathBuf,
    pub dir: TempDir,
}

impl LinuxHeadNode {
    pub fn up(ipip: &IpipUser) -> Result<Self> {
        let dir = TempDir::new("ipip-linux-head")?;
        let segment = Bridge::new("seg")?;
        segment
            .ns
            .exec(&["ip", "link", "add", "br1", "type", "bridge"])?;
        segment.ns.exec(&["ip", "link", "set", "br1", "up"])?;
        let doolittle = Netns::new("doolittle")?;
        veth(&doolittle, "eth0", &segment.ns, "p-doolittle")?;
        segment
            .ns
            .exec(&["ip", "link", "set", "p-doolittle", "master", "br0"])?;
        add_addr(&doolittle, "eth0", DOOLITTLE, 24)?;
        let jill = Netns::new("jill")?;
        veth(&jill, "eth0", &segment.ns, "p-jill")?;
        segment
            .ns
            .exec(&["ip", "link", "set", "p-jill", "master", "br1"])?;
        add_addr(&jill, "eth0", JILL, 24)?;
        jill.exec(&["ip", "route", "add", "default", "via", &PS3_LAN.to_string()])?;
        let mut cfg = GuestConfig::new("tap0");
        cfg.extra_nics
            .push(("tap1".to_string(), "52:54:00:12:34:57".to_string()));
        let guest = LinuxGuest::boot_with(&segment.ns, &cfg)?;
        for (tap, br) in [("tap0", "br0"), ("tap1", "br1")] {
            segment.ns.exec(&["ip", "link", "set", tap, "master", br])?;
        }
        guest.underlay(&format!("{PS3}/24"))?;
        guest.link_up("eth1")?;
        guest.addr_add(&format!("{PS3_LAN}/24"), "eth1")?;
        guest.sysctl("net.ipv4.ip_forward", "1")?;
        guest
            .add_tunnel(&head_node_tunnel())
            .context("ps3's tunl1")?;
        let peers = dir.0.join("doolittle.toml");
        desktop_peers().write(&peers)?;
        let p = peers.display().to_string();
        ipip.run(&doolittle, &["attach", "eth0", "--peers", &p])
            .context("ipip-user attach on doolittle")?;
        Ok(LinuxHeadNode {
            guest,
            segment,
            doolittle,
            jill,
            peers,
            dir,
        })
    }
}
