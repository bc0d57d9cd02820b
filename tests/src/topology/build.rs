//! Building blocks the topologies share: veth links, addresses, routes, routers, a bridge,
//! the hosts on either side of a tunnel, and peers files.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cmd;
use crate::ipip::{DataPath, IpipUser};
use crate::netns::Netns;

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    cmd::run(&[
        "ip",
        "link",
        "add",
        a_name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])?;
    a.exec(&["ip", "link", "set", a_name, "up"])?;
    b.exec(&["ip", "link", "set", b_name, "up"])?;
    Ok(())
}

/// A veth pair like [`veth`], with GRO switched on at both ends.
///
/// A frame that XDP redirects into a veth is only received when the veth's peer runs NAPI:
/// it has an XDP program of its own, or GRO on. The fast path redirects into the underlay
/// and LAN veths, so every end of every link in the gateway topologies gets GRO.
pub fn link(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    veth(a, a_name, b, b_name)?;
    gro_on(a, a_name)?;
    gro_on(b, b_name)
}

/// `ethtool -K DEV gro on` inside `ns`.
pub fn gro_on(ns: &Netns, dev: &str) -> Result<()> {
    ns.exec(&["ethtool", "-K", dev, "gro", "on"])
        .with_context(|| format!("cannot switch GRO on for {dev} (is ethtool installed?)"))?;
    Ok(())
}

/// Switches TX checksum offload off on every veth in `ns`, so that frames leave with complete
/// checksums, as frames from a wire arrive.
///
/// A veth hands its peer the sender's `CHECKSUM_PARTIAL` packets (checksum left to "the
/// hardware"); when XDP on the peer redirects such a frame, that state is lost with the skb
/// and the receiver drops the TCP segment for its bad checksum (ping still works: ICMP
/// checksums are computed in software). So the fast-path runs need this on the veths whose
/// frames the gateways' XDP redirects; the kernel-path runs keep offload on, which also
/// covers `CHECKSUM_PARTIAL` through TC encapsulation and forwarding.
pub fn wire_checksums(ns: &Netns) -> Result<()> {
    tx_checksum_offload(ns, false)
}

/// `ethtool -K DEV tx on|off` on every veth in `ns`.
pub fn tx_checksum_offload(ns: &Netns, on: bool) -> Result<()> {
    let state = if on { "on" } else { "off" };
    let out = ns.exec(&["ip", "-j", "link", "show", "type", "veth"])?;
    let links: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("ip -j link printed {out}"))?;
    for dev in links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
    {
        ns.exec(&["ethtool", "-K", dev, "tx", state])
            .with_context(|| format!("cannot switch TX checksum offload {state} on {dev}"))?;
    }
    Ok(())
}

/// Attaches every tunnel host of a topology for `path`; for [`DataPath::Fast`], first
/// [`wire_checksums`] in every namespace.
pub fn attach_all(
    ipip: &IpipUser,
    path: DataPath,
    hosts: &[&TunnelHost],
    namespaces: &[&Netns],
) -> Result<()> {
    if path == DataPath::Fast {
        for ns in namespaces {
            wire_checksums(ns)?;
        }
    }
    for h in hosts {
        h.attach(ipip, path)?;
    }
    Ok(())
}

/// `ip addr add CIDR dev DEV` inside `ns`.
pub fn add_addr(ns: &Netns, dev: &str, addr: Ipv4Addr, len: u8) -> Result<()> {
    ns.exec(&["ip", "addr", "add", &format!("{addr}/{len}"), "dev", dev])?;
    Ok(())
}

/// `ip route add default via GW` inside `ns`.
pub fn default_via(ns: &Netns, gw: Ipv4Addr) -> Result<()> {
    ns.exec(&["ip", "route", "add", "default", "via", &gw.to_string()])?;
    Ok(())
}

/// `net.ipv4.ip_forward = 1` inside `ns` (the seed's `echo 1 > /proc/sys/net/ipv4/ip_forward`).
pub fn forwarding(ns: &Netns) -> Result<()> {
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    Ok(())
}

/// A Linux bridge `br0` alone in its own namespace: a shared segment.
#[derive(Debug)]
pub struct Bridge {
    pub ns: Netns,
}

impl Bridge {
    pub fn new(prefix: &str) -> Result<Self> {
        let ns = Netns::new(prefix)?;
        ns.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        ns.exec(&["ip", "link", "set", "br0", "up"])?;
        Ok(Bridge { ns })
    }

    /// Plugs `dev` of `host` into the bridge through a [`link`] whose bridge end is `port`.
    pub fn plug(&self, host: &Netns, dev: &str, port: &str) -> Result<()> {
        link(host, dev, &self.ns, port)?;
        self.ns
            .exec(&["ip", "link", "set", port, "master", "br0"])?;
        Ok(())
    }
}

/// A host on a LAN behind a gateway (jill, calculon, comp000): one interface, one /24
/// address, a default route through its gateway.
#[derive(Debug)]
pub struct LanHost {
    pub name: &'static str,
    pub ns: Netns,
    pub iface: &'static str,
    pub addr: Ipv4Addr,
}

impl LanHost {
    /// A namespace with `eth0` = `addr`/24 wired (by [`link`]) to `gw_if` of `gw_ns`, and a
    /// default route via `gw`. `gw_if` gets its address from the caller.
    pub fn new(
        name: &'static str,
        addr: Ipv4Addr,
        gw_ns: &Netns,
        gw_if: &str,
        gw: Ipv4Addr,
    ) -> Result<Self> {
        let ns = Netns::new(name)?;
        link(&ns, "eth0", gw_ns, gw_if)?;
        add_addr(&ns, "eth0", addr, 24)?;
        default_via(&ns, gw)?;
        Ok(LanHost {
            name,
            ns,
            iface: "eth0",
            addr,
        })
    }
}

/// A host where ipip runs (doolittle, ps3, rfe): an underlay interface toward the public
/// side, maybe a LAN interface it forwards to, a tunnel address and a peers file.
#[derive(Debug)]
pub struct TunnelHost {
    pub name: &'static str,
    pub ns: Netns,
    /// The underlay interface ipip attaches to.
    pub underlay_if: &'static str,
    pub underlay: Ipv4Addr,
    /// The LAN-facing interface (`--lan` for the fast path), if this host is a gateway.
    pub lan_if: Option<&'static str>,
    /// This host's address on that LAN.
    pub lan: Option<Ipv4Addr>,
    /// The `[tunnel] address` of its peers file.
    pub tunnel: Ipv4Addr,
    pub peers: PathBuf,
}

impl TunnelHost {
    /// The `ipip-user` arguments that attach this host: `attach UNDERLAY --peers FILE`, plus
    /// `--lan LAN` for the fast path when the host has a LAN.
    pub fn attach_args(&self, path: DataPath) -> Vec<String> {
        let mut args = vec![
            "attach".to_string(),
            self.underlay_if.to_string(),
            "--peers".to_string(),
            self.peers.display().to_string(),
        ];
        if let (DataPath::Fast, Some(lan)) = (path, self.lan_if) {
            args.extend(["--lan".to_string(), lan.to_string()]);
        }
        args
    }

    /// Attaches ipip here, returns what `attach` printed.
    pub fn attach(&self, ipip: &IpipUser, path: DataPath) -> Result<String> {
        let args = self.attach_args(path);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ipip.run(&self.ns, &refs)
            .with_context(|| format!("{}: ipip-user {}", self.name, args.join(" ")))
    }

    pub fn detach(&self, ipip: &IpipUser) -> Result<String> {
        ipip.detach(&self.ns, self.underlay_if)
            .with_context(|| format!("detach on {}", self.name))
    }
}

/// One `[[peer]]` of a peers file.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: &'static str,
    pub remote: Ipv4Addr,
    pub routes: Vec<&'static str>,
}

/// A peers file as the seed's recipes translate into one.
#[derive(Debug, Clone)]
pub struct PeersFile {
    /// A comment line on top.
    pub comment: String,
    /// `[tunnel] address`, e.g. "10.200.100.100/24".
    pub address: String,
    /// `[tunnel] ttl`: "inherit" (the seed's, and Linux's, default) or a number.
    pub ttl: String,
    pub peers: Vec<Peer>,
}

impl PeersFile {
    pub fn new(comment: &str, address: &str, peers: Vec<Peer>) -> Self {
        PeersFile {
            comment: comment.to_string(),
            address: address.to_string(),
            ttl: "inherit".to_string(),
            peers,
        }
    }

    pub fn to_toml(&self) -> String {
        let ttl = match self.ttl.parse::<u8>() {
            Ok(n) => n.to_string(),
            Err(_) => format!("{:?}", self.ttl),
        };
        let mut s = format!(
            "# {}\n[tunnel]\naddress = \"{}\"\nttl = {ttl}\n",
            self.comment, self.address
        );
        for p in &self.peers {
            let routes: Vec<String> = p.routes.iter().map(|r| format!("\"{r}\"")).collect();
            let _ = write!(
                s,
                "\n[[peer]]\nname = \"{}\"\nremote = \"{}\"\nroutes = [{}]\n",
                p.name,
                p.remote,
                routes.join(", ")
            );
        }
        s
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_toml())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// A fresh folder under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
