//! The seed's topologies rebuilt in network namespaces: §4 host to host ([`host`]), §5
//! desktop to cluster ([`cluster`]), §6 gateway to gateway ([`gateways`]), and the building
//! blocks they share ([`build`]); a BGP-fed fleet of sites ([`fleet`]).

pub mod build;
pub mod cluster;
pub mod fleet;
pub mod gateways;
pub mod host;
pub mod routed;

pub use build::{veth, LanHost, Peer, PeersFile, TempDir, TunnelHost};
pub use cluster::Cluster;
pub use gateways::Gateways;
pub use host::{peers_toml, HostToHost, Node, Underlay};
pub use routed::Routed;

/// The underlay interface's name in every §4 host namespace (the same name everywhere on
/// purpose: pin paths must not collide).
pub const IFACE: &str = "eth0";
