//! The stream-level relay (`docs/relay.md`) against the packet-level fast
//! path: one end-to-end suite run against both (the relay in both of its
//! data movers), then what only the relay does: steering what the fast
//! path declines, dynamic aliasing, back-pressure.

use std::time::{Duration, Instant};

use xlate_tests::apps::*;
use xlate_tests::gateway::*;
use xlate_tests::host::{decode_valid, Capture, Decoded};
use xlate_tests::{require_root, serial, sh};

const ONE: &str = "\"10.10.0.11\"";

/// The two implementations of the translator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `xlate-user run`: XDP translates every packet.
    Fast,
    /// `xlate-user relay --alias --mode splice|copy`: every connection
    /// through the stream-level relay.
    Relay(&'static str),
}

impl Path {
    fn lab(self, tag: &str) -> GatewayLab {
        match self {
            Path::Fast => GatewayLab::build(tag, &config(ONE), "generic", true, true, &["run"]),
            Path::Relay(m) => {
                GatewayLab::build(tag, &config(ONE), "generic", true, true, &["relay", "--alias", "--mode", m])
            }
        }
    }

    /// Who carried the connections: the counters say it.
    fn check_carrier(self, lab: &GatewayLab) {
        let s = lab.stats();
        match self {
            Path::Fast => {
                assert!(s["gw_tcp_to_sal"] > 0, "{s:?}");
                assert_eq!(s["relay_accepted"], 0, "nothing the fast path owns reaches the relay: {s:?}");
            }
            Path::Relay(_) => {
                assert!(s["relay_connected"] > 0, "{s:?}");
                assert_eq!(s["gw_tcp_to_sal"], 0, "the fast path translated nothing: {s:?}");
                assert!(s["gw_passed_relay_service"] > 0, "{s:?}");
                // The relay's Serval side is SAL, translated by the TC
                // egress program and XDP.
                assert!(s["egress_translated"] > 0 && s["gw_sal_to_tcp"] > 0, "{s:?}");
            }
        }
    }
}

fn download(lab: &GatewayLab, bytes: u64, seed: u64) -> String {
    let url = lab.url(&format!("gen/{bytes}/{seed}"));
    let out = sh(&lab.client, &format!("curl -sS --fail --max-time 60 {url} | sha256sum"));
    out.split_whitespace().next().unwrap_or_default().to_string()
}

fn upload(lab: &GatewayLab, bytes: u64, seed: u64) -> (String, String) {
    let file = lab.dir.join(format!("up-{seed}.bin"));
    let want = generated_sha256(bytes, seed, Some(&file));
    let got = sh(&lab.client, &format!("curl -sS --fail --max-time 60 -T {} {}", file.display(), lab.url("up")));
    let _ = std::fs::remove_file(&file);
    (got, want)
}

/// The same cases, whichever path carries them.
fn suite(path: Path, tag: &str) {
    let mut lab = path.lab(tag);
    // 50 MB each way, intact.
    assert_eq!(download(&lab, 50_000_000, 1), generated_sha256(50_000_000, 1, None), "{path:?}: download");
    let (got, want) = upload(&lab, 50_000_000, 2);
    assert_eq!(got, want, "{path:?}: upload");
    // 200 connections open at once, each answered, none held up by
    // retransmissions (a stall shows as a round of tens of seconds).
    let t = Instant::now();
    let n = sh(&lab.client, &format!("python3 -c '{MANY_AT_ONCE}' {PUBLIC_IP} 80 200"));
    assert_eq!(n, "200", "{path:?}: 200 concurrent connections");
    assert!(t.elapsed() < Duration::from_secs(15), "{path:?}: 200 concurrent connections took {:?}", t.elapsed());
    // Clean close: nothing is left on either side, and nothing was reset.
    lab.wait_no_flows(Duration::from_secs(10));
    if let Path::Relay(_) = path {
        let s = lab.stats();
        assert_eq!(s["relay_closed"], s["relay_connected"], "{s:?}");
        assert_eq!(s["relay_reset"] + s["relay_connect_failed"], 0, "{s:?}");
    }
    // A client without TCP timestamps (Windows' default).
    sh(&lab.client, "sysctl -qw net.ipv4.tcp_timestamps=0");
    assert_eq!(download(&lab, 5_000_000, 3), generated_sha256(5_000_000, 3, None), "{path:?}: no timestamps");
    // The same client with complete checksums (as a real NIC sends them)
    // uploads, and so do the instance and the gateway's Serval side: the
    // SAL on the switch, captured both ways, must then decode with every
    // checksum valid (a veth receiver would trust a partial one).
    for (ns, dev) in [(&lab.client, "lc0"), (&lab.gateway, "g1"), (&lab.instances[0], "e0")] {
        ns.set_offload(dev, "tx", false).unwrap();
    }
    let pcap = lab.dir.join("sal.pcap");
    let mut cap = Capture::start(&lab.switch, "s0", pcap.clone(), &["-s", "0", "-B", "65536", "ip", "proto", "144"]);
    let (got, want) = upload(&lab, 5_000_000, 6);
    assert_eq!(got, want, "{path:?}: upload without timestamps, complete checksums");
    assert_eq!(download(&lab, 5_000_000, 7), generated_sha256(5_000_000, 7, None), "{path:?}: complete checksums");
    let report = cap.stop();
    let Decoded { text, sal_packets: sal } = decode_valid(&pcap);
    assert!(
        sal > 1000 && text.contains("CONTROL SYN ") && text.contains("SERVICE 00000050"),
        "{path:?}: {sal} SAL packets; {report}"
    );
    sh(&lab.client, "sysctl -qw net.ipv4.tcp_timestamps=1");
    // A half-closing client still gets the whole answer.
    let got = sh(&lab.client, &format!("python3 -c '{GET_CLIENT}' {PUBLIC_IP} 80 /gen/3000000/4 half-close"));
    assert_eq!(got, generated_sha256(3_000_000, 4, None), "{path:?}: half-closing client");
    path.check_carrier(&lab);

    // The instance's own servers from here on.
    lab.http.clear();
    std::thread::sleep(Duration::from_millis(300));
    let inst = &lab.instances[0];
    // A server that closes first still receives the whole upload.
    let mut srv = inst.spawn("python3", &["-c", EARLY_CLOSING_SERVER, "0.0.0.0", "80"]);
    srv.wait_for_line("listening", Duration::from_secs(10));
    let out = lab.client.output("python3", &["-c", LATE_UPLOADING_CLIENT, PUBLIC_IP, "80", "4000000", "5"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("client got b'bye'"), "{path:?}: {out:?}");
    let line = srv.wait_for_line("server got", Duration::from_secs(20));
    assert_eq!(line.trim(), format!("server got 4000000 {}", generated_sha256(4_000_000, 5, None)), "{path:?}");
    // A server reset reaches the client.
    let mut srv = inst.spawn("python3", &["-c", ABORTING_SERVER, "0.0.0.0", "80"]);
    srv.wait_for_line("listening", Duration::from_secs(10));
    let out = lab.client.output("python3", &["-c", PATIENT_CLIENT, PUBLIC_IP, "80"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "client saw reset", "{path:?}: server reset");
    // A client abort reaches the server.
    let mut srv = inst.spawn("python3", &["-c", PATIENT_SERVER, "0.0.0.0", "80"]);
    srv.wait_for_line("listening", Duration::from_secs(10));
    let out = lab.client.output("python3", &["-c", ABORTING_CLIENT, PUBLIC_IP, "80"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    srv.wait_for_line("server saw reset", Duration::from_secs(10));
    lab.wait_no_flows(Duration::from_secs(10));
    if let Path::Relay(_) = path {
        let s = lab.stats();
        assert_eq!(s["relay_reset"], 2, "one reset each way: {s:?}");
    }
}

#[test]
fn the_suite_through_the_fast_path() {
    require_root();
    let _g = serial();
    suite(Path::Fast, "sfast");
}

#[test]
fn the_suite_through_the_relay_with_splice() {
    require_root();
    let _g = serial();
    suite(Path::Relay("splice"), "ssplice");
}

#[test]
fn the_suite_through_the_relay_with_copies() {
    require_root();
    let _g = serial();
    suite(Path::Relay("copy"), "scopy");
}

/// The agent's resident memory, in kB.
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A second service on port 81, given to the relay (the instance serves
/// the same service ID).
const RELAY_SERVICE: &str =
    "\n[[service]]\naddress = \"203.0.113.1\"\nport = 81\nservice_id = \"00000050\"\ninstances = [\"10.10.0.11\"]\nmode = \"relay\"\n";

fn get(lab: &GatewayLab, port: u16, bytes: u64, seed: u64) -> String {
    let url = format!("http://{PUBLIC_IP}:{port}/gen/{bytes}/{seed}");
    let out = sh(&lab.client, &format!("curl -sS --fail --max-time 30 {url} | sha256sum"));
    out.split_whitespace().next().unwrap_or_default().to_string()
}

/// What the fast path declines (a SYN with IP options, a SYN over its
/// share of a full flow table, a service given to the relay) is served by
/// the relay; what the fast path owns never reaches it.
#[test]
fn the_relay_takes_what_the_fast_path_declines_and_nothing_else() {
    require_root();
    let _g = serial();
    // 32 flows: the fast path takes 24, the relay keeps 8.
    assert_eq!(xlate_user::gateway::relay_reserve(32), 8);
    let text = config(ONE).replace("[translator]\n", "[translator]\nmax_flows = 32\n") + RELAY_SERVICE;
    let lab = GatewayLab::build("steer", &text, "generic", true, true, &["run", "--alias"]);
    for seed in 0..3 {
        assert_eq!(get(&lab, 80, 1_000_000, seed), generated_sha256(1_000_000, seed, None));
    }
    let s = lab.stats();
    assert!(s["gw_tcp_to_sal"] > 0, "{s:?}");
    assert_eq!(s["relay_accepted"], 0, "the fast path's connections never reach the relay: {s:?}");

    // A service in mode = "relay".
    assert_eq!(get(&lab, 81, 2_000_000, 5), generated_sha256(2_000_000, 5, None));
    let s = lab.stats();
    assert_eq!((s["relay_accepted"], s["relay_connected"]), (1, 1), "{s:?}");
    assert!(s["gw_passed_relay_service"] > 0, "{s:?}");

    // A client whose packets carry IP options.
    let got = sh(&lab.client, &format!("python3 -c '{GET_CLIENT}' {PUBLIC_IP} 80 /gen/1000000/6 ip-options"));
    assert_eq!(got, generated_sha256(1_000_000, 6, None), "IP options client");
    let s = lab.stats();
    assert_eq!(s["relay_connected"], 2, "{s:?}");
    assert!(s["gw_passed_ip_options"] > 0, "{s:?}");

    // The fast path's share of the table is full: the next connection is
    // relayed (its SAL connection uses the relay's reserve).
    lab.wait_no_flows(Duration::from_secs(10));
    let mut hold = lab.client.spawn("python3", &["-u", "-c", HOLDING_CLIENT, PUBLIC_IP, "80", "24"]);
    hold.wait_for_line("held 24", Duration::from_secs(20));
    let before = lab.stats()["drop_table_full"];
    assert_eq!(get(&lab, 80, 1_000_000, 7), generated_sha256(1_000_000, 7, None), "over a full table");
    let s = lab.stats();
    assert_eq!(s["relay_connected"], 3, "{s:?}");
    assert!(s["drop_table_full"] > before, "{s:?}");
    // Room again: new connections take the fast path.
    drop(hold);
    lab.wait_no_flows(Duration::from_secs(10));
    let fast = lab.stats()["gw_tcp_to_sal"];
    assert_eq!(get(&lab, 80, 1_000_000, 8), generated_sha256(1_000_000, 8, None));
    let s = lab.stats();
    assert!(s["gw_tcp_to_sal"] > fast, "{s:?}");
    assert_eq!(s["relay_accepted"], 3, "{s:?}");
}

/// The addresses on g0 of the gateway, as `a.b.c.d/len` strings.
fn g0_addresses(lab: &GatewayLab) -> String {
    sh(&lab.gateway, "ip -4 -o addr show dev g0 | awk '{print $4}'")
}

fn signal(lab: &GatewayLab, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lab.gateway_agent.as_ref().unwrap().pid(), sig) };
}

/// `--alias`: service addresses no interface has are added (and reached),
/// removed when a reload drops them, and gone after every kind of exit.
#[test]
fn dynamic_aliasing_adds_the_service_addresses_and_takes_them_away() {
    require_root();
    let _g = serial();
    let second = "\n[[service]]\naddress = \"203.0.113.7\"\nport = 80\nservice_id = \"00000050\"\ninstances = [\"10.10.0.11\"]\nmode = \"relay\"\n";
    let text = config(ONE).replace("instances = [", "mode = \"relay\"\ninstances = [") + second;
    let mut lab = GatewayLab::build("alias", &text, "generic", true, true, &["run", "--alias"]);
    let wait_for = |lab: &GatewayLab, want: &[&str], gone: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let a = g0_addresses(lab);
            if want.iter().all(|w| a.contains(w)) && !gone.iter().any(|g| a.contains(g)) {
                return;
            }
            assert!(Instant::now() < deadline, "g0 has {a}; want {want:?}, not {gone:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(&lab, &["203.0.113.1/32", "203.0.113.7/32"], &[]);
    let got = sh(&lab.client, "curl -sS --fail --max-time 10 http://203.0.113.7/gen/100000/1 | sha256sum");
    assert_eq!(got.split_whitespace().next().unwrap(), generated_sha256(100_000, 1, None));
    // A reload that drops 203.0.113.7.
    std::fs::write(&lab.config_path, &text[..text.len() - second.len()]).unwrap();
    signal(&lab, libc::SIGUSR1);
    lab.gateway_agent.as_mut().unwrap().wait_for_line("reloaded", Duration::from_secs(10));
    wait_for(&lab, &["203.0.113.1/32"], &["203.0.113.7"]);
    // SIGTERM: the agent goes (the datapath stays), so do its aliases.
    lab.stop_gateway_agent(libc::SIGTERM);
    wait_for(&lab, &[], &["203.0.113."]);
    // SIGINT after a restart.
    lab.restart_gateway("generic");
    wait_for(&lab, &["203.0.113.1/32"], &[]);
    lab.stop_gateway_agent(libc::SIGINT);
    wait_for(&lab, &[], &["203.0.113."]);
    // An address the operator configured is left alone.
    sh(&lab.gateway, "ip addr add 203.0.113.1/32 dev g0");
    lab.restart_gateway("generic");
    lab.stop_gateway_agent(libc::SIGTERM);
    wait_for(&lab, &["203.0.113.1/32"], &[]);
}

/// A client reading at 1 MB/s from a 200 MB download: the relay holds at
/// most its buffer per direction (pipe or user-space buffer), its memory
/// does not grow, and the instance is held back by TCP's window instead.
#[test]
fn a_slow_reader_holds_the_relay_to_its_bound() {
    require_root();
    let _g = serial();
    const BUFFER: u64 = 256 * 1024;
    for mode in ["splice", "copy"] {
        let lab = Path::Relay(mode).lab(&format!("bp{}", &mode[..2]));
        let pid = lab.gateway_agent.as_ref().unwrap().pid();
        let rss0 = rss_kb(pid);
        let url = lab.url("gen/200000000/9");
        let got = lab.dir.join(format!("slow-{mode}.bin"));
        let got_s = got.to_string_lossy().into_owned();
        let mut dl = lab.client.spawn("curl", &["-sS", "--limit-rate", "1M", "-o", &got_s, &url]);
        let (mut max_held, mut max_rss, mut moved) = (0u64, 0u64, 0u64);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(8) {
            let rows: serde_json::Value = serde_json::from_str(&lab.gw_cli(&["flows", "--json"])).unwrap();
            for r in rows.as_array().unwrap().iter().filter(|r| r["relay"] == true) {
                max_held = max_held.max(r["held_to_client"].as_u64().unwrap());
                moved = r["bytes_to_client"].as_u64().unwrap();
            }
            max_rss = max_rss.max(rss_kb(pid));
            std::thread::sleep(Duration::from_millis(250));
        }
        // What the client has read by now (after the last sample of
        // `moved`): curl's limit is an average it may run ahead of early
        // on, so the bound is what it read, not 1 MB/s times 8 s.
        let consumed = std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0);
        drop(dl.stop(libc::SIGTERM));
        let _ = std::fs::remove_file(&got);
        assert!(max_held <= BUFFER, "{mode}: {max_held} bytes held at once, over the {BUFFER}-byte bound");
        assert!(max_held > 0, "{mode}: the buffer was never used");
        assert!(consumed > 0 && consumed < 60_000_000, "{mode}: the client read {consumed} bytes in 8 s at 1 MB/s");
        // What the client read, plus what the kernel's socket buffers can
        // take (the client's receive buffer, the relay's send buffer) and
        // the relay's own: the rest waits at the instance.
        let max_of = |ns: &xlate_tests::netns::Netns, key: &str| -> u64 {
            sh(ns, &format!("sysctl -n {key}")).split_whitespace().last().unwrap().parse().unwrap()
        };
        let sockets = max_of(&lab.client, "net.ipv4.tcp_rmem") + max_of(&lab.gateway, "net.ipv4.tcp_wmem");
        let bound = consumed + sockets + BUFFER;
        assert!(
            moved < bound,
            "{mode}: the relay moved {moved} bytes to a reader that read {consumed} in 8 s (bound {bound})"
        );
        assert!(max_rss < rss0 + 8 * 1024, "{mode}: RSS grew from {rss0} kB to {max_rss} kB");
        eprintln!(
            "{mode}: held at most {max_held} B, moved {moved} B while the client read {consumed} B in 8 s, RSS {rss0} \
             -> {max_rss} kB"
        );
    }
}

/// A reload (SIGHUP) takes a relay-mode service away: its listener closes
/// (new connections are refused) while the connection it carries runs to
/// its end; a service the reload adds is served at once.
#[test]
fn a_reload_closes_a_removed_service_to_new_connections_but_lets_its_connections_finish() {
    require_root();
    let _g = serial();
    let text = config(ONE).replace("instances = [", "mode = \"relay\"\ninstances = [");
    let mut lab = GatewayLab::build("rld", &text, "generic", true, true, &["run", "--alias"]);
    let url = lab.url("gen/6000000/11");
    let mut dl = lab.client.spawn("sh", &["-c", &format!("curl -sS --fail --limit-rate 2M {url} | sha256sum")]);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(lab.stats()["relay_connected"], 1);
    // The service moves to port 81; port 80 is gone.
    std::fs::write(&lab.config_path, text.replace("port = 80", "port = 81")).unwrap();
    signal(&lab, libc::SIGHUP);
    lab.gateway_agent.as_mut().unwrap().wait_for_line("reloaded", Duration::from_secs(10));
    let refused = lab.client.output("curl", &["-sS", "--max-time", "5", &lab.url("who")]);
    assert_eq!(refused.status.code(), Some(7), "port 80 refuses new connections: {refused:?}");
    assert_eq!(get(&lab, 81, 100_000, 12), generated_sha256(100_000, 12, None), "the new service at once");
    let line = dl.wait_for_line("-", Duration::from_secs(30));
    assert_eq!(line.split_whitespace().next().unwrap(), generated_sha256(6_000_000, 11, None), "finished intact");
}
