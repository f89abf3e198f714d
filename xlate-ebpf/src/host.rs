//! Host mode: the local kernel's TCP speaks SAL on the wire.
//!
//! `xlate_host_egress` (TC egress) sends the local TCP's segments of
//! Serval flows to the segmenter, whose far end (`xlate_host_segmented`)
//! turns each one into a SAL packet and sends it out of the interface;
//! `xlate_host_ingress` (TC ingress) turns SAL packets back into TCP
//! segments for the local stack. SAL-only control packets (FIN, ACK, RST,
//! RSYN) are left to the agent, which receives them on its raw
//! protocol-144 socket. See docs/host-mode.md.
//!
//! The translation itself is the flow engine's (`engine`); this shell
//! picks the frames that are host mode's, starts flows for local SYNs to
//! `--connect` addresses, and handles the link layer (the peer's MAC, the
//! local stack's PACKET_HOST).
//!
//! Both directions run on skbs (TC), not XDP: egress has no XDP hook, and
//! on ingress the skb helpers keep checksum offload state (CHECKSUM_PARTIAL
//! / COMPLETE) and GRO/GSO metadata right when headers grow or shrink.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use xlate_common::{
    flow::{config_flag, flag, Counter, Hook},
    maps::{FlowKey, ServiceEntry, ServiceKey},
    translate::{TCP_ACK, TCP_SYN},
    wire::{ethernet, ipv4::field as ipf, tcp::field as tcpf, IPPROTO_SAL, IPPROTO_TCP},
};

use crate::engine::{
    flows::new_client_flow,
    frame::{Frame, SkbFrame, IP_AT, L4_AT},
    ipv4::{self, Shape},
    maps::{count, CONFIG, FLOWS, TUPLES},
    sal_to_tcp_fn,
    tcp_to_sal::ToSal,
    tcp_to_sal_fn,
    verdict::{translated, Action, Exit, Faults, Packed},
};

const PACKET_HOST: u32 = 0;

/// Local (address, port) pairs that are Serval services (`--connect`).
#[map(name = "HOST_CONNECT")]
static CONNECT: HashMap<ServiceKey, ServiceEntry> = HashMap::pinned(1024, 0);

#[inline(always)]
fn tc(a: Action) -> i32 {
    match a {
        Action::Pass => TC_ACT_OK,
        Action::Drop => TC_ACT_SHOT,
    }
}

// ------------------------------------------------------------------ egress

#[classifier]
pub fn xlate_host_egress(ctx: TcContext) -> i32 {
    const FAULTS: Faults =
        Faults { unread: Exit::Pass(Counter::EgressPassUnreadable), half_written: Counter::EgressError };
    let f = SkbFrame::new(&ctx);
    match egress(&f, false) {
        Ok(action) => action,
        Err(exit) => tc(exit.resolve(&f, Hook::HostEgress, FAULTS)),
    }
}

/// TC ingress on the segmenter's far end. The interface's egress program
/// sends every segment of a Serval flow to the segmenter, a veth pair
/// without segmentation or checksum offload. The kernel cuts TCP's large
/// (GSO) packets into segments and sums each one in software before they
/// cross the pair. Here each segment is translated and sent out of the
/// interface. TCP keeps building large packets, and traffic that is not
/// Serval keeps every offload of the interface.
#[classifier]
pub fn xlate_host_segmented(ctx: TcContext) -> i32 {
    const FAULTS: Faults = Faults { unread: Exit::Drop(Counter::EgressError), half_written: Counter::EgressError };
    let f = SkbFrame::new(&ctx);
    match egress(&f, true) {
        Ok(action) => action,
        // Nothing arriving here may go on untranslated (IPv6 neighbour
        // discovery, a flow freed meanwhile): what would pass is dropped.
        Err(Exit::NotOurs) => tc(Exit::Drop(Counter::EgressNotOurs).resolve(&f, Hook::HostSegmenter, FAULTS)),
        Err(Exit::Pass(c)) => tc(Exit::Drop(c).resolve(&f, Hook::HostSegmenter, FAULTS)),
        Err(exit) => tc(exit.resolve(&f, Hook::HostSegmenter, FAULTS)),
    }
}

#[inline(always)]
fn egress(f: &SkbFrame, at_segmenter: bool) -> Result<i32, Exit> {
    let shape = ipv4::shape(f)?;
    if shape.protocol() != Some(IPPROTO_TCP) {
        return Err(Exit::NotOurs);
    }
    if !matches!(shape, Shape::Plain(_)) {
        return Err(Exit::Pass(Counter::EgressNotOurs));
    }
    let key = FlowKey {
        saddr: f.load(IP_AT + ipf::SRC)?,
        daddr: f.load(IP_AT + ipf::DST)?,
        sport: f.load(L4_AT + tcpf::SRC_PORT)?,
        dport: f.load(L4_AT + tcpf::DST_PORT)?,
    };
    // SAFETY: plain map lookup.
    let id = match unsafe { TUPLES.get(&key) } {
        Some(id) => *id,
        None => new_flow(&key, f.load(L4_AT + tcpf::FLAGS)?).unpack()?,
    };
    let Some(cfg) = CONFIG.get(0) else {
        return Err(Exit::Fault);
    };
    if !at_segmenter && cfg.segmenter_ifindex != 0 {
        count(Counter::EgressToSegmenter);
        // SAFETY: plain helper call.
        return Ok(unsafe { aya_ebpf::helpers::bpf_redirect(cfg.segmenter_ifindex, 0) } as i32);
    }
    // Software GSO has no handler for protocol 144: a GSO super-packet
    // would be dropped after we turned it into SAL. Segments come through
    // the segmenter one by one; count if one slips through.
    // SAFETY: reading a field of the context.
    if unsafe { (*f.ctx.skb.skb).gso_segs } > 1 {
        return Err(Exit::Drop(Counter::EgressGso));
    }
    let to_sal = ToSal::unpack(tcp_to_sal_fn(f, id).unpack()?);

    // Link layer: the peer's MAC once known; the SYN goes to broadcast
    // (the receiving host mode marks it PACKET_HOST).
    if let Some(flow) = FLOWS.get_ptr(&id) {
        // SAFETY: map value, valid while we run.
        let flow = unsafe { &*flow };
        if flow.flags & flag::HAS_PEER_MAC != 0 {
            f.store(ethernet::field::DST, &flow.peer_mac)?;
        } else if to_sal.syn && cfg.flags & config_flag::CONNECT_TO_TCP_DESTINATION == 0 {
            f.store(ethernet::field::DST, &[0xffu8; 6])?;
        }
        // (A SYN to the TCP destination itself keeps the MAC the kernel
        // resolved for that address.)
    }
    let hook = if at_segmenter { Hook::HostSegmenter } else { Hook::HostEgress };
    translated(f, hook, Counter::EgressTranslated);
    if at_segmenter {
        // SAFETY: plain helper call.
        return Ok(unsafe { aya_ebpf::helpers::bpf_redirect(cfg.out_ifindex, 0) } as i32);
    }
    Ok(TC_ACT_OK)
}

/// A local SYN to a `--connect` address starts a client flow. Its own BPF
/// function (stack frame).
#[inline(never)]
fn new_flow(key: &FlowKey, tcp_flags: u8) -> Packed {
    Packed::pack(new_flow_inner(key, tcp_flags))
}

#[inline(always)]
fn new_flow_inner(key: &FlowKey, tcp_flags: u8) -> Result<u32, Exit> {
    if tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Err(Exit::Pass(Counter::EgressNotOurs));
    }
    let ck = ServiceKey { addr: key.daddr, port: key.dport, _pad: [0; 2] };
    // SAFETY: plain map lookup.
    let Some(entry) = (unsafe { CONNECT.get(&ck) }) else {
        return Err(Exit::Pass(Counter::EgressNotOurs));
    };
    let sid = entry.service_id.0;
    let Some(cfg) = CONFIG.get(0) else {
        return Err(Exit::Fault);
    };
    let peer = (cfg.flags & config_flag::CONNECT_TO_TCP_DESTINATION != 0).then_some(key.daddr);
    new_client_flow(key, &sid, peer).ok_or(Exit::Drop(Counter::DropTableFull))
}

// ----------------------------------------------------------------- ingress

#[classifier]
pub fn xlate_host_ingress(ctx: TcContext) -> i32 {
    const FAULTS: Faults = Faults { unread: Exit::Drop(Counter::IngressError), half_written: Counter::IngressError };
    let f = SkbFrame::new(&ctx);
    match ingress(&f) {
        Ok(action) => action,
        Err(exit) => tc(exit.resolve(&f, Hook::HostIngress, FAULTS)),
    }
}

#[inline(always)]
fn ingress(f: &SkbFrame) -> Result<i32, Exit> {
    let shape = ipv4::shape(f)?;
    match shape {
        Shape::NotIpv4 => return Err(Exit::NotOurs),
        s if s.protocol() != Some(IPPROTO_SAL) => return Err(Exit::Pass(Counter::IngressNotSal)),
        // Serval sends neither options nor fragments.
        Shape::Options(_) | Shape::Fragment(_) => return Err(Exit::Drop(Counter::DropIpOptions)),
        Shape::Plain(_) => {}
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Err(Exit::Fault);
    };
    let id = sal_to_tcp_fn(f).unpack()?;
    // Learn the peer's link address (its own, or its router's).
    let src_mac: [u8; 6] = f.load(ethernet::field::SRC)?;
    if let Some(flow) = FLOWS.get_ptr_mut(&id) {
        // SAFETY: map value, valid while we run.
        let flow = unsafe { &mut *flow };
        if flow.flags & flag::HAS_PEER_MAC == 0 || flow.peer_mac != src_mac {
            flow.peer_mac = src_mac;
            flow.flags |= flag::HAS_PEER_MAC;
        }
    }
    // Broadcast SYNs (and any frame not addressed to our MAC) become
    // ours: TCP only accepts PACKET_HOST.
    f.store(ethernet::field::DST, &cfg.mac)?;
    f.ctx.change_type(PACKET_HOST).map_err(|_| Exit::Fault)?;
    translated(f, Hook::HostIngress, Counter::IngressTranslated);
    Ok(TC_ACT_OK)
}
