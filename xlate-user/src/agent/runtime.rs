//! The process's one tokio runtime. Current-thread: the agent is one event
//! loop (the kernel does the per-packet work), and everything else it does
//! asynchronously (netlink requests at set-up and teardown, `watch`) runs
//! on the same runtime through [`block_on`], outside the loop.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

/// The runtime, built on first use.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Builder::new_current_thread().enable_all().build().expect("building the tokio runtime (epoll, timers)")
    })
}

/// Runs `f` to completion on the runtime. Not from inside the event loop
/// (a current-thread runtime runs one `block_on` at a time): there, await.
pub fn block_on<F: Future>(f: F) -> F::Output {
    runtime().block_on(f)
}
