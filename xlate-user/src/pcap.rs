//! Classic pcap files (what `tcpdump -w` writes): reading, tolerant of
//! snap-length truncation, and writing. Small enough to own: the format
//! is a 24-byte file header and a 16-byte header per record.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ts_sec: u32,
    /// Microseconds or nanoseconds, as the file's magic says.
    pub ts_frac: u32,
    /// Length on the wire; larger than `data.len()` when truncated.
    pub orig_len: u32,
    pub data: Vec<u8>,
}

impl Record {
    pub fn truncated(&self) -> bool {
        (self.data.len() as u32) < self.orig_len
    }
}

/// A whole capture.
#[derive(Debug, Clone)]
pub struct Capture {
    pub linktype: u32,
    pub snaplen: u32,
    pub nanos: bool,
    pub records: Vec<Record>,
}

impl Capture {
    pub fn read(path: &Path) -> Result<Self> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .with_context(|| format!("cannot open {}", path.display()))?
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("{}", path.display()))
    }

    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < 24 {
            bail!("not a pcap file: {} bytes, shorter than the 24-byte header", b.len());
        }
        let magic_le = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let magic_be = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let (le, nanos) = match (magic_le, magic_be) {
            (MAGIC_US, _) => (true, false),
            (MAGIC_NS, _) => (true, true),
            (_, MAGIC_US) => (false, false),
            (_, MAGIC_NS) => (false, true),
            _ => bail!("not a classic pcap file (magic 0x{magic_le:08x}; pcapng is not supported, convert with `editcap -F pcap`)"),
        };
        let u32_at = |at: usize| {
            let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            if le {
                u32::from_le_bytes(w)
            } else {
                u32::from_be_bytes(w)
            }
        };
        let snaplen = u32_at(16);
        let linktype = u32_at(20) & 0x0fff_ffff;
        let mut records = Vec::new();
        let mut at = 24;
        while at < b.len() {
            let n = records.len() + 1;
            if at + 16 > b.len() {
                bail!("packet {n}: record header cut short at byte {at}");
            }
            let incl = u32_at(at + 8) as usize;
            let rec =
                Record { ts_sec: u32_at(at), ts_frac: u32_at(at + 4), orig_len: u32_at(at + 12), data: Vec::new() };
            at += 16;
            if incl > 262_144 || at + incl > b.len() {
                bail!("packet {n}: captured length {incl} runs past the end of the file");
            }
            records.push(Record { data: b[at..at + incl].to_vec(), ..rec });
            at += incl;
        }
        Ok(Capture { linktype, snaplen, nanos, records })
    }

    /// Writes the capture in the host's byte order, as tcpdump does.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut out = Vec::new();
        out.extend_from_slice(&(if self.nanos { MAGIC_NS } else { MAGIC_US }).to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(&self.snaplen.to_le_bytes());
        out.extend_from_slice(&self.linktype.to_le_bytes());
        for r in &self.records {
            out.extend_from_slice(&r.ts_sec.to_le_bytes());
            out.extend_from_slice(&r.ts_frac.to_le_bytes());
            out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&r.orig_len.to_le_bytes());
            out.extend_from_slice(&r.data);
        }
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(&out))
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_and_keeps_truncation() {
        let cap = Capture {
            linktype: 1,
            snaplen: 64,
            nanos: false,
            records: vec![Record { ts_sec: 1, ts_frac: 2, orig_len: 100, data: vec![7; 64] }],
        };
        let p = std::env::temp_dir().join(format!("xlate-pcap-{}.pcap", std::process::id()));
        cap.write(&p).unwrap();
        let back = Capture::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(back.records, cap.records);
        assert!(back.records[0].truncated());
        assert_eq!((back.linktype, back.snaplen), (1, 64));
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(Capture::parse(&[0; 10]).unwrap_err().to_string().contains("shorter than the 24-byte header"));
        let mut b = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&65535u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&100u32.to_le_bytes());
        b.extend_from_slice(&100u32.to_le_bytes());
        assert!(Capture::parse(&b).unwrap_err().to_string().contains("packet 1: captured length 100 runs past"));
    }
}
