//! The SAL control protocol of one flow, as a state machine with no I/O: a
//! control packet, a timer or a command goes in; the packets to send, the
//! counters that move, where the flow now is and whether it ends come out
//! ([`Effects`]). [`super::control_plane`] owns the maps, sockets and
//! clocks and applies the effects; this module owns every protocol rule,
//! so the fixtures below replay the original stack's captures and check
//! our answers byte for byte.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use xlate_common::flow::{ctl_flag, ctl_pending, flag, Counter, CtlRecord, FlowAddrs, FlowState};
use xlate_common::wire::{
    ipv4::Ipv4Repr,
    packet::{ServalRepr, Transport},
    sal::{ControlFlags, ControlRepr, FlowId, SalRepr, ServiceList},
    IPPROTO_SAL, IPPROTO_TCP,
};

pub const RTO_INITIAL: Duration = Duration::from_secs(1);
pub const RTO_MAX: Duration = Duration::from_secs(120);
/// A FIN is sent this many times before the flow is expired.
pub const MAX_TRIES: u32 = 15;
/// A migration's RSYN (or RSYN-ACK) is sent this many times, at 0, 1, 3
/// and 7 s, and given up 15 s after the first (the backoff's next step):
/// the flow stays where it was. A move that takes longer is no move.
pub const MIGRATION_TRIES: u32 = 4;
/// How long a migration may take before it is given up.
pub const MIGRATION_DEADLINE: Duration = Duration::from_secs(15);
/// Time a fully closed flow lingers so late TCP segments still translate.
pub const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// How long the ACK of the peer's SAL FIN waits for our own FIN, to go
/// with it as one FIN|ACK (the agent's timers run every 100 ms, so it
/// goes alone 50 to 150 ms after the FIN). Most connections end with both
/// sides closing within milliseconds: one control packet of four saved,
/// and each one crosses every stack on its way. Well inside the peer's
/// retransmission timeout (the original stack's is at least 200 ms, 3 s at
/// first; ours 1 s).
pub const ACK_DELAY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingKind {
    Fin,
    /// We move to `new_local`.
    Rsyn {
        new_local: Ipv4Addr,
    },
    /// The peer moves to `new_peer`.
    RsynAck {
        new_peer: Ipv4Addr,
    },
}

impl PendingKind {
    /// Part of a migration (given up after [`MIGRATION_TRIES`], the flow
    /// unharmed), not a close.
    fn migration(self) -> Option<(Side, Ipv4Addr)> {
        match self {
            PendingKind::Fin => None,
            PendingKind::Rsyn { new_local } => Some((Side::Local, new_local)),
            PendingKind::RsynAck { new_peer } => Some((Side::Peer, new_peer)),
        }
    }
}

/// Our one outstanding control packet (the stack allows one per side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub kind: PendingKind,
    pub datagram: Vec<u8>,
    pub dst: Ipv4Addr,
    /// The ackno that acknowledges it.
    pub acked_by: u32,
    pub next_at: Instant,
    pub rto: Duration,
    pub tries: u32,
}

/// Which end of the flow moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// This host (`host migrate`).
    Local,
    /// The peer (it sent an RSYN).
    Peer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    Pending,
    Done,
    Failed,
}

/// The flow's latest migration, as `flows` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Migration {
    pub side: Side,
    pub to: Ipv4Addr,
    pub outcome: Outcome,
}

impl std::fmt::Display for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match self.side {
            Side::Local => "",
            Side::Peer => "peer ",
        };
        write!(f, "{who}{}:{}", <&str>::from(self.outcome), self.to)
    }
}

/// Control-plane state of one flow, kept by the agent only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ctl {
    pub snd_nxt: u32,
    pub rcv_nxt: u32,
    pub pending: Option<Pending>,
    pub fin_wanted: bool,
    pub fin_acked_at: Option<Instant>,
    pub peer_fin: bool,
    /// The peer's FIN is not acknowledged yet: its ACK goes with our FIN,
    /// or alone at this time ([`ACK_DELAY`]).
    pub ack_owed_at: Option<Instant>,
    pub free_at: Option<Instant>,
    /// The last migration that ended (done or failed); one in progress is
    /// [`Self::pending`].
    pub last_migration: Option<Migration>,
}

/// What handling an input asks of the agent, in this order: count, send,
/// move the flow, end it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub counters: Vec<Counter>,
    /// Datagrams (IPv4 header included) and where they go.
    pub sends: Vec<(Vec<u8>, Ipv4Addr)>,
    /// The flow's addresses changed (a migration completed).
    pub moved: Option<FlowAddrs>,
    pub end: Option<End>,
    /// A migration was given up (for the log).
    pub migration_failed: Option<Migration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer reset the flow; `reset_tcp`: the local TCP gets a reset too.
    Reset { reset_tcp: bool },
    /// Retransmissions exhausted.
    Expired,
}

fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// A SAL control packet of the flow `st` (no transport; checksums are the
/// kernel's: the raw socket fills the IP header's, SAL has none).
pub fn build(st: &FlowState, src: Ipv4Addr, dst: Ipv4Addr, flags: ControlFlags, verno: u32, ackno: u32) -> Vec<u8> {
    let repr = ServalRepr {
        ip: Ipv4Repr::new(src, dst, IPPROTO_SAL, 0),
        sal: SalRepr {
            src_flowid: FlowId(st.local_flow),
            dst_flowid: FlowId(st.peer_flow),
            protocol: IPPROTO_TCP,
            control: Some(ControlRepr { flags, verno, ackno, nonce: st.local_nonce }),
            services: ServiceList::empty(),
            source: None,
        },
        transport: Transport::None,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf).expect("sized buffer");
    buf
}

impl Ctl {
    /// The state of a flow the agent has not handled yet: the handshake
    /// consumed one verno on each side.
    pub fn new(st: &FlowState) -> Ctl {
        Ctl { snd_nxt: st.local_verno.wrapping_add(1), rcv_nxt: st.peer_verno.wrapping_add(1), ..Default::default() }
    }

    /// The flow's migration: the one in progress, else the last that ended.
    pub fn migration(&self) -> Option<Migration> {
        match self.pending.as_ref().and_then(|p| p.kind.migration()) {
            Some((side, to)) => Some(Migration { side, to, outcome: Outcome::Pending }),
            None => self.last_migration,
        }
    }

    /// A SAL RST|ACK to the peer at the flow's current place.
    pub fn reset(&self, st: &FlowState, addrs: &FlowAddrs) -> (Vec<u8>, Ipv4Addr) {
        let peer = Ipv4Addr::from(addrs.peer_ip);
        let flags = ControlFlags::RST | ControlFlags::ACK;
        (build(st, Ipv4Addr::from(addrs.local_ip), peer, flags, self.snd_nxt, self.rcv_nxt), peer)
    }

    fn ack(&self, st: &FlowState, addrs: &FlowAddrs) -> (Vec<u8>, Ipv4Addr) {
        let peer = Ipv4Addr::from(addrs.peer_ip);
        (build(st, Ipv4Addr::from(addrs.local_ip), peer, ControlFlags::ACK, self.snd_nxt, self.rcv_nxt), peer)
    }

    /// Sends a control packet that must be acknowledged, and keeps it for
    /// retransmission.
    #[allow(clippy::too_many_arguments)]
    fn send_reliable(
        &mut self,
        fx: &mut Effects,
        kind: PendingKind,
        datagram: Vec<u8>,
        dst: Ipv4Addr,
        acked_by: u32,
        now: Instant,
    ) {
        fx.sends.push((datagram.clone(), dst));
        self.pending =
            Some(Pending { kind, datagram, dst, acked_by, next_at: now + RTO_INITIAL, rto: RTO_INITIAL, tries: 1 });
    }

    /// The local TCP's FIN was acknowledged: our SAL FIN goes now, or once
    /// the outstanding control packet is done.
    pub fn close(&mut self, st: &FlowState, addrs: &FlowAddrs, now: Instant) -> Effects {
        let mut fx = Effects::default();
        self.send_fin(&mut fx, st, addrs, now);
        fx
    }

    fn send_fin(&mut self, fx: &mut Effects, st: &FlowState, addrs: &FlowAddrs, now: Instant) {
        if self.pending.is_some() {
            self.fin_wanted = true;
            return;
        }
        let verno = self.snd_nxt;
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        let peer = Ipv4Addr::from(addrs.peer_ip);
        // The ACK the peer's FIN waits for goes along (the original stack
        // merges flags the same way); a retransmission repeats it, which
        // the peer takes as a duplicate ACK.
        let flags = match self.ack_owed_at.take() {
            Some(_) => ControlFlags::FIN | ControlFlags::ACK,
            None => ControlFlags::FIN,
        };
        let pkt = build(st, Ipv4Addr::from(addrs.local_ip), peer, flags, verno, self.rcv_nxt);
        self.send_reliable(fx, PendingKind::Fin, pkt, peer, self.snd_nxt, now);
    }

    /// Moves the flow to our address `to`: an RSYN from there; the flow
    /// switches when the RSYN-ACK arrives. `None`: nothing to do (already
    /// there, or a control packet is outstanding).
    pub fn migrate(&mut self, st: &FlowState, addrs: &FlowAddrs, to: Ipv4Addr, now: Instant) -> Option<Effects> {
        if addrs.local_ip == to.octets() || self.pending.is_some() {
            return None;
        }
        let mut fx = Effects::default();
        let verno = self.snd_nxt;
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        let peer = Ipv4Addr::from(addrs.peer_ip);
        let pkt = build(st, to, peer, ControlFlags::RSYN, verno, self.rcv_nxt);
        self.send_reliable(&mut fx, PendingKind::Rsyn { new_local: to }, pkt, peer, self.snd_nxt, now);
        Some(fx)
    }

    /// A SAL control packet for this flow from `from`.
    ///
    /// Every flag of a combined packet is taken (the original stack merges
    /// them: RSYN|ACK|FIN at the close after a migration), in the order
    /// the protocol needs: RST ends everything; else the RSYN-ACK (or
    /// RSYN), then the ACK, then the FIN.
    pub fn on_control(
        &mut self,
        st: &FlowState,
        addrs: &FlowAddrs,
        from: Ipv4Addr,
        ctl: &ControlRepr,
        now: Instant,
    ) -> Effects {
        let mut fx = Effects::default();
        let mut addrs = *addrs;
        let f = ctl.flags;
        if f.contains(ControlFlags::RST) {
            // Believed only when plausible, in the spirit of RFC 5961: with
            // the peer's nonce (the original stack puts it in its resets),
            // or from the flow's current peer address at exactly the verno
            // expected next. Anyone who can only guess (a flow ID, a verno)
            // cannot end a flow.
            let from_peer = from == Ipv4Addr::from(addrs.peer_ip) && ctl.verno == self.rcv_nxt;
            if ctl.nonce != st.peer_nonce && !from_peer {
                fx.counters.push(Counter::CtlDropUnbelievedRst);
                return fx;
            }
            fx.counters.push(Counter::CtlRstRcvd);
            // A half-open flow's TCP side is most likely a spoofed
            // address: no reset goes back to it.
            fx.end = Some(End::Reset { reset_tcp: st.flags & flag::PROVEN != 0 });
            return fx;
        }
        if ctl.nonce != st.peer_nonce {
            fx.counters.push(Counter::CtlDropBadNonce);
            return fx;
        }
        let rsyn_ack = f.contains(ControlFlags::RSYN | ControlFlags::ACK);
        let consumes = f.contains(ControlFlags::FIN) || f.contains(ControlFlags::RSYN) && !rsyn_ack;
        if consumes && before(ctl.verno, self.rcv_nxt) {
            // Already seen: answer so the peer stops retransmitting (its
            // RSYN with our RSYN-ACK, to where it is moving).
            fx.counters.push(Counter::CtlStale);
            // An ACK goes now (ours was lost, or is owed and took too long).
            self.ack_owed_at = None;
            let answer = if f.contains(ControlFlags::RSYN) && !rsyn_ack {
                let flags = ControlFlags::RSYN | ControlFlags::ACK;
                (build(st, Ipv4Addr::from(addrs.local_ip), from, flags, self.snd_nxt, self.rcv_nxt), from)
            } else {
                self.ack(st, &addrs)
            };
            fx.sends.push(answer);
            return fx;
        }
        if rsyn_ack {
            fx.counters.push(Counter::CtlRsynRcvd);
            self.on_rsyn_ack(&mut fx, st, &mut addrs, ctl, now);
        } else if f.contains(ControlFlags::RSYN) {
            fx.counters.push(Counter::CtlRsynRcvd);
            self.rcv_nxt = ctl.verno.wrapping_add(1);
            let flags = ControlFlags::RSYN | ControlFlags::ACK;
            let pkt = build(st, Ipv4Addr::from(addrs.local_ip), from, flags, self.snd_nxt, self.rcv_nxt);
            // Answered to the new address until it acknowledges; only then
            // does the flow switch (serval-wire §5).
            self.send_reliable(&mut fx, PendingKind::RsynAck { new_peer: from }, pkt, from, self.snd_nxt, now);
            return fx;
        }
        // The ACK flag of an RSYN-ACK acknowledges the rest too (the
        // original's RSYN|ACK|FIN at a close also acknowledges our FIN).
        if f.contains(ControlFlags::ACK) {
            fx.counters.push(Counter::CtlAckRcvd);
            self.on_ack(&mut fx, st, &mut addrs, ctl.ackno, now);
        }
        if f.contains(ControlFlags::FIN) {
            fx.counters.push(Counter::CtlFinRcvd);
            self.rcv_nxt = ctl.verno.wrapping_add(1);
            self.peer_fin = true;
            if self.our_fin_to_come() {
                // Our TCP has not closed yet: its FIN will likely follow
                // in a moment and carry the ACK ([`ACK_DELAY`]).
                self.ack_owed_at = Some(now + ACK_DELAY);
            } else {
                // To the peer's address as it is now (the RSYN-ACK or ACK
                // just taken may have moved it).
                fx.sends.push(self.ack(st, &addrs));
            }
            self.maybe_done(now);
        }
        fx
    }

    fn on_ack(&mut self, fx: &mut Effects, st: &FlowState, addrs: &mut FlowAddrs, ackno: u32, now: Instant) {
        let Some(p) = &self.pending else { return };
        // A plain ACK of our RSYN is what the original stack answers a
        // duplicate RSYN with (its RSYN-ACK was lost): the migration
        // completes only with an RSYN-ACK, which it retransmits.
        if p.acked_by != ackno || matches!(p.kind, PendingKind::Rsyn { .. }) {
            return;
        }
        let kind = p.kind;
        self.pending = None;
        match kind {
            PendingKind::Fin => self.fin_acked_at = Some(now),
            PendingKind::RsynAck { new_peer } => {
                addrs.peer_ip = new_peer.octets();
                fx.moved = Some(*addrs);
                fx.counters.push(Counter::MigrationDone);
                self.last_migration = Some(Migration { side: Side::Peer, to: new_peer, outcome: Outcome::Done });
            }
            PendingKind::Rsyn { .. } => unreachable!("an RSYN is answered by an RSYN-ACK"),
        }
        self.after_pending(fx, st, addrs, now);
        self.maybe_done(now);
    }

    fn on_rsyn_ack(
        &mut self,
        fx: &mut Effects,
        st: &FlowState,
        addrs: &mut FlowAddrs,
        ctl: &ControlRepr,
        now: Instant,
    ) {
        // Taken whenever it comes while our RSYN is outstanding, whatever
        // came in between: the original stack keeps retransmitting it.
        let Some(Pending { kind: PendingKind::Rsyn { new_local }, acked_by, .. }) = self.pending else {
            // A repeated RSYN-ACK after we moved: our ACK was lost, and the
            // peer retransmits until it comes (one merged with a FIN is
            // acknowledged by the FIN's answer).
            let moved_here = matches!(
                self.last_migration,
                Some(Migration { side: Side::Local, outcome: Outcome::Done, to }) if to.octets() == addrs.local_ip
            );
            if moved_here && !ctl.flags.contains(ControlFlags::FIN) && !before(self.snd_nxt, ctl.ackno) {
                fx.counters.push(Counter::CtlStale);
                fx.sends.push(self.ack(st, addrs));
            }
            return;
        };
        if acked_by != ctl.ackno {
            return;
        }
        self.pending = None;
        let peer = Ipv4Addr::from(addrs.peer_ip);
        fx.sends.push((build(st, new_local, peer, ControlFlags::ACK, self.snd_nxt, self.rcv_nxt), peer));
        addrs.local_ip = new_local.octets();
        fx.moved = Some(*addrs);
        fx.counters.push(Counter::MigrationDone);
        self.last_migration = Some(Migration { side: Side::Local, to: new_local, outcome: Outcome::Done });
        self.after_pending(fx, st, addrs, now);
    }

    /// A FIN that waited for an outstanding control packet goes now.
    fn after_pending(&mut self, fx: &mut Effects, st: &FlowState, addrs: &FlowAddrs, now: Instant) {
        if self.fin_wanted && self.pending.is_none() {
            self.fin_wanted = false;
            self.send_fin(fx, st, addrs, now);
        }
    }

    /// Our FIN has not been sent, nor waits to be: the next control packet
    /// we send is likely that FIN, when our TCP closes.
    fn our_fin_to_come(&self) -> bool {
        self.pending.is_none() && !self.fin_wanted && self.fin_acked_at.is_none()
    }

    fn maybe_done(&mut self, now: Instant) {
        if self.peer_fin && self.fin_acked_at.is_some() && self.free_at.is_none() {
            self.free_at = Some(now + CLOSE_LINGER);
        }
    }

    /// When the next timer fires: the outstanding packet's, or the owed
    /// ACK's.
    pub fn due_at(&self) -> Option<Instant> {
        match (self.pending.as_ref().map(|p| p.next_at), self.ack_owed_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timers: the ACK of the peer's FIN that our FIN did not come to
    /// carry goes alone; the outstanding packet is resent with backoff, or
    /// given up (a migration: the flow stays where it was; a FIN: the flow
    /// expires).
    pub fn on_timer(&mut self, st: &FlowState, addrs: &FlowAddrs, now: Instant) -> Effects {
        let mut fx = Effects::default();
        if self.ack_owed_at.is_some_and(|t| t <= now) {
            self.ack_owed_at = None;
            fx.sends.push(self.ack(st, addrs));
        }
        let Some(p) = &mut self.pending else { return fx };
        if p.next_at > now {
            return fx;
        }
        if let Some((side, to)) = p.kind.migration() {
            if p.tries >= MIGRATION_TRIES {
                self.pending = None;
                let m = Migration { side, to, outcome: Outcome::Failed };
                self.last_migration = Some(m);
                fx.migration_failed = Some(m);
                fx.counters.push(Counter::MigrationFailed);
                self.after_pending(&mut fx, st, addrs, now);
                return fx;
            }
        } else if p.tries >= MAX_TRIES {
            fx.end = Some(End::Expired);
            return fx;
        }
        p.tries += 1;
        p.rto = (p.rto * 2).min(RTO_MAX);
        p.next_at = now + p.rto;
        fx.sends.push((p.datagram.clone(), p.dst));
        fx.counters.push(Counter::CtlRetransmit);
        fx
    }
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
    /// As kept in the pinned `AGENT_CTL` map. `pending_addr` holds the
    /// outstanding migration's address, else the last migration's (a FIN
    /// needs none); `ctl_flag::MIGRATION_*` say how that one ended.
    pub fn record(&self) -> CtlRecord {
        let mut r = CtlRecord { snd_nxt: self.snd_nxt, rcv_nxt: self.rcv_nxt, ..Default::default() };
        if self.fin_wanted {
            r.flags |= ctl_flag::FIN_WANTED;
        }
        if self.peer_fin {
            r.flags |= ctl_flag::PEER_FIN;
        }
        if self.ack_owed_at.is_some() {
            r.flags |= ctl_flag::ACK_OWED;
        }
        if let Some(m) = self.last_migration {
            r.flags |= match m.outcome {
                Outcome::Failed => ctl_flag::MIGRATION_FAILED,
                _ => ctl_flag::MIGRATION_DONE,
            };
            if m.side == Side::Peer {
                r.flags |= ctl_flag::MIGRATION_BY_PEER;
            }
            r.pending_addr = m.to.octets();
        }
        r.fin_acked_at_ns = self.fin_acked_at.map_or(0, to_ns);
        r.free_at_ns = self.free_at.map_or(0, to_ns);
        if let Some(p) = &self.pending {
            let kind = match p.kind {
                PendingKind::Fin => ctl_pending::FIN,
                PendingKind::Rsyn { new_local } => {
                    r.pending_addr = new_local.octets();
                    ctl_pending::RSYN
                }
                PendingKind::RsynAck { new_peer } => {
                    r.pending_addr = new_peer.octets();
                    ctl_pending::RSYN_ACK
                }
            };
            let n = p.datagram.len().min(CtlRecord::MAX_DATAGRAM);
            r.pending = kind;
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

    /// The migration a record shows (for `flows`, which reads the pins).
    pub fn migration_of(r: &CtlRecord) -> Option<Migration> {
        let to = Ipv4Addr::from(r.pending_addr);
        match r.pending {
            ctl_pending::RSYN => return Some(Migration { side: Side::Local, to, outcome: Outcome::Pending }),
            ctl_pending::RSYN_ACK => return Some(Migration { side: Side::Peer, to, outcome: Outcome::Pending }),
            _ => {}
        }
        let outcome = if r.flags & ctl_flag::MIGRATION_FAILED != 0 {
            Outcome::Failed
        } else if r.flags & ctl_flag::MIGRATION_DONE != 0 {
            Outcome::Done
        } else {
            return None;
        };
        let side = if r.flags & ctl_flag::MIGRATION_BY_PEER != 0 { Side::Peer } else { Side::Local };
        Some(Migration { side, to, outcome })
    }

    pub fn from_record(r: &CtlRecord) -> Ctl {
        let at = |ns: u64| (ns != 0).then(|| from_ns(ns));
        let kind = match r.pending {
            ctl_pending::FIN => Some(PendingKind::Fin),
            ctl_pending::RSYN => Some(PendingKind::Rsyn { new_local: Ipv4Addr::from(r.pending_addr) }),
            ctl_pending::RSYN_ACK => Some(PendingKind::RsynAck { new_peer: Ipv4Addr::from(r.pending_addr) }),
            _ => None,
        };
        let len = usize::from(r.datagram_len).min(CtlRecord::MAX_DATAGRAM);
        // The last ended migration; with one pending, the record no longer
        // holds the earlier one's address (it is not worth a field).
        let last_migration = match r.pending {
            ctl_pending::RSYN | ctl_pending::RSYN_ACK => None,
            _ => Ctl::migration_of(r),
        };
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
            // A restarted agent sends it at its first tick.
            ack_owed_at: (r.flags & ctl_flag::ACK_OWED != 0).then(Instant::now),
            free_at: at(r.free_at_ns),
            last_migration,
        }
    }
}

/// A control packet for a flow that closed cleanly and is remembered for
/// TIME_WAIT (`ctl` its last state): a retransmitted FIN (our ACK was
/// lost) is answered again; anything else is for an unknown flow.
pub fn on_control_closed(st: &FlowState, addrs: &FlowAddrs, last: &Ctl, ctl: &ControlRepr) -> Effects {
    let mut fx = Effects::default();
    if ctl.flags.contains(ControlFlags::FIN) && ctl.nonce == st.peer_nonce {
        fx.counters.push(Counter::CtlStale);
        fx.sends.push(last.ack(st, addrs));
    } else {
        fx.counters.push(Counter::CtlDropUnknownFlow);
    }
    fx
}

/// Fixtures: the original Serval stack's captures replayed through the
/// protocol (input packet, exact output, counters, where the flow is).
/// Packets the captures hold are compared byte for byte from the SAL
/// header on (the IP header's ID, TTL and checksum are the sending
/// kernel's); answers the captures cannot hold (they show xlate's old
/// mistakes) are checked in the decoder's words.
#[cfg(test)]
mod fixtures {
    use super::*;
    use xlate_common::flow::{role, state};

    fn capture(name: &str) -> Vec<Vec<u8>> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/serval").join(name);
        let (link, frames) = crate::decode::read_pcap(&path).expect("capture");
        frames.iter().map(|f| link.ipv4(f).expect("IPv4").to_vec()).collect()
    }

    fn control(datagram: &[u8]) -> (Ipv4Addr, ControlRepr) {
        let p = ServalRepr::parse(datagram).expect("a SAL packet");
        (p.ip.src_addr, p.sal.control.expect("a control packet"))
    }

    /// `ours` is `theirs`: addresses, protocol and length in the IP
    /// header, every byte from the SAL header on.
    fn same_packet(ours: &(Vec<u8>, Ipv4Addr), theirs: &[u8]) {
        let (d, dst) = ours;
        assert_eq!(Ipv4Addr::from(<[u8; 4]>::try_from(&d[16..20]).unwrap()), *dst, "sent where it is addressed");
        assert_eq!((d.len(), &d[9..10], &d[12..20]), (theirs.len(), &theirs[9..10], &theirs[12..20]), "IP header");
        assert_eq!(&d[20..], &theirs[20..], "SAL header\n ours:   {}\n theirs: {}", said(d), said(theirs));
    }

    /// A packet as `xlate-user decode` prints it, without the TTL.
    fn said(d: &[u8]) -> String {
        let line = crate::decode::decode_ipv4(d).0;
        let ttl = line.find(" ttl ").expect("ttl");
        let rest = &line[ttl + 5..];
        format!("{}{}", &line[..ttl], &rest[rest.find(' ').unwrap()..])
    }

    #[allow(clippy::too_many_arguments)]
    fn flow(
        role: u8,
        local_flow: u32,
        peer_flow: u32,
        local_verno: u32,
        peer_verno: u32,
        local_nonce: u64,
        peer_nonce: u64,
    ) -> FlowState {
        let tuple = xlate_common::maps::FlowKey::default();
        let mut st = FlowState::ZERO;
        st.start(role, state::ESTABLISHED, local_flow, local_verno, local_nonce.to_be_bytes(), &tuple, 0);
        st.peer_flow = peer_flow;
        st.peer_verno = peer_verno;
        st.peer_nonce = peer_nonce.to_be_bytes();
        st.flags |= flag::PROVEN;
        st
    }

    fn addrs(local: [u8; 4], peer: [u8; 4]) -> FlowAddrs {
        FlowAddrs { local_ip: local, peer_ip: peer }
    }

    fn feed(c: &mut Ctl, st: &FlowState, a: &mut FlowAddrs, pkt: &[u8], now: Instant) -> Effects {
        let (from, ctl) = control(pkt);
        let fx = c.on_control(st, a, from, &ctl, now);
        if let Some(m) = fx.moved {
            *a = m;
        }
        fx
    }

    /// original-migrates-server.pcap: the original stack (the server)
    /// moves from 10.98.0.1 to 10.98.0.11; xlate (the client, flow
    /// 1801969531) follows, then both close from there. Every packet xlate
    /// sent in that capture is what the protocol sends here.
    #[test]
    fn the_peer_migrates_then_closes_as_captured() {
        let cap = capture("original-migrates-server.pcap");
        let st = flow(role::CLIENT, 1801969531, 3, 3585885945, 120871186, 0x536b1779d93d0b7b, 0xda52fdcabd8da2e6);
        let mut a = addrs([10, 98, 0, 2], [10, 98, 0, 1]);
        let mut c = Ctl::new(&st);
        let t0 = Instant::now();

        // 2: RSYN from 10.98.0.11 -> 3: our RSYN-ACK to it; not moved yet.
        let fx = feed(&mut c, &st, &mut a, &cap[1], t0);
        assert_eq!(fx.counters, [Counter::CtlRsynRcvd]);
        assert_eq!(fx.sends.len(), 1);
        same_packet(&fx.sends[0], &cap[2]);
        assert_eq!((fx.moved, fx.end), (None, None));
        let pending = Migration { side: Side::Peer, to: Ipv4Addr::new(10, 98, 0, 11), outcome: Outcome::Pending };
        assert_eq!(c.migration(), Some(pending));

        // 4: its ACK: the flow moves, nothing is sent.
        let fx = feed(&mut c, &st, &mut a, &cap[3], t0);
        assert_eq!(fx.counters, [Counter::CtlAckRcvd, Counter::MigrationDone]);
        assert_eq!(fx.moved, Some(addrs([10, 98, 0, 2], [10, 98, 0, 11])));
        assert!(fx.sends.is_empty());
        assert_eq!(c.migration(), Some(Migration { outcome: Outcome::Done, ..pending }));

        // 5: its FIN -> 6: our ACK, to the new address, once our TCP has
        // not closed within ACK_DELAY (in the capture it closed later).
        let fx = feed(&mut c, &st, &mut a, &cap[4], t0);
        assert_eq!(fx.counters, [Counter::CtlFinRcvd]);
        assert!(fx.sends.is_empty());
        let fx = c.on_timer(&st, &a, t0 + ACK_DELAY);
        assert_eq!(fx.sends.len(), 1);
        same_packet(&fx.sends[0], &cap[5]);

        // Our TCP closes -> 7: our FIN; 8: its ACK: closed, the flow lingers.
        let fx = c.close(&st, &a, t0);
        assert_eq!(fx.sends.len(), 1);
        same_packet(&fx.sends[0], &cap[6]);
        let fx = feed(&mut c, &st, &mut a, &cap[7], t0);
        assert_eq!(fx.counters, [Counter::CtlAckRcvd]);
        assert!(fx.sends.is_empty());
        assert_eq!(c.free_at, Some(t0 + CLOSE_LINGER));
    }

    /// The flow of peer-migrates-rsynack-lost.pcap, xlate (the server,
    /// flow 2755037225) moving from 10.98.0.2 to 10.98.0.3.
    fn migrating_server() -> (FlowState, FlowAddrs, Ctl) {
        let st = flow(role::SERVER, 2755037225, 2, 2029063881, 57885621, 0xa8564be38daab004, 0xfa97720e8621c007);
        let c = Ctl::new(&st);
        (st, addrs([10, 98, 0, 2], [10, 98, 0, 1]), c)
    }

    /// peer-migrates-rsynack-lost.pcap: the original's first three
    /// RSYN-ACKs are lost; it answers our repeated RSYN with a plain ACK to
    /// the old address; its next RSYN-ACK must still move the flow. (In the
    /// capture it did not: xlate's FIN left from the old address and it
    /// took RSYN|ACK|FIN for an RSYN.)
    #[test]
    fn a_migration_completes_after_lost_rsyn_acks_as_the_original_answers() {
        let cap = capture("peer-migrates-rsynack-lost.pcap");
        let (st, mut a, mut c) = migrating_server();
        let t0 = Instant::now();
        let new = Ipv4Addr::new(10, 98, 0, 3);

        // 2: our RSYN from the new address.
        let fx = c.migrate(&st, &a, new, t0).expect("a migration starts");
        assert_eq!(fx.sends.len(), 1);
        same_packet(&fx.sends[0], &cap[1]);
        assert!(c.migrate(&st, &a, new, t0).is_none(), "one migration at a time");
        // 3-5 lost. At 1 s -> 6: the same RSYN again.
        assert_eq!(c.on_timer(&st, &a, t0 + Duration::from_millis(999)), Effects::default());
        let fx = c.on_timer(&st, &a, t0 + RTO_INITIAL);
        assert_eq!(fx.counters, [Counter::CtlRetransmit]);
        same_packet(&fx.sends[0], &cap[5]);
        // 7: the original's plain ACK to the old address: noted, no move.
        let fx = feed(&mut c, &st, &mut a, &cap[6], t0 + RTO_INITIAL);
        assert_eq!((fx.counters.as_slice(), fx.moved, fx.sends.len()), (&[Counter::CtlAckRcvd][..], None, 0));
        assert_eq!(c.migration().map(|m| m.outcome), Some(Outcome::Pending));
        // 8: its next RSYN-ACK: the flow moves; our ACK from the new address.
        let fx = feed(&mut c, &st, &mut a, &cap[7], t0 + RTO_INITIAL);
        assert_eq!(fx.counters, [Counter::CtlRsynRcvd, Counter::MigrationDone, Counter::CtlAckRcvd]);
        assert_eq!(fx.moved, Some(addrs([10, 98, 0, 3], [10, 98, 0, 1])));
        let ack = "10.98.0.3 > 10.98.0.1 SAL flow 2755037225>2 shl 8 proto 6 CONTROL ACK verno 2029063883 \
                   ackno 57885622 nonce a8564be38daab004 | no transport [ok]";
        assert_eq!(fx.sends.iter().map(|s| said(&s.0)).collect::<Vec<_>>(), [ack]);
        assert_eq!(c.migration(), Some(Migration { side: Side::Local, to: new, outcome: Outcome::Done }));
        // 9: a repeated RSYN-ACK (our ACK might be lost): acknowledged again.
        let fx = feed(&mut c, &st, &mut a, &cap[8], t0 + RTO_INITIAL);
        assert_eq!(fx.counters, [Counter::CtlRsynRcvd, Counter::CtlStale, Counter::CtlAckRcvd]);
        assert_eq!(fx.sends.iter().map(|s| said(&s.0)).collect::<Vec<_>>(), [ack]);
        assert_eq!(fx.moved, None);
        // Nothing is pending any more: no timer fires.
        assert_eq!(c.on_timer(&st, &a, t0 + Duration::from_secs(60)), Effects::default());

        // The close, as the original sends it after a migration: our FIN
        // (now from the new address), then its RSYN|ACK|FIN (12), which
        // acknowledges our FIN and carries its own: every flag is taken.
        let fx = c.close(&st, &a, t0 + RTO_INITIAL);
        assert_eq!(
            fx.sends.iter().map(|s| said(&s.0)).collect::<Vec<_>>(),
            ["10.98.0.3 > 10.98.0.1 SAL flow 2755037225>2 shl 8 proto 6 CONTROL FIN verno 2029063883 \
              ackno 57885622 nonce a8564be38daab004 | no transport [ok]"]
        );
        let fx = feed(&mut c, &st, &mut a, &cap[11], t0 + RTO_INITIAL);
        assert_eq!(fx.counters, [Counter::CtlRsynRcvd, Counter::CtlAckRcvd, Counter::CtlFinRcvd]);
        assert_eq!(
            fx.sends.iter().map(|s| said(&s.0)).collect::<Vec<_>>(),
            ["10.98.0.3 > 10.98.0.1 SAL flow 2755037225>2 shl 8 proto 6 CONTROL ACK verno 2029063884 \
              ackno 57885623 nonce a8564be38daab004 | no transport [ok]"]
        );
        assert_eq!((c.peer_fin, c.fin_acked_at.is_some()), (true, true));
        assert_eq!(c.free_at, Some(t0 + RTO_INITIAL + CLOSE_LINGER));
    }

    /// No RSYN-ACK ever comes: the RSYN goes at 0, 1, 3 and 7 s; at 15 s
    /// the migration is given up, counted, and the flow stays.
    #[test]
    fn a_migration_without_answer_is_given_up_at_its_deadline() {
        let (st, a, mut c) = migrating_server();
        let t0 = Instant::now();
        let new = Ipv4Addr::new(10, 98, 0, 3);
        c.migrate(&st, &a, new, t0).expect("a migration starts");
        let mut resent = Vec::new();
        for ms in (0..=16_000).step_by(100) {
            let fx = c.on_timer(&st, &a, t0 + Duration::from_millis(ms));
            if fx.counters == [Counter::CtlRetransmit] {
                resent.push(ms);
            } else if fx != Effects::default() {
                assert_eq!(ms, MIGRATION_DEADLINE.as_millis() as u64, "given up at the deadline");
                assert_eq!(fx.counters, [Counter::MigrationFailed]);
                let failed = Migration { side: Side::Local, to: new, outcome: Outcome::Failed };
                assert_eq!((fx.migration_failed, fx.moved, fx.end, fx.sends.len()), (Some(failed), None, None, 0));
                assert_eq!(c.migration(), Some(failed));
            }
        }
        assert_eq!(resent, [1000, 3000, 7000]);
        assert_eq!(c.migration().map(|m| m.outcome), Some(Outcome::Failed));
        // A new attempt may start.
        assert!(c.migrate(&st, &a, new, t0 + Duration::from_secs(20)).is_some());
    }

    /// A FIN that waited for the migration goes once it is given up.
    #[test]
    fn a_close_during_a_failing_migration_goes_after_it() {
        let (st, a, mut c) = migrating_server();
        let t0 = Instant::now();
        c.migrate(&st, &a, Ipv4Addr::new(10, 98, 0, 3), t0).unwrap();
        assert!(c.close(&st, &a, t0).sends.is_empty(), "the FIN waits");
        let fx = c.on_timer(&st, &a, t0 + Duration::from_secs(1));
        assert_eq!(fx.counters, [Counter::CtlRetransmit]);
        let mut t = t0 + Duration::from_secs(1);
        let fx = loop {
            t += Duration::from_secs(1);
            let fx = c.on_timer(&st, &a, t);
            if fx.migration_failed.is_some() {
                break fx;
            }
        };
        assert_eq!(
            fx.sends.iter().map(|s| said(&s.0)).collect::<Vec<_>>(),
            ["10.98.0.2 > 10.98.0.1 SAL flow 2755037225>2 shl 8 proto 6 CONTROL FIN verno 2029063883 \
              ackno 57885622 nonce a8564be38daab004 | no transport [ok]"],
            "from where the flow stayed"
        );
    }

    /// ACK|FIN in one packet (the original acknowledges our FIN and closes
    /// its side at once): both taken, one ACK back, the flow lingers.
    #[test]
    fn an_ack_merged_with_a_fin_is_taken_whole() {
        let (st, mut a, mut c) = migrating_server();
        let t0 = Instant::now();
        c.close(&st, &a, t0);
        let theirs = build(
            &flow(role::CLIENT, 2, 2755037225, 57885621, 2029063881, 0xfa97720e8621c007, 0xa8564be38daab004),
            Ipv4Addr::new(10, 98, 0, 1),
            Ipv4Addr::new(10, 98, 0, 2),
            ControlFlags::ACK | ControlFlags::FIN,
            57885622,
            2029063883,
        );
        let fx = feed(&mut c, &st, &mut a, &theirs, t0);
        assert_eq!(fx.counters, [Counter::CtlAckRcvd, Counter::CtlFinRcvd]);
        assert_eq!(
            fx.sends.iter().map(|s| said(&s.0)).collect::<Vec<_>>(),
            ["10.98.0.2 > 10.98.0.1 SAL flow 2755037225>2 shl 8 proto 6 CONTROL ACK verno 2029063883 \
              ackno 57885623 nonce a8564be38daab004 | no transport [ok]"]
        );
        assert_eq!(c.free_at, Some(t0 + CLOSE_LINGER));
        // Repeated (our ACK lost): answered again, counted stale.
        let fx = feed(&mut c, &st, &mut a, &theirs, t0);
        assert_eq!(fx.counters, [Counter::CtlStale]);
        assert_eq!(fx.sends.len(), 1);
    }

    /// The peer's FIN before our TCP closes: no ACK at once; our FIN, a
    /// moment later, carries it (one FIN|ACK), and the peer, answering
    /// with its ACK, has both. Three control packets instead of four.
    #[test]
    fn the_ack_of_the_peers_fin_goes_with_our_fin() {
        let cap = capture("original-migrates-server.pcap");
        let st = flow(role::CLIENT, 1801969531, 3, 3585885945, 120871186, 0x536b1779d93d0b7b, 0xda52fdcabd8da2e6);
        let mut a = addrs([10, 98, 0, 2], [10, 98, 0, 11]);
        let mut c = Ctl::new(&st);
        let t0 = Instant::now();
        // Its FIN (5 in the capture, which came after its RSYN).
        c.rcv_nxt = control(&cap[4]).1.verno;
        let fx = feed(&mut c, &st, &mut a, &cap[4], t0);
        assert_eq!(fx.counters, [Counter::CtlFinRcvd]);
        assert!(fx.sends.is_empty(), "the ACK waits for our FIN");
        assert_eq!(c.due_at(), Some(t0 + ACK_DELAY));
        // Nothing before its time.
        assert!(c.on_timer(&st, &a, t0 + ACK_DELAY / 2).sends.is_empty());
        // Our TCP closes: FIN|ACK, acknowledging its FIN.
        let fx = c.close(&st, &a, t0 + ACK_DELAY / 2);
        let ackno = control(&cap[4]).1.verno + 1;
        assert_eq!(
            fx.sends.iter().map(|s| said(&s.0)).collect::<Vec<_>>(),
            [format!(
                "10.98.0.2 > 10.98.0.11 SAL flow 1801969531>3 shl 8 proto 6 CONTROL ACK|FIN verno 3585885946 \
                 ackno {ackno} nonce 536b1779d93d0b7b | no transport [ok]"
            )]
        );
        assert_eq!(c.ack_owed_at, None);
        // Retransmitted as it was, ACK flag and all.
        let again = c.on_timer(&st, &a, t0 + RTO_INITIAL + ACK_DELAY);
        assert_eq!(again.sends[0].0, fx.sends[0].0);
        // The other side, as our own agent is: its FIN outstanding, it
        // takes both flags, sends its ACK, and is done.
        let peer_st = flow(role::SERVER, 3, 1801969531, 120871186, 3585885945, 0xda52fdcabd8da2e6, 0x536b1779d93d0b7b);
        let mut pa = addrs([10, 98, 0, 11], [10, 98, 0, 2]);
        let mut peer = Ctl::new(&peer_st);
        peer.snd_nxt = ackno - 1;
        let t1 = t0 + ACK_DELAY;
        peer.close(&peer_st, &pa, t1);
        let fx = feed(&mut peer, &peer_st, &mut pa, &fx.sends[0].0, t1);
        assert_eq!(fx.counters, [Counter::CtlAckRcvd, Counter::CtlFinRcvd]);
        assert_eq!(fx.sends.len(), 1, "one ACK back");
        assert_eq!(control(&fx.sends[0].0).1.flags, ControlFlags::ACK);
        assert_eq!(peer.free_at, Some(t1 + CLOSE_LINGER));
        // Which ends ours.
        let fx = feed(&mut c, &st, &mut a, &fx.sends[0].0, t1);
        assert_eq!((fx.counters.as_slice(), fx.sends.len()), (&[Counter::CtlAckRcvd][..], 0));
        assert_eq!(c.free_at, Some(t1 + CLOSE_LINGER));
    }

    /// Our TCP stays open (a half-close): the ACK goes alone once
    /// [`ACK_DELAY`] has passed, exactly the one the capture shows, and our
    /// FIN later is a plain FIN.
    #[test]
    fn the_ack_goes_alone_when_our_fin_does_not_come() {
        let cap = capture("original-migrates-server.pcap");
        let st = flow(role::CLIENT, 1801969531, 3, 3585885945, 120871186, 0x536b1779d93d0b7b, 0xda52fdcabd8da2e6);
        let mut a = addrs([10, 98, 0, 2], [10, 98, 0, 11]);
        let mut c = Ctl::new(&st);
        let t0 = Instant::now();
        c.rcv_nxt = control(&cap[4]).1.verno;
        assert!(feed(&mut c, &st, &mut a, &cap[4], t0).sends.is_empty());
        let fx = c.on_timer(&st, &a, t0 + ACK_DELAY);
        assert_eq!(fx.sends.len(), 1);
        same_packet(&fx.sends[0], &cap[5]);
        assert_eq!((c.ack_owed_at, c.due_at()), (None, None));
        let fx = c.close(&st, &a, t0 + Duration::from_secs(2));
        same_packet(&fx.sends[0], &cap[6]);
    }

    /// Its FIN retransmitted while our ACK is owed: answered at once (it
    /// did not wait for us), and owed no more.
    #[test]
    fn a_retransmitted_fin_is_answered_at_once() {
        let cap = capture("original-migrates-server.pcap");
        let st = flow(role::CLIENT, 1801969531, 3, 3585885945, 120871186, 0x536b1779d93d0b7b, 0xda52fdcabd8da2e6);
        let mut a = addrs([10, 98, 0, 2], [10, 98, 0, 11]);
        let mut c = Ctl::new(&st);
        let t0 = Instant::now();
        c.rcv_nxt = control(&cap[4]).1.verno;
        feed(&mut c, &st, &mut a, &cap[4], t0);
        let fx = feed(&mut c, &st, &mut a, &cap[4], t0 + ACK_DELAY / 2);
        assert_eq!(fx.counters, [Counter::CtlStale]);
        same_packet(&fx.sends[0], &cap[5]);
        assert_eq!(c.ack_owed_at, None);
        let fx = c.close(&st, &a, t0 + ACK_DELAY);
        same_packet(&fx.sends[0], &cap[6]);
    }

    /// active-reset.pcap: the original's RST|ACK, with its nonce, ends the
    /// flow and resets the local TCP; the same packet with another nonce
    /// from elsewhere is not believed.
    #[test]
    fn a_reset_as_the_original_sends_it_ends_the_flow() {
        let cap = capture("active-reset.pcap");
        let (_, ctl) = control(&cap[14]);
        assert_eq!(ctl.flags, ControlFlags::RST | ControlFlags::ACK);
        let st = flow(role::CLIENT, 2, 3, 1024506260, 3716356245, 0x65674584cd09b0f9, 0x01159cd82176ad14);
        let mut a = addrs([10, 0, 1, 1], [10, 0, 2, 2]);
        let mut c = Ctl::new(&st);
        let fx = feed(&mut c, &st, &mut a, &cap[14], Instant::now());
        assert_eq!(fx.counters, [Counter::CtlRstRcvd]);
        assert_eq!(fx.end, Some(End::Reset { reset_tcp: true }));
        let mut repr = ServalRepr::parse(&cap[14]).unwrap();
        repr.ip.src_addr = Ipv4Addr::new(10, 0, 9, 9);
        repr.sal.control.as_mut().unwrap().nonce[0] ^= 0xff;
        let mut forged = vec![0; repr.buffer_len()];
        repr.emit(&mut forged).unwrap();
        let fx = feed(&mut c, &st, &mut a, &forged, Instant::now());
        assert_eq!((fx.counters.as_slice(), fx.end), (&[Counter::CtlDropUnbelievedRst][..], None));
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
            ack_owed_at: None,
            free_at: None,
            last_migration: None,
        };
        let closing = Ctl {
            snd_nxt: 1,
            rcv_nxt: 2,
            pending: None,
            fin_wanted: false,
            fin_acked_at: Some(now - Duration::from_secs(3)),
            peer_fin: true,
            ack_owed_at: Some(now + ACK_DELAY),
            free_at: Some(now + Duration::from_millis(400)),
            last_migration: Some(Migration {
                side: Side::Peer,
                to: Ipv4Addr::new(10, 0, 0, 7),
                outcome: Outcome::Failed,
            }),
        };
        for c in [migrating, closing] {
            let back = Ctl::from_record(&c.record());
            assert_eq!(
                (back.snd_nxt, back.rcv_nxt, back.fin_wanted, back.peer_fin, back.migration()),
                (c.snd_nxt, c.rcv_nxt, c.fin_wanted, c.peer_fin, c.migration())
            );
            // An owed ACK is owed at once: a restarted agent sends it at
            // its first tick.
            assert_eq!(back.ack_owed_at.is_some(), c.ack_owed_at.is_some());
            assert!(back.ack_owed_at.is_none_or(|t| t <= Instant::now()));
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
