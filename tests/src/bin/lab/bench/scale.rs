//! Scale: check, attach and detach of peers files with many peers and routes (wall time and
//! peak RSS of the ipip-user process, map memory as the kernel accounts it), and the
//! per-packet cost of decap and encap as the route table grows.
//!
//! Routes are /32s scattered over 10.0.0.0/9 by a multiplicative hash (no two adjacent, so
//! neither the kernel's FIB nor the LPM trie sees an easy table), dealt round-robin to the
//! peers; peers' remotes are on-link in 10.128.0.0/9. No traffic is sent to any of them.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ipip_tests::topology::build::TempDir;
use ipip_tests::{IpipUser, Netns};

/// One size measured.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub peers: usize,
    pub routes: usize,
    pub check_s: f64,
    pub check_rss_mib: f64,
    pub attach_s: f64,
    pub attach_rss_mib: f64,
    pub detach_s: f64,
    pub detach_rss_mib: f64,
    /// reload with a tenth of the routes replaced by others (absent from older results).
    #[serde(default)]
    pub reload_s: f64,
    #[serde(default)]
    pub reload_rss_mib: f64,
    /// Sum of `memlock` over the attachment's pinned maps.
    pub map_mib: f64,
}

/// Per-packet cost at one route count.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PacketRow {
    pub routes: usize,
    pub xdp_decap_ns: f64,
    pub tc_encap_ns: f64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Scale {
    pub method: String,
    pub lifecycle: Vec<Row>,
    pub per_packet: Vec<PacketRow>,
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);

/// The `i`-th scattered /32 in 10.0.0.0/9 (a bijection on 0..2^23).
pub fn route(i: usize) -> Ipv4Addr {
    let spread = (i as u64).wrapping_mul(2_654_435_761) & ((1 << 23) - 1);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + spread as u32)
}

pub fn remote(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(LOCAL) + 1 + i as u32)
}

/// A peers file with `peers` peers sharing `routes` routes.
pub fn peers_file(peers: usize, routes: usize) -> String {
    peers_file_from(peers, routes, 0)
}

/// Like [`peers_file`], with the routes numbered from `first` (a file shifted by a tenth of
/// its routes has nine tenths in common with the unshifted one).
pub fn peers_file_from(peers: usize, routes: usize, first: usize) -> String {
    let mut per: Vec<Vec<usize>> = vec![Vec::new(); peers];
    for r in first..first + routes {
        per[r % peers].push(r);
    }
    let mut t = String::with_capacity(routes * 22 + peers * 64);
    for (i, rs) in per.iter().enumerate() {
        t.push_str(&format!(
            "[[peer]]\nname = \"p{i}\"\nremote = \"{}\"\nroutes = [",
            remote(i)
        ));
        for r in rs {
            t.push_str(&format!("\"{}/32\",", route(*r)));
        }
        t.push_str("]\n");
    }
    t
}

/// Runs `args` in `ns` and waits for it: (wall time, peak RSS in MiB, stdout).
fn measured(ns: &Netns, args: &[&str]) -> Result<(Duration, f64, String)> {
    use std::os::unix::process::ExitStatusExt as _;
    let line = ns.command_line(args);
    let started = Instant::now();
    let child = std::process::Command::new(&line[0])
        .args(&line[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", args.join(" ")))?;
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.expect("piped");
    let mut err = child.stderr.expect("piped");
    let reader = std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = std::io::Read::read_to_string(&mut out, &mut o);
        let _ = std::io::Read::read_to_string(&mut err, &mut e);
        (o, e)
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 writes at most one into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, whose pid we hold.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(
        rc == pid,
        "wait4 failed: {}",
        std::io::Error::last_os_error()
    );
    let elapsed = started.elapsed();
    let (stdout, stderr) = reader.join().unwrap_or_default();
    let st = std::process::ExitStatus::from_raw(status);
    ensure!(st.success(), "{} failed ({st}): {stderr}", args.join(" "));
    Ok((elapsed, usage.ru_maxrss as f64 / 1024.0, stdout))
}

/// Sum of the kernel's `memlock` figures for every map pinned under `dir`.
fn map_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let map = aya::maps::MapData::from_pin(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(map.fd()));
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

fn lifecycle_row(ipip: &IpipUser, dir: &Path, peers: usize, routes: usize) -> Result<Row> {
    let ns = Netns::new("ipipscale")?;
    ns.script(&format!(
        "ip link set lo up
         ip link add e0 type veth peer name e1
         ip addr add {LOCAL}/9 dev e0
         ip link set e0 up
         ip link set e1 up"
    ))?;
    let file = dir.join(format!("scale-{peers}-{routes}.toml"));
    std::fs::write(&file, peers_file(peers, routes))?;
    let f = file.to_string_lossy().into_owned();
    let bin = ipip.path().to_string_lossy().into_owned();
    let (check, check_rss, _) = measured(&ns, &[&bin, "check", &f])?;
    let (attach, attach_rss, _) = measured(&ns, &[&bin, "attach", "e0", "--peers", &f, "--json"])?;
    let maps = ns.pin_dir().join("e0").join("maps");
    let map = map_bytes(&maps).unwrap_or(0);
    let shifted = dir.join(format!("scale-{peers}-{routes}-shifted.toml"));
    std::fs::write(&shifted, peers_file_from(peers, routes, routes / 10))?;
    let s = shifted.to_string_lossy().into_owned();
    let (reload, reload_rss, _) = measured(&ns, &[&bin, "reload", "e0", "--peers", &s])?;
    let (detach, detach_rss, _) = measured(&ns, &[&bin, "detach", "e0"])?;
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&shifted);
    Ok(Row {
        peers,
        routes,
        check_s: check.as_secs_f64(),
        check_rss_mib: check_rss,
        attach_s: attach.as_secs_f64(),
        attach_rss_mib: attach_rss,
        detach_s: detach.as_secs_f64(),
        detach_rss_mib: detach_rss,
        reload_s: reload.as_secs_f64(),
        reload_rss_mib: reload_rss,
        map_mib: map as f64 / (1024.0 * 1024.0),
    })
}

pub fn scale(quick: bool) -> Result<Scale> {
    let ipip = IpipUser::new()?;
    let dir = TempDir::new("ipip-scale")?;
    let sizes: &[(usize, usize)] = if quick {
        &[(100, 1_000), (100, 10_000)]
    } else {
        &[
            (100, 1_000),
            (100, 100_000),
            (100, 1_000_000),
            (10_000, 100_000),
        ]
    };
    let mut lifecycle = Vec::new();
    for &(peers, routes) in sizes {
        println!("==> scale: {peers} peers, {routes} routes: check, attach, reload, detach");
        let row = lifecycle_row(&ipip, &dir.0, peers, routes)
            .with_context(|| format!("{peers} peers, {routes} routes"))?;
        println!(
            "    check {:.2} s ({:.0} MiB), attach {:.2} s ({:.0} MiB), reload {:.2} s ({:.0} MiB), detach {:.2} s ({:.0} MiB), maps {:.1} MiB",
            row.check_s,
            row.check_rss_mib,
            row.attach_s,
            row.attach_rss_mib,
            row.reload_s,
            row.reload_rss_mib,
            row.detach_s,
            row.detach_rss_mib,
            row.map_mib
        );
        lifecycle.push(row);
    }
    let counts: &[usize] = if quick {
        &[1, 1_000, 100_000]
    } else {
        &[1, 1_000, 100_000, 1_000_000]
    };
    let mut per_packet = Vec::new();
    for &routes in counts {
        println!("==> scale: per-packet cost with {routes} routes");
        let (xdp_decap_ns, tc_encap_ns) = super::prog::cost_with_routes(routes, quick)?;
        println!("    XDP decap {xdp_decap_ns:.1} ns, TC encap {tc_encap_ns:.1} ns");
        per_packet.push(PacketRow {
            routes,
            xdp_decap_ns,
            tc_encap_ns,
        });
    }
    Ok(Scale {
        method: "release ipip-user; wall time and peak RSS (wait4) of each command (reload: a tenth of the routes replaced by others); maps: the kernel's memlock of every pinned map; per packet: XDP decap behind the restoring harness, TC encap one run per fresh skb, harness or floor included, to one peer's route among N scattered /32s".into(),
        lifecycle,
        per_packet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_routes_are_distinct_and_inside_the_range() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000 {
            let r = route(i);
            assert!(r.octets()[0] == 10 && r.octets()[1] < 128, "{r}");
            assert!(seen.insert(r), "route({i}) = {r} repeats");
        }
        assert_ne!(u32::from(route(1)) - u32::from(route(0)), 1);
    }

    #[test]
    fn the_file_parses_with_every_route_once() {
        let f = ipip_user::config::PeersFile::parse(&peers_file(7, 100), Path::new("s.toml"))
            .expect("generated file parses");
        assert_eq!(f.peers.len(), 7);
        assert_eq!(f.route_count(), 100);
    }
}
