//! `cargo xtask guest`: build (or check) the cached Linux guest the interop tests boot, and
//! `cargo xtask run --scenario linux-peer`: our endpoint and a stock Linux ipip endpoint.

use anyhow::{Context, Result};
use ipip_tests::traffic::ping;
use ipip_tests::vm::image;
use ipip_tests::vm::peer::{
    LinuxPeer, Ours, CALCULON_PRIVATE, DOOLITTLE_PRIVATE, DOOLITTLE_UNDERLAY, TAP,
};
use ipip_tests::vm::traffic::{tcp_from_guest, tcp_to_guest};
use ipip_tests::IpipUser;

use crate::run::indent;

/// Builds the guest's kernel and initramfs under `target/guest/` unless up to date.
pub fn build() -> Result<()> {
    let img = image::build(true).context("building the Linux guest for the interop tests")?;
    println!(
        "setup: Linux guest {} and {} ({})",
        img.kernel.display(),
        img.initrd.display(),
        img.description
    );
    Ok(())
}

/// Seed §4 with calculon a stock Linux box (Debian's kernel under qemu, `ip tunnel add tunl1
/// mode ipip`): ping and TCP both ways, then `ipip-user stats` and `ip -s link show tunl1`.
pub fn run_linux_peer(keep: bool) -> Result<()> {
    let ours = Ours::default();
    println!(
        "==> booting the Linux guest calculon (qemu, TCG) on tap {TAP} in doolittle's namespace"
    );
    let t = LinuxPeer::boot(&ours)?;
    let ipip = IpipUser::new()?;
    println!(
        "    {} booted in {:.1?}; doolittle netns {}, {TAP} {DOOLITTLE_UNDERLAY}/24",
        t.guest.description(),
        t.guest.boot_time(),
        t.doolittle.name()
    );
    println!(
        "==> doolittle peers file:\n{}",
        indent(&std::fs::read_to_string(&t.peers)?)
    );
    println!(
        "==> doolittle: ipip-user {}",
        t.attach_args(&ours).join(" ")
    );
    print!("{}", indent(&t.attach(&ipip, &ours)?));
    println!("==> calculon (Linux), as root:");
    for c in t.guest.add_tunnel(&LinuxPeer::linux_tunnel())? {
        println!("    # {c}");
    }
    println!("==> doolittle: ping -c 3 -I {DOOLITTLE_PRIVATE} {CALCULON_PRIVATE}");
    let out = ping(&t.doolittle, DOOLITTLE_PRIVATE, CALCULON_PRIVATE, 3)?;
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
    println!("==> calculon: ping -c 3 {DOOLITTLE_PRIVATE}");
    let (_, out) = t
        .guest
        .run(&format!("ping -c 3 -w 10 {DOOLITTLE_PRIVATE}"))?;
    print!("{}", indent(&out));
    const LEN: usize = 1 << 20;
    let a = tcp_to_guest(&t.doolittle, &t.guest, CALCULON_PRIVATE, 7001, LEN)
        .context("TCP doolittle → calculon")?;
    println!("==> TCP doolittle → calculon:7001, 1 MiB, SHA-256 checked by the guest: {a:.2?}");
    let b = tcp_from_guest(&t.doolittle, &t.guest, DOOLITTLE_PRIVATE, 7002, LEN)
        .context("TCP calculon → doolittle")?;
    println!("==> TCP calculon → doolittle:7002, 1 MiB, SHA-256 checked here: {b:.2?}");
    println!("==> doolittle: ipip-user stats");
    print!("{}", indent(&ipip.run(&t.doolittle, &["stats"])?));
    println!("==> calculon: ip -s link show tunl1");
    print!("{}", indent(&t.guest.link_stats("tunl1")?));
    if keep {
        let pid = t.guest.pid().unwrap_or_default();
        println!("==> leaving it up (--keep)");
        println!(
            "    step into doolittle: nsenter --net=/run/netns/{} bash",
            t.doolittle.name()
        );
        println!(
            "    calculon's console: {}/console.log",
            t.guest.run_dir().display()
        );
        println!(
            "    clean up: kill {pid}; ip netns del {}; rm -r {} {}",
            t.doolittle.name(),
            t.guest.run_dir().display(),
            t.dir.0.display()
        );
        std::mem::forget(t);
        return Ok(());
    }
    println!("==> cleaning up");
    print!("{}", indent(&ipip.detach(&t.doolittle, TAP)?));
    let name = t.doolittle.name().to_string();
    drop(t);
    let left = crate::stdout_of(&["ip", "netns", "list"]).unwrap_or_default();
    anyhow::ensure!(
        !left
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&name)),
        "namespace {name} still present after cleanup"
    );
    println!("==> done: guest stopped, namespace {name} removed");
    Ok(())
}
