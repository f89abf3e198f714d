//! What a shell does with the link layer of a frame the engine translated,
//! given the frame's flow: the engine calls it while it holds the flow, so
//! that no shell looks the flow up a second time for it.

use xlate_common::flow::FlowState;

use super::frame::Frame;
use super::verdict::Fault;

pub(crate) trait LinkLayer {
    /// After TCP → SAL (`syn`: the segment became a SAL SYN).
    fn sent<F: Frame>(f: &F, flow: &FlowState, syn: bool) -> Result<(), Fault>;
    /// After SAL → TCP.
    fn received<F: Frame>(f: &F, flow: &mut FlowState) -> Result<(), Fault>;
}

/// The translator's: the FIB lookup that forwards the frame (or the
/// kernel) sets both MAC addresses; the flow has nothing to add.
pub(crate) struct Routed;

impl LinkLayer for Routed {
    #[inline(always)]
    fn sent<F: Frame>(_: &F, _: &FlowState, _: bool) -> Result<(), Fault> {
        Ok(())
    }

    #[inline(always)]
    fn received<F: Frame>(_: &F, _: &mut FlowState) -> Result<(), Fault> {
        Ok(())
    }
}
