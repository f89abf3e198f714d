//! What the engine needs of the IPv4 header: its shape (the engine
//! translates only plain, unfragmented headers, as Serval sends them) and
//! one rewrite.

use xlate_common::{translate, wire::ipv4::field as ipf};

use super::frame::{Frame, IP_AT};
use super::verdict::Fault;
use xlate_common::wire::ethernet;

/// An IPv4 header's shape, as far as the engine cares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    NotIpv4,
    /// 20 bytes, not a fragment: translatable.
    Plain(u8),
    /// With options (Serval sends none).
    Options(u8),
    /// A fragment (Serval sends none).
    Fragment(u8),
}

impl Shape {
    /// The carried protocol, for any IPv4 shape.
    #[inline(always)]
    pub fn protocol(self) -> Option<u8> {
        match self {
            Shape::NotIpv4 => None,
            Shape::Plain(p) | Shape::Options(p) | Shape::Fragment(p) => Some(p),
        }
    }
}

#[inline(always)]
pub(crate) fn shape<F: Frame>(f: &F) -> Result<Shape, Fault> {
    let ethertype: [u8; 2] = f.load(ethernet::field::ETHERTYPE)?;
    if u16::from_be_bytes(ethertype) != ethernet::ETHERTYPE_IPV4 {
        return Ok(Shape::NotIpv4);
    }
    let proto: u8 = f.load(IP_AT + ipf::PROTOCOL)?;
    let vihl: u8 = f.load(IP_AT)?;
    if vihl != 0x45 {
        return Ok(Shape::Options(proto));
    }
    let frag: [u8; 2] = f.load(IP_AT + ipf::FLAGS_FRAG)?;
    if u16::from_be_bytes(frag) & 0x3fff != 0 {
        return Ok(Shape::Fragment(proto));
    }
    Ok(Shape::Plain(proto))
}

/// An address field of a copied header.
#[inline(always)]
pub(crate) fn addr<const N: usize>(h: &[u8; N], at: usize) -> [u8; 4] {
    [h[at], h[at + 1], h[at + 2], h[at + 3]]
}

#[inline(always)]
pub(crate) fn be16<const N: usize>(h: &[u8; N], at: usize) -> u16 {
    u16::from_be_bytes([h[at], h[at + 1]])
}

#[inline(always)]
pub(crate) fn be32<const N: usize>(h: &[u8; N], at: usize) -> u32 {
    u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

/// The IPv4 header `ip` with new addresses, protocol and total length;
/// TTL kept; checksum recomputed (20 bytes: cheaper than four updates).
/// The frame takes it together with the room it makes or takes away
/// behind it ([`Frame::grow_l4`], [`Frame::shrink_l4`]): the header is
/// written once, where it ends up.
#[inline(always)]
pub(crate) fn rewritten(ip: &[u8; 20], src: [u8; 4], dst: [u8; 4], proto: u8, tot_len: u16) -> [u8; 20] {
    let mut h = *ip;
    h[ipf::TOTAL_LEN..ipf::TOTAL_LEN + 2].copy_from_slice(&tot_len.to_be_bytes());
    h[ipf::PROTOCOL] = proto;
    h[ipf::CHECKSUM] = 0;
    h[ipf::CHECKSUM + 1] = 0;
    h[ipf::SRC..ipf::SRC + 4].copy_from_slice(&src);
    h[ipf::DST..ipf::DST + 4].copy_from_slice(&dst);
    let c = !translate::sum_words(&h);
    h[ipf::CHECKSUM..ipf::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    h
}
