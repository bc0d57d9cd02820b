//! Drop records (see ipip-common's droplog), only while `ipip-user log` asks for them: the
//! flag check is on the drop path only, never on the forwarding path.

use ipip_common::{
    DropRecord, Hook, Reason, DROP_HAS_INNER, DROP_HAS_IP, IPPROTO_IPIP, OUTER_HEADER_LEN,
    TUNNEL_FLAG_LOG_DROPS,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    maps::{CONFIG, DROP_LOG},
    packet::{Frame, Packet},
};

/// Records `reason` with the addresses of the IPv4 header at `ip_off` (and of the inner header
/// for IPIP), if logging is on. A full ring buffer loses the record, never the verdict.
#[inline(always)]
pub fn drop<C: Packet>(ctx: &Frame<C>, hook: Hook, reason: Reason, ip_off: usize) {
    let on = CONFIG
        .get(0)
        .is_some_and(|c| c.flags & TUNNEL_FLAG_LOG_DROPS != 0);
    if !on {
        return;
    }
    let mut rec = DropRecord {
        reason: reason as u32,
        hook: hook as u32,
        ..DropRecord::default()
    };
    if let Some(ip) = ctx.get::<Ipv4Hdr>(ip_off) {
        rec.flags = DROP_HAS_IP;
        rec.proto = ip.proto as u32;
        rec.src = ip.src_addr;
        rec.dst = ip.dst_addr;
        if ip.proto == IPPROTO_IPIP {
            if let Some(inner) = ctx.get::<Ipv4Hdr>(ip_off + OUTER_HEADER_LEN) {
                rec.flags |= DROP_HAS_INNER;
                rec.inner_src = inner.src_addr;
                rec.inner_dst = inner.dst_addr;
            }
        }
    }
    let _ = DROP_LOG.output::<DropRecord>(&rec, 0);
}
