//! `cargo xtask bench`: measurements, side by side in one run, on the same
//! namespaces and offload settings. Never timed unit tests.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xlate_lab::topology::translator;
use xlate_lab::{Bg, Naming, Netns, Translator, TranslatorOptions};

use crate::agent::Running;
use crate::experiments::connections::{self, Closer, Load};
use crate::experiments::host_mode::HostMode;
use crate::experiments::paths::DataPath;
use crate::experiments::per_packet;

/// iperf3's port in every lab of the benchmarks.
pub(crate) const PORT: &str = "5201";

/// Starts an agent in `ns` and waits until it is up (its log in
/// target/bench/); `stop` is its stop-for-good command (`stop` or `host stop`).
pub(crate) fn agent(bin: &Path, ns: &Netns, args: &[&str], stop: &[&str]) -> Result<Running> {
    let log = format!("{}-{}", ns.name(), args.first().copied().unwrap_or("agent"));
    crate::agent::start(bin, ns, &crate::util::workspace_root().join("target/bench"), &log, args, stop)
}

/// The lab instance's host-mode agent serving `serve` on `e0`, receiving
/// as the experiments' instance does on `path`
/// ([`DataPath::instance_receive`]).
fn instance_agent(bin: &Path, inst: &Netns, serve: &str, path: DataPath) -> Result<Running> {
    let mut args = vec!["host", "--iface", "e0", "--serve", serve];
    args.extend(path.instance_receive());
    agent(bin, inst, &args, &["host", "stop", "--iface", "e0"])
}

/// iperf3's server in `ns`.
pub(crate) fn iperf_server(ns: &Netns) -> Result<Bg> {
    let child = ns.cmd("iperf3").args(["-s", "-p", PORT]).stdout(Stdio::null()).spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(Bg::from_child(child))
}

/// Goodput in Gbit/s of iperf3 runs from the client namespace: client to
/// server and server to client (`-R`), 1 and 4 streams.
pub(crate) fn four_ways(c: &Netns, dst: &str, seconds: u32) -> Result<[f64; 4]> {
    Ok([
        iperf_from(c, dst, 1, seconds, false)?,
        iperf_from(c, dst, 4, seconds, false)?,
        iperf_from(c, dst, 1, seconds, true)?,
        iperf_from(c, dst, 4, seconds, true)?,
    ])
}

/// Host mode against plain TCP on one veth pair
/// ([`crate::experiments::host_mode`]), as a table with host mode's ratios
/// to the two plain bounds in its last rows.
pub fn host_mode(bin: &Path, seconds: u32) -> Result<Table> {
    let h = crate::experiments::host_mode::measure(bin, seconds)?;
    let ratio = |a: &[f64; 4], b: &[f64; 4]| -> [f64; 4] { std::array::from_fn(|i| a[i] / b[i]) };
    Ok(Table {
        title: format!("host mode: iperf3 goodput over one veth pair (GRO on), {seconds} s per run, Gbit/s"),
        columns: HostMode::WAYS.to_vec(),
        rows: vec![
            Row::new("plain TCP, default offloads, no agent", &h.plain),
            Row::new("plain TCP, senders' tx/tso/gso off (the per-segment bound)", &h.per_segment),
            Row::new("plain TCP beside host mode receiving at XDP", &h.plain_beside_xdp),
            Row::new("plain TCP beside host mode receiving at TC", &h.plain_beside_tc),
            Row::new("xlate host mode, receive at XDP (--receive xdp)", &h.host_xdp),
            Row::new("xlate host mode, receive at TC, then GRO (--receive tc; auto on a veth)", &h.host_tc),
            Row::new("xlate host mode, receive at TC in place (--receive tc-in-place)", &h.host_tc_in_place),
            Row::new("ratio: host mode (XDP) / per-segment bound (floor 0.8)", &ratio(&h.host_xdp, &h.per_segment)),
            Row::new("ratio: host mode (XDP) / default offloads (floor 0.3)", &ratio(&h.host_xdp, &h.plain)),
        ],
    })
}

/// One measured line: a name and one value per column.
pub struct Row {
    pub name: String,
    pub values: Vec<f64>,
}

impl Row {
    fn new(name: &str, values: &[f64]) -> Row {
        Row { name: name.to_string(), values: values.to_vec() }
    }
}

/// A table of measurements of one binary.
pub struct Table {
    pub title: String,
    pub columns: Vec<&'static str>,
    pub rows: Vec<Row>,
}

/// Prints the tables of this build, and beside each value the baseline's
/// (same table, same row) and this build's share of it.
pub fn print(new: &[Table], baseline: Option<(&str, &[Table])>) {
    for (i, t) in new.iter().enumerate() {
        println!("\nbench {}", t.title);
        let base = baseline.and_then(|(_, b)| b.get(i));
        if let Some((rev, _)) = baseline {
            println!("(each cell: this build / baseline {rev} = ratio)");
        }
        let w = if base.is_some() { 24 } else { 10 };
        print!("{:<58}", "");
        for c in &t.columns {
            print!(" {c:>w$}");
        }
        println!();
        for (j, r) in t.rows.iter().enumerate() {
            print!("{:<58}", r.name);
            for (k, v) in r.values.iter().enumerate() {
                let shown = |x: f64| if x.is_nan() { "-".to_string() } else { format!("{x:.2}") };
                match base.and_then(|b| b.rows.get(j)).and_then(|b| b.values.get(k)) {
                    Some(o) if !o.is_nan() && !v.is_nan() => {
                        print!(" {:>w$}", format!("{v:.2} / {o:.2} = {:.2}", v / o))
                    }
                    Some(o) => print!(" {:>w$}", format!("{} / {}", shown(*v), shown(*o))),
                    None => print!(" {:>w$}", shown(*v)),
                }
            }
            println!();
        }
    }
}

/// CPU time the whole machine spent busy so far, in seconds (every core;
/// `/proc/stat`: user, nice, system, irq, softirq, steal). Client, gateway
/// and instance share the machine, so a difference between two paths over
/// the same transfer is the gateway's.
fn busy_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    if f.len() < 8 {
        bail!("unexpected /proc/stat line: {cpu}");
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / hz)
}

/// [`iperf_from`] with one stream, and the machine's busy CPU seconds per
/// GB moved during it.
fn iperf_with_cpu(ns: &Netns, dst: &str, seconds: u32) -> Result<(f64, f64)> {
    let before = busy_cpu_seconds()?;
    let gbit = iperf_from(ns, dst, 1, seconds, false)?;
    let cpu = busy_cpu_seconds()? - before;
    Ok((gbit, cpu / (gbit * f64::from(seconds) / 8.0)))
}

/// Goodput in Gbit/s (receiver side) of an iperf3 run from `ns`; with
/// `reverse` the server sends.
fn iperf_from(ns: &Netns, dst: &str, streams: u32, seconds: u32, reverse: bool) -> Result<f64> {
    let out = ns
        .cmd("iperf3")
        .args(["-J", "-c", dst, "-p", PORT, "-P", &streams.to_string(), "-t", &seconds.to_string()])
        .args(reverse.then_some("-R"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("iperf3 to {dst} failed: {text}");
    }
    let at = text.find("\"sum_received\"").context("iperf3 output without sum_received")?;
    let rest = &text[at..];
    let b = rest.find("\"bits_per_second\"").context("no bits_per_second")?;
    let num: String = rest[b + 18..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    Ok(num.parse::<f64>()? / 1e9)
}

/// Writes `target/bench/<file>`: the translator lab's one service, the
/// public address's `port` as `service_id` on the lab's first instance.
fn service_config(file: &str, port: &str, service_id: &str) -> Result<std::path::PathBuf> {
    let dir = crate::util::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join(file);
    std::fs::write(
        &config,
        format!(
            "[translator]\nsal_address = \"{}\"\n\n[[service]]\naddress = \"{}\"\nport = {port}\nservice_id = \"{service_id}\"\ninstances = [\"{}\"]\n",
            translator::SAL_ADDRESS,
            translator::PUBLIC_IP,
            translator::INSTANCES[0]
        ),
    )?;
    Ok(config)
}

/// Goodput through the translator versus plain routing through the same
/// gateway (XDP attached either way), one and four streams; and the XDP
/// program's ns/packet.
pub fn translator(bin: &Path, seconds: u32) -> Result<Table> {
    let opts = TranslatorOptions { instances: 1, gro: true, client_tx_offload: true };
    let lab = Translator::build(Naming::Fixed("xlt-bt"), opts)?;
    let (client, inst) = (&lab.client, &lab.instances[0]);
    let config = service_config("translator.toml", PORT, "00001451")?;
    let serve = format!("00001451={PORT}");
    let _iperf = iperf_server(inst)?;
    let config = config.to_str().context("config path")?;
    let gateway = || {
        agent(
            bin,
            &lab.gateway,
            &["run", "--iface", "g0", "--iface", "g1", "--config", config],
            &["stop", "--iface", "g0"],
        )
    };
    let inst_ip = translator::INSTANCES[0];
    let inst_agent = instance_agent(bin, inst, &serve, DataPath::Routing)?;
    let gw = gateway()?;
    let (routed_1, routed_cpu) = iperf_with_cpu(client, inst_ip, seconds)?;
    let routed_4 = iperf_from(client, inst_ip, 4, seconds, false)?;
    drop((gw, inst_agent));
    let _inst_agent = instance_agent(bin, inst, &serve, DataPath::FastNative)?;
    let _gw = gateway()?;
    let (xlate_1, xlate_cpu) = iperf_with_cpu(client, translator::PUBLIC_IP, seconds)?;
    let xlate_4 = iperf_from(client, translator::PUBLIC_IP, 4, seconds, false)?;
    drop(_gw);
    // The stream-level relay on the same lab (`xlate-user relay`: every
    // connection through it), with each data mover. A build without the
    // relay (an older baseline) gets no figures ("-").
    let mut relay = Vec::new();
    for mode in ["splice", "copy"] {
        let _gw = agent(
            bin,
            &lab.gateway,
            &["relay", "--alias", "--mode", mode, "--iface", "g0", "--iface", "g1", "--config", config],
            &["stop", "--iface", "g0"],
        )?;
        let (one, cpu) = iperf_with_cpu(client, translator::PUBLIC_IP, seconds).unwrap_or((f64::NAN, f64::NAN));
        let four = iperf_from(client, translator::PUBLIC_IP, 4, seconds, false).unwrap_or(f64::NAN);
        relay.push(Row::new(&format!("through the relay, {mode} (TCP -> relay -> SAL connection)"), &[one, four, cpu]));
    }
    drop((_iperf, _inst_agent));
    drop(lab);
    Ok(Table {
        title: format!(
            "translator: iperf3 goodput client -> gateway -> instance, {seconds} s per run, Gbit/s; CPU s/GB: the \
             machine's busy CPU seconds per GB moved (1 stream)"
        ),
        columns: vec!["1 stream", "4 streams", "CPU s/GB"],
        rows: vec![
            Row::new("plain IP routing through the gateway (XDP attached, passes)", &[routed_1, routed_4, routed_cpu]),
            Row::new("through the translator (TCP -> SAL -> host-mode instance)", &[xlate_1, xlate_4, xlate_cpu]),
        ]
        .into_iter()
        .chain(relay)
        .collect(),
    })
}

/// Short connections per second, and their latency, through each path
/// (the comparison the relay is the baseline of): plain routing to the
/// instance, the fast path, the relay with splice and with copies. Each
/// path gets a lab of its own, so that no path runs beside what the one
/// before it left (sockets, flows in their linger). Once with the server
/// closing first (HTTP/1.0), once with the client closing first (HTTP
/// keep-alive clients): TIME_WAIT falls on the instance in the first case,
/// on the relay's connections to it in the second.
///
/// Builds compared (`--baseline`) take turns row by row, the order
/// alternating from one row to the next, so that the machine's drift over
/// the minutes a table takes falls on both alike. Returns one table per
/// build, in the order of `bins`.
pub fn connections(bins: &[&Path], seconds: u32) -> Result<Vec<Table>> {
    let paths: [(&str, &[&str], &str, DataPath); 4] = [
        ("plain IP routing (no SAL)", &["run"], translator::INSTANCES[0], DataPath::Routing),
        ("fast path (XDP)", &["run"], translator::PUBLIC_IP, DataPath::FastNative),
        ("relay, splice", &["relay", "--alias", "--mode", "splice"], translator::PUBLIC_IP, DataPath::RelaySplice),
        ("relay, copy", &["relay", "--alias", "--mode", "copy"], translator::PUBLIC_IP, DataPath::RelayCopy),
    ];
    let mut rows: Vec<Vec<Row>> = bins.iter().map(|_| Vec::new()).collect();
    let cases = ["server", "client"].into_iter().flat_map(|f| paths.map(|p| (f, p)));
    for (n, (first, path)) in cases.enumerate() {
        let mut order: Vec<usize> = (0..bins.len()).collect();
        if n % 2 == 1 {
            order.reverse();
        }
        for b in order {
            rows[b].push(connections_row(bins[b], seconds, first, path)?);
        }
    }
    Ok(rows
        .into_iter()
        .map(|rows| Table {
            title: format!(
                "connections: short connections client -> gateway -> instance ({} at a time, a line each \
                 way, {seconds} s per run, a fresh lab per path); life = connect to close",
                connections::CONCURRENCY
            ),
            columns: vec!["conn/s", "life p50 ms", "life p99 ms", "failed"],
            rows,
        })
        .collect())
}

const SHORT_PORT: &str = "5301";

/// One row of [`connections`]: a fresh lab, the instance's server closing
/// `first` or after the client, and the gateway running `cmd`.
fn connections_row(
    bin: &Path,
    seconds: u32,
    first: &str,
    (name, cmd, dst, path): (&str, &[&str], &str, DataPath),
) -> Result<Row> {
    let config = service_config("connections.toml", SHORT_PORT, "00001452")?;
    let config = config.to_str().context("config path")?;
    let opts = TranslatorOptions { instances: 1, gro: true, client_tx_offload: true };
    let lab = Translator::build(Naming::Fixed("xlt-bc"), opts)?;
    let (client, inst) = (&lab.client, &lab.instances[0]);
    let serve = format!("00001452={SHORT_PORT}");
    let inst_agent = instance_agent(bin, inst, &serve, path)?;
    let mut server = inst.spawn("python3", &["-c", connections::SERVER, SHORT_PORT, first]);
    server.wait_for_line("serving", Duration::from_secs(10));
    let mut args: Vec<&str> = cmd.to_vec();
    args.extend(["--iface", "g0", "--iface", "g1", "--config", config]);
    let gw = agent(bin, &lab.gateway, &args, &["stop", "--iface", "g0"])?;
    let closer = if first == "client" { Closer::Client } else { Closer::Server };
    let port: u16 = SHORT_PORT.parse()?;
    let measured = connections::measure(client, dst, port, f64::from(seconds), closer, Load::Saturation);
    drop((gw, server, inst_agent));
    drop(lab);
    let v = match measured {
        Ok(m) => {
            let q = |x| connections::quantile(&m.life_ms, x);
            [m.life_ms.len() as f64 / m.seconds, q(0.5), q(0.99), m.failed as f64]
        }
        Err(_) => [f64::NAN; 4],
    };
    Ok(Row::new(&format!("{name}, {first} closes first"), &v))
}

/// Runs a bench that measures one build for each of `bins` in turn (a
/// whole table each); one table per build, in the order of `bins`.
pub fn per_build(bins: &[&Path], seconds: u32, one: fn(&Path, u32) -> Result<Table>) -> Result<Vec<Table>> {
    bins.iter().map(|b| one(b, seconds)).collect()
}

/// The XDP program's ns/packet beside the trivial programs
/// (`xlate-user bench-xdp`, BPF_PROG_TEST_RUN).
pub fn xdp(bin: &Path) -> Result<Table> {
    let rows = per_packet::measure(bin, 20000)?
        .into_iter()
        .map(|x| Row::new(&x.packet, &[x.translator_ns, x.pass_ns, x.mac_swap_ns, x.difference_ns()]))
        .collect();
    Ok(Table {
        title: "xdp: the translator program beside XDP_PASS and a MAC swap (XDP_TX) on the same frames, \
                BPF_PROG_TEST_RUN, median of 20000 runs"
            .into(),
        columns: vec!["translator ns", "XDP_PASS ns", "MAC swap ns", "difference ns"],
        rows,
    })
}
