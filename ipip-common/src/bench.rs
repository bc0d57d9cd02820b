//! The bench harness's shared types (`cargo xtask bench`, per-packet costs): the frame that
//! the harness restores before every repeat of `BPF_PROG_TEST_RUN`, and the names it is
//! loaded under. Only the harness object uses these; the data path never does.

/// Room for a frame the harness restores; frames are shorter (14..BENCH_FRAME_MAX bytes),
/// as the harness bounds the length with a mask of `BENCH_FRAME_MAX - 1`.
pub const BENCH_FRAME_MAX: usize = 256;
const _: () = assert!(BENCH_FRAME_MAX.is_power_of_two());

/// The input frame, restored byte for byte before each run of the program under test.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BenchFrame {
    /// Bytes of `bytes` in use (14..BENCH_FRAME_MAX).
    pub len: u32,
    pub _pad: u32,
    pub bytes: [u8; BENCH_FRAME_MAX],
}
const _: () = assert!(core::mem::size_of::<BenchFrame>() == 8 + BENCH_FRAME_MAX);

/// `Array<BenchFrame>`, one entry.
pub const MAP_BENCH_FRAME: &str = "bench_frame";
/// `ProgramArray`, slot 0: the program under test, tail-called after the restore.
pub const MAP_BENCH_XDP_TARGET: &str = "bench_xdp_target";
pub const MAP_BENCH_TC_TARGET: &str = "bench_tc_target";
/// Restore, then tail-call the target (XDP / TC).
pub const PROG_BENCH_XDP: &str = "bench_xdp";
pub const PROG_BENCH_TC: &str = "bench_tc";
/// The floors: return XDP_PASS / TC_ACT_OK and nothing else.
pub const PROG_BENCH_XDP_PASS: &str = "bench_xdp_pass";
pub const PROG_BENCH_TC_OK: &str = "bench_tc_ok";
/// Returns XDP_TX: the live-frames traffic generator.
pub const PROG_BENCH_XDP_TX: &str = "bench_xdp_tx";
/// The minimal reference encapsulation: adjust head, write a 20-byte header, checksum it.
pub const PROG_BENCH_XDP_REF_ENCAP: &str = "bench_xdp_ref_encap";
