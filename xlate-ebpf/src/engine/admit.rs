//! Admitting SYNs under a flood of spoofed ones. A SYN costs a half-open
//! flow here and at the instance until its other end proves it is there
//! (see `xlate_common::flow::SynBudget`). While half-open flows are under
//! their budget every SYN is admitted; at the budget a SYN is admitted
//! only as the retransmission of one declined a moment ago: a real client
//! retransmits its SYN after a second, a spoofed source never sees the
//! decline and does not. At the hard limit every SYN is declined. The
//! kernel keeps both limits itself (`flow::room`, the agent's allowance,
//! refreshed from its counts of proofs and expiries every tick): a flood
//! starts tens of thousands of flows between two looks of the agent. Nothing
//! established is ever evicted for a new flow.

use aya_ebpf::{macros::map, maps::LruHashMap};
use xlate_common::{
    flow::{room, Counter, SynBudget},
    maps::FlowKey,
};

use super::maps::{count, has_room, now, take_room};
use super::verdict::Exit;

/// SYNs declined recently, by who sent them: when first seen. LRU: a
/// flood churns it, but a real client's retransmission comes within a
/// second or three, long before 64 Ki newer entries push its own out.
#[map(name = "SYN_DECLINED")]
static DECLINED: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Whether a new flow may start for the SYN from `who`.
#[inline(always)]
pub(crate) fn admit_syn(who: &FlowKey) -> Result<(), Exit> {
    // At the hard limit.
    if !has_room(room::HALF_OPEN) {
        return Err(Exit::Drop(Counter::DropSynBudget));
    }
    if has_room(room::BUDGET) {
        take_room(room::BUDGET);
        take_room(room::HALF_OPEN);
        return Ok(());
    }
    let t = now();
    // SAFETY: plain map lookup.
    match unsafe { DECLINED.get(who) }.copied() {
        Some(first) if t.wrapping_sub(first) >= SynBudget::RETRANSMIT_GAP_NS => {
            let _ = DECLINED.remove(who);
            count(Counter::SynAdmittedRetransmit);
            take_room(room::HALF_OPEN);
            Ok(())
        }
        // A repeat too soon to be a retransmission.
        Some(_) => Err(Exit::Drop(Counter::DropSynBudget)),
        None => {
            let _ = DECLINED.insert(who, &t, 0);
            Err(Exit::Drop(Counter::DropSynBudget))
        }
    }
}
