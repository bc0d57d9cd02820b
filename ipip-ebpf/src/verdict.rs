//! The one place where an [`Error`] becomes a program return code, counted and (when asked
//! for) described.

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_STOLEN},
    programs::{TcContext, XdpContext},
};
use ipip_common::Hook;
use ipip_ebpf::{
    error::{Error, Verdict},
    icmp::ERROR_HEADERS,
};

use crate::{
    packet::{Frame, Packet, ETH_LEN},
    stats, trace,
};

#[inline(always)]
fn account<C: Packet>(ctx: &Frame<C>, hook: Hook, e: Error) -> Verdict {
    let (verdict, reason) = e.verdict();
    if let Some(r) = reason {
        stats::count_reason(r);
        match verdict {
            Verdict::Drop => trace::drop(ctx, hook, r, ETH_LEN),
            // The frame is the answer now; the packet it answers is quoted behind its headers.
            Verdict::Redirect => trace::drop(ctx, hook, r, ETH_LEN + ERROR_HEADERS),
            Verdict::Pass | Verdict::Stolen => {}
        }
    }
    verdict
}

#[inline(always)]
pub fn xdp(ctx: &Frame<XdpContext>, hook: Hook, result: Result<u32, Error>) -> u32 {
    match result {
        Ok(action) => action,
        Err(e) => match account(ctx, hook, e) {
            Verdict::Pass => xdp_action::XDP_PASS,
            // XDP never holds or answers packets; should it ever, they are gone from here.
            Verdict::Drop | Verdict::Stolen | Verdict::Redirect => xdp_action::XDP_DROP,
        },
    }
}

#[inline(always)]
pub fn tc(ctx: &Frame<TcContext>, hook: Hook, result: Result<(), Error>) -> i32 {
    match result {
        Ok(()) => TC_ACT_OK,
        Err(e) => match account(ctx, hook, e) {
            Verdict::Pass => TC_ACT_OK,
            Verdict::Drop => TC_ACT_SHOT,
            // Freed by the stack without counting a drop: the program kept what it needs.
            Verdict::Stolen => TC_ACT_STOLEN,
            // The program called the redirect helper; this is the code it returned.
            Verdict::Redirect => TC_ACT_REDIRECT,
        },
    }
}
