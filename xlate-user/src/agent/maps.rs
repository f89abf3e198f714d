//! The flow engine's maps as an agent holds them (either mode), pinned in
//! a directory per kind, network namespace and interface (see `pins`) so
//! that `flows`, `stats` and metrics read the same state the kernel uses.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues};
use aya::Ebpf;
use xlate_common::flow::{
    flow_count, names, room, Counter, CtlRecord, EngineConfig, FlowAddrs, FlowState, PeerKey, RouteTargets, ServeEntry,
    SynBudget, TupleEntry,
};
use xlate_common::maps::{FlowKey, ServiceEntry, ServiceKey};

/// Which program family an instance runs: host mode or the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Host,
    Gateway,
}

impl Kind {
    pub(crate) fn prefix(self) -> &'static str {
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

/// The same directory for an agent about to pin (mounts the base if
/// needed). First the pins of dead datapaths go, and an earlier build's
/// directory for this one is adopted (see `residents`).
pub fn pin_dir_for_agent(kind: Kind, iface: &str) -> Result<PathBuf> {
    let base = crate::agent::pins::base_for_agent()?;
    let name = pin_name(kind, iface)?;
    crate::agent::residents::gc();
    crate::agent::residents::adopt_legacy(kind, iface, &base, &name);
    Ok(base.join(name))
}

/// `<kind>-<netns cookie>-<iface>`: a cookie names one namespace for the
/// kernel's whole uptime (inode numbers are handed on at once).
pub fn pin_name(kind: Kind, iface: &str) -> Result<String> {
    let cookie = crate::agent::residents::netns_cookie()?;
    Ok(format!("{}-{cookie}-{iface}", kind.prefix()))
}

pub struct FlowMaps {
    pub config: Array<MapData, EngineConfig>,
    pub serve: HashMap<MapData, [u8; 32], ServeEntry>,
    pub connect: HashMap<MapData, ServiceKey, ServiceEntry>,
    pub routes: LpmTrie<MapData, [u8; 32], RouteTargets>,
    pub flows: super::flow_table::FlowTable,
    /// A flow's 4-tuple -> the flow and its SAL addresses.
    pub tuples: HashMap<MapData, FlowKey, TupleEntry>,
    pub peers: HashMap<MapData, PeerKey, u32>,
    /// A reopened flow's addresses (`names::REOPENED`); `None` in the pins
    /// of a build before it (`stop` of a datapath no agent runs).
    pub reopened: Option<HashMap<MapData, u32, FlowAddrs>>,
    pub counters: PerCpuArray<MapData, u64>,
    /// The agent's own control-plane state, kept across its restarts.
    pub ctl: HashMap<MapData, u32, CtlRecord>,
    /// How many flows exist (`flow_count`).
    pub count: PerCpuArray<MapData, u64>,
    /// How many more the kernel may create (`room`).
    pub room: Array<MapData, i64>,
    /// What the agent counted since the last [`Self::flush_counts`]: its
    /// counters, by index, and the flows it freed. Adding one to a per-CPU
    /// counter in the map takes two system calls (read every CPU's value,
    /// write them back), and one event may move a counter several times
    /// (a timer's retransmissions, a scan's expiries): held here, each
    /// counter that moved costs that once per event.
    pending: [u64; Counter::COUNT],
    pending_freed: u64,
}

/// Takes a map out of the loaded object (already pinned by the loader:
/// see `crate::ebpf`).
pub fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

impl FlowMaps {
    /// Takes the maps out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Self::from(|name| take(ebpf, name))
    }

    /// Opens the maps pinned in `dir` (an agent that no longer runs).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::from(|name| open_in(dir, name))
    }

    fn from(mut get: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        Ok(FlowMaps {
            config: get(names::CONFIG)?.try_into()?,
            serve: get(names::SERVE)?.try_into()?,
            connect: get(names::CONNECT)?.try_into()?,
            routes: get(names::ROUTES)?.try_into()?,
            flows: super::flow_table::FlowTable::new(get(names::FLOWS)?)?,
            tuples: get(names::TUPLES)?.try_into()?,
            peers: get(names::PEERS)?.try_into()?,
            reopened: get(names::REOPENED).ok().and_then(|m| m.try_into().ok()),
            counters: get(names::COUNTERS)?.try_into()?,
            count: get(names::FLOW_COUNT)?.try_into()?,
            room: get(names::ROOM)?.try_into()?,
            ctl: get(names::AGENT_CTL)?.try_into()?,
            pending: [0; Counter::COUNT],
            pending_freed: 0,
        })
    }

    /// The SAL addresses of flow `st`: in its tuple's entry, or, once a new
    /// connection reopened its tuple, in `FLOW_REOPENED`. A flow whose
    /// connection is over may be reopened at any moment, so the agent
    /// keeps its later moves there too (see [`Self::set_addrs`]), and for
    /// such a flow that entry comes first.
    pub fn addrs_of(&self, st: &FlowState) -> Option<FlowAddrs> {
        let reopened = || self.reopened.as_ref().and_then(|m| m.get(&st.local_flow, 0).ok());
        if Self::over(st) {
            if let Some(a) = reopened() {
                return Some(a);
            }
        }
        match self.tuples.get(&st.tuple(), 0) {
            Ok(t) if t.flow == st.local_flow => Some(t.addrs),
            _ => reopened(),
        }
    }

    /// Whether flow `st`'s connection is over, so that a SYN may reopen its
    /// tuple (the kernel's rule).
    fn over(st: &FlowState) -> bool {
        xlate_common::translate::reopens(st, xlate_common::translate::TCP_SYN)
    }

    /// Removes flow `st`'s tuple entry, unless it names another flow: a
    /// new connection may have reopened the tuple (`event::REOPENED`).
    /// An entry that names another flow is not touched: the new flow's
    /// segments must find it, without a gap. One that names this flow may
    /// still be reopened between this lookup and the delete, so it is
    /// taken out and read in one step (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`,
    /// Linux 5.14) and put back if it turns out to be the new flow's.
    pub fn release_tuple(&mut self, st: &FlowState) {
        use aya::maps::IterableMap as _;
        use std::os::fd::{AsFd as _, AsRawFd as _};
        const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
        const BPF_NOEXIST: u64 = 1;
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let key = st.tuple();
        if !self.tuples.get(&key, 0).is_ok_and(|t| t.flow == st.local_flow) {
            return;
        }
        let mut taken = TupleEntry::default();
        let attr = ElemAttr {
            map_fd: self.tuples.map().fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const FlowKey as u64,
            value: &mut taken as *mut TupleEntry as u64,
            flags: 0,
        };
        // SAFETY: the attribute names our map, a key and a value of its
        // sizes, which outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &attr as *const ElemAttr,
                std::mem::size_of::<ElemAttr>(),
            )
        };
        if r == 0 && taken.flow != st.local_flow {
            let _ = self.tuples.insert(key, taken, BPF_NOEXIST);
        } else if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
            // (A kernel without the command: the plain delete, and the
            // race it leaves.)
            let _ = self.tuples.remove(&key);
        }
    }

    /// Moves flow `st` to `addrs` (migration). Only an entry that exists
    /// is rewritten: a flow freed meanwhile stays freed, and a tuple a new
    /// connection took over stays the new flow's. A flow whose connection
    /// is over keeps its new addresses in `FLOW_REOPENED` instead of its
    /// tuple entry, which a SYN may take over between a read and a write
    /// here. (A flow that ends and is reopened within that very gap is
    /// the race left.)
    pub fn set_addrs(&mut self, st: &FlowState, addrs: FlowAddrs) -> Result<(), aya::maps::MapError> {
        const BPF_ANY: u64 = 0;
        const BPF_EXIST: u64 = 2;
        let entry = self.tuples.get(&st.tuple(), 0).ok().filter(|t| t.flow == st.local_flow);
        match (self.reopened.as_mut(), entry) {
            (Some(m), _) if Self::over(st) => m.insert(st.local_flow, addrs, BPF_ANY),
            (_, Some(t)) => self.tuples.insert(st.tuple(), TupleEntry { addrs, ..t }, BPF_EXIST),
            (Some(m), None) => m.insert(st.local_flow, addrs, BPF_EXIST),
            (None, None) => Err(aya::maps::MapError::KeyNotFound),
        }
    }

    /// Forgets the addresses kept for flow `id` once reopened.
    pub fn forget_reopened(&mut self, id: u32) {
        if let Some(m) = self.reopened.as_mut() {
            let _ = m.remove(&id);
        }
    }

    /// Forgets the addresses of reopened flows that no longer exist (their
    /// event lost to a full ring, or freed before it was read).
    pub fn sweep_reopened(&mut self) {
        let Some(m) = self.reopened.as_mut() else { return };
        let gone: Vec<u32> = m.keys().filter_map(|k| k.ok()).filter(|id| !self.flows.contains(*id)).collect();
        for id in gone {
            let _ = m.remove(&id);
        }
    }

    /// Adds one to a counter from user space (CPU 0's slot; the agent is
    /// the only user-space writer), at the next [`Self::flush_counts`].
    pub fn bump(&mut self, c: Counter) {
        self.pending[c.index() as usize] += 1;
    }

    /// A flow was freed (the agent's half of `flow_count`), counted at the
    /// next [`Self::flush_counts`].
    pub fn count_freed(&mut self) {
        self.pending_freed += 1;
    }

    /// Writes what [`Self::bump`] and [`Self::count_freed`] held to the
    /// maps. The event loop calls it after every event (through
    /// `ControlPlane::sync`), so readers of the pins (`stats`, metrics)
    /// see an event's counts once it is handled; every reader of the
    /// counts in the agent flushes first.
    pub fn flush_counts(&mut self) {
        for c in Counter::all() {
            let n = std::mem::take(&mut self.pending[c.index() as usize]);
            if n > 0 {
                bump_counter(&mut self.counters, c, n);
            }
        }
        let freed = std::mem::take(&mut self.pending_freed);
        if freed > 0 {
            let n = slot_sum(&self.count, flow_count::FREED);
            slot_set(&mut self.count, flow_count::FREED, n + freed);
        }
    }

    /// Sets the count of created flows to what the table holds (at start,
    /// and at every full scan: a map adopted from a build without the
    /// count, or an increment lost to a race, is corrected here).
    pub fn resync_count(&mut self) {
        self.flush_counts();
        let live = self.flows.len() as u64;
        let freed = slot_sum(&self.count, flow_count::FREED);
        slot_set(&mut self.count, flow_count::CREATED, freed + live);
    }

    /// The gateway's fast-path limit (`flow_count::FAST_PATH_LIMIT`).
    pub fn set_fast_path_limit(&mut self, n: u64) {
        slot_set(&mut self.count, flow_count::FAST_PATH_LIMIT, n);
    }

    /// The gateway's fast-path limit (0: none).
    pub fn fast_path_limit(&self) -> u64 {
        slot_sum(&self.count, flow_count::FAST_PATH_LIMIT)
    }

    /// How many flows are half-open: started, minus proven, minus freed
    /// while half-open (counters the kernel and the agent keep in the
    /// pinned counter map, so the figure survives restarts).
    pub fn half_open(&self) -> u64 {
        let sum = |c: Counter| -> u64 { self.counters.get(&c.index(), 0).map(|v| v.iter().sum()).unwrap_or(0) };
        sum(Counter::FlowsHalfOpened)
            .saturating_sub(sum(Counter::FlowsProven))
            .saturating_sub(sum(Counter::FlowsFreedHalfOpen))
    }

    /// Gives the kernel its room for new flows until the next look
    /// (`room`): the half-open flows under `budget`'s budget and hard
    /// limit, and the fast path's share of the table left. Before the programs attach
    /// (the map starts at zero: no room) and on every tick.
    pub fn refresh_room(&mut self, budget: SynBudget) -> Room {
        self.flush_counts();
        let r = Room { half_open: self.half_open(), flows: self.flow_count(), fast_path_limit: self.fast_path_limit() };
        let fast_path = match r.fast_path_limit {
            0 => room::UNLIMITED,
            n => n.saturating_sub(r.flows) as i64,
        };
        let _ = self.room.set(room::BUDGET, budget.budget.saturating_sub(r.half_open) as i64, 0);
        let _ = self.room.set(room::HALF_OPEN, budget.hard.saturating_sub(r.half_open) as i64, 0);
        let _ = self.room.set(room::FAST_PATH, fast_path, 0);
        r
    }

    /// How many flows exist, by the count.
    pub fn flow_count(&self) -> u64 {
        slot_sum(&self.count, flow_count::CREATED).saturating_sub(slot_sum(&self.count, flow_count::FREED))
    }
}

impl Drop for FlowMaps {
    /// Nothing counted is lost, whichever way the agent ends.
    fn drop(&mut self) {
        self.flush_counts();
    }
}

fn slot_sum(map: &PerCpuArray<MapData, u64>, slot: u32) -> u64 {
    map.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// Puts `value` in the first CPU's slot and zero in the others.
fn slot_set(map: &mut PerCpuArray<MapData, u64>, slot: u32, value: u64) {
    if let Ok(v) = map.get(&slot, 0) {
        let mut vals = vec![0u64; v.len()];
        vals[0] = value;
        if let Ok(v) = PerCpuValues::try_from(vals) {
            let _ = map.set(slot, v, 0);
        }
    }
}

/// Adds `n` to counter `c` (in the first CPU's slot: the agent counts
/// from one thread, and readers sum the slots).
pub fn bump_counter(counters: &mut PerCpuArray<MapData, u64>, c: Counter, n: u64) {
    if let Ok(v) = counters.get(&c.index(), 0) {
        let mut vals: Vec<u64> = v.iter().copied().collect();
        vals[0] += n;
        let v = PerCpuValues::try_from(vals).expect("same length");
        let _ = counters.set(c.index(), v, 0);
    }
}

/// Opens a pinned map of a running instance.
pub fn open_pinned(kind: Kind, iface: &str, name: &str) -> Result<Map> {
    let what = super::resident::noun(kind);
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

/// Opens map `name` pinned in `dir` (the agent's own pin directory).
pub fn open_in(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// Sums a per-CPU counter map.
pub fn read_counters(map: &PerCpuArray<MapData, u64>) -> Vec<(Counter, u64)> {
    Counter::all().map(|c| (c, map.get(&c.index(), 0).map(|v| v.iter().sum()).unwrap_or(0))).collect()
}

/// What [`FlowMaps::refresh_room`] counted.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    pub half_open: u64,
    pub flows: u64,
    pub fast_path_limit: u64,
}
