//! Traffic between a namespace and the Linux guest: TCP verified by SHA-256 at the receiver
//! (busybox `nc` and `sha256sum` in the guest), UDP each way. Every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::guest::LinuxGuest;
use crate::netns::Netns;
use crate::traffic::{Pattern, UdpSink};

const STEP: Duration = Duration::from_secs(10);
const TOTAL: Duration = Duration::from_secs(90);

/// SHA-256 of `data` in hex, by coreutils' `sha256sum`.
pub fn sha256_hex(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run sha256sum")?;
    let mut stdin = child.stdin.take().context("sha256sum stdin")?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    first_word(&String::from_utf8_lossy(&out.stdout))
}

fn first_word(s: &str) -> Result<String> {
    s.split_whitespace()
        .next()
        .filter(|w| w.len() == 64)
        .map(str::to_string)
        .with_context(|| format!("no SHA-256 in {s:?}"))
}

/// Sends `len` pattern bytes from `ns` to the guest's `nc -l -p PORT`; the guest hashes
/// what it received. Returns the elapsed time; fails unless both hashes agree.
pub fn tcp_to_guest(
    ns: &Netns,
    guest: &LinuxGuest,
    dst: Ipv4Addr,
    port: u16,
    len: usize,
) -> Result<Duration> {
    let rx = format!("/tmp/rx.{port}");
    guest.exec(&format!(
        "rm -f {rx} {rx}.sum; (nc -l -p {port} > {rx}; sha256sum {rx} > {rx}.sum) \
         >/dev/null 2>&1 &"
    ))?;
    let mut data = vec![0u8; len];
    Pattern::new(0x1e1e ^ u64::from(port)).fill(&mut data);
    let want = sha256_hex(&data)?;
    let addr = SocketAddrV4::new(dst, port);
    let start = Instant::now();
    ns.run(move || {
        // The listener may not be up yet: retry refused connections for a while.
        let deadline = Instant::now() + STEP;
        let mut s = loop {
            match TcpStream::connect_timeout(&SocketAddr::V4(addr), STEP) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e).with_context(|| format!("cannot connect to {addr}")),
            }
        };
        s.set_write_timeout(Some(STEP))?;
        s.set_read_timeout(Some(STEP))?;
        let deadline = Instant::now() + TOTAL;
        for chunk in data.chunks(64 * 1024) {
            anyhow::ensure!(Instant::now() < deadline, "sending took over {TOTAL:?}");
            s.write_all(chunk)
                .with_context(|| format!("writing to {addr}"))?;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        // nc closes once it has read everything.
        let mut sink = [0u8; 256];
        loop {
            anyhow::ensure!(Instant::now() < deadline, "the guest never closed");
            match s.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e).context("waiting for the guest to close"),
            }
        }
        Ok(())
    })
    .with_context(|| format!("TCP to the guest's {addr}"))?;
    let elapsed = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let (st, out) = guest.run(&format!("cat {rx}.sum"))?;
        if st == 0 && !out.trim().is_empty() {
            break first_word(&out)?;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the guest never hashed what it received: {}",
            guest.run(&format!("ls -l {rx}; pidof nc"))?.1
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    anyhow::ensure!(
        got == want,
        "the guest received other bytes than sent: sha256 {got}, sent {want} ({})",
        guest.run(&format!("ls -l {rx}"))?.1.trim()
    );
    Ok(elapsed)
}

/// The guest sends `len` random bytes with `nc DST PORT < file` to a listener in `ns` on
/// `dst:port`; fails unless the SHA-256 of what arrived equals the guest's. Returns the
/// elapsed time.
pub fn tcp_from_guest(
    ns: &Netns,
    guest: &LinuxGuest,
    dst: Ipv4Addr,
    port: u16,
    len: usize,
) -> Result<Duration> {
    anyhow::ensure!(len.is_multiple_of(1024), "len must be whole KiB");
    let tx = format!("/tmp/tx.{port}");
    let out = guest.exec(&format!(
        "dd if=/dev/urandom of={tx} bs=1024 count={} 2>/dev/null && sha256sum {tx}",
        len / 1024
    ))?;
    let want = first_word(&out)?;
    let addr = SocketAddrV4::new(dst, port);
    let listener = ns.run(|| {
        TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} in {}", ns.name()))
    })?;
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    guest.exec(&format!(
        "(timeout 120 nc {dst} {port} < {tx}) >/dev/null 2>&1 &"
    ))?;
    let deadline = Instant::now() + STEP;
    let (mut s, from) = loop {
        match listener.accept() {
            Ok(x) => break x,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the guest did not connect to {addr} within {STEP:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("accept"),
        }
    };
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(STEP))?;
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + TOTAL;
    while got.len() < len {
        anyhow::ensure!(
            Instant::now() < deadline,
            "receiving from the guest took over {TOTAL:?} ({} of {len} bytes)",
            got.len()
        );
        let n = s
            .read(&mut buf)
            .with_context(|| format!("read after {} of {len} bytes from {from}", got.len()))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let elapsed = start.elapsed();
    drop(s);
    anyhow::ensure!(
        got.len() == len,
        "received {} of {len} bytes from {from}",
        got.len()
    );
    let have = sha256_hex(&got)?;
    anyhow::ensure!(
        have == want,
        "bytes from the guest differ: sha256 {have}, the guest sent {want}"
    );
    Ok(elapsed)
}

/// The guest sends one UDP datagram (a TFTP write request naming `tag`, from busybox's
/// `tftp`) to `dst:port`; returns where it came from as seen by a socket in `ns`.
pub fn udp_from_guest(
    ns: &Netns,
    guest: &LinuxGuest,
    dst: Ipv4Addr,
    port: u16,
    tag: &str,
) -> Result<SocketAddr> {
    let sink = UdpSink::bind(ns, SocketAddrV4::new(dst, port))?;
    guest.exec(&format!(
        "(timeout 5 tftp -p -l /init -r {tag} {dst} {port}) >/dev/null 2>&1 &"
    ))?;
    let (data, from) = sink
        .receive_within(Duration::from_secs(10))?
        .with_context(|| format!("no UDP datagram from the guest reached {dst}:{port}"))?;
    anyhow::ensure!(
        data.windows(tag.len()).any(|w| w == tag.as_bytes()),
        "the datagram from {from} does not carry {tag:?}: {data:?}"
    );
    Ok(from)
}

/// A UDP datagram from `ns` to the guest's `dst:port` where nothing listens: the guest's UDP
/// layer answers ICMP port unreachable, which comes back through the tunnel as
/// ECONNREFUSED on the connected socket. Proves the datagram reached the guest's stack.
pub fn udp_to_guest_refused(ns: &Netns, dst: Ipv4Addr, port: u16) -> Result<()> {
    let addr = SocketAddrV4::new(dst, port);
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut last = String::new();
        for _ in 0..5 {
            s.send(b"ipip interop udp")?;
            let mut buf = [0u8; 64];
            match s.recv(&mut buf) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(()),
                other => last = format!("{other:?}"),
            }
        }
        anyhow::bail!("no port unreachable came back from {addr} (last: {last})")
    })
}
