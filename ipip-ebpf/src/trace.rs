//! Drop descriptions through aya-log, only while `ipip-user log` asks for them: the flag check
//! is on the drop path only, never on the forwarding path.

use aya_log_ebpf::warn;
use ipip_common::{Reason, IPPROTO_IPIP, OUTER_HEADER_LEN, TUNNEL_FLAG_LOG_DROPS};
use network_types::ip::Ipv4Hdr;

use crate::{
    maps::CONFIG,
    packet::{Frame, Packet},
};

/// Logs `reason` with the addresses of the IPv4 header at `ip_off`, if logging is on.
#[inline(always)]
pub fn drop<C: Packet>(ctx: &Frame<C>, hook: &str, reason: Reason, ip_off: usize) {
    let on = CONFIG
        .get(0)
        .is_some_and(|c| c.flags & TUNNEL_FLAG_LOG_DROPS != 0);
    if !on {
        return;
    }
    let Some(ip) = ctx.get::<Ipv4Hdr>(ip_off) else {
        warn!(ctx, "{} drop {}: short frame", hook, reason.name());
        return;
    };
    let (src, dst, proto) = (ip.src_addr, ip.dst_addr, ip.proto);
    // For IPIP the inner addresses say who is being impersonated.
    match ctx
        .get::<Ipv4Hdr>(ip_off + OUTER_HEADER_LEN)
        .filter(|_| proto == IPPROTO_IPIP)
    {
        Some(inner) => {
            let (isrc, idst) = (inner.src_addr, inner.dst_addr);
            warn!(
                ctx,
                "{} drop {}: outer {:i} -> {:i}, inner {:i} -> {:i}",
                hook,
                reason.name(),
                src,
                dst,
                isrc,
                idst
            );
        }
        None => warn!(
            ctx,
            "{} drop {}: {:i} -> {:i}",
            hook,
            reason.name(),
            src,
            dst
        ),
    }
}
