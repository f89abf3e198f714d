//! What stays in the kernel between runs of an agent, so that stopping and
//! starting it, or replacing it with a newer build, loses no flow (as
//! Katran and Cilium do it):
//!
//! - the maps, pinned by name and adopted by the next run (`crate::ebpf`);
//! - the programs' attachments, as pinned BPF links: the next run replaces
//!   the program behind each link atomically (`bpf_link_update`), so no
//!   packet ever meets an interface without its program;
//! - the agent's control-plane state, in the pinned `AGENT_CTL` map;
//! - a record of what the agent changed in the network configuration
//!   (sysctls, the segmenter, routes), in /run/xlate, so that the next run
//!   adopts it and stopping for good undoes it.
//!
//! SIGTERM, SIGINT or a crash stop only the agent: the datapath goes on.
//! Stopping for good is its own action (`xlate-user stop`, `xlate-user
//! host stop`): every flow is reset on both sides, then programs, pins,
//! sysctls, the segmenter and routes are removed ([`stop_for_good`]).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{qdisc_add_clsact, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use serde::{Deserialize, Serialize};

use super::maps::{pin_name, Kind};

const RUN: &str = "/run/xlate";

/// Held for as long as an agent runs (an flock, released by the kernel
/// however the agent ends): a second agent for the same interface is
/// refused, and a pin directory without a lock holder is an earlier run's,
/// to adopt.
pub struct Lock {
    _file: File,
}

impl Lock {
    pub fn take(kind: Kind, iface: &str) -> Result<Lock> {
        std::fs::create_dir_all(RUN).with_context(|| format!("creating {RUN}"))?;
        let path = lock_path(kind, iface)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "{} already runs on {iface} in this network namespace (it holds {}); stop it first",
                what(kind),
                path.display()
            );
        }
        Ok(Lock { _file: file })
    }

    /// Whether an agent holds the lock now.
    pub fn held(kind: Kind, iface: &str) -> Result<bool> {
        let path = lock_path(kind, iface)?;
        let Ok(file) = File::open(&path) else { return Ok(false) };
        Ok(locked(&file))
    }
}

/// Whether another open file holds the lock on `file`'s (an agent runs).
pub(crate) fn locked(file: &File) -> bool {
    // SAFETY: flock on a file descriptor we own (released when it closes).
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

fn lock_path(kind: Kind, iface: &str) -> Result<PathBuf> {
    Ok(Path::new(RUN).join(format!("{}.lock", pin_name(kind, iface)?)))
}

pub fn what(kind: Kind) -> &'static str {
    match kind {
        Kind::Host => "a host-mode instance",
        Kind::Gateway => "a translator",
    }
}

/// [`what`] without its article ("no host-mode instance on eth0").
pub fn noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Host => "host-mode instance",
        Kind::Gateway => "translator",
    }
}

/// What the agent changed in the network configuration, and how to undo
/// it. Kept in /run/xlate/<agent>.json across runs.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// sysctls the agent set, with their values before the first run.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// Host mode's segmenter (the near end's name).
    #[serde(default)]
    pub segmenter: Option<String>,
    /// Host routes and neighbour entries for `--connect` addresses.
    #[serde(default)]
    pub connect_routes: Vec<ConnectRouteRecord>,
    /// Service addresses the relay added (`--alias`): removed whenever the
    /// agent exits, and by the next run if it crashed.
    #[serde(default)]
    pub aliases: Vec<AliasRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub addr: Ipv4Addr,
    pub ifindex: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRouteRecord {
    pub addr: Ipv4Addr,
    pub ifindex: u32,
    /// A host route was added (the address is not on the link).
    pub route: bool,
}

impl Record {
    fn path(kind: Kind, iface: &str) -> Result<PathBuf> {
        Ok(Path::new(RUN).join(format!("{}.json", pin_name(kind, iface)?)))
    }

    /// The record an earlier run left (empty if none).
    pub fn load(kind: Kind, iface: &str) -> Result<Record> {
        let path = Self::path(kind, iface)?;
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("reading {}", path.display())),
            Err(_) => Ok(Record::default()),
        }
    }

    pub fn save(&self, kind: Kind, iface: &str) -> Result<()> {
        std::fs::create_dir_all(RUN)?;
        let path = Self::path(kind, iface)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Sets each sysctl to "1", remembering the value it had before the
    /// first run changed it.
    pub fn set_sysctls(&mut self, paths: &[String]) -> Result<()> {
        for p in paths {
            let old = std::fs::read_to_string(p).with_context(|| format!("reading {p}"))?.trim().to_string();
            if old != "1" {
                std::fs::write(p, "1").with_context(|| format!("setting {p}"))?;
                tracing::info!(
                    "set {} = 1 while the translator runs",
                    p.trim_start_matches("/proc/sys/").replace('/', ".")
                );
                if !self.sysctls.iter().any(|(q, _)| q == p) {
                    self.sysctls.push((p.clone(), old));
                }
            }
        }
        Ok(())
    }

    /// Removes the aliases recorded (outside the event loop).
    pub fn remove_aliases(&mut self) {
        for a in self.aliases.drain(..) {
            match crate::netlink::delete_alias_blocking(a.addr, a.ifindex) {
                Ok(()) => tracing::info!("removed the alias {}/32", a.addr),
                Err(e) => tracing::warn!("removing the alias {}: {e:#}", a.addr),
            }
        }
    }

    /// Undoes everything recorded, and forgets it.
    fn undo(mut self, kind: Kind, iface: &str) {
        for (p, old) in &self.sysctls {
            if std::fs::write(p, old).is_ok() {
                tracing::info!("restored {} = {old}", p.trim_start_matches("/proc/sys/").replace('/', "."));
            }
        }
        if let Some(seg) = &self.segmenter {
            let _ = crate::netlink::delete_link(seg);
        }
        self.remove_aliases();
        for r in &self.connect_routes {
            let _ = crate::netlink::delete_neighbour(r.addr, r.ifindex);
            if r.route {
                let _ = crate::netlink::delete_host_route(r.addr, r.ifindex);
            }
        }
        if let Ok(p) = Self::path(kind, iface) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// How a program came to be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A new link, pinned.
    New,
    /// The program behind an earlier run's link was replaced atomically.
    Replaced,
}

fn link_pin(dir: &Path, prog: &str, iface: &str) -> PathBuf {
    dir.join(format!("link-{prog}-{iface}"))
}

/// A program that can be attached through a BPF link, or put behind an
/// existing one.
trait LinkAttach {
    /// Replaces the program behind `link` (atomically, `bpf_link_update`).
    fn replace(&mut self, link: FdLink) -> Result<()>;
    /// Attaches anew; returns the link.
    fn attach_new(&mut self) -> Result<FdLink>;
}

struct XdpOn<'a> {
    p: &'a mut Xdp,
    iface: &'a str,
    mode: XdpMode,
}

impl LinkAttach for XdpOn<'_> {
    fn replace(&mut self, link: FdLink) -> Result<()> {
        let link = aya::programs::xdp::XdpLink::try_from(link).map_err(|e| anyhow!("{e}"))?;
        self.p.attach_to_link(link)?;
        Ok(())
    }

    fn attach_new(&mut self) -> Result<FdLink> {
        let id = self.p.attach(self.iface, self.mode)?;
        let link = self.p.take_link(id)?;
        link.try_into().map_err(|e| anyhow!("not a BPF link: {e}"))
    }
}

struct TcOn<'a> {
    p: &'a mut SchedClassifier,
    iface: &'a str,
    at: TcAttachType,
}

impl LinkAttach for TcOn<'_> {
    fn replace(&mut self, link: FdLink) -> Result<()> {
        let link = aya::programs::tc::SchedClassifierLink::try_from(link).map_err(|e| anyhow!("{e}"))?;
        self.p.attach_to_link(link)?;
        Ok(())
    }

    fn attach_new(&mut self) -> Result<FdLink> {
        let id = self.p.attach(self.iface, self.at)?;
        let link = self.p.take_link(id)?;
        link.try_into().map_err(|e| anyhow!("not a BPF link (TCX needs Linux 6.6): {e}"))
    }
}

/// Attaches an XDP program to `iface` through a pinned link.
pub fn attach_xdp(p: &mut Xdp, name: &str, iface: &str, mode: XdpMode, dir: &Path) -> Result<Attached> {
    attach_pinned(&mut XdpOn { p, iface, mode }, name, iface, dir)
}

/// Attaches a TC program to `iface`: through a pinned TCX link where the
/// kernel has TCX (Linux 6.6), else as a classic cls_bpf filter.
pub fn attach_tc(p: &mut SchedClassifier, name: &str, iface: &str, at: TcAttachType, dir: &Path) -> Result<Attached> {
    if crate::kernel_features::get().tcx {
        return attach_pinned(&mut TcOn { p, iface, at }, name, iface, dir);
    }
    attach_classic(p, name, iface, at, dir)
}

/// The classic filter's place on the clsact qdisc: one of ours per device
/// and direction, always the same one, so that the next run finds it.
/// Priority 1 runs before filters added without one (49152 and up).
const CLASSIC_PRIORITY: u16 = 1;
const CLASSIC_HANDLE: TcHandle = TcHandle::new(0, 0x584c); // "XL"

/// A classic cls_bpf filter (direct action) on the device's clsact qdisc.
/// It holds its program in the kernel by itself, with no pin, so it
/// outlives the agent as a pinned link does; the next run replaces the
/// program in place (a netlink change of the same filter), and stopping
/// for good deletes the filters listed in [`classic_list`].
fn attach_classic(p: &mut SchedClassifier, name: &str, iface: &str, at: TcAttachType, dir: &Path) -> Result<Attached> {
    let held = |p: &mut SchedClassifier, id| -> Result<()> {
        // A link dropped detaches: the filter must stay when the agent ends.
        std::mem::forget(p.take_link(id)?);
        remember_classic(dir, name, iface, at)
    };
    if let Ok(link) = SchedClassifierLink::attached(iface, at, CLASSIC_PRIORITY, CLASSIC_HANDLE, None) {
        if let Ok(id) = p.attach_to_link(link) {
            held(p, id)?;
            return Ok(Attached::Replaced);
        }
    }
    // EEXIST when the qdisc is there already, which is what we want.
    let _ = qdisc_add_clsact(iface);
    let opts = NlOptions { priority: CLASSIC_PRIORITY, handle: CLASSIC_HANDLE, classid: None };
    let id = p
        .attach_with_options(iface, at, TcAttachOptions::Netlink(opts))
        .with_context(|| format!("attaching {name} to {iface} (classic tc filter)"))?;
    held(p, id)?;
    Ok(Attached::New)
}

/// The list of classic filters an agent attached, beside its lock in
/// /run/xlate (a BPF filesystem holds no plain files).
pub(crate) fn classic_list(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Path::new(RUN).join(format!("{name}.tc"))
}

fn direction(at: TcAttachType) -> &'static str {
    if at == TcAttachType::Egress {
        "egress"
    } else {
        "ingress"
    }
}

fn remember_classic(dir: &Path, name: &str, iface: &str, at: TcAttachType) -> Result<()> {
    let path = classic_list(dir);
    let line = format!("{iface} {} {name}", direction(at));
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    if old.lines().any(|l| l == line) {
        return Ok(());
    }
    std::fs::create_dir_all(RUN)?;
    std::fs::write(&path, format!("{old}{line}\n")).with_context(|| format!("writing {}", path.display()))
}

/// Deletes the classic filters listed for `dir` (stopping for good).
fn remove_classic(dir: &Path) {
    let path = classic_list(dir);
    let Ok(text) = std::fs::read_to_string(&path) else { return };
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        let [iface, dirn, name] = w[..] else { continue };
        let at = if dirn == "egress" { TcAttachType::Egress } else { TcAttachType::Ingress };
        match aya::programs::tc::qdisc_detach_program(iface, at, name) {
            Ok(()) => tracing::info!("removed the tc filter {name} from {iface} ({dirn})"),
            Err(e) => tracing::debug!("removing the tc filter {name} from {iface}: {e}"),
        }
    }
    let _ = std::fs::remove_file(path);
}

/// Puts the program behind the link an earlier run pinned, or attaches it
/// and pins the new link. A pinned link whose interface is gone is
/// replaced by a new one.
fn attach_pinned(prog: &mut impl LinkAttach, name: &str, iface: &str, dir: &Path) -> Result<Attached> {
    let pin = link_pin(dir, name, iface);
    if pin.exists() {
        let replaced =
            PinnedLink::from_pin(&pin).map_err(|e| anyhow!("{e}")).and_then(|l| prog.replace(FdLink::from(l)));
        match replaced {
            Ok(()) => return Ok(Attached::Replaced),
            Err(e) => {
                tracing::warn!("the earlier run's link of {name} on {iface} is gone ({e}); attaching anew");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let fd = prog.attach_new().with_context(|| format!("attaching {name} to {iface}"))?;
    fd.pin(&pin).with_context(|| format!("pinning the link of {name} on {iface}"))?;
    Ok(Attached::New)
}

/// Detaches links an earlier run pinned that this run does not use (an
/// interface no longer given).
pub fn drop_other_links(dir: &Path, keep: &[(&str, &str)]) {
    let keep: Vec<PathBuf> = keep.iter().map(|(p, i)| link_pin(dir, p, i)).collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let is_link = e.file_name().to_string_lossy().starts_with("link-");
            if is_link && !keep.contains(&e.path()) {
                tracing::info!("detaching {} (not used by this run)", e.file_name().to_string_lossy());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Stops a datapath for good, after its flows were reset: removes the
/// links (the programs detach), the maps' pins, and what the record says
/// the agent changed.
pub fn remove(kind: Kind, iface: &str, dir: &Path) {
    remove_classic(dir);
    crate::ebpf::remove_pins(dir);
    // The `xlate` directory under /sys/fs/bpf, once empty; never a BPF
    // filesystem's mount point itself (/run/xlate/bpf): seen through
    // /proc/PID/root, another namespace's mount point can be removed, and
    // that unmounts it.
    if let Some(parent) = dir.parent().filter(|p| p.file_name().is_some_and(|n| n == "xlate")) {
        let _ = std::fs::remove_dir(parent);
    }
    match Record::load(kind, iface) {
        Ok(r) => r.undo(kind, iface),
        Err(e) => tracing::warn!("{e:#}"),
    }
    if let Ok(p) = lock_path(kind, iface) {
        let _ = std::fs::remove_file(p);
    }
    // The control socket of an agent that was killed.
    if let Ok(p) = super::control_socket(kind, iface) {
        let _ = std::fs::remove_file(p);
    }
    super::holder::release_if_unused();
    let _ = std::fs::remove_dir(RUN);
}

/// Where an agent that is not running left its pins, as this process sees
/// them.
pub fn orphan_dir(kind: Kind, iface: &str) -> Result<Option<PathBuf>> {
    let name = pin_name(kind, iface)?;
    for base in super::pins::all_bases() {
        let d = base.join(&name);
        if d.is_dir() {
            return Ok(Some(d));
        }
    }
    Ok(None)
}
