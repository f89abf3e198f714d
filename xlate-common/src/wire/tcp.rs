//! The TCP header fields the translator reads or rewrites: ports, sequence
//! numbers, flags, window, checksum and the MSS option.

use core::fmt;
use core::net::Ipv4Addr;

use super::{be16, be32, checksum, need, put16, put32, Error, Result, IPPROTO_TCP};

pub const HEADER_LEN: usize = 20;

/// Byte offsets of the TCP header fields.
pub mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

/// TCP flag byte (CWR..FIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    pub const fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

impl fmt::Display for TcpFlags {
    /// tcpdump's letters: F S R P . U E W
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const L: [(u8, char); 8] = [
            (TcpFlags::FIN, 'F'),
            (TcpFlags::SYN, 'S'),
            (TcpFlags::RST, 'R'),
            (TcpFlags::PSH, 'P'),
            (TcpFlags::ACK, '.'),
            (TcpFlags::URG, 'U'),
            (TcpFlags::ECE, 'E'),
            (TcpFlags::CWR, 'W'),
        ];
        for (bit, c) in L {
            if self.has(bit) {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// The pseudo-header sum for a TCP segment of `len` bytes between `src`
/// and `dst`: what Serval also uses inside SAL (protocol 6, SAL excluded).
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> u32 {
    checksum::pseudo_header_v4(src.octets(), dst.octets(), IPPROTO_TCP, len as u16)
}

/// A checked view of a TCP segment.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        need("TCP header", b, HEADER_LEN)?;
        let off = b[field::DATA_OFF] >> 4;
        if off < 5 || usize::from(off) * 4 > b.len() {
            return Err(Error::BadTcpDataOffset(off));
        }
        Ok(p)
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ)
    }
    pub fn ack(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK)
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }
    pub fn window(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW)
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    pub fn urgent(&self) -> u16 {
        be16(self.buffer.as_ref(), field::URGENT)
    }
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
    /// Offset of the MSS option's value within the segment, if present.
    pub fn mss_offset(&self) -> Option<usize> {
        let opts = self.options();
        let mut i = 0;
        while i < opts.len() {
            match opts[i] {
                OPT_END => return None,
                OPT_NOP => i += 1,
                kind => {
                    let len = usize::from(*opts.get(i + 1)?);
                    if len < 2 || i + len > opts.len() {
                        return None;
                    }
                    if kind == OPT_MSS && len == 4 {
                        return Some(HEADER_LEN + i + 2);
                    }
                    i += len;
                }
            }
        }
        None
    }
    pub fn mss(&self) -> Option<u16> {
        self.mss_offset().map(|at| be16(self.buffer.as_ref(), at))
    }
    /// True if the checksum verifies with the pseudo-header of `src`/`dst`.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buffer.as_ref();
        let acc = checksum::accumulate(pseudo_header(src, dst, b.len()), b);
        checksum::fold(acc) == 0xffff
    }
    pub fn expected_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let b = self.buffer.as_ref();
        let acc = checksum::accumulate(pseudo_header(src, dst, b.len()), &b[..field::CHECKSUM]);
        !checksum::fold(checksum::accumulate(acc, &b[field::CHECKSUM + 2..]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Rewrites the ports, updating the checksum incrementally.
    pub fn set_ports(&mut self, src: u16, dst: u16) {
        let mut c = self.checksum();
        c = checksum::update16(c, self.src_port(), src);
        c = checksum::update16(c, self.dst_port(), dst);
        let b = self.buffer.as_mut();
        put16(b, field::SRC_PORT, src);
        put16(b, field::DST_PORT, dst);
        put16(b, field::CHECKSUM, c);
    }
    /// Lowers the MSS option to `max` if it is larger, updating the
    /// checksum incrementally. Returns the old value when it changed.
    pub fn clamp_mss(&mut self, max: u16) -> Option<u16> {
        let at = self.mss_offset()?;
        let old = be16(self.buffer.as_ref(), at);
        if old <= max {
            return None;
        }
        // The option may sit at an odd offset inside the 16-bit words the
        // checksum covers (after a lone NOP); fix up on the aligned words.
        let c = self.checksum();
        let c = if at % 2 == 0 {
            checksum::update16(c, old, max)
        } else {
            let b = self.buffer.as_ref();
            let (w0, w1) = (be16(b, at - 1), be16(b, at + 1));
            let new0 = (w0 & 0xff00) | (max >> 8);
            let new1 = ((max & 0xff) << 8) | (w1 & 0x00ff);
            checksum::update16(checksum::update16(c, w0, new0), w1, new1)
        };
        let b = self.buffer.as_mut();
        put16(b, at, max);
        put16(b, field::CHECKSUM, c);
        Some(old)
    }
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let c = self.expected_checksum(src, dst);
        put16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
}

/// A TCP header (options carried as bytes) and where its payload lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    pub urgent: u16,
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Parses a segment, checking its checksum against the pseudo-header.
    pub fn parse(p: &TcpPacket<&'a [u8]>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Self> {
        if !p.verify_checksum(src, dst) {
            return Err(Error::BadChecksum {
                what: "TCP",
                found: p.checksum(),
                expected: p.expected_checksum(src, dst),
            });
        }
        let b: &'a [u8] = p.buffer;
        Ok(TcpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq(),
            ack: p.ack(),
            flags: p.flags(),
            window: p.window(),
            urgent: p.urgent(),
            options: &b[HEADER_LEN..p.header_len()],
            payload: &b[p.header_len()..],
        })
    }

    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes header, options and payload, and the checksum for `src`/`dst`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut TcpPacket<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<()> {
        if !self.options.len().is_multiple_of(4) || self.options.len() > 40 {
            return Err(Error::Unrepresentable("TCP options not a multiple of 4 bytes up to 40"));
        }
        let (hl, total) = (self.header_len(), self.buffer_len());
        let b = p.buffer.as_mut();
        need("TCP segment buffer", b, total)?;
        put16(b, field::SRC_PORT, self.src_port);
        put16(b, field::DST_PORT, self.dst_port);
        put32(b, field::SEQ, self.seq);
        put32(b, field::ACK, self.ack);
        b[field::DATA_OFF] = ((hl / 4) as u8) << 4;
        b[field::FLAGS] = self.flags.0;
        put16(b, field::WINDOW, self.window);
        put16(b, field::CHECKSUM, 0);
        put16(b, field::URGENT, self.urgent);
        b[HEADER_LEN..hl].copy_from_slice(self.options);
        b[hl..total].copy_from_slice(self.payload);
        let mut seg = TcpPacket::new_unchecked(&mut b[..total]);
        seg.fill_checksum(src, dst);
        Ok(())
    }
}
