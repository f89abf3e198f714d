//! Key and value types of the BPF maps, shared byte for byte by the kernel
//! programs and the agent. All are `#[repr(C)]` with explicit padding so
//! that no uninitialised byte ever reaches a map key.

/// Names of the maps in the eBPF object (also their pin names).
pub mod names {
    pub const COUNTERS: &str = "XLATE_COUNTERS";
    pub const SERVICES: &str = "XLATE_SERVICES";
}

/// Per-CPU packet counters of the classifier, indexed by `ClassifierCounter as u32`;
/// the names (`stats` output, metrics) are the variants in snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::EnumCount, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
#[repr(u32)]
pub enum ClassifierCounter {
    /// Every packet the program saw.
    Seen = 0,
    /// Frames that are not IPv4 (ARP, IPv6, …).
    NonIpv4,
    /// IPv4 frames too short for their headers, or with a bad IHL.
    Malformed,
    /// IPv4 fragments (the translator never rewrites them).
    Fragment,
    Tcp,
    /// SAL packets (IP protocol 144) whose base header is well formed.
    Sal,
    /// SAL packets whose base header is truncated or whose shl < 3.
    SalMalformed,
    /// Any other IPv4 protocol (ICMP, UDP, …).
    OtherIpv4,
}

impl ClassifierCounter {
    pub const COUNT: usize = <Self as strum::EnumCount>::COUNT;

    /// Every counter, in index order.
    pub fn all() -> impl Iterator<Item = ClassifierCounter> {
        <Self as strum::IntoEnumIterator>::iter()
    }

    /// Stable snake_case name, used by `stats` output and metrics.
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub const fn index(self) -> u32 {
        self as u32
    }
}

/// (public IPv4 address, TCP port) a legacy client connects to; network
/// byte order in both fields, as read from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct ServiceKey {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

impl ServiceKey {
    pub fn new(addr: core::net::Ipv4Addr, port: u16) -> Self {
        ServiceKey { addr: addr.octets(), port: port.to_be_bytes(), _pad: [0; 2] }
    }
}

/// What a [`ServiceKey`] maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct ServiceEntry {
    pub service_id: crate::service_id::ServiceId,
}

/// A TCP/IPv4 4-tuple, network byte order, as seen on the client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct FlowKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), built only of byte arrays, with no implicit
    // padding and every bit pattern valid.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceEntry {}
    unsafe impl aya::Pod for super::FlowKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_dense_and_named_uniquely() {
        let all: std::vec::Vec<ClassifierCounter> = ClassifierCounter::all().collect();
        assert_eq!(all.len(), ClassifierCounter::COUNT);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
            for d in &all[i + 1..] {
                assert_ne!(c.name(), d.name());
            }
        }
        assert_eq!(ClassifierCounter::NonIpv4.name(), "non_ipv4");
        assert_eq!(ClassifierCounter::OtherIpv4.name(), "other_ipv4");
        assert_eq!(ClassifierCounter::SalMalformed.name(), "sal_malformed");
    }

    #[test]
    fn map_types_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<ServiceKey>(), 8);
        assert_eq!(core::mem::size_of::<ServiceEntry>(), 32);
        assert_eq!(core::mem::size_of::<FlowKey>(), 12);
    }
}
