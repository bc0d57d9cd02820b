//! The kernel's FIB, asked from XDP: where a packet would go, with the MACs to put on it.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT,
        BPF_FIB_LOOKUP_SKIP_NEIGH,
    },
    programs::XdpContext,
};
use ipip_common::Reason;

use crate::{maps::FWD_DEVS, packet::Frame};

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
