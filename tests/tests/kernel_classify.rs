//! The classifier in the real kernel: BPF_PROG_TEST_RUN over the original
//! stack's frames, and attached with XDP to a veth in fresh network
//! namespaces while real packets cross it.

use std::collections::BTreeMap;
use std::time::Duration;

use xlate_common::maps::ClassifierCounter;
use xlate_common::wire::{ipv4::Ipv4Packet, packet::ServalRepr, IPPROTO_SAL};
use xlate_tests::netns::{veth, Netns};
use xlate_tests::{fixture, require_root, xlate_user_bin};
use xlate_user::classify::{Classifier, Counters};
use xlate_user::decode::{read_pcap, Link};

const XDP_PASS: u32 = 2;

fn ethernet(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(ip);
    f
}

/// Runs every frame of a capture through the program (SLL2 frames get an
/// Ethernet header instead); returns the counter deltas.
fn run_capture(c: &mut Classifier, name: &str) -> Counters {
    let before = c.counters().unwrap();
    let (link, frames) = read_pcap(&fixture(name)).unwrap();
    for f in frames {
        let frame = match link {
            Link::Ethernet => f,
            _ => ethernet(link.ipv4(&f).unwrap()),
        };
        assert_eq!(c.test_run(&frame).unwrap(), XDP_PASS, "{name}: the classifier passes everything");
    }
    c.counters().unwrap().since(&before)
}

#[test]
fn test_run_counts_the_original_stacks_frames() {
    require_root();
    let mut c = Classifier::load().unwrap();
    let d = run_capture(&mut c, "handshake-data-close.pcap");
    assert_eq!((d.get(ClassifierCounter::Seen), d.get(ClassifierCounter::Sal)), (16, 16), "{d}");
    let d = run_capture(&mut c, "tcp-broadcast-resolution.pcap");
    assert_eq!(
        (d.get(ClassifierCounter::Seen), d.get(ClassifierCounter::Sal), d.get(ClassifierCounter::NonIpv4)),
        (19, 17, 2),
        "{d}"
    );
    let d = run_capture(&mut c, "no-stack-icmp-unreachable.pcap");
    assert_eq!((d.get(ClassifierCounter::Sal), d.get(ClassifierCounter::OtherIpv4)), (2, 2), "{d}");
    let d = run_capture(&mut c, "migration-rsyn.pcap");
    assert_eq!((d.get(ClassifierCounter::Seen), d.get(ClassifierCounter::Sal)), (56, 56), "{d}");
}

#[test]
fn test_run_sorts_malformed_frames_by_reason() {
    require_root();
    let mut c = Classifier::load().unwrap();
    let (_, frames) = read_pcap(&fixture("handshake-data-close.pcap")).unwrap();
    let syn = frames[0].clone();
    let before = c.counters().unwrap();

    let mut bad_shl = syn.clone();
    bad_shl[14 + 20 + 8] = 2; // shl below the base header
    let mut cut = syn.clone();
    cut.truncate(14 + 20 + 40); // SAL header says 68 bytes, 40 present
    let mut frag = syn.clone();
    frag[14 + 6] = 0x20; // MF
    let mut bad_ihl = syn.clone();
    bad_ihl[14] = 0x44; // IHL 4
    let short_ip = syn[..14 + 10].to_vec();
    let mut tcp = syn.clone();
    tcp[14 + 9] = 6;
    let mut arp = syn.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);

    for f in [&bad_shl, &cut, &frag, &bad_ihl, &short_ip, &tcp, &arp] {
        assert_eq!(c.test_run(f).unwrap(), XDP_PASS);
    }
    let d = c.counters().unwrap().since(&before);
    let want = [
        (ClassifierCounter::Seen, 7),
        (ClassifierCounter::SalMalformed, 2),
        (ClassifierCounter::Fragment, 1),
        (ClassifierCounter::Malformed, 2),
        (ClassifierCounter::Tcp, 1),
        (ClassifierCounter::NonIpv4, 1),
        (ClassifierCounter::Sal, 0),
        (ClassifierCounter::OtherIpv4, 0),
    ];
    for (counter, n) in want {
        assert_eq!(d.get(counter), n, "{}: {d}", counter.name());
    }
}

fn parse_counters(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

/// SAL datagrams rebuilt from the capture's SYN with the test's addresses,
/// through the library's own emitter.
fn sal_syn(src: &str, dst: &str) -> Vec<u8> {
    let (link, frames) = read_pcap(&fixture("handshake-data-close.pcap")).unwrap();
    let ip = link.ipv4(&frames[0]).unwrap();
    let p = Ipv4Packet::new_checked(ip).unwrap();
    assert_eq!(p.protocol(), IPPROTO_SAL);
    let mut repr = ServalRepr::parse(&ip[..usize::from(p.total_len())]).unwrap();
    repr.ip.src_addr = src.parse().unwrap();
    repr.ip.dst_addr = dst.parse().unwrap();
    let mut out = vec![0u8; repr.buffer_len()];
    repr.emit(&mut out).unwrap();
    out
}

const SEND_RAW: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
dst = sys.argv[1]
for h in sys.argv[2:]:
    s.sendto(bytes.fromhex(h), (dst, 0))
"#;

const TCP_SERVER: &str = r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.201.0.1", 7000)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); c.sendall(c.recv(100)); c.close()
"#;

const TCP_CLIENT: &str = r#"
import socket
c = socket.create_connection(("10.201.0.1", 7000), timeout=5)
c.sendall(b"hello xlate"); assert c.recv(100) == b"hello xlate"; c.close()
"#;

#[test]
fn xdp_attached_in_a_namespace_counts_real_traffic() {
    require_root();
    let a = Netns::new("cls-a");
    let b = Netns::new("cls-b");
    veth(&a, "xa0", "10.201.0.1/24", &b, "xb0", "10.201.0.2/24");

    let bin = xlate_user_bin();
    let mut watch =
        a.spawn(bin.to_str().unwrap(), &["watch", "--iface", "xa0", "--interval", "0", "--xdp-mode", "generic"]);
    watch.wait_for_line("attached xlate_classify to xa0", Duration::from_secs(20));

    // A real TCP exchange from b to a.
    let mut server = a.spawn("python3", &["-c", TCP_SERVER]);
    server.wait_for_line("listening", Duration::from_secs(10));
    let out = b.output("python3", &["-c", TCP_CLIENT]);
    assert!(out.status.success(), "tcp client: {}", String::from_utf8_lossy(&out.stderr));

    // 5 valid SAL SYNs and 3 with shl 2, sent as raw IP from b.
    let good = hex(&sal_syn("10.201.0.2", "10.201.0.1"));
    let mut broken = sal_syn("10.201.0.2", "10.201.0.1");
    broken[20 + 8] = 2;
    let broken = hex(&broken);
    let mut args = vec!["-c", SEND_RAW, "10.201.0.1"];
    args.extend(std::iter::repeat_n(good.as_str(), 5));
    args.extend(std::iter::repeat_n(broken.as_str(), 3));
    let out = b.output("python3", &args);
    assert!(out.status.success(), "raw sender: {}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(300));

    let (rest, err) = watch.stop(libc::SIGTERM);
    let final_line =
        rest.lines().find(|l| l.starts_with("final ")).unwrap_or_else(|| panic!("no final line: {rest} {err}"));
    let c = parse_counters(final_line);
    assert_eq!(c["sal"], 5, "{final_line}");
    assert_eq!(c["sal_malformed"], 3, "{final_line}");
    // SYN, ACK, data, FIN, ACK of the client at least.
    assert!(c["tcp"] >= 4, "{final_line}");
    let sum: u64 = c.iter().filter(|(k, _)| *k != "seen").map(|(_, v)| v).sum();
    assert_eq!(sum, c["seen"], "every packet is classified exactly once: {final_line}");
}

#[test]
fn watch_names_a_missing_interface() {
    require_root();
    let a = Netns::new("cls-missing");
    let out = a.output(xlate_user_bin().to_str().unwrap(), &["watch", "--iface", "nope0", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no interface named \"nope0\""), "{err}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
