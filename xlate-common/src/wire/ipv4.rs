//! IPv4 header (RFC 791), the outer header of every SAL packet.

use core::net::Ipv4Addr;

use super::{be16, checksum, need, put16, Error, Result};

pub const HEADER_LEN: usize = 20;

/// Byte offsets of the IPv4 header fields (no options).
pub mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_MASK: u16 = 0x1fff;

/// A checked view of an IPv4 header and its payload.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Checks version, IHL and total length against the buffer. Bytes past
    /// the total length (Ethernet padding) are allowed and ignored.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        need("IPv4 header", b, HEADER_LEN)?;
        if p.version() != 4 {
            return Err(Error::BadIpVersion(p.version()));
        }
        let ihl = b[field::VER_IHL] & 0x0f;
        if ihl < 5 || usize::from(ihl) * 4 > b.len() {
            return Err(Error::BadIpHeaderLen(ihl));
        }
        let total = p.total_len();
        if usize::from(total) < p.header_len() || usize::from(total) > b.len() {
            return Err(Error::BadIpTotalLen { total_len: total, buffer: b.len() });
        }
        Ok(p)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::TOTAL_LEN)
    }
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_DF != 0
    }
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_MF != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FRAG_MASK) * 8
    }
    /// True for any fragment (first, middle or last).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(&self.buffer.as_ref()[..self.header_len()])) == 0xffff
    }
    /// The payload up to the total length (excludes link-layer padding).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn b(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_ttl(&mut self, ttl: u8) {
        self.b()[field::TTL] = ttl;
    }
    pub fn set_protocol(&mut self, p: u8) {
        self.b()[field::PROTOCOL] = p;
    }
    pub fn set_total_len(&mut self, len: u16) {
        put16(self.b(), field::TOTAL_LEN, len);
    }
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.b()[field::SRC..field::SRC + 4].copy_from_slice(&a.octets());
    }
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.b()[field::DST..field::DST + 4].copy_from_slice(&a.octets());
    }
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        put16(self.b(), field::CHECKSUM, 0);
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        put16(self.b(), field::CHECKSUM, c);
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), usize::from(self.total_len()));
        &mut self.b()[hl..tl]
    }
}

/// An IPv4 header without options, as Serval sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: u8,
    pub payload_len: usize,
    pub ttl: u8,
    pub tos: u8,
    pub ident: u16,
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// A header as Serval sends one: TTL 64, ToS 0, ident 0, DF clear.
    pub const fn new(src_addr: Ipv4Addr, dst_addr: Ipv4Addr, protocol: u8, payload_len: usize) -> Self {
        Ipv4Repr { src_addr, dst_addr, protocol, payload_len, ttl: 64, tos: 0, ident: 0, dont_frag: false }
    }

    /// Parses a header; rejects options and fragments (Serval sends
    /// neither) and a bad header checksum.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Result<Self> {
        if p.header_len() != HEADER_LEN {
            return Err(Error::Unrepresentable("IPv4 options"));
        }
        if p.is_fragment() {
            return Err(Error::Unrepresentable("IPv4 fragment"));
        }
        if !p.verify_checksum() {
            let mut copy = [0u8; HEADER_LEN];
            copy.copy_from_slice(&p.buffer.as_ref()[..HEADER_LEN]);
            copy[field::CHECKSUM..field::CHECKSUM + 2].fill(0);
            return Err(Error::BadChecksum {
                what: "IPv4 header",
                found: p.checksum(),
                expected: checksum::checksum(&copy),
            });
        }
        Ok(Ipv4Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: p.payload().len(),
            ttl: p.ttl(),
            tos: p.tos(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header (with checksum) into the first 20 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Ipv4Packet<T>) -> Result<()> {
        let total = HEADER_LEN + self.payload_len;
        let total = u16::try_from(total).map_err(|_| Error::Unrepresentable("IPv4 payload over 65515 bytes"))?;
        let b = p.buffer.as_mut();
        need("IPv4 header", b, HEADER_LEN)?;
        b[field::VER_IHL] = 0x45;
        b[field::TOS] = self.tos;
        put16(b, field::TOTAL_LEN, total);
        put16(b, field::IDENT, self.ident);
        put16(b, field::FLAGS_FRAG, if self.dont_frag { FLAG_DF } else { 0 });
        b[field::TTL] = self.ttl;
        b[field::PROTOCOL] = self.protocol;
        b[field::SRC..field::SRC + 4].copy_from_slice(&self.src_addr.octets());
        b[field::DST..field::DST + 4].copy_from_slice(&self.dst_addr.octets());
        p.fill_checksum();
        Ok(())
    }
}
