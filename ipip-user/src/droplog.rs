//! `ipip-user log`: switch the data path's drop records on, print them as they come, and
//! switch them off again when the last reader goes, however it goes.
//!
//! Reference counting survives SIGKILL: each `log` starts a small guard process (this binary,
//! `__log-guard`) that holds a shared `flock` on the interface's log lock and waits for its
//! parent to go away (EOF on a pipe only the parent holds). Then it drops its share and, if it
//! can take the lock exclusively (no other reader left), clears the flag.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData, RingBuf};
use ipip_common::{
    DropRecord, PeerName, DROP_HAS_INNER, DROP_HAS_IP, IPPROTO_IPIP, MAP_DROP_LOG,
    MAP_PEER_BY_REMOTE, MAP_PEER_NAMES, TUNNEL_FLAG_LOG_DROPS,
};
use nix::fcntl::{Flock, FlockArg};
use tokio::io::{unix::AsyncFd, Interest};

use crate::{lock::LOCK_DIR, pins::PinDir};

/// The hidden subcommand that runs the guard.
pub const GUARD_COMMAND: &str = "__log-guard";

fn log_lock_path(dir: &PinDir) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("net{}-{}.log", dir.netns, dir.interface))
}

fn open_log_lock(dir: &PinDir) -> Result<File> {
    crate::pins::ensure_private_dir(Path::new(LOCK_DIR))?;
    let path = log_lock_path(dir);
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Flips the flag under the interface's lifecycle lock: reload rewrites the same config entry.
fn set_flag(dir: &PinDir, on: bool) -> Result<()> {
    let _lock = crate::lock::lock(dir)?;
    if !dir.exists() {
        // Detached meanwhile: nothing to switch.
        return Ok(());
    }
    crate::pins::set_tunnel_flags(dir, TUNNEL_FLAG_LOG_DROPS, on)
}

/// The guard process (see the module doc). Prints `ready` once it holds its share.
pub fn guard(interface: &str) -> Result<()> {
    let dir = PinDir::for_interface(interface)?;
    let file = open_log_lock(&dir)?;
    let share = Flock::lock(file, FlockArg::LockShared)
        .map_err(|(_, e)| e)
        .context("taking a share of the log lock")?;
    println!("ready");
    // Blocks until the parent is gone (or closes its end on a normal exit).
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    while stdin.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
    drop(share);
    let file = open_log_lock(&dir)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Last reader: switch records off, still holding the lock so that a new reader's
        // "on" comes after this "off".
        Ok(_last) => set_flag(&dir, false),
        // Another reader is still there; its guard will do it.
        Err(_) => Ok(()),
    }
}

/// A running guard: dropping the pipe's write end (or dying) ends it.
struct Guard {
    child: Child,
}

impl Guard {
    fn start(interface: &str) -> Result<Guard> {
        use std::os::unix::process::CommandExt as _;
        let exe = std::env::current_exe().context("finding this program to start its guard")?;
        let mut child = Command::new(exe)
            .args([GUARD_COMMAND, interface])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its own process group: Ctrl-C on a terminal must not end it before its parent.
            .process_group(0)
            .spawn()
            .context("starting the log guard process")?;
        let mut line = String::new();
        let out = child.stdout.take().context("guard stdout")?;
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.wait();
            bail!("the log guard process failed to start (see above)");
        }
        Ok(Guard { child })
    }

    /// Lets the guard switch records off (if this was the last reader) and waits for it.
    fn finish(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait().context("waiting for the log guard")?;
        if !status.success() {
            bail!("the log guard process failed ({status}); `ipip-user log` once more and Ctrl-C switches records off");
        }
        Ok(())
    }
}

/// Names peers by their remote address, for the records' outer source.
struct PeerLookup {
    by_remote: HashMap<MapData, [u8; 4], u32>,
    names: Array<MapData, PeerName>,
}

impl PeerLookup {
    fn open(dir: &PinDir) -> Result<Self> {
        Ok(Self {
            by_remote: HashMap::try_from(Map::HashMap(MapData::from_pin(
                dir.map(MAP_PEER_BY_REMOTE),
            )?))?,
            names: Array::try_from(Map::Array(MapData::from_pin(dir.map(MAP_PEER_NAMES))?))?,
        })
    }

    fn name(&self, remote: [u8; 4]) -> Option<String> {
        let idx = self.by_remote.get(&remote, 0).ok()?;
        let name = self.names.get(&idx, 0).ok()?;
        Some(crate::plan::peer_name_str(&name))
    }
}

/// One record as a line: `tc-ingress drop spoofed_inner_source: outer A -> B, inner C -> D
/// (peer NAME)`.
pub fn describe(rec: &DropRecord, peer: Option<&str>) -> String {
    let hook = rec.hook().map_or("?", |h| h.name());
    let reason = rec.reason().map_or("unknown", |r| r.name());
    let mut s = format!("{hook} drop {reason}: ");
    if rec.flags & DROP_HAS_IP == 0 {
        s.push_str("short frame");
        return s;
    }
    let (src, dst) = (Ipv4Addr::from(rec.src), Ipv4Addr::from(rec.dst));
    if rec.flags & DROP_HAS_INNER != 0 {
        let (isrc, idst) = (Ipv4Addr::from(rec.inner_src), Ipv4Addr::from(rec.inner_dst));
        s.push_str(&format!("outer {src} -> {dst}, inner {isrc} -> {idst}"));
    } else {
        s.push_str(&format!("{src} -> {dst}"));
        if rec.proto as u8 == IPPROTO_IPIP {
            s.push_str(" (IPIP, inner header cut off)");
        }
    }
    if let Some(p) = peer {
        s.push_str(&format!(" (peer {p})"));
    }
    s
}

fn json(rec: &DropRecord, peer: Option<&str>) -> serde_json::Value {
    let has_ip = rec.flags & DROP_HAS_IP != 0;
    let has_inner = rec.flags & DROP_HAS_INNER != 0;
    let addr = |ok: bool, a: [u8; 4]| ok.then(|| Ipv4Addr::from(a).to_string());
    serde_json::json!({
        "hook": rec.hook().map(|h| h.name()),
        "reason": rec.reason().map(|r| r.name()),
        "protocol": has_ip.then_some(rec.proto),
        "src": addr(has_ip, rec.src),
        "dst": addr(has_ip, rec.dst),
        "inner_src": addr(has_inner, rec.inner_src),
        "inner_dst": addr(has_inner, rec.inner_dst),
        "peer": peer,
    })
}

/// Streams drop records until Ctrl-C, SIGTERM, SIGHUP or `duration` ends; records are
/// switched off again on the way out (by the guard, if this process is killed).
pub async fn run(interface: &str, duration: Option<Duration>, as_json: bool) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let dir = PinDir::for_interface(interface)?;
    if !dir.exists() {
        bail!("{interface} is not attached in this network namespace; `ipip-user status` lists what is");
    }
    let ring_path = dir.map(MAP_DROP_LOG);
    let ring = RingBuf::try_from(Map::RingBuf(MapData::from_pin(&ring_path).with_context(
        || {
            format!(
                "opening {} (an attachment made by an older ipip-user has no drop log: detach and attach again)",
                ring_path.display()
            )
        },
    )?))?;
    let peers = PeerLookup::open(&dir)?;
    // SAFETY: the AsyncFd owns the ring buffer, and so its fd, for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the drop log: {e}"))?;
    let guard = Guard::start(interface)?;
    set_flag(&dir, true)?;
    eprintln!("logging drops on {interface}; Ctrl-C to stop");
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let print = |ring: &mut RingBuf<MapData>| {
        while let Some(item) = ring.next() {
            let Some(rec) = (item.len() >= std::mem::size_of::<DropRecord>()).then(|| {
                // SAFETY: the length is checked; DropRecord is plain integers (any bit
                // pattern is valid) and the read is unaligned-safe.
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropRecord>()) }
            }) else {
                continue;
            };
            let peer = (rec.flags & DROP_HAS_IP != 0)
                .then(|| peers.name(rec.src))
                .flatten();
            if as_json {
                println!("{}", json(&rec, peer.as_deref()));
            } else {
                println!("{}", describe(&rec, peer.as_deref()));
            }
        }
    };
    let result = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            _ = int.recv() => break Ok(()),
            _ = term.recv() => break Ok(()),
            _ = hup.recv() => break Ok(()),
            ready = fd.readable_mut() => match ready {
                Ok(mut g) => {
                    print(g.get_inner_mut());
                    g.clear_ready();
                }
                Err(e) => break Err(anyhow::Error::new(e).context("waiting for drop records")),
            },
        }
    };
    print(fd.get_mut());
    guard.finish().context("switching drop records off again")?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipip_common::{Hook, Reason};

    #[test]
    fn records_read_as_one_line_each() {
        let mut rec = DropRecord {
            reason: Reason::DropSpoofedSource as u32,
            hook: Hook::TcIngress as u32,
            flags: DROP_HAS_IP | DROP_HAS_INNER,
            proto: 4,
            src: [192, 0, 2, 2],
            dst: [192, 0, 2, 1],
            inner_src: [10, 9, 9, 9],
            inner_dst: [10, 0, 0, 1],
        };
        assert_eq!(
            describe(&rec, Some("b")),
            "tc-ingress drop spoofed_inner_source: outer 192.0.2.2 -> 192.0.2.1, inner 10.9.9.9 -> 10.0.0.1 (peer b)"
        );
        rec.flags = DROP_HAS_IP;
        rec.hook = Hook::Xdp as u32;
        assert_eq!(
            describe(&rec, None),
            "xdp drop spoofed_inner_source: 192.0.2.2 -> 192.0.2.1 (IPIP, inner header cut off)"
        );
        rec.flags = 0;
        rec.reason = 999;
        assert_eq!(describe(&rec, None), "xdp drop unknown: short frame");
        let j = json(&rec, None);
        assert_eq!(j["src"], serde_json::Value::Null);
    }
}
