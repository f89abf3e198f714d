//! `cargo xtask run` without arguments: a built-in lab. A legacy client,
//! the gateway running the translator, and two service instances in host
//! mode serving HTTP, each in its own network namespace. Prints how to try
//! it and live counters; Ctrl-C tears everything down.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};
use xlate_lab::{Naming, Translator, TranslatorOptions};

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
