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

/// Where cargo puts what it builds (CARGO_TARGET_DIR, or `target` in the workspace).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d,
        Some(d) => root().join(d),
        None => root().join("target"),
    }
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

/// Test counts summed over every `test result:` line cargo's test harness printed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Counts {
    /// Adds one `test result: ok. 8 passed; 0 failed; 1 ignored; ...` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo ARGS` like [`cargo`], echoing its stdout while counting test results.
pub fn cargo_counting(args: &[&str], counts: &mut Counts) -> Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let what = format!("cargo {}", args.join(" "));
    let mut child = Command::new(cargo_bin())
        .args(args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{what}`"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("reading the output of `{what}`"))?;
        counts.add_line(&line);
        let _ = writeln!(out, "{line}");
    }
    drop(out);
    let st = child
        .wait()
        .with_context(|| format!("waiting for `{what}`"))?;
    anyhow::ensure!(st.success(), "`{what}` failed ({st})");
    Ok(())
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

/// True when running as root: /proc/self belongs to the effective uid.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs `ipip-lab ARGS` (the demo, the guest image and the bench, in the tests crate). Only
/// after setup: building it builds ipip-user, whose build script needs the BPF toolchain.
pub fn lab(args: &[&str]) -> Result<()> {
    let mut all = vec![
        "run",
        "--quiet",
        "-p",
        "ipip-tests",
        "--bin",
        "ipip-lab",
        "--",
    ];
    all.extend_from_slice(args);
    cargo(&all)
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn counts_sum_cargo_test_result_lines() {
        let mut c = Counts::default();
        c.add_line("test result: ok. 8 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 8.70s");
        c.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        c.add_line("running 8 tests");
        assert_eq!((c.passed, c.failed, c.ignored), (11, 2, 1));
    }
}
