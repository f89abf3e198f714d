//! The flow engine: everything both hooks share. The translator (XDP,
//! `gateway.rs`) and host mode (TC, `host.rs`) are thin shells around it:
//! they decide which frames are theirs and what happens to a translated
//! frame (forwarding, redirecting, link-layer addresses); the engine does
//! the translation itself, once, against the [`frame::Frame`] view of
//! either hook.
//!
//! - [`maps`]: the flow tables, configuration, counters and event ring.
//! - [`flows`]: creating flows (either side) and accepting a SYN-ACK.
//! - [`admit`]: admitting SYNs under a flood (the half-open budget).
//! - [`sal_rx`]: the per-CPU buffers the SAL receiver rules run on.
//! - [`frame`]: reading and rewriting a frame at XDP or TC.
//! - [`verdict`]: how a frame leaves untranslated, counted by reason.
//! - [`log`]: kernel debug logging, switched on and off at run time.
//! - [`ipv4`]: what the engine needs of the IPv4 header.
//! - [`link`]: the shell's part in a translated frame's link layer.
//! - [`tcp_to_sal`] and [`sal_to_tcp`]: the two directions.

pub(crate) mod admit;
pub(crate) mod flows;
pub(crate) mod frame;
pub(crate) mod ipv4;
pub(crate) mod link;
pub(crate) mod log;
pub(crate) mod maps;
pub(crate) mod sal_rx;
pub(crate) mod sal_to_tcp;
pub(crate) mod tcp_to_sal;
pub(crate) mod verdict;

use frame::Frame;
use verdict::Packed;
use xlate_common::{
    flow::{event, Counter, TupleEntry},
    maps::FlowKey,
    translate::{self, TCP_SYN},
};

/// [`tcp_to_sal::tcp_to_sal`] as its own BPF function: each direction
/// gets its own stack frame instead of LLVM laying locals of both side by
/// side in the program's.
#[inline(never)]
pub(crate) fn tcp_to_sal_fn<F: Frame, S: tcp_to_sal::Services, L: link::LinkLayer>(
    f: &F,
    tuple: &TupleEntry,
) -> Packed {
    Packed::pack(tcp_to_sal::tcp_to_sal::<F, S, L>(f, tuple).map(|t| t.pack()))
}

/// [`flow_of`] for the TCP segment in `f` (an IPv4 header without
/// options in front of it): its 4-tuple and flags read here, once for both
/// shells; `new_flow` gets them too.
#[inline(always)]
pub(crate) fn segment_flow<F: Frame>(
    f: &F,
    new_flow: impl FnOnce(&FlowKey, u8, &mut TupleEntry) -> Result<u32, verdict::Exit>,
) -> Result<TupleEntry, verdict::Exit> {
    use xlate_common::wire::{ipv4::field as ipf, tcp::field as tcpf};
    let key = FlowKey {
        saddr: f.load(frame::IP_AT + ipf::SRC)?,
        daddr: f.load(frame::IP_AT + ipf::DST)?,
        sport: f.load(frame::L4_AT + tcpf::SRC_PORT)?,
        dport: f.load(frame::L4_AT + tcpf::DST_PORT)?,
    };
    let flags = f.load(frame::L4_AT + tcpf::FLAGS)?;
    flow_of(&key, flags, |made| new_flow(&key, flags, made))
}

/// The `FLOW_TUPLES` entry of a TCP segment's 4-tuple `key` (`tcp_flags`
/// its flags): its flow's, or a new flow's (`new_flow`, the shell's own: it
/// decides whether the segment may start one and with whom, and writes the
/// entry it inserted into its argument, which spares a second lookup).
///
/// A SYN on the tuple of a flow whose connection is over
/// (`translate::reopens`) retires that flow: its addresses move to
/// `FLOW_REOPENED`, where the agent finds them to finish its SAL close,
/// and the agent is told. The tuple then belongs to the new connection:
/// its new flow takes it over, or, if none may be made (the SYN is
/// declined or left to the relay), it is removed, so that nothing more of
/// that connection lands in the old flow. A SYN on a tuple whose flow is
/// already gone (the agent frees the flow just after the tuple) makes a
/// new flow too.
#[inline(always)]
pub(crate) fn flow_of(
    key: &FlowKey,
    tcp_flags: u8,
    new_flow: impl FnOnce(&mut TupleEntry) -> Result<u32, verdict::Exit>,
) -> Result<TupleEntry, verdict::Exit> {
    let mut retired = false;
    // SAFETY: plain map lookup.
    if let Some(t) = unsafe { maps::TUPLES.get(key) } {
        if tcp_flags & TCP_SYN == 0 || !retire_if_over(t, tcp_flags) {
            return Ok(*t);
        }
        retired = true;
    }
    let mut made = TupleEntry::default();
    let r = new_flow(&mut made);
    if retired && r.is_err() {
        let _ = maps::TUPLES.remove(key);
    }
    r?;
    Ok(made)
}

/// A shell's new flow (the `new_flow` of [`flow_of`]) packed for the BPF
/// function boundary it is made behind: the entry the shell inserted goes
/// to `made`, its flow ID into the result.
#[inline(always)]
pub(crate) fn hand_back(made_now: Result<TupleEntry, verdict::Exit>, made: &mut TupleEntry) -> Packed {
    Packed::pack(made_now.map(|t| {
        *made = t;
        t.flow
    }))
}

/// For a SYN on `tuple`: retires its flow if that flow's connection is
/// over (see [`flow_of`]), or if the flow is gone; false if the SYN
/// belongs to the flow. Its own BPF function: the SYN path's locals stay
/// out of the caller's frame (512 bytes for a whole call chain).
#[inline(never)]
fn retire_if_over(tuple: &TupleEntry, tcp_flags: u8) -> bool {
    let old = tuple.flow;
    let Some(p) = maps::flow_at(tuple.slot, old) else {
        return true;
    };
    // SAFETY: map value, valid while we run (RCU).
    if !translate::reopens(unsafe { &*p }, tcp_flags) {
        return false;
    }
    // (Full, or out of memory: the old flow's SAL close then cannot be
    // sent, and its peer gives up on it.)
    let _ = maps::REOPENED.insert(&old, &tuple.addrs, 0);
    maps::notify(event::REOPENED, old);
    maps::count(Counter::FlowsReopened);
    true
}

/// For both directions: a SYN's MSS option (its TCP header at `tcp_at`,
/// `doff` bytes long, has options; Linux puts the MSS first) lowered to
/// what the configured MTU allows, as (before, after); (0, 0) for any
/// other segment. The configuration is read here only, so that a data
/// segment reads no more maps than its flow's.
#[inline(always)]
pub(crate) fn clamp_syn_mss<F: Frame>(f: &F, tcp_at: usize, flags: u8, doff: u16) -> Result<(u16, u16), verdict::Exit> {
    if flags & TCP_SYN == 0 || doff < 24 {
        return Ok((0, 0));
    }
    let Some(cfg) = maps::CONFIG.get(0) else {
        return Err(verdict::Exit::Fault);
    };
    Ok(f.clamp_mss(tcp_at + 20, cfg.max_mss)?)
}

/// [`sal_to_tcp::sal_to_tcp`] as its own BPF function (see above).
#[inline(never)]
pub(crate) fn sal_to_tcp_fn<F: Frame, L: link::LinkLayer>(f: &F) -> Packed {
    Packed::pack(sal_to_tcp::sal_to_tcp::<F, L>(f))
}
