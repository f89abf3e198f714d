//! Shared by the xlate kernel programs and the agent: the Serval wire
//! format, service IDs, checksums and the BPF map types.
//!
//! `no_std` and allocation-free so that the eBPF programs use the very same
//! code; the `user` feature adds what only user space needs.
#![cfg_attr(not(test), no_std)]
// The verifier barrier in wire::sal_walk is inline assembly.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

pub mod flow;
pub mod maps;
pub mod service_id;
pub mod translate;
pub mod wire;

pub use service_id::{ServiceId, ServicePrefix};
