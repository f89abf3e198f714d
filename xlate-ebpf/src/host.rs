//! Host mode: the local kernel's TCP speaks SAL on the wire.
//!
//! `xlate_host_egress` (TC egress) turns the local TCP's segments into SAL
//! packets; `xlate_host_ingress` (TC ingress) turns SAL packets back into
//! TCP segments for the local stack. SAL-only control packets (FIN, ACK,
//! RST, RSYN) are left to the agent, which receives them on its raw
//! protocol-144 socket. See docs/host-mode.md.
//!
//! Both directions run on skbs (TC), not XDP: egress has no XDP hook, and
//! on ingress the skb helpers keep checksum offload state (CHECKSUM_PARTIAL
//! / COMPLETE) and GRO/GSO metadata right when headers grow or shrink.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_csum_diff,
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use xlate_common::{
    flow::{event, flag, role, state, FlowAddrs, FlowState, Counter, PeerKey, ServeEntry},
    maps::{FlowKey, ServiceEntry, ServiceKey},
    translate::{self, Form, TCP_ACK, TCP_SYN},
    wire::{ethernet, ipv4::field as ipf, sal, tcp::field as tcpf, IPPROTO_SAL, IPPROTO_TCP},
};

use crate::flows::{new_client_flow, synack};
use crate::sal_rx::{be32, copy_n, walk_extensions, Exts, EXTS, SCRATCH, SCRATCH_LEN};
use crate::state::{
    alloc_flow_id, count, notify, now, rand32, rand_nonce, ADDRS, BPF_NOEXIST, CONFIG, FLOWS, PEERS, TUPLES,
};

const IP_OFF: usize = ethernet::HEADER_LEN;
const L4_OFF: usize = IP_OFF + 20;
const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_ADJ_ROOM_NET: u32 = 0;
const PACKET_HOST: u32 = 0;

#[map(name = "HOST_SERVE")]
static SERVE: HashMap<[u8; 32], ServeEntry> = HashMap::with_max_entries(1024, 0);
#[map(name = "HOST_CONNECT")]
static CONNECT: HashMap<ServiceKey, ServiceEntry> = HashMap::with_max_entries(1024, 0);

// ------------------------------------------------------------------ egress

#[classifier]
pub fn xlate_host_egress(ctx: TcContext) -> i32 {
    let mut written = false;
    match egress(&ctx, false, &mut written) {
        Ok(v) => v,
        // Half rewritten: it must not leave.
        Err(_) if written => {
            count(Counter::EgressError);
            TC_ACT_SHOT
        }
        Err(_) => {
            count(Counter::EgressPassUnreadable);
            TC_ACT_OK
        }
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
    let mut written = false;
    match egress(&ctx, true, &mut written) {
        // Translated: egress() redirected it. Anything else arriving here
        // (IPv6 neighbour discovery, a flow freed meanwhile) goes nowhere.
        Ok(v) if v != TC_ACT_OK => v,
        Ok(_) => {
            count(Counter::EgressNotOurs);
            TC_ACT_SHOT
        }
        Err(_) => {
            count(Counter::EgressError);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn egress(ctx: &TcContext, at_segmenter: bool, written: &mut bool) -> Result<i32, i64> {
    if u16::from_be(ctx.load::<u16>(ethernet::field::ETHERTYPE)?) != ethernet::ETHERTYPE_IPV4 {
        return Ok(TC_ACT_OK);
    }
    let vihl: u8 = ctx.load(IP_OFF)?;
    let proto: u8 = ctx.load(IP_OFF + ipf::PROTOCOL)?;
    if proto != IPPROTO_TCP {
        return Ok(TC_ACT_OK);
    }
    if vihl != 0x45 || u16::from_be(ctx.load::<u16>(IP_OFF + ipf::FLAGS_FRAG)?) & 0x3fff != 0 {
        count(Counter::EgressNotOurs);
        return Ok(TC_ACT_OK);
    }
    let saddr: [u8; 4] = ctx.load(IP_OFF + ipf::SRC)?;
    let daddr: [u8; 4] = ctx.load(IP_OFF + ipf::DST)?;
    let sport: [u8; 2] = ctx.load(L4_OFF)?;
    let dport: [u8; 2] = ctx.load(L4_OFF + tcpf::DST_PORT)?;
    let tcp_flags: u8 = ctx.load(L4_OFF + tcpf::FLAGS)?;
    let key = FlowKey { saddr, daddr, sport, dport };

    let id = match unsafe { TUPLES.get(&key) } {
        Some(id) => *id,
        None => {
            if tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
                count(Counter::EgressNotOurs);
                return Ok(TC_ACT_OK);
            }
            let ck = ServiceKey { addr: daddr, port: dport, _pad: [0; 2] };
            let Some(entry) = (unsafe { CONNECT.get(&ck) }) else {
                count(Counter::EgressNotOurs);
                return Ok(TC_ACT_OK);
            };
            let sid = entry.service_id.0;
            match new_client_flow(&key, &sid, None) {
                Some(id) => id,
                None => {
                    count(Counter::DropTableFull);
                    return Ok(TC_ACT_SHOT);
                }
            }
        }
    };
    let Some(flow) = FLOWS.get_ptr_mut(&id) else {
        count(Counter::EgressNotOurs);
        return Ok(TC_ACT_OK);
    };
    // SAFETY: map value pointer, valid while we run (RCU).
    let flow = unsafe { &mut *flow };
    let Some(addrs) = (unsafe { ADDRS.get(&id) }) else {
        return Err(-1);
    };
    let addrs = *addrs;
    let Some(cfg) = CONFIG.get(0) else {
        return Err(-1);
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
    if unsafe { (*ctx.skb.skb).gso_segs } > 1 {
        count(Counter::EgressGso);
        return Ok(TC_ACT_SHOT);
    }

    let tot_len = u16::from_be(ctx.load::<u16>(IP_OFF + ipf::TOTAL_LEN)?);
    let doff = usize::from(ctx.load::<u8>(L4_OFF + tcpf::DATA_OFF)? >> 4) * 4;
    let payload = u32::from(tot_len).wrapping_sub(20).wrapping_sub(doff as u32);
    let seq = u32::from_be(ctx.load::<u32>(L4_OFF + tcpf::SEQ)?);
    let seq_end = seq.wrapping_add(payload);
    let form = translate::egress_form(flow, tcp_flags, payload, seq_end);
    let ev = translate::note_egress(flow, tcp_flags, seq_end);
    if ev != 0 {
        notify(ev, id);
    }
    flow.last_seen_ns = now();

    // TCP rewrites at the current offsets, checksum-neutral where the
    // kernel will finish the checksum (CHECKSUM_PARTIAL): the helpers know.
    let csum_off = L4_OFF + tcpf::CHECKSUM;
    *written = true;
    if tcp_flags & TCP_SYN != 0 {
        clamp_mss(ctx, L4_OFF, doff)?;
    }
    let old_ports: u32 = ctx.load(L4_OFF)?;
    ctx.store(L4_OFF, &0u32, 0)?;
    ctx.l4_csum_replace(csum_off, u64::from(old_ports), 0, 4)?;
    rewrite_addrs(ctx, csum_off, saddr, addrs.local_ip, daddr, addrs.peer_ip)?;

    // IPv4: protocol 6 -> 144, total length grows by the SAL header.
    let room = form.header_len();
    let ttl_proto_old: u16 = ctx.load(IP_OFF + ipf::TTL)?;
    let ttl_proto_new = (ttl_proto_old & 0x00ff) | (u16::from(IPPROTO_SAL) << 8);
    ctx.store(IP_OFF + ipf::TTL, &ttl_proto_new, 0)?;
    ctx.l3_csum_replace(IP_OFF + ipf::CHECKSUM, u64::from(ttl_proto_old), u64::from(ttl_proto_new), 2)?;
    let len_old = tot_len.to_be();
    let len_new = (tot_len + room as u16).to_be();
    ctx.store(IP_OFF + ipf::TOTAL_LEN, &len_new, 0)?;
    ctx.l3_csum_replace(IP_OFF + ipf::CHECKSUM, u64::from(len_old), u64::from(len_new), 2)?;

    ctx.adjust_room(room as i32, BPF_ADJ_ROOM_NET, 0)?;

    match form {
        Form::Syn => {
            ctx.store(L4_OFF, &translate::syn_header(flow), 0)?;
            count(Counter::EgressSyn);
        }
        Form::Ack => ctx.store(L4_OFF, &translate::ack_header(flow), 0)?,
        Form::SynAck => ctx.store(L4_OFF, &translate::synack_header(flow), 0)?,
        Form::Data => ctx.store(L4_OFF, &translate::data_header(flow), 0)?,
    }
    // Link layer: the peer's MAC once known; the SYN goes to broadcast
    // (the receiving host mode marks it PACKET_HOST).
    if flow.flags & flag::HAS_PEER_MAC != 0 {
        ctx.store(ethernet::field::DST, &flow.peer_mac, 0)?;
    } else if form == Form::Syn {
        ctx.store(ethernet::field::DST, &[0xffu8; 6], 0)?;
    }
    count(Counter::EgressTranslated);
    if at_segmenter {
        // SAFETY: plain helper call.
        return Ok(unsafe { aya_ebpf::helpers::bpf_redirect(cfg.out_ifindex, 0) } as i32);
    }
    Ok(TC_ACT_OK)
}

/// Rewrites IPv4 source and destination, fixing the IP checksum and the
/// TCP pseudo-header part of the TCP checksum.
#[inline(always)]
fn rewrite_addrs(
    ctx: &TcContext,
    tcp_csum: usize,
    s_old: [u8; 4],
    s_new: [u8; 4],
    d_old: [u8; 4],
    d_new: [u8; 4],
) -> Result<(), i64> {
    if s_old != s_new {
        let (o, n) = (u32::from_ne_bytes(s_old), u32::from_ne_bytes(s_new));
        ctx.store(IP_OFF + ipf::SRC, &s_new, 0)?;
        ctx.l4_csum_replace(tcp_csum, u64::from(o), u64::from(n), BPF_F_PSEUDO_HDR | 4)?;
        ctx.l3_csum_replace(IP_OFF + ipf::CHECKSUM, u64::from(o), u64::from(n), 4)?;
    }
    if d_old != d_new {
        let (o, n) = (u32::from_ne_bytes(d_old), u32::from_ne_bytes(d_new));
        ctx.store(IP_OFF + ipf::DST, &d_new, 0)?;
        ctx.l4_csum_replace(tcp_csum, u64::from(o), u64::from(n), BPF_F_PSEUDO_HDR | 4)?;
        ctx.l3_csum_replace(IP_OFF + ipf::CHECKSUM, u64::from(o), u64::from(n), 4)?;
    }
    Ok(())
}

/// Lowers the MSS option (Linux puts it first) to what fits with SAL.
#[inline(always)]
fn clamp_mss(ctx: &TcContext, tcp: usize, doff: usize) -> Result<(), i64> {
    if doff < 24 {
        return Ok(());
    }
    // The first option, right after the 20-byte header: kind 2, length 4.
    let kind_len: u16 = ctx.load(tcp + 20)?;
    if kind_len != u16::from_ne_bytes([2, 4]) {
        return Ok(());
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(());
    };
    let old: u16 = ctx.load(tcp + 22)?;
    if u16::from_be(old) > cfg.max_mss {
        let new = cfg.max_mss.to_be();
        ctx.store(tcp + 22, &new, 0)?;
        ctx.l4_csum_replace(tcp + tcpf::CHECKSUM, u64::from(old), u64::from(new), 2)?;
    }
    Ok(())
}

// ----------------------------------------------------------------- ingress

#[classifier]
pub fn xlate_host_ingress(ctx: TcContext) -> i32 {
    match ingress(&ctx) {
        Ok(v) => v,
        Err(_) => {
            count(Counter::IngressError);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn ingress(ctx: &TcContext) -> Result<i32, i64> {
    if u16::from_be(ctx.load::<u16>(ethernet::field::ETHERTYPE)?) != ethernet::ETHERTYPE_IPV4 {
        return Ok(TC_ACT_OK);
    }
    let proto: u8 = ctx.load(IP_OFF + ipf::PROTOCOL)?;
    if proto != IPPROTO_SAL {
        count(Counter::IngressNotSal);
        return Ok(TC_ACT_OK);
    }
    let vihl: u8 = ctx.load(IP_OFF)?;
    if vihl != 0x45 || u16::from_be(ctx.load::<u16>(IP_OFF + ipf::FLAGS_FRAG)?) & 0x3fff != 0 {
        // Serval sends neither options nor fragments.
        count(Counter::DropIpOptions);
        return Ok(TC_ACT_SHOT);
    }
    let tot_len = usize::from(u16::from_be(ctx.load::<u16>(IP_OFF + ipf::TOTAL_LEN)?));
    if tot_len < 20 + sal::BASE_LEN || IP_OFF + tot_len > ctx.len() as usize {
        count(Counter::DropBadLength);
        return Ok(TC_ACT_SHOT);
    }
    let sal_len = tot_len - 20;
    let hl = usize::from(ctx.load::<u8>(L4_OFF + sal::field::SHL)?) * 4;
    if hl < sal::BASE_LEN || hl > sal_len || hl > SCRATCH_LEN {
        count(Counter::DropBadLength);
        return Ok(TC_ACT_SHOT);
    }
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return Err(-1);
    };
    // SAFETY: this CPU's scratch slot.
    let buf = unsafe { &mut *buf };
    let n = hl & 0x1fc;
    if n > SCRATCH_LEN || n < sal::BASE_LEN {
        return Err(-1);
    }
    // The raw helper: aya's wrapper clamps the length to what is left in
    // the skb, which the verifier cannot prove non-zero.
    // SAFETY: n bytes fit the scratch buffer (checked above).
    let r = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            L4_OFF as u32,
            buf.as_mut_ptr() as *mut _,
            n as u32,
        )
    };
    if r != 0 {
        return Err(r);
    }
    // SAFETY: sums n bytes of our own buffer; n is a multiple of 4.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr() as *mut u32, n as u32, 0) };
    let sum = sum as u32;
    if xlate_common::wire::checksum::fold(sum) != 0xffff {
        count(Counter::DropBadChecksum);
        return Ok(TC_ACT_SHOT);
    }
    let Some(ext) = EXTS.get_ptr_mut(0) else {
        return Err(-1);
    };
    // SAFETY: this CPU's slot.
    let ext = unsafe { &mut *ext };
    if !walk_extensions(buf, hl, ext) {
        count(Counter::DropBadExtension);
        return Ok(TC_ACT_SHOT);
    }
    let ext = &*ext;
    if sal_len == hl {
        // SAL-only control packet: the agent's raw socket takes it.
        count(Counter::IngressToAgent);
        return Ok(TC_ACT_OK);
    }
    if buf[9] != IPPROTO_TCP {
        // Serval UDP is not translated yet.
        count(Counter::DropBadExtension);
        return Ok(TC_ACT_SHOT);
    }
    let src_flow = be32(buf, 0);
    let dst_flow = be32(buf, 4);
    let ip_src: [u8; 4] = ctx.load(IP_OFF + ipf::SRC)?;
    let syn = sal::ControlFlags::SYN.bits();
    let ack = sal::ControlFlags::ACK.bits();

    let id = if ext.has_control != 0 && ext.flags == syn {
        if ext.services == 0 {
            count(Counter::DropBadExtension);
            return Ok(TC_ACT_SHOT);
        }
        let sid = copy_n::<32>(buf, ext.service_at as usize);
        count(Counter::IngressSyn);
        match server_flow(&sid, ip_src, src_flow, &ext) {
            Ok(id) => id,
            Err(c) => {
                count(c);
                return Ok(TC_ACT_SHOT);
            }
        }
    } else {
        let Some(flow) = FLOWS.get_ptr_mut(&dst_flow) else {
            count(Counter::DropUnknownFlow);
            return Ok(TC_ACT_SHOT);
        };
        // SAFETY: map value, valid while we run.
        let flow = unsafe { &mut *flow };
        if ext.has_control != 0 {
            if ext.flags == syn | ack {
                if !synack(flow, dst_flow, ext, src_flow, ip_src) {
                    count(Counter::DropBadAck);
                    return Ok(TC_ACT_SHOT);
                }
                count(Counter::IngressSynAck);
            } else if ext.flags == ack {
                // The third ACK (with SERVICE) or a repeat of it.
                if ext.nonce != flow.peer_nonce {
                    count(Counter::DropBadNonce);
                    return Ok(TC_ACT_SHOT);
                }
                if flow.state == state::SYN_RCVD {
                    flow.state = state::ESTABLISHED;
                    notify(event::ESTABLISHED, dst_flow);
                }
            } else {
                // Control with a transport that is neither handshake form.
                count(Counter::DropBadExtension);
                return Ok(TC_ACT_SHOT);
            }
        } else if flow.state == state::ACK_PENDING {
            // The server sent data: it knows the flow.
            flow.state = state::ESTABLISHED;
            notify(event::ESTABLISHED, dst_flow);
        }
        dst_flow
    };
    translate_in(ctx, id, hl)
}

/// Finds (retransmitted SYN) or creates the server side of a flow.
#[inline(always)]
fn server_flow(sid: &[u8; 32], ip_src: [u8; 4], src_flow: u32, ext: &Exts) -> Result<u32, Counter> {
    let Some(serve) = (unsafe { SERVE.get(sid) }) else {
        return Err(Counter::DropUnknownService);
    };
    let port = serve.port;
    let pk = PeerKey { peer_ip: ip_src, peer_flow: src_flow };
    if let Some(id) = unsafe { PEERS.get(&pk) } {
        return Ok(*id);
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Err(Counter::IngressError);
    };
    let id = alloc_flow_id().ok_or(Counter::DropTableFull)?;
    // The local TCP sees the client as (its IP, a port taken from our new
    // flow ID), probing a few ports if that tuple is live. Flow IDs count
    // up per CPU from a random start (the agent seeds them), so ports
    // rotate through 32768-65535 like an ephemeral range and a new flow
    // does not land on a TIME_WAIT socket of a recent one.
    let mut key = FlowKey { saddr: cfg.addr, daddr: ip_src, sport: port, dport: [0; 2] };
    let base = (((id >> 8) << 1) | (id & 1)) as u16;
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
    let mut st = FlowState::new(role::SERVER, state::SYN_RCVD, *sid, id, rand32(), nonce, &key, now());
    st.peer_flow = src_flow;
    st.peer_verno = ext.verno;
    st.peer_nonce = ext.nonce;
    // A SYN that came through a service router is answered straight to
    // the client, which is the IP source (routers keep it).
    let addrs = FlowAddrs { local_ip: cfg.addr, peer_ip: ip_src };
    if FLOWS.insert(&id, &st, BPF_NOEXIST).is_err() {
        return Err(Counter::DropTableFull);
    }
    if ADDRS.insert(&id, &addrs, 0).is_err()
        || TUPLES.insert(&key, &id, 0).is_err()
        || PEERS.insert(&pk, &id, 0).is_err()
    {
        let _ = FLOWS.remove(&id);
        let _ = ADDRS.remove(&id);
        let _ = TUPLES.remove(&key);
        return Err(Counter::DropTableFull);
    }
    notify(event::NEW_FLOW, id);
    Ok(id)
}

/// Strips the SAL header and restores the local TCP's view of the flow.
#[inline(always)]
fn translate_in(ctx: &TcContext, id: u32, hl: usize) -> Result<i32, i64> {
    let Some(flow) = FLOWS.get_ptr_mut(&id) else {
        count(Counter::DropUnknownFlow);
        return Ok(TC_ACT_SHOT);
    };
    // SAFETY: map value, valid while we run.
    let flow = unsafe { &mut *flow };
    let Some(cfg) = CONFIG.get(0) else {
        return Err(-1);
    };
    let hl = hl & 0x3fc;
    let tcp = L4_OFF + hl;
    let csum_off = tcp + tcpf::CHECKSUM;
    let tcp_flags: u8 = ctx.load(tcp + tcpf::FLAGS)?;
    let doff = usize::from(ctx.load::<u8>(tcp + tcpf::DATA_OFF)? >> 4) * 4;
    let tot_len = u16::from_be(ctx.load::<u16>(IP_OFF + ipf::TOTAL_LEN)?);

    // Learn the peer's link address (its own, or its router's).
    let src_mac: [u8; 6] = ctx.load(ethernet::field::SRC)?;
    if flow.flags & flag::HAS_PEER_MAC == 0 || flow.peer_mac != src_mac {
        flow.peer_mac = src_mac;
        flow.flags |= flag::HAS_PEER_MAC;
    }
    let seq = u32::from_be(ctx.load::<u32>(tcp + tcpf::SEQ)?);
    let ackn = u32::from_be(ctx.load::<u32>(tcp + tcpf::ACK)?);
    let payload = u32::from(tot_len).wrapping_sub(20 + hl as u32 + doff as u32);
    let ev = translate::note_ingress(flow, tcp_flags, seq, ackn, payload);
    if ev != 0 {
        notify(ev, id);
    }
    flow.last_seen_ns = now();

    if tcp_flags & TCP_SYN != 0 {
        clamp_mss(ctx, tcp, doff)?;
    }
    let mut ports = [0u8; 4];
    ports[..2].copy_from_slice(&flow.tcp_peer_port);
    ports[2..].copy_from_slice(&flow.tcp_local_port);
    let old_ports: u32 = ctx.load(tcp)?;
    let new_ports = u32::from_ne_bytes(ports);
    ctx.store(tcp, &new_ports, 0)?;
    ctx.l4_csum_replace(csum_off, u64::from(old_ports), u64::from(new_ports), 4)?;
    let saddr: [u8; 4] = ctx.load(IP_OFF + ipf::SRC)?;
    let daddr: [u8; 4] = ctx.load(IP_OFF + ipf::DST)?;
    rewrite_addrs(ctx, csum_off, saddr, flow.tcp_peer_addr, daddr, flow.tcp_local_addr)?;

    let ttl_proto_old: u16 = ctx.load(IP_OFF + ipf::TTL)?;
    let ttl_proto_new = (ttl_proto_old & 0x00ff) | (u16::from(IPPROTO_TCP) << 8);
    ctx.store(IP_OFF + ipf::TTL, &ttl_proto_new, 0)?;
    ctx.l3_csum_replace(IP_OFF + ipf::CHECKSUM, u64::from(ttl_proto_old), u64::from(ttl_proto_new), 2)?;
    let len_old = tot_len.to_be();
    let len_new = (tot_len - hl as u16).to_be();
    ctx.store(IP_OFF + ipf::TOTAL_LEN, &len_new, 0)?;
    ctx.l3_csum_replace(IP_OFF + ipf::CHECKSUM, u64::from(len_old), u64::from(len_new), 2)?;

    // Broadcast SYNs (and any frame not addressed to our MAC) become
    // ours: TCP only accepts PACKET_HOST.
    ctx.store(ethernet::field::DST, &cfg.mac, 0)?;
    ctx.change_type(PACKET_HOST)?;
    ctx.adjust_room(-(hl as i32), BPF_ADJ_ROOM_NET, 0)?;
    count(Counter::IngressTranslated);
    Ok(TC_ACT_OK)
}
