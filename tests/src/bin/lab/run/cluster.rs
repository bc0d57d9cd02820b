//! `cargo xtask run --scenario cluster`: seed §5, doolittle → ps3 → jill.

use anyhow::Result;
use ipip_tests::topology::cluster::{JILL, PS3};
use ipip_tests::{Cluster, DataPath, IpipUser};

use super::{
    attach_all, detach_all, ensure_gone, indent, list_namespaces, print_keep, show_peers,
    show_ping, show_source, show_stats, show_transfer,
};

pub fn run(keep: bool, path: DataPath) -> Result<()> {
    println!("==> creating the seed's §5 topology ({path}):");
    println!("    doolittle 192.0.2.58 ── wan ── 198.51.100.56 ps3 10.10.10.1 ── 10.10.10.54 jill");
    let t = Cluster::new()?;
    let ipip = IpipUser::new()?;
    let (d, p, j) = (&t.doolittle, &t.ps3, &t.jill);
    list_namespaces(&t.namespaces());
    for h in t.endpoints() {
        show_peers(h)?;
    }
    show_ping("doolittle", &d.ns, PS3, 1, "the underlay, through wan")?;
    show_ping(
        "doolittle",
        &d.ns,
        JILL,
        1,
        "before attach: expected to fail",
    )?;
    if path == DataPath::Fast {
        println!("==> fast path on veths: TX checksum offload off everywhere (frames carry full checksums, as from a wire)");
    }
    attach_all(&ipip, &t.namespaces(), &t.endpoints(), path)?;
    anyhow::ensure!(
        show_ping("doolittle", &d.ns, JILL, 3, "through the tunnel and ps3")?,
        "doolittle → jill failed"
    );
    anyhow::ensure!(
        show_ping(
            "jill",
            &j.ns,
            d.tunnel,
            3,
            "back to doolittle's tunnel address"
        )?,
        "jill → doolittle failed"
    );
    show_source(
        "doolittle → jill",
        &d.ns,
        &j.ns,
        JILL,
        7101,
        "seed §5.4: \"Last login: ... from 10.200.100.100\"",
    )?;
    show_transfer("doolittle → jill", &d.ns, &j.ns, JILL, 7102)?;
    show_transfer("jill → doolittle", &j.ns, &d.ns, d.tunnel, 7103)?;
    show_stats(&ipip, &t.endpoints())?;
    println!("==> ps3: ip -s link show eth1 (the cluster side)");
    print!(
        "{}",
        indent(&p.ns.exec(&["ip", "-s", "link", "show", "eth1"])?)
    );
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
