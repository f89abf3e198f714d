//! Per-flow state of the translation core, shared by the kernel programs
//! (which create flows and translate packets) and the agent (which runs
//! the SAL control plane: FIN, RST, RSYN, retransmission, expiry).
//!
//! Ownership rule, to keep kernel and agent from overwriting each other's
//! writes: the kernel writes [`FlowState`] (the agent only reads it and
//! deletes it), the agent writes the [`FlowAddrs`] in a flow's
//! [`TupleEntry`] after creation (migration).

/// Names of the flow engine's maps (also their pin names); the `HOST_*`
/// ones are host mode's own.
pub mod names {
    pub const CONFIG: &str = "ENGINE_CONFIG";
    pub const SERVE: &str = "HOST_SERVE";
    pub const CONNECT: &str = "HOST_CONNECT";
    pub const ROUTES: &str = "HOST_ROUTES";
    pub const FLOWS: &str = "FLOWS";
    pub const TUPLES: &str = "FLOW_TUPLES";
    pub const PEERS: &str = "FLOW_PEERS";
    /// Flow ID -> SAL addresses of a flow whose 4-tuple a new connection
    /// took over (`event::REOPENED`): its tuple entry, which held them,
    /// names the new flow now. Until the agent frees the flow.
    pub const REOPENED: &str = "FLOW_REOPENED";
    /// Per-CPU counters the server side rotates its local ports with.
    pub const ROTATION: &str = "PORT_ROTATION";
    pub const EVENTS: &str = "FLOW_EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    /// The agent's control-plane state per flow ([`super::CtlRecord`]):
    /// kept in the kernel so that a restarted agent carries on.
    pub const AGENT_CTL: &str = "AGENT_CTL";
    /// How many flows exist, and the fast path's share ([`super::flow_count`]).
    pub const FLOW_COUNT: &str = "FLOW_COUNT";
    /// How many more flows the kernel may create ([`super::room`]).
    pub const ROOM: &str = "FLOW_ROOM";
}

/// Slots of the `FLOW_COUNT` array. The kernel creates flows and the agent
/// frees them, so each side counts its own (monotonic) and the number of
/// flows is the difference: no atomic operation spans user space.
pub mod flow_count {
    /// Flows the kernel created (atomic adds).
    pub const CREATED: u32 = 0;
    /// Flows the agent freed.
    pub const FREED: u32 = 1;
    /// The gateway declines new client flows (to the relay) once this many
    /// flows exist (0: no limit but the table's size). The agent keeps the
    /// rest of the table for the relay's own SAL connections: it compares
    /// the count with this and gives the kernel the difference as its
    /// [`super::room::FAST_PATH`].
    pub const FAST_PATH_LIMIT: u32 = 2;
    pub const SLOTS: u32 = 3;
}

/// The agent's control-plane state of one flow, as it survives a restart
/// of the agent (in the pinned `AGENT_CTL` map; the kernel programs never
/// touch it). Times are CLOCK_MONOTONIC nanoseconds (0: unset), the clock
/// of `bpf_ktime_get_ns`, which does not restart with the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct CtlRecord {
    /// Next control verno we send, and the next we expect.
    pub snd_nxt: u32,
    pub rcv_nxt: u32,
    /// The outstanding control packet (`ctl_pending::*`), if any: the
    /// ackno that acknowledges it, where it goes, the address it moves
    /// the flow to (RSYN, RSYN-ACK), and its retransmission state.
    pub pending: u8,
    /// `ctl_flag::*` bits.
    pub flags: u8,
    pub datagram_len: u16,
    pub acked_by: u32,
    pub pending_dst: [u8; 4],
    pub pending_addr: [u8; 4],
    pub tries: u32,
    pub rto_ms: u32,
    pub next_at_ns: u64,
    pub fin_acked_at_ns: u64,
    pub free_at_ns: u64,
    /// The outstanding packet itself (IPv4 + SAL base + CONTROL: 52 bytes).
    pub datagram: [u8; CtlRecord::MAX_DATAGRAM],
}

impl CtlRecord {
    pub const MAX_DATAGRAM: usize = 64;
}

impl Default for CtlRecord {
    fn default() -> Self {
        CtlRecord {
            snd_nxt: 0,
            rcv_nxt: 0,
            pending: ctl_pending::NONE,
            flags: 0,
            datagram_len: 0,
            acked_by: 0,
            pending_dst: [0; 4],
            pending_addr: [0; 4],
            tries: 0,
            rto_ms: 0,
            next_at_ns: 0,
            fin_acked_at_ns: 0,
            free_at_ns: 0,
            datagram: [0; CtlRecord::MAX_DATAGRAM],
        }
    }
}

/// [`CtlRecord::pending`] values.
pub mod ctl_pending {
    pub const NONE: u8 = 0;
    pub const FIN: u8 = 1;
    pub const RSYN: u8 = 2;
    pub const RSYN_ACK: u8 = 3;
}

/// [`CtlRecord::flags`] bits.
pub mod ctl_flag {
    /// Our FIN waits for the outstanding packet.
    pub const FIN_WANTED: u8 = 1;
    /// The peer's FIN arrived.
    pub const PEER_FIN: u8 = 2;
    /// The flow's last migration completed (to `pending_addr` when no
    /// migration is pending).
    pub const MIGRATION_DONE: u8 = 4;
    /// The flow's last migration was given up.
    pub const MIGRATION_FAILED: u8 = 8;
    /// That migration moved the peer (it sent the RSYN), not this end.
    pub const MIGRATION_BY_PEER: u8 = 16;
    /// The peer's FIN waits for our ACK (it goes with our FIN, or alone).
    pub const ACK_OWED: u8 = 32;
}

pub const MAX_FLOWS: u32 = 65536;
pub const MAX_ROUTE_TARGETS: usize = 8;

/// The flow engine's settings, written by the agent before attaching
/// (either mode; the fields a mode does not use stay zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct EngineConfig {
    /// Primary IPv4 address: TCP identity and SAL source of new flows.
    pub addr: [u8; 4],
    /// Interface broadcast address: where SYNs without a route go.
    pub broadcast: [u8; 4],
    pub mac: [u8; 6],
    /// Largest MSS that fits the MTU with IPv4 + SAL + TCP headers.
    pub max_mss: u16,
    /// `config_flag::*` bits.
    pub flags: u32,
    /// Host mode: the helper device Serval segments are sent through to be
    /// segmented and checksummed in software (0: translate in place).
    pub segmenter_ifindex: u32,
    /// Host mode: the interface translated segments leave by.
    pub out_ifindex: u32,
    /// The kernel's clock ([`tick_clock`]): the length of the kernel's
    /// tick in ns, as the agent measured it at start; 0 before it did
    /// (the kernel then reads the coarse clock through its helper).
    pub tick_ns: u32,
    /// CLOCK_MONOTONIC at jiffy 0, so that `jiffies * tick_ns +
    /// clock_base` is CLOCK_MONOTONIC at the last tick (wrapping).
    pub clock_base: u64,
    /// Host mode receiving at TC: the device translated segments are sent
    /// out of so that they come back in through GRO (the segmenter's far
    /// end; its near end has GRO on and this interface's MAC); 0: they go
    /// up the stack where they are.
    pub coalescer_ifindex: u32,
    pub _reserved: u32,
}

/// The flow engine's clock: CLOCK_MONOTONIC at the last tick, which is
/// what `bpf_ktime_get_coarse_ns` returns, computed from `jiffies`
/// instead, which the verifier turns into one load (`bpf_jiffies64` is
/// inlined on 64-bit JITs, Linux 5.5); the coarse clock's helper call cost
/// every translated segment 4-6 ns (`bench-xdp`, docs/performance.md).
/// Jiffies count the same ticks: the kernel advances them by the
/// monotonic clock's time since the last tick, NTP's corrections
/// included, so the two stay one affine map apart, which the agent
/// measures at start with `xlate_clock` (a program that reads both in one
/// run) and writes into `EngineConfig`. Every use of the clock is coarse
/// (idle expiry, the half-open timeout, a 400 ms gap between SYNs), and
/// the agent reads CLOCK_MONOTONIC itself to age flows.
pub mod tick_clock {
    /// Tick lengths of the kernel's choices of HZ: 1000, 300, 250, 100.
    pub const TICKS_NS: [u32; 4] = [1_000_000, 3_333_333, 4_000_000, 10_000_000];

    /// The tick length that readings `a` and `b` (jiffies, coarse ns),
    /// taken [`APART_MS`] or more apart, show: the one of [`TICKS_NS`]
    /// that fits best, if it fits to within a tick (and 1 %). A reading's
    /// coarse time may lag its jiffies by a tick (the kernel advances
    /// jiffies first, then the clock), so the elapsed time is only known to
    /// a tick; over 60 ms that still tells each HZ from the next (250 from
    /// 300: 15 ticks of 4 ms against 18 of 3.3).
    pub fn tick_ns(a: (u64, u64), b: (u64, u64)) -> Option<u32> {
        let jiffies = b.0.checked_sub(a.0).filter(|j| *j > 0)?;
        let elapsed = b.1.checked_sub(a.1)?;
        TICKS_NS
            .into_iter()
            .map(|t| (t, (jiffies * u64::from(t)).abs_diff(elapsed)))
            .filter(|(t, off)| *off <= u64::from(*t) + elapsed / 100)
            .min_by_key(|(_, off)| *off)
            .map(|(t, _)| t)
    }

    /// How far apart the readings of [`tick_ns`] are taken, at least.
    pub const APART_MS: u64 = 100;

    /// CLOCK_MONOTONIC at jiffy 0 (wrapping), from a reading `(jiffies,
    /// coarse ns)` taken in one run. (Of several readings, the largest is
    /// the one whose clock did not lag; see [`tick_ns`].)
    pub fn base(reading: (u64, u64), tick_ns: u32) -> u64 {
        reading.1.wrapping_sub(reading.0.wrapping_mul(u64::from(tick_ns)))
    }

    /// CLOCK_MONOTONIC at the tick `jiffies` counts.
    #[inline(always)]
    pub fn now_ns(jiffies: u64, tick_ns: u32, base: u64) -> u64 {
        jiffies.wrapping_mul(u64::from(tick_ns)).wrapping_add(base)
    }
}

/// `FLOWS` is an array of slots, not a hash: a flow lives in the slot its
/// ID names ([`index`](flow_slot::index)), and the slot says which ID holds
/// it (`FlowState::local_flow`). A SAL packet finds its flow with one index
/// and one comparison of all 32 bits, a new flow costs one table insert
/// (its tuple's), and the agent reads the whole table through a shared
/// mapping (`BPF_F_MMAPABLE`) instead of two system calls per flow.
///
/// **Where a new flow goes.** Each CPU takes slots in order from where its
/// last flow went, trying [`PROBES`](flow_slot::PROBES) in a row, and jumps
/// to a random slot when they are all taken (a run of long-lived flows),
/// [`ROUNDS`](flow_slot::ROUNDS) times at most. In order, because a slot at
/// a random place in a table of megabytes costs a new flow a cache miss
/// and a TLB miss (more than a hash insert: 850 against 450 ns per SYN
/// here), where the next slot in line is in a page and a cache line the
/// last flow already touched. There are twice as many slots as flows may
/// live (`max_flows`, which the tuple table still enforces), so a table at
/// its limit is half full.
///
/// **What an ID gives away.** Slots in order must not make IDs
/// predictable (a data packet is accepted by its flow ID): an ID's bits
/// above the mask are drawn at random per flow, and its low bits are the
/// slot masked with a keyed hash of those random bits
/// ([`id_for`](flow_slot::id_for)). Without the key, which the agent draws
/// once per table, one observed ID tells nothing of its neighbours'. The
/// hash is not a cipher: it keeps an observer from reading slot order out
/// of IDs, at 3 ns per SAL packet, where a real pseudo-random function
/// (SipHash) would cost 15-20.
///
/// **Slot states.** A slot's `local_flow` is [`FREE`](flow_slot::FREE), a
/// flow's ID, or [`CLAIMED`](flow_slot::CLAIMED) while the kernel writes a
/// new flow into it (claimed by compare-and-exchange from `FREE`, published
/// by an exchange to the ID once the rest is written, so that no reader
/// ever takes a half-written flow for a live one). Freeing is a compare-
/// and-exchange from the ID back to `FREE`. Slot [`HEADER`](flow_slot::HEADER)
/// is the table's own ([`Header`](flow_slot::Header)): claimed for good,
/// holding the mask and the key, so that they live and are pinned with
/// the table and a restart that adopts it keeps its IDs' meaning.
pub mod flow_slot {
    use super::FlowState;

    pub const FREE: u32 = 0;
    pub const CLAIMED: u32 = u32::MAX;

    /// Whether `id` can name a flow (neither slot marker).
    pub const fn is_id(id: u32) -> bool {
        id != FREE && id != CLAIMED
    }

    /// How many slots in a row a new flow tries before it jumps.
    pub const PROBES: u32 = 16;
    /// How many runs of [`PROBES`] a new flow tries (the first from where
    /// its CPU left off, the others from random slots) before the table
    /// declines it.
    pub const ROUNDS: u32 = 3;

    /// The slot that holds the table's [`Header`], never a flow.
    pub const HEADER: u32 = 0;

    /// How many slots a table for `max_flows` flows has: twice as many,
    /// rounded up to a power of two, so that a slot is a mask away from an
    /// ID.
    pub const fn slots(max_flows: u32) -> u32 {
        (max_flows.saturating_mul(2)).next_power_of_two()
    }

    /// The table's own settings, in its [`HEADER`] slot.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Header {
        /// Slots minus one (their count is a power of two).
        pub mask: u32,
        /// What scrambles slots into IDs ([`id_for`]).
        pub key: u64,
    }

    impl Header {
        /// The header slot's contents: claimed (no flow, never taken),
        /// the mask in `peer_flow`, the key in `local_nonce`.
        pub const fn to_slot(self) -> FlowState {
            let mut st = FlowState::ZERO;
            st.local_flow = CLAIMED;
            st.peer_flow = self.mask;
            st.local_nonce = self.key.to_le_bytes();
            st
        }

        /// The header a slot holds; `None` before the agent sealed it.
        pub const fn of_slot(st: &FlowState) -> Option<Header> {
            if st.local_flow != CLAIMED {
                return None;
            }
            Some(Header { mask: st.peer_flow, key: u64::from_le_bytes(st.local_nonce) })
        }

        /// The slot `id` names: its low bits, unscrambled.
        #[inline(always)]
        pub const fn index(&self, id: u32) -> u32 {
            index(id, self.mask, self.key)
        }
    }

    /// The slot `id` names: its low bits, unmasked by the keyed hash of
    /// its high bits.
    #[inline(always)]
    pub const fn index(id: u32, mask: u32, key: u64) -> u32 {
        (id ^ scramble(id & !mask, key)) & mask
    }

    /// The ID that names `slot`, with `draw`'s bits above the mask.
    #[inline(always)]
    pub const fn id_for(slot: u32, draw: u32, mask: u32, key: u64) -> u32 {
        let high = draw & !mask;
        high | ((slot ^ scramble(high, key)) & mask)
    }

    /// `high` mixed under `key`: MurmurHash3's 32-bit finaliser twice,
    /// each round keyed with one half (every output bit depends on every
    /// input bit).
    #[inline(always)]
    const fn scramble(high: u32, key: u64) -> u32 {
        fmix32(fmix32(high ^ key as u32) ^ (key >> 32) as u32)
    }

    #[inline(always)]
    const fn fmix32(mut h: u32) -> u32 {
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

/// Bits of [`EngineConfig::flags`].
pub mod config_flag {
    /// The gateway sends rewritten frames out itself (FIB lookup +
    /// XDP_REDIRECT) instead of handing them to the kernel.
    pub const XDP_REDIRECT: u32 = 1;
    /// The kernel programs log every frame they handle (aya-log) to the
    /// agent, which prints the lines: `xlate-user kernel-log on`. Off by
    /// default: a line per packet is for debugging, not for production.
    pub const KERNEL_LOG: u32 = 2;
    // (4 and 8 were the SYN budget's flags, now `room`.)
    /// A local SYN to a `HOST_CONNECT` address goes, as a SAL SYN, to the
    /// TCP destination itself (the gateway's relay connects to the
    /// instance it chose), not along a service route.
    pub const CONNECT_TO_TCP_DESTINATION: u32 = 16;
}

/// Slots of the `FLOW_ROOM` array: how many more flows of a kind the
/// kernel may create before the agent looks again. The agent counts the
/// flows and rewrites both every tick (100 ms) and before it attaches;
/// the kernel takes one per flow (an atomic subtraction), so that a limit
/// holds at packet speed, not at the agent's, while a SYN costs no sum
/// over CPUs. Flows freed meanwhile give their room back at the next tick.
pub mod room {
    /// Under the half-open budget (`SynBudget::budget`): every SYN that
    /// starts a half-open flow takes one; at 0 a SYN is admitted only as
    /// the retransmission of one declined a moment ago, which a spoofed
    /// source does not send.
    pub const BUDGET: u32 = 0;
    /// Under the half-open hard limit (`SynBudget::hard`): every SYN that
    /// starts a half-open flow takes one; at 0 all are declined.
    pub const HALF_OPEN: u32 = 1;
    /// The gateway's fast path under its share of the table
    /// (`flow_count::FAST_PATH_LIMIT`): at 0 new legacy clients go to the
    /// kernel, whose socket is the relay's.
    pub const FAST_PATH: u32 = 2;
    pub const SLOTS: u32 = 3;
    /// No limit.
    pub const UNLIMITED: i64 = i64::MAX / 2;
}

/// How many half-open flows a datapath keeps before it admits only
/// retransmitted SYNs, and the hard limit. A flow is half-open from its
/// SYN until the other end proves it is there: at the gateway the legacy
/// client acknowledges the instance's SYN-ACK, at a host-mode server the
/// client's SAL ACK carries our nonce. Half-open flows are expired after
/// [`SynBudget::TIMEOUT_S`] seconds. An instance's budget is larger than a
/// gateway's hard limit, so that a gateway under a flood never makes its
/// instances decline (and look dead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynBudget {
    pub budget: u64,
    pub hard: u64,
}

impl SynBudget {
    pub const GATEWAY: SynBudget = SynBudget { budget: 8192, hard: 16384 };
    pub const HOST: SynBudget = SynBudget { budget: 20000, hard: 32768 };
    /// Seconds a flow may stay half-open.
    pub const TIMEOUT_S: u64 = 8;
    /// A SYN counts as retransmitted when it comes at least this long
    /// after the declined one (clients wait a second or more).
    pub const RETRANSMIT_GAP_NS: u64 = 400_000_000;
}

/// Where a kernel log line comes from (see [`config_flag::KERNEL_LOG`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::FromRepr, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
#[repr(u8)]
pub enum Hook {
    /// The translator (`xlate_gw`, XDP).
    Xdp = 1,
    /// Host mode's egress (`xlate_host_egress`, TC).
    HostEgress,
    /// Host mode's segmenter (`xlate_host_segmented`, TC).
    HostSegmenter,
    /// Host mode's ingress (`xlate_host_ingress`, TC).
    HostIngress,
    /// Host mode's receive before GRO (`xlate_host_receive`, XDP).
    HostReceive,
}

/// What a kernel log line says happened to the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::FromRepr, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
#[repr(u8)]
pub enum Logged {
    Translated = 1,
    Passed,
    Dropped,
}

/// Which end of the SAL handshake this host plays for a flow.
pub mod role {
    pub const CLIENT: u8 = 1;
    pub const SERVER: u8 = 2;
}

/// Where a flow is in the handshake.
pub mod state {
    /// Client: SYN sent, waiting for SYN-ACK.
    pub const SYN_SENT: u8 = 1;
    /// Server: SYN received and delivered, waiting for the third ACK.
    pub const SYN_RCVD: u8 = 2;
    /// Client: SYN-ACK received; until the server proves it knows the flow
    /// (serval-wire §5.4), pure ACKs and retransmissions go in the
    /// CONTROL+SERVICE ACK form, first transmissions of data plain (as the
    /// original stack sends them).
    pub const ACK_PENDING: u8 = 3;
    pub const ESTABLISHED: u8 = 4;

    pub fn name(s: u8) -> &'static str {
        match s {
            SYN_SENT => "SYN_SENT",
            SYN_RCVD => "SYN_RCVD",
            ACK_PENDING => "ACK_PENDING",
            ESTABLISHED => "ESTABLISHED",
            _ => "?",
        }
    }
}

/// Bits of [`FlowState::flags`].
pub mod flag {
    /// The local TCP sent its FIN; `local_fin_ack` is valid.
    pub const LOCAL_FIN: u8 = 0x01;
    /// The peer acknowledged the local FIN; the agent was told.
    pub const LOCAL_FIN_ACKED: u8 = 0x02;
    pub const HAS_PEER_MAC: u8 = 0x04;
    /// The local TCP sent a RST; the agent was told.
    pub const LOCAL_RST: u8 = 0x08;
    /// The peer's TCP sent a RST; the agent was told.
    pub const PEER_RST: u8 = 0x10;
    /// The other end proved it is there (see `SynBudget`): no longer
    /// half-open.
    pub const PROVEN: u8 = 0x20;
    /// The peer's TCP sent its FIN (inside SAL). With `LOCAL_FIN_ACKED`,
    /// the TCP connection is over: a new SYN on its 4-tuple opens a new
    /// flow (`translate::reopens`).
    pub const PEER_FIN: u8 = 0x40;
}

/// A flow as the kernel keeps it. Addresses and ports in network order.
/// Its service ID is not kept: only a client's SYN and third ACK carry it,
/// and those look it up in the configuration by the TCP destination
/// (the 32 bytes would be a quarter of every flow's state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct FlowState {
    pub local_nonce: [u8; 8],
    pub peer_nonce: [u8; 8],
    pub local_flow: u32,
    pub peer_flow: u32,
    /// Verno of our SYN (the SAL sequence space starts here).
    pub local_verno: u32,
    /// Verno of the peer's SYN or SYN-ACK.
    pub peer_verno: u32,
    /// The local TCP's view: its own address/port and the peer's.
    pub tcp_local_addr: [u8; 4],
    pub tcp_peer_addr: [u8; 4],
    pub tcp_local_port: [u8; 2],
    pub tcp_peer_port: [u8; 2],
    pub role: u8,
    pub state: u8,
    pub flags: u8,
    pub _pad: u8,
    pub peer_mac: [u8; 6],
    pub _pad2: [u8; 2],
    /// TCP ack number that acknowledges the local FIN.
    pub local_fin_ack: u32,
    /// Next TCP sequence number expected from the peer (for injecting a
    /// RST the local socket accepts when the peer resets the flow).
    pub peer_next_seq: u32,
    /// Highest sequence number the local TCP has sent (end of its data):
    /// tells first transmissions from retransmissions.
    pub snd_max: u32,
    /// When the flow was created and when it last carried a segment, in
    /// [`flow_clock`] ticks.
    pub created: u32,
    pub last_seen: u32,
}

impl FlowState {
    /// Every field zero (no flow).
    // SAFETY: integers and byte arrays only: all-zero is a valid value.
    pub const ZERO: FlowState = unsafe { core::mem::zeroed() };

    /// Makes a zeroed state (`ZERO`) a new flow as one side knows it before
    /// hearing from the peer: its own flow ID, initial verno and nonce, and
    /// the local TCP's 4-tuple (`tuple.saddr`/`sport` local,
    /// `daddr`/`dport` the peer's); only the fields that do not start at
    /// zero are written. (A struct literal would do, but in the BPF build
    /// its zero fields become a byte-at-a-time `memset`: the kernel zeroes
    /// a state in words first.)
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        role: u8,
        state: u8,
        local_flow: u32,
        local_verno: u32,
        local_nonce: [u8; 8],
        tuple: &crate::maps::FlowKey,
        now_ns: u64,
    ) {
        self.local_nonce = local_nonce;
        self.local_flow = local_flow;
        self.local_verno = local_verno;
        self.tcp_local_addr = tuple.saddr;
        self.tcp_peer_addr = tuple.daddr;
        self.tcp_local_port = tuple.sport;
        self.tcp_peer_port = tuple.dport;
        self.role = role;
        self.state = state;
        self.created = flow_clock::ticks(now_ns);
        self.last_seen = self.created;
    }
}

impl FlowState {
    /// The local TCP's 4-tuple (its `FLOW_TUPLES` key).
    pub fn tuple(&self) -> crate::maps::FlowKey {
        crate::maps::FlowKey {
            saddr: self.tcp_local_addr,
            daddr: self.tcp_peer_addr,
            sport: self.tcp_local_port,
            dport: self.tcp_peer_port,
        }
    }
}

/// The flows' clock: CLOCK_MONOTONIC (the kernel's coarse reading) in
/// ticks of 2^20 ns (1.05 ms), 32 bits, so that a flow keeps both of its
/// times in 8 bytes. It wraps every 52 days; an age is a wrapping
/// difference, right for any age under 26 days (idle flows expire long
/// before).
pub mod flow_clock {
    pub const SHIFT: u32 = 20;

    #[inline(always)]
    pub fn ticks(ns: u64) -> u32 {
        (ns >> SHIFT) as u32
    }

    /// Nanoseconds from tick `then` to `now_ns` (0 if `then` is ahead: the
    /// kernel's coarse clock lags the agent's, never leads it, but a
    /// reading from a moment ago must not become 52 days).
    pub fn age_ns(now_ns: u64, then: u32) -> u64 {
        let d = ticks(now_ns).wrapping_sub(then);
        if d > u32::MAX / 2 {
            0
        } else {
            u64::from(d) << SHIFT
        }
    }
}

/// What a TCP 4-tuple leads to (the `FLOW_TUPLES` value): its flow, the
/// flow's slot in `FLOWS`, and the SAL addresses the flow's packets go
/// between. Together, so that a TCP segment costs one lookup for all, and
/// a new flow one insert. The slot spares every segment the keyed hash
/// that finds an ID's slot (`flow_slot::index`, two rounds of
/// multiplications: 5-6 ns of the segment's translation in `bench-xdp`);
/// the flow's ID is checked there, as a lookup by ID checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct TupleEntry {
    pub flow: u32,
    /// `flow`'s slot in `FLOWS` (`flow_slot::index`).
    pub slot: u32,
    pub addrs: FlowAddrs,
}

/// The current SAL-side addresses of a flow (migration changes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct FlowAddrs {
    pub local_ip: [u8; 4],
    pub peer_ip: [u8; 4],
}

/// (peer IP, peer flow ID): recognises a retransmitted SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct PeerKey {
    pub peer_ip: [u8; 4],
    pub peer_flow: u32,
}

/// Local TCP port that serves a service ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct ServeEntry {
    /// Network order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// Instances a service prefix resolves to (value of the LPM routes map;
/// the key is the prefix length plus the 32-byte service ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct RouteTargets {
    pub addrs: [[u8; 4]; MAX_ROUTE_TARGETS],
    pub count: u32,
}

/// What the kernel asks of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Event {
    pub kind: u32,
    pub flow: u32,
}

pub mod event {
    pub const NEW_FLOW: u32 = 1;
    /// The peer acknowledged the local TCP FIN: send a SAL FIN.
    pub const LOCAL_FIN_ACKED: u32 = 2;
    /// The local TCP reset the connection: send a SAL RST, free the flow.
    pub const LOCAL_RST: u32 = 3;
    pub const ESTABLISHED: u32 = 4;
    /// The peer's TCP reset the connection (a TCP RST inside SAL): free.
    pub const PEER_RST: u32 = 5;
    /// A new connection took the 4-tuple of this flow, whose TCP
    /// connection was over (`translate::reopens`): the tuple names the new
    /// flow now, and this one's addresses are in `FLOW_REOPENED`. Free it
    /// once its SAL close is done (at once if it is).
    pub const REOPENED: u32 = 6;
}

/// The flow engine's counters (both modes), kernel and agent reasons in
/// one per-CPU array,
/// each with the name operators see (`stats`, metrics). The variants are
/// the array's indices, in order; strum derives the count, the list and
/// the names from this one declaration.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, strum::EnumCount, strum::EnumIter, strum::IntoStaticStr, strum::FromRepr,
)]
#[strum(serialize_all = "snake_case")]
#[repr(u32)]
pub enum Counter {
    EgressTranslated = 0,
    EgressSyn,
    EgressNotOurs,
    #[strum(serialize = "egress_gso_dropped")]
    EgressGso,
    EgressError,
    IngressTranslated,
    IngressSyn,
    #[strum(serialize = "ingress_synack")]
    IngressSynAck,
    #[strum(serialize = "ingress_control_to_agent")]
    IngressToAgent,
    IngressNotSal,
    DropBadChecksum,
    DropBadLength,
    DropBadExtension,
    DropUnknownFlow,
    DropUnknownService,
    DropBadNonce,
    #[strum(serialize = "drop_bad_ackno")]
    DropBadAck,
    DropTableFull,
    DropIpOptions,
    IngressError,
    // Agent (control plane):
    #[strum(serialize = "ctl_fin_received")]
    CtlFinRcvd,
    #[strum(serialize = "ctl_ack_received")]
    CtlAckRcvd,
    #[strum(serialize = "ctl_rst_received")]
    CtlRstRcvd,
    #[strum(serialize = "ctl_rsyn_received")]
    CtlRsynRcvd,
    CtlSent,
    #[strum(serialize = "ctl_retransmitted")]
    CtlRetransmit,
    CtlDropUnknownFlow,
    CtlDropBadNonce,
    CtlDropMalformed,
    #[strum(serialize = "ctl_stale_answered")]
    CtlStale,
    FlowsFreed,
    FlowsExpired,
    // Gateway (packet-level translator):
    #[strum(serialize = "gw_tcp_to_sal")]
    GwToSal,
    #[strum(serialize = "gw_sal_to_tcp")]
    GwToTcp,
    #[strum(serialize = "gw_passed_no_flow")]
    GwPassNoFlow,
    #[strum(serialize = "gw_passed_ip_options")]
    GwPassIpOptions,
    #[strum(serialize = "gw_passed_fragment")]
    GwPassFragment,
    GwDropNoInstance,
    GwPartialChecksum,
    GwRedirected,
    GwChecksumCompleted,
    #[strum(serialize = "gw_checksum_left_to_offload")]
    GwChecksumOffloaded,
    GwChecksumUnresolved,
    #[strum(serialize = "gw_passed_no_redirect_target")]
    GwPassNoRedirect,
    EgressToSegmenter,
    /// A frame too short for the headers its first bytes announce: passed.
    #[strum(serialize = "gw_passed_truncated")]
    GwPassTruncated,
    /// A rewrite failed half way (the frame cannot be passed as it is).
    GwDropRewriteFailed,
    /// Egress: a packet too short to read, before anything was written.
    #[strum(serialize = "egress_passed_unreadable")]
    EgressPassUnreadable,
    /// A tuple whose flow the agent freed meanwhile: passed untranslated.
    #[strum(serialize = "passed_flow_freed")]
    PassFlowFreed,
    /// A SAL RST without the flow's nonce that was not from the flow's
    /// peer at its next verno either: not believed (RFC 5961's spirit).
    #[strum(serialize = "ctl_drop_unbelieved_rst")]
    CtlDropUnbelievedRst,
    /// A flow started half-open (a gateway client's SYN, a SAL SYN at a
    /// server).
    FlowsHalfOpened,
    /// A half-open flow's other end proved it is there.
    FlowsProven,
    /// The agent freed a flow that was still half-open.
    FlowsFreedHalfOpen,
    /// A SYN declined: half-open flows at their budget (and not a
    /// retransmission), or at the hard limit.
    #[strum(serialize = "drop_syn_over_budget")]
    DropSynBudget,
    /// A SYN admitted over the budget as the retransmission of a declined one.
    #[strum(serialize = "syn_admitted_retransmitted")]
    SynAdmittedRetransmit,
    /// A SYN to a service the operator gave to the relay (`mode = "relay"`).
    #[strum(serialize = "gw_passed_relay_service")]
    GwPassRelayService,
    // The relay (counted by the agent, not the kernel):
    /// A client connection the relay accepted.
    RelayAccepted,
    /// Its Serval connection to the chosen instance was made.
    RelayConnected,
    /// No instance, or the instance did not answer: the client was reset.
    RelayConnectFailed,
    /// Both directions ended with a FIN.
    RelayClosed,
    /// A reset on either side, passed on to the other.
    RelayReset,
    /// Idle past the relay's idle timeout: reset on both sides.
    RelayIdle,
    /// Bytes the relay moved from clients to instances.
    RelayBytesToService,
    /// Bytes the relay moved from instances to clients.
    RelayBytesToClient,
    /// A SAL SYN for another host: to the link broadcast MAC but
    /// addressed to another host's IP (not ours, not a broadcast
    /// address), or to another host's MAC (a switch flooding it).
    #[strum(serialize = "drop_syn_for_another_host")]
    DropSynForAnotherHost,
    /// A serving socket of this host whose flow closed cleanly: its
    /// TIME_WAIT ended by the agent as the flow was freed, so that a new
    /// flow from the same SAL peer can take its TCP identity.
    TimeWaitEnded,
    /// A migration (our RSYN, or our RSYN-ACK to a peer's RSYN) got no
    /// answer before its deadline: the flow stays where it was.
    MigrationFailed,
    /// A migration completed: ours (the peer's RSYN-ACK came) or the
    /// peer's (it acknowledged our RSYN-ACK).
    MigrationDone,
    /// Of `ingress_translated`: translated at XDP, before GRO (host mode).
    IngressTranslatedXdp,
    /// A SAL segment whose TCP checksum may be partial: left by XDP to the
    /// TC ingress program, which sees the skb's checksum state.
    IngressLeftToTc,
    /// Of `flows_half_opened`: a client flow to a service of a prefix
    /// (`[[prefix]]`: the host part of the address picked the service).
    #[strum(serialize = "gw_prefix_flows")]
    GwPrefixFlows,
    /// A closed flow's 4-tuple opened a new connection (a SYN reusing the
    /// port before the old flow was freed): a new flow took the tuple; the
    /// old one ends its SAL close and is freed (in `flows_freed`).
    FlowsReopened,
    /// Of `ingress_translated`: translated at TC ingress, after GRO, and
    /// sent through the coalescer to pass GRO again (host mode).
    IngressCoalesced,
}

impl Counter {
    /// How many counters there are (the map's size).
    pub const COUNT: usize = <Self as strum::EnumCount>::COUNT;

    /// Every counter, in index order.
    pub fn all() -> impl Iterator<Item = Counter> {
        <Self as strum::IntoEnumIterator>::iter()
    }

    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The name operators see.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), explicit padding fields, every bit pattern valid.
    unsafe impl aya::Pod for super::EngineConfig {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::FlowAddrs {}
    unsafe impl aya::Pod for super::TupleEntry {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::ServeEntry {}
    unsafe impl aya::Pod for super::RouteTargets {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::CtlRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// HZ=250 (Debian's kernels): readings 40 ms apart give 4 ms ticks,
    /// and the clock from the second reading's jiffies is its coarse time;
    /// readings that show no tick, or ticks of no HZ, give no clock.
    #[test]
    fn the_tick_clock_is_the_coarse_clock_from_jiffies() {
        let (a, b) = ((4_294_900_000, 7_000_000_000), (4_294_900_010, 7_040_000_000));
        let tick = tick_clock::tick_ns(a, b).unwrap();
        assert_eq!(tick, 4_000_000);
        let base = tick_clock::base(b, tick);
        assert_eq!(tick_clock::now_ns(b.0, tick, base), b.1);
        assert_eq!(tick_clock::now_ns(b.0 + 250, tick, base), b.1 + 1_000_000_000);
        // 100 ms of 4 ms ticks, one reading's clock a tick behind its
        // jiffies: still 4 ms, not 3.3 (HZ=300).
        assert_eq!(tick_clock::tick_ns((1000, 0), (1025, 96_000_000)), Some(4_000_000));
        assert_eq!(tick_clock::tick_ns((1000, 0), (1025, 104_000_000)), Some(4_000_000));
        assert_eq!(tick_clock::tick_ns((1000, 0), (1030, 100_000_000)), Some(3_333_333));
        assert_eq!(tick_clock::tick_ns((1000, 0), (1100, 99_000_000)), Some(1_000_000));
        // A tick length far from every HZ's: not a clock to build on.
        assert_eq!(tick_clock::tick_ns((0, 0), (10, 25_000_000)), None);
        assert_eq!(tick_clock::tick_ns((5, 0), (5, 25_000_000)), None);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EngineConfig>(), 4 + 4 + 6 + 2 + 4 + 4 + 4 + 4 + 8 + 4 + 4);
        assert_eq!(size_of::<gw::ChecksumNote>(), 12);
        assert_eq!(size_of::<gw::ChecksumNoteKey>(), 20);
        assert_eq!(size_of::<FlowState>(), 16 + 16 + 12 + 4 + 8 + 12 + 8);
        assert_eq!(size_of::<FlowAddrs>(), 8);
        assert_eq!(size_of::<TupleEntry>(), 16);
        assert_eq!(size_of::<PeerKey>(), 8);
        assert_eq!(size_of::<RouteTargets>(), 36);
        assert_eq!(size_of::<gw::PrefixKey>(), 6);
        assert_eq!(size_of::<gw::GwPrefix>(), 32 + 4 + 4 + 4);
        assert_eq!(size_of::<CtlRecord>(), 32 + 24 + 64);
    }

    #[test]
    fn flow_slots_are_twice_the_flows_in_a_power_of_two_and_markers_are_no_ids() {
        assert_eq!(flow_slot::slots(65536), 131072);
        assert_eq!(flow_slot::slots(32), 64);
        assert_eq!(flow_slot::slots(100_000), 262_144);
        assert_eq!(flow_slot::slots(16), 32);
        assert!(!flow_slot::is_id(flow_slot::FREE) && !flow_slot::is_id(flow_slot::CLAIMED));
        assert!(flow_slot::is_id(1) && flow_slot::is_id(0xffff_fffe));
    }

    #[test]
    fn an_id_names_its_slot_and_slots_in_order_give_unrelated_ids() {
        let mask = flow_slot::slots(65536) - 1;
        let key = 0x0123_4567_89ab_cdef;
        let h = flow_slot::Header { mask, key };
        assert_eq!(flow_slot::Header::of_slot(&h.to_slot()), Some(h));
        assert_eq!(flow_slot::Header::of_slot(&FlowState::ZERO), None);
        let mut draw = 0x9e37_79b9u32;
        let mut low_steps = std::collections::HashSet::new();
        let mut prev = None;
        for slot in 1000..3000u32 {
            draw = draw.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let id = flow_slot::id_for(slot, draw, mask, key);
            assert_eq!(h.index(id), slot, "id {id:#x}");
            assert_eq!(id & !mask, draw & !mask, "the random bits are kept");
            if let Some(p) = prev {
                low_steps.insert((id ^ p) & mask);
            }
            prev = Some(id);
        }
        // Neighbouring slots' IDs differ in their low bits by no pattern:
        // nearly every step is different.
        assert!(low_steps.len() > 1900, "{} distinct steps", low_steps.len());
        // Another key puts the same slot and draw under another ID.
        assert_ne!(flow_slot::id_for(5, draw, mask, key), flow_slot::id_for(5, draw, mask, key ^ 1));
    }

    #[test]
    fn flow_clock_ages_across_the_wrap_and_never_from_the_future() {
        let tick = 1u64 << flow_clock::SHIFT;
        let then = flow_clock::ticks(5 * tick);
        assert_eq!(flow_clock::age_ns(5 * tick + 7, then), 0);
        assert_eq!(flow_clock::age_ns(905 * tick, then), 900 * tick);
        // 32 bits of ticks wrap after 2^52 ns (52 days): ages still hold.
        let before_wrap = (1u64 << 52) - 10 * tick;
        let t = flow_clock::ticks(before_wrap);
        assert_eq!(flow_clock::age_ns(before_wrap + 30 * tick, t), 30 * tick);
        // A stamp a tick ahead of the reader (clocks read a moment apart).
        assert_eq!(flow_clock::age_ns(5 * tick, flow_clock::ticks(6 * tick)), 0);
    }

    #[test]
    fn counters_dense_and_unique() {
        let all: std::vec::Vec<Counter> = Counter::all().collect();
        assert_eq!(all.len(), Counter::COUNT);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
            for d in &all[i + 1..] {
                assert_ne!(c.name(), d.name());
            }
        }
        // Names operators and dashboards already know stay as they are.
        assert_eq!(Counter::EgressGso.name(), "egress_gso_dropped");
        assert_eq!(Counter::DropBadAck.name(), "drop_bad_ackno");
        assert_eq!(Counter::GwToSal.name(), "gw_tcp_to_sal");
        assert_eq!(Counter::FlowsFreed.name(), "flows_freed");
    }
}

/// Gateway maps and types (the packet-level translator).
pub mod gw {
    pub const SERVICES: &str = "GW_SERVICES";
    pub const MAGLEV: &str = "GW_MAGLEV";
    /// Services the operator gave to the relay (`mode = "relay"`): XDP
    /// passes their segments to the kernel, whose socket is the relay's.
    pub const RELAY_SERVICES: &str = "GW_RELAY_SERVICES";
    /// Interfaces (by index) that rewritten frames may be redirected to
    /// from XDP; the agent keeps it current (see `redirect` in the agent).
    pub const REDIRECT_TARGETS: &str = "GW_REDIRECT_TARGETS";
    pub const MAX_REDIRECT_TARGETS: u32 = 256;
    /// Names of the translator's programs. Two builds of the XDP program
    /// differ only in how a [`ChecksumNote`] reaches the TC stage: in XDP
    /// metadata in front of the frame (`xlate_gw`), or in the
    /// [`CHECKSUM_NOTES`] map (`xlate_gw_nometa`), for kernels whose
    /// verifier refuses `bpf_xdp_adjust_meta` to XDP programs. The agent
    /// probes the kernel and loads one of them.
    pub const XDP_PROGRAM: &str = "xlate_gw";
    pub const XDP_PROGRAM_NO_META: &str = "xlate_gw_nometa";
    pub const CHECKSUM_PROGRAM: &str = "xlate_gw_checksum";
    /// Checksum notes on their way from `xlate_gw_nometa` to the TC stage,
    /// by [`ChecksumNoteKey`]. An LRU map: the TC stage removes each note it
    /// applies; one whose frame never reached it (dropped on the way) ages
    /// out.
    pub const CHECKSUM_NOTES: &str = "GW_CHECKSUM_NOTES";
    pub const MAX_CHECKSUM_NOTES: u32 = 4096;

    /// Which frame a note in [`CHECKSUM_NOTES`] is for: bytes of the
    /// rewritten frame that both stages read alike. The IP length and ID,
    /// the addresses, and the TCP sequence and acknowledgement numbers
    /// tell apart any two segments in flight (a retransmission of the same
    /// bytes carries the same note anyway).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(C)]
    pub struct ChecksumNoteKey {
        /// IPv4 total length and identification, as on the wire.
        pub len_id: [u8; 4],
        /// IPv4 source and destination, as on the wire.
        pub addrs: [u8; 8],
        /// TCP sequence and acknowledgement numbers, as on the wire.
        pub seq_ack: [u8; 8],
    }

    impl ChecksumNoteKey {
        /// The key of the frame whose IPv4 header is `ip` and whose TCP
        /// header has `seq_ack` at bytes 4..12.
        #[inline(always)]
        pub fn new(ip: &[u8; 20], seq_ack: [u8; 8]) -> Self {
            let mut len_id = [0u8; 4];
            len_id.copy_from_slice(&ip[2..6]);
            let mut addrs = [0u8; 8];
            addrs.copy_from_slice(&ip[12..20]);
            ChecksumNoteKey { len_id, addrs, seq_ack }
        }
    }

    /// Left in XDP metadata in front of a rewritten frame (or in
    /// [`CHECKSUM_NOTES`], see [`XDP_PROGRAM_NO_META`]) whose TCP
    /// checksum field held exactly the pseudo-header sum. Such a field is
    /// either a partial checksum (the sender left the rest to offload) or,
    /// once in 65536 segments, a complete checksum that happens to have
    /// that value; the bytes cannot tell which, the skb can. XDP writes
    /// the partial form and this note; the TC ingress program
    /// (`xlate_gw_checksum`) applies `diff` with `bpf_l4_csum_replace`,
    /// which the kernel skips for CHECKSUM_PARTIAL skbs and applies to all
    /// others: every segment leaves with the checksum its form needs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(C)]
    pub struct ChecksumNote {
        pub magic: u32,
        /// Offset of the TCP checksum field from the Ethernet header.
        pub csum_offset: u32,
        /// What turns the partial form into the complete one, as
        /// `bpf_l4_csum_replace` takes it (size 0: a checksum difference),
        /// in the kernel's byte order of checksum words.
        pub diff: u32,
    }

    impl ChecksumNote {
        pub const MAGIC: u32 = 0x584c_4331; // "XLC1"
        pub const LEN: usize = core::mem::size_of::<ChecksumNote>();

        /// The note that turns checksum field `partial` into `complete`
        /// (both as read big-endian from the packet).
        #[inline(always)]
        pub fn new(csum_offset: u32, partial: u16, complete: u16) -> Self {
            let d = crate::wire::checksum::fold(crate::wire::checksum::diff_to(partial, complete));
            // The kernel adds raw 16-bit words as they lie in memory.
            ChecksumNote { magic: Self::MAGIC, csum_offset, diff: u32::from(u16::from_ne_bytes(d.to_be_bytes())) }
        }

        /// The field after the kernel applied this note to `field` (what
        /// `inet_proto_csum_replace_by_diff` does for a non-partial skb).
        pub fn apply(&self, field: u16) -> u16 {
            let d = u16::from_be_bytes((self.diff as u16).to_ne_bytes());
            crate::wire::checksum::update_with_diff(field, u32::from(d))
        }
    }

    /// Value of [`REDIRECT_TARGETS`]: why an interface may (or may not)
    /// receive redirected frames.
    pub mod redirect {
        /// The device can transmit XDP frames (xdp-features `ndo-xmit`).
        pub const OK: u32 = 1;
    }
    /// Maglev table size per service (prime).
    pub const MAGLEV_SIZE: u32 = 1021;
    /// Maglev rows: services and prefixes together.
    pub const MAX_SERVICES: u32 = 64;
    /// Services by prefix (`[[prefix]]`): an LPM trie keyed by port, then
    /// address prefix ([`PrefixKey`]), one entry per prefix and port.
    pub const PREFIXES: &str = "GW_PREFIXES";
    pub const MAX_PREFIX_ENTRIES: u32 = 4096;

    /// Key of [`PREFIXES`]: the port matches whole (the trie's first 16
    /// bits), the address by the prefix (prefix length 16 + its length).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(C)]
    pub struct PrefixKey {
        pub port: [u8; 2],
        pub addr: [u8; 4],
    }

    impl PrefixKey {
        /// Bits of the trie's prefix length that the port takes.
        pub const PORT_BITS: u32 = 16;
    }

    /// What a public prefix and port translate to: the service of host
    /// part `h` is `service_id` with `h` added to the low bits of its first
    /// 32 bits (`host_mask` says which bits are the host part).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(C)]
    pub struct GwPrefix {
        pub service_id: [u8; 32],
        pub host_mask: u32,
        /// Row of the prefix in the Maglev map (its services share it).
        pub index: u32,
        /// Non-zero: hand SYNs to this service router instead.
        pub router: [u8; 4],
    }

    impl GwPrefix {
        /// The service that a destination `addr` of this prefix names.
        #[inline(always)]
        pub fn service(&self, addr: [u8; 4]) -> GwService {
            let mut service_id = self.service_id;
            let n = u32::from_be_bytes([service_id[0], service_id[1], service_id[2], service_id[3]])
                | (u32::from_be_bytes(addr) & self.host_mask);
            service_id[..4].copy_from_slice(&n.to_be_bytes());
            GwService { service_id, index: self.index, router: self.router }
        }
    }

    /// What a public (address, port) translates to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(C)]
    pub struct GwService {
        pub service_id: [u8; 32],
        /// Row of this service in the Maglev map.
        pub index: u32,
        /// Non-zero: hand SYNs to this service router instead.
        pub router: [u8; 4],
    }

    /// A hash of the client 4-tuple (network-order bytes), the same in the
    /// kernel and in the agent: it picks the Maglev slot.
    #[inline(always)]
    pub fn flow_hash(saddr: [u8; 4], daddr: [u8; 4], sport: [u8; 2], dport: [u8; 2]) -> u32 {
        let mut h = u32::from_be_bytes(saddr).wrapping_mul(0x9e37_79b1);
        h ^= u32::from_be_bytes(daddr).rotate_left(13).wrapping_mul(0x85eb_ca6b);
        h ^= (u32::from(u16::from_be_bytes(sport)) << 16 | u32::from(u16::from_be_bytes(dport)))
            .wrapping_mul(0xc2b2_ae35);
        // murmur3 finaliser
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), no implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for GwService {}
    #[cfg(feature = "user")]
    // SAFETY: repr(C), byte arrays only.
    unsafe impl aya::Pod for PrefixKey {}
    #[cfg(feature = "user")]
    // SAFETY: repr(C), no implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for GwPrefix {}
    #[cfg(feature = "user")]
    // SAFETY: repr(C), no implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for ChecksumNote {}
    #[cfg(feature = "user")]
    // SAFETY: repr(C), byte arrays only.
    unsafe impl aya::Pod for ChecksumNoteKey {}
}
