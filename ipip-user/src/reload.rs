//! reload: apply a changed peers file to a live attachment, touching only what changed and
//! never leaving a moment in which unchanged traffic has no route or no peer.
//!
//! Peers are matched by name and keep their slot (and counters); new peers take free slots,
//! within the capacity the attachment was sized for. The order keeps every packet handled:
//! peers first (config, name, remote lookup), then new and moved routes (the map entry before
//! the kernel route, a moved kernel route replaced in one step), then removed routes (the
//! kernel route before the map entry), and removed peers last.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    path::Path,
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray};
use ipip_common::{
    PeerConfig, PeerCounters, PeerName, PeerPmtu, MAP_PEERS, MAP_PEER_BY_REMOTE, MAP_PEER_NAMES,
    MAP_PEER_PMTU, MAP_PEER_STATS, MAP_ROUTES,
};
use ipnet::Ipv4Net;

use crate::{
    attach::next_hop,
    config::PeersFile,
    lock,
    netif::{route_mtu, route_prefix, Netlink},
    pins::{read_tunnel, write_tunnel, PinDir},
    plan::{peer_name, peer_name_str, Plan, Underlay},
};

/// What a reload changed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Reloaded {
    pub interface: String,
    pub peers_added: Vec<String>,
    pub peers_removed: Vec<String>,
    /// Same name, new remote or settings.
    pub peers_changed: Vec<String>,
    pub routes_added: usize,
    pub routes_removed: usize,
    /// Same prefix, another peer, next hop or MTU.
    pub routes_moved: usize,
}

fn pinned(dir: &PinDir, name: &str) -> Result<MapData> {
    MapData::from_pin(dir.map(name)).with_context(|| format!("opening {}", dir.map(name).display()))
}

/// "1 peer", "2 peers".
fn counted(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The peer slots a file's peers get: an existing name keeps its slot, a new one takes the
/// lowest slot no peer had before this reload (a removed peer's slot still has routes
/// pointing at it until they are gone). `None` when there are not enough such slots.
pub fn assign_slots(old: &HashMap<String, u32>, new: &[String], capacity: u32) -> Option<Vec<u32>> {
    let taken: HashSet<u32> = old.values().copied().collect();
    let mut free = (0..capacity).filter(|i| !taken.contains(i));
    new.iter()
        .map(|n| old.get(n).copied().or_else(|| free.next()))
        .collect()
}

pub async fn reload(interface: &str, peers_path: &Path) -> Result<Reloaded> {
    let file = PeersFile::load(peers_path)?;
    if file.fleet.is_some() {
        bail!("{}: has a [fleet] section: its learned peers live in the `ipip-user run` that follows the routing table; reload that one (SIGHUP, `systemctl reload ipip@{interface}`)", peers_path.display());
    }
    apply(interface, &file, peers_path).await
}

/// Applies `file` (read from `peers_path`, named in messages) to the live attachment: what
/// `reload` does, and what fleet mode does with the static peers plus the learned ones.
pub async fn apply(interface: &str, file: &PeersFile, peers_path: &Path) -> Result<Reloaded> {
    crate::attach::step("reload", "prepare");
    let dir = PinDir::for_interface(interface)?;
    let _lock = lock::lock(&dir)?;
    if !dir.exists() {
        bail!("{interface} is not attached in this network namespace: `ipip-user attach {interface} --peers {}` first", peers_path.display());
    }
    let nl = Netlink::open()?;
    let mut tunnel = read_tunnel(&dir).with_context(|| {
        format!("{interface}'s attachment is not intact (see `ipip-user status`)")
    })?;
    let link = nl
        .link_by_index(tunnel.ifindex)
        .await?
        .filter(|l| l.name == interface)
        .with_context(|| format!("{interface} is gone or renamed: detach it"))?;

    // What only attach sets up.
    let needs_attach = |what: &str| -> Result<()> {
        bail!("{}: {what} changed; that takes `ipip-user detach {interface}` and attach again (reload changes peers, routes and per-peer settings)", peers_path.display())
    };
    if file
        .tunnel
        .local
        .is_some_and(|l| l.octets() != tunnel.local)
    {
        needs_attach("[tunnel] local")?;
    }
    let address = file.tunnel.address;
    let attached_address = (tunnel.address != [0; 4]).then(|| {
        Ipv4Net::new(
            Ipv4Addr::from(tunnel.address),
            tunnel.address_prefix_len as u8,
        )
        .ok()
    });
    if address.map(Some) != attached_address {
        needs_attach("[tunnel] address")?;
    }
    crate::attach::refuse_routes_over_local(
        file,
        Ipv4Addr::from(tunnel.local),
        interface,
        peers_path,
    )?;
    let lans = crate::pins::lan_links(&dir);
    if let Some(l) = file.tunnel.lan.iter().find(|l| !lans.contains(l)) {
        needs_attach(&format!("[tunnel] lan ({l} is not attached)"))?;
    }

    let mut peers: Array<MapData, PeerConfig> =
        Array::try_from(aya::maps::Map::Array(pinned(&dir, MAP_PEERS)?))?;
    let mut names: Array<MapData, PeerName> =
        Array::try_from(aya::maps::Map::Array(pinned(&dir, MAP_PEER_NAMES)?))?;
    let mut by_remote: BpfHashMap<MapData, [u8; 4], u32> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(pinned(&dir, MAP_PEER_BY_REMOTE)?))?;
    let mut routes: LpmTrie<MapData, [u8; 4], u32> =
        LpmTrie::try_from(aya::maps::Map::LpmTrie(pinned(&dir, MAP_ROUTES)?))?;
    let mut stats: PerCpuArray<MapData, PeerCounters> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(pinned(&dir, MAP_PEER_STATS)?))?;
    let mut pmtu: Array<MapData, PeerPmtu> =
        Array::try_from(aya::maps::Map::Array(pinned(&dir, MAP_PEER_PMTU)?))?;
    let peer_capacity = peers.len();
    let route_capacity = pinned(&dir, MAP_ROUTES)?.info()?.max_entries();
    if file.peers.len() as u32 > peer_capacity
        || file.route_count() as u64 > u64::from(route_capacity)
    {
        bail!(
            "{}: {} and {}, but {interface} was attached with room for {} and {}: detach and attach again to resize (attach sizes the maps from the file, or from [tunnel] max_peers / max_routes when set)",
            peers_path.display(),
            counted(file.peers.len() as u64, "peer"),
            counted(file.route_count() as u64, "route"),
            counted(u64::from(peer_capacity), "peer"),
            counted(u64::from(route_capacity), "route"),
        );
    }

    // The live state.
    let mut old: HashMap<String, (u32, PeerConfig)> = HashMap::new();
    for i in 0..tunnel.peer_count.min(peer_capacity) {
        let cfg = peers.get(&i, 0)?;
        if cfg.in_use != 0 {
            old.insert(peer_name_str(&names.get(&i, 0)?), (i, cfg));
        }
    }
    let mut old_routes: HashMap<Ipv4Net, u32> = HashMap::new();
    for key in routes.keys() {
        let key = key?;
        let net = Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)?;
        old_routes.insert(net, routes.get(&key, 0)?);
    }

    // The new state, in the old slots.
    let mut plan = Plan::new(
        file,
        &Underlay {
            ifindex: tunnel.ifindex,
            mtu: link.mtu,
            local: Ipv4Addr::from(tunnel.local),
        },
    );
    let old_slots: HashMap<String, u32> = old.iter().map(|(n, (i, _))| (n.clone(), *i)).collect();
    let wanted: Vec<String> = plan.peers.iter().map(|p| p.name.clone()).collect();
    let Some(slots) = assign_slots(&old_slots, &wanted, peer_capacity) else {
        bail!(
            "{}: the new peers need slots that peers being removed still hold ({peer_capacity} in all): reload once without the removed peers, then with the new ones (or detach and attach with a larger [tunnel] max_peers)",
            peers_path.display()
        );
    };
    for (p, slot) in plan.peers.iter_mut().zip(&slots) {
        p.index = *slot;
    }
    let mut hops: HashMap<u32, Ipv4Addr> = HashMap::new();
    for (p, f) in plan.peers.iter().zip(&file.peers) {
        let hop = next_hop(&nl, &link, f).await?;
        hops.insert(p.index, hop.unwrap_or(f.remote));
    }
    let new_routes: HashMap<Ipv4Net, u32> = plan
        .peers
        .iter()
        .flat_map(|p| p.routes.iter().map(move |r| (*r, p.index)))
        .collect();

    let mut done = Reloaded {
        interface: interface.to_string(),
        ..Default::default()
    };
    crate::attach::step("reload", "peers");
    // 1. Peers: new and changed ones written (a new remote looked up before the old one goes).
    let mut old_remotes_to_drop = Vec::new();
    for p in &plan.peers {
        match old.get(&p.name) {
            Some((_, cfg)) if *cfg == p.config => continue,
            Some((_, cfg)) => {
                done.peers_changed.push(p.name.clone());
                if cfg.remote != p.config.remote {
                    old_remotes_to_drop.push(cfg.remote);
                }
            }
            None => {
                done.peers_added.push(p.name.clone());
                // A fresh slot starts from zero.
                let zeros =
                    vec![PeerCounters::default(); aya::util::nr_cpus().map_err(|(_, e)| e)?];
                stats.set(p.index, aya::maps::PerCpuValues::try_from(zeros)?, 0)?;
                pmtu.set(p.index, PeerPmtu::default(), 0)?;
                names.set(p.index, peer_name(&p.name), 0)?;
            }
        }
        peers.set(p.index, p.config, 0)?;
        by_remote.insert(p.config.remote, p.index, 0)?;
    }
    let top = plan.peers.iter().map(|p| p.index + 1).max().unwrap_or(0);
    if top > tunnel.peer_count {
        tunnel.peer_count = top;
        write_tunnel(&dir, &tunnel)?;
    }

    crate::attach::step("reload", "new routes");
    // 2. New and moved routes: the map entry, then the kernel route.
    let src = address.map(|a| a.addr());
    let moved_remotes: HashSet<u32> = plan
        .peers
        .iter()
        .filter(|p| {
            old.get(&p.name)
                .is_some_and(|(_, c)| c.remote != p.config.remote)
        })
        .map(|p| p.index)
        .collect();
    // The kernel's own view too: a reload killed between a map entry and its kernel route
    // left the entry without the route, and this reload puts the route back; a route whose
    // MTU is no longer the tunnel's (the underlay's MTU changed) gets the new one.
    let in_kernel: HashMap<Ipv4Net, Option<u32>> = nl
        .our_routes(tunnel.ifindex)
        .await?
        .iter()
        .filter_map(|r| Some((route_prefix(r)?, route_mtu(r))))
        .collect();
    let sorted: BTreeSet<Ipv4Net> = new_routes.keys().copied().collect();
    for net in sorted {
        let idx = new_routes[&net];
        let gateway = hops[&idx];
        let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
        match old_routes.get(&net) {
            Some(o)
                if *o == idx
                    && !moved_remotes.contains(&idx)
                    && in_kernel.get(&net) == Some(&Some(plan.tunnel_mtu)) => {}
            Some(o)
                if *o == idx && !moved_remotes.contains(&idx) && in_kernel.contains_key(&net) =>
            {
                nl.replace_route(net, Some(gateway), tunnel.ifindex, src, plan.tunnel_mtu)
                    .await
                    .with_context(|| format!("setting the tunnel MTU on route {net}"))?;
                done.routes_moved += 1;
            }
            Some(o) if *o == idx && !moved_remotes.contains(&idx) => {
                nl.add_route(net, Some(gateway), tunnel.ifindex, src, plan.tunnel_mtu)
                    .await
                    .with_context(|| format!("restoring route {net}"))?;
                done.routes_added += 1;
            }
            Some(_) => {
                routes.insert(&key, idx, 0)?;
                nl.replace_route(net, Some(gateway), tunnel.ifindex, src, plan.tunnel_mtu)
                    .await
                    .with_context(|| format!("moving route {net}"))?;
                done.routes_moved += 1;
            }
            None => {
                routes.insert(&key, idx, 0)?;
                nl.add_route(net, Some(gateway), tunnel.ifindex, src, plan.tunnel_mtu)
                    .await
                    .with_context(|| format!("installing route {net}"))?;
                done.routes_added += 1;
            }
        }
    }

    crate::attach::step("reload", "removed routes");
    // 3. Removed routes: the kernel route, then the map entry.
    let gone: HashSet<Ipv4Net> = old_routes
        .keys()
        .filter(|n| !new_routes.contains_key(n))
        .copied()
        .collect();
    if !gone.is_empty() {
        for r in nl.our_routes(tunnel.ifindex).await? {
            if route_prefix(&r).is_some_and(|p| gone.contains(&p)) {
                nl.del_route(r).await?;
            }
        }
        for net in &gone {
            let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
            routes.remove(&key)?;
            done.routes_removed += 1;
        }
    }

    crate::attach::step("reload", "removed peers");
    // 4. Removed peers, and remotes no peer has any more.
    let kept: HashSet<&str> = plan.peers.iter().map(|p| p.name.as_str()).collect();
    let live_remotes: HashSet<[u8; 4]> = plan.peers.iter().map(|p| p.config.remote).collect();
    for (name, (idx, cfg)) in &old {
        if kept.contains(name.as_str()) {
            continue;
        }
        done.peers_removed.push(name.clone());
        peers.set(*idx, PeerConfig::default(), 0)?;
        if !live_remotes.contains(&cfg.remote) {
            let _ = by_remote.remove(&cfg.remote);
        }
    }
    for remote in old_remotes_to_drop {
        if !live_remotes.contains(&remote) {
            let _ = by_remote.remove(&remote);
        }
    }
    done.peers_added.sort();
    done.peers_removed.sort();
    done.peers_changed.sort();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_keep_their_slots_and_new_ones_fill_gaps() {
        let old: HashMap<String, u32> = [("a".to_string(), 0), ("c".to_string(), 2)].into();
        let new: Vec<String> = ["c", "b", "a", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(assign_slots(&old, &new, 8), Some(vec![2, 1, 0, 3]));
        assert_eq!(assign_slots(&old, &new, 3), None);
        assert_eq!(assign_slots(&HashMap::new(), &[], 1), Some(vec![]));
        // x goes, y comes: y must not take x's slot while x's routes may still point there.
        let old: HashMap<String, u32> = [("a".to_string(), 0), ("x".to_string(), 1)].into();
        let new: Vec<String> = ["a", "y"].iter().map(|s| s.to_string()).collect();
        assert_eq!(assign_slots(&old, &new, 4), Some(vec![0, 2]));
        assert_eq!(assign_slots(&old, &new, 2), None);
    }
}
