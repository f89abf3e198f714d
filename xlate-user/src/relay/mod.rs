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
/// before it resets the client (the SYN and two retransmissions).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

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
            }),
            listeners: StdHashMap::new(),
            table,
            aliases,
            warned: Vec::new(),
        })
    }

    /// Runs until dropped (the agent's loop ends). Must run inside a
    /// `LocalSet`.
    pub async fn run(mut self) {
        loop {
            let cfg = self.table.borrow_and_update().clone();
            self.apply(&cfg);
            self.steer(&cfg).await;
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
    let Some(target) = shared.pick(public, from) else {
        tracing::debug!("relay: {from} -> {public}: no such service or no instance");
        shared.count(Counter::RelayConnectFailed, 1);
        pump::abort(&client);
        return;
    };
    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!("relay: {from} -> {public} via {target}: {e}");
            shared.count(Counter::RelayConnectFailed, 1);
            pump::abort(&client);
            return;
        }
        Err(_) => {
            tracing::debug!("relay: {from} -> {public} via {target}: no answer in {CONNECT_TIMEOUT:?}");
            shared.count(Counter::RelayConnectFailed, 1);
            pump::abort(&client);
            return;
        }
    };
    shared.count(Counter::RelayConnected, 1);
    let s = shared.settings.get();
    let limits = pump::Limits { per_direction: s.buffer, idle: Duration::from_secs(s.idle_timeout) };
    match pump::relay(client, server, s.mover, limits).await {
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
