//! The packet-level translator end to end: an unmodified legacy client
//! (curl, python sockets) reaches host-mode Serval instances through a
//! gateway running `xlate-user run` with the XDP program attached.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use xlate_tests::apps::{ABORTING_CLIENT, ABORTING_SERVER, PATIENT_CLIENT, PATIENT_SERVER, PORT_REUSING_CLIENT};
use xlate_tests::gateway::*;
use xlate_tests::host::{decode_valid, Capture};
use xlate_tests::{require_root, serial, sh, xlate_user_bin};
use xlate_user::config::Config;
use xlate_user::decode::read_pcap;

fn big_file(lab: &GatewayLab) -> String {
    let mut sum = String::new();
    let src = lab.dir.join("big.bin");
    let out = Command::new("sh")
        .args(["-c", &format!("head -c 50000000 /dev/urandom > {0} && sha256sum {0}", src.display())])
        .output()
        .unwrap();
    sum.push_str(String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap());
    for i in 1..=2 {
        std::fs::copy(&src, lab.dir.join(format!("www{i}/big.bin"))).unwrap();
    }
    sum
}

/// The 50 MB download, in every XDP mode and client offload setting.
fn download(mode: &str, tx_offload: bool, capture: bool) {
    let lab = GatewayLab::new(&format!("dl{}{}", &mode[..1], tx_offload as u8), WEIGHTED, mode, tx_offload);
    let sum = big_file(&lab);
    let (client_pcap, service_pcap) = (lab.dir.join("client.pcap"), lab.dir.join("service.pcap"));
    let caps = capture.then(|| {
        (
            // On the far ends of the links: on the gateway, taps see ingress
            // frames after the XDP program rewrote them.
            Capture::start(&lab.client, "lc0", client_pcap.clone(), &["-s", "128", "ip"]),
            Capture::start(
                &lab.switch,
                "s0",
                service_pcap.clone(),
                &["-s", "0", "ip", "proto", "144", "and", "ip[28]", "!=", "3"],
            ),
        )
    });
    let got = sh(&lab.client, &format!("curl -sS --fail --max-time 60 {} | sha256sum", lab.url("big.bin")));
    assert_eq!(
        got.split_whitespace().next().unwrap(),
        sum,
        "SHA-256 through the translator ({mode}, tx offload {tx_offload})"
    );
    lab.wait_no_flows(Duration::from_secs(5));
    let s = lab.stats();
    assert!(s["gw_tcp_to_sal"] > 100 && s["gw_sal_to_tcp"] > 30_000, "{s:?}");
    // Partial checksums come only from an offloading client; every
    // deferred checksum is settled by the TC stage.
    assert_eq!(s["gw_checksum_left_to_offload"] > 0, tx_offload, "partial checksums seen iff offload on: {s:?}");
    assert_eq!(s["gw_partial_checksum"], s["gw_checksum_completed"] + s["gw_checksum_left_to_offload"], "{s:?}");
    assert_eq!(s["gw_checksum_unresolved"], 0, "{s:?}");
    // Frames with complete checksums leave straight from XDP (FIB lookup +
    // redirect): all of the instance's data, and the client's unless its
    // checksums are partial.
    assert!(s["gw_redirected"] > 30_000, "{s:?}");
    // The same counters for Prometheus.
    let metrics = sh(&lab.gateway, "curl -sS --fail http://127.0.0.1:9464/metrics");
    let line = "xlate_events_total{mode=\"translator\",iface=\"g0\",reason=\"gw_sal_to_tcp\"} ";
    let value: u64 =
        metrics.lines().find_map(|l| l.strip_prefix(line)).unwrap_or_else(|| panic!("{metrics}")).parse().unwrap();
    assert!(value >= s["gw_sal_to_tcp"], "{metrics}");
    assert!(metrics.contains("xlate_flows{mode=\"translator\",iface=\"g0\"} 0"), "{metrics}");
    if let Some((mut c, mut v)) = caps {
        c.stop();
        v.stop();
        // Client link: plain TCP only, to and from the public address.
        let (link, frames) = read_pcap(&client_pcap).unwrap();
        let mut tcp = 0;
        for f in &frames {
            let ip = link.ipv4(f).unwrap();
            assert_ne!(ip[9], 144, "SAL on the client link");
            if ip[9] == 6 {
                tcp += 1;
                let peer = [&ip[12..16], &ip[16..20]];
                assert!(peer.contains(&&[203u8, 0, 113, 1][..]), "TCP not to/from the public address");
            }
        }
        assert!(tcp > 1000, "{tcp} TCP frames on the client link");
        // Service link: SAL, every control-carrying packet valid.
        let text = decode_valid(&service_pcap).text;
        assert!(
            text.contains("CONTROL SYN ") && text.contains("SERVICE 00000050") && text.contains("CONTROL FIN"),
            "{text}"
        );
    }
}

#[test]
fn curl_downloads_50_mb_through_the_translator() {
    require_root();
    let _g = serial();
    // The capture needs complete checksums on the wire: with the client's
    // tx offload on, veth forwards partial checksums (plain routing does
    // the same); the offload matrix below covers that case end to end.
    download("generic", false, true);
}

#[test]
fn offload_matrix() {
    require_root();
    let _g = serial();
    for (mode, tx) in [("generic", true), ("native", true), ("native", false)] {
        download(mode, tx, false);
    }
}

const MANY: &str = r#"
import socket, sys
for i in range(int(sys.argv[1])):
    s = socket.create_connection((sys.argv[2], 80), timeout=10)
    s.sendall(b"GET /who HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        d = s.recv(4096)
        if not d: break
        data += d
    port = s.getsockname()[1]
    s.close()
    print(port, data.decode().split("\r\n\r\n", 1)[1].strip(), flush=True)
"#;

fn connections(lab: &GatewayLab, n: usize) -> Vec<(u16, Ipv4Addr)> {
    let out = sh(&lab.client, &format!("python3 -c '{MANY}' {n} {PUBLIC_IP}"));
    out.lines()
        .map(|l| {
            let (p, who) = l.split_once(' ').unwrap();
            (p.parse().unwrap(), who.parse().unwrap())
        })
        .collect()
}

#[test]
fn load_balancing_follows_weights_and_the_4_tuple() {
    require_root();
    let _g = serial();
    let mut lab = GatewayLab::new("lb", WEIGHTED, "generic", true);
    let cfg = Config::load(&lab.config_path).unwrap();
    let conns = connections(&lab, 200);
    assert_eq!(conns.len(), 200);
    let public = (PUBLIC_IP.parse().unwrap(), PUBLIC_PORT);
    let client: Ipv4Addr = CLIENT_IP.parse().unwrap();
    for (port, who) in &conns {
        // The same 4-tuple always maps to the same instance: the kernel's
        // choice is exactly the agent's Maglev table lookup.
        assert_eq!(xlate_user::gateway::instance_for(&cfg, (client, *port), public), Some(*who), "port {port}");
    }
    let light = conns.iter().filter(|(_, w)| w.to_string() == INSTANCES[0]).count();
    // Weight 1 of 4: expect 50 of 200; binomial sd ~6, allow ~3.5 sd.
    assert!((29..=71).contains(&light), "{light} of 200 connections on the weight-1 instance");
    lab.wait_no_flows(Duration::from_secs(5));

    // Removing an instance (reload) moves only new connections, all to
    // the survivor, while a flow to the survivor goes on untouched.
    let sum = big_file(&lab);
    let mut dl = lab.client.spawn(
        "sh",
        &["-c", &format!("curl -sS --fail --max-time 60 --limit-rate 25M {} | sha256sum", lab.url("big.bin"))],
    );
    std::thread::sleep(Duration::from_millis(500));
    let flows = lab.flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let serving = gateway_flow(&lab)["sal_peer"].as_str().unwrap().to_string();
    let other = if serving == INSTANCES[0] { INSTANCES[1] } else { INSTANCES[0] };
    lab.reload(&format!("\"{serving}\""));
    let after = connections(&lab, 20);
    assert!(
        after.iter().all(|(_, w)| w.to_string() == serving),
        "all new connections on {serving}, none on {other}: {after:?}"
    );
    let line = dl.wait_for_line("-", Duration::from_secs(60));
    assert_eq!(line.split_whitespace().next().unwrap(), sum, "the flow to the survivor was untouched");

    // A bad file on SIGHUP is refused, naming the line, and changes nothing.
    std::fs::write(&lab.config_path, config("\"10.10.0.300\"")).unwrap();
    let gw = lab.gateway_agent.as_mut().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(gw.pid(), libc::SIGHUP) };
    let err = gw.wait_for_stderr_line("reload refused", Duration::from_secs(10));
    assert!(err.contains("line 8: instance \"10.10.0.300\" is not an IPv4 address"), "{err}");
    let still = connections(&lab, 5);
    assert!(still.iter().all(|(_, w)| w.to_string() == serving), "{still:?}");
}

#[test]
fn close_and_resets_through_the_translator() {
    require_root();
    let _g = serial();
    let lab = GatewayLab::new("rst", "\"10.10.0.11\"", "generic", true);
    sh(&lab.client, &format!("curl -sS --fail --max-time 10 {}", lab.url("who")));
    lab.wait_no_flows(Duration::from_secs(5));
    // Instance flows are gone too.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.instances[0].name()))
        .arg(xlate_user_bin())
        .args(["host", "flows", "--iface", "e0"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "{}", String::from_utf8_lossy(&out.stdout));

    // Server reset reaches the client as a TCP RST (the HTTP server is
    // replaced by one that aborts).
    let mut lab = lab;
    lab.http.clear();
    std::thread::sleep(Duration::from_millis(300));
    let mut srv = lab.instances[0].spawn("python3", &["-c", ABORTING_SERVER, "0.0.0.0", "80"]);
    srv.wait_for_line("listening", Duration::from_secs(10));
    let out = lab.client.output("python3", &["-c", PATIENT_CLIENT, PUBLIC_IP, "80"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "client saw reset");
    lab.wait_no_flows(Duration::from_secs(5));

    // Client abort resets the server side.
    let mut srv = lab.instances[0].spawn("python3", &["-c", PATIENT_SERVER, "0.0.0.0", "80"]);
    srv.wait_for_line("listening", Duration::from_secs(10));
    let out = lab.client.output("python3", &["-c", ABORTING_CLIENT, PUBLIC_IP, "80"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    srv.wait_for_line("server saw reset", Duration::from_secs(10));
    lab.wait_no_flows(Duration::from_secs(5));
}

/// A client that reuses its source port at once (the server closed
/// first, so the client keeps no TIME_WAIT) gets a flow of its own while
/// the first connection's flow still lingers, and keeps it past the time
/// that one is freed.
#[test]
fn a_client_reusing_its_port_at_once_gets_a_new_flow() {
    require_root();
    let _g = serial();
    let lab = GatewayLab::new("reuse", "\"10.10.0.11\"", "generic", true);
    let out = lab.client.output("python3", &["-c", PORT_REUSING_CLIENT, PUBLIC_IP, "80", "/who", "40123", "1.5"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10.10.0.11 10.10.0.11",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = lab.stats();
    assert_eq!(s["flows_reopened"], 1, "{s:?}");
    assert_eq!(s["gw_passed_no_flow"], 0, "{s:?}");
    lab.wait_no_flows(Duration::from_secs(5));
    // Both SAL closes completed: the instance holds no flow either.
    xlate_tests::wait_until(Duration::from_secs(5), "the instance's flows to end", || {
        String::from_utf8_lossy(&instance_cli(&lab, 0, &["flows"]).stdout).lines().count() == 1
    });
    let s = lab.stats();
    assert_eq!((s["ctl_fin_received"], s["ctl_drop_unknown_flow"]), (2, 0), "{s:?}");
}

/// A lab whose one instance (10.10.0.12) has a second address to move
/// to, with a download from it at `rate` under way; the file's SHA-256.
fn instance_about_to_move(tag: &str, rate: &str) -> (GatewayLab, String, xlate_tests::netns::Bg) {
    let lab = GatewayLab::new(tag, "\"10.10.0.12\"", "generic", true);
    let sum = big_file(&lab);
    lab.instances[1].ip(&["addr", "add", &format!("{INSTANCE2_ALT}/24"), "dev", "e0"]);
    let dl = lab.client.spawn(
        "sh",
        &["-c", &format!("curl -sS --fail --max-time 90 --limit-rate {rate} {} | sha256sum", lab.url("big.bin"))],
    );
    std::thread::sleep(Duration::from_millis(700));
    (lab, sum, dl)
}

#[test]
fn an_instance_migrates_mid_transfer_through_the_translator() {
    require_root();
    let _g = serial();
    let (lab, sum, mut dl) = instance_about_to_move("gmig", "25M");
    let out = instance_cli(&lab, 1, &["migrate", "--to", INSTANCE2_ALT]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("moving 1 flows"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let flows = lab.flows();
    assert!(flows.iter().any(|f| f.contains(INSTANCE2_ALT)), "the translator follows the instance: {flows:?}");
    let line = dl.wait_for_line("-", Duration::from_secs(60));
    assert_eq!(line.split_whitespace().next().unwrap(), sum, "transfer intact across the migration");
    assert!(lab.stats()["ctl_rsyn_received"] >= 1);
}

/// `xlate-user host <args> --iface e0` on instance `i`, as an operator
/// runs it (`ip netns exec`).
fn instance_cli(lab: &GatewayLab, i: usize, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", lab.instances[i].name()])
        .arg(xlate_user_bin())
        .arg("host")
        .args(args)
        .args(["--iface", "e0"])
        .output()
        .unwrap()
}

/// The translator's one flow as `flows --json` shows it.
fn gateway_flow(lab: &GatewayLab) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&lab.gw_cli(&["flows", "--json"])).unwrap();
    v.as_array().and_then(|a| a.iter().find(|f| f.get("relay").is_none()).cloned()).unwrap_or_default()
}

/// The translator is the passive side of an instance's migration: its
/// RSYN-ACKs to the instance's new address are lost for `loss` (`None`:
/// all of them). After a loss the migration completes on both sides; with
/// no answer at all both give it up at their deadline, say so (the
/// instance's `migrate --wait` fails; the translator counts it and shows
/// the flow's migration as failed), and the download goes on unharmed.
fn an_instance_migrates_while_the_translators_rsyn_acks_are_lost(tag: &str, loss: Option<Duration>) {
    let (lab, sum, mut dl) = instance_about_to_move(tag, "2M");
    let lost = xlate_tests::LoseSalTo::start(&lab.instances[1], INSTANCE2_ALT);
    let t0 = std::time::Instant::now();
    let migrated = std::thread::scope(|s| {
        let waiting = s.spawn(|| instance_cli(&lab, 1, &["migrate", "--to", INSTANCE2_ALT, "--wait"]));
        xlate_tests::wait_until(Duration::from_secs(3), "the translator's RSYN-ACK", || {
            gateway_flow(&lab)["migration"]["outcome"] == "pending"
        });
        assert_eq!(
            gateway_flow(&lab)["migration"],
            serde_json::json!({"side": "peer", "to": INSTANCE2_ALT, "outcome": "pending"})
        );
        if let Some(loss) = loss {
            std::thread::sleep(loss.saturating_sub(t0.elapsed()));
            drop(lost);
        }
        waiting.join().unwrap()
    });
    let (out, err) = (String::from_utf8_lossy(&migrated.stdout), String::from_utf8_lossy(&migrated.stderr));
    let flow = gateway_flow(&lab);
    if loss.is_some() {
        assert!(migrated.status.success() && out.contains("done: 1 of 1 flows moved"), "{out}{err}");
        assert_eq!(flow["migration"], serde_json::json!({"side": "peer", "to": INSTANCE2_ALT, "outcome": "done"}));
        assert_eq!(flow["sal_peer"], INSTANCE2_ALT, "the translator follows the instance");
        assert_eq!(lab.stats()["migration_done"], 1);
    } else {
        assert!(!migrated.status.success() && err.contains("failed: 1 of 1 flows got no answer"), "{out}{err}");
        // The translator's own deadline runs from its first RSYN-ACK.
        xlate_tests::wait_until(Duration::from_secs(5), "the translator to give the migration up", || {
            lab.stats()["migration_failed"] == 1
        });
        let flow = gateway_flow(&lab);
        assert_eq!(flow["migration"], serde_json::json!({"side": "peer", "to": INSTANCE2_ALT, "outcome": "failed"}));
        assert_eq!(flow["sal_peer"], "10.10.0.12", "the flow stays where it was");
        assert_eq!(lab.stats()["migration_done"], 0);
    }
    let line = dl.wait_for_line("-", Duration::from_secs(90));
    assert_eq!(line.split_whitespace().next().unwrap(), sum, "transfer intact");
    assert_eq!(lab.stats()["flows_expired"], 0);
}

#[test]
fn an_instance_migration_completes_after_the_translators_rsyn_acks_are_lost_for_1_2_s() {
    require_root();
    let _g = serial();
    an_instance_migrates_while_the_translators_rsyn_acks_are_lost("gmgl", Some(Duration::from_millis(1200)));
}

#[test]
fn an_instance_migration_completes_after_the_translators_rsyn_acks_are_lost_for_0_4_s() {
    require_root();
    let _g = serial();
    an_instance_migrates_while_the_translators_rsyn_acks_are_lost("gmg4", Some(Duration::from_millis(400)));
}

#[test]
fn an_instance_migration_the_translator_cannot_answer_fails_on_both_sides() {
    require_root();
    let _g = serial();
    an_instance_migrates_while_the_translators_rsyn_acks_are_lost("gmgf", None);
}

#[test]
fn other_traffic_passes_and_malformed_sal_is_counted() {
    require_root();
    let _g = serial();
    let lab = GatewayLab::new("pass", WEIGHTED, "generic", true);
    // ICMP and TCP to unconfigured ports cross the gateway untouched.
    let out = lab.client.output("ping", &["-c", "2", "-W", "2", INSTANCES[0]]);
    assert!(out.status.success(), "ping through the gateway: {}", String::from_utf8_lossy(&out.stdout));
    let plain = r#"
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 7777)); l.listen(1); print("listening", flush=True)
c, _ = l.accept(); c.sendall(c.recv(10)); c.close()
"#;
    let mut srv = lab.gateway.spawn("python3", &["-c", plain]);
    srv.wait_for_line("listening", Duration::from_secs(10));
    let echo = sh(&lab.client, &format!("python3 -c 'import socket; s=socket.create_connection((\"{GW_CLIENT_IP}\",7777)); s.sendall(b\"plain\"); print(s.recv(10).decode())'"));
    assert_eq!(echo, "plain");
    // A mid-connection segment for the service without a flow is passed
    // (for the fallback), counted.
    let before = lab.stats();
    let stray = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 1, 5 << 4, 0x10, 1000, 0, 0)
s.sendto(tcp, ("203.0.113.1", 0))
"#;
    sh(&lab.client, &format!("python3 -c '{stray}'"));
    // SAL with a bad checksum to the gateway's SAL address.
    let bad_sal = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 144)
s.sendto(bytes.fromhex("000000010000ab000306ffff") + bytes(20), ("10.10.0.1", 0))
"#;
    sh(&lab.instances[0], &format!("python3 -c '{bad_sal}'"));
    std::thread::sleep(Duration::from_millis(300));
    let after = lab.stats();
    assert_eq!(after["gw_passed_no_flow"] - before["gw_passed_no_flow"], 1, "{after:?}");
    assert_eq!(after["drop_bad_checksum"] - before["drop_bad_checksum"], 1, "{after:?}");
}

#[test]
fn failover_new_connections_go_to_the_surviving_instance() {
    require_root();
    let _g = serial();
    let mut lab = GatewayLab::new("fail", "\"10.10.0.11\", \"10.10.0.12\"", "generic", true);
    let sum = big_file(&lab);
    let mut dl = lab.client.spawn(
        "sh",
        &["-c", &format!("curl -sS --fail --max-time 60 --limit-rate 20M {} | sha256sum", lab.url("big.bin"))],
    );
    std::thread::sleep(Duration::from_millis(500));
    let flows = lab.flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let serving = gateway_flow(&lab)["sal_peer"].as_str().unwrap().to_string();
    let dead = INSTANCES.iter().position(|a| *a != serving).unwrap();
    // Stop the other instance's Serval stack: its SYNs go unanswered.
    lab.instance_agents[dead].stop();
    let conns = connections(&lab, 20);
    assert_eq!(conns.len(), 20, "every new connection succeeded");
    assert!(conns.iter().all(|(_, w)| w.to_string() == serving), "{conns:?}");
    let line = dl.wait_for_line("-", Duration::from_secs(60));
    assert_eq!(line.split_whitespace().next().unwrap(), sum, "the established flow to the survivor was unaffected");
    let out = lab.gateway_agent.as_mut().unwrap().wait_for_line("out of rotation", Duration::from_secs(5));
    assert!(out.contains(INSTANCES[dead]), "{out}");
}

/// Drops the first packet matching `what` forwarded by the gateway
/// (nftables quota: up to 200 bytes matched are dropped: one SAL SYN or
/// third ACK, 108 to 128 bytes), then lets everything through.
fn drop_once(lab: &GatewayLab, table: &str, what: &str) {
    let rules = format!(
        "table ip {table} {{\n chain xfwd {{\n  type filter hook forward priority 0;\n  {what} quota until 200 bytes drop\n }}\n}}\n"
    );
    let mut child = lab.gateway.cmd("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft {rules}");
}

#[test]
fn a_lost_third_ack_and_a_retransmitted_syn_still_connect() {
    require_root();
    let _g = serial();
    let lab = GatewayLab::new("robust", "\"10.10.0.11\"", "generic", true);
    // The translator's third ACK (shl 17, CONTROL flags ACK) is lost once.
    drop_once(&lab, "third_ack", "ip protocol 144 @nh,224,8 17 @nh,272,8 0x20");
    let got = sh(&lab.client, &format!("curl -sS --fail --max-time 10 {}", lab.url("who")));
    assert_eq!(got, INSTANCES[0]);
    let rules = sh(&lab.gateway, "nft list table ip third_ack");
    let used: u32 = rules.split("used ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().parse().unwrap();
    assert!((100..=200).contains(&used), "exactly one third ACK (about 108-128 bytes) was dropped: {rules}");
    // The first SAL SYN is lost: the client's retransmitted SYN becomes the
    // same SAL SYN (same flow ID, verno, nonce) and connects.
    drop_once(&lab, "first_syn", "ip protocol 144 @nh,224,8 17 @nh,272,8 0x80");
    let t = std::time::Instant::now();
    let got = sh(&lab.client, &format!("curl -sS --fail --max-time 10 {}", lab.url("who")));
    assert_eq!(got, INSTANCES[0]);
    assert!(t.elapsed() >= Duration::from_millis(900), "the SYN was really lost once");
    let s = lab.stats();
    assert_eq!(s["egress_syn"], 3, "two connections, one SYN repeated: {s:?}");
    assert_eq!(s["flows_expired"], 0, "no instance failed: {s:?}");
    lab.wait_no_flows(Duration::from_secs(5));
}

#[test]
fn live_map_edits_change_new_connections_and_bad_edits_change_nothing() {
    require_root();
    let _g = serial();
    let lab = GatewayLab::new("map", WEIGHTED, "generic", true);
    let show = lab.gw_cli(&["map", "show"]);
    assert!(show.contains("203.0.113.1:80 service 00000050 -> 10.10.0.11 ("), "{show}");
    assert!(show.contains("10.10.0.12 ("), "{show}");
    // The same for scripts: JSON, with the Maglev shares 1:3.
    let json: serde_json::Value = serde_json::from_str(&lab.gw_cli(&["map", "show", "--json"])).unwrap();
    let svc = &json[0];
    assert_eq!((svc["address"].as_str(), svc["port"].as_u64()), (Some("203.0.113.1"), Some(80)), "{json}");
    let slots: Vec<u64> = svc["instances"].as_array().unwrap().iter().map(|i| i["slots"].as_u64().unwrap()).collect();
    assert_eq!(slots.iter().sum::<u64>(), 1021, "{json}");
    assert!(slots[1] > 2 * slots[0], "weight 3 against 1: {json}");
    let stats: serde_json::Value = serde_json::from_str(&lab.gw_cli(&["stats", "--json"])).unwrap();
    assert!(stats["gw_tcp_to_sal"].is_u64() && stats["drop_bad_checksum"] == 0, "{stats}");
    let flows: serde_json::Value = serde_json::from_str(&lab.gw_cli(&["flows", "--json"])).unwrap();
    assert!(flows.is_array(), "{flows}");
    // Only the second instance from now on.
    let out =
        lab.gw_cli(&["map", "set", "--service", "203.0.113.1:80", "--id", "00000050", "--instances", "10.10.0.12:2"]);
    assert!(out.contains("ok: 203.0.113.1:80"), "{out}");
    let show = lab.gw_cli(&["map", "show"]);
    assert!(show.contains("-> 10.10.0.12 (1021/1021 slots)"), "{show}");
    let conns = connections(&lab, 10);
    assert!(conns.iter().all(|(_, w)| w.to_string() == INSTANCES[1]), "{conns:?}");
    // A bad edit is refused with the reason and changes nothing.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.gateway.name()))
        .arg(xlate_user_bin())
        .args([
            "map",
            "set",
            "--service",
            "203.0.113.1:80",
            "--id",
            "00000050",
            "--instances",
            "10.10.0.300",
            "--iface",
            "g0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("instance \"10.10.0.300\" is not an IPv4 address"));
    assert_eq!(lab.gw_cli(&["map", "show"]), show);
    // The validator of the configuration file checks live edits too: the
    // translator's own SAL address, and a socket the gateway listens on
    // (its metrics endpoint) are refused.
    let refused = |service: &str, why: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", lab.gateway.name()])
            .arg(xlate_user_bin())
            .args([
                "map",
                "set",
                "--service",
                service,
                "--id",
                "00000050",
                "--instances",
                "10.10.0.12",
                "--iface",
                "g0",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(why), "{err}");
    };
    refused(&format!("{SAL_ADDRESS}:80"), "is the translator's sal_address");
    refused("127.0.0.1:9464", "collides with a socket of this host listening on 127.0.0.1:9464");
    assert_eq!(lab.gw_cli(&["map", "show"]), show);
    // Removing the service: the kernel no longer translates it.
    let out = lab.gw_cli(&["map", "del", "--service", "203.0.113.1:80"]);
    assert!(out.contains("removed"), "{out}");
    assert!(lab.gw_cli(&["map", "show"]).trim().is_empty());
    let before = lab.stats()["gw_tcp_to_sal"];
    let _ = lab.client.output("curl", &["-sS", "--max-time", "2", &lab.url("who")]);
    assert_eq!(lab.stats()["gw_tcp_to_sal"], before, "no translation after the service was removed");
}

/// A client as Windows and real NICs make it: no TCP timestamps (so a
/// retransmission repeats the very same bytes) and complete checksums (tx
/// offload off); receivers that verify every checksum (rx offload off, so
/// veth does not vouch for them). 500 MB up and 500 MB down must arrive
/// intact: about one segment in 65536 has a complete checksum equal to
/// its pseudo-header sum, which a translator that takes it for a partial
/// one corrupts again on every retransmission until the connection dies.
#[test]
fn real_clients_upload_and_download_500_mb_without_timestamps_or_offload() {
    require_root();
    let _g = serial();
    const BYTES: u64 = 500_000_000;
    let lab = GatewayLab::new("rc", "\"10.10.0.11\"", "native", false);
    sh(&lab.client, "sysctl -qw net.ipv4.tcp_timestamps=0 && ethtool -K lc0 rx off");
    for ns in &lab.instances {
        sh(ns, "ethtool -K e0 rx off");
    }
    // Upload: the instance hashes what it receives.
    let up = lab.dir.join("up.bin");
    let want = generated_sha256(BYTES, 1, Some(&up));
    let got = sh(&lab.client, &format!("curl -sS --fail --max-time 120 -T {} {}", up.display(), lab.url("up.bin")));
    let _ = std::fs::remove_file(&up);
    assert_eq!(got, want, "500 MB upload through the translator arrived intact");
    // Download: a generated stream, hashed by the client.
    let got =
        sh(&lab.client, &format!("curl -sS --fail --max-time 120 {} | sha256sum", lab.url(&format!("gen/{BYTES}/2"))));
    assert_eq!(got.split_whitespace().next().unwrap(), generated_sha256(BYTES, 2, None), "500 MB download intact");
    lab.wait_no_flows(Duration::from_secs(5));
    let s = lab.stats();
    // About 1.3 million segments crossed: the ambiguous ones were met and
    // every one was completed in TC (no partial checksums here).
    assert!(s["gw_partial_checksum"] > 0, "no ambiguous checksum met: {s:?}");
    assert_eq!(s["gw_checksum_completed"], s["gw_partial_checksum"], "{s:?}");
    assert_eq!(s["gw_checksum_left_to_offload"] + s["gw_checksum_unresolved"], 0, "{s:?}");
}

/// The lab a new user builds: veth everywhere, default offloads, GRO off,
/// default configuration. Redirecting into a veth whose peer has neither
/// XDP nor GRO would drop every frame; the translator sees that in the
/// devices' xdp-features and lets the kernel forward instead, says so at
/// start, and follows a change while it runs.
#[test]
fn a_plain_veth_lab_with_default_settings_moves_bytes_both_ways() {
    require_root();
    let _g = serial();
    let transfer = |lab: &GatewayLab| {
        let up = lab.dir.join("up5.bin");
        let want = generated_sha256(5_000_000, 3, Some(&up));
        let got = sh(&lab.client, &format!("curl -sS --fail --max-time 30 -T {} {}", up.display(), lab.url("up5")));
        assert_eq!(got, want, "upload");
        let got = sh(&lab.client, &format!("curl -sS --fail --max-time 30 {} | sha256sum", lab.url("gen/5000000/4")));
        assert_eq!(got.split_whitespace().next().unwrap(), generated_sha256(5_000_000, 4, None), "download");
    };
    let lab = GatewayLab::with_gro("pl", "\"10.10.0.11\"", "native", true, false);
    for i in ["g0", "g1"] {
        assert!(
            lab.startup.contains(&format!("{i}: frames to it go through the kernel's forwarding")),
            "{}",
            lab.startup
        );
    }
    transfer(&lab);
    let s = lab.stats();
    assert_eq!(s["gw_redirected"], 0, "{s:?}");
    assert!(s["gw_passed_no_redirect_target"] > 1000, "{s:?}");
    // The client's peer starts GRO: within a second or two, frames to it
    // leave by redirect.
    sh(&lab.client, "ethtool -K lc0 gro on");
    std::thread::sleep(Duration::from_millis(2500));
    transfer(&lab);
    let s = lab.stats();
    assert!(s["gw_redirected"] > 1000, "{s:?}");
    drop(lab);

    let lab = GatewayLab::with_gro("pg", "\"10.10.0.11\"", "native", true, true);
    for i in ["g0", "g1"] {
        assert!(lab.startup.contains(&format!("{i}: frames to it leave by XDP redirect")), "{}", lab.startup);
    }
    transfer(&lab);
    assert!(lab.stats()["gw_redirected"] > 1000);
}

#[test]
fn the_kernel_log_is_off_by_default_and_switches_at_run_time() {
    require_root();
    let _g = serial();
    let mut lab = GatewayLab::new("klog", "\"10.10.0.11\"", "generic", true);
    let get = |lab: &GatewayLab| sh(&lab.client, &format!("curl -sS --fail --max-time 10 {}", lab.url("who")));
    let agent_lines = |lab: &mut GatewayLab, until: &str| {
        lab.gateway_agent.as_mut().unwrap().read_until(until, Duration::from_secs(10))
    };
    // Off by default: a request leaves no kernel line before "on".
    get(&lab);
    assert!(lab.gw_cli(&["kernel-log", "on"]).contains("kernel log on"));
    let before = agent_lines(&mut lab, "kernel log on");
    assert!(!before.contains("kernel:"), "kernel lines while off:\n{before}");
    // On: each packet is named, both directions, with addresses.
    get(&lab);
    agent_lines(&mut lab, &format!("kernel: xdp translated gw_tcp_to_sal: {SAL_ADDRESS} -> 10.10.0.11 proto 144"));
    agent_lines(&mut lab, &format!("kernel: xdp translated gw_sal_to_tcp: {PUBLIC_IP} -> {CLIENT_IP} proto 6"));
    lab.wait_no_flows(Duration::from_secs(5));
    assert!(lab.gw_cli(&["kernel-log", "off"]).contains("kernel log off"));
    agent_lines(&mut lab, "kernel log off");
    // Off again: silent until switched back on.
    get(&lab);
    std::thread::sleep(Duration::from_millis(500));
    assert!(lab.gw_cli(&["kernel-log", "on"]).contains("kernel log on"));
    let between = agent_lines(&mut lab, "kernel log on");
    assert!(!between.contains("kernel:"), "kernel lines while off:\n{between}");
}

/// The kernel matrix's end-to-end lab: `cargo xtask test` runs it in every
/// guest kernel (docs/testing.md) and natively with every fallback forced.
/// A legacy client without TCP timestamps and with complete checksums (tx
/// offload off, as from a real NIC) uploads and downloads through the
/// translator to host-mode instances; every byte arrives, every ambiguous
/// checksum is settled, and the agent named at start each kernel feature
/// it goes without.
#[test]
fn vm_matrix_lab_moves_bytes_both_ways_without_timestamps() {
    require_root();
    let _g = serial();
    const BYTES: u64 = 4_000_000;
    let lab = GatewayLab::new("vm", "\"10.10.0.11\"", "native", false);
    let features = xlate_user::kernel_features::get();
    for f in xlate_user::kernel_features::Feature::all() {
        let said = lab.startup.contains(&format!("kernel feature {} ", f.name()));
        assert_eq!(said, !features.has(f), "start-up names {} iff it goes without it:\n{}", f.name(), lab.startup);
    }
    sh(&lab.client, "sysctl -qw net.ipv4.tcp_timestamps=0");
    for ns in &lab.instances {
        sh(ns, "ethtool -K e0 tx off");
    }
    // Every SAL packet both ways on the service side, for the checksums
    // as a real peer would check them (a veth receiver would not).
    let pcap = lab.dir.join("sal.pcap");
    let mut cap = Capture::start(&lab.switch, "s0", pcap.clone(), &["-s", "0", "ip", "proto", "144"]);
    let up = lab.dir.join("up.bin");
    let want = generated_sha256(BYTES, 5, Some(&up));
    let got = sh(&lab.client, &format!("curl -sS --fail --max-time 120 -T {} {}", up.display(), lab.url("up.bin")));
    assert_eq!(got, want, "upload through the translator arrived intact");
    let got =
        sh(&lab.client, &format!("curl -sS --fail --max-time 120 {} | sha256sum", lab.url(&format!("gen/{BYTES}/6"))));
    assert_eq!(got.split_whitespace().next().unwrap(), generated_sha256(BYTES, 6, None), "download intact");
    lab.wait_no_flows(Duration::from_secs(10));
    let s = lab.stats();
    assert!(s["gw_tcp_to_sal"] > 1000 && s["gw_sal_to_tcp"] > 1000, "{s:?}");
    assert_eq!(s["gw_checksum_unresolved"], 0, "{s:?}");
    assert_eq!(s["gw_checksum_completed"], s["gw_partial_checksum"], "{s:?}");
    let report = cap.stop();
    let d = decode_valid(&pcap);
    assert!(d.sal_packets > 1000, "{} SAL packets captured; tcpdump: {report}", d.sal_packets);
}
