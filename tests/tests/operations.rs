//! Operating the tunnel: the TC-ingress decapsulator end to end, `log` describing drops, and
//! an unprivileged caller refused before anything is touched.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ipip_tests::ipip::describe;
use ipip_tests::packet::{icmp_echo, send_ipip};
use ipip_tests::query::{tcx_prog_count, BPF_TCX_EGRESS, BPF_TCX_INGRESS};
use ipip_tests::traffic::{must_ping, ping_ok, tcp_transfer};
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
    let n = tcx_prog_count(&d.ns, d.iface, BPF_TCX_INGRESS)?;
    ensure!(n == 0, "{n} TC ingress programs remain");
    ensure!(!d.ns.pin_dir().exists(), "pins remain after detach");
    Ok(())
}

/// Polls `status --json` until the drop-log flag is `on` (bounded: 10 s).
fn wait_drop_log(ipip: &IpipUser, n: &Node, on: bool) -> Result<()> {
    let want = format!("\"drop_log\": {on}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = ipip.run(&n.ns, &["status", "--json"])?;
        if status.contains(&want) {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "drop log never became {on}: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_log(ipip: &IpipUser, n: &Node, extra: &[&str]) -> Result<std::process::Child> {
    let bin = ipip.path().to_string_lossy().into_owned();
    let mut args = vec![bin.as_str(), "log", n.iface];
    args.extend_from_slice(extra);
    let line = n.ns.command_line(&args);
    Command::new(&line[0])
        .args(&line[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ipip-user log")
}

#[test]
fn log_describes_each_drop_with_its_addresses() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    t.tunnel_up(&ipip)?;
    wait_drop_log(&ipip, d, false)?;
    let text_log = start_log(&ipip, d, &["--seconds", "4"])?;
    let json_log = start_log(&ipip, d, &["--seconds", "4", "--json"])?;
    wait_drop_log(&ipip, d, true)?;
    // Both readers hold the records on; give the second one time to register too.
    std::thread::sleep(Duration::from_millis(300));
    let spoofed = Ipv4Addr::new(10, 9, 9, 9);
    send_ipip(
        &c.ns,
        d.underlay,
        &icmp_echo(spoofed, d.private, 7, 1, b"spoof"),
        1,
    )?;
    let mut texts = Vec::new();
    for child in [text_log, json_log] {
        let out = child
            .wait_with_output()
            .context("waiting for ipip-user log")?;
        ensure!(out.status.success(), "log failed: {}", describe(&out));
        texts.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let want = format!(
        // The default hook on a veth decapsulates at TC ingress; the outer source names the peer.
        "tc-ingress drop spoofed_inner_source: outer {} -> {}, inner {spoofed} -> {} (peer {})",
        c.underlay, d.underlay, d.private, c.name
    );
    ensure!(
        texts[0].contains(&want),
        "log output lacks {want:?}:\n{}",
        texts[0]
    );
    let record: serde_json::Value = serde_json::from_str(
        texts[1]
            .lines()
            .find(|l| l.contains("spoofed_inner_source"))
            .with_context(|| format!("no JSON record: {}", texts[1]))?,
    )?;
    ensure!(
        record["hook"] == "tc-ingress" && record["inner_src"] == spoofed.to_string(),
        "{record}"
    );
    // Described and counted, and switched off once the last reader is gone.
    let status = ipip.run(&d.ns, &["stats", "--json"])?;
    ensure!(status.contains("\"spoofed_inner_source\": 1"), "{status}");
    wait_drop_log(&ipip, d, false)?;
    Ok(())
}

#[test]
fn drop_log_goes_off_when_its_last_reader_is_killed() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let d = &t.doolittle;
    ipip.attach(&d.ns, d.iface, &d.peers)?;
    let mut first = start_log(&ipip, d, &[])?;
    wait_drop_log(&ipip, d, true)?;
    let second = start_log(&ipip, d, &[])?;
    std::thread::sleep(Duration::from_millis(500));
    // SIGKILL: no handler runs; the first one's guard notices.
    first.kill()?;
    first.wait()?;
    std::thread::sleep(Duration::from_millis(500));
    wait_drop_log(&ipip, d, true).context("one reader is still there")?;
    // SIGTERM, handled: off again at once.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let out = second.wait_with_output()?;
    ensure!(out.status.success(), "log on SIGTERM: {}", describe(&out));
    wait_drop_log(&ipip, d, false)?;
    // And a sole reader killed outright.
    let mut only = start_log(&ipip, d, &[])?;
    wait_drop_log(&ipip, d, true)?;
    only.kill()?;
    only.wait()?;
    wait_drop_log(&ipip, d, false)?;
    ipip.detach(&d.ns, d.iface)?;
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
        text.contains("attach needs root (uid 0, which owns the pins) with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")
            && text.contains("(missing: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)"),
        "unclear refusal: {text}"
    );
    ensure!(!d.ns.pin_dir().exists(), "an unprivileged attach left pins");
    let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(routes.trim().is_empty(), "routes were installed: {routes}");
    Ok(())
}

/// The capabilities the refusal names are exactly what the lifecycle needs: as uid 0 with
/// only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, attach, status, stats, reload, log and detach
/// all work; without any one of them attach is refused by name and touches nothing.
#[test]
fn the_lifecycle_runs_with_exactly_the_capabilities_it_names() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    ipip.attach(&c.ns, c.iface, &c.peers)?;
    let bin = ipip.path().to_string_lossy().into_owned();
    let peers = d.peers.to_string_lossy().into_owned();
    let with_caps = |caps: &str, args: &[&str]| {
        let bounding = format!("--bounding-set=-all,{caps}");
        let mut line = vec!["setpriv", "--inh-caps=-all", bounding.as_str(), &bin];
        line.extend_from_slice(args);
        d.ns.output(&line)
    };
    const ALL: [&str; 3] = ["bpf", "net_admin", "perfmon"];
    for dropped in ALL {
        let caps: Vec<String> = ALL
            .iter()
            .filter(|c| **c != dropped)
            .map(|c| format!("+{c}"))
            .collect();
        let out = with_caps(&caps.join(","), &["attach", d.iface, "--peers", &peers])?;
        let text = describe(&out);
        let name = format!("CAP_{}", dropped.to_uppercase());
        ensure!(
            !out.status.success() && text.contains(&format!("(missing: {name})")),
            "attach without {name}: {text}"
        );
        ensure!(!d.ns.pin_dir().exists(), "attach without {name} left pins");
    }
    let exact = "+bpf,+net_admin,+perfmon";
    for args in [
        &["attach", d.iface, "--peers", &peers][..],
        &["status"],
        &["stats", d.iface, "--json"],
        &["reload", d.iface, "--peers", &peers],
        &["log", d.iface, "--seconds", "1"],
        &["detach", d.iface],
    ] {
        let out = with_caps(exact, args)?;
        ensure!(
            out.status.success(),
            "{args:?} with {exact}: {}",
            describe(&out)
        );
        if args[0] == "attach" {
            ensure!(
                ping_ok(&d.ns, d.private, c.private, 1)?,
                "no traffic through the attachment made with {exact}"
            );
        }
    }
    ensure!(!d.ns.pin_dir().exists(), "pins left after detach");
    Ok(())
}

/// Two attaches of one interface at once: one wins, the other waits for it and is refused
/// as "already attached" without undoing anything; the winner's attachment stays intact.
#[test]
fn concurrent_attaches_never_undo_each_other() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    ipip.attach(&c.ns, c.iface, &c.peers)?;
    let bin = ipip.path().to_string_lossy().into_owned();
    let peers = d.peers.to_string_lossy().into_owned();
    for round in 0..5 {
        let line =
            d.ns.command_line(&[&bin, "attach", d.iface, "--peers", &peers]);
        let children: Vec<_> = (0..2)
            .map(|_| {
                Command::new(&line[0])
                    .args(&line[1..])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output())
            .collect::<Result<_, _>>()?;
        let won = outs.iter().filter(|o| o.status.success()).count();
        ensure!(
            won == 1,
            "round {round}: {won} attaches succeeded:\n{}",
            outs.iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        let lost = outs.iter().find(|o| !o.status.success()).expect("one lost");
        ensure!(
            describe(lost).contains("already attached"),
            "round {round}: the loser says: {}",
            describe(lost)
        );
        let status = ipip.run(&d.ns, &["status"])?;
        ensure!(
            status.contains(": ok "),
            "round {round}: status after the race: {status}"
        );
        let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
        ensure!(
            routes.contains(&c.prefix),
            "round {round}: the winner's route is gone: {routes}"
        );
        ensure!(
            ping_ok(&d.ns, d.private, c.private, 1)?,
            "round {round}: no traffic after the race"
        );
        ipip.detach(&d.ns, d.iface)?;
    }
    Ok(())
}

/// detach removes the routes its attachment installed and no others: a `proto 156` route the
/// admin added on the same interface stays. The pin root is root-only and stays too.
#[test]
fn detach_removes_only_its_own_routes() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    let foreign = "10.77.0.0/24";
    d.ns.exec(&[
        "ip",
        "route",
        "add",
        foreign,
        "via",
        &c.underlay.to_string(),
        "dev",
        d.iface,
        "proto",
        "156",
    ])?;
    ipip.attach(&d.ns, d.iface, &d.peers)?;
    let mode = |p: &str| -> Result<u32> {
        use std::os::unix::fs::PermissionsExt as _;
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o7777)
    };
    for dir in ["/sys/fs/bpf/ipip", "/run/ipip"] {
        ensure!(
            mode(dir)? == 0o700,
            "{dir} is mode {:o}, not 0700",
            mode(dir)?
        );
    }
    let out = ipip.detach(&d.ns, d.iface)?;
    ensure!(out.contains("1 route(s) removed"), "detach says: {out}");
    let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(
        routes.contains("10.77.0.0/24") && !routes.contains(&c.prefix),
        "after detach: {routes}"
    );
    ensure!(mode("/sys/fs/bpf/ipip")? == 0o700, "the pin root changed");
    Ok(())
}

/// The underlay's MTU changed under an attachment: reload gives the tunnel the new MTU, in
/// the data path and on every route the attachment installed, so the kernel sizes packets for
/// the tunnel again (down and back up).
#[test]
fn reload_follows_an_underlay_mtu_change() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    ipip.attach(&d.ns, d.iface, &d.peers)?;
    ipip.attach(&c.ns, c.iface, &c.peers)?;
    let peers = d.peers.display().to_string();
    for (mtu, tunnel) in [(1400u32, 1380u64), (1500, 1480)] {
        for n in [d, c] {
            n.ns.exec(&["ip", "link", "set", n.iface, "mtu", &mtu.to_string()])?;
        }
        let out = ipip.run(&d.ns, &["reload", d.iface, "--peers", &peers])?;
        let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
        ensure!(
            routes.lines().count() >= 1
                && routes.lines().all(|l| l.contains(&format!("mtu {tunnel}"))),
            "after the underlay went to MTU {mtu}, reload should put mtu {tunnel} on every \
             route ({out}): {routes}"
        );
        let v = ipip.stats(&d.ns)?;
        let seen = v
            .as_array()
            .and_then(|a| a.iter().find(|e| e["interface"] == d.iface))
            .and_then(|e| e["tunnel_mtu"].as_u64());
        ensure!(
            seen == Some(tunnel),
            "stats --json should show tunnel_mtu {tunnel}: {v}"
        );
        must_ping(
            &d.ns,
            c.private,
            2,
            "doolittle → calculon after the MTU change",
        )?;
    }
    Ok(())
}

/// A route of the admin's into a peer's prefix without the tunnel MTU: attach works, and says
/// so (stderr, and `--json`'s `warnings`), with the MTU to give it.
#[test]
fn attach_warns_about_a_route_into_the_tunnel_without_its_mtu() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    let host = format!("{}/32", c.private);
    let via = c.underlay.to_string();
    d.ns.exec(&["ip", "route", "add", &host, "via", &via, "dev", d.iface])?;
    let peers = d.peers.display().to_string();
    let out = ipip.output(&d.ns, &["attach", d.iface, "--peers", &peers])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("warning: route {host} via {via} dev {} has no MTU", d.iface);
    ensure!(
        out.status.success() && stderr.contains(&want) && stderr.contains("give it `mtu 1480`"),
        "attach should succeed and warn `{want}`: {}",
        describe(&out)
    );
    ipip.detach(&d.ns, d.iface)?;
    d.ns.exec(&[
        "ip", "route", "change", &host, "via", &via, "dev", d.iface, "mtu", "1480",
    ])?;
    let json = ipip.run(&d.ns, &["attach", d.iface, "--peers", &peers, "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    ensure!(
        v["warnings"].as_array().is_some_and(|w| w.is_empty()),
        "with the tunnel MTU on the route there is nothing to warn about: {v}"
    );
    Ok(())
}

/// Interface names are path components: `../net<inode>/eth0` can't reach another
/// namespace's attachment through detach, stats or log.
#[test]
fn interface_names_that_are_paths_are_refused() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    ipip.attach(&c.ns, c.iface, &c.peers)?;
    let other = format!("../net{}/{}", c.ns.inode(), c.iface);
    for args in [
        vec!["detach", other.as_str()],
        vec!["stats", other.as_str()],
        vec!["log", other.as_str(), "--seconds", "1"],
    ] {
        let line = d.ns.command_line(&[&ipip.path().to_string_lossy()]);
        let out = Command::new(&line[0])
            .args(&line[1..])
            .args(&args)
            .output()?;
        ensure!(
            !out.status.success() && describe(&out).contains("interface name"),
            "{args:?} was not refused clearly: {}",
            describe(&out)
        );
    }
    let status = ipip.run(&c.ns, &["status"])?;
    ensure!(status.contains(": ok "), "calculon's attachment: {status}");
    Ok(())
}

/// How many calls of `syscalls` a run of `args` in `ns` makes (strace, followed across
/// threads).
fn count_calls(ns: &ipip_tests::Netns, syscalls: &str, args: &[&str]) -> Result<usize> {
    // Tests run in parallel in one process: one log file per call.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = std::env::temp_dir().join(format!("ipip-strace-{}-{n}.log", std::process::id()));
    let log_s = log.to_string_lossy().into_owned();
    let mut line = vec!["strace", "-f", "-qq", "-e", syscalls, "-o", &log_s];
    line.extend_from_slice(args);
    let out = ns.output(&line)?;
    ensure!(out.status.success(), "{}", describe(&out));
    let text = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    Ok(text.lines().filter(|l| !l.contains("resumed>")).count())
}

/// The system calls a kill test stops a command at, by class: every bpf() (maps, programs,
/// links, pins), every netlink request, and every change to the pin folders.
const KILL_CLASSES: [(&str, &str); 3] = [
    ("bpf", "bpf"),
    ("sendto,sendmsg", "netlink send"),
    ("mkdir,rename,unlink,unlinkat,rmdir", "pin folder change"),
];

/// Kills `cmd` (run in `ns`) with SIGKILL at every call of every [`KILL_CLASSES`] class, one
/// run per call: `setup` makes the state the command starts from, `recover` runs what an
/// operator would run next, checks the result and leaves a clean state. Returns the
/// lifecycle steps (`attach: install`, ...) the kills landed in, as the killed command
/// announced them.
fn kill_at_every_call(
    ns: &ipip_tests::Netns,
    cmd: &[&str],
    mut setup: impl FnMut() -> Result<()>,
    mut recover: impl FnMut(&str) -> Result<()>,
) -> Result<std::collections::BTreeSet<String>> {
    let mut steps = std::collections::BTreeSet::new();
    for (syscalls, class) in KILL_CLASSES {
        setup()?;
        let total = count_calls(ns, &format!("trace={syscalls}"), cmd)?;
        recover(&format!("after a clean run ({total} {class} calls)"))?;
        ensure!(total > 0, "no {class} calls in {cmd:?}?");
        for n in 1..=total {
            setup()?;
            let inject = format!("inject={syscalls}:signal=KILL:when={n}");
            let mut line = vec![
                "env",
                "RUST_LOG=ipip_user::step=debug",
                "strace",
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                &inject,
            ];
            line.extend_from_slice(cmd);
            let out = ns.output(&line)?;
            let step = String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .find_map(|l| {
                    l.split_once("ipip_user::step] ")
                        .map(|(_, s)| s.to_string())
                })
                .unwrap_or_else(|| "before any step".into());
            let what = format!(
                "{} killed at {class} call {n} of {total} (in {step})",
                cmd[1]
            );
            steps.insert(step);
            recover(&what)?;
        }
    }
    Ok(steps)
}

/// What a detach must leave in doolittle's namespace: no pins, no ipip route, no tunnel
/// address (attach added it), no TC or XDP program on the interface.
fn nothing_left(d: &Node, what: &str) -> Result<()> {
    let pins = d.ns.pin_dir();
    let left: Vec<_> = std::fs::read_dir(&pins)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(left.is_empty(), "{what}: pins left: {left:?}");
    let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(routes.trim().is_empty(), "{what}: routes left: {routes}");
    let addrs = d.ns.exec(&["ip", "-4", "-o", "addr", "show"])?;
    ensure!(
        !addrs.contains(&d.private.to_string()),
        "{what}: the tunnel address outlived detach: {addrs}"
    );
    for (hook, name) in [(BPF_TCX_INGRESS, "ingress"), (BPF_TCX_EGRESS, "egress")] {
        let n = tcx_prog_count(&d.ns, d.iface, hook)?;
        ensure!(n == 0, "{what}: {n} TC {name} programs remain");
    }
    let link = d.ns.exec(&["ip", "link", "show", d.iface])?;
    ensure!(
        !link.contains("xdp"),
        "{what}: an XDP program remains: {link}"
    );
    Ok(())
}

/// Removes doolittle's own address from lo, so that attach must add it itself and a leaked
/// tunnel address would show.
fn attach_adds_the_address(d: &Node) -> Result<()> {
    d.ns.exec(&[
        "ip",
        "addr",
        "del",
        &format!("{}/32", d.private),
        "dev",
        "lo",
    ])?;
    Ok(())
}

/// SIGKILL of attach at every bpf(), netlink and pin-folder call: whatever point it dies at,
/// what is left is either nothing or something the next attach cleans up and replaces; that
/// attach carries traffic, and detach then leaves nothing (no pins, no staging folder, no
/// route, no address, no program).
#[test]
fn attach_killed_anywhere_leaves_nothing_the_next_commands_cannot_clean() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    attach_adds_the_address(d)?;
    ipip.attach(&c.ns, c.iface, &c.peers)?;
    let bin = ipip.path().to_string_lossy().into_owned();
    let peers = d.peers.to_string_lossy().into_owned();
    let attach = [bin.as_str(), "attach", d.iface, "--peers", &peers];
    let steps = kill_at_every_call(
        &d.ns,
        &attach,
        || Ok(()),
        |what| {
            // Whatever it left: the next attach finishes the job (cleaning first) or says
            // it is attached already, and the tunnel works.
            let out = ipip.output(&d.ns, &attach[1..])?;
            let text = describe(&out);
            ensure!(
                out.status.success() || text.contains("already attached"),
                "{what}: the next attach failed: {text}"
            );
            ensure!(
                ping_ok(&d.ns, d.private, c.private, 1)?,
                "{what}: no traffic after the next attach: {text}"
            );
            let status = ipip.run(&d.ns, &["status"])?;
            ensure!(status.contains(": ok "), "{what}: status says {status}");
            ipip.detach(&d.ns, d.iface)
                .with_context(|| what.to_string())?;
            nothing_left(d, what)
        },
    )?;
    for step in ["attach: install", "attach: network", "attach: record"] {
        ensure!(steps.contains(step), "no kill landed in {step}: {steps:?}");
    }
    Ok(())
}

/// SIGKILL of detach at every bpf(), netlink and pin-folder call: the next detach finishes
/// the job (or says nothing is attached when the killed one got that far), and nothing is
/// left; attach then works again.
#[test]
fn detach_killed_anywhere_is_finished_by_the_next_detach() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    attach_adds_the_address(d)?;
    ipip.attach(&c.ns, c.iface, &c.peers)?;
    let bin = ipip.path().to_string_lossy().into_owned();
    let detach = [bin.as_str(), "detach", d.iface];
    let steps = kill_at_every_call(
        &d.ns,
        &detach,
        || ipip.attach(&d.ns, d.iface, &d.peers).map(|_| ()),
        |what| {
            let out = ipip.output(&d.ns, &["detach", d.iface])?;
            let text = describe(&out);
            ensure!(
                out.status.success() || text.contains("is not attached"),
                "{what}: the next detach failed: {text}"
            );
            nothing_left(d, what)
        },
    )?;
    for step in ["teardown: routes", "teardown: pins"] {
        ensure!(steps.contains(step), "no kill landed in {step}: {steps:?}");
    }
    ipip.attach(&d.ns, d.iface, &d.peers)?;
    ensure!(
        ping_ok(&d.ns, d.private, c.private, 1)?,
        "attach after the kills"
    );
    Ok(())
}

/// doolittle's peers file for the reload tests, written into the topology's folder as
/// `name`: its tunnel address, calculon with its prefix plus `extra` routes, bender (on the
/// same segment) with `bender` routes when any, and `ttl` when given.
fn doolittle_file(
    t: &HostToHost,
    name: &str,
    extra: &[&str],
    bender: &[&str],
    ttl: Option<&str>,
) -> Result<String> {
    let (d, c) = (&t.doolittle, &t.calculon);
    let quoted = |rs: &[&str]| rs.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>();
    let mut routes = vec![format!("\"{}\"", c.prefix)];
    routes.extend(quoted(extra));
    let mut text = format!("[tunnel]\naddress = \"{}/24\"\n", d.private);
    if let Some(ttl) = ttl {
        text.push_str(&format!("ttl = {ttl}\n"));
    }
    text.push_str(&format!(
        "[[peer]]\nname = \"calculon\"\nremote = \"{}\"\nroutes = [{}]\n",
        c.underlay,
        routes.join(", ")
    ));
    if !bender.is_empty() {
        text.push_str(&format!(
            "[[peer]]\nname = \"bender\"\nremote = \"192.0.2.130\"\nroutes = [{}]\n",
            quoted(bender).join(", ")
        ));
    }
    let path = t.dir().join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

/// reload applies a changed peers file live: peers and routes added, moved and removed, a
/// per-peer setting changed, while a bounded ping flow to an unchanged peer loses nothing
/// and that peer's counters carry on. What reload can't change is refused, naming the fix.
#[test]
fn reload_changes_peers_and_routes_without_losing_a_packet() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    t.tunnel_up(&ipip)?;
    let file = |extra_route: bool, bender: bool, ttl: &str| -> Result<String> {
        let extra: &[&str] = if extra_route { &["10.10.10.0/24"] } else { &[] };
        let bender: &[&str] = if bender { &["10.0.3.0/24"] } else { &[] };
        let name = format!(
            "reload-{extra_route}-{}-{}.toml",
            !bender.is_empty(),
            ttl.trim_matches('"')
        );
        doolittle_file(&t, &name, extra, bender, Some(ttl))
    };
    let before = ipip.peer_stats(&d.ns, d.iface, "calculon")?;
    // 600 pings 5 ms apart (3 s) while the file changes four times.
    let line = d.ns.command_line(&[
        "ping",
        "-n",
        "-q",
        "-i",
        "0.005",
        "-c",
        "600",
        "-W",
        "1",
        "-I",
        &d.private.to_string(),
        &c.private.to_string(),
    ]);
    let flow = Command::new(&line[0])
        .args(&line[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let grown = file(true, true, "\"inherit\"")?;
    let out = ipip.run(&d.ns, &["reload", d.iface, "--peers", &grown, "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        v["peers_added"] == serde_json::json!(["bender"]) && v["routes_added"] == 2,
        "first reload: {v}"
    );
    let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(
        routes.contains("10.10.10.0/24") && routes.contains("10.0.3.0/24 via 192.0.2.130"),
        "routes after adding: {routes}"
    );
    let out = ipip.run(
        &d.ns,
        &[
            "reload",
            d.iface,
            "--peers",
            &file(true, true, "64")?,
            "--json",
        ],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        v["peers_changed"] == serde_json::json!(["bender", "calculon"]) && v["routes_added"] == 0,
        "ttl reload: {v}"
    );
    let out = ipip.run(
        &d.ns,
        &[
            "reload",
            d.iface,
            "--peers",
            &file(false, false, "\"inherit\"")?,
            "--json",
        ],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        v["peers_removed"] == serde_json::json!(["bender"]) && v["routes_removed"] == 2,
        "shrinking reload: {v}"
    );
    let out = flow.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("600 packets transmitted, 600 received"),
        "the flow lost packets across the reloads: {}",
        describe(&out)
    );
    let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(
        !routes.contains("10.10.10.0/24")
            && !routes.contains("10.0.3.0/24")
            && routes.contains(&c.prefix),
        "routes after shrinking: {routes}"
    );
    let after = ipip.peer_stats(&d.ns, d.iface, "calculon")?;
    ensure!(
        after.tx_packets >= before.tx_packets + 600,
        "calculon's counters did not carry on: {before:?} -> {after:?}"
    );
    // What only attach can change.
    let moved = t.dir().join("moved-address.toml");
    std::fs::write(
        &moved,
        format!(
            "[tunnel]\naddress = \"10.0.1.9/24\"\n[[peer]]\nname = \"calculon\"\nremote = \"{}\"\nroutes = [\"{}\"]\n",
            c.underlay, c.prefix
        ),
    )?;
    let out = ipip.output(
        &d.ns,
        &["reload", d.iface, "--peers", &moved.to_string_lossy()],
    )?;
    ensure!(
        !out.status.success()
            && describe(&out).contains("address changed")
            && describe(&out).contains("detach"),
        "an address change was not refused clearly: {}",
        describe(&out)
    );
    ensure!(
        ping_ok(&d.ns, d.private, c.private, 1)?,
        "no traffic after the refused reload"
    );
    Ok(())
}

/// status where it can't see attachments says why, instead of "nothing attached" or calling
/// a healthy attachment incomplete: as an unprivileged user (the pins are root's) and under
/// `ip netns exec` (bpffs hidden).
#[test]
fn status_says_why_it_cannot_see() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let d = &t.doolittle;
    ipip.attach(&d.ns, d.iface, &d.peers)?;
    let bin = ipip.path().to_string_lossy().into_owned();
    let out = d.ns.output(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &bin,
        "status",
    ])?;
    let text = describe(&out);
    ensure!(
        !out.status.success() && text.contains("root") && !text.contains("incomplete"),
        "unprivileged status: {text}"
    );
    let out = ipip_tests::cmd::output(&["ip", "netns", "exec", d.ns.name(), &bin, "status"])?;
    let text = describe(&out);
    ensure!(
        !out.status.success() && text.contains("bpffs") && text.contains("--netns"),
        "status under ip netns exec: {text}"
    );
    let status = ipip.run(&d.ns, &["status"])?;
    ensure!(status.contains(": ok "), "status as root: {status}");
    Ok(())
}

/// SIGKILL of reload at every bpf(), netlink and pin-folder call: the same reload run again
/// completes the change (every route of the new file in the kernel, none of the old file's
/// extra ones), traffic flows, and detach leaves nothing.
#[test]
fn reload_killed_anywhere_is_completed_by_the_next_reload() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    attach_adds_the_address(d)?;
    ipip.attach(&c.ns, c.iface, &c.peers)?;
    let bin = ipip.path().to_string_lossy().into_owned();
    // From A (two extra routes, no bender) to B (two other extra routes, bender).
    let a = doolittle_file(&t, "a.toml", &["10.20.0.0/24", "10.21.0.0/24"], &[], None)?;
    let b = doolittle_file(
        &t,
        "b.toml",
        &["10.22.0.0/24", "10.23.0.0/24"],
        &["10.0.3.0/24", "10.0.4.0/24"],
        None,
    )?;
    let want_b = ["10.22.0.0/24", "10.23.0.0/24", "10.0.3.0/24", "10.0.4.0/24"];
    let gone_b = ["10.20.0.0/24", "10.21.0.0/24"];
    let reload_b = [bin.as_str(), "reload", d.iface, "--peers", &b];
    let steps = kill_at_every_call(
        &d.ns,
        &reload_b,
        || {
            ipip.run(&d.ns, &["attach", d.iface, "--peers", &a])
                .map(|_| ())
        },
        |what| {
            ipip.run(&d.ns, &reload_b[1..])
                .with_context(|| format!("{what}: the next reload"))?;
            let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
            for r in want_b.iter().chain([&c.prefix.as_str()]) {
                ensure!(routes.contains(r), "{what}: {r} missing: {routes}");
            }
            for r in gone_b {
                ensure!(!routes.contains(r), "{what}: {r} still there: {routes}");
            }
            ensure!(
                ping_ok(&d.ns, d.private, c.private, 1)?,
                "{what}: no traffic"
            );
            ipip.detach(&d.ns, d.iface)
                .with_context(|| what.to_string())?;
            nothing_left(d, what)
        },
    )?;
    for step in [
        "reload: peers",
        "reload: new routes",
        "reload: removed routes",
    ] {
        ensure!(steps.contains(step), "no kill landed in {step}: {steps:?}");
    }
    Ok(())
}

/// A flow of 200,000 UDP datagrams from doolittle to calculon (a peer that stays) across
/// 100 reloads that add and remove another peer and other prefixes: every datagram arrives
/// and calculon's counters carry on. Then calculon itself is removed: its traffic stops being
/// decapsulated and is counted as from an unknown peer.
#[test]
fn a_flow_survives_a_hundred_reloads_and_a_removed_peer_is_cut_off() -> Result<()> {
    use std::net::{SocketAddrV4, UdpSocket};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const PACKETS: u32 = 200_000;
    const RELOADS: usize = 100;
    const PER_RELOAD: u32 = PACKETS / RELOADS as u32;
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    let grown = doolittle_file(
        &t,
        "grown.toml",
        &["10.30.0.0/24", "10.31.0.0/24"],
        &["10.0.3.0/24", "10.0.4.0/24"],
        None,
    )?;
    let shrunk = doolittle_file(&t, "shrunk.toml", &["10.32.0.0/24"], &[], None)?;
    ipip.run(&d.ns, &["attach", d.iface, "--peers", &shrunk])?;
    ipip.attach(&c.ns, c.iface, &c.peers)?;
    let before = ipip.peer_stats(&d.ns, d.iface, "calculon")?;

    let to = SocketAddrV4::new(c.private, 7700);
    let bound = Arc::new(std::sync::Barrier::new(2));
    let ready = bound.clone();
    let receiver = c.ns.spawn(move || -> Result<Vec<bool>> {
        let sock = UdpSocket::bind(to)?;
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &(16 << 20))?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        ready.wait();
        let mut seen = vec![false; PACKETS as usize];
        let (mut got, mut buf) = (0u32, [0u8; 64]);
        // Ends when all have come, or 3 s after the last one (a loss).
        while got < PACKETS {
            match sock.recv(&mut buf) {
                Ok(n) if n >= 4 => {
                    let seq = u32::from_be_bytes(buf[..4].try_into()?) as usize;
                    if seq < seen.len() && !seen[seq] {
                        seen[seq] = true;
                        got += 1;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(seen)
    });
    bound.wait();
    let reloads = Arc::new(AtomicUsize::new(0));
    let done_reloads = reloads.clone();
    let from = d.private;
    let sender = d.ns.spawn(move || -> Result<()> {
        let sock = UdpSocket::bind(SocketAddrV4::new(from, 0))?;
        sock.connect(to)?;
        let mut payload = [0u8; 32];
        for seq in 0..PACKETS {
            // Spread over the reloads: batch k goes out once k reloads are done.
            let batch = (seq / PER_RELOAD) as usize;
            let waited = std::time::Instant::now();
            while done_reloads.load(Ordering::Acquire) < batch {
                ensure!(
                    waited.elapsed() < Duration::from_secs(60),
                    "reload {batch} never came"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            sock.send(&payload)?;
            // Paced (about 20,000 per second): the flow must not be what loses packets.
            if seq % 100 == 99 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    });
    for n in 0..RELOADS {
        let file = if n % 2 == 0 { &grown } else { &shrunk };
        ipip.run(&d.ns, &["reload", d.iface, "--peers", file])
            .with_context(|| format!("reload {n}"))?;
        reloads.fetch_add(1, Ordering::Release);
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let seen = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let lost: Vec<usize> = (0..seen.len()).filter(|i| !seen[*i]).collect();
    ensure!(
        lost.is_empty(),
        "{} of {PACKETS} datagrams lost across {RELOADS} reloads (first: {:?})",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let after = ipip.peer_stats(&d.ns, d.iface, "calculon")?;
    ensure!(
        after.tx_packets >= before.tx_packets + PACKETS as u64,
        "calculon's counters did not carry on across the reloads: {before:?} -> {after:?}"
    );

    // Calculon removed: what it sends is no longer decapsulated, and is counted.
    let without = t.dir().join("without-calculon.toml");
    std::fs::write(
        &without,
        format!(
            "[tunnel]\naddress = \"{}/24\"\n[[peer]]\nname = \"bender\"\nremote = \"192.0.2.130\"\nroutes = [\"10.0.3.0/24\"]\n",
            d.private
        ),
    )?;
    let out = ipip.run(
        &d.ns,
        &[
            "reload",
            d.iface,
            "--peers",
            &without.to_string_lossy(),
            "--json",
        ],
    )?;
    ensure!(
        out.contains("\"calculon\""),
        "reload did not remove calculon: {out}"
    );
    let unknown0 = ipip.reason(&d.ns, d.iface, "unknown_peer")?;
    ensure!(
        !ping_ok(&c.ns, c.private, d.private, 5)?,
        "a removed peer's traffic still gets through"
    );
    let unknown = ipip.reason(&d.ns, d.iface, "unknown_peer")? - unknown0;
    ensure!(
        unknown >= 5,
        "the removed peer's 5 pings were counted as unknown_peer {unknown} times"
    );
    let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(
        !routes.contains(&c.prefix),
        "calculon's route outlived its peer: {routes}"
    );
    Ok(())
}
