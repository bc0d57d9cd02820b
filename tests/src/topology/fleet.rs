//! A fleet (issue: §6 at scale): N sites and a BGP route reflector on one underlay segment.
//! Each site runs BIRD 2 (iBGP to the reflector, announcing its own /24 with itself as next
//! hop, exporting what it learns into kernel table 100) and `ipip-user run` in fleet mode
//! following that table. Nobody lists a peer by hand. Everything started here is ended (and
//! detached) on drop.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::build::{Bridge, TempDir};
use crate::{IpipUser, Netns};

pub const RR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The kernel table BIRD exports to and ipip follows.
pub const TABLE: u32 = 100;
/// What site 19 of a rogue fleet also announces, all of which must be refused: outside the
/// allowed range, covering every site's tunnel address, and inside the underlay.
pub const ROGUE_PREFIXES: [&str; 3] = ["10.99.0.0/24", "10.20.0.0/16", "192.0.2.0/25"];
pub const ROGUE: u8 = 19;

pub fn underlay(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, i)
}

/// Site `i`'s tunnel address, inside the /24 it announces (10.20.i.0/24).
pub fn private(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, i, 1)
}

/// Peer name site `i` has elsewhere.
pub fn peer_name(i: u8) -> String {
    format!("fleet-{}", underlay(i))
}

pub struct Fleet {
    /// Sites 1..=N at index 0..N.
    pub sites: Vec<Netns>,
    pub rr: Netns,
    procs: Vec<(String, Child)>,
    _lan: Bridge,
    dir: TempDir,
    rogue: bool,
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

impl Drop for Fleet {
    fn drop(&mut self) {
        // ipip first (SIGTERM detaches), then BIRD.
        for (_, c) in self.procs.iter_mut().rev() {
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

fn bird_rr(sites: u8, dir: &Path) -> String {
    let mut c = format!(
        r#"log "{}" all;
router id {RR};
protocol device {{ }}
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
    for i in 1..=sites {
        c.push_str(&format!(
            "protocol bgp site{i} from rrclient {{ neighbor {} as 65000; }}\n",
            underlay(i)
        ));
    }
    c
}

/// `bird -f` in `ns` with `conf`, its control socket in the fleet's folder.
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

impl Fleet {
    /// Builds `n` sites (at most 200) and the reflector and starts everything; with `rogue`,
    /// site 19 also announces [`ROGUE_PREFIXES`].
    pub fn new(ipip: &IpipUser, n: u8, rogue: bool) -> Result<Self> {
        anyhow::ensure!((1..=200).contains(&n), "1..=200 sites");
        let dir = TempDir::new("ipip-fleet")?;
        let lan = Bridge::new("ipip-fleet-lan")?;
        let rr = Netns::new("ipip-fleet-rr")?;
        lan.plug(&rr, "eth0", "prr")?;
        rr.exec(&["ip", "addr", "add", &format!("{RR}/24"), "dev", "eth0"])?;
        let mut sites = Vec::new();
        for i in 1..=n {
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
            std::fs::write(
                dir.0.join(format!("site-{i}.toml")),
                format!(
                    "[tunnel]\naddress = \"{}/24\"\n[fleet]\ntable = {TABLE}\nunderlay = [\"192.0.2.0/24\"]\nallowed = [\"10.20.0.0/16\"]\nresync_s = 30\n",
                    private(i)
                ),
            )?;
            sites.push(ns);
        }
        let mut f = Fleet {
            sites,
            rr,
            procs: Vec::new(),
            _lan: lan,
            dir,
            rogue,
        };
        let rr_conf = bird_rr(n, &f.dir.0);
        let child = start_bird(&f.rr, "rr", &rr_conf, &f.dir.0)?;
        f.procs.push(("bird-rr".into(), child));
        let bin = ipip.path().to_string_lossy().into_owned();
        for i in 1..=n {
            f.start_bird(i)?;
            let peers = f.peers_file(i);
            let line = f
                .site(i)
                .command_line(&[&bin, "run", "eth0", "--peers", &peers]);
            let log = std::fs::File::create(f.dir.0.join(format!("run-{i}.log")))?;
            let child = Command::new(&line[0])
                .args(&line[1..])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting ipip-user run")?;
            f.procs.push((format!("run-{i}"), child));
        }
        Ok(f)
    }

    pub fn site(&self, i: u8) -> &Netns {
        &self.sites[i as usize - 1]
    }

    pub fn peers_file(&self, i: u8) -> String {
        self.dir
            .0
            .join(format!("site-{i}.toml"))
            .to_string_lossy()
            .into_owned()
    }

    /// Starts site `i`'s BIRD (again).
    pub fn start_bird(&mut self, i: u8) -> Result<()> {
        let extra = if self.rogue && i == ROGUE {
            ROGUE_PREFIXES
                .iter()
                .map(|p| format!("route {p} blackhole;"))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            String::new()
        };
        let conf = bird_site(i, &extra, &self.dir.0);
        let child = start_bird(self.site(i), &format!("site{i}"), &conf, &self.dir.0)?;
        self.procs.push((format!("bird-{i}"), child));
        Ok(())
    }

    /// Stops site `i`'s BIRD (SIGTERM: it closes its session, the reflector withdraws).
    pub fn stop_bird(&mut self, i: u8) -> Result<()> {
        let name = format!("bird-{i}");
        let at = self
            .procs
            .iter()
            .position(|(n, _)| *n == name)
            .with_context(|| format!("{name} is not running"))?;
        let (_, mut child) = self.procs.remove(at);
        terminate(&mut child);
        Ok(())
    }

    /// The peers site `i`'s `status` says it has learned.
    pub fn learned(&self, ipip: &IpipUser, i: u8) -> Result<Vec<String>> {
        Ok(self.fleet_status(ipip, i)?["learned_peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect())
    }

    /// Site `i`'s `status --json` fleet object.
    pub fn fleet_status(&self, ipip: &IpipUser, i: u8) -> Result<Value> {
        let v: Value = serde_json::from_str(&ipip.run(self.site(i), &["status", "--json"])?)?;
        Ok(v[0]["fleet"].clone())
    }

    /// Waits (boundedly) until `cond` holds for every site in `which`; returns how long it
    /// took, or fails with the sites still pending and site 1's logs.
    pub fn until(
        &self,
        which: impl Iterator<Item = u8> + Clone,
        within: Duration,
        what: &str,
        mut cond: impl FnMut(u8) -> Result<bool>,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let mut pending = Vec::new();
            for i in which.clone() {
                if !cond(i)? {
                    pending.push(i);
                }
            }
            if pending.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!(
                    "{what}: not within {within:?} on sites {pending:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The tails of site 1's and the reflector's logs, for failures.
    pub fn logs(&self) -> String {
        let tail = |f: &str| {
            let t = std::fs::read_to_string(self.dir.0.join(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        format!(
            "run-1.log:\n{}\nbird-1.log:\n{}\nbird-rr.log:\n{}",
            tail("run-1.log"),
            tail("bird-1.log"),
            tail("bird-rr.log")
        )
    }

    /// Every site's peer list equals all the other sites (minus those in `absent`).
    pub fn converged(&self, ipip: &IpipUser, i: u8, absent: &[u8]) -> Result<bool> {
        let n = self.sites.len() as u8;
        let mut want: Vec<String> = (1..=n)
            .filter(|j| *j != i && !absent.contains(j))
            .map(peer_name)
            .collect();
        want.sort();
        let mut got = self.learned(ipip, i)?;
        got.sort();
        Ok(got == want)
    }
}
