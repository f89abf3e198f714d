//! The agent's control protocol: one JSON request per connection on the
//! agent's Unix socket (/run/xlate/<kind>-<netns>-<iface>.sock), one JSON
//! response, each a single line. Typed on both ends, so a command the
//! agent does not know is an error, not a silently mangled string.
//!
//! ```text
//! > {"request":"service_del","address":"203.0.113.1","port":80}
//! < {"result":"ok","message":"removed 203.0.113.1:80"}
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{Instance, Prefix, Service};

/// What a command asks of a running agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Host mode: move every flow to a new local address (RSYN). With
    /// `wait`, the answer comes when every moving flow has moved, failed
    /// or ended (an error if any failed).
    Migrate {
        to: Ipv4Addr,
        #[serde(default)]
        wait: bool,
    },
    /// Translator: add or replace a service (checked like the file).
    ServiceSet { service: ServiceSpec },
    /// Translator: remove a service.
    ServiceDel { address: Ipv4Addr, port: u16 },
    /// Translator: add or replace a prefix of services (checked like the
    /// file).
    PrefixSet { prefix: PrefixSpec },
    /// Translator: remove the prefix of this network and length that holds
    /// `port`.
    PrefixDel { network: Ipv4Addr, len: u8, port: u16 },
    /// Either mode: switch the kernel programs' debug log on or off.
    KernelLog { on: bool },
    /// Either mode: stop for good (reset every flow, then remove the
    /// datapath and exit).
    Stop,
    /// Translator: the connections the relay carries (a JSON array of
    /// `relay::RelayRow`).
    RelayConnections,
    /// Either mode: write the counts the agent holds to the pinned
    /// counters now (it writes them once a tick, 100 ms; readers of the
    /// pins, `stats` and the metrics, ask first).
    FlushCounts,
}

/// A service as the protocol carries it (the service ID in its text form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub address: Ipv4Addr,
    pub port: u16,
    pub service_id: String,
    #[serde(default)]
    pub instances: Vec<InstanceSpec>,
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub mode: crate::config::ServiceMode,
}

/// A prefix of services as the protocol carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixSpec {
    pub network: Ipv4Addr,
    pub len: u8,
    pub first_port: u16,
    pub last_port: u16,
    /// Host part 0's service, in its text form.
    pub service_id: String,
    #[serde(default)]
    pub instances: Vec<InstanceSpec>,
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
}

impl From<&Prefix> for PrefixSpec {
    fn from(p: &Prefix) -> Self {
        PrefixSpec {
            network: p.network,
            len: p.len,
            first_port: p.ports.0,
            last_port: p.ports.1,
            service_id: p.service_id.to_string(),
            instances: p.instances.iter().map(|i| InstanceSpec { address: i.address, weight: i.weight }).collect(),
            router: p.router,
        }
    }
}

impl TryFrom<&PrefixSpec> for Prefix {
    type Error = anyhow::Error;
    fn try_from(p: &PrefixSpec) -> Result<Prefix> {
        Ok(Prefix {
            network: p.network,
            len: p.len,
            ports: (p.first_port, p.last_port),
            service_id: p.service_id.parse().map_err(|e| anyhow!("service ID {:?}: {e}", p.service_id))?,
            instances: p.instances.iter().map(|i| Instance { address: i.address, weight: i.weight }).collect(),
            router: p.router,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub address: Ipv4Addr,
    pub weight: u32,
}

impl From<&Service> for ServiceSpec {
    fn from(s: &Service) -> Self {
        ServiceSpec {
            address: s.address,
            port: s.port,
            service_id: s.service_id.to_string(),
            instances: s.instances.iter().map(|i| InstanceSpec { address: i.address, weight: i.weight }).collect(),
            router: s.router,
            mode: s.mode,
        }
    }
}

impl TryFrom<&ServiceSpec> for Service {
    type Error = anyhow::Error;
    fn try_from(s: &ServiceSpec) -> Result<Service> {
        Ok(Service {
            address: s.address,
            port: s.port,
            service_id: s.service_id.parse().map_err(|e| anyhow!("service ID {:?}: {e}", s.service_id))?,
            instances: s.instances.iter().map(|i| Instance { address: i.address, weight: i.weight }).collect(),
            router: s.router,
            mode: s.mode,
        })
    }
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "message", rename_all = "snake_case")]
pub enum Response {
    Ok(String),
    Error(String),
}

impl From<Result<String>> for Response {
    fn from(r: Result<String>) -> Self {
        match r {
            Ok(m) => Response::Ok(m),
            Err(e) => Response::Error(format!("{e:#}")),
        }
    }
}

/// Sends `req` to the agent behind `sock`; its message, or its error.
/// `what` names the agent in the error when none answers.
pub fn call(sock: &Path, what: &str, req: &Request) -> Result<String> {
    // A waiting migration answers after its deadline at the latest.
    let patience = match req {
        Request::Migrate { wait: true, .. } => super::sal_control::MIGRATION_DEADLINE + Duration::from_secs(10),
        _ => Duration::from_secs(10),
    };
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("no {what} in this network namespace ({} cannot be reached)", sock.display()))?;
    s.set_read_timeout(Some(patience))?;
    writeln!(s, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).context("reading the agent's answer")?;
    match serde_json::from_str::<Response>(&line).with_context(|| format!("the agent answered {line:?}"))? {
        Response::Ok(m) => Ok(m),
        Response::Error(e) => bail!("{e}"),
    }
}

/// Parses one request line as the agent receives it.
pub fn parse(line: &str) -> Result<Request, Response> {
    serde_json::from_str(line.trim()).map_err(|e| Response::Error(format!("malformed request {:?}: {e}", line.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_as_documented() {
        let r = Request::ServiceDel { address: Ipv4Addr::new(203, 0, 113, 1), port: 80 };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"request":"service_del","address":"203.0.113.1","port":80}"#);
        assert_eq!(parse(&text), Ok(r));
        let ok = serde_json::to_string(&Response::Ok("removed 203.0.113.1:80".into())).unwrap();
        assert_eq!(ok, r#"{"result":"ok","message":"removed 203.0.113.1:80"}"#);
        assert!(matches!(parse("migrate 10.0.0.1"), Err(Response::Error(e)) if e.contains("malformed request")));
        // A client from before `wait` existed is understood.
        let old = r#"{"request":"migrate","to":"10.0.0.2"}"#;
        assert_eq!(parse(old), Ok(Request::Migrate { to: Ipv4Addr::new(10, 0, 0, 2), wait: false }));
    }

    #[test]
    fn a_service_survives_the_trip() {
        let s = Service {
            address: Ipv4Addr::new(203, 0, 113, 1),
            port: 443,
            service_id: "000001bb".parse().unwrap(),
            instances: vec![Instance { address: Ipv4Addr::new(10, 10, 0, 12), weight: 3 }],
            router: None,
            mode: crate::config::ServiceMode::Relay,
        };
        let back = Service::try_from(&ServiceSpec::from(&s)).unwrap();
        assert_eq!(back, s);
    }
}
