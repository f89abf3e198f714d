//! `cargo xtask`: set-up, build, test and run xlate.
//!
//! The eBPF crate needs a second compiler (see toolchain.rs), so plain
//! `cargo build` is not enough; these commands do every step in order.

mod agent;
mod bench;
mod experiments;
mod lab;
mod plot;
mod results;
mod setup;
mod toolchain;
mod transfer;
mod util;
mod vm;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use util::{is_root, run, workspace_root};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set up, build, test and run xlate")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: a BPF-capable Rust compiler, bpf-linker, and
    /// the tools the tests drive (iproute2, tcpdump, ethtool, iperf3, ping).
    Setup,
    /// Build the eBPF object and the agent that embeds it.
    Build {
        /// Build the agent in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run every test: unit, property, golden-vector,
    /// kernel (BPF load/attach in network namespaces) and integration, a
    /// short fuzzing smoke run, and the kernel matrix (the kernel suites in
    /// Debian's 6.1 and 6.12 under qemu). Needs root.
    Test {
        /// Skip the fuzzing smoke run.
        #[arg(long)]
        no_fuzz: bool,
        /// Skip the kernel matrix (Debian's kernels in qemu).
        #[arg(long)]
        no_vm: bool,
        /// Skip the quick run of the comparison experiments.
        #[arg(long)]
        no_bench: bool,
        /// Seconds of fuzzing per target.
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u32,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Measure, side by side in one run: host-mode goodput versus plain TCP
    /// over the same namespaces and offload settings; translator goodput
    /// versus plain routing through the same gateway (iperf3); the XDP
    /// program's ns/packet (BPF_PROG_TEST_RUN). Needs root.
    Bench {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Also build this git revision (in a worktree under target/bench)
        /// and measure it in the same run, printed beside this build's
        /// figures: before and after a change, under the same conditions.
        #[arg(long, value_name = "REV")]
        baseline: Option<String>,
        /// Run only these tables (repeat or comma-separate); all of them
        /// when not given.
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<BenchTable>,
        /// The experiments: bytes per transfer.
        #[arg(long, default_value_t = 700_000_000)]
        size: u64,
        /// The experiments: runs of each measurement.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Where the experiments write their CSV files, plots and README.
        #[arg(long, default_value = "docs/results")]
        out: PathBuf,
        /// Small and once: every path and experiment, to see that the
        /// harness works (writes to target/results-quick unless --out).
        #[arg(long)]
        quick: bool,
    },
    /// Serve bulk transfers (used by the experiments, inside a namespace).
    #[command(hide = true)]
    TransferServer {
        #[arg(long)]
        port: u16,
    },
    /// Bulk transfers to a `transfer-server` (used by the experiments).
    #[command(hide = true)]
    Transfer {
        #[arg(long)]
        to: std::net::SocketAddr,
        /// download or upload.
        #[arg(long)]
        direction: String,
        #[arg(long)]
        size: u64,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Without arguments: build everything and start the built-in lab
    /// (client, gateway running the translator, two host-mode instances
    /// serving HTTP) with live counters; Ctrl-C tears it down.
    /// `-- --translators N`: the scale-out lab instead (N translators, each
    /// with a prefix of its own, a DNS server, three instances).
    /// `-- --iface IF --config FILE`: run the translator on a real NIC.
    /// `-- COMMAND …`: any other xlate-user command (decode, host, stats…).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot Debian's kernels in qemu (software emulation, the host's root
    /// read-only, tmpfs overlays where tests write, no network device) and
    /// run a shell command in the workspace in each, e.g.
    /// `cargo xtask vm --kernel 6.1 -- target/debug/deps/kernel_classify-HASH`.
    /// Fails if a kernel does not boot or the command fails.
    Vm {
        /// 6.1 (Debian 12's), 6.12 (bookworm-security's) or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Seconds the command (or the matrix's suites) may run in each
        /// guest.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Instead of a command: run the kernel matrix of `cargo xtask
        /// test` (its suites, its table), without the rest of the tests.
        #[arg(long, conflicts_with = "command")]
        matrix: bool,
        /// With --matrix: only these suites (repeat or comma-separate).
        #[arg(long, value_delimiter = ',', requires = "matrix")]
        suite: Vec<String>,
        /// The shell command line to run in the guest.
        #[arg(last = true, required_unless_present = "matrix")]
        command: Vec<String>,
    },
}

/// The tables `cargo xtask bench` prints, in that order.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchTable {
    /// Host mode against plain TCP (iperf3).
    HostMode,
    /// The fast path, the relay and plain routing through a gateway (iperf3).
    Translator,
    /// Short connections per second through the same paths.
    Connections,
    /// The XDP program's ns/packet (BPF_PROG_TEST_RUN).
    Xdp,
    /// The comparison experiments (the paper's Figure 7): CSV, plots and
    /// a README into --out.
    Experiments,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup().map(|_| ()),
        Cmd::Build { release } => build(release).map(|_| ()),
        Cmd::Test { no_fuzz, no_vm, no_bench, fuzz_seconds, cargo_args } => {
            test(no_fuzz, no_vm, no_bench, fuzz_seconds, &cargo_args)
        }
        Cmd::Vm { kernel, timeout, matrix: true, suite, command: _ } => {
            let timeout = std::time::Duration::from_secs(timeout);
            let tally = vm::matrix_of(&kernel, &vm::suites_named(&suite)?, timeout);
            util::unmount_own_bpffs();
            let tally = tally?;
            println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
            if tally.failed > 0 {
                bail!("the kernel matrix failed (see its table above)");
            }
            Ok(())
        }
        Cmd::Vm { kernel, timeout, command, .. } => {
            vm::run_command(&kernel, &command.join(" "), std::time::Duration::from_secs(timeout))
        }
        Cmd::TransferServer { port } => transfer::serve(port),
        Cmd::Transfer { to, direction, size, count } => {
            let dir = match direction.as_str() {
                "download" => transfer::Direction::Down,
                "upload" => transfer::Direction::Up,
                other => bail!("--direction {other:?}: download or upload"),
            };
            transfer::run(to, dir, size, count, std::time::Duration::from_secs(600))
        }
        Cmd::Bench { seconds, baseline, only, size, runs, out, quick } => {
            // Interrupted (Ctrl-C, a timeout), a bench still leaves the
            // machine as it found it: agents stopped for good, labs gone.
            xlate_lab::netns::remove_labs_on_interrupt(agent::stop_all);
            if !is_root() {
                bail!("cargo xtask bench needs root (network namespaces, BPF)");
            }
            let settings = if quick {
                let out = if out == std::path::Path::new("docs/results") {
                    workspace_root().join("target/results-quick")
                } else {
                    out
                };
                experiments::Settings::quick(out)
            } else {
                let out = if out.is_relative() { workspace_root().join(out) } else { out };
                experiments::Settings { size, runs, max_transfers: 5, out, quick: false }
            };
            let seconds = if quick { seconds.min(2) } else { seconds };
            setup::setup()?;
            let old = baseline.as_deref().map(build_baseline).transpose()?;
            let bin = build_with(true, &["testbed"])?;
            let r = (|| {
                // Interleaved, so that drift of the machine hits both alike:
                // table by table, or row by row where a bench can.
                let mut new = Vec::new();
                let mut base = Vec::new();
                type Bench = fn(&[&std::path::Path], u32) -> Result<Vec<bench::Table>>;
                let benches: [(BenchTable, Bench); 4] = [
                    (BenchTable::HostMode, |b, s| bench::per_build(b, s, bench::host_mode)),
                    (BenchTable::Translator, |b, s| bench::per_build(b, s, bench::translator)),
                    (BenchTable::Connections, bench::connections),
                    (BenchTable::Xdp, |b, s| bench::per_build(b, s, |p, _| bench::xdp(p))),
                ];
                let bins: Vec<&std::path::Path> = std::iter::once(bin.as_path()).chain(old.as_deref()).collect();
                for (_, f) in benches.into_iter().filter(|(t, _)| only.is_empty() || only.contains(t)) {
                    let mut tables = f(&bins, seconds)?.into_iter();
                    new.extend(tables.next());
                    base.extend(tables.next());
                }
                bench::print(&new, baseline.as_deref().map(|r| (r, &base[..])));
                if only.is_empty() || only.contains(&BenchTable::Experiments) {
                    if baseline.is_some() {
                        println!("experiments: this build only (--baseline compares the tables above)");
                    }
                    let (results, files) = experiments::run_all(&bin, &settings)?;
                    if quick {
                        let n = experiments::check(&results, &settings, &files)?;
                        println!("experiments: {n} checks of the quick run's outputs passed");
                    }
                }
                Ok(())
            })();
            util::unmount_own_bpffs();
            r
        }
        Cmd::Run { args } => {
            let bin = build(false)?;
            if args.is_empty() {
                if !is_root() {
                    bail!("the lab needs root (network namespaces, BPF): run `sudo cargo xtask run`");
                }
                setup::setup()?;
                return lab::run(&bin);
            }
            if args[0] == "--translators" {
                let n = args
                    .get(1)
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=xlate_lab::topology::scale_out::MAX_TRANSLATORS).contains(n))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--translators N: N is 1 to {}",
                            xlate_lab::topology::scale_out::MAX_TRANSLATORS
                        )
                    })?;
                if !is_root() {
                    bail!(
                        "the lab needs root (network namespaces, BPF): run `sudo cargo xtask run -- --translators {n}`"
                    );
                }
                setup::setup()?;
                return lab::run_scale_out(&bin, n);
            }
            // Options first: the translator on real NICs.
            let args = if args[0].starts_with("--") && args[0] != "--help" && args[0] != "--version" {
                let mut a = vec!["run".to_string()];
                a.extend(args);
                a
            } else {
                args
            };
            let status =
                Command::new(&bin).args(&args).status().with_context(|| format!("starting {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}

fn ebpf_object() -> PathBuf {
    workspace_root().join("xlate-ebpf/target/bpfel-unknown-none/release/xlate")
}

/// Builds the eBPF object, then the agent; returns the agent's path.
fn build(release: bool) -> Result<PathBuf> {
    build_with(release, &[])
}

/// [`build`] with extra cargo features of xlate-user (`testbed` for the
/// benchmarks).
fn build_with(release: bool, features: &[&str]) -> Result<PathBuf> {
    let tc = match toolchain::detect() {
        Some(tc) if toolchain::bpf_linker().is_some() => tc,
        _ => {
            println!("build: BPF toolchain incomplete, running setup first");
            toolchain::ensure()?
        }
    };
    println!("build: eBPF object with {}", tc.describe());
    run(&mut tc.build_command(&workspace_root().join("xlate-ebpf")))?;
    let obj = ebpf_object();
    if !obj.exists() {
        bail!("the eBPF build succeeded but {} is missing", obj.display());
    }
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root()).args(["build", "-p", "xlate-user"]);
    if release {
        cmd.arg("--release");
    }
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    cmd.env("XLATE_EBPF_OBJECT", &obj);
    run(&mut cmd)?;
    Ok(workspace_root().join("target").join(if release { "release" } else { "debug" }).join("xlate-user"))
}

/// Builds git revision `rev` in a worktree of its own under target/bench
/// with that revision's own `cargo xtask build --release` (its bench-xdp
/// is built in where it predates the `testbed` feature); its agent binary.
fn build_baseline(rev: &str) -> Result<PathBuf> {
    let root = workspace_root();
    let out = Command::new("git").current_dir(&root).args(["rev-parse", "--short", rev]).output()?;
    if !out.status.success() {
        bail!("--baseline {rev}: not a git revision here");
    }
    let short = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = root.join("target/bench").join(format!("baseline-{short}"));
    if !dir.join("Cargo.toml").exists() {
        let _ = Command::new("git").current_dir(&root).args(["worktree", "prune"]).status();
        run(Command::new("git").current_dir(&root).args(["worktree", "add", "--detach"]).arg(&dir).arg(rev))?;
    }
    println!("bench: building baseline {rev} ({short}) in {}", dir.display());
    let has_feature = std::fs::read_to_string(dir.join("xlate-user/Cargo.toml"))?.contains("testbed = ");
    let mut cmd = Command::new(cargo());
    cmd.current_dir(&dir).args(["xtask", "build", "--release"]).env_remove("CARGO_TARGET_DIR");
    run(&mut cmd)?;
    if has_feature {
        let obj = dir.join("xlate-ebpf/target/bpfel-unknown-none/release/xlate");
        run(Command::new(cargo())
            .current_dir(&dir)
            .args(["build", "--release", "-p", "xlate-user", "--features", "testbed"])
            .env("XLATE_EBPF_OBJECT", obj))?;
    }
    Ok(dir.join("target/release/xlate-user"))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Starts `cargo xtask bench --only experiments --quick`, interrupts it
/// (SIGINT, as Ctrl-C) once its first lab and agents run, and checks that
/// it ends as interrupted (128 + 2) leaving none of its namespaces, agents
/// or pins behind.
fn interrupted_bench_cleans_up() -> Result<()> {
    use std::io::BufRead as _;
    let out = workspace_root().join("target/results-interrupted");
    let pin_dirs = || std::fs::read_dir("/sys/fs/bpf/xlate").map(|d| d.count()).unwrap_or(0);
    let (agents_before, pins_before) = (running_agents(), pin_dirs());
    let mut child = Command::new(std::env::current_exe()?)
        .current_dir(workspace_root())
        .args(["bench", "--only", "experiments", "--quick", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // The first measurement's progress line: the lab is built, its agents
    // are up, a transfer is starting.
    let stdout = child.stdout.take().context("the bench's output")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let started = lines.by_ref().map_while(|l| l.ok()).any(|l| l.contains("elapsed"));
    let agents: Vec<u32> = running_agents().into_iter().filter(|p| !agents_before.contains(p)).collect();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait()?;
    let lab_left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("xlt-x7-"))
        .collect();
    // Killed agents may take a moment to go (the bench's children are
    // handed to init when it exits).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let agents_left = loop {
        let left: Vec<u32> = running_agents().into_iter().filter(|p| !agents_before.contains(p)).collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let agents_left: Vec<String> = agents_left
        .iter()
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p} ({})", String::from_utf8_lossy(&cmd).replace('\0', " ").trim())
        })
        .collect();
    if !started || agents.is_empty() {
        bail!("the bench never got to its first measurement with agents running (status {status})");
    }
    if status.code() != Some(130) {
        bail!("the interrupted bench ended with {status}, not as interrupted (130)");
    }
    if !lab_left.is_empty() || !agents_left.is_empty() {
        bail!("the interrupted bench left namespaces {lab_left:?} and agents {agents_left:?}");
    }
    let pins = pin_dirs();
    if pins > pins_before {
        bail!("the interrupted bench left {} pin directories in /sys/fs/bpf/xlate", pins - pins_before);
    }
    Ok(())
}

/// The pids of `xlate-user` processes running now (a zombie, dead and not
/// yet reaped by whoever inherited it, is not running).
fn running_agents() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `pid (comm) state ...`: the state follows the last ')'.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
            let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
            stat[open + 1..close].starts_with("xlate-user") && state != "Z" && state != "X"
        })
        .collect()
}

fn test(no_fuzz: bool, no_vm: bool, no_bench: bool, fuzz_seconds: u32, cargo_args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask test needs root: the kernel tests load BPF programs and create network namespaces");
    }
    setup::setup()?;
    let bin = build(false)?;
    println!("test: cargo test --workspace");
    let tally = cargo_test_and_clean(
        Command::new(cargo())
            .current_dir(workspace_root())
            .args(["test", "--workspace"])
            .args(cargo_args)
            .env("XLATE_EBPF_OBJECT", ebpf_object())
            .env("XLATE_USER_BIN", &bin),
    )?;
    // The kernel suites again, in the kernels the programs ship to.
    let kernels = if no_vm {
        println!("test: kernel matrix skipped (--no-vm)");
        Tally::default()
    } else {
        println!("test: kernel matrix: {} suites in each kernel", vm::SUITES.len());
        let r = vm::matrix(vm::SUITES);
        // Its native pass (fallbacks forced) loads on this machine too.
        util::unmount_own_bpffs();
        r.inspect_err(|_| {
            // The closing line CI reads, even when the matrix could not run.
            println!("xtask: {} passed, {} failed", tally.passed, tally.failed + 1);
        })?
    };
    // The experiments, small and once: the harness cannot rot.
    let mut experiments_error = None;
    let experimented = if no_bench {
        println!("test: quick experiments skipped (--no-bench)");
        Tally::default()
    } else {
        println!("test: the comparison experiments, quick (cargo xtask bench --only experiments --quick)");
        let settings = experiments::Settings::quick(workspace_root().join("target/results-quick"));
        // Experiment 4 runs `bench-xdp`, which only a `testbed` build has
        // (as `cargo xtask bench` builds it).
        let r = build_with(false, &["testbed"])
            .and_then(|bench_bin| experiments::run_all(&bench_bin, &settings))
            .and_then(|(s, f)| experiments::check(&s, &settings, &f));
        util::unmount_own_bpffs();
        let r = r.and_then(|n| {
            println!("test: an interrupted bench leaves nothing behind");
            interrupted_bench_cleans_up().map(|()| n + 1)
        });
        match r {
            Ok(n) => {
                println!("test: quick experiments: {n} checks passed");
                Tally { passed: u64::from(n), failed: 0 }
            }
            Err(e) => {
                println!("test: quick experiments FAILED: {e:#}");
                experiments_error = Some(e);
                Tally { passed: 0, failed: 1 }
            }
        }
    };
    let fuzzed = if no_fuzz {
        println!("test: fuzzing smoke run skipped (--no-fuzz)");
        0
    } else {
        fuzz_smoke(fuzz_seconds)?
    };
    if tally.passed == 0 {
        bail!("no test ran");
    }
    // The plain closing line CI reads, counting every test and fuzz target.
    let failed = tally.failed + kernels.failed + experimented.failed;
    println!("xtask: {} passed, {} failed", tally.passed + kernels.passed + experimented.passed + fuzzed, failed);
    if kernels.failed > 0 {
        bail!("the kernel matrix failed (see its table above)");
    }
    if let Some(e) = experiments_error {
        // Again here, at the end, where a reader of CI's tail looks.
        bail!("the quick experiments failed: {e:#}");
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

/// Passed and failed counts of a libtest summary line,
/// "test result: ok. 11 passed; 0 failed; 0 ignored; …".
fn result_line_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let (mut passed, mut failed) = (0, 0);
    for part in rest.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        match words.as_slice() {
            [.., n, "passed"] => passed += n.parse::<u64>().unwrap_or(0),
            [n, "failed"] => failed += n.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    Some((passed, failed))
}

/// [`cargo_test`], then unmounts a bpffs the agents mounted, pass or fail.
fn cargo_test_and_clean(cmd: &mut Command) -> Result<Tally> {
    let r = cargo_test(cmd);
    util::unmount_own_bpffs();
    r
}

/// Runs `cargo test`, echoing its output, and adds up its result lines.
fn cargo_test(cmd: &mut Command) -> Result<Tally> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().context("starting cargo test")?;
    let mut tally = Tally::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some((passed, failed)) = result_line_counts(&line) {
            tally.passed += passed;
            tally.failed += failed;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("xtask: {} passed, {} failed", tally.passed, tally.failed.max(1));
        bail!("cargo test failed with {status}");
    }
    Ok(tally)
}

/// Runs each fuzz target briefly with cargo-fuzz on a nightly toolchain;
/// returns how many targets ran clean.
fn fuzz_smoke(seconds: u32) -> Result<u64> {
    let Some(nightly) = nightly_toolchain() else {
        println!("test: fuzzing smoke run skipped: no nightly toolchain (see docs/testing.md)");
        return Ok(0);
    };
    if util::which("cargo-fuzz").is_none() && !util::home_cargo_bin().join("cargo-fuzz").exists() {
        println!("test: installing cargo-fuzz (once)");
        run(Command::new(cargo()).args(["install", "--locked", "cargo-fuzz"]).env_remove("RUSTUP_TOOLCHAIN"))?;
    }
    let targets = ["sal_parse", "packet_parse"];
    for target in targets {
        println!("test: fuzzing {target} for {seconds} s");
        run(Command::new("rustup")
            .current_dir(workspace_root())
            .args(["run", &nightly, "cargo", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .env("PATH", util::path_with_cargo_bin())
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO"))?;
    }
    Ok(targets.len() as u64)
}

fn nightly_toolchain() -> Option<String> {
    let out = Command::new("rustup").args(["toolchain", "list"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|t| t.starts_with("nightly"))
        .map(str::to_string)
}
