//! Agents (and other programs) the benchmarks and experiments start in a
//! lab's namespaces: up when started, stopped for good when dropped.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use xlate_lab::{Bg, Netns};

/// A program in a namespace, killed when dropped; an agent is first
/// stopped for good with its `stop` command (programs detached, pins gone).
pub struct Running {
    bg: Option<Bg>,
    stop: Option<Stop>,
}

/// An agent's stop-for-good command, as program and arguments (kept in
/// [`STOPS`] too until it has run).
struct Stop {
    id: u64,
    argv: Vec<std::ffi::OsString>,
}

/// The stop commands of the agents running now: what an interrupt runs
/// ([`stop_all`]) before the labs' namespaces go.
static STOPS: Mutex<Vec<(u64, Vec<std::ffi::OsString>)>> = Mutex::new(Vec::new());
static NEXT_STOP: AtomicU64 = AtomicU64::new(0);

fn stops() -> std::sync::MutexGuard<'static, Vec<(u64, Vec<std::ffi::OsString>)>> {
    STOPS.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_stop(argv: &[std::ffi::OsString]) {
    if let Some((program, args)) = argv.split_first() {
        let _ = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Stops every agent still running for good (their datapaths removed):
/// for an interrupt, which ends the program before its `Running`s drop.
pub fn stop_all() {
    let all = std::mem::take(&mut *stops());
    for (_, argv) in all {
        run_stop(&argv);
    }
    crate::util::unmount_own_bpffs();
}

impl Running {
    /// A program with no stop command of its own.
    pub fn process(bg: Bg) -> Running {
        Running { bg: Some(bg), stop: None }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            stops().retain(|(id, _)| *id != s.id);
            run_stop(&s.argv);
        }
        drop(self.bg.take());
    }
}

/// Starts `xlate-user ARGS` in `ns` (network namespace only: its pins stay
/// visible to the stop command), its output in `<log>.log` under
/// `log_dir` (where a failed run can be read), and waits until it says its
/// datapath is up. `stop` is its stop-for-good command.
pub fn start(bin: &Path, ns: &Netns, log_dir: &Path, log: &str, args: &[&str], stop: &[&str]) -> Result<Running> {
    if xlate_lab::netns::interrupted() {
        bail!("interrupted: `xlate-user {}` not started", args.join(" "));
    }
    std::fs::create_dir_all(log_dir)?;
    let path = log_dir.join(format!("{log}.log"));
    let file = std::fs::File::create(&path)?;
    let child = ns.net_cmd(bin).args(args).stdout(file.try_clone()?).stderr(file).spawn()?;
    let bg = Bg::from_child(child).terminate_on_drop();
    let needle = if args.first() == Some(&"host") { "xlate host mode on" } else { "xlate translator on" };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&path).unwrap_or_default().contains(needle) {
        if Instant::now() > deadline {
            bail!("`xlate-user {}` did not come up in 30 s; see {}", args.join(" "), path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A translator's relay (on unless told otherwise) binds its listeners
    // and aliases just after: wait for it too. Builds from before that
    // line (a `--baseline`) get a short grace instead.
    let relayed = args.first() != Some(&"host") && !args.contains(&"--no-relay");
    let grace = Instant::now() + Duration::from_secs(3);
    while relayed
        && !std::fs::read_to_string(&path).unwrap_or_default().contains("relay: ready")
        && Instant::now() < grace
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let cmd = ns.net_cmd(bin);
    let mut argv: Vec<std::ffi::OsString> = vec![cmd.get_program().to_owned()];
    argv.extend(cmd.get_args().map(|a| a.to_owned()));
    argv.extend(stop.iter().map(std::ffi::OsString::from));
    let id = NEXT_STOP.fetch_add(1, Ordering::Relaxed);
    stops().push((id, argv.clone()));
    Ok(Running { bg: Some(bg), stop: Some(Stop { id, argv }) })
}
