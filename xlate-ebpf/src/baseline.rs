//! Two trivial XDP programs that the per-packet experiment measures beside
//! the translator, on the same frames, in the same run: what any XDP
//! program costs under BPF_PROG_TEST_RUN (`xlate_baseline_pass`) and what
//! the cheapest program that rewrites and bounces a frame costs
//! (`xlate_baseline_mac_swap`). The translator's own cost is its time
//! minus theirs. Never attached by the agent.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Returns XDP_PASS and touches nothing.
#[xdp]
pub fn xlate_baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Swaps the Ethernet source and destination and returns XDP_TX (a
/// reflector, the usual "XDP_TX" baseline); a frame shorter than an
/// Ethernet header is passed.
#[xdp]
pub fn xlate_baseline_mac_swap(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 14 > end {
        return xdp_action::XDP_PASS;
    }
    let eth = start as *mut [u8; 12];
    // SAFETY: the 14 bytes from `start` are inside the frame (checked
    // above, in a form the verifier tracks).
    unsafe {
        let mut macs = *eth;
        let (dst, src) = macs.split_at_mut(6);
        dst.swap_with_slice(src);
        *eth = macs;
    }
    xdp_action::XDP_TX
}
