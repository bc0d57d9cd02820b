//! The data path's pure logic: checksum arithmetic, outer-header construction, ECN rules and
//! the error → verdict mapping. It has no dependency on aya so that it compiles on the host and
//! gets plain unit tests; the programs in `main.rs` (BPF target only) call into it.
#![cfg_attr(not(test), no_std)]

pub mod checksum;
pub mod ecn;
pub mod error;
pub mod forward;
pub mod icmp;
pub mod outer;
pub mod pmtu;
