//! Resilience: the agent stops and starts (SIGTERM, SIGKILL), or a new
//! build's programs replace the running ones, while transfers run; none of
//! them notices. Stopping for good resets both sides and leaves nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use xlate_tests::gateway::*;
use xlate_tests::host::{HostLab, CLIENT_IF, SERVER_IF};
use xlate_tests::netns::{Bg, Netns};
use xlate_tests::{require_root, serial, sh, xlate_user_bin};

const BYTES: u64 = 200_000_000;
/// 200 MB at 25 MB/s: 8 s, long enough for three restarts.
const RATE: &str = "25M";

/// A rate-limited 200 MB download and upload through `url_of`, running in
/// `ns` in the background; each prints its SHA-256 when done.
struct Transfers {
    down: Bg,
    up: Bg,
    want_down: String,
    want_up: String,
    file: PathBuf,
}

impl Transfers {
    fn start(ns: &Netns, dir: &std::path::Path, url_of: impl Fn(&str) -> String) -> Transfers {
        let file = dir.join("up200.bin");
        let want_up = generated_sha256(BYTES, 11, Some(&file));
        let want_down = generated_sha256(BYTES, 12, None);
        let down = ns.spawn(
            "sh",
            &[
                "-c",
                &format!("curl -sS --fail --max-time 120 --limit-rate {RATE} {} | sha256sum", url_of(&format!("gen/{BYTES}/12"))),
            ],
        );
        let up = ns.spawn(
            "sh",
            &[
                "-c",
                &format!("curl -sS --fail --max-time 120 --limit-rate {RATE} -T {} {}", file.display(), url_of("up200")),
            ],
        );
        Transfers { down, up, want_down, want_up, file }
    }

    /// Waits for both; they must have arrived intact.
    fn finish(mut self) {
        let got = self.down.wait_for_line("-", Duration::from_secs(120));
        assert_eq!(got.split_whitespace().next().unwrap(), self.want_down, "200 MB download intact");
        let got = self.up.read_until("\n", Duration::from_secs(120));
        assert_eq!(got.trim(), self.want_up, "200 MB upload intact");
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The XDP program attached to `dev` in `ns` (its ID), per `ip link`.
fn xdp_prog(ns: &Netns, dev: &str) -> Option<String> {
    let out = sh(ns, &format!("ip -d link show {dev}"));
    out.split("prog/xdp id ").nth(1).map(|r| r.split_whitespace().next().unwrap().to_string())
}

/// Every agent's pin directory (the test shares the agents' mount
/// namespace), by name.
fn pin_dirs() -> Vec<String> {
    let mut out = Vec::new();
    for base in ["/sys/fs/bpf/xlate", "/run/xlate/bpf"] {
        if let Ok(entries) = std::fs::read_dir(base) {
            out.extend(entries.flatten().map(|e| e.path().display().to_string()));
        }
    }
    out
}

/// The pin directory of the one agent whose name starts with `prefix`.
fn pin_dir(prefix: &str) -> Option<PathBuf> {
    pin_dirs()
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)) && d.join("FLOWS").exists())
}

#[test]
fn the_translator_restarts_and_is_replaced_under_load_without_losing_a_flow() {
    require_root();
    let _g = serial();
    let mut lab = GatewayLab::new("rs", "\"10.10.0.11\"", "generic", true);
    let before = lab.stats();
    let t = Transfers::start(&lab.client, &lab.dir, |p| lab.url(p));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.flows().len(), 2, "both transfers run through the translator");
    let prog = xdp_prog(&lab.gateway, "g0").expect("XDP on g0");
    // SIGTERM twice, restarting within 2 s; then SIGKILL.
    for sig in [libc::SIGTERM, libc::SIGTERM, libc::SIGKILL] {
        let t0 = Instant::now();
        lab.stop_gateway_agent(sig);
        // The datapath goes on without the agent.
        assert_eq!(xdp_prog(&lab.gateway, "g0").as_deref().is_some(), true, "XDP stays attached");
        std::thread::sleep(Duration::from_millis(300));
        let startup = lab.restart_gateway("generic");
        assert!(t0.elapsed() < Duration::from_secs(2) + Duration::from_secs(3), "restart took {:?}", t0.elapsed());
        assert!(startup.contains("took over from the previous run with 2 live flows"), "{startup}");
        // A second load of the object: its program replaced the running one
        // on the same link.
        let now = xdp_prog(&lab.gateway, "g0").expect("XDP on g0");
        assert_ne!(now, prog, "the new run's program is attached");
        std::thread::sleep(Duration::from_millis(700));
    }
    t.finish();
    lab.wait_no_flows(Duration::from_secs(10));
    let s = lab.stats();
    // Counters carried over too, and no packet met a missing flow.
    assert!(s["gw_sal_to_tcp"] > before["gw_sal_to_tcp"] + 100_000, "{s:?}");
    assert!(s["gw_tcp_to_sal"] > before["gw_tcp_to_sal"] + 2_000, "{s:?}");
    assert_eq!(s["drop_unknown_flow"], 0, "{s:?}");
    assert_eq!(s["gw_passed_no_flow"], 0, "{s:?}");
}

#[test]
fn host_mode_restarts_on_both_ends_under_load_without_losing_a_flow() {
    require_root();
    let _g = serial();
    let mut lab = HostLab::new("hrs");
    lab.start_http();
    let t = Transfers::start(&lab.client, &lab.dir, |p| lab.url(p));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.flows(false).len(), 2, "both transfers run in host mode");
    for (i, sig) in [libc::SIGTERM, libc::SIGTERM, libc::SIGKILL].into_iter().enumerate() {
        let agent = if i % 2 == 0 { &mut lab.server_agent } else { &mut lab.client_agent };
        agent.stop_agent(sig);
        std::thread::sleep(Duration::from_millis(300));
        let startup = agent.restart();
        assert!(startup.contains("took over from the previous run with 2 live flows"), "{startup}");
        std::thread::sleep(Duration::from_millis(700));
    }
    t.finish();
    lab.wait_no_flows(Duration::from_secs(10));
    for side in [true, false] {
        let s = lab.stats(side);
        assert_eq!(s["drop_unknown_flow"], 0, "{s:?}");
    }
}

#[test]
fn a_pinned_map_of_another_layout_is_refused_not_recreated() {
    require_root();
    let _g = serial();
    let mut lab = GatewayLab::new("lay", "\"10.10.0.11\"", "generic", true);
    sh(&lab.client, &format!("curl -sS --fail --max-time 10 {}", lab.url("who")));
    lab.stop_gateway_agent(libc::SIGTERM);
    let dir = pin_dir("gw-").expect("the translator's pins");
    // An "older build" whose flow table had another layout: any other map
    // pinned under its name.
    std::fs::rename(dir.join("FLOWS"), dir.join("FLOWS_keep")).unwrap();
    let mut ebpf = xlate_user::ebpf::load().unwrap();
    ebpf.map_mut("GW_MAGLEV").unwrap().pin(dir.join("FLOWS")).unwrap();
    drop(ebpf);
    let out = lab
        .gateway
        .net_cmd(xlate_user_bin())
        .args(["run", "--iface", "g0", "--iface", "g1", "--xdp-mode", "generic", "--config"])
        .arg(&lab.config_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a changed layout must refuse the start");
    assert!(err.contains("FLOWS: type 2") && err.contains("value size") && err.contains("xlate-user stop"), "{err}");
    // Nothing was recreated: the foreign map is still there, untouched.
    assert!(dir.join("FLOWS").exists() && dir.join("FLOWS_keep").exists());
    std::fs::remove_file(dir.join("FLOWS")).unwrap();
    std::fs::rename(dir.join("FLOWS_keep"), dir.join("FLOWS")).unwrap();
    let startup = lab.restart_gateway("generic");
    assert!(startup.contains("xlate translator on"), "{startup}");
    sh(&lab.client, &format!("curl -sS --fail --max-time 10 {}", lab.url("who")));
}

#[test]
fn stopping_the_translator_for_good_resets_both_sides_and_leaves_nothing() {
    require_root();
    let _g = serial();
    let mut lab = GatewayLab::new("sfg", "\"10.10.0.11\"", "generic", true);
    // A new namespace forwards nothing; the translator switched it on.
    assert_eq!(sh(&lab.gateway, "sysctl -n net.ipv4.ip_forward"), "1");
    let mut dl = lab.client.spawn(
        "sh",
        &["-c", &format!("curl -sS --max-time 60 --limit-rate 1M -o /dev/null {}; echo exit=$?", lab.url(&format!("gen/{BYTES}/5")))],
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.flows().len(), 1);
    let (out, _) = lab.stop_gateway();
    assert!(out.contains("stopping for good: reset 1 flows"), "{out}");
    // The client's curl saw a reset, at once (not a timeout).
    let line = dl.wait_for_line("exit=", Duration::from_secs(10));
    assert_eq!(line.trim(), "exit=56", "curl: connection reset ({line})");
    // The instance got the SAL RST: its flow is gone.
    let inst = std::process::Command::new("ip")
        .args(["netns", "exec", lab.instances[0].name()])
        .arg(xlate_user_bin())
        .args(["host", "flows", "--iface", "e0"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&inst.stdout).lines().count(), 1, "{}", String::from_utf8_lossy(&inst.stdout));
    // Nothing left: no XDP, no TC program, no pins, sysctls as they were.
    assert_eq!(xdp_prog(&lab.gateway, "g0"), None);
    assert_eq!(xdp_prog(&lab.gateway, "g1"), None);
    assert!(pin_dir("gw-").is_none(), "pins left behind");
    assert_eq!(sh(&lab.gateway, "sysctl -n net.ipv4.ip_forward"), "0", "ip_forward restored");
    // And a stop with nothing running says so.
    let again = lab.gateway.cmd(xlate_user_bin().to_str().unwrap()).args(["stop", "--iface", "g0"]).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to stop"));
}

#[test]
fn stopping_host_mode_for_good_without_its_agent_resets_both_sides() {
    require_root();
    let _g = serial();
    let mut lab = HostLab::new("hsfg");
    lab.start_http();
    let mut dl = lab.client.spawn(
        "sh",
        &["-c", &format!("curl -sS --max-time 60 --limit-rate 1M -o /dev/null {}; echo exit=$?", lab.url(&format!("gen/{BYTES}/6")))],
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.flows(true).len(), 1);
    // The client's agent crashed; the operator stops its datapath for good.
    lab.client_agent.stop_agent(libc::SIGKILL);
    let out = lab.client.cmd(xlate_user_bin().to_str().unwrap()).args(["host", "stop", "--iface", CLIENT_IF]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reset 1 flows"));
    let line = dl.wait_for_line("exit=", Duration::from_secs(10));
    assert_eq!(line.trim(), "exit=56", "curl: connection reset ({line})");
    // The server side got the SAL RST.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.flows(true).is_empty() {
        assert!(Instant::now() < deadline, "server flows left: {:?}", lab.flows(true));
        std::thread::sleep(Duration::from_millis(100));
    }
    // No segmenter, no pins on the client; the server's datapath runs on.
    let links = sh(&lab.client, "ip -o link show");
    assert!(!links.contains("xlsg"), "{links}");
    let pins = pin_dirs();
    assert!(!pins.iter().any(|d| d.ends_with(CLIENT_IF)), "{pins:?}");
    assert!(pins.iter().any(|d| d.ends_with(SERVER_IF)), "{pins:?}");
}
