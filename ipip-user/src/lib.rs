//! ipip-user: loads ipip's eBPF data path, fills its maps from a peers file, pins everything
//! under /sys/fs/bpf/ipip and reports the counters.

pub mod config;
pub mod datapath;
pub mod plan;
