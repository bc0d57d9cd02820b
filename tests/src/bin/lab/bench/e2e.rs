//! End to end over network namespaces: two hosts on one veth pair, each variant measured with
//! the same tools in the same topology, rounds interleaved (plain, VXLAN, ipip per hook, then
//! again), so that drift of the machine hits every variant alike.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipip_tests::fixture::mac_of;
use ipip_tests::perf::{request_response, wait_quiet, Iperf, Pinning};
use ipip_tests::topology::build::{gro_on, tx_checksum_offload};
use ipip_tests::topology::gateways::{CALCULON, COMP000, DOOLITTLE, RFE, WAN_EAST, WAN_WEST};
use ipip_tests::{DataPath, Gateways, HostToHost, IpipUser, Netns, Node, Underlay};

use super::Plan;
use ipip_tests::generator;

/// Sender on CPU 0, receiver on CPU 1.
const PIN: Pinning = Some((0, 1));
/// VXLAN overlay addresses (VNI 42 over the same veth).
const VXLAN: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 168, 42, 1),
    Ipv4Addr::new(192, 168, 42, 2),
];

/// What carries the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Variant {
    /// The underlay addresses, no tunnel.
    Plain,
    /// The kernel's VXLAN device over the same veth.
    Vxlan,
    /// ipip with `--decap tc` (what `auto` picks on veth).
    IpipTc,
    /// ipip with `--decap xdp`.
    IpipXdp,
    /// ipip with the XDP fast path on the gateways (`--lan`).
    IpipFast,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Plain,
        Variant::Vxlan,
        Variant::IpipTc,
        Variant::IpipXdp,
        Variant::IpipFast,
    ];
    /// Between two hosts nobody forwards: no fast path.
    pub const HOST: [Variant; 4] = [
        Variant::Plain,
        Variant::Vxlan,
        Variant::IpipTc,
        Variant::IpipXdp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::Plain => "plain routing",
            Variant::Vxlan => "kernel VXLAN",
            Variant::IpipTc => "ipip --decap tc (auto on veth)",
            Variant::IpipXdp => "ipip --decap xdp",
            Variant::IpipFast => "ipip fast path (--lan)",
        }
    }
}

/// One variant's figures from one round.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub tcp1_gbit_s: f64,
    pub tcp4_gbit_s: f64,
    pub udp64_rx_kpps: f64,
    pub udp64_tx_kpps: f64,
    pub rr_p50_us: f64,
    pub rr_p99_us: f64,
    /// Gateway line only: 64-byte UDP from the live-frames generator, forwarded (received
    /// at the server) and offered, in kpps. The generator shares CPU 0 with the softirqs that
    /// forward its frames, so it offers what the path takes; alone it makes ~4 Mpps.
    pub gen_rx_kpps: f64,
    pub gen_tx_kpps: f64,
    /// The machine was busy before a measurement even after waiting.
    pub disturbed: bool,
}

/// Every round of every variant.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Series {
    pub topology: String,
    pub method: String,
    pub variants: Vec<(Variant, Vec<Sample>)>,
}

pub fn host_to_host(plan: &Plan) -> Result<Series> {
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    for (n, me, other, addr) in [(d, d, c, VXLAN[0]), (c, c, d, VXLAN[1])] {
        let (local, remote) = (me.underlay.to_string(), other.underlay.to_string());
        n.ns.script(&format!(
            "ip link add vx0 type vxlan id 42 local {local} remote {remote} dstport 4789 dev {}
             ip addr add {addr}/24 dev vx0
             ip link set vx0 up",
            n.iface
        ))
        .with_context(|| format!("VXLAN on {}", n.name))?;
    }
    let variants = rounds("host to host", &Variant::HOST, plan, |v| {
        measure_variant(&ipip, d, c, v, plan)
    })?;
    Ok(Series {
        topology: "two hosts, one veth pair (doolittle ↔ calculon)".into(),
        method: "iperf3 TCP 1 and 4 streams and UDP 64-byte datagrams (-b 0), sender pinned to CPU 0 and receiver to CPU 1 (-A); request/response: 64 bytes each way over one TCP connection (TCP_NODELAY), first tenth not counted".into(),
        variants,
    })
}

/// Every variant `plan.runs` times, interleaved; a run the machine disturbed (busy before it
/// started) is repeated, boundedly.
fn rounds(
    what: &str,
    order: &[Variant],
    plan: &Plan,
    mut run: impl FnMut(Variant) -> Result<Sample>,
) -> Result<Vec<(Variant, Vec<Sample>)>> {
    let mut variants: Vec<(Variant, Vec<Sample>)> =
        order.iter().map(|v| (*v, Vec::new())).collect();
    for round in 0..plan.runs {
        for (v, samples) in variants.iter_mut() {
            println!(
                "==> {what}, round {}/{}: {}",
                round + 1,
                plan.runs,
                v.label()
            );
            let mut s = run(*v).with_context(|| format!("{} (round {})", v.label(), round + 1))?;
            for _ in 0..2 {
                if !s.disturbed {
                    break;
                }
                println!("    the machine was busy: repeating");
                s = run(*v)?;
            }
            println!(
                "    TCP {:.1} / {:.1} Gbit/s, UDP 64 B {:.0} kpps received, RR p50 {:.1} µs p99 {:.1} µs{}",
                s.tcp1_gbit_s,
                s.tcp4_gbit_s,
                s.udp64_rx_kpps,
                s.rr_p50_us,
                s.rr_p99_us,
                if s.disturbed { " (disturbed)" } else { "" }
            );
            samples.push(s);
        }
    }
    Ok(variants)
}

/// Seed §6's line: calculon — doolittle (gateway) — public segment and a router — rfe
/// (gateway) — comp000, traffic from calculon to comp000. Plain routing routes the LAN
/// prefixes across the underlay; VXLAN joins the gateways (VNI 43); ipip attaches the
/// gateways with each hook, and with the fast path.
pub fn gateway_line(plan: &Plan) -> Result<Series> {
    let t = Gateways::new()?;
    let ipip = IpipUser::new()?;
    let (d, r) = (&t.doolittle, &t.rfe);
    for (h, local, remote, addr) in [
        (d, DOOLITTLE, RFE, "10.99.0.1/30"),
        (r, RFE, DOOLITTLE, "10.99.0.2/30"),
    ] {
        h.ns.script(&format!(
            "ip link add vx0 type vxlan id 43 local {local} remote {remote} dstport 4789 dev {}
             ip addr add {addr} dev vx0
             ip link set vx0 up",
            h.underlay_if
        ))
        .with_context(|| format!("VXLAN on {}", h.name))?;
    }
    let namespaces: Vec<&Netns> = t.namespaces().into_iter().map(|(_, ns)| ns).collect();
    // The generator's frames arrive on doolittle's eth1 through veth's XDP path, which needs
    // NAPI there: GRO on (the fast path's XDP program provides it too).
    gro_on(&d.ns, d.lan_if.context("doolittle has a LAN")?)?;
    let generator_frame = udp_frame(
        mac_in(&t.calculon.ns, t.calculon.iface)?,
        mac_in(&d.ns, d.lan_if.context("doolittle has a LAN")?)?,
        CALCULON,
        COMP000,
    );
    let routes = |v: Variant| -> Vec<(&Netns, String)> {
        match v {
            Variant::Plain => vec![
                (&d.ns, format!("192.168.104.0/24 via {WAN_WEST}")),
                (&t.wan, format!("192.168.104.0/24 via {RFE}")),
                (&t.wan, format!("192.168.1.0/24 via {DOOLITTLE}")),
                (&r.ns, format!("192.168.1.0/24 via {WAN_EAST}")),
            ],
            Variant::Vxlan => vec![
                (&d.ns, "192.168.104.0/24 via 10.99.0.2 dev vx0".to_string()),
                (&r.ns, "192.168.1.0/24 via 10.99.0.1 dev vx0".to_string()),
            ],
            _ => Vec::new(),
        }
    };
    let variants = rounds("gateway line", &Variant::ALL, plan, |v| {
        for (ns, route) in routes(v) {
            ns.exec(
                &[
                    ["ip", "route", "add"].as_slice(),
                    &route.split(' ').collect::<Vec<_>>(),
                ]
                .concat(),
            )?;
        }
        let fast = v == Variant::IpipFast;
        if fast {
            for ns in &namespaces {
                tx_checksum_offload(ns, false)?;
            }
        }
        for h in [d, r] {
            let mut args = h.attach_args(if fast {
                DataPath::Fast
            } else {
                DataPath::Kernel
            });
            if let Some(hook) = hook(v) {
                args.extend(["--decap".to_string(), hook.to_string()]);
            }
            if v != Variant::Plain && v != Variant::Vxlan {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                ipip.run(&h.ns, &refs)?;
            }
        }
        let result =
            measure(&t.calculon.ns, &t.comp000.ns, (CALCULON, COMP000), plan).and_then(|mut s| {
                let b = generator::burst(
                    &t.calculon.ns,
                    t.calculon.iface,
                    &generator_frame,
                    plan.generator_frames,
                    0,
                    &t.comp000.ns,
                    t.comp000.iface,
                )?;
                s.gen_rx_kpps = b.received_pps() / 1e3;
                s.gen_tx_kpps = b.sent_pps() / 1e3;
                Ok(s)
            });
        if v != Variant::Plain && v != Variant::Vxlan {
            for h in [d, r] {
                h.detach(&ipip)?;
            }
        }
        if fast {
            for ns in &namespaces {
                tx_checksum_offload(ns, true)?;
            }
        }
        for (ns, route) in routes(v) {
            ns.exec(
                &[
                    ["ip", "route", "del"].as_slice(),
                    &route.split(' ').collect::<Vec<_>>(),
                ]
                .concat(),
            )?;
        }
        result
    })?;
    Ok(Series {
        topology: "gateway line: calculon — doolittle — (bridge, router) — rfe — comp000 (seed §6)".into(),
        method: "as for two hosts, from calculon to comp000; the fast path runs with TX checksum offload off on every veth, as it requires there (see README), the others with it on".into(),
        variants,
    })
}

/// A 64-byte-payload UDP frame (to the discard port), built with etherparse.
fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, 9);
    let mut out = Vec::new();
    b.write(&mut out, &[0x5a; 64])
        .expect("building a UDP frame");
    out
}

/// The MAC of `dev` in `ns`.
fn mac_in(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let dev = dev.to_string();
    ns.run(move || Ok(mac_of(&dev)))
}

/// Addresses the variant's traffic uses: (doolittle side, calculon side).
fn endpoints(v: Variant, d: &Node, c: &Node) -> (Ipv4Addr, Ipv4Addr) {
    match v {
        Variant::Plain => (d.underlay, c.underlay),
        Variant::Vxlan => (VXLAN[0], VXLAN[1]),
        Variant::IpipTc | Variant::IpipXdp | Variant::IpipFast => (d.private, c.private),
    }
}

fn hook(v: Variant) -> Option<&'static str> {
    match v {
        Variant::IpipTc => Some("tc"),
        Variant::IpipXdp => Some("xdp"),
        _ => None,
    }
}

fn measure_variant(ipip: &IpipUser, d: &Node, c: &Node, v: Variant, plan: &Plan) -> Result<Sample> {
    let hook = hook(v);
    if let Some(hook) = hook {
        for n in [d, c] {
            let peers = n.peers.to_string_lossy();
            ipip.run(
                &n.ns,
                &["attach", n.iface, "--peers", &peers, "--decap", hook],
            )?;
        }
    }
    let result = measure(&d.ns, &c.ns, endpoints(v, d, c), plan);
    if hook.is_some() {
        for n in [d, c] {
            ipip.detach(&n.ns, n.iface)?;
        }
    }
    result
}

fn measure(
    client: &Netns,
    server: &Netns,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    plan: &Plan,
) -> Result<Sample> {
    let mut s = Sample::default();
    let iperf = |seconds, port| Iperf {
        client,
        server,
        src,
        dst,
        port,
        seconds,
        pin: PIN,
    };
    let quiet = |s: &mut Sample| {
        if !wait_quiet(0.15, 10) {
            s.disturbed = true;
        }
    };
    quiet(&mut s);
    s.tcp1_gbit_s = iperf(plan.tcp_seconds, 5301).tcp(1)?.gbit_s;
    quiet(&mut s);
    s.tcp4_gbit_s = iperf(plan.tcp_seconds, 5302).tcp(4)?.gbit_s;
    quiet(&mut s);
    let udp = iperf(plan.udp_seconds, 5303).udp(64)?;
    s.udp64_rx_kpps = udp.received_pps / 1e3;
    s.udp64_tx_kpps = udp.sent_pps / 1e3;
    quiet(&mut s);
    let rr = request_response(client, server, src, dst, 5304, plan.rr_exchanges, PIN)?;
    s.rr_p50_us = rr.p50_us;
    s.rr_p99_us = rr.p99_us;
    Ok(s)
}
