//! The Serval service access layer (IP protocol 144): a 12-byte base header
//! followed by extensions, checksummed on its own (no pseudo-header, the
//! transport is not covered).

use core::fmt;
use core::net::Ipv4Addr;

use super::{be16, be32, checksum, need, put16, put32, Error, Result};
use crate::service_id::ServiceId;

/// Length of the base header in bytes (`shl` 3).
pub const BASE_LEN: usize = 12;
pub const CONTROL_LEN: usize = 20;
pub const SERVICE_LEN: usize = 36;
/// Where a SERVICE extension's service ID starts (after type, length and
/// two reserved bytes).
pub const SERVICE_ID_AT: usize = 4;
pub const ADDRESS_MIN_LEN: usize = 12;
pub const SOURCE_MIN_ADDRS: usize = 2;
pub const SOURCE_MAX_ADDRS: usize = 20;
/// The receiver limits of the original stack (serval_sal.c).
pub const MAX_EXTENSIONS: usize = 10;
pub const MAX_CONTROL: usize = 1;
pub const MAX_SERVICE: usize = 2;
pub const MAX_SOURCE: usize = 1;

/// Extension type bytes: the type is the high nibble, the low one reserved.
pub mod ext_type {
    pub const PAD: u8 = 0x00;
    pub const CONTROL: u8 = 0x10;
    pub const SERVICE: u8 = 0x20;
    pub const ADDRESS: u8 = 0x30;
    pub const SOURCE: u8 = 0x40;
}

/// Byte offsets of the base header fields.
pub mod field {
    pub const SRC_FLOWID: usize = 0;
    pub const DST_FLOWID: usize = 4;
    pub const SHL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
}

/// Byte offsets inside a CONTROL extension.
pub mod control_field {
    pub const FLAGS: usize = 2;
    pub const VERNO: usize = 4;
    pub const ACKNO: usize = 8;
    pub const NONCE: usize = 12;
}

/// A flow ID: opaque 4 bytes naming one end of a SAL flow. 0 means "not
/// known yet" (the destination of a SYN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FlowId(pub u32);

impl FlowId {
    pub const NONE: FlowId = FlowId(0);
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The CONTROL flag byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ControlFlags(u8);

impl ControlFlags {
    pub const SYN: ControlFlags = ControlFlags(0x80);
    pub const RSYN: ControlFlags = ControlFlags(0x40);
    pub const ACK: ControlFlags = ControlFlags(0x20);
    pub const NACK: ControlFlags = ControlFlags(0x10);
    pub const RST: ControlFlags = ControlFlags(0x08);
    pub const FIN: ControlFlags = ControlFlags(0x04);
    /// Bits 1-0 are reserved: ignored on receive, never sent.
    const DEFINED: u8 = 0xfc;
    const NAMES: [(ControlFlags, &'static str); 6] = [
        (Self::SYN, "SYN"),
        (Self::RSYN, "RSYN"),
        (Self::ACK, "ACK"),
        (Self::NACK, "NACK"),
        (Self::RST, "RST"),
        (Self::FIN, "FIN"),
    ];

    /// Keeps the defined bits of a received flag byte.
    pub const fn from_bits_truncate(b: u8) -> Self {
        ControlFlags(b & Self::DEFINED)
    }
    pub const fn bits(self) -> u8 {
        self.0
    }
    pub const fn empty() -> Self {
        ControlFlags(0)
    }
    pub const fn contains(self, other: ControlFlags) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: ControlFlags) -> Self {
        ControlFlags(self.0 | other.0)
    }
}

impl core::ops::BitOr for ControlFlags {
    type Output = ControlFlags;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl fmt::Display for ControlFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// The CONTROL extension: flags, the SAL sequence space, and the nonce
/// that authenticates control packets within a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ControlRepr {
    pub flags: ControlFlags,
    pub verno: u32,
    pub ackno: u32,
    pub nonce: [u8; 8],
}

impl ControlRepr {
    fn parse(b: &[u8]) -> Self {
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&b[control_field::NONCE..control_field::NONCE + 8]);
        ControlRepr {
            flags: ControlFlags::from_bits_truncate(b[control_field::FLAGS]),
            verno: be32(b, control_field::VERNO),
            ackno: be32(b, control_field::ACKNO),
            nonce,
        }
    }

    fn emit(&self, b: &mut [u8]) {
        b[0] = ext_type::CONTROL;
        b[1] = CONTROL_LEN as u8;
        b[control_field::FLAGS] = self.flags.bits();
        b[3] = 0;
        put32(b, control_field::VERNO, self.verno);
        put32(b, control_field::ACKNO, self.ackno);
        b[control_field::NONCE..control_field::NONCE + 8].copy_from_slice(&self.nonce);
    }
}

/// A list of at most `N` items kept inline (no allocation).
#[derive(Clone, Copy)]
pub struct Bounded<T: Copy, const N: usize> {
    items: [T; N],
    len: u8,
}

impl<T: Copy, const N: usize> Bounded<T, N> {
    pub const fn new(filler: T) -> Self {
        Bounded { items: [filler; N], len: 0 }
    }
    /// Appends; gives the item back when the list is full.
    pub fn push(&mut self, item: T) -> core::result::Result<(), T> {
        let i = usize::from(self.len);
        if i >= N {
            return Err(item);
        }
        self.items[i] = item;
        self.len += 1;
        Ok(())
    }
    pub fn as_slice(&self) -> &[T] {
        &self.items[..usize::from(self.len)]
    }
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn first(&self) -> Option<&T> {
        self.as_slice().first()
    }
    pub fn last(&self) -> Option<&T> {
        self.as_slice().last()
    }
}

impl<T: Copy + PartialEq, const N: usize> PartialEq for Bounded<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}
impl<T: Copy + Eq, const N: usize> Eq for Bounded<T, N> {}

impl<T: Copy + fmt::Debug, const N: usize> fmt::Debug for Bounded<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// The SERVICE extensions of one packet (the stack allows two).
pub type ServiceList = Bounded<ServiceId, MAX_SERVICE>;
/// The SOURCE extension's address list: hops a SYN took, oldest first.
pub type SourceAddrs = Bounded<Ipv4Addr, SOURCE_MAX_ADDRS>;

impl ServiceList {
    pub const fn empty() -> Self {
        Bounded::new(ServiceId::ZERO)
    }
    pub fn one(id: ServiceId) -> Self {
        let mut l = Self::empty();
        let _ = l.push(id);
        l
    }
}

impl SourceAddrs {
    pub const fn empty() -> Self {
        Bounded::new(Ipv4Addr::UNSPECIFIED)
    }
    pub fn from_slice(addrs: &[Ipv4Addr]) -> Option<Self> {
        let mut l = Self::empty();
        for a in addrs {
            l.push(*a).ok()?;
        }
        Some(l)
    }
}

/// One extension as found in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension<'a> {
    Pad,
    Control(ControlRepr),
    Service(ServiceId),
    /// Never sent by the original stack; carried so it can be skipped.
    Address(&'a [u8]),
    Source(SourceView<'a>),
}

impl Extension<'_> {
    /// Bytes this extension takes in a header.
    pub fn buffer_len(&self) -> usize {
        match self {
            Extension::Pad => 1,
            Extension::Control(_) => CONTROL_LEN,
            Extension::Service(_) => SERVICE_LEN,
            Extension::Address(body) => body.len(),
            Extension::Source(v) => 4 + v.0.len(),
        }
    }

    /// Writes the extension at the start of `b` (reserved fields zero);
    /// returns the bytes written. `Address` carries its whole body, type
    /// and length bytes included, and is written with its type byte fixed.
    pub fn emit(&self, b: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        need("SAL extension buffer", b, len)?;
        match self {
            Extension::Pad => b[0] = ext_type::PAD,
            Extension::Control(c) => c.emit(&mut b[..CONTROL_LEN]),
            Extension::Service(id) => {
                b[0] = ext_type::SERVICE;
                b[1] = SERVICE_LEN as u8;
                put16(b, 2, 0);
                b[4..SERVICE_LEN].copy_from_slice(id.as_bytes());
            }
            Extension::Address(body) => {
                if body.len() < ADDRESS_MIN_LEN || !(body.len() - ADDRESS_MIN_LEN).is_multiple_of(4) || body.len() > 255
                {
                    return Err(Error::Unrepresentable("ADDRESS extension length is not 12+4n"));
                }
                b[..len].copy_from_slice(body);
                b[0] = ext_type::ADDRESS;
                b[1] = len as u8;
            }
            Extension::Source(v) => {
                if !(SOURCE_MIN_ADDRS..=SOURCE_MAX_ADDRS).contains(&v.len()) || v.0.len() % 4 != 0 {
                    return Err(Error::Unrepresentable("SOURCE extension needs 2 to 20 addresses"));
                }
                b[0] = ext_type::SOURCE;
                b[1] = len as u8;
                put16(b, 2, 0);
                b[4..len].copy_from_slice(v.0);
            }
        }
        Ok(len)
    }
}

/// The address list of a SOURCE extension, as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceView<'a>(&'a [u8]);

impl<'a> SourceView<'a> {
    /// A view over `4*n` address bytes (for building a SOURCE to emit).
    pub fn new(addr_bytes: &'a [u8]) -> Self {
        SourceView(addr_bytes)
    }
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> + 'a {
        self.0.chunks_exact(4).map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
    }
    pub fn last(&self) -> Option<Ipv4Addr> {
        self.iter().last()
    }
}

/// Walks the extension area of a SAL header. Yields an error (and then
/// stops) at the first extension that breaks a receiver rule.
pub struct Extensions<'a> {
    area: &'a [u8],
    /// Offset of `area` within the SAL header, for error messages.
    base: usize,
    pos: usize,
    count: usize,
    done: bool,
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Result<Extension<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.area.len() {
            return None;
        }
        let r = self.next_inner();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

impl<'a> Extensions<'a> {
    fn next_inner(&mut self) -> Result<Extension<'a>> {
        let offset = self.base + self.pos;
        self.count += 1;
        if self.count > MAX_EXTENSIONS {
            return Err(Error::TooManyExtensions);
        }
        let rest = &self.area[self.pos..];
        let type_byte = rest[0];
        let kind = type_byte & 0xf0;
        if kind == ext_type::PAD {
            self.pos += 1;
            return Ok(Extension::Pad);
        }
        let name = match kind {
            ext_type::CONTROL => "CONTROL",
            ext_type::SERVICE => "SERVICE",
            ext_type::ADDRESS => "ADDRESS",
            ext_type::SOURCE => "SOURCE",
            _ => return Err(Error::UnknownExtension { offset, type_byte }),
        };
        if rest.len() < 2 {
            return Err(Error::ExtensionOverrun { offset, len: 0, end: self.base + self.area.len() });
        }
        let len = rest[1];
        let ulen = usize::from(len);
        let len_ok = match kind {
            ext_type::CONTROL => ulen == CONTROL_LEN,
            ext_type::SERVICE => ulen == SERVICE_LEN,
            ext_type::ADDRESS => ulen >= ADDRESS_MIN_LEN && (ulen - ADDRESS_MIN_LEN).is_multiple_of(4),
            _ => ulen % 4 == 0 && (4 + 4 * SOURCE_MIN_ADDRS..=4 + 4 * SOURCE_MAX_ADDRS).contains(&ulen),
        };
        if !len_ok {
            return Err(Error::BadExtensionLength { offset, kind: name, len });
        }
        if ulen > rest.len() {
            return Err(Error::ExtensionOverrun { offset, len, end: self.base + self.area.len() });
        }
        let body = &rest[..ulen];
        self.pos += ulen;
        Ok(match kind {
            ext_type::CONTROL => Extension::Control(ControlRepr::parse(body)),
            ext_type::SERVICE => Extension::Service(ServiceId::from_slice(&body[SERVICE_ID_AT..SERVICE_ID_AT + 32])),
            ext_type::ADDRESS => Extension::Address(body),
            _ => Extension::Source(SourceView(&body[4..])),
        })
    }
}

/// A checked view of a SAL header and what follows it.
#[derive(Debug, Clone)]
pub struct SalPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SalPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        SalPacket { buffer }
    }

    /// Enforces the receiver rules of the original stack except the
    /// checksum (check that with [`verify_checksum`](Self::verify_checksum),
    /// which the stack does first): `shl*4 >= 12`, the header fits the
    /// buffer, extensions are known, well sized, at most 10, at most one
    /// CONTROL, two SERVICE, one SOURCE, and fill the header exactly.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        need("SAL base header", b, BASE_LEN)?;
        let shl = p.shl();
        if usize::from(shl) * 4 < BASE_LEN {
            return Err(Error::BadShl(shl));
        }
        need("SAL header", b, p.header_len())?;
        let (mut control, mut service, mut source) = (0, 0, 0);
        for ext in p.extensions() {
            match ext? {
                Extension::Control(_) => control += 1,
                Extension::Service(_) => service += 1,
                Extension::Source(_) => source += 1,
                Extension::Pad | Extension::Address(_) => {}
            }
            if control > MAX_CONTROL {
                return Err(Error::TooManyOfKind("CONTROL"));
            }
            if service > MAX_SERVICE {
                return Err(Error::TooManyOfKind("SERVICE"));
            }
            if source > MAX_SOURCE {
                return Err(Error::TooManyOfKind("SOURCE"));
            }
        }
        Ok(p)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
    pub fn src_flowid(&self) -> FlowId {
        FlowId(be32(self.buffer.as_ref(), field::SRC_FLOWID))
    }
    pub fn dst_flowid(&self) -> FlowId {
        FlowId(be32(self.buffer.as_ref(), field::DST_FLOWID))
    }
    /// Header length in 32-bit words, base plus extensions.
    pub fn shl(&self) -> u8 {
        self.buffer.as_ref()[field::SHL]
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.shl()) * 4
    }
    /// The transport protocol (also set on SAL-only control packets).
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    pub fn extensions(&self) -> Extensions<'_> {
        let hl = self.header_len().min(self.buffer.as_ref().len());
        Extensions {
            area: self.buffer.as_ref().get(BASE_LEN..hl).unwrap_or(&[]),
            base: BASE_LEN,
            pos: 0,
            count: 0,
            done: false,
        }
    }
    pub fn control(&self) -> Option<ControlRepr> {
        self.extensions().find_map(|e| match e {
            Ok(Extension::Control(c)) => Some(c),
            _ => None,
        })
    }
    pub fn service_id(&self) -> Option<ServiceId> {
        self.extensions().find_map(|e| match e {
            Ok(Extension::Service(s)) => Some(s),
            _ => None,
        })
    }
    pub fn source(&self) -> Option<SourceView<'_>> {
        self.extensions().find_map(|e| match e {
            Ok(Extension::Source(s)) => Some(s),
            _ => None,
        })
    }
    /// The checksum the header should carry.
    pub fn expected_checksum(&self) -> u16 {
        let h = &self.buffer.as_ref()[..self.header_len()];
        let acc = checksum::sum(&h[..field::CHECKSUM]);
        !checksum::fold(checksum::accumulate(acc, &h[field::CHECKSUM + 2..]))
    }
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(&self.buffer.as_ref()[..self.header_len()])) == 0xffff
    }
    /// Like [`verify_checksum`](Self::verify_checksum), with the values for
    /// an error message.
    pub fn check_checksum(&self) -> Result<()> {
        if self.verify_checksum() {
            Ok(())
        } else {
            Err(Error::BadChecksum { what: "SAL", found: self.checksum(), expected: self.expected_checksum() })
        }
    }
    /// What follows the SAL header: the transport header and data, if any.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SalPacket<T> {
    pub fn set_src_flowid(&mut self, id: FlowId) {
        put32(self.buffer.as_mut(), field::SRC_FLOWID, id.0);
    }
    pub fn set_dst_flowid(&mut self, id: FlowId) {
        put32(self.buffer.as_mut(), field::DST_FLOWID, id.0);
    }
    pub fn fill_checksum(&mut self) {
        put16(self.buffer.as_mut(), field::CHECKSUM, 0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        put16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }
}

/// A SAL header as the original stack builds it: extensions in the order
/// CONTROL, SERVICE, SOURCE, reserved fields zero. PAD and ADDRESS are
/// skipped on parse (the stack never sends them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SalRepr {
    pub src_flowid: FlowId,
    pub dst_flowid: FlowId,
    pub protocol: u8,
    pub control: Option<ControlRepr>,
    pub services: ServiceList,
    pub source: Option<SourceAddrs>,
}

impl SalRepr {
    /// A data packet's header: base only.
    pub fn data(src: FlowId, dst: FlowId, protocol: u8) -> Self {
        SalRepr {
            src_flowid: src,
            dst_flowid: dst,
            protocol,
            control: None,
            services: ServiceList::empty(),
            source: None,
        }
    }

    /// Parses a checked packet; fails if the SAL checksum is wrong.
    pub fn parse<T: AsRef<[u8]>>(p: &SalPacket<T>) -> Result<Self> {
        p.check_checksum()?;
        let mut r = SalRepr::data(p.src_flowid(), p.dst_flowid(), p.protocol());
        for ext in p.extensions() {
            match ext? {
                Extension::Control(c) => r.control = Some(c),
                Extension::Service(s) => r.services.push(s).map_err(|_| Error::TooManyOfKind("SERVICE"))?,
                Extension::Source(v) => {
                    let mut addrs = SourceAddrs::empty();
                    for a in v.iter() {
                        addrs.push(a).map_err(|_| Error::TooManyOfKind("SOURCE address"))?;
                    }
                    r.source = Some(addrs);
                }
                Extension::Pad | Extension::Address(_) => {}
            }
        }
        Ok(r)
    }

    pub fn service_id(&self) -> Option<ServiceId> {
        self.services.first().copied()
    }

    /// Header length in bytes (always a multiple of 4).
    pub fn header_len(&self) -> usize {
        BASE_LEN
            + if self.control.is_some() { CONTROL_LEN } else { 0 }
            + SERVICE_LEN * self.services.len()
            + self.source.map_or(0, |s| 4 + 4 * s.len())
    }

    /// Writes the header, checksum included, into the start of the view's
    /// buffer; the transport (if any) goes into `payload_mut()` after.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut SalPacket<T>) -> Result<()> {
        if let Some(s) = &self.source {
            if s.len() < SOURCE_MIN_ADDRS {
                return Err(Error::Unrepresentable("SOURCE extension with fewer than 2 addresses"));
            }
        }
        let hl = self.header_len();
        let b = p.buffer.as_mut();
        need("SAL header buffer", b, hl)?;
        put32(b, field::SRC_FLOWID, self.src_flowid.0);
        put32(b, field::DST_FLOWID, self.dst_flowid.0);
        b[field::SHL] = (hl / 4) as u8;
        b[field::PROTOCOL] = self.protocol;
        let mut at = BASE_LEN;
        if let Some(c) = &self.control {
            c.emit(&mut b[at..at + CONTROL_LEN]);
            at += CONTROL_LEN;
        }
        for s in self.services.as_slice() {
            b[at] = ext_type::SERVICE;
            b[at + 1] = SERVICE_LEN as u8;
            put16(b, at + 2, 0);
            b[at + 4..at + SERVICE_LEN].copy_from_slice(s.as_bytes());
            at += SERVICE_LEN;
        }
        if let Some(src) = &self.source {
            let len = 4 + 4 * src.len();
            b[at] = ext_type::SOURCE;
            b[at + 1] = len as u8;
            put16(b, at + 2, 0);
            for (i, a) in src.as_slice().iter().enumerate() {
                b[at + 4 + 4 * i..at + 8 + 4 * i].copy_from_slice(&a.octets());
            }
        }
        p.fill_checksum();
        Ok(())
    }
}
