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
//!
//! Scale-out's (the paper's section 5): translators side by side, each
//! with a public prefix of its own, between one client LAN (with a DNS
//! server) and one service LAN (with the instances all of them share):
//!
//! ```text
//! client 198.51.100.2 ┐                         ┌ t1 g1 10.10.0.1 ┐
//! dns 198.51.100.53   ┤ br0 (front)  t1 198.51.100.11 ... t3 .13  ├ br0 (back) ┤ instances 10.10.0.11-13
//!                     └ routes 198.18.K.0/24 via 198.51.100.1K     └ t3 g1 10.10.0.3 ┘
//! ```

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

/// The scale-out lab's addresses.
pub mod scale_out {
    pub const CLIENT_IP: &str = "198.51.100.2";
    pub const DNS_IP: &str = "198.51.100.53";
    /// Translator `k` (1-based): its client-facing address, its SAL
    /// address, and the public prefix it owns (routed to it by the client).
    pub fn translator(k: usize) -> (String, String, String) {
        (format!("198.51.100.{}", 10 + k), format!("10.10.0.{k}"), format!("198.18.{k}.0/24"))
    }
    pub const MAX_TRANSLATORS: usize = 9;
    /// The instances every translator reaches, in order.
    pub const INSTANCES: [&str; 3] = ["10.10.0.11", "10.10.0.12", "10.10.0.13"];

    /// The service's name, and its host number in every translator's
    /// prefix.
    pub const NAME: &str = "web.xlate.test";
    pub const HOST: u8 = 5;
    /// Host 0's service in every prefix: host 5 is [`SERVICE`].
    pub const BASE_SERVICE: &str = "00010000";
    pub const SERVICE: &str = "00010005";
    /// What the DNS server tells resolvers to cache its answers for.
    pub const TTL_SECONDS: u32 = 5;

    /// Translator `k`'s configuration: its own prefix, every instance, and
    /// `extra` (more TOML) after.
    pub fn config(k: usize, extra: &str) -> String {
        let (_, sal, prefix) = translator(k);
        let instances: Vec<String> = INSTANCES.iter().map(|i| format!("\"{i}\"")).collect();
        format!(
            "[translator]\nsal_address = \"{sal}\"\n\n[[prefix]]\nprefix = \"{prefix}\"\nport = 80\nservice_id = \"{BASE_SERVICE}\"\ninstances = [{}]\n{extra}",
            instances.join(", ")
        )
    }

    /// The service's address behind translator `k`.
    pub fn address(k: usize) -> String {
        format!("198.18.{k}.{HOST}")
    }

    /// The DNS server's hosts file: [`NAME`] at its address behind each
    /// translator of `ks`.
    pub fn dns_hosts(ks: &[usize]) -> String {
        ks.iter().map(|k| format!("{} {NAME}\n", address(*k))).collect()
    }

    /// dnsmasq's arguments: answers from the hosts file `hosts` only (no
    /// upstream, no /etc/hosts), rotated per answer, with [`TTL_SECONDS`];
    /// in the foreground, logging to stderr; SIGHUP re-reads the file.
    pub fn dnsmasq_args(hosts: &std::path::Path) -> Vec<String> {
        [
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--log-facility=-",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("--addn-hosts={}", hosts.display()),
            format!("--local-ttl={TTL_SECONDS}"),
            format!("--listen-address={DNS_IP}"),
        ])
        .collect()
    }
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

/// The scale-out lab's namespaces. Dropping it deletes them.
pub struct ScaleOut {
    // Drop order: instances, translators, switches, dns, client.
    pub instances: Vec<Netns>,
    /// Each translator's namespace: `g0` to the client LAN, `g1` to the
    /// service LAN.
    pub translators: Vec<Netns>,
    pub back: Netns,
    pub front: Netns,
    pub dns: Netns,
    pub client: Netns,
}

impl ScaleOut {
    /// `translators` side by side (at most [`scale_out::MAX_TRANSLATORS`])
    /// and `instances` behind them (at most [`scale_out::INSTANCES`]). The
    /// client resolves names with the lab's DNS server (`set_resolver`).
    /// GRO is on at every veth end a translator redirects to (see
    /// [`TranslatorOptions::gro`]).
    pub fn build(naming: Naming, translators: usize, instances: usize) -> Result<ScaleOut> {
        use scale_out::*;
        anyhow::ensure!((1..=MAX_TRANSLATORS).contains(&translators), "1 to {MAX_TRANSLATORS} translators");
        anyhow::ensure!((1..=INSTANCES.len()).contains(&instances), "1 to {} instances", INSTANCES.len());
        let client = naming.create("c")?;
        let dns = naming.create("dns")?;
        let front = naming.create("fr")?;
        let back = naming.create("bk")?;
        for sw in [&front, &back] {
            sw.try_ip(&["link", "add", "br0", "type", "bridge"])?;
            sw.try_ip(&["link", "set", "br0", "up"])?;
        }
        let port = |sw: &Netns, ns: &Netns, dev: &str, addr: &str, sw_port: &str| -> Result<()> {
            try_veth(ns, dev, Some(addr), sw, sw_port, None)?;
            sw.try_ip(&["link", "set", sw_port, "master", "br0", "up"])?;
            sw.set_offload(sw_port, "gro", true)?;
            ns.set_offload(dev, "gro", true)
        };
        port(&front, &client, "c0", &format!("{CLIENT_IP}/24"), "pc")?;
        port(&front, &dns, "d0", &format!("{DNS_IP}/24"), "pd")?;
        client.set_resolver(DNS_IP)?;
        let mut ts = Vec::new();
        for k in 1..=translators {
            let (front_ip, sal, prefix) = translator(k);
            let t = naming.create(&format!("t{k}"))?;
            port(&front, &t, "g0", &format!("{front_ip}/24"), &format!("pt{k}"))?;
            port(&back, &t, "g1", &format!("{sal}/24"), &format!("bt{k}"))?;
            client.try_ip(&["route", "add", &prefix, "via", &front_ip])?;
            ts.push(t);
        }
        let mut is = Vec::new();
        for (i, addr) in INSTANCES.iter().take(instances).enumerate() {
            let ns = naming.create(&format!("i{}", i + 1))?;
            port(&back, &ns, "e0", &format!("{addr}/24"), &format!("bi{}", i + 1))?;
            is.push(ns);
        }
        Ok(ScaleOut { instances: is, translators: ts, back, front, dns, client })
    }
}
