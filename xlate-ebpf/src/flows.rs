//! Client-side flow creation and SYN-ACK acceptance, shared by host mode
//! (a local TCP connecting out) and the translator (a legacy client).

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, LpmTrie},
};
use xlate_common::{
    flow::{event, role, state, FlowAddrs, FlowState, RouteTargets, MAX_ROUTE_TARGETS},
    maps::FlowKey,
    translate,
};

use crate::sal_rx::{opaque, Exts};
use crate::state::{alloc_flow_id, notify, now, rand32, rand_nonce, ADDRS, BPF_NOEXIST, CONFIG, FLOWS, TUPLES};

#[map(name = "HOST_ROUTES")]
pub(crate) static ROUTES: LpmTrie<[u8; 32], RouteTargets> = LpmTrie::with_max_entries(1024, 1); // BPF_F_NO_PREALLOC

#[inline(always)]
pub(crate) fn new_client_flow(key: &FlowKey, sid: &[u8; 32], peer: Option<[u8; 4]>) -> Option<u32> {
    let cfg = CONFIG.get(0)?;
    let id = alloc_flow_id()?;
    let nonce = rand_nonce();
    let st = FlowState::new(role::CLIENT, state::SYN_SENT, *sid, id, rand32(), nonce, key, now());
    let peer_ip = match peer {
        Some(p) => p,
        None => route(sid, id).unwrap_or(cfg.broadcast),
    };
    let addrs = FlowAddrs { local_ip: cfg.addr, peer_ip };
    FLOWS.insert(&id, &st, BPF_NOEXIST).ok()?;
    if ADDRS.insert(&id, &addrs, 0).is_err() || TUPLES.insert(key, &id, 0).is_err() {
        let _ = FLOWS.remove(&id);
        let _ = ADDRS.remove(&id);
        return None;
    }
    notify(event::NEW_FLOW, id);
    Some(id)
}

/// The longest-prefix route for a service ID; one target per flow.
#[inline(always)]
fn route(sid: &[u8; 32], id: u32) -> Option<[u8; 4]> {
    let t = ROUTES.get(&Key::new(256, *sid))?;
    let n = t.count;
    if n == 0 || n as usize > MAX_ROUTE_TARGETS {
        return None;
    }
    // Spread flows over targets; the flow ID is already unique per flow.
    let i = (id.wrapping_mul(2654435761) >> 16) % n;
    Some(t.addrs[opaque(i as usize) & (MAX_ROUTE_TARGETS - 1)])
}

/// Accepts a SYN-ACK for a client flow (false: it does not acknowledge
/// our SYN). The first time, the peer's address is learnt too: the last
/// SOURCE hop (the responder) if the SYN went through a router, else the
/// IP source.
#[inline(always)]
pub(crate) fn synack(flow: &mut FlowState, id: u32, ext: &Exts, src_flow: u32, ip_src: [u8; 4]) -> bool {
    match translate::accept_synack(flow, src_flow, ext.verno, ext.ackno, ext.nonce) {
        None => false,
        Some(first) => {
            if first {
                let peer_ip = if ext.sources != 0 { ext.source_last } else { ip_src };
                if let Some(a) = ADDRS.get_ptr_mut(&id) {
                    // SAFETY: map value; the agent writes it only later.
                    unsafe { (*a).peer_ip = peer_ip };
                }
            }
            true
        }
    }
}
