//! The `ipip-user` binary, run inside a namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::netns::Netns;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Builds `ipip-user` once per process (cheap when up to date) and returns its path.
/// `IPIP_USER_BIN` overrides both.
fn binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn locate() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("IPIP_USER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = workspace_root();
    let out = Command::new(&cargo)
        .args(["build", "--quiet", "--package", "ipip-user"])
        .current_dir(&root)
        .output()
        .with_context(|| format!("cannot run `{cargo} build --package ipip-user`"))?;
    if !out.status.success() {
        anyhow::bail!(
            "`cargo build --package ipip-user` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bin = target_dir().join("debug").join("ipip-user");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing after building it",
        bin.display()
    );
    Ok(bin)
}

/// Runs `ipip-user` inside namespaces.
#[derive(Debug, Clone)]
pub struct IpipUser {
    bin: PathBuf,
}

impl IpipUser {
    /// Finds (building if needed) the binary.
    pub fn new() -> Result<Self> {
        Ok(IpipUser { bin: binary()? })
    }

    pub fn path(&self) -> &Path {
        &self.bin
    }

    /// Runs `ipip-user ARGS` in `ns`, whatever the exit status.
    pub fn output(&self, ns: &Netns, args: &[&str]) -> Result<Output> {
        let bin = self.bin.to_string_lossy().into_owned();
        let mut line = vec![bin.as_str()];
        line.extend_from_slice(args);
        ns.output(&line)
    }

    /// Runs `ipip-user ARGS` in `ns`; fails unless it exits 0; returns stdout.
    pub fn run(&self, ns: &Netns, args: &[&str]) -> Result<String> {
        let bin = self.bin.to_string_lossy().into_owned();
        let mut line = vec![bin.as_str()];
        line.extend_from_slice(args);
        ns.exec(&line)
    }

    pub fn attach(&self, ns: &Netns, iface: &str, peers: &Path) -> Result<String> {
        let peers = peers.to_string_lossy();
        self.run(ns, &["attach", iface, "--peers", &peers])
    }

    pub fn detach(&self, ns: &Netns, iface: &str) -> Result<String> {
        self.run(ns, &["detach", iface])
    }

    /// `stats --json`, parsed.
    pub fn stats(&self, ns: &Netns) -> Result<Value> {
        let out = self.run(ns, &["stats", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("stats --json printed non-JSON: {out}"))
    }

    /// The counters of one interface and peer out of `stats --json`.
    pub fn peer_stats(&self, ns: &Netns, iface: &str, peer: &str) -> Result<PeerStats> {
        let v = self.stats(ns)?;
        let entry = interface_entry(&v, iface)?;
        let p = entry["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == peer))
            .with_context(|| format!("no peer {peer:?} in stats of {iface}: {v}"))?;
        let get = |k: &str| {
            p[k].as_u64()
                .with_context(|| format!("peer {peer:?} has no numeric {k:?}: {p}"))
        };
        Ok(PeerStats {
            rx_packets: get("rx_packets")?,
            rx_bytes: get("rx_bytes")?,
            tx_packets: get("tx_packets")?,
            tx_bytes: get("tx_bytes")?,
        })
    }

    /// One per-reason counter (`unknown_peer`, `spoofed_inner_source`, ...) of an interface.
    pub fn reason(&self, ns: &Netns, iface: &str, reason: &str) -> Result<u64> {
        let v = self.stats(ns)?;
        let entry = interface_entry(&v, iface)?;
        entry["reasons"][reason]
            .as_u64()
            .with_context(|| format!("no numeric reason {reason:?} in stats of {iface}: {v}"))
    }
}

fn interface_entry<'a>(v: &'a Value, iface: &str) -> Result<&'a Value> {
    v.as_array()
        .and_then(|a| a.iter().find(|e| e["interface"] == iface))
        .with_context(|| format!("no interface {iface:?} in stats --json: {v}"))
}

/// Per-peer counters as `stats --json` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// Output of a finished command as one string for messages and assertions.
pub fn describe(out: &Output) -> String {
    format!(
        "status {}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}
