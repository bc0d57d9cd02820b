//! Forwarded traffic and the path MTU the data path learns.
//!
//! The data path hands every ICMP "fragmentation needed" about our outer packets to the
//! kernel as one about the inner packet, and the kernel records the lowered MTU on its route
//! to the inner destination (a PMTU exception). Local senders obey it at once. The kernel's
//! forwarding path, though, ignores PMTU exceptions unless `net.ipv4.ip_forward_use_pmtu` is
//! set, which is off by default; Linux's own ipip doesn't need it because its transmit path
//! (`tnl_update_pmtu`) answers forwarded senders itself. Without a tunnel device, ipip asks
//! the kernel's forwarding path to do it: attach turns the sysctl on for its namespace (only
//! if it was off), records that it did, and the last attachment holding that record turns it
//! off again on detach. With it on, a gateway answers a too-big forwarded DF packet with its
//! own "fragmentation needed" (next-hop MTU = the learned tunnel MTU), and fragments one
//! without DF to that size, each fragment then tunnelled.

use anyhow::{Context as _, Result};
use ipip_common::TUNNEL_FLAG_FWD_USE_PMTU;

use crate::pins::{is_stale, read_tunnel, set_tunnel_flags, PinDir};

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward_use_pmtu";

fn read() -> Result<bool> {
    let v = std::fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
    Ok(v.trim() != "0")
}

fn write(on: bool) -> Result<()> {
    std::fs::write(SYSCTL, if on { "1" } else { "0" }).with_context(|| format!("writing {SYSCTL}"))
}

/// Whether the sysctl is on in this namespace.
pub fn is_on() -> Result<bool> {
    read()
}

/// Turns the sysctl on. The caller records the hold in its tunnel flags first, so that a
/// kill right after this can't leave it on with nobody to [`release`] it.
pub fn turn_on() -> Result<()> {
    write(true)?;
    log::info!("{SYSCTL} set to 1 (forwarded traffic obeys the learned tunnel PMTU)");
    Ok(())
}

/// Gives up `leaving`'s hold on the sysctl: another live attachment in this namespace takes
/// the record over, or, when there is none, the sysctl goes back to off.
pub fn release(leaving: &PinDir) -> Result<()> {
    for other in PinDir::list()? {
        if other.path == leaving.path || is_stale(&other) || read_tunnel(&other).is_err() {
            continue;
        }
        set_tunnel_flags(&other, TUNNEL_FLAG_FWD_USE_PMTU, true)?;
        log::debug!("{SYSCTL}: record handed to {}", other.interface);
        return Ok(());
    }
    write(false)?;
    log::info!("{SYSCTL} set back to 0");
    Ok(())
}
