//! Where agents pin their maps, and how commands reach them from any
//! mount namespace.
//!
//! An agent pins under `/sys/fs/bpf/xlate` where its mount namespace has a
//! BPF filesystem there, else under `/run/xlate/bpf`, a BPF filesystem it
//! mounts itself (source name `xlate`, so that test harnesses can tell it
//! is theirs to unmount). Operators run `ip netns exec GW xlate-user
//! stats`, and every `ip netns exec` gets a mount namespace of its own
//! with a fresh /sys, where neither mount may be visible. Commands
//! therefore find the agent through its control socket (/run is the same
//! in every such shell), learn its PID from the socket (SO_PEERCRED) and
//! open the pins through `/proc/PID/root`, which is the agent's own view
//! of the file system, whatever mount namespace it runs in.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const SYS_BPF: &str = "/sys/fs/bpf";
const RUN_BPF: &str = "/run/xlate/bpf";

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: valid path and out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) }) == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// The pin base for an agent (in its own mount namespace), mounting a BPF
/// filesystem at /run/xlate/bpf when /sys/fs/bpf is none.
///
/// The check and the mount happen under an exclusive lock on /run/xlate:
/// two loaders starting together (threads of one test binary, agents
/// started at once) would otherwise both see no BPF filesystem and both
/// mount one, the second on top of the first, hiding the directory the
/// first had just made for its pins (`BPF_OBJ_PIN`: no such file).
///
/// An agent started with `ip netns exec` runs in a mount namespace of its
/// own that dies with it: a BPF filesystem mounted there would take the
/// pins, and with them the pinned links (the programs detach) and every
/// flow, when the agent dies. Such an agent pins in the host's mount
/// namespace (PID 1's) instead, through `/proc/1/root`: in its BPF
/// filesystem at /sys/fs/bpf if it has one, else in one it mounts at
/// /run/xlate/bpf there ([`Durability`] says which happened).
pub fn base_for_agent() -> Result<PathBuf> {
    Ok(base_with_durability()?.0)
}

/// Whether pins outlive the agent that made them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// In the host's mount namespace (or a BPF filesystem the agent's
    /// namespace shares with it): the next agent finds them.
    Durable,
    /// In the agent's own mount namespace only, where a host mount could
    /// not be made: they go when the agent goes.
    DiesWithAgent,
}

/// Whether the pins this process made outlive it (as decided by its last
/// [`base_for_agent`]; durable when it made none).
pub fn pins_outlive_agent() -> bool {
    LAST.get().is_none_or(|d| *d == Durability::Durable)
}

static LAST: std::sync::OnceLock<Durability> = std::sync::OnceLock::new();

/// [`base_for_agent`], and whether its pins outlive the agent.
pub fn base_with_durability() -> Result<(PathBuf, Durability)> {
    let r = find_base()?;
    let _ = LAST.set(r.1);
    Ok(r)
}

fn find_base() -> Result<(PathBuf, Durability)> {
    if is_bpffs(Path::new(SYS_BPF)) {
        return Ok((Path::new(SYS_BPF).join("xlate"), Durability::Durable));
    }
    if !in_host_mount_namespace() {
        let host_sys = Path::new("/proc/1/root").join(SYS_BPF.trim_start_matches('/'));
        if is_bpffs(&host_sys) {
            return Ok((host_sys.join("xlate"), Durability::Durable));
        }
        match mount_in_host_namespace() {
            Ok(p) => return Ok((p, Durability::Durable)),
            Err(e) => tracing::warn!(
                "no BPF filesystem in the host's mount namespace, and mounting one there failed ({e:#}): the pins \
                 live in this agent's own mount namespace and die with it, so a restart loses every flow"
            ),
        }
        return Ok((mount_here()?, Durability::DiesWithAgent));
    }
    Ok((mount_here()?, Durability::Durable))
}

/// Whether this process shares PID 1's mount namespace.
fn in_host_mount_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata("/proc/self/ns/mnt"), std::fs::metadata("/proc/1/ns/mnt")) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        // Cannot tell (no /proc/1 access): behave as before.
        _ => true,
    }
}

/// Mounts a BPF filesystem at /run/xlate/bpf in PID 1's mount namespace
/// (unless one is there) and returns the path to it from here. The mount
/// is made by a short-lived child that enters that namespace (a process
/// with threads cannot), under the same lock as [`mount_here`].
fn mount_in_host_namespace() -> Result<PathBuf> {
    use std::os::unix::process::CommandExt;
    let host_root = Path::new("/proc/1/root");
    let there = host_root.join(RUN_BPF.trim_start_matches('/'));
    std::fs::create_dir_all(&there).with_context(|| format!("creating {}", there.display()))?;
    let _lock = DirLock::exclusive(there.parent().expect("has a parent"))?;
    if is_bpffs(&there) {
        return Ok(there);
    }
    let ns = std::fs::File::open("/proc/1/ns/mnt").context("opening /proc/1/ns/mnt")?;
    let mut cmd = std::process::Command::new("/bin/true");
    // SAFETY: between fork and exec the child makes only async-signal-safe
    // system calls (setns, mount) on memory prepared before the fork.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = ns.as_raw_fd();
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNS) != 0
                || libc::mount(c"xlate".as_ptr(), c"/run/xlate/bpf".as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().context("mounting a BPF filesystem in the host's mount namespace")?;
    if !status.success() || !is_bpffs(&there) {
        bail!("mounting a BPF filesystem on {RUN_BPF} in the host's mount namespace failed ({status})");
    }
    tracing::info!("mounted a BPF filesystem on {RUN_BPF} in the host's mount namespace (pins outlive this agent)");
    Ok(there)
}

/// A BPF filesystem at /run/xlate/bpf in this process's mount namespace.
fn mount_here() -> Result<PathBuf> {
    std::fs::create_dir_all(RUN_BPF).with_context(|| format!("creating {RUN_BPF}"))?;
    let parent = Path::new(RUN_BPF).parent().expect("has a parent");
    let _lock = DirLock::exclusive(parent)?;
    if !is_bpffs(Path::new(RUN_BPF)) {
        let dst = std::ffi::CString::new(RUN_BPF).expect("no NUL");
        // SAFETY: valid C strings; mount(2) with no data.
        if unsafe { libc::mount(c"xlate".as_ptr(), dst.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) } != 0 {
            bail!("mounting a BPF filesystem on {RUN_BPF}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(PathBuf::from(RUN_BPF))
}

/// An flock on a directory, released when dropped (or by the kernel when
/// the process ends). flock locks belong to the open file, so threads of
/// one process exclude each other as processes do.
struct DirLock {
    _held: std::fs::File,
}

impl DirLock {
    fn exclusive(dir: &Path) -> Result<DirLock> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: flock on a file descriptor we own; blocks until granted.
        while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                bail!("locking {}: {e}", dir.display());
            }
        }
        Ok(DirLock { _held: f })
    }
}

/// The PID of the process serving a Unix socket.
fn peer_pid(sock: &Path) -> Result<i32> {
    let s = std::os::unix::net::UnixStream::connect(sock)?;
    use std::os::fd::AsRawFd;
    // SAFETY: an out-struct of the size given.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, &mut cred as *mut _ as *mut _, &mut len)
    };
    if r != 0 {
        bail!("SO_PEERCRED: {}", std::io::Error::last_os_error());
    }
    Ok(cred.pid)
}

/// The pin directory `name` of the agent serving control socket `sock`,
/// as a path this process can open.
pub fn dir_for_reading(sock: &Path, name: &str) -> Result<PathBuf> {
    let pid = peer_pid(sock).with_context(|| format!("no agent answers on {}", sock.display()))?;
    for root in [format!("/proc/{pid}/root"), "/proc/1/root".to_string()] {
        for base in [Path::new(SYS_BPF).join("xlate"), PathBuf::from(RUN_BPF)] {
            let d = PathBuf::from(&root).join(base.strip_prefix("/").expect("absolute")).join(name);
            if d.is_dir() {
                return Ok(d);
            }
        }
    }
    bail!("the agent (PID {pid}) has no pins named {name} under {SYS_BPF}/xlate or {RUN_BPF}")
}

/// A pin path as the agent names it (without `/proc/PID/root`).
pub fn shown(p: &Path) -> String {
    let s = p.display().to_string();
    match s.strip_prefix("/proc/").and_then(|r| r.split_once("/root")) {
        Some((pid, rest)) if pid.bytes().all(|b| b.is_ascii_digit()) => rest.to_string(),
        _ => s,
    }
}
