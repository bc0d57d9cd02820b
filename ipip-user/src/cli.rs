//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ipip-user",
    version,
    about = "IPIP (RFC 2003) tunnel endpoint with an XDP/TC eBPF data path",
    long_about = "IPIP (RFC 2003, IPv4 in IPv4) tunnel endpoint whose data path runs as XDP and TC \
eBPF programs. `attach` loads it onto an underlay interface from a peers file and exits; the data \
path stays, pinned under /sys/fs/bpf/ipip/. Wire-compatible with Linux's `ip tunnel ... mode ipip`.",
    after_help = "Examples:
  ipip-user check peers.toml                   validate a peers file, touch nothing
  ipip-user attach eth0 --peers peers.toml     load, attach, pin, install routes
  ipip-user status                             what is attached in this namespace
  ipip-user stats eth0                         per-peer and per-reason counters
  ipip-user stats --json                       the same for scripts
  ipip-user log eth0                           print each dropped packet as it happens
  ipip-user reload eth0 --peers peers.toml     apply a changed file, losing nothing
  ipip-user detach eth0                        remove exactly what attach made
  ipip-user run eth0 --peers p.toml            foreground service (systemd Type=notify)
  ipip-user metrics --listen 127.0.0.1:9156    Prometheus metrics of every attachment
  ipip-user prune                              remove pins of deleted namespaces
  ipip-user doctor eth0                        find out why nothing gets through
  ipip-user --netns calculon stats             run inside network namespace calculon

Diagnostics: RUST_LOG=debug ipip-user ..."
)]
pub struct Cli {
    /// Run in the named network namespace (/run/netns/NAME), like `ip -n NAME`.
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// What to attach, and how: shared by `attach` and `run`.
#[derive(clap::Args, Debug, Clone)]
pub struct AttachOpts {
    /// Underlay interface (the one that reaches the peers).
    pub interface: String,
    /// Peers file (TOML): [tunnel] settings and one [[peer]] per remote endpoint.
    #[arg(long, short, value_name = "FILE")]
    pub peers: PathBuf,
    /// Where to decapsulate. auto (the default) picks per interface and says why: TC
    /// ingress on veth and devices without native XDP (keeps GSO and GRO-merged
    /// packets), XDP on NICs with native XDP and with the fast path (--lan).
    #[arg(long, value_enum, default_value = "auto")]
    pub decap: DecapArg,
    /// XDP attach mode (with --decap xdp).
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: XdpModeArg,
    /// A gateway's LAN interface that gets the XDP fast path (repeatable; the peers
    /// file's [tunnel] lan adds more). Forwarded traffic is then encapsulated and
    /// decapsulated in XDP with bpf_fib_lookup + XDP_REDIRECT.
    #[arg(long, value_name = "IFACE")]
    pub lan: Vec<String>,
}

impl AttachOpts {
    pub fn request(&self) -> crate::attach::AttachRequest<'_> {
        crate::attach::AttachRequest {
            interface: &self.interface,
            peers: &self.peers,
            decap: self.decap,
            xdp_mode: self.xdp_mode,
            lans: &self.lan,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the data path to an underlay interface, fill it from a peers file, install
    /// routes, pin everything, and exit.
    #[command(
        after_help = "Examples:\n  ipip-user attach eth0 --peers /etc/ipip/peers.toml\n  ipip-user attach eth0 --peers peers.toml --lan eth1     # gateway with the XDP fast path"
    )]
    Attach {
        #[command(flatten)]
        target: AttachOpts,
        /// Print what was done as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run in the foreground as a service: attach (or adopt an intact attachment), reload
    /// the file on SIGHUP, detach on SIGTERM/SIGINT; tells systemd (Type=notify) when it is
    /// ready, reloading and stopping.
    #[command(
        after_help = "Examples:\n  ipip-user run eth0 --peers /etc/ipip/eth0.toml --metrics 127.0.0.1:9156\n  systemctl start ipip@eth0     # the unit in contrib/systemd runs exactly this\n\nThe data path is pinned and does not depend on this process: if it dies, traffic keeps\nflowing and the next `run` adopts the attachment. --keep-on-exit leaves it attached on\nSIGTERM too (for restarts that must not drop a packet)."
    )]
    Run {
        #[command(flatten)]
        target: AttachOpts,
        /// Serve Prometheus metrics on ADDR (host:port), at /metrics.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// On SIGTERM/SIGINT, leave the data path attached (the next `run` adopts it).
        #[arg(long)]
        keep_on_exit: bool,
    },
    /// Serve every attachment's counters in the Prometheus text format until Ctrl-C.
    #[command(
        after_help = "Example:\n  ipip-user metrics --listen 127.0.0.1:9156\n  curl -s http://127.0.0.1:9156/metrics"
    )]
    Metrics {
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
    },
    /// Apply a changed peers file to an attached interface without losing a packet: only
    /// what changed is touched (peers keep their counters).
    #[command(
        after_help = "Example:\n  ipip-user reload eth0 --peers /etc/ipip/peers.toml\n\nPeers, routes and per-peer settings (ttl, tos, pmtudisc) change live; local, address and\nlan need detach and attach. The maps keep the size attach gave them ([tunnel] max_peers,\nmax_routes)."
    )]
    Reload {
        interface: String,
        #[arg(long, short, value_name = "FILE")]
        peers: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove the programs, pins, routes and address that attach made.
    Detach {
        interface: String,
        #[arg(long)]
        json: bool,
    },
    /// Per-peer traffic and every drop / hand-off counter, from the pinned maps.
    Stats {
        /// Only this interface (default: every attachment in this namespace).
        interface: Option<String>,
        /// One JSON array of per-interface objects.
        #[arg(long)]
        json: bool,
        /// Print again every SECONDS, with per-second rates, until Ctrl-C (JSON: one array
        /// per line).
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
        /// Every drop/hand-off reason, zero or not (default: only those that moved).
        #[arg(long)]
        all: bool,
    },
    /// Describe each packet the data path drops (reason, addresses) as it happens.
    #[command(after_help = "Example:\n  ipip-user log eth0 --seconds 30")]
    Log {
        interface: String,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// One JSON object per record and line.
        #[arg(long)]
        json: bool,
    },
    /// Internal: keeps `log`'s share of the drop-log lock and switches records off after the
    /// last `log` ends, even one killed by a signal.
    #[command(name = "__log-guard", hide = true)]
    LogGuard { interface: String },
    /// Remove the pins that deleted network namespaces left (attached, then `ip netns del`
    /// without detach); `status` lists them as orphaned.
    Prune {
        #[arg(long)]
        json: bool,
    },
    /// "It all looks good, but nothing happens": check, in order, what an expert would
    /// (interface, addresses, way to each peer, routes, forwarding, rp_filter, firewall,
    /// foreign programs, moving drop counters) and say what is wrong and how to fix it.
    /// Exits 1 when it found a problem.
    #[command(
        after_help = "Example:\n  ipip-user doctor eth0\n  ipip-user doctor eth0 --seconds 10 --json"
    )]
    Doctor {
        interface: String,
        /// How long to watch the drop counters.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        #[arg(long)]
        json: bool,
    },
    /// What is attached in this network namespace.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Validate a peers file without touching anything.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// `--decap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DecapArg {
    /// Pick per interface: TC ingress on veth and on devices without native XDP, XDP on
    /// NICs with native XDP and wherever the fast path (--lan) needs it.
    Auto,
    /// XDP: best packet rate on NICs with native XDP; needed by the fast path.
    Xdp,
    /// TC ingress: sees GRO-merged packets; best for veth and virtual devices.
    Tc,
}

/// Which XDP mode to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    Auto,
    /// Driver mode only; fail if the driver can't.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}
