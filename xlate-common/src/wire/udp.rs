//! UDP header (RFC 768), for Serval's connected UDP.

use core::net::Ipv4Addr;

use super::{be16, checksum, need, put16, Error, Result, IPPROTO_UDP};

pub const HEADER_LEN: usize = 8;

/// A checked view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        need("UDP header", b, HEADER_LEN)?;
        let len = p.len();
        if usize::from(len) < HEADER_LEN || usize::from(len) > b.len() {
            return Err(Error::BadUdpLength { len, buffer: b.len() });
        }
        Ok(p)
    }
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 6)
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
    fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.len())]
    }
    /// A zero checksum means "not computed" (RFC 768) and verifies.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let d = self.datagram();
        let ph = checksum::pseudo_header_v4(src.octets(), dst.octets(), IPPROTO_UDP, d.len() as u16);
        checksum::fold(checksum::accumulate(ph, d)) == 0xffff
    }
    pub fn expected_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let d = self.datagram();
        let ph = checksum::pseudo_header_v4(src.octets(), dst.octets(), IPPROTO_UDP, d.len() as u16);
        let acc = checksum::accumulate(checksum::accumulate(ph, &d[..6]), &d[8..]);
        match !checksum::fold(acc) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// A UDP header and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    /// False when the sender left the checksum 0 ("not computed"), as the
    /// original stack does on some datagrams.
    pub with_checksum: bool,
    pub payload: &'a [u8],
}

impl<'a> UdpRepr<'a> {
    pub fn parse(p: &UdpPacket<&'a [u8]>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Self> {
        if !p.verify_checksum(src, dst) {
            return Err(Error::BadChecksum {
                what: "UDP",
                found: p.checksum(),
                expected: p.expected_checksum(src, dst),
            });
        }
        let d: &'a [u8] = p.buffer;
        Ok(UdpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            with_checksum: p.checksum() != 0,
            payload: &d[HEADER_LEN..usize::from(p.len())],
        })
    }
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut UdpPacket<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<()> {
        let total = self.buffer_len();
        let len = u16::try_from(total).map_err(|_| Error::Unrepresentable("UDP datagram over 65535 bytes"))?;
        let b = p.buffer.as_mut();
        need("UDP datagram buffer", b, total)?;
        put16(b, 0, self.src_port);
        put16(b, 2, self.dst_port);
        put16(b, 4, len);
        put16(b, 6, 0);
        b[HEADER_LEN..total].copy_from_slice(self.payload);
        if self.with_checksum {
            let c = UdpPacket::new_unchecked(&b[..total]).expected_checksum(src, dst);
            put16(b, 6, c);
        }
        Ok(())
    }
}
