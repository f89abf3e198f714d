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
pub fn base_for_agent() -> Result<PathBuf> {
    if is_bpffs(Path::new(SYS_BPF)) {
        return Ok(Path::new(SYS_BPF).join("xlate"));
    }
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
    for base in [Path::new(SYS_BPF).join("xlate"), PathBuf::from(RUN_BPF)] {
        let d = PathBuf::from(format!("/proc/{pid}/root")).join(base.strip_prefix("/").expect("absolute")).join(name);
        if d.is_dir() {
            return Ok(d);
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
