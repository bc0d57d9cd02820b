//! ipip-user: loads ipip's eBPF data path, fills its maps from a peers file, pins everything
//! under /sys/fs/bpf/ipip and reports the counters.

pub mod attach;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod doctor;
pub mod droplog;
pub mod fleet;
pub mod forward_pmtu;
pub mod hook;
pub mod lock;
pub mod metrics;
pub mod netif;
pub mod pins;
pub mod plan;
pub mod privileges;
pub mod reload;
pub mod service;
pub mod stats;
pub mod status;
