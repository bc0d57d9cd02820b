//! Seed §4 against a stock Linux peer: doolittle (a namespace, our endpoint, its underlay
//! interface the tap that is the guest's NIC) ↔ calculon (the Linux guest with `tunl1`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::admin::LinuxTunnel;
use super::guest::LinuxGuest;
use crate::ipip::IpipUser;
use crate::netns::Netns;
use crate::topology::TempDir;

pub const DOOLITTLE_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 58);
pub const CALCULON_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 129);
pub const DOOLITTLE_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const CALCULON_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// The tap in doolittle's namespace: the guest's `eth0` on the other end, doolittle's
/// underlay interface on this one.
pub const TAP: &str = "tap0";

/// doolittle's side: extra `[tunnel]` lines of its peers file and extra `attach` arguments.
#[derive(Debug, Clone, Default)]
pub struct Ours {
    /// Lines added to `[tunnel]`, e.g. `ttl = 64`.
    pub tunnel_lines: Vec<String>,
    /// e.g. `["--decap", "tc"]`.
    pub attach_args: Vec<String>,
}

/// The booted topology, nothing attached or configured on the guest yet beyond its
/// underlay. Fields drop in order: the guest (qemu, tap) before the namespace.
#[derive(Debug)]
pub struct LinuxPeer {
    pub guest: LinuxGuest,
    pub doolittle: Netns,
    pub peers: PathBuf,
    pub dir: TempDir,
}

impl LinuxPeer {
    /// Creates doolittle's namespace (192.0.2.58/24 on the tap, 10.0.1.1/32 on lo, a peers
    /// file naming calculon), boots the guest and gives it 192.0.2.129/24 on `eth0`.
    pub fn boot(ours: &Ours) -> Result<Self> {
        let dir = TempDir::new("ipip-linux-peer")?;
        let doolittle = Netns::new("doolittle")?;
        doolittle.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{DOOLITTLE_PRIVATE}/32"),
            "dev",
            "lo",
        ])?;
        let guest = LinuxGuest::boot(&doolittle, TAP)?;
        doolittle.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{DOOLITTLE_UNDERLAY}/24"),
            "dev",
            TAP,
        ])?;
        guest
            .underlay(&format!("{CALCULON_UNDERLAY}/24"))
            .context("calculon's underlay")?;
        let peers = dir.0.join("doolittle.toml");
        std::fs::write(&peers, peers_toml(ours))?;
        Ok(LinuxPeer {
            guest,
            doolittle,
            peers,
            dir,
        })
    }

    /// calculon's `tunl1` toward doolittle with Linux's defaults (change fields before
    /// [`LinuxGuest::add_tunnel`]).
    pub fn linux_tunnel() -> LinuxTunnel {
        LinuxTunnel::new(
            DOOLITTLE_UNDERLAY,
            CALCULON_UNDERLAY,
            &format!("{CALCULON_PRIVATE}/24"),
            &["10.0.1.0/24"],
        )
    }

    /// The `ipip-user` arguments that attach doolittle.
    pub fn attach_args(&self, ours: &Ours) -> Vec<String> {
        let mut v = vec![
            "attach".to_string(),
            TAP.to_string(),
            "--peers".to_string(),
            self.peers.display().to_string(),
        ];
        v.extend(ours.attach_args.iter().cloned());
        v
    }

    /// `ipip-user attach tap0 --peers ... [extra]` in doolittle; returns what it printed.
    pub fn attach(&self, ipip: &IpipUser, ours: &Ours) -> Result<String> {
        let args = self.attach_args(ours);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ipip.run(&self.doolittle, &refs)
            .context("ipip-user attach on doolittle")
    }
}

/// doolittle's peers file.
pub fn peers_toml(ours: &Ours) -> String {
    let mut s = format!(
        "[tunnel]\nlocal = \"{DOOLITTLE_UNDERLAY}\"\naddress = \"{DOOLITTLE_PRIVATE}/24\"\n"
    );
    for l in &ours.tunnel_lines {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str(&format!(
        "\n[[peer]]\nname = \"calculon\"\nremote = \"{CALCULON_UNDERLAY}\"\nroutes = [\"10.0.2.0/24\"]\n"
    ));
    s
}
