//! Experiment 2's accounting: the CPU time a measurement took, the whole
//! machine's and the gateway's own processes', from /proc.
//!
//! Client, gateway and instance share the machine's cores, so the
//! machine's busy time is every party's. Two parts can be told apart: the
//! time the gateway's processes spent (the relay, HAProxy, the agents:
//! every process in the gateway's network namespace that ran through the
//! whole measurement, so a transfer client started for one sample is not
//! counted), and the time the kernel spent in softirq (packet processing,
//! the fast path included), which Linux charges to a CPU, not to a
//! namespace: it is reported for the machine. Without
//! CONFIG_IRQ_TIME_ACCOUNTING (Debian's kernels and this one) softirq work
//! done inside a process's system call is in both: the process's system
//! time and the machine's softirq.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Context, Result};
use xlate_lab::Netns;

fn hz() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// CPU seconds at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every core busy (user, nice, system, irq, softirq; not steal, the
    /// hypervisor's time for other guests).
    machine: f64,
    softirq: f64,
    /// Per process of the gateway's namespace: user + system.
    gateway: HashMap<u32, f64>,
}

/// CPU seconds spent between two snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent {
    pub machine: f64,
    pub softirq: f64,
    pub gateway: f64,
}

impl Spent {
    /// Seconds per GB (1e9 bytes) moved.
    pub fn per_gb(&self, bytes: u64) -> Spent {
        let gb = bytes as f64 / 1e9;
        Spent { machine: self.machine / gb, softirq: self.softirq / gb, gateway: self.gateway / gb }
    }
}

fn proc_stat() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    if f.len() < 8 {
        bail!("unexpected /proc/stat line: {cpu}");
    }
    Ok(((f[0] + f[1] + f[2] + f[5] + f[6]) / hz(), f[6] / hz()))
}

/// The processes whose network namespace is `ns`, with their CPU seconds.
fn processes_in(ns: &Netns) -> Result<HashMap<u32, f64>> {
    let ino = std::fs::metadata(ns.path()).with_context(|| ns.path())?.ino();
    let want = format!("net:[{ino}]");
    let mut out = HashMap::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if !std::fs::read_link(e.path().join("ns/net")).is_ok_and(|l| l.to_string_lossy() == want.as_str()) {
            continue;
        }
        if let Some(t) = process_seconds(pid) {
            out.insert(pid, t);
        }
    }
    Ok(out)
}

/// utime + stime of a process (all its threads), from /proc/PID/stat.
fn process_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is
    // field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (u, st): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((u + st) / hz())
}

impl Snapshot {
    pub fn take(gateway: &Netns) -> Result<Snapshot> {
        let (machine, softirq) = proc_stat()?;
        let gateway_procs = processes_in(gateway)?;
        // An agent always runs there: none found is a broken lookup, not
        // a free gateway.
        if gateway_procs.is_empty() {
            bail!("no process found in the gateway's network namespace {}", gateway.name());
        }
        Ok(Snapshot { machine, softirq, gateway: gateway_procs })
    }

    /// What was spent since `self`.
    pub fn since(&self) -> Result<Spent> {
        let (machine, softirq) = proc_stat()?;
        let gateway = self
            .gateway
            .iter()
            .filter_map(|(pid, before)| process_seconds(*pid).map(|now| (now - before).max(0.0)))
            .sum();
        Ok(Spent { machine: machine - self.machine, softirq: softirq - self.softirq, gateway })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_is_counted() {
        let me = std::process::id();
        let before = process_seconds(me).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let spent = process_seconds(me).unwrap() - before;
        assert!(spent > 0.15, "300 ms of spinning counted as {spent} s");
        let (m, s) = proc_stat().unwrap();
        assert!(m > 0.0 && s >= 0.0 && s < m);
    }
}
