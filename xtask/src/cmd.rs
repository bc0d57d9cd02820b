//! Running commands from xtask.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// The workspace root (xtask lives in `<root>/xtask`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// The cargo that runs us (falls back to the one on PATH).
pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs `cargo ARGS` in the workspace root with inherited stdio; fails on non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let mut c = Command::new(cargo_bin());
    c.args(args).current_dir(root());
    status(c, &format!("cargo {}", args.join(" ")))
}

/// Runs a prepared command with inherited stdio; fails on non-zero exit.
pub fn status(mut c: Command, what: &str) -> Result<()> {
    let st = c.status().with_context(|| format!("cannot run `{what}`"))?;
    anyhow::ensure!(st.success(), "`{what}` failed ({st})");
    Ok(())
}

/// Runs `args` quietly and returns its stdout if it exits 0, None otherwise (or if missing).
pub fn stdout_of(args: &[&str]) -> Option<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `args` with inherited stdio; fails on non-zero exit.
pub fn run(args: &[&str]) -> Result<()> {
    let mut c = Command::new(args[0]);
    c.args(&args[1..]);
    status(c, &args.join(" "))
}

pub fn is_root() -> bool {
    ipip_tests::require_root().is_ok()
}
