//! xlate's kernel programs. One object, several programs; the agent loads
//! the ones a mode needs.
#![no_std]
#![no_main]

mod classify;
mod flows;
mod gateway;
mod host;
mod packet;
mod sal_rx;
mod state;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no path reaches a panic; this is never called.
    loop {}
}
