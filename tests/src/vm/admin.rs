//! Configuring the guest the way an admin would: exactly the iproute2 commands of the seed's
//! recipe (`ip tunnel add tunl1 mode ipip remote R local L ...`, `ip route add ... dev tunl1`).

use std::net::Ipv4Addr;

use anyhow::Result;

use super::guest::LinuxGuest;

/// `ip tunnel ... ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    Inherit,
    Fixed(u8),
}

/// A `tunl1`-style ipip tunnel on the guest.
#[derive(Debug, Clone)]
pub struct LinuxTunnel {
    pub name: String,
    pub remote: Ipv4Addr,
    pub local: Ipv4Addr,
    /// `None` leaves `ttl` off the command line (Linux's default: inherit).
    pub ttl: Option<Ttl>,
    /// `tos T` (`inherit` or a number), `None` for the default.
    pub tos: Option<String>,
    /// `false` adds `nopmtudisc`.
    pub pmtudisc: bool,
    /// The address on the tunnel device, e.g. "10.0.2.1/24".
    pub address: String,
    /// Prefixes routed into the tunnel.
    pub routes: Vec<String>,
}

impl LinuxTunnel {
    /// `tunl1` toward `remote` from `local` with Linux's defaults.
    pub fn new(remote: Ipv4Addr, local: Ipv4Addr, address: &str, routes: &[&str]) -> Self {
        LinuxTunnel {
            name: "tunl1".into(),
            remote,
            local,
            ttl: None,
            tos: None,
            pmtudisc: true,
            address: address.into(),
            routes: routes.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// `ip tunnel add NAME mode ipip remote R local L [ttl N|inherit] [tos T] [nopmtudisc]`.
    pub fn add_command(&self) -> String {
        let mut c = format!(
            "ip tunnel add {} mode ipip remote {} local {}",
            self.name, self.remote, self.local
        );
        match self.ttl {
            Some(Ttl::Inherit) => c.push_str(" ttl inherit"),
            Some(Ttl::Fixed(n)) => c.push_str(&format!(" ttl {n}")),
            None => {}
        }
        if let Some(t) = &self.tos {
            c.push_str(&format!(" tos {t}"));
        }
        if !self.pmtudisc {
            c.push_str(" nopmtudisc");
        }
        c
    }

    /// Every command, in order, that brings the tunnel up.
    pub fn commands(&self) -> Vec<String> {
        let mut v = vec![
            self.add_command(),
            format!("ip link set {} up", self.name),
            format!("ip addr add {} dev {}", self.address, self.name),
        ];
        for r in &self.routes {
            v.push(format!("ip route add {r} dev {}", self.name));
        }
        v
    }
}

impl LinuxGuest {
    /// `ip addr add CIDR dev DEV`.
    pub fn addr_add(&self, cidr: &str, dev: &str) -> Result<String> {
        self.exec(&format!("ip addr add {cidr} dev {dev}"))
    }

    /// `ip link set DEV up`.
    pub fn link_up(&self, dev: &str) -> Result<String> {
        self.exec(&format!("ip link set {dev} up"))
    }

    /// `ip route add PREFIX dev DEV`.
    pub fn route_add(&self, prefix: &str, dev: &str) -> Result<String> {
        self.exec(&format!("ip route add {prefix} dev {dev}"))
    }

    /// `sysctl -w KEY=VALUE`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<String> {
        self.exec(&format!("sysctl -w {key}={value}"))
    }

    /// `ip -s link show DEV`.
    pub fn link_stats(&self, dev: &str) -> Result<String> {
        self.exec(&format!("ip -s link show {dev}"))
    }

    /// The underlay: `ip link set eth0 up`, `ip addr add CIDR dev eth0`.
    pub fn underlay(&self, cidr: &str) -> Result<Vec<String>> {
        let cmds = vec![
            "ip link set eth0 up".to_string(),
            format!("ip addr add {cidr} dev eth0"),
        ];
        for c in &cmds {
            self.exec(c)?;
        }
        Ok(cmds)
    }

    /// Runs [`LinuxTunnel::commands`]; returns them (for printing).
    pub fn add_tunnel(&self, t: &LinuxTunnel) -> Result<Vec<String>> {
        let cmds = t.commands();
        for c in &cmds {
            self.exec(c)?;
        }
        Ok(cmds)
    }

    /// (RX packets, TX packets) of `dev` out of `ip -s link show`.
    pub fn link_packets(&self, dev: &str) -> Result<(u64, u64)> {
        let text = self.link_stats(dev)?;
        parse_link_packets(&text)
            .ok_or_else(|| anyhow::anyhow!("cannot read packet counts of {dev} from:\n{text}"))
    }
}

/// (RX packets, TX packets) out of `ip -s link show` output.
pub fn parse_link_packets(text: &str) -> Option<(u64, u64)> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let value = |header: &str| -> Option<u64> {
        let i = lines.iter().position(|l| l.starts_with(header))?;
        lines.get(i + 1)?.split_whitespace().nth(1)?.parse().ok()
    };
    Some((value("RX:")?, value("TX:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_commands_are_iproute2s() {
        let mut t = LinuxTunnel::new(
            Ipv4Addr::new(192, 0, 2, 58),
            Ipv4Addr::new(192, 0, 2, 129),
            "10.0.2.1/24",
            &["10.0.1.0/24"],
        );
        assert_eq!(
            t.add_command(),
            "ip tunnel add tunl1 mode ipip remote 192.0.2.58 local 192.0.2.129"
        );
        t.ttl = Some(Ttl::Inherit);
        t.pmtudisc = false;
        t.tos = Some("inherit".into());
        assert_eq!(
            t.add_command(),
            "ip tunnel add tunl1 mode ipip remote 192.0.2.58 local 192.0.2.129 ttl inherit \
             tos inherit nopmtudisc"
        );
        assert_eq!(t.commands()[3], "ip route add 10.0.1.0/24 dev tunl1");
    }

    #[test]
    fn link_packets_parse() {
        let text = "4: tunl1@NONE: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1480\n    \
                    link/ipip 192.0.2.129 peer 192.0.2.58\n    \
                    RX:  bytes packets errors dropped  missed   mcast\n           \
                    840      10      0       0       0       0\n    \
                    TX:  bytes packets errors dropped carrier collsns\n          \
                    1680      20      0       0       0       0\n";
        assert_eq!(parse_link_packets(text), Some((10, 20)));
    }
}
