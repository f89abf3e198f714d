//! The flow engine's maps as an agent holds them (either mode), pinned in
//! a directory per kind, network namespace and interface (see `pins`) so
//! that `flows`, `stats` and metrics read the same state the kernel uses.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues};
use aya::Ebpf;
use xlate_common::flow::{names, Counter, EngineConfig, FlowAddrs, FlowState, PeerKey, RouteTargets, ServeEntry};
use xlate_common::maps::{FlowKey, ServiceEntry, ServiceKey};

/// Which program family an instance runs: host mode or the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Host,
    Gateway,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::Gateway => "gw",
        }
    }
}

/// Where an instance pins its maps: one directory per kind, network
/// namespace and interface, so several instances coexist on one machine;
/// under the host-wide pin base (see [`crate::pins`]).
pub fn pin_dir(kind: Kind, iface: &str) -> Result<PathBuf> {
    crate::agent::pins::dir_for_reading(&crate::agent::control_socket(kind, iface)?, &pin_name(kind, iface)?)
}

/// The same directory for an agent about to pin (mounts the base if needed).
pub fn pin_dir_for_agent(kind: Kind, iface: &str) -> Result<PathBuf> {
    Ok(crate::agent::pins::base_for_agent()?.join(pin_name(kind, iface)?))
}

/// `<kind>-<netns inode>-<iface>`.
pub fn pin_name(kind: Kind, iface: &str) -> Result<String> {
    let ns = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    use std::os::unix::fs::MetadataExt;
    Ok(format!("{}-{}-{iface}", kind.prefix(), ns.ino()))
}

pub struct FlowMaps {
    pub config: Array<MapData, EngineConfig>,
    pub serve: HashMap<MapData, [u8; 32], ServeEntry>,
    pub connect: HashMap<MapData, ServiceKey, ServiceEntry>,
    pub routes: LpmTrie<MapData, [u8; 32], RouteTargets>,
    pub flows: HashMap<MapData, u32, FlowState>,
    pub addrs: HashMap<MapData, u32, FlowAddrs>,
    pub tuples: HashMap<MapData, FlowKey, u32>,
    pub peers: HashMap<MapData, PeerKey, u32>,
    pub counters: PerCpuArray<MapData, u64>,
}

fn take(ebpf: &mut Ebpf, name: &str, dir: &Path) -> Result<Map> {
    let m = ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    m.pin(&path).with_context(|| format!("pinning {name} at {}", path.display()))?;
    Ok(m)
}

impl FlowMaps {
    /// Takes the maps out of the loaded object and pins them in `dir`.
    pub fn take_and_pin(ebpf: &mut Ebpf, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(FlowMaps {
            config: take(ebpf, names::CONFIG, dir)?.try_into()?,
            serve: take(ebpf, names::SERVE, dir)?.try_into()?,
            connect: take(ebpf, names::CONNECT, dir)?.try_into()?,
            routes: take(ebpf, names::ROUTES, dir)?.try_into()?,
            flows: take(ebpf, names::FLOWS, dir)?.try_into()?,
            addrs: take(ebpf, names::ADDRS, dir)?.try_into()?,
            tuples: take(ebpf, names::TUPLES, dir)?.try_into()?,
            peers: take(ebpf, names::PEERS, dir)?.try_into()?,
            counters: take(ebpf, names::COUNTERS, dir)?.try_into()?,
        })
    }

    /// Removes an instance's pins (every map pinned in `dir`).
    pub fn unpin(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
        // The shared parent goes too once the last instance is gone.
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }

    /// Adds one to a counter from user space (CPU 0's slot; the agent is
    /// the only user-space writer).
    pub fn bump(&mut self, c: Counter) {
        if let Ok(mut v) = self.counters.get(&c.index(), 0) {
            let mut vals: Vec<u64> = v.iter().copied().collect();
            vals[0] += 1;
            v = PerCpuValues::try_from(vals).expect("same length");
            let _ = self.counters.set(c.index(), v, 0);
        }
    }
}

/// Opens a pinned map of a running instance.
pub fn open_pinned(kind: Kind, iface: &str, name: &str) -> Result<Map> {
    let what = match kind {
        Kind::Host => "host-mode instance",
        Kind::Gateway => "translator",
    };
    let path = pin_dir(kind, iface)
        .with_context(|| format!("no {what} on {iface} in this network namespace (is the agent running?)"))?
        .join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "no {what} on {iface} in this network namespace ({} not found; is the agent running, and is this \
             shell in its network namespace?)",
            crate::agent::pins::shown(&path)
        )
    })?;
    Ok(Map::from_map_data(data)?)
}

/// Sums a per-CPU counter map.
pub fn read_counters(map: &PerCpuArray<MapData, u64>) -> Vec<(Counter, u64)> {
    Counter::all().map(|c| (c, map.get(&c.index(), 0).map(|v| v.iter().sum()).unwrap_or(0))).collect()
}
