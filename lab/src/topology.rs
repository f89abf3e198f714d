//! The two labs, with their addresses.
//!
//! The translator's: a legacy client, the gateway (two arms: `g0` to the
//! client, `g1` to the Serval side), a bridge standing in for the service
//! LAN, and Serval instances on it:
//!
//! ```text
//! client lc0 198.51.100.2 ── g0 198.51.100.1  gateway  g1 10.10.0.1 ── s0 ┐
//!                                                     instance i: e0 10.10.0.1i ── si ┤ br0 (switch)
//! ```
//!
//! Host mode's: two hosts on one link, `hc0` 10.61.0.1 and `hs0` 10.61.0.2.

use anyhow::Result;

use crate::netns::{try_veth, Naming, Netns};

/// The translator lab's addresses.
pub mod translator {
    pub const CLIENT_IP: &str = "198.51.100.2";
    pub const GW_CLIENT_IP: &str = "198.51.100.1";
    /// The gateway's SAL-side address (`sal_address` in its config).
    pub const SAL_ADDRESS: &str = "10.10.0.1";
    /// The service's public address, routed to the gateway by the client.
    pub const PUBLIC_IP: &str = "203.0.113.1";
    /// The instances, in order; the lab makes as many as asked, up to these.
    pub const INSTANCES: [&str; 2] = ["10.10.0.11", "10.10.0.12"];
}

/// Host mode's lab addresses and interfaces.
pub mod host_pair {
    pub const CLIENT_IP: &str = "10.61.0.1";
    pub const SERVER_IP: &str = "10.61.0.2";
    pub const CLIENT_IF: &str = "hc0";
    pub const SERVER_IF: &str = "hs0";
}

/// How the translator lab's links are set.
#[derive(Clone, Copy, Debug)]
pub struct TranslatorOptions {
    /// How many instances (at most [`translator::INSTANCES`]).
    pub instances: usize,
    /// GRO on at the far ends of the gateway's links (`lc0`, `s0`): veth
    /// peers take frames the gateway redirects from native XDP only with
    /// NAPI, which GRO (or an XDP program) gives them. Off: every veth as
    /// `ip link` makes it, the lab a new user builds.
    pub gro: bool,
    /// The client's veth leaves TCP checksums to offload (partial
    /// checksums, the veth default); off: complete checksums, as a real
    /// NIC's sender would put on the wire.
    pub client_tx_offload: bool,
}

/// The translator lab's namespaces. Dropping it deletes them.
pub struct Translator {
    // Drop order: instances, switch, gateway, client.
    pub instances: Vec<Netns>,
    pub switch: Netns,
    pub gateway: Netns,
    pub client: Netns,
}

impl Translator {
    pub fn build(naming: Naming, opts: TranslatorOptions) -> Result<Translator> {
        use translator::*;
        let client = naming.create("lc")?;
        let gateway = naming.create("gw")?;
        let switch = naming.create("sw")?;
        try_veth(
            &client,
            "lc0",
            Some(&format!("{CLIENT_IP}/24")),
            &gateway,
            "g0",
            Some(&format!("{GW_CLIENT_IP}/24")),
        )?;
        client.try_ip(&["route", "add", "default", "via", GW_CLIENT_IP])?;
        if !opts.client_tx_offload {
            client.set_offload("lc0", "tx", false)?;
        }
        switch.try_ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.try_ip(&["link", "set", "br0", "up"])?;
        let port = |ns: &Netns, dev: &str, addr: &str, sw_port: &str| -> Result<()> {
            try_veth(ns, dev, Some(addr), &switch, sw_port, None)?;
            switch.try_ip(&["link", "set", sw_port, "master", "br0", "up"])
        };
        port(&gateway, "g1", &format!("{SAL_ADDRESS}/24"), "s0")?;
        for (ns, dev) in [(&client, "lc0"), (&switch, "s0")] {
            ns.set_offload(dev, "gro", opts.gro)?;
        }
        let mut instances = Vec::new();
        for (i, addr) in INSTANCES.iter().take(opts.instances).enumerate() {
            let ns = naming.create(&format!("i{}", i + 1))?;
            port(&ns, "e0", &format!("{addr}/24"), &format!("s{}", i + 1))?;
            ns.try_ip(&["route", "add", "default", "via", SAL_ADDRESS])?;
            instances.push(ns);
        }
        Ok(Translator { instances, switch, gateway, client })
    }
}

/// Host mode's lab: two hosts on one veth link. Dropping it deletes them.
pub struct HostPair {
    pub server: Netns,
    pub client: Netns,
}

impl HostPair {
    pub fn build(naming: Naming) -> Result<HostPair> {
        use host_pair::*;
        let client = naming.create("c")?;
        let server = naming.create("s")?;
        try_veth(
            &client,
            CLIENT_IF,
            Some(&format!("{CLIENT_IP}/24")),
            &server,
            SERVER_IF,
            Some(&format!("{SERVER_IP}/24")),
        )?;
        Ok(HostPair { server, client })
    }
}
