//! The scale-out lab (the paper's section 5): translators side by side,
//! each owning a public prefix, in front of one set of host-mode
//! instances, and a DNS server (dnsmasq) that answers a service's name
//! with an address in every translator's prefix. See
//! `xlate_lab::topology::ScaleOut` for the addresses and
//! `docs/scale-out.md` for the deployment it stands for.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::gateway::serve_http;
use crate::host::Agent;
use crate::netns::{Bg, Naming, Netns};
pub use xlate_lab::topology::scale_out::{
    address, config, translator, CLIENT_IP, DNS_IP, INSTANCES, NAME, SERVICE, TTL_SECONDS,
};
use xlate_lab::topology::scale_out::{dns_hosts, dnsmasq_args};
use xlate_lab::ScaleOut;

pub struct ScaleOutLab {
    // Drop order: processes, then namespaces.
    pub translators: Vec<Option<Bg>>,
    pub dns: Option<Bg>,
    pub http: Vec<Bg>,
    pub instance_agents: Vec<Agent>,
    pub dir: PathBuf,
    /// The DNS server's hosts file (SIGHUP re-reads it).
    pub hosts: PathBuf,
    pub net: ScaleOut,
}

impl ScaleOutLab {
    /// `n` translators, each with `extra` appended to its configuration,
    /// every instance serving [`SERVICE`] over HTTP (`GET /who` answers
    /// the instance's address), and the DNS server answering [`NAME`]
    /// with the service's address behind every translator.
    pub fn new(tag: &str, n: usize, extra: &str) -> ScaleOutLab {
        let net = ScaleOut::build(Naming::Unique(tag), n, INSTANCES.len())
            .unwrap_or_else(|e| panic!("building the lab: {e:#}"));
        let dir = std::env::temp_dir().join(format!("xlate-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (instance_agents, http) = serve_http(&net.instances, &INSTANCES, SERVICE, &dir);
        let hosts = dir.join("hosts");
        let mut lab = ScaleOutLab { translators: Vec::new(), dns: None, http, instance_agents, dir, hosts, net };
        lab.publish(&(1..=n).collect::<Vec<_>>());
        lab.start_dns();
        for k in 1..=n {
            std::fs::write(lab.config_path(k), config(k, extra)).unwrap();
            let t = lab.spawn_translator(k);
            lab.translators.push(Some(t));
        }
        lab
    }

    pub fn config_path(&self, k: usize) -> PathBuf {
        self.dir.join(format!("t{k}.toml"))
    }

    pub fn translator_ns(&self, k: usize) -> &Netns {
        &self.net.translators[k - 1]
    }

    /// Starts translator `k` as an operator does (`ip netns exec`), and
    /// waits until it is ready.
    fn spawn_translator(&self, k: usize) -> Bg {
        let ns = self.translator_ns(k);
        let cfg = self.config_path(k);
        let bin = crate::xlate_user_bin();
        let mut t = ns.spawn(
            bin.to_str().unwrap(),
            &["run", "--iface", "g0", "--iface", "g1", "--xdp-mode", "native", "--config", cfg.to_str().unwrap()],
        );
        t.read_until("xlate translator on", Duration::from_secs(30));
        t.read_until("relay: ready", Duration::from_secs(30));
        t
    }

    /// Starts translator `k` again after [`ScaleOutLab::fail_translator`].
    pub fn restart_translator(&mut self, k: usize) {
        self.translator_ns(k).ip(&["link", "set", "g0", "up"]);
        if self.translators[k - 1].is_none() {
            let t = self.spawn_translator(k);
            self.translators[k - 1] = Some(t);
        }
    }

    /// Translator `k` fails as a machine does: its client-facing link goes
    /// down (nothing answers for its address any more) and its agent
    /// stops for good (`xlate-user stop`: its flows are reset).
    pub fn fail_translator(&mut self, k: usize) {
        self.translator_ns(k).ip(&["link", "set", "g0", "down"]);
        let out = self.translator_ns(k).output(crate::xlate_user_bin().to_str().unwrap(), &["stop", "--iface", "g0"]);
        assert!(out.status.success(), "xlate-user stop: {}", String::from_utf8_lossy(&out.stderr));
        if let Some(mut t) = self.translators[k - 1].take() {
            t.stop(0);
        }
    }

    /// The DNS server answers [`NAME`] with the service's address behind
    /// each translator in `ks` (SIGHUP when it runs: dnsmasq re-reads its
    /// hosts file).
    pub fn publish(&mut self, ks: &[usize]) {
        std::fs::write(&self.hosts, dns_hosts(ks)).unwrap();
        if let Some(d) = &self.dns {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(d.pid(), libc::SIGHUP) };
            let want = format!("read {} - {} names", self.hosts.display(), ks.len());
            self.dns.as_mut().unwrap().wait_for_stderr_line(&want, Duration::from_secs(5));
        }
    }

    fn start_dns(&mut self) {
        let args = dnsmasq_args(&self.hosts);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut d = self.net.dns.spawn("dnsmasq", &args);
        d.wait_for_stderr_line("names", Duration::from_secs(10));
        self.dns = Some(d);
    }

    /// `xlate-user ARGS --iface g0` on translator `k`, as an operator runs
    /// it.
    pub fn cli(&self, k: usize, args: &[&str]) -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--iface", "g0"]);
        let out = self.translator_ns(k).output(crate::xlate_user_bin().to_str().unwrap(), &all);
        assert!(out.status.success(), "xlate-user {args:?} on t{k}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A counter of translator `k`.
    pub fn counter(&self, k: usize, name: &str) -> u64 {
        self.cli(k, &["stats"])
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| v.trim().parse().unwrap())
    }
}

/// One fetch by an unmodified client: what it was told and how long it
/// took.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// curl's exit status.
    pub code: i32,
    /// The address it reached (`%{remote_ip}`), empty if none.
    pub remote: String,
    /// The answer's body (`/who`: the instance).
    pub body: String,
    pub took: Duration,
}

impl Fetch {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// curl `http://NAME/who` in the client's namespace: it resolves the name
/// with the lab's DNS server through the system resolver, as any program
/// does, and tries the addresses in the order it gets them.
pub fn fetch(client: &Netns, extra: &[&str]) -> Fetch {
    let url = format!("http://{NAME}/who");
    let start = Instant::now();
    let out = client
        .cmd("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{remote_ip}"])
        .args(extra)
        .arg(&url)
        .output()
        .unwrap();
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, remote) = text.rsplit_once('\n').unwrap_or(("", ""));
    Fetch { code: out.status.code().unwrap_or(-1), remote: remote.to_string(), body: body.trim().to_string(), took }
}

impl Drop for ScaleOutLab {
    fn drop(&mut self) {
        for k in 1..=self.translators.len() {
            if self.translators[k - 1].is_some() {
                let _ = self
                    .translator_ns(k)
                    .cmd(crate::xlate_user_bin().to_str().unwrap())
                    .args(["stop", "--iface", "g0"])
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
