//! What every xlate agent is, whichever mode it runs: the pins of its maps
//! (`maps`, `pins`), the SAL control plane (`control_plane`), the control
//! socket and its protocol (`protocol`), and one event loop (`event_loop`)
//! into which a mode hooks what it adds (`LoopHooks`). Host mode and the
//! translator are thin shells around it.

pub mod control_plane;
pub mod flow_table;
pub mod holder;
pub mod inspect;
pub mod kernel_log;
pub mod maps;
pub mod pins;
pub mod protocol;
pub mod resident;
pub mod residents;
pub mod runtime;
pub mod sal_control;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use xlate_common::flow::{names, Event};

use control_plane::ControlPlane;

/// An agent must not die when a peer resets a socket it is writing to
/// (the relay splices into client sockets): EPIPE is an error to handle,
/// not a signal. (`main` restores the default for the one-shot commands,
/// whose output may go to a closed pipe.)
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Raises the descriptor limit to its hard limit: a relayed connection
/// takes two sockets and, with splice, two pipes (six descriptors), and
/// the usual soft limit of 1024 would stop the relay at about 170
/// connections. Says how many connections the limit allows.
pub fn raise_descriptor_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_cur
}

/// Daemon logging (`tracing`): info and debug lines on stdout, warnings and
/// errors on stderr, each with a timestamp and level. `RUST_LOG` chooses
/// the level (default `info`; `RUST_LOG=debug` for more).
pub fn init_logging() {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let writer = std::io::stderr.with_max_level(tracing::Level::WARN).or_else(std::io::stdout);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}
use maps::{FlowMaps, Kind};
use protocol::{Request, Response};

/// The control socket of a running instance, for `host migrate`. /run is
/// the host's in every `ip netns exec` shell.
pub fn control_socket(kind: Kind, iface: &str) -> Result<PathBuf> {
    Ok(PathBuf::from("/run/xlate").join(format!("{}.sock", maps::pin_name(kind, iface)?)))
}

/// Starts each CPU's port rotation (see the kernel's `next_rotation`) at
/// a random point, so that the local ports the server side uses do not
/// repeat those of an earlier datapath (whose TIME_WAIT sockets may
/// linger). Flow IDs are the kernel's, under the flow table's key
/// (`seal_flows`).
pub(crate) fn seed_rotation(ebpf: &mut aya::Ebpf) -> Result<()> {
    let mut m: PerCpuArray<&mut MapData, u32> =
        PerCpuArray::try_from(ebpf.map_mut(names::ROTATION).ok_or_else(|| anyhow!("rotation map missing"))?)?;
    let n = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("counting CPUs: {e}"))?;
    let seeds = (0..n).map(|_| Ok(u32::from_ne_bytes(random::<4>()?) & 0x00ff_ffff)).collect::<Result<Vec<u32>>>()?;
    m.set(0, aya::maps::PerCpuValues::try_from(seeds)?, 0)?;
    Ok(())
}

/// Gives a new flow table its header, with a key drawn at random (see
/// `FlowTable::seal`); a table an earlier run sealed keeps its own.
pub(crate) fn seal_flows(flows: &flow_table::FlowTable) -> Result<()> {
    let key = u64::from_ne_bytes(random::<8>()?);
    let h = flows.seal(key)?;
    tracing::debug!("flow table: {} slots", h.mask as u64 + 1);
    Ok(())
}

/// `N` bytes from the kernel's random source.
fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b).context("reading /dev/urandom")?;
    Ok(b)
}

/// How the event loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// SIGTERM or SIGINT: the agent exits, the datapath goes on (its
    /// programs, maps and state stay for the next run to adopt).
    Signal,
    /// `stop` asked for: every flow was reset; the caller removes the
    /// datapath (see [`resident`]).
    ForGood,
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

/// The agent's control socket, bound before the agent says it is on, so
/// that a command run the moment it is on finds it (a script, a test).
/// Removed when dropped.
pub(crate) struct ControlSocket {
    path: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
}

impl ControlSocket {
    pub(crate) fn bind(kind: Kind, iface: &str) -> Result<ControlSocket> {
        let path = control_socket(kind, iface)?;
        std::fs::create_dir_all("/run/xlate")?;
        let _ = std::fs::remove_file(&path);
        let listener =
            std::os::unix::net::UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket { path, listener: Some(listener) })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(crate) async fn event_loop(
    mut cp: ControlPlane,
    events: RingBuf<MapData>,
    mut sock: ControlSocket,
    kernel_log: Option<kernel_log::Reader>,
    mut reload: Reload<'_>,
) -> Result<Ending> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // The paper's translator reloads on SIGUSR1.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    // The AsyncFd owns the ring buffer (and its fd).
    #[allow(deprecated)]
    let mut events = AsyncFd::new(events)?;
    // The kernel's debug log (silent unless switched on).
    #[allow(deprecated)]
    let mut kernel_log = match kernel_log {
        Some(r) => Some(AsyncFd::new(r)?),
        None => None,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let listener = tokio::net::UnixListener::from_std(sock.listener.take().expect("bound once"))?;
    let mut buf = vec![0u8; 65536];
    let mut ending = Ending::Signal;
    let mut waiting: Vec<MigrationWait> = Vec::new();
    loop {
        cp.sync();
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = async { tokio::select! { _ = hup.recv() => {}, _ = usr1.recv() => {} } } => {
                if let Some(h) = reload.as_mut() {
                    match h.reload() {
                        Ok(msg) => tracing::info!("{msg}"),
                        Err(e) => tracing::warn!("reload refused, configuration unchanged: {e:#}"),
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
                read_events(guard.get_inner_mut(), &mut cp);
                guard.clear_ready();
            }
            guard = async { kernel_log.as_mut().expect("guarded").readable_mut().await }, if kernel_log.is_some() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tick.tick() => {
                // Events the kernel wrote without waking us (new flows).
                read_events(events.get_mut(), &mut cp);
                cp.tick();
                for done in take_concluded(&mut waiting, &cp) {
                    let text = serde_json::to_string(&done.1).unwrap_or_default();
                    let mut w = done.0;
                    let _ = w.write_all(format!("{text}\n").as_bytes()).await;
                }
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
                        let parsed = protocol::parse(&line);
                        let reply = match &parsed {
                            Err(bad) => bad.clone(),
                            Ok(Request::Stop) => {
                                let n = cp.reset_all();
                                tracing::info!("stopping for good: reset {n} flows");
                                ending = Ending::ForGood;
                                Response::Ok(format!("ok: reset {n} flows; removing the datapath"))
                            }
                            Ok(Request::Migrate { to, wait: true }) => {
                                let ids = cp.migrate(*to);
                                waiting.push(MigrationWait { to: *to, ids, reply: w });
                                continue;
                            }
                            Ok(req) => match reload.as_mut().and_then(|h| h.request(req)) {
                                Some(r) => r,
                                None => request(&mut cp, req),
                            },
                        };
                        let text = serde_json::to_string(&reply).unwrap_or_default();
                        let _ = w.write_all(format!("{text}\n").as_bytes()).await;
                        if ending == Ending::ForGood {
                            break;
                        }
                    }
                }
            }
        }
    }
    cp.sync();
    Ok(ending)
}

/// A `migrate --wait` waiting for its flows to move.
struct MigrationWait {
    to: std::net::Ipv4Addr,
    ids: Vec<u32>,
    reply: tokio::net::unix::OwnedWriteHalf,
}

/// The waits whose every flow has moved, failed or ended, with their
/// answers: ok if none failed, else an error naming the flows that stay.
fn take_concluded(
    waiting: &mut Vec<MigrationWait>,
    cp: &ControlPlane,
) -> Vec<(tokio::net::unix::OwnedWriteHalf, Response)> {
    use control_plane::MigrationState;
    use sal_control::Outcome;
    let mut out = Vec::new();
    let mut i = 0;
    while i < waiting.len() {
        let w = &waiting[i];
        let states: Vec<(u32, MigrationState)> = w.ids.iter().map(|&id| (id, cp.migration(id))).collect();
        let pending = states.iter().any(|(_, s)| matches!(s, MigrationState::Is(m) if m.outcome == Outcome::Pending));
        if pending {
            i += 1;
            continue;
        }
        let w = waiting.swap_remove(i);
        let count =
            |o: Outcome| states.iter().filter(|(_, s)| matches!(s, MigrationState::Is(m) if m.outcome == o)).count();
        let (done, failed) = (count(Outcome::Done), count(Outcome::Failed));
        let gone = states.len() - done - failed;
        let ended = if gone > 0 { format!("; {gone} ended before moving") } else { String::new() };
        let reply = if failed == 0 {
            Response::Ok(format!("done: {done} of {} flows moved to {}{ended}", states.len(), w.to))
        } else {
            let ids: Vec<String> = states
                .iter()
                .filter(|(_, s)| matches!(s, MigrationState::Is(m) if m.outcome == Outcome::Failed))
                .map(|(id, _)| format!("{id:#x}"))
                .collect();
            Response::Error(format!(
                "failed: {failed} of {} flows got no answer and stay where they were ({}); {done} moved to {}{ended}",
                states.len(),
                ids.join(", "),
                w.to
            ))
        };
        out.push((w.reply, reply));
    }
    out
}

/// The requests every agent answers (host mode's; the translator adds its own).
fn request(cp: &mut ControlPlane, req: &Request) -> Response {
    match req {
        Request::Migrate { to, .. } => Response::Ok(format!(
            "requested: moving {} flows to {to} (each moves when its peer answers; `host flows` shows how each \
             migration stands, `migration_failed` counts those given up; --wait waits for the outcome)",
            cp.migrate(*to).len()
        )),
        Request::KernelLog { on } => match kernel_log::set(&mut cp.maps, *on) {
            Ok(()) => {
                tracing::info!("kernel log {}", if *on { "on" } else { "off" });
                Response::Ok(format!("ok: kernel log {}", if *on { "on" } else { "off" }))
            }
            Err(e) => Response::Error(format!("switching the kernel log: {e:#}")),
        },
        Request::FlushCounts => {
            cp.maps.flush_counts();
            Response::Ok("ok: counts written".to_string())
        }
        other => Response::Error(format!("this agent does not take {other:?}")),
    }
}

/// Asks the running agent on `iface`, if there is one, to write the counts
/// it holds ([`Request::FlushCounts`]), so that a reader of the pins sees
/// every event the agent has handled. Without an agent there is nothing
/// held: the last one wrote its counts as it ended.
pub fn flush_counts(kind: Kind, iface: &str) {
    if !resident::Lock::held(kind, iface).unwrap_or(false) {
        return;
    }
    if let Ok(sock) = control_socket(kind, iface) {
        let _ = protocol::call(&sock, "agent", &Request::FlushCounts);
    }
}

/// Stops a datapath for good: every flow is reset on both sides, then the
/// programs, pins, sysctls and (host mode) the segmenter and routes are
/// removed. A running agent does it and exits; without one, this process
/// does it from the pins an earlier run left.
pub fn stop(kind: Kind, iface: &str) -> Result<String> {
    let what = resident::noun(kind);
    if resident::Lock::held(kind, iface)? {
        let answer = protocol::call(&control_socket(kind, iface)?, &format!("{what} on {iface}"), &Request::Stop)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while resident::Lock::held(kind, iface)? {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("{answer}; but the agent has not exited after 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(format!("{answer}\nstopped"));
    }
    let _lock = resident::Lock::take(kind, iface)?;
    let _rt = runtime::runtime().enter();
    let Some(dir) = resident::orphan_dir(kind, iface)? else {
        resident::remove(kind, iface, std::path::Path::new("/nonexistent"));
        anyhow::bail!("no {what} on {iface} in this network namespace: nothing to stop");
    };
    let maps = FlowMaps::open(&dir)?;
    let sal = crate::rawsock::RawSocket::new(i32::from(xlate_common::wire::IPPROTO_SAL))
        .context("opening the raw SAL socket")?;
    let inject = crate::rawsock::RawSocket::new(libc::IPPROTO_RAW).context("opening the raw injection socket")?;
    let budget = match kind {
        Kind::Host => xlate_common::flow::SynBudget::HOST,
        Kind::Gateway => xlate_common::flow::SynBudget::GATEWAY,
    };
    let mut cp = ControlPlane::new(maps, sal, inject, Duration::from_secs(600), budget);
    let n = cp.reset_all();
    drop(cp);
    resident::remove(kind, iface, &dir);
    Ok(format!("ok: reset {n} flows; removed the datapath (no agent was running)\nstopped"))
}

/// Hands every event waiting in the ring to the control plane. The kernel
/// wakes the agent for urgent ones only (`notify` in the engine's maps);
/// the rest wait for this on the next tick.
fn read_events(rb: &mut RingBuf<MapData>, cp: &mut ControlPlane) {
    while let Some(item) = rb.next() {
        if item.len() >= std::mem::size_of::<Event>() {
            // SAFETY: the kernel wrote an Event; read unaligned.
            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
            drop(item);
            cp.on_event(ev);
        }
    }
}
