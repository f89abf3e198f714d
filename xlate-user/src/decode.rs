//! `xlate-user decode`: one line per packet of a capture, with every Serval
//! field an operator debugs with, and a verdict on each SAL packet.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use xlate_common::wire::{
    ipv4::Ipv4Packet,
    packet::{ServalRepr, Transport},
    sal::{Extension, SalPacket},
    tcp::TcpPacket,
    udp::UdpPacket,
    IPPROTO_ICMP, IPPROTO_SAL, IPPROTO_TCP, IPPROTO_UDP,
};

use xlate_common::wire::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_VLAN};

/// The link layers a capture may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    /// Raw IP (DLT_RAW / LINKTYPE_IPV4).
    RawIp,
    /// Linux cooked capture v1 (16-byte header).
    Sll,
    /// Linux cooked capture v2 (20-byte header), what `tcpdump -i any` writes.
    Sll2,
}

impl Link {
    /// From a pcap LINKTYPE_ value.
    pub fn from_linktype(t: u32) -> Result<Self> {
        Ok(match t {
            1 => Link::Ethernet,
            101 | 228 => Link::RawIp,
            113 => Link::Sll,
            276 => Link::Sll2,
            other => bail!("unsupported link type {other}: xlate decodes Ethernet (1), raw IP (101, 228), Linux SLL (113) and SLL2 (276) captures"),
        })
    }

    /// The IPv4 datagram inside a frame, or the ethertype when it is not IPv4.
    pub fn ipv4<'a>(&self, frame: &'a [u8]) -> std::result::Result<&'a [u8], FrameKind> {
        let (ethertype, at) = match self {
            Link::RawIp => return Ok(frame),
            Link::Ethernet => {
                let Some(t) = be16(frame, 12) else {
                    return Err(FrameKind::Short);
                };
                if t == ETHERTYPE_VLAN {
                    (be16(frame, 16).ok_or(FrameKind::Short)?, 18)
                } else {
                    (t, 14)
                }
            }
            Link::Sll => (be16(frame, 14).ok_or(FrameKind::Short)?, 16),
            Link::Sll2 => (be16(frame, 0).ok_or(FrameKind::Short)?, 20),
        };
        if ethertype != ETHERTYPE_IPV4 {
            return Err(FrameKind::Ethertype(ethertype));
        }
        frame.get(at..).ok_or(FrameKind::Short)
    }
}

/// Why a frame holds no IPv4 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Short,
    Ethertype(u16),
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The outcome for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not a SAL packet: printed, not judged.
    NotServal,
    /// A SAL packet that satisfies every receiver rule and checksum.
    Valid,
    /// A SAL packet the original stack would drop, and why.
    Invalid(String),
}

/// One decoded packet: its printable line and its verdict.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub number: usize,
    pub line: String,
    pub verdict: Verdict,
}

/// Reads every frame of a classic pcap file, with its link type.
pub fn read_pcap(path: &Path) -> Result<(Link, Vec<Vec<u8>>)> {
    let cap = crate::pcap::Capture::read(path)?;
    let link = Link::from_linktype(cap.linktype).with_context(|| format!("{}", path.display()))?;
    Ok((link, cap.records.into_iter().map(|r| r.data).collect()))
}

/// Decodes every packet of a capture file. Frames cut short by the
/// capture's snap length are printed as far as they go and not judged.
pub fn decode_file(path: &Path) -> Result<Vec<Decoded>> {
    let cap = crate::pcap::Capture::read(path)?;
    let link = Link::from_linktype(cap.linktype).with_context(|| format!("{}", path.display()))?;
    Ok(cap
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if r.truncated() {
                decode_truncated(i + 1, link, &r.data, r.orig_len)
            } else {
                decode_frame(i + 1, link, &r.data)
            }
        })
        .collect())
}

fn decode_truncated(number: usize, link: Link, frame: &[u8], orig_len: u32) -> Decoded {
    let note = format!(" [captured {} of {orig_len} bytes: not judged]", frame.len());
    let line = match link.ipv4(frame) {
        Ok(ip) if ip.len() >= 20 => {
            // Shorten the IPv4 total length to what was captured so the
            // headers that are there can be shown.
            let mut ip = ip.to_vec();
            let n = ip.len().min(usize::from(u16::MAX)) as u16;
            let mut hdr = xlate_common::wire::ipv4::Ipv4Packet::new_unchecked(&mut ip[..]);
            hdr.set_total_len(n);
            hdr.fill_checksum();
            decode_ipv4(&ip).0
        }
        _ => "short frame".to_string(),
    };
    Decoded { number, line: line + &note, verdict: Verdict::NotServal }
}

pub fn decode_frame(number: usize, link: Link, frame: &[u8]) -> Decoded {
    let (line, verdict) = match link.ipv4(frame) {
        Ok(ip) => decode_ipv4(ip),
        Err(FrameKind::Short) => (format!("short frame ({} bytes)", frame.len()), Verdict::NotServal),
        Err(FrameKind::Ethertype(t)) => (format!("{} (ethertype 0x{t:04x})", ethertype_name(t)), Verdict::NotServal),
    };
    Decoded { number, line, verdict }
}

fn ethertype_name(t: u16) -> &'static str {
    match t {
        0x0806 => "ARP",
        0x86dd => "IPv6",
        _ => "non-IPv4",
    }
}

/// Decodes an IPv4 datagram: prints what can be read even when a rule is
/// broken, and judges SAL packets against every rule.
pub fn decode_ipv4(ip: &[u8]) -> (String, Verdict) {
    let pkt = match Ipv4Packet::new_checked(ip) {
        Ok(p) => p,
        Err(e) => return (format!("IPv4 malformed: {e}"), Verdict::NotServal),
    };
    let (src, dst) = (pkt.src_addr(), pkt.dst_addr());
    let mut line = format!("{src} > {dst} ttl {}", pkt.ttl());
    let payload = pkt.payload();
    match pkt.protocol() {
        IPPROTO_SAL => {
            line.push_str(" SAL");
            let verdict = match ServalRepr::parse(ip) {
                Ok(_) => Verdict::Valid,
                Err(e) => Verdict::Invalid(e.to_string()),
            };
            describe_sal(&mut line, payload, src, dst);
            match &verdict {
                Verdict::Valid => line.push_str(" [ok]"),
                Verdict::Invalid(why) => {
                    let _ = write!(line, " [INVALID: {why}]");
                }
                Verdict::NotServal => {}
            }
            (line, verdict)
        }
        IPPROTO_TCP => {
            line.push_str(" TCP");
            describe_tcp(&mut line, payload, src, dst);
            (line, Verdict::NotServal)
        }
        IPPROTO_UDP => {
            line.push_str(" UDP");
            describe_udp(&mut line, payload, src, dst);
            (line, Verdict::NotServal)
        }
        IPPROTO_ICMP => {
            let (t, c) = (payload.first().copied(), payload.get(1).copied());
            let _ = write!(line, " ICMP type {} code {}", opt(t), opt(c));
            if t == Some(3) && c == Some(2) {
                line.push_str(" (protocol unreachable)");
            }
            (line, Verdict::NotServal)
        }
        p => {
            let _ = write!(line, " IP protocol {p}, {} bytes", payload.len());
            (line, Verdict::NotServal)
        }
    }
}

fn opt(v: Option<u8>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

fn describe_sal(line: &mut String, l4: &[u8], src: Ipv4Addr, dst: Ipv4Addr) {
    // Print what the view can read even when the checked constructor
    // refuses: the verdict says what is wrong.
    let view = SalPacket::new_unchecked(l4);
    if l4.len() < xlate_common::wire::sal::BASE_LEN {
        let _ = write!(line, " truncated ({} bytes)", l4.len());
        return;
    }
    let _ =
        write!(line, " flow {}>{} shl {} proto {}", view.src_flowid(), view.dst_flowid(), view.shl(), view.protocol());
    if view.header_len() > l4.len() {
        return;
    }
    for ext in view.extensions() {
        match ext {
            Ok(Extension::Control(c)) => {
                let _ =
                    write!(line, " CONTROL {} verno {} ackno {} nonce {}", c.flags, c.verno, c.ackno, hex(&c.nonce));
            }
            Ok(Extension::Service(s)) => {
                let _ = write!(line, " SERVICE {s}");
            }
            Ok(Extension::Source(s)) => {
                let addrs: Vec<String> = s.iter().map(|a| a.to_string()).collect();
                let _ = write!(line, " SOURCE [{}]", addrs.join(","));
            }
            Ok(Extension::Address(a)) => {
                let _ = write!(line, " ADDRESS ({} bytes)", a.len());
            }
            Ok(Extension::Pad) => line.push_str(" PAD"),
            Err(_) => break,
        }
    }
    let rest = &l4[view.header_len()..];
    if rest.is_empty() {
        line.push_str(" | no transport");
        return;
    }
    match view.protocol() {
        IPPROTO_TCP => {
            line.push_str(" | TCP");
            describe_tcp(line, rest, src, dst);
        }
        IPPROTO_UDP => {
            line.push_str(" | UDP");
            describe_udp(line, rest, src, dst);
        }
        p => {
            let _ = write!(line, " | protocol {p}, {} bytes", rest.len());
        }
    }
}

fn describe_tcp(line: &mut String, seg: &[u8], src: Ipv4Addr, dst: Ipv4Addr) {
    let t = match TcpPacket::new_checked(seg) {
        Ok(t) => t,
        Err(e) => {
            let _ = write!(line, " malformed: {e}");
            return;
        }
    };
    let _ = write!(
        line,
        " {}>{} [{}] seq {} ack {} win {} len {}",
        t.src_port(),
        t.dst_port(),
        t.flags(),
        t.seq(),
        t.ack(),
        t.window(),
        t.payload().len()
    );
    if let Some(mss) = t.mss() {
        let _ = write!(line, " mss {mss}");
    }
    let _ = write!(line, " cksum {}", if t.verify_checksum(src, dst) { "ok" } else { "BAD" });
}

fn describe_udp(line: &mut String, dgram: &[u8], src: Ipv4Addr, dst: Ipv4Addr) {
    let u = match UdpPacket::new_checked(dgram) {
        Ok(u) => u,
        Err(e) => {
            let _ = write!(line, " malformed: {e}");
            return;
        }
    };
    let _ = write!(line, " {}>{} len {}", u.src_port(), u.dst_port(), u.payload().len());
    let status = match (u.checksum(), u.verify_checksum(src, dst)) {
        (0, _) => "none",
        (_, true) => "ok",
        (_, false) => "BAD",
    };
    let _ = write!(line, " cksum {status}");
}

/// The shape of a Serval packet, for comparing conversations regardless of
/// addresses, flow IDs and sequence numbers: control flags, `shl`, and the
/// transport's TCP flags (`none` for SAL-only packets), e.g. `SYN/17/S`.
pub fn shape(p: &ServalRepr) -> String {
    let control = p.sal.control.map_or_else(|| "-".to_string(), |c| c.flags.to_string());
    let transport = match &p.transport {
        Transport::None => "none".to_string(),
        Transport::Tcp(t) => format!("{}", t.flags),
        Transport::Udp(_) => "udp".to_string(),
    };
    format!("{control}/{}/{transport}", p.sal.header_len() / 4)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid SAL data packet (shl 3, SAL-only) from 10.0.0.1 to 10.0.0.2.
    fn sal_datagram() -> Vec<u8> {
        use xlate_common::wire::{
            ipv4::Ipv4Repr,
            sal::{FlowId, SalRepr},
        };
        let repr = ServalRepr {
            ip: Ipv4Repr::new(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), IPPROTO_SAL, 0),
            sal: SalRepr::data(FlowId(7), FlowId(9), IPPROTO_TCP),
            transport: Transport::None,
        };
        let mut b = vec![0u8; repr.buffer_len()];
        repr.emit(&mut b).unwrap();
        b
    }

    #[test]
    fn every_link_type_finds_the_datagram() {
        let ip = sal_datagram();
        let mut eth = vec![0u8; 12];
        eth.extend_from_slice(&[0x08, 0x00]);
        eth.extend_from_slice(&ip);
        let mut vlan = vec![0u8; 12];
        vlan.extend_from_slice(&[0x81, 0x00, 0x00, 0x05, 0x08, 0x00]);
        vlan.extend_from_slice(&ip);
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&[0x08, 0x00]);
        sll.extend_from_slice(&ip);
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0u8; 18]);
        sll2.extend_from_slice(&ip);
        for (link, frame) in [
            (Link::Ethernet, &eth),
            (Link::Ethernet, &vlan),
            (Link::Sll, &sll),
            (Link::Sll2, &sll2),
            (Link::RawIp, &ip),
        ] {
            let d = decode_frame(1, link, frame);
            assert_eq!(d.verdict, Verdict::Valid, "{link:?}: {}", d.line);
            assert!(d.line.contains("flow 7>9 shl 3"), "{}", d.line);
        }
        let mut arp = eth.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(decode_frame(1, Link::Ethernet, &arp).line, "ARP (ethertype 0x0806)");
        assert_eq!(decode_frame(1, Link::Ethernet, &eth[..5]).verdict, Verdict::NotServal);
    }

    #[test]
    fn truncated_sal_is_invalid_not_a_panic() {
        let mut ip = sal_datagram();
        ip.truncate(20 + 6);
        let mut hdr = xlate_common::wire::ipv4::Ipv4Packet::new_unchecked(&mut ip[..]);
        hdr.set_total_len(26);
        hdr.fill_checksum();
        let (line, verdict) = decode_ipv4(&ip);
        assert!(matches!(verdict, Verdict::Invalid(ref why) if why.contains("truncated SAL base header")), "{line}");
    }
}
