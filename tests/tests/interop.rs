//! Interop with a stock Linux ipip endpoint: Debian's kernel under qemu (TCG) configured with
//! `ip tunnel add tunl1 mode ipip ...` like an admin would (calculon), our endpoint in a
//! namespace (doolittle) attached to the tap that is the guest's NIC. Seed §4 traffic both
//! ways, Linux's `ttl`/`nopmtudisc` options against ours, and the outer headers of both
//! compared field by field on the wire.
//!
//! The guests run one at a time (TCG is slow and this machine small): each test takes
//! [`serial`] first. Every wait is bounded; a guest that does not boot or answer fails the
//! test with its console's tail.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ipip_tests::ipip::describe;
use ipip_tests::traffic::{must_ping, ping, tcp_transfer};
use ipip_tests::vm::capture::{Capture, Frame};
use ipip_tests::vm::cluster::{
    LinuxDesktop, LinuxHeadNode, DOOLITTLE_TUNNEL, JILL, PS3_LAN, PS3_TUNNEL,
};
use ipip_tests::vm::peer::{
    LinuxPeer, Ours, CALCULON_PRIVATE, CALCULON_UNDERLAY, DOOLITTLE_PRIVATE, DOOLITTLE_UNDERLAY,
    TAP,
};
use ipip_tests::vm::traffic::{tcp_from_guest, tcp_to_guest, udp_from_guest, udp_to_guest_refused};
use ipip_tests::vm::{running_guests, GuestConfig, LinuxGuest, LinuxTunnel, Ttl};
use ipip_tests::{require_root, IpipUser};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Boots the guest, attaches ours and brings up Linux's `tunl1` as `tunnel`.
fn up(ours: &Ours, tunnel: &LinuxTunnel) -> Result<(LinuxPeer, IpipUser)> {
    require_root()?;
    let ipip = IpipUser::new()?;
    let t = LinuxPeer::boot(ours)?;
    t.attach(&ipip, ours)?;
    t.guest.add_tunnel(tunnel).context("calculon's tunl1")?;
    Ok((t, ipip))
}

fn doolittle_pings(t: &LinuxPeer, count: u32) -> Result<()> {
    let out = ping(&t.doolittle, DOOLITTLE_PRIVATE, CALCULON_PRIVATE, count)?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains(&format!("{count} received")),
        "ping doolittle → calculon (Linux) failed: {}\ncalculon's tunl1:\n{}",
        describe(&out),
        t.guest.link_stats("tunl1").unwrap_or_default()
    );
    Ok(())
}

fn calculon_pings(t: &LinuxPeer, count: u32, extra: &str) -> Result<()> {
    let cmd = format!("ping -c {count} -i 0.2 -w 10 {extra} {DOOLITTLE_PRIVATE}");
    let (st, out) = t.guest.run(&cmd)?;
    ensure!(
        st == 0 && out.contains(&format!("{count} packets received")),
        "calculon (Linux): `{cmd}` failed ({st}):\n{out}"
    );
    Ok(())
}

// §4 with Linux as calculon: ICMP and UDP both ways, the counters on both ends agree.
#[test]
fn icmp_and_udp_cross_between_ours_and_linux() -> Result<()> {
    let _g = serial();
    let ours = Ours::default();
    let (t, ipip) = up(&ours, &LinuxPeer::linux_tunnel())?;
    let before = t.guest.link_packets("tunl1")?;
    doolittle_pings(&t, 3)?;
    calculon_pings(&t, 3, "")?;
    let from = udp_from_guest(
        &t.doolittle,
        &t.guest,
        DOOLITTLE_PRIVATE,
        5003,
        "ipip-udp-tag",
    )?;
    ensure!(
        from.ip() == std::net::IpAddr::V4(CALCULON_PRIVATE),
        "UDP from calculon arrived from {from}, expected {CALCULON_PRIVATE}"
    );
    udp_to_guest_refused(&t.doolittle, CALCULON_PRIVATE, 9).context("UDP doolittle → calculon")?;
    let after = t.guest.link_packets("tunl1")?;
    // 3 + 3 echo requests or replies and 1 UDP datagram each way, at least.
    ensure!(
        after.0 >= before.0 + 7 && after.1 >= before.1 + 7,
        "calculon's tunl1 counted too little: rx/tx before {before:?}, after {after:?}"
    );
    let s = ipip.peer_stats(&t.doolittle, TAP, "calculon")?;
    ensure!(
        s.rx_packets >= 7 && s.tx_packets >= 7,
        "doolittle's counters for calculon: {s:?}"
    );
    Ok(())
}

// §4 with Linux as calculon: 1 MiB of TCP each way, checked by SHA-256 at the receiver.
#[test]
fn tcp_one_mib_both_ways_between_ours_and_linux() -> Result<()> {
    let _g = serial();
    let ours = Ours::default();
    let (t, _ipip) = up(&ours, &LinuxPeer::linux_tunnel())?;
    const LEN: usize = 1 << 20;
    let a = tcp_to_guest(&t.doolittle, &t.guest, CALCULON_PRIVATE, 5001, LEN)
        .context("TCP doolittle → calculon (Linux)")?;
    let b = tcp_from_guest(&t.doolittle, &t.guest, DOOLITTLE_PRIVATE, 5002, LEN)
        .context("TCP calculon (Linux) → doolittle")?;
    eprintln!("1 MiB to Linux in {a:.2?}, from Linux in {b:.2?}");
    Ok(())
}

/// IPIP frames on doolittle's tap whose inner packet is an ICMP message of `icmp_type`
/// (8 echo request, 0 echo reply), sent by us (`outgoing`) or by Linux.
fn icmp_ipip(capture: &Capture, want: usize) -> Result<Vec<Frame>> {
    capture.collect(Duration::from_secs(5), want, |f| {
        f.header().protocol() == 4
            && f.inner()
                .is_some_and(|i| i.protocol() == 1 && matches!(i.payload_first(), Some(0 | 8)))
    })
}

fn pick(frames: &[Frame], outgoing: bool, icmp_type: u8) -> Vec<&Frame> {
    frames
        .iter()
        .filter(|f| {
            f.outgoing == outgoing && f.inner().and_then(|i| i.payload_first()) == Some(icmp_type)
        })
        .collect()
}

/// Pings each way with inner TTL `inner_ttl` while capturing on the tap; returns the IPIP
/// frames seen (ours outgoing, Linux's incoming; requests and replies).
fn exchange(t: &LinuxPeer, inner_ttl: u8, count: u32) -> Result<Vec<Frame>> {
    let capture = Capture::open(&t.doolittle, TAP)?;
    let (c, ttl) = (count.to_string(), inner_ttl.to_string());
    let (s, d) = (DOOLITTLE_PRIVATE.to_string(), CALCULON_PRIVATE.to_string());
    let out = t.doolittle.output(&[
        "ping", "-n", "-c", &c, "-W", "2", "-i", "0.2", "-t", &ttl, "-I", &s, &d,
    ])?;
    ensure!(
        out.status.success(),
        "ping doolittle → calculon with TTL {inner_ttl} failed: {}",
        describe(&out)
    );
    calculon_pings(t, count, &format!("-t {inner_ttl}"))?;
    let frames = icmp_ipip(&capture, 4 * count as usize)?;
    ensure!(
        frames.len() == 4 * count as usize,
        "captured {} IPIP ICMP frames on {TAP}, expected {}",
        frames.len(),
        4 * count
    );
    for f in &frames {
        let h = f.header();
        let (src, dst) = if f.outgoing {
            (DOOLITTLE_UNDERLAY, CALCULON_UNDERLAY)
        } else {
            (CALCULON_UNDERLAY, DOOLITTLE_UNDERLAY)
        };
        ensure!(
            h.src() == src && h.dst() == dst,
            "outer {} → {}, expected {src} → {dst}",
            h.src(),
            h.dst()
        );
    }
    Ok(frames)
}

/// Ours with `--decap tc`: XDP would decapsulate Linux's packets before a packet socket
/// sees them; TC ingress runs after.
fn ours_tc(lines: &[&str]) -> Ours {
    Ours {
        tunnel_lines: lines.iter().map(|s| s.to_string()).collect(),
        attach_args: vec!["--decap".into(), "tc".into()],
    }
}

// The wire: our outer header and Linux's around the same kind of inner packet (ICMP echo
// request with TTL 64, and echo reply) agree in every field but the ID (RFC 6864).
#[test]
fn outer_headers_match_linux_field_by_field() -> Result<()> {
    let _g = serial();
    let ours = ours_tc(&[]);
    let (t, _ipip) = up(&ours, &LinuxPeer::linux_tunnel())?;
    doolittle_pings(&t, 1)?; // ARP on both ends
    let frames = exchange(&t, 64, 3)?;
    for (icmp, what) in [(8u8, "echo request"), (0, "echo reply")] {
        let mine = pick(&frames, true, icmp);
        let linux = pick(&frames, false, icmp);
        ensure!(
            !mine.is_empty() && !linux.is_empty(),
            "{what}: captured {} of ours and {} of Linux's",
            mine.len(),
            linux.len()
        );
        let reference = linux[0].header().outer_fields();
        ensure!(
            reference.version == 4
                && reference.ihl == 20
                && reference.protocol == 4
                && reference.checksum_ok
                && reference.total_minus_inner == 20
                && !reference.mf
                && reference.frag_offset == 0,
            "Linux's own {what} outer header is not what RFC 2003 says: {reference:?}"
        );
        for f in linux.iter().chain(mine.iter()) {
            let fields = f.header().outer_fields();
            let who = if f.outgoing { "ours" } else { "Linux's" };
            ensure!(
                fields == reference,
                "{what}: {who} outer header {fields:?} differs from Linux's {reference:?}"
            );
        }
    }
    Ok(())
}

/// Re-applies both ends with new tunnel options: detach, rewrite the peers file, attach;
/// `ip tunnel del tunl1` and the admin's commands again.
fn reconfigure(t: &LinuxPeer, ipip: &IpipUser, ours: &Ours, linux: &LinuxTunnel) -> Result<()> {
    ipip.detach(&t.doolittle, TAP)?;
    std::fs::write(&t.peers, ipip_tests::vm::peer::peers_toml(ours))?;
    t.attach(ipip, ours)?;
    t.guest.exec("ip tunnel del tunl1")?;
    t.guest.add_tunnel(linux)?;
    Ok(())
}

// Linux's `ttl inherit`, `ttl 64` and `nopmtudisc` against ours configured the same: traffic
// flows, and the outer TTL and DF both ends put on the wire are what the options say.
#[test]
fn ttl_and_pmtudisc_options_agree_with_linux() -> Result<()> {
    let _g = serial();
    let mut linux = LinuxPeer::linux_tunnel();
    linux.ttl = Some(Ttl::Inherit);
    let ours = ours_tc(&["ttl = \"inherit\""]);
    let (t, ipip) = up(&ours, &linux)?;
    doolittle_pings(&t, 1)?;
    const INNER_TTL: u8 = 33;

    // ttl inherit: outer TTL = inner TTL; pmtudisc: DF set.
    let frames = exchange(&t, INNER_TTL, 2)?;
    for f in &frames {
        let (o, i) = (f.header(), f.inner().context("inner")?);
        ensure!(
            o.ttl() == i.ttl() && o.df(),
            "ttl inherit + pmtudisc ({}): outer TTL {} DF {} around inner TTL {}",
            if f.outgoing { "ours" } else { "Linux" },
            o.ttl(),
            o.df(),
            i.ttl()
        );
    }
    ensure!(
        frames
            .iter()
            .any(|f| f.inner().is_some_and(|i| i.ttl() == INNER_TTL)),
        "no packet with inner TTL {INNER_TTL} was captured"
    );

    // ttl 64: outer TTL fixed whatever the inner one.
    linux.ttl = Some(Ttl::Fixed(64));
    reconfigure(&t, &ipip, &ours_tc(&["ttl = 64"]), &linux)?;
    let frames = exchange(&t, INNER_TTL, 2)?;
    for f in &frames {
        let o = f.header();
        ensure!(
            o.ttl() == 64 && o.df(),
            "ttl 64 ({}): outer TTL {} DF {}",
            if f.outgoing { "ours" } else { "Linux" },
            o.ttl(),
            o.df()
        );
    }

    // nopmtudisc (with ttl inherit, as iproute2 requires): outer DF copied from the inner.
    linux.ttl = Some(Ttl::Inherit);
    linux.pmtudisc = false;
    reconfigure(
        &t,
        &ipip,
        &ours_tc(&["ttl = \"inherit\"", "pmtudisc = false"]),
        &linux,
    )?;
    let frames = exchange(&t, INNER_TTL, 2)?;
    for f in &frames {
        let (o, i) = (f.header(), f.inner().context("inner")?);
        ensure!(
            o.df() == i.df() && o.ttl() == i.ttl(),
            "nopmtudisc ({}): outer DF {} TTL {} around inner DF {} TTL {}",
            if f.outgoing { "ours" } else { "Linux" },
            o.df(),
            o.ttl(),
            i.df(),
            i.ttl()
        );
    }
    // Echo requests leave with DF, Linux's and ours' echo replies without: both kinds seen.
    let dfs: Vec<bool> = frames.iter().map(|f| f.header().df()).collect();
    ensure!(
        dfs.contains(&true) && dfs.contains(&false),
        "nopmtudisc: expected outer DF both set and clear across requests and replies, got {dfs:?}"
    );
    Ok(())
}

fn guest_pings(t: &ipip_tests::vm::LinuxGuest, dst: std::net::Ipv4Addr, what: &str) -> Result<()> {
    let cmd = format!("ping -c 3 -i 0.2 -w 10 {dst}");
    let (st, out) = t.run(&cmd)?;
    ensure!(
        st == 0 && out.contains("3 packets received"),
        "{what}: `{cmd}` on the Linux guest failed ({st}):\n{out}"
    );
    Ok(())
}

// Seed §5 with Linux as the desktop doolittle and ours as the head node ps3: doolittle
// reaches jill on the cluster network (ICMP, 1 MiB of TCP each way).
#[test]
fn cluster_linux_desktop_through_our_head_node() -> Result<()> {
    let _g = serial();
    require_root()?;
    let ipip = IpipUser::new()?;
    let t = LinuxDesktop::up(&ipip)?;
    guest_pings(
        &t.guest,
        PS3_TUNNEL,
        "doolittle (Linux) → ps3's tunnel address",
    )?;
    guest_pings(&t.guest, JILL, "doolittle (Linux) → jill through ps3")?;
    const LEN: usize = 1 << 20;
    tcp_from_guest(&t.jill.ns, &t.guest, JILL, 5011, LEN)
        .context("TCP doolittle (Linux) → jill")?;
    tcp_to_guest(&t.jill.ns, &t.guest, DOOLITTLE_TUNNEL, 5012, LEN)
        .context("TCP jill → doolittle (Linux)")?;
    let s = ipip.peer_stats(&t.ps3, "eth0", "doolittle")?;
    ensure!(
        s.rx_packets > 0 && s.tx_packets > 0,
        "ps3's counters for doolittle: {s:?}"
    );
    Ok(())
}

// Seed §5 with ours as the desktop doolittle and Linux as the head node ps3 (ip_forward on,
// a second NIC on the cluster network): doolittle reaches jill.
#[test]
fn cluster_our_desktop_through_linux_head_node() -> Result<()> {
    let _g = serial();
    require_root()?;
    let ipip = IpipUser::new()?;
    let t = LinuxHeadNode::up(&ipip)?;
    must_ping(&t.doolittle, PS3_TUNNEL, 3, "doolittle → ps3 (Linux)")?;
    must_ping(
        &t.doolittle,
        JILL,
        3,
        "doolittle → jill through ps3 (Linux)",
    )?;
    guest_pings(&t.guest, JILL, "ps3 (Linux) → jill on its cluster network")
        .context(format!("ps3's eth1 {PS3_LAN}"))?;
    const LEN: usize = 1 << 20;
    let x = tcp_transfer(&t.doolittle, &t.jill, JILL, 5021, LEN).context("TCP doolittle → jill")?;
    ensure!(x.bytes == LEN);
    let x = tcp_transfer(&t.jill, &t.doolittle, DOOLITTLE_TUNNEL, 5022, LEN)
        .context("TCP jill → doolittle")?;
    ensure!(x.bytes == LEN);
    let (rx, tx) = t.guest.link_packets("tunl1")?;
    ensure!(rx > 0 && tx > 0, "ps3's tunl1 counted rx {rx} tx {tx}");
    Ok(())
}

// A guest that is not ready in time, or a command that does not finish, fails with a clear
// error within its bound; the channel stays usable; nothing is left running.
#[test]
fn failures_are_bounded_clear_and_leave_nothing_running() -> Result<()> {
    let _g = serial();
    require_root()?;
    let ns = ipip_tests::Netns::new("vmfail")?;
    let mut cfg = GuestConfig::new("tap0");
    cfg.boot_timeout = Duration::from_millis(1500);
    let start = std::time::Instant::now();
    let err = match LinuxGuest::boot_with(&ns, &cfg) {
        Ok(_) => anyhow::bail!("a guest booted within 1.5 s: the boot bound was not tested"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        start.elapsed() < Duration::from_secs(15),
        "the 1.5 s boot bound took {:?}",
        start.elapsed()
    );
    ensure!(
        err.contains("did not become ready within") && err.contains("console tail"),
        "unclear boot failure: {err}"
    );
    ensure!(
        running_guests().is_empty(),
        "qemu left running after a failed boot: {:?}",
        running_guests()
    );
    ensure!(
        !ns.output(&["ip", "link", "show", "tap0"])?.status.success(),
        "tap0 left behind after a failed boot"
    );

    let guest = LinuxGuest::boot(&ns, "tap0")?;
    eprintln!("guest booted in {:.1?}", guest.boot_time());
    let err = match guest.run_timeout("sleep 3", Duration::from_secs(1)) {
        Ok(r) => anyhow::bail!("`sleep 3` finished within 1 s: {r:?}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("did not finish `sleep 3` within"),
        "unclear timeout: {err}"
    );
    // The late answer to `sleep 3` is skipped; the next command gets its own.
    let (st, out) = guest.run("echo after; exit 7")?;
    ensure!(
        st == 7 && out.trim_end() == "after",
        "after a timeout: status {st}, output {out:?}"
    );
    let pid = guest.pid().context("qemu pid")?;
    drop(guest);
    ensure!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "qemu {pid} still running after drop"
    );
    ensure!(
        running_guests().is_empty(),
        "qemu left running: {:?}",
        running_guests()
    );
    Ok(())
}
