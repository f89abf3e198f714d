//! The stream-level relay (issue 10, in progress): the paper's translator
//! design, for what the packet-level fast path declines and as the
//! baseline of the comparison. So far: [`pump`], which moves bytes
//! between two connected TCP sockets. Accepting client connections, the
//! Serval side and steering are still to come (see the session notes).

pub mod pump;
