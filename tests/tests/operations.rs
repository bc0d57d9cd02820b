//! Operating the tunnel: the TC-ingress decapsulator end to end, `log` describing drops, and
//! an unprivileged caller refused before anything is touched.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ipip_tests::ipip::describe;
use ipip_tests::packet::{icmp_echo, send_ipip};
use ipip_tests::traffic::{ping_ok, tcp_transfer};
use ipip_tests::{require_root, HostToHost, IpipUser, Node, Underlay};

fn attach_tc(ipip: &IpipUser, n: &Node) -> Result<String> {
    let peers = n.peers.to_string_lossy();
    ipip.run(
        &n.ns,
        &["attach", n.iface, "--peers", &peers, "--decap", "tc"],
    )
    .with_context(|| format!("attach --decap tc on {}", n.name))
}

#[test]
fn tc_ingress_decap_carries_icmp_and_tcp_both_ways() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    let out = attach_tc(&ipip, d)?;
    ensure!(
        out.contains("decap tc"),
        "attach did not report the TC hook: {out}"
    );
    attach_tc(&ipip, c)?;
    let status = ipip.run(&d.ns, &["status", "--json"])?;
    ensure!(
        status.contains("\"decap\": \"tc\"") && status.contains("\"state\": \"ok\""),
        "status does not show an intact TC attachment: {status}"
    );
    ensure!(
        ping_ok(&d.ns, d.private, c.private, 2)?,
        "ping doolittle → calculon"
    );
    ensure!(
        ping_ok(&c.ns, c.private, d.private, 2)?,
        "ping calculon → doolittle"
    );
    const LEN: usize = 4 << 20;
    let x = tcp_transfer(&d.ns, &c.ns, c.private, 5101, LEN).context("doolittle → calculon")?;
    ensure!(x.bytes == LEN);
    let x = tcp_transfer(&c.ns, &d.ns, d.private, 5102, LEN).context("calculon → doolittle")?;
    ensure!(x.bytes == LEN);
    let rx = ipip.peer_stats(&c.ns, c.iface, d.name)?.rx_packets;
    ensure!(rx > 0, "calculon counted no decapsulated packets");
    ipip.detach(&d.ns, d.iface)?;
    ipip.detach(&c.ns, c.iface)?;
    let tc =
        d.ns.exec(&["tc", "filter", "show", "dev", "eth0", "ingress"])?;
    ensure!(tc.trim().is_empty(), "a TC ingress filter remains: {tc}");
    ensure!(!d.ns.pin_dir().exists(), "pins remain after detach");
    Ok(())
}

#[test]
fn log_describes_each_drop_with_its_addresses() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    ipip.attach(&d.ns, d.iface, &d.peers)?;
    ipip.attach(&c.ns, c.iface, &c.peers)?;
    let bin = ipip.path().to_string_lossy().into_owned();
    let line = d.ns.command_line(&[&bin, "log", d.iface, "--seconds", "3"]);
    let child = Command::new(&line[0])
        .args(&line[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ipip-user log")?;
    // Give it time to switch logging on, then send what must be refused.
    std::thread::sleep(Duration::from_millis(800));
    let spoofed = Ipv4Addr::new(10, 9, 9, 9);
    send_ipip(
        &c.ns,
        d.underlay,
        &icmp_echo(spoofed, d.private, 7, 1, b"spoof"),
        1,
    )?;
    let out = child
        .wait_with_output()
        .context("waiting for ipip-user log")?;
    ensure!(out.status.success(), "log failed: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        // The default hook on a veth decapsulates at TC ingress.
        "tc-ingress drop spoofed_inner_source: outer {} -> {}, inner {spoofed} -> {}",
        c.underlay, d.underlay, d.private
    );
    ensure!(text.contains(&want), "log output lacks {want:?}:\n{text}");
    // Described and counted.
    let status = ipip.run(&d.ns, &["stats", "--json"])?;
    ensure!(status.contains("\"spoofed_inner_source\": 1"), "{status}");
    Ok(())
}

#[test]
fn unprivileged_attach_is_refused_and_touches_nothing() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let d = &t.doolittle;
    // The peers file must be readable by the unprivileged user for the check to get that far.
    let peers = std::env::temp_dir().join(format!("ipip-unpriv-{}.toml", std::process::id()));
    std::fs::copy(&d.peers, &peers)?;
    let bin = ipip.path().to_string_lossy().into_owned();
    let peers_s = peers.to_string_lossy().into_owned();
    let out = d.ns.output(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        &bin,
        "attach",
        d.iface,
        "--peers",
        &peers_s,
    ])?;
    let _ = std::fs::remove_file(&peers);
    let text = describe(&out);
    ensure!(
        !out.status.success(),
        "unprivileged attach succeeded: {text}"
    );
    ensure!(
        text.contains("needs CAP_BPF and CAP_NET_ADMIN"),
        "unclear refusal: {text}"
    );
    ensure!(!d.ns.pin_dir().exists(), "an unprivileged attach left pins");
    let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(routes.trim().is_empty(), "routes were installed: {routes}");
    Ok(())
}
