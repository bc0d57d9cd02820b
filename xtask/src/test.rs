//! `cargo xtask test`: setup, then every check in order, with a one-line summary.

use anyhow::Result;

use crate::{cmd, setup};

struct Step {
    name: &'static str,
    args: &'static [&'static str],
    /// Later steps are pointless when this one fails.
    gate: bool,
}

const STEPS: &[Step] = &[
    Step {
        name: "fmt",
        args: &["fmt", "--all", "--", "--check"],
        gate: false,
    },
    Step {
        name: "clippy",
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        gate: false,
    },
    Step {
        // The programs only exist for the BPF target; the host clippy run can't see them.
        name: "clippy-bpf",
        args: &[
            "clippy",
            "-p",
            "ipip-ebpf",
            "--bins",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
        gate: false,
    },
    Step {
        name: "build",
        args: &["build", "--workspace"],
        gate: true,
    },
    Step {
        name: "ebpf-unit",
        args: &["test", "--no-fail-fast", "-p", "ipip-ebpf"],
        gate: false,
    },
    Step {
        name: "tests",
        args: &[
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "ipip-ebpf",
        ],
        gate: false,
    },
];

pub fn test() -> Result<()> {
    anyhow::ensure!(
        cmd::is_root(),
        "`cargo xtask test` must run as root: the end-to-end tests create network namespaces and \
         attach XDP/TC programs (try `sudo -E env PATH=$PATH cargo xtask test`)"
    );
    setup::setup()?;
    let mut results: Vec<(&str, &str)> = Vec::new();
    let mut failed = false;
    let mut counts = cmd::Counts::default();
    for step in STEPS {
        println!("==> test: cargo {}", step.args.join(" "));
        match cmd::cargo_counting(step.args, &mut counts) {
            Ok(()) => results.push((step.name, "ok")),
            Err(e) => {
                eprintln!("xtask: {e:#}");
                results.push((step.name, "FAILED"));
                failed = true;
                if step.gate {
                    break;
                }
            }
        }
    }
    for step in &STEPS[results.len()..] {
        results.push((step.name, "skipped"));
    }
    let summary: Vec<String> = results.iter().map(|(n, r)| format!("{n} {r}")).collect();
    let verdict = if failed { "FAILED" } else { "passed" };
    println!("xtask test {verdict}: {}", summary.join(", "));
    // The closing line CI reads: every test the steps ran, summed.
    println!(
        "{} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    anyhow::ensure!(!failed, "some checks failed");
    Ok(())
}
