//! Traffic through the tunnel: ping, a verified TCP transfer, the source a server sees, UDP
//! that must (not) arrive.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::netns::Netns;

/// `ping -c COUNT -W 1 -i 0.2 -I SRC DST` inside `ns`, whatever its outcome.
pub fn ping(ns: &Netns, src: Ipv4Addr, dst: Ipv4Addr, count: u32) -> Result<Output> {
    let (count, src, dst) = (count.to_string(), src.to_string(), dst.to_string());
    ns.output(&[
        "ping", "-n", "-c", &count, "-W", "1", "-i", "0.2", "-I", &src, &dst,
    ])
}

/// True when every one of COUNT echo requests got its reply.
pub fn ping_ok(ns: &Netns, src: Ipv4Addr, dst: Ipv4Addr, count: u32) -> Result<bool> {
    let out = ping(ns, src, dst, count)?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(out.status.success() && text.contains(&format!("{count} received")))
}

/// `ping -c COUNT -W 1 -i 0.2 [-t TTL] DST` inside `ns`, the source left to the routing
/// table (a gateway's LAN hosts have one address; the tunnel hosts' routes carry `src`).
pub fn ping_ttl(ns: &Netns, dst: Ipv4Addr, count: u32, ttl: Option<u8>) -> Result<Output> {
    let (count, dst) = (count.to_string(), dst.to_string());
    let ttl = ttl.map(|t| t.to_string());
    let mut args = vec!["ping", "-n", "-c", &count, "-W", "1", "-i", "0.2"];
    if let Some(t) = &ttl {
        args.extend(["-t", t.as_str()]);
    }
    args.push(&dst);
    ns.output(&args)
}

/// Fails with ping's output unless every one of COUNT echo requests from `ns` to `dst` got
/// its reply. `what` names the hop for the message ("doolittle → jill").
pub fn must_ping(ns: &Netns, dst: Ipv4Addr, count: u32, what: &str) -> Result<()> {
    all_replies(&ping_ttl(ns, dst, count, None)?, dst, count, what)
}

/// [`must_ping`] from the source address `src`.
pub fn must_ping_from(
    ns: &Netns,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    count: u32,
    what: &str,
) -> Result<()> {
    all_replies(&ping(ns, src, dst, count)?, dst, count, what)
}

fn all_replies(out: &Output, dst: Ipv4Addr, count: u32, what: &str) -> Result<()> {
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && text.contains(&format!("{count} received")),
        "ping {what} ({dst}) failed: {}",
        crate::ipip::describe(out)
    );
    Ok(())
}

/// The router that answered with "Time to live exceeded", out of ping's output
/// (`From 192.168.1.1 icmp_seq=1 Time to live exceeded`).
pub fn time_exceeded_from(out: &Output) -> Option<Ipv4Addr> {
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        if !l.contains("Time to live exceeded") {
            return None;
        }
        let rest = l.trim().strip_prefix("From ")?;
        let addr = rest.split([' ', ':']).next()?;
        addr.parse().ok()
    })
}

/// Connects from `client` to a server in `server` listening on `dst:port` and returns the
/// source address the server saw on the accepted connection (what a NAT or tunnel left of
/// the client's address). Bounded by timeouts.
pub fn tcp_source_seen(
    client: &Netns,
    server: &Netns,
    dst: Ipv4Addr,
    port: u16,
) -> Result<SocketAddr> {
    let addr = SocketAddrV4::new(dst, port);
    let listener = server.run(|| {
        TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} in {}", server.name()))
    })?;
    let acceptor = std::thread::spawn(move || -> Result<SocketAddr> {
        let (mut s, peer) = accept_within(&listener, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut hello = [0u8; 5];
        s.read_exact(&mut hello)
            .context("reading the client's hello")?;
        anyhow::ensure!(&hello == b"hello", "the client said {hello:?}");
        Ok(peer)
    });
    let sent = client.run(|| {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT)
            .with_context(|| format!("cannot connect to {addr}"))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.write_all(b"hello")?;
        Ok(())
    });
    let seen = acceptor
        .join()
        .map_err(|_| anyhow::anyhow!("TCP acceptor thread panicked"))?;
    sent.context("TCP client")?;
    seen.context("TCP server")
}

fn accept_within(listener: &TcpListener, timeout: Duration) -> Result<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false)?;
                return Ok((s, peer));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "no connection within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("accept failed"),
        }
    }
}

/// A UDP socket bound inside a namespace, to see what arrives (or that nothing does).
#[derive(Debug)]
pub struct UdpSink {
    sock: UdpSocket,
    addr: SocketAddrV4,
}

impl UdpSink {
    pub fn bind(ns: &Netns, addr: SocketAddrV4) -> Result<Self> {
        let sock = ns.run(|| {
            UdpSocket::bind(addr).with_context(|| format!("cannot bind {addr} in {}", ns.name()))
        })?;
        Ok(UdpSink { sock, addr })
    }

    /// The first datagram to arrive within `wait`, with its source; None if none did.
    pub fn receive_within(&self, wait: Duration) -> Result<Option<(Vec<u8>, SocketAddr)>> {
        self.sock.set_read_timeout(Some(wait))?;
        let mut buf = vec![0u8; 65536];
        match self.sock.recv_from(&mut buf) {
            Ok((n, from)) => Ok(Some((buf[..n].to_vec(), from))),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("recv on {}", self.addr)),
        }
    }
}

/// Sends one UDP datagram from a socket opened inside `ns` (source chosen by routing).
pub fn udp_send(ns: &Netns, dst: SocketAddrV4, payload: &[u8]) -> Result<()> {
    ns.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.send_to(payload, dst)
            .with_context(|| format!("send to {dst} from {}", ns.name()))?;
        Ok(())
    })
}

/// Retries `cond` every 100 ms for up to `timeout`, returning its last error if it never
/// holds.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match cond() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so the receiver can check every byte.
/// A byte stream: how it is cut into `fill` calls does not change the bytes.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern {
            state: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut rest = buf;
        // Finish the current word, then whole words, then start a new one for the tail.
        while self.used < 8 && !rest.is_empty() {
            rest[0] = self.word[self.used];
            self.used += 1;
            rest = &mut rest[1..];
        }
        let mut words = rest.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_word());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.word = self.next_word();
            let n = tail.len();
            tail.copy_from_slice(&self.word[..n]);
            self.used = n;
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()
    }
}

/// What a [`tcp_transfer`] moved.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: usize,
    pub elapsed: Duration,
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `len` pattern bytes from a client in `client` to a server in `server` listening on
/// `dst:port`; the server checks every byte. Every step is bounded by timeouts.
pub fn tcp_transfer(
    client: &Netns,
    server: &Netns,
    dst: Ipv4Addr,
    port: u16,
    len: usize,
) -> Result<Transfer> {
    let addr = SocketAddrV4::new(dst, port);
    let listener = server.run(|| {
        TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} in {}", server.name()))
    })?;
    let seed = 0x1993_0000 ^ u64::from(port);
    let receiver = std::thread::spawn(move || receive(listener, seed, len));
    let start = Instant::now();
    let sent = client.run(|| send(addr, seed, len));
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("TCP receiver thread panicked"))?;
    let elapsed = start.elapsed();
    sent.context("TCP sender")?;
    let bytes = received.context("TCP receiver")?;
    Ok(Transfer { bytes, elapsed })
}

fn send(addr: SocketAddrV4, seed: u64, len: usize) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT)
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + TOTAL_TIMEOUT;
    let mut left = len;
    while left > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "sending to {addr} took over {TOTAL_TIMEOUT:?}"
        );
        let n = left.min(buf.len());
        pattern.fill(&mut buf[..n]);
        s.write_all(&buf[..n])
            .with_context(|| format!("write to {addr} failed after {} bytes", len - left))?;
        left -= n;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the receiver to close, so that all data is known to have arrived.
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let _ = s.read(&mut [0u8; 1]);
    Ok(())
}

fn receive(listener: TcpListener, seed: u64, len: usize) -> Result<usize> {
    let deadline = Instant::now() + TOTAL_TIMEOUT;
    let (mut s, _) = accept_within(&listener, TOTAL_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "receiving took over {TOTAL_TIMEOUT:?}"
        );
        let n = s
            .read(&mut buf)
            .with_context(|| format!("read failed after {got} of {len} bytes"))?;
        if n == 0 {
            break;
        }
        anyhow::ensure!(got + n <= len, "received more than the {len} bytes sent");
        pattern.fill(&mut want[..n]);
        if buf[..n] != want[..n] {
            let i = (0..n).find(|&i| buf[i] != want[i]).unwrap_or(0);
            anyhow::bail!("byte {} differs from what was sent", got + i);
        }
        got += n;
    }
    anyhow::ensure!(got == len, "received {got} of {len} bytes");
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn pattern_does_not_depend_on_how_it_is_cut() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(7).fill(&mut whole);
        let mut p = Pattern::new(7);
        let mut pieces = vec![0u8; 1000];
        let mut at = 0;
        for len in [1, 7, 8, 3, 13, 64, 5, 899] {
            p.fill(&mut pieces[at..at + len]);
            at += len;
        }
        assert_eq!(at, 1000);
        assert_eq!(whole, pieces);
    }
}
