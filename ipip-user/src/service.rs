//! `ipip-user run`: the foreground service a service manager starts. It attaches (or adopts
//! an intact attachment of the interface: a reload with the same file then changes nothing in
//! the data path), tells systemd it is ready, applies the file again on SIGHUP, serves metrics
//! if asked, and detaches on SIGTERM/SIGINT unless `--keep-on-exit`. The data path is pinned
//! and does not depend on this process: if it crashes, traffic keeps flowing, and the next
//! `run` adopts the attachment.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};

use futures::{FutureExt as _, StreamExt as _};

use crate::{attach, cli::AttachOpts, config::PeersFile, fleet, pins::PinDir, reload, status};

pub struct RunOptions {
    pub target: AttachOpts,
    pub metrics: Option<SocketAddr>,
    pub keep_on_exit: bool,
}

/// Tells systemd (when it started us with a notify socket; otherwise nothing happens).
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("telling systemd {states:?}: {e}");
    }
}

/// Whether `interface` has an intact attachment here that `run` can take over.
async fn adoptable(interface: &str) -> Result<bool> {
    let dir = PinDir::for_interface(interface)?;
    if !dir.exists() {
        return Ok(false);
    }
    Ok(status::collect()
        .await?
        .iter()
        .any(|s| s.interface == interface && s.netns == dir.netns && s.health == "ok"))
}

/// Applies the static `file` (plus, in fleet mode, what the routing table teaches now) to the
/// attachment. A fleet pass whose result equals `learned` changes nothing unless `force`.
async fn apply(
    iface: &str,
    path: &std::path::Path,
    file: &PeersFile,
    learned: &mut fleet::Learned,
    force: bool,
) -> Result<reload::Reloaded> {
    let Some(f) = &file.fleet else {
        return reload::apply(iface, file, path).await;
    };
    let started = std::time::Instant::now();
    let nl = crate::netif::Netlink::open()?;
    let local =
        std::net::Ipv4Addr::from(crate::pins::read_tunnel(&PinDir::for_interface(iface)?)?.local);
    let routes = nl.table_routes(f.table).await?;
    let now = fleet::learn(&routes, file, f, local);
    if !force && now == *learned {
        return Ok(reload::Reloaded::default());
    }
    for r in now.refused.iter().filter(|r| !learned.refused.contains(r)) {
        log::warn!("{iface}: fleet: refused learned route {r}");
    }
    let r = reload::apply(iface, &fleet::merged(file, &now), path).await?;
    log::info!(
        "{iface}: fleet: {} peer(s) learned from table {} ({} route(s), {} refused); peers +{} -{}, routes +{} -{} moved {}, in {} ms",
        now.peers.len(), f.table, routes.len(), now.refused.len(),
        r.peers_added.len(), r.peers_removed.len(), r.routes_added, r.routes_removed, r.routes_moved,
        started.elapsed().as_millis()
    );
    fleet::record(iface, &now)?;
    *learned = now;
    Ok(r)
}

pub async fn run(o: &RunOptions) -> Result<()> {
    let (iface, peers) = (&o.target.interface, &o.target.peers);
    // Signals are caught from the start: a SIGTERM during attach is handled after it.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let metrics = match o.metrics {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let mut learned = fleet::Learned::default();
    let mut file = PeersFile::load(peers)?;
    if adoptable(iface).await? {
        let r = apply(iface, peers, &file, &mut learned, true).await?;
        log::info!(
            "{iface}: adopted the existing attachment ({} peer(s) added, {} removed, {} changed)",
            r.peers_added.len(),
            r.peers_removed.len(),
            r.peers_changed.len()
        );
    } else {
        let a = attach::attach(&o.target.request()).await?;
        log::info!(
            "{iface}: attached, decap {}, {} peer(s), {} route(s), tunnel MTU {}",
            a.decap,
            a.peers,
            a.routes.len(),
            a.tunnel_mtu
        );
        for w in &a.warnings {
            log::warn!("{iface}: {w}");
        }
    }
    // Fleet mode: learn from the routing table now, then on every change and periodically.
    if file.fleet.is_some() {
        apply(iface, peers, &file, &mut learned, true).await?;
    }
    let mut hints: Box<dyn futures::Stream<Item = ()> + Unpin> = match &file.fleet {
        Some(_) => Box::new(fleet::subscribe()?),
        None => Box::new(futures::stream::pending()),
    };
    let resync = std::time::Duration::from_secs(file.fleet.as_ref().map_or(3600, |f| f.resync_s));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
    let server = async {
        match metrics {
            Some(l) => {
                log::info!("metrics on http://{}/metrics", l.local_addr()?);
                crate::metrics::serve(l).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(server);
    let ready = format!("attached to {iface} ({})", peers.display());
    notify(&[NotifyState::Ready, NotifyState::Status(&ready)]);
    loop {
        tokio::select! {
            r = &mut server => return r.context("the metrics server stopped"),
            _ = hup.recv() => {
                let mut states = vec![NotifyState::Reloading];
                states.extend(NotifyState::monotonic_usec_now().ok());
                notify(&states);
                let reloaded = match PeersFile::load(peers) {
                    Ok(f) => {
                        file = f;
                        apply(iface, peers, &file, &mut learned, true).await
                    }
                    Err(e) => Err(e.into()),
                };
                let status = match reloaded {
                    Ok(r) => {
                        log::info!(
                            "{iface}: reloaded {}: {} peer(s) added, {} removed, {} changed; routes {} added, {} removed, {} moved",
                            peers.display(),
                            r.peers_added.len(), r.peers_removed.len(), r.peers_changed.len(),
                            r.routes_added, r.routes_removed, r.routes_moved
                        );
                        ready.clone()
                    }
                    Err(e) => {
                        // A bad file is refused before anything changes; a failure while
                        // applying leaves what was applied, which the next reload completes.
                        log::error!("{iface}: reload of {} failed: {e:#}; still serving, fix the file and send SIGHUP again", peers.display());
                        format!("reload failed: {e:#}")
                    }
                };
                notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            }
            Some(()) = hints.next() => {
                // A burst of changes (a BGP session coming up) becomes one resync.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                while hints.next().now_or_never().flatten().is_some() {}
                if let Err(e) = apply(iface, peers, &file, &mut learned, false).await {
                    log::error!("{iface}: fleet sync failed: {e:#}; retried on the next change or in {} s", resync.as_secs());
                }
            }
            _ = tick.tick(), if file.fleet.is_some() => {
                if let Err(e) = apply(iface, peers, &file, &mut learned, false).await {
                    log::error!("{iface}: fleet resync failed: {e:#}");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify(&[NotifyState::Stopping]);
    if o.keep_on_exit {
        log::info!("{iface}: leaving the data path attached (--keep-on-exit)");
        return Ok(());
    }
    let d = attach::detach(iface).await?;
    log::info!("{iface}: detached, {} route(s) removed", d.routes_removed);
    Ok(())
}
