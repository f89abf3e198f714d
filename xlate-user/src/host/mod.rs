//! `xlate-user host`: makes this host's ordinary TCP applications speak
//! Serval on one interface. See docs/host-mode.md.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{lpm_trie::Key, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use xlate_common::flow::{names, EngineConfig, RouteTargets, ServeEntry, MAX_ROUTE_TARGETS};
use xlate_common::maps::{ServiceEntry, ServiceKey};
use xlate_common::{ServiceId, ServicePrefix};

use crate::agent::control_plane::ControlPlane;
use crate::agent::maps::{self, FlowMaps, Kind};
use crate::agent::protocol::{self, Request};
use crate::agent::resident::{
    self, attach_tc, attach_xdp, drop_other_links, Attached, ConnectRouteRecord, Lock, Record,
};
use crate::agent::{control_socket, event_loop, seal_flows, seed_rotation, ControlSocket, Ending};
use crate::ebpf::Resident;
use crate::netif::{ConnectRoute, Interface, Segmenter};
use crate::rawsock::RawSocket;

/// `--serve SID=PORT`
#[derive(Debug, Clone)]
pub struct Serve {
    pub service: ServiceId,
    pub port: u16,
}

impl FromStr for Serve {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (sid, port) = s.rsplit_once('=').ok_or_else(|| anyhow!("--serve {s:?}: expected SERVICE_ID=PORT"))?;
        Ok(Serve {
            service: sid.parse().map_err(|e| anyhow!("--serve {s:?}: {e}"))?,
            port: port.parse().map_err(|_| anyhow!("--serve {s:?}: port {port:?} is not a number from 1 to 65535"))?,
        })
    }
}

/// `--connect SID=ADDR:PORT`
#[derive(Debug, Clone)]
pub struct Connect {
    pub service: ServiceId,
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl FromStr for Connect {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (sid, ap) = s.split_once('=').ok_or_else(|| anyhow!("--connect {s:?}: expected SERVICE_ID=ADDR:PORT"))?;
        let (a, p) = ap.rsplit_once(':').ok_or_else(|| anyhow!("--connect {s:?}: expected ADDR:PORT after '='"))?;
        Ok(Connect {
            service: sid.parse().map_err(|e| anyhow!("--connect {s:?}: {e}"))?,
            addr: a.parse().map_err(|_| anyhow!("--connect {s:?}: {a:?} is not an IPv4 address"))?,
            port: p.parse().map_err(|_| anyhow!("--connect {s:?}: port {p:?} is not a number from 1 to 65535"))?,
        })
    }
}

/// `--route SID[:BITS]=IP[,IP…]`
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: ServicePrefix,
    pub targets: Vec<Ipv4Addr>,
}

impl FromStr for Route {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (p, t) =
            s.rsplit_once('=').ok_or_else(|| anyhow!("--route {s:?}: expected SERVICE_ID[:BITS]=IP[,IP...]"))?;
        let prefix = p.parse().map_err(|e| anyhow!("--route {s:?}: {e}"))?;
        let targets = t
            .split(',')
            .map(|a| a.trim().parse().map_err(|_| anyhow!("--route {s:?}: {a:?} is not an IPv4 address")))
            .collect::<Result<Vec<Ipv4Addr>>>()?;
        if targets.is_empty() || targets.len() > MAX_ROUTE_TARGETS {
            bail!("--route {s:?}: give 1 to {MAX_ROUTE_TARGETS} target addresses");
        }
        Ok(Route { prefix, targets })
    }
}

/// Where received SAL becomes TCP (`--receive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Receive {
    /// XDP, except on a veth: TC there.
    Auto,
    /// Native XDP first (before GRO), TC ingress for the rest.
    Xdp,
    /// TC ingress only, then round through the segmenter pair, whose
    /// GRO coalesces the translated TCP (delivered from its near end).
    Tc,
    /// TC ingress only, each segment delivered on the interface itself,
    /// one at a time (firewall rules on the input interface see it there).
    TcInPlace,
}

impl Receive {
    /// What `Auto` means on `iface`. An XDP program on a veth makes the
    /// kernel take TSO from its peer (an XDP program must see every
    /// segment), so every flow the peer sends, Serval or not, is segmented
    /// in software and crosses the pair one segment at a time: measured with `cargo xtask bench --only
    /// host-mode`, plain TCP beside host mode fell to 5-8 Gbit/s with XDP
    /// receive, against 10-23 with TC receive. A NIC's XDP costs the
    /// sender nothing.
    fn resolve(self, iface: &Interface) -> Receive {
        match self {
            Receive::Auto if iface.veth => Receive::Tc,
            Receive::Auto => Receive::Xdp,
            r => r,
        }
    }
}

pub struct HostOptions {
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    pub iface: String,
    pub serve: Vec<Serve>,
    pub connect: Vec<Connect>,
    pub routes: Vec<Route>,
    pub idle_timeout: Duration,
    pub receive: Receive,
}

/// Runs host mode until SIGINT/SIGTERM (the datapath stays for the next
/// run) or `host stop` (it goes).
pub fn run(opts: HostOptions) -> Result<()> {
    crate::agent::init_logging();
    crate::agent::ignore_sigpipe();
    let iface = Interface::lookup(&opts.iface)?;
    let _rt_guard = crate::agent::runtime::runtime().enter();
    let _lock = Lock::take(Kind::Host, &iface.name)?;
    crate::kernel_features::get().log();
    let pin_dir = maps::pin_dir_for_agent(Kind::Host, &iface.name)?;
    let Resident { mut ebpf, adopted } = crate::ebpf::load_resident(&pin_dir, None)?;
    let kernel_log =
        crate::agent::kernel_log::reader(&mut ebpf).inspect_err(|e| tracing::warn!("no kernel debug log: {e:#}")).ok();
    for prog in PROGRAMS {
        let p: &mut SchedClassifier =
            ebpf.program_mut(prog).ok_or_else(|| anyhow!("program {prog} missing"))?.try_into()?;
        crate::ebpf::loaded(prog, p.load())?;
    }
    // A verifier that refuses the XDP receive program costs GRO, not
    // host mode: TC ingress receives everything then.
    let receive = opts.receive.resolve(&iface);
    let xdp_refused = if receive == Receive::Xdp {
        let p: &mut Xdp = ebpf.program_mut(RECEIVE).ok_or_else(|| anyhow!("program {RECEIVE} missing"))?.try_into()?;
        crate::ebpf::loaded(RECEIVE, p.load()).err()
    } else {
        None
    };
    if !adopted {
        seed_rotation(&mut ebpf)?;
    }
    let mut m = FlowMaps::take(&mut ebpf)?;
    seal_flows(&m.flows)?;
    let mut record = Record::load(Kind::Host, &iface.name)?;
    let segmenter = Segmenter::adopt_or_create(&iface)?;
    record.segmenter = Some(segmenter.near.clone());
    record.save(Kind::Host, &iface.name)?;
    let mut cfg = EngineConfig {
        addr: iface.addr.octets(),
        broadcast: iface.broadcast.octets(),
        mac: iface.mac,
        max_mss: iface.max_mss(),
        flags: 0,
        segmenter_ifindex: segmenter.near_index,
        out_ifindex: iface.index,
        ..Default::default()
    };
    crate::engine_clock::measure(&mut ebpf, &mut cfg);
    m.config.set(0, cfg, 0)?;
    // The kernel's room for new flows, before anything is attached.
    m.refresh_room(xlate_common::flow::SynBudget::HOST);
    // New entries first, then those an earlier run had and this one has
    // not: a SYN never finds a gap.
    let serve: Vec<[u8; 32]> = opts.serve.iter().map(|s| s.service.0).collect();
    for s in &opts.serve {
        m.serve.insert(s.service.0, ServeEntry { port: s.port.to_be_bytes(), _pad: [0; 2] }, 0)?;
    }
    let stale: Vec<[u8; 32]> = m.serve.keys().filter_map(|k| k.ok()).filter(|k| !serve.contains(k)).collect();
    for k in stale {
        let _ = m.serve.remove(&k);
    }
    let mut routes = Vec::new();
    for c in &opts.connect {
        m.connect.insert(ServiceKey::new(c.addr, c.port), ServiceEntry { service_id: c.service }, 0)?;
        let r = ConnectRoute::add(&iface, c.addr)?;
        routes.push(ConnectRouteRecord { addr: r.addr, ifindex: r.index, route: r.route });
    }
    let connect: Vec<ServiceKey> = opts.connect.iter().map(|c| ServiceKey::new(c.addr, c.port)).collect();
    let stale: Vec<ServiceKey> = m.connect.keys().filter_map(|k| k.ok()).filter(|k| !connect.contains(k)).collect();
    for k in stale {
        let _ = m.connect.remove(&k);
    }
    for old in record.connect_routes.iter().filter(|r| !routes.contains(r)) {
        ConnectRoute { index: old.ifindex, addr: old.addr, route: old.route }.remove();
    }
    record.connect_routes = routes;
    record.save(Kind::Host, &iface.name)?;
    let old_routes: Vec<Key<[u8; 32]>> = m.routes.keys().filter_map(|k| k.ok()).collect();
    for k in old_routes {
        let _ = m.routes.remove(&k);
    }
    for r in &opts.routes {
        let mut t = RouteTargets::default();
        for (i, a) in r.targets.iter().enumerate() {
            t.addrs[i] = a.octets();
        }
        t.count = r.targets.len() as u32;
        m.routes.insert(&Key::new(u32::from(r.prefix.bits()), r.prefix.id().0), t, 0)?;
    }
    // The raw socket must exist before traffic: it is also what keeps the
    // kernel from answering SAL with ICMP protocol-unreachable.
    let sal = RawSocket::new(i32::from(xlate_common::wire::IPPROTO_SAL)).context("opening the raw SAL socket")?;
    let inject = RawSocket::new(libc::IPPROTO_RAW).context("opening the raw injection socket")?;
    let events = RingBuf::try_from(maps::take(&mut ebpf, names::EVENTS)?)?;

    let mut how = Vec::new();
    let attachments = [
        ("xlate_host_segmented", segmenter.far.as_str(), TcAttachType::Ingress),
        ("xlate_host_ingress", iface.name.as_str(), TcAttachType::Ingress),
        ("xlate_host_egress", iface.name.as_str(), TcAttachType::Egress),
    ];
    for (prog, dev, at) in attachments {
        let p: &mut SchedClassifier = ebpf.program_mut(prog).unwrap().try_into()?;
        how.push(attach_tc(p, prog, dev, at, &pin_dir)?);
    }
    let mut keep: Vec<(&str, &str)> = attachments.iter().map(|(p, d, _)| (*p, *d)).collect();
    // After TC ingress: whatever XDP leaves is taken from the first frame.
    let (receive, at_xdp) = match (receive, xdp_refused) {
        (Receive::Tc, _) if opts.receive == Receive::Auto => {
            ("receive at TC ingress (--receive auto on a veth: XDP here would take TSO from its peer)", false)
        }
        (Receive::Tc | Receive::Auto, _) => ("receive at TC ingress (--receive tc)", false),
        (Receive::TcInPlace, _) => ("receive at TC ingress, in place (--receive tc-in-place)", false),
        (Receive::Xdp, Some(e)) => {
            tracing::warn!("the kernel refused {RECEIVE} ({e:#}): SAL is received at TC ingress, after GRO");
            ("receive at TC ingress (XDP program refused)", false)
        }
        (Receive::Xdp, None) => {
            let p: &mut Xdp = ebpf.program_mut(RECEIVE).unwrap().try_into()?;
            match attach_xdp(p, RECEIVE, &iface.name, XdpMode::Driver, &pin_dir) {
                Ok(a) => {
                    how.push(a);
                    keep.push((RECEIVE, iface.name.as_str()));
                    // The point of receiving at XDP is GRO; veth has it off
                    // by default. Said, not changed: offloads are the
                    // operator's.
                    if crate::netlink::gro_enabled(&iface.name).is_ok_and(|on| !on) {
                        tracing::warn!(
                            "GRO is off on {0}: received SAL becomes TCP at XDP but still climbs the stack one \
                             segment at a time; `ethtool -K {0} gro on` lets GRO coalesce it",
                            iface.name
                        );
                    }
                    ("receive at XDP before GRO, TC ingress for the rest", true)
                }
                Err(e) => {
                    tracing::warn!(
                        "native XDP does not attach to {} ({e:#}): SAL is received at TC ingress, after GRO",
                        iface.name
                    );
                    ("receive at TC ingress (native XDP refused)", false)
                }
            }
        }
    };
    // Received at TC, SAL has passed GRO untranslated: send it round
    // through the coalescer so that GRO coalesces the TCP it became.
    let receive = if at_xdp || opts.receive == Receive::TcInPlace {
        receive.to_string()
    } else {
        match segmenter.coalesce(&iface) {
            Ok(()) => {
                cfg.coalescer_ifindex = segmenter.far_index;
                m.config.set(0, cfg, 0)?;
                format!("{receive}, then GRO through {}", segmenter.near)
            }
            Err(e) => {
                tracing::warn!("received SAL climbs the stack one segment at a time: {e:#}");
                receive.to_string()
            }
        }
    };
    drop_other_links(&pin_dir, &keep);
    let sock = ControlSocket::bind(Kind::Host, &iface.name)?;
    tracing::info!(
        "xlate host mode on {} ({} / broadcast {}, MSS {}, {receive}): serving {}, connecting {}, {} routes{}",
        iface.name,
        iface.addr,
        iface.broadcast,
        iface.max_mss(),
        opts.serve.len(),
        opts.connect.len(),
        opts.routes.len(),
        if how.contains(&Attached::Replaced) {
            format!("; took over from the previous run with {} live flows", m.flows.len())
        } else {
            String::new()
        }
    );

    let cp = ControlPlane::new(m, sal, inject, opts.idle_timeout, xlate_common::flow::SynBudget::HOST);
    if let Some(addr) = opts.metrics {
        crate::metrics::serve(addr, Kind::Host, iface.name.clone())?;
        tracing::info!("metrics at http://{addr}/metrics");
    }
    let r = crate::agent::runtime::block_on(event_loop(cp, events, sock, kernel_log, None));
    drop(ebpf);
    match r? {
        Ending::Signal if crate::agent::pins::pins_outlive_agent() => tracing::info!(
            "agent stopped; the datapath goes on (`xlate-user host stop --iface {}` removes it)",
            iface.name
        ),
        Ending::Signal => {
            tracing::warn!("agent stopped; its pins were in its own mount namespace: the programs detach")
        }
        Ending::ForGood => {
            resident::remove(Kind::Host, &iface.name, &pin_dir);
            tracing::info!("stopped for good: programs, pins, the segmenter and routes removed");
        }
    }
    Ok(())
}

/// Host mode's TC programs.
const PROGRAMS: [&str; 3] = ["xlate_host_ingress", "xlate_host_egress", "xlate_host_segmented"];
/// Host mode's receive before GRO (XDP).
const RECEIVE: &str = "xlate_host_receive";

pub fn migrate(iface: &str, to: Ipv4Addr, wait: bool) -> Result<String> {
    control(iface, &Request::Migrate { to, wait })
}

/// Sends a request to the running host-mode instance on `iface`.
pub fn control(iface: &str, req: &Request) -> Result<String> {
    protocol::call(&control_socket(Kind::Host, iface)?, &format!("host-mode instance on {iface}"), req)
}
