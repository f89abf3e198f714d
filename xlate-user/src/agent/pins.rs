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
//! of the file system, whatever mount namespace it runs in (or through the
//! holder's, [`super::holder`], for an agent that runs alone in a mount
//! namespace that ends with it).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const SYS_BPF: &str = "/sys/fs/bpf";
pub(crate) const RUN_BPF: &str = "/run/xlate/bpf";

pub(crate) fn is_bpffs(path: &Path) -> bool {
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
/// An agent started with `ip netns exec` runs alone in a mount namespace
/// that dies with it (with a fresh /sys, where the host's /sys/fs/bpf is
/// not to be seen): a BPF filesystem mounted there would take the pins,
/// and with them the pinned links (the programs detach) and every flow,
/// when the agent dies. Such an agent pins where the pins outlive it: in a
/// /run/xlate/bpf its namespace was made with, in the host's /sys/fs/bpf
/// through `/proc/1/root` where it may look there, or in the BPF
/// filesystem of the holder ([`super::holder`]), a process that keeps a
/// namespace with one alive between agents ([`Durability`] says whether
/// any of that worked).
pub fn base_for_agent() -> Result<PathBuf> {
    Ok(base_with_durability()?.0)
}

/// Where a load whose pins last only while it loads (tests, `watch`,
/// benchmarks) pins: /sys/fs/bpf, else a BPF filesystem at /run/xlate/bpf
/// in this mount namespace. No holder: nothing must outlive it.
pub fn base_for_loading() -> Result<PathBuf> {
    if is_bpffs(Path::new(SYS_BPF)) {
        return Ok(Path::new(SYS_BPF).join("xlate"));
    }
    mount_here()
}

/// Whether pins outlive the agent that made them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// In a namespace that outlives the agent: the next agent finds them.
    Durable,
    /// In the agent's own mount namespace only (no holder could be
    /// started): they go when the agent goes.
    DiesWithAgent,
}

/// Every place an agent of this host may have pinned, as this process
/// reaches them: the holder's BPF filesystem, this mount namespace's, the
/// host's (PID 1's).
pub fn all_bases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = super::holder::base().into_iter().collect();
    for root in ["/", "/proc/1/root/"] {
        for base in [format!("{root}sys/fs/bpf/xlate"), format!("{root}run/xlate/bpf")] {
            v.push(PathBuf::from(base));
        }
    }
    v
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
    if !alone_in_mount_namespace() {
        // A namespace other processes live in (the host's, a
        // container's) outlives this agent, and a mount in it with it.
        return Ok((mount_here()?, Durability::Durable));
    }
    // Alone: `ip netns exec` (or unshare) made this namespace for this
    // agent, and it ends with it.
    if is_bpffs(Path::new(RUN_BPF)) {
        // Copied from the namespace it was made from, which lives on.
        return Ok((PathBuf::from(RUN_BPF), Durability::Durable));
    }
    let host_sys = Path::new("/proc/1/root").join(SYS_BPF.trim_start_matches('/'));
    if is_bpffs(&host_sys) {
        return Ok((host_sys.join("xlate"), Durability::Durable));
    }
    if let Some(base) = super::holder::base() {
        return Ok((base, Durability::Durable));
    }
    let _lock = DirLock::exclusive(Path::new(RUN_BPF).parent().expect("has a parent"))?;
    if let Some(base) = super::holder::base() {
        return Ok((base, Durability::Durable));
    }
    let here = mount_here_locked()?;
    match super::holder::start() {
        Ok(()) => Ok((here, Durability::Durable)),
        Err(e) => {
            tracing::warn!(
                "this agent runs alone in its mount namespace (as `ip netns exec` starts it) and could not start a \
                 process to keep its BPF filesystem ({e:#}): the pins die with the agent, so a restart loses every \
                 flow"
            );
            Ok((here, Durability::DiesWithAgent))
        }
    }
}

/// Whether no other process shares this process's mount namespace (so
/// that it ends when this process does). Processes whose namespace cannot
/// be read are not counted.
fn alone_in_mount_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    let ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok().map(|m| (m.dev(), m.ino()));
    let Some(mine) = ns("self") else { return false };
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    !entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.bytes().all(|b| b.is_ascii_digit()) && name != me && ns(&name) == Some(mine)
    })
}

/// A BPF filesystem at /run/xlate/bpf in this process's mount namespace.
fn mount_here() -> Result<PathBuf> {
    std::fs::create_dir_all(RUN_BPF).with_context(|| format!("creating {RUN_BPF}"))?;
    let _lock = DirLock::exclusive(Path::new(RUN_BPF).parent().expect("has a parent"))?;
    mount_here_locked()
}

/// [`mount_here`] for a caller that holds the lock on /run/xlate.
fn mount_here_locked() -> Result<PathBuf> {
    std::fs::create_dir_all(RUN_BPF).with_context(|| format!("creating {RUN_BPF}"))?;
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
    let holder = super::holder::pid().map(|h| format!("/proc/{h}/root"));
    for root in [Some(format!("/proc/{pid}/root")), holder, Some("/proc/1/root".to_string())].into_iter().flatten() {
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
