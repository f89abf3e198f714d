//! Packet fixtures for the translator's XDP program, run in the kernel with
//! BPF_PROG_TEST_RUN: input frame, exact expected output frame, verdict and
//! counters, for every per-packet duty of a packet-level translator
//! (serval-wire §8). Where the original stack's captures have the packet,
//! the fixture uses it as is, and what the translator emits is compared
//! byte for byte with what the original stack sent.

use std::net::Ipv4Addr;

use aya::maps::{HashMap, PerCpuArray};
use xlate_common::flow::{flag, role, state, Counter, FlowAddrs, FlowState, TupleEntry};
use xlate_common::maps::FlowKey;
use xlate_common::wire::ipv4::{Ipv4Packet, Ipv4Repr};
use xlate_common::wire::packet::{ServalRepr, Transport};
use xlate_common::wire::tcp::{TcpFlags, TcpPacket, TcpRepr};
use xlate_tests::{fixture, require_root};
use xlate_user::decode::{read_pcap, shape};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const CLIENT_PORT: u16 = 40000;
/// The original stack's client and server in handshake-data-close.pcap:
/// the translator stands in for the client, so the server's packets
/// apply unchanged.
const CAP_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CAP_SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const MACS: [u8; 12] = [2, 0, 0, 0, 0, 0xaa, 2, 0, 0, 0, 0, 0xbb];

struct Gw {
    bed: xlate_user::testbed::TestBed,
}

impl Gw {
    fn new(sal_address: Ipv4Addr, instance: Ipv4Addr) -> Gw {
        Gw { bed: xlate_user::testbed::TestBed::new(sal_address, PUBLIC, instance).unwrap() }
    }

    /// With the given build of the XDP program (see [`programs`]).
    fn with_program(program: &'static str, sal_address: Ipv4Addr, instance: Ipv4Addr) -> Gw {
        Gw { bed: xlate_user::testbed::TestBed::with_program(program, sal_address, PUBLIC, instance).unwrap() }
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let (v, out, _) = self.bed.run(frame).unwrap();
        (v, out)
    }

    fn counters(&self) -> Vec<u64> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.bed.ebpf.map("COUNTERS").unwrap()).unwrap();
        Counter::all().map(|c| m.get(&c.index(), 0).unwrap().iter().sum()).collect()
    }

    /// Runs a frame; checks the verdict and exactly which counters moved.
    fn expect(&mut self, frame: &[u8], verdict: u32, moved: &[Counter]) -> Vec<u8> {
        let before = self.counters();
        let (v, out) = self.run(frame);
        assert_eq!(v, verdict, "verdict");
        let after = self.counters();
        for c in Counter::all() {
            let d = after[c.index() as usize] - before[c.index() as usize];
            assert_eq!(d, u64::from(moved.contains(&c)), "counter {}", c.name());
        }
        out
    }

    fn flows(&self) -> Vec<FlowState> {
        self.bed.flows().unwrap()
    }

    /// A translator between the capture's client and server, with the
    /// capture's flow in place ([`Gw::insert_capture_flow`]), and the
    /// capture's packets to replay.
    fn at_capture_start() -> (Gw, Vec<(Vec<u8>, ServalRepr<'static>)>) {
        let mut gw = Gw::new(CAP_CLIENT, CAP_SERVER);
        gw.insert_capture_flow();
        (gw, capture_packets("handshake-data-close.pcap"))
    }

    /// The flow the original stack's client had in the capture, as if the
    /// translator had sent that SYN for CLIENT:CLIENT_PORT.
    fn insert_capture_flow(&mut self) {
        let (_, syn) = capture_packets("handshake-data-close.pcap")[0].clone();
        let c = syn.sal.control.unwrap();
        let key = FlowKey {
            saddr: CLIENT.octets(),
            daddr: PUBLIC.octets(),
            sport: CLIENT_PORT.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
        };
        let mut st = FlowState::ZERO;
        st.start(role::CLIENT, state::SYN_SENT, syn.sal.src_flowid.0, c.verno, c.nonce, &key, 0);
        let id = st.local_flow;
        let flows = self.bed.flow_table().unwrap();
        flows.insert(&st).unwrap();
        let slot = flows.index(id).unwrap();
        let mut t: HashMap<_, FlowKey, TupleEntry> =
            HashMap::try_from(self.bed.ebpf.map_mut("FLOW_TUPLES").unwrap()).unwrap();
        let addrs = FlowAddrs { local_ip: CAP_CLIENT.octets(), peer_ip: CAP_SERVER.octets() };
        t.insert(key, TupleEntry { flow: id, slot, addrs }, 0).unwrap();
    }
}

/// (IPv4 datagram bytes, parsed) of every SAL packet of a capture.
fn capture_packets(name: &str) -> Vec<(Vec<u8>, ServalRepr<'static>)> {
    let (link, frames) = read_pcap(&fixture(name)).unwrap();
    frames
        .iter()
        .filter_map(|f| link.ipv4(f).ok())
        .filter(|ip| ip[9] == 144)
        .map(|ip| {
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let d: &'static [u8] = Box::leak(ip[..total].to_vec().into_boxed_slice());
            (d.to_vec(), ServalRepr::parse(d).unwrap())
        })
        .collect()
}

fn eth(ip: &[u8]) -> Vec<u8> {
    let mut f = MACS.to_vec();
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// A client TCP segment (complete checksum, as from a real NIC).
fn client_tcp(flags: u8, seq: u32, ack: u32, options: &[u8], payload: &[u8]) -> Vec<u8> {
    client_tcp_from(CLIENT_PORT, flags, seq, ack, options, payload)
}

fn client_tcp_from(port: u16, flags: u8, seq: u32, ack: u32, options: &[u8], payload: &[u8]) -> Vec<u8> {
    client_tcp_to((PUBLIC, 80), port, flags, seq, ack, options, payload)
}

/// A client TCP segment to `dst` (address, port).
fn client_tcp_to(
    dst: (Ipv4Addr, u16),
    port: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let (daddr, dport) = dst;
    let tcp = TcpRepr {
        src_port: port,
        dst_port: dport,
        seq,
        ack,
        flags: TcpFlags(flags),
        window: 502,
        urgent: 0,
        options,
        payload,
    };
    let ip = Ipv4Repr { ttl: 63, ident: 0x4242, dont_frag: true, ..Ipv4Repr::new(CLIENT, daddr, 6, tcp.buffer_len()) };
    let mut b = vec![0u8; 20 + tcp.buffer_len()];
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut b[..])).unwrap();
    tcp.emit(&mut TcpPacket::new_unchecked(&mut b[20..]), CLIENT, daddr).unwrap();
    eth(&b)
}

/// The SAL packet the translator must emit for a client segment: the same
/// TCP with ports 0 (MSS clamped), inside `sal`, between the SAL addresses.
fn expected_sal(
    input: &[u8],
    sal: xlate_common::wire::sal::SalRepr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    mss: Option<[u8; 4]>,
) -> Vec<u8> {
    let ip = Ipv4Packet::new_checked(&input[14..]).unwrap();
    let ipr = Ipv4Repr::parse(&ip).unwrap();
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    let mut opts = t.options().to_vec();
    if let Some(m) = mss {
        opts[..4].copy_from_slice(&m);
    }
    let tcp = TcpRepr {
        src_port: 0,
        dst_port: 0,
        seq: t.seq(),
        ack: t.ack(),
        flags: t.flags(),
        window: t.window(),
        urgent: t.urgent(),
        options: &opts,
        payload: t.payload(),
    };
    let repr = ServalRepr {
        ip: Ipv4Repr { src_addr: src, dst_addr: dst, protocol: 144, ..ipr },
        sal,
        transport: Transport::Tcp(tcp),
    };
    let mut b = vec![0u8; repr.buffer_len()];
    repr.emit(&mut b).unwrap();
    let mut f = input[..14].to_vec();
    f.extend_from_slice(&b);
    f
}

/// The TCP segment the client must receive for a SAL packet.
fn expected_tcp(input_ip: &[u8]) -> Vec<u8> {
    let p = ServalRepr::parse(input_ip).unwrap();
    let Transport::Tcp(t) = p.transport else { panic!("no TCP") };
    let tcp = TcpRepr { src_port: 80, dst_port: CLIENT_PORT, ..t };
    let ip = Ipv4Repr { src_addr: PUBLIC, dst_addr: CLIENT, protocol: 6, payload_len: tcp.buffer_len(), ..p.ip };
    let mut b = vec![0u8; 20 + tcp.buffer_len()];
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut b[..])).unwrap();
    tcp.emit(&mut TcpPacket::new_unchecked(&mut b[20..]), PUBLIC, CLIENT).unwrap();
    eth(&b)
}

#[test]
fn a_client_syn_becomes_a_sal_syn_and_a_retransmission_the_same_one() {
    require_root();
    let mut gw = Gw::new(CAP_CLIENT, CAP_SERVER);
    // Linux's SYN options: MSS 1460, SACK-permitted, timestamps, NOP, WS 7.
    let opts = [2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
    let syn = client_tcp(0x02, 1000, 0, &opts, &[]);
    let out = gw.expect(&syn, XDP_PASS, &[Counter::GwToSal, Counter::EgressSyn, Counter::FlowsHalfOpened]);
    let flows = gw.flows();
    assert_eq!(flows.len(), 1);
    let f = flows[0];
    assert_ne!(f.local_flow, 0, "flow IDs are non-zero");
    let sal = xlate_common::wire::sal::SalRepr {
        src_flowid: xlate_common::wire::sal::FlowId(f.local_flow),
        dst_flowid: xlate_common::wire::sal::FlowId(0),
        protocol: 6,
        control: Some(xlate_common::wire::sal::ControlRepr {
            flags: xlate_common::wire::sal::ControlFlags::SYN,
            verno: f.local_verno,
            ackno: 0,
            nonce: f.local_nonce,
        }),
        services: xlate_common::wire::sal::ServiceList::one("00000050".parse().unwrap()),
        source: None,
    };
    assert_eq!(out, expected_sal(&syn, sal, CAP_CLIENT, CAP_SERVER, Some([2, 4, 0x05, 0xa8])));
    // Same shape as the original stack's SYN.
    let orig = &capture_packets("handshake-data-close.pcap")[0].1;
    assert_eq!(shape(&ServalRepr::parse(&out[14..]).unwrap()), shape(orig));
    // The client's retransmitted SYN: the very same SAL SYN.
    let again = gw.expect(&syn, XDP_PASS, &[Counter::GwToSal, Counter::EgressSyn]);
    assert_eq!(again, out);
    assert_eq!(gw.flows().len(), 1);
}

/// The flow engine's clock comes from `jiffies` once measured
/// (`tick_clock`): the start-up finds a tick length some HZ has, the clock
/// it gives is the kernel's coarse monotonic clock read in the same run,
/// and a new flow's times are CLOCK_MONOTONIC_COARSE's, each to within two
/// ticks: the measured base may be a tick off (the coarse clock moves at
/// timekeeping updates, whose phase against the jiffy boundaries varies),
/// and so may any one reading (Linux 6.12 in the kernel matrix: a tick
/// and 2 ns).
#[test]
fn the_engine_clock_from_jiffies_is_the_coarse_monotonic_clock() {
    require_root();
    use xlate_common::flow::{flow_clock, tick_clock, EngineConfig};
    let mut gw = Gw::new(CAP_CLIENT, CAP_SERVER);
    let cfg: aya::maps::Array<_, EngineConfig> =
        aya::maps::Array::try_from(gw.bed.ebpf.map("ENGINE_CONFIG").unwrap()).unwrap();
    let cfg = cfg.get(&0, 0).unwrap();
    assert!(tick_clock::TICKS_NS.contains(&cfg.tick_ns), "tick {} ns measured", cfg.tick_ns);
    for _ in 0..5 {
        let (jiffies, coarse) = xlate_user::engine_clock::read(&mut gw.bed.ebpf).unwrap();
        let clock = tick_clock::now_ns(jiffies, cfg.tick_ns, cfg.clock_base);
        assert!(
            clock.abs_diff(coarse) <= 2 * u64::from(cfg.tick_ns),
            "jiffy {jiffies}: {clock} where coarse is {coarse}"
        );
        std::thread::sleep(std::time::Duration::from_millis(7));
    }
    // The kernel's coarse clock is user space's CLOCK_MONOTONIC_COARSE
    // (both the time at the last tick).
    let before = coarse_ns();
    gw.expect(
        &client_tcp(0x02, 1000, 0, &[], &[]),
        XDP_PASS,
        &[Counter::GwToSal, Counter::EgressSyn, Counter::FlowsHalfOpened],
    );
    let after = coarse_ns();
    let created = gw.flows()[0].created;
    let tick = u64::from(cfg.tick_ns);
    let (low, high) = (flow_clock::ticks(before - 2 * tick), flow_clock::ticks(after + 2 * tick));
    assert!((low..=high).contains(&created), "created at tick {created}, CLOCK_MONOTONIC_COARSE ticks {low}..={high}");
}

fn coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel keeps the half-open hard limit and the fast path's share of
/// the table itself (`flow::room`, refreshed by the agent every tick): a
/// SYN takes one of each, and with none left it is declined (dropped) or
/// left to the relay (passed), with no flow made.
#[test]
fn new_flows_take_the_room_the_agent_gave_and_none_start_without() {
    use xlate_common::flow::room;
    require_root();
    let mut gw = Gw::new(CAP_CLIENT, CAP_SERVER);
    gw.bed.set_room(room::BUDGET, 1).unwrap();
    gw.bed.set_room(room::HALF_OPEN, 2).unwrap();
    gw.bed.set_room(room::FAST_PATH, 5).unwrap();
    let rooms = |gw: &Gw| [room::BUDGET, room::HALF_OPEN, room::FAST_PATH].map(|r| gw.bed.room(r).unwrap());
    let syn = |port| client_tcp_from(port, 0x02, 1000, 0, &[], &[]);
    gw.expect(&syn(41000), XDP_PASS, &[Counter::GwToSal, Counter::EgressSyn, Counter::FlowsHalfOpened]);
    assert_eq!(rooms(&gw), [0, 1, 4]);
    // Over the budget: a first SYN is declined (its retransmission, 400 ms
    // on, would be admitted).
    gw.expect(&syn(41001), XDP_DROP, &[Counter::DropSynBudget]);
    assert_eq!(rooms(&gw), [0, 1, 4]);
    gw.bed.set_room(room::BUDGET, 5).unwrap();
    gw.expect(&syn(41001), XDP_PASS, &[Counter::GwToSal, Counter::EgressSyn, Counter::FlowsHalfOpened]);
    // The hard limit: dropped, counted, nothing taken, no flow.
    gw.expect(&syn(41002), XDP_DROP, &[Counter::DropSynBudget]);
    assert_eq!(rooms(&gw), [4, 0, 3]);
    // A retransmission of a flow that exists needs no room.
    gw.expect(&syn(41000), XDP_PASS, &[Counter::GwToSal, Counter::EgressSyn]);
    // The fast path's share used up: the SYN goes to the kernel (the
    // relay's socket), before the half-open limits are even looked at.
    gw.bed.set_room(room::HALF_OPEN, 100).unwrap();
    gw.bed.set_room(room::FAST_PATH, 0).unwrap();
    gw.expect(&syn(41003), XDP_PASS, &[Counter::DropTableFull]);
    assert_eq!(rooms(&gw), [4, 100, 0]);
    assert_eq!(gw.flows().len(), 2);
}

/// A prefix of services (`[[prefix]]`): the host part of the client's
/// destination picks the service (host 5 of 192.0.2.0/24 under base
/// 00010000 is service 00010005), in one trie entry for all of them; an
/// exact service entry wins over a prefix that holds its address; a port
/// the prefix does not hold is not the translator's.
#[test]
fn a_prefix_holds_a_service_per_host_and_exact_entries_win() {
    use xlate_common::wire::sal::{ControlFlags, ControlRepr, FlowId, SalRepr, ServiceList};
    require_root();
    let mut gw = Gw::new(CAP_CLIENT, CAP_SERVER);
    gw.bed.set_prefix(Ipv4Addr::new(192, 0, 2, 0), 24, 80, "00010000".parse().unwrap()).unwrap();
    // The test bed's exact service is PUBLIC:80 (service 00000050); a
    // prefix around it gives its other hosts their services.
    gw.bed.set_prefix(Ipv4Addr::new(203, 0, 113, 0), 24, 80, "00020000".parse().unwrap()).unwrap();
    let mss = [2, 4, 0x05, 0xb4];
    let cases = [
        ((Ipv4Addr::new(192, 0, 2, 5), 41005), "00010005", true),
        ((Ipv4Addr::new(192, 0, 2, 200), 41200), "000100c8", true),
        ((Ipv4Addr::new(203, 0, 113, 9), 41009), "00020009", true),
        ((PUBLIC, 41001), "00000050", false),
    ];
    for ((dst, port), sid, by_prefix) in cases {
        let syn = client_tcp_to((dst, 80), port, 0x02, 1000, 0, &mss, &[]);
        let mut moved = vec![Counter::GwToSal, Counter::EgressSyn, Counter::FlowsHalfOpened];
        if by_prefix {
            moved.push(Counter::GwPrefixFlows);
        }
        let out = gw.expect(&syn, XDP_PASS, &moved);
        let f = gw.flows().into_iter().find(|f| f.tcp_local_port == port.to_be_bytes()).expect("its flow");
        let sal = SalRepr {
            src_flowid: FlowId(f.local_flow),
            dst_flowid: FlowId(0),
            protocol: 6,
            control: Some(ControlRepr {
                flags: ControlFlags::SYN,
                verno: f.local_verno,
                ackno: 0,
                nonce: f.local_nonce,
            }),
            services: ServiceList::one(sid.parse().unwrap()),
            source: None,
        };
        assert_eq!(out, expected_sal(&syn, sal, CAP_CLIENT, CAP_SERVER, Some([2, 4, 0x05, 0xa8])), "to {dst}");
    }
    // Port 81 of the prefix is nobody's: passed as it came, no flow.
    let flows = gw.flows().len();
    let other = client_tcp_to((Ipv4Addr::new(192, 0, 2, 5), 81), 41100, 0x02, 1000, 0, &mss, &[]);
    let out = gw.expect(&other, XDP_PASS, &[]);
    assert_eq!(out, other);
    assert_eq!(gw.flows().len(), flows);
}

/// New flows on one CPU take the table's slots in order (the next slot is
/// in memory the last flow touched), under IDs that do not show it: each
/// names its slot only through the table's key, with random bits of its
/// own (`flow_slot`).
#[test]
fn new_flows_take_slots_in_order_under_ids_that_do_not_show_it() {
    require_root();
    // One CPU: the order is per CPU.
    // SAFETY: a zeroed CPU set with CPU 0 added, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set), 0);
    }
    let mut gw = Gw::new(CAP_CLIENT, CAP_SERVER);
    let table = gw.bed.flow_table().unwrap();
    let header = table.header().expect("the test bed seals its table");
    let mut ids = Vec::new();
    for port in 42000..42032u16 {
        gw.expect(
            &client_tcp_from(port, 0x02, 1000, 0, &[], &[]),
            XDP_PASS,
            &[Counter::GwToSal, Counter::EgressSyn, Counter::FlowsHalfOpened],
        );
        let f = gw.flows().into_iter().find(|f| f.tcp_local_port == port.to_be_bytes()).expect("its flow");
        assert_eq!(table.get(f.local_flow), Some(f), "the ID finds its flow");
        ids.push(f.local_flow);
    }
    let slots: Vec<u32> = ids.iter().map(|id| header.index(*id)).collect();
    for w in slots.windows(2) {
        assert_eq!(w[1], (w[0] + 1) & header.mask, "slots in order: {slots:?}");
    }
    let steps: std::collections::HashSet<u32> = ids.windows(2).map(|w| (w[0] ^ w[1]) & header.mask).collect();
    assert!(steps.len() > 24, "neighbours' IDs differ by no pattern: {ids:x?}");
    let high: std::collections::HashSet<u32> = ids.iter().map(|id| id & !header.mask).collect();
    assert!(high.len() > 24, "each ID has random bits of its own: {ids:x?}");
}

#[test]
fn the_original_stacks_handshake_data_and_close_through_the_translator() {
    require_root();
    let (mut gw, caps) = Gw::at_capture_start();

    // SYN-ACK (0xA0, ackno V+1): learn the server's flow ID, nonce, verno;
    // the client gets a TCP SYN-ACK from the public address and port.
    let (synack, _) = &caps[1];
    let out = gw.expect(&eth(synack), XDP_PASS, &[Counter::GwToTcp, Counter::IngressSynAck]);
    assert_eq!(out, expected_tcp(synack));
    let f = gw.flows()[0];
    assert_eq!((f.state, f.peer_flow, f.peer_verno), (state::ACK_PENDING, 3, caps[1].1.sal.control.unwrap().verno));
    assert_eq!(f.peer_nonce, caps[1].1.sal.control.unwrap().nonce);

    // The client's third ACK: CONTROL(ACK)+SERVICE, the SAL header byte for
    // byte the one the original client sent.
    let (third, third_repr) = &caps[2];
    let Transport::Tcp(t) = third_repr.transport else { panic!() };
    let ack = client_tcp(0x10, t.seq, t.ack, &[], &[]);
    // It acknowledges the instance's SYN-ACK: the client is real (no
    // longer half-open).
    let out = gw.expect(&ack, XDP_PASS, &[Counter::GwToSal, Counter::FlowsProven]);
    assert_eq!(&out[14 + 20..14 + 20 + 68], &third[20..88], "third ACK SAL header identical to the original stack's");

    // Client data before the server has spoken: a bare data header, again
    // identical to the original client's.
    let (data, data_repr) = &caps[4];
    let Transport::Tcp(t) = data_repr.transport else { panic!() };
    let seg = client_tcp(0x18, t.seq, t.ack, &[], t.payload);
    let out = gw.expect(&seg, XDP_PASS, &[Counter::GwToSal]);
    assert_eq!(&out[14 + 20..14 + 32], &data[20..32], "data header identical to the original stack's");
    assert_eq!(out.len(), 14 + data.len());

    // The server's data: a TCP segment with its payload; the flow is now
    // known to the server, so the handshake form stops.
    let (srv_data, _) = &caps[6];
    let out = gw.expect(&eth(srv_data), XDP_PASS, &[Counter::GwToTcp]);
    assert_eq!(out, expected_tcp(srv_data));
    assert_eq!(gw.flows()[0].state, state::ESTABLISHED);

    // The client's FIN, then the server's ACK of it: the agent is told to
    // send the SAL FIN (flag set once the FIN is acknowledged).
    let fin_seq = t.seq + t.payload.len() as u32;
    gw.expect(&client_tcp(0x11, fin_seq, t.ack + 17, &[], &[]), XDP_PASS, &[Counter::GwToSal]);
    assert_eq!(gw.flows()[0].flags & flag::LOCAL_FIN, flag::LOCAL_FIN);
    let (srv_ack, _) = &caps[9];
    gw.expect(&eth(srv_ack), XDP_PASS, &[Counter::GwToTcp]);
    assert_eq!(gw.flows()[0].flags & flag::LOCAL_FIN_ACKED, flag::LOCAL_FIN_ACKED, "FIN acknowledged: SAL FIN due");

    // A client reset travels as data (the peer's TCP honours it) and tells
    // the agent to send the SAL RST and free the flow.
    let rst = client_tcp(0x04, fin_seq + 1, 0, &[], &[]);
    let out = gw.expect(&rst, XDP_PASS, &[Counter::GwToSal]);
    assert_eq!(&out[14 + 20 + 8..14 + 20 + 10], &[3, 6], "data header");
    assert_eq!(out[14 + 32 + 13] & 0x04, 0x04, "TCP RST inside");
    assert_eq!(gw.flows()[0].flags & flag::LOCAL_RST, flag::LOCAL_RST);

    // The server's SAL FIN and SAL ACK: control-only, passed unchanged to
    // the agent's raw socket.
    for i in [11, 14] {
        let frame = eth(&caps[i].0);
        let out = gw.expect(&frame, XDP_PASS, &[Counter::IngressToAgent]);
        assert_eq!(out, frame);
    }
}

/// A client that reuses its port at once (the server closed first, so
/// the client has no TIME_WAIT) while the closed flow still lingers: its
/// SYN opens a new flow, which takes the tuple over; the agent is told to
/// free the old one. A SYN into a connection that is not over (live, or
/// half-closed) stays in its flow, as the TCP behind it will judge it.
#[test]
fn a_syn_on_the_tuple_of_a_connection_that_is_over_opens_a_new_flow_and_on_no_other() {
    require_root();
    let (mut gw, caps) = Gw::at_capture_start();
    let old = gw.flows()[0].local_flow;
    let tcp_of = |i: usize| match caps[i].1.transport {
        Transport::Tcp(t) => t,
        _ => panic!("packet {i} has no TCP"),
    };
    gw.expect(&eth(&caps[1].0), XDP_PASS, &[Counter::GwToTcp, Counter::IngressSynAck]);
    let t = tcp_of(2);
    gw.expect(&client_tcp(0x10, t.seq, t.ack, &[], &[]), XDP_PASS, &[Counter::GwToSal, Counter::FlowsProven]);
    let t = tcp_of(4);
    gw.expect(&client_tcp(0x18, t.seq, t.ack, &[], t.payload), XDP_PASS, &[Counter::GwToSal]);
    gw.expect(&eth(&caps[6].0), XDP_PASS, &[Counter::GwToTcp]);
    let syn = client_tcp(0x02, 77_000, 0, &[2, 4, 0x05, 0xb4], &[]);
    let stays = |gw: &mut Gw, why: &str| {
        let out = gw.expect(&syn, XDP_PASS, &[Counter::GwToSal]);
        let sal = ServalRepr::parse(&out[14..]).unwrap().sal;
        assert_eq!((sal.src_flowid.0, sal.control), (old, None), "{why}: data of the old flow");
        assert_eq!(gw.flows().len(), 1, "{why}");
    };
    stays(&mut gw, "established");
    // The client's FIN, acknowledged by the server: half-closed.
    let fin_seq = t.seq + t.payload.len() as u32;
    gw.expect(&client_tcp(0x11, fin_seq, t.ack + 17, &[], &[]), XDP_PASS, &[Counter::GwToSal]);
    gw.expect(&eth(&caps[9].0), XDP_PASS, &[Counter::GwToTcp]);
    stays(&mut gw, "half-closed");
    // The server's FIN and the client's last ACK: over.
    gw.expect(&eth(&caps[12].0), XDP_PASS, &[Counter::GwToTcp]);
    assert_eq!(gw.flows()[0].flags & flag::PEER_FIN, flag::PEER_FIN);
    let t = tcp_of(13);
    gw.expect(&client_tcp(0x10, t.seq, t.ack, &[], &[]), XDP_PASS, &[Counter::GwToSal]);
    let out = gw.expect(
        &syn,
        XDP_PASS,
        &[Counter::GwToSal, Counter::EgressSyn, Counter::FlowsHalfOpened, Counter::FlowsReopened],
    );
    let flows = gw.flows();
    assert_eq!(flows.len(), 2, "the old flow stays until the agent frees it");
    let new = flows.iter().find(|f| f.local_flow != old).unwrap();
    assert_eq!((new.state, new.flags & flag::PROVEN), (state::SYN_SENT, 0));
    let sal = ServalRepr::parse(&out[14..]).unwrap().sal;
    let c = sal.control.unwrap();
    assert_eq!(
        (sal.src_flowid.0, sal.dst_flowid.0, c.flags, c.verno, c.nonce),
        (new.local_flow, 0, xlate_common::wire::sal::ControlFlags::SYN, new.local_verno, new.local_nonce),
        "a SAL SYN of the new flow"
    );
    let tuples: HashMap<_, FlowKey, TupleEntry> = HashMap::try_from(gw.bed.ebpf.map("FLOW_TUPLES").unwrap()).unwrap();
    assert_eq!(tuples.get(&new.tuple(), 0).unwrap().flow, new.local_flow, "the tuple names the new flow");
    let reopened: HashMap<_, u32, FlowAddrs> = HashMap::try_from(gw.bed.ebpf.map("FLOW_REOPENED").unwrap()).unwrap();
    let addrs = FlowAddrs { local_ip: CAP_CLIENT.octets(), peer_ip: CAP_SERVER.octets() };
    assert_eq!(reopened.get(&old, 0).unwrap(), addrs, "the old flow's addresses, for its SAL close");
    // Its retransmission is the same SYN, not another new flow.
    let again = gw.expect(&syn, XDP_PASS, &[Counter::GwToSal, Counter::EgressSyn]);
    assert_eq!(again, out);
    assert_eq!(gw.flows().len(), 2);
}

#[test]
fn control_packets_of_the_original_stack_go_to_the_agent_unchanged() {
    require_root();
    // The reset (ACK|RST) of active-reset.pcap, to the client 10.0.1.1.
    let rst = capture_packets("active-reset.pcap").pop().unwrap().0;
    let mut gw = Gw::new(Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 2, 2));
    let frame = eth(&rst);
    assert_eq!(gw.expect(&frame, XDP_PASS, &[Counter::IngressToAgent]), frame);
    // The RSYN of migration-rsyn.pcap, to the server 10.0.2.2.
    let rsyn = capture_packets("migration-rsyn.pcap")
        .into_iter()
        .find(|(_, r)| r.sal.control.is_some_and(|c| c.flags == xlate_common::wire::sal::ControlFlags::RSYN))
        .unwrap()
        .0;
    let mut gw = Gw::new(Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 4, 1));
    let frame = eth(&rsyn);
    assert_eq!(gw.expect(&frame, XDP_PASS, &[Counter::IngressToAgent]), frame);
}

#[test]
fn bad_packets_are_dropped_or_passed_and_counted() {
    require_root();
    let (mut gw, caps) = Gw::at_capture_start();
    // A SYN-ACK that does not acknowledge our SYN.
    let mut wrong = caps[1].0.clone();
    wrong[20 + 20] ^= 1; // ackno
    fix_sal(&mut wrong);
    gw.expect(&eth(&wrong), XDP_DROP, &[Counter::DropBadAck]);
    // A flipped SAL checksum byte: in a data packet (the base header
    // alone, summed in place) and in a SYN-ACK (extensions, summed by the
    // kernel's helper).
    let mut bad = caps[6].0.clone();
    assert_eq!(usize::from(bad[20 + 8]) * 4, 12, "capture packet 6 is data with the base header alone");
    bad[20 + 10] ^= 0xff;
    gw.expect(&eth(&bad), XDP_DROP, &[Counter::DropBadChecksum]);
    let mut bad = caps[1].0.clone();
    assert!(usize::from(bad[20 + 8]) * 4 > 12, "capture packet 1 is a SYN-ACK with extensions");
    bad[20 + 10] ^= 0xff;
    gw.expect(&eth(&bad), XDP_DROP, &[Counter::DropBadChecksum]);
    // Data for a flow the translator does not have.
    let mut unknown = caps[6].0.clone();
    unknown[20 + 4..20 + 8].copy_from_slice(&99u32.to_be_bytes());
    fix_sal(&mut unknown);
    gw.expect(&eth(&unknown), XDP_DROP, &[Counter::DropUnknownFlow]);
    // shl below the base header.
    let mut short = caps[6].0.clone();
    short[20 + 8] = 2;
    gw.expect(&eth(&short), XDP_DROP, &[Counter::DropBadLength]);
    // A mid-connection segment to the service without a flow: passed for
    // the fallback; other TCP and IP options: passed, the latter counted.
    let stray = client_tcp_from(40001, 0x10, 5, 5, &[], &[]);
    assert_eq!(gw.expect(&stray, XDP_PASS, &[Counter::GwPassNoFlow]), stray);
    let mut other = client_tcp(0x02, 5, 0, &[], &[]);
    other[14 + 22..14 + 24].copy_from_slice(&81u16.to_be_bytes()); // port 81: not configured
    assert_eq!(gw.expect(&other, XDP_PASS, &[]), other);
    let mut opts = stray.clone();
    opts[14] = 0x46;
    assert_eq!(gw.expect(&opts, XDP_PASS, &[Counter::GwPassIpOptions]), opts);
    let mut frag = stray.clone();
    frag[14 + 6] = 0x20;
    assert_eq!(gw.expect(&frag, XDP_PASS, &[Counter::GwPassFragment]), frag);
    // A frame cut inside the IPv4 header: passed as it is, and counted.
    let cut = stray[..14 + 8].to_vec();
    assert_eq!(gw.expect(&cut, XDP_PASS, &[Counter::GwPassTruncated]), cut);
    // A TCP segment cut inside its header: passed before anything was
    // written.
    let cut = stray[..14 + 20 + 10].to_vec();
    assert_eq!(gw.expect(&cut, XDP_PASS, &[Counter::GwPassTruncated]), cut);
}

fn fix_sal(ip: &mut [u8]) {
    let hl = usize::from(ip[28]) * 4;
    ip[30] = 0;
    ip[31] = 0;
    let c = xlate_common::wire::checksum::checksum(&ip[20..20 + hl]);
    ip[30..32].copy_from_slice(&c.to_be_bytes());
}

// ------------------------------------------------------------ checksums
//
// A TCP checksum field equal to the pseudo-header sum is either a partial
// checksum (the sender left the rest to offload) or, once in 65536
// segments, a complete checksum that happens to have that value. XDP
// cannot tell them apart; it writes the partial form and leaves a note for
// the TC stage, which completes the checksum unless the skb is
// CHECKSUM_PARTIAL. These fixtures pin both halves: the partial form is
// exactly what offload needs, and the note turns it into exactly the
// complete checksum.

use xlate_common::flow::gw::{self, ChecksumNote, ChecksumNoteKey};
use xlate_common::wire::checksum;

/// The pseudo-header sum (folded) of the TCP segment of an IPv4 datagram.
fn pseudo_sum(ip: &[u8], tcp_len: usize) -> u16 {
    let (src, dst) = (ip[12..16].try_into().unwrap(), ip[16..20].try_into().unwrap());
    checksum::fold(checksum::pseudo_header_v4(src, dst, 6, tcp_len as u16))
}

/// True when the TCP segment at `tcp` of datagram `ip` has a valid
/// complete checksum.
fn tcp_valid(ip: &[u8], tcp: usize) -> bool {
    let seg = &ip[tcp..];
    let s = checksum::combine(
        checksum::pseudo_header_v4(ip[12..16].try_into().unwrap(), ip[16..20].try_into().unwrap(), 6, seg.len() as u16),
        checksum::sum(seg),
    );
    checksum::fold(s) == 0xffff
}

/// Sets the 16-bit word at `word` (an even offset into the TCP segment) so
/// that the segment's valid complete checksum equals its pseudo-header
/// sum: the ambiguous case, as a real NIC's client sends it.
fn make_ambiguous(ip: &mut [u8], tcp: usize, word: usize) {
    let len = ip.len() - tcp;
    let p = pseudo_sum(ip, len);
    ip[tcp + word..tcp + word + 2].copy_from_slice(&[0, 0]);
    ip[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
    let s = checksum::fold(checksum::combine(
        checksum::pseudo_header_v4(ip[12..16].try_into().unwrap(), ip[16..20].try_into().unwrap(), 6, len as u16),
        checksum::sum(&ip[tcp..]),
    ));
    // ~fold(S + w) == P  <=>  w == ~P - S == ~P + ~S (one's complement).
    let w = checksum::fold(u32::from(!p) + u32::from(!s));
    ip[tcp + word..tcp + word + 2].copy_from_slice(&w.to_be_bytes());
    ip[tcp + 16..tcp + 18].copy_from_slice(&p.to_be_bytes());
    assert!(tcp_valid(ip, tcp), "complete checksum");
    assert_eq!(u16::from_be_bytes([ip[tcp + 16], ip[tcp + 17]]), pseudo_sum(ip, len), "and ambiguous");
}

/// The builds of the XDP program this kernel loads: both where the
/// verifier allows XDP metadata (each path is tested wherever it can be),
/// the map-carried notes alone where it does not.
fn programs() -> Vec<&'static str> {
    let mut p = vec![gw::XDP_PROGRAM_NO_META];
    if xlate_user::kernel_features::get().xdp_meta {
        p.push(gw::XDP_PROGRAM);
    }
    p
}

/// The note the program left for the frame it rewrote (in XDP metadata
/// or in the notes map, by build).
fn note_left(gw: &Gw, frame: &[u8]) -> ChecksumNote {
    if gw.bed.program == gw::XDP_PROGRAM {
        let meta = &gw.bed.last_meta;
        assert_eq!(meta.len(), ChecksumNote::LEN, "a checksum note in front of the frame");
        let word = |i: usize| u32::from_ne_bytes(meta[i..i + 4].try_into().unwrap());
        let note = ChecksumNote { magic: word(0), csum_offset: word(4), diff: word(8) };
        assert_eq!(note.magic, ChecksumNote::MAGIC);
        return note;
    }
    assert!(gw.bed.last_meta.is_empty(), "{}: no XDP metadata", gw.bed.program);
    let notes: HashMap<_, ChecksumNoteKey, ChecksumNote> =
        HashMap::try_from(gw.bed.ebpf.map(gw::CHECKSUM_NOTES).unwrap()).unwrap();
    let all: Vec<(ChecksumNoteKey, ChecksumNote)> = notes.iter().map(|r| r.unwrap()).collect();
    assert_eq!(all.len(), 1, "one note in {}", gw::CHECKSUM_NOTES);
    let (key, note) = all[0];
    let ip = &frame[14..34];
    let tcp = note.csum_offset as usize - 16;
    let want = ChecksumNoteKey::new(ip.try_into().unwrap(), frame[tcp + 4..tcp + 12].try_into().unwrap());
    assert_eq!(key, want, "the note's key is the rewritten frame's");
    assert_eq!(note.magic, ChecksumNote::MAGIC);
    note
}

/// The note the program left, and the frame after the TC stage applied
/// it, as for a skb that is not CHECKSUM_PARTIAL. With metadata, as
/// `bpf_l4_csum_replace` does (BPF_PROG_TEST_RUN cannot hand XDP metadata
/// to a TC program); with the map, the TC program itself runs on the frame
/// and must take the note out of the map.
fn settle(gw: &mut Gw, frame: &[u8]) -> (ChecksumNote, Vec<u8>) {
    let note = note_left(gw, frame);
    if gw.bed.program == gw::XDP_PROGRAM {
        let off = note.csum_offset as usize;
        let mut f = frame.to_vec();
        let field = u16::from_be_bytes([f[off], f[off + 1]]);
        f[off..off + 2].copy_from_slice(&note.apply(field).to_be_bytes());
        return (note, f);
    }
    let before = gw.counters();
    let (verdict, out) = gw.bed.run_tc_stage(frame).unwrap();
    assert_eq!(verdict, 0, "TC_ACT_OK");
    let after = gw.counters();
    for c in Counter::all() {
        let d = after[c.index() as usize] - before[c.index() as usize];
        assert_eq!(d, u64::from(c == Counter::GwChecksumCompleted), "TC stage: counter {}", c.name());
    }
    let notes: HashMap<_, ChecksumNoteKey, ChecksumNote> =
        HashMap::try_from(gw.bed.ebpf.map(gw::CHECKSUM_NOTES).unwrap()).unwrap();
    assert_eq!(notes.keys().count(), 0, "the TC stage took the note out of the map");
    (note, out)
}

/// A translator with the capture's flow past its SYN-ACK and the client's
/// third ACK (which proves the client is there), and the capture.
fn established(program: &'static str) -> (Gw, Vec<(Vec<u8>, ServalRepr<'static>)>) {
    require_root();
    let caps = capture_packets("handshake-data-close.pcap");
    let mut gw = Gw::with_program(program, CAP_CLIENT, CAP_SERVER);
    gw.insert_capture_flow();
    gw.expect(&eth(&caps[1].0), XDP_PASS, &[Counter::GwToTcp, Counter::IngressSynAck]);
    let Transport::Tcp(t) = caps[2].1.transport else { panic!() };
    gw.expect(&client_tcp(0x10, t.seq, t.ack, &[], &[]), XDP_PASS, &[Counter::GwToSal, Counter::FlowsProven]);
    (gw, caps)
}

/// The client's data segment of the capture, as a real NIC sends it.
fn client_data(caps: &[(Vec<u8>, ServalRepr<'static>)]) -> (Vec<u8>, u32, u32, usize) {
    let Transport::Tcp(t) = caps[4].1.transport else { panic!() };
    (client_tcp(0x18, t.seq, t.ack, &[], t.payload), t.seq, t.ack, t.payload.len())
}

#[test]
fn an_ambiguous_complete_checksum_leaves_valid_both_ways() {
    for program in programs() {
        ambiguous_complete_checksum(program);
    }
}

fn ambiguous_complete_checksum(program: &'static str) {
    let (mut gw, caps) = established(program);

    // Client -> service: a data segment with a complete checksum that
    // equals its pseudo-header sum (tx offload off, as from a real NIC).
    let (mut seg, ..) = client_data(&caps);
    make_ambiguous(&mut seg[14..], 20, 20);
    let out = gw.expect(&seg, XDP_PASS, &[Counter::GwToSal, Counter::GwPartialChecksum]);
    let tcp = 14 + 20 + 12;
    assert!(!tcp_valid(&out[14..], tcp - 14), "XDP writes the partial form");
    assert_eq!(u16::from_be_bytes([out[tcp + 16], out[tcp + 17]]), pseudo_sum(&out[14..], out.len() - tcp));
    let (note, done) = settle(&mut gw, &out);
    assert_eq!(note.csum_offset as usize, tcp + 16);
    assert!(tcp_valid(&done[14..], tcp - 14), "the TC stage completes it");
    assert_eq!(&done[tcp..tcp + 4], &[0; 4], "ports zeroed");
    assert_eq!(&done[tcp + 4..tcp + 16], &seg[14 + 20 + 4..14 + 20 + 16], "the rest of the segment unchanged");
    assert_eq!(&done[tcp + 18..], &seg[14 + 20 + 18..], "the rest of the segment unchanged");

    // Service -> client: the server's data, made ambiguous the same way.
    let mut srv = caps[6].0.clone();
    let hl = usize::from(srv[20 + 8]) * 4;
    make_ambiguous(&mut srv, 20 + hl, 20 + 12);
    let out = gw.expect(&eth(&srv), XDP_PASS, &[Counter::GwToTcp, Counter::GwPartialChecksum]);
    assert!(!tcp_valid(&out[14..], 20), "XDP writes the partial form");
    let (note, done) = settle(&mut gw, &out);
    assert_eq!(note.csum_offset, 14 + 20 + 16);
    assert_eq!(done, expected_tcp(&srv), "after the TC stage: exactly the complete segment");
}

#[test]
fn a_partial_checksum_leaves_in_the_form_offload_completes() {
    for program in programs() {
        partial_checksum(program);
    }
}

fn partial_checksum(program: &'static str) {
    let (mut gw, caps) = established(program);

    // A veth sender with tx offload: the field holds the pseudo-header sum
    // and the rest of the segment is not summed.
    let (mut seg, seq, ack, payload) = client_data(&caps);
    let len = seg.len() - 34;
    let p = pseudo_sum(&seg[14..], len);
    seg[14 + 20 + 16..14 + 20 + 18].copy_from_slice(&p.to_be_bytes());
    let out = gw.expect(&seg, XDP_PASS, &[Counter::GwToSal, Counter::GwPartialChecksum]);
    let tcp = 14 + 20 + 12;
    assert_eq!(
        u16::from_be_bytes([out[tcp + 16], out[tcp + 17]]),
        pseudo_sum(&out[14..], out.len() - tcp),
        "the pseudo-header sum of the new addresses: what offload completes"
    );
    // Completed as offload does (the field, then sum the segment), it is valid.
    let mut done = out.clone();
    let s = checksum::sum(&done[tcp..]);
    let c = !checksum::fold(s);
    done[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
    assert!(tcp_valid(&done[14..], tcp - 14));
    assert_eq!(note_left(&gw, &out).csum_offset as usize, tcp + 16, "the note is there; TC skips it for partial skbs");

    // Unambiguous complete checksums carry no note.
    let seg = client_tcp(0x10, seq + payload as u32, ack, &[], &[]);
    let out = gw.expect(&seg, XDP_PASS, &[Counter::GwToSal]);
    assert!(gw.bed.last_meta.is_empty());
    let hl = usize::from(out[14 + 20 + 8]) * 4;
    assert!(tcp_valid(&out[14..], 20 + hl));
}
