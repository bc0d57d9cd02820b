//! A peers file resolved against the interface it is attached to: everything the maps need,
//! computed once here so the data path does no per-packet work the loader could do.

use std::net::Ipv4Addr;

use ipip_common::{
    PeerConfig, PeerName, TunnelConfig, OUTER_HEADER_LEN, PEER_FLAG_PMTUDISC,
    PEER_FLAG_TOS_INHERIT, PEER_NAME_LEN, TTL_INHERIT,
};
use ipnet::Ipv4Net;

use crate::config::{Capacity, PeersFile, Tos, Ttl};

/// The facts about the underlay interface that the plan depends on.
#[derive(Clone, Debug)]
pub struct Underlay {
    pub ifindex: u32,
    pub mtu: u32,
    /// Underlay source: the file's `local`, else the interface's primary address.
    pub local: Ipv4Addr,
}

/// `net.ipv4.route.mtu_expires` when nothing else is known: the kernel's default, 10 minutes.
pub const DEFAULT_MTU_EXPIRES_S: u64 = 600;

#[derive(Clone, Debug)]
pub struct Plan {
    pub tunnel: TunnelConfig,
    /// Tunnel address to assign and use as route source.
    pub address: Option<Ipv4Net>,
    /// Largest inner packet: underlay MTU − 20 (Linux: 1480 on a 1500 link).
    pub tunnel_mtu: u32,
    pub peers: Vec<PlannedPeer>,
    /// How many peers and routes the maps are sized for.
    pub capacity: Capacity,
}

#[derive(Clone, Debug)]
pub struct PlannedPeer {
    /// Slot in the peers array and key of its counters.
    pub index: u32,
    pub name: String,
    pub config: PeerConfig,
    pub routes: Vec<Ipv4Net>,
}

impl Plan {
    pub fn new(file: &PeersFile, underlay: &Underlay) -> Self {
        let tunnel_mtu = underlay.mtu.saturating_sub(OUTER_HEADER_LEN as u32);
        let local = underlay.local.octets();
        let (ttl, tos, mut flags) = (
            match file.tunnel.ttl {
                Ttl::Inherit => TTL_INHERIT,
                Ttl::Fixed(t) => t,
            },
            match file.tunnel.tos {
                Tos::Inherit => 0,
                Tos::Fixed(t) => t,
            },
            0,
        );
        if file.tunnel.pmtudisc {
            flags |= PEER_FLAG_PMTUDISC;
        }
        if file.tunnel.tos == Tos::Inherit {
            flags |= PEER_FLAG_TOS_INHERIT;
        }
        let peers = file
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let remote = p.remote.octets();
                PlannedPeer {
                    index: i as u32,
                    name: p.name.clone(),
                    config: PeerConfig {
                        remote,
                        local,
                        ttl,
                        tos,
                        mtu: tunnel_mtu.min(u16::MAX as u32) as u16,
                        flags,
                        csum_base: ipip_ebpf::outer::csum_base(local, remote),
                        in_use: 1,
                    },
                    routes: p.routes.clone(),
                }
            })
            .collect::<Vec<_>>();
        let address = file.tunnel.address;
        Plan {
            capacity: file.capacity(),
            tunnel: TunnelConfig {
                local,
                address: address.map_or([0; 4], |a| a.addr().octets()),
                address_prefix_len: address.map_or(0, |a| a.prefix_len() as u32),
                ifindex: underlay.ifindex,
                flags: 0,
                peer_count: peers.len() as u32,
                netns_cookie: 0,
                // The kernel's default; attach reads the namespace's own value.
                pmtu_expires_ns: DEFAULT_MTU_EXPIRES_S * 1_000_000_000,
            },
            address,
            tunnel_mtu,
            peers,
        }
    }
}

/// A peer name as stored in the names map (NUL-padded, truncated to fit).
pub fn peer_name(name: &str) -> PeerName {
    let mut out = [0u8; PEER_NAME_LEN];
    let n = name.len().min(PEER_NAME_LEN - 1);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    PeerName(out)
}

/// The name back from the map.
pub fn peer_name_str(name: &PeerName) -> String {
    let end = name.0.iter().position(|b| *b == 0).unwrap_or(PEER_NAME_LEN);
    String::from_utf8_lossy(&name.0[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn plan_precomputes_peer_config() {
        let file = PeersFile::parse(
            "[tunnel]\naddress = \"10.0.1.1/24\"\nttl = 17\ntos = \"inherit\"\n[[peer]]\nname = \"calculon\"\nremote = \"192.0.2.129\"\nroutes = [\"10.0.2.0/24\"]\n",
            Path::new("p.toml"),
        )
        .unwrap();
        let plan = Plan::new(
            &file,
            &Underlay {
                ifindex: 7,
                mtu: 1500,
                local: Ipv4Addr::new(192, 0, 2, 58),
            },
        );
        assert_eq!(plan.tunnel_mtu, 1480);
        assert_eq!(plan.tunnel.ifindex, 7);
        assert_eq!(plan.tunnel.local, [192, 0, 2, 58]);
        assert_eq!(plan.tunnel.address, [10, 0, 1, 1]);
        assert_eq!(plan.tunnel.address_prefix_len, 24);
        let p = &plan.peers[0].config;
        assert_eq!(p.remote, [192, 0, 2, 129]);
        assert_eq!(p.ttl, 17);
        assert_eq!(p.mtu, 1480);
        assert!(p.pmtudisc() && p.tos_inherit());
        assert_eq!(
            p.csum_base,
            ipip_ebpf::outer::csum_base([192, 0, 2, 58], [192, 0, 2, 129])
        );
    }

    #[test]
    fn names_round_trip_and_truncate() {
        assert_eq!(peer_name_str(&peer_name("calculon")), "calculon");
        let long = "x".repeat(40);
        assert_eq!(peer_name_str(&peer_name(&long)).len(), PEER_NAME_LEN - 1);
    }
}
