//! Reading a running agent's state from its pins: `flows` and `stats`.

use std::net::Ipv4Addr;

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use std::collections::HashMap;

use xlate_common::flow::{gw, names, state, CtlRecord, FlowAddrs, FlowState, ServeEntry, TupleEntry};
use xlate_common::maps::{FlowKey, ServiceEntry, ServiceKey};
use xlate_common::ServiceId;

use super::flow_table::FlowTable;
use super::maps::{self, Kind};
use super::sal_control::{Ctl, Migration};

/// One row of `host flows`.
pub struct FlowRow {
    pub state: FlowState,
    pub addrs: FlowAddrs,
    /// Its service, by the configuration (`None`: no longer configured).
    pub service: Option<ServiceId>,
    /// Its migration in progress, else the last one that ended.
    pub migration: Option<Migration>,
}

pub fn flows(kind: Kind, iface: &str) -> Result<Vec<FlowRow>> {
    let flows = FlowTable::new(maps::open_pinned(kind, iface, names::FLOWS)?)?;
    let tuples: aya::maps::HashMap<MapData, FlowKey, TupleEntry> =
        maps::open_pinned(kind, iface, names::TUPLES)?.try_into()?;
    // A reopened flow's addresses, and the agent's control state (both
    // absent on a datapath older than them).
    let reopened: Option<aya::maps::HashMap<MapData, u32, FlowAddrs>> =
        maps::open_pinned(kind, iface, names::REOPENED).ok().and_then(|m| m.try_into().ok());
    let ctl: Option<aya::maps::HashMap<MapData, u32, CtlRecord>> =
        maps::open_pinned(kind, iface, names::AGENT_CTL).ok().and_then(|m| m.try_into().ok());
    let services = Services::open(kind, iface);
    let mut rows = Vec::new();
    for st in flows.iter() {
        let id = st.local_flow;
        let a = tuples
            .get(&st.tuple(), 0)
            .ok()
            .filter(|t| t.flow == id)
            .map(|t| t.addrs)
            .or_else(|| reopened.as_ref().and_then(|r| r.get(&id, 0).ok()))
            .unwrap_or_default();
        let migration = ctl.as_ref().and_then(|c| c.get(&id, 0).ok()).and_then(|r| Ctl::migration_of(&r));
        rows.push(FlowRow { state: st, addrs: a, service: services.of(&st), migration });
    }
    rows.sort_by_key(|r| r.state.local_flow);
    Ok(rows)
}

/// The configuration a flow's service is found in (flows do not keep it,
/// see `FlowState`): a client flow's TCP destination is a translator
/// service or a `--connect` entry; a server flow's local port is the one
/// a served service is bound to.
struct Services {
    gateway: HashMap<ServiceKey, ServiceId>,
    /// The translator's prefixes.
    prefixes: Vec<crate::gateway::PrefixEntry>,
    connect: HashMap<ServiceKey, ServiceId>,
    served: HashMap<[u8; 2], ServiceId>,
}

impl Services {
    fn open(kind: Kind, iface: &str) -> Services {
        fn read<K: aya::Pod, V: aya::Pod, K2: std::hash::Hash + Eq, V2>(
            kind: Kind,
            iface: &str,
            name: &str,
            f: impl Fn(K, V) -> (K2, V2),
        ) -> HashMap<K2, V2> {
            let Some(m) = maps::open_pinned(kind, iface, name).ok() else { return HashMap::new() };
            let Ok(m) = aya::maps::HashMap::<MapData, K, V>::try_from(m) else { return HashMap::new() };
            m.iter().filter_map(|r| r.ok()).map(|(k, v)| f(k, v)).collect()
        }
        Services {
            gateway: read(kind, iface, gw::SERVICES, |k: ServiceKey, v: gw::GwService| (k, ServiceId(v.service_id))),
            prefixes: crate::gateway::prefix_entries(kind, iface).unwrap_or_default(),
            connect: read(kind, iface, names::CONNECT, |k: ServiceKey, v: ServiceEntry| (k, v.service_id)),
            served: read(kind, iface, names::SERVE, |k: [u8; 32], v: ServeEntry| (v.port, ServiceId(k))),
        }
    }

    fn of(&self, st: &FlowState) -> Option<ServiceId> {
        if st.role == xlate_common::flow::role::SERVER {
            return self.served.get(&st.tcp_local_port).copied();
        }
        let k = ServiceKey { addr: st.tcp_peer_addr, port: st.tcp_peer_port, _pad: [0; 2] };
        self.gateway.get(&k).or_else(|| self.connect.get(&k)).copied().or_else(|| {
            // The longest prefix that holds the address, as the kernel's trie.
            let (a, p) = (std::net::Ipv4Addr::from(st.tcp_peer_addr), u16::from_be_bytes(st.tcp_peer_port));
            self.prefixes
                .iter()
                .filter(|e| e.holds(a, p))
                .max_by_key(|e| e.len)
                .map(|e| ServiceId(e.entry.service(st.tcp_peer_addr).service_id))
        })
    }
}

impl FlowRow {
    fn service_text(&self) -> String {
        self.service.map_or_else(|| "-".to_string(), |s| s.to_string())
    }
}

impl std::fmt::Display for FlowRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.state;
        write!(
            f,
            "{:>10} {:>10} {:<6} {:<11} {:<28} {:<15} {:<15} {}:{} > {}:{} service {}",
            s.local_flow,
            s.peer_flow,
            if s.role == xlate_common::flow::role::CLIENT { "client" } else { "server" },
            state::name(s.state),
            self.migration.map_or_else(|| "-".to_string(), |m| m.to_string()),
            Ipv4Addr::from(self.addrs.local_ip),
            Ipv4Addr::from(self.addrs.peer_ip),
            Ipv4Addr::from(s.tcp_local_addr),
            u16::from_be_bytes(s.tcp_local_port),
            Ipv4Addr::from(s.tcp_peer_addr),
            u16::from_be_bytes(s.tcp_peer_port),
            self.service_text(),
        )
    }
}

impl FlowRow {
    /// The row as `flows --json` prints it.
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.state;
        serde_json::json!({
            "local_flow": s.local_flow,
            "peer_flow": s.peer_flow,
            "role": if s.role == xlate_common::flow::role::CLIENT { "client" } else { "server" },
            "state": state::name(s.state),
            "sal_local": Ipv4Addr::from(self.addrs.local_ip),
            "sal_peer": Ipv4Addr::from(self.addrs.peer_ip),
            "tcp_local": format!("{}:{}", Ipv4Addr::from(s.tcp_local_addr), u16::from_be_bytes(s.tcp_local_port)),
            "tcp_peer": format!("{}:{}", Ipv4Addr::from(s.tcp_peer_addr), u16::from_be_bytes(s.tcp_peer_port)),
            "service": self.service.map(|s| s.to_string()),
            "migration": self.migration,
        })
    }
}

/// Prints flows as a table, or as a JSON array.
pub fn print_flows(rows: &[FlowRow], json: bool) {
    if json {
        println!("{}", serde_json::Value::Array(rows.iter().map(FlowRow::to_json).collect()));
        return;
    }
    println!("{FLOWS_HEADER}");
    for r in rows {
        println!("{r}");
    }
}

/// [`print_flows`], then the relay's connections (`relay` in the role
/// column; in JSON, objects with `"relay": true`).
pub fn print_flows_and_relayed(rows: &[FlowRow], relayed: &[crate::relay::RelayRow], json: bool) {
    if json {
        let mut all: Vec<serde_json::Value> = rows.iter().map(FlowRow::to_json).collect();
        for r in relayed {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["relay"] = serde_json::Value::Bool(true);
            all.push(v);
        }
        println!("{}", serde_json::Value::Array(all));
        return;
    }
    print_flows(rows, false);
    for r in relayed {
        println!("{r}");
    }
}

/// Prints counters as `name value` lines, or as one JSON object.
pub fn print_stats(rows: &[(&'static str, u64)], json: bool) {
    if json {
        let m: serde_json::Map<String, serde_json::Value> =
            rows.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
        println!("{}", serde_json::Value::Object(m));
        return;
    }
    for (name, v) in rows {
        println!("{name} {v}");
    }
}

pub const FLOWS_HEADER: &str = "local_flow  peer_flow role   state       migration                    sal_local       \
                                sal_peer        tcp (local > peer) and service";

pub fn stats(kind: Kind, iface: &str) -> Result<Vec<(&'static str, u64)>> {
    super::flush_counts(kind, iface);
    let c: PerCpuArray<MapData, u64> = maps::open_pinned(kind, iface, names::COUNTERS)?.try_into()?;
    Ok(maps::read_counters(&c).into_iter().map(|(k, v)| (k.name(), v)).collect())
}
