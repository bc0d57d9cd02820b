//! Running as a service: the systemd unit in contrib/systemd verifies, and `ipip-user run`
//! behaves as the unit runs it (Type=notify with a notify socket the test provides, exactly
//! the unit's capabilities): READY, RELOADING on SIGHUP, STOPPING on SIGTERM, metrics over
//! HTTP equal to `stats --json`, and a crash that leaves the data path running for the next
//! `run` to adopt.

use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipip_tests::ipip::{describe, workspace_root};
use ipip_tests::topology::TempDir;
use ipip_tests::traffic::ping_ok;
use ipip_tests::{require_root, HostToHost, IpipUser, Netns, Underlay};

const UNIT: &str = "contrib/systemd/ipip@.service";
/// What the unit grants, and what the capability test in operations.rs proves is enough.
const CAPS: &str = "CAP_BPF CAP_NET_ADMIN CAP_PERFMON";
const METRICS_PORT: u16 = 9156;

fn unit_text() -> Result<String> {
    let path = workspace_root().join(UNIT);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The value of `key=` in the unit (the last one, as systemd takes it).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

#[test]
fn the_unit_verifies_and_grants_exactly_the_proven_capabilities() -> Result<()> {
    let ipip = IpipUser::new()?;
    let unit = unit_text()?;
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        ensure!(
            unit_value(&unit, key).as_deref() == Some(CAPS),
            "{key} is not {CAPS}"
        );
    }
    for (key, want) in [
        ("Type", "notify"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        ensure!(
            unit_value(&unit, key).as_deref() == Some(want),
            "{key} is not {want}"
        );
    }
    // systemd-analyze checks that the binary exists: point it at the one under test.
    let tmp = TempDir::new("ipip-unit")?;
    let dir = tmp.0.clone();
    let bin = ipip.path().to_string_lossy().into_owned();
    std::fs::write(
        dir.join("ipip@.service"),
        unit.replace("/usr/local/bin/ipip-user", &bin),
    )?;
    let instance = dir.join("ipip@eth0.service");
    std::fs::copy(dir.join("ipip@.service"), &instance)?;
    let out = Command::new("systemd-analyze")
        .args(["verify", &instance.to_string_lossy()])
        .output()
        .context("running systemd-analyze (apt package systemd)")?;
    // Unknown keys are only warnings: any output at all fails the test.
    ensure!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        describe(&out)
    );
    Ok(())
}

/// A notify socket like the one systemd gives a Type=notify service.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new(dir: &Path) -> Result<Self> {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path)?;
        Ok(Self { sock, path })
    }

    /// Waits (boundedly) for a message containing `want`, returning every line seen.
    fn expect(&self, want: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            self.sock.set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            ))?;
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    seen.push_str(&msg);
                    if msg.lines().any(|l| l == want) {
                        return Ok(seen);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => return Err(e.into()),
            }
        }
        bail!("no {want} from the service within {within:?}; got {seen:?}")
    }
}

/// `ipip-user run` in `ns` as the unit starts it: exactly the unit's capabilities, the
/// notify socket in NOTIFY_SOCKET.
fn start_run(
    ipip: &IpipUser,
    ns: &Netns,
    iface: &str,
    peers: &str,
    notify: &Path,
) -> Result<Child> {
    let bin = ipip.path().to_string_lossy().into_owned();
    let port = format!("127.0.0.1:{METRICS_PORT}");
    let line = ns.command_line(&[
        "setpriv",
        "--inh-caps=-all",
        "--bounding-set=-all,+bpf,+net_admin,+perfmon",
        &bin,
        "run",
        iface,
        "--peers",
        peers,
        "--metrics",
        &port,
    ]);
    Command::new(&line[0])
        .args(&line[1..])
        .env("NOTIFY_SOCKET", notify)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ipip-user run")
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)?;
    Ok(())
}

/// GET /metrics over HTTP from inside `ns`.
fn scrape(ns: &Netns) -> Result<String> {
    ns.run(|| {
        let mut s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, METRICS_PORT))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP header end")?;
        ensure!(head.starts_with("HTTP/1.1 200"), "scrape: {head}");
        Ok(body.to_string())
    })
}

/// The value of one sample in a scrape parsed by prometheus-parse (an independent parser).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[test]
fn run_is_a_notify_service_with_metrics_that_match_stats() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    ipip.attach(&c.ns, c.iface, &c.peers)?;
    let tmp = TempDir::new("ipip-notify")?;
    let dir = tmp.0.clone();
    let notify = NotifySocket::new(&dir)?;
    let peers = d.peers.to_string_lossy().into_owned();
    let mut run = start_run(&ipip, &d.ns, d.iface, &peers, &notify.path)?;
    if let Err(e) = notify.expect("READY=1", Duration::from_secs(30)) {
        let _ = run.kill();
        let out = run.wait_with_output()?;
        bail!("{e:#}: {}", describe(&out));
    }
    ensure!(
        ping_ok(&d.ns, d.private, c.private, 20)?,
        "no traffic through the service's attachment"
    );

    // Metrics: parsed independently, equal to stats --json for the same traffic.
    let body = scrape(&d.ns)?;
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .context("parsing the exposition")?;
    let stats = ipip.stats(&d.ns)?;
    let snap = stats
        .as_array()
        .and_then(|a| a.iter().find(|s| s["interface"] == d.iface))
        .context("no stats for the interface")?;
    let peer = snap["peers"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == c.name))
        .context("no stats for calculon")?;
    let iface = d.iface;
    for (direction, key) in [("tx", "tx_packets"), ("rx", "rx_packets")] {
        let got = sample(
            &parsed,
            "ipip_peer_packets_total",
            &[
                ("interface", iface),
                ("peer", c.name),
                ("direction", direction),
            ],
        );
        let want = peer[key].as_u64().map(|v| v as f64);
        ensure!(
            got == want && want >= Some(20.0),
            "{direction} packets: metrics {got:?}, stats {want:?}"
        );
    }
    let got = sample(
        &parsed,
        "ipip_peer_bytes_total",
        &[("peer", c.name), ("direction", "tx")],
    );
    ensure!(
        got == peer["tx_bytes"].as_u64().map(|v| v as f64),
        "tx bytes: {got:?} vs {peer}"
    );
    let reasons = snap["reasons"].as_object().context("no reasons")?;
    for (reason, n) in reasons {
        let got = sample(
            &parsed,
            "ipip_reason_packets_total",
            &[("interface", iface), ("reason", reason)],
        );
        ensure!(
            got == n.as_u64().map(|v| v as f64),
            "reason {reason}: metrics {got:?}, stats {n}"
        );
    }
    let info = sample(
        &parsed,
        "ipip_attachment_info",
        &[("interface", iface), ("decap", "tc")],
    );
    ensure!(info == Some(1.0), "no info metric with decap tc:\n{body}");

    // SIGHUP: the changed file is applied, and systemd hears RELOADING then READY.
    let grown = t.dir().join("grown.toml");
    std::fs::write(
        &grown,
        format!(
            "{}\n[[peer]]\nname = \"bender\"\nremote = \"192.0.2.130\"\nroutes = [\"10.0.3.0/24\"]\n",
            std::fs::read_to_string(&d.peers)?
        ),
    )?;
    std::fs::copy(&grown, &d.peers)?;
    signal(&run, nix::sys::signal::Signal::SIGHUP)?;
    let seen = notify.expect("READY=1", Duration::from_secs(30))?;
    ensure!(
        seen.contains("RELOADING=1") && seen.contains("MONOTONIC_USEC="),
        "reload notifications: {seen:?}"
    );
    let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(
        routes.contains("10.0.3.0/24"),
        "SIGHUP did not apply the file: {routes}"
    );

    // A crash does not take the data path down; the next run adopts it.
    run.kill()?;
    run.wait()?;
    ensure!(
        ping_ok(&d.ns, d.private, c.private, 3)?,
        "traffic stopped with the service"
    );
    let mut again = start_run(&ipip, &d.ns, d.iface, &peers, &notify.path)?;
    notify.expect("READY=1", Duration::from_secs(30))?;
    signal(&again, nix::sys::signal::Signal::SIGTERM)?;
    notify.expect("STOPPING=1", Duration::from_secs(30))?;
    let waited = Instant::now();
    let status = loop {
        if let Some(s) = again.try_wait()? {
            break s;
        }
        ensure!(
            waited.elapsed() < Duration::from_secs(30),
            "run did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    again
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut err)?;
    ensure!(status.success(), "run exited with {status}: {err}");
    ensure!(
        err.contains("adopted the existing attachment"),
        "the second run did not adopt: {err}"
    );
    ensure!(!d.ns.pin_dir().exists(), "SIGTERM left pins");
    let routes = d.ns.exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(routes.trim().is_empty(), "SIGTERM left routes: {routes}");
    Ok(())
}

/// `stats --json` against its published schema (docs/stats.schema.json), on a live
/// attachment with traffic, with formats checked; and `stats --watch 0` refused.
#[test]
fn stats_json_follows_its_schema() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    t.tunnel_up(&ipip)?;
    ensure!(ping_ok(&d.ns, d.private, c.private, 3)?, "no traffic");
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        workspace_root().join("docs/stats.schema.json"),
    )?)?;
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|e| anyhow::anyhow!("the schema itself is invalid: {e}"))?;
    let out: serde_json::Value = serde_json::from_str(&ipip.run(&d.ns, &["stats", "--json"])?)?;
    let errors: Vec<String> = validator
        .iter_errors(&out)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    ensure!(
        errors.is_empty(),
        "stats --json breaks its schema: {errors:#?}\n{out:#}"
    );
    ensure!(
        out[0]["peers"][0]["tx_packets"].as_u64() >= Some(3),
        "the traffic is not in the output: {out}"
    );
    // And the schema is strict enough to catch a renamed key.
    let mut broken = out.clone();
    broken[0]["peers"][0]["tx_pkts"] = broken[0]["peers"][0]["tx_packets"].take();
    ensure!(
        !validator.is_valid(&broken),
        "the schema accepts a renamed key"
    );
    // Text: only what moved; --all: every reason.
    let text = ipip.run(&d.ns, &["stats", d.iface])?;
    ensure!(
        text.contains("no drops or hand-offs") && !text.contains("unknown_peer"),
        "a healthy interface's stats list zero counters: {text}"
    );
    let text = ipip.run(&d.ns, &["stats", d.iface, "--all"])?;
    ensure!(text.contains("unknown_peer"), "stats --all: {text}");
    let out = ipip.output(&d.ns, &["stats", "--watch", "0"])?;
    ensure!(
        !out.status.success() && describe(&out).contains("0 is not in 1.."),
        "stats --watch 0: {}",
        describe(&out)
    );
    Ok(())
}

/// `check --json` reports a bad file as JSON on stdout too, with exit code 1.
#[test]
fn check_json_reports_errors_as_json() -> Result<()> {
    let ipip = IpipUser::new()?;
    let tmp = TempDir::new("ipip-check")?;
    let dir = tmp.0.clone();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[peer]]\nname = \"a\"\nremote = \"192.0.2.300\"\nroutes = []\n",
    )?;
    let out = Command::new(ipip.path())
        .args(["check", &bad.to_string_lossy(), "--json"])
        .output()?;
    ensure!(
        out.status.code() == Some(1),
        "exit code: {}",
        describe(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("stdout is not JSON: {}", describe(&out)))?;
    ensure!(
        v["ok"] == false
            && v["file"] == bad.to_string_lossy().as_ref()
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("192.0.2.300")),
        "{v}"
    );
    ensure!(
        out.stderr.is_empty(),
        "the error was printed twice: {}",
        describe(&out)
    );
    Ok(())
}
