//! Harness for ipip's end-to-end tests and for the `cargo xtask run` demo: network namespaces,
//! the seed's topologies, the `ipip-user` binary, traffic generators and raw IPIP packets; and
//! the packet-test fixture kit (frames, `BPF_PROG_TEST_RUN`, counter diffs, case tables).

pub mod cmd;
pub mod fixture;
pub mod generator;
pub mod ipip;
pub mod netns;
pub mod packet;
pub mod perf;
pub mod query;
pub mod topology;
pub mod traffic;
pub mod vm;

pub use ipip::{DataPath, IpipUser};
pub use netns::Netns;
pub use topology::{Cluster, Gateways, HostToHost, Node, Underlay};

/// Fails with a clear message unless the process runs as root (network namespaces, XDP and
/// bpffs need it).
pub fn require_root() -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        anyhow::bail!(
            "ipip's end-to-end tests must run as root (they create network namespaces and \
             attach XDP/TC programs); run `sudo -E cargo xtask test`"
        )
    }
}
