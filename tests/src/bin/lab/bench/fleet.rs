//! Fleet mode: how fast learned routes reach the maps and what following a table costs.
//! Two parts, so that BIRD's timers and ipip's own sync time show apart: the follower alone
//! (routes written straight into table 100 with `ip -batch`, the way a daemon would), and a
//! fleet of sites with BIRD (withdrawal and rejoin as every site sees them).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipip_tests::topology::fleet::{peer_name, Fleet};
use ipip_tests::topology::TempDir;
use ipip_tests::{IpipUser, Netns};
use serde_json::Value;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FleetBench {
    pub method: String,
    /// Follower alone: routes written into the table at once, next hops spread over peers.
    pub routes: usize,
    pub peers: usize,
    /// From the start of the batch to the last learned route in the maps.
    pub learn_s: f64,
    pub learn_cpu_s: f64,
    pub rss_mib: f64,
    /// `flaps` rounds of withdrawing and restoring `flapping` routes, one second apart.
    pub flapping: usize,
    pub flaps: usize,
    pub flap_cpu_s: f64,
    pub flap_wall_s: f64,
    /// With BIRD: sites, cold-start convergence, withdrawal and rejoin on every site.
    pub sites: u8,
    pub bgp_converge_s: f64,
    pub bgp_withdraw_s: f64,
    pub bgp_rejoin_s: f64,
}

/// utime + stime of `pid`, in seconds.
fn cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// The learned routes `ns`'s status lists.
fn learned_routes(ipip: &IpipUser, ns: &Netns) -> Result<usize> {
    let v: Value = serde_json::from_str(&ipip.run(ns, &["status", "--json"])?)?;
    Ok(v[0]["fleet"]["learned_peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["routes"].as_array().map_or(0, Vec::len))
        .sum())
}

fn wait_routes(ipip: &IpipUser, ns: &Netns, want: usize, within: Duration) -> Result<()> {
    let start = Instant::now();
    while learned_routes(ipip, ns)? != want {
        if start.elapsed() > within {
            bail!("the follower did not reach {want} learned routes within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn batch(ns: &Netns, dir: &std::path::Path, name: &str, lines: &[String]) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n")?;
    ns.exec(&["ip", "-batch", &path.to_string_lossy()])?;
    Ok(())
}

pub fn fleet(quick: bool) -> Result<FleetBench> {
    let ipip = IpipUser::new()?;
    let (routes, peers, flapping, flaps, sites) = if quick {
        (2_000, 50, 200, 2, 6)
    } else {
        (10_000, 100, 1_000, 5, 20)
    };
    println!("==> fleet: follower with {routes} learned routes over {peers} peers");
    let dir = TempDir::new("ipip-fleet-bench")?;
    let ns = Netns::new("ipip-fleet-bench")?;
    ns.script(
        "ip link add eth0 type veth peer name eth1
         ip link set eth0 up
         ip link set eth1 up
         ip addr add 192.0.2.1/24 dev eth0",
    )?;
    let peers_file = dir.0.join("fleet.toml");
    std::fs::write(
        &peers_file,
        "[tunnel]\naddress = \"10.250.0.1/24\"\n[fleet]\ntable = 100\nunderlay = [\"192.0.2.0/24\"]\nallowed = [\"10.0.0.0/9\"]\nresync_s = 3600\n",
    )?;
    let line = ns.command_line(&[
        &ipip.path().to_string_lossy(),
        "run",
        "eth0",
        "--peers",
        &peers_file.to_string_lossy(),
    ]);
    let mut run: Child = Command::new(&line[0])
        .args(&line[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> Result<FleetBench> {
        wait_routes(&ipip, &ns, 0, Duration::from_secs(30))?;
        // nsenter execs the run in place: the child's pid is the follower's.
        let pid = run.id();
        let route = |i: usize| format!("10.{}.{}.0/24", i / 250 + 1, i % 250);
        let add: Vec<String> = (0..routes)
            .map(|i| {
                format!(
                    "route add {} via 192.0.2.{} table 100",
                    route(i),
                    i % peers + 2
                )
            })
            .collect();
        let (c0, t0) = (cpu_s(pid)?, Instant::now());
        batch(&ns, &dir.0, "add", &add)?;
        wait_routes(&ipip, &ns, routes, Duration::from_secs(120))?;
        let (learn_s, learn_cpu_s) = (t0.elapsed().as_secs_f64(), cpu_s(pid)? - c0);
        let rss = rss_mib(pid)?;
        let del: Vec<String> = (0..flapping)
            .map(|i| format!("route del {} table 100", route(i)))
            .collect();
        let (c0, t0) = (cpu_s(pid)?, Instant::now());
        for _ in 0..flaps {
            batch(&ns, &dir.0, "del", &del)?;
            std::thread::sleep(Duration::from_secs(1));
            batch(&ns, &dir.0, "add-back", &add[..flapping])?;
            std::thread::sleep(Duration::from_secs(1));
        }
        wait_routes(&ipip, &ns, routes, Duration::from_secs(60))?;
        let (flap_wall_s, flap_cpu_s) = (t0.elapsed().as_secs_f64(), cpu_s(pid)? - c0);
        Ok(FleetBench {
            method: String::new(),
            routes,
            peers,
            learn_s,
            learn_cpu_s,
            rss_mib: rss,
            flapping,
            flaps,
            flap_cpu_s,
            flap_wall_s,
            sites,
            bgp_converge_s: 0.0,
            bgp_withdraw_s: 0.0,
            bgp_rejoin_s: 0.0,
        })
    })();
    let pid = nix::unistd::Pid::from_raw(run.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = run.wait();
    let mut r = result?;

    println!("==> fleet: {sites} sites with BIRD 2 and a route reflector");
    let mut f = Fleet::new(&ipip, sites, false)?;
    let all = 1..=sites;
    r.bgp_converge_s = f
        .until(all.clone(), Duration::from_secs(90), "converging", |i| {
            f.converged(&ipip, i, &[])
        })?
        .as_secs_f64();
    f.stop_bird(sites)?;
    r.bgp_withdraw_s = f
        .until(1..sites, Duration::from_secs(30), "withdrawal", |i| {
            Ok(!f.learned(&ipip, i)?.contains(&peer_name(sites)))
        })?
        .as_secs_f64();
    f.start_bird(sites)?;
    r.bgp_rejoin_s = f
        .until(1..sites, Duration::from_secs(60), "rejoin", |i| {
            Ok(f.learned(&ipip, i)?.contains(&peer_name(sites)))
        })?
        .as_secs_f64();
    r.method = format!(
        "follower alone: {} routes over {} next hops written into table 100 with one `ip -batch`, time until `status` lists them all, the follower's CPU (utime+stime) and RSS (debug or release build as run); then {} rounds of withdrawing and restoring {} of them a second apart. With BIRD: {} sites, each announcing a /24 to a route reflector; cold start includes the BGP sessions; withdrawal is BIRD stopped on one site until no other site lists it; rejoin includes BIRD's connect delay (1 s) and session setup",
        r.routes, r.peers, r.flaps, r.flapping, r.sites
    );
    Ok(r)
}

pub fn markdown(md: &mut String, r: &FleetBench) {
    use std::fmt::Write as _;
    let _ = writeln!(md, "### Fleet mode\n\n{}.\n", r.method);
    let _ = writeln!(md, "| follower | value |\n|---|---|");
    let _ = writeln!(
        md,
        "| {} routes learned | {:.2} s, {:.2} s CPU, RSS {:.0} MiB |",
        r.routes, r.learn_s, r.learn_cpu_s, r.rss_mib
    );
    let _ = writeln!(
        md,
        "| {} routes flapping ×{} | {:.2} s CPU over {:.1} s |",
        r.flapping, r.flaps, r.flap_cpu_s, r.flap_wall_s
    );
    let _ = writeln!(
        md,
        "| {} sites with BIRD: cold start | {:.2} s |",
        r.sites, r.bgp_converge_s
    );
    let _ = writeln!(
        md,
        "| a site leaves (every map) | {:.2} s |",
        r.bgp_withdraw_s
    );
    let _ = writeln!(md, "| it rejoins (every map) | {:.2} s |", r.bgp_rejoin_s);
}
