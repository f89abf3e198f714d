//! Network-namespace labs for xlate, built once for everyone who needs
//! one: the integration tests, `cargo xtask run` and `cargo xtask bench`.
//!
//! - [`netns`]: namespaces (unique or fixed names, removed on drop, every
//!   process in them killed), veth links created directly inside them, and
//!   background processes.
//! - [`topology`]: the two labs: the translator's (a legacy client, the
//!   gateway, a bridge, Serval instances) and host mode's (two hosts on one
//!   link), with their addresses.
//!
//! Addresses exist only inside namespaces the lab made; nothing touches
//! the host's own namespace.

pub mod netns;
pub mod topology;

pub use netns::{veth, Bg, Naming, Netns};
pub use topology::{HostPair, ScaleOut, Translator, TranslatorOptions};
