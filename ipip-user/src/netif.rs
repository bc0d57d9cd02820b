//! Interfaces, addresses and routes over rtnetlink, in the current network namespace.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo},
    route::{
        RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
        RouteType,
    },
};
use rtnetlink::{Handle, RouteMessageBuilder};

/// Protocol tag on the routes attach installs (`ip route show proto 156`): detach removes
/// exactly these, on exactly that interface.
pub const ROUTE_PROTO: u8 = 156;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("interface {0} does not exist in this network namespace (see `ip link`)")]
    NoSuchInterface(String),
    #[error("netlink: {what}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("cannot open a netlink socket")]
    Socket(#[from] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub up: bool,
    /// A veth: XDP redirects into it have conditions a NIC doesn't (see attach).
    pub veth: bool,
    /// The loopback device: nothing it sends reaches a peer.
    pub loopback: bool,
    /// The link layer, when it isn't Ethernet (`tun`, `wireguard`, `ipip`...): the programs
    /// parse Ethernet frames, so such a device can't carry the tunnel.
    pub not_ethernet: Option<String>,
    /// Hardware address (zero when the link has none of Ethernet size).
    pub mac: [u8; 6],
    /// Id of the XDP program attached to it, if any.
    pub xdp_prog: Option<u32>,
}

/// Where the kernel sends packets for one destination (`ip route get`).
#[derive(Clone, Debug)]
pub struct NextHop {
    pub oif: u32,
    /// `None` when the destination is on-link.
    pub gateway: Option<Ipv4Addr>,
}

pub struct Netlink {
    handle: Handle,
}

impl NetError {
    /// The kernel's answer, when the request reached it and it said no (ENETUNREACH, ...).
    pub fn os_error(&self) -> Option<std::io::Error> {
        match self {
            NetError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(m.to_io()),
            _ => None,
        }
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

impl Netlink {
    /// Opens a netlink socket in the current namespace; must run inside a tokio runtime.
    pub fn open() -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link(&self, name: &str) -> Result<Link, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(link_from(msg)),
            Ok(None) => Err(NetError::NoSuchInterface(name.into())),
            // The kernel answers ENODEV for an unknown name.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => {
                Err(NetError::NoSuchInterface(name.into()))
            }
            Err(e) => Err(nl(format!("looking up interface {name}"))(e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(m) => Ok(m.map(link_from)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => Ok(None),
            Err(e) => Err(nl(format!("looking up interface {index}"))(e)),
        }
    }

    /// IPv4 addresses as (address, prefix length, interface index), primary ones first.
    pub async fn ipv4_addresses(&self) -> Result<Vec<(Ipv4Addr, u8, u32)>, NetError> {
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await.map_err(nl("listing addresses"))? {
            if let Some(a) = ipv4_of(&msg) {
                out.push((a, msg.header.prefix_len, msg.header.index));
            }
        }
        Ok(out)
    }

    pub async fn route_get(&self, dst: Ipv4Addr) -> Result<NextHop, NetError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let mut routes = self.handle.route().get(msg).execute();
        let route = routes
            .try_next()
            .await
            .map_err(nl(format!("looking up the route to {dst}")))?
            .ok_or_else(|| NetError::Netlink {
                what: format!("no route to {dst}"),
                source: rtnetlink::Error::RequestFailed,
            })?;
        let mut hop = NextHop {
            oif: 0,
            gateway: None,
        };
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(i) => hop.oif = *i,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => hop.gateway = Some(*g),
                _ => {}
            }
        }
        Ok(hop)
    }

    /// Adds `addr` without the prefix route the kernel would add for it: the tunnel's
    /// prefixes are routed by attach, not by the address.
    pub async fn add_address(&self, index: u32, addr: Ipv4Net) -> Result<(), NetError> {
        let mut req = self
            .handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len());
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
        req.execute()
            .await
            .map_err(nl(format!("adding address {addr}")))
    }

    pub async fn del_address(&self, index: u32, addr: Ipv4Net) -> Result<(), NetError> {
        let mut msg = AddressMessage::default();
        msg.header.family = netlink_packet_route::AddressFamily::Inet;
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr.addr())));
        self.handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(nl(format!("removing address {addr}")))
    }

    /// `ip route add PREFIX [via GW] dev OIF [src SRC] mtu MTU proto 156`.
    pub async fn add_route(
        &self,
        prefix: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        oif: u32,
        src: Option<Ipv4Addr>,
        mtu: u32,
    ) -> Result<(), NetError> {
        self.route_request(prefix, gateway, oif, src, mtu, false)
            .await
    }

    /// Like [`Netlink::add_route`], replacing a route to the same prefix in one step (no
    /// moment without a route).
    pub async fn replace_route(
        &self,
        prefix: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        oif: u32,
        src: Option<Ipv4Addr>,
        mtu: u32,
    ) -> Result<(), NetError> {
        self.route_request(prefix, gateway, oif, src, mtu, true)
            .await
    }

    async fn route_request(
        &self,
        prefix: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        oif: u32,
        src: Option<Ipv4Addr>,
        mtu: u32,
        replace: bool,
    ) -> Result<(), NetError> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(prefix.network(), prefix.prefix_len())
            .output_interface(oif)
            .protocol(RouteProtocol::Other(ROUTE_PROTO));
        if let Some(g) = gateway {
            b = b.gateway(g);
        } else {
            b = b.scope(RouteScope::Link);
        }
        if let Some(s) = src {
            b = b.pref_source(s);
        }
        let mut msg = b.build();
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        let req = self.handle.route().add(msg);
        let req = if replace { req.replace() } else { req };
        req.execute()
            .await
            .map_err(nl(format!("adding route {prefix}")))
    }

    /// Every IPv4 route, of every table.
    async fn ipv4_routes(&self) -> Result<Vec<RouteMessage>, NetError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        self.handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing routes"))
    }

    /// Routes tagged with our protocol on interface `oif`.
    pub async fn our_routes(&self, oif: u32) -> Result<Vec<RouteMessage>, NetError> {
        let mut routes = self.ipv4_routes().await?;
        routes.retain(|r| is_ours(r) && route_oif(r) == Some(oif));
        Ok(routes)
    }

    /// Unicast IPv4 routes out of interface `oif` that ipip did not install (any table), with
    /// the MTU they carry, if any.
    pub async fn foreign_routes(&self, oif: u32) -> Result<Vec<ForeignRoute>, NetError> {
        Ok(self
            .ipv4_routes()
            .await?
            .iter()
            .filter(|r| {
                route_oif(r) == Some(oif) && !is_ours(r) && r.header.kind == RouteType::Unicast
            })
            .filter_map(|r| {
                Some(ForeignRoute {
                    prefix: route_prefix(r)?,
                    gateway: route_gateway(r),
                    mtu: route_mtu(r),
                })
            })
            .collect())
    }

    /// Every IPv4 route in routing table `table`: its prefix and its single next hop
    /// (`None` for multipath or device routes).
    pub async fn table_routes(
        &self,
        table: u32,
    ) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>)>, NetError> {
        let mut out = Vec::new();
        for r in self.ipv4_routes().await? {
            let id = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if id != table {
                continue;
            }
            if let Some(net) = route_prefix(&r) {
                out.push((net, route_gateway(&r)));
            }
        }
        Ok(out)
    }

    pub async fn del_route(&self, route: RouteMessage) -> Result<(), NetError> {
        let what = format!("removing route {}", describe_route(&route));
        self.handle
            .route()
            .del(route)
            .execute()
            .await
            .map_err(nl(what))
    }
}

/// A route someone else installed on the underlay (see [`Netlink::foreign_routes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRoute {
    pub prefix: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
}

impl ForeignRoute {
    /// "route 10.0.2.7/32 via 192.0.2.1 dev eth0 has no MTU".
    pub fn describe(&self, iface: &str) -> String {
        let has = self
            .mtu
            .map_or("no MTU".to_string(), |m| format!("MTU {m}"));
        format!("route {}{} dev {iface} has {has}", self.prefix, self.via())
    }

    /// The command that gives it `mtu`.
    pub fn fix(&self, iface: &str, mtu: u32) -> String {
        format!(
            "ip route change {}{} dev {iface} mtu {mtu}",
            self.prefix,
            self.via()
        )
    }

    fn via(&self) -> String {
        self.gateway.map_or(String::new(), |g| format!(" via {g}"))
    }
}

/// Routes among `foreign` inside one of the tunnel's `prefixes` whose MTU (none: the
/// interface's) is above `tunnel_mtu`: the kernel doesn't size packets for the tunnel there.
pub fn unsized_routes<'a>(
    foreign: &'a [ForeignRoute],
    prefixes: &[Ipv4Net],
    tunnel_mtu: u32,
) -> Vec<&'a ForeignRoute> {
    let mut out: Vec<&ForeignRoute> = foreign
        .iter()
        .filter(|r| r.mtu.is_none_or(|m| m > tunnel_mtu))
        .filter(|r| prefixes.iter().any(|p| p.contains(&r.prefix)))
        .collect();
    out.sort_by_key(|r| r.prefix);
    out
}

/// The destination prefix of a route message.
pub fn route_prefix(r: &RouteMessage) -> Option<Ipv4Net> {
    // A default route carries no destination attribute.
    let dst = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    Ipv4Net::new(dst, r.header.destination_prefix_length).ok()
}

/// Whether ipip installed the route (its protocol tag).
fn is_ours(r: &RouteMessage) -> bool {
    u8::from(r.header.protocol) == ROUTE_PROTO
}

/// The interface a route sends out of (single-path routes).
fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// A route message's single next hop (`None` for multipath or device routes).
pub fn route_gateway(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
        _ => None,
    })
}

/// The MTU a route message carries (its `mtu` metric), if any.
pub fn route_mtu(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Metrics(m) => m.iter().find_map(|m| match m {
            RouteMetric::Mtu(v) => Some(*v),
            _ => None,
        }),
        _ => None,
    })
}

/// `10.0.2.0/24` of a route message.
pub fn describe_route(r: &RouteMessage) -> String {
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
        _ => None,
    });
    format!(
        "{}/{}",
        dst.unwrap_or(Ipv4Addr::UNSPECIFIED),
        r.header.destination_prefix_length
    )
}

fn link_from(msg: netlink_packet_route::link::LinkMessage) -> Link {
    let mut link = Link {
        name: String::new(),
        index: msg.header.index,
        mtu: 1500,
        up: msg.header.flags.contains(LinkFlags::Up),
        veth: false,
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
        not_ethernet: (msg.header.link_layer_type
            != netlink_packet_route::link::LinkLayerType::Ether)
            .then(|| format!("{:?}", msg.header.link_layer_type)),
        mac: [0; 6],
        xdp_prog: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(&a),
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Xdp(xdp) => {
                link.xdp_prog = xdp.iter().find_map(|x| match x {
                    netlink_packet_route::link::LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                    _ => None,
                });
            }
            LinkAttribute::LinkInfo(infos) => {
                link.veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    link
}

fn ipv4_of(msg: &AddressMessage) -> Option<Ipv4Addr> {
    // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on point-to-point).
    let mut found = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(a)) => return Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => found = Some(*a),
            _ => {}
        }
    }
    found
}

const fn libc_enodev() -> i32 {
    19
}

/// The driver's name as `ethtool -i` shows it (ETHTOOL_GDRVINFO), in the current network
/// namespace; `None` when the device doesn't answer.
pub fn driver(name: &str) -> Option<String> {
    // struct ethtool_drvinfo from <linux/ethtool.h>.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: both structs are plain C data for which all-zero bytes are valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a fresh socket we own; closed on drop.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads `ifr` and writes at most size_of::<DrvInfo>() bytes into
    // `info`, which outlives the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SIOCETHTOOL,
            &mut ifr,
        )
    };
    if rc < 0 {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned()).filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_inside_tunnel_prefixes_without_its_mtu_are_found() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let route = |p: &str, mtu| ForeignRoute {
            prefix: net(p),
            gateway: Some("192.0.2.1".parse().unwrap()),
            mtu,
        };
        let foreign = [
            route("10.0.2.7/32", None),
            route("10.0.2.128/25", Some(1500)),
            route("10.0.2.8/32", Some(1480)),
            route("10.0.2.9/32", Some(1400)),
            route("0.0.0.0/0", None),
            route("10.0.0.0/8", None),
            route("192.168.5.0/24", None),
        ];
        let found = unsized_routes(&foreign, &[net("10.0.2.0/24"), net("10.10.10.0/24")], 1480);
        let found: Vec<String> = found.iter().map(|r| r.prefix.to_string()).collect();
        assert_eq!(found, ["10.0.2.7/32", "10.0.2.128/25"]);
    }
}
