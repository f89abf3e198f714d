//! A whole Serval packet: IPv4, SAL, and the transport (or none, for
//! SAL-only control packets). Used by the decoder, the golden-vector tests
//! and the agent to build control packets.

use core::net::Ipv4Addr;

use super::ipv4::{Ipv4Packet, Ipv4Repr};
use super::sal::{SalPacket, SalRepr};
use super::tcp::{TcpPacket, TcpRepr};
use super::udp::{UdpPacket, UdpRepr};
use super::{Error, Result, IPPROTO_SAL, IPPROTO_TCP, IPPROTO_UDP};

/// What follows the SAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// SAL-only control packet (FIN, ACK, RSYN, RST).
    None,
    Tcp(TcpRepr<'a>),
    Udp(UdpRepr<'a>),
}

impl Transport<'_> {
    pub fn buffer_len(&self) -> usize {
        match self {
            Transport::None => 0,
            Transport::Tcp(t) => t.buffer_len(),
            Transport::Udp(u) => u.buffer_len(),
        }
    }
}

/// A fully parsed Serval packet with every checksum verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServalRepr<'a> {
    pub ip: Ipv4Repr,
    pub sal: SalRepr,
    pub transport: Transport<'a>,
}

impl<'a> ServalRepr<'a> {
    /// Parses an IPv4 datagram carrying SAL (bytes past the IPv4 total
    /// length are ignored). Every receiver rule and checksum is checked;
    /// the error says which failed.
    pub fn parse(datagram: &'a [u8]) -> Result<Self> {
        let ip_pkt = Ipv4Packet::new_checked(datagram)?;
        let ip = Ipv4Repr::parse(&ip_pkt)?;
        if ip.protocol != IPPROTO_SAL {
            return Err(Error::Unrepresentable("not a SAL packet (IP protocol is not 144)"));
        }
        let total = usize::from(ip_pkt.total_len());
        let l4: &'a [u8] = &datagram[ip_pkt.header_len()..total];
        let sal_pkt = SalPacket::new_checked(l4)?;
        let sal = SalRepr::parse(&sal_pkt)?;
        let rest: &'a [u8] = &l4[sal_pkt.header_len()..];
        let transport = Self::parse_transport(sal.protocol, rest, ip.src_addr, ip.dst_addr)?;
        Ok(ServalRepr { ip, sal, transport })
    }

    fn parse_transport(protocol: u8, rest: &'a [u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Transport<'a>> {
        if rest.is_empty() {
            return Ok(Transport::None);
        }
        match protocol {
            IPPROTO_TCP => {
                let t = TcpPacket::new_checked(rest)?;
                Ok(Transport::Tcp(TcpRepr::parse(&t, src, dst)?))
            }
            IPPROTO_UDP => {
                let u = UdpPacket::new_checked(rest)?;
                if usize::from(u.len()) != rest.len() {
                    return Err(Error::BadUdpLength { len: u.len(), buffer: rest.len() });
                }
                Ok(Transport::Udp(UdpRepr::parse(&u, src, dst)?))
            }
            _ => Err(Error::Unrepresentable("SAL transport protocol is neither TCP nor UDP")),
        }
    }

    /// Total length in bytes of the emitted datagram.
    pub fn buffer_len(&self) -> usize {
        self.ip.buffer_len() + self.sal.header_len() + self.transport.buffer_len()
    }

    /// Emits the datagram into `buf`, recomputing every length and checksum
    /// (IPv4 `payload_len` is taken from the parts, not from `self.ip`).
    /// Returns the number of bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let total = self.buffer_len();
        if buf.len() < total {
            return Err(Error::Truncated { what: "output buffer", need: total, have: buf.len() });
        }
        let buf = &mut buf[..total];
        let mut ip = self.ip;
        ip.protocol = IPPROTO_SAL;
        ip.payload_len = total - ip.buffer_len();
        let mut ip_pkt = Ipv4Packet::new_unchecked(&mut *buf);
        ip.emit(&mut ip_pkt)?;
        let l4 = &mut buf[ip.buffer_len()..];
        let mut sal_pkt = SalPacket::new_unchecked(&mut *l4);
        self.sal.emit(&mut sal_pkt)?;
        let rest = &mut l4[self.sal.header_len()..];
        match &self.transport {
            Transport::None => {}
            Transport::Tcp(t) => t.emit(&mut TcpPacket::new_unchecked(rest), ip.src_addr, ip.dst_addr)?,
            Transport::Udp(u) => u.emit(&mut UdpPacket::new_unchecked(rest), ip.src_addr, ip.dst_addr)?,
        }
        Ok(total)
    }
}
