//! Facts about a network interface and the few changes host mode makes
//! around it (its segmenter veth pair, a route and a neighbour entry per
//! `--connect` address), made over netlink (see `netlink`) and undone on
//! exit.

use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Context, Result};

use crate::netlink;

/// What host mode needs to know about its interface.
#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub broadcast: Ipv4Addr,
    /// Every IPv4 address on the interface.
    pub addrs: Vec<Ipv4Addr>,
    /// A veth (one end of a virtual pair).
    pub veth: bool,
}

impl Interface {
    pub fn lookup(name: &str) -> Result<Self> {
        let link =
            netlink::link(name)?.ok_or_else(|| anyhow!("no interface named {name:?} in this network namespace"))?;
        let mac = link.mac.ok_or_else(|| {
            anyhow!("interface {name} has no Ethernet address (host mode needs an Ethernet-like link)")
        })?;
        let v4 = netlink::ipv4_addresses(link.index)?;
        let first = v4.first().ok_or_else(|| anyhow!("interface {name} has no IPv4 address"))?;
        Ok(Interface {
            name: name.to_string(),
            index: link.index,
            mac,
            mtu: link.mtu,
            addr: first.addr,
            prefix_len: first.prefix_len,
            broadcast: first.broadcast.unwrap_or_else(|| directed_broadcast(first.addr, first.prefix_len)),
            addrs: v4.iter().map(|a| a.addr).collect(),
            veth: link.veth,
        })
    }

    /// Largest TCP MSS whose segment fits the MTU with IPv4 (20), SAL
    /// (12) and TCP (20) headers: 1448 at MTU 1500.
    pub fn max_mss(&self) -> u16 {
        (self.mtu.saturating_sub(52)).min(u32::from(u16::MAX)) as u16
    }

    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix_len)) };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

pub fn directed_broadcast(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let host = if prefix_len >= 32 { 0 } else { u32::MAX >> prefix_len };
    Ipv4Addr::from(u32::from(addr) | host)
}

/// The segmenter: a veth pair of host mode's own, with segmentation and
/// checksum offload off on its near end. Linux TCP builds large (GSO)
/// packets and leaves their checksums to offload; SAL has no segmentation
/// handler in the kernel and Serval peers need complete checksums. The
/// egress program therefore sends Serval flows' packets into the pair, where
/// the kernel segments and sums them in software on the way out, and
/// translates the segments as they come out of the far end (see
/// `xlate_host_segmented`). The interface itself keeps its offloads, so
/// other traffic runs at full speed. It stays when the agent stops (the
/// datapath goes on); stopping for good deletes it (`agent::resident`).
pub struct Segmenter {
    pub near: String,
    pub near_index: u32,
    pub far: String,
    pub far_index: u32,
}

impl Segmenter {
    /// The pair an earlier run left (its programs still use it), or a new one.
    pub fn adopt_or_create(iface: &Interface) -> Result<Self> {
        let (near, far) = (format!("xlsg{}a", iface.index), format!("xlsg{}b", iface.index));
        if let (Some(n), Some(f)) = (netlink::link(&near)?, netlink::link(&far)?) {
            if n.mtu == iface.mtu {
                return Ok(Segmenter { near_index: n.index, far_index: f.index, near, far });
            }
            netlink::delete_link(&near)?;
        }
        let (near_index, far_index) =
            netlink::add_veth_pair(&near, &far, iface.mtu).context("creating the segmenter veth pair")?;
        let seg = Segmenter { near_index, far_index, near, far };
        netlink::disable_tx_offloads(&seg.near).context("switching the segmenter's offloads off")?;
        for dev in [&seg.near, &seg.far] {
            // No addresses, no IPv6 chatter: only Serval segments cross it.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
        }
        Ok(seg)
    }

    /// Makes the pair carry received segments too, the other way: SAL
    /// translated at TC ingress has passed GRO already (the kernel has no
    /// GRO for protocol 144), so each segment would climb the stack alone.
    /// Sent out of the far end instead, it arrives on the near end through
    /// veth's NAPI and GRO, coalesced like any TCP, and is delivered
    /// locally from there. For that:
    /// - the near end has GRO on (veth then receives through NAPI) and the
    ///   interface's MAC (the frames keep it, and TCP takes only frames
    ///   addressed to the host);
    /// - the far end has TSO off (veth passes to GRO only what comes from a
    ///   device without TSO);
    /// - reverse-path filtering cannot drop them on the near end: its own
    ///   `rp_filter` is set to 0, and a strict `all` (which would win) is
    ///   refused here, the caller then receiving without coalescing.
    pub fn coalesce(&self, iface: &Interface) -> Result<()> {
        let all = "/proc/sys/net/ipv4/conf/all/rp_filter";
        let strict = std::fs::read_to_string(all).with_context(|| format!("reading {all}"))?.trim() == "1";
        if strict {
            bail!(
                "{all} is 1 (strict reverse-path filtering): segments coming back in through {} would be \
                 dropped; 0 or 2 (loose) lets them through",
                self.near
            );
        }
        let own = format!("/proc/sys/net/ipv4/conf/{}/rp_filter", self.near);
        std::fs::write(&own, "0").with_context(|| format!("writing 0 to {own}"))?;
        netlink::set_mac(self.near_index, iface.mac).context("giving the coalescer the interface's MAC")?;
        netlink::set_gro(&self.near, true).context("switching GRO on at the coalescer")?;
        netlink::disable_tso(&self.far).context("switching TSO off at the coalescer's far end")?;
        Ok(())
    }
}

/// A `--connect` address made reachable through the interface: a host
/// route (unless on-link) and a permanent neighbour entry, since no host
/// answers ARP for it; the egress program rewrites the frame anyway. Like
/// the segmenter, they stay while the datapath does.
pub struct ConnectRoute {
    pub index: u32,
    pub addr: Ipv4Addr,
    pub route: bool,
}

impl ConnectRoute {
    pub fn add(iface: &Interface, addr: Ipv4Addr) -> Result<Self> {
        let route = !iface.on_link(addr);
        if route {
            netlink::replace_host_route(addr, iface.index)?;
        }
        netlink::replace_permanent_neighbour(addr, [0xff; 6], iface.index)?;
        Ok(ConnectRoute { index: iface.index, addr, route })
    }

    /// Removes the entries.
    pub fn remove(&self) {
        let _ = netlink::delete_neighbour(self.addr, self.index);
        if self.route {
            let _ = netlink::delete_host_route(self.addr, self.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_and_on_link() {
        assert_eq!(directed_broadcast("10.0.0.1".parse().unwrap(), 24), "10.0.0.255".parse::<Ipv4Addr>().unwrap());
        assert_eq!(directed_broadcast("10.0.0.1".parse().unwrap(), 32), "10.0.0.1".parse::<Ipv4Addr>().unwrap());
    }
}
