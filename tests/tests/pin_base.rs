//! Where loaders pin: the BPF filesystem an agent mounts at /run/xlate/bpf
//! when the machine has none at /sys/fs/bpf (see `agent/pins.rs`).
//!
//! On a fresh machine (CI) the first loaders of a test binary start
//! together; each must find one BPF filesystem, not mount its own on top
//! of another's pins. The race runs in a private mount namespace (a child
//! process under `unshare --mount`), so that taking the machine's mounts
//! away there touches nothing else.

use std::process::Command;
use std::sync::{Arc, Barrier};

const CHILD: &str = "XLATE_PIN_BASE_CHILD";
const RUN_BPF: &str = "/run/xlate/bpf";
const ROUNDS: usize = 6;
const LOADERS: usize = 8;

fn bpffs_mounts_at(path: &str) -> usize {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    m.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // mount point is field 5; the fs type follows the " - " separator.
            f.get(4) == Some(&path) && l.split(" - ").nth(1).is_some_and(|t| t.starts_with("bpf "))
        })
        .count()
}

fn unmount_all(path: &str) {
    let c = std::ffi::CString::new(path).unwrap();
    while bpffs_mounts_at(path) > 0 {
        // SAFETY: umount2(2) of a path string we own.
        assert_eq!(unsafe { libc::umount2(c.as_ptr(), 0) }, 0, "umount {path}: {}", std::io::Error::last_os_error());
    }
}

/// In the child: rounds of loaders starting at once on a machine with no
/// BPF filesystem; every load must succeed and leave one mount.
fn race() {
    unmount_all("/sys/fs/bpf");
    for round in 0..ROUNDS {
        unmount_all(RUN_BPF);
        let gate = Arc::new(Barrier::new(LOADERS));
        let loaders: Vec<_> = (0..LOADERS)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    gate.wait();
                    xlate_user::ebpf::load().map(drop).map_err(|e| format!("{e:#}"))
                })
            })
            .collect();
        for (i, l) in loaders.into_iter().enumerate() {
            if let Err(e) = l.join().unwrap() {
                panic!("round {round}, loader {i}: {e}");
            }
        }
        assert_eq!(bpffs_mounts_at(RUN_BPF), 1, "round {round}: BPF filesystems stacked at {RUN_BPF}");
    }
}

#[test]
fn loaders_starting_together_mount_one_bpf_filesystem_and_all_load() {
    if std::env::var_os(CHILD).is_some() {
        race();
        return;
    }
    let me = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(&me)
        .args(["--exact", "loaders_starting_together_mount_one_bpf_filesystem_and_all_load", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("running unshare (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the race in a private mount namespace failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}
