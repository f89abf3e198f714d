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

    /// The offloads host mode runs with, for a like-for-like baseline.
    fn host_mode_offloads(&self) -> Result<()> {
        for (ns, dev) in [(C, "bc0"), (S, "bs0")] {
            let st = Command::new("ip")
                .args(["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off"])
                .output()?;
            if !st.status.success() {
                bail!("ethtool -K {dev} failed");
            }
            ip(&["-n", ns, "link", "set", "dev", dev, "gso_max_segs", "1"])?;
        }
        Ok(())
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

/// Goodput in Gbit/s of an iperf3 run (receiver side).
fn iperf(dst: &str, streams: u32, seconds: u32) -> Result<f64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            C,
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
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("iperf3 to {dst} failed: {text}");
    }
    // "sum_received": { … "bits_per_second": N … }
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

pub fn host_mode(bin: &Path, seconds: u32) -> Result<()> {
    let lab = Lab::new()?;
    let _iperf = Bg(Command::new("ip")
        .args(["netns", "exec", S, "iperf3", "-s", "-B", S_IP, "-p", PORT])
        .stdout(Stdio::null())
        .spawn()?);
    std::thread::sleep(Duration::from_millis(500));
    let mut rows = Vec::new();
    let plain_default_1 = iperf(S_IP, 1, seconds)?;
    let plain_default_4 = iperf(S_IP, 4, seconds)?;
    lab.host_mode_offloads()?;
    let plain_1 = iperf(S_IP, 1, seconds)?;
    let plain_4 = iperf(S_IP, 4, seconds)?;
    {
        let _s = agent(bin, S, &["--iface", "bs0", "--serve", &format!("00001451={PORT}")])?;
        let _c = agent(bin, C, &["--iface", "bc0", "--connect", &format!("00001451={SVC_ADDR}:{PORT}")])?;
        let host_1 = iperf(SVC_ADDR, 1, seconds)?;
        let host_4 = iperf(SVC_ADDR, 4, seconds)?;
        rows.push(("plain TCP, default offloads (GSO/TSO on)", plain_default_1, plain_default_4));
        rows.push(("plain TCP, host-mode offloads (tx csum off, 1 segment/skb)", plain_1, plain_4));
        rows.push(("xlate host mode on both ends (SAL on the wire)", host_1, host_4));
    }
    println!("\nbench host-mode: iperf3 goodput over one veth pair, {seconds} s per run, Gbit/s");
    println!("{:<62} {:>10} {:>10}", "path", "1 stream", "4 streams");
    for (name, one, four) in rows {
        println!("{name:<62} {one:>10.2} {four:>10.2}");
    }
    drop(lab);
    Ok(())
}
