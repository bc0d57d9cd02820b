//! TC ingress on the underlay: the same decapsulation as XDP, for hosts that terminate bulk
//! TCP. It sees GRO-merged packets, so the stack above keeps large packets (an XDP program on
//! a veth turns GSO off on its peer).

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    macros::classifier,
    programs::TcContext,
};
use ipip_common::{Path, Reason, OUTER_HEADER_LEN};
use ipip_ebpf::error::Error;

use crate::{decap::classify, packet::ETH_LEN, stats, verdict};

/// Ethernet + outer + inner IPv4 headers: what classification reads directly.
const HEADERS: u32 = (ETH_LEN + 2 * OUTER_HEADER_LEN) as u32;

#[classifier]
pub fn ipip_tc_decap(ctx: TcContext) -> i32 {
    verdict::tc(&ctx, "tc-ingress", try_decap(&ctx))
}

#[inline(always)]
fn try_decap(ctx: &TcContext) -> Result<(), Error> {
    // GRO-merged skbs may keep headers outside the linear area; bring them in.
    if ctx.data_end() - ctx.data() < HEADERS as usize && ctx.len() >= HEADERS {
        ctx.pull_data(HEADERS)
            .map_err(|_| Error::Drop(Reason::DropHelperFailed))?;
    }
    let accepted = classify(ctx)?;
    ctx.adjust_room(
        -(OUTER_HEADER_LEN as i32),
        BPF_ADJ_ROOM_MAC,
        (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4) as u64,
    )
    .map_err(|_| Error::Drop(Reason::DropHelperFailed))?;
    stats::count_rx(accepted.peer, accepted.inner_len as u64);
    stats::count_path(Path::DecapKernel);
    Ok(())
}
