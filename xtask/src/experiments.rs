//! The comparison experiments (`cargo xtask bench --only experiments`): the
//! paper's Figure 7 (1 to 5 concurrent bulk transfers through each path,
//! downloads and uploads), written as CSV, PNG plots and a summary a
//! person can read, into `docs/results/` (or `--out`). `--quick` runs
//! every path and every experiment small and once, and checks its own
//! outputs; `cargo xtask test` runs it so that the harness cannot rot.
//!
//! Paths, all on one lab (client, gateway, one host-mode instance):
//! plain routing through the gateway (the reference; the translator's XDP
//! attached and passing), the fast path with native and with generic XDP,
//! xlate's stream relay with splice and with copies, and HAProxy (TCP
//! mode, splice on) relaying to the same instance through xlate's
//! connecting side (host mode on the gateway): the stream relay a user
//! could assemble today.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xlate_lab::topology::translator;
use xlate_lab::{Bg, Naming, Netns, Translator, TranslatorOptions};

use crate::agent::{start as start_agent, Running};
use crate::transfer::{self, Direction, Outcome};

const PORT: u16 = 5401;
const SERVICE_ID: &str = "00001541";
/// Where the gateway's host-mode side sends HAProxy's connections.
const HAPROXY_SVC: &str = "10.99.0.100";

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
}

/// A way from the client to the instance's server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    Routing,
    FastNative,
    FastGeneric,
    RelaySplice,
    RelayCopy,
    Haproxy,
}

pub const PATHS: [DataPath; 6] = [
    DataPath::Routing,
    DataPath::FastNative,
    DataPath::FastGeneric,
    DataPath::RelaySplice,
    DataPath::RelayCopy,
    DataPath::Haproxy,
];

impl DataPath {
    /// The short name in CSV files and plots.
    pub fn key(self) -> &'static str {
        match self {
            DataPath::Routing => "routing",
            DataPath::FastNative => "fast-path-native",
            DataPath::FastGeneric => "fast-path-generic",
            DataPath::RelaySplice => "relay-splice",
            DataPath::RelayCopy => "relay-copy",
            DataPath::Haproxy => "haproxy",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            DataPath::Routing => "plain IP routing through the gateway (XDP attached, passing)",
            DataPath::FastNative => "xlate fast path, native XDP (TCP -> SAL per packet)",
            DataPath::FastGeneric => "xlate fast path, generic XDP",
            DataPath::RelaySplice => "xlate stream relay, splice",
            DataPath::RelayCopy => "xlate stream relay, read/write copies",
            DataPath::Haproxy => "HAProxy (TCP mode, splice) + xlate host mode on the gateway",
        }
    }
}

/// What keeps a path up; dropped, it tears it down.
struct PathUp {
    _guards: Vec<Box<dyn std::any::Any>>,
    dst: std::net::SocketAddr,
}

fn config_file(out: &Path) -> Result<PathBuf> {
    let p = out.join("experiments.toml");
    std::fs::write(
        &p,
        format!(
            "[translator]\nsal_address = \"{}\"\n\n[[service]]\naddress = \"{}\"\nport = {PORT}\nservice_id = \"{SERVICE_ID}\"\ninstances = [\"{}\"]\n",
            translator::SAL_ADDRESS,
            translator::PUBLIC_IP,
            translator::INSTANCES[0]
        ),
    )?;
    Ok(p)
}

const HAPROXY_CFG: &str = "global
    maxconn 4096
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend serval
    bind {PUBLIC}:{PORT}
    default_backend instances
backend instances
    server s1 {SVC}:{PORT}
";

fn start_path(p: DataPath, bin: &Path, lab: &Translator, out: &Path) -> Result<PathUp> {
    let config = config_file(out)?;
    let config = config.to_str().context("config path")?;
    let gw = &lab.gateway;
    let public: std::net::SocketAddr = format!("{}:{PORT}", translator::PUBLIC_IP).parse()?;
    let run = |mode: &str| -> Result<Running> {
        start_agent(
            bin,
            gw,
            out,
            "gateway",
            &["run", "--xdp-mode", mode, "--iface", "g0", "--iface", "g1", "--config", config],
            &["stop", "--iface", "g0"],
        )
    };
    let relay = |mode: &str| -> Result<Running> {
        start_agent(
            bin,
            gw,
            out,
            "gateway",
            &["relay", "--alias", "--mode", mode, "--iface", "g0", "--iface", "g1", "--config", config],
            &["stop", "--iface", "g0"],
        )
    };
    Ok(match p {
        DataPath::Routing => PathUp {
            _guards: vec![Box::new(run("native")?)],
            dst: format!("{}:{PORT}", translator::INSTANCES[0]).parse()?,
        },
        DataPath::FastNative => PathUp { _guards: vec![Box::new(run("native")?)], dst: public },
        DataPath::FastGeneric => PathUp { _guards: vec![Box::new(run("generic")?)], dst: public },
        DataPath::RelaySplice => PathUp { _guards: vec![Box::new(relay("splice")?)], dst: public },
        DataPath::RelayCopy => PathUp { _guards: vec![Box::new(relay("copy")?)], dst: public },
        DataPath::Haproxy => {
            // Debian puts it in /usr/sbin, which a user's PATH may lack.
            let haproxy = crate::util::which("haproxy")
                .or_else(|| Some(PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.exists()))
                .context("haproxy is not installed: run `cargo xtask setup`")?;
            gw.try_ip(&["addr", "add", &format!("{}/32", translator::PUBLIC_IP), "dev", "g0"])?;
            let connect = format!("{SERVICE_ID}={HAPROXY_SVC}:{PORT}");
            let route = format!("{SERVICE_ID}={}", translator::INSTANCES[0]);
            let host = start_agent(
                bin,
                gw,
                out,
                "gateway-host-mode",
                &["host", "--iface", "g1", "--connect", &connect, "--route", &route],
                &["host", "stop", "--iface", "g1"],
            )?;
            let cfg = out.join("haproxy.cfg");
            std::fs::write(
                &cfg,
                HAPROXY_CFG
                    .replace("{PUBLIC}", translator::PUBLIC_IP)
                    .replace("{SVC}", HAPROXY_SVC)
                    .replace("{PORT}", &PORT.to_string()),
            )?;
            let child = gw
                .net_cmd(&haproxy)
                .args(["-db", "-f"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting haproxy")?;
            let haproxy = Running::process(Bg::from_child(child).terminate_on_drop());
            wait_listening(gw, public)?;
            // Dropped in order: HAProxy, then host mode.
            PathUp { _guards: vec![Box::new(haproxy), Box::new(host)], dst: public }
        }
    })
}

/// Waits until something in `ns` listens on `addr`.
fn wait_listening(ns: &Netns, addr: std::net::SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = format!(":{}", addr.port());
    while Instant::now() < deadline {
        let out = ns.output("ss", &["-Hltn"]);
        if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.contains(&port)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on {addr} after 10 s")
}

/// One set of concurrent transfers.
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: DataPath,
    pub dir: Direction,
    pub transfers: u32,
    pub run: u32,
    pub outcomes: Vec<Outcome>,
}

impl Sample {
    /// Total goodput, Gbit/s: every byte over the longest transfer (they
    /// start together).
    pub fn total_gbit_s(&self) -> f64 {
        let bytes: u64 = self.outcomes.iter().map(|o| o.bytes).sum();
        let secs = self.outcomes.iter().map(|o| o.seconds).fold(0.0, f64::max);
        bytes as f64 * 8.0 / secs / 1e9
    }
}

/// Progress on the terminal: which experiment, path, run, and time left.
struct Progress {
    started: Instant,
    total: u64,
    done: u64,
}

impl Progress {
    fn step(&mut self, what: &str, weight: u64) {
        let el = self.started.elapsed().as_secs_f64();
        let left = if self.done > 0 { el / self.done as f64 * (self.total - self.done) as f64 } else { f64::NAN };
        let left = if left.is_nan() { "?".into() } else { format!("{}m{:02}s", left as u64 / 60, left as u64 % 60) };
        println!("experiments: {what} (elapsed {}m{:02}s, about {left} left)", el as u64 / 60, el as u64 % 60);
        self.done += weight;
    }
}

/// Experiment 1, the paper's Figure 7.
pub fn figure7(bin: &Path, s: &Settings) -> Result<Vec<Sample>> {
    let me = std::env::current_exe()?;
    let weight = |n: u32| u64::from(n) * s.size;
    let per_path: u64 = (1..=s.max_transfers).map(weight).sum::<u64>() * 2 * u64::from(s.runs);
    let mut progress = Progress { started: Instant::now(), total: per_path * PATHS.len() as u64, done: 0 };
    let mut samples = Vec::new();
    for (pi, &path) in PATHS.iter().enumerate() {
        let opts = TranslatorOptions { instances: 1, gro: true, client_tx_offload: true };
        let lab = Translator::build(Naming::Fixed("xlt-x7"), opts)?;
        let inst = &lab.instances[0];
        let serve = format!("{SERVICE_ID}={PORT}");
        let _inst = start_agent(
            bin,
            inst,
            &s.out,
            "instance",
            &["host", "--iface", "e0", "--serve", &serve],
            &["host", "stop", "--iface", "e0"],
        )?;
        let mut server = Bg::from_child(
            inst.net_cmd(&me)
                .args(["transfer-server", "--port", &PORT.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?,
        );
        server.wait_for_line("listening", Duration::from_secs(10));
        let running = start_path(path, bin, &lab, &s.out).with_context(|| format!("starting {}", path.key()))?;
        for dir in [Direction::Down, Direction::Up] {
            for n in 1..=s.max_transfers {
                for run in 1..=s.runs {
                    progress.step(
                        &format!(
                            "figure 7: path {}/{} {}, {}, {n} transfer(s) of {} MB, run {run}/{}",
                            pi + 1,
                            PATHS.len(),
                            path.key(),
                            dir.name(),
                            s.size / 1_000_000,
                            s.runs
                        ),
                        weight(n),
                    );
                    let out = lab
                        .client
                        .net_cmd(&me)
                        .args(["transfer", "--to", &running.dst.to_string(), "--direction", dir.name()])
                        .args(["--size", &s.size.to_string(), "--count", &n.to_string()])
                        .output()?;
                    if !out.status.success() {
                        bail!(
                            "{} {} with {n} transfers: {}",
                            path.key(),
                            dir.name(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                    let outcomes = transfer::parse(&String::from_utf8_lossy(&out.stdout))?;
                    samples.push(Sample { path, dir, transfers: n, run, outcomes });
                }
            }
        }
        drop(running);
        drop(server);
        drop(_inst);
        drop(lab);
    }
    Ok(samples)
}

fn median(v: &mut [f64]) -> f64 {
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

/// Per path, direction and number of transfers: median, min and max total
/// goodput over the runs (Gbit/s).
pub fn summarize(samples: &[Sample], path: DataPath, dir: Direction, n: u32) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = samples
        .iter()
        .filter(|s| s.path == path && s.dir == dir && s.transfers == n)
        .map(Sample::total_gbit_s)
        .collect();
    if v.is_empty() {
        return None;
    }
    let (lo, hi) = (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max));
    Some((median(&mut v), lo, hi))
}

/// experiment1-figure7.csv: one line per transfer.
pub fn write_csv(samples: &[Sample], out: &Path) -> Result<PathBuf> {
    let mut t = String::from("path,direction,transfers,run,transfer,bytes,seconds,goodput_mbit_s,intact\n");
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
    }
    let p = out.join("experiment1-figure7.csv");
    std::fs::write(&p, t)?;
    Ok(p)
}

/// What `--quick` checks of its own outputs: every row present, every
/// transfer intact, every plot a PNG. Returns the checks passed, or the
/// first that failed.
pub fn check(samples: &[Sample], s: &Settings, files: &[PathBuf]) -> Result<u32> {
    let mut passed = 0;
    for path in PATHS {
        for dir in [Direction::Down, Direction::Up] {
            for n in 1..=s.max_transfers {
                let rows: Vec<&Sample> =
                    samples.iter().filter(|x| x.path == path && x.dir == dir && x.transfers == n).collect();
                if rows.len() != s.runs as usize || rows.iter().any(|r| r.outcomes.len() != n as usize) {
                    bail!("{} {} with {n} transfers: {} runs recorded", path.key(), dir.name(), rows.len());
                }
                if let Some(bad) = rows.iter().flat_map(|r| &r.outcomes).find(|o| !o.intact || o.bytes != s.size) {
                    bail!("{} {} with {n} transfers: a transfer arrived damaged: {bad:?}", path.key(), dir.name());
                }
                passed += 1;
            }
        }
    }
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

/// Runs every experiment and writes its outputs; the samples and files.
pub fn run_all(bin: &Path, s: &Settings) -> Result<(Vec<Sample>, Vec<PathBuf>)> {
    std::fs::create_dir_all(&s.out)?;
    let started = Instant::now();
    let samples = figure7(bin, s)?;
    let mut files = vec![write_csv(&samples, &s.out)?];
    files.extend(crate::plot::figure7(&samples, s)?);
    files.push(crate::results::write_readme(&samples, s, started.elapsed())?);
    for f in &files {
        println!("experiments: wrote {}", f.display());
    }
    Ok((samples, files))
}
