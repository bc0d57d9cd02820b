//! One lifecycle command per interface at a time: attach and detach of the same interface
//! (in the same namespace) hold an exclusive `flock` on a file in a root-only folder, so a
//! second one waits for the first and then sees its result, instead of undoing its work.
//! The lock dies with its holder: a killed command never leaves it taken.

use std::{
    fs::File,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::pins::{ensure_private_dir, PinDir};

/// Where the lock files live (root-only, see [`ensure_private_dir`]).
pub const LOCK_DIR: &str = "/run/ipip";
/// How long a command waits for another one on the same interface.
const WAIT: Duration = Duration::from_secs(30);

/// Held for as long as the command runs.
pub struct InterfaceLock {
    _lock: Flock<File>,
    path: std::path::PathBuf,
}

impl InterfaceLock {
    /// Removes the lock file (detach, when nothing is left to guard); commands waiting for
    /// it notice and lock a fresh one.
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Takes the lock of `dir`'s interface, waiting (boundedly) while another command holds it.
pub fn lock(dir: &PinDir) -> Result<InterfaceLock> {
    ensure_private_dir(Path::new(LOCK_DIR))?;
    let path = Path::new(LOCK_DIR).join(format!("net{}-{}.lock", dir.netns, dir.interface));
    let started = Instant::now();
    let mut said = false;
    loop {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // The last detach removes the file while holding it: a lock on a file that is no
            // longer at the path guards nothing, so take the one that is there now.
            Ok(lock) if !same_file(&lock, &path) => continue,
            Ok(lock) => return Ok(InterfaceLock { _lock: lock, path }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                if started.elapsed() > WAIT {
                    bail!(
                        "another ipip-user command has been working on {} for over {} s (lock {}); try again when it is done",
                        dir.interface,
                        WAIT.as_secs(),
                        path.display()
                    );
                }
                if !said {
                    eprintln!(
                        "waiting for another ipip-user command on {} to finish...",
                        dir.interface
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}
