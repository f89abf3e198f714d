//! The per-CPU buffers the SAL receiver rules run on in the kernel. The
//! rules themselves, and the helpers that index the buffer in a form the
//! verifier accepts, are `xlate_common::wire::sal_walk`: the same code the
//! agent's tests hold to the wire library's verdict.

use aya_ebpf::{macros::map, maps::PerCpuArray};
pub(crate) use xlate_common::wire::sal_walk::{
    be32, copy_n, opaque, walk_extensions, Exts, WALK_BUF_LEN as SCRATCH_LEN,
};

#[map(name = "SAL_SCRATCH")]
pub(crate) static SCRATCH: PerCpuArray<[u8; SCRATCH_LEN]> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SAL_EXTS")]
pub(crate) static EXTS: PerCpuArray<Exts> = PerCpuArray::with_max_entries(1, 0);
