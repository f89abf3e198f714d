//! Packet fixtures for host mode's programs (TC egress and ingress, XDP
//! receive), run in the kernel with BPF_PROG_TEST_RUN: a table of cases,
//! each an input frame, the program, the verdict, exactly which counters
//! moved, and what the output must be. The cases of a table run in order
//! on one loaded object, so later ones see the flows earlier ones created
//! (a SYN, then its retransmission).

use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use xlate_common::flow::{names, role, Counter, EngineConfig, FlowState, ServeEntry};
use xlate_common::maps::{ServiceEntry, ServiceKey};
use xlate_common::wire::ipv4::{Ipv4Packet, Ipv4Repr};
use xlate_common::wire::packet::{ServalRepr, Transport};
use xlate_common::wire::sal::ControlFlags;
use xlate_common::wire::tcp::{TcpFlags, TcpPacket, TcpRepr};
use xlate_common::ServiceId;
use xlate_tests::{fixture, require_root};
use xlate_user::agent::flow_table::FlowTable;
use xlate_user::decode::read_pcap;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
/// What a TC program's `bpf_redirect` returns (a test run redirects
/// nothing).
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// This host: its SAL address, broadcast, MAC; a `--connect` and a `--serve`.
/// It stands where the server of the original stack's capture stood
/// (10.0.0.2 on 10.0.0.0/24), so that the captured SYN, sent to the link
/// broadcast, is addressed to it.
const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const BROADCAST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 255);
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];
const SERVICE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const LOCAL_PORT: u16 = 40000;
const SERVE_PORT: u16 = 8080;
const MAX_MSS: u16 = 1448;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Prog {
    Egress,
    Ingress,
    /// XDP, before GRO.
    Receive,
}

impl Prog {
    fn name(self) -> &'static str {
        match self {
            Prog::Egress => "xlate_host_egress",
            Prog::Ingress => "xlate_host_ingress",
            Prog::Receive => "xlate_host_receive",
        }
    }
}

/// One row of the table.
struct Case {
    name: &'static str,
    prog: Prog,
    input: Vec<u8>,
    verdict: u32,
    moved: &'static [Counter],
    /// What the output must satisfy (given the input and the loaded object).
    check: fn(&Bed, &[u8], &[u8]),
}

struct Bed {
    ebpf: aya::Ebpf,
    last_syn: std::cell::RefCell<Vec<u8>>,
}

impl Bed {
    /// `coalescer`: the device TC ingress sends translated segments out of
    /// (0: none, they go up where they are).
    fn new(coalescer: u32) -> Bed {
        let mut ebpf = xlate_user::ebpf::load().unwrap();
        for p in [Prog::Egress, Prog::Ingress] {
            let prog: &mut SchedClassifier = ebpf.program_mut(p.name()).unwrap().try_into().unwrap();
            prog.load().unwrap();
        }
        let prog: &mut Xdp = ebpf.program_mut(Prog::Receive.name()).unwrap().try_into().unwrap();
        prog.load().unwrap();
        let mut cfg: Array<_, EngineConfig> = Array::try_from(ebpf.map_mut(names::CONFIG).unwrap()).unwrap();
        let c = EngineConfig {
            addr: HOST.octets(),
            broadcast: BROADCAST.octets(),
            mac: HOST_MAC,
            max_mss: MAX_MSS,
            coalescer_ifindex: coalescer,
            ..Default::default()
        };
        cfg.set(0, c, 0).unwrap();
        FlowTable::of(ebpf.map(names::FLOWS).unwrap()).unwrap().seal(xlate_user::testbed::TEST_KEY).unwrap();
        xlate_user::ebpf::fresh_room(&mut ebpf, xlate_common::flow::SynBudget::HOST).unwrap();
        let mut connect: HashMap<_, ServiceKey, ServiceEntry> =
            HashMap::try_from(ebpf.map_mut(names::CONNECT).unwrap()).unwrap();
        connect.insert(ServiceKey::new(SERVICE_ADDR, 80), ServiceEntry { service_id: sid() }, 0).unwrap();
        let mut serve: HashMap<_, [u8; 32], ServeEntry> =
            HashMap::try_from(ebpf.map_mut(names::SERVE).unwrap()).unwrap();
        serve.insert(capture_sid().0, ServeEntry { port: SERVE_PORT.to_be_bytes(), _pad: [0; 2] }, 0).unwrap();
        Bed { ebpf, last_syn: Default::default() }
    }

    fn counters(&self) -> Vec<u64> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map(names::COUNTERS).unwrap()).unwrap();
        Counter::all().map(|c| m.get(&c.index(), 0).unwrap().iter().sum()).collect()
    }

    /// `input`, with [`TO_SERVER_FLOW`] replaced by the server flow's ID
    /// (and the SAL checksum fixed); any other frame as it is.
    fn addressed(&self, mut input: Vec<u8>) -> Vec<u8> {
        let at = 14 + 20 + 4;
        if input.len() < at + 4 || input[14 + 9] != 144 || input[at..at + 4] != TO_SERVER_FLOW.to_be_bytes() {
            return input;
        }
        let flows = self.flows();
        let f = flows.iter().find(|f| f.role == role::SERVER).expect("a case before made the server flow");
        input[at..at + 4].copy_from_slice(&f.local_flow.to_be_bytes());
        fix_sal(&mut input);
        input
    }

    fn flows(&self) -> Vec<FlowState> {
        let table = FlowTable::of(self.ebpf.map(names::FLOWS).unwrap()).unwrap();
        let mut v: Vec<FlowState> = table.iter().collect();
        v.sort_by_key(|f| f.local_flow);
        v
    }

    fn run(&mut self, prog: Prog, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 512];
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() };
        let r = if prog == Prog::Receive {
            let p: &mut Xdp = self.ebpf.program_mut(prog.name()).unwrap().try_into().unwrap();
            p.test_run(opts).unwrap()
        } else {
            let p: &mut SchedClassifier = self.ebpf.program_mut(prog.name()).unwrap().try_into().unwrap();
            p.test_run(opts).unwrap()
        };
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }
}

fn sid() -> ServiceId {
    "00000050".parse().unwrap()
}

/// The SAL packets of the original stack's handshake-data-close capture.
fn capture() -> Vec<Vec<u8>> {
    let (link, frames) = read_pcap(&fixture("handshake-data-close.pcap")).unwrap();
    frames
        .iter()
        .filter_map(|f| link.ipv4(f).ok())
        .filter(|ip| ip[9] == 144)
        .map(|ip| ip[..usize::from(u16::from_be_bytes([ip[2], ip[3]]))].to_vec())
        .collect()
}

fn capture_sid() -> ServiceId {
    ServalRepr::parse(&capture()[0]).unwrap().sal.service_id().unwrap()
}

fn eth(dst: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&[2, 0, 0, 0, 0, 0x99, 0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// A segment of the local TCP (complete checksum).
fn local_tcp(dst: Ipv4Addr, dport: u16, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: LOCAL_PORT,
        dst_port: dport,
        seq: 1000,
        ack: 0,
        flags: TcpFlags(flags),
        window: 502,
        urgent: 0,
        options,
        payload,
    };
    let ip = Ipv4Repr { ttl: 64, ident: 7, dont_frag: true, ..Ipv4Repr::new(HOST, dst, 6, tcp.buffer_len()) };
    let mut b = vec![0u8; 20 + tcp.buffer_len()];
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut b[..])).unwrap();
    tcp.emit(&mut TcpPacket::new_unchecked(&mut b[20..]), HOST, dst).unwrap();
    eth([2, 0, 0, 0, 0, 0x77], &b)
}

const SYN_OPTIONS: [u8; 4] = [2, 4, 0x05, 0xb4]; // MSS 1460

fn unchanged(_: &Bed, input: &[u8], output: &[u8]) {
    assert_eq!(output, input);
}

fn nothing(_: &Bed, _: &[u8], _: &[u8]) {}

fn no_flow(bed: &Bed, _: &[u8], _: &[u8]) {
    assert!(bed.flows().is_empty(), "a flow was made: {:?}", bed.flows());
}

/// The output is the SAL SYN of the client flow the egress program made.
fn sal_syn(bed: &Bed, _: &[u8], out: &[u8]) {
    let flows = bed.flows();
    let f = flows.iter().find(|f| f.role == role::CLIENT).expect("a client flow");
    assert_eq!(&out[..6], &[0xff; 6], "first SYN to the link broadcast MAC");
    let p = ServalRepr::parse(&out[14..]).expect("valid SAL, checksums included");
    assert_eq!((p.ip.src_addr, p.ip.dst_addr, p.ip.protocol), (HOST, BROADCAST, 144));
    assert_eq!(p.sal.src_flowid.0, f.local_flow);
    assert_eq!(p.sal.service_id(), Some(sid()));
    let c = p.sal.control.expect("CONTROL");
    assert_eq!((c.flags, c.verno, c.nonce), (ControlFlags::SYN, f.local_verno, f.local_nonce));
    let Transport::Tcp(t) = p.transport else { panic!("TCP inside") };
    assert_eq!((t.src_port, t.dst_port, t.seq), (0, 0, 1000));
    assert_eq!(t.options[..4], [2, 4, (MAX_MSS >> 8) as u8, MAX_MSS as u8], "MSS clamped");
    *bed.last_syn.borrow_mut() = out.to_vec();
}

fn same_sal_syn(bed: &Bed, _: &[u8], out: &[u8]) {
    assert_eq!(out, &bed.last_syn.borrow()[..], "a retransmitted SYN: the very same SAL SYN");
    assert_eq!(bed.flows().len(), 1);
}

/// The output is a TCP SYN to the served local port, from the remote
/// client's address and a port of the new server flow.
fn tcp_syn_to_server(bed: &Bed, input: &[u8], out: &[u8]) {
    let flows = bed.flows();
    let f = flows.iter().find(|f| f.role == role::SERVER).expect("a server flow");
    assert_eq!(&out[..6], &HOST_MAC, "delivered to this host");
    let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
    let sal_in = ServalRepr::parse(&input[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.protocol()), (sal_in.ip.src_addr, HOST, 6));
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(t.verify_checksum(ip.src_addr(), ip.dst_addr()), "TCP checksum valid");
    assert_eq!((t.src_port(), t.dst_port()), (u16::from_be_bytes(f.tcp_peer_port), SERVE_PORT));
    assert!(t.src_port() >= 32768, "client ports rotate through 32768-65535");
    let Transport::Tcp(orig) = sal_in.transport else { panic!() };
    assert_eq!((t.seq(), t.flags()), (orig.seq, orig.flags));
}

/// The output is the input's TCP segment, with `payload` bytes of data,
/// delivered to this host's served port from the server flow's port.
fn tcp_to_server(bed: &Bed, input: &[u8], out: &[u8], payload: usize) {
    let flows = bed.flows();
    let f = flows.iter().find(|f| f.role == role::SERVER).expect("a server flow");
    assert_eq!(&out[..6], &HOST_MAC, "delivered to this host");
    let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
    let sal_in = ServalRepr::parse(&input[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.protocol()), (sal_in.ip.src_addr, HOST, 6));
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(t.verify_checksum(ip.src_addr(), ip.dst_addr()), "TCP checksum valid");
    assert_eq!((t.src_port(), t.dst_port()), (u16::from_be_bytes(f.tcp_peer_port), SERVE_PORT));
    let Transport::Tcp(orig) = sal_in.transport else { panic!() };
    assert_eq!((t.seq(), t.ack(), t.flags(), t.payload().len()), (orig.seq, orig.ack, orig.flags, payload));
}

/// [`tcp_to_server`]: the captured request (17 bytes).
fn request_to_server(bed: &Bed, input: &[u8], out: &[u8]) {
    tcp_to_server(bed, input, out, 17)
}

/// [`tcp_to_server`]: a segment without data.
fn bare_to_server(bed: &Bed, input: &[u8], out: &[u8]) {
    tcp_to_server(bed, input, out, 0)
}

fn one_server_flow(bed: &Bed, input: &[u8], out: &[u8]) {
    tcp_syn_to_server(bed, input, out);
    assert_eq!(bed.flows().iter().filter(|f| f.role == role::SERVER).count(), 1, "the retransmission found its flow");
}

fn cases() -> Vec<Case> {
    let caps = capture();
    let syn = eth([0xff; 6], &caps[0]);
    let fin = eth([2, 0, 0, 0, 0, 0x01], &caps[11]);
    let mut bad_sum = syn.clone();
    bad_sum[14 + 20 + 10] ^= 0xff;
    let mut unknown = eth(HOST_MAC, &caps[6]);
    unknown[14 + 20 + 4..14 + 20 + 8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    fix_sal(&mut unknown);
    let mut options = syn.clone();
    options[14] = 0x46;
    let mut unserved = syn.clone();
    // The SERVICE extension's ID (after base 12 and CONTROL 20, at +4).
    unserved[14 + 20 + 32 + 4] ^= 0x01;
    fix_sal(&mut unserved);
    let mut udp = local_tcp(SERVICE_ADDR, 80, 0x02, &[], &[]);
    udp[14 + 9] = 17;
    // The captured SYN, still to the link broadcast MAC, but addressed to
    // another host on the link (as a route target's SYN is).
    let mut elsewhere = syn.clone();
    {
        let mut ip = xlate_common::wire::ipv4::Ipv4Packet::new_unchecked(&mut elsewhere[14..]);
        ip.set_dst_addr(Ipv4Addr::new(10, 0, 0, 3));
        ip.fill_checksum();
    }
    // The captured SYN to another host's MAC and address, as a switch
    // floods it to every port while it does not know where that host is.
    let mut flooded = elsewhere.clone();
    flooded[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x33]);
    vec![
        Case {
            name: "a local SYN to a --connect address becomes a SAL SYN",
            prog: Prog::Egress,
            input: local_tcp(SERVICE_ADDR, 80, 0x02, &SYN_OPTIONS, &[]),
            verdict: TC_ACT_OK,
            moved: &[Counter::EgressTranslated, Counter::EgressSyn],
            check: sal_syn,
        },
        Case {
            name: "its retransmission becomes the same SAL SYN",
            prog: Prog::Egress,
            input: local_tcp(SERVICE_ADDR, 80, 0x02, &SYN_OPTIONS, &[]),
            verdict: TC_ACT_OK,
            moved: &[Counter::EgressTranslated, Counter::EgressSyn],
            check: same_sal_syn,
        },
        Case {
            name: "TCP to anywhere else passes untouched",
            prog: Prog::Egress,
            input: local_tcp(Ipv4Addr::new(10, 0, 0, 7), 22, 0x02, &SYN_OPTIONS, &[]),
            verdict: TC_ACT_OK,
            moved: &[Counter::EgressNotOurs],
            check: unchanged,
        },
        Case {
            name: "UDP passes untouched, uncounted",
            prog: Prog::Egress,
            input: udp,
            verdict: TC_ACT_OK,
            moved: &[],
            check: unchanged,
        },
        Case {
            name: "a SYN to the link broadcast MAC but another host's address is not ours",
            prog: Prog::Ingress,
            input: elsewhere,
            verdict: TC_ACT_SHOT,
            moved: &[Counter::DropSynForAnotherHost],
            check: nothing,
        },
        Case {
            name: "a SYN to another host's MAC (a switch flooding it) is not ours",
            prog: Prog::Ingress,
            input: flooded,
            verdict: TC_ACT_SHOT,
            moved: &[Counter::DropSynForAnotherHost],
            check: nothing,
        },
        Case {
            name: "the original stack's SYN for a served service reaches the local server as TCP",
            prog: Prog::Ingress,
            input: syn.clone(),
            verdict: TC_ACT_OK,
            // Half-open until the client's ACK carries our nonce.
            moved: &[Counter::IngressSyn, Counter::IngressTranslated, Counter::FlowsHalfOpened],
            check: tcp_syn_to_server,
        },
        Case {
            name: "its retransmission finds the same flow",
            prog: Prog::Ingress,
            input: syn,
            verdict: TC_ACT_OK,
            moved: &[Counter::IngressSyn, Counter::IngressTranslated],
            check: one_server_flow,
        },
        Case {
            name: "a SAL FIN (control only) goes to the agent unchanged",
            prog: Prog::Ingress,
            input: fin,
            verdict: TC_ACT_OK,
            moved: &[Counter::IngressToAgent],
            check: unchanged,
        },
        Case {
            name: "a bad SAL checksum is dropped",
            prog: Prog::Ingress,
            input: bad_sum,
            verdict: TC_ACT_SHOT,
            moved: &[Counter::DropBadChecksum],
            check: nothing,
        },
        Case {
            name: "data for an unknown flow is dropped",
            prog: Prog::Ingress,
            input: unknown,
            verdict: TC_ACT_SHOT,
            moved: &[Counter::DropUnknownFlow],
            check: nothing,
        },
        Case {
            name: "SAL with IP options is dropped",
            prog: Prog::Ingress,
            input: options,
            verdict: TC_ACT_SHOT,
            moved: &[Counter::DropIpOptions],
            check: nothing,
        },
        Case {
            name: "a SYN for a service this host does not serve is dropped",
            prog: Prog::Ingress,
            input: unserved,
            verdict: TC_ACT_SHOT,
            moved: &[Counter::IngressSyn, Counter::DropUnknownService],
            check: nothing,
        },
        Case {
            name: "plain TCP is not host mode's on ingress",
            prog: Prog::Ingress,
            input: local_tcp(HOST, 22, 0x02, &[], &[]),
            verdict: TC_ACT_OK,
            moved: &[Counter::IngressNotSal],
            check: unchanged,
        },
    ]
}

/// The XDP receive program: what it translates or drops is final; all
/// else it passes untouched and uncounted to the TC ingress program (the
/// table above), which decides and counts it.
fn receive_cases() -> Vec<Case> {
    let caps = capture();
    let broadcast_syn = eth([0xff; 6], &caps[0]);
    let syn = eth(HOST_MAC, &caps[0]);
    let fin = eth([2, 0, 0, 0, 0, 0x01], &caps[11]);
    let mut bad_sum = syn.clone();
    bad_sum[14 + 20 + 10] ^= 0xff;
    let mut options = syn.clone();
    options[14] = 0x46;
    // The SYN with a TCP checksum of exactly its pseudo-header sum: what a
    // sender leaving the sum to offload writes.
    let mut partial = syn.clone();
    {
        let ip = &syn[14..];
        let hl = usize::from(ip[28]) * 4;
        let tcp_len = u16::from_be_bytes([ip[2], ip[3]]) - 20 - hl as u16;
        let src: [u8; 4] = ip[12..16].try_into().unwrap();
        let dst: [u8; 4] = ip[16..20].try_into().unwrap();
        let pseudo =
            xlate_common::wire::checksum::fold(xlate_common::wire::checksum::pseudo_header_v4(src, dst, 6, tcp_len));
        let at = 14 + 20 + hl + 16;
        partial[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
    }
    // The SYN cut to 19 bytes of TCP: too short for a TCP header, but the
    // SAL header (all its checksum covers) is intact.
    let mut short = syn.clone();
    {
        let hl = usize::from(short[14 + 28]) * 4;
        short.truncate(14 + 20 + hl + 19);
        let mut ip = Ipv4Packet::new_unchecked(&mut short[14..]);
        ip.set_total_len((20 + hl + 19) as u16);
        ip.fill_checksum();
    }
    vec![
        Case {
            name: "XDP: a SAL SYN with less than a TCP header is dropped before it makes a flow",
            prog: Prog::Receive,
            input: short,
            verdict: XDP_DROP,
            moved: &[Counter::DropBadLength],
            check: no_flow,
        },
        Case {
            name: "XDP: a SAL SYN whose TCP checksum may be partial is left to TC, untouched",
            prog: Prog::Receive,
            input: partial,
            verdict: XDP_PASS,
            moved: &[Counter::IngressLeftToTc],
            check: unchanged,
        },
        Case {
            name: "XDP: a SYN to the link broadcast MAC is left to TC (only TC can make it PACKET_HOST)",
            prog: Prog::Receive,
            input: broadcast_syn,
            verdict: XDP_PASS,
            moved: &[],
            check: unchanged,
        },
        Case {
            name: "XDP: the original stack's SYN, to our MAC, reaches the local server as TCP before GRO",
            prog: Prog::Receive,
            input: syn.clone(),
            verdict: XDP_PASS,
            moved: &[
                Counter::IngressSyn,
                Counter::IngressTranslated,
                Counter::IngressTranslatedXdp,
                Counter::FlowsHalfOpened,
            ],
            check: tcp_syn_to_server,
        },
        Case {
            name: "XDP: its retransmission finds the same flow",
            prog: Prog::Receive,
            input: syn,
            verdict: XDP_PASS,
            moved: &[Counter::IngressSyn, Counter::IngressTranslated, Counter::IngressTranslatedXdp],
            check: one_server_flow,
        },
        Case {
            name: "XDP: a SAL FIN (control only) is left to TC, uncounted",
            prog: Prog::Receive,
            input: fin,
            verdict: XDP_PASS,
            moved: &[],
            check: unchanged,
        },
        Case {
            name: "XDP: a bad SAL checksum is dropped",
            prog: Prog::Receive,
            input: bad_sum,
            verdict: XDP_DROP,
            moved: &[Counter::DropBadChecksum],
            check: nothing,
        },
        Case {
            name: "XDP: SAL with IP options is left to TC (which drops it)",
            prog: Prog::Receive,
            input: options,
            verdict: XDP_PASS,
            moved: &[],
            check: unchanged,
        },
        Case {
            name: "XDP: plain TCP passes untouched, uncounted",
            prog: Prog::Receive,
            input: local_tcp(HOST, 22, 0x02, &[], &[]),
            verdict: XDP_PASS,
            moved: &[],
            check: unchanged,
        },
    ]
}

/// TC ingress with a coalescer (`--receive tc`): what it translates goes
/// out of the coalescer to pass GRO; what it leaves to the agent, passes
/// or drops stays where it was.
fn coalesce_cases() -> Vec<Case> {
    let caps = capture();
    let syn = eth([0xff; 6], &caps[0]);
    let fin = eth([2, 0, 0, 0, 0, 0x01], &caps[11]);
    let mut bad_sum = syn.clone();
    bad_sum[14 + 20 + 10] ^= 0xff;
    vec![
        Case {
            name: "coalesced: the original stack's SYN, translated, leaves through the coalescer",
            prog: Prog::Ingress,
            input: syn.clone(),
            verdict: TC_ACT_REDIRECT,
            moved: &[
                Counter::IngressSyn,
                Counter::IngressTranslated,
                Counter::FlowsHalfOpened,
                Counter::IngressCoalesced,
            ],
            check: tcp_syn_to_server,
        },
        Case {
            name: "coalesced: its retransmission, the same way",
            prog: Prog::Ingress,
            input: syn,
            verdict: TC_ACT_REDIRECT,
            moved: &[Counter::IngressSyn, Counter::IngressTranslated, Counter::IngressCoalesced],
            check: one_server_flow,
        },
        Case {
            name: "coalesced: the client's data goes through the coalescer",
            prog: Prog::Ingress,
            input: to_server_flow(&caps[4]),
            verdict: TC_ACT_REDIRECT,
            moved: &[Counter::IngressTranslated, Counter::IngressCoalesced],
            check: request_to_server,
        },
        Case {
            name: "coalesced: a pure ACK (no data: nothing for GRO) goes up in place",
            prog: Prog::Ingress,
            input: to_server_flow(&caps[7]),
            verdict: TC_ACT_OK,
            moved: &[Counter::IngressTranslated],
            check: bare_to_server,
        },
        Case {
            name: "coalesced: the client's FIN keeps its place behind data, through the coalescer",
            prog: Prog::Ingress,
            input: to_server_flow(&caps[8]),
            verdict: TC_ACT_REDIRECT,
            moved: &[Counter::IngressTranslated, Counter::IngressCoalesced],
            check: bare_to_server,
        },
        Case {
            name: "coalesced: a SAL FIN still goes to the agent unchanged, in place",
            prog: Prog::Ingress,
            input: fin,
            verdict: TC_ACT_OK,
            moved: &[Counter::IngressToAgent],
            check: unchanged,
        },
        Case {
            name: "coalesced: a bad SAL checksum is still dropped",
            prog: Prog::Ingress,
            input: bad_sum,
            verdict: TC_ACT_SHOT,
            moved: &[Counter::DropBadChecksum],
            check: nothing,
        },
        Case {
            name: "coalesced: plain TCP passes in place",
            prog: Prog::Ingress,
            input: local_tcp(HOST, 22, 0x02, &[], &[]),
            verdict: TC_ACT_OK,
            moved: &[Counter::IngressNotSal],
            check: unchanged,
        },
    ]
}

fn fix_sal(frame: &mut [u8]) {
    let ip = &mut frame[14..];
    let hl = usize::from(ip[28]) * 4;
    ip[30..32].copy_from_slice(&[0, 0]);
    let c = xlate_common::wire::checksum::checksum(&ip[20..20 + hl]);
    ip[30..32].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn host_mode_programs_follow_the_fixture_table() {
    require_root();
    follow(cases());
}

#[test]
fn host_mode_receive_at_xdp_follows_its_fixture_table() {
    require_root();
    follow(receive_cases());
}

#[test]
fn host_mode_ingress_with_a_coalescer_follows_its_fixture_table() {
    require_root();
    // Any index: a test run returns the verdict and redirects nothing.
    follow_on(Bed::new(1), coalesce_cases());
}

fn follow(cases: Vec<Case>) {
    follow_on(Bed::new(0), cases)
}

fn follow_on(mut bed: Bed, cases: Vec<Case>) {
    for case in cases {
        let input = bed.addressed(case.input);
        let before = bed.counters();
        let (verdict, out) = bed.run(case.prog, &input);
        assert_eq!(verdict, case.verdict, "{}: verdict", case.name);
        let after = bed.counters();
        for c in Counter::all() {
            let d = after[c.index() as usize] - before[c.index() as usize];
            assert_eq!(d, u64::from(case.moved.contains(&c)), "{}: counter {}", case.name, c.name());
        }
        (case.check)(&bed, &input, &out);
    }
}

/// The destination flow ID of a SAL input frame addressed to the server
/// flow an earlier case of the table made, whose ID the program chose.
const TO_SERVER_FLOW: u32 = 0x5e5e_5e5e;

/// A captured SAL frame of the original stack's flow, addressed to the
/// server flow of the table ([`TO_SERVER_FLOW`], put in by [`Bed::addressed`]).
fn to_server_flow(ip: &[u8]) -> Vec<u8> {
    let mut f = eth(HOST_MAC, ip);
    f[14 + 20 + 4..14 + 20 + 8].copy_from_slice(&TO_SERVER_FLOW.to_be_bytes());
    f
}
