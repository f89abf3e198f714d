//! The stream-level relay (`docs/relay.md`): what the fast path declines,
//! and services given to it, are carried by the relay over real SAL
//! connections to the instance the fast path would pick.

use std::time::Duration;

use xlate_tests::gateway::*;
use xlate_tests::{require_root, serial, sh};

const RELAY_MODE: &str = "mode = \"relay\"\n";

fn download(lab: &GatewayLab, bytes: u64, seed: u64) -> String {
    let out = sh(
        &lab.client,
        &format!("curl -sS --fail --max-time 60 {} | sha256sum", lab.url(&format!("gen/{bytes}/{seed}"))),
    );
    out.split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn a_relay_mode_service_is_served_by_the_relay_over_sal() {
    require_root();
    let _g = serial();
    let lab = GatewayLab::build("rly", "\"10.10.0.11\"", RELAY_MODE, "generic", true, false, &["run", "--alias"]);
    assert_eq!(download(&lab, 5_000_000, 3), generated_sha256(5_000_000, 3, None));
    let s = lab.stats();
    assert_eq!(s["relay_accepted"], 1, "{s:?}");
    assert_eq!(s["relay_connected"], 1, "{s:?}");
    assert!(s["gw_passed_relay_service"] > 0, "{s:?}");
    assert_eq!(s["gw_tcp_to_sal"], 0, "{s:?}");
    let _ = Duration::from_secs(1);
}
