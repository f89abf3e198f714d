//! `xlate_classify`: counts what crosses an interface (TCP, SAL, other)
//! and passes everything. The first program of the fast path, and the
//! agent's `watch` tool.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use xlate_common::{
    maps::ClassifierCounter,
    wire::{ipv4, sal, IPPROTO_SAL, IPPROTO_TCP},
};

use crate::packet::{be16_at, ptr_at, u8_at, ETH_HDR_LEN, ETH_P_IP};

#[map(name = "XLATE_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ClassifierCounter::COUNT as u32, 0);

#[inline(always)]
fn bump(c: ClassifierCounter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c.index()) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[xdp]
pub fn xlate_classify(ctx: XdpContext) -> u32 {
    bump(ClassifierCounter::Seen);
    bump(classify(&ctx));
    xdp_action::XDP_PASS
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> ClassifierCounter {
    let Some(ethertype) = be16_at(ctx, 12) else {
        return ClassifierCounter::NonIpv4;
    };
    if ethertype != ETH_P_IP {
        return ClassifierCounter::NonIpv4;
    }
    let l3 = ETH_HDR_LEN;
    if ptr_at::<[u8; ipv4::HEADER_LEN]>(ctx, l3).is_none() {
        return ClassifierCounter::Malformed;
    }
    let (Some(ver_ihl), Some(frag), Some(proto)) = (u8_at(ctx, l3), be16_at(ctx, l3 + 6), u8_at(ctx, l3 + 9)) else {
        return ClassifierCounter::Malformed;
    };
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < ipv4::HEADER_LEN {
        return ClassifierCounter::Malformed;
    }
    // MF set or a non-zero offset: some fragment.
    if frag & 0x3fff != 0 {
        return ClassifierCounter::Fragment;
    }
    let l4 = l3 + ihl;
    match proto {
        IPPROTO_TCP => ClassifierCounter::Tcp,
        IPPROTO_SAL => {
            let Some(shl) = u8_at(ctx, l4 + sal::field::SHL) else {
                return ClassifierCounter::SalMalformed;
            };
            let hl = usize::from(shl) * 4;
            // The whole SAL header must be in the frame.
            if hl < sal::BASE_LEN || ptr_at::<u8>(ctx, l4 + hl - 1).is_none() {
                return ClassifierCounter::SalMalformed;
            }
            ClassifierCounter::Sal
        }
        _ => ClassifierCounter::OtherIpv4,
    }
}
