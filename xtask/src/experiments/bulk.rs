//! Experiments 1 and 2 on one path: the paper's Figure 7 (1 to N
//! concurrent bulk transfers, downloads and uploads, every byte checked by
//! its receiver) and what each set of transfers cost in CPU time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xlate_lab::{Netns, Translator};

use super::cpu::{Snapshot, Spent};
use super::paths::{DataPath, PathUp};
use super::{median, Progress, Settings};
use crate::transfer::{self, Direction, Outcome};

/// One set of concurrent transfers.
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: DataPath,
    pub dir: Direction,
    pub transfers: u32,
    pub run: u32,
    pub outcomes: Vec<Outcome>,
    /// The CPU time it took.
    pub cpu: Spent,
    /// TCP segments retransmitted meanwhile, by every party (client,
    /// gateway, instance): losses on the way, where there are any.
    pub retransmitted: u64,
}

impl Sample {
    /// Total goodput, Gbit/s: every byte over the longest transfer (they
    /// start together).
    pub fn total_gbit_s(&self) -> f64 {
        let secs = self.outcomes.iter().map(|o| o.seconds).fold(0.0, f64::max);
        self.bytes() as f64 * 8.0 / secs / 1e9
    }

    pub fn bytes(&self) -> u64 {
        self.outcomes.iter().map(|o| o.bytes).sum()
    }

    /// CPU seconds per GB moved.
    pub fn cost(&self) -> Spent {
        self.cpu.per_gb(self.bytes())
    }
}

/// Every measurement of experiments 1 and 2 on `path`, which is up on `lab`.
pub fn run(
    path: DataPath,
    up: &PathUp,
    lab: &Translator,
    s: &Settings,
    progress: &mut Progress,
) -> Result<Vec<Sample>> {
    let me = std::env::current_exe()?;
    let client = up.client(lab);
    let mut samples = Vec::new();
    for dir in [Direction::Down, Direction::Up] {
        for n in 1..=s.max_transfers {
            for run in 1..=s.runs {
                progress.step(
                    &format!(
                        "figure 7: {}, {}, {n} transfer(s) of {} MB, run {run}/{}",
                        path.key(),
                        dir.name(),
                        s.size / 1_000_000,
                        s.runs
                    ),
                    u64::from(n) * s.size,
                );
                let parties = [&lab.client, &lab.gateway, &lab.instances[0]];
                let retrans_before = retransmitted(&parties)?;
                let before = Snapshot::take(&lab.gateway)?;
                let out = client
                    .net_cmd(&me)
                    .args(["transfer", "--to", &up.dst.to_string(), "--direction", dir.name()])
                    .args(["--size", &s.size.to_string(), "--count", &n.to_string()])
                    .output()?;
                let cpu = before.since()?;
                let retransmitted = retransmitted(&parties)?.saturating_sub(retrans_before);
                if !out.status.success() {
                    bail!(
                        "{} {} with {n} transfers: {}",
                        path.key(),
                        dir.name(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                let outcomes = transfer::parse(&String::from_utf8_lossy(&out.stdout))?;
                samples.push(Sample { path, dir, transfers: n, run, outcomes, cpu, retransmitted });
            }
        }
    }
    Ok(samples)
}

/// TCP segments the namespaces' stacks have retransmitted so far
/// (`RetransSegs` of /proc/net/snmp, which is per network namespace).
fn retransmitted(nss: &[&Netns]) -> Result<u64> {
    let mut total = 0;
    for ns in nss {
        let out = ns.output("cat", &["/proc/net/snmp"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
        let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
            bail!("no Tcp lines in /proc/net/snmp of {}", ns.name());
        };
        let at = names.split_whitespace().position(|n| n == "RetransSegs").context("no RetransSegs")?;
        total += values.split_whitespace().nth(at).and_then(|v| v.parse::<u64>().ok()).context("RetransSegs value")?;
    }
    Ok(total)
}

/// The bytes experiments 1 and 2 move on one path, for progress.
pub fn weight(s: &Settings) -> u64 {
    (1..=s.max_transfers).map(|n| u64::from(n) * s.size).sum::<u64>() * 2 * u64::from(s.runs)
}

fn matching(samples: &[Sample], path: DataPath, dir: Direction, n: u32) -> impl Iterator<Item = &Sample> {
    samples.iter().filter(move |s| s.path == path && s.dir == dir && s.transfers == n)
}

/// Median, slowest and fastest of some runs.
pub type Spread = (f64, f64, f64);

fn spread(mut v: Vec<f64>) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    let (lo, hi) = (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max));
    Some((median(&mut v), lo, hi))
}

/// Per path, direction and number of transfers: total goodput over the
/// runs (Gbit/s).
pub fn goodput(samples: &[Sample], path: DataPath, dir: Direction, n: u32) -> Option<Spread> {
    spread(matching(samples, path, dir, n).map(Sample::total_gbit_s).collect())
}

/// The median over the runs of CPU seconds per GB (machine, softirq,
/// gateway processes).
pub fn cost(samples: &[Sample], path: DataPath, dir: Direction, n: u32) -> Option<Spent> {
    let runs: Vec<Spent> = matching(samples, path, dir, n).map(Sample::cost).collect();
    let m = |f: fn(&Spent) -> f64| spread(runs.iter().map(f).collect()).map(|s| s.0);
    Some(Spent { machine: m(|c| c.machine)?, softirq: m(|c| c.softirq)?, gateway: m(|c| c.gateway)? })
}

/// The median over the runs of TCP segments retransmitted per GB moved.
pub fn retransmissions(samples: &[Sample], path: DataPath, dir: Direction, n: u32) -> Option<f64> {
    spread(matching(samples, path, dir, n).map(|s| s.retransmitted as f64 / (s.bytes() as f64 / 1e9)).collect())
        .map(|s| s.0)
}

/// experiment1-figure7.csv (one line per transfer) and
/// experiment2-cost.csv (one line per set of transfers).
pub fn write_csv(samples: &[Sample], out: &Path) -> Result<Vec<PathBuf>> {
    let mut t = String::from("path,direction,transfers,run,transfer,bytes,seconds,goodput_mbit_s,intact\n");
    let mut c = String::from(
        "path,direction,transfers,run,bytes,machine_cpu_s,softirq_cpu_s,gateway_processes_cpu_s,\
         machine_s_per_gb,softirq_s_per_gb,gateway_processes_s_per_gb,tcp_retransmitted_segments\n",
    );
    for s in samples {
        for (i, o) in s.outcomes.iter().enumerate() {
            let _ = writeln!(
                t,
                "{},{},{},{},{},{},{:.6},{:.1},{}",
                s.path.key(),
                s.dir.name(),
                s.transfers,
                s.run,
                i + 1,
                o.bytes,
                o.seconds,
                o.mbit_s(),
                o.intact
            );
        }
        let per = s.cost();
        let _ = writeln!(
            c,
            "{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{}",
            s.path.key(),
            s.dir.name(),
            s.transfers,
            s.run,
            s.bytes(),
            s.cpu.machine,
            s.cpu.softirq,
            s.cpu.gateway,
            per.machine,
            per.softirq,
            per.gateway,
            s.retransmitted
        );
    }
    let (a, b) = (out.join("experiment1-figure7.csv"), out.join("experiment2-cost.csv"));
    std::fs::write(&a, t)?;
    std::fs::write(&b, c)?;
    Ok(vec![a, b])
}
