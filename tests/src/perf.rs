//! Measurement helpers for the demo and `cargo xtask bench`: iperf3 TCP and UDP runs between
//! namespaces (JSON output, parsed), a TCP request/response latency probe, and a check that
//! the machine is quiet before a run. Nothing here asserts a time; callers report.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::netns::Netns;

/// CPUs for the two ends of a run (sender, receiver); `None` leaves placement to the kernel.
pub type Pinning = Option<(usize, usize)>;

/// One iperf3 client run against a one-off server in `server` bound to `dst`.
pub struct Iperf<'a> {
    pub client: &'a Netns,
    pub server: &'a Netns,
    /// The client's source address (`-B`).
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub port: u16,
    pub seconds: u32,
    pub pin: Pinning,
}

/// What a TCP run delivered.
#[derive(Clone, Copy, Debug)]
pub struct TcpResult {
    pub gbit_s: f64,
    pub retransmits: u64,
}

/// What a UDP run delivered.
#[derive(Clone, Copy, Debug)]
pub struct UdpResult {
    /// Datagrams received per second.
    pub received_pps: f64,
    pub sent_pps: f64,
}

impl Iperf<'_> {
    fn server(&self) -> Result<Child> {
        let port = self.port.to_string();
        let dst = self.dst.to_string();
        let mut args = vec!["iperf3", "-s", "-1", "-B", &dst, "-p", &port];
        let aff;
        if let Some((_, r)) = self.pin {
            aff = r.to_string();
            args.extend(["-A", &aff]);
        }
        let line = self.server.command_line(&args);
        Command::new(&line[0])
            .args(&line[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start iperf3 -s (is iperf3 installed? `cargo xtask setup`)")
    }

    /// Runs the client with `extra` arguments and returns its JSON report.
    fn client(&self, extra: &[&str]) -> Result<Value> {
        let mut server = self.server()?;
        let result = self.client_against_server(extra);
        let _ = server.kill();
        let _ = server.wait();
        result
    }

    fn client_against_server(&self, extra: &[&str]) -> Result<Value> {
        let (src, dst, port, secs) = (
            self.src.to_string(),
            self.dst.to_string(),
            self.port.to_string(),
            self.seconds.to_string(),
        );
        let mut args = vec![
            "iperf3", "-c", &dst, "-B", &src, "-p", &port, "-t", &secs, "-J",
        ];
        let aff;
        if let Some((s, _)) = self.pin {
            aff = s.to_string();
            args.extend(["-A", &aff]);
        }
        args.extend_from_slice(extra);
        // The server needs a moment to listen: retry refused connections, boundedly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.client.output(&args)?;
            let text = String::from_utf8_lossy(&out.stdout);
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("iperf3 printed non-JSON: {text}"))?;
            match v["error"].as_str() {
                None => return Ok(v),
                Some(e) if e.contains("refused") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Some(e) => bail!("iperf3 {}: {e}", args.join(" ")),
            }
        }
    }

    /// TCP with `streams` parallel streams: the receiver's figure.
    pub fn tcp(&self, streams: u32) -> Result<TcpResult> {
        let p = streams.to_string();
        let v = self.client(&["-P", &p])?;
        let end = &v["end"];
        let bps = end["sum_received"]["bits_per_second"]
            .as_f64()
            .with_context(|| format!("no end.sum_received.bits_per_second in {end}"))?;
        Ok(TcpResult {
            gbit_s: bps / 1e9,
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        })
    }

    /// UDP datagrams of `len` bytes sent as fast as the sender can.
    pub fn udp(&self, len: usize) -> Result<UdpResult> {
        let l = len.to_string();
        let v = self.client(&["-u", "-b", "0", "-l", &l])?;
        let sum = &v["end"]["sum"];
        let secs = sum["seconds"].as_f64().filter(|s| *s > 0.0).unwrap_or(1.0);
        let packets = sum["packets"].as_f64().unwrap_or(0.0);
        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
        Ok(UdpResult {
            received_pps: (packets - lost).max(0.0) / secs,
            sent_pps: packets / secs,
        })
    }
}

/// Latency of a request/response exchange (64 bytes each way over one TCP connection).
#[derive(Clone, Copy, Debug)]
pub struct RrResult {
    pub p50_us: f64,
    pub p99_us: f64,
    pub exchanges: usize,
}

fn pin_current_thread(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu).is_ok() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
    }
}

/// `count` request/response exchanges from `client` (bound to `src`) to a responder in
/// `server` on `dst:port`; the first tenth warms up and is not counted.
pub fn request_response(
    client: &Netns,
    server: &Netns,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    count: usize,
    pin: Pinning,
) -> Result<RrResult> {
    const LEN: usize = 64;
    let listener = server.run(move || {
        TcpListener::bind(SocketAddrV4::new(dst, port))
            .with_context(|| format!("binding the responder to {dst}:{port}"))
    })?;
    let responder = std::thread::spawn(move || -> Result<()> {
        pin_current_thread(pin.map(|p| p.1));
        // Bounded: a client that never connects must not hang the run.
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("nobody connected to the responder on {dst}:{port}");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; LEN];
        for _ in 0..count {
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let samples = client.run(move || -> Result<Vec<f64>> {
        pin_current_thread(pin.map(|p| p.0));
        let sock = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        nix::sys::socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            &nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(src, 0)),
        )
        .with_context(|| format!("binding the client to {src}"))?;
        nix::sys::socket::connect(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            &nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(dst, port)),
        )
        .with_context(|| format!("connecting to {dst}:{port}"))?;
        let mut s = TcpStream::from(sock);
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0x5au8; LEN];
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(out)
    })?;
    responder
        .join()
        .map_err(|_| anyhow::anyhow!("the responder panicked"))??;
    let mut counted: Vec<f64> = samples[count / 10..].to_vec();
    counted.sort_by(f64::total_cmp);
    Ok(RrResult {
        p50_us: percentile(&counted, 0.50),
        p99_us: percentile(&counted, 0.99),
        exchanges: counted.len(),
    })
}

/// The `q` quantile of sorted `v` (nearest rank).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Busy share of all CPUs over `window`, from /proc/stat.
pub fn cpu_busy(window: Duration) -> Result<f64> {
    fn sample() -> Result<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Ok((v.iter().sum(), idle))
    }
    let (t0, i0) = sample()?;
    std::thread::sleep(window);
    let (t1, i1) = sample()?;
    let total = t1.saturating_sub(t0).max(1);
    Ok(1.0 - i1.saturating_sub(i0) as f64 / total as f64)
}

/// Waits (boundedly) until the machine is quiet before a run; returns whether it was.
pub fn wait_quiet(max_busy: f64, attempts: u32) -> bool {
    for _ in 0..attempts {
        if cpu_busy(Duration::from_millis(300)).is_ok_and(|b| b <= max_busy) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..1], 0.99), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
