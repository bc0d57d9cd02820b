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

/// Which data path does the forwarding on a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// `attach UNDERLAY --peers F`: the kernel forwards, TC egress encapsulates, XDP
    /// decapsulates and passes up.
    Kernel,
    /// `attach UNDERLAY --peers F --lan LAN` on gateways: XDP on the LAN encapsulates
    /// forwarded traffic and redirects it; decapsulated transit traffic is redirected straight
    /// to the LAN. Hosts without a LAN attach as for [`DataPath::Kernel`].
    Fast,
}

impl std::fmt::Display for DataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataPath::Kernel => "kernel path",
            DataPath::Fast => "fast path",
        })
    }
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

impl IpipUser {
    /// A reason counter summed over every interface attached in `ns` (the fast path may
    /// count on the LAN interface as well as on the underlay).
    pub fn reason_total(&self, ns: &Netns, reason: &str) -> Result<u64> {
        let v = self.stats(ns)?;
        let entries = v
            .as_array()
            .with_context(|| format!("stats --json is not an array: {v}"))?;
        anyhow::ensure!(!entries.is_empty(), "stats --json lists no interface");
        let mut total = 0;
        for e in entries {
            total += e["reasons"][reason].as_u64().with_context(|| {
                format!(
                    "no numeric reason {reason:?} in stats of {}: {e}",
                    e["interface"]
                )
            })?;
        }
        Ok(total)
    }

    /// The `paths` counters (who did the work: the XDP fast path or the kernel), summed over
    /// every interface attached in `ns`. `iface` (the underlay) must carry them.
    pub fn paths(&self, ns: &Netns, iface: &str) -> Result<Paths> {
        let v = self.stats(ns)?;
        let entry = interface_entry(&v, iface)?;
        anyhow::ensure!(
            entry["paths"].is_object(),
            "stats --json of {iface} has no \"paths\" object (encap_fast, encap_kernel, \
             decap_fast, decap_kernel): {entry}"
        );
        let mut total = Paths::default();
        for e in v.as_array().into_iter().flatten() {
            let p = &e["paths"];
            if !p.is_object() {
                continue;
            }
            let get = |k: &str| {
                p[k].as_u64().with_context(|| {
                    format!("\"paths\" of {} has no numeric {k:?}: {p}", e["interface"])
                })
            };
            total.encap_fast += get("encap_fast")?;
            total.encap_kernel += get("encap_kernel")?;
            total.decap_fast += get("decap_fast")?;
            total.decap_kernel += get("decap_kernel")?;
        }
        Ok(total)
    }
}

/// Which path encapsulated and decapsulated how many packets (`stats --json`, `paths`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Paths {
    pub encap_fast: u64,
    pub encap_kernel: u64,
    pub decap_fast: u64,
    pub decap_kernel: u64,
}

impl Paths {
    /// `self - before`, field by field (counters only grow).
    pub fn since(&self, before: &Paths) -> Paths {
        Paths {
            encap_fast: self.encap_fast.saturating_sub(before.encap_fast),
            encap_kernel: self.encap_kernel.saturating_sub(before.encap_kernel),
            decap_fast: self.decap_fast.saturating_sub(before.decap_fast),
            decap_kernel: self.decap_kernel.saturating_sub(before.decap_kernel),
        }
    }

    /// Checks, on the growth of the counters over a bulk exchange in both directions, that
    /// the expected path did the work: with [`DataPath::Fast`] the XDP fast path encapsulated
    /// and decapsulated at least `min` packets each; with [`DataPath::Kernel`] the fast-path
    /// counters stayed 0 and the kernel's grew.
    pub fn check(&self, who: &str, path: DataPath, min: u64) -> Result<()> {
        match path {
            DataPath::Fast => anyhow::ensure!(
                self.encap_fast >= min && self.decap_fast >= min,
                "{who}: the fast path should have done the work (encap_fast and decap_fast \
                 each ≥ {min}), but the counters grew by {self:?}"
            ),
            DataPath::Kernel => anyhow::ensure!(
                self.encap_fast == 0
                    && self.decap_fast == 0
                    && self.encap_kernel > 0
                    && self.decap_kernel > 0,
                "{who}: without --lan the kernel path should have done all the work \
                 (encap_fast = decap_fast = 0, encap_kernel and decap_kernel > 0), but the \
                 counters grew by {self:?}"
            ),
        }
        Ok(())
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
