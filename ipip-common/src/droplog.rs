//! The drop log: one compact record per dropped packet, written by the programs into one ring
//! buffer while `ipip-user log` runs (the `TUNNEL_FLAG_LOG_DROPS` flag), formatted in user
//! space. Formatting in the kernel (aya-log) cost each program hundreds of thousands of
//! verified instructions; a fixed record costs a few dozen.

use crate::Reason;

/// Ring buffer of [`DropRecord`]s.
pub const MAP_DROP_LOG: &str = "drop_log";
/// Its size: a power-of-two multiple of the page size, room for ~7,000 records between reads.
pub const DROP_LOG_BYTES: u32 = 256 * 1024;

/// The program that dropped a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp = 0,
    TcIngress = 1,
    TcEgress = 2,
    XdpLan = 3,
}

impl Hook {
    pub const ALL: [Hook; 4] = [Hook::Xdp, Hook::TcIngress, Hook::TcEgress, Hook::XdpLan];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcIngress => "tc-ingress",
            Hook::TcEgress => "tc-egress",
            Hook::XdpLan => "xdp-lan",
        }
    }

    pub fn from_u32(v: u32) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| *h as u32 == v)
    }
}

/// The record has the IPv4 header's addresses and protocol.
pub const DROP_HAS_IP: u32 = 1 << 0;
/// The packet is IPIP and the record has the inner header's addresses too.
pub const DROP_HAS_INNER: u32 = 1 << 1;

/// One dropped packet. Addresses in network order; those not covered by `flags` are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropRecord {
    /// A [`Reason`] discriminant.
    pub reason: u32,
    /// A [`Hook`] discriminant.
    pub hook: u32,
    pub flags: u32,
    /// The (outer) IPv4 protocol.
    pub proto: u32,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub inner_src: [u8; 4],
    pub inner_dst: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<DropRecord>() == 32);

impl DropRecord {
    pub fn reason(&self) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| *r as u32 == self.reason)
    }
    pub fn hook(&self) -> Option<Hook> {
        Hook::from_u32(self.hook)
    }
}
