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

/// The ifindex a pinned link is attached to, as the kernel reports it (`/proc/self/fdinfo` of
/// the link): 0 once its device is deleted; the device's index in whatever namespace it is
/// now, after a move. `None` when the pin can't be opened.
pub fn link_ifindex(pin: &std::path::Path) -> Option<u32> {
    let fd = open_pinned(pin).ok()?;
    use std::os::fd::AsRawFd as _;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("ifindex:"))
        .and_then(|v| v.trim().parse().ok())
}

/// BPF_OBJ_GET on a pin: an fd of whatever object it holds (aya keeps links' fds private).
pub(super) fn open_pinned(pin: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // bpf_attr's obj_get member: pathname, bpf_fd, file_flags, path_fd; the rest zero.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: `attr` is a zeroed bpf_attr-sized buffer whose pathname points to a live
    // NUL-terminated string; the kernel reads only `size` bytes of it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just returned, owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Where an attachment's interface is, judged by its TC ingress link (always present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Here, under the attachment's name.
    Here,
    /// Here, under another name.
    Renamed(String),
    /// Deleted: the kernel detached the programs.
    Gone,
    /// Still running the programs, in another network namespace.
    Moved,
}

/// Judges [`Placement`] from the link's ifindex (see [`link_ifindex`]) and the name this
/// namespace has for the recorded ifindex, if any.
pub fn placement(
    interface: &str,
    recorded_ifindex: u32,
    link_ifindex: Option<u32>,
    name_here: Option<&str>,
) -> Placement {
    match (link_ifindex, name_here) {
        (Some(0), _) => Placement::Gone,
        (Some(i), _) if i != recorded_ifindex => Placement::Moved,
        (_, Some(n)) if n == interface => Placement::Here,
        (_, Some(n)) => Placement::Renamed(n.to_string()),
        (Some(_), None) => Placement::Moved,
        (None, None) => Placement::Gone,
    }
}

/// The peers configured now, and the tunnel MTU the first of them was given (all share it).
/// Slots of removed peers stay allocated, so the config's peer count is only an upper bound.
pub fn peers_in_use(dir: &PinDir, slots: u32) -> Result<(u32, Option<u16>)> {
    let data = MapData::from_pin(dir.map(ipip_common::MAP_PEERS))?;
    let map: Array<MapData, ipip_common::PeerConfig> =
        Array::try_from(aya::maps::Map::Array(data))?;
    let (mut n, mut mtu) = (0, None);
    for i in 0..slots {
        let p = map.get(&i, 0)?;
        if p.in_use != 0 {
            n += 1;
            mtu.get_or_insert(p.mtu);
        }
    }
    Ok((n, mtu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_the_interface_went() {
        assert_eq!(placement("eth0", 3, Some(3), Some("eth0")), Placement::Here);
        assert_eq!(
            placement("eth0", 3, Some(3), Some("wan0")),
            Placement::Renamed("wan0".into())
        );
        assert_eq!(placement("eth0", 3, Some(0), None), Placement::Gone);
        // Moved, same index or a new one there (and maybe another device has 3 here now).
        assert_eq!(placement("eth0", 3, Some(3), None), Placement::Moved);
        assert_eq!(
            placement("eth0", 3, Some(7), Some("other")),
            Placement::Moved
        );
        assert_eq!(placement("eth0", 3, None, None), Placement::Gone);
    }
}
