//! What happens to an attachment when its interface is renamed, deleted or moved to another
//! network namespace, or when its whole namespace is deleted without a detach: `status` says
//! so (`health`), attach refuses to stack a second data path on top, and `detach` (or `prune`)
//! removes everything that is left.

use anyhow::{ensure, Context, Result};
use ipip_tests::ipip::describe;
use ipip_tests::query::{tcx_prog_count, BPF_TCX_EGRESS, BPF_TCX_INGRESS};
use ipip_tests::{require_root, HostToHost, IpipUser, Netns, Node, Underlay};
use serde_json::Value;

/// The `status --json` entry of `iface` in `ns`.
fn status_of(ipip: &IpipUser, ns: &Netns, iface: &str) -> Result<Value> {
    let all: Value = serde_json::from_str(&ipip.run(ns, &["status", "--json"])?)?;
    all.as_array()
        .and_then(|a| a.iter().find(|s| s["interface"] == iface))
        .cloned()
        .with_context(|| format!("status lists no {iface}: {all}"))
}

/// No TCX program on `dev` in `ns`, asked of the kernel (BPF_PROG_QUERY).
fn tcx_empty(ns: &Netns, dev: &str) -> Result<()> {
    for (hook, name) in [(BPF_TCX_INGRESS, "ingress"), (BPF_TCX_EGRESS, "egress")] {
        let n = tcx_prog_count(ns, dev, hook)?;
        ensure!(n == 0, "{n} TC {name} programs remain on {dev}");
    }
    Ok(())
}

/// No ipip program, route, tunnel address or pin is left on `dev` in `ns`.
fn nothing_of_ipip_on(ns: &Netns, dev: &str, d: &Node) -> Result<()> {
    tcx_empty(ns, dev)?;
    let link = ns.exec(&["ip", "link", "show", dev])?;
    ensure!(!link.contains("xdp"), "an XDP program remains: {link}");
    let routes = ns.exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(routes.trim().is_empty(), "routes remain: {routes}");
    let addrs = ns.exec(&["ip", "-4", "-o", "addr", "show", "dev", dev])?;
    ensure!(
        !addrs.contains(&d.private.to_string()),
        "the tunnel address remains: {addrs}"
    );
    Ok(())
}

/// The peers file makes attach add the tunnel address to the interface, so that a leak shows.
fn attach_owning_the_address(ipip: &IpipUser, d: &Node) -> Result<()> {
    d.ns.exec(&[
        "ip",
        "addr",
        "del",
        &format!("{}/32", d.private),
        "dev",
        "lo",
    ])?;
    let text = std::fs::read_to_string(&d.peers)?;
    if !text.contains("address =") {
        std::fs::write(
            &d.peers,
            format!("[tunnel]\naddress = \"{}/24\"\n{text}", d.private),
        )?;
    }
    ipip.attach(&d.ns, d.iface, &d.peers)?;
    Ok(())
}

#[test]
fn renamed_interface_is_reported_and_detach_by_the_old_name_cleans_it() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let d = &t.doolittle;
    attach_owning_the_address(&ipip, d)?;
    for cmd in [
        &["ip", "link", "set", d.iface, "down"][..],
        &["ip", "link", "set", d.iface, "name", "wan7"],
        &["ip", "link", "set", "wan7", "up"],
    ] {
        d.ns.exec(cmd)?;
    }
    let s = status_of(&ipip, &d.ns, d.iface)?;
    ensure!(
        s["health"] == "renamed"
            && s["state"]
                .as_str()
                .unwrap_or("")
                .contains("now called wan7"),
        "{s}"
    );
    // A second data path on the same device would handle every packet twice.
    let peers = d.peers.to_string_lossy();
    let out = ipip.output(&d.ns, &["attach", "wan7", "--peers", &peers])?;
    ensure!(
        !out.status.success()
            && describe(&out).contains(&format!(
                "wan7 already runs ipip: it was attached as {} and renamed since",
                d.iface
            )),
        "attach to the renamed interface: {}",
        describe(&out)
    );
    ipip.detach(&d.ns, d.iface)?;
    nothing_of_ipip_on(&d.ns, "wan7", d)?;
    ensure!(
        !d.ns.pin_dir().join(d.iface).exists(),
        "pins remain after detach"
    );
    ipip.run(&d.ns, &["attach", "wan7", "--peers", &peers])
        .context("attach under the new name after the detach")?;
    ipip.detach(&d.ns, "wan7")?;
    Ok(())
}

#[test]
fn deleted_interface_is_reported_and_detach_removes_the_pins() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let d = &t.doolittle;
    attach_owning_the_address(&ipip, d)?;
    d.ns.exec(&["ip", "link", "del", d.iface])?;
    let s = status_of(&ipip, &d.ns, d.iface)?;
    ensure!(
        s["health"] == "gone" && s["state"].as_str().unwrap_or("").contains("was deleted"),
        "{s}"
    );
    let out = ipip.run(&d.ns, &["detach", d.iface])?;
    ensure!(out.contains("detached from"), "{out}");
    let left: Vec<_> = std::fs::read_dir(d.ns.pin_dir())
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(left.is_empty(), "pins left: {left:?}");
    let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(routes.trim().is_empty(), "routes remain: {routes}");
    Ok(())
}

#[test]
fn moved_interface_is_reported_refused_there_and_cleaned_from_here() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let d = &t.doolittle;
    attach_owning_the_address(&ipip, d)?;
    let elsewhere = Netns::new("ipip-moved")?;
    d.ns.exec(&["ip", "link", "set", d.iface, "netns", elsewhere.name()])?;
    let s = status_of(&ipip, &d.ns, d.iface)?;
    ensure!(
        s["health"] == "moved"
            && s["state"]
                .as_str()
                .unwrap_or("")
                .contains("left this network namespace with the programs still on it"),
        "{s}"
    );
    // Over there the programs are still on the device: attach refuses to add a second set.
    let moved = tcx_prog_count(&elsewhere, d.iface, BPF_TCX_INGRESS)?;
    ensure!(
        moved == 1,
        "{moved} TC ingress programs moved with the device, not 1"
    );
    elsewhere.exec(&["ip", "link", "set", d.iface, "up"])?;
    elsewhere.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", d.underlay),
        "dev",
        d.iface,
    ])?;
    let peers = d.peers.to_string_lossy();
    let out = ipip.output(&elsewhere, &["attach", d.iface, "--peers", &peers])?;
    ensure!(
        !out.status.success()
            && describe(&out).contains("that no attachment in this network namespace owns"),
        "attach over there: {}",
        describe(&out)
    );
    // Detach here takes the programs off the device over there.
    ipip.detach(&d.ns, d.iface)?;
    tcx_empty(&elsewhere, d.iface)?;
    ensure!(
        !d.ns.pin_dir().join(d.iface).exists(),
        "pins remain after detach"
    );
    Ok(())
}

#[test]
fn namespace_deleted_without_detach_leaves_orphans_that_prune_removes() -> Result<()> {
    require_root()?;
    let ipip = IpipUser::new()?;
    let doomed = Netns::new("ipip-doomed")?;
    let watcher = Netns::new("ipip-watcher")?;
    doomed.script(
        "ip link add eth0 type veth peer name eth1
         ip link set eth0 up
         ip link set eth1 up
         ip addr add 192.0.2.1/24 dev eth0",
    )?;
    let tmp = ipip_tests::topology::TempDir::new("ipip-fate")?;
    let dir = &tmp.0;
    let peers = dir.join("peers.toml");
    std::fs::write(
        &peers,
        "[[peer]]\nname = \"far\"\nremote = \"192.0.2.2\"\nroutes = [\"10.77.0.0/24\"]\n",
    )?;
    ipip.attach(&doomed, "eth0", &peers)?;
    let pins = format!("/sys/fs/bpf/ipip/net{}", doomed.inode());
    ensure!(std::path::Path::new(&pins).exists(), "no pins at {pins}");
    // Deleted under the attachment's feet.
    ipip_tests::cmd::run(&["ip", "netns", "del", doomed.name()])?;
    let status = ipip.run(&watcher, &["status", "--json"])?;
    let all: Value = serde_json::from_str(&status)?;
    let orphan = all
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["netns"] == doomed.inode() && s["health"] == "orphaned")
        })
        .with_context(|| format!("status lists no orphan of net{}: {status}", doomed.inode()))?;
    ensure!(
        orphan["state"]
            .as_str()
            .unwrap_or("")
            .contains("`ipip-user prune` removes these pins"),
        "{orphan}"
    );
    let out = ipip.run(&watcher, &["prune"])?;
    ensure!(
        out.contains(&format!("removed {pins}/eth0")),
        "prune said: {out}"
    );
    ensure!(
        !std::path::Path::new(&pins).exists(),
        "{pins} remains after prune"
    );
    let status = ipip.run(&watcher, &["status", "--json"])?;
    ensure!(
        !status.contains(&format!("net{}", doomed.inode())),
        "still listed: {status}"
    );
    Ok(())
}

#[test]
fn a_device_without_ethernet_framing_is_refused_before_anything_changes() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let d = &t.doolittle;
    d.ns.script(
        "ip tuntap add dev tun7 mode tun
         ip link set tun7 up
         ip addr add 192.0.2.77/32 dev tun7",
    )?;
    let routes_before = d.ns.exec(&["ip", "route", "show", "table", "all"])?;
    let peers = d.peers.to_string_lossy();
    let out = ipip.output(&d.ns, &["attach", "tun7", "--peers", &peers])?;
    ensure!(
        !out.status.success()
            && describe(&out).contains("tun7 has no Ethernet framing (link layer None)"),
        "attach to a tun device: {}",
        describe(&out)
    );
    ensure!(!d.ns.pin_dir().exists(), "the refused attach left pins");
    tcx_empty(&d.ns, "tun7")?;
    let routes_after = d.ns.exec(&["ip", "route", "show", "table", "all"])?;
    ensure!(
        routes_before == routes_after,
        "routes changed: {routes_after}"
    );
    Ok(())
}
