//! Creating flows, on either side, and accepting a SYN-ACK: the client
//! side for a local TCP connecting out (host mode) or a legacy client (the
//! translator), the server side for a SAL SYN to a served service.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, HashMap, LpmTrie},
};
use xlate_common::{
    flow::{
        event, flag, role, state, Counter, FlowAddrs, FlowState, PeerKey, RouteTargets, ServeEntry, TupleEntry,
        MAX_ROUTE_TARGETS,
    },
    maps::FlowKey,
    translate,
};

use super::admit::admit_syn;
use super::maps::{
    count, flow_created, free_flow, insert_flow, next_rotation, notify_quietly, now, rand32, rand_nonce, zero_words,
    CONFIG, FLOW_SCRATCH, PEERS, TUPLES,
};
use super::sal_rx::{opaque, Exts};
use super::verdict::Exit;

/// Services this host serves, by service ID: the local port behind each.
#[map(name = "HOST_SERVE")]
pub(crate) static SERVE: HashMap<[u8; 32], ServeEntry> = HashMap::pinned(1024, 0);

#[map(name = "HOST_ROUTES")]
pub(crate) static ROUTES: LpmTrie<[u8; 32], RouteTargets> = LpmTrie::pinned(1024, 1); // BPF_F_NO_PREALLOC

#[inline(always)]
pub(crate) fn new_client_flow(key: &FlowKey, sid: &[u8; 32], peer: Option<[u8; 4]>) -> Option<TupleEntry> {
    let cfg = CONFIG.get(0)?;
    let nonce = rand_nonce();
    // SAFETY: this CPU's slot, ours until the program returns.
    let st = unsafe { &mut *FLOW_SCRATCH.get_ptr_mut(0)? };
    // SAFETY: a map value's flow state.
    unsafe { zero_words(st) };
    st.start(role::CLIENT, state::SYN_SENT, 0, rand32(), nonce, key, now());
    // A local application's flow (host mode) is trusted from the start; a
    // legacy client's (the gateway picked the peer) is half-open until it
    // acknowledges the instance's SYN-ACK.
    if peer.is_none() {
        st.flags |= flag::PROVEN;
    }
    let (id, slot) = insert_flow(st)?;
    let peer_ip = match peer {
        Some(p) => p,
        None => route(sid, id).unwrap_or(cfg.broadcast),
    };
    let entry = TupleEntry { flow: id, slot, addrs: FlowAddrs { local_ip: cfg.addr, peer_ip } };
    if TUPLES.insert(key, &entry, 0).is_err() {
        free_flow(id);
        return None;
    }
    flow_created();
    if peer.is_some() {
        count(Counter::FlowsHalfOpened);
    }
    notify_quietly(event::NEW_FLOW, id);
    Some(entry)
}

/// The flow's other end proved it is there: it is no longer half-open.
#[inline(always)]
pub(crate) fn prove(flow: &mut FlowState) {
    if flow.flags & flag::PROVEN == 0 {
        flow.flags |= flag::PROVEN;
        count(Counter::FlowsProven);
    }
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
pub(crate) fn synack(flow: &mut FlowState, ext: &Exts, src_flow: u32, ip_src: [u8; 4]) -> bool {
    match translate::accept_synack(flow, src_flow, ext.verno, ext.ackno, ext.nonce) {
        None => false,
        Some(first) => {
            if first {
                let peer_ip = if ext.sources != 0 { ext.source_last } else { ip_src };
                if let Some(t) = TUPLES.get_ptr_mut(&flow.tuple()) {
                    // SAFETY: map value; the agent writes it only later.
                    // Only this flow's: a new connection may have taken
                    // the tuple over (`flow_of`).
                    unsafe {
                        if (*t).flow == flow.local_flow {
                            (*t).addrs.peer_ip = peer_ip;
                        }
                    }
                }
            }
            true
        }
    }
}

/// Finds (retransmitted SYN) or creates the server side of a flow.
#[inline(always)]
pub(crate) fn server_flow(sid: &[u8; 32], ip_src: [u8; 4], src_flow: u32, ext: &Exts) -> Result<u32, Counter> {
    let Some(serve) = (unsafe { SERVE.get(sid) }) else {
        return Err(Counter::DropUnknownService);
    };
    let port = serve.port;
    let pk = PeerKey { peer_ip: ip_src, peer_flow: src_flow };
    // SAFETY: plain map lookup.
    if let Some(id) = unsafe { PEERS.get(&pk) } {
        return Ok(*id);
    }
    // A new one: (peer address, peer flow ID) names the sender.
    let f = src_flow.to_be_bytes();
    let who = FlowKey { saddr: ip_src, daddr: [0; 4], sport: [f[0], f[1]], dport: [f[2], f[3]] };
    admit_syn(&who).map_err(|e| match e {
        Exit::Drop(c) => c,
        _ => Counter::DropSynBudget,
    })?;
    let Some(cfg) = CONFIG.get(0) else {
        return Err(Counter::IngressError);
    };
    // The local TCP sees the client as (its IP, a port from a per-CPU
    // rotation), probing a few ports if that tuple is live. The rotation
    // counts up from a random start (the agent seeds it), so ports walk
    // through 32768-65535 like an ephemeral range and a new flow does not
    // land on a TIME_WAIT socket of a recent one.
    let mut key = FlowKey { saddr: cfg.addr, daddr: ip_src, sport: port, dport: [0; 2] };
    let r = next_rotation().ok_or(Counter::IngressError)?;
    let base = (((r >> 8) << 1) | (r & 1)) as u16;
    let mut found = false;
    let mut i: u16 = 0;
    while i < 8 {
        let p = 32768u16 | (base.wrapping_add(i.wrapping_mul(4099)) & 0x7fff);
        key.dport = p.to_be_bytes();
        if unsafe { TUPLES.get(&key) }.is_none() {
            found = true;
            break;
        }
        i += 1;
    }
    if !found {
        return Err(Counter::DropTableFull);
    }
    let nonce = rand_nonce();
    let mut st = FlowState::ZERO;
    st.start(role::SERVER, state::SYN_RCVD, 0, rand32(), nonce, &key, now());
    st.peer_flow = src_flow;
    st.peer_verno = ext.verno;
    st.peer_nonce = ext.nonce;
    let (id, slot) = insert_flow(&mut st).ok_or(Counter::DropTableFull)?;
    // A SYN that came through a service router is answered straight to
    // the client, which is the IP source (routers keep it).
    let entry = TupleEntry { flow: id, slot, addrs: FlowAddrs { local_ip: cfg.addr, peer_ip: ip_src } };
    if TUPLES.insert(&key, &entry, 0).is_err() || PEERS.insert(&pk, &id, 0).is_err() {
        free_flow(id);
        let _ = TUPLES.remove(&key);
        return Err(Counter::DropTableFull);
    }
    flow_created();
    count(Counter::FlowsHalfOpened);
    notify_quietly(event::NEW_FLOW, id);
    Ok(id)
}
