//! The `FLOWS` table as user space sees it: an array of slots the kernel
//! writes, mapped into the agent's memory (`BPF_F_MMAPABLE`), so that a
//! scan of every flow is a walk over memory, not two system calls per
//! flow. The slot protocol (free, claimed, a flow's ID) is
//! `xlate_common::flow::flow_slot`'s.

use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Map, MapData};
use xlate_common::flow::{flow_slot, FlowState};

/// The kernel lays array elements out every `round_up(value_size, 8)`
/// bytes.
const STRIDE: usize = std::mem::size_of::<FlowState>().next_multiple_of(8);
/// Where `local_flow` (the slot's state) sits in a slot.
const ID_AT: usize = std::mem::offset_of!(FlowState, local_flow);

pub struct FlowTable {
    /// Kept open for the mapping's life.
    _map: MapData,
    base: NonNull<u8>,
    bytes: usize,
    slots: u32,
}

// SAFETY: the mapping is shared memory, reached only through the methods
// below (volatile reads, atomic writes of the slot state); nothing in it is
// tied to a thread.
unsafe impl Send for FlowTable {}
unsafe impl Sync for FlowTable {}

impl FlowTable {
    /// The table from a map of the loaded object or a pinned one.
    pub fn new(map: Map) -> Result<Self> {
        let Map::Array(data) = map else {
            bail!("FLOWS is not an array map (a build from before flow slots?)");
        };
        let info = data.info().context("reading FLOWS's map info")?;
        if info.value_size() as usize != std::mem::size_of::<FlowState>() {
            bail!(
                "FLOWS holds {}-byte values, this build's flows are {}",
                info.value_size(),
                std::mem::size_of::<FlowState>()
            );
        }
        let slots = info.max_entries();
        if !slots.is_power_of_two() {
            bail!("FLOWS has {slots} slots, not a power of two");
        }
        let page = 4096;
        let bytes = (slots as usize * STRIDE).next_multiple_of(page);
        // SAFETY: mapping a BPF array map's values, shared with the kernel;
        // the kernel checks the length and that the map is mappable.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(anyhow!(std::io::Error::last_os_error()).context("mapping FLOWS into memory"));
        }
        let base = NonNull::new(p as *mut u8).ok_or_else(|| anyhow!("mmap returned null"))?;
        Ok(FlowTable { _map: data, base, bytes, slots })
    }

    /// The table of a map the caller keeps (a loaded object's): maps
    /// its own handle on the same map.
    pub fn of(map: &Map) -> Result<Self> {
        let Map::Array(data) = map else {
            bail!("FLOWS is not an array map (a build from before flow slots?)");
        };
        let fd = data.fd().as_fd().try_clone_to_owned().context("duplicating FLOWS's descriptor")?;
        Self::new(Map::Array(MapData::from_fd(fd).context("opening FLOWS")?))
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn slot(&self, i: u32) -> *mut u8 {
        // SAFETY: i < slots (callers mask or bound it); within the mapping.
        unsafe { self.base.as_ptr().add((i & (self.slots - 1)) as usize * STRIDE) }
    }

    fn state_of(&self, i: u32) -> &AtomicU32 {
        // SAFETY: an aligned u32 (slots are 8-aligned, the field 4-aligned)
        // inside the mapping, which outlives &self.
        unsafe { AtomicU32::from_ptr(self.slot(i).add(ID_AT) as *mut u32) }
    }

    /// A copy of slot `i`'s flow if one lives there. The kernel may write
    /// the flow meanwhile: the copy holds each field as it was at some
    /// moment of the read (what a map lookup gives too).
    fn read(&self, i: u32) -> Option<FlowState> {
        let id = self.state_of(i).load(Ordering::Acquire);
        if !flow_slot::is_id(id) {
            return None;
        }
        // SAFETY: a slot of the mapping; FlowState is plain data.
        let st = unsafe { std::ptr::read_volatile(self.slot(i) as *const FlowState) };
        (st.local_flow == id).then_some(st)
    }

    /// The table's header (mask and key), once sealed.
    pub fn header(&self) -> Option<flow_slot::Header> {
        // SAFETY: slot 0 of the mapping; FlowState is plain data.
        let st = unsafe { std::ptr::read_volatile(self.slot(flow_slot::HEADER) as *const FlowState) };
        flow_slot::Header::of_slot(&st)
    }

    /// Gives a new table its header: this many slots, and `key` (drawn at
    /// random by the caller) to scramble slots into IDs. A table sealed
    /// before (an earlier run's, adopted) keeps its own, so that its
    /// flows' IDs keep naming their slots. The kernel makes no flow in a
    /// table without one.
    pub fn seal(&self, key: u64) -> Result<flow_slot::Header> {
        if let Some(h) = self.header() {
            return Ok(h);
        }
        let state = self.state_of(flow_slot::HEADER);
        let held = state.load(Ordering::Acquire);
        if held != flow_slot::FREE {
            bail!(
                "FLOWS slot {} holds flow {held:#x} where this build keeps the table's header: the table is an \
                 older build's; stop its datapath first (xlate-user stop)",
                flow_slot::HEADER
            );
        }
        let h = flow_slot::Header { mask: self.slots - 1, key };
        let mut fresh = h.to_slot();
        fresh.local_flow = flow_slot::FREE;
        // SAFETY: the header slot, free: no flow and no kernel reader.
        unsafe { std::ptr::write_volatile(self.slot(flow_slot::HEADER) as *mut FlowState, fresh) };
        match state.compare_exchange(flow_slot::FREE, flow_slot::CLAIMED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(h),
            Err(_) => self.header().ok_or_else(|| anyhow!("FLOWS's header slot was taken while sealing it")),
        }
    }

    /// The slot flow `id` would live in; `None` before the table is sealed.
    pub fn index(&self, id: u32) -> Option<u32> {
        flow_slot::is_id(id).then(|| self.header().map(|h| h.index(id))).flatten()
    }

    /// Flow `id`'s state, if it lives.
    pub fn get(&self, id: u32) -> Option<FlowState> {
        self.read(self.index(id)?).filter(|st| st.local_flow == id)
    }

    pub fn contains(&self, id: u32) -> bool {
        self.index(id).is_some_and(|i| self.state_of(i).load(Ordering::Acquire) == id)
    }

    /// Frees flow `id`'s slot; false if it was not live (freed already).
    pub fn remove(&self, id: u32) -> bool {
        self.index(id).is_some_and(|i| {
            self.state_of(i).compare_exchange(id, flow_slot::FREE, Ordering::AcqRel, Ordering::Acquire).is_ok()
        })
    }

    /// Every live flow.
    pub fn iter(&self) -> impl Iterator<Item = FlowState> + '_ {
        (0..self.slots).filter_map(|i| self.read(i))
    }

    /// Every live flow's ID.
    pub fn ids(&self) -> Vec<u32> {
        (0..self.slots).map(|i| self.state_of(i).load(Ordering::Acquire)).filter(|id| flow_slot::is_id(*id)).collect()
    }

    /// How many flows live.
    pub fn len(&self) -> usize {
        (0..self.slots).filter(|i| flow_slot::is_id(self.state_of(*i).load(Ordering::Relaxed))).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts `st` in its slot the way the kernel does (claim, write,
    /// publish), for tests that set a flow up by hand; fails if the slot
    /// is taken.
    pub fn insert(&self, st: &FlowState) -> Result<()> {
        let id = st.local_flow;
        if !flow_slot::is_id(id) {
            bail!("flow ID {id:#x} is a slot marker");
        }
        let Some(i) = self.index(id) else { bail!("the table has no header yet (seal it first)") };
        if i == flow_slot::HEADER {
            bail!("flow ID {id:#x} names the header slot");
        }
        let state = self.state_of(i);
        if state.compare_exchange(flow_slot::FREE, flow_slot::CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_err() {
            bail!("the slot of flow {id:#x} is taken");
        }
        let mut claimed = *st;
        claimed.local_flow = flow_slot::CLAIMED;
        // SAFETY: a slot of the mapping, ours while claimed.
        unsafe { std::ptr::write_volatile(self.slot(i) as *mut FlowState, claimed) };
        state.store(id, Ordering::Release);
        Ok(())
    }
}

impl Drop for FlowTable {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unused from here on.
        unsafe { libc::munmap(self.base.as_ptr() as *mut _, self.bytes) };
    }
}
