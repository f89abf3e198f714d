//! The xlate agent as a library: what `xlate-user` does, usable from tests.

pub mod classify;
pub mod decode;
pub mod ebpf;
pub mod host;
pub mod netif;
pub mod pcap;
pub mod rawsock;
