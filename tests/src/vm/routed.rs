//! Seed §4 against the stock Linux peer across a routed underlay with a smaller hop: our
//! endpoint doolittle (a namespace) and the Linux guest calculon are two routers apart, and
//! the link between the routers carries only [`HOP_MTU`] bytes.
//!
//! ```text
//!  doolittle eth0 ──1500── to-a r1 mid ══1400══ mid r2 tap0 ──1500── eth0 calculon (Linux)
//!  192.0.2.58         192.0.2.1  198.51.100.1/.2  203.0.113.1         203.0.113.129
//!  10.0.1.1 (lo)                                                       10.0.2.1 (tunl1)
//! ```
//!
//! r1 and r2 are plain Linux routers (forwarding on, default PMTU behaviour): a DF packet too
//! big for the middle hop is answered with ICMP "fragmentation needed" (next-hop MTU 1400),
//! one without DF is fragmented. The guest's NIC is a tap in r2's namespace; its default
//! route points at r2. Nothing is attached and no `tunl1` exists yet after [`LinuxRouted::boot`].

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::admin::LinuxTunnel;
use super::guest::LinuxGuest;
use super::peer::Ours;
use crate::ipip::IpipUser;
use crate::netns::Netns;
use crate::topology::build::{add_addr, default_via, link};
use crate::topology::routed::Routers;
use crate::topology::TempDir;

/// MTU of the link between r1 and r2.
pub const HOP_MTU: u32 = 1400;
pub const DOOLITTLE_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 58);
pub use crate::topology::routed::{R1_MID, R1_NEAR, R2_MID, R2_NEAR};
pub const CALCULON_UNDERLAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 129);
pub const DOOLITTLE_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const CALCULON_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// doolittle's underlay interface (a veth toward r1).
pub const UNDERLAY_IF: &str = "eth0";
/// The tap in r2's namespace that is the guest's `eth0`.
pub const TAP: &str = "tap0";

/// The booted line. Fields drop in order: the guest (qemu, then its tap in r2) before the
/// namespaces, the namespaces before the folder holding the peers file.
#[derive(Debug)]
pub struct LinuxRouted {
    pub guest: LinuxGuest,
    pub doolittle: Netns,
    pub r1: Netns,
    pub r2: Netns,
    pub peers: PathBuf,
    pub dir: TempDir,
}

impl LinuxRouted {
    /// Builds doolittle, r1 and r2, boots the guest on a tap in r2, gives it
    /// 203.0.113.129/24 and a default route via r2, writes doolittle's peers file (with
    /// `ours`' extra lines) and checks the underlay end to end with a ping each way.
    pub fn boot(ours: &Ours) -> Result<Self> {
        let dir = TempDir::new("ipip-linux-routed")?;
        let doolittle = Netns::new("doolittle")?;
        let Routers { r1, r2 } = Routers::new(HOP_MTU)?;
        link(&doolittle, UNDERLAY_IF, &r1, "to-a")?;
        add_addr(&r1, "to-a", R1_NEAR, 24)?;
        add_addr(&doolittle, UNDERLAY_IF, DOOLITTLE_UNDERLAY, 24)?;
        doolittle.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{DOOLITTLE_PRIVATE}/32"),
            "dev",
            "lo",
        ])?;
        default_via(&doolittle, R1_NEAR)?;
        let guest = LinuxGuest::boot(&r2, TAP)?;
        add_addr(&r2, TAP, R2_NEAR, 24)?;
        guest
            .underlay(&format!("{CALCULON_UNDERLAY}/24"))
            .context("calculon's underlay")?;
        guest
            .exec(&format!("ip route add default via {R2_NEAR}"))
            .context("calculon's default route")?;

        let peers = dir.0.join("doolittle.toml");
        std::fs::write(&peers, peers_toml(ours))
            .with_context(|| format!("cannot write {}", peers.display()))?;
        let t = LinuxRouted {
            guest,
            doolittle,
            r1,
            r2,
            peers,
            dir,
        };
        t.check_underlay()?;
        Ok(t)
    }

    /// Plain (untunnelled) pings across both routers, each way; also resolves every
    /// neighbour on the way.
    fn check_underlay(&self) -> Result<()> {
        let dst = CALCULON_UNDERLAY.to_string();
        let out = self
            .doolittle
            .output(&["ping", "-n", "-c", "2", "-W", "3", "-i", "0.2", &dst])?;
        anyhow::ensure!(
            out.status.success(),
            "the routed underlay doolittle → r1 → r2 → calculon does not work: {}",
            crate::ipip::describe(&out)
        );
        let cmd = format!("ping -c 2 -i 0.2 -w 10 {DOOLITTLE_UNDERLAY}");
        let (st, text) = self.guest.run(&cmd)?;
        anyhow::ensure!(
            st == 0 && text.contains("2 packets received"),
            "the routed underlay calculon → r2 → r1 → doolittle does not work: `{cmd}` \
             exited {st}:\n{text}"
        );
        Ok(())
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

    /// `ipip-user attach eth0 --peers ... [extra]` in doolittle; returns what it printed.
    pub fn attach(&self, ipip: &IpipUser, ours: &Ours) -> Result<String> {
        let peers = self.peers.display().to_string();
        let mut args = vec!["attach", UNDERLAY_IF, "--peers", &peers];
        args.extend(ours.attach_args.iter().map(String::as_str));
        ipip.run(&self.doolittle, &args)
            .context("ipip-user attach on doolittle")
    }

    /// Both ends again with new tunnel options: detach, rewrite the peers file, attach;
    /// `ip tunnel del tunl1` and the admin's commands for `linux`.
    pub fn reconfigure(&self, ipip: &IpipUser, ours: &Ours, linux: &LinuxTunnel) -> Result<()> {
        ipip.detach(&self.doolittle, UNDERLAY_IF)?;
        std::fs::write(&self.peers, peers_toml(ours))?;
        self.attach(ipip, ours)?;
        self.guest.exec(&format!("ip tunnel del {}", linux.name))?;
        self.guest.add_tunnel(linux)?;
        Ok(())
    }

    /// Forgets learned path MTUs on both ends (`ip route flush cache`: the kernel's PMTU
    /// exceptions; ipip's own learned MTU is not touched).
    pub fn flush_route_caches(&self) -> Result<()> {
        self.doolittle
            .exec(&["ip", "route", "flush", "cache"])
            .context("doolittle: ip route flush cache")?;
        self.guest
            .exec("ip route flush cache")
            .context("calculon: ip route flush cache")?;
        Ok(())
    }
}

/// doolittle's peers file: calculon (203.0.113.129, 10.0.2.0/24) its only peer.
pub fn peers_toml(ours: &Ours) -> String {
    let mut s = format!(
        "# doolittle ↔ calculon (a stock Linux ipip endpoint) across a {HOP_MTU}-byte hop\n\
         [tunnel]\nlocal = \"{DOOLITTLE_UNDERLAY}\"\naddress = \"{DOOLITTLE_PRIVATE}/24\"\n"
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

/// One counter of `/proc/net/snmp` (e.g. `Ip` `ReasmOKs`) out of its text: the header line
/// names the columns, the next line with the same prefix holds the values.
pub fn snmp_counter(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let col = header.split_whitespace().position(|c| c == name)?;
    values.split_whitespace().nth(col)?.parse().ok()
}

impl LinuxGuest {
    /// A counter of the guest's `/proc/net/snmp`, e.g. `("Ip", "ReasmOKs")`.
    pub fn snmp(&self, group: &str, name: &str) -> Result<u64> {
        let text = self.exec("cat /proc/net/snmp")?;
        snmp_counter(&text, group, name)
            .with_context(|| format!("no {group} {name} in the guest's /proc/net/snmp:\n{text}"))
    }

    /// `/sys/class/net/DEV/statistics/NAME` in the guest (e.g. `rx_frame_errors`).
    pub fn dev_stat(&self, dev: &str, name: &str) -> Result<u64> {
        let path = format!("/sys/class/net/{dev}/statistics/{name}");
        let text = self.exec(&format!("cat {path}"))?;
        text.trim()
            .parse()
            .with_context(|| format!("the guest's {path} holds {text:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_counter_reads_the_named_column() {
        let text = "Ip: Forwarding DefaultTTL InReceives ReasmReqds ReasmOKs\n\
                    Ip: 1 64 100 40 20\n\
                    Icmp: InMsgs InErrors\n\
                    Icmp: 5 0\n";
        assert_eq!(snmp_counter(text, "Ip", "ReasmOKs"), Some(20));
        assert_eq!(snmp_counter(text, "Icmp", "InMsgs"), Some(5));
        assert_eq!(snmp_counter(text, "Ip", "Nope"), None);
    }

    #[test]
    fn peers_file_names_calculon_across_the_hop() {
        let s = peers_toml(&Ours {
            tunnel_lines: vec!["pmtudisc = false".into()],
            attach_args: Vec::new(),
        });
        assert!(s.contains("local = \"192.0.2.58\"\naddress = \"10.0.1.1/24\"\npmtudisc = false\n"));
        assert!(s.contains("remote = \"203.0.113.129\""));
    }
}
