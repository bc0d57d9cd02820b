//! The eBPF object: loading it, and writing a [`Plan`] into its maps.

use aya::{
    maps::{lpm_trie::Key, Array, DevMapHash, HashMap, LpmTrie, MapData},
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use ipip_common::{
    PeerConfig, PeerName, TunnelConfig, MAP_CONFIG, MAP_FWD_DEVS, MAP_LAN_MACS, MAP_PEERS,
    MAP_PEER_BY_REMOTE, MAP_PEER_NAMES, MAP_ROUTES, PEER_MAPS, PROG_TC_EGRESS, PROG_TC_INGRESS,
    PROG_XDP_DECAP, PROG_XDP_LAN,
};

use crate::config::Capacity;
use crate::plan::{peer_name, Plan};

/// The embedded object, built by build.rs from ipip-ebpf.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipip"));

/// The bench harness object (`cargo xtask bench`); ipip-user itself never loads it.
pub static BENCH_HARNESS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipip-bench"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object failed")]
    Load(#[from] aya::EbpfError),
    #[error("the kernel refused program {name}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {name}")]
    DevMap {
        name: &'static str,
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("the eBPF object has no {what} named {name} (object and loader out of step)")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
}

pub struct Datapath {
    pub ebpf: Ebpf,
}

impl Datapath {
    /// Loads the object and both programs into the kernel (maps created, nothing attached).
    /// Loads the object with the peer and route maps sized to `capacity`.
    pub fn load(capacity: Capacity) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_ROUTES, capacity.routes);
        for name in PEER_MAPS {
            loader.map_max_entries(name, capacity.peers);
        }
        let mut ebpf = loader.load(OBJECT)?;
        for name in [PROG_XDP_DECAP, PROG_XDP_LAN] {
            let xdp: &mut Xdp = prog_mut(&mut ebpf, name)?;
            xdp.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        for name in [PROG_TC_EGRESS, PROG_TC_INGRESS] {
            let tc: &mut SchedClassifier = prog_mut(&mut ebpf, name)?;
            tc.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        Ok(Self { ebpf })
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, DatapathError> {
        prog_mut(&mut self.ebpf, PROG_XDP_DECAP)
    }

    /// The gateway fast path's encapsulator, for LAN interfaces.
    pub fn xdp_lan(&mut self) -> Result<&mut Xdp, DatapathError> {
        prog_mut(&mut self.ebpf, PROG_XDP_LAN)
    }

    /// Lets the XDP fast path redirect to these interfaces (the underlay and the LANs).
    pub fn allow_forwarding_to(&mut self, ifindexes: &[u32]) -> Result<(), DatapathError> {
        let mut devs: DevMapHash<&mut MapData> = map_mut(&mut self.ebpf, MAP_FWD_DEVS)?;
        for i in ifindexes {
            devs.insert(*i, *i, None, 0)
                .map_err(|source| DatapathError::DevMap {
                    name: MAP_FWD_DEVS,
                    source,
                })?;
        }
        Ok(())
    }

    /// Tells the fast path each LAN interface's MAC: it forwards only frames addressed to it.
    pub fn accept_frames_to(&mut self, macs: &[(u32, [u8; 6])]) -> Result<(), DatapathError> {
        let mut map: HashMap<&mut MapData, u32, [u8; 6]> = map_mut(&mut self.ebpf, MAP_LAN_MACS)?;
        for (ifindex, mac) in macs {
            map.insert(ifindex, mac, 0)
                .map_err(|source| DatapathError::Map {
                    name: MAP_LAN_MACS,
                    source,
                })?;
        }
        Ok(())
    }

    /// The TC egress encapsulator.
    pub fn tc(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        prog_mut(&mut self.ebpf, PROG_TC_EGRESS)
    }

    /// The TC ingress decapsulator (the alternative to XDP).
    pub fn tc_decap(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        prog_mut(&mut self.ebpf, PROG_TC_INGRESS)
    }

    /// Writes the plan into the maps. Peers first, then routes: a route never points at a
    /// peer slot that is not filled yet.
    pub fn fill(&mut self, plan: &Plan) -> Result<(), DatapathError> {
        let mut peers: Array<&mut MapData, PeerConfig> = map_mut(&mut self.ebpf, MAP_PEERS)?;
        for p in &plan.peers {
            peers
                .set(p.index, p.config, 0)
                .map_err(|source| DatapathError::Map {
                    name: MAP_PEERS,
                    source,
                })?;
        }
        let mut names: Array<&mut MapData, PeerName> = map_mut(&mut self.ebpf, MAP_PEER_NAMES)?;
        for p in &plan.peers {
            names
                .set(p.index, peer_name(&p.name), 0)
                .map_err(|source| DatapathError::Map {
                    name: MAP_PEER_NAMES,
                    source,
                })?;
        }
        let mut by_remote: HashMap<&mut MapData, [u8; 4], u32> =
            map_mut(&mut self.ebpf, MAP_PEER_BY_REMOTE)?;
        for p in &plan.peers {
            by_remote
                .insert(p.config.remote, p.index, 0)
                .map_err(|source| DatapathError::Map {
                    name: MAP_PEER_BY_REMOTE,
                    source,
                })?;
        }
        let mut routes: LpmTrie<&mut MapData, [u8; 4], u32> = map_mut(&mut self.ebpf, MAP_ROUTES)?;
        for p in &plan.peers {
            for r in &p.routes {
                let key = Key::new(r.prefix_len() as u32, r.network().octets());
                routes
                    .insert(&key, p.index, 0)
                    .map_err(|source| DatapathError::Map {
                        name: MAP_ROUTES,
                        source,
                    })?;
            }
        }
        self.set_tunnel(&plan.tunnel)
    }

    pub fn set_tunnel(&mut self, tunnel: &TunnelConfig) -> Result<(), DatapathError> {
        let mut config: Array<&mut MapData, TunnelConfig> = map_mut(&mut self.ebpf, MAP_CONFIG)?;
        config
            .set(0, *tunnel, 0)
            .map_err(|source| DatapathError::Map {
                name: MAP_CONFIG,
                source,
            })
    }
}

fn prog_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Missing {
        what: "program",
        name,
    })?;
    prog.try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(DatapathError::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}
