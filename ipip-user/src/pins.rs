//! Where an attachment lives on bpffs: `/sys/fs/bpf/ipip/net<netns inode>/<interface>/`.
//! bpffs is shared by every network namespace on the machine, so the namespace is part of the
//! path: two namespaces may each have an `eth0` attached at once.

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

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// The pin folder of one attachment.
#[derive(Clone, Debug)]
pub struct PinDir {
    pub path: PathBuf,
    pub interface: String,
    pub netns: u64,
}

impl PinDir {
    pub fn for_interface(interface: &str) -> Result<Self, PinError> {
        let netns = netns_id()?;
        Ok(Self {
            path: ns_dir(netns).join(interface),
            interface: interface.to_string(),
            netns,
        })
    }

    /// Every attachment in the current namespace, sorted by interface name.
    pub fn list() -> Result<Vec<Self>, PinError> {
        let netns = netns_id()?;
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(ns_dir(netns)) {
            for e in entries.flatten() {
                if let Some(name) = e.file_name().to_str() {
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

    pub fn create(&self) -> io::Result<()> {
        for sub in ["maps", "progs", "links"] {
            std::fs::create_dir_all(self.path.join(sub))?;
        }
        Ok(())
    }

    /// Removes every pin (links first: removing a link's last reference detaches it), then
    /// the folders, then the namespace folder if it is left empty.
    pub fn remove(&self) -> io::Result<()> {
        for sub in ["links", "progs", "maps"] {
            let dir = self.path.join(sub);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    std::fs::remove_file(e.path())?;
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
        // Only succeeds when empty; other interfaces' folders stay.
        let _ = std::fs::remove_dir(ns_dir(self.netns));
        let _ = std::fs::remove_dir(ROOT);
        Ok(())
    }
}

fn ns_dir(netns: u64) -> PathBuf {
    Path::new(ROOT).join(format!("net{netns}"))
}
