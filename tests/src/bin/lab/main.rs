//! `ipip-lab`: what `cargo xtask run | guest | bench` do once the toolchain is set up. It lives
//! here, beside the harness it drives, so that xtask itself builds on a machine that has no
//! BPF toolchain yet (xtask installs it, then runs this).

mod bench;
mod guest;
mod run;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ipip-lab",
    about = "The ipip demo and the guest image (run by cargo xtask)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build (or check) the cached Linux guest the interop tests boot.
    Guest,
    /// Bring up one of the seed's examples in network namespaces (needs root).
    Run(run::RunArgs),
    /// Measure ipip next to plain routing and the kernel's VXLAN (needs root).
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Guest => guest::build(),
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::run(&args),
    };
    if let Err(e) = result {
        eprintln!("ipip-lab: error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs `args` quietly and returns its stdout if it exits 0, None otherwise (or if missing).
pub fn stdout_of(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
