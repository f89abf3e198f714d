//! The SAL receiver rules in the form the kernel runs them: over a fixed
//! 256-byte buffer holding a copy of the header, with every index masked
//! so that the BPF verifier can bound it. The same rules as
//! [`SalPacket::new_checked`](super::sal::SalPacket::new_checked) (a
//! property test in `tests/props.rs` holds the two to the same verdict on
//! any bytes), and what the fast path needs from the extensions, in a
//! struct that lives in a per-CPU map slot in the kernel.

use super::sal::{
    ext_type, ADDRESS_MIN_LEN, BASE_LEN, CONTROL_LEN, MAX_CONTROL, MAX_EXTENSIONS, MAX_SERVICE, MAX_SOURCE,
    SERVICE_LEN, SOURCE_MAX_ADDRS, SOURCE_MIN_ADDRS,
};

/// The buffer the header is copied into. Longer headers are dropped by the
/// kernel before the walk (`drop_bad_length`).
pub const WALK_BUF_LEN: usize = 256;

/// Hides a value from LLVM so that a mask after it survives: LLVM would
/// otherwise drop `& 0xff` using facts the verifier does not track, and
/// the verifier would reject the unbounded index. Outside BPF: the value.
#[inline(always)]
pub fn opaque(x: usize) -> usize {
    #[cfg(target_arch = "bpf")]
    {
        let mut v = x;
        // SAFETY: a register move to itself; only hides `v` from LLVM.
        unsafe { core::arch::asm!("{0} = {0}", inout(reg) v) };
        v
    }
    #[cfg(not(target_arch = "bpf"))]
    x
}

/// Byte `i` of the buffer, index masked in a way the verifier sees.
#[inline(always)]
pub fn at(b: &[u8; WALK_BUF_LEN], i: usize) -> u8 {
    b[opaque(i) & (WALK_BUF_LEN - 1)]
}

#[inline(always)]
pub fn be32(b: &[u8; WALK_BUF_LEN], i: usize) -> u32 {
    u32::from_be_bytes([at(b, i), at(b, i + 1), at(b, i + 2), at(b, i + 3)])
}

#[inline(always)]
pub fn copy_n<const N: usize>(b: &[u8; WALK_BUF_LEN], pos: usize) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = at(b, pos + i);
        i += 1;
    }
    out
}

/// What the walk found. In the kernel it sits in a per-CPU map slot rather
/// than in registers: the verifier does not track map memory precisely,
/// so the many combinations of "found CONTROL / n SERVICE / SOURCE"
/// collapse into one state instead of each re-verifying the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Exts {
    pub has_control: u8,
    /// CONTROL flags (reserved bits masked off).
    pub flags: u8,
    pub services: u8,
    pub sources: u8,
    pub verno: u32,
    pub ackno: u32,
    pub nonce: [u8; 8],
    /// Offset of the first SERVICE's service ID in the header.
    pub service_at: u32,
    /// The last SOURCE hop: the responder, when a router forwarded the SYN.
    pub source_last: [u8; 4],
}

impl Exts {
    /// What a header without extensions has: no CONTROL, SERVICE or
    /// SOURCE (the other fields mean nothing without them).
    #[inline(always)]
    pub fn clear(&mut self) {
        self.has_control = 0;
        self.services = 0;
        self.sources = 0;
        self.service_at = 0;
    }
}

/// Enforces the receiver rules over the header in `b` (`hl` bytes, the
/// base header included); false if one is broken.
#[inline(always)]
pub fn walk_extensions(b: &[u8; WALK_BUF_LEN], hl: usize, e: &mut Exts) -> bool {
    e.clear();
    let mut pos = BASE_LEN;
    let mut n = 0;
    while n < MAX_EXTENSIONS {
        if pos >= hl {
            break;
        }
        n += 1;
        let t = at(b, pos) & 0xf0;
        if t == ext_type::PAD {
            pos += 1;
            continue;
        }
        if pos + 2 > hl {
            return false;
        }
        let len = usize::from(at(b, pos + 1));
        if pos + len > hl {
            return false;
        }
        match t {
            ext_type::CONTROL => {
                if len != CONTROL_LEN || usize::from(e.has_control) >= MAX_CONTROL {
                    return false;
                }
                e.has_control = 1;
                e.flags = at(b, pos + 2) & 0xfc;
                e.verno = be32(b, pos + 4);
                e.ackno = be32(b, pos + 8);
                e.nonce = copy_n::<8>(b, pos + 12);
            }
            ext_type::SERVICE => {
                if len != SERVICE_LEN || usize::from(e.services) >= MAX_SERVICE {
                    return false;
                }
                if e.services == 0 {
                    e.service_at = (pos + 4) as u32;
                }
                e.services += 1;
            }
            ext_type::ADDRESS => {
                if len < ADDRESS_MIN_LEN || !(len - ADDRESS_MIN_LEN).is_multiple_of(4) {
                    return false;
                }
            }
            ext_type::SOURCE => {
                if !len.is_multiple_of(4)
                    || !(4 + 4 * SOURCE_MIN_ADDRS..=4 + 4 * SOURCE_MAX_ADDRS).contains(&len)
                    || usize::from(e.sources) >= MAX_SOURCE
                {
                    return false;
                }
                e.sources = 1;
                e.source_last = copy_n::<4>(b, pos + len - 4);
            }
            _ => return false,
        }
        pos += len;
    }
    pos == hl
}
