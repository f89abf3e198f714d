//! The kernel matrix: test binaries of this workspace run inside Debian's
//! own kernels, booted in qemu, so that the eBPF programs are proven on the
//! kernels people deploy (Debian 12's 6.1 and its 6.12), not only on the
//! host's.
//!
//! How a guest is made (every step chosen for boot speed and for leaving
//! the host untouched):
//! - the kernel package comes from apt (`apt-get download`), is unpacked
//!   once under `target/vm/<release>/` and given a modules.dep (`depmod`);
//! - the compressed kernel's payload is unpacked to a `vmlinux` that qemu
//!   boots through its PVH entry, skipping the decompressor (~3 s under
//!   emulation); the bzImage remains the fallback;
//! - a busybox initramfs (written here, no cpio tool needed) loads just the
//!   modules that reach the root file system, mounts the host's `/`
//!   read-only over virtio-9p, puts tmpfs overlays where tests write, and
//!   switches to it: the guest runs the host's own binaries and tools;
//! - other modules (veth, sch_ingress, ...) load on demand through a
//!   modprobe wrapper pointed at the unpacked tree;
//! - results come back over the serial console as marker lines carrying a
//!   per-run nonce, so test output can never fake them.
//!
//! No kvm (it cannot run these kernels on the CI machines), no network
//! device: software emulation, `-nic none`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{run, workspace_root};
use crate::Tally;

/// One test binary of `xlate-tests` (optionally narrowed by a name filter)
/// run in every guest.
#[derive(Clone, Copy, Debug)]
pub struct Suite {
    /// The name in the summary table.
    pub name: &'static str,
    /// The cargo test target (`tests/tests/<target>.rs`).
    pub target: &'static str,
    /// Test name filters passed to the binary (a test runs if its name
    /// contains any); none runs all of it.
    pub filter: &'static [&'static str],
}

/// What `cargo xtask test` runs in each kernel. Edit freely: a suite is a
/// test target of `xlate-tests` and an optional name filter.
pub const SUITES: &[Suite] = &[
    Suite { name: "gateway_fixtures", target: "gateway_fixtures", filter: &[] },
    Suite { name: "host_fixtures", target: "host_fixtures", filter: &[] },
    Suite { name: "kernel_classify", target: "kernel_classify", filter: &[] },
    Suite { name: "vm_matrix_lab", target: "translator", filter: &["vm_matrix"] },
    // Migration under loss: the control plane is the agent's, but the
    // moves it makes (the addresses in FLOW_TUPLES) take effect in each kernel's datapath.
    Suite { name: "host_migration", target: "host_mode", filter: &["migrat", "merged_with_a_fin"] },
    // Host mode receiving at XDP (before GRO) and at TC only, both ways,
    // no TCP timestamps, every checksum verified on the wire.
    Suite { name: "host_receive", target: "host_mode", filter: &["uploads_and_downloads"] },
    Suite { name: "translator_migration", target: "translator", filter: &["an_instance_migrat"] },
    // Pins of namespaces that came and went (before TCX, Linux 6.6, host
    // mode's TC programs are classic filters, which no pin tells of:
    // liveness then comes from the namespaces).
    Suite { name: "namespace_state", target: "resilience", filter: &["never_takes_over", "adopted_only_while"] },
];

/// A Debian kernel series: its packages are `<prefix><N><suffix>`, the
/// newest is the one with the highest N.
struct Series {
    label: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

/// The generic flavour only: `-cloud-amd64` has no 9p.
const SERIES: &[Series] = &[
    Series { label: "6.1", prefix: "linux-image-6.1.0-", suffix: "-amd64" },
    Series { label: "6.12", prefix: "linux-image-6.12.", suffix: "+deb12-amd64" },
];

/// Modules the initramfs needs to reach the root file system; their
/// dependencies and which of them are built in come from `modprobe
/// --show-depends`, so the list holds for either kernel.
const EARLY_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Directories tests (and developers' commands) write to: each gets a
/// tmpfs overlay over the read-only host root. The workspace is added.
const WRITABLE: &[&str] = &["/tmp", "/var/tmp", "/root"];

/// How often a guest that dies before the command starts is booted again
/// (about one 6.12 boot in a hundred oopses under multi-threaded TCG).
const BOOT_ATTEMPTS: u32 = 3;
/// Boot to command start takes ~3 s; anything near this is a hang.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Per guest, for the whole matrix run in it.
const MATRIX_TIMEOUT: Duration = Duration::from_secs(900);

/// A kernel unpacked and ready to boot.
struct Kernel {
    label: &'static str,
    /// `uname -r`, also the package name without `linux-image-`.
    release: String,
    dir: PathBuf,
}

impl Kernel {
    /// The unpacked package: `lib/modules/<release>` below it.
    fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }
    fn vmlinuz(&self) -> PathBuf {
        self.tree().join("boot").join(format!("vmlinuz-{}", self.release))
    }
    fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    fn early_dir(&self) -> PathBuf {
        self.dir.join("early")
    }
}

/// `cargo xtask vm`: runs `command` (a shell command line) in the
/// workspace inside each chosen kernel, streaming its output; fails if a
/// kernel does not boot or the command fails in any.
pub fn run_command(kernel: &str, command: &str, timeout: Duration) -> Result<()> {
    crate::setup::ensure_vm_tools()?;
    let mut failed = Vec::new();
    for series in select(kernel)? {
        let k = prepare(series)?;
        println!("vm: booting {} ({})", k.label, k.release);
        let body = format!("/bin/sh -c {}\nrc=$?\n", sh_quote(command));
        let mut on_line = |l: GuestLine| {
            if let GuestLine::Output(text) = l {
                println!("{text}");
            }
        };
        let r = match boot(&k, &body, &[], &workspace_root(), timeout, &mut on_line) {
            Ok(r) => r,
            Err(e) => {
                // The other kernels still run; this one fails the command.
                println!("vm: {} ({}) did not boot: {e:#}", k.label, k.release);
                failed.push(format!("{} (did not boot)", k.label));
                continue;
            }
        };
        let what = match r.end {
            End::Exited(0) => None,
            End::Exited(rc) => Some(format!("exit status {rc}")),
            End::Died => Some("the kernel died".to_string()),
            End::TimedOut => Some(format!("timed out after {} s", timeout.as_secs())),
        };
        println!(
            "vm: {} ({}): {} (boot {:.1} s, command {:.1} s)",
            k.label,
            r.release,
            what.as_deref().unwrap_or("ok"),
            r.boot_secs,
            r.run_secs
        );
        if let Some(w) = what {
            failed.push(format!("{} ({w})", k.label));
        }
    }
    if !failed.is_empty() {
        bail!("the command failed in kernel {}", failed.join(", "));
    }
    Ok(())
}

/// One row of the matrix summary.
struct Row {
    release: String,
    suite: String,
    passed: u64,
    failed: u64,
    secs: f64,
    /// Why the row failed, when it did.
    problem: Option<String>,
}

/// Runs `suites` in every kernel of [`SERIES`] (one boot per kernel, the
/// suites in turn), prints a summary table and returns the tests' tally.
/// A kernel that does not boot, a suite that fails, crashes or runs no
/// test at all each count as a failure (at least one).
pub fn matrix(suites: &[Suite]) -> Result<Tally> {
    matrix_of("all", suites, MATRIX_TIMEOUT)
}

/// [`matrix`] in the kernels `--kernel` names (`6.1`, `6.12`, `all`),
/// each guest's suites bounded by `timeout` together.
pub fn matrix_of(kernel: &str, suites: &[Suite], timeout: Duration) -> Result<Tally> {
    crate::setup::ensure_vm_tools()?;
    let series = select(kernel)?;
    for built in [workspace_root().join("target/debug/xlate-user"), crate::ebpf_object()] {
        if !built.exists() {
            bail!("{} is missing: run `cargo xtask build` first", built.display());
        }
    }
    let bins = test_executables(suites)?;
    let mut rows = Vec::new();
    for series in series {
        let k = prepare(series)?;
        println!(
            "vm: kernel {} ({}): {}",
            k.label,
            k.release,
            suites.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        );
        rows.extend(matrix_in(&k, suites, &bins, timeout)?);
    }
    if kernel == "all" {
        rows.extend(native_with_fallbacks(suites, &bins)?);
    }
    print_rows(&rows);
    let mut tally = Tally::default();
    for r in &rows {
        tally.passed += r.passed;
        tally.failed += if r.problem.is_some() { r.failed.max(1) } else { r.failed };
    }
    Ok(tally)
}

/// The suites of [`SUITES`] with these names, all of them if none.
pub fn suites_named(names: &[String]) -> Result<Vec<Suite>> {
    if names.is_empty() {
        return Ok(SUITES.to_vec());
    }
    names
        .iter()
        .map(|n| {
            SUITES.iter().find(|s| s.name == n).copied().with_context(|| {
                format!("no suite {n}; known: {}", SUITES.iter().map(|s| s.name).collect::<Vec<_>>().join(", "))
            })
        })
        .collect()
}

/// A test binary found by cargo, and the directory cargo runs it in.
struct TestBin {
    exe: PathBuf,
    cwd: PathBuf,
}

/// Boots `k` once and runs every suite; one row for the boot, one per
/// suite.
fn matrix_in(k: &Kernel, suites: &[Suite], bins: &[TestBin], timeout: Duration) -> Result<Vec<Row>> {
    let env = [
        ("XLATE_USER_BIN", workspace_root().join("target/debug/xlate-user").display().to_string()),
        ("XLATE_EBPF_OBJECT", crate::ebpf_object().display().to_string()),
        ("RUST_BACKTRACE", "1".to_string()),
    ];
    let mut rows = SuiteRows::default();
    let run = boot(k, &suites_script(suites, bins), &env, &workspace_root(), timeout, &mut |l| rows.on_line(l));
    match run {
        Ok(run) => Ok(rows.finish(&run, suites, timeout)),
        Err(e) => {
            // Not booting is a result of the matrix, not an error of xtask.
            println!("vm: kernel {} ({}) did not boot: {e:#}", k.label, k.release);
            let mut row = Row::new(&k.release, "(boot)");
            row.problem = Some("did not boot".into());
            Ok(vec![row])
        }
    }
}

/// Every optional kernel feature the agent can go without
/// (`xlate-user/src/kernel_features.rs`), for [`native_with_fallbacks`].
const ALL_FALLBACKS: &str = "xdp-meta,tcx,xdp-features";

/// The suites once more on this machine's own kernel with every fallback
/// forced (`XLATE_WITHOUT`): the paths a kernel without those features
/// takes, proven on a kernel that has them too.
fn native_with_fallbacks(suites: &[Suite], bins: &[TestBin]) -> Result<Vec<Row>> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let label = format!("{release} (without {ALL_FALLBACKS})");
    println!("vm: this machine's kernel {release} with every fallback forced: XLATE_WITHOUT={ALL_FALLBACKS}");
    let mut rows = Vec::new();
    for (s, b) in suites.iter().zip(bins) {
        let t = Instant::now();
        let mut cmd = Command::new(&b.exe);
        cmd.current_dir(&b.cwd).arg("--test-threads=1").args(s.filter.iter().copied());
        cmd.env("XLATE_WITHOUT", ALL_FALLBACKS)
            .env("XLATE_USER_BIN", workspace_root().join("target/debug/xlate-user"))
            .env("XLATE_EBPF_OBJECT", crate::ebpf_object());
        let out = cmd.output().with_context(|| format!("running {}", b.exe.display()))?;
        let mut row = Row::new(&label, s.name);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("{line}");
            if let Some((passed, failed)) = crate::result_line_counts(line) {
                row.passed += passed;
                row.failed += failed;
            }
        }
        if !out.status.success() {
            print!("{}", String::from_utf8_lossy(&out.stderr));
            row.problem = Some(format!("{}", out.status));
        } else if row.passed + row.failed == 0 {
            row.problem = Some("no test ran".into());
        }
        row.secs = t.elapsed().as_secs_f64();
        rows.push(row);
    }
    Ok(rows)
}

/// The guest's shell lines running each suite's binary between markers.
fn suites_script(suites: &[Suite], bins: &[TestBin]) -> String {
    // suite NAME DIR EXE ARGS...
    let mut body = String::from(
        "suite() { n=$1; shift; cd \"$1\"; shift; marker suite-begin \"$n\"; \"$@\"; marker suite-end \"$n:$?\"; }\n",
    );
    for (s, b) in suites.iter().zip(bins) {
        let mut words = vec![s.name.to_string(), b.cwd.display().to_string(), b.exe.display().to_string()];
        // One at a time: tests time their namespaces' traffic, and
        // emulation is slow enough without two of them competing.
        words.push("--test-threads=1".into());
        words.extend(s.filter.iter().map(|f| f.to_string()));
        body += &format!("suite {}\n", words.iter().map(|w| sh_quote(w)).collect::<Vec<_>>().join(" "));
    }
    body + "rc=0\n"
}

impl Row {
    fn new(release: &str, suite: &str) -> Row {
        Row { release: release.into(), suite: suite.into(), passed: 0, failed: 0, secs: 0.0, problem: None }
    }
}

/// Turns one guest's console, marker by marker, into summary rows
/// (echoing the output as it comes).
#[derive(Default)]
struct SuiteRows {
    rows: Vec<Row>,
    /// The suite running now, since when.
    current: Option<(Row, Instant)>,
}

impl SuiteRows {
    fn on_line(&mut self, l: GuestLine) {
        match l {
            GuestLine::Output(text) => {
                println!("{text}");
                let counts = crate::result_line_counts(text);
                if let (Some((row, _)), Some((passed, failed))) = (self.current.as_mut(), counts) {
                    row.passed += passed;
                    row.failed += failed;
                }
            }
            GuestLine::Marker("suite-begin", name) => self.current = Some((Row::new("", name), Instant::now())),
            GuestLine::Marker("suite-end", arg) => self.end(arg.rsplit(':').next().unwrap_or("?")),
            GuestLine::Marker(..) => {}
        }
    }

    /// The running suite's binary exited with `rc`.
    fn end(&mut self, rc: &str) {
        let Some((mut row, t)) = self.current.take() else { return };
        row.secs = t.elapsed().as_secs_f64();
        if rc != "0" {
            row.problem = Some(format!("exit status {rc}"));
        } else if row.passed + row.failed == 0 {
            row.problem = Some("no test ran".into());
        }
        self.rows.push(row);
    }

    /// The rows after the guest ended: the boot first; a suite cut short
    /// (the kernel died, the timeout) or never reached is a failure too,
    /// never quietly missing.
    fn finish(mut self, run: &GuestRun, suites: &[Suite], timeout: Duration) -> Vec<Row> {
        let end = match run.end {
            End::Exited(_) => "no end marker".to_string(),
            End::Died => "the kernel died".to_string(),
            End::TimedOut => format!("timed out after {} s", timeout.as_secs()),
        };
        if let Some((mut row, t)) = self.current.take() {
            row.secs = t.elapsed().as_secs_f64();
            row.problem = Some(end.clone());
            self.rows.push(row);
        }
        for s in suites {
            if !self.rows.iter().any(|r| r.suite == s.name) {
                let mut row = Row::new("", s.name);
                row.problem = Some(format!("not run ({end})"));
                self.rows.push(row);
            }
        }
        let mut boot = Row::new("", "(boot)");
        boot.secs = run.boot_secs;
        self.rows.insert(0, boot);
        for row in &mut self.rows {
            row.release = run.release.clone();
        }
        self.rows
    }
}

fn print_rows(rows: &[Row]) {
    let w = rows.iter().map(|r| r.release.len()).max().unwrap_or(0).max(24);
    println!("\nkernel matrix:");
    println!("{:<w$} {:<20} {:>7} {:>7} {:>8}  result", "kernel", "suite", "passed", "failed", "seconds");
    for r in rows {
        println!(
            "{:<w$} {:<20} {:>7} {:>7} {:>8.1}  {}",
            r.release,
            r.suite,
            r.passed,
            r.failed,
            r.secs,
            match (&r.problem, r.failed) {
                (Some(p), _) => format!("FAILED: {p}"),
                (None, 0) => "ok".into(),
                (None, _) => "FAILED".into(),
            }
        );
    }
    let total: f64 = rows.iter().map(|r| r.secs).sum();
    println!("{:<w$} {:<20} {:>7} {:>7} {:>8.1}", "total", "", "", "", total);
}

/// The test executables of `suites`, in order, from cargo's own account
/// of its build (`--workspace` as `cargo xtask test` builds, so nothing
/// is rebuilt for the matrix; compiler errors rendered on stderr).
fn test_executables(suites: &[Suite]) -> Result<Vec<TestBin>> {
    println!("vm: finding test binaries (cargo test --no-run)");
    let out = Command::new(crate::cargo())
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--no-run", "--message-format=json-render-diagnostics"])
        .env("XLATE_EBPF_OBJECT", crate::ebpf_object())
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed with {}", out.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let target = &msg["target"];
        let is_test = target["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"));
        if msg["reason"] != "compiler-artifact" || !is_test {
            continue;
        }
        let (Some(name), Some(exe), Some(manifest)) =
            (target["name"].as_str(), msg["executable"].as_str(), msg["manifest_path"].as_str())
        else {
            continue;
        };
        let cwd = Path::new(manifest).parent().context("manifest path without a directory")?.to_path_buf();
        found.push((name.to_string(), TestBin { exe: exe.into(), cwd }));
    }
    suites
        .iter()
        .map(|s| {
            let i = found
                .iter()
                .position(|(n, _)| n == s.target)
                .with_context(|| format!("cargo built no test target named {} (suite {})", s.target, s.name))?;
            let (_, b) = &found[i];
            Ok(TestBin { exe: b.exe.clone(), cwd: b.cwd.clone() })
        })
        .collect()
}

/// The series `--kernel` names: `6.1`, `6.12` or `all`.
fn select(kernel: &str) -> Result<Vec<&'static Series>> {
    if kernel == "all" {
        return Ok(SERIES.iter().collect());
    }
    match SERIES.iter().find(|s| s.label == kernel) {
        Some(s) => Ok(vec![s]),
        None => bail!(
            "--kernel {kernel}: known are {} and all",
            SERIES.iter().map(|s| s.label).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The newest package of `series` apt knows (after one `apt-get update`
/// if it knows none).
fn newest_package(series: &Series) -> Result<String> {
    for attempt in 0..2 {
        let out = Command::new("apt-cache").args(["pkgnames", series.prefix]).output().context("running apt-cache")?;
        let best = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|name| {
                let n = name.strip_prefix(series.prefix)?.strip_suffix(series.suffix)?;
                n.parse::<u32>().ok().map(|n| (n, name.to_string()))
            })
            .max();
        if let Some((_, name)) = best {
            return Ok(name);
        }
        if attempt == 0 {
            crate::setup::apt_get(&["update", "-q"])?;
        }
    }
    bail!("apt knows no package {}N{} (the kernel {})", series.prefix, series.suffix, series.label)
}

/// Downloads and unpacks the newest kernel of `series` under
/// `target/vm/<release>/` unless done before; prunes older releases of
/// the same series.
fn prepare(series: &'static Series) -> Result<Kernel> {
    prepare_newest(series).or_else(|e| {
        // Stale lists name a package the archive has replaced (security
        // updates remove the old one): fetch the lists, try once more.
        println!("vm: {e:#}; updating apt's lists and trying again");
        crate::setup::apt_get(&["update", "-q"])?;
        prepare_newest(series)
    })
}

fn prepare_newest(series: &'static Series) -> Result<Kernel> {
    let package = newest_package(series)?;
    let release = package.strip_prefix("linux-image-").expect("series prefixes start so").to_string();
    let base = workspace_root().join("target/vm");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    // Two xtasks preparing the same kernel would unpack over each other.
    let _lock = Flock::exclusive(&base.join(".lock"))?;
    let k = Kernel { label: series.label, dir: base.join(&release), release };
    if !k.dir.join("ready").exists() {
        unpack(&k, &package)?;
    }
    remove_stale_initramfs(&k.dir);
    prune_older(&base, series, &k.release);
    Ok(k)
}

fn unpack(k: &Kernel, package: &str) -> Result<()> {
    let t = Instant::now();
    let _ = std::fs::remove_dir_all(&k.dir);
    let download = k.dir.join("download");
    std::fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    // apt fetches as the unprivileged _apt user, which must write here.
    set_mode(&download, 0o777)?;
    println!("vm: downloading {package} (first use of this kernel)");
    run(Command::new("apt-get").current_dir(&download).args(["-q", "download", package]))
        .with_context(|| format!("downloading {package} (apt-get download)"))?;
    let deb = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;
    println!("vm: unpacking {}", deb.display());
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(k.tree()))?;
    std::fs::remove_dir_all(&download)?;
    // The package ships no modules.dep; modprobe needs one.
    run(Command::new(sbin("depmod")).arg("-b").arg(k.tree()).arg(&k.release))
        .with_context(|| format!("depmod for {}", k.release))?;
    match extract_vmlinux(&k.vmlinuz(), &k.vmlinux()) {
        Ok(()) => {}
        Err(e) => println!("vm: no vmlinux for {} ({e:#}); booting the bzImage instead (~3 s slower)", k.release),
    }
    early_modules(k)?;
    std::fs::write(k.dir.join("ready"), b"")?;
    println!("vm: kernel {} ready in {:.1} s", k.release, t.elapsed().as_secs_f64());
    Ok(())
}

/// Removes the initramfs files of xtasks that ended without removing
/// theirs (killed); the file names carry the owner's pid.
fn remove_stale_initramfs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix("initramfs-").and_then(|r| r.split('-').next()) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Removes cached releases of `series` other than `keep` (each is
/// 100-400 MB).
fn prune_older(base: &Path, series: &Series, keep: &str) {
    let Ok(dir) = std::fs::read_dir(base) else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let pkg = format!("linux-image-{name}");
        let ours = pkg
            .strip_prefix(series.prefix)
            .and_then(|n| n.strip_suffix(series.suffix))
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if ours && name != keep {
            println!("vm: removing the older kernel {name} from {}", base.display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The compressions Debian's kernels use, by payload magic.
const COMPRESSIONS: &[(&[u8], &str)] =
    &[(b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x1f\x8b\x08", "gzip")];

/// The kernel's scripts/extract-vmlinux, in Rust: the first payload that
/// decompresses to an ELF file. The decompressors complain about the
/// bzImage's trailing bytes, so only the output counts.
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let image = std::fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let payload = out.with_extension("payload");
    for (magic, tool) in COMPRESSIONS {
        for off in find_all(&image, magic) {
            std::fs::write(&payload, &image[off..])?;
            let r = Command::new(tool).arg("-dc").arg(&payload).stderr(Stdio::null()).output();
            let _ = std::fs::remove_file(&payload);
            let Ok(r) = r else { continue };
            if r.stdout.starts_with(b"\x7fELF") {
                std::fs::write(out, &r.stdout).with_context(|| format!("writing {}", out.display()))?;
                return Ok(());
            }
        }
    }
    bail!("no xz, zstd or gzip payload of {} decompresses to an ELF kernel", vmlinuz.display())
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len()).enumerate().filter(move |(_, w)| *w == needle).map(|(i, _)| i)
}

/// Copies the modules the initramfs loads, decompressed (busybox insmod
/// reads plain .ko only), into `early/NN-name.ko` in load order.
fn early_modules(k: &Kernel) -> Result<()> {
    let out = Command::new(sbin("modprobe"))
        .arg("-d")
        .arg(k.tree())
        .args(["-S", &k.release, "-a", "--show-depends"])
        .args(EARLY_MODULES)
        .output()
        .context("running modprobe --show-depends")?;
    if !out.status.success() {
        bail!(
            "modprobe --show-depends {} for {}: {}",
            EARLY_MODULES.join(" "),
            k.release,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let dir = k.early_dir();
    std::fs::create_dir_all(&dir)?;
    let mut seen = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "insmod /path/x.ko.xz" or "builtin x"
        let Some(path) = line.strip_prefix("insmod ").and_then(|r| r.split_whitespace().next()) else { continue };
        if !seen.insert(path.to_string()) {
            continue;
        }
        let name = Path::new(path).file_name().unwrap().to_string_lossy();
        let stem = name.split(".ko").next().unwrap_or(&name).to_string();
        let dest = dir.join(format!("{:02}-{stem}.ko", seen.len()));
        let bytes = decompress_module(Path::new(path))?;
        std::fs::write(&dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
    }
    Ok(())
}

fn decompress_module(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("ko") => return std::fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => bail!("module {} has an unknown compression", path.display()),
    };
    let out = Command::new(tool).arg("-dc").arg(path).output().with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", path.display());
    }
    Ok(out.stdout)
}

/// How a guest run ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// The command ran; its exit status.
    Exited(i32),
    /// qemu ended without the exit marker (panic, oops).
    Died,
    TimedOut,
}

struct GuestRun {
    release: String,
    boot_secs: f64,
    run_secs: f64,
    end: End,
}

/// A line of guest console output, or one of the markers the guest's
/// scripts print.
enum GuestLine<'a> {
    Output(&'a str),
    Marker(&'a str, &'a str),
}

/// Boots `k` and runs the shell `body` (which leaves its status in `rc`)
/// in `cwd` with `env`, feeding console lines to `on_line`. A guest that
/// dies before the body starts is booted again; a body that started is
/// never run twice. Errs only when no boot reached the body.
fn boot(
    k: &Kernel,
    body: &str,
    env: &[(&str, String)],
    cwd: &Path,
    timeout: Duration,
    on_line: &mut dyn FnMut(GuestLine),
) -> Result<GuestRun> {
    let mut images = Vec::new();
    if k.vmlinux().exists() {
        images.extend([k.vmlinux(), k.vmlinux()]);
    }
    while images.len() < BOOT_ATTEMPTS as usize {
        images.push(k.vmlinuz());
    }
    let mut failures = Vec::new();
    for (attempt, image) in images.iter().enumerate() {
        let nonce = nonce();
        let initrd = k.dir.join(format!("initramfs-{}-{nonce}.cpio", std::process::id()));
        std::fs::write(&initrd, initramfs(k, &stage2(k, body, env, cwd, &nonce))?)
            .with_context(|| format!("writing {}", initrd.display()))?;
        let r = boot_once(k, image, &initrd, &nonce, timeout, on_line);
        let _ = std::fs::remove_file(&initrd);
        match r? {
            Attempt::Ran(run) => return Ok(run),
            Attempt::NotStarted(log) => {
                println!(
                    "vm: {} attempt {} of {} ({}) died before the command started; last console lines:",
                    k.release,
                    attempt + 1,
                    images.len(),
                    image.file_name().unwrap().to_string_lossy()
                );
                for l in log.iter().rev().take(25).rev() {
                    println!("  | {l}");
                }
                failures.push(log.last().cloned().unwrap_or_default());
            }
        }
    }
    bail!("{} did not reach the command in {} boots (last lines: {})", k.release, images.len(), failures.join(" / "))
}

enum Attempt {
    Ran(GuestRun),
    /// The guest's console until it died or hung before the command.
    NotStarted(Vec<String>),
}

fn boot_once(
    k: &Kernel,
    image: &Path,
    initrd: &Path,
    nonce: &str,
    timeout: Duration,
    on_line: &mut dyn FnMut(GuestLine),
) -> Result<Attempt> {
    let t0 = Instant::now();
    let mut cmd = qemu(image, initrd);
    // qemu must not outlive xtask (killed by CI's timeout, Ctrl-C'd):
    // the kernel kills it when xtask dies.
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let lines = forward_lines(child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let marker = format!("@@xlate-vm:{nonce}:");
    let mut log = Vec::new();
    let mut started: Option<(Instant, String)> = None;
    let mut end = End::Died;
    loop {
        let deadline = match &started {
            None => t0 + BOOT_TIMEOUT,
            Some((t, _)) => *t + timeout,
        };
        let line = match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if started.is_some() {
                    end = End::TimedOut;
                }
                log.push(format!("(no output for the rest of {:.0} s: killed)", t0.elapsed().as_secs_f64()));
                break;
            }
        };
        let Some((before, kind, arg)) = parse_marker(&line, &marker) else {
            // After the exit marker only the kernel's reboot message comes.
            if started.is_some() && end == End::Died {
                on_line(GuestLine::Output(&line));
            } else {
                log.push(line);
            }
            continue;
        };
        if !before.trim().is_empty() && started.is_some() {
            on_line(GuestLine::Output(before));
        }
        match kind {
            "start" => started = Some((Instant::now(), arg.to_string())),
            "exit" => end = End::Exited(arg.parse().unwrap_or(-1)),
            "boot-failed" => log.push(format!("guest init: {arg}")),
            _ => on_line(GuestLine::Marker(kind, arg)),
        }
    }
    // Killing is a no-op when the guest rebooted (qemu exits on reboot).
    let _ = child.kill();
    let _ = child.wait();
    let Some((t_start, release)) = started else { return Ok(Attempt::NotStarted(log)) };
    if release != k.release {
        println!("vm: warning: booted {} but the guest says {release}", k.release);
    }
    Ok(Attempt::Ran(GuestRun {
        release,
        boot_secs: (t_start - t0).as_secs_f64(),
        run_secs: t_start.elapsed().as_secs_f64(),
        end,
    }))
}

/// `(text before, kind, argument)` of a marker line
/// `@@xlate-vm:<nonce>:<kind>:<argument>@@`. Kernel messages may share the
/// console line, so the marker is looked for anywhere in it.
fn parse_marker<'a>(line: &'a str, marker: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let at = line.find(marker)?;
    let rest = &line[at + marker.len()..];
    let rest = &rest[..rest.find("@@")?];
    let (kind, arg) = rest.split_once(':').unwrap_or((rest, ""));
    Some((&line[..at], kind, arg))
}

/// Console (qemu's stdout) and qemu's own errors, line by line, through
/// one channel; it disconnects when qemu has closed both.
fn forward_lines(
    out: impl std::io::Read + Send + 'static,
    err: impl std::io::Read + Send + 'static,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || send_lines(out, "", tx));
    std::thread::spawn(move || send_lines(err, "qemu: ", tx2));
    rx
}

fn send_lines(r: impl std::io::Read, prefix: &str, tx: mpsc::Sender<String>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    while let Ok(n) = r.read_until(b'\n', &mut buf) {
        if n == 0 {
            break;
        }
        // The serial console ends lines with \r\n, and may carry stray bytes.
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).replace('\r', "");
        if tx.send(format!("{prefix}{line}")).is_err() {
            break;
        }
        buf.clear();
    }
}

fn qemu(image: &Path, initrd: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    // No kvm: it cannot run these kernels on the CI machines. TCG with a
    // thread per vCPU uses both host cores.
    c.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "2G"]);
    c.args(["-nographic", "-no-reboot", "-nic", "none"]);
    c.arg("-kernel").arg(image).arg("-initrd").arg(initrd);
    // panic=-1 reboots at once and -no-reboot turns that into qemu's exit;
    // oops=panic so that a guest oops ends the run instead of hanging it;
    // softlockup_panic=1 likewise for a CPU stuck in the kernel (else the
    // suite's whole budget passes in silence). loglevel=5, not quiet: the
    // lockup's and the oops' stack traces are printed at level 4.
    c.args(["-append", "console=ttyS0 panic=-1 oops=panic softlockup_panic=1 loglevel=5"]);
    // The host's root, read-only; the guest writes only to its tmpfs.
    c.args([
        "-fsdev",
        "local,id=root,path=/,readonly=on,security_model=none,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=root,mount_tag=root",
    ]);
    c
}

/// The initramfs: static busybox, the early modules, /init and the
/// second stage script.
fn initramfs(k: &Kernel, stage2: &str) -> Result<Vec<u8>> {
    let busybox = Path::new("/bin/busybox");
    let bb = std::fs::read(busybox).context("reading /bin/busybox (package busybox-static)")?;
    if has_interpreter(&bb) {
        bail!("/bin/busybox is dynamically linked: install busybox-static");
    }
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "early"] {
        cpio.dir(d);
    }
    // The kernel opens it for init's output before devtmpfs is mounted.
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &bb);
    let mut early: Vec<PathBuf> = std::fs::read_dir(k.early_dir())
        .with_context(|| format!("reading {}", k.early_dir().display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    early.sort();
    for m in &early {
        let name = format!("early/{}", m.file_name().unwrap().to_string_lossy());
        cpio.file(&name, 0o644, &std::fs::read(m).with_context(|| format!("reading {}", m.display()))?);
    }
    cpio.file("init", 0o755, init_script().as_bytes());
    cpio.file("stage2", 0o755, stage2.as_bytes());
    Ok(cpio.finish())
}

/// Whether an ELF64 executable names a program interpreter (PT_INTERP),
/// i.e. is dynamically linked: the initramfs has no libc.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let Some(phoff) = elf.get(0x20..0x28).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize) else {
        return false;
    };
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| elf.get(phoff + i * size..phoff + i * size + 4) == Some(&3u32.to_le_bytes()[..]))
}

/// The initramfs' /init (busybox sh): reach the host's root, make it
/// writable where needed, hand over to the second stage.
fn init_script() -> String {
    let writable = writable_dirs(&workspace_root());
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "@@xlate-vm:$NONCE:boot-failed:$*@@"; reboot -f; }}
NONCE=$(sed -n 's/^NONCE=//p' /stage2)
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /early/*.ko; do insmod "$m" || fail "insmod $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro root /newroot || fail "mount 9p root"
mount -t tmpfs -o mode=0755 run /newroot/run || fail "tmpfs /run"
mkdir -p /newroot/run/xlate-vm
for d in {writable}; do
  o="/newroot/run/xlate-vm/overlay$d"
  mkdir -p "$o/upper" "$o/work"
  # The overlay's root takes the upper directory's mode (/tmp is 1777).
  chmod "$(stat -c %a "/newroot$d")" "$o/upper"
  mount -t overlay overlay -o "lowerdir=/newroot$d,upperdir=$o/upper,workdir=$o/work" "/newroot$d" || fail "overlay $d"
done
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
mount -t bpf bpf /newroot/sys/fs/bpf || fail "bpffs"
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup || fail "cgroup2"
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
cp /stage2 /newroot/run/xlate-vm/stage2
exec switch_root /newroot /bin/sh /run/xlate-vm/stage2
"#,
        writable = writable.iter().map(|w| sh_quote(w)).collect::<Vec<_>>().join(" ")
    )
}

/// [`WRITABLE`] and the workspace, unless it is below one of them already
/// (a checkout in /tmp: an overlay on an overlay would gain nothing).
fn writable_dirs(workspace: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = WRITABLE.iter().map(|s| s.to_string()).collect();
    if !WRITABLE.iter().any(|w| workspace.starts_with(w)) {
        dirs.push(workspace.display().to_string());
    }
    dirs
}

/// The second stage, run by the host's /bin/sh as the guest's init: on
/// demand module loading, the environment, the markers around `body`,
/// then reboot (which ends qemu).
fn stage2(k: &Kernel, body: &str, env: &[(&str, String)], cwd: &Path, nonce: &str) -> String {
    // /usr/bin first: a pyenv shim on the host's PATH costs 4 s per
    // python3 under emulation; cargo's and the rest stay reachable.
    let path = format!("/usr/bin:/usr/sbin:/bin:/sbin:{}", std::env::var("PATH").unwrap_or_default());
    let mut exports = format!("export PATH={} HOME=/root TERM=dumb\n", sh_quote(&path));
    let passed = passed_env();
    let all = passed.iter().map(|(k, v)| (k.as_str(), v)).chain(env.iter().map(|(k, v)| (*k, v)));
    // Later exports win: `env` over what the host passes.
    for (k, v) in all {
        exports += &format!("export {k}={}\n", sh_quote(v));
    }
    format!(
        r#"NONCE={nonce}
exec </dev/null 2>&1
marker() {{ echo "@@xlate-vm:$NONCE:$1:$2@@"; }}
printf '#!/bin/sh\nexec {modprobe} -d {tree} "$@"\n' >/run/xlate-vm/modprobe
chmod +x /run/xlate-vm/modprobe
echo /run/xlate-vm/modprobe >/proc/sys/kernel/modprobe
{exports}cd {cwd} || {{ marker boot-failed "cd {cwd}"; /bin/busybox reboot -f; }}
marker start "$(uname -r)"
{body}marker exit "$rc"
/bin/busybox reboot -f
echo b >/proc/sysrq-trigger
"#,
        modprobe = sbin("modprobe").display(),
        tree = sh_quote(&k.tree().display().to_string()),
        cwd = sh_quote(&cwd.display().to_string()),
    )
}

/// The host's variables a guest inherits: xlate's own switches
/// (`XLATE_WITHOUT` forcing fallbacks, ...) and Rust's logging, so that a
/// run means the same natively and in the guests.
fn passed_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("XLATE_") || k == "RUST_LOG" || k == "RUST_BACKTRACE")
        .filter(|(k, _)| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect()
}

/// Where Debian keeps kmod's tools (not on every PATH).
fn sbin(tool: &str) -> PathBuf {
    ["/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.exists()).unwrap_or_else(|| tool.into())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Per boot, so that nothing the guest prints can pass for a marker of
/// this run.
fn nonce() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), t.as_nanos() & 0xffff_ffff_ffff)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", p.display()))
}

/// An exclusive flock(2), released when dropped.
struct Flock(std::fs::File);

impl Flock {
    fn exclusive(path: &Path) -> Result<Flock> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("flock {}: {}", path.display(), std::io::Error::last_os_error());
        }
        Ok(Flock(f))
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above; closing would release it too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A cpio archive in the "newc" format the kernel unpacks.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, 0, &[]);
    }
    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, 0, data);
    }
    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major << 8) | minor, &[]);
    }
    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) {
        self.ino += 1;
        let fields =
            [self.ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev >> 8, rdev & 0xff, name.len() as u32 + 1, 0];
        let _ = write!(self.buf, "070701");
        for f in fields {
            let _ = write!(self.buf, "{f:08x}");
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_within_kernel_noise_and_need_the_nonce() {
        let m = "@@xlate-vm:abc:";
        assert_eq!(parse_marker("@@xlate-vm:abc:exit:0@@", m), Some(("", "exit", "0")));
        assert_eq!(
            parse_marker("[ 1.2] veth: x@@xlate-vm:abc:suite-end:k:101@@", m),
            Some(("[ 1.2] veth: x", "suite-end", "k:101"))
        );
        assert_eq!(parse_marker("@@xlate-vm:other:exit:0@@", m), None);
        assert_eq!(parse_marker("@@xlate-vm:abc:exit:0", m), None, "a cut line is no marker");
    }

    #[test]
    fn every_suite_gets_a_row_and_nothing_passes_quietly() {
        let suites = [
            Suite { name: "a", target: "a", filter: &[] },
            Suite { name: "b", target: "b", filter: &[] },
            Suite { name: "c", target: "c", filter: &["x"] },
            Suite { name: "d", target: "d", filter: &[] },
            Suite { name: "e", target: "e", filter: &[] },
        ];
        let mut rows = SuiteRows::default();
        let mut feed = |l: GuestLine| rows.on_line(l);
        feed(GuestLine::Marker("suite-begin", "a"));
        feed(GuestLine::Output("test result: ok. 3 passed; 0 failed; 0 ignored"));
        feed(GuestLine::Marker("suite-end", "a:0"));
        feed(GuestLine::Marker("suite-begin", "b"));
        feed(GuestLine::Output("test result: FAILED. 1 passed; 2 failed; 0 ignored"));
        feed(GuestLine::Marker("suite-end", "b:101"));
        feed(GuestLine::Marker("suite-begin", "c"));
        feed(GuestLine::Output("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 9 filtered out"));
        feed(GuestLine::Marker("suite-end", "c:0"));
        feed(GuestLine::Marker("suite-begin", "d"));
        let run = GuestRun { release: "6.1.0-1-amd64".into(), boot_secs: 3.0, run_secs: 9.0, end: End::Died };
        let rows = rows.finish(&run, &suites, MATRIX_TIMEOUT);
        let got: Vec<(&str, u64, u64, Option<&str>)> =
            rows.iter().map(|r| (r.suite.as_str(), r.passed, r.failed, r.problem.as_deref())).collect();
        assert_eq!(
            got,
            [
                ("(boot)", 0, 0, None),
                ("a", 3, 0, None),
                ("b", 1, 2, Some("exit status 101")),
                ("c", 0, 0, Some("no test ran")),
                ("d", 0, 0, Some("the kernel died")),
                ("e", 0, 0, Some("not run (the kernel died)")),
            ]
        );
        assert!(rows.iter().all(|r| r.release == "6.1.0-1-amd64"));
    }

    #[test]
    fn a_workspace_below_a_writable_directory_gets_no_overlay_of_its_own() {
        assert_eq!(writable_dirs(Path::new("/work/main")), ["/tmp", "/var/tmp", "/root", "/work/main"]);
        assert_eq!(writable_dirs(Path::new("/tmp/ci")), ["/tmp", "/var/tmp", "/root"]);
        assert_eq!(writable_dirs(Path::new("/tmpfoo")).len(), 4, "a path prefix is not a parent");
    }

    #[test]
    fn cpio_entries_are_aligned_and_end_with_the_trailer() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.char_dev("dev/console", 5, 1);
        let buf = c.finish();
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&buf);
        assert_eq!(text.matches("070701").count(), 4);
        assert!(text.contains("TRAILER!!!"));
        // The console's rdev major and minor, and init's size (10 bytes).
        assert!(text.contains("00000005000000010000000c"));
        assert!(text.contains("0000000a"));
    }

    #[test]
    fn quoting_survives_the_shell() {
        let s = "it's a \"$HOME\" `x` \\ test";
        let out = Command::new("sh").arg("-c").arg(format!("printf %s {}", sh_quote(s))).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), s);
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(has_interpreter(&sh), "/bin/sh is dynamically linked");
        assert!(!has_interpreter(b"not an elf"));
    }
}
