//! Property tests: emit→parse round trips for every header kind, parsers
//! that never panic on arbitrary bytes, and incremental checksum updates
//! that agree with full recomputation.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use xlate_common::wire::{
    checksum,
    ipv4::{Ipv4Packet, Ipv4Repr},
    packet::{ServalRepr, Transport},
    sal::{ControlFlags, ControlRepr, Extension, FlowId, SalPacket, SalRepr, ServiceList, SourceAddrs, SourceView},
    tcp::{TcpFlags, TcpPacket, TcpRepr},
    udp::{UdpPacket, UdpRepr},
    IPPROTO_SAL, IPPROTO_TCP,
};
use xlate_common::{ServiceId, ServicePrefix};

fn addr() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}

fn service_id() -> impl Strategy<Value = ServiceId> {
    any::<[u8; 32]>().prop_map(ServiceId)
}

fn control() -> impl Strategy<Value = ControlRepr> {
    (any::<u8>(), any::<u32>(), any::<u32>(), any::<[u8; 8]>()).prop_map(|(f, verno, ackno, nonce)| ControlRepr {
        flags: ControlFlags::from_bits_truncate(f),
        verno,
        ackno,
        nonce,
    })
}

fn sal_repr(protocol: u8) -> impl Strategy<Value = SalRepr> {
    (
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(control()),
        proptest::collection::vec(service_id(), 0..=2),
        proptest::option::of(proptest::collection::vec(addr(), 2..=20)),
    )
        .prop_map(move |(s, d, control, services, source)| {
            let mut list = ServiceList::empty();
            for id in services {
                list.push(id).unwrap();
            }
            SalRepr {
                src_flowid: FlowId(s),
                dst_flowid: FlowId(d),
                protocol,
                control,
                services: list,
                source: source.map(|v| SourceAddrs::from_slice(&v).unwrap()),
            }
        })
}

/// TCP options as the stack sends them: MSS, NOP, window scale (padded).
fn tcp_options() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        any::<u16>().prop_map(|m| {
            let b = m.to_be_bytes();
            vec![2, 4, b[0], b[1]]
        }),
        (any::<u16>(), 0u8..15).prop_map(|(m, ws)| {
            let b = m.to_be_bytes();
            vec![2, 4, b[0], b[1], 1, 3, 3, ws]
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sal_round_trip(repr in sal_repr(IPPROTO_TCP), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut buf = vec![0u8; repr.header_len() + payload.len()];
        let mut pkt = SalPacket::new_unchecked(&mut buf[..]);
        repr.emit(&mut pkt).unwrap();
        pkt.payload_mut().copy_from_slice(&payload);
        let pkt = SalPacket::new_checked(&buf[..]).unwrap();
        prop_assert!(pkt.verify_checksum());
        prop_assert_eq!(pkt.header_len(), repr.header_len());
        prop_assert_eq!(SalRepr::parse(&pkt).unwrap(), repr);
        prop_assert_eq!(pkt.payload(), &payload[..]);
    }

    #[test]
    fn ipv4_round_trip(src in addr(), dst in addr(), protocol: u8, ttl: u8, tos: u8, ident: u16, dont_frag: bool, len in 0usize..100) {
        let repr = Ipv4Repr { src_addr: src, dst_addr: dst, protocol, payload_len: len, ttl, tos, ident, dont_frag };
        let mut buf = vec![0u8; 20 + len];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..])).unwrap();
        let pkt = Ipv4Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(Ipv4Repr::parse(&pkt).unwrap(), repr);
    }

    #[test]
    fn tcp_round_trip(src in addr(), dst in addr(), sp: u16, dp: u16, seq: u32, ack: u32, flags: u8, window: u16, urgent: u16,
                      options in tcp_options(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let repr = TcpRepr { src_port: sp, dst_port: dp, seq, ack, flags: TcpFlags(flags), window, urgent, options: &options, payload: &payload };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), src, dst).unwrap();
        let pkt = TcpPacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(TcpRepr::parse(&pkt, src, dst).unwrap(), repr);
    }

    #[test]
    fn udp_round_trip(src in addr(), dst in addr(), sp: u16, dp: u16, with_checksum: bool, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let repr = UdpRepr { src_port: sp, dst_port: dp, with_checksum, payload: &payload };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), src, dst).unwrap();
        let pkt = UdpPacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(UdpRepr::parse(&pkt, src, dst).unwrap(), repr);
    }

    #[test]
    fn serval_round_trip(src in addr(), dst in addr(), ident: u16, sal in sal_repr(IPPROTO_TCP), seq: u32, ack: u32, flags: u8,
                         options in tcp_options(), payload in proptest::collection::vec(any::<u8>(), 0..32), sal_only: bool) {
        let transport = if sal_only {
            Transport::None
        } else {
            Transport::Tcp(TcpRepr { src_port: 0, dst_port: 0, seq, ack, flags: TcpFlags(flags), window: 0, urgent: 0, options: &options, payload: &payload })
        };
        let ip = Ipv4Repr { src_addr: src, dst_addr: dst, protocol: IPPROTO_SAL, payload_len: 0, ttl: 64, tos: 0, ident, dont_frag: false };
        let repr = ServalRepr { ip, sal, transport };
        let mut buf = vec![0u8; repr.buffer_len()];
        let n = repr.emit(&mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        let parsed = ServalRepr::parse(&buf).unwrap();
        prop_assert_eq!(parsed.sal, repr.sal);
        prop_assert_eq!(parsed.transport, repr.transport);
        let mut again = vec![0u8; n];
        parsed.emit(&mut again).unwrap();
        prop_assert_eq!(again, buf);
    }

    /// Any sequence of extensions of every kind (PAD and ADDRESS too),
    /// emitted one after another, parses back to the same sequence.
    #[test]
    fn extension_sequences_round_trip(kinds in proptest::collection::vec((0u8..5, any::<[u8; 32]>(), 0usize..4), 0..6),
                                      c in control(), src in proptest::collection::vec(addr(), 2..=20)) {
        let src_bytes: Vec<u8> = src.iter().flat_map(|a| a.octets()).collect();
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for (k, bytes, n) in &kinds {
            if *k == 3 {
                let mut body = vec![0u8; 12 + 4 * n];
                for (i, b) in body.iter_mut().enumerate().skip(2) { *b = bytes[i % 32]; }
                body[0] = 0x30;
                body[1] = (12 + 4 * n) as u8;
                bodies.push(body);
            }
        }
        let mut bodies_iter = bodies.iter();
        let (mut ctl, mut svc, mut source) = (0, 0, 0);
        let mut exts = Vec::new();
        for (k, bytes, _) in &kinds {
            let e = match k {
                0 => Extension::Pad,
                1 if ctl == 0 => { ctl += 1; Extension::Control(c) }
                2 if svc < 2 => { svc += 1; Extension::Service(ServiceId(*bytes)) }
                3 => Extension::Address(bodies_iter.next().unwrap()),
                4 if source == 0 => { source += 1; Extension::Source(SourceView::new(&src_bytes)) }
                _ => continue,
            };
            exts.push(e);
        }
        let ext_len: usize = exts.iter().map(|e| e.buffer_len()).sum();
        let hl = (12 + ext_len).div_ceil(4) * 4;
        let mut buf = vec![0u8; hl];
        buf[8] = (hl / 4) as u8;
        let mut at = 12;
        for e in &exts { at += e.emit(&mut buf[at..]).unwrap(); }
        // Trailing bytes up to the word boundary are PAD (zero).
        let pads = hl - at;
        let pkt = SalPacket::new_checked(&buf[..]).unwrap();
        let parsed: Vec<Extension> = pkt.extensions().map(|e| e.unwrap()).collect();
        prop_assert_eq!(&parsed[..exts.len()], &exts[..]);
        prop_assert_eq!(parsed.len() - exts.len(), pads);
        prop_assert!(parsed[exts.len()..].iter().all(|e| *e == Extension::Pad));
    }

    /// Arbitrary bytes: the checked constructors and everything reachable
    /// from a successful one never panic (slice indexing would).
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(p) = SalPacket::new_checked(&bytes[..]) {
            let _ = p.verify_checksum();
            let _ = p.expected_checksum();
            for e in p.extensions() { prop_assert!(e.is_ok()); }
            let _ = (p.control(), p.service_id(), p.source().map(|s| s.iter().count()), p.payload().len());
            let _ = SalRepr::parse(&p);
        }
        // Unchecked iteration over garbage must stop with an error, not panic.
        let v = SalPacket::new_unchecked(&bytes[..]);
        if bytes.len() >= 12 { let _ = v.extensions().count(); }
        if let Ok(p) = TcpPacket::new_checked(&bytes[..]) {
            let _ = (p.mss(), p.payload().len(), p.verify_checksum(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST));
        }
        if let Ok(p) = UdpPacket::new_checked(&bytes[..]) {
            let _ = (p.payload().len(), p.verify_checksum(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST));
        }
        if let Ok(p) = Ipv4Packet::new_checked(&bytes[..]) {
            let _ = (p.payload().len(), p.options().len(), Ipv4Repr::parse(&p));
        }
        let _ = ServalRepr::parse(&bytes);
    }

    /// A SAL packet with a valid-looking base header and random extension
    /// bytes: the checked constructor rejects or accepts without panicking.
    #[test]
    fn sal_extension_garbage(shl in 3u8..30, ext in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut b = vec![0u8; 12];
        b[8] = shl;
        b.extend_from_slice(&ext);
        if let Ok(p) = SalPacket::new_checked(&b[..]) {
            prop_assert!(p.header_len() <= b.len());
            prop_assert!(p.extensions().all(|e| e.is_ok()));
        }
    }

    #[test]
    fn incremental_update16_matches_full(data in proptest::collection::vec(any::<u8>(), 4..128), at in 0usize..64, new: u16) {
        let mut data = data;
        if data.len() % 2 == 1 { data.push(0); }
        prop_assume!(data.iter().any(|b| *b != 0));
        let at = (at % (data.len() / 2)) * 2;
        let before = checksum::checksum(&data);
        let old = u16::from_be_bytes([data[at], data[at + 1]]);
        data[at..at + 2].copy_from_slice(&new.to_be_bytes());
        prop_assume!(data.iter().any(|b| *b != 0));
        prop_assert_eq!(checksum::update16(before, old, new), checksum::checksum(&data));
    }

    #[test]
    fn incremental_update32_matches_full(data in proptest::collection::vec(any::<u8>(), 8..128), at in 0usize..64, new: u32) {
        let mut data = data;
        if data.len() % 2 == 1 { data.push(0); }
        prop_assume!(data.iter().any(|b| *b != 0));
        let at = (at % (data.len() / 2 - 1)) * 2;
        let before = checksum::checksum(&data);
        let old = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        data[at..at + 4].copy_from_slice(&new.to_be_bytes());
        prop_assume!(data.iter().any(|b| *b != 0));
        prop_assert_eq!(checksum::update32(before, old, new), checksum::checksum(&data));
    }

    /// Port rewrite and MSS clamp keep the TCP checksum valid, at any
    /// option alignment (a leading NOP puts the MSS at an odd offset).
    #[test]
    fn tcp_rewrites_keep_checksum_valid(src in addr(), dst in addr(), sp: u16, dp: u16, mss in 500u16..9000, clamp in 500u16..9000,
                                        nop_first: bool, payload in proptest::collection::vec(any::<u8>(), 0..40)) {
        let m = mss.to_be_bytes();
        let options = if nop_first { vec![1, 2, 4, m[0], m[1], 1, 1, 1] } else { vec![2, 4, m[0], m[1]] };
        let repr = TcpRepr { src_port: 1, dst_port: 2, seq: 7, ack: 0, flags: TcpFlags(TcpFlags::SYN), window: 1000, urgent: 0, options: &options, payload: &payload };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), src, dst).unwrap();
        let mut pkt = TcpPacket::new_unchecked(&mut buf[..]);
        pkt.set_ports(sp, dp);
        let changed = pkt.clamp_mss(clamp);
        prop_assert_eq!(changed.is_some(), mss > clamp);
        prop_assert_eq!(pkt.mss(), Some(mss.min(clamp)));
        prop_assert!(pkt.verify_checksum(src, dst));
    }

    #[test]
    fn service_id_text_round_trip(id in service_id()) {
        prop_assert_eq!(id.to_string().parse::<ServiceId>().unwrap(), id);
        prop_assert_eq!(format!("{id:#}").parse::<ServiceId>().unwrap(), id);
    }

    #[test]
    fn service_prefix_text_round_trip(id in service_id(), bits in 0u16..=256) {
        let p = ServicePrefix::new(id.masked(bits), bits).unwrap();
        prop_assert_eq!(p.to_string().parse::<ServicePrefix>().unwrap(), p);
        prop_assert!(p.matches(&id));
    }

    #[test]
    fn service_id_parser_never_panics(s in "\\PC{0,80}") {
        let _ = s.parse::<ServiceId>();
        let _ = s.parse::<ServicePrefix>();
    }
}

// ------------------------------------------------ one set of receiver rules

/// One extension-area piece: well formed or broken in one way.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let ext = |t: u8, len: usize| {
        proptest::collection::vec(any::<u8>(), len).prop_map(move |mut v| {
            if !v.is_empty() {
                v[0] = t | (v[0] & 0x0f);
            }
            if v.len() > 1 {
                v[1] = len as u8;
            }
            v
        })
    };
    // Each kind at and around its legal lengths, so that off-by-one rules
    // show; plus any type and noise.
    prop_oneof![
        3 => Just(vec![0u8]),                                                  // PAD
        3 => (18usize..23).prop_flat_map(move |n| ext(0x10, n)),               // CONTROL (20)
        3 => (34usize..39).prop_flat_map(move |n| ext(0x20, n)),               // SERVICE (36)
        2 => (8usize..30).prop_flat_map(move |n| ext(0x30, n)),                // ADDRESS (12 + 4k)
        3 => (4usize..92).prop_flat_map(move |n| ext(0x40, n)),                // SOURCE (12..84, 4k)
        1 => (1usize..40, 0u8..16).prop_flat_map(move |(n, t)| ext(t << 4, n)), // any type, any length
        1 => proptest::collection::vec(any::<u8>(), 1..8),                     // noise
    ]
}

/// Only well-formed pieces: headers that break only the counting rules
/// (too many extensions, a third SERVICE, a second CONTROL or SOURCE).
fn valid_piece() -> impl Strategy<Value = Vec<u8>> {
    let fixed = |t: u8, len: usize| {
        let mut v = vec![0u8; len];
        v[0] = t;
        v[1] = len as u8;
        v
    };
    prop_oneof![
        Just(vec![0u8]),
        Just(fixed(0x10, 20)),
        Just(fixed(0x20, 36)),
        Just(fixed(0x30, 12)),
        Just(fixed(0x40, 12)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// The kernel's walker and the wire library agree on every header that
    /// fits the kernel's buffer: same verdict, and for valid ones the same
    /// CONTROL, SERVICE and SOURCE findings.
    #[test]
    fn the_kernel_walker_and_the_wire_parser_agree(
        pieces in prop_oneof![proptest::collection::vec(piece(), 0..14), proptest::collection::vec(valid_piece(), 0..14)],
        pad_to_word in any::<bool>(),
    ) {
        use xlate_common::wire::sal_walk::{walk_extensions, Exts, WALK_BUF_LEN};
        let mut h = vec![0u8; 12];
        for p in &pieces {
            h.extend_from_slice(p);
        }
        // shl counts words: pad with PAD bytes, or cut (which breaks the
        // last extension: a case worth having too); fit the kernel's buffer.
        h.truncate(WALK_BUF_LEN);
        if pad_to_word && h.len() < WALK_BUF_LEN {
            while !h.len().is_multiple_of(4) {
                h.push(0);
            }
        } else {
            h.truncate(h.len() / 4 * 4);
        }
        h[8] = (h.len() / 4) as u8;
        let mut buf = [0u8; WALK_BUF_LEN];
        buf[..h.len()].copy_from_slice(&h);
        let mut e = Exts::default();
        let walked = walk_extensions(&buf, h.len(), &mut e);
        let parsed = SalPacket::new_checked(&h[..]);
        prop_assert_eq!(walked, parsed.is_ok(), "walker {} vs parser {:?} on {:02x?}", walked, parsed.as_ref().err(), h);
        if let Ok(p) = parsed {
            let exts: Vec<Extension> = p.extensions().map(|x| x.unwrap()).collect();
            let control = exts.iter().find_map(|x| if let Extension::Control(c) = x { Some(*c) } else { None });
            prop_assert_eq!(e.has_control == 1, control.is_some());
            if let Some(c) = control {
                prop_assert_eq!((e.flags, e.verno, e.ackno, e.nonce), (c.flags.bits(), c.verno, c.ackno, c.nonce));
            }
            let services: Vec<ServiceId> =
                exts.iter().filter_map(|x| if let Extension::Service(s) = x { Some(*s) } else { None }).collect();
            prop_assert_eq!(usize::from(e.services), services.len());
            if let Some(first) = services.first() {
                let at = e.service_at as usize;
                prop_assert_eq!(&h[at..at + 32], &first.0[..]);
            }
            let source = exts.iter().find_map(|x| if let Extension::Source(s) = x { Some(*s) } else { None });
            prop_assert_eq!(e.sources == 1, source.is_some());
            if let Some(s) = source {
                prop_assert_eq!(Some(Ipv4Addr::from(e.source_last)), s.iter().last());
            }
        }
    }
}
