//! The harness itself, without ipip: with plain kernel routes between the private /24s, ping
//! and the TCP transfer must work, so that a failing end-to-end test points at ipip.

use anyhow::{ensure, Result};
use ipip_tests::packet::{icmp_echo, send_ipip};
use ipip_tests::query::{tcx_prog_count, BPF_TCX_EGRESS, BPF_TCX_INGRESS};
use ipip_tests::traffic::{ping_ok, tcp_transfer};
use ipip_tests::{require_root, HostToHost, Node, Underlay};

fn plain_route(from: &Node, to: &Node) -> Result<()> {
    let via = to.underlay.to_string();
    let src = from.private.to_string();
    from.ns
        .exec(&["ip", "route", "add", &to.prefix, "via", &via, "src", &src])?;
    Ok(())
}

fn rx_packets(n: &Node) -> Result<u64> {
    let out = n.ns.exec(&["ip", "-j", "-s", "link", "show", n.iface])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no rx packets in {out}"))
}

#[test]
fn plain_routing_carries_ping_and_tcp() -> Result<()> {
    require_root()?;
    for underlay in [Underlay::Direct, Underlay::Bridge] {
        let t = HostToHost::new(underlay)?;
        let (d, c) = (&t.doolittle, &t.calculon);
        ensure!(
            !ping_ok(&d.ns, d.private, c.private, 1)?,
            "{underlay:?}: ping without a route"
        );
        plain_route(d, c)?;
        plain_route(c, d)?;
        ensure!(
            ping_ok(&d.ns, d.private, c.private, 2)?,
            "{underlay:?}: ping d → c"
        );
        ensure!(
            ping_ok(&c.ns, c.private, d.private, 2)?,
            "{underlay:?}: ping c → d"
        );
        let x = tcp_transfer(&d.ns, &c.ns, c.private, 6001, 1 << 20)?;
        ensure!(x.bytes == 1 << 20);
        let x = tcp_transfer(&c.ns, &d.ns, d.private, 6002, 1 << 20)?;
        ensure!(x.bytes == 1 << 20);
        for ty in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
            ensure!(tcx_prog_count(&d.ns, d.iface, ty)? == 0);
        }
        if let Some(m) = &t.mallory {
            let to = d.underlay.to_string();
            ensure!(
                ping_ok(&m.ns, m.underlay, d.underlay, 1)?,
                "mallory reaches {to}"
            );
            // Raw IPIP from mallory arrives at doolittle's eth0.
            let before = rx_packets(d)?;
            let inner = icmp_echo(c.private, d.private, 1, 1, b"hello");
            send_ipip(&m.ns, d.underlay, &inner, 3)?;
            std::thread::sleep(std::time::Duration::from_millis(200));
            let after = rx_packets(d)?;
            ensure!(
                after >= before + 3,
                "raw IPIP did not arrive: rx {before} → {after}"
            );
        }
    }
    Ok(())
}

#[test]
fn namespaces_are_removed_on_drop() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Bridge)?;
    let names: Vec<String> = [&t.doolittle, &t.calculon]
        .iter()
        .map(|n| n.ns.name().to_string())
        .collect();
    let dir = t.dir().to_path_buf();
    ensure!(dir.join("doolittle.toml").exists());
    drop(t);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    for n in &names {
        ensure!(!list.contains(n.as_str()), "{n} still listed:\n{list}");
    }
    ensure!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}
