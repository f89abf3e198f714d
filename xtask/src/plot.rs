//! PNG plots of the experiments (plotters, bitmap backend; text in
//! DejaVu Sans, Debian's fonts-dejavu-core, which `cargo xtask setup`
//! installs).

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use crate::experiments::{summarize, DataPath, Sample, Settings, PATHS};
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
        DataPath::FastNative => RGBColor(0, 114, 178),
        DataPath::FastGeneric => RGBColor(86, 180, 233),
        DataPath::RelaySplice => RGBColor(213, 94, 0),
        DataPath::RelayCopy => RGBColor(230, 159, 0),
        DataPath::Haproxy => RGBColor(0, 158, 115),
    }
}

/// One point of a line: transfers, median, slowest and fastest run.
type Point = (f64, f64, f64, f64);

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
                    .filter_map(|n| summarize(samples, p, dir, n).map(|(m, lo, hi)| (f64::from(n), m, lo, hi)))
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
