//! The packet-level translator (`xlate_gw`, XDP on the gateway NIC):
//! legacy TCP clients reach Serval services. Client segments to a
//! configured (address, port) become SAL packets to an instance chosen by
//! Maglev hashing; SAL packets of known flows become TCP segments to the
//! client. The rewritten packet is redirected straight to its next hop when
//! the FIB knows it, else handed to the kernel (XDP_PASS), which forwards
//! it: routing, neighbours and TTL stay the kernel's job.
//!
//! The translation itself is the flow engine's (`engine`); this shell
//! picks the frames that are the translator's, starts flows for client
//! SYNs (Maglev), and forwards what the engine translated. The gateway
//! plays the Serval client for its legacy clients (`role::CLIENT`, the
//! client's 4-tuple as the "local" TCP side).

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        TC_ACT_OK,
    },
    helpers::bpf_xdp_adjust_meta,
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use xlate_common::{
    flow::{
        config_flag,
        gw::{
            flow_hash, redirect, ChecksumNote, ChecksumNoteKey, GwPrefix, GwService, PrefixKey, MAGLEV_SIZE,
            MAX_CHECKSUM_NOTES, MAX_PREFIX_ENTRIES, MAX_REDIRECT_TARGETS, MAX_SERVICES,
        },
        room, Counter, Hook, TupleEntry,
    },
    maps::{FlowKey, ServiceKey},
    translate::{TCP_ACK, TCP_SYN},
    wire::{checksum, ethernet, ipv4::field as ipf, sal, tcp::field as tcpf, IPPROTO_SAL, IPPROTO_TCP},
};

use crate::engine::{
    admit::admit_syn,
    flows::new_client_flow,
    frame::{Frame, XdpFrame, IP_AT, L4_AT},
    hand_back,
    ipv4::{self, addr, be16, Shape},
    link::Routed,
    maps::{count, has_room, take_room, CONFIG},
    sal_to_tcp_fn, segment_flow,
    tcp_to_sal::Services,
    tcp_to_sal::ToSal,
    tcp_to_sal_fn,
    verdict::{translated, Action, Exit, Faults, Packed},
};

#[map(name = "GW_SERVICES")]
static SERVICES: HashMap<ServiceKey, GwService> = HashMap::pinned(MAX_SERVICES, 0);
/// Services by prefix: the host part of the address picks the service
/// (`GwPrefix`). Looked up only when `GW_SERVICES` has no exact entry.
#[map(name = "GW_PREFIXES")]
static PREFIXES: LpmTrie<PrefixKey, GwPrefix> = LpmTrie::pinned(MAX_PREFIX_ENTRIES, 1); // BPF_F_NO_PREALLOC
/// The service a prefix entry named, made per packet (`service_at`).
#[map(name = "GW_SERVICE_SCRATCH")]
static SERVICE_SCRATCH: PerCpuArray<GwService> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "GW_MAGLEV")]
static MAGLEV: Array<[u8; 4]> = Array::pinned(MAX_SERVICES * MAGLEV_SIZE, 0);
/// Value unused (present = the relay's).
#[map(name = "GW_RELAY_SERVICES")]
static RELAY_SERVICES: HashMap<ServiceKey, u32> = HashMap::pinned(MAX_SERVICES, 0);
#[map(name = "GW_REDIRECT_TARGETS")]
static REDIRECT_TARGETS: HashMap<u32, u32> = HashMap::pinned(MAX_REDIRECT_TARGETS, 0);
/// Checksum notes from `xlate_gw_nometa` to the TC stage (see
/// `xlate_common::flow::gw::CHECKSUM_NOTES`).
#[map(name = "GW_CHECKSUM_NOTES")]
static NOTES: LruHashMap<ChecksumNoteKey, ChecksumNote> = LruHashMap::pinned(MAX_CHECKSUM_NOTES, 0);

/// A frame too short for what its headers announce is passed as it came;
/// one that fails half-rewritten is dropped.
const FAULTS: Faults =
    Faults { unread: Exit::Pass(Counter::GwPassTruncated), half_written: Counter::GwDropRewriteFailed };

/// The translator; checksum notes go to the TC stage in XDP metadata.
#[xdp]
pub fn xlate_gw(ctx: XdpContext) -> u32 {
    translator::<true>(&ctx)
}

/// The same translator for kernels that refuse `bpf_xdp_adjust_meta` to
/// XDP programs: checksum notes go through the `GW_CHECKSUM_NOTES` map.
#[xdp]
pub fn xlate_gw_nometa(ctx: XdpContext) -> u32 {
    translator::<false>(&ctx)
}

/// `META`: whether notes travel in XDP metadata (else in the map). A
/// constant, so each program holds only its own carrier's code: a kernel
/// that refuses the metadata helper never sees a call to it.
#[inline(always)]
fn translator<const META: bool>(ctx: &XdpContext) -> u32 {
    let f = XdpFrame::new(ctx);
    match gateway::<META>(&f) {
        Ok(action) => action,
        Err(exit) => match exit.resolve(&f, Hook::Xdp, FAULTS) {
            Action::Pass => XDP_PASS,
            Action::Drop => XDP_DROP,
        },
    }
}

/// Which frames are the translator's, and what becomes of them. Flow
/// creation, each direction and forwarding are BPF functions of their own,
/// called one after the other from here: no call chain stacks two big
/// frames.
#[inline(always)]
fn gateway<const META: bool>(f: &XdpFrame) -> Result<u32, Exit> {
    let shape = ipv4::shape(f)?;
    let proto = match shape.protocol() {
        Some(p @ (IPPROTO_TCP | IPPROTO_SAL)) => p,
        _ => return Err(Exit::NotOurs),
    };
    match shape {
        Shape::Options(_) => return Err(Exit::Pass(Counter::GwPassIpOptions)),
        Shape::Fragment(_) => return Err(Exit::Pass(Counter::GwPassFragment)),
        _ => {}
    }
    if proto == IPPROTO_TCP {
        let tuple = segment_flow(f, |key, flags, made| new_flow(key, flags, made).unpack())?;
        let to_sal = ToSal::unpack(tcp_to_sal_fn::<_, GwServices, Routed>(f, &tuple).unpack()?);
        translated(f, Hook::Xdp, Counter::GwToSal);
        if f.checksum_deferred() {
            leave_note::<META>(f, to_sal.tcp_at + tcpf::CHECKSUM);
        }
        return Ok(forward_fn(f));
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Err(Exit::Fault);
    };
    if f.load::<[u8; 4]>(IP_AT + ipf::DST)? != cfg.addr {
        return Err(Exit::NotOurs);
    }
    sal_to_tcp_fn::<_, Routed>(f).unpack()?;
    translated(f, Hook::Xdp, Counter::GwToTcp);
    if f.checksum_deferred() {
        leave_note::<META>(f, L4_AT + tcpf::CHECKSUM);
    }
    Ok(forward_fn(f))
}

/// Leaves the note for the TC stage when the frame's TCP checksum (at
/// `csum_at`) was written in the partial form: in XDP metadata in front of
/// the frame (`META`), else in the notes map under the frame's key.
/// Without either the partial form stays: right for the partial checksums
/// of local senders, wrong for the rare complete one (counted). Its own
/// BPF function: the key and note stay off the program's own frame, which
/// every call chain includes (Linux 6.1 allows 512 bytes along a chain);
/// called only for such a frame, so that the others pay no BPF call.
#[inline(never)]
fn leave_note<const META: bool>(f: &XdpFrame, csum_at: usize) {
    let Some(note) = f.note(csum_at) else { return };
    count(Counter::GwPartialChecksum);
    let left = if META { note_in_meta(f, note) } else { note_in_map(f, note, csum_at) };
    if left.is_none() {
        count(Counter::GwChecksumUnresolved);
    }
}

#[inline(always)]
fn note_in_meta(f: &XdpFrame, note: ChecksumNote) -> Option<()> {
    // SAFETY: growing the metadata area of our own frame; checked below.
    if unsafe { bpf_xdp_adjust_meta(f.ctx.ctx, -(ChecksumNote::LEN as i32)) } != 0 {
        return None;
    }
    let meta = f.ctx.metadata();
    if meta + ChecksumNote::LEN > f.ctx.data() {
        return None;
    }
    // SAFETY: bounds checked against data just above.
    unsafe { (meta as *mut ChecksumNote).write_unaligned(note) };
    Some(())
}

#[inline(always)]
fn note_in_map(f: &XdpFrame, note: ChecksumNote, csum_at: usize) -> Option<()> {
    let ip: [u8; 20] = f.load(IP_AT).ok()?;
    let seq_ack: [u8; 8] = f.load(csum_at - tcpf::CHECKSUM + tcpf::SEQ).ok()?;
    NOTES.insert(&ChecksumNoteKey::new(&ip, seq_ack), &note, 0).ok()
}

/// The translator's services: a legacy client's TCP destination is the
/// service's public address and port.
struct GwServices;

impl Services for GwServices {
    #[inline(always)]
    fn service_id(addr: [u8; 4], port: [u8; 2]) -> Option<&'static [u8; 32]> {
        service_at(addr, port).map(|s| &s.service_id)
    }
}

/// The service a client's destination names: its exact entry
/// (`[[service]]`), else its host in a prefix (`[[prefix]]`). The first is
/// a hash lookup whatever the number of services; the second a trie
/// lookup whose depth is the prefixes', not the services' (one entry holds
/// a prefix's every service). A prefix's service is made in this CPU's
/// scratch slot, valid until the next call.
#[inline(always)]
fn service_at(addr: [u8; 4], port: [u8; 2]) -> Option<&'static GwService> {
    // SAFETY: plain map lookup.
    if let Some(s) = unsafe { SERVICES.get(&ServiceKey { addr, port, _pad: [0; 2] }) } {
        return Some(s);
    }
    prefix_service(addr, port)
}

/// The service of `addr`'s host under the longest prefix that holds it for
/// `port` (`GW_PREFIXES`), made in this CPU's scratch slot.
#[inline(always)]
fn prefix_service(addr: [u8; 4], port: [u8; 2]) -> Option<&'static GwService> {
    let p = PREFIXES.get(&Key::new(PrefixKey::PORT_BITS + 32, PrefixKey { port, addr }))?;
    let out = SERVICE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch value, ours while the program runs.
    unsafe {
        *out = p.service(addr);
        Some(&*out)
    }
}

/// Starts a flow for a client SYN to a configured service: picks the
/// instance (Maglev) or the router; its `FLOW_TUPLES` entry goes to
/// `made`. Its own BPF function (stack frame).
#[inline(never)]
fn new_flow(key: &FlowKey, flags: u8, made: &mut TupleEntry) -> Packed {
    hand_back(new_flow_inner(key, flags), made)
}

#[inline(always)]
fn new_flow_inner(key: &FlowKey, flags: u8) -> Result<TupleEntry, Exit> {
    let (saddr, daddr, sport, dport) = (key.saddr, key.daddr, key.sport, key.dport);
    let sk = ServiceKey { addr: daddr, port: dport, _pad: [0; 2] };
    // SAFETY: plain map lookup.
    let (svc, by_prefix) = match unsafe { SERVICES.get(&sk) } {
        Some(s) => (s, false),
        None => (prefix_service(daddr, dport).ok_or(Exit::NotOurs)?, true),
    };
    // SAFETY: plain map lookup.
    if unsafe { RELAY_SERVICES.get(&sk) }.is_some() {
        return Err(Exit::Pass(Counter::GwPassRelayService));
    }
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        // Mid-connection segment of a flow we do not have: leave it to
        // the kernel (and the stream-level fallback).
        return Err(Exit::Pass(Counter::GwPassNoFlow));
    }
    // The rest of the table is the relay's (its SAL connections need flows
    // too): the SYN goes to the kernel, whose socket is the relay's.
    if !has_room(room::FAST_PATH) {
        return Err(Exit::Pass(Counter::DropTableFull));
    }
    admit_syn(key)?;
    take_room(room::FAST_PATH);
    let peer = if svc.router != [0; 4] {
        svc.router
    } else {
        let slot = flow_hash(saddr, daddr, sport, dport) % MAGLEV_SIZE;
        let idx = svc.index.wrapping_mul(MAGLEV_SIZE).wrapping_add(slot);
        match MAGLEV.get(idx) {
            Some(a) if *a != [0; 4] => *a,
            _ => return Err(Exit::Drop(Counter::GwDropNoInstance)),
        }
    };
    // A full table declines the flow; the kernel (and the fallback) get
    // the SYN.
    let made = new_client_flow(key, &svc.service_id, Some(peer)).ok_or(Exit::Pass(Counter::DropTableFull))?;
    if by_prefix {
        count(Counter::GwPrefixFlows);
    }
    Ok(made)
}

/// Sends the rewritten frame out directly when the kernel's FIB knows the
/// next hop (route and neighbour) and the agent has vouched for the egress
/// device (it can transmit XDP frames: a physical NIC, or a veth whose peer
/// runs XDP or GRO): TTL decremented, MACs set, XDP_REDIRECT. Otherwise (no
/// neighbour yet, TTL expiring, MTU, a device that would drop the frame,
/// a checksum the TC stage must still settle) the kernel forwards it:
/// XDP_PASS. Its own BPF function (stack frame).
#[inline(never)]
fn forward_fn(f: &XdpFrame) -> u32 {
    forward(f).unwrap_or(XDP_PASS)
}

#[inline(always)]
fn forward(f: &XdpFrame) -> Option<u32> {
    use aya_ebpf::bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_SUCCESS};
    let redirect = CONFIG.get(0).is_some_and(|c| c.flags & config_flag::XDP_REDIRECT != 0);
    if f.checksum_deferred() || !redirect {
        return Some(XDP_PASS);
    }
    let ip: [u8; 20] = f.load(IP_AT).ok()?;
    if ip[ipf::TTL] <= 1 {
        return Some(XDP_PASS);
    }
    let mut params = core::mem::MaybeUninit::<Zeroed<FibParams>>::uninit();
    let p = Zeroed::fill(&mut params);
    p.family = 2; // AF_INET
    p.l4_protocol = ip[ipf::PROTOCOL];
    p.__bindgen_anon_1.tot_len = be16(&ip, ipf::TOTAL_LEN);
    p.__bindgen_anon_2.tos = ip[ipf::TOS];
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(addr(&ip, ipf::SRC));
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(addr(&ip, ipf::DST));
    // SAFETY: reading the context.
    p.ifindex = unsafe { (*f.ctx.ctx).ingress_ifindex };
    // SAFETY: params point to our stack struct of the size given.
    let rc = unsafe {
        aya_ebpf::helpers::bpf_fib_lookup(f.ctx.ctx as *mut _, p, core::mem::size_of::<FibParams>() as i32, 0)
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
    let c = checksum::update16(be16(&ip, ipf::CHECKSUM), be16(&ip, ipf::TTL), be16(&h, ipf::TTL));
    h[ipf::CHECKSUM..ipf::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    f.store(IP_AT, &h).ok()?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&p.dmac);
    macs[6..].copy_from_slice(&p.smac);
    f.store(ethernet::field::DST, &macs).ok()?;
    count(Counter::GwRedirected);
    // SAFETY: plain helper call.
    Some(unsafe { aya_ebpf::helpers::bpf_redirect(p.ifindex, 0) } as u32)
}

/// A stack value zeroed in place, in 64-bit words. `core::mem::zeroed()`
/// of a struct becomes a call to `memset`, which the BPF build's runtime
/// does a byte at a time (the FIB lookup's 64 bytes: some 250
/// instructions per forwarded frame); so does moving a zeroed value. The
/// stack only takes aligned words, hence the alignment.
#[repr(C, align(8))]
struct Zeroed<T>(T);

impl<T> Zeroed<T> {
    /// Zeroes `slot` where it is and hands out its value. Only for plain C
    /// structs of integers and byte arrays, for which all-zero is valid
    /// (and whose size is a multiple of 8, checked).
    #[inline(always)]
    fn fill(slot: &mut core::mem::MaybeUninit<Zeroed<T>>) -> &mut T {
        const { assert!(core::mem::size_of::<T>() % 8 == 0) };
        let w = slot.as_mut_ptr() as *mut u64;
        let mut i = 0;
        while i < core::mem::size_of::<T>() / 8 {
            // SAFETY: within the slot, 8-aligned.
            unsafe { core::ptr::write_volatile(w.add(i), 0) };
            i += 1;
        }
        // SAFETY: every byte written; all-zero is a valid T (see above).
        unsafe { &mut slot.assume_init_mut().0 }
    }
}

/// TC ingress on every translator interface: settles the checksum of a
/// frame that XDP rewrote in the partial form (see [`ChecksumNote`]).
/// `bpf_l4_csum_replace` with a plain difference leaves a CHECKSUM_PARTIAL
/// skb alone (the kernel or the NIC will sum the rewritten segment) and
/// completes every other one. The note is in the XDP metadata in front of
/// the frame (`xlate_gw`) or in the notes map (`xlate_gw_nometa`).
#[classifier]
pub fn xlate_gw_checksum(ctx: TcContext) -> i32 {
    let note = match note_from_meta(&ctx) {
        Some(n) => n,
        None => match note_from_map(&ctx) {
            Some(n) => n,
            None => return TC_ACT_OK,
        },
    };
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

#[inline(always)]
fn note_from_meta(ctx: &TcContext) -> Option<ChecksumNote> {
    // SAFETY: reading context fields the verifier turns into packet pointers.
    let (meta, data) = unsafe { ((*ctx.skb.skb).data_meta as usize, (*ctx.skb.skb).data as usize) };
    if meta + ChecksumNote::LEN > data {
        return None;
    }
    // SAFETY: bounds checked just above.
    let note = unsafe { (meta as *const ChecksumNote).read_unaligned() };
    (note.magic == ChecksumNote::MAGIC).then_some(note)
}

/// The note `xlate_gw_nometa` left for this frame, taken out of the map.
/// Only a TCP checksum field that holds the partial form (the pseudo-header
/// sum) can have one, so other frames cost no map lookup.
#[inline(always)]
fn note_from_map(ctx: &TcContext) -> Option<ChecksumNote> {
    if ctx.load::<[u8; 2]>(ethernet::field::ETHERTYPE).ok()? != ethernet::ETHERTYPE_IPV4.to_be_bytes() {
        return None;
    }
    let ip: [u8; 20] = ctx.load(IP_AT).ok()?;
    if ip[0] != 0x45 {
        return None;
    }
    let tcp_at = match ip[ipf::PROTOCOL] {
        IPPROTO_TCP => L4_AT,
        IPPROTO_SAL => L4_AT + usize::from(ctx.load::<u8>(L4_AT + sal::field::SHL).ok()?) * 4,
        _ => return None,
    };
    let tcp_len = usize::from(be16(&ip, ipf::TOTAL_LEN)).checked_sub(tcp_at - IP_AT)?;
    let field: [u8; 2] = ctx.load(tcp_at + tcpf::CHECKSUM).ok()?;
    let partial = checksum::fold(checksum::pseudo_header_v4(
        addr(&ip, ipf::SRC),
        addr(&ip, ipf::DST),
        IPPROTO_TCP,
        tcp_len as u16,
    ));
    if u16::from_be_bytes(field) != partial {
        return None;
    }
    let key = ChecksumNoteKey::new(&ip, ctx.load(tcp_at + tcpf::SEQ).ok()?);
    // SAFETY: plain map lookup; the value is copied out before removal.
    let note = *unsafe { NOTES.get(&key) }?;
    let _ = NOTES.remove(&key);
    (note.csum_offset as usize == tcp_at + tcpf::CHECKSUM).then_some(note)
}
