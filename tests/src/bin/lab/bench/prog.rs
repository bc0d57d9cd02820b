//! Per-packet cost of each program with `BPF_PROG_TEST_RUN` (repeat ≥ 1,000,000), next to a
//! trivial program (the floor) and a minimal reference encapsulation, all in one run.
//!
//! Every measured program runs behind the bench harness (ipip-ebpf's `bench_harness.rs`),
//! which restores the input frame before each repeat and tail-calls the program: without it a
//! decapsulator would see its own output from the second repeat on. The harness's own cost is
//! measured with a target that only returns, and subtracted: "net" is what the program adds.
//! Every case checks its verdict and that its counter moved by exactly `repeat`, so a figure
//! is never that of a path other than the one named.

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, ProgramArray},
    programs::{ProgramFd, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use ipip_common::{
    BenchFrame, Path, Reason, BENCH_FRAME_MAX, MAP_BENCH_FRAME, MAP_BENCH_TC_TARGET,
    MAP_BENCH_XDP_TARGET, PROG_BENCH_TC, PROG_BENCH_TC_OK, PROG_BENCH_XDP, PROG_BENCH_XDP_PASS,
    PROG_BENCH_XDP_REF_ENCAP, TUNNEL_FLAG_FAST_PATH,
};
use ipip_tests::fixture::{
    counters, datapath_with, eth4, eth4_with, icmp, ifindex, ipip, mac_of, paths, udp, xdp_md,
    LOCAL, TC_ACT_OK, V4, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};
use ipip_tests::Netns;
use ipip_user::datapath::{Datapath, BENCH_HARNESS};

const XDP_TX: u32 = 3;

/// The gateway the fast-path cases run in: LAN lan0 with host .100, underlay wan0 (ours
/// 192.0.2.58) with next hop .250, the peer 192.0.2.129 on-link; static neighbours so that
/// `bpf_fib_lookup` answers in full.
const GATEWAY: &str = "
    ip link set lo up
    ip link add lan0 address 02:00:00:00:01:01 type veth peer name lan0p address 02:00:00:00:01:02
    ip link add wan0 address 02:00:00:00:02:01 type veth peer name wan0p address 02:00:00:00:02:02
    ip link set lan0 up
    ip link set lan0p up
    ip link set wan0 up
    ip link set wan0p up
    ip addr add 10.0.1.1/24 dev lan0
    ip addr add 192.0.2.58/24 dev wan0
    sysctl -q -w net.ipv4.ip_forward=1
    sysctl -q -w net.ipv4.conf.all.forwarding=1
    ip route add 10.0.2.0/24 via 192.0.2.129 dev wan0 mtu 1480 proto 156
    ip neigh replace 192.0.2.129 lladdr 02:00:00:00:02:81 dev wan0 nud permanent
    ip neigh replace 10.0.1.100 lladdr 02:00:00:00:01:64 dev lan0 nud permanent
";
const LAN0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x64];
const LAN_HOST: [u8; 4] = [10, 0, 1, 100];

const PEERS: &str = r#"
[tunnel]
address = "10.0.1.1/24"

[[peer]]
name = "calculon"
remote = "192.0.2.129"
routes = ["10.0.2.0/24"]
"#;
const CALCULON: [u8; 4] = [192, 0, 2, 129];
const STRANGER: [u8; 4] = [192, 0, 2, 200];
const TUNNEL_ADDRESS: [u8; 4] = [10, 0, 1, 1];
const REMOTE_HOST: [u8; 4] = [10, 0, 2, 5];

/// Inner packets are 64-byte ICMP echoes (78-byte frames; 98 with the outer header).
const INNER_LEN: usize = 64;

/// Which hook a case runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Xdp,
    Tc,
}

/// What a case must do on every repeat.
#[derive(Clone, Copy, Debug)]
enum Moves {
    /// Nothing to check beyond the verdict (the floors, the reference).
    Nothing,
    /// Peer 0's rx or tx packets.
    PeerRx,
    PeerTx,
    Reason(Reason),
    Path(Path),
}

/// One measured program.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Cost {
    pub name: String,
    pub what: String,
    pub repeat: u32,
    /// Median over the runs of the kernel's average ns per repeat, harness included.
    pub ns: f64,
    /// `ns` minus the harness floor of its hook (the harness with a target that only returns).
    pub net_ns: f64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Costs {
    pub method: String,
    pub repeat: u32,
    pub runs: u32,
    pub cases: Vec<Cost>,
    /// Net cost of the reference encapsulation.
    pub reference_net_ns: f64,
}

struct Harness {
    ebpf: Ebpf,
}

impl Harness {
    fn load() -> Result<Self> {
        let ebpf = Ebpf::load(BENCH_HARNESS).context("loading the bench harness object")?;
        let mut h = Harness { ebpf };
        for name in [
            PROG_BENCH_XDP,
            PROG_BENCH_XDP_PASS,
            PROG_BENCH_XDP_REF_ENCAP,
        ] {
            h.xdp(name)?
                .load()
                .with_context(|| format!("loading {name}"))?;
        }
        for name in [PROG_BENCH_TC, PROG_BENCH_TC_OK] {
            h.tc(name)?
                .load()
                .with_context(|| format!("loading {name}"))?;
        }
        Ok(h)
    }

    fn xdp(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the harness"))?
            .try_into()?)
    }

    fn tc(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the harness"))?
            .try_into()?)
    }

    fn set_frame(&mut self, frame: &[u8]) -> Result<()> {
        ensure!(
            (14..BENCH_FRAME_MAX).contains(&frame.len()),
            "bench frames are 14..{BENCH_FRAME_MAX} bytes, not {}",
            frame.len()
        );
        let mut f = BenchFrame {
            len: frame.len() as u32,
            _pad: 0,
            bytes: [0; BENCH_FRAME_MAX],
        };
        f.bytes[..frame.len()].copy_from_slice(frame);
        let mut map: Array<_, BenchFrame> = self
            .ebpf
            .map_mut(MAP_BENCH_FRAME)
            .context("no bench_frame map")?
            .try_into()?;
        map.set(0, f, 0)?;
        Ok(())
    }

    fn set_target(&mut self, kind: Kind, fd: &ProgramFd) -> Result<()> {
        let name = match kind {
            Kind::Xdp => MAP_BENCH_XDP_TARGET,
            Kind::Tc => MAP_BENCH_TC_TARGET,
        };
        let mut map: ProgramArray<_> = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("no {name} map"))?
            .try_into()?;
        map.set(0, fd, 0)
            .with_context(|| format!("putting the target into {name}"))?;
        Ok(())
    }

    fn own_fd(&self, name: &str) -> Result<ProgramFd> {
        let p = self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?;
        Ok(p.fd()?.try_clone()?)
    }

    /// Runs the harness of `kind` `repeat` times on `frame`: (verdict, ns per repeat).
    fn run(
        &mut self,
        kind: Kind,
        frame: &[u8],
        ctx: Option<&[u8]>,
        repeat: u32,
    ) -> Result<(u32, f64)> {
        let mut out = vec![0u8; 4096];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            repeat,
            ..Default::default()
        };
        let r = match kind {
            Kind::Xdp => self.xdp(PROG_BENCH_XDP)?.test_run(opts)?,
            Kind::Tc => self.tc(PROG_BENCH_TC)?.test_run(opts)?,
        };
        Ok((r.return_value, r.duration.as_nanos() as f64))
    }
}

/// `repeat` single runs of `target` straight (no harness), each on a fresh skb: (the last
/// verdict unless one differed, median ns). The kernel times only the program's run.
fn fresh_runs(
    h: &mut Harness,
    dp: &mut Datapath,
    target: Target,
    frame: &[u8],
    repeat: u32,
) -> Result<(u32, f64)> {
    let mut times = Vec::with_capacity(repeat as usize);
    let mut verdict = None;
    for _ in 0..repeat {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        };
        let r = match target {
            Target::HarnessTcOk => h.tc(PROG_BENCH_TC_OK)?.test_run(opts)?,
            Target::TcEgress => dp.tc()?.test_run(opts)?,
            Target::TcIngress => dp.tc_decap()?.test_run(opts)?,
            other => bail!("{other:?} has no fresh-skb mode"),
        };
        match verdict {
            None => verdict = Some(r.return_value),
            Some(v) if v != r.return_value => return Ok((r.return_value, f64::NAN)),
            Some(_) => {}
        }
        times.push(r.duration.as_nanos() as f64);
    }
    Ok((
        verdict.unwrap_or(u32::MAX),
        super::report::spread(&times).median,
    ))
}

/// The floor: the trivial XDP program run directly, no harness.
fn bare_pass(h: &mut Harness, frame: &[u8], repeat: u32) -> Result<f64> {
    let r = h.xdp(PROG_BENCH_XDP_PASS)?.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    })?;
    ensure!(
        r.return_value == XDP_PASS,
        "the floor returned {}",
        r.return_value
    );
    Ok(r.duration.as_nanos() as f64)
}

/// How repeats get a pristine frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `repeat` runs behind the restoring harness.
    Harness,
    /// One run per call, `repeat` calls: a fresh skb each time. For TC encapsulation, which
    /// the kernel refuses on an skb already marked encapsulated (adjust_room: -EALREADY),
    /// and TC decapsulation, whose restore would cost an adjust_room the floor doesn't have.
    FreshSkb,
}

/// Which data path a case runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dp {
    /// A host: no fast path (no FIB lookups on decap).
    Host,
    /// A gateway with the fast path on lan0.
    Gateway,
}

struct Case {
    name: &'static str,
    what: &'static str,
    kind: Kind,
    mode: Mode,
    dp: Dp,
    /// The program under test, by where it comes from.
    target: Target,
    frame: Vec<u8>,
    /// Ingress ifindex for XDP cases that look up the FIB.
    ingress: Option<u32>,
    verdict: u32,
    moves: Moves,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    HarnessXdpPass,
    HarnessTcOk,
    RefEncap,
    XdpDecap,
    XdpLan,
    TcEgress,
    TcIngress,
}

fn target_fd(h: &Harness, dp: &mut Datapath, t: Target) -> Result<ProgramFd> {
    Ok(match t {
        Target::HarnessXdpPass => h.own_fd(PROG_BENCH_XDP_PASS)?,
        Target::HarnessTcOk => h.own_fd(PROG_BENCH_TC_OK)?,
        Target::RefEncap => h.own_fd(PROG_BENCH_XDP_REF_ENCAP)?,
        Target::XdpDecap => dp.xdp()?.fd()?.try_clone()?,
        Target::XdpLan => dp.xdp_lan()?.fd()?.try_clone()?,
        Target::TcEgress => dp.tc()?.fd()?.try_clone()?,
        Target::TcIngress => dp.tc_decap()?.fd()?.try_clone()?,
    })
}

/// Counts `moves` refers to, read from the data path.
fn moved(dp: &Datapath, m: Moves) -> u64 {
    let c = counters(dp, 1);
    match m {
        Moves::Nothing => 0,
        Moves::PeerRx => c.peers[0].rx_packets,
        Moves::PeerTx => c.peers[0].tx_packets,
        Moves::Reason(r) => c.reasons[r as usize],
        Moves::Path(p) => paths(dp)[p as usize],
    }
}

pub fn per_packet(quick: bool) -> Result<Costs> {
    let repeat: u32 = if quick { 1_000_000 } else { 2_000_000 };
    let runs: u32 = if quick { 1 } else { 5 };
    let ns = Netns::new("ipipbench").context("the bench gateway's namespace")?;
    ns.script(GATEWAY).context("building the bench gateway")?;
    let result = ns.within(|| measure_all(repeat, runs));
    drop(ns);
    let cases = result?;
    let reference_net_ns = cases
        .iter()
        .find(|c| c.name == "reference encap")
        .map_or(f64::NAN, |c| c.net_ns);
    Ok(Costs {
        method: format!(
            "BPF_PROG_TEST_RUN, repeat {repeat}, median of {runs} run(s); each program tail-called by a harness that restores the input frame before every repeat; net = minus the harness with a target that only returns"
        ),
        repeat,
        runs,
        cases,
        reference_net_ns,
    })
}

fn cases() -> Vec<Case> {
    let inner_to_us = icmp(&V4::new([10, 0, 2, 5], TUNNEL_ADDRESS), INNER_LEN);
    let inner_to_lan = icmp(&V4::new([10, 0, 2, 5], LAN_HOST), INNER_LEN);
    let from_peer = V4::new(CALCULON, LOCAL);
    let to_peer = icmp(&V4::new(TUNNEL_ADDRESS, REMOTE_HOST), INNER_LEN);
    let lan_to_remote = icmp(&V4::new(LAN_HOST, REMOTE_HOST), INNER_LEN);
    let lan0 = ifindex("lan0");
    let wan0 = ifindex("wan0");
    let case = |name, what, kind, target, frame, ingress, verdict, moves| Case {
        name,
        what,
        kind,
        mode: Mode::Harness,
        dp: Dp::Host,
        target,
        frame,
        ingress,
        verdict,
        moves,
    };
    let gw = |c: Case| Case {
        dp: Dp::Gateway,
        ..c
    };
    let fresh = |c: Case| Case {
        mode: Mode::FreshSkb,
        ..c
    };
    vec![
        case(
            "harness floor (XDP)",
            "restore + tail call to XDP_PASS",
            Kind::Xdp,
            Target::HarnessXdpPass,
            eth4(&to_peer),
            None,
            XDP_PASS,
            Moves::Nothing,
        ),
        case(
            "harness floor (TC)",
            "restore + tail call to TC_ACT_OK",
            Kind::Tc,
            Target::HarnessTcOk,
            eth4(&to_peer),
            None,
            TC_ACT_OK,
            Moves::Nothing,
        ),
        fresh(case(
            "TC floor (fresh skb)",
            "TC_ACT_OK, one run per call",
            Kind::Tc,
            Target::HarnessTcOk,
            eth4(&to_peer),
            None,
            TC_ACT_OK,
            Moves::Nothing,
        )),
        case(
            "reference encap",
            "adjust head, write a 20-byte header, checksum (XDP)",
            Kind::Xdp,
            Target::RefEncap,
            eth4(&to_peer),
            None,
            XDP_TX,
            Moves::Nothing,
        ),
        case(
            "XDP decap",
            "IPIP from a peer to the tunnel address: decapsulated, passed up (host)",
            Kind::Xdp,
            Target::XdpDecap,
            ipip(&from_peer, &inner_to_us),
            Some(wan0),
            XDP_PASS,
            Moves::PeerRx,
        ),
        case(
            "XDP pass-through",
            "plain UDP to us: classified, passed untouched",
            Kind::Xdp,
            Target::XdpDecap,
            eth4(&udp(&V4::new(CALCULON, LOCAL), INNER_LEN)),
            Some(wan0),
            XDP_PASS,
            Moves::Nothing,
        ),
        case(
            "XDP counted drop",
            "IPIP from a non-peer: dropped, unknown_peer counted",
            Kind::Xdp,
            Target::XdpDecap,
            ipip(&V4::new(STRANGER, LOCAL), &inner_to_us),
            Some(wan0),
            XDP_DROP,
            Moves::Reason(Reason::DropUnknownPeer),
        ),
        fresh(case(
            "TC decap",
            "IPIP from a peer: decapsulated at TC ingress (--decap tc, auto on veth)",
            Kind::Tc,
            Target::TcIngress,
            ipip(&from_peer, &inner_to_us),
            None,
            TC_ACT_OK,
            Moves::PeerRx,
        )),
        fresh(case(
            "TC encap",
            "local packet to a peer's prefix: encapsulated at TC egress",
            Kind::Tc,
            Target::TcEgress,
            eth4(&to_peer),
            None,
            TC_ACT_OK,
            Moves::PeerTx,
        )),
        case(
            "TC pass-through",
            "plain UDP at TC egress: classified, passed untouched",
            Kind::Tc,
            Target::TcEgress,
            eth4(&udp(&V4::new(LOCAL, CALCULON), INNER_LEN)),
            None,
            TC_ACT_OK,
            Moves::Nothing,
        ),
        gw(case(
            "XDP decap (gateway)",
            "as XDP decap, with the fast path on: the inner FIB lookup says local",
            Kind::Xdp,
            Target::XdpDecap,
            ipip(&from_peer, &inner_to_us),
            Some(wan0),
            XDP_PASS,
            Moves::PeerRx,
        )),
        gw(case(
            "XDP decap-forward",
            "IPIP from a peer to a LAN host: decapsulated, redirected to lan0 (fast path)",
            Kind::Xdp,
            Target::XdpDecap,
            ipip(&from_peer, &inner_to_lan),
            Some(wan0),
            XDP_REDIRECT,
            Moves::Path(Path::DecapFast),
        )),
        gw(case(
            "XDP LAN encap",
            "LAN host to a peer's prefix: encapsulated, redirected to wan0 (fast path)",
            Kind::Xdp,
            Target::XdpLan,
            eth4_with(LAN0_MAC, HOST_MAC, &lan_to_remote),
            Some(lan0),
            XDP_REDIRECT,
            Moves::Path(Path::EncapFast),
        )),
    ]
}

fn measure_all(repeat: u32, runs: u32) -> Result<Vec<Cost>> {
    let mut h = Harness::load()?;
    let wan0 = ifindex("wan0");
    let mut host = datapath_with(PEERS, LOCAL, |plan| plan.tunnel.ifindex = wan0);
    let mut gateway = datapath_with(PEERS, LOCAL, |plan| {
        plan.tunnel.flags |= TUNNEL_FLAG_FAST_PATH;
        plan.tunnel.ifindex = wan0;
    });
    gateway.allow_forwarding_to(&[wan0, ifindex("lan0")])?;
    gateway.accept_frames_to(&[(ifindex("lan0"), mac_of("lan0"))])?;
    let mut out: Vec<Cost> = Vec::new();
    let floor_frame = eth4(&icmp(&V4::new(TUNNEL_ADDRESS, REMOTE_HOST), INNER_LEN));
    let mut bare = Vec::new();
    for _ in 0..runs {
        bare.push(bare_pass(&mut h, &floor_frame, repeat)?);
    }
    out.push(Cost {
        name: "XDP_PASS (floor)".into(),
        what: "a program that only returns XDP_PASS, run directly".into(),
        repeat,
        ns: super::report::spread(&bare).median,
        net_ns: 0.0,
    });
    // Harness floors (XDP, TC) and the fresh-skb floor, as measured.
    let mut floors = [f64::NAN; 3];
    for c in cases() {
        let dp = match c.dp {
            Dp::Host => &mut host,
            Dp::Gateway => &mut gateway,
        };
        let fd = target_fd(&h, dp, c.target)?;
        h.set_target(c.kind, &fd)?;
        h.set_frame(&c.frame)?;
        let ctx = c.ingress.map(|i| xdp_md(c.frame.len(), i));
        let mut samples = Vec::new();
        for _ in 0..runs {
            let before = moved(dp, c.moves);
            let (verdict, ns) = match c.mode {
                Mode::Harness => h.run(c.kind, &c.frame, ctx.as_deref(), repeat)?,
                Mode::FreshSkb => fresh_runs(&mut h, dp, c.target, &c.frame, repeat)?,
            };
            if verdict != c.verdict {
                bail!(
                    "{}: verdict {verdict}, expected {}; reasons now {:?}",
                    c.name,
                    c.verdict,
                    counters(dp, 1).reasons
                );
            }
            let delta = moved(dp, c.moves).wrapping_sub(before);
            if !matches!(c.moves, Moves::Nothing) && delta != u64::from(repeat) {
                bail!(
                    "{}: {:?} moved by {delta}, not by the {repeat} repeats: the harness did not restore the frame",
                    c.name,
                    c.moves
                );
            }
            samples.push(ns);
        }
        let ns = super::report::spread(&samples).median;
        let slot = match (c.mode, c.kind) {
            (Mode::FreshSkb, _) => 2,
            (Mode::Harness, Kind::Xdp) => 0,
            (Mode::Harness, Kind::Tc) => 1,
        };
        if matches!(c.target, Target::HarnessXdpPass | Target::HarnessTcOk) {
            floors[slot] = ns;
        }
        out.push(Cost {
            name: c.name.into(),
            what: c.what.into(),
            repeat,
            ns,
            net_ns: ns - floors[slot],
        });
        println!(
            "    {:<22} {ns:>7.1} ns  (net {:>6.1} ns)",
            c.name,
            ns - floors[slot]
        );
    }
    Ok(out)
}

/// XDP decap (behind the harness) and TC encap (fresh skb) with `routes` scattered /32s in
/// the route map, to a route of the first peer: raw ns per packet, floors included.
pub fn cost_with_routes(routes: usize, quick: bool) -> Result<(f64, f64)> {
    use super::scale::{peers_file, remote, route};
    let repeat: u32 = if quick { 300_000 } else { 1_000_000 };
    let local = [10, 128, 0, 1];
    let toml = peers_file(1, routes);
    let mut dp = datapath_with(&toml, local, |_| {});
    let mut h = Harness::load()?;
    let owned = route(0).octets();
    let decap_frame = ipip(
        &V4::new(remote(0).octets(), local),
        &icmp(&V4::new(owned, [10, 200, 0, 1]), INNER_LEN),
    );
    let encap_frame = eth4(&icmp(&V4::new([10, 200, 0, 1], owned), INNER_LEN));
    let fd = target_fd(&h, &mut dp, Target::XdpDecap)?;
    h.set_target(Kind::Xdp, &fd)?;
    h.set_frame(&decap_frame)?;
    let before = moved(&dp, Moves::PeerRx);
    let (verdict, decap_ns) = h.run(Kind::Xdp, &decap_frame, None, repeat)?;
    let delta = moved(&dp, Moves::PeerRx).wrapping_sub(before);
    ensure!(
        verdict == XDP_PASS && delta == u64::from(repeat),
        "XDP decap with {routes} routes: verdict {verdict}, {delta} packets counted"
    );
    let before = moved(&dp, Moves::PeerTx);
    let (verdict, encap_ns) = fresh_runs(&mut h, &mut dp, Target::TcEgress, &encap_frame, repeat)?;
    let delta = moved(&dp, Moves::PeerTx).wrapping_sub(before);
    ensure!(
        verdict == TC_ACT_OK && delta == u64::from(repeat),
        "TC encap with {routes} routes: verdict {verdict}, {delta} packets counted"
    );
    Ok((decap_ns, encap_ns))
}
