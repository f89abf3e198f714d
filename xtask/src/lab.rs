//! `cargo xtask run` without arguments: a built-in lab. A legacy client,
//! the gateway running the translator, and two service instances in host
//! mode serving HTTP, each in its own network namespace. Prints how to try
//! it and live counters; Ctrl-C tears everything down.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util::workspace_root;

const NS: [&str; 5] = ["xlate-lab-client", "xlate-lab-gw", "xlate-lab-sw", "xlate-lab-i1", "xlate-lab-i2"];
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn teardown(children: &mut Vec<Child>) {
    for c in children.iter_mut() {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
    children.clear();
    for ns in NS {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

fn veth(a: &str, a_if: &str, b: &str, b_if: &str) -> Result<()> {
    ip(&["link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b])
}

fn spawn_in(ns: &str, net_only: bool, prog: &Path, args: &[&str], log: &Path) -> Result<Child> {
    let logf = std::fs::File::create(log)?;
    let mut cmd = if net_only {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}")).arg(prog);
        c
    } else {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(prog);
        c
    };
    Ok(cmd.args(args).stdin(Stdio::null()).stdout(logf.try_clone()?).stderr(logf).spawn()?)
}

pub fn run(bin: &Path) -> Result<()> {
    let mut children = Vec::new();
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as usize);
        libc::signal(libc::SIGTERM, on_signal as *const () as usize);
    }
    teardown(&mut children);
    let r = build_and_watch(bin, &mut children);
    println!("\nlab: tearing down");
    teardown(&mut children);
    crate::util::unmount_own_bpffs();
    r
}

fn build_and_watch(bin: &Path, children: &mut Vec<Child>) -> Result<()> {
    let [client, gw, sw, i1, i2] = NS;
    for ns in NS {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    veth(client, "lc0", gw, "g0")?;
    ip(&["-n", client, "addr", "add", "198.51.100.2/24", "dev", "lc0"])?;
    ip(&["-n", client, "link", "set", "lc0", "up"])?;
    ip(&["-n", client, "route", "add", "default", "via", "198.51.100.1"])?;
    ip(&["-n", gw, "addr", "add", "198.51.100.1/24", "dev", "g0"])?;
    ip(&["-n", gw, "link", "set", "g0", "up"])?;
    ip(&["-n", sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", sw, "link", "set", "br0", "up"])?;
    veth(gw, "g1", sw, "s0")?;
    ip(&["-n", gw, "addr", "add", "10.10.0.1/24", "dev", "g1"])?;
    ip(&["-n", gw, "link", "set", "g1", "up"])?;
    ip(&["-n", sw, "link", "set", "s0", "master", "br0", "up"])?;
    // veth peers of the gateway take XDP-redirected frames only with GRO on.
    for (ns, dev) in [(client, "lc0"), (sw, "s0")] {
        Command::new("ip").args(["netns", "exec", ns, "ethtool", "-K", dev, "gro", "on"]).output()?;
    }
    let logs = workspace_root().join("target/lab");
    std::fs::create_dir_all(&logs)?;
    for (n, (ns, addr)) in [(i1, "10.10.0.11"), (i2, "10.10.0.12")].iter().enumerate() {
        let port = format!("s{}", n + 1);
        veth(ns, "e0", sw, &port)?;
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "e0"])?;
        ip(&["-n", ns, "link", "set", "e0", "up"])?;
        ip(&["-n", ns, "route", "add", "default", "via", "10.10.0.1"])?;
        ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"])?;
        let www = logs.join(format!("www{}", n + 1));
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), format!("Hello from Serval instance {addr} (instance {})\n", n + 1))?;
        children.push(spawn_in(
            ns,
            true,
            bin,
            &["host", "--iface", "e0", "--serve", "00000050=80"],
            &logs.join(format!("{ns}.log")),
        )?);
        children.push(spawn_in(
            ns,
            false,
            Path::new("python3"),
            &["-m", "http.server", "80", "--directory", www.to_str().unwrap()],
            &logs.join(format!("{ns}-http.log")),
        )?);
    }
    std::thread::sleep(Duration::from_secs(2));
    let config = workspace_root().join("config/lab.toml");
    children.push(spawn_in(
        gw,
        true,
        bin,
        &["run", "--iface", "g0", "--iface", "g1", "--config", config.to_str().unwrap()],
        &logs.join("gateway.log"),
    )?);
    std::thread::sleep(Duration::from_secs(2));
    if let Some(c) = children.iter_mut().find_map(|c| c.try_wait().ok().flatten().map(|s| (s, ()))) {
        bail!("a lab process exited early ({:?}); see {}", c.0, logs.display());
    }
    println!(
        "\nxlate lab is up (logs in {}):\n\
         \n  client     {client}: 198.51.100.2, routes 203.0.113.0/24 via the gateway\
         \n  gateway    {gw}: translator on g0 (client side) and g1 (SAL side, 10.10.0.1), config {}\
         \n  instances  {i1}: 10.10.0.11 (weight 1), {i2}: 10.10.0.12 (weight 3), host mode, HTTP on port 80\
         \n\nTry:\
         \n  ip netns exec {client} curl http://203.0.113.1/\
         \n  for i in $(seq 20); do ip netns exec {client} curl -s http://203.0.113.1/; done | sort | uniq -c\
         \n  nsenter --net=/run/netns/{gw} {bin} flows --iface g0\
         \n  nsenter --net=/run/netns/{gw} {bin} stats --iface g0\
         \n  ip netns exec {sw} tcpdump -ni s0 ip proto 144      # SAL on the service side\
         \n\nCtrl-C stops the lab.\n",
        logs.display(),
        config.display(),
        bin = bin.display()
    );
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(2));
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{gw}"))
            .arg(bin)
            .args(["stats", "--iface", "g0"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |k: &str| {
            text.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse::<u64>().ok())).unwrap_or(0)
        };
        println!(
            "counters: tcp->sal {} sal->tcp {} syn {} control-in {} control-out {} flows freed {} dropped {}",
            get("gw_tcp_to_sal "),
            get("gw_sal_to_tcp "),
            get("egress_syn "),
            get("ingress_control_to_agent "),
            get("ctl_sent "),
            get("flows_freed "),
            get("drop_bad_checksum ")
                + get("drop_unknown_flow ")
                + get("drop_bad_extension ")
                + get("drop_bad_length "),
        );
    }
    Ok(())
}
