use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs a command with inherited stdio; fails naming it and its status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

pub fn home_cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"));
    home.join("bin")
}

/// PATH with ~/.cargo/bin first, so cargo-installed tools are found even
/// when the caller's PATH lacks it.
pub fn path_with_cargo_bin() -> String {
    let cur = std::env::var("PATH").unwrap_or_default();
    format!("{}:{cur}", home_cargo_bin().display())
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Unmounts a BPF filesystem at /sys/fs/bpf that an xlate agent mounted
/// (source `xlate`) once no xlate pins remain: tests leave the machine as
/// they found it. A bpffs mounted by the system is left alone.
pub fn unmount_own_bpffs() {
    end_bpffs_holder();
    unmount_run_bpffs();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let ours = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[0] == "xlate" && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    });
    if !ours {
        return;
    }
    let _ = std::fs::remove_dir("/sys/fs/bpf/xlate");
    if std::path::Path::new("/sys/fs/bpf/xlate").exists() {
        return;
    }
    let path = std::ffi::CString::new("/sys/fs/bpf").unwrap();
    // SAFETY: plain umount2(2) of a path we checked.
    unsafe { libc::umount2(path.as_ptr(), 0) };
}

/// Unmounts the BPF filesystem agents mount at /run/xlate/bpf (source
/// `xlate`) once it holds no pins.
fn unmount_run_bpffs() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let ours = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[0] == "xlate" && f[1] == "/run/xlate/bpf" && f[2] == "bpf"
    });
    // The kernel's own maps.debug/progs.debug appear in every bpffs.
    let pinned = std::fs::read_dir("/run/xlate/bpf")
        .map(|d| d.flatten().any(|e| !e.file_name().to_string_lossy().ends_with(".debug")))
        .unwrap_or(true);
    if !ours || pinned {
        return;
    }
    let path = std::ffi::CString::new("/run/xlate/bpf").unwrap();
    // SAFETY: plain umount2(2) of a path we checked.
    unsafe { libc::umount2(path.as_ptr(), 0) };
    let _ = std::fs::remove_dir("/run/xlate/bpf");
    let _ = std::fs::remove_dir("/run/xlate");
}

/// Ends a BPF filesystem holder a test left (agents started with `ip
/// netns exec` start one; stopping their datapath for good ends it).
fn end_bpffs_holder() {
    const PIDFILE: &str = "/run/xlate/bpffs-holder.pid";
    let Some(pid) = std::fs::read_to_string(PIDFILE).ok().and_then(|s| s.trim().parse::<i32>().ok()) else { return };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"xlate-bpffs-holder"));
    if ours {
        println!("test: ending the BPF filesystem holder a test left (PID {pid})");
        // SAFETY: kill(2) of the process the PID file names, checked by name.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let _ = std::fs::remove_file(PIDFILE);
}
