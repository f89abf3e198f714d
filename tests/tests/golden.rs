//! Golden vectors: every packet of every capture of the original Serval
//! stack decodes, satisfies every receiver rule and checksum, and re-emits
//! from its parsed form to the identical bytes.

use xlate_common::wire::{
    ipv4::Ipv4Packet,
    packet::{ServalRepr, Transport},
    IPPROTO_SAL,
};
use xlate_tests::fixture;
use xlate_user::decode::{read_pcap, shape};

/// (file, frames, SAL packets) as listed in fixtures/serval/README.md.
const CAPTURES: &[(&str, usize, usize)] = &[
    ("handshake-data-close.pcap", 16, 16),
    ("via-service-router.pcap", 32, 32),
    ("migration-rsyn.pcap", 56, 56),
    ("active-reset.pcap", 16, 16),
    ("tcp-broadcast-resolution.pcap", 19, 17),
    ("tcp-unicast-rule.pcap", 15, 15),
    ("udp-connected.pcap", 13, 13),
    ("no-stack-icmp-unreachable.pcap", 4, 2),
    ("peer-migrates-rsynack-lost.pcap", 14, 14),
    ("original-migrates-server.pcap", 8, 8),
];

/// The SAL datagrams of a capture, in order, each cut at its IPv4 total
/// length (Ethernet padding removed).
fn sal_datagrams(name: &str) -> (usize, Vec<Vec<u8>>) {
    let (link, frames) = read_pcap(&fixture(name)).unwrap();
    let mut out = Vec::new();
    for f in &frames {
        let Ok(ip) = link.ipv4(f) else { continue };
        let p = Ipv4Packet::new_checked(ip).unwrap();
        if p.protocol() == IPPROTO_SAL {
            out.push(ip[..usize::from(p.total_len())].to_vec());
        }
    }
    (frames.len(), out)
}

fn shapes(name: &str) -> Vec<String> {
    sal_datagrams(name).1.iter().map(|d| shape(&ServalRepr::parse(d).unwrap())).collect()
}

#[test]
fn every_capture_decodes_and_reemits_byte_for_byte() {
    for &(name, frames, sal) in CAPTURES {
        let (n, datagrams) = sal_datagrams(name);
        assert_eq!(n, frames, "{name}: frame count");
        assert_eq!(datagrams.len(), sal, "{name}: SAL packet count");
        for (i, d) in datagrams.iter().enumerate() {
            let repr = ServalRepr::parse(d).unwrap_or_else(|e| panic!("{name} SAL packet {}: {e}", i + 1));
            let mut again = vec![0u8; repr.buffer_len()];
            repr.emit(&mut again).unwrap();
            assert_eq!(&again, d, "{name} SAL packet {}: re-emitted bytes differ", i + 1);
        }
    }
}

#[test]
fn handshake_data_close_has_the_documented_shape() {
    // serval-wire §4/§5: SYN with SERVICE (shl 17), SYN-ACK (shl 8), third
    // ACK with SERVICE (shl 17), data at shl 3, then TCP FIN/ACK as data
    // interleaved with SAL FIN / SAL ACK both ways (no transport).
    let expect = [
        "SYN/17/S",
        "SYN|ACK/8/S.",
        "ACK/17/.",
        "-/3/.",
        "-/3/P.",
        "-/3/.",
        "-/3/P.",
        "-/3/.",
        "-/3/F.",
        "-/3/.",
        "FIN/8/none",
        "ACK/8/none",
        "-/3/F.",
        "-/3/.",
        "FIN/8/none",
        "ACK/8/none",
    ];
    assert_eq!(shapes("handshake-data-close.pcap"), expect);
}

#[test]
fn service_router_adds_source_and_ttl() {
    let (_, d) = sal_datagrams("via-service-router.pcap");
    let before = ServalRepr::parse(&d[0]).unwrap();
    let after = ServalRepr::parse(&d[1]).unwrap();
    assert_eq!(before.sal.header_len(), 68);
    assert_eq!(after.sal.header_len(), 80);
    assert_eq!(after.ip.ttl, before.ip.ttl - 1);
    let src = after.sal.source.expect("forwarded SYN carries SOURCE");
    let want: [std::net::Ipv4Addr; 2] = ["10.0.1.1".parse().unwrap(), "10.0.1.254".parse().unwrap()];
    assert_eq!(src.as_slice(), &want);
    // The SYN-ACK appends the responder.
    let synack = ServalRepr::parse(&d[2]).unwrap();
    assert_eq!(synack.sal.source.unwrap().last(), Some(&"10.0.2.2".parse().unwrap()));
    // Flow IDs are untouched by the router.
    assert_eq!(before.sal.src_flowid, after.sal.src_flowid);
}

#[test]
fn migration_is_rsyn_rsynack_ack_from_the_new_address() {
    let (_, d) = sal_datagrams("migration-rsyn.pcap");
    let parsed: Vec<ServalRepr> = d.iter().map(|x| ServalRepr::parse(x).unwrap()).collect();
    let ctl: Vec<(String, String, String)> = parsed
        .iter()
        .filter(|p| matches!(p.transport, Transport::None))
        .map(|p| (p.sal.control.unwrap().flags.to_string(), p.ip.src_addr.to_string(), p.ip.dst_addr.to_string()))
        .step_by(2) // each appears twice: before and after the router
        .take(3)
        .collect();
    assert_eq!(
        ctl,
        [
            ("RSYN".into(), "10.0.4.1".into(), "10.0.2.2".into()),
            ("RSYN|ACK".into(), "10.0.2.2".into(), "10.0.4.1".into()),
            ("ACK".into(), "10.0.4.1".into(), "10.0.2.2".into()),
        ]
    );
    // RSYN consumes one verno; the RSYN-ACK acknowledges it.
    let rsyn = parsed.iter().find(|p| p.sal.control.is_some_and(|c| c.flags.to_string() == "RSYN")).unwrap();
    let rack = parsed.iter().find(|p| p.sal.control.is_some_and(|c| c.flags.to_string() == "RSYN|ACK")).unwrap();
    assert_eq!(rack.sal.control.unwrap().ackno, rsyn.sal.control.unwrap().verno.wrapping_add(1));
}

#[test]
fn active_reset_is_sal_only() {
    let s = shapes("active-reset.pcap");
    assert_eq!(s.last().unwrap(), "ACK|RST/8/none");
}

#[test]
fn tcp_ports_are_zero_on_the_serval_side() {
    for &(name, _, _) in CAPTURES {
        for d in sal_datagrams(name).1 {
            if let Transport::Tcp(t) = ServalRepr::parse(&d).unwrap().transport {
                assert_eq!((t.src_port, t.dst_port), (0, 0), "{name}");
            }
        }
    }
}
