//! `ipip-user doctor`: each check has a case that breaks exactly that thing on a working
//! host-to-host tunnel and expects exactly that finding, first among the problems, with its
//! fix; the healthy tunnel has none.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use aya::programs::{xdp::XdpMode, Xdp};
use ipip_tests::ipip::describe;
use ipip_tests::packet::{icmp_echo, send_ipip};
use ipip_tests::{require_root, HostToHost, IpipUser, Node, Underlay};
use serde_json::Value;

/// doctor's findings for doolittle's interface, and whether it exited 0.
fn doctor(ipip: &IpipUser, d: &Node, extra: &[&str]) -> Result<(Vec<Value>, bool)> {
    let mut args = vec!["doctor", d.iface, "--seconds", "1", "--json"];
    args.extend_from_slice(extra);
    let out = ipip.output(&d.ns, &args)?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("doctor --json: {}", describe(&out)))?;
    Ok((
        v.as_array().cloned().unwrap_or_default(),
        out.status.success(),
    ))
}

fn problems(findings: &[Value]) -> Vec<&Value> {
    findings.iter().filter(|f| f["ok"] == false).collect()
}

/// A working tunnel between doolittle and calculon; `attach_args` extra for doolittle.
fn working(ipip: &IpipUser, attach_args: &[&str]) -> Result<HostToHost> {
    let t = HostToHost::new(Underlay::Direct)?;
    let (d, c) = (&t.doolittle, &t.calculon);
    let peers = d.peers.to_string_lossy().into_owned();
    let mut args = vec!["attach", d.iface, "--peers", &peers];
    args.extend_from_slice(attach_args);
    ipip.run(&d.ns, &args)?;
    ipip.attach(&c.ns, c.iface, &c.peers)?;
    Ok(t)
}

struct Case {
    name: &'static str,
    /// Breaks one thing.
    breaks: fn(&HostToHost) -> Result<()>,
    /// The check that must report it, first among the problems, and words of its finding.
    check: &'static str,
    says: &'static str,
    /// Every other check stays quiet.
    only: bool,
}

fn sh(n: &Node, line: &str) -> Result<()> {
    n.ns.exec(&line.split_whitespace().collect::<Vec<_>>())
        .map(|_| ())
}

const CASES: &[Case] = &[
    Case {
        name: "interface down",
        breaks: |t| sh(&t.doolittle, "ip link set eth0 down"),
        check: "interface",
        says: "eth0 is down",
        only: false,
    },
    Case {
        name: "tunnel address gone",
        breaks: |t| {
            let d = &t.doolittle;
            let addrs = d.ns.exec(&["ip", "-4", "-o", "addr", "show"])?;
            let line = addrs
                .lines()
                .find(|l| l.contains(&format!(" {}/", d.private)))
                .context("no tunnel address")?;
            let f: Vec<&str> = line.split_whitespace().collect();
            sh(d, &format!("ip addr del {} dev {}", f[3], f[1]))
        },
        check: "addresses",
        says: "is missing",
        // The kernel drops the routes that use the address as their source with it.
        only: false,
    },
    Case {
        name: "no way to the peer",
        breaks: |t| {
            sh(
                &t.doolittle,
                &format!("ip route add blackhole {}/32", t.calculon.underlay),
            )
        },
        check: "peers",
        says: "is unreachable",
        only: true,
    },
    Case {
        name: "a route deleted by hand",
        breaks: |t| sh(&t.doolittle, &format!("ip route del {}", t.calculon.prefix)),
        check: "routes",
        says: "missing from the kernel",
        only: true,
    },
    Case {
        name: "strict rp_filter without the way back",
        breaks: |t| {
            let d = &t.doolittle;
            sh(d, "sysctl -qw net.ipv4.conf.all.rp_filter=1")?;
            sh(d, &format!("ip route del {}", t.calculon.prefix))?;
            sh(d, &format!("ip route add blackhole {}", t.calculon.prefix))
        },
        check: "routes",
        says: "missing from the kernel",
        only: false,
    },
    Case {
        name: "nftables drops IPIP",
        breaks: |t| {
            let d = &t.doolittle;
            sh(d, "nft add table inet doc")?;
            d.ns.exec(&[
                "nft",
                "add",
                "chain",
                "inet",
                "doc",
                "in",
                "{ type filter hook input priority 0; }",
            ])?;
            sh(d, "nft add rule inet doc in ip protocol 4 drop")
        },
        check: "firewall",
        says: "nftables drops tunnel traffic",
        only: true,
    },
    Case {
        name: "a route of the admin's into a tunnel prefix, without the tunnel MTU",
        breaks: |t| {
            let host = t.calculon.private;
            sh(
                &t.doolittle,
                &format!(
                    "ip route add {host}/32 via {} dev eth0",
                    t.calculon.underlay
                ),
            )
        },
        check: "route mtu",
        says: "has no MTU, above the tunnel MTU 1480",
        only: true,
    },
];

#[test]
fn each_breakage_gets_exactly_its_finding() -> Result<()> {
    require_root()?;
    let ipip = IpipUser::new()?;
    {
        let t = working(&ipip, &[])?;
        let (findings, exit0) = doctor(&ipip, &t.doolittle, &[])?;
        ensure!(
            exit0 && problems(&findings).is_empty(),
            "a working tunnel has problems: {findings:#?}"
        );
        let checks: Vec<&str> = findings
            .iter()
            .filter_map(|f| f["check"].as_str())
            .collect();
        for c in [
            "bpffs",
            "attachment",
            "interface",
            "addresses",
            "peers",
            "routes",
            "route mtu",
            "rp_filter",
            "firewall",
            "programs",
            "drops",
        ] {
            ensure!(checks.contains(&c), "doctor skipped {c}: {checks:?}");
        }
    }
    let mut failed = Vec::new();
    for case in CASES {
        let t = working(&ipip, &[])?;
        (case.breaks)(&t).with_context(|| format!("breaking: {}", case.name))?;
        let (findings, exit0) = doctor(&ipip, &t.doolittle, &[])?;
        let bad = problems(&findings);
        let first = bad.first();
        let hit = first.is_some_and(|f| {
            f["check"] == case.check
                && f["what"].as_str().is_some_and(|w| w.contains(case.says))
                && f["fix"].is_string()
        });
        if exit0 || !hit || (case.only && bad.len() != 1) {
            failed.push(format!(
                "{}: want {} \"{}\", got {bad:#?}",
                case.name, case.check, case.says
            ));
        }
        if case.name.starts_with("strict rp_filter")
            && !bad.iter().any(|f| f["check"] == "rp_filter")
        {
            failed.push(format!("{}: no rp_filter finding: {bad:#?}", case.name));
        }
    }
    ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}

#[test]
fn forwarding_off_on_a_gateway_is_found() -> Result<()> {
    require_root()?;
    let ipip = IpipUser::new()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let d = &t.doolittle;
    sh(d, "ip link add lan0 type veth peer name lan1")?;
    sh(d, "ip link set lan0 up")?;
    sh(d, "ip link set lan1 up")?;
    sh(d, "sysctl -qw net.ipv4.ip_forward=0")?;
    let peers = d.peers.to_string_lossy().into_owned();
    ipip.run(
        &d.ns,
        &["attach", d.iface, "--peers", &peers, "--lan", "lan0"],
    )?;
    let (findings, _) = doctor(&ipip, d, &[])?;
    let bad = problems(&findings);
    ensure!(
        bad.len() == 1
            && bad[0]["check"] == "forwarding"
            && bad[0]["fix"] == "sysctl -w net.ipv4.ip_forward=1",
        "{bad:#?}"
    );
    sh(d, "sysctl -qw net.ipv4.ip_forward=1")?;
    let (findings, _) = doctor(&ipip, d, &[])?;
    ensure!(problems(&findings).is_empty(), "{findings:#?}");
    ipip.detach(&d.ns, d.iface)?;
    Ok(())
}

#[test]
fn a_foreign_xdp_program_is_found() -> Result<()> {
    require_root()?;
    let ipip = IpipUser::new()?;
    // TC decap, so that the XDP hook is free for someone else's program.
    let t = working(&ipip, &["--decap", "tc"])?;
    let d = &t.doolittle;
    let iface = d.iface;
    let findings = d.ns.within(|| -> Result<Vec<Value>> {
        let mut obj = aya::Ebpf::load(ipip_user::datapath::BENCH_HARNESS)?;
        let prog: &mut Xdp = obj
            .program_mut(ipip_common::PROG_BENCH_XDP_PASS)
            .context("no pass program")?
            .try_into()?;
        prog.load()?;
        prog.attach(iface, XdpMode::Skb)?;
        // Kept attached (obj alive) while doctor looks.
        let (findings, _) = doctor(&ipip, d, &[])?;
        Ok(findings)
    })?;
    let bad = problems(&findings);
    ensure!(
        bad.len() == 1
            && bad[0]["check"] == "programs"
            && bad[0]["what"]
                .as_str()
                .is_some_and(|w| w.contains("XDP program id") && w.contains("is not ipip's")),
        "{bad:#?}"
    );
    Ok(())
}

#[test]
fn hidden_bpffs_and_moving_drops_are_found() -> Result<()> {
    require_root()?;
    let ipip = IpipUser::new()?;
    let t = working(&ipip, &[])?;
    let (d, c) = (&t.doolittle, &t.calculon);
    // Under `ip netns exec` /sys is remounted and bpffs hidden.
    let out = Command::new("ip")
        .args(["netns", "exec", d.ns.name()])
        .arg(ipip.path())
        .args(["doctor", d.iface, "--json"])
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("doctor under ip netns exec: {}", describe(&out)))?;
    ensure!(
        !out.status.success() && v[0]["check"] == "bpffs" && v[0]["ok"] == false,
        "{v:#}"
    );
    // Spoofed packets while doctor watches the counters.
    let line = d.ns.command_line(&[
        &ipip.path().to_string_lossy(),
        "doctor",
        d.iface,
        "--seconds",
        "3",
        "--json",
    ]);
    let child = Command::new(&line[0])
        .args(&line[1..])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1000));
    let spoofed = Ipv4Addr::new(10, 9, 9, 9);
    send_ipip(
        &c.ns,
        d.underlay,
        &icmp_echo(spoofed, d.private, 9, 1, b"doc"),
        5,
    )?;
    let out = child.wait_with_output()?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let bad = problems(v.as_array().map(Vec::as_slice).unwrap_or_default());
    ensure!(
        bad.len() == 1
            && bad[0]["check"] == "drops"
            && bad[0]["what"]
                .as_str()
                .is_some_and(|w| w.starts_with("spoofed_inner_source: 5 dropped")),
        "{bad:#?}"
    );
    Ok(())
}
