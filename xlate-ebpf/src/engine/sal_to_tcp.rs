//! SAL → TCP: a SAL packet is checked against the receiver rules, its flow
//! found (or, for a SYN to a served service, created), and the TCP segment
//! it carries handed on with the TCP side's addresses and ports.
//! SAL-only control packets (FIN, ACK, RST, RSYN) go untouched to the
//! agent's raw socket.

use xlate_common::{
    flow::{event, flow_clock, state, Counter, FlowState},
    translate,
    wire::{checksum, ipv4::field as ipf, sal, tcp::field as tcpf, IPPROTO_TCP},
};

use super::clamp_syn_mss;
use super::flows::{prove, server_flow, synack};
use super::frame::{Frame, TcpRewrite, IP_AT, L4_AT};
use super::ipv4::{self, addr, be16, be32};
use super::link::LinkLayer;
use super::maps::{count, flow_ptr, notify, notify_quietly, now, CONFIG};
use super::sal_rx::{self, copy_n, opaque, walk_extensions, EXTS, SCRATCH, SCRATCH_LEN};
use super::verdict::Exit;

/// Translates the SAL packet at [`L4_AT`]; returns its flow's ID.
#[inline(always)]
pub(crate) fn sal_to_tcp<F: Frame, L: LinkLayer>(f: &F) -> Result<u32, Exit> {
    let ip: [u8; 20] = f.load(IP_AT)?;
    let tot_len = usize::from(be16(&ip, ipf::TOTAL_LEN));
    if tot_len < 20 + sal::BASE_LEN || IP_AT + tot_len > f.len() {
        return Err(Exit::Drop(Counter::DropBadLength));
    }
    let sal_len = tot_len - 20;
    let hl = usize::from(f.load::<u8>(L4_AT + sal::field::SHL)?) * 4;
    if hl < sal::BASE_LEN || hl > sal_len || hl > SCRATCH_LEN {
        return Err(Exit::Drop(Counter::DropBadLength));
    }
    // The extensions, for a header that has any: `None` for the base
    // header alone, a data packet's, which touches neither per-CPU buffer.
    let (protocol, src_flow, dst_flow, exts) = if hl == sal::BASE_LEN {
        // A data packet's header is the base alone: summed and read in
        // place, with no helper call and no extension to walk.
        let base: [u8; sal::BASE_LEN] = f.load(L4_AT)?;
        if translate::sum_words(&base) != 0xffff {
            return Err(Exit::Drop(Counter::DropBadChecksum));
        }
        let field = |at| be32(&base, at);
        (base[sal::field::PROTOCOL], field(sal::field::SRC_FLOWID), field(sal::field::DST_FLOWID), None)
    } else {
        let Some(buf) = SCRATCH.get_ptr_mut(0) else {
            return Err(Exit::Fault);
        };
        // SAFETY: this CPU's scratch slot.
        let buf = unsafe { &mut *buf };
        let Some(ext) = EXTS.get_ptr_mut(0) else {
            return Err(Exit::Fault);
        };
        // SAFETY: this CPU's slot.
        let ext = unsafe { &mut *ext };
        // hl is a multiple of 4 in [BASE_LEN, SCRATCH_LEN] (checked
        // above), so n == hl; written so that every verifier sees n in
        // [4, 256]. A range check after a plain mask leaves 0 possible to
        // the 6.1 and 6.12 verifiers (LLVM tests a copy of the register),
        // and a length the helper may see as 0 is refused.
        let n = ((opaque(hl).wrapping_sub(4)) & (SCRATCH_LEN - 4)) + 4;
        f.load_bytes(L4_AT, buf, n)?;
        // SAFETY: sums n bytes of our own buffer; n is a multiple of 4.
        let sum = unsafe {
            aya_ebpf::helpers::bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr() as *mut u32, n as u32, 0)
        } as u32;
        if checksum::fold(sum) != 0xffff {
            return Err(Exit::Drop(Counter::DropBadChecksum));
        }
        if !walk_extensions(buf, hl, ext) {
            return Err(Exit::Drop(Counter::DropBadExtension));
        }
        let field = |at| sal_rx::be32(buf, at);
        (buf[sal::field::PROTOCOL], field(sal::field::SRC_FLOWID), field(sal::field::DST_FLOWID), Some((buf, ext)))
    };
    // Only a header with a CONTROL extension is a handshake's.
    let control = exts.filter(|(_, ext)| ext.has_control != 0);
    if sal_len == hl {
        return Err(Exit::Pass(Counter::IngressToAgent));
    }
    // A transport shorter than a TCP header is refused here, before any
    // flow state moves: found later (when the header is read), the packet
    // would have made or moved its flow and then been retried by the next
    // hook.
    if sal_len - hl < 20 {
        return Err(Exit::Drop(Counter::DropBadLength));
    }
    if protocol != IPPROTO_TCP {
        // Serval UDP is not translated (yet).
        return Err(Exit::Drop(Counter::DropBadExtension));
    }
    let ip_src = addr(&ip, ipf::SRC);
    let syn = sal::ControlFlags::SYN.bits();
    let ack = sal::ControlFlags::ACK.bits();

    let (id, flow) = if let Some((buf, ext)) = control.as_ref().filter(|(_, ext)| ext.flags == syn) {
        if ext.services == 0 {
            return Err(Exit::Drop(Counter::DropBadExtension));
        }
        // A frame to the link broadcast MAC reaches every host on the
        // link. Its SYN is for all of them only when its IP destination is
        // a broadcast address; one sent to a host's own address (a route
        // target the sender has no MAC for yet) is that host's alone, and
        // another host answering it would start a second, competing flow.
        // So is a frame to another host's MAC, which a switch floods to
        // every port while it has not learnt (or has forgotten, the host
        // being gone) where that MAC is: the kernel's stack drops it as
        // PACKET_OTHERHOST, but XDP and TC see it first. (A shell that
        // gives no MAC, the translator's, serves no SYNs.)
        let Some(cfg) = CONFIG.get(0) else {
            return Err(Exit::Fault);
        };
        let dst = addr(&ip, ipf::DST);
        let dst_mac = f.load::<[u8; 6]>(0)?;
        let another_host = if dst_mac == [0xff; 6] {
            dst != cfg.addr && dst != cfg.broadcast && dst != [0xff; 4]
        } else {
            cfg.mac != [0; 6] && dst_mac != cfg.mac
        };
        if another_host {
            return Err(Exit::Drop(Counter::DropSynForAnotherHost));
        }
        let sid = copy_n::<32>(buf, ext.service_at as usize);
        count(Counter::IngressSyn);
        let id = server_flow(&sid, ip_src, src_flow, ext).map_err(Exit::Drop)?;
        let Some(flow) = flow_ptr(id) else {
            return Err(Exit::Drop(Counter::DropUnknownFlow));
        };
        (id, flow)
    } else {
        let Some(flow_ptr) = flow_ptr(dst_flow) else {
            return Err(Exit::Drop(Counter::DropUnknownFlow));
        };
        // SAFETY: map value, valid while we run.
        let flow = unsafe { &mut *flow_ptr };
        if let Some((_, ext)) = control {
            if ext.flags == syn | ack {
                if !synack(flow, ext, src_flow, ip_src) {
                    return Err(Exit::Drop(Counter::DropBadAck));
                }
                count(Counter::IngressSynAck);
            } else if ext.flags == ack {
                // The third ACK (with SERVICE) or a repeat of it.
                if ext.nonce != flow.peer_nonce {
                    return Err(Exit::Drop(Counter::DropBadNonce));
                }
                // It carries our nonce: the client got our SYN-ACK.
                prove(flow);
                if flow.state == state::SYN_RCVD {
                    flow.state = state::ESTABLISHED;
                    notify_quietly(event::ESTABLISHED, dst_flow);
                }
            } else {
                // Control with a transport that is neither handshake form.
                return Err(Exit::Drop(Counter::DropBadExtension));
            }
        } else if flow.state == state::ACK_PENDING {
            // The server sent data: it knows the flow.
            flow.state = state::ESTABLISHED;
            notify_quietly(event::ESTABLISHED, dst_flow);
        }
        (dst_flow, flow_ptr)
    };
    // SAFETY: map value, valid while we run (RCU); looked up once.
    strip::<F, L>(f, id, unsafe { &mut *flow }, &ip, hl)?;
    Ok(id)
}

/// Takes the SAL header (`hl` bytes) away and restores the TCP side's
/// view of flow `id` (its state `flow`): its addresses and ports.
#[inline(always)]
fn strip<F: Frame, L: LinkLayer>(f: &F, id: u32, flow: &mut FlowState, ip: &[u8; 20], hl: usize) -> Result<(), Exit> {
    let hl = opaque(hl) & 0x3fc;
    let tcp_at = L4_AT + hl;
    let tcp: [u8; 20] = f.load(tcp_at)?;
    let flags = tcp[tcpf::FLAGS];
    let doff = u16::from(tcp[tcpf::DATA_OFF] >> 4) * 4;
    let tcp_len = be16(ip, ipf::TOTAL_LEN).wrapping_sub(20 + hl as u16);
    let payload = u32::from(tcp_len.wrapping_sub(doff));
    let ev = translate::note_ingress(flow, flags, be32(&tcp, tcpf::SEQ), be32(&tcp, tcpf::ACK), payload);
    if ev != 0 {
        notify(ev, id);
    }
    flow.last_seen = flow_clock::ticks(now());

    let mut ports = [0u8; 4];
    ports[..2].copy_from_slice(&flow.tcp_peer_port);
    ports[2..].copy_from_slice(&flow.tcp_local_port);
    f.store(tcp_at + tcpf::SRC_PORT, &ports)?;
    let mss = clamp_syn_mss(f, tcp_at, flags, doff)?;
    let rw = TcpRewrite {
        src: (addr(ip, ipf::SRC), flow.tcp_peer_addr),
        dst: (addr(ip, ipf::DST), flow.tcp_local_addr),
        ports: (addr(&tcp, tcpf::SRC_PORT), ports),
        mss,
        tcp_len,
    };
    f.fix_tcp_checksum(tcp_at, &rw)?;
    f.shrink_l4(
        hl,
        &ipv4::rewritten(ip, flow.tcp_peer_addr, flow.tcp_local_addr, IPPROTO_TCP, tcp_len.wrapping_add(20)),
    )?;
    L::received(f, flow)?;
    Ok(())
}
