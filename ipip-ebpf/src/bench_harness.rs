//! The bench harness (`cargo xtask bench`, per-packet costs), a separate object that the data
//! path never loads. `BPF_PROG_TEST_RUN` with `repeat` hands the same frame to every repeat,
//! so a program that rewrites it (decap, encap) would see its own output from the second
//! repeat on. The harness restores the input frame byte for byte (length through
//! adjust_head / adjust_room, bytes through store_bytes), then tail-calls the program under
//! test; its own cost is measured the same way with a target that only returns.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod harness {
    use aya_ebpf::{
        bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, TC_ACT_OK, TC_ACT_SHOT},
        helpers::{
            bpf_skb_adjust_room, bpf_skb_store_bytes, bpf_xdp_adjust_head, bpf_xdp_store_bytes,
        },
        macros::{classifier, map, xdp},
        maps::{Array, ProgramArray},
        programs::{TcContext, XdpContext},
    };
    use ipip_common::{BenchFrame, BENCH_FRAME_MAX, IPPROTO_IPIP, OUTER_HEADER_LEN};
    use ipip_ebpf::checksum;

    #[map(name = "bench_frame")]
    static FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);
    #[map(name = "bench_xdp_target")]
    static XDP_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);
    #[map(name = "bench_tc_target")]
    static TC_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

    /// The stored frame and its length, bounded for the verifier: a mask (a range check can
    /// land on a copy of the register the helper is then passed) and a test for zero.
    fn stored() -> Option<(&'static BenchFrame, u32)> {
        let f = FRAME.get(0)?;
        let len = f.len & (BENCH_FRAME_MAX as u32 - 1);
        if len == 0 {
            return None;
        }
        Some((f, len))
    }

    #[xdp]
    pub fn bench_xdp(ctx: XdpContext) -> u32 {
        let Some((f, len)) = stored() else {
            return xdp_action::XDP_ABORTED;
        };
        let cur = (ctx.data_end() - ctx.data()) as i32;
        // SAFETY: helpers on the context the kernel handed us; the source of the store is
        // the map value, at least `len` bytes long (checked above).
        unsafe {
            if cur != len as i32 && bpf_xdp_adjust_head(ctx.ctx, cur - len as i32) != 0 {
                return xdp_action::XDP_ABORTED;
            }
            if bpf_xdp_store_bytes(ctx.ctx, 0, f.bytes.as_ptr() as *mut _, len) != 0 {
                return xdp_action::XDP_ABORTED;
            }
            XDP_TARGET.tail_call(&ctx, 0);
        }
        // Only reached when slot 0 is empty.
        xdp_action::XDP_ABORTED
    }

    #[classifier]
    pub fn bench_tc(ctx: TcContext) -> i32 {
        let Some((f, len)) = stored() else {
            return TC_ACT_SHOT;
        };
        let cur = ctx.len() as i32;
        // SAFETY: as for bench_xdp.
        unsafe {
            if cur != len as i32
                && bpf_skb_adjust_room(ctx.skb.skb, len as i32 - cur, BPF_ADJ_ROOM_MAC, 0) != 0
            {
                return TC_ACT_SHOT;
            }
            if bpf_skb_store_bytes(ctx.skb.skb, 0, f.bytes.as_ptr() as *const _, len, 0) != 0 {
                return TC_ACT_SHOT;
            }
            TC_TARGET.tail_call(&ctx, 0);
        }
        TC_ACT_SHOT
    }

    #[xdp]
    pub fn bench_xdp_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// The live-frames traffic generator: every frame goes out of the interface it was
    /// "received" on.
    #[xdp]
    pub fn bench_xdp_tx(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_TX
    }

    #[classifier]
    pub fn bench_tc_ok(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    /// The least an IPIP encapsulation must do: room for the header, the Ethernet header
    /// moved in front of it, a 20-byte header written and its checksum computed.
    #[xdp]
    pub fn bench_xdp_ref_encap(ctx: XdpContext) -> u32 {
        const ETH: usize = 14;
        // SAFETY: adjust_head on our context; every access below is bounds-checked against
        // data_end first, as the verifier requires.
        unsafe {
            if bpf_xdp_adjust_head(ctx.ctx, -(OUTER_HEADER_LEN as i32)) != 0 {
                return xdp_action::XDP_ABORTED;
            }
            let (data, end) = (ctx.data(), ctx.data_end());
            if data + ETH + OUTER_HEADER_LEN + ETH > end {
                return xdp_action::XDP_ABORTED;
            }
            let mac = core::ptr::read_unaligned((data + OUTER_HEADER_LEN) as *const [u8; ETH]);
            core::ptr::write_unaligned(data as *mut [u8; ETH], mac);
            let tot = ((end - data - ETH) as u16).to_be_bytes();
            let mut h: [u8; OUTER_HEADER_LEN] = [
                0x45,
                0,
                tot[0],
                tot[1],
                0,
                0,
                0x40,
                0,
                64,
                IPPROTO_IPIP,
                0,
                0,
                192,
                0,
                2,
                58,
                198,
                51,
                100,
                56,
            ];
            let c = checksum::finish(checksum::add_words(0, &h)).to_be_bytes();
            h[10] = c[0];
            h[11] = c[1];
            core::ptr::write_unaligned((data + ETH) as *mut [u8; OUTER_HEADER_LEN], h);
        }
        xdp_action::XDP_TX
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
