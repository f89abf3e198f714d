//! The stream-level relay (`docs/relay.md`) against the packet-level fast
//! path: one end-to-end suite run against both (the relay in both of its
//! data movers), then what only the relay does: steering what the fast
//! path declines, dynamic aliasing, back-pressure.

use std::time::{Duration, Instant};

use xlate_tests::apps::*;
use xlate_tests::gateway::*;
use xlate_tests::{require_root, serial, sh, xlate_user_bin};

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
            Path::Fast => GatewayLab::build(tag, "\"10.10.0.11\"", "", "generic", true, true, &["run"]),
            Path::Relay(m) => {
                GatewayLab::build(tag, "\"10.10.0.11\"", "", "generic", true, true, &["relay", "--alias", "--mode", m])
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
    // 200 connections open at once, each answered.
    let n = sh(&lab.client, &format!("python3 -c '{MANY_AT_ONCE}' {PUBLIC_IP} 80 200"));
    assert_eq!(n, "200", "{path:?}: 200 concurrent connections");
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
    sh(&lab.client, "sysctl -qw net.ipv4.tcp_timestamps=1");
    // A half-closing client still gets the whole answer.
    let got = sh(&lab.client, &format!("python3 -c '{HALF_CLOSING_CLIENT}' {PUBLIC_IP} 80 /gen/3000000/4"));
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
