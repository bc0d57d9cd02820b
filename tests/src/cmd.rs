//! Running external commands with errors that say what failed and why.

use std::process::{Command, Output};

use anyhow::{Context, Result};

/// Renders a command line for messages.
pub fn render(args: &[&str]) -> String {
    args.join(" ")
}

/// Runs `args` and returns its output whatever the exit status.
pub fn output(args: &[&str]) -> Result<Output> {
    let (prog, rest) = args.split_first().context("empty command")?;
    Command::new(prog)
        .args(rest)
        .output()
        .with_context(|| format!("cannot run `{}`", render(args)))
}

/// Runs `args`, fails unless it exits 0, returns its stdout.
pub fn run(args: &[&str]) -> Result<String> {
    let out = output(args)?;
    check(args, &out)
}

/// Turns a finished command into its stdout, or an error carrying status, stdout and stderr.
pub fn check(args: &[&str], out: &Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::bail!(
        "`{}` failed ({}):\nstdout: {}\nstderr: {}",
        render(args),
        out.status,
        stdout.trim(),
        stderr.trim()
    )
}
