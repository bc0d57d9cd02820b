//! Early, clear refusal when the caller lacks the capabilities attach/detach need.

use anyhow::{bail, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

/// Loading, attaching and pinning need CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN.
pub fn require_admin(what: &str) -> Result<()> {
    let Some(caps) = effective_caps() else {
        return Ok(()); // can't tell: let the kernel decide
    };
    let has = |c: u32| caps & (1 << c) != 0;
    if !has(CAP_NET_ADMIN) || !(has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        bail!("{what} needs CAP_BPF and CAP_NET_ADMIN: run it as root (e.g. with sudo)");
    }
    Ok(())
}
