//! `cargo xtask setup`: installs whatever building and testing xlate needs,
//! idempotently, saying what it does.

use std::process::Command;
use std::sync::Once;

use anyhow::{bail, Context, Result};

use crate::toolchain::{self, BpfToolchain};
use crate::util::{is_root, which};

/// Programs the tests drive, and the Debian package that has each.
pub const TEST_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("python3", "python3"),
    ("tcpdump", "tcpdump"),
    ("ethtool", "ethtool"),
    ("iperf3", "iperf3"),
    ("ping", "iputils-ping"),
    ("curl", "curl"),
    ("nft", "nftables"),
    ("systemd-analyze", "systemd"),
    // The experiments: HAProxy is one of the compared paths; the plots'
    // text is drawn in DejaVu Sans (a file, found like a program in /usr/sbin).
    ("haproxy", "haproxy"),
    (crate::plot::FONT, "fonts-dejavu-core"),
    // The scale-out lab's DNS server (docs/scale-out.md): the package
    // without a system service of its own.
    ("dnsmasq", "dnsmasq-base"),
];

/// What `cargo xtask vm` and the kernel matrix need: qemu, a static
/// busybox for the guests' initramfs, kmod (depmod, modprobe) and the
/// decompressors of Debian's kernels and modules.
pub const VM_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("depmod", "kmod"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
];

/// apt option: wait up to 5 minutes for another apt or dpkg (an unattended
/// upgrade, a second xtask) instead of failing at once. apt 2.6 honours it
/// for dpkg's locks only, so [`apt_get`] also retries on the others.
pub const APT_LOCK_WAIT: &str = "DPkg::Lock::Timeout=300";
/// How long [`apt_get`] waits for locks apt itself does not wait for.
const APT_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

static APT_UPDATE: Once = Once::new();

pub fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_root() {
        bail!("need root to install {} (apt-get); run as root or install them by hand", packages.join(" "));
    }
    if which("apt-get").is_none() {
        bail!("apt-get not found: install {} by hand", packages.join(" "));
    }
    let mut update_result = Ok(());
    APT_UPDATE.call_once(|| {
        update_result = apt_get(&["update", "-q"]);
    });
    update_result.context("apt-get update")?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(packages);
    apt_get(&args).with_context(|| format!("apt-get install {}", packages.join(" ")))
}

/// Runs `apt-get ARGS` (stdout shown as it comes, stderr after), waiting
/// for the dpkg lock and retrying while another apt holds the lists or
/// archives lock (`apt-get update` does not wait for those), for up to
/// five minutes.
pub fn apt_get(args: &[&str]) -> Result<()> {
    let t = std::time::Instant::now();
    loop {
        let out = Command::new("apt-get")
            .args(["-o", APT_LOCK_WAIT])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::inherit())
            .output()
            .context("starting apt-get")?;
        let err = String::from_utf8_lossy(&out.stderr);
        eprint!("{err}");
        if out.status.success() {
            return Ok(());
        }
        if !err.contains("Could not get lock") || t.elapsed() > APT_LOCK_PATIENCE {
            bail!("apt-get {} failed with {}", args.join(" "), out.status);
        }
        println!("setup: another apt or dpkg holds its lock; trying again in 5 s");
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

fn ensure_test_tools() -> Result<()> {
    ensure_tools("test tools", TEST_TOOLS)
}

/// Installs what the qemu guests need (see [`VM_TOOLS`]).
pub fn ensure_vm_tools() -> Result<()> {
    ensure_tools("vm tools", VM_TOOLS)
}

fn ensure_tools(what: &str, tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| {
            which(bin).is_none() && !["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(bin).exists())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        println!("setup: {what} present: {}", tools.iter().map(|t| t.0).collect::<Vec<_>>().join(" "));
        return Ok(());
    }
    println!("setup: installing {what}: {}", missing.join(" "));
    apt_install(&missing)
}

/// Everything `build` and `test` need. Returns the BPF toolchain.
pub fn setup() -> Result<BpfToolchain> {
    let tc = toolchain::ensure()?;
    ensure_test_tools()?;
    Ok(tc)
}
