//! Kernel debug logging (aya-log): one line per frame a program handles,
//! with what became of it and why (the counter it moved). Off unless an
//! operator switches it on while the agent runs (`xlate-user kernel-log
//! on`, which sets `config_flag::KERNEL_LOG`); the agent prints the lines.
//! The line carries numbers (hook, verdict, counter index); the agent
//! names them (`agent::kernel_log`), so no string crosses the ring.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::info;
use xlate_common::{
    flow::{config_flag, Counter, Hook, Logged},
    wire::ipv4::field as ipf,
};

use super::frame::{Frame, IP_AT};
use super::maps::CONFIG;

#[inline(always)]
pub(crate) fn on() -> bool {
    CONFIG.get(0).is_some_and(|c| c.flags & config_flag::KERNEL_LOG != 0)
}

/// Logs the frame in `f` (its addresses and protocol as they are now).
#[inline(always)]
pub(crate) fn frame<F: Frame>(f: &F, hook: Hook, what: Logged, reason: Counter) {
    let ip: [u8; 20] = f.load(IP_AT).unwrap_or([0; 20]);
    let src = u32::from_be_bytes([ip[ipf::SRC], ip[ipf::SRC + 1], ip[ipf::SRC + 2], ip[ipf::SRC + 3]]);
    let dst = u32::from_be_bytes([ip[ipf::DST], ip[ipf::DST + 1], ip[ipf::DST + 2], ip[ipf::DST + 3]]);
    let tags = u64::from(hook as u8) | u64::from(what as u8) << 8 | u64::from(ip[ipf::PROTOCOL]) << 16;
    line(f.ctx(), tags | u64::from(reason.index()) << 32, src, dst);
}

/// The record itself, its own BPF function: its code stays out of the
/// hot path's stack frame. Takes only scalars and the context: a frame
/// view passed in would hand the callee packet pointers, which the
/// verifier does not follow across calls.
#[inline(never)]
fn line<C: EbpfContext>(ctx: &C, tags: u64, src: u32, dst: u32) {
    info!(
        ctx,
        "hook={} what={} proto={} reason={} src={:i} dst={:i}",
        tags as u8,
        (tags >> 8) as u8,
        (tags >> 16) as u8,
        (tags >> 32) as u32,
        src,
        dst
    );
}
