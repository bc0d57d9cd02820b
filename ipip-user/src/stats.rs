//! Counters, read from the pinned maps by any process: per peer, and per drop/hand-off reason.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use ipip_common::{
    Path, PeerConfig, PeerCounters, PeerName, PeerPmtu, Reason, MAP_PATHS, MAP_PEERS,
    MAP_PEER_NAMES, MAP_PEER_PMTU, MAP_PEER_STATS, MAP_REASONS, TUNNEL_FLAG_XDP_GENERIC,
};

use crate::{
    pins::{read_tunnel, PinDir, LINK_XDP},
    plan::peer_name_str,
};

#[derive(Debug, serde::Serialize)]
pub struct Snapshot {
    /// Version of this object's layout (docs/stats.schema.json); bumped on any change a
    /// script could notice, never for additions.
    pub schema_version: u32,
    pub interface: String,
    pub netns: u64,
    pub local: Ipv4Addr,
    pub address: Option<String>,
    /// Configured tunnel MTU (underlay MTU − 20); `null` with no peer configured.
    pub tunnel_mtu: Option<u16>,
    /// `xdp` or `tc`: where decapsulation runs.
    pub decap: &'static str,
    /// `native` or `generic` with XDP decap, `null` with TC.
    pub xdp_mode: Option<&'static str>,
    /// The pinned programs and their kernel ids.
    pub programs: Vec<crate::pins::Program>,
    pub peers: Vec<PeerStats>,
    /// Every reason by name, zero or not, so scripts can rely on the keys.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Packets per path (fast path vs kernel, each direction), every key always present.
    pub paths: BTreeMap<&'static str, u64>,
}

#[derive(Debug, serde::Serialize)]
pub struct PeerStats {
    pub name: String,
    pub remote: Ipv4Addr,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Configured tunnel MTU toward this peer (underlay MTU − 20).
    pub mtu: u16,
    /// Path MTU learned from ICMP "fragmentation needed" (a tunnel MTU, outer MTU − 20), while
    /// it holds; `null` when none is in force.
    pub learned_mtu: Option<u16>,
    /// Seconds until `learned_mtu` expires (`net.ipv4.route.mtu_expires`).
    pub learned_mtu_expires_in_s: Option<u64>,
}

/// See [`Snapshot::schema_version`].
pub const SCHEMA_VERSION: u32 = 1;

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn open(dir: &PinDir, name: &str) -> Result<MapData> {
    MapData::from_pin(dir.map(name)).with_context(|| {
        format!(
            "opening pinned map {} (is the attachment complete? `ipip-user status`)",
            dir.map(name).display()
        )
    })
}

pub fn read(dir: &PinDir) -> Result<Snapshot> {
    let tunnel = read_tunnel(dir)?;
    let peers: Array<MapData, PeerConfig> = Array::try_from(Map::Array(open(dir, MAP_PEERS)?))?;
    let names: Array<MapData, PeerName> = Array::try_from(Map::Array(open(dir, MAP_PEER_NAMES)?))?;
    let peer_stats: PerCpuArray<MapData, PeerCounters> =
        PerCpuArray::try_from(Map::PerCpuArray(open(dir, MAP_PEER_STATS)?))?;
    let reasons_map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(dir, MAP_REASONS)?))?;
    let paths_map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(dir, MAP_PATHS)?))?;

    // Absent from attachments made before PMTU learning existed: nothing learned there.
    let pmtu: Option<Array<MapData, PeerPmtu>> = MapData::from_pin(dir.map(MAP_PEER_PMTU))
        .ok()
        .and_then(|m| Array::try_from(Map::Array(m)).ok());
    let now = monotonic_ns();
    let mut out_peers = Vec::new();
    for i in 0..tunnel.peer_count {
        let cfg = peers.get(&i, 0)?;
        if cfg.in_use == 0 {
            continue;
        }
        let mut sum = PeerCounters::default();
        for c in peer_stats.get(&i, 0)?.iter() {
            sum.rx_packets += c.rx_packets;
            sum.rx_bytes += c.rx_bytes;
            sum.tx_packets += c.tx_packets;
            sum.tx_bytes += c.tx_bytes;
        }
        let learned = pmtu
            .as_ref()
            .and_then(|m| m.get(&i, 0).ok())
            .filter(|p| p.effective(cfg.mtu, now) < cfg.mtu);
        out_peers.push(PeerStats {
            mtu: cfg.mtu,
            learned_mtu: learned.map(|p| p.mtu as u16),
            learned_mtu_expires_in_s: learned.map(|p| (p.expires_ns - now).div_ceil(1_000_000_000)),
            name: peer_name_str(&names.get(&i, 0)?),
            remote: Ipv4Addr::from(cfg.remote),
            rx_packets: sum.rx_packets,
            rx_bytes: sum.rx_bytes,
            tx_packets: sum.tx_packets,
            tx_bytes: sum.tx_bytes,
        });
    }
    let mut reasons = BTreeMap::new();
    for r in Reason::ALL {
        let n: u64 = reasons_map.get(&(r as u32), 0)?.iter().sum();
        reasons.insert(r.name(), n);
    }
    let mut paths = BTreeMap::new();
    for p in Path::ALL {
        let n: u64 = paths_map.get(&(p as u32), 0)?.iter().sum();
        paths.insert(p.name(), n);
    }
    Ok(Snapshot {
        schema_version: SCHEMA_VERSION,
        interface: dir.interface.clone(),
        netns: dir.netns,
        local: Ipv4Addr::from(tunnel.local),
        address: (tunnel.address != [0; 4]).then(|| {
            format!(
                "{}/{}",
                Ipv4Addr::from(tunnel.address),
                tunnel.address_prefix_len
            )
        }),
        tunnel_mtu: out_peers.first().map(|p| p.mtu),
        decap: if dir.link(LINK_XDP).exists() {
            "xdp"
        } else {
            "tc"
        },
        xdp_mode: dir.link(LINK_XDP).exists().then_some(
            if tunnel.flags & TUNNEL_FLAG_XDP_GENERIC != 0 {
                "generic"
            } else {
                "native"
            },
        ),
        programs: crate::pins::programs(dir),
        peers: out_peers,
        reasons,
        paths,
    })
}

/// A snapshot and when it was taken, for rates.
pub struct Sample {
    pub snapshot: Snapshot,
    pub at: std::time::Instant,
}

impl Sample {
    pub fn take(dir: &PinDir) -> Result<Self> {
        Ok(Self {
            snapshot: read(dir)?,
            at: std::time::Instant::now(),
        })
    }
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs
}

/// Human-readable rendering, in the spirit of `ip -s link` and `wg show`: per peer, the
/// fast/kernel split, and only the reasons that moved (`all`: every reason); with a previous
/// sample, per-second rates too.
pub fn render(s: &Snapshot, rates: Option<(&Sample, &Sample)>, all: bool) -> String {
    let mut o = String::new();
    let secs = rates.map(|(b, n)| n.at.duration_since(b.at).as_secs_f64().max(1e-3));
    let before = rates.map(|(b, _)| &b.snapshot);
    let _ = writeln!(
        o,
        "{}: local {}  tunnel address {}  decap {}{}  tunnel MTU {}",
        s.interface,
        s.local,
        s.address.as_deref().unwrap_or("none"),
        s.decap,
        s.xdp_mode.map(|m| format!(" ({m})")).unwrap_or_default(),
        s.tunnel_mtu
            .map_or_else(|| "-".to_string(), |m| m.to_string()),
    );
    for p in &s.peers {
        let mtu = match (p.learned_mtu, p.learned_mtu_expires_in_s) {
            (Some(m), Some(e)) => {
                format!(
                    "  mtu {m} (learned; configured {}, expires in {e} s)",
                    p.mtu
                )
            }
            _ => String::new(),
        };
        let _ = writeln!(o, "  peer {}  remote {}{mtu}", p.name, p.remote);
        let _ = writeln!(
            o,
            "    rx {:>10} pkt {:>14} B    tx {:>10} pkt {:>14} B",
            p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes
        );
        let q = before.and_then(|b| b.peers.iter().find(|q| q.name == p.name));
        if let (Some(q), Some(secs)) = (q, secs) {
            let _ = writeln!(
                o,
                "    rx {:>10.0} pkt/s {:>9.3} Mbit/s    tx {:>10.0} pkt/s {:>9.3} Mbit/s",
                rate(p.rx_packets, q.rx_packets, secs),
                rate(p.rx_bytes, q.rx_bytes, secs) * 8.0 / 1e6,
                rate(p.tx_packets, q.tx_packets, secs),
                rate(p.tx_bytes, q.tx_bytes, secs) * 8.0 / 1e6,
            );
        }
    }
    let path = |p: Path| s.paths.get(p.name()).copied().unwrap_or(0);
    let _ = writeln!(
        o,
        "  encap {} fast, {} kernel    decap {} fast, {} kernel",
        path(Path::EncapFast),
        path(Path::EncapKernel),
        path(Path::DecapFast),
        path(Path::DecapKernel)
    );
    let mut shown = 0;
    for r in Reason::ALL {
        let n = s.reasons.get(r.name()).copied().unwrap_or(0);
        if n == 0 && !all {
            continue;
        }
        let kind = match r {
            Reason::HeldOuterFragment => "held",
            _ if r.is_drop() => "drop",
            _ => "pass",
        };
        let moving = match (before.and_then(|b| b.reasons.get(r.name())), secs) {
            (Some(b), Some(secs)) => format!(" {:>9.0}/s", rate(n, *b, secs)),
            _ => String::new(),
        };
        let _ = writeln!(o, "  {kind} {:<22} {n:>12}{moving}  {}", r.name(), r.help());
        shown += 1;
    }
    if shown == 0 {
        let _ = writeln!(
            o,
            "  no drops or hand-offs (`stats --all` lists every reason)"
        );
    }
    o
}
