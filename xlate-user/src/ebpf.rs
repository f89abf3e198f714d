//! The kernel programs, embedded in the agent at build time.

use anyhow::{Context, Result};
use aya::Ebpf;

/// The object built from `xlate-ebpf` for bpfel-unknown-none.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("XLATE_EBPF_OBJECT"));

/// Parses the embedded object and creates its maps in the kernel.
pub fn load() -> Result<Ebpf> {
    raise_memlock();
    Ebpf::load(OBJECT).context("loading the embedded eBPF object (are you root?)")
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so map
/// creation does not fail there. Newer kernels ignore it.
fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid struct; failure is harmless here.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}
