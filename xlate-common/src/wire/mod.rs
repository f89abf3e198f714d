//! The Serval wire format, in the style of smoltcp's `wire` module: for each
//! protocol a checked zero-copy view over bytes (`*Packet`) and a plain
//! representation (`*Repr`) that parses from and emits to such a view.
//!
//! The checked constructors enforce the receiver rules of the original
//! Serval stack (see `docs/wire-format.md`); `*Repr::parse` additionally
//! checks whatever is needed to represent the packet faithfully.

pub mod checksum;
pub mod ethernet;
pub mod ipv4;
pub mod packet;
pub mod sal;
pub mod sal_walk;
pub mod tcp;
pub mod udp;

use core::fmt;

/// IP protocol number of the Serval service access layer.
pub const IPPROTO_SAL: u8 = 144;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;

/// Why a buffer is not a valid packet of the expected kind. Every variant
/// names the field and the offending value so that operators can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer ends before a header that must be there.
    Truncated { what: &'static str, need: usize, have: usize },
    /// IPv4 version field is not 4.
    BadIpVersion(u8),
    /// IPv4 IHL below 5 words or beyond the buffer.
    BadIpHeaderLen(u8),
    /// IPv4 total length smaller than the header or larger than the buffer.
    BadIpTotalLen { total_len: u16, buffer: usize },
    /// SAL `shl` below 3 words (the base header alone is 3).
    BadShl(u8),
    /// An extension's type nibble is not one the stack knows.
    UnknownExtension { offset: usize, type_byte: u8 },
    /// An extension's length byte is wrong for its type.
    BadExtensionLength { offset: usize, kind: &'static str, len: u8 },
    /// Extensions do not exactly fill `shl*4 - 12` bytes.
    ExtensionOverrun { offset: usize, len: u8, end: usize },
    /// More than 10 extensions.
    TooManyExtensions,
    /// More CONTROL (1), SERVICE (2) or SOURCE (1) extensions than allowed.
    TooManyOfKind(&'static str),
    /// TCP data offset below 5 words or beyond the buffer.
    BadTcpDataOffset(u8),
    /// UDP length field inconsistent with the buffer.
    BadUdpLength { len: u16, buffer: usize },
    /// A checksum does not verify.
    BadChecksum { what: &'static str, found: u16, expected: u16 },
    /// A representation cannot be emitted as it stands.
    Unrepresentable(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { what, need, have } => {
                write!(f, "truncated {what}: need {need} bytes, have {have}")
            }
            Error::BadIpVersion(v) => write!(f, "IPv4 version field is {v}, not 4"),
            Error::BadIpHeaderLen(ihl) => write!(f, "IPv4 IHL {ihl} is invalid"),
            Error::BadIpTotalLen { total_len, buffer } => {
                write!(f, "IPv4 total length {total_len} does not fit the header or the {buffer}-byte buffer")
            }
            Error::BadShl(shl) => write!(f, "SAL shl {shl} is below the 3-word base header"),
            Error::UnknownExtension { offset, type_byte } => {
                write!(f, "SAL extension at offset {offset} has unknown type byte 0x{type_byte:02x}")
            }
            Error::BadExtensionLength { offset, kind, len } => {
                write!(f, "SAL {kind} extension at offset {offset} has invalid length {len}")
            }
            Error::ExtensionOverrun { offset, len, end } => {
                write!(f, "SAL extension at offset {offset} with length {len} runs past the header end {end}")
            }
            Error::TooManyExtensions => write!(f, "more than 10 SAL extensions"),
            Error::TooManyOfKind(kind) => write!(f, "too many SAL {kind} extensions"),
            Error::BadTcpDataOffset(off) => write!(f, "TCP data offset {off} is invalid"),
            Error::BadUdpLength { len, buffer } => {
                write!(f, "UDP length {len} does not fit the 8-byte header or the {buffer}-byte buffer")
            }
            Error::BadChecksum { what, found, expected } => {
                write!(f, "bad {what} checksum 0x{found:04x}, expected 0x{expected:04x}")
            }
            Error::Unrepresentable(why) => write!(f, "cannot emit: {why}"),
        }
    }
}

pub type Result<T> = core::result::Result<T, Error>;

/// Checks that `buf` holds at least `need` bytes of `what`.
#[inline(always)]
pub(crate) fn need(what: &'static str, buf: &[u8], need: usize) -> Result<()> {
    if buf.len() < need {
        Err(Error::Truncated { what, need, have: buf.len() })
    } else {
        Ok(())
    }
}

#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
