//! Fleet mode: peers and prefixes learned from a kernel routing table that a BGP daemon
//! (BIRD, FRR, GoBGP) writes, as Calico's IPIP mode does with BIRD. Each route `PREFIX via
//! NEXTHOP` in `[fleet] table` becomes a route toward peer `fleet-NEXTHOP`, under the same
//! strict policy as static peers: the prefix must lie in `allowed`, the next hop in
//! `underlay`, and the prefix must not cover a peer's underlay address, the local address or
//! the tunnel address, nor clash with a static peer's prefix (static wins). What passes is
//! merged with the static peers and applied with reload's diff (nothing unchanged is
//! touched), on every change notification of the table, and by a full resync on start and
//! every `resync_s` seconds, which also repairs a lost notification (netlink overrun).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use futures::StreamExt as _;
use ipnet::Ipv4Net;

use crate::{
    config::{Fleet, Peer, PeersFile},
    netif::NetError,
};

/// Peer name of a learned next hop.
pub fn peer_name(hop: Ipv4Addr) -> String {
    format!("fleet-{hop}")
}

/// What one pass over the table gave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Learned {
    /// One per next hop, prefixes sorted.
    pub peers: Vec<Peer>,
    /// Routes refused, each with why (for the log and the counter).
    pub refused: Vec<String>,
}

/// Applies the policy to the table's routes (`(prefix, next hop)`, `None` for routes without
/// one single next hop). `local`: this host's underlay address.
pub fn learn(
    routes: &[(Ipv4Net, Option<Ipv4Addr>)],
    file: &PeersFile,
    fleet: &Fleet,
    local: Ipv4Addr,
) -> Learned {
    let mut out = Learned::default();
    let static_remotes: BTreeSet<Ipv4Addr> = file.peers.iter().map(|p| p.remote).collect();
    let static_prefixes: Vec<(Ipv4Net, &str)> = file
        .peers
        .iter()
        .flat_map(|p| p.routes.iter().map(move |r| (*r, p.name.as_str())))
        .collect();
    let hops: BTreeSet<Ipv4Addr> = routes.iter().filter_map(|(_, h)| *h).collect();
    let tunnel_address = file.tunnel.address.map(|a| a.addr());
    let mut by_hop: BTreeMap<Ipv4Addr, BTreeSet<Ipv4Net>> = BTreeMap::new();
    for (net, hop) in routes {
        let refuse = |why: String| format!("{net}: {why}");
        let Some(hop) = hop else {
            out.refused.push(refuse("no single next hop".into()));
            continue;
        };
        if !fleet.underlay.iter().any(|u| u.contains(hop)) {
            out.refused.push(refuse(format!(
                "next hop {hop} is outside [fleet] underlay"
            )));
            continue;
        }
        if *hop == local || static_remotes.contains(hop) {
            out.refused.push(refuse(format!(
                "next hop {hop} is this host or a static peer (static wins)"
            )));
            continue;
        }
        if !fleet.allowed.iter().any(|a| a.contains(net)) {
            out.refused.push(refuse("outside [fleet] allowed".into()));
            continue;
        }
        if let Some(inside) = hops
            .iter()
            .chain(&static_remotes)
            .chain([&local])
            .chain(tunnel_address.as_ref())
            .find(|a| net.contains(*a))
        {
            out.refused.push(refuse(format!(
                "covers {inside}, an underlay, local or tunnel address: the tunnel would route itself"
            )));
            continue;
        }
        if let Some((s, name)) = static_prefixes
            .iter()
            .find(|(s, _)| s.contains(net) || net.contains(s))
        {
            out.refused.push(refuse(format!(
                "overlaps {s} of static peer {name} (static wins)"
            )));
            continue;
        }
        by_hop.entry(*hop).or_default().insert(*net);
    }
    out.peers = by_hop
        .into_iter()
        .map(|(hop, nets)| Peer {
            name: peer_name(hop),
            remote: hop,
            routes: nets.into_iter().collect(),
        })
        .collect();
    out
}

/// The static file with the learned peers added: what gets applied.
pub fn merged(file: &PeersFile, learned: &Learned) -> PeersFile {
    let mut f = file.clone();
    f.peers.extend(learned.peers.iter().cloned());
    f
}

/// A netlink socket subscribed to IPv4 route changes: every message that arrives is a hint
/// to resync (the resync reads the table whole, so lost or coalesced hints do no harm).
pub fn subscribe() -> Result<impl futures::Stream<Item = ()> + Unpin, NetError> {
    use rtnetlink::sys::{AsyncSocket as _, SocketAddr};
    let (mut conn, _handle, messages) = rtnetlink::new_connection()?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_IPV4_ROUTE))?;
    tokio::spawn(conn);
    Ok(messages.map(|_| ()))
}

/// What the follower learned, for `status`: `/run/ipip/net<ns>-<iface>.fleet.json`.
pub fn record(iface: &str, learned: &Learned) -> std::io::Result<()> {
    let Ok(dir) = crate::pins::PinDir::for_interface(iface) else {
        return Ok(());
    };
    let v = serde_json::json!({
        "learned_peers": learned.peers.iter().map(|p| serde_json::json!({
            "name": p.name,
            "remote": p.remote.to_string(),
            "routes": p.routes.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "refused": learned.refused,
    });
    let path = record_path(&dir);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, v.to_string())?;
    std::fs::rename(tmp, path)
}

pub fn record_path(dir: &crate::pins::PinDir) -> std::path::PathBuf {
    std::path::Path::new(crate::lock::LOCK_DIR)
        .join(format!("net{}-{}.fleet.json", dir.netns, dir.interface))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> PeersFile {
        PeersFile::parse(text, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn learned_routes_follow_the_policy() {
        let f = file(
            "[tunnel]\naddress = \"10.0.1.1/24\"\n[fleet]\ntable = 100\nunderlay = [\"192.0.2.0/24\"]\nallowed = [\"10.0.0.0/8\"]\n[[peer]]\nname = \"hub\"\nremote = \"192.0.2.9\"\nroutes = [\"10.9.0.0/16\"]\n",
        );
        let fleet = f.fleet.clone().unwrap();
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let a = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        let routes = vec![
            (n("10.20.2.0/24"), a("192.0.2.2")),
            (n("10.20.22.0/24"), a("192.0.2.2")),
            (n("10.20.3.0/24"), a("192.0.2.3")),
            (n("10.20.4.0/24"), a("198.51.100.4")), // next hop outside the underlay
            (n("172.16.0.0/24"), a("192.0.2.5")),   // outside allowed
            (n("10.0.0.0/8"), a("192.0.2.6")),      // covers the tunnel address
            (n("10.9.1.0/24"), a("192.0.2.7")),     // inside a static prefix
            (n("10.20.8.0/24"), a("192.0.2.9")),    // the static peer's remote
            (n("10.20.10.0/24"), None),             // multipath
        ];
        let l = learn(&routes, &f, &fleet, "192.0.2.1".parse().unwrap());
        assert_eq!(
            l.peers,
            vec![
                Peer {
                    name: "fleet-192.0.2.2".into(),
                    remote: "192.0.2.2".parse().unwrap(),
                    routes: vec![n("10.20.2.0/24"), n("10.20.22.0/24")],
                },
                Peer {
                    name: "fleet-192.0.2.3".into(),
                    remote: "192.0.2.3".parse().unwrap(),
                    routes: vec![n("10.20.3.0/24")],
                },
            ]
        );
        assert_eq!(l.refused.len(), 6, "{:#?}", l.refused);
        assert!(l.refused[0].contains("outside [fleet] underlay"));
        assert!(l.refused[2].contains("covers 10.0.1.1"));
        assert!(l.refused[3].contains("static peer hub"));
        let m = merged(&f, &l);
        assert_eq!(m.peers.len(), 3);
    }
}
