//! Host mode: the local kernel's TCP speaks SAL on the wire.
//!
//! `xlate_host_egress` (TC egress) sends the local TCP's segments of
//! Serval flows to the segmenter, whose far end (`xlate_host_segmented`)
//! turns each one into a SAL packet and sends it out of the interface;
//! `xlate_host_receive` (XDP) turns SAL packets back into TCP segments for
//! the local stack before GRO, so that GRO coalesces them like any TCP;
//! `xlate_host_ingress` (TC ingress) does the same for what XDP leaves
//! (and for all of it where XDP cannot attach). SAL-only control packets
//! (FIN, ACK, RST, RSYN) are left to the agent, which receives them on its
//! raw protocol-144 socket. See docs/host-mode.md.
//!
//! The translation itself is the flow engine's (`engine`); this shell
//! picks the frames that are host mode's, starts flows for local SYNs to
//! `--connect` addresses, and handles the link layer (the peer's MAC, the
//! local stack's PACKET_HOST).
//!
//! Egress runs on skbs (TC): it has no XDP hook. Receive runs at XDP first
//! because the kernel has no GRO for protocol 144: a SAL segment that
//! reaches TC has passed GRO untouched and climbs the stack alone. XDP
//! hands TC what it cannot settle from the bytes: a TCP checksum that may
//! be partial (only TC sees the skb's checksum state), a frame whose bytes
//! are not all in its first buffer, and everything it would pass.

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, map, xdp},
    maps::HashMap,
    programs::{TcContext, XdpContext},
};
use xlate_common::{
    flow::{config_flag, flag, Counter, FlowState, Hook, TupleEntry},
    maps::{FlowKey, ServiceEntry, ServiceKey},
    translate::{through_coalescer, TCP_ACK, TCP_SYN},
    wire::{checksum, ethernet, ipv4::field as ipf, sal, tcp::field as tcpf, IPPROTO_SAL, IPPROTO_TCP},
};

use crate::engine::{
    flows::new_client_flow,
    frame::{Frame, SkbFrame, XdpFrame, IP_AT, L4_AT},
    hand_back,
    ipv4::{self, addr, be16, Shape},
    link::LinkLayer,
    maps::{count, CONFIG},
    sal_to_tcp_fn, segment_flow,
    tcp_to_sal::Services,
    tcp_to_sal_fn,
    verdict::{translated, Action, Exit, Fault, Faults, Packed},
};

const PACKET_HOST: u32 = 0;

/// Local (address, port) pairs that are Serval services (`--connect`).
#[map(name = "HOST_CONNECT")]
static CONNECT: HashMap<ServiceKey, ServiceEntry> = HashMap::pinned(1024, 0);

/// Host mode's link layer: Serval hosts on one link talk MAC to MAC, so
/// each flow keeps its peer's (or its router's) address, learnt from what
/// the peer sent.
struct HostLink;

impl LinkLayer for HostLink {
    /// The peer's MAC once known; a SYN goes to broadcast (the receiving
    /// host mode marks it PACKET_HOST), except one to the TCP destination
    /// itself, which keeps the MAC the kernel resolved for that address.
    #[inline(always)]
    fn sent<F: Frame>(f: &F, flow: &FlowState, syn: bool) -> Result<(), Fault> {
        if flow.flags & flag::HAS_PEER_MAC != 0 {
            return f.store(ethernet::field::DST, &flow.peer_mac);
        }
        let Some(cfg) = CONFIG.get(0) else {
            return Err(Fault);
        };
        if syn && cfg.flags & config_flag::CONNECT_TO_TCP_DESTINATION == 0 {
            f.store(ethernet::field::DST, &[0xffu8; 6])?;
        }
        Ok(())
    }

    /// Learns the peer's link address (its own, or its router's).
    #[inline(always)]
    fn received<F: Frame>(f: &F, flow: &mut FlowState) -> Result<(), Fault> {
        let src_mac: [u8; 6] = f.load(ethernet::field::SRC)?;
        if flow.flags & flag::HAS_PEER_MAC == 0 || flow.peer_mac != src_mac {
            flow.peer_mac = src_mac;
            flow.flags |= flag::HAS_PEER_MAC;
        }
        Ok(())
    }
}

/// Host mode's services: a local client connects to a `--connect`
/// address and port.
struct ConnectServices;

impl Services for ConnectServices {
    #[inline(always)]
    fn service_id(addr: [u8; 4], port: [u8; 2]) -> Option<&'static [u8; 32]> {
        // SAFETY: plain map lookup.
        unsafe { CONNECT.get(&ServiceKey { addr, port, _pad: [0; 2] }) }.map(|e| &e.service_id.0)
    }
}

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
    let tuple = segment_flow(f, |key, flags, made| new_flow(key, flags, made).unpack())?;
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
    tcp_to_sal_fn::<_, ConnectServices, HostLink>(f, &tuple).unpack()?;
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
fn new_flow(key: &FlowKey, tcp_flags: u8, made: &mut TupleEntry) -> Packed {
    hand_back(new_flow_inner(key, tcp_flags), made)
}

#[inline(always)]
fn new_flow_inner(key: &FlowKey, tcp_flags: u8) -> Result<TupleEntry, Exit> {
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
    match receive(&f) {
        Ok(()) => {
            match f.ctx.change_type(PACKET_HOST) {
                Ok(()) => {}
                Err(_) => return tc(Exit::Fault.resolve(&f, Hook::HostIngress, FAULTS)),
            }
            translated(&f, Hook::HostIngress, Counter::IngressTranslated);
            // GRO has passed: the segment would climb the stack alone. Out
            // through the coalescer it comes back in through GRO, which
            // coalesces it with the flow's next ones (see `coalescer_ifindex`),
            // if it has data to coalesce (`through_coalescer`).
            match CONFIG.get(0) {
                Some(cfg) if cfg.coalescer_ifindex != 0 && coalescable(&f) => {
                    count(Counter::IngressCoalesced);
                    // SAFETY: plain helper call.
                    unsafe { aya_ebpf::helpers::bpf_redirect(cfg.coalescer_ifindex, 0) as i32 }
                }
                _ => TC_ACT_OK,
            }
        }
        Err(exit) => tc(exit.resolve(&f, Hook::HostIngress, FAULTS)),
    }
}

/// Whether the TCP segment just translated at TC ingress goes through the
/// coalescer ([`through_coalescer`]); one that cannot be read does.
#[inline(always)]
fn coalescable(f: &SkbFrame) -> bool {
    let (Ok(total), Ok(word)) =
        (f.load::<[u8; 2]>(IP_AT + ipf::TOTAL_LEN), f.load::<[u8; 2]>(L4_AT + tcpf::DATA_OFF))
    else {
        return true;
    };
    // Plain IPv4 (`receive` checked its shape): the TCP header at L4_AT.
    let header = (L4_AT - IP_AT) + usize::from(word[0] >> 4) * 4;
    through_coalescer(word[1], usize::from(u16::from_be_bytes(total)).saturating_sub(header))
}

/// Receive before GRO. Only what it translates or drops is final and
/// counted here; everything it passes reaches `xlate_host_ingress`, which
/// decides and counts it there (so nothing is counted twice).
/// `frags`: frames bigger than one buffer may come (a peer's GSO packets
/// stay whole on veth); they are never SAL's and are passed as they are.
#[xdp(frags)]
pub fn xlate_host_receive(ctx: XdpContext) -> u32 {
    let f = XdpFrame::new(&ctx);
    match receive_first(&f) {
        Ok(()) => {
            translated(&f, Hook::HostReceive, Counter::IngressTranslated);
            count(Counter::IngressTranslatedXdp);
            xdp_action::XDP_PASS
        }
        Err(Exit::Drop(c)) => {
            const FAULTS: Faults = Faults { unread: Exit::NotOurs, half_written: Counter::IngressError };
            let _ = Exit::Drop(c).resolve(&f, Hook::HostReceive, FAULTS);
            xdp_action::XDP_DROP
        }
        Err(Exit::Fault) if f.written() => {
            const FAULTS: Faults = Faults { unread: Exit::NotOurs, half_written: Counter::IngressError };
            let _ = Exit::Fault.resolve(&f, Hook::HostReceive, FAULTS);
            xdp_action::XDP_DROP
        }
        Err(_) => xdp_action::XDP_PASS,
    }
}

/// What XDP must leave to TC, found before anything is written or any
/// flow state moves: not a plain SAL packet; a frame whose IP packet is
/// not all in its first buffer; a frame to another MAC; a TCP checksum
/// that holds exactly its
/// pseudo-header sum. That is what a sender leaving the sum to offload
/// writes (CHECKSUM_PARTIAL, as over veth), and a complete checksum only by
/// chance once in 65536 segments; the bytes cannot tell which, the skb
/// can (see `XdpFrame::fix_tcp_checksum`).
#[inline(always)]
fn receive_first(f: &XdpFrame) -> Result<(), Exit> {
    let shape = ipv4::shape(f)?;
    if !matches!(shape, Shape::Plain(_)) || shape.protocol() != Some(IPPROTO_SAL) {
        return Err(Exit::NotOurs);
    }
    let ip: [u8; 20] = f.load(IP_AT)?;
    let tot_len = usize::from(be16(&ip, ipf::TOTAL_LEN));
    if IP_AT + tot_len > f.len() {
        return Err(Exit::NotOurs);
    }
    // A frame not addressed to our MAC (a SYN to the link broadcast): the
    // stack keeps the packet type it gave the frame on arrival where the
    // skb came before XDP (veth), and TCP takes only PACKET_HOST. TC sets
    // it; SYNs are few.
    let Some(cfg) = CONFIG.get(0) else {
        return Err(Exit::Fault);
    };
    if f.load::<[u8; 6]>(ethernet::field::DST)? != cfg.mac {
        return Err(Exit::NotOurs);
    }
    let hl = (usize::from(f.load::<u8>(L4_AT + sal::field::SHL)?) * 4) & 0x3fc;
    let tcp_len = (tot_len as u16).wrapping_sub(20 + hl as u16);
    let sum = u16::from_be_bytes(f.load::<[u8; 2]>(L4_AT + hl + tcpf::CHECKSUM)?);
    let pseudo =
        checksum::fold(checksum::pseudo_header_v4(addr(&ip, ipf::SRC), addr(&ip, ipf::DST), IPPROTO_TCP, tcp_len));
    if pseudo == sum {
        count(Counter::IngressLeftToTc);
        return Err(Exit::NotOurs);
    }
    receive(f)
}

/// Both receive hooks: the SAL packet translated for the local stack, the
/// peer's link address learnt, the frame addressed to this host.
#[inline(always)]
fn receive<F: Frame>(f: &F) -> Result<(), Exit> {
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
    sal_to_tcp_fn::<F, HostLink>(f).unpack()?;
    // Broadcast SYNs (and any frame not addressed to our MAC) become
    // ours: TCP only accepts PACKET_HOST (at XDP, the kernel then sets
    // it from this address; at TC, the caller sets it).
    f.store(ethernet::field::DST, &cfg.mac)?;
    Ok(())
}
