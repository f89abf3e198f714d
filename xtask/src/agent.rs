//! Agents (and other programs) the benchmarks and experiments start in a
//! lab's namespaces: up when started, stopped for good when dropped.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use xlate_lab::{Bg, Netns};

/// A program in a namespace, killed when dropped; an agent is first
/// stopped for good with its `stop` command (programs detached, pins gone).
pub struct Running {
    bg: Option<Bg>,
    stop: Option<Command>,
}

impl Running {
    /// A program with no stop command of its own.
    pub fn process(bg: Bg) -> Running {
        Running { bg: Some(bg), stop: None }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut s) = self.stop.take() {
            let _ = s.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        drop(self.bg.take());
    }
}

/// Starts `xlate-user ARGS` in `ns` (network namespace only: its pins stay
/// visible to the stop command), its output in `<log>.log` under
/// `log_dir` (where a failed run can be read), and waits until it says its
/// datapath is up. `stop` is its stop-for-good command.
pub fn start(bin: &Path, ns: &Netns, log_dir: &Path, log: &str, args: &[&str], stop: &[&str]) -> Result<Running> {
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
    let mut cmd = ns.net_cmd(bin);
    cmd.args(stop);
    Ok(Running { bg: Some(bg), stop: Some(cmd) })
}
