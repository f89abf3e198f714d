//! Bounds-checked access to packet bytes, in the form the verifier accepts:
//! every read is preceded by an explicit comparison against `data_end`.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

pub use xlate_common::wire::ethernet::{ETHERTYPE_IPV4 as ETH_P_IP, HEADER_LEN as ETH_HDR_LEN};

/// A pointer to a `T` at `offset` from the start of the frame, if the whole
/// `T` lies inside the frame.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
pub fn u8_at(ctx: &XdpContext, offset: usize) -> Option<u8> {
    // SAFETY: ptr_at checked that the byte lies inside the frame.
    ptr_at::<u8>(ctx, offset).map(|p| unsafe { *p })
}

#[inline(always)]
pub fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    // SAFETY: ptr_at checked that both bytes lie inside the frame; the
    // read is unaligned because frames carry no alignment promise.
    ptr_at::<[u8; 2]>(ctx, offset).map(|p| u16::from_be_bytes(unsafe { p.read_unaligned() }))
}
