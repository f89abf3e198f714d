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
    event, flag, flow_clock, role, state, Counter, CtlRecord, Event, FlowAddrs, FlowState, PeerKey, SynBudget,
};
use xlate_common::wire::{ipv4::Ipv4Repr, packet::ServalRepr, IPPROTO_TCP};

use super::maps::FlowMaps;
use super::sal_control::{self, Ctl, Effects, End, Migration, MIGRATION_TRIES};
use crate::rawsock::RawSocket;

pub(crate) use super::sal_control::mono_ns;

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

/// Whether flow `st`'s TCP end is a socket on this host: a host-mode
/// server's, or a host-mode client's (its TCP address is the flow's own
/// SAL address). A translator flow's TCP end is the legacy client.
fn holds_local_socket(st: &FlowState, addrs: &FlowAddrs) -> bool {
    st.role == role::SERVER || st.tcp_local_addr == addrs.local_ip
}

/// What the agent keeps of a closed flow during TIME_WAIT.
struct Closed {
    state: FlowState,
    addrs: FlowAddrs,
    ctl: Ctl,
    until: Instant,
}

/// Where a flow's migration stands, for `migrate --wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationState {
    Is(Migration),
    /// The flow ended before its migration did.
    FlowGone,
}

pub struct ControlPlane {
    pub maps: FlowMaps,
    sal: RawSocket,
    inject: RawSocket,
    ctl: HashMap<u32, Ctl>,
    /// Flows whose control state changed since the last [`Self::sync`].
    dirty: std::collections::HashSet<u32>,
    /// The SAL addresses of established flows (see [`Self::flow`]).
    addrs: HashMap<u32, FlowAddrs>,
    /// Flows a new connection reopened (`event::REOPENED`), whose
    /// addresses `FLOW_REOPENED` holds until they are freed. (One whose
    /// event was lost is swept at the next full scan.)
    reopened: std::collections::HashSet<u32>,
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
    /// Whether half-open flows were at their budget at the last look.
    over_budget: bool,
    /// Whether the fast path's share was used up at the last look.
    fast_path_full: bool,
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
            addrs: HashMap::new(),
            reopened: Default::default(),
            closed: HashMap::new(),
            idle_timeout,
            young: Default::default(),
            new_flows: None,
            budget,
            over_budget: false,
            fast_path_full: false,
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
            if cp.maps.flows.contains(id) {
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

    /// Writes the control state that changed to `AGENT_CTL`; the event
    /// loop calls it after every event. Its cost follows the flows that
    /// changed. The counts are written once a tick instead (`tick` reads
    /// the kernel's, which flushes ours first), and whenever a reader of
    /// the pins asks ([`Request::FlushCounts`](super::protocol::Request)):
    /// a read and a write of every per-CPU counter an event moved were
    /// two thirds of the agent's `bpf()` calls per short connection.
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
        let ids: Vec<u32> = self.maps.flows.ids();
        // A TCP end on this host (host mode's applications) is reset by
        // destroying its socket, while translation still runs: the
        // application sees the abort at once, and the kernel's own reset
        // reaches the peer translated. An injected RST would have to hit
        // the socket's next expected sequence number exactly, which the
        // datapath knows only approximately while segments are in flight.
        let mut destroyed = std::collections::HashSet::new();
        for &id in &ids {
            let Some((st, _)) = self.flow(id) else { continue };
            let Some(diag) = &self.diag else { continue };
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
                let (pkt, peer) = c.reset(&st, &addrs);
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

    /// Flow `id`'s state and SAL addresses. The state is read from the
    /// mapped table (no system call); the addresses, two map lookups, are
    /// kept once the flow is established: from then on only the agent
    /// moves them (`apply`), the kernel having set them at the flow's
    /// creation and, for a client, at its SYN-ACK.
    fn flow(&mut self, id: u32) -> Option<(FlowState, FlowAddrs)> {
        let st = self.maps.flows.get(id)?;
        if let Some(a) = self.addrs.get(&id) {
            return Some((st, *a));
        }
        let addrs = self.maps.addrs_of(&st)?;
        if st.state == state::ESTABLISHED {
            self.addrs.insert(id, addrs);
        }
        Some((st, addrs))
    }

    fn ctl_for(&mut self, st: &FlowState) -> &mut Ctl {
        self.dirty.insert(st.local_flow);
        self.ctl.entry(st.local_flow).or_insert_with(|| Ctl::new(st))
    }

    fn send(&mut self, datagram: &[u8], dst: Ipv4Addr) {
        match self.sal.send_to(datagram, dst) {
            Ok(()) => self.maps.bump(Counter::CtlSent),
            Err(e) => self.warnings.warn("sending a control packet", format!("to {dst}: {e}")),
        }
    }

    /// Carries out what the protocol decided for flow `id`.
    fn apply(&mut self, id: u32, st: &FlowState, fx: Effects) {
        for c in fx.counters {
            self.maps.bump(c);
        }
        for (d, dst) in fx.sends {
            self.send(&d, dst);
        }
        if let Some(a) = fx.moved {
            match self.maps.set_addrs(st, a) {
                Ok(()) => {
                    self.addrs.insert(id, a);
                }
                Err(e) => {
                    self.addrs.remove(&id);
                    self.warnings.warn("moving a flow", format!("{id:#x}: {e}"));
                }
            }
        }
        if let Some(m) = fx.migration_failed {
            let what = match m.side {
                sal_control::Side::Local => format!("to our address {}", m.to),
                sal_control::Side::Peer => format!("of the peer to {}", m.to),
            };
            tracing::warn!(
                "flow {id:#x}: the migration {what} got no answer after {MIGRATION_TRIES} tries; the flow stays where it was"
            );
        }
        match fx.end {
            Some(End::Reset { reset_tcp }) => {
                if reset_tcp {
                    self.inject_rst(st);
                }
                self.free(id, Counter::FlowsFreed);
            }
            Some(End::Expired) => self.free(id, Counter::FlowsExpired),
            None => {}
        }
    }

    /// Kernel events: the local TCP's FIN was acknowledged, or it reset.
    pub fn on_event(&mut self, ev: Event) {
        if ev.kind == event::NEW_FLOW {
            // Watched until it is due to be proven. (The control state is
            // created on first use, once the handshake has fixed both
            // initial vernos: a client learns the peer's from the SYN-ACK.)
            let now = Instant::now();
            self.young.push_back((now, ev.flow));
            if let Some(v) = &mut self.new_flows {
                v.push((now, ev.flow));
            }
            return;
        }
        if ev.kind == event::REOPENED {
            if !self.maps.flows.contains(ev.flow) {
                // Freed already (a reset frees a flow at once).
                self.maps.forget_reopened(ev.flow);
                return;
            }
            self.reopened.insert(ev.flow);
            // Its TCP connection is over on both ends, and its tuple names
            // the new flow: nothing but its SAL close is left. Freed now if
            // that is done; else the close goes on (with the addresses in
            // `FLOW_REOPENED`) and frees it as any close does.
            let closing = self.ctl.get(&ev.flow).is_some_and(|c| !(c.peer_fin && c.fin_acked_at.is_some()));
            if !closing {
                self.free(ev.flow, Counter::FlowsFreed);
            }
            return;
        }
        let Some((st, addrs)) = self.flow(ev.flow) else {
            return;
        };
        match ev.kind {
            event::LOCAL_FIN_ACKED => {
                let fx = self.ctl_for(&st).close(&st, &addrs, Instant::now());
                self.apply(ev.flow, &st, fx);
            }
            event::LOCAL_RST => {
                let (pkt, peer) = self.ctl_for(&st).reset(&st, &addrs);
                self.send(&pkt, peer);
                self.free(ev.flow, Counter::FlowsFreed);
            }
            event::PEER_RST => {
                // The RST itself already reached the local TCP.
                if let Some(c) = self.ctl_mut(ev.flow) {
                    c.free_at = Some(Instant::now() + sal_control::CLOSE_LINGER);
                } else {
                    self.free(ev.flow, Counter::FlowsFreed);
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
            match self.closed.get(&id) {
                Some(c) => {
                    let (st, fx) = (c.state, sal_control::on_control_closed(&c.state, &c.addrs, &c.ctl, &ctl));
                    self.apply(id, &st, fx);
                }
                None => self.maps.bump(Counter::CtlDropUnknownFlow),
            }
            return;
        };
        let fx = self.ctl_for(&st).on_control(&st, &addrs, p.ip.src_addr, &ctl, Instant::now());
        self.apply(id, &st, fx);
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
        if self.maps.flows.get(id).is_some_and(|st| st.flags & flag::PROVEN == 0) {
            self.maps.bump(Counter::FlowsFreedHalfOpen);
        }
        if let (Some(c), Some((st, addrs))) = (self.ctl.get(&id).cloned(), self.flow(id)) {
            if c.peer_fin && c.fin_acked_at.is_some() {
                // Before the tuple is released: no new flow can hold it yet,
                // unless one reopened it, whose socket it is then.
                if self.diag.is_some()
                    && holds_local_socket(&st, &addrs)
                    && self.maps.tuples.get(&st.tuple(), 0).is_ok_and(|t| t.flow == id)
                {
                    self.end_time_wait(&st);
                }
                let closed = Closed { state: st, addrs, ctl: c, until: Instant::now() + TIME_WAIT };
                self.closed.insert(id, closed);
            }
        }
        if let Some(st) = self.maps.flows.get(id) {
            self.maps.release_tuple(&st);
            // (Only a serving flow has a peer entry: `server_flow`.)
            if st.role == role::SERVER {
                let _ = self.maps.peers.remove(&PeerKey { peer_ip: st.tcp_peer_addr, peer_flow: st.peer_flow });
            }
        }
        if self.maps.flows.remove(id) {
            self.maps.count_freed();
        }
        if self.reopened.remove(&id) {
            self.maps.forget_reopened(id);
        }
        self.addrs.remove(&id);
        self.dirty.remove(&id);
        // Its record is in `AGENT_CTL` only if it had control state at a
        // `sync` (or came with it from an earlier run).
        if self.ctl.remove(&id).is_some() {
            let _ = self.maps.ctl.remove(&id);
        }
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
    /// not looked for ([`holds_local_socket`]).
    fn end_time_wait(&mut self, st: &FlowState) {
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
        let mut due = Vec::new();
        let mut give_up = Vec::new();
        let mut fin_wait_over = Vec::new();
        let mut free = Vec::new();
        for (id, c) in self.ctl.iter() {
            if c.free_at.is_some_and(|t| t <= now) {
                free.push(*id);
            } else if c.fin_acked_at.is_some_and(|t| now - t > FIN_WAIT) && !c.peer_fin {
                fin_wait_over.push(*id);
            } else if c.due_at().is_some_and(|t| t <= now) {
                due.push(*id);
            }
        }
        // Retransmissions, and migrations given up (the flow is unharmed
        // where it was; only the move is off).
        for id in due {
            let Some((st, addrs)) = self.flow(id) else { continue };
            let fx = self.ctl_for(&st).on_timer(&st, &addrs, now);
            self.apply(id, &st, fx);
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
            let quiet = self.maps.flows.get(id).map(|st| Duration::from_nanos(flow_clock::age_ns(mono, st.last_seen)));
            match quiet {
                Some(q) if q < FIN_WAIT => {
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
        self.enforce_admission();
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
            if self.maps.flows.get(id).is_some_and(|st| st.flags & flag::PROVEN == 0) {
                self.abandon(id);
            }
        }
        if self.last_scan.is_some_and(|t| now.duration_since(t) < SCAN_EVERY) {
            return;
        }
        self.last_scan = Some(now);
        self.maps.resync_count();
        self.maps.sweep_reopened();
        let mono = mono_ns();
        let (mut idle, mut half_open) = (Vec::new(), Vec::new());
        for st in self.maps.flows.iter() {
            let id = st.local_flow;
            let quiet = Duration::from_nanos(flow_clock::age_ns(mono, st.last_seen));
            let age = Duration::from_nanos(flow_clock::age_ns(mono, st.created));
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
                let (pkt, peer) = self.ctl_for(&st).reset(&st, &addrs);
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

    /// Tells the kernel how many new flows it may admit until the next
    /// tick (the half-open budget and hard limit, the fast path's share:
    /// see `flow::room`), and says when a limit is reached or left.
    fn enforce_admission(&mut self) {
        let r = self.maps.refresh_room(self.budget);
        let full = r.fast_path_limit != 0 && r.flows >= r.fast_path_limit;
        if full != self.fast_path_full {
            self.fast_path_full = full;
            if full {
                tracing::warn!(
                    "{} flows: the fast path's share ({}) is used up; new clients go to the relay",
                    r.flows,
                    r.fast_path_limit
                );
            } else {
                tracing::info!("{} flows, under the fast path's share: new clients take the fast path", r.flows);
            }
        }
        let n = r.half_open;
        let over = n >= self.budget.budget;
        if over != self.over_budget {
            self.over_budget = over;
            if over {
                tracing::warn!(
                    "{n} half-open flows reached the budget of {}: admitting only retransmitted SYNs (none past {})",
                    self.budget.budget,
                    self.budget.hard
                );
            } else {
                tracing::info!("{n} half-open flows, under the budget: admitting every SYN again");
            }
        }
    }

    /// Moves every flow to `to` (a local address): RSYN from the new
    /// address; the flow switches when the RSYN-ACK arrives. New flows
    /// use `to` at once. Returns the flows that are moving.
    pub fn migrate(&mut self, to: Ipv4Addr) -> Vec<u32> {
        if let Ok(mut cfg) = self.maps.config.get(&0, 0) {
            cfg.addr = to.octets();
            let _ = self.maps.config.set(0, cfg, 0);
        }
        let ids: Vec<u32> = self.maps.flows.ids();
        let mut moving = Vec::new();
        let now = Instant::now();
        for id in ids {
            let Some((st, addrs)) = self.flow(id) else {
                continue;
            };
            if st.state != state::ESTABLISHED {
                continue;
            }
            if let Some(fx) = self.ctl_for(&st).migrate(&st, &addrs, to, now) {
                self.apply(id, &st, fx);
                moving.push(id);
            }
        }
        moving
    }

    /// Where flow `id`'s migration stands.
    pub fn migration(&self, id: u32) -> MigrationState {
        match self.ctl.get(&id).and_then(Ctl::migration) {
            Some(m) if self.maps.flows.contains(id) => MigrationState::Is(m),
            _ => MigrationState::FlowGone,
        }
    }
}
