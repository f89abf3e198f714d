//! Measuring the flow engine's clock (`xlate_common::flow::tick_clock`):
//! how `jiffies` map to CLOCK_MONOTONIC on this kernel, read with
//! `xlate_clock` (BPF_PROG_TEST_RUN), for the engine's configuration.

use std::time::Duration;

use anyhow::{anyhow, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use xlate_common::flow::{tick_clock, EngineConfig};

const PROGRAM: &str = "xlate_clock";

/// The tick length and base of this kernel's clock, into `cfg`. A kernel
/// whose ticks cannot be measured (the program refused, no tick in the
/// time allowed, or ticks of a length no HZ has) keeps `tick_ns` 0, said
/// in a warning: its flow engine then reads the coarse clock through its
/// helper, as it did before, 4-6 ns more per packet.
pub fn measure(ebpf: &mut Ebpf, cfg: &mut EngineConfig) {
    let (tick_ns, base) = match measured(ebpf) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("the flow engine reads the coarse clock's helper (4-6 ns more per packet): {e:#}");
            (0, 0)
        }
    };
    cfg.tick_ns = tick_ns;
    cfg.clock_base = base;
}

/// The kernel's tick length and the clock base that maps `jiffies` onto
/// the coarse monotonic clock, from readings 100 ms apart; an error if the
/// ticks fit no HZ (the kernel then keeps its clock helper).
fn measured(ebpf: &mut Ebpf) -> Result<(u32, u64)> {
    let first = read(ebpf)?;
    std::thread::sleep(Duration::from_millis(tick_clock::APART_MS));
    let last = read(ebpf)?;
    let tick = tick_clock::tick_ns(first, last).ok_or_else(|| {
        anyhow!("the kernel's ticks do not measure as any HZ's: (jiffies, coarse ns) {first:?} then {last:?}")
    })?;
    // The coarse clock moves at the kernel's timekeeping updates, whose
    // phase against the jiffy boundaries varies: a reading's base can be
    // up to a tick low. The largest of a few readings spread over a tick
    // is near the true one; any of them is within a tick of it, and a
    // reading of the clock so computed within two of the coarse clock's.
    let mut base = tick_clock::base(last, tick);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_nanos(u64::from(tick) / 4));
        let b = tick_clock::base(read(ebpf)?, tick);
        // (Wrapping: bases are compared by their difference.)
        if b.wrapping_sub(base) < u64::MAX / 2 {
            base = b;
        }
    }
    Ok((tick, base))
}

/// One reading (jiffies, coarse ns) taken in one run of `xlate_clock`
/// (loaded on first use), within one tick.
pub fn read(ebpf: &mut Ebpf) -> Result<(u64, u64)> {
    let prog: &mut Xdp = ebpf.program_mut(PROGRAM).ok_or_else(|| anyhow!("program {PROGRAM} missing"))?.try_into()?;
    if prog.fd().is_err() {
        crate::ebpf::loaded(PROGRAM, prog.load())?;
    }
    for _ in 0..10 {
        let frame = [0u8; 64];
        let mut out = [0u8; 64];
        prog.test_run(TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..Default::default() })?;
        let word = |i: usize| u64::from_ne_bytes(out[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let (before, coarse, after) = (word(0), word(1), word(2));
        if before == after && before != 0 {
            return Ok((before, coarse));
        }
    }
    Err(anyhow!("{PROGRAM} never read jiffies and the clock within one tick"))
}
