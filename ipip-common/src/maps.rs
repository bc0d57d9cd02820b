//! Map names, keys and values. Names are pinned under `/sys/fs/bpf/ipip/...`, so they are at
//! most 15 characters and contain no dots.

/// LPM trie: inner IPv4 prefix → peer index. Routes outbound and filters inbound sources.
pub const MAP_ROUTES: &str = "routes";
/// Array: peer index → [`PeerConfig`].
pub const MAP_PEERS: &str = "peers";
/// Hash: remote underlay address → peer index. Decides whose IPIP we accept.
pub const MAP_PEER_BY_REMOTE: &str = "peer_by_remote";
/// Array of one [`TunnelConfig`].
pub const MAP_CONFIG: &str = "config";
/// Per-CPU array: peer index → [`crate::PeerCounters`].
pub const MAP_PEER_STATS: &str = "peer_stats";
/// Per-CPU array: [`crate::Reason`] → packet count.
pub const MAP_REASONS: &str = "reasons";
/// Array: peer index → [`PeerName`], so that `stats` from another process can name peers.
pub const MAP_PEER_NAMES: &str = "peer_names";
/// Per-CPU array: [`crate::Path`] → packet count.
pub const MAP_PATHS: &str = "paths";
/// Array: peer index → [`PeerPmtu`], the path MTU learned from ICMP "fragmentation needed".
pub const MAP_PEER_PMTU: &str = "peer_pmtu";
/// Hash: ifindex of a LAN interface → its MAC, so the fast path only forwards frames sent to us.
pub const MAP_LAN_MACS: &str = "lan_macs";
/// LRU hash: [`FragKey`] → [`FragState`], outer datagrams being reassembled.
pub const MAP_FRAGS: &str = "frags";
/// LRU hash: [`FragPieceKey`] → [`FragPiece`], the held fragments' payloads.
pub const MAP_FRAG_PIECES: &str = "frag_pieces";
/// Per-CPU scratch [`FragPiece`]: too big for the BPF stack.
pub const MAP_FRAG_SCRATCH: &str = "frag_scratch";
/// Datagrams reassembled at once (older ones are evicted, and time out at their peer's TCP).
pub const MAX_FRAG_DATAGRAMS: u32 = 128;
/// Pieces per datagram: an outer packet of a 1500-byte tunnel MTU split at a 576-byte hop
/// takes 3; 8 leaves room for smaller hops.
pub const FRAG_MAX_PIECES: usize = 8;
/// Largest fragment payload held: what a 1500-byte underlay carries.
pub const FRAG_PIECE_MAX: usize = 1480;
/// Size of a piece's buffer: a power of two above [`FRAG_PIECE_MAX`], so that a length masked
/// with `FRAG_SLOT - 1` provably fits (what the verifier can follow).
pub const FRAG_SLOT: usize = 2048;
/// Reassembly timeout, as `net.ipv4.ipfrag_time`'s default.
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

/// Device map (hash): the interfaces the XDP fast path may redirect to (underlay + LANs).
pub const MAP_FWD_DEVS: &str = "fwd_devs";
pub const MAX_FWD_DEVS: u32 = 64;

/// Program names in the object file.
pub const PROG_XDP_DECAP: &str = "ipip_xdp_decap";
pub const PROG_TC_EGRESS: &str = "ipip_tc_encap";
pub const PROG_TC_INGRESS: &str = "ipip_tc_decap";
pub const PROG_XDP_LAN: &str = "ipip_xdp_lan";

/// Hard limits: the loader sizes the peer and route maps for each attachment (from the peers
/// file, or `[tunnel] max_peers` / `max_routes`) within these. The object's own declarations
/// are only placeholders that the loader always overrides.
pub const MAX_PEERS: u32 = 65_536;
pub const MAX_ROUTES: u32 = 4_194_304;
/// The smallest capacities the loader makes, so that small files keep headroom.
pub const MIN_PEERS_CAPACITY: u32 = 64;
pub const MIN_ROUTES_CAPACITY: u32 = 1024;
/// Maps with one entry per peer, sized together.
pub const PEER_MAPS: [&str; 5] = [
    MAP_PEERS,
    MAP_PEER_BY_REMOTE,
    MAP_PEER_STATS,
    MAP_PEER_NAMES,
    MAP_PEER_PMTU,
];

/// `ttl` value meaning "copy the inner packet's TTL" (Linux's `ttl inherit`, its default).
pub const TTL_INHERIT: u8 = 0;
/// Outer DF is always set (Linux `pmtudisc`, the default); without it DF is copied from the inner.
pub const PEER_FLAG_PMTUDISC: u32 = 1 << 0;
/// Outer DSCP copied from the inner packet (Linux `tos inherit`); else `tos` is used as is.
pub const PEER_FLAG_TOS_INHERIT: u32 = 1 << 1;

/// Which datagram a fragment belongs to (RFC 791: source, destination, protocol, ID; the
/// protocol is always IPIP here).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub id: [u8; 2],
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

/// A datagram being reassembled: where its pieces sit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragState {
    /// `bpf_ktime_get_ns()` of its first fragment.
    pub first_ns: u64,
    /// Payload length once the last fragment (MF clear) has been seen, else 0.
    pub total: u32,
    /// Payload bytes held.
    pub have: u32,
    /// Pieces held (slots `0..pieces` of `off`/`len`, and of the pieces map).
    pub pieces: u32,
    /// The outer header fields of the first fragment (offset 0) the rebuilt header takes:
    /// TOS and TTL; `has_first` once it arrived.
    pub tos: u8,
    pub ttl: u8,
    pub has_first: u8,
    pub _pad: u8,
    pub off: [u16; FRAG_MAX_PIECES],
    pub len: [u16; FRAG_MAX_PIECES],
}

const _: () = assert!(core::mem::size_of::<FragState>() == 56);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPieceKey {
    pub datagram: FragKey,
    pub index: u32,
}

const _: () = assert!(core::mem::size_of::<FragPieceKey>() == 16);

/// One held fragment's payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragPiece {
    pub len: u32,
    pub data: [u8; FRAG_SLOT],
}

const _: () = assert!(core::mem::size_of::<FragPiece>() == 4 + FRAG_SLOT);
const _: () = assert!(FRAG_SLOT.is_power_of_two() && FRAG_SLOT > FRAG_PIECE_MAX);

/// Key of the routes LPM trie: aya's `lpm_trie::Key` carries the prefix length, this is the data.
pub type RouteKey = [u8; 4];

/// Everything the encapsulator needs about one peer, precomputed by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerConfig {
    /// Peer's underlay address, network order: outer destination.
    pub remote: [u8; 4],
    /// Our underlay address, network order: outer source.
    pub local: [u8; 4],
    /// Outer TTL, or [`TTL_INHERIT`].
    pub ttl: u8,
    /// Outer TOS when not inheriting (ECN bits are ignored: they follow RFC 6040).
    pub tos: u8,
    /// Largest inner packet that fits: underlay MTU − 20.
    pub mtu: u16,
    /// `PEER_FLAG_*`.
    pub flags: u32,
    /// One's-complement sum (not folded, not inverted) of the outer header's constant 16-bit
    /// words: version/IHL, protocol, source and destination. The program adds the rest.
    pub csum_base: u32,
    /// Non-zero when the slot holds a peer.
    pub in_use: u32,
}

const _: () = assert!(core::mem::size_of::<PeerConfig>() == 24);

impl PeerConfig {
    pub const fn remote(&self) -> u32 {
        u32::from_be_bytes(self.remote)
    }
    pub const fn local(&self) -> u32 {
        u32::from_be_bytes(self.local)
    }
    pub const fn pmtudisc(&self) -> bool {
        self.flags & PEER_FLAG_PMTUDISC != 0
    }
    pub const fn tos_inherit(&self) -> bool {
        self.flags & PEER_FLAG_TOS_INHERIT != 0
    }
}

/// Set when `attach` added the tunnel address to the interface and so `detach` must remove it.
pub const TUNNEL_FLAG_ADDRESS_ADDED: u32 = 1 << 0;

/// Set while `ipip-user log` runs: the programs write a [`crate::DropRecord`] per drop.
pub const TUNNEL_FLAG_LOG_DROPS: u32 = 1 << 1;

/// Decapsulation runs at TC ingress instead of XDP (`attach --decap tc`).
pub const TUNNEL_FLAG_DECAP_TC: u32 = 1 << 2;

/// The XDP fast path is on: decapsulated transit traffic is redirected to LAN interfaces.
pub const TUNNEL_FLAG_FAST_PATH: u32 = 1 << 3;

/// attach turned `net.ipv4.ip_forward_use_pmtu` on in this namespace; the last attachment that
/// holds this flag turns it off again.
pub const TUNNEL_FLAG_FWD_USE_PMTU: u32 = 1 << 4;

/// XDP decapsulation runs in generic (skb) mode: the driver had no native XDP.
pub const TUNNEL_FLAG_XDP_GENERIC: u32 = 1 << 5;

/// Tunnel-wide settings, index 0 of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Underlay address IPIP must be sent to for us to decapsulate it, network order.
    pub local: [u8; 4],
    /// Tunnel (overlay) address this host uses as source, network order; 0 when none.
    pub address: [u8; 4],
    /// Prefix length of `address`.
    pub address_prefix_len: u32,
    /// Interface index the programs are attached to.
    pub ifindex: u32,
    /// `TUNNEL_FLAG_*`.
    pub flags: u32,
    /// Number of peers loaded.
    pub peer_count: u32,
    /// SO_NETNS_COOKIE of the namespace attached in: unlike its inode, never reused, so pins
    /// left by a deleted namespace are told apart from a live attachment.
    pub netns_cookie: u64,
    /// How long a learned path MTU holds, in nanoseconds: the namespace's
    /// `net.ipv4.route.mtu_expires`, as for the kernel's own PMTU exceptions.
    pub pmtu_expires_ns: u64,
}

const _: () = assert!(core::mem::size_of::<TunnelConfig>() == 40);

/// A peer's learned path MTU. Written by the decapsulators when an ICMP "fragmentation needed"
/// about one of our outer packets to that peer arrives (what `ipip_err` → `ipv4_update_pmtu`
/// does for Linux's tunnel), read by the encapsulators.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerPmtu {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) after which `mtu` no longer holds.
    pub expires_ns: u64,
    /// Learned tunnel MTU (largest inner packet), 0 when nothing was learned.
    pub mtu: u32,
    /// Next-hop MTU the last ICMP reported (outer packet size), for operators.
    pub reported: u32,
}

const _: () = assert!(core::mem::size_of::<PeerPmtu>() == 16);

impl PeerPmtu {
    /// The tunnel MTU in force at `now_ns` for a peer configured with `configured`.
    #[inline(always)]
    pub const fn effective(&self, configured: u16, now_ns: u64) -> u16 {
        if self.mtu != 0 && now_ns < self.expires_ns && self.mtu < configured as u32 {
            self.mtu as u16
        } else {
            configured
        }
    }
}

impl TunnelConfig {
    pub const fn local(&self) -> u32 {
        u32::from_be_bytes(self.local)
    }

    /// The address the kernel's own traffic into the tunnel comes from: the tunnel address,
    /// else the local underlay one.
    pub const fn source_address(&self) -> [u8; 4] {
        if u32::from_be_bytes(self.address) != 0 {
            self.address
        } else {
            self.local
        }
    }
}

pub const PEER_NAME_LEN: usize = 32;

/// A peer's name, NUL-padded UTF-8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerName(pub [u8; PEER_NAME_LEN]);

const _: () = assert!(core::mem::size_of::<PeerName>() == PEER_NAME_LEN);
