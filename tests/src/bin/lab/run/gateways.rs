//! `cargo xtask run --scenario gateways`: seed §6, calculon → doolittle → rfe → comp000, NAT
//! on rfe, and mallory the spoofer.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result};
use ipip_tests::packet::{ipip_packet, send_ipip, send_raw_ipv4, udp};
use ipip_tests::topology::gateways::{CALCULON, COMP000, DOOLITTLE, RFE, RFE_NAT};
use ipip_tests::traffic::{udp_send, UdpSink};
use ipip_tests::{DataPath, Gateways, IpipUser};

use super::{
    attach_all, detach_all, ensure_gone, indent, list_namespaces, print_keep, show_peers,
    show_ping, show_source, show_stats, show_transfer,
};

pub fn run(keep: bool, path: DataPath) -> Result<()> {
    println!("==> creating the seed's §6 topology ({path}):");
    println!("    calculon 192.168.1.10 ── 192.168.1.1 doolittle 192.0.2.58 ── pub ── wan ── 198.51.100.200 rfe 192.168.104.253 ── 192.168.104.100 comp000");
    println!("    mallory 192.0.2.66 sits on pub too, nobody's peer");
    let t = Gateways::new()?;
    let ipip = IpipUser::new()?;
    let (c, d, m, r, k) = (&t.calculon, &t.doolittle, &t.mallory, &t.rfe, &t.comp000);
    list_namespaces(&t.namespaces());
    for h in t.endpoints() {
        show_peers(h)?;
    }
    println!(
        "==> rfe's NAT (nft -f, in rfe's namespace):\n{}",
        indent(RFE_NAT)
    );
    show_ping(
        "calculon",
        &c.ns,
        COMP000,
        1,
        "before attach: expected to fail",
    )?;
    if path == DataPath::Fast {
        println!("==> fast path on veths: TX checksum offload off everywhere (frames carry full checksums, as from a wire)");
    }
    attach_all(&ipip, &t.namespaces(), &t.endpoints(), path)?;
    anyhow::ensure!(
        show_ping(
            "calculon",
            &c.ns,
            COMP000,
            3,
            "through doolittle, the tunnel and rfe"
        )?,
        "calculon → comp000 failed"
    );
    anyhow::ensure!(
        show_ping("comp000", &k.ns, CALCULON, 3, "and back")?,
        "comp000 → calculon failed"
    );
    show_source(
        "calculon → comp000",
        &c.ns,
        &k.ns,
        COMP000,
        7201,
        "tunnelled: the desktop's own address",
    )?;
    show_source(
        "comp000 → calculon",
        &k.ns,
        &c.ns,
        CALCULON,
        7202,
        "tunnelled: not masqueraded",
    )?;
    show_source(
        "comp000 → doolittle's public 192.0.2.58",
        &k.ns,
        &d.ns,
        DOOLITTLE,
        7203,
        "rfe's NAT: masqueraded as rfe",
    )?;
    show_transfer("calculon → comp000", &c.ns, &k.ns, COMP000, 7204)?;
    show_transfer("comp000 → calculon", &k.ns, &c.ns, CALCULON, 7205)?;

    println!("==> mallory spoofs IPIP to rfe, aimed at a UDP listener on comp000:7000");
    let sink = UdpSink::bind(&k.ns, SocketAddrV4::new(COMP000, 7000))?;
    let inner = udp(CALCULON, COMP000, 4444, 7000, b"mallory as calculon");
    send_ipip(&m.ns, RFE, &inner, 3)?;
    println!(
        "    3 x outer 192.0.2.66 (not a peer) → 198.51.100.200, inner 192.168.1.10 → comp000"
    );
    let inner = udp(
        Ipv4Addr::new(10, 9, 9, 9),
        COMP000,
        4444,
        7000,
        b"mallory as 10.9.9.9",
    );
    send_raw_ipv4(&m.ns, &ipip_packet(DOOLITTLE, RFE, &inner), 3)?;
    println!(
        "    3 x outer 192.0.2.58 (forged: doolittle) → 198.51.100.200, inner 10.9.9.9 → comp000"
    );
    match sink.receive_within(Duration::from_secs(1))? {
        None => println!("    comp000 received nothing in 1 s"),
        Some(got) => anyhow::bail!("a spoofed datagram reached comp000: {got:?}"),
    }
    for reason in ["unknown_peer", "spoofed_inner_source"] {
        let n = ipip.reason(&r.ns, r.underlay_if, reason)?;
        println!("    rfe counts {reason} = {n}");
    }
    udp_send(&c.ns, SocketAddrV4::new(COMP000, 7000), b"calculon")?;
    let got = sink
        .receive_within(Duration::from_secs(3))?
        .context("calculon's datagram did not arrive")?;
    println!("    while calculon's own datagram arrives, from {}", got.1);
    println!("    (a forged outer source WITH an allowed inner source would pass: IPIP has no authentication)");

    show_stats(&ipip, &t.endpoints())?;
    if keep {
        print_keep(&ipip, &t.namespaces(), &t.endpoints(), t.dir());
        std::mem::forget(t);
        return Ok(());
    }
    detach_all(&ipip, &t.endpoints())?;
    let names: Vec<String> = t
        .namespaces()
        .iter()
        .map(|(_, ns)| ns.name().to_string())
        .collect();
    drop(t);
    ensure_gone(&names)
}
