//! Network namespaces that delete themselves.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::cmd;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Where ipip-user pins its objects: one folder per namespace (by inode) and interface.
pub const PIN_ROOT: &str = "/sys/fs/bpf/ipip";

/// A named network namespace (`ip netns add`), deleted on drop together with its interfaces
/// and whatever ipip pinned for it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    inode: u64,
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>`, unique within this machine, with `lo` up.
    pub fn new(prefix: &str) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        cmd::run(&["ip", "netns", "add", &name])?;
        let path = format!("/run/netns/{name}");
        let inode = match std::fs::metadata(&path) {
            Ok(m) => m.ino(),
            Err(e) => {
                let _ = cmd::run(&["ip", "netns", "del", &name]);
                return Err(e).with_context(|| format!("cannot stat {path}"));
            }
        };
        let ns = Netns { name, inode };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// The namespace's inode number, which names its folder under [`PIN_ROOT`].
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// This namespace's pin folder: `/sys/fs/bpf/ipip/net<inode>` (what ipip-user makes), or
    /// `/sys/fs/bpf/ipip/<inode>` if only that one exists.
    pub fn pin_dir(&self) -> PathBuf {
        let [named, bare] = self.pin_dir_candidates();
        if !named.exists() && bare.exists() {
            bare
        } else {
            named
        }
    }

    fn pin_dir_candidates(&self) -> [PathBuf; 2] {
        let root = Path::new(PIN_ROOT);
        [
            root.join(format!("net{}", self.inode)),
            root.join(self.inode.to_string()),
        ]
    }

    /// The command line that runs `args` inside this namespace. `nsenter --net` keeps the
    /// host's /sys (and so /sys/fs/bpf), unlike `ip netns exec`.
    pub fn command_line<'a>(&'a self, args: &[&'a str]) -> Vec<String> {
        let mut v = vec![
            "nsenter".to_string(),
            format!("--net=/run/netns/{}", self.name),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// Runs `args` inside the namespace and returns its output whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        let line = self.command_line(args);
        let refs: Vec<&str> = line.iter().map(String::as_str).collect();
        cmd::output(&refs)
    }

    /// Runs `args` inside the namespace; fails (with stderr) unless it exits 0.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let line = self.command_line(args);
        let refs: Vec<&str> = line.iter().map(String::as_str).collect();
        let out = cmd::output(&refs)?;
        cmd::check(&refs, &out).with_context(|| format!("in namespace {}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it creates belong here.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> Result<R> + Send,
        R: Send,
    {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                self.enter(&path)?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace {} panicked", self.name))?
        })
    }

    /// Runs `f` on a thread that has entered this namespace and returns what it returns; its
    /// panics become the caller's (for test code that asserts).
    pub fn within<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                if let Err(e) = self.enter(&path) {
                    panic!("{e:#}");
                }
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Runs every line of `script` (whitespace-separated arguments, no quoting) inside the
    /// namespace, stopping at the first that fails.
    pub fn script(&self, script: &str) -> Result<()> {
        for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
            self.exec(&line.split_whitespace().collect::<Vec<_>>())?;
        }
        Ok(())
    }

    /// Like [`Netns::run`] but returns at once; join the handle for the result.
    pub fn spawn<F, R>(&self, f: F) -> std::thread::JoinHandle<Result<R>>
    where
        F: FnOnce() -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let path = self.path();
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter_path(&path, &name)?;
            f()
        })
    }

    fn enter(&self, path: &Path) -> Result<()> {
        enter_path(path, &self.name)
    }
}

fn enter_path(path: &Path, name: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter network namespace {name}"))
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Pinned links would otherwise outlive the namespace as defunct objects, and a
        // later namespace that gets the same inode would look attached.
        for pins in self.pin_dir_candidates() {
            if pins.exists() {
                if let Err(e) = std::fs::remove_dir_all(&pins) {
                    eprintln!("warning: cannot remove {}: {e}", pins.display());
                }
            }
        }
        if let Err(e) = cmd::run(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: {e}");
        }
    }
}

/// Everything under a pin folder, sorted (empty when it does not exist): the files, and with
/// `with_folders` the folders too (an empty folder left behind then shows).
pub fn pins_under(dir: &Path, with_folders: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let folder = p.is_dir();
            if folder {
                todo.push(p.clone());
            }
            if with_folders || !folder {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}
