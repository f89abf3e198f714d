//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! Sums are carried as an unfolded `u32` accumulator so that pieces (a
//! pseudo-header, a header, a payload) can be added separately and folded
//! once. Every function is loop-free or bounded so it also runs in eBPF.

/// Adds `data` to a running accumulator, as big-endian 16-bit words; an odd
/// trailing byte is padded with zero (RFC 1071 §4.1).
///
/// The accumulator cannot overflow for inputs up to 128 KiB in one call,
/// which covers any IPv4 packet.
pub fn accumulate(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for word in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([word[0], word[1]])));
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

/// The unfolded one's-complement sum of `data`.
pub fn sum(data: &[u8]) -> u32 {
    accumulate(0, data)
}

/// Folds carries back into the low 16 bits (end-around carry).
#[inline(always)]
pub fn fold(acc: u32) -> u16 {
    // Two rounds suffice for any u32: after the first the value is at most
    // 0x1_fffe, after the second at most 0xffff.
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// Adds two partial sums without losing a carry.
#[inline(always)]
pub fn combine(a: u32, b: u32) -> u32 {
    u32::from(fold(a)) + u32::from(fold(b))
}

/// The checksum field value for `data`: the complement of its folded sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// The IPv4 pseudo-header sum used by TCP and UDP (RFC 793 §3.1).
///
/// Serval sums its transport with protocol 6/17, not 144, and without the
/// SAL header in `len`: pass the transport protocol and length here.
#[inline(always)]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u16) -> u32 {
    u32::from(u16::from_be_bytes([src[0], src[1]]))
        + u32::from(u16::from_be_bytes([src[2], src[3]]))
        + u32::from(u16::from_be_bytes([dst[0], dst[1]]))
        + u32::from(u16::from_be_bytes([dst[2], dst[3]]))
        + u32::from(protocol)
        + u32::from(len)
}

/// RFC 1624 eqn. 3: the new checksum field after a 16-bit word of the
/// covered data changes from `old` to `new`: `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(acc)
}

/// [`update16`] for an aligned 32-bit field (an address, a sequence number).
#[inline(always)]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let acc =
        u32::from(!check) + u32::from(!(old >> 16) as u16) + u32::from(!(old as u16)) + (new >> 16) + (new & 0xffff);
    !fold(acc)
}

/// What a 16-bit word of the covered data changing from `old` to `new`
/// adds to the sum (`~m + m'`), for [`update_with_diff`]: several changes
/// summed first are folded once.
#[inline(always)]
pub fn diff16(old: u16, new: u16) -> u32 {
    u32::from(!old) + u32::from(new)
}

/// [`diff16`] for a 32-bit field, word by word. At most `4 * 0xffff`: a
/// few thousand such differences still fit in the `u32` sum.
#[inline(always)]
pub fn diff32(old: u32, new: u32) -> u32 {
    let not = !old;
    (not >> 16) + (not & 0xffff) + (new >> 16) + (new & 0xffff)
}

/// Applies a precomputed difference (`sum(new words) + sum(!old words)`)
/// to a checksum field: the form used when many fields change at once.
#[inline(always)]
pub fn update_with_diff(check: u16, diff: u32) -> u16 {
    !fold(combine(u32::from(!check), diff))
}

/// The difference that [`update_with_diff`] applies to turn checksum field
/// `from` into `to`: `~to - ~from`, that is `~to + from`.
#[inline(always)]
pub fn diff_to(from: u16, to: u16) -> u32 {
    u32::from(!to) + u32::from(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many field changes summed with `diff16`/`diff32` and applied once
    /// give the field that applying them one by one gives.
    #[test]
    fn changes_summed_then_applied_once_match_one_by_one() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 32) as u32
        };
        for _ in 0..10_000 {
            let check = next() as u16;
            let (a, b, c, d) = (next(), next(), next(), next());
            let (m, n) = (next() as u16, next() as u16);
            let one_by_one = update16(update32(update32(check, a, b), c, d), m, n);
            let at_once = update_with_diff(check, diff32(a, b) + diff32(c, d) + diff16(m, n));
            assert_eq!(at_once, one_by_one, "{check:04x} {a:08x}->{b:08x} {c:08x}->{d:08x} {m:04x}->{n:04x}");
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn data_with_its_checksum_sums_to_minus_zero() {
        let mut data = [0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0, 0];
        let c = checksum(&data);
        data[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(sum(&data)), 0xffff);
    }

    #[test]
    fn diff_to_turns_one_field_into_another() {
        for (from, to) in [(0x1234, 0xabcd), (0, 0xffff), (0xffff, 0), (0x8000, 0x8000), (1, 0xfffe)] {
            let got = update_with_diff(from, diff_to(from, to));
            // 0x0000 and 0xffff are the same number in one's complement.
            assert!(got == to || (got, to) == (0, 0xffff) || (got, to) == (0xffff, 0), "{from:x}->{to:x}: {got:x}");
        }
    }
}
