//! `xlate-user`: the xlate agent and operator tool.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::programs::XdpMode;
use clap::{Args, Parser, Subcommand, ValueEnum};
use xlate_user::{
    classify::Classifier,
    decode::{decode_file, Verdict},
    host::{self, Connect, HostOptions, Route, Serve},
};

/// xlate: lets unmodified TCP/IPv4 clients reach Serval services.
#[derive(Parser)]
#[command(name = "xlate-user", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every packet of a capture (Ethernet, raw IP, Linux SLL/SLL2)
    /// with its Serval fields; exit 1 if any SAL packet breaks a receiver
    /// rule or has a bad checksum, naming the packet and the reason.
    #[command(after_help = "Example:\n  xlate-user decode capture.pcap --quiet")]
    Decode {
        /// Classic pcap files (tcpdump -w).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print only the packets that fail and the summary.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Attach the packet classifier to an interface and print how many TCP,
    /// SAL and other packets cross it. Detaches on Ctrl-C, SIGTERM or after
    /// --duration, printing the final counters.
    #[command(after_help = "Example:\n  xlate-user watch --iface eth0 --duration 10")]
    Watch {
        /// Interface to attach to (XDP, ingress).
        #[arg(long)]
        iface: String,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        xdp_mode: Mode,
        /// Seconds between counter lines (0: only the final line).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
    },
    /// The packet-level translator: legacy TCP clients reach Serval services
    /// through this gateway (XDP on the NICs, flows in BPF maps, the SAL
    /// control plane here). What XDP declines (IP options, a full flow
    /// table) and services with mode = "relay" go to the stream-level relay
    /// (docs/relay.md). Runs until Ctrl-C/SIGTERM; SIGHUP or SIGUSR1 reloads
    /// the configuration (a bad file is refused and changes nothing).
    #[command(
        after_help = "Example:\n  xlate-user run --iface eth0 --iface eth1 --config /etc/xlate/xlate.toml --alias --metrics 127.0.0.1:9464\n  kill -HUP $(pidof xlate-user)   # reload the configuration"
    )]
    Run {
        #[command(flatten)]
        gw: GatewayArgs,
        /// No stream-level relay: what the fast path declines is left to
        /// the kernel as it is (no service may have mode = "relay").
        #[arg(long, conflicts_with = "alias")]
        no_relay: bool,
    },
    /// Validate a translator configuration without touching the system
    /// (no BPF, no network changes, no privileges), like `nginx -t`: a
    /// one-line summary and exit 0, or the error (file, line, field,
    /// value) and exit 2. Warnings about what loads but looks wrong go to
    /// stderr. systemd units run it before a start and a reload.
    #[command(after_help = "Example:\n  xlate-user check --config /etc/xlate/eth0.toml")]
    Check {
        /// TOML configuration (see config/xlate.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// The stream-level relay alone (the paper's translator design, and
    /// the baseline of the comparison): every service's connections are
    /// accepted by the relay and carried to the instance over a SAL
    /// connection. Same configuration, maps, stats, flows and metrics as
    /// `run`, which it replaces on the same interfaces.
    #[command(
        after_help = "Example:\n  xlate-user relay --iface eth0 --iface eth1 --config /etc/xlate/xlate.toml --alias --mode splice"
    )]
    Relay {
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// The running translator's counters (translated, passed and dropped by
    /// reason, control plane).
    #[command(after_help = "Example:\n  ip netns exec gw xlate-user stats --iface eth0 --json")]
    Stats(ReadArgs),
    /// Show or edit the running translator's service table, live. Edits
    /// are checked like the configuration file and do not survive a
    /// restart or a SIGHUP reload: put lasting changes in the file.
    Map {
        #[command(subcommand)]
        action: MapAction,
    },
    /// The running translator's live flows.
    #[command(after_help = "Example:\n  xlate-user flows --iface eth0")]
    Flows(ReadArgs),
    /// What is resident on this host: every datapath (translator or host
    /// mode) with its network namespace (cookie), interface, live flows,
    /// whether its programs are still attached and whether an agent runs.
    /// The pins of dead datapaths (their namespace or interface is gone)
    /// are removed with --gc (agents do that at start too).
    #[command(after_help = "Example:\n  xlate-user status\n  xlate-user status --json\n  xlate-user status --gc")]
    Status {
        #[arg(long)]
        json: bool,
        /// Remove the pins of dead datapaths that no agent holds.
        #[arg(long)]
        gc: bool,
    },
    /// Stop the translator on --iface for good: every flow is reset (a TCP
    /// RST to each client, a SAL RST to each instance), then its programs,
    /// pinned maps and sysctls are removed. (SIGTERM only stops the agent:
    /// the datapath goes on, and the next `run` takes over its flows.)
    #[command(after_help = "Example:\n  xlate-user stop --iface eth0")]
    Stop {
        /// The translator's first --iface.
        #[arg(long)]
        iface: String,
    },
    /// Switch the running translator's kernel debug log on or off: a line
    /// per packet (what became of it and why) in the agent's output.
    #[command(after_help = "Example:\n  xlate-user kernel-log on --iface eth0")]
    KernelLog(KernelLogArgs),
    /// Micro-benchmark of the translator's XDP program (BPF_PROG_TEST_RUN),
    /// used by `cargo xtask bench` (built with the `testbed` feature only).
    #[cfg(feature = "testbed")]
    #[command(hide = true)]
    BenchXdp {
        #[arg(long, default_value_t = 20000, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
    },
    /// Host mode: this host's ordinary TCP servers and clients speak Serval
    /// on the wire of one interface (the kernel's TCP does the transport,
    /// xlate adds the service access layer). Runs until Ctrl-C/SIGTERM.
    #[command(
        after_help = "Examples:\n  xlate-user host --iface eth0 --serve 00000050=8080\n  xlate-user host --iface eth0 --connect 00000050=10.9.0.100:80 --route 00000050=10.9.0.2"
    )]
    Host(HostCmd),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct HostCmd {
    #[command(subcommand)]
    action: Option<HostAction>,
    /// The interface that carries SAL (its first IPv4 address is this
    /// host's Serval address).
    #[arg(long)]
    iface: Option<String>,
    /// Deliver SAL connections for service SID to the local TCP server on
    /// PORT (SID in any form: 00000050, dec:80, full 64 hex digits).
    #[arg(long = "serve", value_name = "SID=PORT")]
    serve: Vec<Serve>,
    /// Local applications that connect to ADDR:PORT reach service SID.
    #[arg(long = "connect", value_name = "SID=ADDR:PORT")]
    connect: Vec<Connect>,
    /// Send SYNs for services matching the prefix to these hosts (longest
    /// prefix wins; one target per connection). Without a match SYNs go
    /// to the interface broadcast address.
    #[arg(long = "route", value_name = "SID[:BITS]=IP[,IP...]")]
    route: Vec<Route>,
    /// Free a flow that has carried no packet for this many seconds.
    #[arg(long, default_value_t = 600)]
    idle_timeout: u64,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// Where received SAL becomes TCP: `xdp` (native XDP, before GRO, so
    /// that GRO coalesces it; TC takes what XDP leaves, and everything
    /// where native XDP cannot attach); `tc` (TC ingress, after GRO, which
    /// has no handler for SAL: the translated TCP is sent round through
    /// the segmenter pair, whose GRO coalesces it, and is delivered from
    /// its near end, xlsg<IFINDEX>a); `tc-in-place` (TC ingress, each
    /// segment delivered on the interface itself, one at a time: for
    /// firewall rules that match the input interface); or `auto` (the
    /// default): `xdp`, except on a veth, where an XDP program takes TSO
    /// from the peer and so slows every other flow it sends: `tc` there.
    #[arg(long, env = "XLATE_RECEIVE", value_enum, default_value_t = host::Receive::Auto)]
    receive: host::Receive,
}

#[derive(Subcommand)]
enum MapAction {
    /// Services as the kernel has them: address:port (or prefix:ports),
    /// service ID, and the instances with their share of the Maglev table
    /// (or the router).
    #[command(after_help = "Example:\n  xlate-user map show --iface eth0 --json")]
    Show(ReadArgs),
    /// Add or replace the service at --service, or a prefix of services.
    #[command(
        after_help = "Examples:\n  xlate-user map set --iface eth0 --service 203.0.113.1:80 --id 00000050 --instances 10.10.0.11,10.10.0.12:3\n  xlate-user map set --iface eth0 --service 198.51.100.0/24:80 --id 00010000 --instances 10.10.0.11,10.10.0.12\n    (a prefix: host .5 is service 00010005; ports may be a range, 8000-8009)"
    )]
    Set {
        #[arg(long)]
        iface: String,
        /// Public ADDR:PORT clients connect to, or NETWORK/LEN:PORT[-LAST]
        /// for a prefix whose host part picks the service.
        #[arg(long)]
        service: String,
        /// Service ID (any form: 00000050, dec:80, 64 hex digits); for a
        /// prefix, host part 0's (the host part is added to its low bits).
        #[arg(long)]
        id: String,
        /// Instances: IP[:WEIGHT],...
        #[arg(long, conflicts_with = "router", required_unless_present = "router")]
        instances: Option<String>,
        /// A Serval service router that takes the SYNs instead.
        #[arg(long)]
        router: Option<std::net::Ipv4Addr>,
        /// Every connection through the stream-level relay (mode = "relay").
        #[arg(long)]
        relay: bool,
    },
    /// Remove the service at --service, or the prefix NETWORK/LEN:PORT
    /// holding that port (new connections to it pass to the kernel).
    #[command(
        after_help = "Examples:\n  xlate-user map del --iface eth0 --service 203.0.113.1:80\n  xlate-user map del --iface eth0 --service 198.51.100.0/24:80"
    )]
    Del {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        service: String,
    },
}

/// `kernel-log on|off --iface IF`, for either mode.
#[derive(Args)]
struct KernelLogArgs {
    #[arg(value_enum)]
    state: OnOff,
    /// The agent's interface (the translator's first --iface).
    #[arg(long)]
    iface: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// What every read command takes.
#[derive(Args)]
struct ReadArgs {
    /// The agent's interface (the translator's first --iface).
    #[arg(long)]
    iface: String,
    /// Print JSON (one object or array) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum HostAction {
    /// List the live SAL flows of the instance on --iface.
    #[command(after_help = "Example:\n  ip netns exec web1 xlate-user host flows --iface eth0")]
    Flows(ReadArgs),
    /// Print the instance's counters (translated, dropped by reason, control plane).
    #[command(after_help = "Example:\n  xlate-user host stats --iface eth0 --json")]
    Stats(ReadArgs),
    /// Stop host mode on --iface for good: every flow is reset (the local
    /// TCP and the peer), then its programs, pinned maps, segmenter and
    /// routes are removed. (SIGTERM only stops the agent: the datapath goes
    /// on, and the next `host` run takes over its flows.)
    #[command(after_help = "Example:\n  xlate-user host stop --iface eth0")]
    Stop {
        #[arg(long)]
        iface: String,
    },
    /// Switch the instance's kernel debug log on or off (a line per packet
    /// in the agent's output).
    #[command(after_help = "Example:\n  xlate-user host kernel-log on --iface eth0")]
    KernelLog(KernelLogArgs),
    /// Move this host's live flows to another local address (RSYN). Each
    /// flow moves when its peer answers; RSYNs are resent at 1, 3 and 7 s
    /// and a move with no answer after 15 s is given up (the flow stays
    /// where it was). Prints "requested" at once, or with --wait the
    /// outcome. `host flows` shows each flow's migration: pending, done
    /// or failed.
    #[command(after_help = "Examples:\n  xlate-user host migrate --iface eth0 --to 10.9.0.22\n  \
                            xlate-user host migrate --iface eth0 --to 10.9.0.22 --wait || echo 'some flows stayed'")]
    Migrate {
        #[arg(long)]
        iface: String,
        /// The new address (already configured on the interface).
        #[arg(long)]
        to: std::net::Ipv4Addr,
        /// Wait until every flow has moved or been given up (at most 15 s);
        /// exit 1 if any was given up.
        #[arg(long)]
        wait: bool,
    },
}

/// What `run` and `relay` share.
#[derive(Args)]
struct GatewayArgs {
    /// Gateway NIC(s): one (one-armed) or two (two-armed); the first faces
    /// the clients (aliases go there).
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    /// TOML configuration (see config/xlate.toml).
    #[arg(long)]
    config: PathBuf,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    xdp_mode: Mode,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// Dynamic aliasing: add the service addresses that no interface has
    /// to the first --iface (as /32), and remove them on exit and when
    /// they leave the configuration.
    #[arg(long)]
    alias: bool,
    /// How the relay moves bytes (default: the file's [relay] data_mover,
    /// else splice).
    #[arg(long = "mode", value_enum)]
    mover: Option<Mover>,
}

impl GatewayArgs {
    fn options(self, relay: xlate_user::gateway::RelayUse) -> xlate_user::gateway::RunOptions {
        xlate_user::gateway::RunOptions {
            ifaces: self.ifaces,
            config: self.config,
            mode: self.xdp_mode.into(),
            metrics: self.metrics,
            relay,
            mover: self.mover.map(|m| match m {
                Mover::Splice => xlate_user::relay::pump::Mode::Splice,
                Mover::Copy => xlate_user::relay::pump::Mode::Copy,
            }),
            alias: self.alias,
        }
    }
}

/// How the relay moves bytes.
#[derive(Clone, Copy, ValueEnum)]
enum Mover {
    /// splice(2) through a pipe: the bytes never reach user space.
    Splice,
    /// read(2) into a buffer and write(2) it out (the paper's Figure 5a).
    Copy,
}

/// XDP attach mode, as operators know it from `ip link set … xdp*`.
#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Let the kernel choose (native when the driver supports it).
    Auto,
    /// Driver (native) XDP.
    Native,
    /// Generic (skb) XDP: works on any interface, slower.
    Generic,
}

impl From<Mode> for XdpMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Auto => XdpMode::Default,
            Mode::Native => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        }
    }
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`xlate-user … | head`), like other CLI tools.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Decode { files, quiet } => decode(&files, quiet),
        Command::Watch { iface, xdp_mode, interval, duration } => {
            watch(&iface, xdp_mode.into(), interval, duration).map(|_| ExitCode::SUCCESS)
        }
        Command::Host(h) => host_cmd(h).map(|_| ExitCode::SUCCESS),
        Command::Run { gw, no_relay } => {
            use xlate_user::gateway::RelayUse;
            let relay = if no_relay { RelayUse::Off } else { RelayUse::Fallback };
            xlate_user::gateway::run(gw.options(relay)).map(|_| ExitCode::SUCCESS)
        }
        Command::Relay { gw } => {
            xlate_user::gateway::run(gw.options(xlate_user::gateway::RelayUse::Everything)).map(|_| ExitCode::SUCCESS)
        }
        Command::Check { config } => xlate_user::check::run(&config).map(|_| ExitCode::SUCCESS),
        Command::Status { json, gc } => {
            xlate_user::agent::init_logging();
            if gc {
                xlate_user::agent::residents::gc();
            }
            xlate_user::agent::residents::print(json);
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "testbed")]
        Command::BenchXdp { runs } => xlate_user::benchmark::run(runs).map(|_| ExitCode::SUCCESS),
        Command::Stats(a) => xlate_user::gateway::stats(&a.iface).map(|rows| {
            xlate_user::agent::inspect::print_stats(&rows, a.json);
            ExitCode::SUCCESS
        }),
        Command::Map { action } => map_cmd(action).map(|_| ExitCode::SUCCESS),
        Command::Stop { iface } => xlate_user::agent::stop(xlate_user::agent::maps::Kind::Gateway, &iface).map(|m| {
            println!("{m}");
            ExitCode::SUCCESS
        }),
        Command::KernelLog(k) => {
            let req = xlate_user::agent::protocol::Request::KernelLog { on: matches!(k.state, OnOff::On) };
            xlate_user::gateway::control(&k.iface, &req).map(|m| {
                println!("{m}");
                ExitCode::SUCCESS
            })
        }
        Command::Flows(a) => xlate_user::gateway::flows(&a.iface).and_then(|rows| {
            let relayed = xlate_user::gateway::relayed(&a.iface)?;
            xlate_user::agent::inspect::print_flows_and_relayed(&rows, &relayed, a.json);
            Ok(ExitCode::SUCCESS)
        }),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xlate-user: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn decode(files: &[PathBuf], quiet: bool) -> Result<ExitCode> {
    let mut bad = 0usize;
    let mut sal = 0usize;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for f in files {
        let packets = decode_file(f)?;
        if files.len() > 1 && !quiet {
            writeln!(out, "== {}", f.display())?;
        }
        for p in &packets {
            if !quiet || matches!(p.verdict, Verdict::Invalid(_)) {
                writeln!(out, "{:>5} {}", p.number, p.line)?;
            }
            match &p.verdict {
                Verdict::Valid => sal += 1,
                Verdict::Invalid(why) => {
                    sal += 1;
                    bad += 1;
                    eprintln!("{}: packet {}: {why}", f.display(), p.number);
                }
                Verdict::NotServal => {}
            }
        }
    }
    writeln!(out, "{sal} SAL packets, {} valid, {bad} invalid", sal - bad)?;
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn watch(iface: &str, mode: XdpMode, interval: f64, duration: Option<f64>) -> Result<()> {
    let mut classifier = Classifier::load()?;
    classifier.attach(iface, mode)?;
    xlate_user::agent::runtime::block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // Only now: whoever waits for this line may stop us at once, and a
        // SIGTERM before the handlers would end us without the final line.
        println!("attached xlate_classify to {iface} ({mode:?} mode)");
        std::io::stdout().flush()?;
        let forever = Duration::from_secs(u64::MAX / 4);
        let stop = tokio::time::sleep(duration.map_or(forever, Duration::from_secs_f64));
        tokio::pin!(stop);
        let period = if interval > 0.0 { Duration::from_secs_f64(interval) } else { forever };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = &mut stop => break,
                _ = tick.tick() => {
                    println!("{}", classifier.counters()?);
                    std::io::stdout().flush()?;
                }
            }
        }
        anyhow::Ok(())
    })?;
    println!("final {}", classifier.counters()?);
    Ok(())
}

fn host_cmd(h: HostCmd) -> Result<()> {
    match h.action {
        Some(HostAction::Flows(a)) => {
            let rows = xlate_user::agent::inspect::flows(xlate_user::agent::maps::Kind::Host, &a.iface)?;
            xlate_user::agent::inspect::print_flows(&rows, a.json);
            Ok(())
        }
        Some(HostAction::Stats(a)) => {
            let rows = xlate_user::agent::inspect::stats(xlate_user::agent::maps::Kind::Host, &a.iface)?;
            xlate_user::agent::inspect::print_stats(&rows, a.json);
            Ok(())
        }
        Some(HostAction::Stop { iface }) => {
            println!("{}", xlate_user::agent::stop(xlate_user::agent::maps::Kind::Host, &iface)?);
            Ok(())
        }
        Some(HostAction::KernelLog(k)) => {
            let req = xlate_user::agent::protocol::Request::KernelLog { on: matches!(k.state, OnOff::On) };
            println!("{}", host::control(&k.iface, &req)?);
            Ok(())
        }
        Some(HostAction::Migrate { iface, to, wait }) => {
            println!("{}", host::migrate(&iface, to, wait)?);
            Ok(())
        }
        None => {
            let iface = h.iface.context("--iface is required")?;
            host::run(HostOptions {
                metrics: h.metrics,
                iface,
                serve: h.serve,
                connect: h.connect,
                routes: h.route,
                idle_timeout: Duration::from_secs(h.idle_timeout),
                receive: h.receive,
            })
        }
    }
}

fn map_cmd(action: MapAction) -> Result<()> {
    use xlate_user::gateway;
    match action {
        MapAction::Show(a) => {
            let rows = gateway::services(&a.iface)?;
            if a.json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                for row in rows {
                    println!("{row}");
                }
            }
        }
        MapAction::Set { iface, service, id, instances, router, relay } => {
            let targets = match (instances, router) {
                (_, Some(r)) => format!("router={r}"),
                (Some(i), None) => i,
                (None, None) => anyhow::bail!("give --instances or --router"),
            };
            if service.contains('/') {
                if relay {
                    anyhow::bail!("--relay: a prefix of services takes the fast path only");
                }
                let prefix = (&gateway::parse_prefix(&service, &id, &targets)?).into();
                let req = xlate_user::agent::protocol::Request::PrefixSet { prefix };
                println!("{}", gateway::control(&iface, &req)?);
                return Ok(());
            }
            let mut svc = gateway::parse_service(&service, &id, &targets)?;
            if relay {
                svc.mode = xlate_user::config::ServiceMode::Relay;
            }
            let service = (&svc).into();
            println!("{}", gateway::control(&iface, &xlate_user::agent::protocol::Request::ServiceSet { service })?);
        }
        MapAction::Del { iface, service } if service.contains('/') => {
            let (network, len, (port, _)) = gateway::parse_prefix_ports(&service)?;
            let req = xlate_user::agent::protocol::Request::PrefixDel { network, len, port };
            println!("{}", gateway::control(&iface, &req)?);
        }
        MapAction::Del { iface, service } => {
            let (address, port) = gateway::parse_addr_port(&service)?;
            let req = xlate_user::agent::protocol::Request::ServiceDel { address, port };
            println!("{}", gateway::control(&iface, &req)?);
        }
    }
    Ok(())
}
