//! `xlate-user run`: the packet-level translator on a gateway. Loads the
//! XDP program onto the gateway NIC(s), fills its maps from the TOML
//! configuration (SIGHUP reloads it), and runs the SAL control plane shared
//! with host mode. See docs/translator.md.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use xlate_common::flow::{config_flag, gw, names, EngineConfig, SynBudget};
use xlate_common::maps::ServiceKey;

use crate::agent::control_plane::ControlPlane;
use crate::agent::maps::{pin_dir_for_agent, take, FlowMaps, Kind};
use crate::agent::protocol::{self as control_protocol, Request, Response};
use crate::agent::resident::{self, attach_tc, attach_xdp, drop_other_links, Attached, Lock, Record};
use crate::agent::{control_socket, event_loop, seal_flows, seed_rotation, ControlSocket, Ending};
use crate::config::{Config, Service};
use crate::ebpf::Resident;
use crate::netif::{Interface, Segmenter};
use crate::rawsock::RawSocket;

/// The translator's XDP attachment (its link's pin name), whichever build
/// of the program is behind it.
pub const PROGRAM: &str = gw::XDP_PROGRAM;

/// The build of the translator's XDP program this kernel takes: checksum
/// notes in XDP metadata where the verifier allows `bpf_xdp_adjust_meta`,
/// else in a map (see `xlate_common::flow::gw`).
pub fn xdp_program() -> &'static str {
    if crate::kernel_features::get().xdp_meta {
        gw::XDP_PROGRAM
    } else {
        gw::XDP_PROGRAM_NO_META
    }
}
/// Host mode's egress programs, which carry the relay's outbound
/// connections.
const HOST_EGRESS: &str = "xlate_host_egress";
const HOST_SEGMENTED: &str = "xlate_host_segmented";

pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub config: PathBuf,
    pub mode: XdpMode,
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    pub relay: RelayUse,
    /// Overrides the configuration's `[relay] data_mover`.
    pub mover: Option<crate::relay::pump::Mode>,
    /// Add the service addresses no interface has (dynamic aliasing).
    pub alias: bool,
}

/// What the stream-level relay takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayUse {
    /// No relay: what the fast path declines goes to the kernel as it is.
    Off,
    /// What the fast path declines, and the services in `mode = "relay"`.
    Fallback,
    /// Every service (`xlate-user relay`): the fast path translates none.
    Everything,
}

/// How long a flow may wait for its SYN-ACK before the instance it was
/// sent to counts as failed. Longer than the client's first SYN
/// retransmission (1 s), which repeats the same SAL SYN: one lost SYN
/// does not fail an instance; the retransmission after that (3 s) then
/// starts a new flow on a live instance.
const SYN_TIMEOUT: Duration = Duration::from_millis(2200);
/// How long a failed instance gets no new connections.
const DOWN_FOR: Duration = Duration::from_secs(10);

/// What a Maglev row belongs to: a service, or a prefix (all its services).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RowOwner {
    Service(Ipv4Addr, u16),
    /// Network, length, first port.
    Prefix(Ipv4Addr, u8, u16),
}

impl RowOwner {
    fn of_prefix(p: &crate::config::Prefix) -> RowOwner {
        RowOwner::Prefix(p.network, p.len, p.ports.0)
    }
}

/// The kernel's entries for prefix `p` in Maglev row `row`: one per port.
fn prefix_entries_of(p: &crate::config::Prefix, row: u32) -> Vec<(Key<gw::PrefixKey>, gw::GwPrefix)> {
    let host_mask = u32::MAX.checked_shr(u32::from(p.len)).unwrap_or(0);
    let value = gw::GwPrefix {
        service_id: p.service_id.0,
        host_mask,
        index: row,
        router: p.router.map_or([0; 4], |r| r.octets()),
    };
    (p.ports.0..=p.ports.1)
        .map(|port| {
            let k = gw::PrefixKey { port: port.to_be_bytes(), addr: p.network.octets() };
            (Key::new(gw::PrefixKey::PORT_BITS + u32::from(p.len), k), value)
        })
        .collect()
}

/// One entry of the kernel's prefix table.
#[derive(Debug, Clone, Copy)]
pub struct PrefixEntry {
    pub port: u16,
    pub network: Ipv4Addr,
    pub len: u8,
    pub entry: gw::GwPrefix,
}

impl PrefixEntry {
    /// Whether it holds destination `addr`:`port`.
    pub fn holds(&self, addr: Ipv4Addr, port: u16) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        port == self.port && u32::from(addr) & mask == u32::from(self.network)
    }
}

/// Every entry of the translator's prefix table.
pub fn prefix_entries(kind: Kind, iface: &str) -> Result<Vec<PrefixEntry>> {
    let m: LpmTrie<MapData, gw::PrefixKey, gw::GwPrefix> =
        crate::agent::maps::open_pinned(kind, iface, gw::PREFIXES)?.try_into()?;
    let mut out = Vec::new();
    for item in m.iter() {
        let (k, entry) = item?;
        let d = k.data();
        out.push(PrefixEntry {
            port: u16::from_be_bytes(d.port),
            network: Ipv4Addr::from(d.addr),
            len: (k.prefix_len() - gw::PrefixKey::PORT_BITS) as u8,
            entry,
        });
    }
    Ok(out)
}

/// The gateway's own maps (the flow maps are host mode's), the running
/// configuration and instance health.
struct GwMaps {
    services: HashMap<MapData, ServiceKey, gw::GwService>,
    prefixes: LpmTrie<MapData, gw::PrefixKey, gw::GwPrefix>,
    maglev: Array<MapData, [u8; 4]>,
    cfg: Config,
    path: PathBuf,
    /// Instances that failed a handshake, and until when they are out.
    down: std::collections::HashMap<Ipv4Addr, std::time::Instant>,
    /// The Maglev row of each service and prefix, stable across reloads
    /// and edits so that a live entry never points at another's row.
    rows: std::collections::HashMap<RowOwner, u32>,
    /// Devices XDP may redirect rewritten frames to (see `xdp_features`).
    redirect: Redirect,
    /// New flows, oldest first, until their handshake is due (health).
    syn_watch: std::collections::VecDeque<(std::time::Instant, u32)>,
    /// The relay's share: `None` when it is off.
    relay: Option<RelayMaps>,
    relay_view: Option<crate::relay::View>,
}

/// What the agent keeps in step for the relay at every change of the
/// service table.
struct RelayMaps {
    /// Services whose segments XDP leaves to the relay.
    services: HashMap<MapData, ServiceKey, u32>,
    /// (instance, [`crate::relay::connect_port`]) -> service ID: the
    /// relay's outbound connections become SAL connections.
    connect: HashMap<MapData, ServiceKey, xlate_common::maps::ServiceEntry>,
    /// The table the relay's listeners follow.
    table: tokio::sync::watch::Sender<std::sync::Arc<Config>>,
    everything: bool,
    /// `--mode`: overrides the file's `data_mover`.
    mover: Option<crate::relay::pump::Mode>,
}

impl RelayMaps {
    /// `xlate-user relay` gives every service to the relay.
    fn adjust(&self, cfg: &mut Config) {
        if let Some(m) = self.mover {
            cfg.relay.mover = m;
        }
        if self.everything {
            for s in &mut cfg.services {
                s.mode = crate::config::ServiceMode::Relay;
            }
        }
    }

    /// New entries first, stale ones after (as for the services).
    fn apply(&mut self, cfg: &Config, rows: &std::collections::HashMap<RowOwner, u32>) -> Result<()> {
        use crate::config::ServiceMode;
        let mut relayed = Vec::new();
        let mut connect = Vec::new();
        for s in &cfg.services {
            let key = ServiceKey::new(s.address, s.port);
            if s.mode == ServiceMode::Relay {
                self.services.insert(key, 1, 0)?;
                relayed.push(key);
            }
            let port = crate::relay::connect_port(rows[&RowOwner::Service(s.address, s.port)]);
            let entry = xlate_common::maps::ServiceEntry { service_id: s.service_id };
            for t in s.instances.iter().map(|i| i.address).chain(s.router) {
                let k = ServiceKey::new(t, port);
                self.connect.insert(k, entry, 0)?;
                connect.push(k);
            }
        }
        let stale: Vec<ServiceKey> =
            self.services.keys().filter_map(|k| k.ok()).filter(|k| !relayed.contains(k)).collect();
        for k in stale {
            self.services.remove(&k)?;
        }
        let stale: Vec<ServiceKey> =
            self.connect.keys().filter_map(|k| k.ok()).filter(|k| !connect.contains(k)).collect();
        for k in stale {
            self.connect.remove(&k)?;
        }
        self.table.send_replace(std::sync::Arc::new(cfg.clone()));
        Ok(())
    }
}

/// The redirect targets the kernel may use, kept in step with the devices'
/// xdp-features (checked at start and every second: a veth's peer may
/// start or stop GRO or XDP at any time).
struct Redirect {
    map: HashMap<MapData, u32, u32>,
    /// ifindex -> accepts redirected frames, as last written.
    known: std::collections::BTreeMap<u32, bool>,
    /// The translator's own interfaces, named in messages.
    ifaces: Vec<(u32, String)>,
    enabled: bool,
    /// Generic (skb) XDP: a redirected frame is handed to the device's
    /// ordinary transmit path, which every device has.
    generic: bool,
    ticks: u32,
}

impl Redirect {
    fn name(&self, ifindex: u32) -> String {
        self.ifaces.iter().find(|(i, _)| *i == ifindex).map_or(format!("ifindex {ifindex}"), |(_, n)| n.clone())
    }

    /// Reads every device's xdp-features and updates the map; says what
    /// changed for the translator's own interfaces (all of them at start).
    fn refresh(&mut self, start: bool) -> Result<()> {
        if !self.enabled {
            if start {
                tracing::info!(
                    "XDP redirect off (xdp_redirect = false, or no xdp-features in this kernel): the kernel forwards \
                     every rewritten frame"
                );
            }
            return Ok(());
        }
        let devices = crate::xdp_features::devices()?;
        let mut seen = std::collections::BTreeSet::new();
        for d in devices {
            seen.insert(d.ifindex);
            let ok = self.generic || d.accepts_redirect();
            if self.known.get(&d.ifindex) == Some(&ok) {
                continue;
            }
            if ok {
                self.map.insert(d.ifindex, gw::redirect::OK, 0)?;
            } else {
                let _ = self.map.remove(&d.ifindex);
            }
            self.known.insert(d.ifindex, ok);
            if self.ifaces.iter().any(|(i, _)| *i == d.ifindex) || !start {
                let name = self.name(d.ifindex);
                if ok && self.generic {
                    tracing::info!("{name}: frames to it leave by XDP redirect (generic XDP: sent as ordinary skbs)");
                } else if ok {
                    tracing::info!("{name}: frames to it leave by XDP redirect (the device transmits XDP frames)");
                } else {
                    tracing::info!(
                        "{name}: frames to it go through the kernel's forwarding, not XDP redirect (its xdp-features lack \
                         ndo-xmit; for a veth: its peer runs neither an XDP program nor GRO)"
                    );
                }
            }
        }
        let gone: Vec<u32> = self.known.keys().copied().filter(|i| !seen.contains(i)).collect();
        for i in gone {
            let _ = self.map.remove(&i);
            self.known.remove(&i);
        }
        Ok(())
    }

    fn tick(&mut self) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(10) {
            if let Err(e) = self.refresh(false) {
                tracing::warn!("reading xdp-features: {e:#}");
            }
        }
    }
}

impl GwMaps {
    /// Replaces the service table with `cfg`'s, without the instances that
    /// are down (unless that would leave a service with none). New entries
    /// go in first, stale ones out after, so a reload never leaves a gap.
    fn apply(&mut self, cfg: &Config) -> Result<()> {
        let owners: Vec<RowOwner> = cfg
            .services
            .iter()
            .map(|s| RowOwner::Service(s.address, s.port))
            .chain(cfg.prefixes.iter().map(RowOwner::of_prefix))
            .collect();
        for s in &cfg.services {
            let row = self.row(RowOwner::Service(s.address, s.port))?;
            self.fill_row(row, &s.instances)?;
            let entry = gw::GwService {
                service_id: s.service_id.0,
                index: row,
                router: s.router.map_or([0; 4], |r| r.octets()),
            };
            self.services.insert(ServiceKey::new(s.address, s.port), entry, 0)?;
        }
        let mut wanted = Vec::new();
        for p in &cfg.prefixes {
            let row = self.row(RowOwner::of_prefix(p))?;
            self.fill_row(row, &p.instances)?;
            for (k, v) in prefix_entries_of(p, row) {
                self.prefixes.insert(&k, v, 0)?;
                wanted.push((k.prefix_len(), k.data()));
            }
        }
        let keep: Vec<ServiceKey> = cfg.services.iter().map(|s| ServiceKey::new(s.address, s.port)).collect();
        let stale: Vec<ServiceKey> =
            self.services.keys().filter_map(|k| k.ok()).filter(|k| !keep.contains(k)).collect();
        for k in stale {
            self.services.remove(&k)?;
        }
        let stale: Vec<Key<gw::PrefixKey>> = self
            .prefixes
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            self.prefixes.remove(&k)?;
        }
        self.rows.retain(|o, _| owners.contains(o));
        if let Some(r) = self.relay.as_mut() {
            r.apply(cfg, &self.rows)?;
        }
        Ok(())
    }

    /// `owner`'s Maglev row: the one it has, else a free one.
    fn row(&mut self, owner: RowOwner) -> Result<u32> {
        if let Some(r) = self.rows.get(&owner) {
            return Ok(*r);
        }
        let r = (0..gw::MAX_SERVICES)
            .find(|r| !self.rows.values().any(|u| u == r))
            .ok_or_else(|| anyhow!("no free Maglev row: at most {} services and prefixes", gw::MAX_SERVICES))?;
        self.rows.insert(owner, r);
        Ok(r)
    }

    /// Writes row `row`'s Maglev table over `instances`, without those that
    /// are down (unless that would leave none).
    fn fill_row(&mut self, row: u32, instances: &[crate::config::Instance]) -> Result<()> {
        let up: Vec<_> = instances.iter().copied().filter(|x| !self.down.contains_key(&x.address)).collect();
        let table = crate::maglev::table(if up.is_empty() { instances } else { &up }, gw::MAGLEV_SIZE);
        for (slot, addr) in table.iter().enumerate() {
            self.maglev.set(row * gw::MAGLEV_SIZE + slot as u32, addr.octets(), 0)?;
        }
        Ok(())
    }

    /// Live edit: add or replace one prefix (by network, length and
    /// ports; an overlapping one of the same network and length is
    /// replaced).
    fn set_prefix(&mut self, p: crate::config::Prefix) -> Result<String> {
        p.check(self.cfg.sal_address)?;
        let mut cfg = self.cfg.clone();
        cfg.prefixes.retain(|o| {
            !((o.network, o.len) == (p.network, p.len) && o.ports.0 <= p.ports.1 && p.ports.0 <= o.ports.1)
        });
        let what = format!("{} -> services {} + host", p.name(), p.service_id);
        cfg.prefixes.push(p);
        self.apply(&cfg)?;
        self.cfg = cfg;
        Ok(format!("ok: {what}"))
    }

    /// Live edit: remove the prefix of this network and length that holds
    /// `port`.
    fn del_prefix(&mut self, network: Ipv4Addr, len: u8, port: u16) -> Result<String> {
        let mut cfg = self.cfg.clone();
        let Some(i) = cfg
            .prefixes
            .iter()
            .position(|o| (o.network, o.len) == (network, len) && (o.ports.0..=o.ports.1).contains(&port))
        else {
            bail!("no prefix {network}/{len} with port {port}");
        };
        let gone = cfg.prefixes.remove(i);
        self.apply(&cfg)?;
        self.cfg = cfg;
        Ok(format!("ok: removed {}", gone.name()))
    }

    /// Live edit: add or replace one service (by address and port).
    fn set_service(&mut self, svc: crate::config::Service) -> Result<String> {
        svc.check(self.cfg.sal_address)?;
        if svc.mode == crate::config::ServiceMode::Relay && self.relay.is_none() {
            bail!(
                "service {}:{} has mode relay, but this translator runs without the relay (--no-relay)",
                svc.address,
                svc.port
            );
        }
        check_listeners(std::slice::from_ref(&svc), &self.cfg)?;
        let mut cfg = self.cfg.clone();
        cfg.services.retain(|s| (s.address, s.port) != (svc.address, svc.port));
        let what = format!("{}:{} -> service {}", svc.address, svc.port, svc.service_id);
        cfg.services.push(svc);
        if let Some(r) = &self.relay {
            r.adjust(&mut cfg);
        }
        self.apply(&cfg)?;
        self.cfg = cfg;
        Ok(format!("ok: {what}"))
    }

    /// Live edit: remove one service.
    fn del_service(&mut self, address: Ipv4Addr, port: u16) -> Result<String> {
        let mut cfg = self.cfg.clone();
        let before = cfg.services.len();
        cfg.services.retain(|s| (s.address, s.port) != (address, port));
        if cfg.services.len() == before {
            bail!("no service at {address}:{port}");
        }
        self.apply(&cfg)?;
        self.cfg = cfg;
        Ok(format!("ok: removed {address}:{port}"))
    }
}

impl crate::agent::LoopHooks for GwMaps {
    fn reload(&mut self) -> Result<String> {
        let mut new = Config::load(&self.path)?;
        check_listeners(&new.services, &self.cfg).with_context(|| self.path.display().to_string())?;
        if let Some(r) = &self.relay {
            r.adjust(&mut new);
        }
        if new.sal_address != self.cfg.sal_address {
            bail!("sal_address cannot change while running (restart instead)");
        }
        if self.relay.is_none() {
            if let Some(s) = new.services.iter().find(|s| s.mode == crate::config::ServiceMode::Relay) {
                bail!(
                    "service {}:{} has mode = \"relay\", but this translator runs without the relay (--no-relay)",
                    s.address,
                    s.port
                );
            }
        }
        if new.max_flows != self.cfg.max_flows {
            bail!("max_flows cannot change while running (the tables are sized at start: stop for good, then start)");
        }
        self.apply(&new)?;
        self.cfg = new;
        Ok(format!(
            "reloaded {}: {} services, {} prefixes",
            self.path.display(),
            self.cfg.services.len(),
            self.cfg.prefixes.len()
        ))
    }

    /// `xlate-user map set|del`.
    fn request(&mut self, req: &Request) -> Option<Response> {
        let r = match req {
            Request::ServiceSet { service } => Service::try_from(service).and_then(|s| self.set_service(s)),
            Request::ServiceDel { address, port } => self.del_service(*address, *port),
            Request::PrefixSet { prefix } => crate::config::Prefix::try_from(prefix).and_then(|p| self.set_prefix(p)),
            Request::PrefixDel { network, len, port } => self.del_prefix(*network, *len, *port),
            Request::RelayConnections => {
                let rows = self.relay_view.as_ref().map(|v| v.connections()).unwrap_or_default();
                Ok(serde_json::to_string(&rows).unwrap_or_default())
            }
            _ => return None,
        };
        Some(r.into())
    }

    /// Passive health checking: a handshake that got no SYN-ACK in time
    /// marks its instance down for a while, its Maglev slots go to the
    /// others, and the stuck flow is freed so that the client's SYN
    /// retransmission starts over on a live instance.
    fn tick(&mut self, cp: &mut ControlPlane) {
        self.redirect.tick();
        let now = std::time::Instant::now();
        let mut changed = false;
        self.down.retain(|a, until| {
            let keep = *until > now;
            if !keep {
                tracing::info!("instance {a} back in rotation");
                changed = true;
            }
            keep
        });
        // Each new flow is looked at once, SYN_TIMEOUT after it started:
        // the cost follows the new flows, not the size of the table.
        self.syn_watch.extend(cp.take_new_flows());
        let mut stuck = Vec::new();
        while let Some(&(t, id)) = self.syn_watch.front() {
            if now.duration_since(t) < SYN_TIMEOUT {
                break;
            }
            self.syn_watch.pop_front();
            if let Some(st) = cp.maps.flows.get(id) {
                if st.state == xlate_common::flow::state::SYN_SENT {
                    if let Some(a) = cp.maps.addrs_of(&st) {
                        stuck.push((id, Ipv4Addr::from(a.peer_ip)));
                    }
                }
            }
        }
        for (id, inst) in stuck {
            let configured = self.cfg.services.iter().flat_map(|s| &s.instances).any(|i| i.address == inst)
                || self.cfg.prefixes.iter().flat_map(|p| &p.instances).any(|i| i.address == inst);
            if configured && !self.down.contains_key(&inst) {
                tracing::info!(
                    "instance {inst} did not answer a SYN within {SYN_TIMEOUT:?}: out of rotation for {DOWN_FOR:?}"
                );
                self.down.insert(inst, now + DOWN_FOR);
                changed = true;
            }
            cp.free(id, xlate_common::flow::Counter::FlowsExpired);
        }
        if changed {
            let cfg = self.cfg.clone();
            if let Err(e) = self.apply(&cfg) {
                tracing::warn!("updating the instance tables: {e:#}");
            }
        }
    }
}

pub fn parse_addr_port(s: &str) -> Result<(Ipv4Addr, u16)> {
    let (a, p) = s.rsplit_once(':').ok_or_else(|| anyhow!("{s:?}: expected ADDR:PORT"))?;
    let addr = a.parse().map_err(|_| anyhow!("{a:?} is not an IPv4 address"))?;
    let port = p.parse().ok().filter(|p| *p != 0).ok_or_else(|| anyhow!("port {p:?} is not 1 to 65535"))?;
    Ok((addr, port))
}

/// A service from `xlate-user map set` words, checked like the TOML file.
pub fn parse_service(ap: &str, sid: &str, targets: &str) -> Result<crate::config::Service> {
    let (address, port) = parse_addr_port(ap)?;
    let service_id = sid.parse().map_err(|e| anyhow!("service ID {sid:?}: {e}"))?;
    let (instances, router) = parse_targets(targets)?;
    Ok(crate::config::Service { address, port, service_id, instances, router, mode: Default::default() })
}

/// A prefix from `xlate-user map set` words: `NETWORK/LEN:PORT` or
/// `NETWORK/LEN:FIRST-LAST`, host 0's service ID, the targets.
pub fn parse_prefix(text: &str, sid: &str, targets: &str) -> Result<crate::config::Prefix> {
    let (network, len, ports) = parse_prefix_ports(text)?;
    let service_id = sid.parse().map_err(|e| anyhow!("service ID {sid:?}: {e}"))?;
    let (instances, router) = parse_targets(targets)?;
    Ok(crate::config::Prefix { network, len, ports, service_id, instances, router })
}

/// `NETWORK/LEN:PORT` or `NETWORK/LEN:FIRST-LAST`.
pub fn parse_prefix_ports(text: &str) -> Result<(Ipv4Addr, u8, (u16, u16))> {
    let (net, ports) = text.rsplit_once(':').ok_or_else(|| anyhow!("{text:?}: expected NETWORK/LEN:PORT"))?;
    let (a, l) = net.split_once('/').ok_or_else(|| anyhow!("{net:?}: expected NETWORK/LEN"))?;
    let network = a.parse().map_err(|_| anyhow!("{a:?} is not an IPv4 address"))?;
    let len = l.parse().ok().filter(|l| *l <= 32).ok_or_else(|| anyhow!("prefix length {l:?} is not 0 to 32"))?;
    let port =
        |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| anyhow!("port {p:?} is not 1 to 65535"));
    let ports = match ports.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => (port(ports)?, port(ports)?),
    };
    Ok((network, len, ports))
}

/// `router=ADDR`, or instances `ADDR[:WEIGHT],...`.
fn parse_targets(targets: &str) -> Result<(Vec<crate::config::Instance>, Option<Ipv4Addr>)> {
    let (mut instances, mut router) = (Vec::new(), None);
    if let Some(r) = targets.strip_prefix("router=") {
        router = Some(r.parse().map_err(|_| anyhow!("router {r:?} is not an IPv4 address"))?);
    } else {
        for t in targets.split(',') {
            let (a, w) = t.split_once(':').unwrap_or((t, "1"));
            let address: Ipv4Addr = a.parse().map_err(|_| anyhow!("instance {a:?} is not an IPv4 address"))?;
            let weight = w
                .parse()
                .ok()
                .filter(|w| (1..=100).contains(w))
                .ok_or_else(|| anyhow!("weight {w:?} is not 1 to 100"))?;
            if instances.iter().any(|i: &crate::config::Instance| i.address == address) {
                bail!("instance {address} is listed twice");
            }
            instances.push(crate::config::Instance { address, weight });
        }
    }
    Ok((instances, router))
}

/// Sysctls the translator needs, set while it runs and restored after:
/// IPv4 forwarding (the kernel forwards the rewritten packets), and
/// `accept_local` on the gateway NICs (a translated SAL packet carries the
/// gateway's own SAL address as source, which the kernel otherwise drops
/// as a martian).
/// TCP sockets listening in this network namespace: (address, port).
fn listeners() -> Result<Vec<(Ipv4Addr, u16)>> {
    let text = std::fs::read_to_string("/proc/self/net/tcp").context("reading /proc/self/net/tcp")?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st ...; LISTEN is state 0A.
        if f.len() < 4 || f[3] != "0A" {
            continue;
        }
        let Some((a, p)) = f[1].split_once(':') else { continue };
        let (Ok(a), Ok(p)) = (u32::from_str_radix(a, 16), u16::from_str_radix(p, 16)) else { continue };
        // The address is printed as the host-order value of network bytes.
        out.push((Ipv4Addr::from(a.to_ne_bytes()), p));
    }
    Ok(out)
}

/// A service the translator takes over must not be an address and port a
/// socket of the gateway itself listens on: XDP rewrites those segments
/// before the local stack could see them, so that socket would go deaf.
fn check_listeners(services: &[crate::config::Service], running: &Config) -> Result<()> {
    let socks = listeners()?;
    // The running services' sockets are the relay's own.
    let ours =
        |s: &&crate::config::Service| !running.services.iter().any(|r| (r.address, r.port) == (s.address, s.port));
    for s in services.iter().filter(ours) {
        if let Some((a, p)) = socks.iter().find(|(a, p)| *p == s.port && *a == s.address) {
            bail!(
                "service {}:{} collides with a socket of this host listening on {a}:{p}; the translator would take \
                 its traffic (move the service or the listener)",
                s.address,
                s.port
            );
        }
    }
    Ok(())
}

pub fn run(opts: RunOptions) -> Result<()> {
    crate::agent::init_logging();
    crate::agent::ignore_sigpipe();
    let mut cfg = Config::load(&opts.config)?;
    let none = Config { services: Vec::new(), ..cfg.clone() };
    check_listeners(&cfg.services, &none).with_context(|| opts.config.display().to_string())?;
    if let Some(m) = opts.mover {
        cfg.relay.mover = m;
    }
    if opts.relay == RelayUse::Off {
        if let Some(s) = cfg.services.iter().find(|s| s.mode == crate::config::ServiceMode::Relay) {
            bail!(
                "{}: service {}:{} has mode = \"relay\" but the relay is off (--no-relay)",
                opts.config.display(),
                s.address,
                s.port
            );
        }
    }
    if opts.ifaces.is_empty() {
        bail!("give at least one --iface");
    }
    let ifaces: Vec<Interface> = opts.ifaces.iter().map(|n| Interface::lookup(n)).collect::<Result<_>>()?;
    let _rt_guard = crate::agent::runtime::runtime().enter();
    let first = ifaces[0].name.clone();
    let _lock = Lock::take(Kind::Gateway, &first)?;
    let dir = pin_dir_for_agent(Kind::Gateway, &first)?;
    let Resident { mut ebpf, adopted } = crate::ebpf::load_resident(&dir, cfg.max_flows)?;
    let kernel_log =
        crate::agent::kernel_log::reader(&mut ebpf).inspect_err(|e| tracing::warn!("no kernel debug log: {e:#}")).ok();
    crate::kernel_features::get().log();
    let variant = xdp_program();
    let prog: &mut Xdp = ebpf.program_mut(variant).ok_or_else(|| anyhow!("program {variant} missing"))?.try_into()?;
    crate::ebpf::loaded(variant, prog.load())?;
    let tc: &mut SchedClassifier = ebpf
        .program_mut(gw::CHECKSUM_PROGRAM)
        .ok_or_else(|| anyhow!("program {} missing", gw::CHECKSUM_PROGRAM))?
        .try_into()?;
    crate::ebpf::loaded(gw::CHECKSUM_PROGRAM, tc.load())?;
    if !adopted {
        seed_rotation(&mut ebpf)?;
    }
    let mut flows = FlowMaps::take(&mut ebpf)?;
    seal_flows(&flows.flows)?;
    let services: HashMap<MapData, ServiceKey, gw::GwService> = take(&mut ebpf, gw::SERVICES)?.try_into()?;
    let prefixes: LpmTrie<MapData, gw::PrefixKey, gw::GwPrefix> = take(&mut ebpf, gw::PREFIXES)?.try_into()?;
    // The Maglev rows an earlier run gave its services and prefixes stay
    // theirs (a prefix's row is known by its first port).
    let mut rows: std::collections::HashMap<RowOwner, u32> = services
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, v)| (RowOwner::Service(Ipv4Addr::from(k.addr), u16::from_be_bytes(k.port)), v.index))
        .collect();
    let mut firsts: std::collections::HashMap<(Ipv4Addr, u8, u32), u16> = Default::default();
    for (k, v) in prefixes.iter().filter_map(|r| r.ok()) {
        let len = (k.prefix_len() - gw::PrefixKey::PORT_BITS) as u8;
        let port = u16::from_be_bytes(k.data().port);
        let first = firsts.entry((Ipv4Addr::from(k.data().addr), len, v.index)).or_insert(port);
        *first = (*first).min(port);
    }
    rows.extend(firsts.into_iter().map(|((net, len, row), port)| (RowOwner::Prefix(net, len, port), row)));
    let mut gwm = GwMaps {
        services,
        prefixes,
        maglev: take(&mut ebpf, gw::MAGLEV)?.try_into()?,
        cfg: cfg.clone(),
        path: opts.config.clone(),
        down: Default::default(),
        rows,
        syn_watch: Default::default(),
        relay: None,
        relay_view: None,
        redirect: Redirect {
            map: HashMap::try_from(take(&mut ebpf, gw::REDIRECT_TARGETS)?)?,
            known: Default::default(),
            ifaces: ifaces.iter().map(|i| (i.index, i.name.clone())).collect(),
            // Without xdp-features no device can be vouched for.
            enabled: cfg.xdp_redirect && crate::kernel_features::get().xdp_features,
            generic: opts.mode == XdpMode::Skb,
            ticks: 0,
        },
    };
    let max_mss = ifaces.iter().map(|i| i.max_mss()).min().unwrap_or(1448);
    let mut record = Record::load(Kind::Gateway, &first)?;
    // A crashed run's aliases go; the relay adds what it wants again.
    record.remove_aliases();
    let mut engine = EngineConfig {
        addr: cfg.sal_address.octets(),
        max_mss,
        flags: if cfg.xdp_redirect && crate::kernel_features::get().xdp_features {
            config_flag::XDP_REDIRECT
        } else {
            0
        },
        ..Default::default()
    };
    // The relay's Serval side: its outbound connections leave by the
    // interface that reaches the instances, through the TC egress program
    // and a segmenter (as host mode's do).
    let serval_side = if opts.relay == RelayUse::Off {
        None
    } else {
        let iface = serval_side(&ifaces, &cfg);
        let seg = Segmenter::adopt_or_create(iface)?;
        record.segmenter = Some(seg.near.clone());
        engine.flags |= config_flag::CONNECT_TO_TCP_DESTINATION;
        engine.segmenter_ifindex = seg.near_index;
        engine.out_ifindex = iface.index;
        for prog in [HOST_EGRESS, HOST_SEGMENTED] {
            let p: &mut SchedClassifier =
                ebpf.program_mut(prog).ok_or_else(|| anyhow!("program {prog} missing"))?.try_into()?;
            crate::ebpf::loaded(prog, p.load())?;
        }
        let mut cfg = cfg.clone();
        let table = tokio::sync::watch::Sender::new(std::sync::Arc::new(cfg.clone()));
        let rm = RelayMaps {
            services: HashMap::try_from(take(&mut ebpf, gw::RELAY_SERVICES)?)?,
            connect: HashMap::try_from(crate::agent::maps::open_in(&dir, names::CONNECT)?)?,
            table,
            everything: opts.relay == RelayUse::Everything,
            mover: opts.mover,
        };
        rm.adjust(&mut cfg);
        gwm.cfg = cfg;
        gwm.relay = Some(rm);
        Some((iface.name.clone(), seg))
    };
    crate::engine_clock::measure(&mut ebpf, &mut engine);
    flows.config.set(0, engine, 0)?;
    // With a relay, part of the flow table is kept for the relay's own SAL
    // connections: the fast path declines new flows (to the relay) first.
    let table = u64::from(cfg.max_flows.unwrap_or(xlate_common::flow::MAX_FLOWS));
    let fast_path_limit = match serval_side {
        Some(_) => table - relay_reserve(table),
        None => 0,
    };
    flows.set_fast_path_limit(fast_path_limit);
    // The kernel's room for new flows, before anything is attached.
    flows.refresh_room(SynBudget::GATEWAY);
    let cfg = gwm.cfg.clone();
    gwm.apply(&cfg)?;
    let mut sysctls = vec!["/proc/sys/net/ipv4/ip_forward".to_string()];
    sysctls.extend(ifaces.iter().map(|i| format!("/proc/sys/net/ipv4/conf/{}/accept_local", i.name)));
    record.set_sysctls(&sysctls)?;
    record.save(Kind::Gateway, &first)?;
    let sal = RawSocket::new(i32::from(xlate_common::wire::IPPROTO_SAL)).context("opening the raw SAL socket")?;
    let inject = RawSocket::new(libc::IPPROTO_RAW).context("opening the raw injection socket")?;
    let events = RingBuf::try_from(take(&mut ebpf, names::EVENTS)?)?;
    // TC first: from the first rewritten frame on, its checksum note is
    // settled.
    let mut how = Vec::new();
    for i in &ifaces {
        let tc: &mut SchedClassifier = ebpf.program_mut(gw::CHECKSUM_PROGRAM).unwrap().try_into()?;
        how.push(attach_tc(tc, gw::CHECKSUM_PROGRAM, &i.name, TcAttachType::Ingress, &dir)?);
    }
    gwm.redirect.refresh(true)?;
    for i in &ifaces {
        let prog: &mut Xdp = ebpf.program_mut(variant).unwrap().try_into()?;
        how.push(attach_xdp(prog, PROGRAM, &i.name, opts.mode, &dir)?);
        // Generic XDP runs after GRO: a coalesced TCP packet would be
        // translated whole into a SAL packet no NIC can segment.
        if opts.mode == XdpMode::Skb && crate::netlink::gro_enabled(&i.name).unwrap_or(false) {
            tracing::warn!(
                "GRO is on on {0} and XDP is generic (after GRO): coalesced TCP would become SAL packets larger \
                 than the link carries; `ethtool -K {0} gro off`",
                i.name
            );
        }
    }
    let mut keep: Vec<(&str, &str)> =
        ifaces.iter().flat_map(|i| [(PROGRAM, i.name.as_str()), (gw::CHECKSUM_PROGRAM, i.name.as_str())]).collect();
    if let Some((iface, seg)) = &serval_side {
        let attachments = [
            (HOST_SEGMENTED, seg.far.as_str(), TcAttachType::Ingress),
            (HOST_EGRESS, iface.as_str(), TcAttachType::Egress),
        ];
        for (prog, dev, at) in attachments {
            let p: &mut SchedClassifier = ebpf.program_mut(prog).unwrap().try_into()?;
            how.push(attach_tc(p, prog, dev, at, &dir)?);
            keep.push((prog, dev));
        }
    }
    drop_other_links(&dir, &keep);
    let sock = ControlSocket::bind(Kind::Gateway, &first)?;
    tracing::info!(
        "xlate translator on {} ({:?} XDP), SAL address {}, MSS {max_mss}, {} services{}",
        opts.ifaces.join(","),
        opts.mode,
        cfg.sal_address,
        cfg.services.len(),
        if how.contains(&Attached::Replaced) {
            format!("; took over from the previous run with {} live flows", flows.flows.len())
        } else {
            String::new()
        }
    );
    for s in &cfg.services {
        let targets: Vec<String> = match s.router {
            Some(r) => vec![format!("router {r}")],
            None => s.instances.iter().map(|i| format!("{} (weight {})", i.address, i.weight)).collect(),
        };
        tracing::info!("  {}:{} -> service {} -> {}", s.address, s.port, s.service_id, targets.join(", "));
    }

    let cp = ControlPlane::new(flows, sal, inject, Duration::from_secs(cfg.idle_timeout), SynBudget::GATEWAY);
    if let Some(addr) = opts.metrics {
        crate::metrics::serve(addr, Kind::Gateway, first.clone())?;
        tracing::info!("metrics at http://{addr}/metrics");
    }
    let relay = match &serval_side {
        Some(_) => {
            let aliases = opts.alias.then(|| crate::relay::alias::Aliases::new(ifaces[0].index, first.clone()));
            let table = gwm.relay.as_ref().expect("relay maps").table.subscribe();
            let relay = crate::relay::Relay::new(&dir, table, aliases)?;
            gwm.relay_view = Some(relay.view());
            let c = &gwm.cfg.relay;
            let fds = crate::agent::raise_descriptor_limit();
            tracing::info!(
                "relay: {:?}, {} bytes per direction and connection, idle timeout {} s, up to about {} connections \
                 (descriptor limit {fds}){}",
                c.mover,
                c.buffer,
                c.idle_timeout,
                fds.saturating_sub(64) / 6,
                if opts.alias { "; dynamic aliasing on" } else { "" }
            );
            Some(relay)
        }
        None => None,
    };
    let local = tokio::task::LocalSet::new();
    let r = crate::agent::runtime::block_on(local.run_until(async {
        let relay = async {
            match relay {
                Some(r) => r.run().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = event_loop(cp, events, sock, kernel_log, Some(&mut gwm)) => r,
            _ = relay => unreachable!("the relay runs until dropped"),
        }
    }));
    // The relay's connections and listeners end with the agent (they are
    // its sockets); so do the aliases it added.
    drop(local);
    let mut record = Record::load(Kind::Gateway, &first)?;
    record.remove_aliases();
    record.save(Kind::Gateway, &first)?;
    drop(gwm);
    drop(ebpf);
    match r? {
        Ending::Signal => {
            if crate::agent::pins::pins_outlive_agent() {
                tracing::info!("agent stopped; the datapath goes on (`xlate-user stop --iface {first}` removes it)");
            } else {
                tracing::warn!("agent stopped; its pins were in its own mount namespace: the programs detach");
            }
        }
        Ending::ForGood => {
            resident::remove(Kind::Gateway, &first, &dir);
            tracing::info!("stopped for good: programs, pins and sysctls removed");
        }
    }
    Ok(())
}

/// Flow-table entries kept for the relay's SAL connections: an eighth of
/// the table, at least 8, at most half.
pub fn relay_reserve(table: u64) -> u64 {
    (table / 8).max(8).min(table / 2)
}

/// The interface the instances are reached by: the one holding the source
/// address the kernel would use towards the first instance (or router);
/// the last interface if that cannot be told.
fn serval_side<'a>(ifaces: &'a [Interface], cfg: &Config) -> &'a Interface {
    let target = cfg.services.iter().flat_map(|s| s.instances.iter().map(|i| i.address).chain(s.router)).next();
    let source = target.and_then(|t| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        s.connect((t, 9)).ok()?;
        match s.local_addr().ok()? {
            std::net::SocketAddr::V4(a) => Some(*a.ip()),
            _ => None,
        }
    });
    source
        .and_then(|a| ifaces.iter().find(|i| i.addrs.contains(&a)))
        .unwrap_or_else(|| ifaces.last().expect("at least one interface"))
}

/// `xlate-user stats|flows` read the translator's pinned maps.
pub fn stats(iface: &str) -> Result<Vec<(&'static str, u64)>> {
    crate::agent::inspect::stats(Kind::Gateway, iface)
}

pub fn flows(iface: &str) -> Result<Vec<crate::agent::inspect::FlowRow>> {
    crate::agent::inspect::flows(Kind::Gateway, iface)
}

/// The connections the running translator's relay carries (none when no
/// agent runs: the relay's sockets are the agent's).
pub fn relayed(iface: &str) -> Result<Vec<crate::relay::RelayRow>> {
    if !resident::Lock::held(Kind::Gateway, iface)? {
        return Ok(Vec::new());
    }
    let text = control(iface, &Request::RelayConnections)?;
    serde_json::from_str(&text).with_context(|| format!("the agent answered {text:?}"))
}

/// The instance a new connection from this 4-tuple goes to (what the
/// kernel computes), for operators and tests.
pub fn instance_for(cfg: &Config, client: (Ipv4Addr, u16), service: (Ipv4Addr, u16)) -> Option<Ipv4Addr> {
    let instances = match cfg.services.iter().find(|s| (s.address, s.port) == service) {
        Some(s) => &s.instances,
        None => {
            &cfg.prefixes
                .iter()
                .filter(|p| p.service_of(service.0, service.1).is_some())
                .max_by_key(|p| p.len)?
                .instances
        }
    };
    if instances.is_empty() {
        return None;
    }
    let table = crate::maglev::table(instances, gw::MAGLEV_SIZE);
    let h = gw::flow_hash(client.0.octets(), service.0.octets(), client.1.to_be_bytes(), service.1.to_be_bytes());
    Some(table[(h % gw::MAGLEV_SIZE) as usize])
}

/// Sends a request to the running translator.
pub fn control(iface: &str, req: &Request) -> Result<String> {
    control_protocol::call(&control_socket(Kind::Gateway, iface)?, &format!("translator on {iface}"), req)
}

/// One row of the service table as the kernel has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceRow {
    pub address: Ipv4Addr,
    pub port: u16,
    /// A prefix of services (`[[prefix]]`): `address` is its network,
    /// `service_id` host part 0's service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<PrefixSpan>,
    pub service_id: String,
    pub router: Option<Ipv4Addr>,
    /// Each instance and its share of the Maglev table (slots of 1021).
    pub instances: Vec<InstanceShare>,
    pub mode: crate::config::ServiceMode,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PrefixSpan {
    pub len: u8,
    pub last_port: u16,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceShare {
    pub address: Ipv4Addr,
    pub slots: u32,
}

impl std::fmt::Display for ServiceRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix {
            None => write!(f, "{}:{} service {} -> ", self.address, self.port, self.service_id)?,
            Some(p) => {
                let ports = if p.last_port == self.port {
                    self.port.to_string()
                } else {
                    format!("{}-{}", self.port, p.last_port)
                };
                write!(f, "{}/{}:{ports} services {} + host -> ", self.address, p.len, self.service_id)?
            }
        }
        if self.mode == crate::config::ServiceMode::Relay {
            write!(f, "relay -> ")?;
        }
        if let Some(r) = self.router {
            return write!(f, "router {r}");
        }
        let shares: Vec<String> =
            self.instances.iter().map(|i| format!("{} ({}/{} slots)", i.address, i.slots, gw::MAGLEV_SIZE)).collect();
        write!(f, "{}", shares.join(", "))
    }
}

/// The service table as the kernel has it, sorted by address and port.
pub fn services(iface: &str) -> Result<Vec<ServiceRow>> {
    use crate::agent::maps::open_pinned;
    let svc: HashMap<MapData, ServiceKey, gw::GwService> =
        open_pinned(Kind::Gateway, iface, gw::SERVICES)?.try_into()?;
    let mg: Array<MapData, [u8; 4]> = open_pinned(Kind::Gateway, iface, gw::MAGLEV)?.try_into()?;
    // Absent in a build without the relay.
    let relayed: Option<HashMap<MapData, ServiceKey, u32>> =
        open_pinned(Kind::Gateway, iface, gw::RELAY_SERVICES).ok().and_then(|m| m.try_into().ok());
    let shares = |index: u32, router: [u8; 4]| -> Result<(Option<Ipv4Addr>, Vec<InstanceShare>)> {
        let router = (router != [0; 4]).then(|| Ipv4Addr::from(router));
        let mut instances = Vec::new();
        if router.is_none() {
            let mut counts: std::collections::BTreeMap<Ipv4Addr, u32> = Default::default();
            for slot in 0..gw::MAGLEV_SIZE {
                *counts.entry(Ipv4Addr::from(mg.get(&(index * gw::MAGLEV_SIZE + slot), 0)?)).or_default() += 1;
            }
            instances = counts.into_iter().map(|(address, slots)| InstanceShare { address, slots }).collect();
        }
        Ok((router, instances))
    };
    let mut rows = Vec::new();
    for item in svc.iter() {
        let (k, v) = item?;
        let (router, instances) = shares(v.index, v.router)?;
        rows.push(ServiceRow {
            address: Ipv4Addr::from(k.addr),
            port: u16::from_be_bytes(k.port),
            prefix: None,
            service_id: xlate_common::ServiceId(v.service_id).to_string(),
            router,
            instances,
            mode: if relayed.as_ref().is_some_and(|r| r.get(&k, 0).is_ok()) {
                crate::config::ServiceMode::Relay
            } else {
                crate::config::ServiceMode::Fast
            },
        });
    }
    // A prefix has an entry per port: one row per run of ports.
    let mut entries = prefix_entries(Kind::Gateway, iface).unwrap_or_default();
    entries.sort_by_key(|e| (e.network, e.len, e.entry.index, e.port));
    let mut i = 0;
    while i < entries.len() {
        let e = entries[i];
        let mut last = e.port;
        while let Some(n) = entries.get(i + 1) {
            if (n.network, n.len, n.entry.index) != (e.network, e.len, e.entry.index) || n.port != last.wrapping_add(1)
            {
                break;
            }
            last += 1;
            i += 1;
        }
        i += 1;
        let (router, instances) = shares(e.entry.index, e.entry.router)?;
        rows.push(ServiceRow {
            address: e.network,
            port: e.port,
            prefix: Some(PrefixSpan { len: e.len, last_port: last }),
            service_id: xlate_common::ServiceId(e.entry.service_id).to_string(),
            router,
            instances,
            mode: crate::config::ServiceMode::Fast,
        });
    }
    rows.sort_by_key(|r| (r.address, r.port));
    Ok(rows)
}
