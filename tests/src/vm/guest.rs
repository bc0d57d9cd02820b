//! A stock Linux box as a test peer: Debian's kernel under qemu (TCG), its virtio NIC a tap
//! device inside a test namespace, commands run over a virtio console.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::image::{self, Image, BAD_MARKER, END_MARKER, READY_MARKER};
use crate::netns::Netns;

/// In every qemu command line we start (`-name`), so that a leftover qemu is recognised as
/// ours before it is killed.
pub const QEMU_MARKER: &str = "ipip-interop-guest";

/// How a guest is started.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// The tap device created in the namespace for the guest's `eth0`.
    pub tap: String,
    /// The guest NIC's MAC address.
    pub mac: String,
    /// More NICs (`eth1`, ...): (tap, MAC), taps created in the same namespace.
    pub extra_nics: Vec<(String, String)>,
    pub memory_mb: u32,
    /// Bound on the wait for `/init`'s ready marker.
    pub boot_timeout: Duration,
    /// Default bound on one command.
    pub command_timeout: Duration,
}

impl GuestConfig {
    pub fn new(tap: &str) -> Self {
        GuestConfig {
            tap: tap.to_string(),
            mac: "52:54:00:12:34:56".to_string(),
            extra_nics: Vec::new(),
            memory_mb: 256,
            boot_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(30),
        }
    }
}

/// A running guest. Dropping it kills qemu (by the PID we started), removes the tap and the
/// run folder.
#[derive(Debug)]
pub struct LinuxGuest {
    child: Mutex<Child>,
    ctl: Mutex<Channel>,
    ns_path: PathBuf,
    taps: Vec<String>,
    run_dir: PathBuf,
    console: PathBuf,
    command_timeout: Duration,
    boot_time: Duration,
    image: Image,
}

enum Answer {
    Done(i32, String),
    Damaged,
}

#[derive(Debug)]
struct Channel {
    stream: UnixStream,
    next: u64,
}

/// Where qemu's pidfile, console log and control socket live: `target/guest/run`, or a short
/// folder in /tmp when that path is too long for a unix socket.
fn run_root() -> PathBuf {
    let r = image::guest_dir().join("run");
    if r.as_os_str().len() < 60 {
        r
    } else {
        std::env::temp_dir().join("ipip-guest-run")
    }
}

impl LinuxGuest {
    /// Boots a guest whose NIC is a new tap device `tap` in `ns` (default settings).
    pub fn boot(ns: &Netns, tap: &str) -> Result<Self> {
        Self::boot_with(ns, &GuestConfig::new(tap))
    }

    pub fn boot_with(ns: &Netns, cfg: &GuestConfig) -> Result<Self> {
        let image = image::ensure().context("building the Linux guest image")?;
        which("qemu-system-x86_64").context(
            "qemu-system-x86_64 is not installed (cargo xtask setup installs qemu-system-x86)",
        )?;
        let root = run_root();
        sweep_stale(&root);
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let run_dir = root.join(format!("{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("cannot create {}", run_dir.display()))?;
        std::fs::write(run_dir.join("owner"), std::process::id().to_string())?;
        let console = run_dir.join("console.log");
        let sock = run_dir.join("ctl.sock");
        let pidfile = run_dir.join("qemu.pid");
        let qemu_log = run_dir.join("qemu.log");

        let mut taps = vec![(cfg.tap.clone(), cfg.mac.clone())];
        taps.extend(cfg.extra_nics.iter().cloned());
        for (i, (tap, _)) in taps.iter().enumerate() {
            let made = ns
                .exec(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
                .and_then(|_| ns.exec(&["ip", "link", "set", tap, "up"]));
            if let Err(e) = made {
                for (t, _) in &taps[..=i] {
                    let _ = ns.output(&["ip", "link", "del", t]);
                }
                return Err(e).with_context(|| format!("creating tap {tap} in {}", ns.name()));
            }
        }

        let log = std::fs::File::create(&qemu_log)?;
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", ns.path().display()))
            .arg("qemu-system-x86_64")
            .args(["-name", QEMU_MARKER, "-accel", "tcg", "-smp", "1"])
            .args(["-m", &format!("{}M", cfg.memory_mb)])
            .args(["-nographic", "-nodefaults", "-no-user-config", "-no-reboot"])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-chardev")
            .arg(format!(
                "socket,id=ctl,path={},server=on,wait=off",
                sock.display()
            ))
            .args([
                "-device",
                "virtio-serial-pci",
                "-device",
                "virtconsole,chardev=ctl",
            ])
            .arg("-pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (i, (tap, mac)) in taps.iter().enumerate() {
            c.arg("-netdev")
                .arg(format!("tap,id=n{i},ifname={tap},script=no,downscript=no"))
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev=n{i},mac={mac}"));
        }
        let start = Instant::now();
        // nsenter enters the namespace and execs qemu: the child's PID is qemu's.
        let child = c.spawn().context("cannot start qemu-system-x86_64")?;
        let mut guest = LinuxGuest {
            child: Mutex::new(child),
            ctl: Mutex::new(Channel {
                stream: UnixStream::pair()?.0,
                next: 0,
            }),
            ns_path: ns.path(),
            taps: taps.iter().map(|(t, _)| t.clone()).collect(),
            run_dir,
            console,
            command_timeout: cfg.command_timeout,
            boot_time: Duration::ZERO,
            image,
        };
        guest.await_ready(&sock, &qemu_log, start, cfg.boot_timeout)?;
        guest.boot_time = start.elapsed();
        Ok(guest)
    }

    fn await_ready(
        &mut self,
        sock: &Path,
        qemu_log: &Path,
        start: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = start + timeout;
        loop {
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            if text.contains(READY_MARKER) {
                break;
            }
            if let Some(st) = self.child.get_mut().expect("not poisoned").try_wait()? {
                anyhow::bail!(
                    "qemu exited ({st}) before the guest was ready; qemu said: {}\n\
                     console tail:\n{}",
                    std::fs::read_to_string(qemu_log).unwrap_or_default().trim(),
                    self.console_tail(30)
                );
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the Linux guest did not become ready within {timeout:?} ({}); \
                     console tail:\n{}",
                    self.image.description,
                    self.console_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let stream = UnixStream::connect(sock)
            .with_context(|| format!("cannot connect to {}", sock.display()))?;
        self.ctl.get_mut().expect("not poisoned").stream = stream;
        // One round trip proves the channel works.
        let (st, out) = self.run_timeout("echo hello", Duration::from_secs(10))?;
        anyhow::ensure!(
            st == 0 && out.trim() == "hello",
            "the guest's control channel answered {st} {out:?} to `echo hello`"
        );
        Ok(())
    }

    /// Wall time from starting qemu to the first answered command.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Which kernel, busybox and iproute2 the guest runs.
    pub fn description(&self) -> &str {
        &self.image.description
    }

    /// The last `lines` lines of the guest's console.
    pub fn console_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs one shell line in the guest (default timeout): its exit status and output
    /// (stdout and stderr together).
    pub fn run(&self, cmd: &str) -> Result<(i32, String)> {
        self.run_timeout(cmd, self.command_timeout)
    }

    /// Runs `cmd`; fails with its output unless it exits 0; returns the output.
    pub fn exec(&self, cmd: &str) -> Result<String> {
        let (st, out) = self.run(cmd)?;
        anyhow::ensure!(st == 0, "guest: `{cmd}` exited {st}: {}", out.trim_end());
        Ok(out)
    }

    /// Runs one shell line with its own bound on the wait for the answer.
    ///
    /// The line goes out as `<token> <length> <command>`; the guest runs it only if the
    /// length matches and otherwise answers `@@BAD-<token>`, and the line is sent again (a
    /// line damaged on the serial port was seen once in hundreds of runs).
    pub fn run_timeout(&self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        let cmd = cmd.trim();
        anyhow::ensure!(
            !cmd.contains('\n') && !cmd.is_empty(),
            "guest commands are one non-empty line: {cmd:?}"
        );
        let mut ch = self.ctl.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let deadline = Instant::now() + timeout;
        for _ in 0..3 {
            ch.next += 1;
            let tok = format!("c{}", ch.next);
            let line = format!("{tok} {} {cmd}\n", cmd.len());
            // Paced in small pieces: a slow (TCG) guest never sees a long burst.
            for piece in line.as_bytes().chunks(32) {
                ch.stream
                    .write_all(piece)
                    .with_context(|| format!("sending `{cmd}` to the guest"))?;
                std::thread::sleep(Duration::from_millis(1));
            }
            match self.answer(&mut ch, &tok, cmd, timeout, deadline)? {
                Answer::Done(st, out) => return Ok((st, out)),
                Answer::Damaged => {
                    eprintln!("note: the guest received `{cmd}` damaged; sending it again");
                    // Let the rest of a damaged line come in and be discarded.
                    let _ = self.drain(&mut ch, Duration::from_millis(500));
                }
            }
        }
        anyhow::bail!("the guest received `{cmd}` damaged three times in a row")
    }

    fn drain(&self, ch: &mut Channel, wait: Duration) -> Result<()> {
        let end = Instant::now() + wait;
        let mut chunk = [0u8; 4096];
        while Instant::now() < end {
            ch.stream
                .set_read_timeout(Some(Duration::from_millis(100)))?;
            match ch.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn answer(
        &self,
        ch: &mut Channel,
        tok: &str,
        cmd: &str,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Answer> {
        let marker = format!("{END_MARKER}{tok} ");
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).replace('\r', "");
            if let Some(pos) = text.find(&marker) {
                let after = &text[pos + marker.len()..];
                if let Some(nl) = after.find('\n') {
                    let status: i32 = after[..nl]
                        .trim()
                        .parse()
                        .with_context(|| format!("bad status {:?} after `{cmd}`", &after[..nl]))?;
                    let mut out = &text[..pos];
                    // Drop what a command that timed out earlier printed late.
                    if let Some(i) = out.rfind(END_MARKER) {
                        out = out[i..].split_once('\n').map_or("", |(_, r)| r);
                    }
                    let out = out.strip_suffix('\n').unwrap_or(out);
                    return Ok(Answer::Done(status, out.to_string()));
                }
            }
            // A damaged line: ours, or a fragment whose "token" is no token at all. Older
            // tokens are stale answers and ignored.
            for (i, _) in text.match_indices(BAD_MARKER) {
                let rest = &text[i + BAD_MARKER.len()..];
                let Some((bad, _)) = rest.split_once('\n') else {
                    continue;
                };
                let is_token = bad
                    .strip_prefix('c')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if bad == tok || !is_token {
                    return Ok(Answer::Damaged);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let exited = self
                    .child
                    .lock()
                    .ok()
                    .and_then(|mut c| c.try_wait().ok().flatten());
                anyhow::bail!(
                    "the guest did not finish `{cmd}` within {timeout:?}{}; output so far: {:?}\n\
                     console tail:\n{}",
                    exited.map_or(String::new(), |st| format!(" (qemu exited: {st})")),
                    text,
                    self.console_tail(20)
                );
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            ch.stream.set_read_timeout(Some(wait))?;
            match ch.stream.read(&mut chunk) {
                Ok(0) => anyhow::bail!(
                    "the guest's control channel closed during `{cmd}`; console tail:\n{}",
                    self.console_tail(20)
                ),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading from the guest's control channel"),
            }
        }
    }

    /// qemu's process ID.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().ok().map(|c| c.id())
    }

    /// The folder holding the console log, the control socket and the pidfile.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The tap device (in the namespace given to [`LinuxGuest::boot`]) that is the guest's
    /// `eth0`.
    pub fn tap(&self) -> &str {
        &self.taps[0]
    }
}

impl Drop for LinuxGuest {
    fn drop(&mut self) {
        if let Ok(c) = self.child.get_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for tap in &self.taps {
            let _ = Command::new("nsenter")
                .arg(format!("--net={}", self.ns_path.display()))
                .args(["ip", "link", "del", tap])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// PIDs of the guest qemus this process started that are still running (found by their
/// command line: [`QEMU_MARKER`] and this process's run folders).
pub fn running_guests() -> Vec<u32> {
    let ours = run_root()
        .join(format!("{}-", std::process::id()))
        .display()
        .to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(QEMU_MARKER) && cmdline.contains(&ours)
        })
        .collect()
}

fn which(prog: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .with_context(|| format!("{prog} not found on PATH"))
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills the qemu of every run folder whose owning test process is gone (a test that was
/// killed before its guest's drop ran), if its command line shows it is ours, and removes
/// the folder.
fn sweep_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten().take(1000) {
        let dir = e.path();
        let read_pid = |f: &str| -> Option<i32> {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        let owner = read_pid("owner");
        if owner.is_some_and(|o| o == std::process::id() as i32 || alive(o)) {
            continue;
        }
        if let Some(pid) = read_pid("qemu.pid") {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains(QEMU_MARKER) && cmdline.contains(&*dir.to_string_lossy()) {
                eprintln!(
                    "note: killing leftover guest qemu {pid} ({})",
                    dir.display()
                );
                // SAFETY: plain kill(2) on a process verified to be our qemu.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let deadline = Instant::now() + Duration::from_secs(3);
                while alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
