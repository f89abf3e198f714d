//! The Ethernet II header as the fast path meets it: offsets and the one
//! EtherType it translates. (Frames are parsed by offset in the kernel;
//! captures are decoded in `xlate-user decode`.)

/// Destination MAC, source MAC, EtherType.
pub const HEADER_LEN: usize = 14;

pub mod field {
    pub const DST: usize = 0;
    pub const SRC: usize = 6;
    pub const ETHERTYPE: usize = 12;
}

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
