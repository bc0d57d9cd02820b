//! Builds ipip-ebpf for the BPF target (aya-build) so that `include_bytes_aligned!` can embed it.
//! Needs rust-src and bpf-linker: `cargo xtask setup` installs both.

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "ipip-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ipip-ebpf"),
        ..Default::default()
    };
    // Stable toolchain with RUSTC_BOOTSTRAP=1 (set in .cargo/config.toml) for -Z build-std.
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom("stable"))
}
