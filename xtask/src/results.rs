//! The experiments' summary for people: `README.md` beside the CSV files
//! and plots, written from the run's own data (machine, kernel, settings,
//! the headline table as ratios to plain routing from the same run).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::experiments::{summarize, DataPath, Sample, Settings, PATHS};
use crate::transfer::Direction;

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("?".into(), |kb| format!("{:.1} GiB", kb as f64 / 1048576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, {mem} RAM; Linux {}", kernel.trim())
}

fn cell(v: Option<(f64, f64, f64)>) -> String {
    v.map_or("-".into(), |(m, lo, hi)| format!("{m:.2} ({lo:.2}-{hi:.2})"))
}

fn ratio(v: Option<(f64, f64, f64)>, reference: Option<(f64, f64, f64)>) -> String {
    match (v, reference) {
        (Some((m, ..)), Some((r, ..))) if r > 0.0 => format!("{:.2}x", m / r),
        _ => "-".into(),
    }
}

/// What a reader must know to read the tables right (established
/// outside the run: see the docs named).
pub const READING: &str = "## Reading these results

- `fast-path-generic`: generic XDP runs after GRO and also takes a local veth peer's TSO packets
  unsegmented, and the translator rewrites such GSO super-packets whole (up to 64 KB SAL packets on
  the service link; [docs/translator.md](../translator.md), Limits). In this veth lab that works and
  is fast, which is why its uploads can beat routing; a real NIC could not send those packets. Read
  that row's uploads as a lab artefact, not as the path's speed.
- Every path but `routing` ends at the same host-mode instance, which receives SAL one segment at a
  time (the kernel has no GRO for protocol 144): that instance, not only the gateway, limits those
  rows. Removing that limit is open work (issue 17, item 2; issue 18).";

/// Writes `README.md` into the output directory.
pub fn write_readme(samples: &[Sample], s: &Settings, took: Duration) -> Result<PathBuf> {
    let mut t = String::new();
    let command = if s.quick {
        "cargo xtask bench --only experiments --quick".to_string()
    } else {
        format!("cargo xtask bench --only experiments --size {} --runs {}", s.size, s.runs)
    };
    let _ = writeln!(t, "# Comparison experiments\n");
    if s.quick {
        let _ = writeln!(
            t,
            "**A quick run** (small transfers, one run each): it proves the harness works, not how fast \
             anything is. The committed results come from a full run.\n"
        );
    }
    let _ = writeln!(t, "Written by `{command}` in {:.0} s.\n", took.as_secs_f64());
    let _ = writeln!(t, "- Machine: {}", machine());
    let _ = writeln!(
        t,
        "- Lab: network namespaces on one host: a client, the gateway (two veth arms, GRO on at the far ends, \
         the client's tx checksum offload on) and one Serval instance running xlate host mode behind a bridge. \
         Every path ends at that same instance's server, a plain TCP socket (`xtask transfer-server`); the \
         reference reaches it by plain TCP, every other path over SAL."
    );
    let _ = writeln!(
        t,
        "- Transfers: `xtask transfer`: 1 to {} at once, {} MB each, every byte checked by its receiver, which \
         counts the goodput (from the request to the last byte). Total = all bytes over the longest transfer.",
        s.max_transfers,
        s.size / 1_000_000
    );
    let _ = writeln!(t, "- Paths:");
    for p in PATHS {
        let _ = writeln!(t, "  - `{}`: {}", p.key(), p.describe());
    }
    let _ = writeln!(t, "\n## Experiment 1: the paper's Figure 7\n");
    let _ = writeln!(
        t,
        "Total goodput in Gbit/s, median (slowest-fastest run), and the median as a ratio to plain routing \
         in the same run.\n"
    );
    let n = s.max_transfers;
    for dir in [Direction::Down, Direction::Up] {
        let reference = |k: u32| summarize(samples, DataPath::Routing, dir, k);
        let _ = writeln!(t, "### {}s\n", dir.name());
        let _ = writeln!(t, "| path | 1 transfer | ratio | {n} transfers | ratio |");
        let _ = writeln!(t, "|---|---|---|---|---|");
        for p in PATHS {
            let (one, many) = (summarize(samples, p, dir, 1), summarize(samples, p, dir, n));
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                p.key(),
                cell(one),
                ratio(one, reference(1)),
                cell(many),
                ratio(many, reference(n))
            );
        }
        let _ = writeln!(t, "\n![Figure 7, {}s](figure7-{}.png)\n", dir.name(), dir.name());
    }
    let _ = writeln!(t, "Every transfer: `experiment1-figure7.csv` (one line per transfer).\n");
    let _ = writeln!(t, "{READING}");
    let p = s.out.join("README.md");
    std::fs::write(&p, t)?;
    Ok(p)
}
