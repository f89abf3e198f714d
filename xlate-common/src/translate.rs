//! The translation core: per-packet decisions and header building shared
//! by every fast path (host mode's TC programs, the gateway's XDP program).
//! Pure functions over [`FlowState`], so they are unit-tested here and run
//! unchanged in the kernel.

use crate::flow::{event, flag, role, state, FlowState};
use crate::wire::{checksum, sal, IPPROTO_TCP};

// The TCP flag bits the bookkeeping reads: the wire library's.
pub const TCP_FIN: u8 = crate::wire::tcp::TcpFlags::FIN;
pub const TCP_SYN: u8 = crate::wire::tcp::TcpFlags::SYN;
pub const TCP_RST: u8 = crate::wire::tcp::TcpFlags::RST;
pub const TCP_ACK: u8 = crate::wire::tcp::TcpFlags::ACK;

/// Whether a TCP segment that host mode translated after GRO (at TC
/// ingress) goes round through the coalescer, to pass GRO again, rather
/// than up the stack where it is. GRO merges only segments that carry
/// data, so a segment without data gains nothing there and pays a veth
/// crossing: a pure ACK (every segment of a download's return stream, two
/// of a short connection's) goes up in place. Going in place it may pass
/// data of its flow still in the coalescer, which TCP takes as it takes
/// any reordering of an ACK: the data's older acknowledgment is ignored.
/// SYN, FIN and RST keep their place behind the flow's data (a FIN
/// overtaking the last data would arrive out of order), so they take the
/// coalescer too.
#[inline(always)]
pub fn through_coalescer(tcp_flags: u8, payload_len: usize) -> bool {
    payload_len != 0 || tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
}

/// What a TCP segment of the legacy side becomes on the SAL side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// CONTROL(SYN) + SERVICE, 68 bytes.
    Syn,
    /// CONTROL(ACK) + SERVICE, 68 bytes: the third ACK form.
    Ack,
    /// CONTROL(SYN|ACK), 32 bytes.
    SynAck,
    /// Base header, 12 bytes.
    Data,
}

impl Form {
    pub const fn header_len(self) -> usize {
        match self {
            Form::Syn | Form::Ack => 68,
            Form::SynAck => 32,
            Form::Data => 12,
        }
    }
}

/// `a` is after `b` in 32-bit sequence space.
#[inline(always)]
pub fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Chooses the SAL form of an outgoing segment (`seq_end` = seq + payload).
///
/// The client keeps the CONTROL+SERVICE ACK form on pure ACKs and on
/// retransmitted data until the server proves it has the flow (the
/// original stack never retransmits the third ACK); data sent for the first
/// time goes plain, as the original stack sends it (it discards payload
/// riding on the third ACK).
#[inline(always)]
pub fn egress_form(flow: &FlowState, tcp_flags: u8, payload: u32, seq_end: u32) -> Form {
    let client = flow.role == role::CLIENT;
    if client && flow.state == state::SYN_SENT && tcp_flags & TCP_SYN != 0 {
        Form::Syn
    } else if client && flow.state == state::ACK_PENDING && tcp_flags & TCP_SYN == 0 {
        if payload == 0 || !seq_after(seq_end, flow.snd_max) {
            Form::Ack
        } else {
            Form::Data
        }
    } else if flow.role == role::SERVER && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        Form::SynAck
    } else {
        Form::Data
    }
}

/// Whether a TCP segment from the local side (`tcp_flags`) that found the
/// flow `flow` by its 4-tuple opens a new connection on that tuple instead
/// of belonging to the flow: a bare SYN on a client flow whose TCP
/// connection is over (both FINs, or a reset either way).
///
/// A closed flow lingers a while (late segments still translate, the SAL
/// close completes), and a TCP end may reuse the 4-tuple meanwhile: the
/// side that did not close first has no TIME_WAIT, so a legacy client or
/// the relay's connect() picks the port again at once under load. Folded
/// into the old flow, the new connection would ride its flow IDs until
/// the old flow is freed under it. As with conntrack (a SYN in TIME_WAIT
/// or CLOSE reopens), only a connection that is over is replaced: a SYN
/// into a live one (a late duplicate, a forgery) stays in its flow and the
/// TCP behind it judges it.
#[inline(always)]
pub fn reopens(flow: &FlowState, tcp_flags: u8) -> bool {
    const BOTH_FINS: u8 = flag::LOCAL_FIN_ACKED | flag::PEER_FIN;
    tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
        && flow.role == role::CLIENT
        && (flow.flags & BOTH_FINS == BOTH_FINS || flow.flags & (flag::LOCAL_RST | flag::PEER_RST) != 0)
}

/// Bookkeeping for an outgoing segment; returns the event the agent must
/// hear of (0 for none).
#[inline(always)]
pub fn note_egress(flow: &mut FlowState, tcp_flags: u8, seq_end: u32) -> u32 {
    if seq_after(seq_end, flow.snd_max) || flow.snd_max == 0 {
        flow.snd_max = seq_end;
    }
    if tcp_flags & TCP_FIN != 0 && flow.flags & flag::LOCAL_FIN == 0 {
        flow.local_fin_ack = seq_end.wrapping_add(1);
        flow.flags |= flag::LOCAL_FIN;
    }
    if tcp_flags & TCP_RST != 0 && flow.flags & flag::LOCAL_RST == 0 {
        flow.flags |= flag::LOCAL_RST;
        return event::LOCAL_RST;
    }
    0
}

/// Bookkeeping for an incoming segment (`seq`, `ack`, `payload` of the
/// TCP segment inside SAL); returns the event the agent must hear of.
#[inline(always)]
pub fn note_ingress(flow: &mut FlowState, tcp_flags: u8, seq: u32, ack: u32, payload: u32) -> u32 {
    let mut next = seq.wrapping_add(payload);
    if tcp_flags & (TCP_SYN | TCP_FIN) != 0 {
        next = next.wrapping_add(1);
    }
    // A reset ends the flow only at exactly the sequence number expected
    // (RFC 5961 §3.2, as the local TCP judges it too): data packets are
    // accepted by flow ID alone, so one with a guessed RST must not free
    // the flow while the TCP behind it carries on.
    let rst_in_place = tcp_flags & TCP_RST != 0 && seq == flow.peer_next_seq;
    // The highest: a zero-window probe (seq one below the window) or a
    // retransmission must not move it back, or a reset injected at it
    // would fall outside the window and be ignored; nor may a reset move
    // it (a guessed one would shift it away from the real one).
    if tcp_flags & TCP_RST == 0 && (tcp_flags & TCP_SYN != 0 || seq_after(next, flow.peer_next_seq)) {
        flow.peer_next_seq = next;
    }
    if tcp_flags & (TCP_FIN | TCP_RST) == TCP_FIN {
        flow.flags |= flag::PEER_FIN;
    }
    if rst_in_place && flow.flags & flag::PEER_RST == 0 {
        flow.flags |= flag::PEER_RST;
        return event::PEER_RST;
    }
    if tcp_flags & TCP_ACK != 0
        && flow.flags & (flag::LOCAL_FIN | flag::LOCAL_FIN_ACKED) == flag::LOCAL_FIN
        && !seq_after(flow.local_fin_ack, ack)
    {
        flow.flags |= flag::LOCAL_FIN_ACKED;
        return event::LOCAL_FIN_ACKED;
    }
    0
}

/// The peer's SYN-ACK for a client flow. `None` if it does not acknowledge
/// our SYN (drop it); `Some(true)` the first time, when the peer's flow ID,
/// verno and nonce are learnt; `Some(false)` for a repeat.
#[inline(always)]
pub fn accept_synack(flow: &mut FlowState, src_flow: u32, verno: u32, ackno: u32, nonce: [u8; 8]) -> Option<bool> {
    if flow.role != role::CLIENT || ackno != flow.local_verno.wrapping_add(1) {
        return None;
    }
    if flow.state != state::SYN_SENT {
        return Some(false);
    }
    flow.peer_flow = src_flow;
    flow.peer_verno = verno;
    flow.peer_nonce = nonce;
    flow.state = state::ACK_PENDING;
    Some(true)
}

/// Folded one's-complement sum of a fixed-size header (RFC 1071), in
/// network order (loop-free after monomorphisation, so the verifier sees
/// straight-line code). The sum does not depend on byte order (RFC 1071
/// §2(B)): it is taken over native-order 32-bit words into 64 bits and
/// swapped once at the end, which for the 20-byte IPv4 header is 5 loads
/// and adds where 16-bit network-order words took 10 loads, 10 swaps and
/// 10 adds, on every translated packet.
#[inline(always)]
pub fn sum_words<const N: usize>(h: &[u8; N]) -> u16 {
    let mut acc: u64 = 0;
    let mut i = 0;
    while i + 4 <= N {
        acc += u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
        i += 4;
    }
    if i + 2 <= N {
        acc += u64::from(u16::from_ne_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    if i < N {
        // An odd last byte is the high byte of a network-order word.
        acc += u64::from(u16::from_ne_bytes([h[i], 0]));
    }
    // At most N/4 words of 32 bits: two folds bring 64 bits to 32.
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    u16::from_be_bytes(checksum::fold(acc as u32).to_ne_bytes())
}

/// The base header's fields of a flow into `h` (checksum left zero).
#[inline(always)]
fn put_base<const N: usize>(h: &mut [u8; N], flow: &FlowState) {
    use sal::field::{DST_FLOWID, PROTOCOL, SHL, SRC_FLOWID};
    h[SRC_FLOWID..SRC_FLOWID + 4].copy_from_slice(&flow.local_flow.to_be_bytes());
    h[DST_FLOWID..DST_FLOWID + 4].copy_from_slice(&flow.peer_flow.to_be_bytes());
    h[SHL] = (N / 4) as u8;
    h[PROTOCOL] = IPPROTO_TCP;
}

/// Fills in the checksum of a whole header.
#[inline(always)]
fn put_checksum<const N: usize>(h: &mut [u8; N]) {
    let c = !sum_words(h);
    h[sal::field::CHECKSUM..sal::field::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
}

/// The data header of a flow (base only, `shl` 3), checksummed.
#[inline(always)]
pub fn data_header(flow: &FlowState) -> [u8; sal::BASE_LEN] {
    let mut h = [0u8; sal::BASE_LEN];
    put_base(&mut h, flow);
    put_checksum(&mut h);
    h
}

/// Base + CONTROL (+ SERVICE when `N` is 68), checksummed.
#[inline(always)]
pub fn control_header<const N: usize>(
    flow: &FlowState,
    flags: u8,
    verno: u32,
    ackno: u32,
    service_id: &[u8; 32],
) -> Header<N> {
    use sal::control_field::{ACKNO, FLAGS, NONCE, VERNO};
    let mut buf = Header([0u8; N]);
    buf.clear();
    let h = &mut buf.0;
    put_base(h, flow);
    // CONTROL right after the base header, SERVICE after it (the order the
    // original stack emits).
    let c = sal::BASE_LEN;
    h[c] = sal::ext_type::CONTROL;
    h[c + 1] = sal::CONTROL_LEN as u8;
    h[c + FLAGS] = flags;
    h[c + VERNO..c + VERNO + 4].copy_from_slice(&verno.to_be_bytes());
    h[c + ACKNO..c + ACKNO + 4].copy_from_slice(&ackno.to_be_bytes());
    h[c + NONCE..c + NONCE + 8].copy_from_slice(&flow.local_nonce);
    if N >= sal::BASE_LEN + sal::CONTROL_LEN + sal::SERVICE_LEN {
        let s = sal::BASE_LEN + sal::CONTROL_LEN;
        h[s] = sal::ext_type::SERVICE;
        h[s + 1] = sal::SERVICE_LEN as u8;
        let mut i = 0;
        while i < 32 {
            h[s + sal::SERVICE_ID_AT + i] = service_id[i];
            i += 1;
        }
    }
    put_checksum(h);
    buf
}

/// A control header, 8-byte aligned, handed out as it is: BPF's LLVM
/// backend inlines the zeroing of an aligned array, but calls `memset` (a
/// byte at a time) for an unaligned one, and each call is a BPF function
/// the 6.1 verifier charges 32 bytes of stack (the translator's SYN path is
/// near the 512-byte limit). Returning the bare array moved it into the
/// caller's unaligned slot, where its zero bytes were written again by
/// such a `memset`.
#[repr(C, align(8))]
pub struct Header<const N: usize>(pub [u8; N]);

impl<const N: usize> Header<N> {
    /// Zeroes the header in whole words that the compiler may not trim:
    /// zeroing the array alone, LLVM keeps only the bytes the header's
    /// fields do not overwrite later, an unaligned range it then clears
    /// with a `memset` call (a byte at a time in the BPF build).
    #[inline(always)]
    fn clear(&mut self) {
        let p = self.0.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= N {
            // SAFETY: within the array, 8-aligned (the header is, and i is
            // a multiple of 8).
            unsafe { core::ptr::write_volatile(p.add(i) as *mut u64, 0) };
            i += 8;
        }
        while i < N {
            // SAFETY: within the array.
            unsafe { core::ptr::write_volatile(p.add(i), 0) };
            i += 1;
        }
    }
}

impl<const N: usize> core::ops::Deref for Header<N> {
    type Target = [u8; N];
    fn deref(&self) -> &[u8; N] {
        &self.0
    }
}

/// SYN: CONTROL(SYN, V, 0) + SERVICE.
#[inline(always)]
pub fn syn_header(flow: &FlowState, service_id: &[u8; 32]) -> Header<68> {
    control_header::<68>(flow, sal::ControlFlags::SYN.bits(), flow.local_verno, 0, service_id)
}

/// Third ACK: CONTROL(ACK, V+1, Vp+1) + SERVICE.
#[inline(always)]
pub fn ack_header(flow: &FlowState, service_id: &[u8; 32]) -> Header<68> {
    control_header::<68>(
        flow,
        sal::ControlFlags::ACK.bits(),
        flow.local_verno.wrapping_add(1),
        flow.peer_verno.wrapping_add(1),
        service_id,
    )
}

/// SYN-ACK: CONTROL(SYN|ACK, V, Vp+1).
#[inline(always)]
pub fn synack_header(flow: &FlowState) -> Header<32> {
    let flags = (sal::ControlFlags::SYN | sal::ControlFlags::ACK).bits();
    control_header::<32>(flow, flags, flow.local_verno, flow.peer_verno.wrapping_add(1), &[0; 32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sal::{ControlFlags, SalPacket, SalRepr};

    fn flow(role_: u8, state_: u8) -> FlowState {
        let key =
            crate::maps::FlowKey { saddr: [10, 0, 0, 1], daddr: [10, 0, 0, 2], sport: [0x30, 0x39], dport: [0, 80] };
        let mut f = FlowState::ZERO;
        f.start(role_, state_, 0x0101, 1000, [1, 2, 3, 4, 5, 6, 7, 8], &key, 0);
        f.peer_nonce = [9; 8];
        f.peer_flow = 0x0202;
        f.peer_verno = 5000;
        f
    }

    #[test]
    fn only_pure_acks_skip_the_coalescer() {
        assert!(!through_coalescer(TCP_ACK, 0), "a pure ACK goes up in place");
        assert!(!through_coalescer(TCP_ACK | 0x08 /* PSH */, 0));
        assert!(through_coalescer(TCP_ACK, 1), "data is coalesced");
        assert!(through_coalescer(TCP_ACK | 0x08, 1448));
        for f in [TCP_SYN, TCP_SYN | TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK] {
            assert!(through_coalescer(f, 0), "flags {f:#04x} keep their place behind data");
        }
    }

    #[test]
    fn headers_parse_as_the_original_stack_builds_them() {
        let f = flow(role::CLIENT, state::SYN_SENT);
        let syn = syn_header(&f, &[0x50; 32]);
        let p = SalPacket::new_checked(&syn[..]).unwrap();
        let r = SalRepr::parse(&p).unwrap();
        assert_eq!(r.control.unwrap().flags, ControlFlags::SYN);
        assert_eq!((r.control.unwrap().verno, r.control.unwrap().ackno), (1000, 0));
        assert_eq!(r.service_id().unwrap().0, [0x50; 32]);
        let ack = SalRepr::parse(&SalPacket::new_checked(&ack_header(&f, &[0x50; 32])[..]).unwrap()).unwrap();
        assert_eq!((ack.control.unwrap().verno, ack.control.unwrap().ackno), (1001, 5001));
        let sa = SalRepr::parse(&SalPacket::new_checked(&synack_header(&f)[..]).unwrap()).unwrap();
        assert_eq!(sa.control.unwrap().flags, ControlFlags::SYN | ControlFlags::ACK);
        assert!(sa.services.is_empty());
        let dh = data_header(&f);
        let d = SalPacket::new_checked(&dh[..]).unwrap();
        assert!(d.verify_checksum());
        assert_eq!((d.src_flowid().0, d.dst_flowid().0, d.shl()), (0x0101, 0x0202, 3));
    }

    #[test]
    fn third_ack_form_on_pure_acks_and_retransmissions_only() {
        let mut f = flow(role::CLIENT, state::ACK_PENDING);
        f.snd_max = 101;
        assert_eq!(egress_form(&f, TCP_ACK, 0, 101), Form::Ack, "pure ACK");
        assert_eq!(egress_form(&f, TCP_ACK, 50, 151), Form::Data, "new data");
        assert_eq!(egress_form(&f, TCP_ACK, 50, 101), Form::Ack, "retransmitted data");
        f.state = state::ESTABLISHED;
        assert_eq!(egress_form(&f, TCP_ACK, 0, 101), Form::Data);
        let s = flow(role::SERVER, state::SYN_RCVD);
        assert_eq!(egress_form(&s, TCP_SYN | TCP_ACK, 0, 1), Form::SynAck);
        assert_eq!(egress_form(&flow(role::CLIENT, state::SYN_SENT), TCP_SYN, 0, 1), Form::Syn);
    }

    #[test]
    fn fin_tracking_reports_the_ack_of_our_fin_once() {
        let mut f = flow(role::CLIENT, state::ESTABLISHED);
        assert_eq!(note_egress(&mut f, TCP_FIN | TCP_ACK, 200), 0);
        assert_eq!(f.local_fin_ack, 201);
        assert_eq!(note_ingress(&mut f, TCP_ACK, 7, 200, 0), 0, "does not cover the FIN");
        assert_eq!(note_ingress(&mut f, TCP_ACK, 7, 201, 0), event::LOCAL_FIN_ACKED);
        assert_eq!(note_ingress(&mut f, TCP_ACK, 7, 201, 0), 0, "only once");
        assert_eq!(note_egress(&mut f, TCP_RST, 201), event::LOCAL_RST);
        // A reset counts only at exactly the expected sequence number.
        assert_eq!(note_ingress(&mut f, TCP_RST, 9, 0, 0), 0, "a guessed reset");
        assert_eq!(note_ingress(&mut f, TCP_RST, 5, 0, 0), 0, "an old one");
        assert_eq!(f.peer_next_seq, 7, "resets do not move it");
        assert_eq!(note_ingress(&mut f, TCP_RST, 7, 0, 0), event::PEER_RST);
    }

    #[test]
    fn only_a_bare_syn_on_a_connection_that_is_over_reopens_its_tuple() {
        let mut f = flow(role::CLIENT, state::ESTABLISHED);
        let syn = TCP_SYN;
        assert!(!reopens(&f, syn), "a SYN into a live connection stays in it");
        // Our FIN, acknowledged: half-closed, the peer may still send.
        note_egress(&mut f, TCP_FIN | TCP_ACK, 200);
        note_ingress(&mut f, TCP_ACK, 7, 201, 0);
        assert!(!reopens(&f, syn), "half-closed");
        // The peer's FIN (a RST with FIN set is a reset, not a FIN).
        let mut g = f;
        note_ingress(&mut g, TCP_RST | TCP_FIN, 3, 201, 0);
        assert_eq!(g.flags & flag::PEER_FIN, 0);
        note_ingress(&mut f, TCP_FIN | TCP_ACK, 7, 201, 0);
        assert!(reopens(&f, syn), "both FINs: over");
        for other in [TCP_SYN | TCP_ACK, TCP_SYN | TCP_RST, TCP_ACK, TCP_FIN | TCP_ACK] {
            assert!(!reopens(&f, other), "flags {other:#x}");
        }
        // The peer's FIN alone is not enough either.
        let mut p = flow(role::CLIENT, state::ESTABLISHED);
        note_ingress(&mut p, TCP_FIN | TCP_ACK, 7, 1, 0);
        assert!(!reopens(&p, syn));
        // A reset either way ends it.
        for bit in [flag::LOCAL_RST, flag::PEER_RST] {
            let mut r = flow(role::CLIENT, state::ESTABLISHED);
            r.flags |= bit;
            assert!(reopens(&r, syn));
        }
        // A server's flow is never reopened by its own side (it does not
        // send SYNs; its peer's SYN names a new flow ID anyway).
        let mut s = flow(role::SERVER, state::ESTABLISHED);
        s.flags |= flag::LOCAL_RST;
        assert!(!reopens(&s, syn));
    }

    #[test]
    fn the_peers_next_sequence_never_moves_back() {
        let mut f = flow(role::CLIENT, state::SYN_SENT);
        note_ingress(&mut f, TCP_SYN | TCP_ACK, 0xffff_fff0, 1, 0);
        assert_eq!(f.peer_next_seq, 0xffff_fff1);
        note_ingress(&mut f, TCP_ACK, 0xffff_fff1, 1, 100);
        assert_eq!(f.peer_next_seq, 0x55, "across the wrap");
        // A zero-window probe (one below the window) and a retransmission.
        note_ingress(&mut f, TCP_ACK, 0x54, 1, 0);
        note_ingress(&mut f, TCP_ACK, 0x10, 1, 20);
        assert_eq!(f.peer_next_seq, 0x55);
    }

    #[test]
    fn a_synack_must_acknowledge_our_syn_and_is_learnt_once() {
        let mut f = flow(role::CLIENT, state::SYN_SENT);
        assert_eq!(accept_synack(&mut f, 7, 900, 1000, [3; 8]), None, "ackno must be V+1");
        assert_eq!(accept_synack(&mut f, 7, 900, 1001, [3; 8]), Some(true));
        assert_eq!((f.peer_flow, f.peer_verno, f.peer_nonce, f.state), (7, 900, [3; 8], state::ACK_PENDING));
        assert_eq!(accept_synack(&mut f, 8, 901, 1001, [4; 8]), Some(false), "a repeat changes nothing");
        assert_eq!(f.peer_flow, 7);
        assert_eq!(accept_synack(&mut flow(role::SERVER, state::SYN_RCVD), 7, 900, 1001, [3; 8]), None);
    }

    /// The word sum equals RFC 1071's, taken the textbook way, for every
    /// size the engine sums (and the odd ones it does not), on random and
    /// on all-ones headers (where the end-around carries pile up).
    #[test]
    fn the_word_sum_is_rfc_1071s_at_every_size() {
        fn check<const N: usize>(seed: u64) {
            let mut h = [0u8; N];
            let mut x = seed;
            for b in h.iter_mut() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *b = (x >> 56) as u8;
            }
            for bytes in [h, [0xff; N], [0; N]] {
                let reference = checksum::fold(checksum::sum(&bytes));
                assert_eq!(sum_words(&bytes), reference, "{N} bytes {bytes:02x?}");
            }
        }
        for seed in 0..200 {
            check::<1>(seed);
            check::<2>(seed);
            check::<3>(seed);
            check::<12>(seed);
            check::<20>(seed);
            check::<21>(seed);
            check::<22>(seed);
            check::<36>(seed);
            check::<68>(seed);
            check::<256>(seed);
        }
    }

    #[test]
    fn sequence_comparisons_wrap() {
        assert!(seq_after(5, u32::MAX - 5));
        assert!(!seq_after(u32::MAX - 5, 5));
    }
}
