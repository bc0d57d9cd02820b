use std::{fs::File, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use ipip_user::{
    attach,
    cli::{Cli, Command},
    config::PeersFile,
    pins::PinDir,
    privileges::require_admin,
    stats, status,
};

fn main() -> ExitCode {
    // Behave like other CLI tools when piped into `head`: end quietly on a closed pipe.
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    let cli = Cli::parse();
    // A service says what it does; a one-shot command only warns.
    let quiet = match cli.command {
        Command::Run { .. } | Command::Metrics { .. } => "info",
        _ => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(quiet)).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Already said on stdout, as JSON.
        Err(e) if e.is::<Reported>() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An error the command has reported itself (as JSON): exit 1 without saying it again.
#[derive(Debug, thiserror::Error)]
#[error("reported")]
struct Reported;

fn run(cli: Cli) -> Result<()> {
    if let Some(ns) = &cli.netns {
        enter_netns(ns)?;
    }
    // Single-threaded: the namespace entered above is per thread, and nothing here needs more.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(dispatch(cli.command))
}

fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).with_context(|| {
        format!("network namespace {name} not found ({path}); see `ip netns list`")
    })?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {name} (needs root)"))
}

/// Prints one round of stats (with rates against `previous` when watching) and returns it.
fn show_stats(
    dirs: &[PinDir],
    json: bool,
    all: bool,
    watching: bool,
    previous: Option<&[stats::Sample]>,
) -> Result<Vec<stats::Sample>> {
    let now = dirs
        .iter()
        .map(stats::Sample::take)
        .collect::<Result<Vec<_>>>()?;
    if json {
        let snaps: Vec<_> = now.iter().map(|s| &s.snapshot).collect();
        if watching {
            // One line per round, so a reader can parse the stream line by line.
            println!("{}", serde_json::to_string(&snaps)?);
        } else {
            print_json(&snaps)?;
        }
        return Ok(now);
    }
    if now.is_empty() {
        println!("nothing attached in this network namespace");
    }
    for s in &now {
        let before = previous.and_then(|p| {
            p.iter()
                .find(|b| b.snapshot.interface == s.snapshot.interface)
        });
        print!(
            "{}",
            stats::render(&s.snapshot, before.map(|b| (b, s)), all)
        );
    }
    Ok(now)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::Check { file, json } => {
            let f = match PeersFile::load(&file) {
                Ok(f) => f,
                Err(e) if json => {
                    print_json(&serde_json::json!({
                        "file": file.display().to_string(),
                        "ok": false,
                        "error": format!("{e:#}"),
                    }))?;
                    return Err(Reported.into());
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                print_json(&serde_json::json!({
                    "file": file.display().to_string(),
                    "ok": true,
                    "peers": f.peers.len(),
                    "routes": f.route_count(),
                }))
            } else {
                println!(
                    "{}: ok — {} peer(s), {} route(s), ttl {}, tos {}, pmtudisc {}",
                    file.display(),
                    f.peers.len(),
                    f.route_count(),
                    f.tunnel.ttl,
                    f.tunnel.tos,
                    if f.tunnel.pmtudisc { "on" } else { "off" }
                );
                if let Some(fl) = &f.fleet {
                    println!(
                        "fleet: peers learned from routing table {} (next hops in {}, prefixes in {}); needs `ipip-user run`",
                        fl.table,
                        fl.underlay.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
                        fl.allowed.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
                    );
                }
                Ok(())
            }
        }
        Command::Attach { target, json } => {
            // The file is checked first: a bad file is reported the same way for everyone.
            PeersFile::load(&target.peers)?;
            require_admin("attach")?;
            let a = attach::attach(&target.request()).await?;
            if json {
                return print_json(&a);
            }
            println!(
                "attached to {}: decap {}, encap tc egress, local {}, tunnel MTU {}, {} peer(s)",
                a.interface, a.decap, a.local, a.tunnel_mtu, a.peers
            );
            println!("decap {}: {}", a.decap, a.decap_reason);
            if let Some(addr) = &a.address {
                println!(
                    "tunnel address {addr} ({})",
                    if a.address_added {
                        "added"
                    } else {
                        "already present"
                    }
                );
            }
            for l in &a.lans {
                println!("fast path on LAN interface {l}");
            }
            // A large table is summed up; --json has every route.
            const SHOWN: usize = 20;
            for r in a.routes.iter().take(SHOWN) {
                println!("route {r}");
            }
            if a.routes.len() > SHOWN {
                println!(
                    "... and {} more routes ({} in all; `attach --json` lists them)",
                    a.routes.len() - SHOWN,
                    a.routes.len()
                );
            }
            println!("pinned under {}", a.pin_dir);
            for w in &a.warnings {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        Command::Reload {
            interface,
            peers,
            json,
        } => {
            PeersFile::load(&peers)?;
            require_admin("reload")?;
            let r = ipip_user::reload::reload(&interface, &peers).await?;
            if json {
                return print_json(&r);
            }
            let list = |v: &[String]| {
                if v.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", v.join(", "))
                }
            };
            println!(
                "reloaded {}: {} peer(s) added{}, {} removed{}, {} changed{}; routes {} added, {} removed, {} moved",
                r.interface,
                r.peers_added.len(),
                list(&r.peers_added),
                r.peers_removed.len(),
                list(&r.peers_removed),
                r.peers_changed.len(),
                list(&r.peers_changed),
                r.routes_added,
                r.routes_removed,
                r.routes_moved
            );
            Ok(())
        }
        Command::Detach { interface, json } => {
            require_admin("detach")?;
            let d = attach::detach(&interface).await?;
            if json {
                return print_json(&d);
            }
            if d.interrupted_detach_finished {
                println!(
                    "{}: the pins an interrupted detach was removing are gone now",
                    d.interface
                );
            }
            if d.interrupted_attach_removed {
                println!(
                    "{}: what an interrupted attach had left is removed",
                    d.interface
                );
            }
            println!(
                "detached from {}: programs and pins removed, {} route(s) removed{}",
                d.interface,
                d.routes_removed,
                d.address_removed
                    .map(|a| format!(", address {a} removed"))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Command::Stats {
            interface,
            json,
            watch,
            all,
        } => {
            let dirs = match interface {
                Some(i) => {
                    let d = PinDir::for_interface(&i)?;
                    anyhow::ensure!(
                        d.exists(),
                        "{i} is not attached in this network namespace; `ipip-user status` lists what is"
                    );
                    vec![d]
                }
                None => PinDir::list()?,
            };
            match watch {
                None => show_stats(&dirs, json, all, false, None),
                Some(secs) => {
                    let period = std::time::Duration::from_secs(secs);
                    let mut previous = None;
                    loop {
                        previous = Some(show_stats(&dirs, json, all, true, previous.as_deref())?);
                        tokio::select! {
                            _ = tokio::time::sleep(period) => {}
                            _ = tokio::signal::ctrl_c() => return Ok(()),
                        }
                    }
                }
            }
            .map(|_| ())
        }
        Command::Log {
            interface,
            seconds,
            json,
        } => {
            require_admin("log")?;
            ipip_user::droplog::run(
                &interface,
                seconds.map(std::time::Duration::from_secs),
                json,
            )
            .await
        }
        Command::LogGuard { interface } => ipip_user::droplog::guard(&interface),
        Command::Run {
            target,
            metrics,
            keep_on_exit,
        } => {
            PeersFile::load(&target.peers)?;
            require_admin("run")?;
            ipip_user::service::run(&ipip_user::service::RunOptions {
                target,
                metrics,
                keep_on_exit,
            })
            .await
        }
        Command::Metrics { listen } => {
            require_admin("metrics")?;
            let l = ipip_user::metrics::bind(listen).await?;
            eprintln!(
                "serving metrics on http://{}/metrics; Ctrl-C to stop",
                l.local_addr()?
            );
            tokio::select! {
                r = ipip_user::metrics::serve(l) => r,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        Command::Doctor {
            interface,
            seconds,
            json,
        } => {
            require_admin("doctor")?;
            let findings =
                ipip_user::doctor::diagnose(&interface, std::time::Duration::from_secs(seconds))
                    .await?;
            if json {
                print_json(&findings)?;
            } else {
                print!("{}", ipip_user::doctor::render(&findings));
            }
            if findings.iter().any(|f| !f.ok) {
                return Err(Reported.into());
            }
            Ok(())
        }
        Command::Prune { json } => {
            require_admin("prune")?;
            let pruned = ipip_user::pins::prune()?;
            if json {
                return print_json(&pruned);
            }
            if pruned.is_empty() {
                println!("nothing to prune: every pin folder belongs to a live network namespace");
            }
            for p in &pruned {
                println!("removed {p} (its network namespace is gone)");
            }
            Ok(())
        }
        Command::Status { json } => {
            let all = status::collect().await?;
            if json {
                return print_json(&all);
            }
            print!("{}", status::render(&all));
            Ok(())
        }
    }
}
