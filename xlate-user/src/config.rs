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
    relay: Option<RawRelay>,
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
            let service_id = match s.service_id.get_ref() {
                toml::Value::String(v) => v
                    .parse::<ServiceId>()
                    .map_err(|e| anyhow::anyhow!("{}: service_id {v:?}: {e}", at(s.service_id.span())))?,
                toml::Value::Integer(n) => ServiceId::from_u32(u32::try_from(*n).map_err(|_| {
                    anyhow::anyhow!(
                        "{}: service_id {n} does not fit the decimal form (0 to 4294967295)",
                        at(s.service_id.span())
                    )
                })?),
                other => bail!(
                    "{}: service_id must be a string or an integer, not {}",
                    at(s.service_id.span()),
                    other.type_str()
                ),
            };
            let mut instances = Vec::new();
            let inst_span = s.instances.as_ref().map_or(s.address.span(), |i| i.span());
            let inst_ip = |a: &str| -> Result<Ipv4Addr> {
                a.parse()
                    .map_err(|_| anyhow::anyhow!("{}: instance {a:?} is not an IPv4 address", at(inst_span.clone())))
            };
            for i in s.instances.iter().flat_map(|i| i.get_ref()) {
                let (a, w) = match i {
                    RawInstance::Address(a) => (inst_ip(a)?, 1),
                    RawInstance::Weighted { address, weight } => {
                        let w = u32::try_from(*weight).ok().filter(|w| (1..=100).contains(w)).ok_or_else(|| {
                            anyhow::anyhow!(
                                "{}: instance {address}: weight {weight} is not 1 to 100",
                                at(inst_span.clone())
                            )
                        })?;
                        (inst_ip(address)?, w)
                    }
                };
                if instances.iter().any(|x: &Instance| x.address == a) {
                    bail!("{}: instance {a} is listed twice", at(inst_span.clone()));
                }
                instances.push(Instance { address: a, weight: w });
            }
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
        if services.len() > xlate_common::flow::gw::MAX_SERVICES as usize {
            bail!("{} services configured, at most {}", services.len(), xlate_common::flow::gw::MAX_SERVICES);
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
            relay,
        })
    }
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
}
