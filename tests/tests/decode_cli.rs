//! `xlate-user decode` as an operator runs it: exit 0 on the original
//! stack's captures, non-zero naming the packet when one is corrupt.

use std::process::Command;

use xlate_tests::{fixture, serval_fixtures, xlate_user_bin};
use xlate_user::pcap::Capture;

#[test]
fn every_fixture_decodes_with_exit_zero() {
    let mut n = 0;
    for entry in std::fs::read_dir(serval_fixtures()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("pcap") {
            continue;
        }
        n += 1;
        let out = Command::new(xlate_user_bin()).arg("decode").arg(&path).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {stdout}\n{}", path.display(), String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(" 0 invalid"), "{stdout}");
        // One line per packet plus the summary.
        let count = Capture::read(&path).unwrap().records.len();
        assert_eq!(stdout.lines().count(), count + 1, "{}", path.display());
    }
    assert_eq!(n, 10, "all ten captures present");
}

#[test]
fn decode_prints_serval_fields() {
    let out = Command::new(xlate_user_bin()).arg("decode").arg(fixture("handshake-data-close.pcap")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap();
    for needle in [
        "10.0.0.1 > 10.0.0.255",
        "flow 2>0",
        "shl 17",
        "CONTROL SYN",
        "SERVICE 00000050",
        "TCP 0>0 [S]",
        "mss 1448",
        "[ok]",
    ] {
        assert!(first.contains(needle), "{needle:?} missing from {first:?}");
    }
}

/// Copies `src` to `dst`, flipping one byte at `offset` of frame `number`.
fn corrupt(src: &str, dst: &std::path::Path, number: usize, offset: usize) {
    let mut cap = Capture::read(&fixture(src)).unwrap();
    cap.records[number - 1].data[offset] ^= 0x01;
    cap.write(dst).unwrap();
}

#[test]
fn flipped_sal_checksum_byte_fails_naming_the_packet() {
    let dir = std::env::temp_dir().join(format!("xlate-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad-checksum.pcap");
    // Ethernet 14 + IPv4 20, then the SAL checksum at SAL offset 10.
    corrupt("handshake-data-close.pcap", &bad, 5, 14 + 20 + 10);
    let out = Command::new(xlate_user_bin()).arg("decode").arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("packet 5: bad SAL checksum"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "only packet 5 is bad: {stderr}");

    // A bad shl (2 words) is named too.
    let bad_shl = dir.join("bad-shl.pcap");
    corrupt("handshake-data-close.pcap", &bad_shl, 4, 14 + 20 + 8);
    let out = Command::new(xlate_user_bin()).arg("decode").arg(&bad_shl).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("packet 4: SAL shl 2 is below"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreadable_input_is_a_clear_error() {
    let out = Command::new(xlate_user_bin()).args(["decode", "/nonexistent.pcap"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent.pcap"));
}
