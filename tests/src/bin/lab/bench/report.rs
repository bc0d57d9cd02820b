//! The bench's results: the machine, the plan, every sample; Markdown with the median and
//! min–max of each figure, ratios to plain routing, and the same as JSON.

use std::fmt::Write as _;

use super::e2e::{Sample, Series, Variant};
use super::prog::Costs;
use super::scale::Scale;
use super::Plan;

/// What the figures were measured on.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
}

impl Machine {
    pub fn read() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Machine { kernel, cpu, cpus }
    }

    pub fn describe(&self) -> String {
        format!("{} × {}, Linux {}", self.cpus, self.cpu, self.kernel)
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub plan: Plan,
    pub per_packet: Option<Costs>,
    pub host_to_host: Option<Series>,
    pub gateway_line: Option<Series>,
    pub scale: Option<Scale>,
    /// Absent from older results.
    #[serde(default)]
    pub fleet: Option<super::fleet::FleetBench>,
}

/// UTC `YYYYMMDDTHHMMSSZ`, for the results folder's name.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Median, min and max.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Spread {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Spread {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

fn median_of(s: &Series, v: Variant, get: fn(&Sample) -> f64) -> f64 {
    s.variants
        .iter()
        .find(|(x, _)| *x == v)
        .map_or(f64::NAN, |(_, s)| {
            spread(&s.iter().map(get).collect::<Vec<_>>()).median
        })
}

type Metric = (&'static str, fn(&Sample) -> f64, &'static str);

const METRICS: &[Metric] = &[
    ("TCP 1 stream", |s| s.tcp1_gbit_s, "Gbit/s"),
    ("TCP 4 streams", |s| s.tcp4_gbit_s, "Gbit/s"),
    ("UDP 64 B received", |s| s.udp64_rx_kpps, "kpps"),
    ("UDP 64 B sent", |s| s.udp64_tx_kpps, "kpps"),
    (
        "UDP 64 B forwarded, live-frames generator",
        |s| s.gen_rx_kpps,
        "kpps",
    ),
    ("request/response p50", |s| s.rr_p50_us, "µs"),
    ("request/response p99", |s| s.rr_p99_us, "µs"),
];

fn cell(s: Spread, runs: usize) -> String {
    if runs > 1 {
        format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max)
    } else {
        format!("{:.1}", s.median)
    }
}

impl Results {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        if let Some(p) = &self.per_packet {
            per_packet_markdown(&mut md, p);
        }
        for s in [&self.host_to_host, &self.gateway_line]
            .into_iter()
            .flatten()
        {
            self.series_markdown(&mut md, s);
        }
        if let Some(s) = &self.scale {
            scale_markdown(&mut md, s);
        }
        if let Some(f) = &self.fleet {
            super::fleet::markdown(&mut md, f);
        }
        md
    }

    fn series_markdown(&self, md: &mut String, s: &Series) {
        let _ = writeln!(md, "### {}\n", s.topology);
        let _ = writeln!(
            md,
            "{}; median of {} interleaved run(s), (min–max) when more than one. Machine: {}.\n",
            s.method,
            self.plan.runs,
            self.machine.describe()
        );
        let _ = write!(md, "| | ");
        for (v, _) in &s.variants {
            let _ = write!(md, "{} | ", v.label());
        }
        let _ = writeln!(md);
        let _ = writeln!(md, "|---{}", "|---".repeat(s.variants.len()) + "|");
        for (name, get, unit) in METRICS {
            // Figures a topology doesn't measure (the generator on two hosts) are left out.
            if s.variants
                .iter()
                .flat_map(|(_, v)| v)
                .all(|x| get(x) == 0.0)
            {
                continue;
            }
            let _ = write!(md, "| {name}, {unit} | ");
            let plain = median_of(s, Variant::Plain, *get);
            for (v, samples) in &s.variants {
                let values: Vec<f64> = samples.iter().map(get).collect();
                let sp = spread(&values);
                let mut c = cell(sp, samples.len());
                if *v != Variant::Plain && plain > 0.0 {
                    let _ = write!(c, " · {:.0}%", 100.0 * sp.median / plain);
                }
                let _ = write!(md, "{c} | ");
            }
            let _ = writeln!(md);
        }
        let disturbed: usize = s
            .variants
            .iter()
            .flat_map(|(_, v)| v)
            .filter(|x| x.disturbed)
            .count();
        let _ = writeln!(
            md,
            "\nPercentages are of plain routing's median. {disturbed} sample(s) still disturbed after repeating.\n"
        );
    }
}

fn scale_markdown(md: &mut String, s: &Scale) {
    let _ = writeln!(md, "### Scale\n\n{}.\n", s.method);
    let _ = writeln!(
        md,
        "| peers | routes | check s (MiB) | attach s (MiB) | reload s (MiB) | detach s (MiB) | map memory MiB |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for r in &s.lifecycle {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} ({:.0}) | {:.2} ({:.0}) | {:.2} ({:.0}) | {:.2} ({:.0}) | {:.1} |",
            r.peers,
            r.routes,
            r.check_s,
            r.check_rss_mib,
            r.attach_s,
            r.attach_rss_mib,
            r.reload_s,
            r.reload_rss_mib,
            r.detach_s,
            r.detach_rss_mib,
            r.map_mib
        );
    }
    let _ = writeln!(md, "\n| routes in the map | XDP decap ns | TC encap ns |");
    let _ = writeln!(md, "|---|---|---|");
    for r in &s.per_packet {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} |",
            r.routes, r.xdp_decap_ns, r.tc_encap_ns
        );
    }
    let _ = writeln!(md);
}

fn per_packet_markdown(md: &mut String, p: &Costs) {
    let _ = writeln!(md, "### Per packet\n\n{}.\n", p.method);
    let floor = p.cases.first().map_or(f64::NAN, |c| c.ns);
    let _ = writeln!(
        md,
        "| program | what it does | ns/packet | net ns | × XDP_PASS | net × reference encap |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for c in &p.cases {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.2} |",
            c.name,
            c.what,
            c.ns,
            c.net_ns,
            c.ns / floor,
            c.net_ns / p.reference_net_ns
        );
    }
    let _ = writeln!(md);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        assert_eq!(
            spread(&[3.0, 1.0, 2.0]),
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert!(spread(&[f64::NAN]).median.is_nan());
    }

    #[test]
    fn timestamps_are_utc_and_sortable() {
        let t = timestamp();
        assert_eq!(t.len(), 16, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
