//! `cargo xtask run` without arguments: a built-in lab. A legacy client,
//! the gateway running the translator, and two service instances in host
//! mode serving HTTP, each in its own network namespace. Prints how to try
//! it and live counters; Ctrl-C tears everything down.
//! `cargo xtask run -- --translators N`: the scale-out lab instead.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};
use xlate_lab::topology::scale_out;
use xlate_lab::{Naming, ScaleOut, Translator, TranslatorOptions};

use crate::util::workspace_root;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Stops the lab's processes (SIGTERM: agents detach and unpin).
fn stop(children: &mut Vec<Child>) {
    for c in children.iter_mut() {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
    children.clear();
}

/// Starts `cmd` with its output in `log`.
fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child> {
    let logf = std::fs::File::create(log)?;
    Ok(cmd.stdin(Stdio::null()).stdout(logf.try_clone()?).stderr(logf).spawn()?)
}

pub fn run(bin: &Path) -> Result<()> {
    let mut children = Vec::new();
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as usize);
        libc::signal(libc::SIGTERM, on_signal as *const () as usize);
    }
    let opts = TranslatorOptions { instances: 2, gro: true, client_tx_offload: true };
    let lab = Translator::build(Naming::Fixed("xlate-lab"), opts)?;
    let r = start_and_watch(&lab, bin, &mut children);
    println!("\nlab: tearing down");
    // Agents stop for good (SIGTERM alone would leave their datapaths).
    let _ = lab.gateway.cmd(&bin.display().to_string()).args(["stop", "--iface", "g0"]).output();
    for ns in &lab.instances {
        let _ = ns.cmd(&bin.display().to_string()).args(["host", "stop", "--iface", "e0"]).output();
    }
    stop(&mut children);
    drop(lab);
    crate::util::unmount_own_bpffs();
    r
}

fn start_and_watch(lab: &Translator, bin: &Path, children: &mut Vec<Child>) -> Result<()> {
    let (client, gw, sw) = (lab.client.name(), lab.gateway.name(), lab.switch.name());
    let (i1, i2) = (lab.instances[0].name(), lab.instances[1].name());
    let logs = workspace_root().join("target/lab");
    std::fs::create_dir_all(&logs)?;
    for (n, (ns, addr)) in lab.instances.iter().zip(xlate_lab::topology::translator::INSTANCES).enumerate() {
        let www = logs.join(format!("www{}", n + 1));
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), format!("Hello from Serval instance {addr} (instance {})\n", n + 1))?;
        let mut agent = ns.net_cmd(bin);
        agent.args(["host", "--iface", "e0", "--serve", "00000050=80"]);
        children.push(spawn_logged(agent, &logs.join(format!("{}.log", ns.name())))?);
        let mut http = ns.cmd("python3");
        http.args(["-m", "http.server", "80", "--directory", www.to_str().unwrap()]);
        children.push(spawn_logged(http, &logs.join(format!("{}-http.log", ns.name())))?);
    }
    std::thread::sleep(Duration::from_secs(2));
    let config = workspace_root().join("config/lab.toml");
    let mut translator = lab.gateway.net_cmd(bin);
    translator.args(["run", "--iface", "g0", "--iface", "g1", "--config", config.to_str().unwrap()]);
    children.push(spawn_logged(translator, &logs.join("gateway.log"))?);
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
    print_fallbacks(&logs.join("gateway.log"));
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(2));
        let out = lab.gateway.net_cmd(bin).args(["stats", "--iface", "g0"]).output()?;
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

/// What the translator said at start of the kernel features it goes
/// without (one line each, with what that changes), or that it has them all.
fn print_fallbacks(log: &Path) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter_map(|l| l.find("kernel feature ").map(|i| &l[i..])).collect();
    if lines.is_empty() {
        println!("kernel {}: the translator uses every optional feature it knows (no fallback)\n", release.trim());
        return;
    }
    println!("kernel {}: the translator's fallbacks (from its start-up):", release.trim());
    for l in lines {
        println!("  {l}");
    }
    println!();
}

/// `cargo xtask run -- --translators N`: the scale-out lab (the paper's
/// section 5, docs/scale-out.md). N translators side by side, each owning
/// a public prefix; three host-mode instances behind all of them; dnsmasq
/// answering `web.xlate.test` with the service's address in every prefix.
/// Prints what to try and each translator's counters; Ctrl-C tears it
/// down.
pub fn run_scale_out(bin: &Path, n: usize) -> Result<()> {
    let mut children = Vec::new();
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as usize);
        libc::signal(libc::SIGTERM, on_signal as *const () as usize);
    }
    let lab = ScaleOut::build(Naming::Fixed("xlate-so"), n, scale_out::INSTANCES.len())?;
    let r = start_scale_out(&lab, bin, n, &mut children);
    println!("\nlab: tearing down");
    for t in &lab.translators {
        let _ = t.net_cmd(bin).args(["stop", "--iface", "g0"]).output();
    }
    for ns in &lab.instances {
        let _ = ns.net_cmd(bin).args(["host", "stop", "--iface", "e0"]).output();
    }
    stop(&mut children);
    drop(lab);
    crate::util::unmount_own_bpffs();
    r
}

fn start_scale_out(lab: &ScaleOut, bin: &Path, n: usize, children: &mut Vec<Child>) -> Result<()> {
    use scale_out::*;
    let logs = workspace_root().join("target/lab");
    std::fs::create_dir_all(&logs)?;
    for (i, (ns, addr)) in lab.instances.iter().zip(INSTANCES).enumerate() {
        let www = logs.join(format!("so-www{}", i + 1));
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), format!("Hello from Serval instance {addr} (instance {})\n", i + 1))?;
        let mut agent = ns.net_cmd(bin);
        agent.args(["host", "--iface", "e0", "--serve", &format!("{SERVICE}=80")]);
        children.push(spawn_logged(agent, &logs.join(format!("{}.log", ns.name())))?);
        let mut http = ns.cmd("python3");
        http.args(["-m", "http.server", "80", "--directory", www.to_str().unwrap()]);
        children.push(spawn_logged(http, &logs.join(format!("{}-http.log", ns.name())))?);
    }
    let hosts = logs.join("so-hosts");
    std::fs::write(&hosts, dns_hosts(&(1..=n).collect::<Vec<_>>()))?;
    let mut dns = lab.dns.cmd("dnsmasq");
    dns.args(dnsmasq_args(&hosts));
    let dns = spawn_logged(dns, &logs.join("so-dns.log"))?;
    let dns_pid = dns.id();
    children.push(dns);
    std::thread::sleep(Duration::from_secs(2));
    for (k, t) in lab.translators.iter().enumerate().map(|(i, t)| (i + 1, t)) {
        let cfg = logs.join(format!("so-t{k}.toml"));
        std::fs::write(&cfg, config(k, ""))?;
        let mut run = t.net_cmd(bin);
        run.args(["run", "--iface", "g0", "--iface", "g1", "--config", cfg.to_str().unwrap()]);
        children.push(spawn_logged(run, &logs.join(format!("{}.log", t.name())))?);
    }
    std::thread::sleep(Duration::from_secs(3));
    if let Some(s) = children.iter_mut().find_map(|c| c.try_wait().ok().flatten()) {
        bail!("a lab process exited early ({s:?}); see {}", logs.display());
    }
    let c = lab.client.name();
    let t1 = lab.translators[0].name();
    let mut routes = String::new();
    for k in 1..=n {
        let (front, sal, prefix) = translator(k);
        routes += &format!(
            "\n  translator {}: {front} (client side), {sal} (SAL side), owns {prefix}; {NAME} is {} there (service {SERVICE})",
            lab.translators[k - 1].name(),
            address(k)
        );
    }
    println!(
        "\nxlate scale-out lab is up (logs and configurations in {logs}):\
         \n  client     {c}: {CLIENT_IP}, resolves names with dnsmasq at {DNS_IP} ({dns}){routes}\
         \n  instances  {}: {}, host mode serving {SERVICE}, HTTP on port 80\
         \n\nTry:\
         \n  ip netns exec {c} getent ahostsv4 {NAME}          # every translator's address, rotated\
         \n  for i in $(seq 30); do ip netns exec {c} curl -s -w ' via %{{remote_ip}}\\n' http://{NAME}/; done | sort | uniq -c\
         \n  nsenter --net=/run/netns/{t1} {bin} map show --iface g0\
         \n  nsenter --net=/run/netns/{t1} {bin} flows --iface g0\
         \nA translator fails, then leaves DNS:\
         \n  ip -n {t1} link set g0 down                      # clients that try it first wait, then go on\
         \n  sed -i '/198.18.1./d' {hosts} && kill -HUP {dns_pid}   # no client tries it any more\
         \n\nCtrl-C stops the lab.\n",
        lab.instances.iter().map(|i| i.name()).collect::<Vec<_>>().join(", "),
        INSTANCES.join(", "),
        logs = logs.display(),
        dns = lab.dns.name(),
        hosts = hosts.display(),
        bin = bin.display()
    );
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(2));
        let mut line = String::from("new flows by translator:");
        for (k, t) in lab.translators.iter().enumerate() {
            let out = t.net_cmd(bin).args(["stats", "--iface", "g0"]).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let flows = text
                .lines()
                .find_map(|l| l.strip_prefix("gw_prefix_flows ").and_then(|v| v.trim().parse::<u64>().ok()))
                .unwrap_or(0);
            line += &format!(" t{} {flows}", k + 1);
        }
        println!("{line}");
    }
    Ok(())
}
