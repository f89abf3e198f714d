//! Facts about a network interface and the few changes host mode makes
//! around it (its segmenter veth pair, a route and a neighbour entry per
//! `--connect` address), done with iproute2 and ethtool and undone on exit.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

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
}

#[derive(Deserialize)]
struct IpAddrJson {
    ifindex: u32,
    mtu: u32,
    address: Option<String>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    local: String,
    prefixlen: u8,
    broadcast: Option<String>,
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Interface {
    pub fn lookup(name: &str) -> Result<Self> {
        let out = Command::new("ip")
            .args(["-j", "addr", "show", "dev", name])
            .output()
            .context("cannot run `ip` (install iproute2)")?;
        if !out.status.success() {
            bail!("no interface named {name:?} in this network namespace");
        }
        let parsed: Vec<IpAddrJson> = serde_json::from_slice(&out.stdout).context("parsing `ip -j addr` output")?;
        let j = parsed.into_iter().next().ok_or_else(|| anyhow!("no interface named {name:?}"))?;
        let mac = parse_mac(j.address.as_deref().unwrap_or("")).ok_or_else(|| {
            anyhow!("interface {name} has no Ethernet address (host mode needs an Ethernet-like link)")
        })?;
        let v4: Vec<&AddrInfo> = j.addr_info.iter().filter(|a| a.family == "inet").collect();
        let first = v4.first().ok_or_else(|| anyhow!("interface {name} has no IPv4 address"))?;
        let addr: Ipv4Addr = first.local.parse()?;
        let broadcast = match &first.broadcast {
            Some(b) => b.parse()?,
            None => directed_broadcast(addr, first.prefixlen),
        };
        Ok(Interface {
            name: name.to_string(),
            index: j.ifindex,
            mac,
            mtu: j.mtu,
            addr,
            prefix_len: first.prefixlen,
            broadcast,
            addrs: v4.iter().filter_map(|a| a.local.parse().ok()).collect(),
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

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The segmenter: a veth pair of host mode's own, with segmentation and
/// checksum offload off on its near end. Linux TCP builds large (GSO)
/// packets and leaves their checksums to offload; SAL has no segmentation
/// handler in the kernel and Serval peers need complete checksums. The
/// egress program therefore sends Serval flows' packets into the pair, where
/// the kernel segments and sums them in software on the way out, and
/// translates the segments as they come out of the far end (see
/// `xlate_host_segmented`). The interface itself keeps its offloads, so
/// other traffic runs at full speed. Deleted on exit.
pub struct Segmenter {
    pub near: String,
    pub near_index: u32,
    pub far: String,
    pub far_index: u32,
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => bail!("no interface {name}: {}", std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

impl Segmenter {
    pub fn create(iface: &Interface) -> Result<Self> {
        let (near, far) = (format!("xlsg{}a", iface.index), format!("xlsg{}b", iface.index));
        // A pair left by an agent that was killed.
        let _ = Command::new("ip").args(["link", "del", &near]).output();
        let mtu = iface.mtu.to_string();
        run(Command::new("ip").args(["link", "add", &near, "mtu", &mtu, "type", "veth", "peer", "name", &far]))
            .context("creating the segmenter veth pair")?;
        let seg = Segmenter { near_index: ifindex(&near)?, far_index: ifindex(&far)?, near, far };
        run(Command::new("ip").args(["link", "set", &seg.far, "mtu", &mtu]))?;
        run(Command::new("ethtool").args(["-K", &seg.near, "tx", "off", "tso", "off", "gso", "off"]))
            .context("switching the segmenter's offloads off (is ethtool installed?)")?;
        for dev in [&seg.near, &seg.far] {
            // No addresses, no IPv6 chatter: only Serval segments cross it.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
            run(Command::new("ip").args(["link", "set", dev, "up"]))?;
        }
        Ok(seg)
    }
}

impl Drop for Segmenter {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.near]).output();
    }
}

/// A `--connect` address made reachable through the interface: a host
/// route (unless on-link) and a permanent neighbour entry, since no host
/// answers ARP for it; the egress program rewrites the frame anyway.
pub struct ConnectRoute {
    iface: String,
    addr: Ipv4Addr,
    route: bool,
}

impl ConnectRoute {
    pub fn add(iface: &Interface, addr: Ipv4Addr) -> Result<Self> {
        let route = !iface.on_link(addr);
        let a = addr.to_string();
        if route {
            run(Command::new("ip").args(["route", "replace", &format!("{a}/32"), "dev", &iface.name]))?;
        }
        run(Command::new("ip").args([
            "neigh",
            "replace",
            &a,
            "lladdr",
            "ff:ff:ff:ff:ff:ff",
            "dev",
            &iface.name,
            "nud",
            "permanent",
        ]))?;
        Ok(ConnectRoute { iface: iface.name.clone(), addr, route })
    }
}

impl Drop for ConnectRoute {
    fn drop(&mut self) {
        let a = self.addr.to_string();
        let _ = Command::new("ip").args(["neigh", "del", &a, "dev", &self.iface]).output();
        if self.route {
            let _ = Command::new("ip").args(["route", "del", &format!("{a}/32"), "dev", &self.iface]).output();
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
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00"), None);
    }
}
