//! `cargo xtask setup`: installs whatever building and testing xlate needs,
//! idempotently, saying what it does.

use std::process::Command;
use std::sync::Once;

use anyhow::{bail, Context, Result};

use crate::toolchain::{self, BpfToolchain};
use crate::util::{is_root, run, which};

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
];

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
        update_result = run(Command::new("apt-get").args(["update", "-q"]));
    });
    update_result.context("apt-get update")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("apt-get install {}", packages.join(" ")))
}

fn ensure_test_tools() -> Result<()> {
    let missing: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(bin, _)| which(bin).is_none() && !std::path::Path::new("/usr/sbin").join(bin).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        println!("setup: test tools present: {}", TEST_TOOLS.iter().map(|t| t.0).collect::<Vec<_>>().join(" "));
        return Ok(());
    }
    println!("setup: installing test tools: {}", missing.join(" "));
    apt_install(&missing)
}

/// Everything `build` and `test` need. Returns the BPF toolchain.
pub fn setup() -> Result<BpfToolchain> {
    let tc = toolchain::ensure()?;
    ensure_test_tools()?;
    Ok(tc)
}
