//! The translator's TOML configuration. Errors name the file, the line and
//! the value; a bad file changes nothing.
//!
//! ```toml
//! [translator]
//! sal_address = "10.10.0.1"
//!
//! [[service]]
//! address = "203.0.113.1"
//! port = 80
//! service_id = "00000050"
//! instances = ["10.10.0.11", { address = "10.10.0.12", weight = 3 }]
//! # router = "10.10.0.254"
//! # mode = "relay"          # every connection through the stream relay
//!
//! # [[prefix]]              # many services behind one public prefix
//! # prefix = "203.0.113.0/24"
//! # port = 80               # or a range: "8000-8099"
//! # service_id = "00010000" # host .5 is service 00010005
//! # instances = ["10.10.0.11", "10.10.0.12"]
//!
//! # [relay]                 # the stream-level relay (docs/relay.md)
//! # data_mover = "splice"   # or "copy"
//! # buffer = 262144         # bytes in flight per direction and connection
//! # idle_timeout = 600      # seconds
//! ```

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use toml::Spanned;
use xlate_common::ServiceId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub sal_address: Ipv4Addr,
    pub idle_timeout: u64,
    /// Send rewritten frames out from XDP when the FIB knows the next hop.
    pub xdp_redirect: bool,
    /// Size of the flow tables (default: the build's, 65536). A full
    /// table declines new flows to the relay.
    pub max_flows: Option<u32>,
    pub services: Vec<Service>,
    /// Services by prefix: the host part of the address picks the service.
    pub prefixes: Vec<Prefix>,
    pub relay: RelaySettings,
}

/// How the stream-level relay moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySettings {
    pub mover: crate::relay::pump::Mode,
    /// Bytes in flight per direction and connection (the pipe's size).
    pub buffer: usize,
    /// Seconds a relayed connection may move nothing before it is reset.
    pub idle_timeout: u64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings { mover: crate::relay::pump::Mode::Splice, buffer: 256 * 1024, idle_timeout: 600 }
    }
}

/// Which path a service's connections take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceMode {
    /// The packet-level fast path (XDP); the relay takes only what it
    /// declines.
    #[default]
    Fast,
    /// Every connection through the stream-level relay.
    Relay,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub address: Ipv4Addr,
    pub port: u16,
    pub service_id: ServiceId,
    pub instances: Vec<Instance>,
    pub router: Option<Ipv4Addr>,
    pub mode: ServiceMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub address: Ipv4Addr,
    pub weight: u32,
}

/// Many services behind one public prefix (the paper's section 5): the
/// host part of a client's destination address is added to the low bits
/// of `service_id`'s first 32 bits (where short hex forms and `dec:N` put
/// a service's number), so `203.0.113.5` under `203.0.113.0/24` with
/// `service_id = "00010000"` is service `00010005`. All of a prefix's
/// services share its instances (or router); each costs the kernel one
/// map entry per port, not one per address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    pub len: u8,
    /// First and last port, both included.
    pub ports: (u16, u16),
    /// The service of host part 0.
    pub service_id: ServiceId,
    pub instances: Vec<Instance>,
    pub router: Option<Ipv4Addr>,
}

impl Prefix {
    /// Shortest prefix: 2^16 services.
    pub const MIN_LEN: u8 = 16;
    /// Most ports one prefix may span (each is a kernel map entry).
    pub const MAX_PORTS: u32 = 64;

    fn netmask(&self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.netmask() == u32::from(self.network)
    }

    /// The service behind `addr`:`port`, if the prefix holds it.
    pub fn service_of(&self, addr: Ipv4Addr, port: u16) -> Option<ServiceId> {
        if !self.contains(addr) || port < self.ports.0 || port > self.ports.1 {
            return None;
        }
        Some(host_service(self.service_id, u32::from(addr) & !self.netmask()))
    }

    /// `203.0.113.0/24:80` or `203.0.113.0/24:8000-8099`.
    pub fn name(&self) -> String {
        let (lo, hi) = self.ports;
        let ports = if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") };
        format!("{}/{}:{ports}", self.network, self.len)
    }

    /// The rules every prefix obeys, from the file, a reload or `map set`.
    pub fn check(&self, sal_address: Ipv4Addr) -> Result<()> {
        let name = self.name();
        if !(Self::MIN_LEN..=32).contains(&self.len) {
            bail!("prefix {name}: length /{} is not {} to 32", self.len, Self::MIN_LEN);
        }
        if u32::from(self.network) & !self.netmask() != 0 {
            bail!(
                "prefix {}/{}: host bits set (the network is {}/{})",
                self.network,
                self.len,
                Ipv4Addr::from(u32::from(self.network) & self.netmask()),
                self.len
            );
        }
        let (lo, hi) = self.ports;
        if lo == 0 || hi < lo || u32::from(hi - lo) >= Self::MAX_PORTS {
            bail!("prefix {name}: ports must be 1 to 65535, first to last, at most {} of them", Self::MAX_PORTS);
        }
        let host_bits = 32 - u32::from(self.len);
        let number = u32::from_be_bytes(self.service_id.0[..4].try_into().expect("4 bytes"));
        if host_bits > 0 && number & (u32::MAX >> (32 - host_bits)) != 0 {
            bail!(
                "prefix {name}: service_id {} has bits set in its low {host_bits} bits (of its first 32), where the \
                 host part of an address goes",
                self.service_id
            );
        }
        if self.contains(sal_address) {
            bail!("prefix {name} holds the translator's sal_address {sal_address}");
        }
        if self.network.is_unspecified() || self.network.is_multicast() || self.network.is_broadcast() {
            bail!("prefix {name} cannot hold unicast destinations");
        }
        match (self.instances.is_empty(), self.router) {
            (true, None) => bail!("prefix {name} needs instances or a router"),
            (false, Some(r)) => bail!("prefix {name} has both instances and router {r}: give one"),
            _ => {}
        }
        if let Some(i) = self.instances.iter().find(|i| i.address == sal_address) {
            bail!("instance {} is the translator's own sal_address", i.address);
        }
        Ok(())
    }
}

/// `base` with `host` added to the low bits of its first 32 bits.
pub fn host_service(base: ServiceId, host: u32) -> ServiceId {
    let mut id = base;
    let n = u32::from_be_bytes(id.0[..4].try_into().expect("4 bytes")) | host;
    id.0[..4].copy_from_slice(&n.to_be_bytes());
    id
}

impl Service {
    /// The rules every service obeys, whether it comes from the file, a
    /// reload or `xlate-user map set`.
    pub fn check(&self, sal_address: Ipv4Addr) -> Result<()> {
        let (a, p) = (self.address, self.port);
        match (self.instances.is_empty(), self.router) {
            (true, None) => bail!("service {a}:{p} needs instances or a router (instances = [] gives it neither)"),
            (false, Some(r)) => {
                bail!("service {a}:{p} has both instances and router {r}: give one (the router picks instances itself)")
            }
            _ => {}
        }
        if self.mode == ServiceMode::Relay && self.router.is_some() {
            bail!(
                "service {a}:{p}: mode = \"relay\" needs instances (the relay connects to the instance Maglev picks)"
            );
        }
        if a == sal_address {
            bail!(
                "service address {a} is the translator's sal_address: SAL packets to it would be taken for \
                 translated traffic; give the service a public address of its own"
            );
        }
        if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
            bail!("service address {a} cannot be a unicast destination");
        }
        if let Some(i) = self.instances.iter().find(|i| i.address == sal_address) {
            bail!("instance {} is the translator's own sal_address", i.address);
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    translator: RawTranslator,
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    prefix: Vec<RawPrefix>,
    relay: Option<RawRelay>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrefix {
    prefix: Spanned<String>,
    port: Spanned<toml::Value>,
    service_id: Spanned<toml::Value>,
    instances: Option<Spanned<Vec<RawInstance>>>,
    router: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    data_mover: Option<Spanned<String>>,
    buffer: Option<Spanned<i64>>,
    idle_timeout: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTranslator {
    sal_address: Spanned<String>,
    #[serde(default = "default_idle")]
    idle_timeout: Spanned<u64>,
    #[serde(default = "default_true")]
    xdp_redirect: bool,
    max_flows: Option<Spanned<i64>>,
}

fn default_true() -> bool {
    true
}

fn default_idle() -> Spanned<u64> {
    Spanned::new(0..0, 600)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    address: Spanned<String>,
    port: Spanned<i64>,
    service_id: Spanned<toml::Value>,
    instances: Option<Spanned<Vec<RawInstance>>>,
    router: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
}

// Untagged enums cannot hold `Spanned` values; errors in an instance name
// the line of the `instances` list.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawInstance {
    Address(String),
    Weighted { address: String, weight: i64 },
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        let at = |span: std::ops::Range<usize>| format!("line {}", line_of(text, span.start));
        let ip = |s: &Spanned<String>, field: &str| -> Result<Ipv4Addr> {
            s.get_ref()
                .parse()
                .map_err(|_| anyhow::anyhow!("{}: {field} {:?} is not an IPv4 address", at(s.span()), s.get_ref()))
        };
        let sal_address = ip(&raw.translator.sal_address, "sal_address")?;
        if *raw.translator.idle_timeout.get_ref() == 0 {
            bail!(
                "{}: idle_timeout 0 would expire every flow at once; give seconds (default 600)",
                at(raw.translator.idle_timeout.span())
            );
        }
        let max_flows = match &raw.translator.max_flows {
            None => None,
            Some(m) => {
                Some(u32::try_from(*m.get_ref()).ok().filter(|n| (16..=1 << 22).contains(n)).ok_or_else(|| {
                    anyhow::anyhow!("{}: max_flows {} is not 16 to 4194304", at(m.span()), m.get_ref())
                })?)
            }
        };
        let mut services = Vec::new();
        let mut seen = HashSet::new();
        for s in &raw.service {
            let address = ip(&s.address, "address")?;
            let port = u16::try_from(*s.port.get_ref())
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| anyhow::anyhow!("{}: port {} is not 1 to 65535", at(s.port.span()), s.port.get_ref()))?;
            if !seen.insert((address, port)) {
                bail!("{}: service {address}:{port} is configured twice", at(s.address.span()));
            }
            let service_id = parse_service_id(&s.service_id, &at)?;
            let instances = parse_instances(s.instances.as_ref(), s.address.span(), &at)?;
            let router = s.router.as_ref().map(|r| ip(r, "router")).transpose()?;
            let mode = match s.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
                None | Some(("fast", _)) => ServiceMode::Fast,
                Some(("relay", _)) => ServiceMode::Relay,
                Some((other, span)) => bail!("{}: mode {other:?} is not \"fast\" or \"relay\"", at(span)),
            };
            let svc = Service { address, port, service_id, instances, router, mode };
            svc.check(sal_address).map_err(|e| anyhow::anyhow!("{}: {e}", at(s.address.span())))?;
            services.push(svc);
        }
        let mut prefixes: Vec<Prefix> = Vec::new();
        for r in &raw.prefix {
            let p = parse_prefix(r, sal_address, &at, &ip)?;
            if let Some(o) = prefixes
                .iter()
                .find(|o| (o.network, o.len) == (p.network, p.len) && o.ports.0 <= p.ports.1 && p.ports.0 <= o.ports.1)
            {
                bail!(
                    "{}: prefix {} overlaps prefix {} (same prefix, shared ports)",
                    at(r.prefix.span()),
                    p.name(),
                    o.name()
                );
            }
            prefixes.push(p);
        }
        let rows = services.len() + prefixes.len();
        if rows > xlate_common::flow::gw::MAX_SERVICES as usize {
            bail!(
                "{} services and {} prefixes configured, at most {} together",
                services.len(),
                prefixes.len(),
                xlate_common::flow::gw::MAX_SERVICES
            );
        }
        let mut relay = RelaySettings::default();
        if let Some(r) = &raw.relay {
            if let Some(m) = &r.data_mover {
                relay.mover = match m.get_ref().as_str() {
                    "splice" => crate::relay::pump::Mode::Splice,
                    "copy" => crate::relay::pump::Mode::Copy,
                    other => bail!("{}: data_mover {other:?} is not \"splice\" or \"copy\"", at(m.span())),
                };
            }
            if let Some(b) = &r.buffer {
                relay.buffer =
                    usize::try_from(*b.get_ref()).ok().filter(|b| (4096..=64 << 20).contains(b)).ok_or_else(|| {
                        anyhow::anyhow!("{}: buffer {} is not 4096 to 67108864 bytes", at(b.span()), b.get_ref())
                    })?;
            }
            if let Some(t) = &r.idle_timeout {
                relay.idle_timeout = u64::try_from(*t.get_ref()).ok().filter(|t| *t > 0).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: idle_timeout {} is not a positive number of seconds",
                        at(t.span()),
                        t.get_ref()
                    )
                })?;
            }
        }
        Ok(Config {
            sal_address,
            idle_timeout: *raw.translator.idle_timeout.get_ref(),
            xdp_redirect: raw.translator.xdp_redirect,
            max_flows,
            services,
            prefixes,
            relay,
        })
    }
}

type At<'a> = dyn Fn(std::ops::Range<usize>) -> String + 'a;

fn parse_service_id(v: &Spanned<toml::Value>, at: &At) -> Result<ServiceId> {
    Ok(match v.get_ref() {
        toml::Value::String(t) => {
            t.parse::<ServiceId>().map_err(|e| anyhow::anyhow!("{}: service_id {t:?}: {e}", at(v.span())))?
        }
        toml::Value::Integer(n) => ServiceId::from_u32(u32::try_from(*n).map_err(|_| {
            anyhow::anyhow!("{}: service_id {n} does not fit the decimal form (0 to 4294967295)", at(v.span()))
        })?),
        other => bail!("{}: service_id must be a string or an integer, not {}", at(v.span()), other.type_str()),
    })
}

/// An `instances` list; errors name its line (or `fallback`'s, without
/// one).
fn parse_instances(
    list: Option<&Spanned<Vec<RawInstance>>>,
    fallback: std::ops::Range<usize>,
    at: &At,
) -> Result<Vec<Instance>> {
    let mut instances = Vec::new();
    let span = list.map_or(fallback, |i| i.span());
    let inst_ip = |a: &str| -> Result<Ipv4Addr> {
        a.parse().map_err(|_| anyhow::anyhow!("{}: instance {a:?} is not an IPv4 address", at(span.clone())))
    };
    for i in list.iter().flat_map(|i| i.get_ref()) {
        let (a, w) = match i {
            RawInstance::Address(a) => (inst_ip(a)?, 1),
            RawInstance::Weighted { address, weight } => {
                let w = u32::try_from(*weight).ok().filter(|w| (1..=100).contains(w)).ok_or_else(|| {
                    anyhow::anyhow!("{}: instance {address}: weight {weight} is not 1 to 100", at(span.clone()))
                })?;
                (inst_ip(address)?, w)
            }
        };
        if instances.iter().any(|x: &Instance| x.address == a) {
            bail!("{}: instance {a} is listed twice", at(span.clone()));
        }
        instances.push(Instance { address: a, weight: w });
    }
    Ok(instances)
}

/// `80` or `"8000-8099"`.
fn parse_ports(v: &Spanned<toml::Value>, at: &At) -> Result<(u16, u16)> {
    let bad = || anyhow::anyhow!("{}: port {} is not 1 to 65535 or a range \"FIRST-LAST\"", at(v.span()), v.get_ref());
    let port = |n: i64| u16::try_from(n).ok().filter(|p| *p != 0);
    match v.get_ref() {
        toml::Value::Integer(n) => port(*n).map(|p| (p, p)).ok_or_else(bad),
        toml::Value::String(t) => {
            let (a, b) = t.split_once('-').ok_or_else(bad)?;
            let lo = a.trim().parse().ok().and_then(port).ok_or_else(bad)?;
            let hi = b.trim().parse().ok().and_then(port).ok_or_else(bad)?;
            Ok((lo, hi))
        }
        _ => Err(bad()),
    }
}

fn parse_prefix(
    r: &RawPrefix,
    sal_address: Ipv4Addr,
    at: &At,
    ip: &dyn Fn(&Spanned<String>, &str) -> Result<Ipv4Addr>,
) -> Result<Prefix> {
    let text = r.prefix.get_ref();
    let bad =
        || anyhow::anyhow!("{}: prefix {text:?} is not an IPv4 prefix like \"203.0.113.0/24\"", at(r.prefix.span()));
    let (a, l) = text.split_once('/').ok_or_else(bad)?;
    let network: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let len: u8 = l.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
    let p = Prefix {
        network,
        len,
        ports: parse_ports(&r.port, at)?,
        service_id: parse_service_id(&r.service_id, at)?,
        instances: parse_instances(r.instances.as_ref(), r.prefix.span(), at)?,
        router: r.router.as_ref().map(|x| ip(x, "router")).transpose()?,
    };
    p.check(sal_address).map_err(|e| anyhow::anyhow!("{}: {e}", at(r.prefix.span())))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[translator]
sal_address = "10.10.0.1"

[[service]]
address = "203.0.113.1"
port = 80
service_id = "00000050"
instances = ["10.10.0.11", { address = "10.10.0.12", weight = 3 }]

[[service]]
address = "203.0.113.1"
port = 443
service_id = 443
router = "10.10.0.254"

[relay]
data_mover = "copy"
buffer = 65536
"#;

    #[test]
    fn parses_the_example() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.sal_address, Ipv4Addr::new(10, 10, 0, 1));
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].instances[1], Instance { address: Ipv4Addr::new(10, 10, 0, 12), weight: 3 });
        assert_eq!(c.services[1].service_id, "000001bb".parse().unwrap());
        assert_eq!(c.services[1].router, Some(Ipv4Addr::new(10, 10, 0, 254)));
        assert_eq!(c.services[0].mode, ServiceMode::Fast);
        assert_eq!(c.relay.mover, crate::relay::pump::Mode::Copy);
        assert_eq!(c.relay.buffer, 65536);
        assert_eq!(c.relay.idle_timeout, 600);
        let r = Config::parse(&GOOD.replace("port = 80\n", "port = 80\nmode = \"relay\"\n")).unwrap();
        assert_eq!(r.services[0].mode, ServiceMode::Relay);
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn errors_name_line_field_and_value() {
        let e = err(&GOOD.replace("\"10.10.0.11\"", "\"10.10.0.300\""));
        assert!(e.contains("line 9: instance \"10.10.0.300\" is not an IPv4 address"), "{e}");
        let e = err(&GOOD.replace("port = 80", "port = 70000"));
        assert!(e.contains("line 7: port 70000 is not 1 to 65535"), "{e}");
        let e = err(&GOOD.replace("\"00000050\"", "\"00zz\""));
        assert!(e.contains("line 8: service_id \"00zz\""), "{e}");
        let e = err(&GOOD.replace("weight = 3", "weight = 0"));
        assert!(e.contains("weight 0 is not 1 to 100"), "{e}");
        let e = err(&GOOD.replace("port = 443", "port = 80"));
        assert!(e.contains("line 12: service 203.0.113.1:80 is configured twice"), "{e}");
        let e = err(&GOOD.replace("sal_address", "sal_addr"));
        assert!(e.contains("sal_addr"), "{e}");
        let e = err(&GOOD.replace("router = \"10.10.0.254\"", ""));
        assert!(e.contains("needs instances or a router"), "{e}");
        let e =
            err(&GOOD.replace("router = \"10.10.0.254\"", "router = \"10.10.0.254\"\ninstances = [\"10.10.0.11\"]"));
        assert!(e.contains("line 12: service 203.0.113.1:443 has both instances and router 10.10.0.254"), "{e}");
        let e =
            err(&GOOD
                .replace("instances = [\"10.10.0.11\", { address = \"10.10.0.12\", weight = 3 }]", "instances = []"));
        assert!(e.contains("line 6: service 203.0.113.1:80 needs instances or a router"), "{e}");
        let e = err(&GOOD.replace("sal_address = \"10.10.0.1\"", "sal_address = \"10.10.0.1\"\nidle_timeout = 0"));
        assert!(e.contains("line 4: idle_timeout 0"), "{e}");
        let e = err(&GOOD.replace("address = \"203.0.113.1\"\nport = 80", "address = \"10.10.0.1\"\nport = 80"));
        assert!(e.contains("line 6: service address 10.10.0.1 is the translator's sal_address"), "{e}");
        let e = err(&GOOD.replace("port = 80\n", "port = 80\nmode = \"slow\"\n"));
        assert!(e.contains("line 8: mode \"slow\" is not \"fast\" or \"relay\""), "{e}");
        let e = err(&GOOD.replace("port = 443\n", "port = 443\nmode = \"relay\"\n"));
        assert!(e.contains("mode = \"relay\" needs instances"), "{e}");
        let e = err(&GOOD.replace("buffer = 65536", "buffer = 12"));
        assert!(e.contains("line 19: buffer 12 is not 4096 to 67108864 bytes"), "{e}");
        let e = err(&GOOD.replace("sal_address = \"10.10.0.1\"", "sal_address = \"10.10.0.1\"\nmax_flows = 2"));
        assert!(e.contains("line 4: max_flows 2 is not 16 to 4194304"), "{e}");
        let e = err(&GOOD.replace("\"copy\"", "\"zero\""));
        assert!(e.contains("line 18: data_mover \"zero\" is not \"splice\" or \"copy\""), "{e}");
    }

    const PREFIXED: &str = r#"
[translator]
sal_address = "10.10.0.1"

[[prefix]]
prefix = "203.0.113.0/24"
port = 80
service_id = "00010000"
instances = ["10.10.0.11", "10.10.0.12"]

[[prefix]]
prefix = "198.18.0.0/16"
port = "8000-8009"
service_id = "dec:16777216"
router = "10.10.0.254"
"#;

    #[test]
    fn prefixes_map_host_parts_to_services() {
        let c = Config::parse(PREFIXED).unwrap();
        assert_eq!(c.prefixes.len(), 2);
        let p = &c.prefixes[0];
        assert_eq!((p.network, p.len, p.ports), (Ipv4Addr::new(203, 0, 113, 0), 24, (80, 80)));
        assert_eq!(p.service_of(Ipv4Addr::new(203, 0, 113, 5), 80), Some("00010005".parse().unwrap()));
        assert_eq!(p.service_of(Ipv4Addr::new(203, 0, 113, 255), 80), Some("000100ff".parse().unwrap()));
        assert_eq!(p.service_of(Ipv4Addr::new(203, 0, 114, 5), 80), None);
        assert_eq!(p.service_of(Ipv4Addr::new(203, 0, 113, 5), 81), None);
        let q = &c.prefixes[1];
        assert_eq!(q.ports, (8000, 8009));
        assert_eq!(q.name(), "198.18.0.0/16:8000-8009");
        assert_eq!(q.service_of(Ipv4Addr::new(198, 18, 1, 2), 8009), Some("01000102".parse().unwrap()));
        assert_eq!(q.router, Some(Ipv4Addr::new(10, 10, 0, 254)));
    }

    #[test]
    fn bad_prefixes_name_line_field_and_value() {
        let e = err(&PREFIXED.replace("203.0.113.0/24", "203.0.113.0/33"));
        assert!(e.contains("line 6: prefix \"203.0.113.0/33\" is not an IPv4 prefix"), "{e}");
        let e = err(&PREFIXED.replace("203.0.113.0/24", "203.0.113.7/24"));
        assert!(e.contains("line 6: prefix 203.0.113.7/24: host bits set (the network is 203.0.113.0/24)"), "{e}");
        let e = err(&PREFIXED.replace("203.0.113.0/24", "203.0.0.0/12"));
        assert!(e.contains("line 6: prefix 203.0.0.0/12:80: length /12 is not 16 to 32"), "{e}");
        let e = err(&PREFIXED.replace("\"00010000\"", "\"00010001\""));
        assert!(e.contains("line 6: prefix 203.0.113.0/24:80: service_id 00010001"), "{e}");
        assert!(e.contains("low 8 bits"), "{e}");
        let e = err(&PREFIXED.replace("\"8000-8009\"", "\"8009-8000\""));
        assert!(e.contains("line 12: prefix 198.18.0.0/16:8009-8000: ports must be"), "{e}");
        let e = err(&PREFIXED.replace("\"8000-8009\"", "\"8000-9000\""));
        assert!(e.contains("at most 64 of them"), "{e}");
        let e = err(&PREFIXED.replace("\"8000-8009\"", "\"80x\""));
        assert!(e.contains("line 13: port \"80x\" is not 1 to 65535 or a range"), "{e}");
        let e = err(&PREFIXED.replace("198.18.0.0/16", "10.10.0.0/16"));
        assert!(e.contains("holds the translator's sal_address 10.10.0.1"), "{e}");
        let e = err(&PREFIXED.replace("router = \"10.10.0.254\"", ""));
        assert!(e.contains("line 12: prefix 198.18.0.0/16:8000-8009 needs instances or a router"), "{e}");
        let twice = format!("{PREFIXED}\n[[prefix]]\nprefix = \"203.0.113.0/24\"\nport = \"70-80\"\nservice_id = 1\nrouter = \"10.10.0.9\"\n");
        let e = err(&twice.replace("service_id = 1", "service_id = \"00020000\""));
        assert!(e.contains("line 18: prefix 203.0.113.0/24:70-80 overlaps prefix 203.0.113.0/24:80"), "{e}");
    }
}
