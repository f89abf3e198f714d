//! The stream-level relay: the paper's translator design (§4.2–4.4), for
//! what the packet-level fast path declines and for services an operator
//! gives it (`mode = "relay"`), and the baseline of the comparison.
//!
//! - **Client side.** One listening socket per service (address, port).
//!   XDP runs before the kernel's stack, so a segment of a flow the fast
//!   path owns never reaches these sockets; what XDP passes (a SYN with IP
//!   options, a SYN the full flow table declined, every segment of a
//!   relay-mode service) does, when the address is local: `--alias` adds
//!   the service addresses to the interface, as the paper's dynamic
//!   aliasing does ([`alias`]).
//! - **Serval side.** The relay connects an ordinary kernel TCP socket to
//!   the instance the fast path would pick (the same Maglev table, read
//!   from the kernel, so the same health state), on a port naming the
//!   service's row ([`connect_port`]). The translator's TC egress program
//!   turns that connection into a real SAL connection to the instance
//!   (`HOST_CONNECT` + `CONNECT_TO_TCP_DESTINATION`), and its XDP program
//!   turns the SAL answers back: the flow engine and the control plane are
//!   the fast path's, so the wire is the same.
//! - **Between them**, [`pump`]: splice() through a pipe per direction, or
//!   copies, bounded per connection, with half-close and resets passed on.
//!
//! Everything runs on the agent's one thread: a task per listener and per
//! connection (`spawn_local`), none per byte.

pub mod alias;
pub mod pump;

use std::cell::{Cell, RefCell};
use std::collections::HashMap as StdHashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use xlate_common::flow::{gw, Counter};
use xlate_common::maps::ServiceKey;

use crate::agent::maps::{bump_counter, open_in};
use crate::config::{Config, RelaySettings};

/// How long the relay waits for the instance to complete the handshake
/// (the SYN and its first retransmission); longer than the health check's
/// 2.2 s, so that a second try finds the dead instance replaced.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Silence after which keepalive probes ask whether a peer is still there.
const DEAD_PEER_IDLE: Duration = Duration::from_secs(60);

/// The TCP port the relay connects to on an instance for the service in
/// Maglev row `row`. SAL carries no ports (the service ID names the
/// service), so the port only tells the egress program which service the
/// connection is for: `HOST_CONNECT` maps (instance, this port) to the
/// service ID. One port per row keeps two services on the same instance
/// apart.
pub fn connect_port(row: u32) -> u16 {
    // Rows are below MAX_SERVICES (64).
    1 + row as u16
}

/// What every relay task shares.
struct Shared {
    services: HashMap<MapData, ServiceKey, gw::GwService>,
    maglev: Array<MapData, [u8; 4]>,
    counters: RefCell<PerCpuArray<MapData, u64>>,
    settings: Cell<RelaySettings>,
    /// The connections being relayed, by a number of their own.
    conns: RefCell<std::collections::BTreeMap<u64, Rc<Conn>>>,
    next: Cell<u64>,
}

/// One relayed connection, as `flows` shows it.
struct Conn {
    client: SocketAddrV4,
    public: SocketAddrV4,
    instance: Cell<Option<SocketAddrV4>>,
    progress: pump::Progress,
}

/// A relayed connection in `xlate-user flows`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayRow {
    pub client: SocketAddrV4,
    pub public: SocketAddrV4,
    /// The instance (and the service's connect port), once chosen.
    pub instance: Option<SocketAddrV4>,
    /// connecting, relaying, half_closed (one direction ended), closing.
    pub state: String,
    pub bytes_to_service: u64,
    pub bytes_to_client: u64,
    /// Bytes held by the relay right now, each way.
    pub held_to_service: usize,
    pub held_to_client: usize,
}

impl std::fmt::Display for RelayRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>10} {:>10} {:<6} {:<11} {} > {} via {} bytes to service {} to client {} held {}/{}",
            "-",
            "-",
            "relay",
            self.state,
            self.client,
            self.public,
            self.instance.map_or("-".to_string(), |i| i.to_string()),
            self.bytes_to_service,
            self.bytes_to_client,
            self.held_to_service,
            self.held_to_client,
        )
    }
}

/// The relay as the agent's requests see it (same thread).
#[derive(Clone)]
pub struct View(Rc<Shared>);

impl View {
    pub fn connections(&self) -> Vec<RelayRow> {
        self.0
            .conns
            .borrow()
            .values()
            .map(|c| {
                let p = &c.progress;
                RelayRow {
                    client: c.client,
                    public: c.public,
                    instance: c.instance.get(),
                    state: match (c.instance.get(), p.ends.get()) {
                        (None, _) => "connecting",
                        (Some(_), 0) => "relaying",
                        (Some(_), 1) => "half_closed",
                        _ => "closing",
                    }
                    .to_string(),
                    bytes_to_service: p.a_to_b.get(),
                    bytes_to_client: p.b_to_a.get(),
                    held_to_service: p.held_a_to_b.get(),
                    held_to_client: p.held_b_to_a.get(),
                }
            })
            .collect()
    }
}

impl Shared {
    fn count(&self, c: Counter, n: u64) {
        bump_counter(&mut self.counters.borrow_mut(), c, n);
    }

    /// Where a client connection to `public` goes: the fast path's choice
    /// for the same 4-tuple (its Maglev row, or the service router).
    fn pick(&self, public: SocketAddrV4, client: SocketAddrV4) -> Option<SocketAddrV4> {
        let e = self.services.get(&ServiceKey::new(*public.ip(), public.port()), 0).ok()?;
        let port = connect_port(e.index);
        if e.router != [0; 4] {
            return Some(SocketAddrV4::new(e.router.into(), port));
        }
        let h = gw::flow_hash(
            client.ip().octets(),
            public.ip().octets(),
            client.port().to_be_bytes(),
            public.port().to_be_bytes(),
        );
        let a = self.maglev.get(&(e.index * gw::MAGLEV_SIZE + h % gw::MAGLEV_SIZE), 0).ok()?;
        (a != [0; 4]).then(|| SocketAddrV4::new(a.into(), port))
    }
}

/// The relay of a running translator: listeners that follow the
/// configuration (sent on `table` at start, reload and live edit).
pub struct Relay {
    shared: Rc<Shared>,
    listeners: StdHashMap<(Ipv4Addr, u16), AbortHandle>,
    table: watch::Receiver<Arc<Config>>,
    /// `--alias`: the service addresses this relay added.
    aliases: Option<alias::Aliases>,
    /// Addresses already warned about (not local, no `--alias`).
    warned: Vec<Ipv4Addr>,
}

impl Relay {
    /// Opens the translator's maps pinned in `dir`.
    pub fn new(
        dir: &std::path::Path,
        table: watch::Receiver<Arc<Config>>,
        aliases: Option<alias::Aliases>,
    ) -> Result<Self> {
        let settings = table.borrow().relay;
        Ok(Relay {
            shared: Rc::new(Shared {
                services: open_in(dir, gw::SERVICES)?.try_into()?,
                maglev: open_in(dir, gw::MAGLEV)?.try_into()?,
                counters: RefCell::new(open_in(dir, xlate_common::flow::names::COUNTERS)?.try_into()?),
                settings: Cell::new(settings),
                conns: RefCell::new(Default::default()),
                next: Cell::new(0),
            }),
            listeners: StdHashMap::new(),
            table,
            aliases,
            warned: Vec::new(),
        })
    }

    pub fn view(&self) -> View {
        View(self.shared.clone())
    }

    /// Runs until dropped (the agent's loop ends). Must run inside a
    /// `LocalSet`.
    pub async fn run(mut self) {
        let mut first = true;
        loop {
            let cfg = self.table.borrow_and_update().clone();
            self.apply(&cfg);
            self.steer(&cfg).await;
            if first {
                // After "xlate translator on" the fast path runs; the relay
                // takes connections from here on (its listeners bound, the
                // service addresses aliased).
                first = false;
                let mut on: Vec<String> = self.listeners.keys().map(|(a, p)| format!("{a}:{p}")).collect();
                on.sort();
                tracing::info!(
                    "relay: ready, listening on {}",
                    if on.is_empty() { "nothing".into() } else { on.join(", ") }
                );
            }
            if self.table.changed().await.is_err() {
                // The agent dropped the table: nothing will change again.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Makes the service addresses local (`--alias`), or says which are
    /// not: what XDP passes for those is forwarded by the kernel, not
    /// relayed.
    async fn steer(&mut self, cfg: &Config) {
        let mut want: Vec<Ipv4Addr> = cfg.services.iter().map(|s| s.address).collect();
        want.sort();
        want.dedup();
        if let Some(a) = self.aliases.as_mut() {
            if let Err(e) = a.follow(&want).await {
                tracing::warn!("relay: dynamic aliasing: {e:#}");
            }
            return;
        }
        let Ok(local) = crate::netlink::all_ipv4_addresses().await else { return };
        for a in want {
            if !local.contains(&a) && !self.warned.contains(&a) {
                self.warned.push(a);
                tracing::info!(
                    "relay: {a} is not an address of this host: connections the fast path declines for it are not \
                     relayed (give --alias, or add the address)"
                );
            }
        }
    }

    /// New services get a listener at once; removed ones lose theirs (no
    /// new connections) while their relayed connections go on to the end.
    fn apply(&mut self, cfg: &Config) {
        self.shared.settings.set(cfg.relay);
        let want: Vec<(Ipv4Addr, u16)> = cfg.services.iter().map(|s| (s.address, s.port)).collect();
        self.listeners.retain(|k, h| {
            let keep = want.contains(k);
            if !keep {
                h.abort();
                tracing::info!("relay: no longer listening on {}:{}", k.0, k.1);
            }
            keep
        });
        for k in want {
            if self.listeners.contains_key(&k) {
                continue;
            }
            match listen(SocketAddrV4::new(k.0, k.1)) {
                Ok(l) => {
                    let h = tokio::task::spawn_local(accept_loop(l, self.shared.clone()));
                    self.listeners.insert(k, h.abort_handle());
                }
                Err(e) => tracing::warn!("relay: {e:#}"),
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for h in self.listeners.values() {
            h.abort();
        }
    }
}

/// A listening socket on a service address. IP_FREEBIND: the address
/// need not be local (yet): `--alias` may add it later, or the operator.
fn listen(at: SocketAddrV4) -> Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).context("opening a relay listening socket")?;
    s.set_reuse_address(true)?;
    s.set_freebind_v4(true)?;
    s.bind(&SocketAddr::V4(at).into()).with_context(|| format!("relay: binding {at}"))?;
    s.listen(4096).with_context(|| format!("relay: listening on {at}"))?;
    s.set_nonblocking(true)?;
    TcpListener::from_std(s.into()).with_context(|| format!("relay: registering {at}"))
}

async fn accept_loop(l: TcpListener, shared: Rc<Shared>) {
    loop {
        match l.accept().await {
            Ok((client, from)) => {
                tokio::task::spawn_local(serve(client, from, shared.clone()));
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!("relay: accepting on {:?}: {e}", l.local_addr());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One relayed connection, from accept to the end of both directions.
async fn serve(client: TcpStream, from: SocketAddr, shared: Rc<Shared>) {
    shared.count(Counter::RelayAccepted, 1);
    let (SocketAddr::V4(from), Ok(SocketAddr::V4(public))) = (from, client.local_addr()) else {
        return;
    };
    let conn = Rc::new(Conn { client: from, public, instance: Cell::new(None), progress: pump::Progress::default() });
    let id = shared.next.get();
    shared.next.set(id + 1);
    shared.conns.borrow_mut().insert(id, conn.clone());
    // Forgotten however the connection ends (also when the task is
    // dropped with the agent).
    struct Forget<'a>(&'a Shared, u64);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            self.0.conns.borrow_mut().remove(&self.1);
        }
    }
    let _forget = Forget(&shared, id);
    let Some(server) = connect(&shared, public, from).await else {
        shared.count(Counter::RelayConnectFailed, 1);
        pump::abort(&client);
        return;
    };
    if let Ok(SocketAddr::V4(peer)) = server.peer_addr() {
        conn.instance.set(Some(peer));
    }
    dead_peer_timeouts(&client);
    dead_peer_timeouts(&server);
    shared.count(Counter::RelayConnected, 1);
    let s = shared.settings.get();
    let limits = pump::Limits { per_direction: s.buffer, idle: Duration::from_secs(s.idle_timeout) };
    match pump::relay_with(client, server, s.mover, limits, &conn.progress).await {
        Ok(r) => {
            shared.count(Counter::RelayBytesToService, r.a_to_b);
            shared.count(Counter::RelayBytesToClient, r.b_to_a);
            shared.count(
                match r.ending {
                    pump::Ending::Closed => Counter::RelayClosed,
                    pump::Ending::Reset => Counter::RelayReset,
                    pump::Ending::Idle => Counter::RelayIdle,
                },
                1,
            );
        }
        Err(e) => {
            tracing::debug!("relay: {from} -> {public}: {e}");
            shared.count(Counter::RelayReset, 1);
        }
    }
}

/// A peer that vanished (powered off, unplugged) is noticed: keepalive
/// probes after 60 s of silence (every 10 s, 6 tries), and at most 120 s
/// for unacknowledged data (TCP_USER_TIMEOUT). The connection then ends
/// as a reset on both sides.
fn dead_peer_timeouts(s: &TcpStream) {
    let sock = socket2::SockRef::from(s);
    let k =
        socket2::TcpKeepalive::new().with_time(DEAD_PEER_IDLE).with_interval(Duration::from_secs(10)).with_retries(6);
    let _ = sock.set_tcp_keepalive(&k);
    let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(120)));
}

/// The Serval side: a connection to the instance the fast path would
/// pick. If that instance does not answer, the agent's health check takes
/// it out of the Maglev table meanwhile (no SYN-ACK within 2.2 s), and a
/// second try goes to the instance that replaced it.
async fn connect(shared: &Shared, public: SocketAddrV4, from: SocketAddrV4) -> Option<TcpStream> {
    let mut tried = None;
    for _ in 0..2 {
        let Some(target) = shared.pick(public, from) else {
            tracing::debug!("relay: {from} -> {public}: no such service or no instance");
            return None;
        };
        if tried == Some(target) {
            return None;
        }
        tried = Some(target);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(e)) => tracing::debug!("relay: {from} -> {public} via {target}: {e}"),
            Err(_) => tracing::debug!("relay: {from} -> {public} via {target}: no answer in {CONNECT_TIMEOUT:?}"),
        }
    }
    None
}
