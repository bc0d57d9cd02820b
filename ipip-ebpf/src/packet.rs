//! The one place that touches packet memory: [`Frame`], a cursor over the packet of one
//! program run. It owns the program context; every reference into the packet borrows the
//! frame, and everything that moves or resizes the packet (`adjust_head`, `adjust_room`,
//! `pull`, `change_tail`, `store`) takes it mutably. So two live `&mut` into the packet, or a
//! reference that outlives a resize, don't compile: the borrow checker enforces what the
//! helpers' "every packet pointer is invalid now" documentation asks for.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as bpf_fib_lookup_params, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
        BPF_F_INGRESS, TC_ACT_REDIRECT,
    },
    helpers::{
        bpf_csum_diff, bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail,
        bpf_skb_load_bytes, bpf_skb_store_bytes, bpf_xdp_adjust_head,
    },
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use ipip_common::Reason;
use ipip_ebpf::{checksum, error::Error};

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: [u8; 2] = [0x08, 0x00];
pub const AF_INET: u32 = 2;

/// The Ethernet header as bytes: alignment 1, so any packet offset is a valid reference.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthRaw {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

/// A program context with a linear packet window `[data, data_end)`.
pub trait Packet: EbpfContext {
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

/// The packet of one program run (see the module note).
pub struct Frame<C> {
    ctx: C,
}

const HELPER_FAILED: Error = Error::Drop(Reason::DropHelperFailed);

impl<C: Packet> Frame<C> {
    #[inline(always)]
    pub fn new(ctx: C) -> Self {
        Self { ctx }
    }

    /// Length of the whole packet, including any part outside the linear window.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.ctx.len()
    }

    /// Bytes directly addressable (the linear window).
    #[inline(always)]
    pub fn linear_len(&self) -> usize {
        self.ctx.data_end() - self.ctx.data()
    }

    /// Where a `T` at byte `off` would start, if it lies inside the linear window.
    #[inline(always)]
    fn ptr_at<T>(&self, off: usize) -> Option<usize> {
        let start = self.ctx.data() + off;
        if start + size_of::<T>() > self.ctx.data_end() {
            return None;
        }
        Some(start)
    }

    /// The `T` at byte `off`, borrowed from the frame, or `None` if it does not fit.
    #[inline(always)]
    pub fn get<T: Copy>(&self, off: usize) -> Option<&T> {
        let p = self.ptr_at::<T>(off)?;
        // SAFETY: [p, p + size_of::<T>()) lies inside the packet (checked above, which is also
        // what the verifier checks); the header types used here are `repr(C)` byte arrays or
        // structs of byte arrays with alignment 1, and any bit pattern is valid. The reference
        // borrows the frame, so it ends before anything can move the packet.
        Some(unsafe { &*(p as *const T) })
    }

    /// The `T` at byte `off`, mutably borrowed from the frame (so the only live reference).
    #[inline(always)]
    pub fn get_mut<T: Copy>(&mut self, off: usize) -> Option<&mut T> {
        let p = self.ptr_at::<T>(off)?;
        // SAFETY: as in `get`; the exclusive borrow of the frame makes it the only reference.
        Some(unsafe { &mut *(p as *mut T) })
    }

    /// The Internet-checksum sum (16-bit big-endian words, unfolded) of the `N` bytes at
    /// `off` (`N` a multiple of 4, at most 512), if they lie inside the linear window.
    #[inline(always)]
    pub fn sum<const N: usize>(&self, off: usize) -> Option<u32> {
        let p = self.ptr_at::<[u8; N]>(off)?;
        // SAFETY: [p, p + N) lies inside the packet (checked above); the helper only reads it.
        let rc = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, N as u32, 0) };
        if rc < 0 {
            return None;
        }
        // csum_partial adds native-order (little-endian) words: the same sum, bytes swapped.
        Some(checksum::fold(rc as u32).swap_bytes() as u32)
    }

    /// `bpf_fib_lookup` with the request `fill` writes into a zeroed parameter block; returns
    /// the helper's code and the answer.
    #[inline(always)]
    pub fn fib_lookup(
        &self,
        fill: impl FnOnce(&mut bpf_fib_lookup_params),
        flags: u32,
    ) -> (i64, bpf_fib_lookup_params) {
        // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
        let mut p: bpf_fib_lookup_params = unsafe { core::mem::zeroed() };
        fill(&mut p);
        // SAFETY: `p` lives on our stack for the duration of the call; its size is passed.
        let rc = unsafe {
            bpf_fib_lookup(
                self.ctx.as_ptr(),
                &mut p,
                size_of::<bpf_fib_lookup_params>() as i32,
                flags,
            )
        };
        (rc, p)
    }
}

/// Lets helpers that take the context (FIB lookups) use the frame; a raw pointer
/// gives no packet access without `unsafe`.
impl<C: Packet> EbpfContext for Frame<C> {
    #[inline(always)]
    fn as_ptr(&self) -> *mut c_void {
        self.ctx.as_ptr()
    }
}

impl Frame<XdpContext> {
    /// Moves the packet start by `delta` bytes (positive: drops bytes in front).
    #[inline(always)]
    pub fn adjust_head(&mut self, delta: i32) -> Result<(), Error> {
        // SAFETY: plain helper call on our own context; every packet reference borrowed from
        // the frame is dead here (we hold it mutably).
        if unsafe { bpf_xdp_adjust_head(self.ctx.ctx, delta) } != 0 {
            return Err(HELPER_FAILED);
        }
        Ok(())
    }

    #[inline(always)]
    pub fn ingress_ifindex(&self) -> u32 {
        self.ctx.ingress_ifindex() as u32
    }
}

impl Frame<TcContext> {
    /// A copy of the `T` at `off`, read through the skb (works outside the linear window).
    #[inline(always)]
    pub fn load<T>(&self, off: usize) -> Option<T> {
        self.ctx.load(off).ok()
    }

    /// A copy of the `T` at `off`: straight from the linear window when it is there (the
    /// common case, no helper call), else through the skb.
    #[inline(always)]
    pub fn read<T: Copy>(&self, off: usize) -> Option<T> {
        match self.get::<T>(off) {
            Some(v) => Some(*v),
            None => self.load(off),
        }
    }

    /// Writes `v` at `off` through the skb (`BPF_F_RECOMPUTE_CSUM` keeps a checksum-complete
    /// skb consistent).
    #[inline(always)]
    pub fn store<T>(&mut self, off: usize, v: &T, flags: u64) -> Result<(), Error> {
        self.ctx.store(off, v, flags).map_err(|_| HELPER_FAILED)
    }

    /// Makes the first `len` bytes linear.
    #[inline(always)]
    pub fn pull(&mut self, len: u32) -> Result<(), Error> {
        self.ctx.pull_data(len).map_err(|_| HELPER_FAILED)
    }

    #[inline(always)]
    pub fn adjust_room(&mut self, len_diff: i32, mode: u32, flags: u64) -> Result<(), Error> {
        self.ctx
            .adjust_room(len_diff, mode, flags)
            .map_err(|_| HELPER_FAILED)
    }

    /// Sets the packet length to `len` bytes.
    #[inline(always)]
    pub fn change_tail(&mut self, len: u32) -> Result<(), Error> {
        // SAFETY: plain helper call on our own skb; no packet reference is live (see above).
        if unsafe { bpf_skb_change_tail(self.ctx.skb.skb, len, 0) } != 0 {
            return Err(HELPER_FAILED);
        }
        Ok(())
    }

    /// Copies `len` bytes (1..=N, the caller keeps the verifier convinced) from `off` into
    /// `dst`.
    #[inline(always)]
    pub fn load_into<const N: usize>(
        &self,
        off: usize,
        dst: &mut [u8; N],
        len: u32,
    ) -> Result<(), Error> {
        // SAFETY: `dst` holds N ≥ len bytes; the helper bounds-checks the skb side.
        let rc = unsafe {
            bpf_skb_load_bytes(
                self.ctx.skb.skb as *const _,
                off as u32,
                dst.as_mut_ptr() as *mut _,
                len,
            )
        };
        if rc != 0 {
            return Err(Error::Drop(Reason::DropMalformedOuter));
        }
        Ok(())
    }

    /// Writes the first `len` bytes (1..=N) of `src` at `off`.
    #[inline(always)]
    pub fn store_from<const N: usize>(
        &mut self,
        off: usize,
        src: &[u8; N],
        len: u32,
        flags: u64,
    ) -> Result<(), Error> {
        // SAFETY: `src` holds N ≥ len readable bytes; the helper bounds-checks the skb side.
        let rc = unsafe {
            bpf_skb_store_bytes(
                self.ctx.skb.skb,
                off as u32,
                src.as_ptr() as *const _,
                len,
                flags,
            )
        };
        if rc != 0 {
            return Err(HELPER_FAILED);
        }
        Ok(())
    }

    /// GSO segment count and size (0 when not GSO).
    #[inline(always)]
    pub fn gso(&self) -> (u32, u32) {
        // SAFETY: reading plain integer fields of our own __sk_buff.
        unsafe { ((*self.ctx.skb.skb).gso_segs, (*self.ctx.skb.skb).gso_size) }
    }

    /// The interface the skb is on (at egress: the one it is being sent out of).
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        // SAFETY: reading a plain integer field of our own __sk_buff.
        unsafe { (*self.ctx.skb.skb).ifindex }
    }

    /// The interface the packet arrived on, 0 for one this host originated (skb_iif).
    #[inline(always)]
    pub fn ingress_ifindex(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.ctx.skb.skb).ingress_ifindex }
    }

    /// Redirects the packet into `ifindex`'s receive path, as if it had arrived there; the
    /// program then returns the helper's code (TC_ACT_REDIRECT).
    #[inline(always)]
    pub fn redirect_ingress(&mut self, ifindex: u32) -> Result<i32, Error> {
        // SAFETY: plain helper call; the redirect happens after the program returns.
        let rc = unsafe { bpf_redirect(ifindex, BPF_F_INGRESS as u64) };
        if rc != TC_ACT_REDIRECT as i64 {
            return Err(HELPER_FAILED);
        }
        Ok(rc as i32)
    }

    /// Redirects the packet out of `ifindex` toward IPv4 next hop `nexthop`, the neighbour
    /// subsystem filling in the MACs (and resolving the next hop if needed).
    #[inline(always)]
    pub fn redirect_neigh(&mut self, ifindex: u32, nexthop: [u8; 4]) -> Result<i32, Error> {
        let mut nh = bpf_redir_neigh {
            nh_family: AF_INET,
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                ipv4_nh: u32::from_ne_bytes(nexthop),
            },
        };
        // SAFETY: `nh` lives on our stack for the call; its size is passed.
        let rc =
            unsafe { bpf_redirect_neigh(ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0) };
        if rc != TC_ACT_REDIRECT as i64 {
            return Err(HELPER_FAILED);
        }
        Ok(rc as i32)
    }

    /// Whether the kernel took a VLAN tag off into the skb's metadata.
    #[inline(always)]
    pub fn vlan_present(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*self.ctx.skb.skb).vlan_present != 0 }
    }
}

/// The IPv4 source and destination of a FIB answer (the destination replaced by the next hop
/// when there is one).
#[inline(always)]
pub fn fib_addresses(p: &bpf_fib_lookup_params) -> ([u8; 4], [u8; 4]) {
    // SAFETY: reading IPv4 members of unions of plain integers the caller's request was made
    // with (AF_INET), which the helper filled in.
    let (src, dst) = unsafe { (p.__bindgen_anon_3.ipv4_src, p.__bindgen_anon_4.ipv4_dst) };
    (src.to_ne_bytes(), dst.to_ne_bytes())
}

/// Helpers without packet or map access.
pub mod kernel {
    /// CLOCK_MONOTONIC in nanoseconds.
    #[inline(always)]
    pub fn now_ns() -> u64 {
        // SAFETY: helper without arguments.
        unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
    }

    /// A random IP ID (RFC 6864: any ID serves atomic datagrams, a random one the others).
    #[inline(always)]
    pub fn random_id() -> u16 {
        // SAFETY: helper without arguments.
        unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() as u16 }
    }
}
