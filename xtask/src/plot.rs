//! PNG plots of the experiments (plotters, bitmap backend; text in
//! DejaVu Sans, Debian's fonts-dejavu-core, which `cargo xtask setup`
//! installs).

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::experiments::bulk::{self, Sample};
use crate::experiments::connections::{self, Closer, Load};
use crate::experiments::{DataPath, Results, Settings, PATHS};
use crate::transfer::Direction;

pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers the font plotters draws every text with (once).
fn fonts() -> Result<()> {
    static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (run `cargo xtask setup`)"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a font plotters can read"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn color(p: DataPath) -> RGBColor {
    match p {
        DataPath::Routing => RGBColor(0, 0, 0),
        DataPath::ServalDirect => RGBColor(150, 150, 150),
        DataPath::FastNative => RGBColor(0, 114, 178),
        DataPath::FastGeneric => RGBColor(86, 180, 233),
        DataPath::RelaySplice => RGBColor(213, 94, 0),
        DataPath::RelayCopy => RGBColor(230, 159, 0),
        DataPath::Haproxy => RGBColor(0, 158, 115),
    }
}

/// One point of a line: transfers, median, slowest and fastest run.
type Point = (f64, f64, f64, f64);

/// Every plot of a run.
pub fn all(r: &Results, s: &Settings) -> Result<Vec<PathBuf>> {
    let mut files = figure7(&r.bulk, s)?;
    files.push(cost(&r.bulk, s)?);
    files.extend(life_cdf(&r.connections, s)?);
    Ok(files)
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

/// Experiment 2: CPU seconds per GB at the most concurrent transfers, a
/// bar per path and direction (the machine's), with its softirq share and
/// the gateway's processes' side by side inside it.
pub fn cost(samples: &[Sample], s: &Settings) -> Result<PathBuf> {
    fonts()?;
    let n = s.max_transfers;
    let file = s.out.join("cost.png");
    let dirs = [Direction::Down, Direction::Up];
    let bars: Vec<(usize, usize, crate::experiments::cpu::Spent)> = PATHS
        .iter()
        .enumerate()
        .flat_map(|(i, &p)| {
            dirs.iter().enumerate().filter_map(move |(d, &dir)| Some((i, d, bulk::cost(samples, p, dir, n)?)))
        })
        .collect();
    let top = bars.iter().map(|b| b.2.machine).fold(0.1, f64::max) * 1.35;
    {
        let root = BitMapBackend::new(&file, (1100, 700)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("CPU seconds per GB moved, {n} concurrent transfers (median of {} runs)", s.runs),
                ("sans-serif", 22),
            )
            .margin(18)
            .x_label_area_size(90)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..PATHS.len() as f64 - 0.5, 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(PATHS.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < PATHS.len() {
                    PATHS[i as usize].key().to_string()
                } else {
                    String::new()
                }
            })
            .y_desc("CPU s/GB (whole machine: client, gateway, instance)")
            .label_style(("sans-serif", 14))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(err)?;
        let shade = [RGBColor(0, 114, 178), RGBColor(213, 94, 0)];
        for (i, d, c) in &bars {
            let x0 = *i as f64 - 0.38 + *d as f64 * 0.38;
            let x1 = x0 + 0.34;
            let col = shade[*d];
            // Softirq and the gateway's processes can overlap (softirq in
            // a process's system call is in both), so they stand side by
            // side inside the machine's bar, not stacked.
            let mid = (x0 + x1) / 2.0;
            chart.draw_series([Rectangle::new([(x0, 0.0), (x1, c.machine)], col.mix(0.3).filled())]).map_err(err)?;
            chart
                .draw_series([Rectangle::new([(x0, 0.0), (mid, c.softirq.min(c.machine))], col.mix(0.6).filled())])
                .map_err(err)?;
            chart
                .draw_series([Rectangle::new([(mid, 0.0), (x1, c.gateway.min(c.machine))], col.filled())])
                .map_err(err)?;
        }
        for (d, dir) in dirs.iter().enumerate() {
            let col = shade[d];
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                .map_err(err)?
                .label(format!(
                    "{}s: whole machine (light); inside it softirq (left half), gateway processes (right half)",
                    dir.name()
                ))
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], col.filled()));
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;
        root.present().map_err(err).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(file)
}

/// Experiment 3: the distribution of connection life at saturation, one
/// line per path, one PNG per closing order.
pub fn life_cdf(runs: &[connections::Run], s: &Settings) -> Result<Vec<PathBuf>> {
    fonts()?;
    let mut files = Vec::new();
    for closer in [Closer::Server, Closer::Client] {
        let file = s.out.join(format!("connections-life-{}-closes.png", closer.name()));
        let series: Vec<(DataPath, Vec<(f64, f64)>)> = PATHS
            .iter()
            .filter_map(|&p| {
                let r = runs.iter().find(|r| r.path == p && r.closer == closer && r.load == Load::Saturation)?;
                Some((p, connections::cdf_quantiles().into_iter().map(|q| (r.life(q), q)).collect()))
            })
            .collect();
        // Up to the largest p99.9: the last tenth of a percent is a few
        // connections and would squash the rest.
        let right = series
            .iter()
            .filter_map(|(_, v)| v.iter().rev().find(|(_, q)| *q <= 0.999).map(|p| p.0))
            .fold(0.1, f64::max)
            * 1.05;
        {
            let root = BitMapBackend::new(&file, (1100, 700)).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    format!(
                        "Connection life (connect to close) at saturation, {} at a time, {} closes first",
                        connections::CONCURRENCY,
                        closer.name()
                    ),
                    ("sans-serif", 22),
                )
                .margin(18)
                .x_label_area_size(50)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..right, 0f64..1.0)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("connection life, ms (axis ends at the largest p99.9)")
                .y_desc("fraction of connections")
                .label_style(("sans-serif", 16))
                .light_line_style(RGBColor(238, 238, 238))
                .draw()
                .map_err(err)?;
            for (p, pts) in &series {
                let c = color(*p);
                chart
                    .draw_series(LineSeries::new(pts.iter().copied().filter(|(x, _)| *x <= right), c.stroke_width(2)))
                    .map_err(err)?
                    .label(p.key())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(err)?;
            root.present().map_err(err).with_context(|| format!("writing {}", file.display()))?;
        }
        files.push(file);
    }
    Ok(files)
}

/// The Figure 7 look-alike, one PNG per direction: total goodput against
/// the number of concurrent transfers, a line per path through the
/// medians, bars from the slowest to the fastest run.
pub fn figure7(samples: &[Sample], s: &Settings) -> Result<Vec<PathBuf>> {
    fonts()?;
    let mut files = Vec::new();
    for dir in [Direction::Down, Direction::Up] {
        let file = s.out.join(format!("figure7-{}.png", dir.name()));
        let series: Vec<(DataPath, Vec<Point>)> = PATHS
            .iter()
            .map(|&p| {
                let pts = (1..=s.max_transfers)
                    .filter_map(|n| bulk::goodput(samples, p, dir, n).map(|(m, lo, hi)| (f64::from(n), m, lo, hi)))
                    .collect();
                (p, pts)
            })
            .collect();
        // Head room above the data for the legend.
        let top = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.3)).fold(0.1, f64::max) * 1.6;
        {
            let root = BitMapBackend::new(&file, (1100, 700)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    format!(
                        "{}s: total goodput of 1-{} concurrent transfers of {} MB ({} run{} each)",
                        dir.name(),
                        s.max_transfers,
                        s.size / 1_000_000,
                        s.runs,
                        if s.runs == 1 { "" } else { "s" }
                    ),
                    ("sans-serif", 22),
                )
                .margin(18)
                .x_label_area_size(50)
                .y_label_area_size(70)
                .build_cartesian_2d(0.6f64..f64::from(s.max_transfers) + 0.4, 0f64..top)
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .x_labels(s.max_transfers as usize)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .x_desc("concurrent transfers")
                .y_desc("total goodput, Gbit/s (median; bars: slowest to fastest run)")
                .label_style(("sans-serif", 16))
                .light_line_style(RGBColor(238, 238, 238))
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            for (p, pts) in &series {
                let c = color(*p);
                chart
                    .draw_series(LineSeries::new(pts.iter().map(|q| (q.0, q.1)), c.stroke_width(2)))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(p.describe())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
                chart
                    .draw_series(pts.iter().map(|q| ErrorBar::new_vertical(q.0, q.2, q.1, q.3, c.filled(), 10)))
                    .map_err(|e| anyhow!("{e}"))?;
                chart
                    .draw_series(pts.iter().map(|q| Circle::new((q.0, q.1), 4, c.filled())))
                    .map_err(|e| anyhow!("{e}"))?;
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            root.present().map_err(|e| anyhow!("{e}")).with_context(|| format!("writing {}", file.display()))?;
        }
        files.push(file);
    }
    Ok(files)
}
