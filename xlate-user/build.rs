//! Finds the eBPF object that `cargo xtask build` produced and hands its
//! path to `include_bytes_aligned!`. Building it here would need a second
//! compiler (see xtask/src/toolchain.rs); xtask owns that.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=XLATE_EBPF_OBJECT");
    let path = match std::env::var_os("XLATE_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../xlate-ebpf/target/bpfel-unknown-none/release/xlate")
        }
    };
    if !path.exists() {
        panic!(
            "\n\nThe eBPF object {} does not exist.\nRun `cargo xtask build` (or `cargo xtask test`), which builds it first.\n\n",
            path.display()
        );
    }
    let path = path.canonicalize().expect("canonical eBPF object path");
    println!("cargo:rerun-if-changed={}", path.display());
    println!("cargo:rustc-env=XLATE_EBPF_OBJECT={}", path.display());
}
