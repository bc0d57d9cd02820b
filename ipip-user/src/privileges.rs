//! Early, clear refusal when the caller lacks what the lifecycle needs: uid 0 (the pins and
//! locks are root's, mode 0700) with CAP_BPF (load, pin, read maps), CAP_NET_ADMIN (attach to
//! interfaces, routes, addresses) and CAP_PERFMON (the verifier refuses the programs' pointer
//! arithmetic without it). `operations.rs` runs the whole lifecycle with exactly these and
//! shows each one missing refused. CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as in
//! the kernel.

use anyhow::{bail, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What to say, in one place.
pub const NEEDED: &str = "root (uid 0, which owns the pins) with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: run it with sudo, or under systemd as User=root with AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON";

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

/// The capabilities named in [`NEEDED`] that `caps` lacks.
pub fn missing(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1 << c) != 0;
    let mut out = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_PERFMON");
    }
    out
}

pub fn require_admin(what: &str) -> Result<()> {
    let Some(caps) = effective_caps() else {
        return Ok(()); // can't tell: let the kernel decide
    };
    let lacking = missing(caps);
    if !lacking.is_empty() {
        bail!("{what} needs {NEEDED} (missing: {})", lacking.join(", "));
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "{what} needs {NEEDED} (running as uid {})",
            nix::unistd::geteuid()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_capability_is_named() {
        let all = (1 << CAP_BPF) | (1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON);
        assert!(missing(all).is_empty());
        assert_eq!(missing(all & !(1 << CAP_PERFMON)), ["CAP_PERFMON"]);
        assert_eq!(missing(0), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        assert!(missing((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)).is_empty());
    }
}
