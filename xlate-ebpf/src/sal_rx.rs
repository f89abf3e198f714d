//! The SAL receiver rules in the kernel: the header is copied into a
//! per-CPU scratch buffer and walked there with indices the verifier can
//! bound (see `opaque`). `walk_extensions` enforces the same rules as
//! `xlate_common::wire::sal` (one source of truth is issue 8's next step).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use xlate_common::wire::sal;

pub(crate) const SCRATCH_LEN: usize = 256;

#[map(name = "HOST_SCRATCH")]
pub(crate) static SCRATCH: PerCpuArray<[u8; SCRATCH_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Hides a value from LLVM so that the mask after it survives: LLVM would
/// otherwise drop `& 0xff` using facts the verifier does not track, and
/// the verifier would reject the unbounded index.
#[inline(always)]
pub(crate) fn opaque(x: usize) -> usize {
    let mut v = x;
    // SAFETY: a register move to itself; only hides `v` from LLVM.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) v) };
    v
}

/// Byte `i` of the scratch buffer, index masked in a way the verifier sees.
#[inline(always)]
pub(crate) fn at(b: &[u8; SCRATCH_LEN], i: usize) -> u8 {
    b[opaque(i) & 0xff]
}

#[inline(always)]
pub(crate) fn be32(b: &[u8; SCRATCH_LEN], i: usize) -> u32 {
    u32::from_be_bytes([at(b, i), at(b, i + 1), at(b, i + 2), at(b, i + 3)])
}

#[inline(always)]
pub(crate) fn copy_n<const N: usize>(b: &[u8; SCRATCH_LEN], pos: usize) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = at(b, pos + i);
        i += 1;
    }
    out
}

/// What the extension walk found. Kept in a per-CPU map slot rather than
/// in registers: the verifier does not track map memory precisely, so the
/// many combinations of "found CONTROL / n SERVICE / SOURCE" collapse into
/// one state instead of each re-verifying the rest of the program.
#[repr(C)]
pub(crate) struct Exts {
    pub(crate) has_control: u8,
    pub(crate) flags: u8,
    pub(crate) services: u8,
    pub(crate) sources: u8,
    pub(crate) verno: u32,
    pub(crate) ackno: u32,
    pub(crate) nonce: [u8; 8],
    pub(crate) service_at: u32,
    pub(crate) source_last: [u8; 4],
}

#[map(name = "HOST_EXTS")]
pub(crate) static EXTS: PerCpuArray<Exts> = PerCpuArray::with_max_entries(1, 0);

/// Enforces the receiver rules over the header in `b` (`hl` bytes);
/// false if one is broken.
#[inline(always)]
pub(crate) fn walk_extensions(b: &[u8; SCRATCH_LEN], hl: usize, e: &mut Exts) -> bool {
    e.has_control = 0;
    e.services = 0;
    e.sources = 0;
    e.service_at = 0;
    let mut pos = sal::BASE_LEN;
    let mut n = 0;
    while n < sal::MAX_EXTENSIONS {
        if pos >= hl {
            break;
        }
        n += 1;
        let t = at(b, pos) & 0xf0;
        if t == sal::ext_type::PAD {
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
            sal::ext_type::CONTROL => {
                if len != sal::CONTROL_LEN || e.has_control != 0 {
                    return false;
                }
                e.has_control = 1;
                e.flags = at(b, pos + 2) & 0xfc;
                e.verno = be32(b, pos + 4);
                e.ackno = be32(b, pos + 8);
                e.nonce = copy_n::<8>(b, pos + 12);
            }
            sal::ext_type::SERVICE => {
                if len != sal::SERVICE_LEN || e.services >= 2 {
                    return false;
                }
                if e.services == 0 {
                    e.service_at = (pos + 4) as u32;
                }
                e.services += 1;
            }
            sal::ext_type::ADDRESS => {
                if len < sal::ADDRESS_MIN_LEN || (len - sal::ADDRESS_MIN_LEN) % 4 != 0 {
                    return false;
                }
            }
            sal::ext_type::SOURCE => {
                if len % 4 != 0 || len < 12 || len > 84 || e.sources != 0 {
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
