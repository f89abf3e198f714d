//! `xlate_clock`: what the agent measures the flow engine's clock with
//! (`xlate_common::flow::tick_clock`). Run with BPF_PROG_TEST_RUN, never
//! attached: it writes `jiffies` and the coarse monotonic clock, read in
//! one run, and `jiffies` again after them, over the first 24 bytes of
//! the frame it is given (native order), and passes it.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::xdp,
    programs::XdpContext,
};

#[xdp]
pub fn xlate_clock(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 24 > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: no preconditions; the 24 bytes from `start` are inside the
    // frame (checked above, in a form the verifier tracks).
    unsafe {
        let before = bpf_jiffies64();
        let coarse = bpf_ktime_get_coarse_ns();
        let after = bpf_jiffies64();
        let out = start as *mut [u64; 3];
        out.write_unaligned([before, coarse, after]);
    }
    xdp_action::XDP_PASS
}
