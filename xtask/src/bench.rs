//! `cargo xtask bench`: measurements, side by side in one run, on the same
//! namespaces and offload settings. Never timed unit tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

const C: &str = "xlt-bench-c";
const S: &str = "xlt-bench-s";
const C_IP: &str = "10.62.0.1";
const S_IP: &str = "10.62.0.2";
const SVC_ADDR: &str = "10.62.0.100";
const PORT: &str = "5201";

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

struct Lab;

impl Lab {
    fn new() -> Result<Lab> {
        let _ = Command::new("ip").args(["netns", "del", C]).output();
        let _ = Command::new("ip").args(["netns", "del", S]).output();
        ip(&["netns", "add", C])?;
        ip(&["netns", "add", S])?;
        let lab = Lab;
        ip(&["link", "add", "bc0", "netns", C, "type", "veth", "peer", "name", "bs0", "netns", S])?;
        ip(&["-n", C, "addr", "add", &format!("{C_IP}/24"), "dev", "bc0"])?;
        ip(&["-n", S, "addr", "add", &format!("{S_IP}/24"), "dev", "bs0"])?;
        for (ns, dev) in [(C, "bc0"), (S, "bs0")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [C, S] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-TERM", pid]).status();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("ip").args(["netns", "del", C]).output();
        let _ = Command::new("ip").args(["netns", "del", S]).output();
    }
}

struct Bg(Child);
impl Drop for Bg {
    fn drop(&mut self) {
        // SIGTERM so agents detach and unpin.
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn agent(bin: &Path, ns: &str, args: &[&str]) -> Result<Bg> {
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(bin)
        .arg("host")
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .context("starting xlate-user host")?;
    std::thread::sleep(Duration::from_secs(2));
    Ok(Bg(child))
}

/// Goodput in Gbit/s of iperf3 runs from the client namespace: client to
/// server and server to client (`-R`), 1 and 4 streams.
fn four_ways(dst: &str, seconds: u32) -> Result<[f64; 4]> {
    Ok([
        iperf_from(C, dst, 1, seconds, false)?,
        iperf_from(C, dst, 4, seconds, false)?,
        iperf_from(C, dst, 1, seconds, true)?,
        iperf_from(C, dst, 4, seconds, true)?,
    ])
}

pub fn host_mode(bin: &Path, seconds: u32) -> Result<Table> {
    let lab = Lab::new()?;
    let _iperf =
        Bg(Command::new("ip").args(["netns", "exec", S, "iperf3", "-s", "-p", PORT]).stdout(Stdio::null()).spawn()?);
    std::thread::sleep(Duration::from_millis(500));
    let plain = four_ways(S_IP, seconds)?;
    let (plain_beside, host) = {
        let _s = agent(bin, S, &["--iface", "bs0", "--serve", &format!("00001451={PORT}")])?;
        let _c = agent(bin, C, &["--iface", "bc0", "--connect", &format!("00001451={SVC_ADDR}:{PORT}")])?;
        (four_ways(S_IP, seconds)?, four_ways(SVC_ADDR, seconds)?)
    };
    drop(lab);
    Ok(Table {
        title: format!("host mode: iperf3 goodput over one veth pair, {seconds} s per run, Gbit/s"),
        columns: vec!["c->s 1", "c->s 4", "s->c 1", "s->c 4"],
        rows: vec![
            Row::new("plain TCP, default offloads, no agent", &plain),
            Row::new("plain TCP on the same links, host mode running on both", &plain_beside),
            Row::new("xlate host mode on both ends (SAL on the wire)", &host),
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
                match base.and_then(|b| b.rows.get(j)).and_then(|b| b.values.get(k)) {
                    Some(o) => print!(" {:>w$}", format!("{v:.2} / {o:.2} = {:.2}", v / o)),
                    None => print!(" {v:>w$.2}"),
                }
            }
            println!();
        }
    }
}

const T_NS: [&str; 4] = ["xlt-bt-client", "xlt-bt-gw", "xlt-bt-sw", "xlt-bt-inst"];

struct TranslatorLab;

impl Drop for TranslatorLab {
    fn drop(&mut self) {
        for ns in T_NS {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-TERM", pid]).status();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(800));
        for ns in T_NS {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Goodput in Gbit/s (receiver side) of an iperf3 run from `ns`; with
/// `reverse` the server sends.
fn iperf_from(ns: &str, dst: &str, streams: u32, seconds: u32, reverse: bool) -> Result<f64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "iperf3",
            "-J",
            "-c",
            dst,
            "-p",
            PORT,
            "-P",
            &streams.to_string(),
            "-t",
            &seconds.to_string(),
        ])
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

/// Goodput through the translator versus plain routing through the same
/// gateway (XDP attached either way), one and four streams; and the XDP
/// program's ns/packet.
pub fn translator(bin: &Path, seconds: u32) -> Result<Table> {
    let [client, gw, sw, inst] = T_NS;
    for ns in T_NS {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
    let lab = TranslatorLab;
    for ns in T_NS {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&["link", "add", "lc0", "netns", client, "type", "veth", "peer", "name", "g0", "netns", gw])?;
    ip(&["link", "add", "g1", "netns", gw, "type", "veth", "peer", "name", "s0", "netns", sw])?;
    ip(&["link", "add", "e0", "netns", inst, "type", "veth", "peer", "name", "s1", "netns", sw])?;
    ip(&["-n", sw, "link", "add", "br0", "type", "bridge"])?;
    for (ns, dev, addr) in [
        (client, "lc0", "198.51.100.2/24"),
        (gw, "g0", "198.51.100.1/24"),
        (gw, "g1", "10.10.0.1/24"),
        (inst, "e0", "10.10.0.11/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    for port in ["s0", "s1"] {
        ip(&["-n", sw, "link", "set", port, "master", "br0", "up"])?;
    }
    ip(&["-n", sw, "link", "set", "br0", "up"])?;
    ip(&["-n", client, "route", "add", "default", "via", "198.51.100.1"])?;
    ip(&["-n", inst, "route", "add", "default", "via", "10.10.0.1"])?;
    // veth peers of the gateway take XDP-redirected frames only with GRO on.
    for (ns, dev) in [(client, "lc0"), (sw, "s0")] {
        Command::new("ip").args(["netns", "exec", ns, "ethtool", "-K", dev, "gro", "on"]).output()?;
    }
    let dir = crate::util::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("translator.toml");
    std::fs::write(
        &config,
        format!("[translator]\nsal_address = \"10.10.0.1\"\n\n[[service]]\naddress = \"203.0.113.1\"\nport = {PORT}\nservice_id = \"00001451\"\ninstances = [\"10.10.0.11\"]\n"),
    )?;
    let _inst_agent = agent(bin, inst, &["--iface", "e0", "--serve", &format!("00001451={PORT}")])?;
    let _iperf = Bg(Command::new("ip")
        .args(["netns", "exec", inst, "iperf3", "-s", "-p", PORT])
        .stdout(Stdio::null())
        .spawn()?);
    let _gw = Bg(Command::new("nsenter")
        .arg(format!("--net=/run/netns/{gw}"))
        .arg(bin)
        .args(["run", "--iface", "g0", "--iface", "g1", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()?);
    std::thread::sleep(Duration::from_secs(2));
    let routed_1 = iperf_from(client, "10.10.0.11", 1, seconds, false)?;
    let routed_4 = iperf_from(client, "10.10.0.11", 4, seconds, false)?;
    let xlate_1 = iperf_from(client, "203.0.113.1", 1, seconds, false)?;
    let xlate_4 = iperf_from(client, "203.0.113.1", 4, seconds, false)?;
    drop(lab);
    Ok(Table {
        title: format!("translator: iperf3 goodput client -> gateway -> instance, {seconds} s per run, Gbit/s"),
        columns: vec!["1 stream", "4 streams"],
        rows: vec![
            Row::new("plain IP routing through the gateway (XDP attached, passes)", &[routed_1, routed_4]),
            Row::new("through the translator (TCP -> SAL -> host-mode instance)", &[xlate_1, xlate_4]),
        ],
    })
}

/// The XDP program's ns/packet (`xlate-user bench-xdp`, BPF_PROG_TEST_RUN).
pub fn xdp(bin: &Path) -> Result<Table> {
    let out = Command::new(bin).args(["bench-xdp", "--runs", "20000"]).output()?;
    if !out.status.success() {
        bail!("bench-xdp failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(2) {
        let Some((name, ns)) = line.trim_end().rsplit_once(' ') else { continue };
        if let Ok(v) = ns.trim().parse::<f64>() {
            rows.push(Row::new(name.trim(), &[v]));
        }
    }
    Ok(Table {
        title: "xdp: the translator program, BPF_PROG_TEST_RUN, median of 20000 runs".into(),
        columns: vec!["ns/packet"],
        rows,
    })
}
