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
    helpers::{bpf_get_prandom_u32, bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use xlate_common::{
    flow::{
        flow_count, flow_slot, room, tick_clock, Counter, CtlRecord, EngineConfig, Event, FlowAddrs, FlowState,
        PeerKey, TupleEntry, MAX_FLOWS,
    },
    maps::FlowKey,
};

#[map(name = "ENGINE_CONFIG")]
pub(crate) static CONFIG: Array<EngineConfig> = Array::pinned(1, 0);
#[map(name = "FLOWS")]
/// Flow states in slots, by the low bits of their IDs (`flow_slot`).
pub(crate) static FLOWS: Array<FlowState> = Array::pinned(flow_slot::slots(MAX_FLOWS), BPF_F_MMAPABLE);

const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The table's header (`flow_slot::Header`): its mask and key, once the
/// agent sealed it.
#[inline(always)]
fn header() -> Option<flow_slot::Header> {
    flow_slot::Header::of_slot(FLOWS.get(flow_slot::HEADER)?)
}

/// Flow `id`'s state, if it lives.
#[inline(always)]
pub(crate) fn flow_ptr(id: u32) -> Option<*mut FlowState> {
    flow_at(header()?.index(id), id)
}

/// Flow `id`'s state, if it lives, given its slot (`TupleEntry::slot`).
#[inline(always)]
pub(crate) fn flow_at(slot: u32, id: u32) -> Option<*mut FlowState> {
    let p = FLOWS.get_ptr_mut(slot)?;
    // SAFETY: map value, live while we run; the ID field is read once.
    (flow_slot::is_id(id) && unsafe { core::ptr::read_volatile(&(*p).local_flow) } == id).then_some(p)
}

/// Frees flow `id`'s slot (a flow that could not be completed).
#[inline(always)]
pub(crate) fn free_flow(id: u32) {
    if let Some(p) = flow_ptr(id) {
        // SAFETY: the ID field of a map value.
        unsafe { cmpxchg32(&mut (*p).local_flow, id, flow_slot::FREE) };
    }
}

/// BPF_CMPXCHG (Linux 5.12): `*p` becomes `new` if it was `old`; returns
/// what `*p` was.
///
/// # Safety
/// `p` is an aligned u32 in a map value.
#[inline(always)]
unsafe fn cmpxchg32(p: *mut u32, old: u32, new: u32) -> u32 {
    // (Fixed registers, named in their 32-bit form: they need no `wreg`
    // class, which only an `alu32` build has.)
    let mut r0 = u64::from(old);
    core::arch::asm!(
        "w0 = cmpxchg32_32({p} + 0, w0, w2)",
        p = in(reg) p, in("r2") u64::from(new), inout("r0") r0,
    );
    r0 as u32
}

/// Copies a flow state in 32-bit words. A plain assignment between two
/// pointers becomes a call to `memmove`, which the BPF build's runtime
/// does a byte at a time (76 loads, 76 stores and the loop around them).
///
/// # Safety
/// `dst` is a map value's flow state (4-aligned).
#[inline(always)]
unsafe fn copy_words(dst: *mut FlowState, src: &FlowState) {
    const WORDS: usize = core::mem::size_of::<FlowState>() / 4;
    let (d, s) = (dst as *mut u32, src as *const FlowState as *const u32);
    let mut i = 0;
    while i < WORDS {
        core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i)));
        i += 1;
    }
}

/// Zeroes a flow state in 32-bit words (see [`copy_words`]; a zeroed
/// struct is a byte-at-a-time `memset`).
///
/// # Safety
/// `dst` is a map value's flow state (4-aligned).
#[inline(always)]
pub(crate) unsafe fn zero_words(dst: *mut FlowState) {
    const WORDS: usize = core::mem::size_of::<FlowState>() / 4;
    let d = dst as *mut u32;
    let mut i = 0;
    while i < WORDS {
        core::ptr::write_volatile(d.add(i), 0);
        i += 1;
    }
}

/// BPF_XCHG (Linux 5.12), a full barrier: publishes `v` at `p` after every
/// earlier store.
///
/// # Safety
/// `p` is an aligned u32 in a map value.
#[inline(always)]
unsafe fn xchg32(p: *mut u32, v: u32) {
    core::arch::asm!("w2 = xchg32_32({p} + 0, w2)", p = in(reg) p, inout("r2") u64::from(v) => _);
}
/// The local TCP's 4-tuple -> its flow and the flow's SAL addresses.
#[map(name = "FLOW_TUPLES")]
pub(crate) static TUPLES: HashMap<FlowKey, TupleEntry> = HashMap::pinned(MAX_FLOWS, 0);
#[map(name = "FLOW_PEERS")]
pub(crate) static PEERS: HashMap<PeerKey, u32> = HashMap::pinned(MAX_FLOWS, 0);
/// A reopened flow's SAL addresses (`names::REOPENED`): written only when
/// a SYN reopens a tuple, so its memory is taken as entries come.
#[map(name = "FLOW_REOPENED")]
pub(crate) static REOPENED: HashMap<u32, FlowAddrs> = HashMap::pinned(MAX_FLOWS, BPF_F_NO_PREALLOC);
const BPF_F_NO_PREALLOC: u32 = 1;
/// Per CPU: where a new flow's state is built before it is inserted. A
/// `FlowState` on the stack would put the translator's SYN path past the
/// 512 bytes older verifiers allow a call chain (Linux 6.1 rounds every
/// frame up to 32 bytes).
#[map(name = "FLOW_SCRATCH")]
pub(crate) static FLOW_SCRATCH: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);
/// Where this CPU looks for its next new flow's slot: after its last one
/// (see `insert_flow`); 0 until its first. Not pinned: a restart starts
/// each CPU at a random slot again.
#[map(name = "NEXT_SLOT")]
static NEXT_SLOT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "PORT_ROTATION")]
static ROTATION: PerCpuArray<u32> = PerCpuArray::pinned(1, 0);
#[map(name = "FLOW_EVENTS")]
/// 16 bytes a record: 16 Ki of them, so that new flows' events (read
/// every 100 ms, see `notify_quietly`) overflow only past 160 000 new
/// flows a second (the agent's periodic scan then finds what they missed).
static EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);
/// The agent's control-plane state per flow: kept here only so that it
/// survives a restart of the agent (no program reads it).
#[map(name = "AGENT_CTL")]
static AGENT_CTL: HashMap<u32, CtlRecord> = HashMap::pinned(MAX_FLOWS, 0);
/// Per CPU: the kernel adds without atomics; the agent sums the CPUs.
#[map(name = "FLOW_COUNT")]
static FLOW_COUNT: PerCpuArray<u64> = PerCpuArray::pinned(flow_count::SLOTS, 0);
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

/// How many more flows of each kind may be created (`flow::room`): the
/// agent's allowance until it looks again.
#[map(name = "FLOW_ROOM")]
static ROOM: Array<i64> = Array::pinned(room::SLOTS, 0);

/// Whether there is room for one more flow of kind `slot`.
#[inline(always)]
pub(crate) fn has_room(slot: u32) -> bool {
    // SAFETY: map value, read once.
    ROOM.get_ptr(slot).is_some_and(|p| unsafe { core::ptr::read_volatile(p) } > 0)
}

/// Takes the room of one flow of kind `slot` (after [`has_room`]). Every
/// CPU shares the slot, so the subtraction is atomic; CPUs that passed
/// `has_room` together at a room of 1 can take it below zero, by at most
/// one flow each.
#[inline(always)]
pub(crate) fn take_room(slot: u32) {
    if let Some(p) = ROOM.get_ptr_mut(slot) {
        // BPF_ATOMIC_ADD (every BPF ISA version has it; core's atomics
        // offer no read-modify-write on this target).
        // SAFETY: p is a map value, an aligned i64 live while we run.
        unsafe { core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) -1i64) };
    }
}

/// An event the agent acts on at once (a FIN to send, a reset): it is
/// woken even when older events wait unread (a plain submit wakes only a
/// reader that has read everything).
#[inline(always)]
pub(crate) fn notify(kind: u32, flow: u32) {
    let _ = EVENTS.output::<Event>(Event { kind, flow }, BPF_RB_FORCE_WAKEUP);
}

/// An event for the agent's bookkeeping only (a new flow, which it looks
/// at again seconds later; an established one): no wake-up, which would
/// cost the packet an interrupt and the agent a context switch per flow.
/// The agent reads these on its next tick (100 ms) or with the next
/// urgent event.
#[inline(always)]
pub(crate) fn notify_quietly(kind: u32, flow: u32) {
    let _ = EVENTS.output::<Event>(Event { kind, flow }, BPF_RB_NO_WAKEUP);
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// CLOCK_MONOTONIC to the last tick. Every use is coarse (idle expiry in
/// seconds, the half-open timeout, a 400 ms retransmission gap): a
/// clock-source read cost each packet some 25 ns on a VM, and the coarse
/// clock's helper (Linux 5.11) 4-6 ns, so it comes from `jiffies` (one
/// load, see `tick_clock`) once the agent has measured how they map. The
/// agent reads the same clock at full precision, and so can be up to a
/// tick ahead: it subtracts saturating.
#[inline(always)]
pub(crate) fn now() -> u64 {
    match CONFIG.get(0) {
        // SAFETY: no preconditions (inlined by the verifier to a load).
        Some(c) if c.tick_ns != 0 => tick_clock::now_ns(unsafe { bpf_jiffies64() }, c.tick_ns, c.clock_base),
        // SAFETY: no preconditions.
        _ => unsafe { bpf_ktime_get_coarse_ns() },
    }
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

/// Inserts a new flow under a new local flow ID, which it writes into
/// `st`. The slot is the next free one after this CPU's last new flow, or
/// after a random slot when a run of `flow_slot::PROBES` is taken; the ID
/// names it under the table's key with random bits of its own (see
/// `flow_slot` for why in order, and why IDs still give nothing away).
/// Claimed atomically: two CPUs after one slot cannot both take it.
/// Returns the ID and the slot; `None` if every slot tried is taken, or
/// the agent has not sealed the table yet.
#[inline(always)]
pub(crate) fn insert_flow(st: &mut FlowState) -> Option<(u32, u32)> {
    let h = header()?;
    let next = NEXT_SLOT.get_ptr_mut(0)?;
    let draw = rand32();
    // SAFETY: this CPU's value, ours while the program runs.
    let mut from = unsafe { *next };
    if from == 0 {
        // This CPU's first flow since the programs were loaded: CPUs
        // start apart, so that they do not share cache lines.
        from = rand32();
    }
    let mut i = 0;
    while i < flow_slot::PROBES * flow_slot::ROUNDS {
        if i != 0 && i % flow_slot::PROBES == 0 {
            from = rand32().wrapping_sub(i);
        }
        let s = from.wrapping_add(i) & h.mask;
        i += 1;
        let id = flow_slot::id_for(s, draw, h.mask, h.key);
        if s == flow_slot::HEADER || !flow_slot::is_id(id) {
            continue;
        }
        let Some(p) = FLOWS.get_ptr_mut(s) else {
            continue;
        };
        // SAFETY: p is a map value; the slot is ours once claimed.
        unsafe {
            if cmpxchg32(&mut (*p).local_flow, flow_slot::FREE, flow_slot::CLAIMED) != flow_slot::FREE {
                continue;
            }
            st.local_flow = flow_slot::CLAIMED;
            copy_words(p, st);
            xchg32(&mut (*p).local_flow, id);
            *next = s.wrapping_add(1);
        }
        st.local_flow = id;
        return Some((id, s));
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
