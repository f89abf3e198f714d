//! Helpers for xlate's tests: network namespaces that clean up after
//! themselves, background processes that die with the test, and paths to
//! the fixtures and the agent binary.

pub mod apps;
pub mod gateway;
pub mod host;
pub mod netns;
pub mod scale_out;

use std::path::PathBuf;
use std::time::Duration;

/// Where the captures of the original Serval stack live.
pub fn serval_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/serval")
}

pub fn fixture(name: &str) -> PathBuf {
    serval_fixtures().join(name)
}

/// The agent binary: `XLATE_USER_BIN` (set by `cargo xtask test`) or the
/// workspace's debug build.
pub fn xlate_user_bin() -> PathBuf {
    let p = std::env::var_os("XLATE_USER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xlate-user"));
    assert!(p.exists(), "{} missing: run the tests with `cargo xtask test`", p.display());
    p
}

/// Kernel tests need root; fail loudly rather than pass without testing.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads BPF programs and creates network namespaces: run it as root (cargo xtask test)"
    );
}

/// The lab tests move a lot of data on a 2-core machine: one at a time
/// within a test binary.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a shell script in a namespace; it must succeed; returns stdout.
pub fn sh(ns: &netns::Netns, script: &str) -> String {
    let out = ns.output("sh", &["-c", script]);
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every SAL packet to `addr` arriving in `ns` is dropped (after a capture
/// on the interface has seen it: the rule is at the input hook) until the
/// guard is dropped. Loss of the other side's control packets, e.g. the
/// RSYN-ACKs to a migrating host's new address.
pub struct LoseSalTo<'a>(&'a netns::Netns);

impl<'a> LoseSalTo<'a> {
    pub fn start(ns: &'a netns::Netns, addr: &str) -> Self {
        sh(
            ns,
            &format!(
                "nft add table ip xlate_loss && nft add chain ip xlate_loss in '{{ type filter hook input priority 0; }}' \
                 && nft add rule ip xlate_loss in ip daddr {addr} ip protocol 144 drop"
            ),
        );
        LoseSalTo(ns)
    }
}

impl Drop for LoseSalTo<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", self.0.name(), "nft", "delete", "table", "ip", "xlate_loss"])
            .status();
    }
}

/// Waits until `f` gives something, for at most `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `f` holds, for at most `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    wait_for(limit, what, || f().then_some(()))
}
