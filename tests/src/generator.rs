//! A traffic generator that isn't the bottleneck: `BPF_PROG_TEST_RUN` in live-frames mode
//! runs a program that returns XDP_TX on a prepared frame, so the kernel transmits it out of
//! the chosen interface as fast as one CPU can (millions of frames per second), with no
//! socket, no skb and no user space per packet. What arrives at the far end, counted by its
//! interface, is the forwarding rate of whatever lies between.
//!
//! Live frames recycle their pages without copying the frame in again, and a stack that
//! forwards a frame rewrites it in place (new MACs, TTL): so the frame is written afresh by
//! the bench harness before each transmission (restore, then tail call to XDP_TX).

use std::time::{Duration, Instant};

use crate::fixture::{ifindex, xdp_md};
use crate::Netns;
use anyhow::{Context, Result};
use aya::maps::{Array, ProgramArray};
use aya::{
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
    Ebpf,
};
use ipip_common::{
    BenchFrame, BENCH_FRAME_MAX, MAP_BENCH_FRAME, MAP_BENCH_XDP_TARGET, PROG_BENCH_XDP,
    PROG_BENCH_XDP_TX,
};
use ipip_user::datapath::BENCH_HARNESS;

/// What one burst did.
#[derive(Clone, Copy, Debug)]
pub struct Burst {
    pub sent: u64,
    pub received: u64,
    /// How long the generator ran. Frames the path can't keep up with are dropped on the
    /// way, not queued for long, so received / elapsed is the path's forwarding rate.
    pub elapsed: Duration,
}

impl Burst {
    pub fn received_pps(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64()
    }

    pub fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

/// Packets `dev` in `ns` has received (its rx_packets).
fn rx_packets(ns: &Netns, dev: &str) -> Result<u64> {
    let out = ns.exec(&["ip", "-s", "-j", "link", "show", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .with_context(|| format!("no rx packets for {dev} in {out}"))
}

/// Sends `count` copies of `frame` out of `iface` in `from` (the generator pinned to `cpu`)
/// and counts what `dev` in `to` receives.
pub fn burst(
    from: &Netns,
    iface: &str,
    frame: &[u8],
    count: u32,
    cpu: usize,
    to: &Netns,
    dev: &str,
) -> Result<Burst> {
    let before = rx_packets(to, dev)?;
    let frame = frame.to_vec();
    let iface = iface.to_string();
    let elapsed = from.run(move || -> Result<Duration> {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
        anyhow::ensure!(
            (14..BENCH_FRAME_MAX).contains(&frame.len()),
            "generator frames are 14..{BENCH_FRAME_MAX} bytes"
        );
        let mut ebpf = Ebpf::load(BENCH_HARNESS).context("loading the bench harness")?;
        for name in [PROG_BENCH_XDP_TX, PROG_BENCH_XDP] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name} in the harness"))?
                .try_into()?;
            p.load()?;
        }
        let tx = ebpf
            .program(PROG_BENCH_XDP_TX)
            .context("no generator program")?
            .fd()?
            .try_clone()?;
        let mut targets: ProgramArray<_> = ebpf
            .map_mut(MAP_BENCH_XDP_TARGET)
            .context("no target map")?
            .try_into()?;
        targets.set(0, &tx, 0)?;
        let mut stored = BenchFrame {
            len: frame.len() as u32,
            _pad: 0,
            bytes: [0; BENCH_FRAME_MAX],
        };
        stored.bytes[..frame.len()].copy_from_slice(&frame);
        let mut frames: Array<_, BenchFrame> = ebpf
            .map_mut(MAP_BENCH_FRAME)
            .context("no frame map")?
            .try_into()?;
        frames.set(0, stored, 0)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_BENCH_XDP)
            .context("no harness program")?
            .try_into()?;
        let ctx = xdp_md(frame.len(), ifindex(&iface));
        let started = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        })
        .context("live-frames BPF_PROG_TEST_RUN")?;
        Ok(started.elapsed())
    })?;
    // Let the last frames drain: wait until the counter holds still (bounded).
    let mut last = rx_packets(to, dev)?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let now = rx_packets(to, dev)?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(Burst {
        sent: u64::from(count),
        received: last.saturating_sub(before),
        elapsed,
    })
}
