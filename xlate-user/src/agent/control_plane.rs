//! The SAL control plane of every agent (host mode and the translator):
//! everything that is not per-packet translation. SAL FIN/ACK close, resets both ways, migration (answering
//! and initiating RSYN), stale control packets, retransmission of our own
//! control packets, and freeing or expiring flows.
//!
//! Its per-flow state lives in memory and, written through after every
//! event, in the pinned `AGENT_CTL` map: a restarted agent (or a newer
//! build) picks up outstanding retransmissions, FIN bookkeeping and
//! lingering closes where the last one left them. Only TIME_WAIT (answering
//! a retransmitted FIN of a flow already freed) is not carried over.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use xlate_common::flow::{
    config_flag, ctl_flag, ctl_pending, event, flag, state, Counter, CtlRecord, Event, FlowAddrs, FlowState, PeerKey,
    SynBudget,
};
use xlate_common::maps::FlowKey;
use xlate_common::wire::{
    ipv4::Ipv4Repr,
    packet::{ServalRepr, Transport},
    sal::{ControlFlags, ControlRepr, FlowId, SalRepr},
    IPPROTO_SAL, IPPROTO_TCP,
};

use super::maps::FlowMaps;
use crate::rawsock::RawSocket;

const RTO_INITIAL: Duration = Duration::from_secs(1);
const RTO_MAX: Duration = Duration::from_secs(120);
const MAX_TRIES: u32 = 15;
/// A migration's RSYN (or RSYN-ACK) is sent this many times, at 0, 1, 3
/// and 7 s, and given up 15 s after the first (the backoff's next step):
/// the flow stays where it was. A move that takes longer is no move.
const MIGRATION_TRIES: u32 = 4;
/// Time a fully closed flow lingers so late TCP segments still translate.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// A flow still half-open by then is abandoned (see `SynBudget`).
const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(SynBudget::TIMEOUT_S);
/// How often the whole flow table is walked for idle flows (and half-open
/// ones whose creation event was lost): its cost is spread over this long,
/// not paid every tick.
const SCAN_EVERY: Duration = Duration::from_secs(30);
/// After our SAL FIN is acknowledged, how long we wait for the peer's
/// (the original stack's FINWAIT2), counted from the flow's last segment:
/// a half-closed connection whose peer still sends lives on.
const FIN_WAIT: Duration = Duration::from_secs(60);
/// How long the agent remembers a closed flow, to answer a retransmitted
/// SAL FIN whose ACK was lost (the kernel maps are already clean).
const TIME_WAIT: Duration = Duration::from_secs(60);

/// What the agent keeps of a closed flow during TIME_WAIT.
struct Closed {
    state: FlowState,
    addrs: FlowAddrs,
    snd_nxt: u32,
    rcv_nxt: u32,
    until: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingKind {
    Fin,
    Rsyn { new_local: Ipv4Addr },
    RsynAck { new_peer: Ipv4Addr },
}

impl PendingKind {
    /// Part of a migration (given up after [`MIGRATION_TRIES`], the flow
    /// unharmed), not a close.
    fn is_migration(self) -> bool {
        !matches!(self, PendingKind::Fin)
    }
}

/// Our one outstanding control packet (the stack allows one per side).
#[derive(Debug, Clone)]
struct Pending {
    kind: PendingKind,
    datagram: Vec<u8>,
    dst: Ipv4Addr,
    /// The ackno that acknowledges it.
    acked_by: u32,
    next_at: Instant,
    rto: Duration,
    tries: u32,
}

/// Control-plane state of one flow, kept by the agent only.
#[derive(Debug, Clone, Default)]
struct Ctl {
    snd_nxt: u32,
    rcv_nxt: u32,
    pending: Option<Pending>,
    fin_wanted: bool,
    fin_acked_at: Option<Instant>,
    peer_fin: bool,
    free_at: Option<Instant>,
}

fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns.
pub(crate) fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Instants to and from CLOCK_MONOTONIC nanoseconds (Rust's `Instant` is
/// that clock on Linux, but does not expose it).
fn to_ns(t: Instant) -> u64 {
    let (now, now_ns) = (Instant::now(), mono_ns());
    if t >= now {
        now_ns + (t - now).as_nanos() as u64
    } else {
        now_ns.saturating_sub((now - t).as_nanos() as u64)
    }
}

fn from_ns(ns: u64) -> Instant {
    let (now, now_ns) = (Instant::now(), mono_ns());
    if ns >= now_ns {
        now + Duration::from_nanos(ns - now_ns)
    } else {
        now.checked_sub(Duration::from_nanos(now_ns - ns)).unwrap_or(now)
    }
}

impl Ctl {
    fn record(&self) -> CtlRecord {
        let mut r = CtlRecord { snd_nxt: self.snd_nxt, rcv_nxt: self.rcv_nxt, ..Default::default() };
        if self.fin_wanted {
            r.flags |= ctl_flag::FIN_WANTED;
        }
        if self.peer_fin {
            r.flags |= ctl_flag::PEER_FIN;
        }
        r.fin_acked_at_ns = self.fin_acked_at.map_or(0, to_ns);
        r.free_at_ns = self.free_at.map_or(0, to_ns);
        if let Some(p) = &self.pending {
            let (kind, addr) = match p.kind {
                PendingKind::Fin => (ctl_pending::FIN, Ipv4Addr::UNSPECIFIED),
                PendingKind::Rsyn { new_local } => (ctl_pending::RSYN, new_local),
                PendingKind::RsynAck { new_peer } => (ctl_pending::RSYN_ACK, new_peer),
            };
            let n = p.datagram.len().min(CtlRecord::MAX_DATAGRAM);
            r.pending = kind;
            r.pending_addr = addr.octets();
            r.pending_dst = p.dst.octets();
            r.acked_by = p.acked_by;
            r.tries = p.tries;
            r.rto_ms = p.rto.as_millis() as u32;
            r.next_at_ns = to_ns(p.next_at);
            r.datagram_len = n as u16;
            r.datagram[..n].copy_from_slice(&p.datagram[..n]);
        }
        r
    }

    fn from_record(r: &CtlRecord) -> Ctl {
        let at = |ns: u64| (ns != 0).then(|| from_ns(ns));
        let kind = match r.pending {
            ctl_pending::FIN => Some(PendingKind::Fin),
            ctl_pending::RSYN => Some(PendingKind::Rsyn { new_local: Ipv4Addr::from(r.pending_addr) }),
            ctl_pending::RSYN_ACK => Some(PendingKind::RsynAck { new_peer: Ipv4Addr::from(r.pending_addr) }),
            _ => None,
        };
        let len = usize::from(r.datagram_len).min(CtlRecord::MAX_DATAGRAM);
        Ctl {
            snd_nxt: r.snd_nxt,
            rcv_nxt: r.rcv_nxt,
            pending: kind.map(|kind| Pending {
                kind,
                datagram: r.datagram[..len].to_vec(),
                dst: Ipv4Addr::from(r.pending_dst),
                acked_by: r.acked_by,
                next_at: from_ns(r.next_at_ns),
                rto: Duration::from_millis(u64::from(r.rto_ms)).max(RTO_INITIAL),
                tries: r.tries,
            }),
            fin_wanted: r.flags & ctl_flag::FIN_WANTED != 0,
            fin_acked_at: at(r.fin_acked_at_ns),
            peer_fin: r.flags & ctl_flag::PEER_FIN != 0,
            free_at: at(r.free_at_ns),
        }
    }
}

pub struct ControlPlane {
    pub maps: FlowMaps,
    sal: RawSocket,
    inject: RawSocket,
    ctl: HashMap<u32, Ctl>,
    /// Flows whose control state changed since the last [`Self::sync`].
    dirty: std::collections::HashSet<u32>,
    closed: HashMap<u32, Closed>,
    idle_timeout: Duration,
    /// Flows created lately, oldest first (NEW_FLOW events): each is looked
    /// at once, when it is due to be proven. Bounded by the admission rate
    /// times [`HALF_OPEN_TIMEOUT`].
    young: std::collections::VecDeque<(Instant, u32)>,
    /// New flows since the mode last asked ([`Self::take_new_flows`]);
    /// `None` unless a mode asked to watch them.
    new_flows: Option<Vec<(Instant, u32)>>,
    budget: SynBudget,
    /// The last budget flags written (`config_flag::SYN_*`).
    syn_flags: u32,
    last_scan: Option<Instant>,
    warnings: Warnings,
    /// For destroying this host's TCP sockets (see [`Self::end_time_wait`]
    /// and [`Self::reset_all`]); `None` where sock_diag cannot be opened.
    diag: Option<crate::sockdiag::SockDiag>,
}

/// Warnings that a flood could repeat thousands of times a second: one
/// line per kind every few seconds, with how many were held back. (An
/// agent that logs faster than its output is read blocks on it.)
#[derive(Default)]
struct Warnings(HashMap<&'static str, (Option<Instant>, u64)>);

impl Warnings {
    const EVERY: Duration = Duration::from_secs(5);

    fn warn(&mut self, kind: &'static str, detail: impl std::fmt::Display) {
        let now = Instant::now();
        let (last, held) = self.0.entry(kind).or_default();
        if last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            *held += 1;
            return;
        }
        if *held > 0 {
            tracing::warn!("{kind}: {detail} (and {held} more like it)");
        } else {
            tracing::warn!("{kind}: {detail}");
        }
        *last = Some(now);
        *held = 0;
    }
}

impl ControlPlane {
    /// A control plane over `maps`, carrying on with the state an earlier
    /// run left in `AGENT_CTL` (flows it names that no longer exist are
    /// dropped).
    pub fn new(maps: FlowMaps, sal: RawSocket, inject: RawSocket, idle_timeout: Duration, budget: SynBudget) -> Self {
        let mut cp = ControlPlane {
            maps,
            sal,
            inject,
            ctl: HashMap::new(),
            dirty: Default::default(),
            closed: HashMap::new(),
            idle_timeout,
            young: Default::default(),
            new_flows: None,
            budget,
            syn_flags: 0,
            last_scan: None,
            warnings: Warnings::default(),
            diag: None,
        };
        match crate::sockdiag::SockDiag::open() {
            Ok(d) => cp.diag = Some(d),
            Err(e) => cp.warnings.warn(
                "opening sock_diag",
                format!("{e:#}; local sockets get injected resets and keep their TIME_WAIT"),
            ),
        }
        cp.maps.resync_count();
        let records: Vec<(u32, CtlRecord)> = cp.maps.ctl.iter().filter_map(|r| r.ok()).collect();
        for (id, r) in records {
            if cp.maps.flows.get(&id, 0).is_ok() {
                cp.ctl.insert(id, Ctl::from_record(&r));
            } else {
                let _ = cp.maps.ctl.remove(&id);
            }
        }
        if !cp.ctl.is_empty() {
            tracing::info!("carried over the control state of {} flows", cp.ctl.len());
        }
        cp
    }

    /// Writes the control state that changed to `AGENT_CTL`; the event loop
    /// calls it after every event. Its cost follows the flows that changed.
    pub fn sync(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            let Some(c) = self.ctl.get(&id) else { continue };
            if let Err(e) = self.maps.ctl.insert(id, c.record(), 0) {
                self.warnings.warn("keeping the control state of a flow", format!("{id:#x}: {e}"));
            }
        }
    }

    /// A flow's control state, to change (it is written out at the next
    /// [`Self::sync`]).
    fn ctl_mut(&mut self, id: u32) -> Option<&mut Ctl> {
        self.dirty.insert(id);
        self.ctl.get_mut(&id)
    }

    /// Resets every flow on both sides (a TCP RST to the local or legacy
    /// TCP, a SAL RST to the peer) and frees it: the datapath stops for
    /// good. Returns how many flows there were.
    pub fn reset_all(&mut self) -> usize {
        let ids: Vec<u32> = self.maps.flows.keys().filter_map(|k| k.ok()).collect();
        // A TCP end on this host (host mode's applications) is reset by
        // destroying its socket, while translation still runs: the
        // application sees the abort at once, and the kernel's own reset
        // reaches the peer translated. An injected RST would have to hit
        // the socket's next expected sequence number exactly, which the
        // datapath knows only approximately while segments are in flight.
        let mut destroyed = std::collections::HashSet::new();
        for &id in &ids {
            let (Some(diag), Some((st, _))) = (&self.diag, self.flow(id)) else { continue };
            if st.flags & flag::PROVEN == 0 {
                continue;
            }
            let local = SocketAddrV4::new(st.tcp_local_addr.into(), u16::from_be_bytes(st.tcp_local_port));
            let peer = SocketAddrV4::new(st.tcp_peer_addr.into(), u16::from_be_bytes(st.tcp_peer_port));
            match diag.destroy_tcp(local, peer) {
                Ok(crate::sockdiag::Destroyed::Yes) => {
                    destroyed.insert(id);
                }
                Ok(crate::sockdiag::Destroyed::NoSuchSocket | crate::sockdiag::Destroyed::LeftInState(_)) => {}
                Err(e) => self.warnings.warn("destroying a local socket", format!("{e:#}")),
            }
        }
        // Then translation stops, for every flow: a remote TCP end's next
        // sequence number is then the one read here, and the injected
        // reset must land exactly on it (a reset anywhere else is ignored).
        let mut gone = Vec::new();
        for &id in &ids {
            let Some((st, addrs)) = self.flow(id) else { continue };
            let c = self.ctl_for(&st).clone();
            self.free(id, Counter::FlowsFreed);
            gone.push((id, st, addrs, c));
        }
        // Segments translated just before are still on their way up the
        // stack; the resets (which take another path) must not overtake them.
        if !gone.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (id, st, addrs, c) in gone {
            if st.peer_flow != 0 {
                let peer = Ipv4Addr::from(addrs.peer_ip);
                let flags = ControlFlags::RST | ControlFlags::ACK;
                let pkt = Self::build(&st, Ipv4Addr::from(addrs.local_ip), peer, flags, c.snd_nxt, c.rcv_nxt);
                self.send(&pkt, peer);
            }
            if st.flags & flag::PROVEN != 0 && !destroyed.contains(&id) {
                self.inject_rst(&st);
            }
        }
        self.sync();
        ids.len()
    }

    pub fn sal_socket(&self) -> &RawSocket {
        &self.sal
    }

    fn flow(&self, id: u32) -> Option<(FlowState, FlowAddrs)> {
        let st = self.maps.flows.get(&id, 0).ok()?;
        let addrs = self.maps.addrs.get(&id, 0).ok()?;
        Some((st, addrs))
    }

    fn ctl_for(&mut self, st: &FlowState) -> &mut Ctl {
        self.dirty.insert(st.local_flow);
        self.ctl.entry(st.local_flow).or_insert_with(|| Ctl {
            // SYN consumed one verno on each side.
            snd_nxt: st.local_verno.wrapping_add(1),
            rcv_nxt: st.peer_verno.wrapping_add(1),
            ..Default::default()
        })
    }

    fn build(st: &FlowState, src: Ipv4Addr, dst: Ipv4Addr, flags: ControlFlags, verno: u32, ackno: u32) -> Vec<u8> {
        let repr = ServalRepr {
            ip: Ipv4Repr::new(src, dst, IPPROTO_SAL, 0),
            sal: SalRepr {
                src_flowid: FlowId(st.local_flow),
                dst_flowid: FlowId(st.peer_flow),
                protocol: IPPROTO_TCP,
                control: Some(ControlRepr { flags, verno, ackno, nonce: st.local_nonce }),
                services: xlate_common::wire::sal::ServiceList::empty(),
                source: None,
            },
            transport: Transport::None,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf).expect("sized buffer");
        buf
    }

    fn send(&mut self, datagram: &[u8], dst: Ipv4Addr) {
        match self.sal.send_to(datagram, dst) {
            Ok(()) => self.maps.bump(Counter::CtlSent),
            Err(e) => self.warnings.warn("sending a control packet", format!("to {dst}: {e}")),
        }
    }

    /// Sends a control packet that must be acknowledged, and keeps it for
    /// retransmission.
    fn send_reliable(&mut self, id: u32, kind: PendingKind, datagram: Vec<u8>, dst: Ipv4Addr, acked_by: u32) {
        self.send(&datagram, dst);
        let p = Pending {
            kind,
            datagram,
            dst,
            acked_by,
            next_at: Instant::now() + RTO_INITIAL,
            rto: RTO_INITIAL,
            tries: 1,
        };
        if let Some(c) = self.ctl_mut(id) {
            c.pending = Some(p);
        }
    }

    fn send_ack(&mut self, st: &FlowState, addrs: &FlowAddrs, dst: Ipv4Addr) {
        let c = self.ctl_for(st).clone();
        let pkt = Self::build(st, Ipv4Addr::from(addrs.local_ip), dst, ControlFlags::ACK, c.snd_nxt, c.rcv_nxt);
        self.send(&pkt, dst);
    }

    fn send_fin(&mut self, st: &FlowState, addrs: &FlowAddrs) {
        let c = self.ctl_for(st);
        if c.pending.is_some() {
            c.fin_wanted = true;
            return;
        }
        let verno = c.snd_nxt;
        c.snd_nxt = c.snd_nxt.wrapping_add(1);
        let (snd, rcv) = (c.snd_nxt, c.rcv_nxt);
        let peer = Ipv4Addr::from(addrs.peer_ip);
        let pkt = Self::build(st, Ipv4Addr::from(addrs.local_ip), peer, ControlFlags::FIN, verno, rcv);
        self.send_reliable(st.local_flow, PendingKind::Fin, pkt, peer, snd);
    }

    /// Kernel events: the local TCP's FIN was acknowledged, or it reset.
    pub fn on_event(&mut self, ev: Event) {
        let Some((st, addrs)) = self.flow(ev.flow) else {
            return;
        };
        match ev.kind {
            event::LOCAL_FIN_ACKED => self.send_fin(&st, &addrs),
            event::LOCAL_RST => {
                let c = self.ctl_for(&st).clone();
                let peer = Ipv4Addr::from(addrs.peer_ip);
                let flags = ControlFlags::RST | ControlFlags::ACK;
                let pkt = Self::build(&st, Ipv4Addr::from(addrs.local_ip), peer, flags, c.snd_nxt, c.rcv_nxt);
                self.send(&pkt, peer);
                self.free(ev.flow, Counter::FlowsFreed);
            }
            event::PEER_RST => {
                // The RST itself already reached the local TCP.
                if let Some(c) = self.ctl_mut(ev.flow) {
                    c.free_at = Some(Instant::now() + CLOSE_LINGER);
                } else {
                    self.free(ev.flow, Counter::FlowsFreed);
                }
            }
            // Watched until it is due to be proven. (The control state is
            // created on first use, once the handshake has fixed both
            // initial vernos: a client learns the peer's from the SYN-ACK.)
            event::NEW_FLOW => {
                let now = Instant::now();
                self.young.push_back((now, ev.flow));
                if let Some(v) = &mut self.new_flows {
                    v.push((now, ev.flow));
                }
            }
            _ => {}
        }
    }

    /// A SAL packet the kernel passed up (SAL-only control packets).
    pub fn on_packet(&mut self, datagram: &[u8]) {
        let Ok(p) = ServalRepr::parse(datagram) else {
            self.maps.bump(Counter::CtlDropMalformed);
            return;
        };
        let Some(ctl) = p.sal.control else {
            self.maps.bump(Counter::CtlDropMalformed);
            return;
        };
        let id = p.sal.dst_flowid.0;
        let Some((st, addrs)) = self.flow(id) else {
            self.answer_closed(id, &ctl);
            return;
        };
        let f = ctl.flags;
        if f.contains(ControlFlags::RST) {
            // Believed only when plausible, in the spirit of RFC 5961: with
            // the peer's nonce (the original stack puts it in its resets),
            // or from the flow's current peer address at exactly the verno
            // expected next. Anyone who can only guess (a flow ID, a verno)
            // cannot end a flow.
            let rcv_nxt = self.ctl.get(&id).map_or(st.peer_verno.wrapping_add(1), |c| c.rcv_nxt);
            let from_peer = p.ip.src_addr == Ipv4Addr::from(addrs.peer_ip) && ctl.verno == rcv_nxt;
            if ctl.nonce != st.peer_nonce && !from_peer {
                self.maps.bump(Counter::CtlDropUnbelievedRst);
                return;
            }
            self.maps.bump(Counter::CtlRstRcvd);
            // A half-open flow's TCP side is most likely a spoofed
            // address: no reset goes back to it.
            if st.flags & flag::PROVEN != 0 {
                self.inject_rst(&st);
            }
            self.free(id, Counter::FlowsFreed);
            return;
        }
        if ctl.nonce != st.peer_nonce {
            self.maps.bump(Counter::CtlDropBadNonce);
            return;
        }
        let from = p.ip.src_addr;
        let rcv_nxt = self.ctl_for(&st).rcv_nxt;
        let consumes =
            f.contains(ControlFlags::FIN) || f.contains(ControlFlags::RSYN) && !f.contains(ControlFlags::ACK);
        if consumes && before(ctl.verno, rcv_nxt) {
            // Already seen: answer so the peer stops retransmitting.
            self.maps.bump(Counter::CtlStale);
            self.send_ack_or_rsynack(&st, &addrs, f, from);
            return;
        }
        // Every flag of a combined packet is taken (the original stack
        // merges them: RSYN|ACK|FIN at the close after a migration): the
        // RSYN-ACK or RSYN first, then the ACK, then the FIN.
        let rsyn_ack = f.contains(ControlFlags::RSYN | ControlFlags::ACK);
        if rsyn_ack {
            self.maps.bump(Counter::CtlRsynRcvd);
            self.on_rsyn_ack(&st, &addrs, ctl.ackno);
        } else if f.contains(ControlFlags::RSYN) {
            self.maps.bump(Counter::CtlRsynRcvd);
            let c = self.ctl_for(&st);
            c.rcv_nxt = ctl.verno.wrapping_add(1);
            let (snd, rcv) = (c.snd_nxt, c.rcv_nxt);
            let pkt = Self::build(
                &st,
                Ipv4Addr::from(addrs.local_ip),
                from,
                ControlFlags::RSYN | ControlFlags::ACK,
                snd,
                rcv,
            );
            // Answered to the new address until it acknowledges; only then
            // does the flow switch (serval-wire §5).
            self.send_reliable(id, PendingKind::RsynAck { new_peer: from }, pkt, from, snd);
            return;
        }
        if f.contains(ControlFlags::ACK) && !rsyn_ack {
            self.maps.bump(Counter::CtlAckRcvd);
            self.on_ack(&st, ctl.ackno);
        }
        if f.contains(ControlFlags::FIN) {
            self.maps.bump(Counter::CtlFinRcvd);
            let c = self.ctl_for(&st);
            c.rcv_nxt = ctl.verno.wrapping_add(1);
            c.peer_fin = true;
            // To the peer's address as it is now (an RSYN-ACK or ACK just
            // taken may have moved it).
            let Some((st, addrs)) = self.flow(id) else { return };
            self.send_ack(&st, &addrs, Ipv4Addr::from(addrs.peer_ip));
            self.maybe_done(id);
        }
    }

    /// A control packet for a flow we no longer have: a retransmitted SAL
    /// FIN of a flow closed recently (our ACK was lost) is answered again.
    fn answer_closed(&mut self, id: u32, ctl: &ControlRepr) {
        let answer = match self.closed.get(&id) {
            Some(c) if ctl.flags.contains(ControlFlags::FIN) && ctl.nonce == c.state.peer_nonce => {
                let pkt = Self::build(
                    &c.state,
                    Ipv4Addr::from(c.addrs.local_ip),
                    Ipv4Addr::from(c.addrs.peer_ip),
                    ControlFlags::ACK,
                    c.snd_nxt,
                    c.rcv_nxt,
                );
                Some((pkt, Ipv4Addr::from(c.addrs.peer_ip)))
            }
            _ => None,
        };
        match answer {
            Some((pkt, dst)) => {
                self.maps.bump(Counter::CtlStale);
                self.send(&pkt, dst);
            }
            None => self.maps.bump(Counter::CtlDropUnknownFlow),
        }
    }

    fn send_ack_or_rsynack(&mut self, st: &FlowState, addrs: &FlowAddrs, f: ControlFlags, from: Ipv4Addr) {
        if f.contains(ControlFlags::RSYN) {
            let c = self.ctl_for(st).clone();
            let pkt = Self::build(
                st,
                Ipv4Addr::from(addrs.local_ip),
                from,
                ControlFlags::RSYN | ControlFlags::ACK,
                c.snd_nxt,
                c.rcv_nxt,
            );
            self.send(&pkt, from);
        } else {
            self.send_ack(st, addrs, Ipv4Addr::from(addrs.peer_ip));
        }
    }

    fn on_ack(&mut self, st: &FlowState, ackno: u32) {
        let id = st.local_flow;
        let Some(c) = self.ctl_mut(id) else {
            return;
        };
        let Some(p) = &c.pending else { return };
        // A plain ACK of our RSYN is what the original stack answers a
        // duplicate RSYN with (its RSYN-ACK was lost): the migration
        // completes only with an RSYN-ACK, which it retransmits.
        if p.acked_by != ackno || matches!(p.kind, PendingKind::Rsyn { .. }) {
            return;
        }
        let kind = p.kind;
        c.pending = None;
        match kind {
            PendingKind::Fin => c.fin_acked_at = Some(Instant::now()),
            PendingKind::RsynAck { new_peer } => {
                if let Ok(mut a) = self.maps.addrs.get(&id, 0) {
                    a.peer_ip = new_peer.octets();
                    let _ = self.maps.addrs.insert(id, a, 0);
                }
            }
            PendingKind::Rsyn { .. } => unreachable!("an RSYN is answered by an RSYN-ACK"),
        }
        self.after_pending(st);
        self.maybe_done(id);
    }

    fn on_rsyn_ack(&mut self, st: &FlowState, addrs: &FlowAddrs, ackno: u32) {
        let id = st.local_flow;
        let Some(c) = self.ctl_mut(id) else {
            return;
        };
        let Some(Pending { kind: PendingKind::Rsyn { new_local }, acked_by, .. }) = c.pending.clone() else {
            return;
        };
        if acked_by != ackno {
            return;
        }
        c.pending = None;
        let (snd, rcv) = (c.snd_nxt, c.rcv_nxt);
        let peer = Ipv4Addr::from(addrs.peer_ip);
        let pkt = Self::build(st, new_local, peer, ControlFlags::ACK, snd, rcv);
        self.send(&pkt, peer);
        if let Ok(mut a) = self.maps.addrs.get(&id, 0) {
            a.local_ip = new_local.octets();
            let _ = self.maps.addrs.insert(id, a, 0);
        }
        self.after_pending(st);
    }

    /// A FIN that waited for an outstanding control packet goes now.
    fn after_pending(&mut self, st: &FlowState) {
        let id = st.local_flow;
        if self.ctl.get(&id).is_some_and(|c| c.fin_wanted && c.pending.is_none()) {
            self.ctl_mut(id).unwrap().fin_wanted = false;
            if let Some((st, addrs)) = self.flow(id) {
                self.send_fin(&st, &addrs);
            }
        }
    }

    fn maybe_done(&mut self, id: u32) {
        if let Some(c) = self.ctl_mut(id) {
            if c.peer_fin && c.fin_acked_at.is_some() && c.free_at.is_none() {
                c.free_at = Some(Instant::now() + CLOSE_LINGER);
            }
        }
    }

    /// The peer reset the flow: reset the local socket too. The TCP side
    /// sees a RST from the peer's TCP identity at the sequence it expects.
    fn inject_rst(&mut self, st: &FlowState) {
        let src = Ipv4Addr::from(st.tcp_peer_addr);
        let dst = Ipv4Addr::from(st.tcp_local_addr);
        let mut pkt = vec![0u8; 40];
        let ip = Ipv4Repr { dont_frag: true, ..Ipv4Repr::new(src, dst, IPPROTO_TCP, 20) };
        ip.emit(&mut xlate_common::wire::ipv4::Ipv4Packet::new_unchecked(&mut pkt[..])).expect("sized");
        let tcp = xlate_common::wire::tcp::TcpRepr {
            src_port: u16::from_be_bytes(st.tcp_peer_port),
            dst_port: u16::from_be_bytes(st.tcp_local_port),
            seq: st.peer_next_seq,
            ack: 0,
            flags: xlate_common::wire::tcp::TcpFlags(xlate_common::wire::tcp::TcpFlags::RST),
            window: 0,
            urgent: 0,
            options: &[],
            payload: &[],
        };
        tcp.emit(&mut xlate_common::wire::tcp::TcpPacket::new_unchecked(&mut pkt[20..]), src, dst).expect("sized");
        if let Err(e) = self.inject.send_to(&pkt, dst) {
            self.warnings.warn("injecting a TCP reset", format!("to {dst}: {e}"));
        }
    }

    /// Deletes every trace of a flow from the maps (a cleanly closed one is
    /// remembered by the agent for TIME_WAIT).
    pub fn free(&mut self, id: u32, why: Counter) {
        if self.maps.flows.get(&id, 0).is_ok_and(|st| st.flags & flag::PROVEN == 0) {
            self.maps.bump(Counter::FlowsFreedHalfOpen);
        }
        if let (Some(c), Some((st, addrs))) = (self.ctl.get(&id).cloned(), self.flow(id)) {
            if c.peer_fin && c.fin_acked_at.is_some() {
                // Before the tuple is released: no new flow can hold it yet.
                self.end_time_wait(&st, &addrs);
                let closed = Closed {
                    state: st,
                    addrs,
                    snd_nxt: c.snd_nxt,
                    rcv_nxt: c.rcv_nxt,
                    until: Instant::now() + TIME_WAIT,
                };
                self.closed.insert(id, closed);
            }
        }
        if let Ok(st) = self.maps.flows.get(&id, 0) {
            let key = FlowKey {
                saddr: st.tcp_local_addr,
                daddr: st.tcp_peer_addr,
                sport: st.tcp_local_port,
                dport: st.tcp_peer_port,
            };
            let _ = self.maps.tuples.remove(&key);
            let _ = self.maps.peers.remove(&PeerKey { peer_ip: st.tcp_peer_addr, peer_flow: st.peer_flow });
        }
        if self.maps.flows.remove(&id).is_ok() {
            self.maps.count_freed();
        }
        let _ = self.maps.addrs.remove(&id);
        self.ctl.remove(&id);
        self.dirty.remove(&id);
        let _ = self.maps.ctl.remove(&id);
        self.maps.bump(why);
    }

    /// Ends the TIME_WAIT of this host's socket of a flow that closed
    /// cleanly.
    ///
    /// Serving side: host mode gives every flow from one SAL peer a TCP
    /// identity (the peer's address, a port from a rotation of 32768) at
    /// this host's server. A server that closes first leaves that identity
    /// in TIME_WAIT for 60 s, so past about 550 new flows a second from one
    /// peer (a gateway carries all its clients on one address) new flows
    /// would meet TIME_WAIT sockets of old ones and be refused about half
    /// the time (their timestamps are unrelated). Connecting side (host
    /// mode's applications, the relay's connections to instances): a
    /// socket that closes first holds its ephemeral port toward that
    /// instance address and port for 60 s, and as the ports fill up every
    /// connect() searches longer and finally fails.
    ///
    /// What TIME_WAIT guards against cannot happen here: once the flow is
    /// freed, a late segment of it carries a flow ID that no longer exists
    /// and is dropped before it reaches TCP, and the SAL FIN it might
    /// repeat is answered from [`Closed`]. So the socket is destroyed
    /// (`SOCK_DESTROY`, what `ss -K` does) as the flow is freed. Both FINs
    /// are acknowledged by then, so the socket is in TIME_WAIT or already
    /// gone; only one in TIME_WAIT, with exactly the flow's 4-tuple, is
    /// destroyed. A translator flow's TCP end is the legacy client, not a
    /// socket here (its address is not the flow's own SAL address), and is
    /// not looked for.
    fn end_time_wait(&mut self, st: &FlowState, addrs: &FlowAddrs) {
        let local_tcp_end = st.role == xlate_common::flow::role::SERVER || st.tcp_local_addr == addrs.local_ip;
        if !local_tcp_end {
            return;
        }
        let Some(diag) = &self.diag else { return };
        let local = SocketAddrV4::new(st.tcp_local_addr.into(), u16::from_be_bytes(st.tcp_local_port));
        let peer = SocketAddrV4::new(st.tcp_peer_addr.into(), u16::from_be_bytes(st.tcp_peer_port));
        match diag.end_time_wait(local, peer) {
            Ok(crate::sockdiag::Destroyed::Yes) => self.maps.bump(Counter::TimeWaitEnded),
            Ok(crate::sockdiag::Destroyed::NoSuchSocket | crate::sockdiag::Destroyed::LeftInState(_)) => {}
            Err(e) => self.warnings.warn("ending a TIME_WAIT", format!("{e:#}")),
        }
    }

    /// Timers: retransmissions, lingering closed flows, expiry.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let mut resend = Vec::new();
        let mut give_up = Vec::new();
        let mut migration_failed = Vec::new();
        let mut fin_wait_over = Vec::new();
        let mut free = Vec::new();
        for (id, c) in self.ctl.iter_mut() {
            if c.free_at.is_some_and(|t| t <= now) {
                free.push(*id);
                continue;
            }
            if c.fin_acked_at.is_some_and(|t| now - t > FIN_WAIT) && !c.peer_fin {
                fin_wait_over.push(*id);
                continue;
            }
            if let Some(p) = &mut c.pending {
                if p.next_at <= now {
                    if p.kind.is_migration() && p.tries >= MIGRATION_TRIES {
                        migration_failed.push((*id, p.kind));
                        c.pending = None;
                        self.dirty.insert(*id);
                        continue;
                    }
                    if p.tries >= MAX_TRIES {
                        give_up.push(*id);
                        continue;
                    }
                    p.tries += 1;
                    p.rto = (p.rto * 2).min(RTO_MAX);
                    p.next_at = now + p.rto;
                    resend.push((p.datagram.clone(), p.dst));
                    self.dirty.insert(*id);
                }
            }
        }
        for (d, dst) in resend {
            self.send(&d, dst);
            self.maps.bump(Counter::CtlRetransmit);
        }
        for (id, kind) in migration_failed {
            // The flow is unharmed where it was; only the move is off.
            self.maps.bump(Counter::MigrationFailed);
            let to = match kind {
                PendingKind::Rsyn { new_local } => format!("to our address {new_local}"),
                PendingKind::RsynAck { new_peer } => format!("of the peer to {new_peer}"),
                PendingKind::Fin => continue,
            };
            tracing::warn!(
                "flow {id:#x}: the migration {to} got no answer after {MIGRATION_TRIES} tries; the flow stays where it was"
            );
            if let Some((st, _)) = self.flow(id) {
                self.after_pending(&st);
            }
        }
        for id in free {
            self.free(id, Counter::FlowsFreed);
        }
        // The peer's FIN is overdue only if the flow is quiet too: a peer
        // still sending into a half-closed connection (an upload after the
        // server's answer) keeps it. The wait then starts again from the
        // last segment, so a live flow costs one lookup per FIN_WAIT.
        let mono = mono_ns();
        for id in fin_wait_over {
            let quiet =
                self.maps.flows.get(&id, 0).map(|st| Duration::from_nanos(mono.saturating_sub(st.last_seen_ns)));
            match quiet {
                Ok(q) if q < FIN_WAIT => {
                    if let Some(c) = self.ctl_mut(id) {
                        c.fin_acked_at = Some(now.checked_sub(q).unwrap_or(now));
                    }
                }
                _ => give_up.push(id),
            }
        }
        for id in give_up {
            self.free(id, Counter::FlowsExpired);
        }
        self.closed.retain(|_, c| c.until > now);
        self.expire();
        self.enforce_budget();
    }

    /// Expiry at a cost proportional to the work: young flows are looked
    /// at once each, when due to be proven; the whole table only every
    /// [`SCAN_EVERY`] (idle flows, and half-open ones whose event was lost).
    fn expire(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(&(t, id)) = self.young.front() {
            if now.duration_since(t) < HALF_OPEN_TIMEOUT {
                break;
            }
            self.young.pop_front();
            due.push(id);
        }
        for id in due {
            if self.maps.flows.get(&id, 0).is_ok_and(|st| st.flags & flag::PROVEN == 0) {
                self.abandon(id);
            }
        }
        if self.last_scan.is_some_and(|t| now.duration_since(t) < SCAN_EVERY) {
            return;
        }
        self.last_scan = Some(now);
        self.maps.resync_count();
        let mono = mono_ns();
        let (mut idle, mut half_open) = (Vec::new(), Vec::new());
        for item in self.maps.flows.iter() {
            let Ok((id, st)) = item else { continue };
            let quiet = Duration::from_nanos(mono.saturating_sub(st.last_seen_ns));
            let age = Duration::from_nanos(mono.saturating_sub(st.created_ns));
            if st.flags & flag::PROVEN == 0 && age > HALF_OPEN_TIMEOUT {
                half_open.push(id);
            } else if quiet > self.idle_timeout {
                idle.push(id);
            }
        }
        for id in half_open {
            self.abandon(id);
        }
        for id in idle {
            self.free(id, Counter::FlowsExpired);
        }
    }

    /// A flow whose other end never proved it is there: freed, and the
    /// peer told with a SAL RST (so that an instance frees its side at
    /// once). The TCP side gets nothing: it is most likely a spoofed
    /// address.
    fn abandon(&mut self, id: u32) {
        if let Some((st, addrs)) = self.flow(id) {
            if st.peer_flow != 0 {
                let c = self.ctl_for(&st).clone();
                let peer = Ipv4Addr::from(addrs.peer_ip);
                let flags = ControlFlags::RST | ControlFlags::ACK;
                let pkt = Self::build(&st, Ipv4Addr::from(addrs.local_ip), peer, flags, c.snd_nxt, c.rcv_nxt);
                self.send(&pkt, peer);
            }
        }
        self.free(id, Counter::FlowsExpired);
    }

    /// New flows since the last call (creation time, flow ID), for a mode
    /// that watches handshakes (the gateway's health check). The first
    /// call starts the watch.
    pub fn take_new_flows(&mut self) -> Vec<(Instant, u32)> {
        self.new_flows.replace(Vec::new()).unwrap_or_default()
    }

    /// How many flows are half-open: started, minus proven, minus freed
    /// while half-open (counters the kernel and the agent keep in the
    /// pinned counter map, so the figure survives restarts).
    pub fn half_open(&self) -> u64 {
        let sum = |c: Counter| -> u64 { self.maps.counters.get(&c.index(), 0).map(|v| v.iter().sum()).unwrap_or(0) };
        sum(Counter::FlowsHalfOpened)
            .saturating_sub(sum(Counter::FlowsProven))
            .saturating_sub(sum(Counter::FlowsFreedHalfOpen))
    }

    /// Tells the kernel whether half-open flows are at their budget or
    /// hard limit (see `admit.rs` in the kernel programs).
    fn enforce_budget(&mut self) {
        let n = self.half_open();
        let want = if n >= self.budget.hard {
            config_flag::SYN_BUDGET | config_flag::SYN_HARD_LIMIT
        } else if n >= self.budget.budget {
            config_flag::SYN_BUDGET
        } else {
            0
        };
        if want == self.syn_flags {
            return;
        }
        if let Ok(mut cfg) = self.maps.config.get(&0, 0) {
            cfg.flags = (cfg.flags & !(config_flag::SYN_BUDGET | config_flag::SYN_HARD_LIMIT)) | want;
            if self.maps.config.set(0, cfg, 0).is_ok() {
                match (self.syn_flags, want) {
                    (0, _) => tracing::warn!(
                        "{n} half-open flows reached the budget of {}: admitting only retransmitted SYNs",
                        self.budget.budget
                    ),
                    (_, 0) => tracing::info!("{n} half-open flows, under the budget: admitting every SYN again"),
                    _ => {}
                }
                self.syn_flags = want;
            }
        }
    }

    /// Moves every flow to `to` (a local address): RSYN from the new
    /// address; the flow switches when the RSYN-ACK arrives. New flows
    /// use `to` at once. Returns how many flows are moving.
    pub fn migrate(&mut self, to: Ipv4Addr) -> usize {
        if let Ok(mut cfg) = self.maps.config.get(&0, 0) {
            cfg.addr = to.octets();
            let _ = self.maps.config.set(0, cfg, 0);
        }
        let ids: Vec<u32> = self.maps.flows.keys().filter_map(|k| k.ok()).collect();
        let mut n = 0;
        for id in ids {
            let Some((st, addrs)) = self.flow(id) else {
                continue;
            };
            if st.state != state::ESTABLISHED || addrs.local_ip == to.octets() {
                continue;
            }
            let c = self.ctl_for(&st);
            if c.pending.is_some() {
                continue;
            }
            let verno = c.snd_nxt;
            c.snd_nxt = c.snd_nxt.wrapping_add(1);
            let (snd, rcv) = (c.snd_nxt, c.rcv_nxt);
            let peer = Ipv4Addr::from(addrs.peer_ip);
            let pkt = Self::build(&st, to, peer, ControlFlags::RSYN, verno, rcv);
            self.send_reliable(id, PendingKind::Rsyn { new_local: to }, pkt, peer, snd);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a restarted agent reads back is what the last one had: an
    /// outstanding RSYN-ACK (a migration) or FIN with its retransmission
    /// state, FIN bookkeeping and lingering close.
    #[test]
    fn control_state_survives_the_round_trip_through_the_pinned_map() {
        let now = Instant::now();
        let migrating = Ctl {
            snd_nxt: 7,
            rcv_nxt: 0xffff_fff0,
            pending: Some(Pending {
                kind: PendingKind::RsynAck { new_peer: Ipv4Addr::new(10, 0, 0, 9) },
                datagram: (0..52).collect(),
                dst: Ipv4Addr::new(10, 0, 0, 9),
                acked_by: 8,
                next_at: now + Duration::from_millis(1500),
                rto: Duration::from_secs(4),
                tries: 3,
            }),
            fin_wanted: true,
            fin_acked_at: None,
            peer_fin: false,
            free_at: None,
        };
        let closing = Ctl {
            snd_nxt: 1,
            rcv_nxt: 2,
            pending: None,
            fin_wanted: false,
            fin_acked_at: Some(now - Duration::from_secs(3)),
            peer_fin: true,
            free_at: Some(now + Duration::from_millis(400)),
        };
        for c in [migrating, closing] {
            let back = Ctl::from_record(&c.record());
            assert_eq!(
                (back.snd_nxt, back.rcv_nxt, back.fin_wanted, back.peer_fin),
                (c.snd_nxt, c.rcv_nxt, c.fin_wanted, c.peer_fin)
            );
            let close = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
                (Some(a), Some(b)) => a.max(b) - a.min(b) < Duration::from_millis(5),
                (a, b) => a.is_none() && b.is_none(),
            };
            assert!(close(back.fin_acked_at, c.fin_acked_at) && close(back.free_at, c.free_at));
            match (back.pending, c.pending) {
                (None, None) => {}
                (Some(b), Some(p)) => {
                    assert_eq!(
                        (b.kind, b.datagram, b.dst, b.acked_by, b.rto, b.tries),
                        (p.kind, p.datagram, p.dst, p.acked_by, p.rto, p.tries)
                    );
                    assert!(close(Some(b.next_at), Some(p.next_at)));
                }
                _ => panic!("pending lost"),
            }
        }
    }
}
