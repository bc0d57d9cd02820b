//! Fleet mode end to end: 20 sites and a route reflector on one underlay segment, each site
//! running BIRD 2 (an iBGP session to the reflector, announcing its own /24 with itself as
//! next hop, exporting what it learns into kernel table 100) and `ipip-user run` in fleet
//! mode following that table. Nobody lists a peer by hand.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipip_tests::topology::build::Bridge;
use ipip_tests::topology::TempDir;
use ipip_tests::traffic::{ping_ok, tcp_transfer};
use ipip_tests::{require_root, IpipUser, Netns};
use serde_json::Value;

const SITES: u8 = 20;
const RR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const TABLE: u32 = 100;

fn underlay(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, i)
}
fn private(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, i, 1)
}

/// Children ended (SIGTERM, then waited for) when the test ends, however it ends.
#[derive(Default)]
struct Procs(Vec<(String, Child)>);

impl Procs {
    fn stop(&mut self, name: &str) -> Result<()> {
        let i = self
            .0
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("no process {name}"))?;
        let (_, mut child) = self.0.remove(i);
        terminate(&mut child);
        Ok(())
    }
}

fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in self.0.iter_mut().rev() {
            terminate(c);
        }
    }
}

/// A site's BIRD: its /24 announced (a static route; no `direct` protocol, whose connected
/// route for the tunnel address would outrank it), next hops on the shared segment
/// (`direct`, `gateway direct`), what it learns exported to kernel table 100.
fn bird_site(i: u8, extra_routes: &str, dir: &Path) -> String {
    format!(
        r#"log "{log}" all;
router id {me};
protocol device {{ }}
protocol static {{ ipv4; route 10.20.{i}.0/24 blackhole; {extra_routes} }}
protocol kernel {{
    kernel table {TABLE};
    ipv4 {{ import none; export where source = RTS_BGP; }};
}}
protocol bgp reflector {{
    local {me} as 65000;
    neighbor {RR} as 65000;
    direct;
    connect delay time 1;
    connect retry time 2;
    ipv4 {{ import all; export where source = RTS_STATIC; next hop self; gateway direct; }};
}}
"#,
        log = dir.join(format!("bird-{i}.log")).display(),
        me = underlay(i),
    )
}

fn bird_rr(dir: &Path) -> String {
    let mut c = format!(
        r#"log "{}" all;
router id {RR};
protocol device {{ }}
protocol direct {{ ipv4; interface "eth0"; }}
template bgp rrclient {{
    local {RR} as 65000;
    rr client;
    direct;
    connect delay time 1;
    connect retry time 2;
    ipv4 {{ import all; export where source = RTS_BGP; }};
}}
"#,
        dir.join("bird-rr.log").display()
    );
    for i in 1..=SITES {
        c.push_str(&format!(
            "protocol bgp site{i} from rrclient {{ neighbor {} as 65000; }}\n",
            underlay(i)
        ));
    }
    c
}

/// `bird -f` in `ns` with `conf`, its control socket in the test's folder.
fn start_bird(ns: &Netns, name: &str, conf: &str, dir: &Path) -> Result<Child> {
    let conf_path = dir.join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf)?;
    let sock = dir.join(format!("{name}.ctl"));
    let line = ns.command_line(&[
        "bird",
        "-f",
        "-c",
        &conf_path.to_string_lossy(),
        "-s",
        &sock.to_string_lossy(),
    ]);
    Command::new(&line[0])
        .args(&line[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bird (apt package bird2)")
}

/// The peers site `ns`'s `status` says it has learned.
fn learned(ipip: &IpipUser, ns: &Netns) -> Result<Vec<String>> {
    let v: Value = serde_json::from_str(&ipip.run(ns, &["status", "--json"])?)?;
    Ok(v[0]["fleet"]["learned_peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect())
}

#[test]
fn twenty_sites_learn_each_other_from_bgp_and_follow_churn() -> Result<()> {
    require_root()?;
    let ipip = IpipUser::new()?;
    let dir = TempDir::new("ipip-fleet")?;
    let dir = dir.0.as_path();
    let lan = Bridge::new("ipip-fleet-lan")?;
    let rr = Netns::new("ipip-fleet-rr")?;
    lan.plug(&rr, "eth0", "prr")?;
    rr.exec(&["ip", "addr", "add", &format!("{RR}/24"), "dev", "eth0"])?;
    let mut sites = Vec::new();
    for i in 1..=SITES {
        let ns = Netns::new(&format!("ipip-fleet-{i}"))?;
        lan.plug(&ns, "eth0", &format!("p{i}"))?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", underlay(i)),
            "dev",
            "eth0",
        ])?;
        let peers = dir.join(format!("site-{i}.toml"));
        std::fs::write(
            &peers,
            format!(
                "[tunnel]\naddress = \"{}/24\"\n[fleet]\ntable = {TABLE}\nunderlay = [\"192.0.2.0/24\"]\nallowed = [\"10.20.0.0/16\"]\nresync_s = 30\n",
                private(i)
            ),
        )?;
        sites.push((ns, peers));
    }
    let mut procs = Procs::default();
    procs
        .0
        .push(("bird-rr".into(), start_bird(&rr, "rr", &bird_rr(dir), dir)?));
    let bin = ipip.path().to_string_lossy().into_owned();
    for (i, (ns, peers)) in sites.iter().enumerate() {
        let i = i as u8 + 1;
        // Site 19 is also a rogue speaker: prefixes it must not get anyone to accept.
        let extra = if i == 19 {
            "route 10.99.0.0/24 blackhole; route 10.20.0.0/16 blackhole; route 192.0.2.0/25 blackhole;"
        } else {
            ""
        };
        procs.0.push((
            format!("bird-{i}"),
            start_bird(ns, &format!("site{i}"), &bird_site(i, extra, dir), dir)?,
        ));
        let line = ns.command_line(&[&bin, "run", "eth0", "--peers", &peers.to_string_lossy()]);
        let log = std::fs::File::create(dir.join(format!("run-{i}.log")))?;
        let child = Command::new(&line[0])
            .args(&line[1..])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting ipip-user run")?;
        procs.0.push((format!("run-{i}"), child));
    }
    let site_ns: Vec<&Netns> = sites.iter().map(|(ns, _)| ns).collect();

    // Everyone learns everyone else.
    let all_but = |me: usize| -> Vec<String> {
        (1..=SITES as usize)
            .filter(|j| *j != me + 1)
            .map(|j| format!("fleet-{}", underlay(j as u8)))
            .collect()
    };
    let converged = with_logs(
        dir,
        until_all_refs(
            &site_ns,
            Duration::from_secs(90),
            "learning every site",
            |i, ns| {
                let mut got = learned(&ipip, ns)?;
                got.sort();
                let mut want = all_but(i);
                want.sort();
                Ok(got == want)
            },
        ),
    )?;
    eprintln!("fleet: {SITES} sites converged {converged:?} after start (BGP sessions included)");

    // The rogue's prefixes are refused everywhere, and recorded as refused.
    for ns in &site_ns[..18] {
        let v: Value = serde_json::from_str(&ipip.run(ns, &["status", "--json"])?)?;
        let refused = v[0]["fleet"]["refused"].to_string();
        for p in ["10.99.0.0/24", "10.20.0.0/16", "192.0.2.0/25"] {
            ensure!(
                refused.contains(p),
                "{p} from the rogue not refused: {refused}"
            );
        }
        let routes = ns.exec(&["ip", "route", "show", "proto", "156"])?;
        ensure!(
            !routes.contains("10.99.0.0") && !routes.contains("10.20.0.0/16"),
            "rogue routes installed: {routes}"
        );
    }

    // Reachability through the tunnel: each site pings two others.
    for i in 1..=SITES {
        let ns = site_ns[i as usize - 1];
        for j in [i % SITES + 1, (i + 6) % SITES + 1] {
            ensure!(
                ping_ok(ns, private(i), private(j), 1)?,
                "site {i} cannot reach site {j} through the tunnel"
            );
        }
    }
    let x = tcp_transfer(site_ns[0], site_ns[9], private(10), 7710, 1 << 20)?;
    ensure!(x.bytes == 1 << 20, "TCP 1 → 10: {} bytes", x.bytes);
    // Encapsulated on the way: the peer counters moved.
    let stats: Value = serde_json::from_str(&ipip.run(site_ns[0], &["stats", "--json"])?)?;
    let tx = stats[0]["peers"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|p| p["name"] == format!("fleet-{}", underlay(10)))
        })
        .and_then(|p| p["tx_packets"].as_u64())
        .unwrap_or(0);
    ensure!(tx > 100, "site 1 sent {tx} IPIP packets to site 10");

    // Churn: site 20 leaves and comes back while sites 1 and 2 talk, losing nothing.
    let flow_line = site_ns[0].command_line(&[
        "ping",
        "-n",
        "-q",
        "-i",
        "0.01",
        "-c",
        "1500",
        "-W",
        "1",
        "-I",
        &private(1).to_string(),
        &private(2).to_string(),
    ]);
    let flow = Command::new(&flow_line[0])
        .args(&flow_line[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    procs.stop("bird-20")?;
    let gone = format!("fleet-{}", underlay(20));
    let left = until_all_refs(
        &site_ns[..19],
        Duration::from_secs(30),
        "forgetting site 20",
        |_, ns| Ok(!learned(&ipip, ns)?.contains(&gone)),
    )?;
    eprintln!("fleet: site 20 gone from every map {left:?} after its BIRD stopped");
    ensure!(
        !ping_ok(site_ns[0], private(1), private(20), 1)?,
        "site 20 still reachable after leaving"
    );
    let routes = site_ns[0].exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(
        !routes.contains("10.20.20.0/24"),
        "site 20's route outlived its withdrawal: {routes}"
    );
    let (ns20, _) = &sites[19];
    procs.0.push((
        "bird-20".into(),
        start_bird(ns20, "site20", &bird_site(20, "", dir), dir)?,
    ));
    let back = until_all_refs(
        &site_ns[..19],
        Duration::from_secs(60),
        "learning site 20 again",
        |_, ns| Ok(learned(&ipip, ns)?.contains(&gone)),
    )?;
    eprintln!("fleet: site 20 back in every map {back:?} after its BIRD restarted");
    ensure!(
        ping_ok(site_ns[0], private(1), private(20), 3)?,
        "site 20 unreachable after rejoining"
    );
    let out = flow.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("1500 packets transmitted, 1500 received"),
        "the flow between sites 1 and 2 lost packets during the churn: {text}"
    );
    drop(procs);
    Ok(())
}

/// Waits (boundedly) until `cond` holds on every site; returns how long it took.
fn until_all_refs(
    sites: &[&Netns],
    within: Duration,
    what: &str,
    mut cond: impl FnMut(usize, &Netns) -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let mut pending = Vec::new();
        for (i, ns) in sites.iter().enumerate() {
            if !cond(i, ns)? {
                pending.push(i + 1);
            }
        }
        if pending.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("{what}: not within {within:?} on sites {pending:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `r`, with site 1's and the reflector's logs attached when it failed.
fn with_logs<T>(dir: &Path, r: Result<T>) -> Result<T> {
    r.map_err(|e| {
        let tail = |f: &str| {
            let t = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(25)..].join("\n")
        };
        e.context(format!(
            "run-1.log:\n{}\nbird-1.log:\n{}\nbird-rr.log:\n{}",
            tail("run-1.log"),
            tail("bird-1.log"),
            tail("bird-rr.log")
        ))
    })
}
