//! `cargo xtask bench`: ipip next to plain routing and the kernel's VXLAN on the same
//! machine, in the same run, interleaved. Writes Markdown and JSON under `--out`.

mod chart;
mod e2e;
mod fleet;
mod prog;
mod report;
mod scale;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// A reduced set (one run, short durations) for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Runs of every variant, interleaved (default 3, or 1 with --quick).
    #[arg(long)]
    runs: Option<u32>,
    /// Where the results go (a timestamped folder is made inside, `latest.md` and
    /// `latest.json` beside it).
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Measure nothing: write the Markdown and the chart again from a results JSON.
    #[arg(long, value_name = "JSON")]
    redraw: Option<PathBuf>,
    /// Only these parts (comma-separated; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

/// The parts of the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Per-packet cost of each program (BPF_PROG_TEST_RUN).
    Programs,
    /// Two hosts on a veth pair.
    Hosts,
    /// The four-namespace gateway line.
    Gateways,
    /// Check/attach/detach and per-packet cost as peers and routes grow.
    Scale,
    /// Fleet mode: following a routing table, and sites with BIRD.
    Fleet,
}

/// How long and how often: full or `--quick`.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub runs: u32,
    pub tcp_seconds: u32,
    pub udp_seconds: u32,
    pub rr_exchanges: usize,
    /// Frames per live-frames generator burst.
    pub generator_frames: u32,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(json) = &args.redraw {
        let text =
            std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
        let results: report::Results = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a bench results file", json.display()))?;
        let dir = json.parent().unwrap_or(std::path::Path::new("."));
        let stem = json.file_stem().and_then(|s| s.to_str()).unwrap_or("bench");
        std::fs::write(dir.join(format!("{stem}.md")), results.markdown())?;
        chart::draw(&results, &dir.join(format!("{stem}.png")))?;
        println!("==> {stem}.md and {stem}.png written in {}", dir.display());
        return Ok(());
    }
    ipip_tests::require_root()?;
    let plan = if args.quick {
        Plan {
            runs: args.runs.unwrap_or(1),
            tcp_seconds: 1,
            udp_seconds: 1,
            rr_exchanges: 2_000,
            generator_frames: 1_000_000,
        }
    } else {
        Plan {
            runs: args.runs.unwrap_or(3),
            tcp_seconds: 5,
            udp_seconds: 3,
            rr_exchanges: 20_000,
            generator_frames: 5_000_000,
        }
    };
    anyhow::ensure!(plan.runs > 0, "--runs must be at least 1");
    let machine = report::Machine::read();
    println!("==> bench on {}", machine.describe());
    let wanted = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let per_packet = if wanted(Part::Programs) {
        println!("==> per-packet cost (BPF_PROG_TEST_RUN)");
        Some(prog::per_packet(args.quick)?)
    } else {
        None
    };
    let host = wanted(Part::Hosts)
        .then(|| e2e::host_to_host(&plan))
        .transpose()?;
    let line = wanted(Part::Gateways)
        .then(|| e2e::gateway_line(&plan))
        .transpose()?;
    let scale = wanted(Part::Scale)
        .then(|| scale::scale(args.quick))
        .transpose()?;
    let fleet = wanted(Part::Fleet)
        .then(|| fleet::fleet(args.quick))
        .transpose()?;
    let results = report::Results {
        machine,
        plan,
        per_packet,
        host_to_host: host,
        gateway_line: line,
        scale,
        fleet,
    };
    let dir = args.out.join(report::timestamp());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = results.markdown();
    let json = serde_json::to_string_pretty(&results)?;
    for (name, text) in [("bench.md", &md), ("bench.json", &json)] {
        std::fs::write(dir.join(name), text)
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    for (name, text) in [("latest.md", &md), ("latest.json", &json)] {
        std::fs::write(args.out.join(name), text)?;
    }
    let png = dir.join("bench.png");
    chart::draw(&results, &png).context("drawing the chart")?;
    std::fs::copy(&png, args.out.join("latest.png"))?;
    println!("{md}");
    println!("==> written to {} (and latest.* beside it)", dir.display());
    Ok(())
}
