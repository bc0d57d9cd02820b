//! The kernel's FIB, asked from the programs: where a packet would go, with the MACs to put on
//! it, and where this host's answers to a sender go.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT,
        BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_FIB_LOOKUP_SRC,
    },
    programs::XdpContext,
};
use ipip_common::Reason;

use crate::{
    maps::FWD_DEVS,
    packet::{fib_addresses, Frame, Packet},
};

const AF_INET: u8 = 2;

pub enum Fib {
    /// Forward out of `ifindex` (a fast-path interface) with these MACs.
    Forward {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Addressed to this host (or broadcast/multicast): the kernel's business.
    Local,
    /// The fast path can't finish it: hand it to the kernel and count why.
    Kernel(Reason),
}

/// How to ask.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As a packet arriving on `ifindex` that is to be forwarded, with the next hop's MAC.
    Input,
    /// The same, for the route only (no neighbour, no MTU): where would the kernel send it?
    InputRoute,
    /// As a packet this host sends out of `ifindex`: how the kernel path routes the outer
    /// packets it encapsulates (local output, so policy rules on the source agree).
    Output,
}

/// Looks up `src → dst` for a packet of `tot_len` bytes with `tos`, in `mode` on `ifindex`.
#[inline(always)]
pub fn lookup(
    frame: &Frame<XdpContext>,
    src: [u8; 4],
    dst: [u8; 4],
    tos: u8,
    tot_len: u16,
    ifindex: u32,
    mode: Mode,
) -> Fib {
    let flags = match mode {
        Mode::Input => 0,
        Mode::InputRoute => BPF_FIB_LOOKUP_SKIP_NEIGH,
        Mode::Output => BPF_FIB_LOOKUP_OUTPUT,
    };
    let (rc, p) = frame.fib_lookup(
        |p: &mut FibParams| {
            p.family = AF_INET;
            p.ifindex = ifindex;
            p.__bindgen_anon_1.tot_len = tot_len;
            p.__bindgen_anon_2.tos = tos;
            p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
            p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
        },
        flags,
    );
    if rc < 0 {
        return Fib::Kernel(Reason::PassFibNoRoute);
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            if FWD_DEVS.get(p.ifindex).is_none() {
                return Fib::Kernel(Reason::PassEgressNotFast);
            }
            Fib::Forward {
                ifindex: p.ifindex,
                smac: p.smac,
                dmac: p.dmac,
            }
        }
        BPF_FIB_LKUP_RET_NOT_FWDED => Fib::Local,
        BPF_FIB_LKUP_RET_NO_NEIGH => Fib::Kernel(Reason::PassNoNeighbour),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Fib::Kernel(Reason::PassNeedsFrag),
        _ => Fib::Kernel(Reason::PassFibNoRoute),
    }
}

/// Where this host's answer to `dst` goes: out of `ifindex` via `nexthop`, from `src`.
pub struct Reply {
    pub ifindex: u32,
    pub nexthop: [u8; 4],
    /// The route's preferred source (an address of this host); 0 when the interface has none.
    pub src: [u8; 4],
}

/// The route back to `dst`, whose packet arrived on `ifindex` and is being forwarded: the
/// kernel's route and preferred source for it (what `icmp_route_lookup` would pick), or
/// `None` when there is none to forward on (no route, local, forwarding disabled).
#[inline(always)]
pub fn reply_route<C: Packet>(frame: &Frame<C>, dst: [u8; 4], ifindex: u32) -> Option<Reply> {
    let (rc, p) = frame.fib_lookup(
        |p: &mut FibParams| {
            p.family = AF_INET;
            p.ifindex = ifindex;
            p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
        },
        BPF_FIB_LOOKUP_SKIP_NEIGH | BPF_FIB_LOOKUP_SRC,
    );
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    let (src, nexthop) = fib_addresses(&p);
    Some(Reply {
        ifindex: p.ifindex,
        nexthop,
        src,
    })
}
