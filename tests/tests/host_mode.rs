//! Host mode end to end: two network namespaces, `xlate-user host` on
//! both, unmodified curl and python sockets as applications, real packets
//! on a veth link, captures decoded with `xlate-user decode`.

use std::process::Command;
use std::time::Duration;

use xlate_common::wire::packet::{ServalRepr, Transport};
use xlate_tests::apps::{
    ABORTING_CLIENT, ABORTING_SERVER, EARLY_CLOSING_SERVER, LATE_UPLOADING_CLIENT, PATIENT_CLIENT, PATIENT_SERVER,
    PORT_REUSING_CLIENT,
};
use xlate_tests::gateway::generated_sha256;
use xlate_tests::host::*;
use xlate_tests::{require_root, serial, sh, wait_for};
use xlate_user::decode::{read_pcap, shape};

fn make_file(lab: &HostLab, name: &str, bytes: usize) -> String {
    let path = lab.dir.join(name);
    let out = Command::new("sh")
        .args(["-c", &format!("head -c {bytes} /dev/urandom > {0} && sha256sum {0}", path.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// Parsed SAL packets of a capture, in order.
fn sal_packets(path: &std::path::Path) -> Vec<(Vec<u8>, String)> {
    let (link, frames) = read_pcap(path).unwrap();
    frames
        .iter()
        .filter_map(|f| link.ipv4(f).ok())
        .filter(|ip| ip.len() > 20 && ip[9] == 144)
        .map(|ip| {
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let d = ip[..total].to_vec();
            let s = shape(&ServalRepr::parse(&d).unwrap_or_else(|e| panic!("invalid SAL packet in capture: {e}")));
            (d, s)
        })
        .collect()
}

const CONCURRENT: &str = r#"
import socket, sys, threading
N = int(sys.argv[1]); host = sys.argv[2]; port = int(sys.argv[3])
ok = []; errs = []; lock = threading.Lock()
def one(i):
    try:
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(b"GET /small.txt HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d: break
            data += d
        s.close()
        assert data.startswith(b"HTTP/1.0 200") and data.endswith(b"x" * 1000), data[:60]
        with lock: ok.append(i)
    except Exception as e:
        with lock: errs.append(repr(e))
ts = [threading.Thread(target=one, args=(i,)) for i in range(N)]
[t.start() for t in ts]; [t.join() for t in ts]
print(len(ok), "ok", len(errs), "errors", errs[:3])
"#;

#[test]
fn curl_downloads_50_mb_and_100_concurrent_connections_complete() {
    require_root();
    let _g = serial();
    let mut lab = HostLab::new("dl");
    let sum = make_file(&lab, "big.bin", 50_000_000);
    std::fs::write(lab.dir.join("small.txt"), "x".repeat(1000)).unwrap();
    lab.start_http();

    let got = sh(&lab.client, &format!("curl -sS --fail --max-time 120 {} | sha256sum", lab.url("big.bin")));
    assert_eq!(got.split_whitespace().next().unwrap(), sum, "SHA-256 of the 50 MB download");

    let out = lab.client.output("python3", &["-c", CONCURRENT, "100", SERVICE_ADDR, &SERVICE_PORT.to_string()]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.starts_with("100 ok 0 errors"), "{report} {}", String::from_utf8_lossy(&out.stderr));

    // Normal close: both sides free every flow within seconds.
    lab.wait_no_flows(Duration::from_secs(5));
    let s = lab.stats(true);
    assert!(s["ingress_syn"] >= 101, "{s:?}");
    assert_eq!(s["flows_freed"], 101, "every connection freed once: {s:?}");
    for bad in [
        "drop_bad_checksum",
        "drop_bad_length",
        "drop_bad_extension",
        "egress_gso_dropped",
        "egress_error",
        "ingress_error",
    ] {
        assert_eq!(s[bad], 0, "{bad}: {s:?}");
        assert_eq!(lab.stats(false)[bad], 0, "client {bad}");
    }
}

/// Answers each connection with a line; closes at once when argv 3 is
/// "first", after the client has closed otherwise: argv address, port,
/// who closes first ("server" or "client").
const LINE_SERVER: &str = r#"
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2]))); l.listen(128); print("listening", flush=True)
while True:
    c, _ = l.accept(); c.settimeout(10)
    c.recv(100); c.sendall(b"ok\n")
    if sys.argv[3] == "client":
        while c.recv(100): pass
    c.close()
"#;

/// Connection after connection: send a line, read the answer, close (at
/// once, or after the server's close when argv 4 is "server"): argv
/// address, port, count, who closes first. Prints "N ok".
const LINE_CLIENT: &str = r#"
import socket, sys
ok = 0
for i in range(int(sys.argv[3])):
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    s.sendall(b"hi\n")
    got = s.recv(100)
    if sys.argv[4] == "server":
        while s.recv(100): pass
    ok += got == b"ok\n"
    s.close()
print(ok, "ok")
"#;

/// 200 connections, one after another, closed first by `first` ("server"
/// or "client"); then no TIME_WAIT socket is left on either side and the
/// agent of the side that closed first ended all 200 (the other none).
fn connections_leave_no_time_wait(first: &str) {
    require_root();
    let _g = serial();
    let lab = HostLab::new(&format!("tw{first}"));
    let port = APP_PORT.to_string();
    let _server = lab.app_server(LINE_SERVER, &[first]);
    const N: u64 = 200;
    let out = lab.client.output("python3", &["-c", LINE_CLIENT, APP_ADDR, &port, &N.to_string(), first]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(report.trim(), format!("{N} ok"), "{}", String::from_utf8_lossy(&out.stderr));
    lab.wait_no_flows(Duration::from_secs(5));
    for (side, ns) in [("client", &lab.client), ("server", &lab.server)] {
        let tw = sh(ns, "ss -Htan state time-wait | wc -l");
        assert_eq!(tw, "0", "TIME_WAIT sockets left at the {side}");
        let s = lab.stats(side == "server");
        let ended = if side == first { N } else { 0 };
        assert_eq!((s["time_wait_ended"], s["flows_freed"]), (ended, N), "{side}: {s:?}");
    }
}

/// A server that closes first (HTTP/1.0, many RPC servers) leaves its side
/// of every connection in TIME_WAIT for 60 s; from one SAL peer host mode
/// has only 32768 TCP identities per server port, so past ~550 new flows a
/// second new flows would land on those sockets. The agent ends each
/// TIME_WAIT as the flow is freed (the SAL flow ID guards against old
/// segments instead).
#[test]
fn a_server_that_closes_first_leaves_no_time_wait_behind() {
    connections_leave_no_time_wait("server");
}

/// An application that reuses its source port at once (the server closed
/// first, so it keeps no TIME_WAIT; the relay's connect() does so under
/// load) gets a flow of its own while the first connection's flow still
/// lingers, and keeps it past the time that one is freed.
#[test]
fn an_application_reusing_its_port_at_once_gets_a_new_flow() {
    require_root();
    let _g = serial();
    let mut lab = HostLab::new("reuse");
    std::fs::write(lab.dir.join("who"), "served\n").unwrap();
    lab.start_http();
    let port = SERVICE_PORT.to_string();
    let out = lab.client.output("python3", &["-c", PORT_REUSING_CLIENT, SERVICE_ADDR, &port, "/who", "40123", "1.5"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "served served",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = lab.stats(false);
    assert_eq!(s["flows_reopened"], 1, "{s:?}");
    // Both SAL closes completed: the old flow's went on with its
    // addresses after its tuple was taken over, and no control packet met
    // a flow freed too soon.
    lab.wait_no_flows(Duration::from_secs(5));
    for side in [false, true] {
        let s = lab.stats(side);
        assert_eq!((s["ctl_fin_received"], s["ctl_drop_unknown_flow"]), (2, 0), "server side {side}: {s:?}");
    }
}

/// The connecting side's mirror: a client that closes first holds its
/// ephemeral port toward the service's address and port in TIME_WAIT (the
/// relay's connections to instances are such clients), and connect()
/// slows and then fails as those ports fill up.
#[test]
fn a_client_that_closes_first_leaves_no_time_wait_behind() {
    connections_leave_no_time_wait("client");
}

const SEQUENTIAL_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
data = b""
while True:
    d = s.recv(4096)
    if not d: break
    data += d
time.sleep(0.5)
s.close()
print(data.decode().strip())
"#;

/// A half-closed connection lives as long as data moves: the server ends
/// its side first and the client goes on uploading for longer than the
/// agent waits for the peer's FIN once its own was acknowledged (60 s, the
/// original stack's FINWAIT2). The wait runs from the last segment, not
/// from the FIN, so the flow is not freed under a live upload.
#[test]
fn a_half_closed_connection_outlives_the_fin_wait_while_data_moves() {
    require_root();
    let _g = serial();
    let lab = HostLab::new("finwait");
    let port = APP_PORT.to_string();
    let mut server = lab.app_server(EARLY_CLOSING_SERVER, &[]);
    // 700 kB over 70 s: 10 kB a second, past the 60 s wait.
    let out = lab.client.output("python3", &["-c", LATE_UPLOADING_CLIENT, APP_ADDR, &port, "700000", "9", "70"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("client got b'bye'"), "{out:?}");
    let line = server.wait_for_line("server got", Duration::from_secs(30));
    assert_eq!(line.trim(), format!("server got 700000 {}", generated_sha256(700_000, 9, None)));
    lab.wait_no_flows(Duration::from_secs(5));
    for side in [true, false] {
        let s = lab.stats(side);
        assert_eq!((s["flows_expired"], s["drop_unknown_flow"]), (0, 0), "server side {side}: {s:?}");
    }
}

#[test]
fn the_wire_looks_like_the_original_stack() {
    require_root();
    let _g = serial();
    // The server receives at TC, after the capture point, so that its
    // capture shows both directions as they were on the wire (XDP would
    // turn what it receives into TCP before any capture sees it).
    let mut lab = HostLab::with_args("shape", &["--receive", "tc"], &[]);
    std::fs::write(lab.dir.join("hello.txt"), "hello serval\n").unwrap();
    lab.start_http();
    let pcap = lab.dir.join("link.pcap");
    let mut cap = Capture::start(&lab.server, SERVER_IF, pcap.clone(), &["ip", "proto", "144"]);
    // An HTTP/1.0 exchange whose client closes a moment after the server,
    // so the two SAL FIN/ACK exchanges do not cross (the order of the
    // original stack's capture).
    let got = sh(&lab.client, &format!("python3 -c '{SEQUENTIAL_CLIENT}' {SERVICE_ADDR} {SERVICE_PORT}"));
    assert!(got.ends_with("hello serval"), "{got}");
    lab.wait_no_flows(Duration::from_secs(5));
    let report = cap.stop();

    // Every packet decodes with valid checksums.
    let text = decode_valid(&pcap).text;
    assert!(!text.contains("cksum BAD"), "{text}");

    let pkts = sal_packets(&pcap);
    assert!(pkts.len() >= 10, "capture too small: {text} (tcpdump: {report})");
    let shapes: Vec<&str> = pkts.iter().map(|(_, s)| s.as_str()).collect();
    // Handshake exactly as in handshake-data-close.pcap.
    assert_eq!(&shapes[..3], ["SYN/17/S", "SYN|ACK/8/S.", "ACK/17/."], "{shapes:#?}");
    // Everything with a transport after the handshake is a bare data header.
    for s in &shapes[3..] {
        assert!(s.starts_with("-/3/") || s.ends_with("/8/none"), "unexpected packet shape {s}: {shapes:#?}");
    }
    // The close: SAL FIN and SAL ACK in each direction, SAL-only, and
    // every SAL FIN follows a TCP FIN of the same side.
    let control: Vec<(String, [u8; 4])> = pkts
        .iter()
        .filter(|(_, s)| s.ends_with("/none"))
        .map(|(d, s)| (s.clone(), [d[12], d[13], d[14], d[15]]))
        .collect();
    assert_eq!(
        control.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["FIN/8/none", "ACK/8/none", "FIN/8/none", "ACK/8/none"]
    );
    assert_ne!(control[0].1, control[2].1, "one SAL FIN from each side");
    assert_eq!(control[0].1, control[3].1, "each FIN answered by the peer");
    for (i, (d, s)) in pkts.iter().enumerate() {
        if s == "FIN/8/none" {
            let src = &d[12..16];
            let tcp_fin_before =
                pkts[..i].iter().any(|(e, t)| t.contains('F') && !t.starts_with("FIN") && &e[12..16] == src);
            assert!(tcp_fin_before, "SAL FIN #{i} without an earlier TCP FIN from {src:?}");
        }
    }
    // Ports 0 on the wire.
    for (d, _) in &pkts {
        if let Transport::Tcp(t) = ServalRepr::parse(d).unwrap().transport {
            assert_eq!((t.src_port, t.dst_port), (0, 0));
        }
    }
}

/// The server closes first and the client a moment later (20 ms, well
/// within `ACK_DELAY`): the client's ACK of the server's SAL FIN goes with
/// its own SAL FIN, as one ACK|FIN, which the server's ACK answers. Three
/// control packets, as the original stack merges its flags, and both sides
/// end clean.
#[test]
fn a_close_right_after_the_peers_carries_the_ack_with_the_fin() {
    require_root();
    let _g = serial();
    let mut lab = HostLab::with_args("merge", &["--receive", "tc"], &[]);
    std::fs::write(lab.dir.join("hello.txt"), "hello serval\n").unwrap();
    lab.start_http();
    let pcap = lab.dir.join("link.pcap");
    let mut cap = Capture::start(&lab.server, SERVER_IF, pcap.clone(), &["ip", "proto", "144"]);
    let client = SEQUENTIAL_CLIENT.replace("time.sleep(0.5)", "time.sleep(0.02)");
    let got = sh(&lab.client, &format!("python3 -c '{client}' {SERVICE_ADDR} {SERVICE_PORT}"));
    assert!(got.ends_with("hello serval"), "{got}");
    lab.wait_no_flows(Duration::from_secs(5));
    let report = cap.stop();
    let text = decode_valid(&pcap).text;
    let control: Vec<(String, [u8; 4])> = sal_packets(&pcap)
        .into_iter()
        .filter(|(_, s)| s.ends_with("/none"))
        .map(|(d, s)| (s, [d[12], d[13], d[14], d[15]]))
        .collect();
    assert_eq!(
        control.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["FIN/8/none", "ACK|FIN/8/none", "ACK/8/none"],
        "{text} (tcpdump: {report})"
    );
    assert_ne!(control[0].1, control[1].1, "the ACK|FIN from the other side");
    assert_eq!(control[0].1, control[2].1, "answered by the first FIN's side");
    for side in [true, false] {
        let s = lab.stats(side);
        assert_eq!((s["ctl_fin_received"], s["ctl_ack_received"], s["ctl_retransmitted"]), (1, 1, 0), "{s:?}");
    }
}

#[test]
fn resets_reach_the_other_side_and_free_the_flows() {
    require_root();
    let _g = serial();
    let lab = HostLab::new("rst");
    let port = APP_PORT.to_string();

    // Client abort: the serving application sees the reset.
    let mut server = lab.app_server(PATIENT_SERVER, &[]);
    let out = lab.client.output("python3", &["-c", ABORTING_CLIENT, APP_ADDR, &port]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.wait_for_line("server saw reset", Duration::from_secs(10));
    lab.wait_no_flows(Duration::from_secs(5));

    // Server abort: the client application sees the reset.
    let _server = lab.app_server(ABORTING_SERVER, &[]);
    let out = lab.client.output("python3", &["-c", PATIENT_CLIENT, APP_ADDR, &port]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "client saw reset",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.wait_no_flows(Duration::from_secs(5));
}

#[test]
fn a_serving_host_migrates_mid_transfer() {
    require_root();
    let _g = serial();
    let mut m = Migrating::start("mig", 50_000_000, "20M", Mover::Server);
    let out = m.migrate(false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("requested: moving 1 flows"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    m.finish();
    let (lab, pcap) = (&m.lab, &m.pcap);
    lab.wait_no_flows(Duration::from_secs(5));

    let pkts = sal_packets(pcap);
    let ctl: Vec<(String, String, String)> = pkts
        .iter()
        .map(|(d, s)| {
            let ip = |o: usize| format!("{}.{}.{}.{}", d[o], d[o + 1], d[o + 2], d[o + 3]);
            (s.clone(), ip(12), ip(16))
        })
        .filter(|(s, _, _)| s.starts_with("RSYN") || s.starts_with("ACK/8"))
        .collect();
    let rsyn = ctl.iter().position(|c| c.0 == "RSYN/8/none").expect("an RSYN");
    assert_eq!(ctl[rsyn].1, SERVER_IP2, "RSYN from the new address");
    assert_eq!(ctl[rsyn + 1], ("RSYN|ACK/8/none".into(), CLIENT_IP.into(), SERVER_IP2.into()));
    assert_eq!(ctl[rsyn + 2], ("ACK/8/none".into(), SERVER_IP2.into(), CLIENT_IP.into()));
    // After the switch, the data comes from the new address.
    let s = lab.stats(true);
    assert!(s["ctl_sent"] >= 2, "{s:?}");
}

const ECHO_SERVER: &str = r#"
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2]))); l.listen(5); print("listening", flush=True)
c, _ = l.accept()
while True:
    d = c.recv(100)
    if not d: break
    c.sendall(d)
"#;

const SLOW_ECHO_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"a"); assert s.recv(10) == b"a"; print("ready", flush=True)
time.sleep(2)
s.sendall(b"b"); assert s.recv(10) == b"b"; print("ok", flush=True)
s.close()
"#;

const SEND_RAW: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for h in sys.argv[2:]:
    s.sendto(bytes.fromhex(h), (sys.argv[1], 0))
"#;

fn serval(src: &str, dst: &str, sal: xlate_common::wire::sal::SalRepr, transport: Transport) -> Vec<u8> {
    use xlate_common::wire::ipv4::Ipv4Repr;
    let repr = ServalRepr { ip: Ipv4Repr::new(src.parse().unwrap(), dst.parse().unwrap(), 144, 0), sal, transport };
    let mut b = vec![0u8; repr.buffer_len()];
    repr.emit(&mut b).unwrap();
    b
}

/// Re-sums the SAL header after a test broke something else in it.
fn fix_sal_checksum(d: &mut [u8]) {
    let hl = usize::from(d[28]) * 4;
    d[30] = 0;
    d[31] = 0;
    let c = xlate_common::wire::checksum::checksum(&d[20..20 + hl]);
    d[30..32].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn malformed_sal_is_dropped_counted_and_never_answered_with_icmp() {
    use xlate_common::wire::sal::{ControlFlags, ControlRepr, FlowId, SalRepr};
    use xlate_common::wire::tcp::{TcpFlags, TcpRepr};
    require_root();
    let _g = serial();
    let lab = HostLab::new("bad");
    let port = APP_PORT.to_string();
    let _echo = lab.app_server(ECHO_SERVER, &[]);
    let mut client = lab.client.spawn("python3", &["-c", SLOW_ECHO_CLIENT, APP_ADDR, &port]);
    client.wait_for_line("ready", Duration::from_secs(10));
    let flows = lab.flows(true);
    assert_eq!(flows.len(), 1, "{flows:?}");
    let cols: Vec<&str> = flows[0].split_whitespace().collect();
    let (server_flow, client_flow): (u32, u32) = (cols[0].parse().unwrap(), cols[1].parse().unwrap());
    let icmp_pcap = lab.dir.join("icmp.pcap");
    let mut icmp = Capture::start(&lab.server, SERVER_IF, icmp_pcap.clone(), &["icmp"]);
    let before = lab.stats(true);

    let ack = TcpRepr {
        src_port: 0,
        dst_port: 0,
        seq: 1,
        ack: 1,
        flags: TcpFlags(TcpFlags::ACK),
        window: 100,
        urgent: 0,
        options: &[],
        payload: &[],
    };
    let data = |dst: u32| {
        serval(CLIENT_IP, SERVER_IP, SalRepr::data(FlowId(client_flow), FlowId(dst), 6), Transport::Tcp(ack))
    };
    let unknown_flow = data(0x0bad_f00d);
    let mut bad_checksum = data(server_flow);
    bad_checksum[30] ^= 0xff;
    let mut bad_shl = data(server_flow);
    bad_shl[28] = 2;
    fix_sal_checksum(&mut bad_shl);
    let ctl = |flags: ControlFlags| {
        let mut sal = SalRepr::data(FlowId(client_flow), FlowId(server_flow), 6);
        sal.control = Some(ControlRepr { flags, verno: 7, ackno: 7, nonce: [0xee; 8] });
        serval(CLIENT_IP, SERVER_IP, sal, Transport::None)
    };
    let mut bad_ext = ctl(ControlFlags::ACK);
    bad_ext[20 + 13] = 16; // CONTROL length byte: must be 20
    fix_sal_checksum(&mut bad_ext);
    let fin_bad_nonce = ctl(ControlFlags::FIN);
    let rsyn_bad_nonce = ctl(ControlFlags::RSYN);
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let pkts = [&unknown_flow, &bad_checksum, &bad_shl, &bad_ext, &fin_bad_nonce, &rsyn_bad_nonce].map(|p| hex(p));
    let mut args = vec!["-c", SEND_RAW, SERVER_IP];
    args.extend(pkts.iter().map(String::as_str));
    let out = lab.client.output("python3", &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The live connection is untouched.
    client.wait_for_line("ok", Duration::from_secs(10));
    let after = lab.stats(true);
    let d = |k: &str| after[k] - before[k];
    assert_eq!(d("drop_unknown_flow"), 1, "{after:?}");
    assert_eq!(d("drop_bad_checksum"), 1, "{after:?}");
    assert_eq!(d("drop_bad_length"), 1, "{after:?}");
    assert_eq!(d("drop_bad_extension"), 1, "{after:?}");
    assert_eq!(d("ctl_drop_bad_nonce"), 2, "FIN and RSYN with a wrong nonce: {after:?}");

    let report = icmp.stop();
    let frames = xlate_user::pcap::Capture::read(&icmp_pcap).unwrap().records.len();
    assert_eq!(frames, 0, "no ICMP may leave a host-mode namespace ({report})");
    lab.wait_no_flows(Duration::from_secs(5));
}

const ONE_ECHO: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"ping"); assert s.recv(10) == b"ping"; s.close(); print("echoed", flush=True)
"#;

#[test]
fn routes_send_syns_to_their_targets_and_segments_fit_the_mtu() {
    require_root();
    let _g = serial();
    // The app service is routed to the server by a /32 prefix rule; the
    // HTTP service keeps the default (broadcast) resolution.
    let route = format!("{APP_SERVICE_ID}:32={SERVER_IP}");
    let mut lab = HostLab::with_args("route", &[], &["--route", &route]);
    let sum = make_file(&lab, "big.bin", 5_000_000);
    lab.start_http();
    let pcap = lab.dir.join("syn.pcap");
    // Headers only: enough for addresses and sizes.
    let mut cap = Capture::start(&lab.server, SERVER_IF, pcap.clone(), &["-s", "96", "ip", "proto", "144"]);
    let _echo = lab.app_server(ECHO_SERVER, &[]);
    let out = lab.client.output("python3", &["-c", ONE_ECHO, APP_ADDR, &APP_PORT.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = sh(&lab.client, &format!("curl -sS --fail --max-time 30 {} | sha256sum", lab.url("big.bin")));
    assert_eq!(got.split_whitespace().next().unwrap(), sum);
    lab.wait_no_flows(Duration::from_secs(5));
    cap.stop();

    let cap = xlate_user::pcap::Capture::read(&pcap).unwrap();
    let mut syn_dsts = Vec::new();
    for r in &cap.records {
        let ip = &r.data[14..];
        // SAL SYN: CONTROL flags byte 0x80 at SAL offset 14.
        if ip[20 + 8] == 17 && ip[20 + 14] == 0x80 {
            syn_dsts.push(format!("{}.{}.{}.{}", ip[16], ip[17], ip[18], ip[19]));
        }
        // MSS clamping: no frame exceeds the 1500-byte MTU with SAL added.
        assert!(r.orig_len <= 1514, "a {}-byte frame on a 1500-byte MTU link", r.orig_len);
    }
    assert_eq!(syn_dsts, [SERVER_IP, "10.61.0.255"], "routed SYN unicast, unrouted SYN broadcast");
    assert!(cap.records.iter().any(|r| r.orig_len == 1514), "full-size segments were sent");
}

#[test]
fn lost_sal_acks_make_the_fin_retransmit() {
    require_root();
    let _g = serial();
    let mut lab = HostLab::new("rexmit");
    std::fs::write(lab.dir.join("hello.txt"), "hello serval\n").unwrap();
    lab.start_http();
    // Drop every SAL-only ACK (shl 8, CONTROL flags 0x20) the client's
    // agent sends, for a while: the server's SAL FIN goes unanswered.
    // (nftables: this kernel has no tc drop action.)
    let nft = |rules: &str| {
        let mut child = lab.client.cmd("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "nft {rules}");
    };
    nft("table ip xlt {\n chain out {\n  type filter hook output priority 0;\n  ip protocol 144 @nh,224,8 8 @nh,272,8 0x20 drop\n }\n}\n");
    let got = sh(&lab.client, &format!("python3 -c '{SEQUENTIAL_CLIENT}' {SERVICE_ADDR} {SERVICE_PORT}"));
    assert!(got.ends_with("hello serval"), "{got}");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(lab.flows(true).len(), 1, "the server still waits for its SAL ACK");
    nft("delete table ip xlt");
    lab.wait_no_flows(Duration::from_secs(8));
    let s = lab.stats(true);
    assert!(s["ctl_retransmitted"] >= 1, "{s:?}");
    // The client answered the repeated FIN as a stale control packet.
    assert!(lab.stats(false)["ctl_stale_answered"] >= 1, "{:?}", lab.stats(false));
}

/// Uploads and downloads between host-mode ends as a real client sends them:
/// no TCP timestamps (retransmissions byte-identical) and receivers that
/// verify every checksum (rx offload off, so veth vouches for nothing).
/// The first segments of each direction are captured on the wire and
/// `xlate-user decode` verifies their checksums. Data leave through the
/// segmenter (large TCP packets cut and summed in software).
#[test]
fn uploads_and_downloads_arrive_intact_with_checksums_valid_on_the_wire() {
    uploads_and_downloads("ud", "xdp");
}

/// The same, received at TC ingress only (where native XDP cannot attach,
/// and what `auto` picks on a veth): every translated segment with data
/// goes round through the segmenter pair, whose GRO verifies its checksum
/// (rx offload is off at the receiver) and coalesces it.
#[test]
fn uploads_and_downloads_received_at_tc_only_arrive_intact() {
    uploads_and_downloads("udt", "tc");
}

/// The same, received at TC ingress and delivered in place, one segment at
/// a time (`--receive tc-in-place`).
#[test]
fn uploads_and_downloads_received_at_tc_in_place_arrive_intact() {
    uploads_and_downloads("udi", "tc-in-place");
}

fn uploads_and_downloads(tag: &str, receive: &str) {
    require_root();
    let _g = serial();
    const BYTES: u64 = 200_000_000;
    let extra = ["--receive", receive];
    let mut lab = HostLab::with_args(tag, &extra, &extra);
    lab.start_http();
    sh(&lab.client, &format!("sysctl -qw net.ipv4.tcp_timestamps=0 && ethtool -K {CLIENT_IF} rx off"));
    sh(&lab.server, &format!("ethtool -K {SERVER_IF} rx off"));
    // Each end captures what it sends: what it receives is TCP again
    // before any capture sees it (XDP runs first). Data packets only: the
    // server's ACKs during the upload would fill the count before the
    // download starts.
    let pcaps = [lab.dir.join("client.pcap"), lab.dir.join("server.pcap")];
    let filter = ["-c", "20000", "ip", "proto", "144", "and", "greater", "200"];
    let mut caps = [
        Capture::start(&lab.client, CLIENT_IF, pcaps[0].clone(), &filter),
        Capture::start(&lab.server, SERVER_IF, pcaps[1].clone(), &filter),
    ];
    let up = lab.dir.join("up.bin");
    let want = xlate_tests::gateway::generated_sha256(BYTES, 5, Some(&up));
    let got = sh(&lab.client, &format!("curl -sS --fail --max-time 120 -T {} {}", up.display(), lab.url("up.bin")));
    let _ = std::fs::remove_file(&up);
    assert_eq!(got, want, "200 MB upload intact");
    let got =
        sh(&lab.client, &format!("curl -sS --fail --max-time 120 {} | sha256sum", lab.url(&format!("gen/{BYTES}/6"))));
    assert_eq!(got.split_whitespace().next().unwrap(), xlate_tests::gateway::generated_sha256(BYTES, 6, None));
    for (cap, pcap) in caps.iter_mut().zip(&pcaps) {
        cap.stop();
        let text = decode_valid(pcap).text;
        let ok = text.lines().filter(|l| l.contains("cksum ok") && !l.contains(" len 0 ")).count();
        assert!(ok >= 5_000, "{}: {ok} data packets with a verified TCP checksum", pcap.display());
        assert!(!text.contains("BAD"), "{text}");
    }
    lab.wait_no_flows(Duration::from_secs(5));
    for side in [true, false] {
        let s = lab.stats(side);
        assert!(s["egress_to_segmenter"] > 0 && s["egress_translated"] >= s["egress_to_segmenter"], "{s:?}");
        if receive == "xdp" {
            // Received before GRO, at XDP: all of it but what may carry a
            // partial checksum. Every sender sums in software here, so
            // only complete sums that equal the pseudo-header sum by
            // chance go to TC: one segment in 65536.
            assert!(s["ingress_translated_xdp"] > 10_000, "{s:?}");
            assert!(s["ingress_left_to_tc"] * 1000 < s["ingress_translated"], "{s:?}");
            assert_eq!(s["ingress_coalesced"], 0, "XDP leaves TC little, delivered in place: {s:?}");
        } else {
            assert_eq!(s["ingress_translated_xdp"], 0, "{s:?}");
            assert!(s["ingress_translated"] > 10_000, "{s:?}");
            // Round through GRO: every segment with data (each side
            // received 200 MB) and none of the pure ACKs (each side
            // acknowledged the other's 200 MB: some hundreds to a few
            // thousand, as the sender's GRO coalesced), which go up in
            // place (`through_coalescer`); in place: none at all.
            let (translated, coalesced) = (s["ingress_translated"], s["ingress_coalesced"]);
            if receive == "tc" {
                assert!(coalesced > 10_000 && translated - coalesced > 100, "{s:?}");
            } else {
                assert_eq!(coalesced, 0, "{s:?}");
            }
        }
        for bad in ["drop_bad_checksum", "egress_gso_dropped", "egress_error", "ingress_error"] {
            assert_eq!(s[bad], 0, "{bad}: {s:?}");
        }
    }
}

/// A SAL control packet as a capture saw it.
#[derive(Debug, Clone, Copy)]
struct CtlSeen {
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    src_flow: u32,
    dst_flow: u32,
    flags: u8,
    verno: u32,
    ackno: u32,
    nonce: [u8; 8],
}

/// Every control packet in a capture, in order.
fn control_packets(path: &std::path::Path) -> Vec<CtlSeen> {
    sal_packets(path)
        .iter()
        .filter_map(|(d, _)| {
            let p = ServalRepr::parse(d).ok()?;
            let c = p.sal.control?;
            Some(CtlSeen {
                src: p.ip.src_addr,
                dst: p.ip.dst_addr,
                src_flow: p.sal.src_flowid.0,
                dst_flow: p.sal.dst_flowid.0,
                flags: c.flags.bits(),
                verno: c.verno,
                ackno: c.ackno,
                nonce: c.nonce,
            })
        })
        .collect()
}

const RSYN: u8 = 0x40;
const ACK: u8 = 0x20;

/// A second address of the client, for its migrations.
const CLIENT_IP2: &str = "10.61.0.5";

/// Which host of the lab moves its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mover {
    Server,
    Client,
}

impl Mover {
    fn server_side(self) -> bool {
        self == Mover::Server
    }
    /// Its address now, and the one it moves to.
    fn addresses(self) -> (&'static str, &'static str) {
        match self {
            Mover::Server => (SERVER_IP, SERVER_IP2),
            Mover::Client => (CLIENT_IP, CLIENT_IP2),
        }
    }
}

/// A migration lab: a download of `bytes` at `rate` from the server while
/// `mover` (which has a second address) moves, with the mover's control
/// packets captured.
struct Migrating {
    lab: HostLab,
    mover: Mover,
    pcap: std::path::PathBuf,
    cap: Capture,
    curl: xlate_tests::netns::Bg,
    sum: String,
}

impl Migrating {
    fn start(tag: &str, bytes: usize, rate: &str, mover: Mover) -> Migrating {
        let mut lab = HostLab::new(tag);
        let sum = make_file(&lab, "big.bin", bytes);
        lab.start_http();
        let (ns, iface) = match mover {
            Mover::Server => (&lab.server, SERVER_IF),
            Mover::Client => (&lab.client, CLIENT_IF),
        };
        ns.ip(&["addr", "add", &format!("{}/24", mover.addresses().1), "dev", iface]);
        let pcap = lab.dir.join("control.pcap");
        // SAL packets that are not plain data (shl != 3).
        let cap = Capture::start(ns, iface, pcap.clone(), &["ip", "proto", "144", "and", "ip[28]", "!=", "3"]);
        let curl = lab.client.spawn(
            "sh",
            &["-c", &format!("curl -sS --fail --max-time 60 --limit-rate {rate} {} | sha256sum", lab.url("big.bin"))],
        );
        std::thread::sleep(Duration::from_millis(800));
        Migrating { lab, mover, pcap, cap, curl, sum }
    }

    fn mover_ns(&self) -> &xlate_tests::netns::Netns {
        if self.mover.server_side() {
            &self.lab.server
        } else {
            &self.lab.client
        }
    }

    fn peer_ns(&self) -> &xlate_tests::netns::Netns {
        if self.mover.server_side() {
            &self.lab.client
        } else {
            &self.lab.server
        }
    }

    /// The peer's RSYN-ACKs (everything SAL to the new address) are lost
    /// until the guard is dropped.
    fn lose_rsyn_acks(&self) -> xlate_tests::LoseSalTo<'_> {
        xlate_tests::LoseSalTo::start(self.mover_ns(), self.mover.addresses().1)
    }

    /// `host migrate` as an operator runs it; its output.
    fn migrate(&self, wait: bool) -> std::process::Output {
        let mut args = vec!["migrate", "--to", self.mover.addresses().1];
        if wait {
            args.push("--wait");
        }
        self.lab.host_cli(self.mover.server_side(), &args)
    }

    /// The peer's first RSYN-ACK to the new address, as captured.
    fn rsyn_ack(&self) -> CtlSeen {
        let new_ip: std::net::Ipv4Addr = self.mover.addresses().1.parse().unwrap();
        wait_for(Duration::from_secs(3), "the peer's RSYN-ACK", || {
            control_packets(&self.pcap).into_iter().find(|c| c.flags == RSYN | ACK && c.dst == new_ip)
        })
    }

    /// Waits until the mover has sent `n` RSYNs.
    fn rsyns_sent(&self, n: usize) {
        let new_ip: std::net::Ipv4Addr = self.mover.addresses().1.parse().unwrap();
        wait_for(Duration::from_secs(5), &format!("RSYN number {n}"), || {
            (control_packets(&self.pcap).iter().filter(|c| c.flags == RSYN && c.src == new_ip).count() >= n)
                .then_some(())
        });
    }

    /// Sends, from the peer's namespace to the mover's old address, the
    /// peer's RSYN-ACK `like` with `flags` instead: what the original
    /// stack would have sent there.
    fn send_as_original(&self, like: &CtlSeen, flags: u8) {
        let args = [
            self.mover.addresses().0.to_string(),
            like.src_flow.to_string(),
            like.dst_flow.to_string(),
            format!("{flags:#x}"),
            like.verno.to_string(),
            like.ackno.to_string(),
            like.nonce.iter().map(|b| format!("{b:02x}")).collect(),
        ];
        let mut a = vec!["-c", xlate_tests::apps::SEND_CONTROL];
        a.extend(args.iter().map(String::as_str));
        let sent = self.peer_ns().output("python3", &a);
        assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    }

    /// The mover's one flow as `host flows --json` shows it.
    fn flow(&self) -> Option<serde_json::Value> {
        let out = self.lab.host_cli(self.mover.server_side(), &["flows", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?.first().cloned()
    }

    fn address(&self) -> Option<String> {
        Some(self.flow()?["sal_local"].as_str()?.to_string())
    }

    fn moved(&self) -> bool {
        self.address().as_deref() == Some(self.mover.addresses().1)
    }

    /// The flow's migration, as `host flows --json` shows it.
    fn migration(&self) -> serde_json::Value {
        self.flow().map(|f| f["migration"].clone()).unwrap_or_default()
    }

    fn stats(&self) -> std::collections::BTreeMap<String, u64> {
        self.lab.stats(self.mover.server_side())
    }

    /// Waits for the download; it must be intact.
    fn finish(&mut self) {
        let line = self.curl.wait_for_line("-", Duration::from_secs(60));
        assert_eq!(line.split_whitespace().next().unwrap(), self.sum, "transfer intact across the migration");
        self.cap.stop();
    }
}

/// The mover's RSYN-ACKs are lost for `loss`; if `original_ack`, the peer
/// answers the mover's repeated RSYN as the original Serval stack does:
/// with a plain ACK to the old address (injected here; xlate's own host
/// mode answers with its RSYN-ACK again). The migration completes once an
/// RSYN-ACK gets through, and `migrate --wait` says so.
fn migration_completes_after_lost_rsyn_acks(tag: &str, mover: Mover, loss: Duration, original_ack: bool) {
    // 16 s at 5 MB/s: the flow must outlive the migration (up to about
    // 5 s, more in a VM) and the reading of its outcome below.
    let mut m = Migrating::start(tag, 80_000_000, "5M", mover);
    let lost = m.lose_rsyn_acks();
    let t0 = std::time::Instant::now();
    let waited = std::thread::scope(|s| {
        let waiting = s.spawn(|| m.migrate(true));
        let rsyn_ack = m.rsyn_ack();
        let pending = m.migration();
        assert_eq!(pending["outcome"], "pending", "{pending}");
        assert_eq!(pending["side"], "local");
        if original_ack {
            // The mover resends its RSYN after about 1 s: the original
            // answers that duplicate with a plain ACK to the old address.
            m.rsyns_sent(2);
            m.send_as_original(&rsyn_ack, ACK);
        }
        std::thread::sleep(loss.saturating_sub(t0.elapsed()));
        drop(lost);
        // The peer resends its RSYN-ACK (1 s, then 2 s after the first):
        // the mover takes it and moves.
        wait_for(Duration::from_secs(8), "the flow to move to the new address", || m.moved().then_some(()));
        waiting.join().unwrap()
    });
    let out = String::from_utf8_lossy(&waited.stdout);
    assert!(
        waited.status.success() && out.contains("done: 1 of 1 flows moved"),
        "{out}{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let (_, new) = mover.addresses();
    assert_eq!(
        m.migration(),
        serde_json::json!({"side": "local", "to": new, "outcome": "done"}),
        "the flow as listed: {:?}",
        m.flow()
    );
    m.finish();
    let s = m.stats();
    assert_eq!((s["migration_failed"], s["migration_done"]), (0, 1), "{s:?}");
    let new_ip: std::net::Ipv4Addr = new.parse().unwrap();
    let acked = control_packets(&m.pcap).iter().any(|c| c.flags == ACK && c.src == new_ip);
    assert!(acked, "the mover acknowledged an RSYN-ACK from its new address");
    // The mover's control packets, every one valid (`--nocapture` shows
    // them, each with its time from the first).
    let decoded = decode_valid(&m.pcap);
    let cap = xlate_user::pcap::Capture::read(&m.pcap).unwrap();
    let scale = if cap.nanos { 1e-9 } else { 1e-6 };
    let at = |r: &xlate_user::pcap::Record| f64::from(r.ts_sec) + f64::from(r.ts_frac) * scale;
    let t0 = cap.records.first().map(at).unwrap_or_default();
    let timed: Vec<String> =
        decoded.text.lines().zip(cap.records.iter()).map(|(l, r)| format!("{:+9.3} s {l}", at(r) - t0)).collect();
    println!("{mover:?} moved after {loss:?} of lost RSYN-ACKs; its control packets:\n{}", timed.join("\n"));
}

/// A server migrates during a download while the client's RSYN-ACKs are
/// lost for 1.2 s and the client answers as the original stack does: that
/// ACK must not end the migration. (Before, it cleared the outstanding
/// RSYN and every later RSYN-ACK was ignored: the flow never moved, and
/// no one was told.)
#[test]
fn a_migration_completes_after_lost_rsyn_acks_and_an_original_style_ack() {
    require_root();
    let _g = serial();
    migration_completes_after_lost_rsyn_acks("mgl", Mover::Server, Duration::from_millis(1200), true);
}

/// 0.4 s of loss: a retransmitted RSYN-ACK arrives after the loss, before
/// the deadline (the issue's shorter window).
#[test]
fn a_migration_completes_after_0_4_s_of_lost_rsyn_acks() {
    require_root();
    let _g = serial();
    migration_completes_after_lost_rsyn_acks("mg4", Mover::Server, Duration::from_millis(400), false);
}

/// The connecting side moves (the server's RSYN-ACKs lost for 1.2 s,
/// answered in the original's way).
#[test]
fn a_client_migration_completes_after_lost_rsyn_acks_and_an_original_style_ack() {
    require_root();
    let _g = serial();
    migration_completes_after_lost_rsyn_acks("mgc", Mover::Client, Duration::from_millis(1200), true);
}

#[test]
fn a_client_migration_completes_after_0_4_s_of_lost_rsyn_acks() {
    require_root();
    let _g = serial();
    migration_completes_after_lost_rsyn_acks("mgc4", Mover::Client, Duration::from_millis(400), false);
}

/// Every RSYN-ACK lost: the migration is given up 15 s after the first
/// RSYN, counted, logged, shown as failed, and `migrate --wait` exits
/// non-zero; the flow goes on where it was, unharmed.
fn migration_without_answer_fails(tag: &str, mover: Mover) {
    // 33 s at 2 MB/s: the flow must outlive the 15 s the migration waits
    // and the checks after it, also in a slow VM (44 MB ended first on 6.1).
    let mut m = Migrating::start(tag, 66_000_000, "2M", mover);
    let lost = m.lose_rsyn_acks();
    let t0 = std::time::Instant::now();
    let out = m.migrate(true);
    let waited = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("failed: 1 of 1 flows got no answer"), "{err}");
    assert!(waited >= Duration::from_secs(14) && waited < Duration::from_secs(20), "answered after {waited:?}");
    let (old, new) = mover.addresses();
    assert_eq!(m.address().as_deref(), Some(old), "the flow stays on the old address");
    assert_eq!(m.migration(), serde_json::json!({"side": "local", "to": new, "outcome": "failed"}));
    assert_eq!(m.stats()["migration_failed"], 1);
    let text = m.lab.host_cli(mover.server_side(), &["flows"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("failed:{new}")), "{text:?}");
    drop(lost);
    m.finish();
    let s = m.stats();
    assert_eq!((s["flows_expired"], s["migration_done"]), (0, 0), "{s:?}");
}

#[test]
fn a_migration_that_gets_no_answer_fails_and_the_flow_stays() {
    require_root();
    let _g = serial();
    migration_without_answer_fails("mgf", Mover::Server);
}

#[test]
fn a_client_migration_that_gets_no_answer_fails_and_the_flow_stays() {
    require_root();
    let _g = serial();
    migration_without_answer_fails("mgcf", Mover::Client);
}

/// The original stack merges control flags: RSYN|ACK|FIN in one packet
/// (its answer to our RSYN with its own close). Both are taken: the flow
/// moves (the RSYN-ACK) and the peer's FIN is counted and acknowledged.
/// (Before, the packet was taken for an RSYN alone and the FIN was lost.)
#[test]
fn an_rsyn_ack_merged_with_a_fin_is_taken_whole() {
    require_root();
    let _g = serial();
    let mut m = Migrating::start("mgm", 20_000_000, "2M", Mover::Server);
    let lost = m.lose_rsyn_acks();
    let before = m.stats();
    assert!(m.migrate(false).status.success());
    let rsyn_ack = m.rsyn_ack();
    const FIN: u8 = 0x04;
    m.send_as_original(&rsyn_ack, RSYN | ACK | FIN);
    wait_for(Duration::from_secs(3), "the flow to move", || m.moved().then_some(()));
    let s = m.stats();
    assert_eq!(s["ctl_fin_received"], before["ctl_fin_received"] + 1, "the FIN was taken: {s:?}");
    assert_eq!(s["ctl_rsyn_received"], before["ctl_rsyn_received"] + 1, "once, as an RSYN-ACK: {s:?}");
    assert_eq!(s["ctl_ack_received"], before["ctl_ack_received"] + 1, "its ACK flag too: {s:?}");
    drop(lost);
    m.cap.stop();
    let acked = control_packets(&m.pcap).iter().any(|c| c.flags == ACK && c.ackno == rsyn_ack.verno.wrapping_add(1));
    assert!(acked, "the FIN was acknowledged");
}
