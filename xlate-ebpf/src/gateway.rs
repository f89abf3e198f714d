//! The packet-level translator (`xlate_gw`, XDP on the gateway NIC):
//! legacy TCP clients reach Serval services. Client segments to a
//! configured (address, port) become SAL packets to an instance chosen by
//! Maglev hashing; SAL packets of known flows become TCP segments to the
//! client. The rewritten packet is handed to the kernel (XDP_PASS), which
//! forwards it: routing, neighbours and TTL stay the kernel's job.
//!
//! Flow state, counters and the control plane are shared with host mode
//! (`state`, `flows`, `sal_rx`): the gateway plays the Serval client for
//! its legacy clients (`role::CLIENT`, the client's 4-tuple as the "local"
//! TCP side).

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        TC_ACT_OK,
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap},
    programs::{TcContext, XdpContext},
};
use xlate_common::{
    flow::{
        config_flag, event,
        gw::{flow_hash, redirect, ChecksumNote, GwService, MAGLEV_SIZE, MAX_REDIRECT_TARGETS, MAX_SERVICES},
        role, state, Counter,
    },
    maps::{FlowKey, ServiceKey},
    translate::{self, Form, TCP_ACK, TCP_SYN},
    wire::{checksum, ethernet, ipv4::field as ipf, sal, tcp::field as tcpf, IPPROTO_SAL, IPPROTO_TCP},
};

use crate::flows::{new_client_flow, synack};
use crate::sal_rx::{opaque, walk_extensions, EXTS, SCRATCH, SCRATCH_LEN};
use crate::state::{count, notify, now, ADDRS, CONFIG, FLOWS, TUPLES};

const ETH: usize = ethernet::HEADER_LEN;
/// Where the layer-4 header starts (IPv4 without options).
const L4: usize = ETH + 20;

/// An address field of a copied IPv4 header.
#[inline(always)]
fn addr(h: &[u8; 20], at: usize) -> [u8; 4] {
    [h[at], h[at + 1], h[at + 2], h[at + 3]]
}

#[inline(always)]
fn be16(h: &[u8; 20], at: usize) -> u16 {
    u16::from_be_bytes([h[at], h[at + 1]])
}

#[inline(always)]
fn be32(h: &[u8; 20], at: usize) -> u32 {
    u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

#[map(name = "GW_SERVICES")]
static SERVICES: HashMap<ServiceKey, GwService> = HashMap::with_max_entries(MAX_SERVICES, 0);
#[map(name = "GW_MAGLEV")]
static MAGLEV: Array<[u8; 4]> = Array::with_max_entries(MAX_SERVICES * MAGLEV_SIZE, 0);
#[map(name = "GW_REDIRECT_TARGETS")]
static REDIRECT_TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_REDIRECT_TARGETS, 0);

#[inline(always)]
fn ptr<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn rd<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: ptr() checked the bounds; packets carry no alignment promise.
    ptr::<T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
fn wr<T>(ctx: &XdpContext, off: usize, v: T) -> Option<()> {
    // SAFETY: as in rd().
    ptr::<T>(ctx, off).map(|p| unsafe { p.write_unaligned(v) })
}

#[xdp]
pub fn xlate_gw(ctx: XdpContext) -> u32 {
    match gateway(&ctx) {
        Some(v) => v,
        None => {
            count(Counter::GwPassTruncated);
            XDP_PASS
        }
    }
}

#[inline(always)]
fn gateway(ctx: &XdpContext) -> Option<u32> {
    if u16::from_be_bytes(rd(ctx, ethernet::field::ETHERTYPE)?) != ethernet::ETHERTYPE_IPV4 {
        return Some(XDP_PASS);
    }
    let vihl: u8 = rd(ctx, ETH)?;
    let proto: u8 = rd(ctx, ETH + ipf::PROTOCOL)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_SAL {
        return Some(XDP_PASS);
    }
    if vihl != 0x45 {
        count(Counter::GwPassIpOptions);
        return Some(XDP_PASS);
    }
    if u16::from_be_bytes(rd(ctx, ETH + ipf::FLAGS_FRAG)?) & 0x3fff != 0 {
        count(Counter::GwPassFragment);
        return Some(XDP_PASS);
    }
    // One BPF function per direction: each gets its own stack frame
    // instead of LLVM laying both directions' locals side by side.
    // Flow creation is a third one, called from here rather than from
    // inside a direction, so that no call chain stacks two big frames.
    if proto == IPPROTO_TCP {
        let key = FlowKey {
            saddr: rd(ctx, ETH + ipf::SRC)?,
            daddr: rd(ctx, ETH + ipf::DST)?,
            sport: rd(ctx, L4 + tcpf::SRC_PORT)?,
            dport: rd(ctx, L4 + tcpf::DST_PORT)?,
        };
        // SAFETY: plain map lookup.
        let id = match unsafe { TUPLES.get(&key) } {
            Some(id) => *id,
            None => {
                let r = new_flow(&key, rd(ctx, L4 + tcpf::FLAGS)?);
                if r >> 32 == 0 {
                    return Some(r as u32);
                }
                r as u32
            }
        };
        return Some(then_forward(ctx, to_sal_fn(ctx, id)));
    }
    Some(then_forward(ctx, to_tcp_fn(ctx)))
}

#[inline(always)]
fn then_forward(ctx: &XdpContext, v: u32) -> u32 {
    if v & FORWARD != 0 {
        forward_fn(ctx, v & 1 != 0)
    } else {
        v
    }
}

#[inline(never)]
fn to_sal_fn(ctx: &XdpContext, id: u32) -> u32 {
    let mut written = false;
    to_sal(ctx, id, &mut written).unwrap_or_else(|| failed(written))
}

#[inline(never)]
fn to_tcp_fn(ctx: &XdpContext) -> u32 {
    let mut written = false;
    to_tcp(ctx, &mut written).unwrap_or_else(|| failed(written))
}

/// A direction gave up: before its first write the frame is passed as it
/// came; after, a half-rewritten frame must not reach anyone.
#[inline(always)]
fn failed(written: bool) -> u32 {
    if written {
        count(Counter::GwDropRewriteFailed);
        XDP_DROP
    } else {
        count(Counter::GwPassTruncated);
        XDP_PASS
    }
}

/// Sends the rewritten frame out directly when the kernel's FIB knows the
/// next hop (route and neighbour) and the agent has vouched for the egress
/// device (it can transmit XDP frames: a physical NIC, or a veth whose peer
/// runs XDP or GRO): TTL decremented, MACs set, XDP_REDIRECT. Otherwise (no
/// neighbour yet, TTL expiring, MTU, a device that would drop the frame,
/// a checksum the TC stage must still settle) the kernel forwards it:
/// XDP_PASS.
///
/// The directions return [`FORWARD`] (with bit 0 set when the checksum
/// is deferred) and the entry point calls this: its frame and theirs are
/// never on the stack together.
#[inline(always)]
fn forward(_ctx: &XdpContext, deferred: bool) -> Option<u32> {
    Some(FORWARD | u32::from(deferred))
}

/// Not a verdict: "forward the rewritten frame" (see [`forward`]).
const FORWARD: u32 = 1 << 16;

/// [`forward`] as its own BPF function (stack frame).
#[inline(never)]
fn forward_fn(ctx: &XdpContext, deferred: bool) -> u32 {
    forward_inner(ctx, deferred).unwrap_or(XDP_PASS)
}

#[inline(always)]
fn forward_inner(ctx: &XdpContext, deferred: bool) -> Option<u32> {
    use aya_ebpf::bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_SUCCESS};
    let redirect = CONFIG.get(0).is_some_and(|c| c.flags & config_flag::XDP_REDIRECT != 0);
    if deferred || !redirect {
        return Some(XDP_PASS);
    }
    let ip: [u8; 20] = rd(ctx, ETH)?;
    if ip[ipf::TTL] <= 1 {
        return Some(XDP_PASS);
    }
    // SAFETY: a plain C struct of integers and byte arrays; all-zero is valid.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = 2; // AF_INET
    p.l4_protocol = ip[ipf::PROTOCOL];
    p.__bindgen_anon_1.tot_len = be16(&ip, ipf::TOTAL_LEN);
    p.__bindgen_anon_2.tos = ip[ipf::TOS];
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(addr(&ip, ipf::SRC));
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(addr(&ip, ipf::DST));
    // SAFETY: reading the context.
    p.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: params point to our stack struct of the size given.
    let rc = unsafe {
        aya_ebpf::helpers::bpf_fib_lookup(ctx.ctx as *mut _, &mut p, core::mem::size_of::<FibParams>() as i32, 0)
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Some(XDP_PASS);
    }
    // SAFETY: plain map lookup.
    if unsafe { REDIRECT_TARGETS.get(&p.ifindex) }.copied() != Some(redirect::OK) {
        count(Counter::GwPassNoRedirect);
        return Some(XDP_PASS);
    }
    let mut h = ip;
    h[ipf::TTL] -= 1;
    let c = checksum::update16(
        be16(&ip, ipf::CHECKSUM),
        be16(&ip, ipf::TTL),
        be16(&h, ipf::TTL),
    );
    h[ipf::CHECKSUM..ipf::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    wr(ctx, ETH, h)?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&p.dmac);
    macs[6..].copy_from_slice(&p.smac);
    wr(ctx, ethernet::field::DST, macs)?;
    count(Counter::GwRedirected);
    // SAFETY: plain helper call.
    Some(unsafe { aya_ebpf::helpers::bpf_redirect(p.ifindex, 0) } as u32)
}

/// True when the TCP checksum field holds exactly the pseudo-header sum.
/// That is what a sender leaving the checksum to offload writes
/// (CHECKSUM_PARTIAL, as on veth with tx offload on), and also what a
/// complete checksum equals by chance once in 65536 segments. The frame's
/// bytes cannot tell the two apart (and a client without TCP timestamps
/// retransmits the very same bytes), so such a frame is rewritten in the
/// partial form and settled by the TC stage, which sees the skb: see
/// [`ChecksumNote`].
#[inline(always)]
fn checksum_ambiguous(check: u16, src: [u8; 4], dst: [u8; 4], tcp_len: u16) -> bool {
    checksum::fold(checksum::pseudo_header_v4(src, dst, IPPROTO_TCP, tcp_len)) == check
}

/// The TCP checksum field after a rewrite: the complete form, and for an
/// ambiguous field also the partial form (written to the packet) with the
/// note that completes it in TC.
#[derive(Clone, Copy)]
struct NewCheck {
    write: u16,
    note: Option<(u16, u16)>,
}

/// New checksum for a rewrite of addresses and ports (and an MSS option
/// lowered from `mss.0` to `mss.1`).
#[inline(always)]
fn new_check(
    old: u16,
    ambiguous: bool,
    addrs: ([u8; 4], [u8; 4], [u8; 4], [u8; 4]),
    ports: (u32, u32),
    mss: (u16, u16),
) -> NewCheck {
    let mut complete = tcp_check(old, false, addrs, ports);
    if mss.0 != mss.1 {
        complete = checksum::update16(complete, mss.0, mss.1);
    }
    if !ambiguous {
        return NewCheck { write: complete, note: None };
    }
    // The partial form covers only the pseudo-header; the kernel's final
    // sum will cover the new ports and MSS.
    let partial = tcp_check(old, true, addrs, ports);
    NewCheck { write: partial, note: Some((partial, complete)) }
}

/// Leaves the note for the TC stage in front of the frame (XDP metadata).
/// Without metadata support the partial form stays: right for the
/// partial checksums of local senders, wrong for the rare complete one.
#[inline(always)]
fn leave_note(ctx: &XdpContext, csum_offset: usize, note: Option<(u16, u16)>) {
    let Some((partial, complete)) = note else { return };
    count(Counter::GwPartialChecksum);
    // SAFETY: growing the metadata area of our own frame; checked below.
    if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_meta(ctx.ctx, -(ChecksumNote::LEN as i32)) } != 0 {
        count(Counter::GwChecksumUnresolved);
        return;
    }
    let meta = ctx.metadata();
    if meta + ChecksumNote::LEN > ctx.data() {
        count(Counter::GwChecksumUnresolved);
        return;
    }
    let n = ChecksumNote::new(csum_offset as u32, partial, complete);
    // SAFETY: bounds checked against data just above.
    unsafe { (meta as *mut ChecksumNote).write_unaligned(n) };
}

/// Rewrites the IPv4 header in place: addresses, protocol, total length,
/// TTL kept, checksum recomputed (20 bytes: cheaper than four updates).
#[inline(always)]
fn write_ip(ctx: &XdpContext, at: usize, src: [u8; 4], dst: [u8; 4], proto: u8, tot_len: u16) -> Option<()> {
    let mut h: [u8; 20] = rd(ctx, at)?;
    h[ipf::TOTAL_LEN..ipf::TOTAL_LEN + 2].copy_from_slice(&tot_len.to_be_bytes());
    h[ipf::PROTOCOL] = proto;
    h[ipf::CHECKSUM] = 0;
    h[ipf::CHECKSUM + 1] = 0;
    h[ipf::SRC..ipf::SRC + 4].copy_from_slice(&src);
    h[ipf::DST..ipf::DST + 4].copy_from_slice(&dst);
    let c = !translate::sum_words(&h);
    h[ipf::CHECKSUM..ipf::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    wr(ctx, at, h)
}

/// New TCP checksum after addresses and (unless partial) ports change.
#[inline(always)]
fn tcp_check(old: u16, partial: bool, addrs: ([u8; 4], [u8; 4], [u8; 4], [u8; 4]), ports: (u32, u32)) -> u16 {
    let (s_old, s_new, d_old, d_new) = addrs;
    // The partial field holds the non-complemented pseudo sum; updating it
    // is the same arithmetic on its complement.
    let mut c = if partial { !old } else { old };
    c = checksum::update32(c, u32::from_be_bytes(s_old), u32::from_be_bytes(s_new));
    c = checksum::update32(c, u32::from_be_bytes(d_old), u32::from_be_bytes(d_new));
    if partial {
        !c
    } else {
        checksum::update32(c, ports.0, ports.1)
    }
}

/// Lowers an MSS option at `at` (Linux puts it first) to `max`; returns
/// the option's value before and after (equal when nothing changed).
/// Read and write go through one checked pointer: recomputing the address
/// would be a new packet pointer to the verifier.
#[inline(always)]
fn clamp_mss(ctx: &XdpContext, at: usize, max: u16) -> Option<(u16, u16)> {
    let p = ptr::<[u8; 4]>(ctx, at)?;
    // SAFETY: bounds checked by ptr().
    let mut opt = unsafe { p.read_unaligned() };
    let mss = u16::from_be_bytes([opt[2], opt[3]]);
    if opt[0] != 2 || opt[1] != 4 || mss <= max {
        return Some((mss, mss));
    }
    opt[2..4].copy_from_slice(&max.to_be_bytes());
    // SAFETY: as above.
    unsafe { p.write_unaligned(opt) };
    Some((mss, max))
}

/// Starts a flow for a client SYN to a configured service: picks the
/// instance (Maglev) or the router. Its own BPF function (stack frame).
/// Returns `1 << 32 | flow ID`, or a verdict for the frame.
#[inline(never)]
fn new_flow(key: &FlowKey, flags: u8) -> u64 {
    let (saddr, daddr, sport, dport) = (key.saddr, key.daddr, key.sport, key.dport);
    let sk = ServiceKey { addr: daddr, port: dport, _pad: [0; 2] };
    // SAFETY: plain map lookup.
    let Some(svc) = (unsafe { SERVICES.get(&sk) }) else {
        return u64::from(XDP_PASS);
    };
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        // Mid-connection segment of a flow we do not have: leave it to
        // the kernel (and the stream-level fallback).
        count(Counter::GwPassNoFlow);
        return u64::from(XDP_PASS);
    }
    let peer = if svc.router != [0; 4] {
        svc.router
    } else {
        let slot = flow_hash(saddr, daddr, sport, dport) % MAGLEV_SIZE;
        let idx = svc.index.wrapping_mul(MAGLEV_SIZE).wrapping_add(slot);
        match MAGLEV.get(idx) {
            Some(a) if *a != [0; 4] => *a,
            _ => {
                count(Counter::GwDropNoInstance);
                return u64::from(XDP_DROP);
            }
        }
    };
    match new_client_flow(key, &svc.service_id, Some(peer)) {
        Some(id) => (1 << 32) | u64::from(id),
        None => {
            count(Counter::DropTableFull);
            u64::from(XDP_PASS)
        }
    }
}

/// Legacy client -> Serval: TCP segment to SAL packet.
#[inline(always)]
fn to_sal(ctx: &XdpContext, id: u32, written: &mut bool) -> Option<u32> {
    let ip: [u8; 20] = rd(ctx, ETH)?;
    let (saddr, daddr) = (addr(&ip, ipf::SRC), addr(&ip, ipf::DST));
    let l4 = L4;
    let tcp: [u8; 20] = rd(ctx, l4)?;
    let flags = tcp[tcpf::FLAGS];
    let flow = FLOWS.get_ptr_mut(&id)?;
    // SAFETY: map value, valid while we run.
    let flow = unsafe { &mut *flow };
    let addrs = *unsafe { ADDRS.get(&id) }?;
    let cfg = CONFIG.get(0)?;

    let tot_len = be16(&ip, ipf::TOTAL_LEN);
    let doff = u16::from(tcp[tcpf::DATA_OFF] >> 4) * 4;
    let tcp_len = tot_len.wrapping_sub(20);
    let payload = u32::from(tcp_len.wrapping_sub(doff));
    let seq = be32(&tcp, tcpf::SEQ);
    let seq_end = seq.wrapping_add(payload);
    let form = translate::egress_form(flow, flags, payload, seq_end);
    let ev = translate::note_egress(flow, flags, seq_end);
    if ev != 0 {
        notify(ev, id);
    }
    flow.last_seen_ns = now();

    let check = be16(&tcp, tcpf::CHECKSUM);
    let ambiguous = checksum_ambiguous(check, saddr, daddr, tcp_len);
    *written = true;
    let mss = if flags & TCP_SYN != 0 && doff >= 24 { clamp_mss(ctx, l4 + 20, cfg.max_mss)? } else { (0, 0) };
    let nc = new_check(
        check,
        ambiguous,
        (saddr, addrs.local_ip, daddr, addrs.peer_ip),
        (be32(&tcp, tcpf::SRC_PORT), 0),
        mss,
    );
    let tp = ptr::<[u8; 20]>(ctx, l4)?;
    // SAFETY: bounds checked by ptr().
    let mut t = unsafe { tp.read_unaligned() };
    t[tcpf::SRC_PORT..tcpf::SRC_PORT + 4].copy_from_slice(&[0; 4]);
    t[tcpf::CHECKSUM..tcpf::CHECKSUM + 2].copy_from_slice(&nc.write.to_be_bytes());
    // SAFETY: as above.
    unsafe { tp.write_unaligned(t) };

    // Make room for SAL in front: move Ethernet + IPv4 back by `room`.
    let room = form.header_len();
    let head: [u8; L4] = rd(ctx, 0)?;
    // SAFETY: adjusting the head of our own frame; bounds re-checked after.
    if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, -(room as i32)) } != 0 {
        // Ports already zeroed: the frame cannot go on as it is.
        return None;
    }
    wr(ctx, 0, head)?;
    write_ip(ctx, ETH, addrs.local_ip, addrs.peer_ip, IPPROTO_SAL, tot_len + room as u16)?;
    match form {
        Form::Syn => {
            wr(ctx, l4, translate::syn_header(flow))?;
            count(Counter::EgressSyn);
        }
        Form::Ack => wr(ctx, l4, translate::ack_header(flow))?,
        Form::SynAck => wr(ctx, l4, translate::synack_header(flow))?,
        Form::Data => wr(ctx, l4, translate::data_header(flow))?,
    }
    count(Counter::GwToSal);
    leave_note(ctx, l4 + room + tcpf::CHECKSUM, nc.note);
    forward(ctx, ambiguous)
}

/// Serval -> legacy client: SAL packet of a known flow to TCP segment.
#[inline(always)]
fn to_tcp(ctx: &XdpContext, written: &mut bool) -> Option<u32> {
    let cfg = CONFIG.get(0)?;
    let ip: [u8; 20] = rd(ctx, ETH)?;
    if addr(&ip, ipf::DST) != cfg.addr {
        return Some(XDP_PASS);
    }
    let ip_src = addr(&ip, ipf::SRC);
    let tot_len = usize::from(be16(&ip, ipf::TOTAL_LEN));
    let l4 = L4;
    let shl: u8 = rd(ctx, l4 + sal::field::SHL)?;
    let hl = usize::from(shl) * 4;
    if hl < sal::BASE_LEN || hl > SCRATCH_LEN || tot_len < 20 + hl || ctx.data() + ETH + tot_len > ctx.data_end() {
        count(Counter::DropBadLength);
        return Some(XDP_DROP);
    }
    let buf = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot.
    let buf = unsafe { &mut *buf };
    let n = opaque(hl) & 0x1fc;
    if !(sal::BASE_LEN..=SCRATCH_LEN).contains(&n) {
        return None;
    }
    // SAFETY: n bytes fit the scratch buffer.
    let r = unsafe { aya_ebpf::helpers::bpf_xdp_load_bytes(ctx.ctx, l4 as u32, buf.as_mut_ptr() as *mut _, n as u32) };
    if r != 0 {
        return None;
    }
    // SAFETY: n bytes of our own buffer, a multiple of 4.
    let sum = unsafe {
        aya_ebpf::helpers::bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr() as *mut u32, n as u32, 0)
    } as u32;
    if checksum::fold(sum) != 0xffff {
        count(Counter::DropBadChecksum);
        return Some(XDP_DROP);
    }
    let ext = EXTS.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot.
    let ext = unsafe { &mut *ext };
    if !walk_extensions(buf, hl, ext) {
        count(Counter::DropBadExtension);
        return Some(XDP_DROP);
    }
    if tot_len == 20 + hl {
        // SAL-only control packet: the agent's raw socket takes it.
        count(Counter::IngressToAgent);
        return Some(XDP_PASS);
    }
    let dst_flow = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let src_flow = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let flow = match FLOWS.get_ptr_mut(&dst_flow) {
        Some(f) => f,
        None => {
            count(Counter::DropUnknownFlow);
            return Some(XDP_DROP);
        }
    };
    // SAFETY: map value, valid while we run.
    let flow = unsafe { &mut *flow };
    if flow.role != role::CLIENT {
        return Some(XDP_PASS);
    }
    let syn = sal::ControlFlags::SYN.bits();
    let ack = sal::ControlFlags::ACK.bits();
    if ext.has_control != 0 {
        if ext.flags != syn | ack || !synack(flow, dst_flow, ext, src_flow, ip_src) {
            count(Counter::DropBadAck);
            return Some(XDP_DROP);
        }
        count(Counter::IngressSynAck);
    } else if flow.state == state::ACK_PENDING {
        flow.state = state::ESTABLISHED;
        notify(event::ESTABLISHED, dst_flow);
    }

    // The TCP segment after the SAL header.
    let hl = opaque(hl) & 0x3fc;
    let tcp_at = l4 + hl;
    let tcp: [u8; 20] = rd(ctx, tcp_at)?;
    let flags = tcp[tcpf::FLAGS];
    let doff = u16::from(tcp[tcpf::DATA_OFF] >> 4) * 4;
    let tcp_len = (tot_len - 20 - hl) as u16;
    let seq = be32(&tcp, tcpf::SEQ);
    let ackn = be32(&tcp, tcpf::ACK);
    let ev = translate::note_ingress(flow, flags, seq, ackn, u32::from(tcp_len.wrapping_sub(doff)));
    if ev != 0 {
        notify(ev, dst_flow);
    }
    flow.last_seen_ns = now();
    let mut ports = [0u8; 4];
    ports[..2].copy_from_slice(&flow.tcp_peer_port);
    ports[2..].copy_from_slice(&flow.tcp_local_port);
    let ip_dst = addr(&ip, ipf::DST);
    let check = be16(&tcp, tcpf::CHECKSUM);
    let ambiguous = checksum_ambiguous(check, ip_src, ip_dst, tcp_len);
    *written = true;
    let mss = if flags & TCP_SYN != 0 && doff >= 24 { clamp_mss(ctx, tcp_at + 20, cfg.max_mss)? } else { (0, 0) };
    let nc = new_check(
        check,
        ambiguous,
        (ip_src, flow.tcp_peer_addr, ip_dst, flow.tcp_local_addr),
        (be32(&tcp, tcpf::SRC_PORT), u32::from_be_bytes(ports)),
        mss,
    );
    let tp = ptr::<[u8; 20]>(ctx, tcp_at)?;
    // SAFETY: bounds checked by ptr().
    let mut t = unsafe { tp.read_unaligned() };
    t[tcpf::SRC_PORT..tcpf::SRC_PORT + 4].copy_from_slice(&ports);
    t[tcpf::CHECKSUM..tcpf::CHECKSUM + 2].copy_from_slice(&nc.write.to_be_bytes());
    // SAFETY: as above.
    unsafe { tp.write_unaligned(t) };

    // Drop the SAL header: move Ethernet + IPv4 forward by `hl`.
    let head: [u8; L4] = rd(ctx, 0)?;
    wr(ctx, hl, head)?;
    // SAFETY: shrinking the head of our own frame.
    if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, hl as i32) } != 0 {
        return None;
    }
    write_ip(ctx, ETH, flow.tcp_peer_addr, flow.tcp_local_addr, IPPROTO_TCP, tcp_len + 20)?;
    count(Counter::GwToTcp);
    leave_note(ctx, L4 + tcpf::CHECKSUM, nc.note);
    forward(ctx, ambiguous)
}

/// TC ingress on every translator interface: settles the checksum of a
/// frame that XDP rewrote in the partial form (see [`ChecksumNote`]).
/// `bpf_l4_csum_replace` with a plain difference leaves a CHECKSUM_PARTIAL
/// skb alone (the kernel or the NIC will sum the rewritten segment) and
/// completes every other one.
#[classifier]
pub fn xlate_gw_checksum(ctx: TcContext) -> i32 {
    // SAFETY: reading context fields the verifier turns into packet pointers.
    let (meta, data) = unsafe { ((*ctx.skb.skb).data_meta as usize, (*ctx.skb.skb).data as usize) };
    if meta + ChecksumNote::LEN > data {
        return TC_ACT_OK;
    }
    // SAFETY: bounds checked just above.
    let note = unsafe { (meta as *const ChecksumNote).read_unaligned() };
    if note.magic != ChecksumNote::MAGIC {
        return TC_ACT_OK;
    }
    let off = note.csum_offset as usize;
    let Ok(before) = ctx.load::<u16>(off) else {
        count(Counter::GwChecksumUnresolved);
        return TC_ACT_OK;
    };
    if ctx.l4_csum_replace(off, 0, u64::from(note.diff), 0).is_err() {
        count(Counter::GwChecksumUnresolved);
        return TC_ACT_OK;
    }
    match ctx.load::<u16>(off) {
        Ok(after) if after != before => count(Counter::GwChecksumCompleted),
        _ => count(Counter::GwChecksumOffloaded),
    }
    TC_ACT_OK
}
