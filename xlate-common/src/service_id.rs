//! Serval service IDs: 256-bit names, and prefixes of them for rules.
//!
//! Accepted text forms (see `docs/wire-format.md`):
//! - 1 to 64 hex digits, optionally `0x`-prefixed, byte 0 first; short
//!   forms fill from byte 0 and leave the rest zero (`00000050` is port-80
//!   style);
//! - `dec:N`: a decimal `u32` placed big-endian in bytes 0-3, as the
//!   original test tools take it (`dec:16386` = `00004002`);
//! - either form followed by `:BITS` (0-256) for a prefix.
//!
//! Hex is the default because it is the canonical form the stack prints;
//! decimal needs its prefix since `16386` is also valid hex.

use core::fmt;
use core::str::FromStr;

pub const LEN: usize = 32;
pub const BITS: u16 = 256;
const HEX_DIGITS: usize = 2 * LEN;

/// A 32-byte service ID.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C)]
pub struct ServiceId(pub [u8; LEN]);

/// Why a text is not a service ID or prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    Empty,
    /// More than 64 hex digits.
    TooLong {
        digits: usize,
    },
    /// A character that is not a hex digit, at this byte position.
    BadHexDigit {
        position: usize,
        found: char,
    },
    /// `dec:` followed by something that is not a decimal u32.
    BadDecimal,
    /// The prefix length after `:` is not a number from 0 to 256.
    BadPrefixLen,
    /// Bits set beyond the prefix length (like `ip route`'s "invalid prefix").
    HostBitsSet {
        bits: u16,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ParseError::Empty => f.write_str("empty service ID"),
            ParseError::TooLong { digits } => {
                write!(f, "service ID has {digits} hex digits, at most 64 allowed")
            }
            ParseError::BadHexDigit { position, found } => write!(
                f,
                "service ID has {found:?} at position {position}, expected a hex digit (or use dec:N for a decimal number)"
            ),
            ParseError::BadDecimal => {
                f.write_str("service ID dec:N needs a decimal number from 0 to 4294967295")
            }
            ParseError::BadPrefixLen => f.write_str("prefix length after ':' must be 0 to 256"),
            ParseError::HostBitsSet { bits } => write!(
                f,
                "service ID has bits set beyond its /{bits} prefix"
            ),
        }
    }
}

impl ServiceId {
    pub const ZERO: ServiceId = ServiceId([0; LEN]);

    /// Builds an ID from the first 32 bytes of `b` (must be that long).
    pub fn from_slice(b: &[u8]) -> Self {
        let mut id = [0u8; LEN];
        id.copy_from_slice(&b[..LEN]);
        ServiceId(id)
    }

    /// The decimal form of the original test tools: `n` big-endian in
    /// bytes 0-3.
    pub fn from_u32(n: u32) -> Self {
        let mut id = [0u8; LEN];
        id[..4].copy_from_slice(&n.to_be_bytes());
        ServiceId(id)
    }

    pub fn as_bytes(&self) -> &[u8; LEN] {
        &self.0
    }

    /// Bit `i` counted from the most significant bit of byte 0.
    pub fn bit(&self, i: u16) -> bool {
        self.0[usize::from(i / 8)] & (0x80 >> (i % 8)) != 0
    }

    /// Clears every bit from `bits` on.
    pub fn masked(&self, bits: u16) -> Self {
        let mut out = self.0;
        for (i, b) in out.iter_mut().enumerate() {
            let start = (i * 8) as u16;
            if start >= bits {
                *b = 0;
            } else if bits - start < 8 {
                *b &= 0xffu8 << (8 - (bits - start));
            }
        }
        ServiceId(out)
    }

    /// Length of the shortest hex form that still names this ID (trailing
    /// zero bytes dropped, at least 4 bytes kept so port-style IDs read
    /// naturally).
    fn short_len(&self) -> usize {
        let used = LEN - self.0.iter().rev().take_while(|b| **b == 0).count();
        used.max(4)
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn parse_id(s: &str) -> Result<ServiceId, ParseError> {
    if let Some(dec) = s.strip_prefix("dec:") {
        if dec.is_empty() || !dec.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ParseError::BadDecimal);
        }
        let n: u32 = dec.parse().map_err(|_| ParseError::BadDecimal)?;
        return Ok(ServiceId::from_u32(n));
    }
    let (hex, skip) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 2),
        None => (s, 0),
    };
    if hex.is_empty() {
        return Err(ParseError::Empty);
    }
    if hex.len() > HEX_DIGITS {
        return Err(ParseError::TooLong { digits: hex.len() });
    }
    let mut id = [0u8; LEN];
    for (i, c) in hex.bytes().enumerate() {
        let v = hex_val(c).ok_or_else(|| ParseError::BadHexDigit {
            position: i + skip,
            found: hex[i..].chars().next().unwrap_or('?'),
        })?;
        id[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
    }
    Ok(ServiceId(id))
}

impl FromStr for ServiceId {
    type Err = ParseError;
    /// Parses an ID; a `:BITS` suffix is refused here (use [`ServicePrefix`]).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ParseError::Empty);
        }
        parse_id(s)
    }
}

impl fmt::Display for ServiceId {
    /// Lowercase hex, byte 0 first; the alternate form (`{:#}`) prints all
    /// 64 digits, the normal form drops trailing zero bytes after byte 3.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = if f.alternate() { LEN } else { self.short_len() };
        for b in &self.0[..n] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceId({self})")
    }
}

/// A service ID prefix: the first `bits` bits of `id` (the rest zero).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ServicePrefix {
    id: ServiceId,
    bits: u16,
}

impl ServicePrefix {
    /// Fails when `bits > 256` or `id` has bits set past `bits`.
    pub fn new(id: ServiceId, bits: u16) -> Result<Self, ParseError> {
        if bits > BITS {
            return Err(ParseError::BadPrefixLen);
        }
        if id.masked(bits) != id {
            return Err(ParseError::HostBitsSet { bits });
        }
        Ok(ServicePrefix { id, bits })
    }
    /// The prefix that matches exactly one ID.
    pub fn exact(id: ServiceId) -> Self {
        ServicePrefix { id, bits: BITS }
    }
    pub fn id(&self) -> ServiceId {
        self.id
    }
    pub fn bits(&self) -> u16 {
        self.bits
    }
    pub fn matches(&self, other: &ServiceId) -> bool {
        other.masked(self.bits) == self.id
    }
}

impl FromStr for ServicePrefix {
    type Err = ParseError;
    /// `ID` (all 256 bits) or `ID:BITS`.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ParseError::Empty);
        }
        // `dec:N` has a colon of its own; the prefix colon is the last one
        // after it.
        let body_start = if s.starts_with("dec:") { 4 } else { 0 };
        match s[body_start..].rfind(':') {
            Some(i) => {
                let (id, bits) = (&s[..body_start + i], &s[body_start + i + 1..]);
                if bits.is_empty() || !bits.bytes().all(|c| c.is_ascii_digit()) || bits.len() > 3 {
                    return Err(ParseError::BadPrefixLen);
                }
                let bits: u16 = bits.parse().map_err(|_| ParseError::BadPrefixLen)?;
                ServicePrefix::new(parse_id(id)?, bits)
            }
            None => Ok(ServicePrefix::exact(parse_id(s)?)),
        }
    }
}

impl fmt::Display for ServicePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bits == BITS {
            write!(f, "{}", self.id)
        } else {
            write!(f, "{}:{}", self.id, self.bits)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ServiceId {
        s.parse().unwrap()
    }

    #[test]
    fn short_hex_fills_from_byte_zero() {
        let i = id("00000050");
        assert_eq!(&i.0[..4], &[0, 0, 0, 0x50]);
        assert!(i.0[4..].iter().all(|b| *b == 0));
        assert_eq!(id("0x00000050"), i);
        assert_eq!(i.to_string(), "00000050");
        assert_eq!(format!("{i:#}").len(), 64);
    }

    #[test]
    fn odd_digit_count_sets_high_nibble() {
        assert_eq!(id("abc").0[..2], [0xab, 0xc0]);
    }

    #[test]
    fn decimal_form_is_big_endian_in_bytes_0_to_3() {
        assert_eq!(id("dec:16386"), id("00004002"));
        assert_eq!(id("dec:4294967295"), id("ffffffff"));
        assert_eq!("dec:4294967296".parse::<ServiceId>(), Err(ParseError::BadDecimal));
        assert_eq!("dec:".parse::<ServiceId>(), Err(ParseError::BadDecimal));
        assert_eq!("dec:-1".parse::<ServiceId>(), Err(ParseError::BadDecimal));
    }

    #[test]
    fn full_form_round_trips() {
        let s = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(format!("{:#}", id(s)), s);
        assert_eq!(id(s).to_string(), s);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!("".parse::<ServiceId>(), Err(ParseError::Empty));
        assert_eq!("0x".parse::<ServiceId>(), Err(ParseError::Empty));
        assert_eq!("00g0".parse::<ServiceId>(), Err(ParseError::BadHexDigit { position: 2, found: 'g' }));
        assert_eq!("0x00g0".parse::<ServiceId>(), Err(ParseError::BadHexDigit { position: 4, found: 'g' }));
        assert_eq!("0".repeat(65).parse::<ServiceId>(), Err(ParseError::TooLong { digits: 65 }));
        assert_eq!("00000050:8".parse::<ServiceId>(), Err(ParseError::BadHexDigit { position: 8, found: ':' }));
    }

    #[test]
    fn prefixes() {
        let p: ServicePrefix = "00000050:32".parse().unwrap();
        assert_eq!(p.bits(), 32);
        assert!(p.matches(&id("00000050ff")));
        assert!(!p.matches(&id("00000051")));
        let d: ServicePrefix = "dec:16386:32".parse().unwrap();
        assert_eq!(d.id(), id("00004002"));
        assert_eq!("ff:4".parse::<ServicePrefix>(), Err(ParseError::HostBitsSet { bits: 4 }));
        assert_eq!("f0:4".parse::<ServicePrefix>().unwrap().to_string(), "f0000000:4");
        assert_eq!("00:257".parse::<ServicePrefix>(), Err(ParseError::BadPrefixLen));
        assert_eq!("00:".parse::<ServicePrefix>(), Err(ParseError::BadPrefixLen));
        assert_eq!("00:x".parse::<ServicePrefix>(), Err(ParseError::BadPrefixLen));
        assert_eq!("00:0".parse::<ServicePrefix>().unwrap().bits(), 0);
        assert_eq!("00000050".parse::<ServicePrefix>().unwrap().bits(), 256);
    }
}
