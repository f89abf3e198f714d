//! What is resident on this host: every datapath's pin directory, which
//! network namespace and interface it belongs to, and whether it still
//! does anything. `xlate-user status` lists them; agents remove the dead
//! ones at start (`gc`).
//!
//! A pin directory is named `<kind>-<netns cookie>-<iface>`
//! (`SO_NETNS_COOKIE`): the kernel never hands a cookie out twice, so a new
//! namespace can never find a dead one's state under its own name (namespace
//! inode numbers, the earlier naming, are reused at once). A datapath is
//! dead when every attachment it pinned is detached: deleting a network
//! namespace deletes its devices, and with them what was attached to them
//! (the kernel then reports the link's device as 0).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::maps::Kind;

/// The calling thread's network namespace cookie.
pub fn netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None).context("a socket")?;
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    use std::os::fd::AsRawFd;
    // SAFETY: an out-value of the size given.
    let r = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut v as *mut u64 as *mut _, &mut len)
    };
    if r != 0 {
        bail!("SO_NETNS_COOKIE (Linux 5.14 or later): {}", std::io::Error::last_os_error());
    }
    Ok(v)
}

/// Whether a pinned BPF link is attached to a device, and which (`None`:
/// not a link the kernel reports a device for).
fn link_ifindex(pin: &Path) -> Option<u32> {
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()).ok()?;
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
    let mut get = [0u8; 16];
    get[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(2) with an attr of the size given; the path outlives it.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, 7 /* BPF_OBJ_GET */, get.as_ptr(), get.len())
    };
    if fd < 0 {
        return None;
    }
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) the
    // union whose xdp and tcx members start with the ifindex.
    let mut info = [0u8; 64];
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: as above; info is ours and of the length given.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, 15 /* BPF_OBJ_GET_INFO_BY_FD */, attr.as_ptr(), attr.len())
    };
    // SAFETY: closing the descriptor BPF_OBJ_GET gave us.
    unsafe { libc::close(fd as i32) };
    if r != 0 {
        return None;
    }
    const XDP: u32 = 6;
    const TCX: u32 = 11;
    let link_type = u32::from_ne_bytes(info[..4].try_into().ok()?);
    matches!(link_type, XDP | TCX).then(|| u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes")))
}

/// Whether a datapath still does anything, as far as its pins tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    /// At least one of its links is attached to a device.
    Attached,
    /// It pinned links, none is attached any more (its namespace or its
    /// devices are gone) and it attached no classic tc filters; or its
    /// network namespace no longer exists.
    Dead,
    /// Classic tc filters (before Linux 6.6), which no pin tells of, and
    /// no attached link; its namespace still exists: its filters are most
    /// likely attached.
    Unknown,
}

/// The liveness of the datapath pinned in `dir`, of namespace `netns`
/// (a cookie); `live` gives the cookies of the namespaces that exist
/// (asked only when the pins cannot tell).
pub fn liveness(dir: &Path, netns: u64, live: &mut impl FnMut() -> std::collections::HashSet<u64>) -> Liveness {
    let mut links = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().starts_with("link-") {
            continue;
        }
        links += 1;
        if link_ifindex(&e.path()).is_some_and(|i| i != 0) {
            return Liveness::Attached;
        }
    }
    // Classic tc filters (before TCX) are not links: where some were
    // attached, a detached link (host mode's XDP receive, its device
    // deleted) does not tell that the rest (the segmenter's) are gone.
    let classic = super::resident::classic_list(dir).exists();
    if (links > 0 && !classic) || !live().contains(&netns) {
        Liveness::Dead
    } else {
        Liveness::Unknown
    }
}

/// The cookies of every network namespace that exists as far as this
/// host can see: those of processes (`/proc/*/ns/net`), those held open
/// by a process (`/proc/*/fd/*`), and those kept by a bind mount in this
/// mount namespace (`ip netns add`, container runtimes: nsfs mounts in
/// /proc/self/mountinfo). Each is entered in a short-lived thread to read
/// its cookie (a namespace has no other name the kernel never reuses). A
/// namespace kept only by a bind mount in another mount namespace is not
/// seen: its classic-tc datapath would be taken for dead.
pub fn live_netns_cookies() -> std::collections::HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut paths: Vec<PathBuf> = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if !p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        paths.push(p.path().join("ns/net"));
        for fd in std::fs::read_dir(p.path().join("fd")).into_iter().flatten().flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().starts_with("net:[")) {
                paths.push(fd.path());
            }
        }
    }
    for line in std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines() {
        // "… mount-point … - nsfs …": the mount point is the 5th field.
        if line.split(" - ").nth(1).is_some_and(|rest| rest.starts_with("nsfs ")) {
            if let Some(mp) = line.split(' ').nth(4) {
                paths.push(PathBuf::from(mp.replace("\\040", " ")));
            }
        }
    }
    // One cookie read per namespace (by device and inode), not per path.
    let mut by_inode = std::collections::HashMap::new();
    for p in paths {
        if let Ok(m) = std::fs::metadata(&p) {
            by_inode.entry((m.dev(), m.ino())).or_insert(p);
        }
    }
    by_inode.into_values().filter_map(|p| cookie_of(&p)).collect()
}

/// The cookie of the network namespace behind `path` (a namespace file).
fn cookie_of(path: &Path) -> Option<u64> {
    let f = std::fs::File::open(path).ok()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace file we opened; only this thread
            // moves, and it ends right after.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            netns_cookie().ok()
        })
        .join()
        .ok()
        .flatten()
    })
}

/// One resident datapath.
#[derive(Debug, Clone, Serialize)]
pub struct Resident {
    pub kind: &'static str,
    /// The network namespace's cookie.
    pub netns: u64,
    pub iface: String,
    pub dir: PathBuf,
    /// Live flows in its flow table.
    pub flows: Option<usize>,
    pub liveness: Liveness,
    /// Whether an agent runs for it (holds its lock).
    pub agent: bool,
}

/// Every pin directory under the bases an agent of this host may use.
pub fn list() -> Vec<Resident> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut cookies = None;
    let mut live = || cookies.get_or_insert_with(live_netns_cookies).clone();
    for base in super::pins::all_bases() {
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((kind, netns, iface)) = parse_name(&name) else { continue };
            let dir = e.path();
            if !seen.insert(std::fs::canonicalize(&dir).unwrap_or(dir.clone())) {
                continue;
            }
            let flows = aya::maps::MapData::from_pin(dir.join(xlate_common::flow::names::FLOWS))
                .ok()
                .and_then(|m| super::flow_table::FlowTable::new(aya::maps::Map::Array(m)).ok())
                .map(|t| t.len());
            let agent = std::fs::File::open(Path::new("/run/xlate").join(format!("{name}.lock")))
                .is_ok_and(|f| super::resident::locked(&f));
            out.push(Resident {
                kind: match kind {
                    Kind::Host => "host",
                    Kind::Gateway => "translator",
                },
                netns,
                iface,
                liveness: liveness(&dir, netns, &mut live),
                dir,
                flows,
                agent,
            });
        }
    }
    out
}

/// `<kind>-<number>-<iface>`.
fn parse_name(name: &str) -> Option<(Kind, u64, String)> {
    let (kind, rest) = name.split_once('-')?;
    let kind = match kind {
        "host" => Kind::Host,
        "gw" => Kind::Gateway,
        _ => return None,
    };
    let (n, iface) = rest.split_once('-')?;
    Some((kind, n.parse().ok()?, iface.to_string()))
}

/// Removes the pin directories of dead datapaths that no agent holds
/// (their namespace or devices are gone); returns what it removed.
pub fn gc() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for r in list() {
        if r.liveness == Liveness::Dead && !r.agent {
            crate::ebpf::remove_pins(&r.dir);
            let name = r.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            for ext in ["json", "lock", "sock", "tc"] {
                let _ = std::fs::remove_file(Path::new("/run/xlate").join(format!("{name}.{ext}")));
            }
            tracing::info!(
                "removed the pins of a dead {} datapath ({}: its namespace or interface is gone)",
                r.kind,
                super::pins::shown(&r.dir)
            );
            removed.push(r.dir);
        }
    }
    removed
}

/// A pin directory of an earlier build, named by the namespace's inode
/// (`<kind>-<inode>-<iface>`), is this namespace's only if one of its
/// links is still attached: then it is renamed to this build's name and
/// adopted. A dead one is a namespace that had the same inode and is gone:
/// removed, never adopted.
pub fn adopt_legacy(kind: Kind, iface: &str, base: &Path, name: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(ino) = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()) else { return };
    let legacy = format!("{}-{ino}-{iface}", kind.prefix());
    let (old, new) = (base.join(&legacy), base.join(name));
    if legacy == name || !old.is_dir() || new.exists() {
        return;
    }
    let run = Path::new("/run/xlate");
    // Its namespace (by inode) is this one, or gone: never another live one.
    if liveness(&old, u64::MAX, &mut Default::default) == Liveness::Dead {
        crate::ebpf::remove_pins(&old);
        for ext in ["json", "lock", "sock", "tc"] {
            let _ = std::fs::remove_file(run.join(format!("{legacy}.{ext}")));
        }
        tracing::info!(
            "removed {}: the pins of a namespace that had this one's inode number and is gone",
            old.display()
        );
        return;
    }
    match std::fs::rename(&old, &new) {
        Ok(()) => {
            for ext in ["json", "tc"] {
                let _ = std::fs::rename(run.join(format!("{legacy}.{ext}")), run.join(format!("{name}.{ext}")));
            }
            tracing::info!(
                "adopted {} (an earlier build's name for this datapath) as {}",
                old.display(),
                new.display()
            );
        }
        Err(e) => tracing::warn!("renaming {} to {}: {e}", old.display(), new.display()),
    }
}

/// Prints [`list`]: a table, or a JSON array.
pub fn print(json: bool) {
    let all = list();
    if json {
        println!("{}", serde_json::to_string(&all).unwrap_or_else(|_| "[]".into()));
        return;
    }
    println!("{:<11} {:>20} {:<16} {:>7} {:<9} {:<6} pins", "kind", "netns", "iface", "flows", "programs", "agent");
    for r in &all {
        println!(
            "{:<11} {:>20} {:<16} {:>7} {:<9} {:<6} {}",
            r.kind,
            r.netns,
            r.iface,
            r.flows.map_or("?".into(), |n| n.to_string()),
            match r.liveness {
                Liveness::Attached => "attached",
                Liveness::Dead => "DEAD",
                Liveness::Unknown => "?",
            },
            if r.agent { "yes" } else { "no" },
            super::pins::shown(&r.dir)
        );
    }
    if all.is_empty() {
        println!("(nothing resident)");
    }
}
