//! The BPF filesystem holder: keeps pins alive between agents that each
//! run alone in a mount namespace of their own (`ip netns exec` on a host
//! whose own namespace has no BPF filesystem the agent can reach).
//!
//! Such an agent mounts a BPF filesystem at /run/xlate/bpf in its own
//! namespace, which ends with the last process in it. So it starts the
//! holder: a process that does nothing but stay in that namespace
//! (`sleep infinity`, shown as `xlate-bpffs-holder`, in a session of its
//! own so that signals to the agent's process group pass it by). Its PID is
//! in /run/xlate/bpffs-holder.pid (/run is the same directory in every
//! `ip netns exec` shell), and the next agent, and every command, reach the
//! pins through `/proc/<holder>/root/run/xlate/bpf`, the holder's view of
//! the file system. Stopping the last datapath for good ends the holder,
//! and the BPF filesystem with it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::pins::{is_bpffs, RUN_BPF};

const PIDFILE: &str = "/run/xlate/bpffs-holder.pid";
/// The holder's argv[0], by which it is told from a reused PID.
pub const NAME: &str = "xlate-bpffs-holder";

/// The live holder's PID, if there is one.
pub fn pid() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(PIDFILE).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline.starts_with(NAME.as_bytes()).then_some(pid)
}

/// The pin base in the live holder's namespace, as this process reaches it.
pub fn base() -> Option<PathBuf> {
    let p = PathBuf::from(format!("/proc/{}/root", pid()?)).join(RUN_BPF.trim_start_matches('/'));
    is_bpffs(&p).then_some(p)
}

/// Starts a holder in this process's mount namespace (whose BPF filesystem
/// at /run/xlate/bpf the caller mounted). The caller holds the lock on
/// /run/xlate.
pub fn start() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg0(NAME).arg("infinity").current_dir("/");
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SAFETY: setsid(2) and unshare(2) are system calls that touch no memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A network namespace of its own (empty): in the agent's, it
            // would keep that namespace, its devices and its datapath alive
            // after `ip netns del`, and its pins would never be found dead.
            // (Should it fail, the holder still does its one job.)
            libc::unshare(libc::CLONE_NEWNET);
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the BPF filesystem holder (sleep)")?;
    let pid = child.id();
    std::fs::write(PIDFILE, format!("{pid}\n")).with_context(|| format!("writing {PIDFILE}"))?;
    // Started, not waited for: it outlives this agent by design.
    drop(child);
    if base().is_none() {
        bail!("the holder (PID {pid}) does not see the BPF filesystem at {RUN_BPF}");
    }
    tracing::info!(
        "this agent runs alone in its mount namespace (as `ip netns exec` starts it): its BPF filesystem at \
         {RUN_BPF} is kept for the next agent by {NAME} (PID {pid})"
    );
    Ok(())
}

/// Ends the holder once its BPF filesystem holds no agent's pins (after a
/// datapath was stopped for good).
pub fn release_if_unused() {
    let (Some(pid), Some(base)) = (pid(), base()) else {
        tracing::debug!("no {NAME} to end (pid {:?}, base {:?})", pid(), base());
        return;
    };
    // Pin directories are directories; the kernel's own `maps.debug` and
    // `progs.debug` (bpf_preload) are not.
    let in_use =
        std::fs::read_dir(&base).map(|d| d.flatten().any(|e| e.file_type().is_ok_and(|t| t.is_dir()))).unwrap_or(true);
    if in_use {
        return;
    }
    // SAFETY: kill(2) of the process the PID file names, checked by name.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = std::fs::remove_file(PIDFILE);
    tracing::info!("ended {NAME} (PID {pid}): no datapath uses its BPF filesystem any more");
}
