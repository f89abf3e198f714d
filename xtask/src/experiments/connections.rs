//! Experiment 3: short connections through one path, connections per
//! second and each connection's life (connect to close) at a fixed offered
//! load and at saturation, with the server closing first (HTTP/1.0) and
//! with the client closing first (keep-alive clients): TIME_WAIT falls on
//! the instance in the first case, on whoever connects to it in the
//! second. `cargo xtask bench`'s connections table uses the same client
//! and server.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xlate_lab::{Netns, Translator};

use super::paths::{DataPath, PathUp, PORT};
use super::{Progress, Settings};

/// The instance's server on PORT (argv 1): answers each connection's
/// request line with "ok" and closes, at once when argv 2 is "server",
/// after the client has closed when it is "client" (asyncio, one thread).
pub const SERVER: &str = r#"
import asyncio, sys
async def serve(r, w):
    await r.readline()
    w.write(b"ok\n")
    await w.drain()
    if sys.argv[2] == "client":
        await r.read()
    w.close()
async def main():
    s = await asyncio.start_server(serve, "0.0.0.0", int(sys.argv[1]), backlog=4096)
    print("serving", flush=True)
    await s.serve_forever()
asyncio.run(main())
"#;

/// The client: connections to HOST:PORT for SECONDS (argv 3), each sending
/// a line and reading the answer, then closing at once (argv 5 "client")
/// or after the server closed ("server"). With RATE (argv 6) > 0, open
/// loop: connection i is due at i/RATE s whatever the others do (a fixed
/// offered load), and its life counts from then, so that the client's own
/// lateness is not hidden; else closed loop: CONC (argv 4) workers, each
/// opening the next connection when its last one ended (saturation).
/// Prints JSON: the window the rate is over (the schedule's at a fixed
/// load; until the last connection ended at saturation), completed,
/// failed with a count per reason, and every completed connection's life
/// in ms. A connection fails when refused, reset, answered wrongly or not
/// done in 30 s; one that recovered from loss is slow, not failed. A
/// client that closes first lets its network namespace reuse its own
/// TIME_WAIT ports on connect (`tcp_tw_reuse`): one client host opening
/// thousands of connections a second to one address would otherwise
/// measure its own port range, not the path.
pub const CLIENT: &str = r#"
import asyncio, json, sys, time
host, port, secs, conc, first, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
if first == "client":
    open("/proc/sys/net/ipv4/tcp_tw_reuse", "w").write("1")
# Lost packets are recovered by retransmission (TCP's SYN at 1, 3 and 7 s,
# the SAL control plane's FIN at 1, 3 and 7 s): a connection that needed
# them is slow, and its life says how slow; only one that never completes
# (or is refused or reset) fails.
GIVE_UP = 30
lat, failed, why = [], 0, {}
def fail(reason):
    global failed
    failed += 1
    why[reason] = why.get(reason, 0) + 1
async def one(due=None):
    t = time.monotonic() if due is None else due
    stage = "connect"
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), GIVE_UP)
        stage = "answer"
        w.write(b"GET\n")
        d = await asyncio.wait_for(r.readline() if first == "client" else r.read(), GIVE_UP)
        w.close()
        if d == b"ok\n":
            lat.append((time.monotonic() - t) * 1e3)
        else:
            fail("answer %r" % d[:16])
    except Exception as e:
        fail(stage + ": " + type(e).__name__ + (": " + str(e) if str(e) else ""))
async def worker(deadline):
    while time.monotonic() < deadline:
        await one()
async def paced(t0):
    tasks, i = [], 0
    while t0 + i / rate < t0 + secs:
        d = t0 + i / rate - time.monotonic()
        if d > 0:
            await asyncio.sleep(d)
        tasks.append(asyncio.ensure_future(one(t0 + i / rate)))
        i += 1
    await asyncio.gather(*tasks)
async def main():
    t0 = time.monotonic()
    if rate > 0:
        await paced(t0)
        window = secs
    else:
        await asyncio.gather(*(worker(t0 + secs) for _ in range(conc)))
        window = time.monotonic() - t0
    print(json.dumps({"seconds": window, "completed": len(lat), "failed": failed, "why": why, "life_ms": lat}))
asyncio.run(main())
"#;

/// Concurrent connections at saturation.
pub const CONCURRENCY: u32 = 16;
/// The fixed offered load, connections per second: below what every path
/// sustains on this machine kind (the slowest saturates near 2,000/s).
pub const FIXED_RATE: u32 = 500;

/// Who closes a connection first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    Server,
    Client,
}

impl Closer {
    pub fn name(self) -> &'static str {
        match self {
            Closer::Server => "server",
            Closer::Client => "client",
        }
    }
}

/// The offered load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    Fixed(u32),
    Saturation,
}

impl Load {
    pub fn name(self) -> String {
        match self {
            Load::Fixed(r) => format!("fixed-{r}"),
            Load::Saturation => "saturation".into(),
        }
    }
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct Run {
    pub path: DataPath,
    pub closer: Closer,
    pub load: Load,
    pub seconds: f64,
    pub failed: u64,
    /// Why they failed: "reason: count, ...", empty when none did.
    pub why: String,
    /// Sorted, ms.
    pub life_ms: Vec<f64>,
}

impl Run {
    pub fn per_second(&self) -> f64 {
        self.life_ms.len() as f64 / self.seconds
    }

    /// The `q` quantile of connection life (0 < q <= 1), ms.
    pub fn life(&self, q: f64) -> f64 {
        quantile(&self.life_ms, q)
    }
}

/// The `q` quantile of sorted values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What one [`CLIENT`] run measured.
pub struct Measured {
    pub seconds: f64,
    /// Completed connections' lives, ms, sorted.
    pub life_ms: Vec<f64>,
    pub failed: u64,
    /// "reason: count, ..." for the failures.
    pub why: String,
}

/// Runs [`CLIENT`] in `ns` against `dst`.
pub fn measure(ns: &Netns, dst: &str, port: u16, seconds: f64, closer: Closer, load: Load) -> Result<Measured> {
    let rate = match load {
        Load::Fixed(r) => r,
        Load::Saturation => 0,
    };
    let args = [
        dst.to_string(),
        port.to_string(),
        seconds.to_string(),
        CONCURRENCY.to_string(),
        closer.name().into(),
        rate.to_string(),
    ];
    let mut argv = vec!["-c", CLIENT];
    argv.extend(args.iter().map(String::as_str));
    let out = ns.output("python3", &argv);
    if !out.status.success() {
        bail!("the connections client failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the connections client's output is not JSON")?;
    let mut life: Vec<f64> =
        v["life_ms"].as_array().context("no life_ms")?.iter().filter_map(serde_json::Value::as_f64).collect();
    life.sort_by(f64::total_cmp);
    let why = v["why"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    Ok(Measured {
        seconds: v["seconds"].as_f64().context("no seconds")?,
        life_ms: life,
        failed: v["failed"].as_u64().unwrap_or(0),
        why,
    })
}

/// Every measurement of experiment 3 on `path`, up on `lab`, with nothing
/// listening on the instance's PORT yet.
pub fn run(path: DataPath, up: &PathUp, lab: &Translator, s: &Settings, progress: &mut Progress) -> Result<Vec<Run>> {
    let client = up.client(lab);
    let inst = &lab.instances[0];
    let dst = up.dst.ip().to_string();
    let mut runs = Vec::new();
    for closer in [Closer::Server, Closer::Client] {
        if closer == Closer::Client {
            // The relays' and HAProxy's own connections to the instance
            // close first too and wait in the gateway's TIME_WAIT: as on
            // the client, reuse them rather than measure the port range.
            lab.gateway.output("sysctl", &["-qw", "net.ipv4.tcp_tw_reuse=1"]);
        }
        let mut server = inst.spawn("python3", &["-c", SERVER, &PORT.to_string(), closer.name()]);
        server.wait_for_line("serving", Duration::from_secs(10));
        for load in [Load::Fixed(FIXED_RATE), Load::Saturation] {
            progress.step(
                &format!("connections: {}, {} closes first, {}", path.key(), closer.name(), load.name()),
                weight(s) / 4,
            );
            let m = measure(client, &dst, up.dst.port(), s.connection_seconds(), closer, load)
                .with_context(|| format!("{} {} {}", path.key(), closer.name(), load.name()))?;
            runs.push(Run { path, closer, load, seconds: m.seconds, failed: m.failed, why: m.why, life_ms: m.life_ms });
        }
        drop(server);
        // The next server binds the same port.
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(runs)
}

/// Experiment 3's share of a path's progress, in the bulk experiments'
/// unit (bytes): what moving for as long would weigh, roughly (its four
/// measurements at 400 MB/s).
pub fn weight(s: &Settings) -> u64 {
    (4.0 * s.connection_seconds() * 400e6) as u64
}

/// experiment3-connections.csv (one line per measurement) and
/// experiment3-life-cdf.csv (each measurement's distribution of
/// connection life, 200 quantiles and the tail).
pub fn write_csv(runs: &[Run], out: &Path) -> Result<Vec<PathBuf>> {
    let mut t = String::from(
        "path,closes_first,load,seconds,completed,failed,connections_per_s,life_p50_ms,life_p99_ms,life_p999_ms\n",
    );
    let mut c = String::from("path,closes_first,load,quantile,life_ms\n");
    for r in runs {
        let _ = writeln!(
            t,
            "{},{},{},{:.3},{},{},{:.1},{:.3},{:.3},{:.3}",
            r.path.key(),
            r.closer.name(),
            r.load.name(),
            r.seconds,
            r.life_ms.len(),
            r.failed,
            r.per_second(),
            r.life(0.5),
            r.life(0.99),
            r.life(0.999)
        );
        for q in cdf_quantiles() {
            let _ = writeln!(c, "{},{},{},{q:.4},{:.3}", r.path.key(), r.closer.name(), r.load.name(), r.life(q));
        }
    }
    let (a, b) = (out.join("experiment3-connections.csv"), out.join("experiment3-life-cdf.csv"));
    std::fs::write(&a, t)?;
    std::fs::write(&b, c)?;
    Ok(vec![a, b])
}

/// The quantiles a CDF is drawn through: every half percent, and the tail.
pub fn cdf_quantiles() -> Vec<f64> {
    let mut q: Vec<f64> = (1..=200)
        .map(|i| f64::from(i) / 200.0)
        .chain([0.991, 0.992, 0.993, 0.994, 0.996, 0.997, 0.998, 0.999, 0.9995])
        .collect();
    q.sort_by(f64::total_cmp);
    q
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 500.0);
        assert_eq!(quantile(&v, 0.99), 990.0);
        assert_eq!(quantile(&v, 0.999), 999.0);
        assert_eq!(quantile(&v, 1.0), 1000.0);
        assert_eq!(quantile(&[3.0], 0.999), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
