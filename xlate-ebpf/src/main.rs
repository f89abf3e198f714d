//! xlate's kernel programs. One object, several programs; the agent loads
//! the ones a mode needs. `engine` holds the translation; `gateway` (XDP)
//! and `host` (TC) are the shells around it; `classify` is the watch tool;
//! `baseline` holds the trivial programs the per-packet experiment compares
//! with; `clock` the one the agent measures the engine's clock with.
#![no_std]
#![feature(asm_experimental_arch)]
#![no_main]

mod baseline;
mod classify;
mod clock;
mod engine;
mod gateway;
mod host;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no path reaches a panic; this is never called.
    loop {}
}
