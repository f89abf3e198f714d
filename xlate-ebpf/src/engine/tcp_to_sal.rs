//! TCP → SAL: a segment of a known flow (from a legacy client at the
//! gateway, from the local TCP in host mode) becomes a SAL packet in place.

use xlate_common::{
    flow::{flag, flow_clock, state, Counter, TupleEntry},
    translate::{self, Form, TCP_ACK},
    wire::{ipv4::field as ipf, tcp::field as tcpf, IPPROTO_SAL},
};

use super::clamp_syn_mss;
use super::flows::prove;
use super::frame::{Frame, TcpRewrite, IP_AT, L4_AT};
use super::ipv4::{self, addr, be16, be32};
use super::link::LinkLayer;
use super::maps::{count, flow_at, notify, now};
use super::verdict::Exit;

/// What the shell needs to know of a translated segment: where its TCP
/// header starts now (behind the SAL header).
#[derive(Clone, Copy)]
pub(crate) struct ToSal {
    pub tcp_at: usize,
}

impl ToSal {
    #[inline(always)]
    pub fn pack(self) -> u32 {
        self.tcp_at as u32
    }

    #[inline(always)]
    pub fn unpack(v: u32) -> ToSal {
        ToSal { tcp_at: (v & 0xffff) as usize }
    }
}

/// Which service a TCP destination (address, port) is, in a shell's
/// configuration: the translator's services, host mode's `--connect`
/// entries. Looked up for the few segments that carry it (a client's SYN
/// and third ACK) instead of kept in every flow.
pub(crate) trait Services {
    fn service_id(addr: [u8; 4], port: [u8; 2]) -> Option<&'static [u8; 32]>;
}

/// Rewrites the TCP segment at [`L4_AT`], whose 4-tuple leads to `tuple`
/// (its flow and SAL addresses), into a SAL packet
/// to the flow's peer: bookkeeping first, then ports zeroed (SAL carries
/// the flow IDs), addresses and protocol, and the SAL header in front.
#[inline(always)]
pub(crate) fn tcp_to_sal<F: Frame, S: Services, L: LinkLayer>(f: &F, tuple: &TupleEntry) -> Result<ToSal, Exit> {
    let ip: [u8; 20] = f.load(IP_AT)?;
    let tcp: [u8; 20] = f.load(L4_AT)?;
    let (id, addrs) = (tuple.flow, tuple.addrs);
    let Some(flow) = flow_at(tuple.slot, id) else {
        return Err(Exit::Pass(Counter::PassFlowFreed));
    };
    // SAFETY: map value, valid while we run (RCU).
    let flow = unsafe { &mut *flow };

    let (saddr, daddr) = (addr(&ip, ipf::SRC), addr(&ip, ipf::DST));
    let flags = tcp[tcpf::FLAGS];
    let tot_len = be16(&ip, ipf::TOTAL_LEN);
    let doff = u16::from(tcp[tcpf::DATA_OFF] >> 4) * 4;
    let tcp_len = tot_len.wrapping_sub(20);
    let payload = u32::from(tcp_len.wrapping_sub(doff));
    let seq_end = be32(&tcp, tcpf::SEQ).wrapping_add(payload);
    let form = translate::egress_form(flow, flags, payload, seq_end);
    // The SYN and the third ACK name the service; one that is gone (taken
    // out of the configuration mid-handshake) ends the handshake here,
    // before anything of the flow or the frame changes.
    let sid = match form {
        Form::Syn | Form::Ack => match S::service_id(flow.tcp_peer_addr, flow.tcp_peer_port) {
            Some(sid) => Some(sid),
            None => return Err(Exit::Drop(Counter::DropUnknownService)),
        },
        _ => None,
    };
    // A legacy client that acknowledges everything the instance sent (its
    // SYN-ACK first of all) has seen it: a spoofed source cannot.
    if flow.flags & flag::PROVEN == 0
        && flags & TCP_ACK != 0
        && (flow.state == state::ACK_PENDING || flow.state == state::ESTABLISHED)
        && be32(&tcp, tcpf::ACK) == flow.peer_next_seq
    {
        prove(flow);
    }
    let ev = translate::note_egress(flow, flags, seq_end);
    if ev != 0 {
        notify(ev, id);
    }
    flow.last_seen = flow_clock::ticks(now());

    let old_ports = addr(&tcp, tcpf::SRC_PORT);
    f.store(L4_AT + tcpf::SRC_PORT, &[0u8; 4])?;
    let mss = clamp_syn_mss(f, L4_AT, flags, doff)?;
    let rw = TcpRewrite {
        src: (saddr, addrs.local_ip),
        dst: (daddr, addrs.peer_ip),
        ports: (old_ports, [0; 4]),
        mss,
        tcp_len,
    };
    f.fix_tcp_checksum(L4_AT, &rw)?;
    let room = form.header_len();
    f.grow_l4(
        room,
        &ipv4::rewritten(&ip, addrs.local_ip, addrs.peer_ip, IPPROTO_SAL, tot_len.wrapping_add(room as u16)),
    )?;
    match (form, sid) {
        (Form::Syn, Some(sid)) => {
            f.store(L4_AT, &translate::syn_header(flow, sid).0)?;
            count(Counter::EgressSyn);
        }
        (Form::Ack, Some(sid)) => f.store(L4_AT, &translate::ack_header(flow, sid).0)?,
        (Form::SynAck, _) => f.store(L4_AT, &translate::synack_header(flow).0)?,
        (Form::Data, _) => f.store(L4_AT, &translate::data_header(flow))?,
        // (Never: SYN and ACK forms have their service ID.)
        _ => return Err(Exit::Fault),
    }
    L::sent(f, flow, form == Form::Syn)?;
    Ok(ToSal { tcp_at: L4_AT + room })
}
