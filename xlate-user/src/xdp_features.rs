//! Which devices can transmit frames redirected from XDP, read from the
//! kernel's `netdev` generic-netlink family (`xdp-features`, Linux 6.3+).
//!
//! A redirected frame is handed to the egress device's `ndo_xdp_xmit`. A
//! device that cannot take it drops it silently: a veth whose peer has
//! neither an XDP program nor GRO (NAPI) is the everyday case, and the
//! kernel says so by clearing `ndo-xmit` in the veth's xdp-features (it
//! re-evaluates them whenever the peer changes, even in another network
//! namespace). The translator redirects only to devices that advertise it.

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// `NETDEV_XDP_ACT_NDO_XMIT`: the device implements ndo_xdp_xmit.
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// A `netdev` family message: a command and its attributes.
#[derive(Debug, Clone)]
struct Netdev {
    cmd: u8,
    nlas: Vec<DefaultNla>,
}

impl GenlFamily for Netdev {
    fn family_name() -> &'static str {
        "netdev"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for Netdev {
    fn buffer_len(&self) -> usize {
        self.nlas.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.nlas.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Netdev {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut nlas = Vec::new();
        for nla in NlasIterator::new(buf) {
            let nla: NlaBuffer<&[u8]> = nla?;
            nlas.push(DefaultNla::parse(&nla)?);
        }
        Ok(Netdev { cmd: header.cmd, nlas })
    }
}

/// One device's XDP capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub ifindex: u32,
    /// `NETDEV_XDP_ACT_*` bits.
    pub features: u64,
}

impl Device {
    /// Frames redirected from XDP to this device are transmitted.
    pub fn accepts_redirect(&self) -> bool {
        self.features & XDP_ACT_NDO_XMIT != 0
    }
}

fn socket() -> Result<Socket> {
    let mut s = Socket::new(NETLINK_GENERIC).context("opening a generic netlink socket")?;
    s.bind_auto().context("binding the generic netlink socket")?;
    s.connect(&SocketAddr::new(0, 0)).context("connecting the generic netlink socket")?;
    Ok(s)
}

/// Sends one request and collects every reply message until the dump ends
/// (or the single answer of a plain request arrived).
fn request<F>(s: &Socket, mut msg: NetlinkMessage<GenlMessage<F>>, dump: bool) -> Result<Vec<GenlMessage<F>>>
where
    F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
{
    msg.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    msg.finalize();
    let mut tx = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut tx);
    s.send(&tx, 0).context("sending a netlink request")?;
    let mut out = Vec::new();
    loop {
        let mut rx = Vec::with_capacity(64 * 1024);
        let n = s.recv(&mut rx, 0).context("reading the netlink reply")?;
        let mut off = 0;
        while off < n {
            let m = NetlinkMessage::<GenlMessage<F>>::deserialize(&rx[off..n])
                .map_err(|e| anyhow!("malformed netlink reply: {e}"))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => bail!("netlink error: {e}"),
                NetlinkPayload::InnerMessage(g) => {
                    out.push(g);
                    if !dump {
                        return Ok(out);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

fn family_id(s: &Socket) -> Result<u16> {
    let mut g = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("netdev".into())],
    });
    g.finalize();
    let replies = request(s, NetlinkMessage::from(g), false)
        .context("looking up the netdev netlink family (needs Linux 6.3 or later)")?;
    replies
        .iter()
        .flat_map(|r| r.payload.nlas.iter())
        .find_map(|a| if let GenlCtrlAttrs::FamilyId(id) = a { Some(*id) } else { None })
        .ok_or_else(|| anyhow!("the kernel has no netdev netlink family (needs Linux 6.3 or later)"))
}

/// Every device of this network namespace with its xdp-features.
pub fn devices() -> Result<Vec<Device>> {
    let s = socket()?;
    let id = family_id(&s)?;
    let mut g = GenlMessage::from_payload(Netdev { cmd: NETDEV_CMD_DEV_GET, nlas: vec![] });
    g.set_resolved_family_id(id);
    g.finalize();
    let replies = request(&s, NetlinkMessage::from(g), true)?;
    let mut out = Vec::new();
    for r in replies {
        let (mut ifindex, mut features) = (None, 0u64);
        for a in &r.payload.nlas {
            let mut v = vec![0u8; a.value_len()];
            a.emit_value(&mut v);
            match a.kind() {
                NETDEV_A_DEV_IFINDEX if v.len() == 4 => ifindex = Some(u32::from_ne_bytes(v[..4].try_into()?)),
                NETDEV_A_DEV_XDP_FEATURES if v.len() == 8 => features = u64::from_ne_bytes(v[..8].try_into()?),
                _ => {}
            }
        }
        if let Some(ifindex) = ifindex {
            out.push(Device { ifindex, features });
        }
    }
    Ok(out)
}
