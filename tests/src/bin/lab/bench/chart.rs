//! The bench's PNG: one bar panel per figure that matters most (per-packet net cost, TCP on
//! two hosts and on the gateway line, small-packet forwarding on the line), drawn with
//! plotters and a font from Debian's fonts-dejavu-core (which setup installs).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::e2e::{Sample, Series, Variant};
use super::report::{spread, Results};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

struct Panel {
    title: String,
    unit: &'static str,
    bars: Vec<(String, f64)>,
}

fn short(v: Variant) -> &'static str {
    match v {
        Variant::Plain => "plain",
        Variant::Vxlan => "VXLAN",
        Variant::IpipTc => "ipip tc",
        Variant::IpipXdp => "ipip xdp",
        Variant::IpipFast => "fast path",
    }
}

fn series_panel(title: &str, unit: &'static str, s: &Series, get: fn(&Sample) -> f64) -> Panel {
    Panel {
        title: title.to_string(),
        unit,
        bars: s
            .variants
            .iter()
            .map(|(v, samples)| {
                let values: Vec<f64> = samples.iter().map(get).collect();
                (short(*v).to_string(), spread(&values).median)
            })
            .collect(),
    }
}

/// Per-packet case names short enough to sit side by side under the bars.
fn abbreviate(name: &str) -> String {
    name.replace("reference encap", "ref. encap")
        .replace("pass-through", "pass")
        .replace("counted drop", "drop")
        .replace(" (gateway)", " gw")
        .replace("XDP decap-forward", "decap-fwd")
        .replace("XDP LAN encap", "LAN encap")
}

fn panels(r: &Results) -> Vec<Panel> {
    let mut out = Vec::new();
    if let Some(p) = &r.per_packet {
        out.push(Panel {
            title: "Per packet, net of the floor (BPF_PROG_TEST_RUN)".into(),
            unit: "ns",
            bars: p
                .cases
                .iter()
                .filter(|c| c.net_ns > 0.0 && !c.name.contains("floor"))
                .map(|c| (abbreviate(&c.name), c.net_ns))
                .collect(),
        });
    }
    if let Some(s) = &r.host_to_host {
        out.push(series_panel("Two hosts: TCP, 1 stream", "Gbit/s", s, |x| {
            x.tcp1_gbit_s
        }));
    }
    if let Some(s) = &r.gateway_line {
        out.push(series_panel(
            "Gateway line: TCP, 1 stream",
            "Gbit/s",
            s,
            |x| x.tcp1_gbit_s,
        ));
        out.push(series_panel(
            "Gateway line: 64 B UDP forwarded (live frames)",
            "kpps",
            s,
            |x| x.gen_rx_kpps,
        ));
    }
    out
}

fn bar_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, p: &Panel) -> Result<()> {
    let n = p.bars.len().max(1);
    let top = p
        .bars
        .iter()
        .map(|b| b.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)
        .map_err(|e| anyhow!("{e}"))?;
    let labels: Vec<String> = p.bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(p.unit)
        .x_labels(n)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(p.bars.iter().enumerate().map(|(i, (_, v))| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                BLUE.mix(0.55).filled(),
            );
            bar.set_margin(0, 0, 8, 8);
            bar
        }))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(p.bars.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                format!("{v:.1}"),
                (SegmentValue::CenterOf(i), *v),
                ("sans-serif", 13),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Draws `r` into a PNG at `path`.
pub fn draw(r: &Results, path: &Path) -> Result<()> {
    let font = std::fs::read(FONT).with_context(|| {
        format!("reading {FONT} (Debian's fonts-dejavu-core; `cargo xtask setup` installs it)")
    })?;
    // plotters keeps registered fonts for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))?;
    let panels = panels(r);
    let rows = panels.len().div_ceil(2).max(1);
    let root = BitMapBackend::new(path, (1600, 520 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((rows, 2));
    for (area, p) in areas.iter().zip(&panels) {
        bar_panel(area, p)?;
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
