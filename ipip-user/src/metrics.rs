//! Prometheus metrics: every counter of every attachment in this namespace, read from the
//! pinned maps at scrape time (nothing is cached, nothing runs between scrapes), in the
//! text exposition format built by `prometheus-client`. A scrape reads each per-peer and
//! per-reason map entry once: O(peers + reasons), and the data path never waits for it.
//!
//! | metric | labels |
//! | --- | --- |
//! | `ipip_peer_packets_total`, `ipip_peer_bytes_total` | interface, peer, direction (rx/tx) |
//! | `ipip_reason_packets_total` | interface, reason (drops and hand-offs, see `stats`) |
//! | `ipip_path_packets_total` | interface, direction (encap/decap), path (fast/kernel) |
//! | `ipip_peer_tunnel_mtu_bytes` | interface, peer: the MTU in force (learned or configured) |
//! | `ipip_peers` | interface |
//! | `ipip_attachment_info` (1) | interface, version, decap, xdp_mode, tunnel_mtu |

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{body::Bytes, Request, Response, StatusCode};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{pins::PinDir, stats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    interface: String,
    peer: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerOnly {
    interface: String,
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    interface: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    interface: String,
    direction: &'static str,
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    interface: String,
    version: &'static str,
    decap: &'static str,
    xdp_mode: &'static str,
    tunnel_mtu: String,
}

/// The exposition of every attachment in this namespace, as of now.
pub fn render() -> Result<String> {
    let snaps = PinDir::list()?
        .iter()
        .map(stats::read)
        .collect::<Result<Vec<_>>>()?;
    Ok(encode(&snaps))
}

/// `snaps` in the text format (pure: the test of the names and labels runs without a kernel).
pub fn encode(snaps: &[stats::Snapshot]) -> String {
    let mut reg = Registry::with_prefix("ipip");
    let packets = Family::<PeerLabels, Counter>::default();
    let bytes = Family::<PeerLabels, Counter>::default();
    let reasons = Family::<ReasonLabels, Counter>::default();
    let paths = Family::<PathLabels, Counter>::default();
    let mtu = Family::<PeerOnly, Gauge>::default();
    let peers = Family::<InterfaceLabels, Gauge>::default();
    let info = Family::<InfoLabels, Gauge>::default();
    for s in snaps {
        let iface = &s.interface;
        for p in &s.peers {
            for (direction, n, b) in [
                ("rx", p.rx_packets, p.rx_bytes),
                ("tx", p.tx_packets, p.tx_bytes),
            ] {
                let l = PeerLabels {
                    interface: iface.clone(),
                    peer: p.name.clone(),
                    direction,
                };
                packets.get_or_create(&l).inc_by(n);
                bytes.get_or_create(&l).inc_by(b);
            }
            mtu.get_or_create(&PeerOnly {
                interface: iface.clone(),
                peer: p.name.clone(),
            })
            .set(p.learned_mtu.unwrap_or(p.mtu).into());
        }
        for (reason, n) in &s.reasons {
            reasons
                .get_or_create(&ReasonLabels {
                    interface: iface.clone(),
                    reason,
                })
                .inc_by(*n);
        }
        for (name, n) in &s.paths {
            // `encap_fast` → direction encap, path fast.
            let (direction, path) = name.split_once('_').unwrap_or((name, ""));
            paths
                .get_or_create(&PathLabels {
                    interface: iface.clone(),
                    direction,
                    path,
                })
                .inc_by(*n);
        }
        peers
            .get_or_create(&InterfaceLabels {
                interface: iface.clone(),
            })
            .set(s.peers.len() as i64);
        info.get_or_create(&InfoLabels {
            interface: iface.clone(),
            version: env!("CARGO_PKG_VERSION"),
            decap: s.decap,
            xdp_mode: s.xdp_mode.unwrap_or("none"),
            tunnel_mtu: s.tunnel_mtu.map_or_else(String::new, |m| m.to_string()),
        })
        .set(1);
    }
    reg.register(
        "peer_packets",
        "Packets tunnelled to (tx) and from (rx) each peer",
        packets,
    );
    reg.register(
        "peer_bytes",
        "Inner bytes tunnelled to (tx) and from (rx) each peer",
        bytes,
    );
    reg.register(
        "reason_packets",
        "Packets dropped or handed to the kernel, by reason (see `ipip-user stats --all`)",
        reasons,
    );
    reg.register(
        "path_packets",
        "Packets per direction handled by the XDP fast path or the kernel",
        paths,
    );
    reg.register(
        "peer_tunnel_mtu_bytes",
        "Tunnel MTU toward each peer now: learned from ICMP, else configured",
        mtu,
    );
    reg.register("peers", "Peers configured", peers);
    reg.register(
        "attachment_info",
        "One per attachment: version, decap hook, XDP mode, tunnel MTU",
        info,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .expect("writing to a String cannot fail");
    out
}

/// The content type of [`encode`]'s output (prometheus-client writes OpenMetrics text).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn handle(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let reply = |status, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .expect("static headers are valid")
    };
    Ok(match req.uri().path() {
        "/metrics" => match render() {
            Ok(body) => reply(StatusCode::OK, CONTENT_TYPE, body),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("reading the pinned maps: {e:#}\n"),
            ),
        },
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            "ipip-user metrics: GET /metrics\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

/// Binds `addr` (so that a taken port fails at once, with the address in the message).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} for metrics (is it taken? `ss -ltnp`)"))
}

/// Serves `/metrics` on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener) -> Result<()> {
    loop {
        let (stream, peer) = listener.accept().await.context("accepting a scrape")?;
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, hyper::service::service_fn(handle))
                .await
            {
                log::debug!("metrics connection from {peer}: {e}");
            }
        });
    }
}
