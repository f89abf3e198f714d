//! `xlate-user host`: makes this host's ordinary TCP applications speak
//! Serval on one interface. See docs/host-mode.md.

pub mod control;
pub mod maps;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{lpm_trie::Key, MapData, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use xlate_common::flow::{
    names, state, Event, FlowAddrs, FlowState, HostConfig, RouteTargets, ServeEntry, MAX_ROUTE_TARGETS,
};
use xlate_common::maps::{ServiceEntry, ServiceKey};
use xlate_common::{ServiceId, ServicePrefix};

use crate::control_protocol::{self, Request, Response};
use crate::netif::{ConnectRoute, Interface, Segmenter};
use crate::rawsock::RawSocket;
use control::ControlPlane;
use maps::{HostMaps, Kind};

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

pub struct HostOptions {
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    pub iface: String,
    pub serve: Vec<Serve>,
    pub connect: Vec<Connect>,
    pub routes: Vec<Route>,
    pub idle_timeout: Duration,
}

/// The control socket of a running instance, for `host migrate`. /run is
/// the host's in every `ip netns exec` shell.
pub fn control_socket(kind: Kind, iface: &str) -> Result<PathBuf> {
    Ok(PathBuf::from("/run/xlate").join(format!("{}.sock", maps::pin_name(kind, iface)?)))
}

/// Runs host mode until SIGINT/SIGTERM; cleans up on the way out.
pub fn run(opts: HostOptions) -> Result<()> {
    let iface = Interface::lookup(&opts.iface)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _rt_guard = rt.enter();
    let pin_dir = maps::pin_dir_for_agent(Kind::Host, &iface.name)?;
    if pin_dir.exists() {
        bail!(
            "another host-mode instance runs on {} ({} exists); stop it first",
            iface.name,
            crate::pins::shown(&pin_dir)
        );
    }
    let mut ebpf = crate::ebpf::load()?;
    for (prog, _) in [("xlate_host_ingress", ()), ("xlate_host_egress", ()), ("xlate_host_segmented", ())] {
        let p: &mut SchedClassifier =
            ebpf.program_mut(prog).ok_or_else(|| anyhow!("program {prog} missing"))?.try_into()?;
        p.load().with_context(|| format!("the kernel refused {prog}"))?;
    }
    seed_flow_ids(&mut ebpf)?;
    let mut m = HostMaps::take_and_pin(&mut ebpf, &pin_dir)?;
    // From here on, leave nothing behind on any exit path.
    let _pins = scopeguard(pin_dir.clone());
    let segmenter = Segmenter::create(&iface)?;
    let cfg = HostConfig {
        addr: iface.addr.octets(),
        broadcast: iface.broadcast.octets(),
        mac: iface.mac,
        max_mss: iface.max_mss(),
        flags: 0,
        segmenter_ifindex: segmenter.near_index,
        out_ifindex: iface.index,
    };
    m.config.set(0, cfg, 0)?;
    for s in &opts.serve {
        m.serve.insert(s.service.0, ServeEntry { port: s.port.to_be_bytes(), _pad: [0; 2] }, 0)?;
    }
    let mut connect_routes = Vec::new();
    for c in &opts.connect {
        m.connect.insert(ServiceKey::new(c.addr, c.port), ServiceEntry { service_id: c.service }, 0)?;
        connect_routes.push(ConnectRoute::add(&iface, c.addr)?);
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
    let events = RingBuf::try_from(ebpf.take_map(names::EVENTS).ok_or_else(|| anyhow!("events map missing"))?)?;

    let mut links = Vec::new();
    for (prog, dev, at) in [
        ("xlate_host_segmented", &segmenter.far, TcAttachType::Ingress),
        ("xlate_host_ingress", &iface.name, TcAttachType::Ingress),
        ("xlate_host_egress", &iface.name, TcAttachType::Egress),
    ] {
        let p: &mut SchedClassifier = ebpf.program_mut(prog).unwrap().try_into()?;
        links.push(p.attach(dev, at).with_context(|| format!("attaching {prog} to {dev}"))?);
    }
    println!(
        "xlate host mode on {} ({} / broadcast {}, MSS {}): serving {}, connecting {}, {} routes",
        iface.name,
        iface.addr,
        iface.broadcast,
        iface.max_mss(),
        opts.serve.len(),
        opts.connect.len(),
        opts.routes.len()
    );
    std::io::stdout().flush()?;

    let cp = ControlPlane::new(m, sal, inject, opts.idle_timeout);
    let sock_path = control_socket(Kind::Host, &iface.name)?;
    if let Some(addr) = opts.metrics {
        rt.block_on(crate::metrics::serve(addr, Kind::Host, iface.name.clone()))?;
        println!("metrics at http://{addr}/metrics");
    }
    let r = rt.block_on(event_loop(cp, events, sock_path.clone(), None));
    let _ = std::fs::remove_file(&sock_path);
    drop(links);
    drop(ebpf);
    drop(segmenter);
    r
}

/// Starts each CPU's flow-ID counter at a random point: flow IDs are then
/// not guessable, and the ports the server side derives from them do not
/// repeat those of an earlier run (whose TIME_WAIT sockets may linger).
pub(crate) fn seed_flow_ids(ebpf: &mut aya::Ebpf) -> Result<()> {
    let mut m: PerCpuArray<&mut MapData, u32> =
        PerCpuArray::try_from(ebpf.map_mut(names::NEXT_FLOW).ok_or_else(|| anyhow!("flow-ID map missing"))?)?;
    let n = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("counting CPUs: {e}"))?;
    let mut seeds = Vec::with_capacity(n);
    let mut f = std::fs::File::open("/dev/urandom")?;
    for _ in 0..n {
        let mut b = [0u8; 4];
        std::io::Read::read_exact(&mut f, &mut b)?;
        seeds.push(u32::from_ne_bytes(b) & 0x00ff_ffff);
    }
    m.set(0, aya::maps::PerCpuValues::try_from(seeds)?, 0)?;
    Ok(())
}

pub(crate) struct PinGuard(pub(crate) PathBuf);
impl Drop for PinGuard {
    fn drop(&mut self) {
        HostMaps::unpin(&self.0);
    }
}
fn scopeguard(p: PathBuf) -> PinGuard {
    PinGuard(p)
}

/// What a mode adds to the shared event loop (the gateway: configuration
/// reload on SIGHUP, instance health on every tick).
pub(crate) trait LoopHooks {
    fn reload(&mut self) -> Result<String>;
    fn tick(&mut self, cp: &mut ControlPlane);
    /// A control request of this mode; None if it is not one of its own.
    fn request(&mut self, req: &Request) -> Option<Response>;
}

pub(crate) type Reload<'a> = Option<&'a mut dyn LoopHooks>;

pub(crate) async fn event_loop(
    mut cp: ControlPlane,
    events: RingBuf<MapData>,
    sock_path: PathBuf,
    mut reload: Reload<'_>,
) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // The AsyncFd owns the ring buffer (and its fd).
    #[allow(deprecated)]
    let mut events = AsyncFd::new(events)?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    std::fs::create_dir_all("/run/xlate")?;
    let _ = std::fs::remove_file(&sock_path);
    let listener =
        tokio::net::UnixListener::bind(&sock_path).with_context(|| format!("binding {}", sock_path.display()))?;
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Some(h) = reload.as_mut() {
                    match h.reload() {
                        Ok(msg) => println!("{msg}"),
                        Err(e) => eprintln!("xlate-user: reload refused, configuration unchanged: {e:#}"),
                    }
                }
            }
            r = cp.sal_socket().recv(&mut buf) => {
                let n = r?;
                let pkt = buf[..n].to_vec();
                cp.on_packet(&pkt);
            }
            guard = events.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    if item.len() >= std::mem::size_of::<Event>() {
                        // SAFETY: the kernel wrote an Event; read unaligned.
                        let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
                        drop(item);
                        cp.on_event(ev);
                    }
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                cp.tick();
                if let Some(h) = reload.as_mut() {
                    h.tick(&mut cp);
                }
            }
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    let (r, mut w) = stream.into_split();
                    let mut line = String::new();
                    let mut r = tokio::io::BufReader::new(r);
                    // A client that connects and says nothing (a PID probe,
                    // a stuck script) must not hold up the data path's agent.
                    let read = tokio::time::timeout(Duration::from_secs(2), r.read_line(&mut line)).await;
                    if matches!(read, Ok(Ok(n)) if n > 0) {
                        let reply = match control_protocol::parse(&line) {
                            Err(bad) => bad,
                            Ok(req) => match reload.as_mut().and_then(|h| h.request(&req)) {
                                Some(r) => r,
                                None => request(&mut cp, &req),
                            },
                        };
                        let text = serde_json::to_string(&reply).unwrap_or_default();
                        let _ = w.write_all(format!("{text}\n").as_bytes()).await;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The requests every agent answers (host mode's; the translator adds its own).
fn request(cp: &mut ControlPlane, req: &Request) -> Response {
    match req {
        Request::Migrate { to } => Response::Ok(format!("ok: moving {} flows to {to}", cp.migrate(*to))),
        other => Response::Error(format!("this agent does not take {other:?}")),
    }
}

/// `host migrate --to ADDR`: asks the running instance to move its flows.
pub fn migrate(iface: &str, to: Ipv4Addr) -> Result<String> {
    control_protocol::call(
        &control_socket(Kind::Host, iface)?,
        &format!("host-mode instance on {iface}"),
        &Request::Migrate { to },
    )
}

/// One row of `host flows`.
pub struct FlowRow {
    pub state: FlowState,
    pub addrs: FlowAddrs,
}

pub fn flows(kind: Kind, iface: &str) -> Result<Vec<FlowRow>> {
    let flows: aya::maps::HashMap<MapData, u32, FlowState> =
        maps::open_pinned(kind, iface, names::FLOWS)?.try_into()?;
    let addrs: aya::maps::HashMap<MapData, u32, FlowAddrs> =
        maps::open_pinned(kind, iface, names::ADDRS)?.try_into()?;
    let mut rows = Vec::new();
    for item in flows.iter() {
        let (id, st) = item?;
        let a = addrs.get(&id, 0).unwrap_or_default();
        rows.push(FlowRow { state: st, addrs: a });
    }
    rows.sort_by_key(|r| r.state.local_flow);
    Ok(rows)
}

impl std::fmt::Display for FlowRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.state;
        write!(
            f,
            "{:>10} {:>10} {:<6} {:<11} {:<15} {:<15} {}:{} > {}:{} service {}",
            s.local_flow,
            s.peer_flow,
            if s.role == xlate_common::flow::role::CLIENT { "client" } else { "server" },
            state::name(s.state),
            Ipv4Addr::from(self.addrs.local_ip),
            Ipv4Addr::from(self.addrs.peer_ip),
            Ipv4Addr::from(s.tcp_local_addr),
            u16::from_be_bytes(s.tcp_local_port),
            Ipv4Addr::from(s.tcp_peer_addr),
            u16::from_be_bytes(s.tcp_peer_port),
            ServiceId(s.service_id),
        )
    }
}

pub const FLOWS_HEADER: &str =
    "local_flow  peer_flow role   state       sal_local       sal_peer        tcp (local > peer) and service";

pub fn stats(kind: Kind, iface: &str) -> Result<Vec<(&'static str, u64)>> {
    let c: PerCpuArray<MapData, u64> = maps::open_pinned(kind, iface, names::COUNTERS)?.try_into()?;
    Ok(maps::read_counters(&c).into_iter().map(|(k, v)| (k.name(), v)).collect())
}
