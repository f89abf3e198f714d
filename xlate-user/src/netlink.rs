//! What the agent asks of and changes in the network configuration, over
//! rtnetlink (no `ip` binary, no scraped text): links, IPv4 addresses,
//! veth pairs, host routes and permanent neighbour entries; and the one
//! offload change the segmenter needs, through the ethtool ioctl (the
//! ethtool netlink crates only read features).
//!
//! Each call opens its own rtnetlink connection and runs on the agent's
//! runtime (`agent::runtime`), so set-up and teardown (including `Drop`s)
//! can call them outside the event loop.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Runs `f` with a fresh rtnetlink connection, outside the event loop.
fn with_handle<T, F, Fut>(what: &str, f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, rtnetlink::Error>>,
{
    crate::agent::runtime::block_on(request(what, f))
}

/// Runs `f` with a fresh rtnetlink connection, from inside the event loop
/// (awaited).
async fn request<T, F, Fut>(what: &str, f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, rtnetlink::Error>>,
{
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    // The connection is driven beside the request and dropped with it:
    // nothing is left spawned on the runtime.
    tokio::select! {
        r = f(handle) => r.map_err(|e| anyhow!("{what}: {e}")),
        _ = conn => Err(anyhow!("{what}: the rtnetlink connection ended")),
    }
}

/// Every IPv4 address of this network namespace, on any link.
pub async fn all_ipv4_addresses() -> Result<Vec<Ipv4Addr>> {
    request("reading addresses", |h| async move {
        let mut out = Vec::new();
        let mut addrs = h.address().get().execute();
        while let Some(m) = addrs.try_next().await? {
            for a in m.attributes {
                if let AddressAttribute::Local(IpAddr::V4(v)) = a {
                    out.push(v);
                }
            }
        }
        Ok(out)
    })
    .await
}

/// Adds `addr/32` to link `index` (an alias).
pub async fn add_alias(addr: Ipv4Addr, index: u32) -> Result<()> {
    request(
        &format!("adding {addr}/32"),
        |h| async move { h.address().add(index, IpAddr::V4(addr), 32).execute().await },
    )
    .await
}

/// Removes `addr/32` from link `index`, if it is there.
pub async fn delete_alias(addr: Ipv4Addr, index: u32) -> Result<()> {
    request(&format!("removing {addr}/32"), |h| async move {
        let mut addrs = h.address().get().set_link_index_filter(index).execute();
        while let Some(m) = addrs.try_next().await? {
            let ours = m.header.prefix_len == 32
                && m.attributes.iter().any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(v)) if *v == addr));
            if ours {
                return h.address().del(m).execute().await;
            }
        }
        Ok(())
    })
    .await
}

/// [`delete_alias`], outside the event loop.
pub fn delete_alias_blocking(addr: Ipv4Addr, index: u32) -> Result<()> {
    crate::agent::runtime::block_on(delete_alias(addr, index))
}

/// A link's index, Ethernet address, MTU and whether it is a veth.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub veth: bool,
}

/// The link named `name` in this network namespace, if there is one.
pub fn link(name: &str) -> Result<Option<Link>> {
    let name = name.to_string();
    with_handle("reading links", |h| async move {
        let mut links = h.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(m)) => {
                let mut l = Link { index: m.header.index, mac: None, mtu: 0, veth: false };
                for a in m.attributes {
                    match a {
                        LinkAttribute::Address(b) if b.len() == 6 => l.mac = b.try_into().ok(),
                        LinkAttribute::Mtu(m) => l.mtu = m,
                        LinkAttribute::LinkInfo(infos) => {
                            l.veth = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                        }
                        _ => {}
                    }
                }
                Ok(Some(l))
            }
            Ok(None) => Ok(None),
            // No such device: the kernel answers ENODEV.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    })
}

/// An IPv4 address of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Address {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub broadcast: Option<Ipv4Addr>,
}

/// The IPv4 addresses of link `index`, in the kernel's order (primary first).
pub fn ipv4_addresses(index: u32) -> Result<Vec<Ipv4Address>> {
    with_handle("reading addresses", |h| async move {
        let mut out = Vec::new();
        let mut addrs = h.address().get().set_link_index_filter(index).execute();
        while let Some(m) = addrs.try_next().await? {
            if m.header.family != AddressFamily::Inet {
                continue;
            }
            let (mut local, mut broadcast) = (None, None);
            for a in m.attributes {
                match a {
                    AddressAttribute::Local(IpAddr::V4(v)) => local = Some(v),
                    AddressAttribute::Address(IpAddr::V4(v)) if local.is_none() => local = Some(v),
                    AddressAttribute::Broadcast(v) => broadcast = Some(v),
                    _ => {}
                }
            }
            if let Some(addr) = local {
                out.push(Ipv4Address { addr, prefix_len: m.header.prefix_len, broadcast });
            }
        }
        Ok(out)
    })
}

/// Creates the veth pair `near`/`far` with `mtu`, both up; their indices.
pub fn add_veth_pair(near: &str, far: &str, mtu: u32) -> Result<(u32, u32)> {
    let (n, f) = (near.to_string(), far.to_string());
    with_handle("creating a veth pair", |h| async move {
        h.link().add(LinkVeth::new(&n, &f).mtu(mtu).build()).execute().await?;
        Ok(())
    })?;
    let index = |name: &str| -> Result<u32> {
        Ok(link(name)?.ok_or_else(|| anyhow!("{name} vanished right after it was created"))?.index)
    };
    let (ni, fi) = (index(near)?, index(far)?);
    with_handle("setting the veth pair up", |h| async move {
        for i in [ni, fi] {
            h.link().set(LinkUnspec::new_with_index(i).mtu(mtu).up().build()).execute().await?;
        }
        Ok(())
    })?;
    Ok((ni, fi))
}

/// Deletes link `name` if it exists.
pub fn delete_link(name: &str) -> Result<()> {
    let Some(l) = link(name)? else { return Ok(()) };
    with_handle("deleting a link", |h| async move { h.link().del(l.index).execute().await })
}

fn host_route(addr: Ipv4Addr, index: u32) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(addr, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .build()
}

/// `ip route replace ADDR/32 dev IF`.
pub fn replace_host_route(addr: Ipv4Addr, index: u32) -> Result<()> {
    with_handle(
        "adding a host route",
        |h| async move { h.route().add(host_route(addr, index)).replace().execute().await },
    )
}

/// `ip route del ADDR/32 dev IF`.
pub fn delete_host_route(addr: Ipv4Addr, index: u32) -> Result<()> {
    with_handle("deleting a host route", |h| async move { h.route().del(host_route(addr, index)).execute().await })
}

/// `ip neigh replace ADDR lladdr MAC dev IF nud permanent`.
pub fn replace_permanent_neighbour(addr: Ipv4Addr, mac: [u8; 6], index: u32) -> Result<()> {
    with_handle("adding a neighbour entry", |h| async move {
        h.neighbours().add(index, IpAddr::V4(addr)).link_layer_address(&mac).replace().execute().await
    })
}

/// `ip neigh del ADDR dev IF`.
pub fn delete_neighbour(addr: Ipv4Addr, index: u32) -> Result<()> {
    with_handle("deleting a neighbour entry", |h| async move {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)));
        h.neighbours().del(m).execute().await
    })
}

/// Legacy single-value ethtool commands (SIOCETHTOOL), still mapped by
/// the kernel onto the device's features.
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGSO: u32 = 0x24;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// One ethtool command with a single value on `name`: the value after it.
fn ethtool_value(name: &str, cmd: u32, data: u32) -> Result<u32> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    if name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} is too long");
    }
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut v = EthtoolValue { cmd, data };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut v, _pad: [0; 16] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket, and an ifreq whose data points at an
    // ethtool_value that outlives the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req as *mut IfReq) };
    if r != 0 {
        bail!("ethtool command {cmd:#x} on {name}: {}", std::io::Error::last_os_error());
    }
    Ok(v.data)
}

/// Switches transmit checksum offload, TSO and GSO off on `name` (what
/// `ethtool -K NAME tx off tso off gso off` does).
pub fn disable_tx_offloads(name: &str) -> Result<()> {
    for cmd in [ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO] {
        ethtool_value(name, cmd, 0)?;
    }
    Ok(())
}

/// `ethtool -K NAME gro on|off`.
pub fn set_gro(name: &str, on: bool) -> Result<()> {
    ethtool_value(name, ETHTOOL_SGRO, u32::from(on)).map(|_| ())
}

/// `ethtool -K NAME tso off`.
pub fn disable_tso(name: &str) -> Result<()> {
    ethtool_value(name, ETHTOOL_STSO, 0).map(|_| ())
}

/// `ip link set dev INDEX address MAC`.
pub fn set_mac(index: u32, mac: [u8; 6]) -> Result<()> {
    with_handle("setting a link address", |h| async move {
        h.link().set(LinkUnspec::new_with_index(index).address(mac.to_vec()).build()).execute().await
    })
}

/// Whether GRO is on for `name` (`ethtool -k NAME`'s generic-receive-offload).
pub fn gro_enabled(name: &str) -> Result<bool> {
    Ok(ethtool_value(name, ETHTOOL_GGRO, 0)? != 0)
}
