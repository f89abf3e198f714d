//! The xlate agent as a library: what `xlate-user` does, usable from tests.

pub mod agent;
#[cfg(feature = "testbed")]
pub mod benchmark;
pub mod check;
pub mod classify;
pub mod config;
pub mod decode;
pub mod ebpf;
pub mod engine_clock;
pub mod gateway;
pub mod host;
pub mod kernel_features;
pub mod maglev;
pub mod metrics;
pub mod netif;
pub mod netlink;
pub mod pcap;
pub mod rawsock;
pub mod relay;
pub mod sockdiag;
#[cfg(feature = "testbed")]
pub mod testbed;
pub mod xdp_features;
