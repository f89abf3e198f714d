//! What every program of the translation core shares: the flow maps, the
//! configuration, the counters, the event ring to the agent, and the
//! small runtime helpers around them. Map names are the pin names the
//! agent and operators use (`xlate_common::flow::names`).
//!
//! The maps are pinned by name (`pinned`): an agent that restarts, or a
//! newer build that replaces it, loads its programs against the very maps
//! the running programs use, so no flow is lost (the agent checks that
//! their layout is the one its programs expect before it adopts them).

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use xlate_common::{
    flow::{flow_count, Counter, CtlRecord, EngineConfig, Event, FlowAddrs, FlowState, PeerKey, MAX_FLOWS},
    maps::FlowKey,
};

#[map(name = "ENGINE_CONFIG")]
pub(crate) static CONFIG: Array<EngineConfig> = Array::pinned(1, 0);
#[map(name = "FLOWS")]
pub(crate) static FLOWS: HashMap<u32, FlowState> = HashMap::pinned(MAX_FLOWS, 0);
#[map(name = "FLOW_ADDRS")]
pub(crate) static ADDRS: HashMap<u32, FlowAddrs> = HashMap::pinned(MAX_FLOWS, 0);
#[map(name = "FLOW_TUPLES")]
pub(crate) static TUPLES: HashMap<FlowKey, u32> = HashMap::pinned(MAX_FLOWS, 0);
#[map(name = "FLOW_PEERS")]
pub(crate) static PEERS: HashMap<PeerKey, u32> = HashMap::pinned(MAX_FLOWS, 0);
/// Per CPU: where a new flow's state is built before it is inserted. A
/// `FlowState` on the stack would put the translator's SYN path past the
/// 512 bytes older verifiers allow a call chain (Linux 6.1 rounds every
/// frame up to 32 bytes).
#[map(name = "FLOW_SCRATCH")]
pub(crate) static FLOW_SCRATCH: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "PORT_ROTATION")]
static ROTATION: PerCpuArray<u32> = PerCpuArray::pinned(1, 0);
#[map(name = "FLOW_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(64 * 1024, 0);
/// The agent's control-plane state per flow: kept here only so that it
/// survives a restart of the agent (no program reads it).
#[map(name = "AGENT_CTL")]
static AGENT_CTL: HashMap<u32, CtlRecord> = HashMap::pinned(MAX_FLOWS, 0);
/// Per CPU: the kernel adds without atomics, and the sum over CPUs is
/// read only when a new flow is considered.
#[map(name = "FLOW_COUNT")]
static FLOW_COUNT: PerCpuArray<u64> = PerCpuArray::pinned(flow_count::SLOTS, 0);
/// More CPUs than any gateway has; the sum stops at the first missing one.
const MAX_CPUS: u32 = 512;
#[map(name = "COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT as u32, 0);

#[inline(always)]
pub(crate) fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c.index()) {
        // SAFETY: this CPU's slot.
        unsafe { *p += 1 };
    }
}

/// A flow was created (see `flow_count`).
#[inline(always)]
pub(crate) fn flow_created() {
    if let Some(p) = FLOW_COUNT.get_ptr_mut(flow_count::CREATED) {
        // SAFETY: this CPU's slot.
        unsafe { *p += 1 };
    }
}

/// One slot of `FLOW_COUNT`, summed over the CPUs.
#[inline(never)]
fn flow_count_sum(slot: u32) -> u64 {
    let mut total = 0u64;
    let mut cpu = 0u32;
    while cpu < MAX_CPUS {
        // SAFETY: the map's definition is the static itself
        // (`repr(transparent)`); key and CPU are plain values.
        let p = unsafe {
            aya_ebpf::helpers::bpf_map_lookup_percpu_elem(
                &FLOW_COUNT as *const _ as *mut core::ffi::c_void,
                &slot as *const u32 as *const core::ffi::c_void,
                cpu,
            )
        };
        if p.is_null() {
            break;
        }
        // SAFETY: a non-null lookup result points at the u64 value.
        total = total.wrapping_add(unsafe { *(p as *const u64) });
        cpu += 1;
    }
    total
}

/// Whether the fast path's share of the flow table is used up.
#[inline(always)]
pub(crate) fn fast_path_full() -> bool {
    let limit = flow_count_sum(flow_count::FAST_PATH_LIMIT);
    limit != 0 && flow_count_sum(flow_count::CREATED).wrapping_sub(flow_count_sum(flow_count::FREED)) >= limit
}

#[inline(always)]
pub(crate) fn notify(kind: u32, flow: u32) {
    let _ = EVENTS.output::<Event>(Event { kind, flow }, 0);
}

/// CLOCK_MONOTONIC to the last tick (Linux 5.11). Every use is coarse
/// (idle expiry in seconds, the half-open timeout, a 400 ms retransmission
/// gap), and a clock-source read costs each packet some 25 ns on a VM
/// (measured with `xlate-user bench-xdp`). The agent reads the same clock
/// at full precision, and so can be up to a tick ahead: it subtracts
/// saturating.
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub(crate) fn rand32() -> u32 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_prandom_u32() }
}

/// A fresh 8-byte nonce for a new flow.
#[inline(always)]
pub(crate) fn rand_nonce() -> [u8; 8] {
    let (n0, n1) = (rand32(), rand32());
    let mut nonce = [0u8; 8];
    nonce[..4].copy_from_slice(&n0.to_ne_bytes());
    nonce[4..].copy_from_slice(&n1.to_ne_bytes());
    nonce
}

/// A new local flow ID: random, so that one observed ID tells nothing of
/// the others (they are what a forged data packet needs), non-zero, and
/// not one of a live flow (checked here; the insert with BPF_NOEXIST
/// catches a race). `None` only if four draws all collide: the table is
/// that full.
#[inline(always)]
pub(crate) fn alloc_flow_id() -> Option<u32> {
    let mut i = 0;
    while i < 4 {
        let id = rand32();
        // SAFETY: plain map lookup.
        if id != 0 && unsafe { FLOWS.get(&id) }.is_none() {
            return Some(id);
        }
        i += 1;
    }
    None
}

/// The next value of this CPU's rotation counter (seeded at random by the
/// agent): the server side's local ports walk through the ephemeral range
/// with it, so that a new flow does not land on the TIME_WAIT socket of a
/// recent one. Never on the wire.
#[inline(always)]
pub(crate) fn next_rotation() -> Option<u32> {
    let p = ROTATION.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; no other writer while we run on it.
    let n = unsafe {
        *p = (*p).wrapping_add(1);
        *p
    };
    // SAFETY: no preconditions.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() } & 0xff;
    Some((n << 8) | cpu)
}

pub(crate) const BPF_NOEXIST: u64 = 1;
