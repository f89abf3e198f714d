//! Finding (and installing) a toolchain that builds Rust for
//! bpfel-unknown-none on this machine.
//!
//! Two recipes work (see docs/building.md):
//! - Debian's `rustc-web` 1.96, which ships a prebuilt `core` for the BPF
//!   targets, driven with `RUSTC_BOOTSTRAP=1`. Works offline from Debian's
//!   archive; the default here because rustup cannot fetch `rust-src`.
//! - a rustup nightly with the `rust-src` component, via `-Z build-std=core`.
//!
//! Both need `bpf-linker`, built against an LLVM at least as new as the
//! compiler's (Debian's LLVM 22).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{home_cargo_bin, path_with_cargo_bin, run, which};

pub const BPF_TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
pub const DEBIAN_PACKAGES: &[&str] =
    &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf", "llvm-22-dev", "libpolly-22-dev"];
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// How the eBPF crate gets built.
#[derive(Debug, Clone)]
pub enum BpfToolchain {
    /// Debian's compiler with a prebuilt `core`.
    Debian,
    /// A rustup nightly with `rust-src` (`-Z build-std=core`).
    Nightly(String),
}

impl BpfToolchain {
    pub fn describe(&self) -> String {
        match self {
            BpfToolchain::Debian => format!("Debian rustc ({DEBIAN_RUSTC}) with prebuilt BPF core"),
            BpfToolchain::Nightly(t) => format!("rustup {t} with rust-src (-Z build-std=core)"),
        }
    }

    /// The cargo command that builds `manifest_dir`'s crate for BPF: aya's
    /// flags, and BPF ISA v3 (32-bit ALU and jumps, Linux 5.1; xlate needs
    /// 6.1): the flow engine works in 32-bit words, which the generic ISA
    /// computes in 64-bit registers and truncates after every step (SAL->TCP
    /// 5-8 ns faster per packet in `bench-xdp`, docs/performance.md).
    pub fn build_command(&self, manifest_dir: &Path) -> Command {
        let flags =
            ["--cfg=bpf_target_arch=\"x86_64\"", "-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"].join("\x1f");
        let mut cmd = match self {
            BpfToolchain::Debian => {
                let mut c = Command::new(DEBIAN_CARGO);
                c.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
                c.args(["build", "--release", "--target", BPF_TARGET]);
                c
            }
            BpfToolchain::Nightly(t) => {
                let mut c = Command::new("rustup");
                c.args(["run", t, "cargo", "build", "--release", "--target", BPF_TARGET, "-Z", "build-std=core"]);
                c
            }
        };
        // What the outer `cargo xtask` put in the environment belongs to
        // the host toolchain; the inner build must not inherit it.
        for var in [
            "RUSTC",
            "RUSTC_WRAPPER",
            "RUSTUP_TOOLCHAIN",
            "CARGO",
            "CARGO_TARGET_DIR",
            "RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
        ] {
            if !(matches!(self, BpfToolchain::Debian) && var == "RUSTC") {
                cmd.env_remove(var);
            }
        }
        cmd.env("CARGO_ENCODED_RUSTFLAGS", flags);
        cmd.env("PATH", path_with_cargo_bin());
        cmd.current_dir(manifest_dir);
        cmd
    }
}

fn debian_core_present() -> bool {
    std::fs::read_dir(DEBIAN_BPF_CORE_DIR)
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
        .unwrap_or(false)
}

fn nightly_with_rust_src() -> Option<String> {
    let out = Command::new("rustup").args(["toolchain", "list"]).output().ok()?;
    let list = String::from_utf8_lossy(&out.stdout);
    for t in list.lines().map(|l| l.split_whitespace().next().unwrap_or("")) {
        if !t.starts_with("nightly") {
            continue;
        }
        let comps =
            Command::new("rustup").args(["component", "list", "--installed", "--toolchain", t]).output().ok()?;
        if String::from_utf8_lossy(&comps.stdout).lines().any(|l| l.starts_with("rust-src")) {
            return Some(t.to_string());
        }
    }
    None
}

/// The usable BPF toolchain, if any.
pub fn detect() -> Option<BpfToolchain> {
    if Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_CARGO).exists() && debian_core_present() {
        return Some(BpfToolchain::Debian);
    }
    nightly_with_rust_src().map(BpfToolchain::Nightly)
}

pub fn bpf_linker() -> Option<PathBuf> {
    which("bpf-linker").or_else(|| {
        let p = home_cargo_bin().join("bpf-linker");
        p.exists().then_some(p)
    })
}

/// Makes sure a BPF toolchain and bpf-linker exist, installing what is
/// missing. Says what it does; fails naming the missing piece.
pub fn ensure() -> Result<BpfToolchain> {
    let tc = match detect() {
        Some(tc) => {
            println!("setup: BPF compiler: {}", tc.describe());
            tc
        }
        None => {
            println!("setup: no BPF-capable compiler; installing Debian's: {}", DEBIAN_PACKAGES.join(" "));
            crate::setup::apt_install(DEBIAN_PACKAGES)?;
            match detect() {
                Some(tc) => tc,
                None => bail!(
                    "installed {} but {DEBIAN_BPF_CORE_DIR}/libcore-*.rlib is still missing; \
                     install a nightly with rust-src instead (rustup component add rust-src --toolchain nightly)",
                    DEBIAN_PACKAGES.join(" ")
                ),
            }
        }
    };
    match bpf_linker() {
        Some(p) => println!("setup: bpf-linker: {}", p.display()),
        None => {
            if !Path::new(LLVM_BIN).join("llvm-config").exists() {
                println!("setup: installing LLVM 22 for bpf-linker");
                crate::setup::apt_install(&["llvm-22-dev", "libpolly-22-dev"])?;
            }
            println!("setup: building bpf-linker against LLVM 22 (about 5 minutes, once)");
            let path = format!("{LLVM_BIN}:{}", path_with_cargo_bin());
            let mut cmd = Command::new("cargo");
            cmd.args(["install", "--locked", "bpf-linker", "--no-default-features", "--features", "llvm-22"])
                .env("PATH", path)
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("CARGO_TARGET_DIR");
            run(&mut cmd).context("cargo install bpf-linker failed")?;
            bpf_linker().context("bpf-linker was installed but is not on PATH or in ~/.cargo/bin")?;
        }
    }
    Ok(tc)
}
