//! `cargo xtask setup | build | guest | test | run | bench`: toolchain bootstrap, build, checks and the
//! demo. xtask depends on nothing in the workspace, so it builds on a fresh machine and
//! installs the BPF toolchain before anything that needs it is compiled; the demo and the
//! guest image are `ipip-lab` in the tests crate, run after setup.

mod cmd;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and demo the ipip workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (rust-src, bpf-linker, apt packages, bpffs).
    Setup,
    /// Setup, then build the workspace (the eBPF object is built by ipip-user's build.rs).
    Build,
    /// Build (or check) the cached Linux guest the interop tests boot (under target/guest).
    Guest,
    /// Setup, then fmt, clippy, build, eBPF unit tests and the workspace tests (needs root).
    Test,
    /// Setup and build, then bring up one of the seed's examples in network namespaces
    /// (needs root). `cargo xtask run -- --help` lists the scenarios.
    #[command(disable_help_flag = true)]
    Run {
        /// Passed to `ipip-lab run`: --scenario host|cluster|gateways|linux-peer, --keep,
        /// --fast-path, --help.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup and build, then measure ipip next to plain routing and the kernel's VXLAN
    /// (needs root; about 4 minutes, `--quick` under 2). `cargo xtask bench -- --help`.
    #[command(disable_help_flag = true)]
    Bench {
        /// Passed to `ipip-lab bench`: --quick, --runs N, --out DIR, --help.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::setup(),
        Command::Build => setup::setup().and_then(|()| cmd::cargo(&["build", "--workspace"])),
        Command::Guest => setup::toolchain().and_then(|()| cmd::lab(&["guest"])),
        Command::Test => test::test(),
        Command::Run { args } => lab("run", &args),
        Command::Bench { args } => lab("bench", &args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

/// `ipip-lab WHAT ARGS` after setup and a build (only the toolchain for `--help`). The demo
/// and the bench set up only what they use; the `linux-peer` scenario also the guest.
fn lab(what: &str, args: &[String]) -> anyhow::Result<()> {
    let help = args.iter().any(|a| a == "--help" || a == "-h");
    anyhow::ensure!(
        help || cmd::is_root(),
        "`cargo xtask {what}` must run as root: it creates network namespaces and attaches XDP/TC programs"
    );
    if help {
        setup::toolchain()?;
    } else {
        if args.iter().any(|a| a.contains("linux-peer")) {
            setup::setup()?;
        } else {
            setup::demo()?;
            if args.iter().any(|a| a.contains("fleet")) {
                setup::bird()?;
            }
        }
        println!("==> building the workspace (the first time several minutes, then seconds)");
        cmd::cargo(&["build", "--workspace"])?;
        if what == "bench" {
            // Measure the binary users run, not a debug build.
            cmd::cargo(&["build", "--release", "-p", "ipip-user"])?;
            std::env::set_var("IPIP_USER_BIN", cmd::target_dir().join("release/ipip-user"));
        }
    }
    let mut all = vec![what];
    all.extend(args.iter().map(String::as_str));
    cmd::lab(&all)
}
