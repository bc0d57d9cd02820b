//! `cargo xtask setup`: every step checks first and does nothing when already done.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

/// Packages the demo and the bench use (ping; ip/tc; nft for rfe's NAT in seed §6; ethtool
/// to switch GRO on for veths that XDP redirects into; iperf3 for throughput, and with
/// tcpdump and ncat for poking at a `--keep` demo by hand; a font for the bench chart).
const DEMO_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iperf3",
    "tcpdump",
    "ncat",
    "nftables",
    "ethtool",
    "fonts-dejavu-core",
];
/// What only the tests (and the Linux-peer demo) add: the guest's emulator, strace for
/// SIGKILL at a chosen syscall, systemd-analyze for the unit file test, BIRD 2 for the fleet
/// test (its service is never started: the test runs its own).
const TEST_PACKAGES: &[&str] = &["qemu-system-x86", "strace", "systemd", "bird2"];
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything the tests need: the demo's setup, the test packages, and the Linux guest.
pub fn setup() -> Result<()> {
    demo()?;
    apt_packages(TEST_PACKAGES)?;
    cmd::lab(&["guest"])?;
    Ok(())
}

/// The fleet scenario's BGP daemon.
pub fn bird() -> Result<()> {
    apt_packages(&["bird2"])
}

/// What `cargo xtask run` and `bench` need: no emulator, no guest (the `linux-peer`
/// scenario adds them, see [`setup`]).
pub fn demo() -> Result<()> {
    toolchain()?;
    apt_packages(DEMO_PACKAGES)?;
    bpffs()
}

/// What compiling the workspace needs: rust-src for `-Z build-std` and bpf-linker.
pub fn toolchain() -> Result<()> {
    rust_src()?;
    bpf_linker()
}

fn rust_src() -> Result<()> {
    let installed = cmd::stdout_of(&["rustup", "component", "list", "--installed"])
        .context("`rustup component list --installed` failed; is rustup on PATH?")?;
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        println!("setup: rust-src present");
        return Ok(());
    }
    println!("==> setup: rustup component add rust-src");
    cmd::run(&["rustup", "component", "add", "rust-src"])
}

/// `rustc --version --verbose`: (release, LLVM major).
fn rustc_versions() -> Result<(String, String)> {
    let vv = cmd::stdout_of(&["rustc", "--version", "--verbose"]).context("`rustc -vV` failed")?;
    let field = |name: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("no `{name}` in `rustc -vV`:\n{vv}"))
    };
    let release = field("release:")?;
    let llvm = field("LLVM version:")?;
    let major = llvm.split('.').next().unwrap_or_default().to_string();
    Ok((release, major))
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(h) = home() {
        dirs.push(h.join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// True when the installed bpf-linker runs and was built against LLVM `major`.
fn bpf_linker_ok(major: &str) -> bool {
    let Some(bin) = find_in_path("bpf-linker") else {
        return false;
    };
    let Some(version) = cmd::stdout_of(&[&bin.to_string_lossy(), "--version"]) else {
        return false;
    };
    if version.contains("LLVM") {
        return version.contains(&format!("LLVM {major}"))
            || version.contains(&format!("LLVM version {major}"));
    }
    // 0.13 prints no LLVM version: look at the library it links to, then at what
    // `cargo install` recorded.
    if let Ok(bytes) = std::fs::read(&bin) {
        for needle in [format!("libLLVM.so.{major}."), format!("libLLVM-{major}.")] {
            if contains(&bytes, needle.as_bytes()) {
                return true;
            }
        }
    }
    let crates2 = home().map(|h| h.join(".cargo/.crates2.json"));
    if let Ok(text) = crates2.and_then(|p| Ok(std::fs::read_to_string(p)?)) {
        if let Some(i) = text.find("\"bpf-linker ") {
            let entry = &text[i..text[i..].find("},").map_or(text.len(), |j| i + j)];
            return entry.contains(&format!("\"llvm-{major}\""));
        }
    }
    false
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn bpf_linker() -> Result<()> {
    let (release, major) = rustc_versions()?;
    if bpf_linker_ok(&major) {
        println!("setup: bpf-linker present (LLVM {major})");
        return Ok(());
    }
    let sysroot = cmd::stdout_of(&["rustc", "--print", "sysroot"])
        .context("`rustc --print sysroot` failed")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        })
        .with_context(|| format!("rustc ships no libLLVM.so.{major}.* in {}", lib.display()))?;
    let prefix = home()?.join(format!(".cache/ipip/llvm-rust-{release}"));
    let dlib = prefix.join("lib");
    std::fs::create_dir_all(&dlib).with_context(|| format!("cannot create {}", dlib.display()))?;
    let basename = libllvm.file_name().context("libLLVM has a file name")?;
    for link in [dlib.join("libLLVM.so"), dlib.join(basename)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("cannot link {} → {}", link.display(), libllvm.display()))?;
    }
    println!(
        "==> setup: building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {major} ({}), about a minute",
        libllvm.display()
    );
    let feature = format!("llvm-{major}");
    let install = |locked: bool| {
        let mut c = Command::new(cmd::cargo_bin());
        c.args([
            "install",
            "bpf-linker",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", &feature])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTC_BOOTSTRAP");
        if locked {
            c.arg("--locked");
        }
        cmd::status(c, "cargo install bpf-linker")
    };
    if let Err(e) = install(true) {
        println!("==> setup: `cargo install --locked` failed ({e:#}); retrying without --locked");
        install(false)?;
    }
    anyhow::ensure!(
        bpf_linker_ok(&major),
        "bpf-linker still does not run after installing it"
    );
    Ok(())
}

fn apt_installed(pkg: &str) -> bool {
    cmd::stdout_of(&["dpkg-query", "-W", "-f=${Status}", pkg])
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn apt_packages(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        println!("setup: apt packages present ({})", wanted.join(" "));
        return Ok(());
    }
    anyhow::ensure!(
        cmd::is_root(),
        "apt packages missing ({}); run as root or install them",
        missing.join(" ")
    );
    println!(
        "==> setup: apt-get install {} (from the Debian mirror; a minute or two)",
        missing.join(" ")
    );
    cmd::run(&["apt-get", "update", "-qq"])?;
    let mut c = Command::new("apt-get");
    c.args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd::status(c, &format!("apt-get install {}", missing.join(" ")))
}

const BPFFS: &str = "/sys/fs/bpf";

fn bpffs_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == BPFFS && f[2] == "bpf"
    }))
}

fn bpffs() -> Result<()> {
    if bpffs_mounted()? {
        println!("setup: bpffs mounted at {BPFFS}");
        return Ok(());
    }
    anyhow::ensure!(
        cmd::is_root(),
        "bpffs is not mounted at {BPFFS}; run as root to mount it"
    );
    println!("==> setup: mount -t bpf bpf {BPFFS}");
    std::fs::create_dir_all(BPFFS).with_context(|| format!("cannot create {BPFFS}"))?;
    cmd::run(&["mount", "-t", "bpf", "bpf", BPFFS])
}
