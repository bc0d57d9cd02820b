//! The peers file: parsing and validation. Everything is checked here, before attach touches
//! the system, and every error names the file, line and column at fault.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::Ipv4Addr,
    ops::Range,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use ipip_common::{MAX_PEERS, MAX_ROUTES, MIN_PEERS_CAPACITY, MIN_ROUTES_CAPACITY, PEER_NAME_LEN};
use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

/// Largest peers file read: room for MAX_ROUTES routes of ~24 bytes each.
pub const MAX_FILE_BYTES: u64 = 128 << 20;

/// `value` for an error message, cut short: a message never echoes a huge value back.
fn shown(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}… ({} bytes)", value.len())
    }
}

/// `message` with every quoted (`"…"` or `` `…` ``) run longer than [`shown`] allows cut
/// down the way `shown` cuts values: the parser's own messages quote whole values.
fn clip_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(512));
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        let quote = rest[start..].chars().next().expect("found above");
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(quote) {
            Some(end) if after[..end].chars().count() > 64 => {
                out.push_str(&shown(&after[..end]));
                rest = &after[end + 1..];
            }
            Some(end) => {
                out.push_str(&rest[start..start + end + 2]);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// What a fleet attachment is sized for unless `[tunnel] max_peers` / `max_routes` say.
pub const FLEET_MIN_PEERS: u32 = 1024;
pub const FLEET_MIN_ROUTES: u32 = 65_536;

/// A validated peers file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeersFile {
    pub tunnel: Tunnel,
    pub peers: Vec<Peer>,
    /// Peers and prefixes learned from a kernel routing table (`[fleet]`, `ipip-user run`).
    pub fleet: Option<Fleet>,
}

/// `[fleet]`: follow a kernel routing table that a BGP daemon writes. Each route `PREFIX via
/// NEXTHOP` there, with NEXTHOP inside `underlay` and PREFIX inside `allowed`, becomes a route
/// toward peer NEXTHOP (named `fleet-NEXTHOP`). Static peers win over learned ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fleet {
    pub table: u32,
    pub underlay: Vec<Ipv4Net>,
    pub allowed: Vec<Ipv4Net>,
    /// Full resync period, a safety net under the change notifications.
    pub resync_s: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// Underlay source address; `None` means the interface's primary IPv4 address.
    pub local: Option<Ipv4Addr>,
    /// This host's tunnel address (`ip addr` on `tunl1` in the seed).
    pub address: Option<Ipv4Net>,
    pub ttl: Ttl,
    pub tos: Tos,
    pub pmtudisc: bool,
    /// LAN interfaces of a gateway that get the XDP fast path (`attach --lan` adds more).
    pub lan: Vec<String>,
    /// Capacity of the peer maps (`max_peers`); `None`: sized from the file.
    pub max_peers: Option<u32>,
    /// Capacity of the route map (`max_routes`); `None`: sized from the file.
    pub max_routes: Option<u32>,
}

/// `[peer]` written for `[[peer]]`, or `[[tunnel]]` / `[[fleet]]` for `[tunnel]` / `[fleet]`:
/// serde only sees "invalid type: map, expected a sequence"; say what to write instead.
fn table_kind_mixup(text: &str) -> Option<(Range<usize>, String)> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let header = line.split('#').next().unwrap_or("").trim();
        let span = offset..offset + line.trim_end().len();
        offset += line.len();
        let message = match header {
            "[peer]" => "each peer is a `[[peer]]` entry (two brackets), not a `[peer]` table",
            "[[tunnel]]" => {
                "the tunnel's settings go in one `[tunnel]` table (one bracket), not `[[tunnel]]`"
            }
            "[[fleet]]" => "fleet mode is one `[fleet]` table (one bracket), not `[[fleet]]`",
            _ => continue,
        };
        return Some((span, message.to_string()));
    }
    None
}

/// How many peers and routes an attachment's maps hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capacity {
    pub peers: u32,
    pub routes: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    Inherit,
    Fixed(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tos {
    Inherit,
    Fixed(u8),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub remote: Ipv4Addr,
    /// Encapsulated toward this peer; also the inner sources accepted from it.
    pub routes: Vec<Ipv4Net>,
}

/// A peers-file error, with the place it was found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is the error's source, printed once by the `{:#}` chain.
    #[error("cannot read peers file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("peers file {}: {why}", path.display())]
    NotAFile { path: PathBuf, why: String },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

impl PeersFile {
    /// Reads and validates a peers file: a regular file (not a FIFO, device or folder, which
    /// could block or never end) of at most [`MAX_FILE_BYTES`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read as _;
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let not_a_file = |why: String| ConfigError::NotAFile {
            path: path.to_owned(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if !meta.is_file() {
            let what = if meta.is_dir() {
                "a folder"
            } else {
                "not a regular file (a FIFO, socket or device)"
            };
            return Err(not_a_file(format!(
                "is {what}; give the path of a TOML file"
            )));
        }
        // O_NONBLOCK: the file could have been swapped for a FIFO since the check.
        let file = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(read)?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(not_a_file(format!(
                "is larger than {} MiB; a peers file with the largest tables fits well within that",
                MAX_FILE_BYTES >> 20
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            not_a_file(format!(
                "is not UTF-8 text (byte {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let err = |span: Option<Range<usize>>, message: String| {
            let (line, column) = line_col(text, span.map_or(0, |s| s.start));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| match table_kind_mixup(text) {
            Some((span, message)) => err(Some(span), message),
            None => err(e.span(), clip_quoted(e.message())),
        })?;
        validate(raw).map_err(|Located { span, message }| err(Some(span), clip_quoted(&message)))
    }

    pub fn route_count(&self) -> usize {
        self.peers.iter().map(|p| p.routes.len()).sum()
    }

    /// The map capacities for this file: `[tunnel] max_peers` / `max_routes` when set, else
    /// twice what the file uses (rounded up to a power of two, at least
    /// MIN_PEERS_CAPACITY / MIN_ROUTES_CAPACITY, at most MAX_PEERS / MAX_ROUTES), which
    /// leaves a reload room to grow.
    pub fn capacity(&self) -> Capacity {
        let sized = |used: usize, min: u32, max: u32| {
            let want = (used as u64 * 2).next_power_of_two();
            want.clamp(u64::from(min), u64::from(max)) as u32
        };
        // Learned peers and routes come later: a fleet gets room for them up front.
        let (min_peers, min_routes) = match self.fleet {
            Some(_) => (FLEET_MIN_PEERS, FLEET_MIN_ROUTES),
            None => (MIN_PEERS_CAPACITY, MIN_ROUTES_CAPACITY),
        };
        Capacity {
            peers: self
                .tunnel
                .max_peers
                .unwrap_or_else(|| sized(self.peers.len(), min_peers, MAX_PEERS)),
            routes: self
                .tunnel
                .max_routes
                .unwrap_or_else(|| sized(self.route_count(), min_routes, MAX_ROUTES)),
        }
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ttl::Inherit => f.write_str("inherit"),
            Ttl::Fixed(t) => write!(f, "{t}"),
        }
    }
}

impl fmt::Display for Tos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tos::Inherit => f.write_str("inherit"),
            Tos::Fixed(t) => write!(f, "{t:#04x}"),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tunnel: Option<RawTunnel>,
    #[serde(default)]
    fleet: Option<Spanned<RawFleet>>,
    #[serde(default, rename = "peer")]
    peers: Vec<Spanned<RawPeer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    local: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    ttl: Option<Spanned<toml::Value>>,
    tos: Option<Spanned<toml::Value>>,
    pmtudisc: Option<Spanned<bool>>,
    #[serde(default)]
    lan: Vec<Spanned<String>>,
    max_peers: Option<Spanned<i64>>,
    max_routes: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    table: Spanned<i64>,
    underlay: Vec<Spanned<String>>,
    allowed: Vec<Spanned<String>>,
    resync_s: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Spanned<String>,
    remote: Spanned<String>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
}

struct Located {
    span: Range<usize>,
    message: String,
}

fn at<T>(s: &Spanned<T>, message: String) -> Located {
    Located {
        span: s.span(),
        message,
    }
}

fn unicast(s: &Spanned<String>, what: &str) -> Result<Ipv4Addr, Located> {
    let addr: Ipv4Addr = s.get_ref().trim().parse().map_err(|_| {
        at(
            s,
            format!(
                "{what} {} is not an IPv4 address (like \"192.0.2.1\")",
                shown(s.get_ref())
            ),
        )
    })?;
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback() {
        return Err(at(
            s,
            format!("{what} {addr} is not a unicast address a tunnel can use"),
        ));
    }
    Ok(addr)
}

fn byte_or_inherit(s: &Spanned<toml::Value>, what: &str, min: i64) -> Result<Option<u8>, Located> {
    match s.get_ref() {
        toml::Value::String(v) if v == "inherit" => Ok(None),
        toml::Value::Integer(v) if (min..=255).contains(v) => Ok(Some(*v as u8)),
        other => Err(at(
            s,
            format!("{what} must be \"inherit\" or a number {min}..255, not {other}"),
        )),
    }
}

/// The range `net` lies in if nothing can route it: loopback, multicast and the reserved
/// 240.0.0.0/4 (with the broadcast address), and "this network" 0.0.0.0/8. A prefix that
/// merely contains one of them (0.0.0.0/0) is fine: the kernel keeps those for itself.
pub fn unroutable(net: Ipv4Net) -> Option<&'static str> {
    const RANGES: [(&str, [u8; 4], u8); 4] = [
        ("0.0.0.0/8 (this network)", [0, 0, 0, 0], 8),
        ("127.0.0.0/8 (loopback)", [127, 0, 0, 0], 8),
        ("224.0.0.0/4 (multicast)", [224, 0, 0, 0], 4),
        ("240.0.0.0/4 (reserved)", [240, 0, 0, 0], 4),
    ];
    RANGES.iter().find_map(|(name, addr, len)| {
        let range = Ipv4Net::new(Ipv4Addr::from(*addr), *len).expect("valid range");
        (net.prefix_len() >= *len && range.contains(&net.network())).then_some(*name)
    })
}

fn validate(raw: RawFile) -> Result<PeersFile, Located> {
    let address_span = raw
        .tunnel
        .as_ref()
        .and_then(|t| t.address.as_ref())
        .map(|a| a.span());
    let tunnel = match raw.tunnel {
        None => Tunnel {
            local: None,
            address: None,
            ttl: Ttl::Inherit,
            tos: Tos::Fixed(0),
            pmtudisc: true,
            lan: Vec::new(),
            max_peers: None,
            max_routes: None,
        },
        Some(t) => validate_tunnel(t)?,
    };
    let peer_limit = tunnel.max_peers.unwrap_or(MAX_PEERS) as usize;
    let route_limit = tunnel.max_routes.unwrap_or(MAX_ROUTES) as usize;
    let limit_source = |set: bool, key: &str, max: u32| {
        if set {
            format!("[tunnel] {key}")
        } else {
            format!("the limit ({max}; raise [tunnel] {key} up to it)")
        }
    };
    let fleet = raw.fleet.as_ref().map(validate_fleet).transpose()?;
    if raw.peers.is_empty() && fleet.is_none() {
        return Err(Located {
            span: 0..0,
            message: "no [[peer]] sections: add at least one peer with name, remote and routes"
                .into(),
        });
    }
    if raw.peers.len() > peer_limit {
        return Err(at(
            &raw.peers[peer_limit],
            format!(
                "too many peers: {} listed, {} allows {peer_limit}",
                raw.peers.len(),
                limit_source(tunnel.max_peers.is_some(), "max_peers", MAX_PEERS)
            ),
        ));
    }
    let mut peers = Vec::with_capacity(raw.peers.len());
    let mut names = HashMap::new();
    let mut remotes = HashMap::new();
    let mut prefixes: BTreeMap<Ipv4Net, String> = BTreeMap::new();
    let mut route_spans = Vec::new();
    for peer in &raw.peers {
        let p = peer.get_ref();
        let name = p.name.get_ref().clone();
        if name.is_empty()
            || name.len() >= PEER_NAME_LEN
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(at(
                &p.name,
                format!(
                    "peer name {} must be 1..{} characters of letters, digits, '-', '_' or '.'",
                    shown(&name),
                    PEER_NAME_LEN - 1
                ),
            ));
        }
        if names.insert(name.clone(), ()).is_some() {
            return Err(at(&p.name, format!("peer name {name:?} is used twice")));
        }
        let remote = unicast(&p.remote, &format!("peer {name}: remote"))?;
        if let Some(other) = remotes.insert(remote, name.clone()) {
            return Err(at(
                &p.remote,
                format!("peer {name}: remote {remote} is already peer {other}'s remote"),
            ));
        }
        if Some(remote) == tunnel.local {
            return Err(at(
                &p.remote,
                format!("peer {name}: remote {remote} is this host's own [tunnel] local address"),
            ));
        }
        if p.routes.is_empty() {
            return Err(at(
                peer,
                format!("peer {name} has no routes: list the prefixes behind it, e.g. routes = [\"10.0.2.0/24\"]"),
            ));
        }
        let mut routes = Vec::with_capacity(p.routes.len());
        for r in &p.routes {
            let text = r.get_ref().trim();
            let net: Ipv4Net = text
                .parse()
                .or_else(|_| text.parse::<Ipv4Addr>().map(Ipv4Net::from))
                .map_err(|_| {
                    at(
                        r,
                        format!(
                            "peer {name}: route {} is not an IPv4 prefix (like \"10.0.2.0/24\")",
                            shown(text)
                        ),
                    )
                })?;
            if net.trunc() != net {
                return Err(at(
                    r,
                    format!(
                        "peer {name}: route {net} has host bits set; did you mean {}?",
                        net.trunc()
                    ),
                ));
            }
            if let Some(range) = unroutable(net) {
                return Err(at(
                    r,
                    format!("peer {name}: route {net} lies in {range}, which can't be routed through a tunnel"),
                ));
            }
            if let Some(owner) = prefixes.insert(net, name.clone()) {
                let whose = if owner == name {
                    "this peer".to_string()
                } else {
                    format!("peer {owner}")
                };
                return Err(at(
                    r,
                    format!("peer {name}: route {net} is already routed to {whose}"),
                ));
            }
            route_spans.push((net, r.span()));
            routes.push(net);
        }
        peers.push(Peer {
            name,
            remote,
            routes,
        });
    }
    if prefixes.len() > route_limit {
        let (_, span) = &route_spans[route_limit];
        return Err(Located {
            span: span.clone(),
            message: format!(
                "too many routes: {} listed, {} allows {route_limit}",
                prefixes.len(),
                limit_source(tunnel.max_routes.is_some(), "max_routes", MAX_ROUTES)
            ),
        });
    }
    let span_of: HashMap<Ipv4Net, Range<usize>> = route_spans.into_iter().collect();
    // A route covering a peer's underlay address would send the tunnel's own packets into the
    // tunnel: refuse it rather than loop. Each address is looked up at its 33 prefix lengths,
    // so a million routes cost no more than a few.
    let covering = |addr: Ipv4Addr| {
        (0..=32u8).rev().find_map(|len| {
            let net = Ipv4Net::new(addr, len).ok()?.trunc();
            prefixes.contains_key(&net).then_some(net)
        })
    };
    for peer in &peers {
        if let Some(net) = covering(peer.remote) {
            return Err(Located {
                span: span_of[&net].clone(),
                message: format!(
                    "route {net} contains peer {}'s remote address {}: the tunnel would route its own packets into itself",
                    peer.name, peer.remote
                ),
            });
        }
    }
    if let Some((local, net)) = tunnel.local.and_then(|l| covering(l).map(|n| (l, n))) {
        return Err(Located {
            span: span_of[&net].clone(),
            message: format!("route {net} contains this host's [tunnel] local address {local}"),
        });
    }
    if let Some((address, span)) = tunnel.address.zip(address_span) {
        let a = address.addr();
        if let Some(peer) = peers.iter().find(|p| p.remote == a) {
            return Err(Located {
                span,
                message: format!(
                    "[tunnel] address {a} is peer {}'s remote: the tunnel address lives inside the tunnel, the remote outside it",
                    peer.name
                ),
            });
        }
        if tunnel.local == Some(a) {
            return Err(Located {
                span,
                message: format!(
                    "[tunnel] address {a} is the [tunnel] local address: the tunnel address lives inside the tunnel, the local address outside it"
                ),
            });
        }
        if let Some(net) = covering(a) {
            return Err(Located {
                span,
                message: format!(
                    "[tunnel] address {a} lies inside route {net} (peer {}): traffic to this host's own address would be sent into the tunnel",
                    prefixes[&net]
                ),
            });
        }
    }
    Ok(PeersFile {
        tunnel,
        peers,
        fleet,
    })
}

fn prefixes_of(list: &[Spanned<String>], what: &str) -> Result<Vec<Ipv4Net>, Located> {
    let mut out = Vec::with_capacity(list.len());
    for r in list {
        let text = r.get_ref().trim();
        let net: Ipv4Net = text.parse().map_err(|_| {
            at(
                r,
                format!(
                    "[fleet] {what} {} is not an IPv4 prefix (like \"10.0.0.0/8\")",
                    shown(text)
                ),
            )
        })?;
        if net.trunc() != net {
            return Err(at(
                r,
                format!(
                    "[fleet] {what} {net} has host bits set; did you mean {}?",
                    net.trunc()
                ),
            ));
        }
        out.push(net);
    }
    Ok(out)
}

fn validate_fleet(f: &Spanned<RawFleet>) -> Result<Fleet, Located> {
    let r = f.get_ref();
    let table = *r.table.get_ref();
    // 0 is "unspecified", 253..=255 are the kernel's default, main and local tables.
    if !(1..=252).contains(&table) && !(256..=u32::MAX as i64).contains(&table) {
        return Err(at(&r.table, format!("[fleet] table must be a routing table the daemon writes for ipip alone (1..252 or above 255, like 100), not {table}: 0 and 253..255 are the kernel's own (main is 254)")));
    }
    let underlay = prefixes_of(&r.underlay, "underlay")?;
    let allowed = prefixes_of(&r.allowed, "allowed")?;
    if underlay.is_empty() {
        return Err(at(f, "[fleet] underlay is empty: list the ranges peers' next hops may be in, like [\"192.0.2.0/24\"]".into()));
    }
    if allowed.is_empty() {
        return Err(at(f, "[fleet] allowed is empty: list the ranges learned prefixes must lie in, like [\"10.0.0.0/8\"]".into()));
    }
    if let Some(a) = allowed
        .iter()
        .find(|a| underlay.iter().any(|u| u.contains(*a) || a.contains(u)))
    {
        return Err(at(f, format!("[fleet] allowed {a} overlaps the underlay: a learned prefix could then cover a peer's own address")));
    }
    let resync_s = match &r.resync_s {
        None => 60,
        Some(v) if (1..=86_400).contains(v.get_ref()) => *v.get_ref() as u64,
        Some(v) => {
            return Err(at(
                v,
                format!(
                    "[fleet] resync_s must be 1..=86400 seconds, not {}",
                    v.get_ref()
                ),
            ))
        }
    };
    Ok(Fleet {
        table: table as u32,
        underlay,
        allowed,
        resync_s,
    })
}

fn validate_tunnel(t: RawTunnel) -> Result<Tunnel, Located> {
    let local = t
        .local
        .as_ref()
        .map(|l| unicast(l, "[tunnel] local"))
        .transpose()?;
    let address = match &t.address {
        None => None,
        Some(a) => {
            let text = a.get_ref().trim();
            let net: Ipv4Net = text.parse().map_err(|_| {
                at(a, format!("[tunnel] address {} must be an address with its prefix length, like \"10.0.1.1/24\"", shown(text)))
            })?;
            let addr = net.addr();
            if addr.is_unspecified()
                || addr.is_multicast()
                || addr.is_broadcast()
                || addr.is_loopback()
            {
                return Err(at(
                    a,
                    format!("[tunnel] address {addr} is not a unicast address"),
                ));
            }
            if net.prefix_len() == 0 {
                return Err(at(a, format!("[tunnel] address {net}: a /0 prefix would claim every address; give the tunnel subnet's length, like /24")));
            }
            if net.prefix_len() < 31 && (addr == net.network() || addr == net.broadcast()) {
                return Err(at(a, format!("[tunnel] address {net} is the network or broadcast address of its prefix: use a host address")));
            }
            Some(net)
        }
    };
    let ttl = match &t.ttl {
        None => Ttl::Inherit,
        Some(v) => byte_or_inherit(v, "[tunnel] ttl", 1)?.map_or(Ttl::Inherit, Ttl::Fixed),
    };
    let tos = match &t.tos {
        None => Tos::Fixed(0),
        Some(v) => byte_or_inherit(v, "[tunnel] tos", 0)?.map_or(Tos::Inherit, Tos::Fixed),
    };
    let pmtudisc = t.pmtudisc.as_ref().is_none_or(|p| *p.get_ref());
    // iproute2 refuses this combination too: a fixed TTL needs DF to be set.
    if let (Ttl::Fixed(_), false, Some(p)) = (ttl, pmtudisc, &t.pmtudisc) {
        return Err(at(
            p,
            "[tunnel] a fixed ttl and pmtudisc = false are incompatible (as in `ip tunnel`): use ttl = \"inherit\" or pmtudisc = true".into(),
        ));
    }
    let mut lan: Vec<String> = Vec::new();
    for l in &t.lan {
        let name = l.get_ref().trim();
        if let Err(why) = check_interface_name(name) {
            return Err(at(l, format!("[tunnel] lan {}: {why}", shown(name))));
        }
        if lan.iter().any(|x| x == name) {
            return Err(at(l, format!("[tunnel] lan {name:?} is listed twice")));
        }
        lan.push(name.to_string());
    }
    let limit = |v: &Option<Spanned<i64>>, key: &str, max: u32| {
        v.as_ref()
            .map(|n| match u32::try_from(*n.get_ref()) {
                Ok(x) if (1..=max).contains(&x) => Ok(x),
                _ => Err(at(
                    n,
                    format!("[tunnel] {key} must be 1..={max}, not {}", n.get_ref()),
                )),
            })
            .transpose()
    };
    Ok(Tunnel {
        local,
        address,
        ttl,
        tos,
        pmtudisc,
        lan,
        max_peers: limit(&t.max_peers, "max_peers", MAX_PEERS)?,
        max_routes: limit(&t.max_routes, "max_routes", MAX_ROUTES)?,
    })
}

/// Linux interface names: 1..15 bytes, no '/', whitespace or ':' (IFNAMSIZ, dev_valid_name).
pub fn check_interface_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("an interface name has 1 to 15 characters");
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("not a valid interface name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn long_quoted_values_in_parser_messages_are_cut() {
        let long = "x".repeat(50_000);
        let msg = format!("invalid type: string \"{long}\", expected a boolean");
        let cut = clip_quoted(&msg);
        assert_eq!(
            cut,
            format!(
                "invalid type: string \"{}\"… (50000 bytes), expected a boolean",
                &long[..64]
            )
        );
        assert_eq!(
            clip_quoted("unknown field `mtu`, expected `ttl`"),
            "unknown field `mtu`, expected `ttl`"
        );
        assert_eq!(clip_quoted("unbalanced \"quote"), "unbalanced \"quote");
    }

    use super::*;

    const SEED: &str = r#"
[tunnel]
local = "192.0.2.58"
address = "10.200.100.100/24"
ttl = "inherit"
pmtudisc = true

[[peer]]
name = "calculon"
remote = "192.0.2.129"
routes = ["10.0.2.0/24", "10.10.10.0/24"]
"#;

    fn parse(text: &str) -> Result<PeersFile, ConfigError> {
        PeersFile::parse(text, Path::new("peers.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("should be refused").to_string()
    }

    #[test]
    fn brief_example_parses() {
        let f = parse(SEED).unwrap();
        assert_eq!(f.tunnel.local, Some(Ipv4Addr::new(192, 0, 2, 58)));
        assert_eq!(f.tunnel.address, Some("10.200.100.100/24".parse().unwrap()));
        assert_eq!(f.tunnel.ttl, Ttl::Inherit);
        assert_eq!(f.tunnel.tos, Tos::Fixed(0));
        assert!(f.tunnel.pmtudisc);
        assert_eq!(f.peers.len(), 1);
        assert_eq!(f.peers[0].name, "calculon");
        assert_eq!(f.peers[0].routes.len(), 2);
        assert_eq!(f.route_count(), 2);
    }

    #[test]
    fn defaults_follow_ip_tunnel() {
        let f =
            parse("[[peer]]\nname = \"a\"\nremote = \"192.0.2.1\"\nroutes = [\"10.0.0.0/8\"]\n")
                .unwrap();
        assert_eq!(f.tunnel.ttl, Ttl::Inherit);
        assert_eq!(f.tunnel.tos, Tos::Fixed(0));
        assert!(f.tunnel.pmtudisc);
        assert_eq!(f.tunnel.local, None);
    }

    #[test]
    fn bare_address_route_is_a_host_prefix() {
        let f = parse("[[peer]]\nname = \"a\"\nremote = \"192.0.2.1\"\nroutes = [\"10.0.0.7\"]\n")
            .unwrap();
        assert_eq!(
            f.peers[0].routes,
            vec!["10.0.0.7/32".parse::<Ipv4Net>().unwrap()]
        );
    }

    #[test]
    fn lan_interfaces() {
        let f = parse("[tunnel]\nlan = [\"eth1\", \"eth2\"]\n[[peer]]\nname = \"a\"\nremote = \"192.0.2.1\"\nroutes = [\"10.0.0.0/8\"]\n").unwrap();
        assert_eq!(f.tunnel.lan, vec!["eth1".to_string(), "eth2".to_string()]);
    }

    #[test]
    fn fixed_ttl_and_tos() {
        let f = parse("[tunnel]\nttl = 64\ntos = \"inherit\"\n[[peer]]\nname = \"a\"\nremote = \"192.0.2.1\"\nroutes = [\"10.0.0.0/8\"]\n").unwrap();
        assert_eq!(f.tunnel.ttl, Ttl::Fixed(64));
        assert_eq!(f.tunnel.tos, Tos::Inherit);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let text = "[[peer]]\nname = \"a\"\nremote = \"192.0.2.1\"\nroutes = [\"10.0.2.1/24\"]\n";
        let e = error(text);
        assert!(e.starts_with("peers.toml:4:11: "), "{e}");
        assert!(e.contains("did you mean 10.0.2.0/24"), "{e}");
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = error("[tunnel]\nlocal = \n");
        assert!(e.starts_with("peers.toml:2:"), "{e}");
    }

    #[test]
    fn refusals() {
        let peer = |name: &str, remote: &str, routes: &str| {
            format!("[[peer]]\nname = \"{name}\"\nremote = \"{remote}\"\nroutes = [{routes}]\n")
        };
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no [[peer]]"),
            (
                "[tunnel]\nlocal = \"nope\"\n".to_string()
                    + &peer("a", "192.0.2.1", "\"10.0.0.0/8\""),
                "not an IPv4 address",
            ),
            (
                "[tunnel]\nttl = 0\n".to_string() + &peer("a", "192.0.2.1", "\"10.0.0.0/8\""),
                "ttl must be",
            ),
            (
                "[tunnel]\nttl = 300\n".to_string() + &peer("a", "192.0.2.1", "\"10.0.0.0/8\""),
                "ttl must be",
            ),
            (
                "[tunnel]\nttl = 64\npmtudisc = false\n".to_string()
                    + &peer("a", "192.0.2.1", "\"10.0.0.0/8\""),
                "incompatible",
            ),
            (
                "[tunnel]\naddress = \"10.0.1.1\"\n".to_string()
                    + &peer("a", "192.0.2.1", "\"10.0.0.0/8\""),
                "prefix length",
            ),
            (
                "[tunnel]\naddress = \"10.0.1.0/24\"\n".to_string()
                    + &peer("a", "192.0.2.1", "\"10.0.0.0/8\""),
                "network or broadcast",
            ),
            (
                "[tunnel]\nbogus = 1\n".to_string() + &peer("a", "192.0.2.1", "\"10.0.0.0/8\""),
                "unknown field",
            ),
            (
                "[tunnel]\nlan = [\"eth1\", \"eth1\"]\n".to_string()
                    + &peer("a", "192.0.2.1", "\"10.0.0.0/8\""),
                "listed twice",
            ),
            (
                "[tunnel]\nlan = [\"a-very-long-interface\"]\n".to_string()
                    + &peer("a", "192.0.2.1", "\"10.0.0.0/8\""),
                "1 to 15",
            ),
            (
                peer("a", "192.0.2.1", "\"10.0.0.0/8\"")
                    + &peer("a", "192.0.2.2", "\"10.1.0.0/16\""),
                "used twice",
            ),
            (
                peer("a", "192.0.2.1", "\"10.0.0.0/8\"")
                    + &peer("b", "192.0.2.1", "\"10.1.0.0/16\""),
                "already peer a's remote",
            ),
            (
                peer("a", "192.0.2.1", "\"10.0.0.0/8\"")
                    + &peer("b", "192.0.2.2", "\"10.0.0.0/8\""),
                "already routed to peer a",
            ),
            (peer("a", "192.0.2.1", ""), "has no routes"),
            (
                peer("a", "192.0.2.1", "\"10.0.0.0/33\""),
                "not an IPv4 prefix",
            ),
            (
                peer("a", "192.0.2.1", "\"0.0.0.0/0\""),
                "contains peer a's remote",
            ),
            (peer("a", "224.0.0.1", "\"10.0.0.0/8\""), "not a unicast"),
            (peer("bad name", "192.0.2.1", "\"10.0.0.0/8\""), "peer name"),
            (
                "[tunnel]\nlocal = \"10.0.0.1\"\n".to_string()
                    + &peer("a", "192.0.2.1", "\"10.0.0.0/8\""),
                "contains this host's",
            ),
        ];
        for (text, want) in cases {
            let e = error(&text);
            assert!(e.contains(want), "for\n{text}\nwanted {want:?}, got {e}");
            assert!(e.starts_with("peers.toml:"), "{e}");
        }
    }

    #[test]
    fn overlapping_prefixes_of_different_length_are_allowed() {
        let f = parse("[[peer]]\nname = \"a\"\nremote = \"192.0.2.1\"\nroutes = [\"10.0.0.0/8\"]\n[[peer]]\nname = \"b\"\nremote = \"192.0.2.2\"\nroutes = [\"10.1.0.0/16\"]\n").unwrap();
        assert_eq!(f.peers.len(), 2);
    }

    /// `n` peers on 192.0.2.0/24 and neighbours, `routes` /32s each under 10.0.0.0/8.
    fn big_file(tunnel: &str, n: usize, routes: usize) -> String {
        let mut t = format!("[tunnel]\n{tunnel}\n");
        let mut next = 0u32;
        for i in 0..n {
            let remote = Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 0, 2, 0)) + i as u32 + 1);
            t.push_str(&format!(
                "[[peer]]\nname = \"p{i}\"\nremote = \"{remote}\"\nroutes = ["
            ));
            for _ in 0..routes {
                let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + next);
                next += 1;
                t.push_str(&format!("\"{a}/32\","));
            }
            t.push_str("]\n");
        }
        t
    }

    #[test]
    fn capacity_follows_the_file_with_headroom_or_the_tunnel_limits() {
        let f = parse(SEED).unwrap();
        assert_eq!(
            f.capacity(),
            Capacity {
                peers: MIN_PEERS_CAPACITY,
                routes: MIN_ROUTES_CAPACITY
            }
        );
        let f = parse(&big_file("", 100, 300)).unwrap();
        assert_eq!(f.route_count(), 30_000);
        assert_eq!(
            f.capacity(),
            Capacity {
                peers: 256,
                routes: 65_536
            }
        );
        let f = parse(&big_file("max_peers = 150\nmax_routes = 30000", 100, 300)).unwrap();
        assert_eq!(
            f.capacity(),
            Capacity {
                peers: 150,
                routes: 30_000
            }
        );
    }

    #[test]
    fn limits_are_enforced_with_the_setting_named() {
        let e = error(&big_file("max_peers = 2", 3, 1));
        assert!(
            e.contains("too many peers: 3 listed, [tunnel] max_peers allows 2"),
            "{e}"
        );
        let e = error(&big_file("max_routes = 5", 2, 3));
        assert!(
            e.contains("too many routes: 6 listed, [tunnel] max_routes allows 5"),
            "{e}"
        );
        for bad in [
            "max_peers = 0",
            "max_peers = 65537",
            "max_routes = -1",
            "max_routes = 4194305",
        ] {
            let e = error(&big_file(bad, 1, 1));
            assert!(e.contains("must be 1..="), "{bad}: {e}");
        }
    }

    #[test]
    fn a_route_covering_a_remote_is_found_among_many() {
        let mut text = big_file("", 50, 2000);
        text.push_str(
            "[[peer]]\nname = \"wide\"\nremote = \"198.51.100.1\"\nroutes = [\"192.0.2.0/25\"]\n",
        );
        let e = error(&text);
        assert!(
            e.contains("route 192.0.2.0/25 contains peer p0's remote address 192.0.2.1"),
            "{e}"
        );
    }

    #[test]
    fn files_that_cannot_work_are_refused() {
        let peer = |routes: &str| {
            format!("[[peer]]\nname = \"a\"\nremote = \"192.0.2.1\"\nroutes = [{routes}]\n")
        };
        let cases = [
            (
                format!(
                    "[tunnel]\naddress = \"192.0.2.1/24\"\n{}",
                    peer("\"10.0.2.0/24\"")
                ),
                "is peer a's remote",
            ),
            (
                format!(
                    "[tunnel]\naddress = \"10.0.2.7/24\"\n{}",
                    peer("\"10.0.2.0/24\"")
                ),
                "lies inside route 10.0.2.0/24 (peer a)",
            ),
            (
                format!(
                    "[tunnel]\naddress = \"10.0.1.1/0\"\n{}",
                    peer("\"10.0.2.0/24\"")
                ),
                "a /0 prefix",
            ),
            (peer("\"127.0.0.0/8\""), "127.0.0.0/8 (loopback)"),
            (peer("\"127.1.2.3\""), "127.0.0.0/8 (loopback)"),
            (peer("\"224.0.0.0/24\""), "224.0.0.0/4 (multicast)"),
            (peer("\"239.1.1.1\""), "multicast"),
            (peer("\"255.255.255.255\""), "240.0.0.0/4"),
            (peer("\"0.0.0.0/8\""), "this network"),
        ];
        for (text, want) in cases {
            let e = error(&text);
            assert!(e.contains(want), "for\n{text}\nwanted {want:?}, got {e}");
        }
        // Containing a reserved range is not lying in it: half the address space is fine.
        parse(&peer("\"0.0.0.0/1\"")).expect("0.0.0.0/1 through the tunnel");
    }

    #[test]
    fn huge_values_are_not_echoed() {
        let long = "x".repeat(1 << 20);
        let e = error(&format!(
            "[[peer]]\nname = \"a\"\nremote = \"{long}\"\nroutes = [\"10.0.2.0/24\"]\n"
        ));
        assert!(e.len() < 400, "{} bytes of error", e.len());
        assert!(e.contains("1048576 bytes"), "{e}");
    }

    #[test]
    fn only_regular_files_are_read_and_causes_print_once() {
        let dir = std::env::temp_dir().join(format!("ipip-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo.toml");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for (path, want) in [
            (dir.as_path(), "is a folder"),
            (fifo.as_path(), "not a regular file"),
            (Path::new("/dev/zero"), "not a regular file"),
        ] {
            let e = PeersFile::load(path).expect_err("refused");
            let text = format!("{:#}", anyhow::Error::new(e));
            assert!(text.contains(want), "{}: {text}", path.display());
        }
        let missing = dir.join("missing.toml");
        let text = format!(
            "{:#}",
            anyhow::Error::new(PeersFile::load(&missing).unwrap_err())
        );
        assert_eq!(text.matches("No such file").count(), 1, "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
