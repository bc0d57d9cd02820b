//! `cargo xtask setup | build | test | run`: toolchain bootstrap, build, checks and the demo.

mod cmd;
mod guest;
mod run;
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
    /// Setup and build, then bring up the seed's example in network namespaces (needs root).
    Run(run::RunArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::setup(),
        Command::Build => setup::setup().and_then(|()| cmd::cargo(&["build", "--workspace"])),
        Command::Guest => guest::build(),
        Command::Test => test::test(),
        Command::Run(args) => run::run(&args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
