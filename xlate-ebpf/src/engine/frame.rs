//! One view of a frame for both hooks. The translation is written once
//! against [`Frame`]; XDP ([`XdpFrame`]) and TC ([`SkbFrame`]) differ only
//! in how bytes are reached, how the SAL header's room is made or taken
//! away, and how the TCP checksum follows a rewrite:
//!
//! - XDP sees bytes, not the skb: it computes the new checksum itself, and
//!   when the field is ambiguous (see [`XdpFrame::fix_tcp_checksum`]) it
//!   leaves a [`ChecksumNote`] for the TC stage.
//! - TC has the skb helpers, which know whether the kernel or the NIC will
//!   finish the sum (CHECKSUM_PARTIAL) and update only what they must.
//!
//! Every method that changes the frame marks it written: from then on a
//! failure drops the frame instead of passing a half-rewritten one (see
//! [`super::verdict`]).

use core::cell::Cell;
use core::mem::size_of;

use aya_ebpf::{
    helpers::{bpf_skb_load_bytes, bpf_xdp_adjust_head, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use xlate_common::{
    flow::gw::ChecksumNote,
    wire::{checksum, ethernet, ipv4, tcp::field as tcpf, IPPROTO_TCP},
};

use super::sal_rx::SCRATCH_LEN;
use super::verdict::Fault;

/// Where the IPv4 header starts.
pub(crate) const IP_AT: usize = ethernet::HEADER_LEN;
/// Where the layer-4 header starts (IPv4 without options: the only kind
/// the engine translates).
pub(crate) const L4_AT: usize = IP_AT + ipv4::HEADER_LEN;
/// The IPv4 header the engine writes (no options).
pub(crate) const IPV4_LEN: usize = ipv4::HEADER_LEN;

/// What a rewrite of a TCP segment changed, for its checksum: the
/// pseudo-header addresses, the ports, and an MSS option.
#[derive(Clone, Copy)]
pub(crate) struct TcpRewrite {
    /// Source and destination addresses, before and after.
    pub src: ([u8; 4], [u8; 4]),
    pub dst: ([u8; 4], [u8; 4]),
    /// Both ports as one 32-bit word, as on the wire, before and after.
    pub ports: ([u8; 4], [u8; 4]),
    /// The MSS option's value before and after (equal: unchanged).
    pub mss: (u16, u16),
    /// TCP header and payload, as the pseudo-header counts them.
    pub tcp_len: u16,
}

pub(crate) trait Frame {
    type Ctx: EbpfContext;
    /// The hook's context (for helpers that take it, such as logging).
    fn ctx(&self) -> &Self::Ctx;
    /// Bytes from the Ethernet header to the end of the frame.
    fn len(&self) -> usize;
    fn load<T: Copy>(&self, at: usize) -> Result<T, Fault>;
    fn store<T: Copy>(&self, at: usize, v: &T) -> Result<(), Fault>;
    /// Copies `n` bytes at `at` (a multiple of 4, at most [`SCRATCH_LEN`])
    /// into `buf`.
    fn load_bytes(&self, at: usize, buf: &mut [u8; SCRATCH_LEN], n: usize) -> Result<(), Fault>;
    /// Inserts `room` bytes right after the IPv4 header, which becomes
    /// `ip`.
    fn grow_l4(&self, room: usize, ip: &[u8; IPV4_LEN]) -> Result<(), Fault>;
    /// Removes `len` bytes right after the IPv4 header, which becomes `ip`.
    fn shrink_l4(&self, len: usize, ip: &[u8; IPV4_LEN]) -> Result<(), Fault>;
    /// Lowers the MSS option at `at` (Linux puts it first) to `max`;
    /// returns its value before and after. The checksum is left to
    /// [`Frame::fix_tcp_checksum`].
    fn clamp_mss(&self, at: usize, max: u16) -> Result<(u16, u16), Fault>;
    /// Brings the checksum of the TCP header at `tcp_at` in line with
    /// `rw`, whose port and MSS bytes are already written.
    fn fix_tcp_checksum(&self, tcp_at: usize, rw: &TcpRewrite) -> Result<(), Fault>;
    /// Whether anything was changed yet.
    fn written(&self) -> bool;
}

// ----------------------------------------------------------------- XDP

/// A frame at the XDP hook: direct packet access, bounds checked against
/// `data_end` before every access (the form the verifier accepts).
pub(crate) struct XdpFrame<'a> {
    pub ctx: &'a XdpContext,
    written: Cell<bool>,
    /// The partial and complete forms of a checksum the TC stage settles.
    note: Cell<Option<(u16, u16)>>,
}

impl<'a> XdpFrame<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext) -> Self {
        XdpFrame { ctx, written: Cell::new(false), note: Cell::new(None) }
    }

    #[inline(always)]
    fn ptr<T>(&self, at: usize) -> Result<*mut T, Fault> {
        let (start, end) = (self.ctx.data(), self.ctx.data_end());
        if start + at + size_of::<T>() > end {
            return Err(Fault);
        }
        Ok((start + at) as *mut T)
    }

    /// Whether a checksum was written in the partial form (the frame must
    /// then take the kernel's path, through the TC stage).
    #[inline(always)]
    pub fn checksum_deferred(&self) -> bool {
        self.note.get().is_some()
    }

    /// The note for the TC stage, if the TCP checksum at `csum_at` of the
    /// final frame was written in the partial form (where it goes is the
    /// program's choice: see the translator's `leave_note`).
    #[inline(always)]
    pub fn note(&self, csum_at: usize) -> Option<ChecksumNote> {
        let (partial, complete) = self.note.get()?;
        Some(ChecksumNote::new(csum_at as u32, partial, complete))
    }
}

impl Frame for XdpFrame<'_> {
    type Ctx = XdpContext;

    #[inline(always)]
    fn ctx(&self) -> &XdpContext {
        self.ctx
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.data_end() - self.ctx.data()
    }

    #[inline(always)]
    fn load<T: Copy>(&self, at: usize) -> Result<T, Fault> {
        // SAFETY: ptr() checked the bounds.
        self.ptr::<T>(at).map(|p| unsafe { words::read(p as *const u8) })
    }

    #[inline(always)]
    fn store<T: Copy>(&self, at: usize, v: &T) -> Result<(), Fault> {
        let p = self.ptr::<T>(at)?;
        self.written.set(true);
        // SAFETY: as in load().
        unsafe { words::write(p as *mut u8, v) };
        Ok(())
    }

    #[inline(always)]
    fn load_bytes(&self, at: usize, buf: &mut [u8; SCRATCH_LEN], n: usize) -> Result<(), Fault> {
        // SAFETY: the caller keeps n within the buffer.
        let r = unsafe { bpf_xdp_load_bytes(self.ctx.ctx, at as u32, buf.as_mut_ptr() as *mut _, n as u32) };
        if r != 0 {
            return Err(Fault);
        }
        Ok(())
    }

    /// Moves the Ethernet header back by `room` and writes `ip` behind
    /// it (the old IPv4 header is not copied: it is replaced).
    #[inline(always)]
    fn grow_l4(&self, room: usize, ip: &[u8; IPV4_LEN]) -> Result<(), Fault> {
        let eth: [u8; IP_AT] = self.load(0)?;
        self.written.set(true);
        // SAFETY: adjusting the head of our own frame; bounds re-checked
        // by every access after it.
        if unsafe { bpf_xdp_adjust_head(self.ctx.ctx, -(room as i32)) } != 0 {
            return Err(Fault);
        }
        self.store(0, &eth)?;
        self.store(IP_AT, ip)
    }

    /// Writes the Ethernet header and `ip` `len` bytes on, then moves the
    /// frame's start there.
    #[inline(always)]
    fn shrink_l4(&self, len: usize, ip: &[u8; IPV4_LEN]) -> Result<(), Fault> {
        let eth: [u8; IP_AT] = self.load(0)?;
        self.store(len, &eth)?;
        self.store(len + IP_AT, ip)?;
        // SAFETY: shrinking the head of our own frame.
        if unsafe { bpf_xdp_adjust_head(self.ctx.ctx, len as i32) } != 0 {
            return Err(Fault);
        }
        Ok(())
    }

    /// Read and write go through one checked pointer: recomputing the
    /// address would be a new packet pointer to the verifier.
    #[inline(always)]
    fn clamp_mss(&self, at: usize, max: u16) -> Result<(u16, u16), Fault> {
        let p = self.ptr::<[u8; 4]>(at)?;
        // SAFETY: bounds checked by ptr().
        let mut opt = unsafe { p.read_unaligned() };
        let mss = u16::from_be_bytes([opt[2], opt[3]]);
        if opt[0] != 2 || opt[1] != 4 || mss <= max {
            return Ok((mss, mss));
        }
        opt[2..4].copy_from_slice(&max.to_be_bytes());
        self.written.set(true);
        // SAFETY: as above.
        unsafe { p.write_unaligned(opt) };
        Ok((mss, max))
    }

    /// The complete checksum, by incremental update. When the old field
    /// holds exactly the pseudo-header sum it is ambiguous: that is what a
    /// sender leaving the checksum to offload writes (CHECKSUM_PARTIAL, as
    /// on veth with tx offload on), and also what a complete checksum
    /// equals by chance once in 65536 segments. The bytes cannot tell the
    /// two apart (and a client without TCP timestamps retransmits the very
    /// same bytes), so such a field is rewritten in the partial form and
    /// settled by the TC stage, which sees the skb: see [`ChecksumNote`].
    ///
    /// Every change goes into one sum (RFC 1624 eqn. 3 over all changed
    /// words at once), folded once: applied field by field, each update
    /// paid its own complement and fold, on every translated packet.
    #[inline(always)]
    fn fix_tcp_checksum(&self, tcp_at: usize, rw: &TcpRewrite) -> Result<(), Fault> {
        let at = tcp_at + tcpf::CHECKSUM;
        let old = u16::from_be_bytes(self.load::<[u8; 2]>(at)?);
        let ambiguous = checksum::fold(checksum::pseudo_header_v4(rw.src.0, rw.dst.0, IPPROTO_TCP, rw.tcp_len)) == old;
        let pseudo = pseudo_diff(rw);
        let mut rest = checksum::diff32(u32::from_be_bytes(rw.ports.0), u32::from_be_bytes(rw.ports.1));
        if rw.mss.0 != rw.mss.1 {
            rest += checksum::diff16(rw.mss.0, rw.mss.1);
        }
        let complete = checksum::update_with_diff(old, pseudo + rest);
        let write = if ambiguous {
            // The partial form covers only the pseudo-header (it holds the
            // non-complemented pseudo sum, so the same arithmetic runs on
            // its complement); the final sum will cover the new ports and
            // MSS.
            let partial = !checksum::update_with_diff(!old, pseudo);
            self.note.set(Some((partial, complete)));
            partial
        } else {
            complete
        };
        self.store(at, &write.to_be_bytes())
    }

    #[inline(always)]
    fn written(&self) -> bool {
        self.written.get()
    }
}

/// What the pseudo-header's address changes add to a checksum's sum.
#[inline(always)]
fn pseudo_diff(rw: &TcpRewrite) -> u32 {
    checksum::diff32(u32::from_be_bytes(rw.src.0), u32::from_be_bytes(rw.src.1))
        + checksum::diff32(u32::from_be_bytes(rw.dst.0), u32::from_be_bytes(rw.dst.1))
}

/// Packet bytes moved in words. Frame offsets carry no alignment promise,
/// so Rust's unaligned reads compile to one BPF load per byte (and, with
/// eleven registers, a stack spill for most of them): a header copy was
/// most of the translation's instructions. BPF itself has no alignment
/// rule for packet access where the CPU has efficient unaligned access
/// (x86-64, arm64: the verifier checks alignment only under
/// `BPF_F_STRICT_ALIGNMENT`), so the words are moved with explicit BPF
/// loads and stores, which the compiler cannot split, to and from an
/// aligned copy on the stack.
mod words {
    use core::arch::asm;
    use core::mem::{size_of, MaybeUninit};

    #[repr(C, align(8))]
    struct Aligned<T>(T);

    /// # Safety
    /// `src..src + size_of::<T>()` is packet memory the verifier has seen
    /// bounds-checked, and any bit pattern is a valid `T`.
    #[inline(always)]
    pub(super) unsafe fn read<T: Copy>(src: *const u8) -> T {
        let mut buf = MaybeUninit::<Aligned<T>>::uninit();
        let dst = buf.as_mut_ptr() as *mut u8;
        let n = size_of::<T>();
        let mut i = 0;
        while i + 8 <= n {
            let v: u64;
            asm!("{v} = *(u64 *)({p} + 0)", p = in(reg) src.add(i), v = lateout(reg) v, options(readonly, nostack));
            (dst.add(i) as *mut u64).write(v);
            i += 8;
        }
        if i + 4 <= n {
            let v: u64;
            asm!("{v} = *(u32 *)({p} + 0)", p = in(reg) src.add(i), v = lateout(reg) v, options(readonly, nostack));
            (dst.add(i) as *mut u32).write(v as u32);
            i += 4;
        }
        if i + 2 <= n {
            let v: u64;
            asm!("{v} = *(u16 *)({p} + 0)", p = in(reg) src.add(i), v = lateout(reg) v, options(readonly, nostack));
            (dst.add(i) as *mut u16).write(v as u16);
            i += 2;
        }
        if i < n {
            *dst.add(i) = *src.add(i);
        }
        buf.assume_init().0
    }

    /// # Safety
    /// As for [`read`], for writing.
    #[inline(always)]
    pub(super) unsafe fn write<T: Copy>(dst: *mut u8, v: &T) {
        let buf = Aligned(*v);
        let src = &buf as *const Aligned<T> as *const u8;
        let n = size_of::<T>();
        let mut i = 0;
        while i + 8 <= n {
            let w = (src.add(i) as *const u64).read();
            asm!("*(u64 *)({p} + 0) = {w}", p = in(reg) dst.add(i), w = in(reg) w, options(nostack));
            i += 8;
        }
        if i + 4 <= n {
            let w = u64::from((src.add(i) as *const u32).read());
            asm!("*(u32 *)({p} + 0) = {w}", p = in(reg) dst.add(i), w = in(reg) w, options(nostack));
            i += 4;
        }
        if i + 2 <= n {
            let w = u64::from((src.add(i) as *const u16).read());
            asm!("*(u16 *)({p} + 0) = {w}", p = in(reg) dst.add(i), w = in(reg) w, options(nostack));
            i += 2;
        }
        if i < n {
            *dst.add(i) = *src.add(i);
        }
    }
}

// ------------------------------------------------------------------ TC

const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_ADJ_ROOM_NET: u32 = 0;

/// A frame at a TC hook: the skb helpers.
pub(crate) struct SkbFrame<'a> {
    pub ctx: &'a TcContext,
    written: Cell<bool>,
}

impl<'a> SkbFrame<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a TcContext) -> Self {
        SkbFrame { ctx, written: Cell::new(false) }
    }

    #[inline(always)]
    fn l4_csum_replace(&self, at: usize, old: u32, new: u32, flags: u64) -> Result<(), Fault> {
        if old == new {
            return Ok(());
        }
        self.written.set(true);
        self.ctx.l4_csum_replace(at, u64::from(old), u64::from(new), flags).map_err(|_| Fault)
    }
}

impl Frame for SkbFrame<'_> {
    type Ctx = TcContext;

    #[inline(always)]
    fn ctx(&self) -> &TcContext {
        self.ctx
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.len() as usize
    }

    #[inline(always)]
    fn load<T: Copy>(&self, at: usize) -> Result<T, Fault> {
        self.ctx.load(at).map_err(|_| Fault)
    }

    #[inline(always)]
    fn store<T: Copy>(&self, at: usize, v: &T) -> Result<(), Fault> {
        self.written.set(true);
        self.ctx.store(at, v, 0).map_err(|_| Fault)
    }

    /// The raw helper: aya's wrapper clamps the length to what is left in
    /// the skb, which the verifier cannot prove non-zero.
    #[inline(always)]
    fn load_bytes(&self, at: usize, buf: &mut [u8; SCRATCH_LEN], n: usize) -> Result<(), Fault> {
        // SAFETY: the caller keeps n within the buffer.
        let r = unsafe {
            bpf_skb_load_bytes(self.ctx.skb.skb as *const _, at as u32, buf.as_mut_ptr() as *mut _, n as u32)
        };
        if r != 0 {
            return Err(Fault);
        }
        Ok(())
    }

    #[inline(always)]
    fn grow_l4(&self, room: usize, ip: &[u8; IPV4_LEN]) -> Result<(), Fault> {
        self.written.set(true);
        self.ctx.adjust_room(room as i32, BPF_ADJ_ROOM_NET, 0).map_err(|_| Fault)?;
        self.store(IP_AT, ip)
    }

    #[inline(always)]
    fn shrink_l4(&self, len: usize, ip: &[u8; IPV4_LEN]) -> Result<(), Fault> {
        self.written.set(true);
        self.ctx.adjust_room(-(len as i32), BPF_ADJ_ROOM_NET, 0).map_err(|_| Fault)?;
        self.store(IP_AT, ip)
    }

    #[inline(always)]
    fn clamp_mss(&self, at: usize, max: u16) -> Result<(u16, u16), Fault> {
        let opt: [u8; 4] = self.load(at)?;
        let mss = u16::from_be_bytes([opt[2], opt[3]]);
        if opt[0] != 2 || opt[1] != 4 || mss <= max {
            return Ok((mss, mss));
        }
        self.store(at + 2, &max.to_be_bytes())?;
        Ok((mss, max))
    }

    /// The helpers update only what the final sum will not cover: for a
    /// CHECKSUM_PARTIAL skb just the pseudo-header part.
    #[inline(always)]
    fn fix_tcp_checksum(&self, tcp_at: usize, rw: &TcpRewrite) -> Result<(), Fault> {
        let at = tcp_at + tcpf::CHECKSUM;
        let ne = u32::from_ne_bytes;
        self.l4_csum_replace(at, ne(rw.ports.0), ne(rw.ports.1), 4)?;
        self.l4_csum_replace(at, u32::from(rw.mss.0.to_be()), u32::from(rw.mss.1.to_be()), 2)?;
        self.l4_csum_replace(at, ne(rw.src.0), ne(rw.src.1), BPF_F_PSEUDO_HDR | 4)?;
        self.l4_csum_replace(at, ne(rw.dst.0), ne(rw.dst.1), BPF_F_PSEUDO_HDR | 4)
    }

    #[inline(always)]
    fn written(&self) -> bool {
        self.written.get()
    }
}
