//! Where an attachment lives on bpffs: `/sys/fs/bpf/ipip/net<netns inode>/<interface>/`.
//! bpffs is shared by every network namespace on the machine, so the namespace is part of the
//! path: two namespaces may each have an `eth0` attached at once.

mod orphans;
mod record;

pub use orphans::{orphaned, prune};

pub use record::{
    is_stale, lan_links, link_ifindex, peers_in_use, placement, programs, read_routes, read_tunnel,
    set_tunnel_flags, write_tunnel, Placement, Program, LINK_TC_EGRESS, LINK_TC_INGRESS, LINK_XDP,
    LINK_XDP_LAN_PREFIX,
};

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

pub const BPFFS: &str = "/sys/fs/bpf";
pub const ROOT: &str = "/sys/fs/bpf/ipip";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{BPFFS} is not a BPF filesystem and mounting one failed ({0}); mount it with `mount -t bpf bpf {BPFFS}`. (Inside `ip netns exec` /sys is remounted and bpffs is hidden: use `ipip-user --netns NAME` or `nsenter --net=/run/netns/NAME` instead.)")]
    NoBpffs(String),
    #[error("cannot read the current network namespace: {0}")]
    Netns(io::Error),
    #[error("interface name {0:?}: {1}")]
    Name(String, &'static str),
    #[error("{path}: {why}; it is not safe to keep pins or locks there. Remove it (`rm -r {path}`) and run the command again")]
    Unsafe { path: String, why: String },
    // The cause is the source, printed once by the `{:#}` chain.
    #[error("cannot create {path}")]
    Create { path: String, source: io::Error },
}

/// Creates `path` as a root-only folder (0700, owned by us), or checks the one there: a
/// folder someone else owns or may write to could be made to hide, move or block our
/// attachments (bpffs and /run are writable by others). A folder we own with a looser mode
/// (left by an older version) is tightened.
pub fn ensure_private_dir(path: &Path) -> Result<(), PinError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let shown = path.display().to_string();
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(PinError::Create {
                path: shown,
                source,
            })
        }
    }
    let meta = std::fs::symlink_metadata(path).map_err(|source| PinError::Create {
        path: shown.clone(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    let why = private_dir_problem(meta.file_type().is_dir(), meta.uid(), meta.mode(), me);
    match why {
        Some(Problem::Unsafe(why)) => Err(PinError::Unsafe { path: shown, why }),
        Some(Problem::Loose) => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| PinError::Create {
                    path: shown,
                    source,
                },
            )
        }
        None => Ok(()),
    }
}

/// What is wrong with a would-be private folder.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// Not ours, or not a folder: refuse.
    Unsafe(String),
    /// Ours, but others may read or write it: tighten.
    Loose,
}

/// The check behind [`ensure_private_dir`], on the folder's type, owner and mode.
pub fn private_dir_problem(is_dir: bool, uid: u32, mode: u32, me: u32) -> Option<Problem> {
    if !is_dir {
        return Some(Problem::Unsafe(
            "it is not a folder (a file or a symlink)".into(),
        ));
    }
    if uid != me {
        return Some(Problem::Unsafe(format!(
            "it belongs to uid {uid}, not to uid {me} running ipip-user"
        )));
    }
    (mode & 0o077 != 0).then_some(Problem::Loose)
}

/// Inode of the calling thread's network namespace: stable and unique while it exists.
pub fn netns_id() -> Result<u64, PinError> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .map_err(PinError::Netns)
}

/// SO_NETNS_COOKIE of the calling thread's network namespace: unique for the machine's uptime.
pub fn netns_cookie() -> Result<u64, PinError> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned (and closed) by `sock` right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(PinError::Netns(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket, and a u64 out-buffer whose size is passed along.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(PinError::Netns(io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// Makes sure bpffs is mounted at /sys/fs/bpf, mounting it if it is not (as bpftool does).
pub fn ensure_bpffs() -> Result<(), PinError> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    log::info!("mounting bpffs at {BPFFS}");
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| PinError::NoBpffs(e.to_string()))?;
    if is_bpffs(Path::new(BPFFS)) {
        Ok(())
    } else {
        Err(PinError::NoBpffs("still not bpffs after mounting".into()))
    }
}

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Staging folders are named this plus the interface: longer than any interface name (15
/// bytes at most) and dot-free, as bpffs refuses dots in names.
pub const STAGING_PREFIX: &str = "partial-attach-of-";
/// Where pins go to be removed (see [`PinDir::remove`]); same naming rules.
pub const REMOVAL_PREFIX: &str = "partial-detach-of-";

/// The pin folder of one attachment.
#[derive(Clone, Debug)]
pub struct PinDir {
    pub path: PathBuf,
    pub interface: String,
    pub netns: u64,
}

impl PinDir {
    pub fn for_interface(interface: &str) -> Result<Self, PinError> {
        // The name becomes a path: `../net123/eth0` must not reach another namespace's pins.
        crate::config::check_interface_name(interface)
            .map_err(|why| PinError::Name(interface.to_string(), why))?;
        let netns = netns_id()?;
        Ok(Self {
            path: ns_dir(netns).join(interface),
            interface: interface.to_string(),
            netns,
        })
    }

    /// Where an attach builds this attachment: everything is pinned here and the folder is
    /// renamed to its final name only when complete, so a killed attach never leaves
    /// something that looks attached. The next attach or detach of the interface cleans it.
    pub fn staging(&self) -> PinDir {
        PinDir {
            path: self
                .path
                .with_file_name(format!("{STAGING_PREFIX}{}", self.interface)),
            interface: self.interface.clone(),
            netns: self.netns,
        }
    }

    /// Where this attachment's pins are moved to be removed.
    fn removal(&self) -> PinDir {
        PinDir {
            path: self
                .path
                .with_file_name(format!("{REMOVAL_PREFIX}{}", self.interface)),
            interface: self.interface.clone(),
            netns: self.netns,
        }
    }

    /// Finishes a removal that a killed command left half done; true if there was one.
    pub fn finish_removal(&self) -> io::Result<bool> {
        let removal = self.removal();
        if !removal.exists() {
            return Ok(false);
        }
        removal.remove_contents()?;
        Ok(true)
    }

    /// Makes `staging` this attachment (one rename: it is there whole or not at all).
    pub fn commit(&self, staging: &PinDir) -> io::Result<()> {
        std::fs::rename(&staging.path, &self.path)
    }

    /// Every attachment in the current namespace, sorted by interface name (folders still
    /// being built, or left by an interrupted attach, are not attachments).
    pub fn list() -> Result<Vec<Self>, PinError> {
        let netns = netns_id()?;
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(ns_dir(netns)) {
            for e in entries.flatten() {
                if let Some(name) = e
                    .file_name()
                    .to_str()
                    .filter(|n| !n.starts_with(STAGING_PREFIX) && !n.starts_with(REMOVAL_PREFIX))
                {
                    out.push(Self {
                        path: e.path(),
                        interface: name.to_string(),
                        netns,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.interface.cmp(&b.interface));
        Ok(out)
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join("maps").join(name)
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.path.join("progs").join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.path.join("links").join(name)
    }

    /// Creates the folders, the pin root first as a root-only folder (see
    /// [`ensure_private_dir`]): nobody else can then create or move anything below it.
    pub fn create(&self) -> Result<(), PinError> {
        ensure_private_dir(Path::new(ROOT))?;
        for sub in ["maps", "progs", "links"] {
            let p = self.path.join(sub);
            std::fs::create_dir_all(&p).map_err(|source| PinError::Create {
                path: p.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes every pin. The folder is first moved aside under a removal name in one
    /// rename, so that a kill while the pins go never leaves half an attachment (say, links
    /// without the config map that says what to undo): only a folder that is plainly being
    /// removed, which the next attach or detach finishes ([`PinDir::finish_removal`]). Callers
    /// remove routes and addresses before, while the record of them is still readable.
    pub fn remove(&self) -> io::Result<()> {
        self.finish_removal()?;
        let removal = self.removal();
        match std::fs::rename(&self.path, &removal.path) {
            Ok(()) => removal.remove_contents(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes the pins (links first: removing a link's last reference detaches it), the
    /// folders, and the namespace folder if it is left empty.
    pub(crate) fn remove_contents(&self) -> io::Result<()> {
        for sub in ["links", "progs", "maps"] {
            let dir = self.path.join(sub);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    // Removing a pin drops its reference in a kernel work queue, so a link
                    // would be detached a moment later, after we report it gone. Holding an
                    // fd across the unlink makes our close the last reference, and the
                    // detach synchronous.
                    let held = (sub == "links")
                        .then(|| record::open_pinned(&e.path()).ok())
                        .flatten();
                    std::fs::remove_file(e.path())?;
                    drop(held);
                }
            }
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match std::fs::remove_dir(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Only succeeds when empty; other interfaces' folders stay. The root stays: removing
        // it would let anyone create it again first.
        let _ = std::fs::remove_dir(ns_dir(self.netns));
        Ok(())
    }
}

fn ns_dir(netns: u64) -> PathBuf {
    Path::new(ROOT).join(format!("net{netns}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_folders_must_be_ours_and_closed() {
        assert_eq!(private_dir_problem(true, 0, 0o40700, 0), None);
        assert_eq!(
            private_dir_problem(true, 0, 0o40755, 0),
            Some(Problem::Loose)
        );
        assert!(
            matches!(private_dir_problem(true, 1000, 0o40700, 0), Some(Problem::Unsafe(w)) if w.contains("uid 1000"))
        );
        assert!(
            matches!(private_dir_problem(false, 0, 0o120777, 0), Some(Problem::Unsafe(w)) if w.contains("symlink"))
        );
        // 1777 like /sys/fs/bpf itself: someone else's, however open.
        assert!(matches!(
            private_dir_problem(true, 1000, 0o41777, 0),
            Some(Problem::Unsafe(_))
        ));
    }

    #[test]
    fn interface_names_cannot_leave_the_namespace_folder() {
        for bad in ["../net1/eth0", "a/b", "..", ".", "", "0123456789abcdefg"] {
            assert!(
                matches!(PinDir::for_interface(bad), Err(PinError::Name(..))),
                "{bad:?} accepted"
            );
        }
    }
}
