//! What an attachment recorded about itself in its pins, read and written in one place: the
//! tunnel settings and flags (config map), the routes it installed (route map), its links and
//! its programs. status, stats, attach, reload and detach all go through here.

use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::Result;
use aya::maps::{Array, LpmTrie, MapData};
use ipip_common::{TunnelConfig, MAP_CONFIG, MAP_ROUTES};
use ipnet::Ipv4Net;

use super::{netns_cookie, PinDir};

/// Pin names of the links: XDP (with `--decap xdp`), TC ingress (always: decapsulation with
/// `--decap tc`, reassembly of outer fragments either way) and TC egress.
pub const LINK_XDP: &str = "xdp";
pub const LINK_TC_INGRESS: &str = "tc_ingress";
pub const LINK_TC_EGRESS: &str = "tc_egress";
/// One link per LAN interface: `xdp_lan_<interface>`.
pub const LINK_XDP_LAN_PREFIX: &str = "xdp_lan_";

/// The tunnel settings of an attachment, from its pinned config map.
pub fn read_tunnel(dir: &PinDir) -> Result<TunnelConfig> {
    let data = MapData::from_pin(dir.map(MAP_CONFIG))?;
    let map: Array<MapData, TunnelConfig> = Array::try_from(aya::maps::Map::Array(data))?;
    Ok(map.get(&0, 0)?)
}

/// Rewrites the tunnel settings (reload's peer count).
pub fn write_tunnel(dir: &PinDir, tunnel: &TunnelConfig) -> Result<()> {
    let data = MapData::from_pin(dir.map(MAP_CONFIG))?;
    let mut map: Array<MapData, TunnelConfig> = Array::try_from(aya::maps::Map::Array(data))?;
    map.set(0, *tunnel, 0)?;
    Ok(())
}

/// Sets or clears `TUNNEL_FLAG_*` bits in an attachment's pinned config map.
pub fn set_tunnel_flags(dir: &PinDir, flags: u32, on: bool) -> Result<()> {
    let mut t = read_tunnel(dir)?;
    if on {
        t.flags |= flags;
    } else {
        t.flags &= !flags;
    }
    write_tunnel(dir, &t)
}

/// The prefixes in an attachment's pinned route map: the routes it installed.
pub fn read_routes(dir: &PinDir) -> Result<HashSet<Ipv4Net>> {
    let data = MapData::from_pin(dir.map(MAP_ROUTES))?;
    let map: LpmTrie<MapData, [u8; 4], u32> = LpmTrie::try_from(aya::maps::Map::LpmTrie(data))?;
    let mut out = HashSet::new();
    for key in map.keys() {
        let key = key?;
        out.insert(Ipv4Net::new(
            Ipv4Addr::from(key.data()),
            key.prefix_len() as u8,
        )?);
    }
    Ok(out)
}

/// Whether an attachment's pins were left by a deleted namespace that had the same inode as
/// this one (inodes are reused at once; the namespace cookie is not).
pub fn is_stale(dir: &PinDir) -> bool {
    match (read_tunnel(dir), netns_cookie()) {
        (Ok(t), Ok(cookie)) => t.netns_cookie != cookie,
        _ => false,
    }
}

/// The LAN interfaces with the fast path (from the link pins).
pub fn lan_links(dir: &PinDir) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.path.join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(LINK_XDP_LAN_PREFIX))
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out
}

/// A pinned program, as the kernel reports it.
#[derive(Debug, serde::Serialize)]
pub struct Program {
    pub name: String,
    pub id: u32,
    /// Instructions the verifier walked when loading it (kernel 5.16+).
    pub verified_insns: Option<u32>,
}

/// Every program pinned in `dir`, sorted by name.
pub fn programs(dir: &PinDir) -> Vec<Program> {
    let mut out: Vec<Program> = std::fs::read_dir(dir.path.join("progs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let info = aya::programs::ProgramInfo::from_pin(e.path()).ok()?;
            Some(Program {
                name: e.file_name().to_string_lossy().into_owned(),
                id: info.id(),
                verified_insns: info.verified_instruction_count(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
