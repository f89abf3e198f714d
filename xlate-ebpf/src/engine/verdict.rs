//! How a frame leaves the engine when it is not translated, in the spirit
//! of Cilium's `drop.h`: every exit names its reason, the reason is the
//! counter it moves, and one function per program ([`Exit::resolve`])
//! turns it into the hook's action. A failure after the frame was written
//! to drops it: a half-rewritten frame must not reach anyone.

use xlate_common::flow::{Counter, Hook, Logged};

use super::frame::Frame;
use super::log;
use super::maps::count;

/// The frame could not be read or written where its headers said (too
/// short, or a helper refused).
pub(crate) struct Fault;

/// A frame the engine does not translate.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Traffic the engine does not own (not IPv4, not TCP or SAL, no
    /// configured service): untouched, and uncounted, since it is most of
    /// what an interface carries.
    NotOurs,
    /// Handed to the kernel untouched (to the agent's raw socket, the
    /// kernel's forwarding, the fallback), counted by reason.
    Pass(Counter),
    /// Dropped, counted by reason.
    Drop(Counter),
    /// A [`Fault`]; what it becomes depends on whether the frame was
    /// already written (see [`Faults`]).
    Fault,
}

impl From<Fault> for Exit {
    #[inline(always)]
    fn from(_: Fault) -> Exit {
        Exit::Fault
    }
}

/// What a program does with a [`Exit::Fault`].
#[derive(Clone, Copy)]
pub(crate) struct Faults {
    /// Before the first write: the frame is as it came.
    pub unread: Exit,
    /// After it: the frame is dropped and this counted.
    pub half_written: Counter,
}

/// What the hook is told.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Pass,
    Drop,
}

impl Exit {
    /// Counts (and logs, when kernel logging is on) the exit's reason and
    /// gives the hook's action.
    #[inline(always)]
    pub fn resolve<F: Frame>(self, f: &F, hook: Hook, faults: Faults) -> Action {
        let exit = match self {
            Exit::Fault if f.written() => Exit::Drop(faults.half_written),
            Exit::Fault => faults.unread,
            e => e,
        };
        let (action, logged, reason) = match exit {
            Exit::Pass(c) => (Action::Pass, Logged::Passed, c),
            Exit::Drop(c) => (Action::Drop, Logged::Dropped, c),
            // A fault's `unread` is never itself a fault.
            Exit::NotOurs | Exit::Fault => return Action::Pass,
        };
        count(reason);
        if log::on() {
            log::frame(f, hook, logged, reason);
        }
        action
    }
}

/// A frame the engine translated: counted (and logged) as `what`.
#[inline(always)]
pub(crate) fn translated<F: Frame>(f: &F, hook: Hook, what: Counter) {
    count(what);
    if log::on() {
        log::frame(f, hook, Logged::Translated, what);
    }
}

/// A step's result in one register: BPF functions return a single 64-bit
/// value, so a `Result<u32, Exit>` crossing a function boundary (each
/// direction is its own BPF function, with its own stack frame) is packed.
#[derive(Clone, Copy)]
pub(crate) struct Packed(pub u64);

const OK: u64 = 1 << 40;
const PASS: u64 = 1 << 32;
const DROP: u64 = 2 << 32;
const FAULT: u64 = 3 << 32;

impl Packed {
    #[inline(always)]
    pub fn pack(r: Result<u32, Exit>) -> Packed {
        Packed(match r {
            Ok(v) => OK | u64::from(v),
            Err(Exit::NotOurs) => 0,
            Err(Exit::Pass(c)) => PASS | u64::from(c.index()),
            Err(Exit::Drop(c)) => DROP | u64::from(c.index()),
            Err(Exit::Fault) => FAULT,
        })
    }

    #[inline(always)]
    pub fn unpack(self) -> Result<u32, Exit> {
        let v = self.0;
        if v & OK != 0 {
            return Ok(v as u32);
        }
        let counter = || Counter::from_repr(v as u32);
        match v & (3 << 32) {
            PASS => Err(counter().map_or(Exit::Fault, Exit::Pass)),
            DROP => Err(counter().map_or(Exit::Fault, Exit::Drop)),
            FAULT => Err(Exit::Fault),
            _ => Err(Exit::NotOurs),
        }
    }
}
