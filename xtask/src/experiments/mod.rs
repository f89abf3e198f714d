//! The comparison experiments (`cargo xtask bench --only experiments`),
//! written as CSV, PNG plots and a summary a person can read, into
//! `docs/results/` (or `--out`):
//!
//! 1. the paper's Figure 7: 1 to 5 concurrent bulk transfers through each
//!    path, downloads and uploads ([`bulk`]);
//! 2. what those transfers cost in CPU time, the machine's and the
//!    gateway's processes' ([`cpu`]);
//! 3. short connections per second and their life at a fixed load and at
//!    saturation, both closing orders ([`connections`]);
//! 4. the translator's ns/packet beside trivial XDP programs ([`per_packet`]);
//! 5. host mode against plain TCP on one link ([`host_mode`]);
//!
//! and, from all of them, issue 18's floors as this run measured them
//! ([`floors`]).
//!
//! Every path gets a lab of its own (client, gateway, one host-mode
//! instance), experiments 1 to 3 run on it, then it is torn down.
//! `--quick` runs every path and every experiment small and once, and
//! checks its own outputs; `cargo xtask test` runs it so that the harness
//! cannot rot.

pub mod bulk;
pub mod connections;
pub mod cpu;
pub mod floors;
pub mod host_mode;
pub mod paths;
pub mod per_packet;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xlate_lab::{Bg, Naming, Translator, TranslatorOptions};

use crate::agent::start as start_agent;
use crate::transfer::Direction;
pub use paths::{DataPath, PATHS};

/// How big and how often.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bytes per transfer.
    pub size: u64,
    pub runs: u32,
    /// Concurrent transfers: 1 to this.
    pub max_transfers: u32,
    pub out: PathBuf,
    pub quick: bool,
}

impl Settings {
    pub fn quick(out: PathBuf) -> Settings {
        Settings { size: 8_000_000, runs: 1, max_transfers: 5, out, quick: true }
    }

    /// How long each short-connections measurement lasts.
    pub fn connection_seconds(&self) -> f64 {
        if self.quick {
            2.0
        } else {
            10.0
        }
    }

    /// Runs per packet kind in experiment 4.
    pub fn xdp_runs(&self) -> u32 {
        if self.quick {
            2000
        } else {
            20000
        }
    }

    /// Seconds per iperf3 run in experiment 5.
    pub fn host_mode_seconds(&self) -> u32 {
        if self.quick {
            1
        } else {
            5
        }
    }

    /// The command line that makes these results.
    pub fn command(&self) -> String {
        if self.quick {
            "cargo xtask bench --only experiments --quick".to_string()
        } else {
            format!("cargo xtask bench --only experiments --size {} --runs {}", self.size, self.runs)
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Results {
    pub bulk: Vec<bulk::Sample>,
    pub connections: Vec<connections::Run>,
    pub per_packet: Vec<per_packet::PacketCost>,
    pub host_mode: Option<host_mode::HostMode>,
}

/// Progress on the terminal: which experiment, path, run, and time left.
pub struct Progress {
    started: Instant,
    total: u64,
    done: u64,
}

impl Progress {
    pub fn step(&mut self, what: &str, weight: u64) {
        let el = self.started.elapsed().as_secs_f64();
        let left =
            if self.done > 0 { el / self.done as f64 * self.total.saturating_sub(self.done) as f64 } else { f64::NAN };
        let left = if left.is_nan() { "?".into() } else { format!("{}m{:02}s", left as u64 / 60, left as u64 % 60) };
        println!("experiments: {what} (elapsed {}m{:02}s, about {left} left)", el as u64 / 60, el as u64 % 60);
        self.done += weight;
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Experiments 1 to 3, path by path, each on a fresh lab.
fn per_path(bin: &Path, s: &Settings, results: &mut Results) -> Result<()> {
    let me = std::env::current_exe()?;
    let weight = bulk::weight(s) + connections::weight(s);
    let mut progress = Progress { started: Instant::now(), total: weight * PATHS.len() as u64, done: 0 };
    for (i, &path) in PATHS.iter().enumerate() {
        println!("experiments: path {}/{}: {} ({})", i + 1, PATHS.len(), path.key(), path.describe());
        let opts = TranslatorOptions { instances: 1, gro: true, client_tx_offload: true };
        let lab = Translator::build(Naming::Fixed("xlt-x7"), opts)?;
        let inst = &lab.instances[0];
        // GRO on where the instance receives, as a real NIC has it (veth
        // has it off); how its host mode receives: `DataPath::instance_receive`.
        inst.set_offload("e0", "gro", true)?;
        let serve = format!("{}={}", paths::SERVICE_ID, paths::PORT);
        let mut args = vec!["host", "--iface", "e0", "--serve", &serve];
        args.extend(path.instance_receive());
        let _inst = start_agent(bin, inst, &s.out, "instance", &args, &["host", "stop", "--iface", "e0"])?;
        let up = paths::start(path, bin, &lab, &s.out).with_context(|| format!("starting {}", path.key()))?;
        let mut server = Bg::from_child(
            inst.net_cmd(&me)
                .args(["transfer-server", "--port", &paths::PORT.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?,
        );
        server.wait_for_line("listening", Duration::from_secs(10));
        results.bulk.extend(bulk::run(path, &up, &lab, s, &mut progress)?);
        drop(server);
        std::thread::sleep(Duration::from_millis(300));
        results.connections.extend(connections::run(path, &up, &lab, s, &mut progress)?);
        drop(up);
        drop(_inst);
        drop(lab);
    }
    Ok(())
}

/// What `--quick` checks of its own outputs: every row present, every
/// transfer intact, every measurement made, every plot a PNG. Returns the
/// checks passed, or the first that failed.
pub fn check(r: &Results, s: &Settings, files: &[PathBuf]) -> Result<u32> {
    let mut passed = 0;
    for path in PATHS {
        for dir in [Direction::Down, Direction::Up] {
            for n in 1..=s.max_transfers {
                let rows: Vec<&bulk::Sample> =
                    r.bulk.iter().filter(|x| x.path == path && x.dir == dir && x.transfers == n).collect();
                if rows.len() != s.runs as usize || rows.iter().any(|r| r.outcomes.len() != n as usize) {
                    bail!("{} {} with {n} transfers: {} runs recorded", path.key(), dir.name(), rows.len());
                }
                // (The receiver reads every byte of the size and checks
                // it: a short transfer is not intact.)
                if let Some(bad) = rows.iter().flat_map(|r| &r.outcomes).find(|o| !o.intact) {
                    bail!("{} {} with {n} transfers: a transfer arrived damaged: {bad:?}", path.key(), dir.name());
                }
                passed += 1;
            }
        }
        // A relay's own processes do the moving: their time must show
        // (summed over the path's transfers: a quick run's single set may
        // fall between two clock ticks).
        if matches!(path, DataPath::RelaySplice | DataPath::RelayCopy | DataPath::Haproxy) {
            let spent: f64 = r.bulk.iter().filter(|x| x.path == path).map(|x| x.cpu.gateway).sum();
            if spent <= 0.0 {
                bail!("{}: the gateway's processes show no CPU time", path.key());
            }
            passed += 1;
        }
        let conns: Vec<_> = r.connections.iter().filter(|c| c.path == path).collect();
        if conns.len() != 4 {
            bail!("{}: {} connection measurements, not 4", path.key(), conns.len());
        }
        for c in conns {
            // Every connection of a healthy path completes: a failure is a
            // broken path, not a slow one.
            if c.life_ms.len() < 20 || c.failed > 0 {
                bail!(
                    "{} {} closes first, {}: {} connections completed, {} failed ({})",
                    path.key(),
                    c.closer.name(),
                    c.load.name(),
                    c.life_ms.len(),
                    c.failed,
                    c.why
                );
            }
            passed += 1;
        }
    }
    if r.per_packet.len() < 4 || r.per_packet.iter().any(|p| !(p.translator_ns > 0.0 && p.pass_ns > 0.0)) {
        bail!("per-packet figures missing: {:?}", r.per_packet);
    }
    passed += 1;
    let Some(h) = &r.host_mode else { bail!("experiment 5 (host mode) missing") };
    if let Some((name, v)) = h.rows().into_iter().find(|(_, v)| v.iter().any(|x| !(x.is_finite() && *x > 0.0))) {
        bail!("experiment 5: {name}: {v:?}");
    }
    passed += 1;
    // Every floor has its measurement (whether it holds is the run's
    // finding, not the harness's).
    if let Some(f) = floors::evaluate(r, s).iter().find(|f| f.met().is_none()) {
        bail!("issue 18's floor \"{}\" was not measured", f.what);
    }
    passed += 1;
    for f in files {
        let b = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let ok = match f.extension().and_then(|e| e.to_str()) {
            Some("png") => b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 2000,
            _ => !b.is_empty(),
        };
        if !ok {
            bail!("{} is not a valid output ({} bytes)", f.display(), b.len());
        }
        passed += 1;
    }
    Ok(passed)
}

/// Runs every experiment and writes its outputs; the results and files.
pub fn run_all(bin: &Path, s: &Settings) -> Result<(Results, Vec<PathBuf>)> {
    std::fs::create_dir_all(&s.out)?;
    let started = Instant::now();
    let mut results = Results::default();
    println!("experiments: per packet (experiment 4)");
    results.per_packet = per_packet::measure(bin, s.xdp_runs())?;
    per_path(bin, s, &mut results)?;
    println!("experiments: host mode against plain TCP (experiment 5)");
    let hm = host_mode::measure(bin, s.host_mode_seconds())?;
    results.host_mode = Some(hm);
    let mut files = bulk::write_csv(&results.bulk, &s.out)?;
    files.extend(connections::write_csv(&results.connections, &s.out)?);
    files.push(per_packet::write_csv(&results.per_packet, &s.out)?);
    if let Some(h) = &results.host_mode {
        files.push(host_mode::write_csv(h, &s.out)?);
    }
    files.extend(crate::plot::all(&results, s)?);
    files.push(crate::results::write_readme(&results, s, started.elapsed())?);
    for f in &files {
        println!("experiments: wrote {}", f.display());
    }
    Ok((results, files))
}
