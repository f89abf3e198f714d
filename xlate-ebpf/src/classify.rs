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
    wire::{ethernet, ipv4, sal, IPPROTO_SAL, IPPROTO_TCP},
};

use crate::engine::frame::{Frame, XdpFrame, IP_AT};

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
    let f = XdpFrame::new(ctx);
    let Ok(ethertype) = f.load::<[u8; 2]>(ethernet::field::ETHERTYPE) else {
        return ClassifierCounter::NonIpv4;
    };
    if u16::from_be_bytes(ethertype) != ethernet::ETHERTYPE_IPV4 {
        return ClassifierCounter::NonIpv4;
    }
    let Ok(h) = f.load::<[u8; ipv4::HEADER_LEN]>(IP_AT) else {
        return ClassifierCounter::Malformed;
    };
    let (ver_ihl, proto) = (h[0], h[ipv4::field::PROTOCOL]);
    let frag = u16::from_be_bytes([h[ipv4::field::FLAGS_FRAG], h[ipv4::field::FLAGS_FRAG + 1]]);
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < ipv4::HEADER_LEN {
        return ClassifierCounter::Malformed;
    }
    // MF set or a non-zero offset: some fragment.
    if frag & 0x3fff != 0 {
        return ClassifierCounter::Fragment;
    }
    let l4 = IP_AT + ihl;
    match proto {
        IPPROTO_TCP => ClassifierCounter::Tcp,
        IPPROTO_SAL => {
            let Ok(shl) = f.load::<u8>(l4 + sal::field::SHL) else {
                return ClassifierCounter::SalMalformed;
            };
            let hl = usize::from(shl) * 4;
            // The whole SAL header must be in the frame.
            if hl < sal::BASE_LEN || f.load::<u8>(l4 + hl - 1).is_err() {
                return ClassifierCounter::SalMalformed;
            }
            ClassifierCounter::Sal
        }
        _ => ClassifierCounter::OtherIpv4,
    }
}
