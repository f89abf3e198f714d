//! The experiments' summary for people: `README.md` beside the CSV files
//! and plots, written from the run's own data (machine, kernel, settings,
//! the headline table as ratios to plain routing from the same run, every
//! experiment's table, the fast path against the stream relays).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::experiments::bulk::{self, Spread};
use crate::experiments::connections::{self, Closer, Load};
use crate::experiments::{DataPath, Results, Settings, PATHS};
use crate::transfer::Direction;

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("?".into(), |kb| format!("{:.1} GiB", kb as f64 / 1048576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, {mem} RAM; Linux {}", kernel.trim())
}

fn cell(v: Option<Spread>) -> String {
    v.map_or("-".into(), |(m, lo, hi)| format!("{m:.2} ({lo:.2}-{hi:.2})"))
}

/// `v / reference`, as "0.63x".
fn ratio(v: Option<f64>, reference: Option<f64>) -> String {
    match (v, reference) {
        (Some(v), Some(r)) if r > 0.0 && v.is_finite() => format!("{:.2}x", v / r),
        _ => "-".into(),
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite()).map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// What a reader must know to read the tables right (established
/// outside the run: see the docs named).
pub const READING: &str = "## Reading these results

- `serval-direct` is not a way for a legacy client: it is a Serval client (xlate host mode) on the
  gateway talking straight to the instance, no translator on the way. It shows the most a SAL path to this instance moves on this machine; where a
  path comes close to it, the instance (and the SAL sender), not the gateway, is what limits that
  path. SAL has no GSO in the kernel, so the instance's host mode still cuts what it sends into
  segments in software; what it receives becomes TCP at TC and goes round through GRO, which
  coalesces it (`--receive auto` on a veth).
- All parties share the machine's cores: the whole machine's CPU per GB is everyone's (client,
  gateway, instance). The gateway's processes (the relay, HAProxy, the agents) are counted apart;
  the kernel's packet work (softirq: routing, the fast path, the veth links) is charged to CPUs,
  not namespaces, so it is shown for the machine. Without IRQ time accounting (this kernel's
  configuration) softirq work done inside a process's system call counts in both columns. For
  `serval-direct` the client runs on the gateway; its own time is in the machine's column only
  (the gateway column holds the host-mode agent).
- `fast-path-generic`: generic XDP runs after GRO and also takes a local veth peer's TSO packets
  unsegmented, and the translator would rewrite such GSO super-packets whole into SAL packets no link
  carries ([docs/translator.md](../translator.md), Limits). This row's client therefore sends
  wire-size segments (TSO and GSO off on its link), as a real network delivers them; its goodput
  is that of a client sending that way.
- Per packet: BPF_PROG_TEST_RUN times one run of a program on one frame in the kernel, without a
  driver, a queue or a cache-cold packet. The trivial programs measured beside it on the same frames
  give the harness's own share; the difference is the translator's.";

/// Writes `README.md` into the output directory.
pub fn write_readme(r: &Results, s: &Settings, took: Duration) -> Result<PathBuf> {
    let mut t = String::new();
    let n = s.max_transfers;
    let _ = writeln!(t, "# Comparison experiments\n");
    if s.quick {
        let _ = writeln!(
            t,
            "**A quick run** (small transfers, one run each, 2 s per connection measurement): it proves the \
             harness works, not how fast anything is. The committed results come from a full run.\n"
        );
    }
    let _ = writeln!(t, "Written by `{}` in {:.0} min.\n", s.command(), took.as_secs_f64() / 60.0);
    let _ = writeln!(t, "- Machine: {}", machine());
    let _ = writeln!(
        t,
        "- Lab: network namespaces on one host: a client, the gateway (two veth arms, GRO on at the far ends, \
         the client's tx checksum offload on, XDP attached natively unless a row says generic) and one Serval \
         instance running xlate host mode behind a bridge (GRO on, as a real NIC has it; host mode started \
         as an operator starts it, `--receive auto`, which on this veth receives SAL at TC and sends the TCP \
         round through GRO; on the routing path it receives at XDP, whose NAPI gives the routed segments \
         GRO). Every path ends at that same instance's server, a \
         plain TCP socket; the reference reaches it by plain TCP, every other path over SAL. Each path gets a \
         fresh lab."
    );
    let _ = writeln!(
        t,
        "- Experiment 1 and 2: `xtask transfer`: 1 to {n} at once, {} MB each, {} run{} of each, every byte \
         checked by its receiver, which counts the goodput (from the request to the last byte). Total = all \
         bytes over the longest transfer. CPU: /proc/stat and /proc/PID/stat around each set of transfers.",
        s.size / 1_000_000,
        s.runs,
        if s.runs == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        t,
        "- Experiment 3: a Python asyncio client, one request line and one answer line per connection; \
         {} connections/s offered (open loop) and saturation ({} at a time, closed loop), {} s each; life = \
         connect to close, as the client sees it.",
        connections::FIXED_RATE,
        connections::CONCURRENCY,
        s.connection_seconds()
    );
    let _ = writeln!(t, "- Experiment 4: `xlate-user bench-xdp --runs {}` (BPF_PROG_TEST_RUN, the mean of the runs between the 5th and 95th percentile).", s.xdp_runs());
    let _ = writeln!(
        t,
        "- Experiment 5: host mode against plain TCP on one veth pair of its own (GRO on at both ends), iperf3, \
         {} s per run, 1 and 4 streams both ways.",
        s.host_mode_seconds()
    );
    let _ = writeln!(t, "- Paths:");
    for p in PATHS {
        let _ = writeln!(t, "  - `{}`: {}", p.key(), p.describe());
    }
    headline(&mut t, r, s);
    let _ = writeln!(t, "\n![Figure 7, downloads](figure7-download.png)\n");
    floors(&mut t, r, s);
    fast_path_against_relays(&mut t, r, s);
    figure7(&mut t, r, s);
    cost(&mut t, r, s);
    conns(&mut t, r);
    per_packet(&mut t, r);
    host_mode(&mut t, r);
    let _ = writeln!(t, "{READING}");
    let p = s.out.join("README.md");
    std::fs::write(&p, t)?;
    Ok(p)
}

/// What acceptance asks per path, each with its ratio to routing.
fn headline(t: &mut String, r: &Results, s: &Settings) {
    let n = s.max_transfers;
    let gp = |p, dir, k| bulk::goodput(&r.bulk, p, dir, k).map(|v| v.0);
    let cpu = |p, dir| bulk::cost(&r.bulk, p, dir, n);
    let sat = |p, c| r.connections.iter().find(|x| x.path == p && x.closer == c && x.load == Load::Saturation);
    let _ = writeln!(t, "\n## Headline\n");
    let _ = writeln!(
        t,
        "Medians; in brackets the ratio to plain routing in this run. Goodput: total Gbit/s. CPU: seconds per \
         GB at {n} transfers, downloads, the whole machine and the gateway's processes. Connections: at \
         saturation, server closes first.\n"
    );
    let _ = writeln!(
        t,
        "| path | down, 1 | down, {n} | up, 1 | up, {n} | CPU s/GB machine | CPU s/GB gateway processes | conn/s | life p99 ms |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    let rt = DataPath::Routing;
    for p in PATHS {
        let g = |dir, k| {
            let v = gp(p, dir, k);
            format!("{} ({})", num(v, 2), ratio(v, gp(rt, dir, k)))
        };
        let (c, cr) = (cpu(p, Direction::Down), cpu(rt, Direction::Down));
        let (k, kr) = (sat(p, Closer::Server), sat(rt, Closer::Server));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} ({}) | {} | {} ({}) | {} ({}) |",
            p.key(),
            g(Direction::Down, 1),
            g(Direction::Down, n),
            g(Direction::Up, 1),
            g(Direction::Up, n),
            num(c.map(|c| c.machine), 2),
            ratio(c.map(|c| c.machine), cr.map(|c| c.machine)),
            num(c.map(|c| c.gateway), 2),
            num(k.map(|k| k.per_second()), 0),
            ratio(k.map(|k| k.per_second()), kr.map(|k| k.per_second())),
            num(k.map(|k| k.life(0.99)), 2),
            ratio(k.map(|k| k.life(0.99)), kr.map(|k| k.life(0.99))),
        );
    }
    if let Some(x) = r.per_packet.iter().find(|x| x.packet.starts_with("data TCP->SAL")) {
        let _ = writeln!(
            t,
            "\nPer packet (TCP->SAL data): translator {:.0} ns, XDP_PASS {:.0} ns, MAC swap + XDP_TX {:.0} ns: the \
             translator's own cost is {:.0} ns (experiment 4 below).",
            x.translator_ns,
            x.pass_ns,
            x.mac_swap_ns,
            x.difference_ns()
        );
    }
}

/// The native fast path as a ratio to each stream relay: above 1, the
/// fast path is ahead (for CPU and life, below 1 is ahead).
fn fast_path_against_relays(t: &mut String, r: &Results, s: &Settings) {
    let n = s.max_transfers;
    let fp = DataPath::FastNative;
    let others = [DataPath::RelaySplice, DataPath::RelayCopy, DataPath::Haproxy];
    let _ = writeln!(t, "## The fast path against the stream relays\n");
    let _ = writeln!(
        t,
        "`fast-path-native` divided by each relay, same run. Goodput and connections/s: above 1 the fast path \
         is ahead. CPU per GB and p99 life: below 1 the fast path is ahead.\n"
    );
    let _ = writeln!(t, "| measure | {} |", others.map(DataPath::key).join(" | "));
    let _ = writeln!(t, "|---|{}", "---|".repeat(others.len()));
    let row = |t: &mut String, name: &str, f: &dyn Fn(DataPath) -> Option<f64>| {
        let cells: Vec<String> = others.iter().map(|&o| ratio(f(fp), f(o))).collect();
        let _ = writeln!(t, "| {name} | {} |", cells.join(" | "));
    };
    for dir in [Direction::Down, Direction::Up] {
        for k in [1, n] {
            row(t, &format!("goodput, {}, {k} transfer(s)", dir.name()), &|p| {
                bulk::goodput(&r.bulk, p, dir, k).map(|v| v.0)
            });
        }
        row(t, &format!("CPU s/GB machine, {}, {n} transfers", dir.name()), &|p| {
            bulk::cost(&r.bulk, p, dir, n).map(|c| c.machine)
        });
    }
    for c in [Closer::Server, Closer::Client] {
        let find = |p| r.connections.iter().find(move |x| x.path == p && x.closer == c && x.load == Load::Saturation);
        row(t, &format!("connections/s, {} closes first", c.name()), &|p| find(p).map(|x| x.per_second()));
        row(t, &format!("life p99, {} closes first, saturation", c.name()), &|p| find(p).map(|x| x.life(0.99)));
    }
    let _ = writeln!(t);
}

fn figure7(t: &mut String, r: &Results, s: &Settings) {
    let n = s.max_transfers;
    let _ = writeln!(t, "## Experiment 1: the paper's Figure 7\n");
    let _ = writeln!(
        t,
        "Total goodput in Gbit/s, median (slowest-fastest run), and the median as a ratio to plain routing \
         in the same run.\n"
    );
    for dir in [Direction::Down, Direction::Up] {
        let reference = |k: u32| bulk::goodput(&r.bulk, DataPath::Routing, dir, k).map(|v| v.0);
        let _ = writeln!(t, "### {}s\n", dir.name());
        let _ = writeln!(t, "| path | 1 transfer | ratio | {n} transfers | ratio |");
        let _ = writeln!(t, "|---|---|---|---|---|");
        for p in PATHS {
            let (one, many) = (bulk::goodput(&r.bulk, p, dir, 1), bulk::goodput(&r.bulk, p, dir, n));
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                p.key(),
                cell(one),
                ratio(one.map(|v| v.0), reference(1)),
                cell(many),
                ratio(many.map(|v| v.0), reference(n))
            );
        }
        let _ = writeln!(t, "\n![Figure 7, {}s](figure7-{}.png)\n", dir.name(), dir.name());
    }
    let _ = writeln!(t, "Every transfer: `experiment1-figure7.csv` (one line per transfer).\n");
}

fn cost(t: &mut String, r: &Results, s: &Settings) {
    let n = s.max_transfers;
    let _ = writeln!(t, "## Experiment 2: cost\n");
    let _ = writeln!(
        t,
        "CPU seconds per GB moved at {n} concurrent transfers, median of the runs: the whole machine (ratio to \
         routing), of it softirq, and the gateway's processes. Extra = the machine's time above routing's for \
         the same bytes. TCP retransmissions: segments every party's stack retransmitted meanwhile, per GB \
         (losses on the way: a full veth ring drops).\n"
    );
    let _ = writeln!(
        t,
        "| path | direction | machine | ratio | softirq | gateway processes | extra over routing | TCP retransmissions per GB |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|");
    for dir in [Direction::Down, Direction::Up] {
        let rc = bulk::cost(&r.bulk, DataPath::Routing, dir, n);
        for p in PATHS {
            let c = bulk::cost(&r.bulk, p, dir, n);
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                p.key(),
                dir.name(),
                num(c.map(|c| c.machine), 2),
                ratio(c.map(|c| c.machine), rc.map(|c| c.machine)),
                num(c.map(|c| c.softirq), 2),
                num(c.map(|c| c.gateway), 2),
                num(c.zip(rc).map(|(c, rc)| c.machine - rc.machine), 2),
                num(bulk::retransmissions(&r.bulk, p, dir, n), 0),
            );
        }
    }
    let _ = writeln!(t, "\n![CPU per GB](cost.png)\n");
    let _ = writeln!(t, "Every set of transfers: `experiment2-cost.csv`.\n");
}

fn conns(t: &mut String, r: &Results) {
    let _ = writeln!(t, "## Experiment 3: short connections\n");
    let _ = writeln!(t, "Connections per second (ratio to routing) and connection life in ms.\n");
    let _ = writeln!(t, "| path | closes first | load | conn/s | ratio | p50 | p99 | p99.9 | failed |");
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    for c in [Closer::Server, Closer::Client] {
        for load in [Load::Fixed(connections::FIXED_RATE), Load::Saturation] {
            let find = |p| r.connections.iter().find(|x| x.path == p && x.closer == c && x.load == load);
            let rt = find(DataPath::Routing).map(|x| x.per_second());
            for p in PATHS {
                let Some(x) = find(p) else { continue };
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} |",
                    p.key(),
                    c.name(),
                    load.name(),
                    x.per_second(),
                    ratio(Some(x.per_second()), rt),
                    x.life(0.5),
                    x.life(0.99),
                    x.life(0.999),
                    x.failed
                );
            }
        }
    }
    let _ = writeln!(t, "\n![Connection life, server closes first](connections-life-server-closes.png)\n");
    let _ = writeln!(t, "![Connection life, client closes first](connections-life-client-closes.png)\n");
    let _ = writeln!(
        t,
        "Every measurement: `experiment3-connections.csv`; the distributions: `experiment3-life-cdf.csv`.\n"
    );
}

fn per_packet(t: &mut String, r: &Results) {
    let _ = writeln!(t, "## Experiment 4: per packet\n");
    let _ = writeln!(
        t,
        "ns/packet, the mean of the runs between the 5th and 95th percentile, the same frames through each program in the same run.\n"
    );
    let _ = writeln!(t, "| packet | translator | XDP_PASS | MAC swap + XDP_TX | translator minus XDP_PASS |");
    let _ = writeln!(t, "|---|---|---|---|---|");
    for x in &r.per_packet {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            x.packet,
            x.translator_ns,
            x.pass_ns,
            x.mac_swap_ns,
            x.difference_ns()
        );
    }
    let _ = writeln!(t, "\n`experiment4-per-packet.csv`.\n");
}

/// Issue 18's floors, each with this run's measurement.
fn floors(t: &mut String, r: &Results, s: &Settings) {
    let all = crate::experiments::floors::evaluate(r, s);
    let held = all.iter().filter(|f| f.met() == Some(true)).count();
    let _ = writeln!(t, "## Issue 18's floors, from this run\n");
    let _ = writeln!(
        t,
        "{held} of {} hold. Ratios are this run's own: the translator is `fast-path-native` against `routing` \
         (experiments 1 to 3), host mode is experiment 5, per packet is experiment 4 (ns above XDP_PASS). \
         One run on shared cores: docs/performance.md says how much a figure moves between runs.\n",
        all.len()
    );
    let _ = writeln!(t, "| item | floor | measured | bound | holds |");
    let _ = writeln!(t, "|---|---|---|---|---|");
    for f in &all {
        let holds = match f.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let _ = writeln!(t, "| {} | {} | {} | {} | {holds} |", f.item, f.what, f.measured_text(), f.limit_text());
    }
    let _ = writeln!(t);
}

fn host_mode(t: &mut String, r: &Results) {
    let Some(h) = &r.host_mode else { return };
    let _ = writeln!(t, "## Experiment 5: host mode against plain TCP on one link\n");
    let _ = writeln!(
        t,
        "iperf3 goodput, Gbit/s, {} s per run, over one veth pair with GRO on at both ends. The per-segment \
         bound is plain TCP whose senders put wire-size segments on the link (tx, TSO and GSO off), as host \
         mode must: the kernel has no GSO for SAL.\n",
        h.seconds
    );
    let _ = writeln!(t, "| row | {} |", crate::experiments::host_mode::HostMode::WAYS.join(" | "));
    let _ = writeln!(t, "|---|{}", "---|".repeat(4));
    for (name, v) in h.rows() {
        let cells: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        let _ = writeln!(t, "| {name} | {} |", cells.join(" | "));
    }
    let _ = writeln!(t, "\n`experiment5-host-mode.csv`.\n");
}
