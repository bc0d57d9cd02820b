//! Bounds-checked packet access: the one place that turns an offset into a reference.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: [u8; 2] = [0x08, 0x00];

/// The Ethernet header as bytes: alignment 1, so any packet offset is a valid reference.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthRaw {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

/// A program context with a linear packet window `[data, data_end)`.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Length of the whole packet, including any part outside the linear window.
    fn len(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }
}

/// A mutable reference to a `T` at byte `off` of the packet, or `None` if it does not fit.
///
/// Every pointer derived from the packet is invalidated by `bpf_xdp_adjust_head` and
/// `bpf_skb_adjust_room`: callers re-derive them after those helpers.
#[inline(always)]
#[allow(clippy::mut_from_ref)] // packet memory is not owned by the context object
pub fn ref_mut_at<T>(ctx: &impl Packet, off: usize) -> Option<&mut T> {
    let start = ctx.data() + off;
    if start + size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: [start, start + size_of::<T>()) lies inside the packet (checked above, which is
    // also what the verifier checks); the header types used here are `repr(C)` byte arrays with
    // alignment 1 or read with unaligned-safe field types, and any bit pattern is valid.
    Some(unsafe { &mut *(start as *mut T) })
}
