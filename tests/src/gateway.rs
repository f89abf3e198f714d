//! A translator lab: a legacy client, the gateway running `xlate-user run`
//! (two-armed), and two service instances in host mode behind a bridge,
//! each serving HTTP. Torn down on drop.

use std::path::PathBuf;
use std::time::Duration;

use crate::host::Agent;
use crate::netns::{Bg, Naming, Netns};
pub use xlate_lab::topology::translator::{CLIENT_IP, GW_CLIENT_IP, INSTANCES, PUBLIC_IP, SAL_ADDRESS};
use xlate_lab::{Translator, TranslatorOptions};

pub const PUBLIC_PORT: u16 = 80;
pub const INSTANCE2_ALT: &str = "10.10.0.22";
pub const SERVICE_ID: &str = "00000050";

pub fn config(instances: &str) -> String {
    format!(
        "[translator]\nsal_address = \"{SAL_ADDRESS}\"\n\n[[service]]\naddress = \"{PUBLIC_IP}\"\nport = {PUBLIC_PORT}\nservice_id = \"{SERVICE_ID}\"\ninstances = [{instances}]\n"
    )
}

/// The instances' HTTP server: files from a directory (GET), a generated
/// stream (`GET /gen/BYTES/SEED`: Python's `random.Random(SEED)` bytes, the
/// same as [`generated_sha256`] hashes), and uploads (`PUT`: the body is
/// hashed as it arrives, not stored, and the SHA-256 is the answer).
/// Its listen backlog is 1024, as a real server's (nginx 511, Go and
/// HAProxy the kernel's `somaxconn`): Python's default of 5 overflows when
/// the relay turns a burst of clients into as many connects at once, and
/// Linux then drops SYN-cookie ACKs until the accept queue has room (see
/// `docs/relay.md`, "Bursts and the instance's listen backlog").
pub const HTTP_SERVER: &str = r#"
import hashlib, http.server, random, sys
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def log_message(self, *a): pass
    def do_GET(self):
        p = self.path.split("/")
        if len(p) == 4 and p[1] == "gen":
            n, r = int(p[2]), random.Random(int(p[3]))
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            while n > 0:
                k = min(n, 1 << 20)
                self.wfile.write(r.randbytes(k))
                n -= k
            return
        return super().do_GET()
    def do_PUT(self):
        n, h = int(self.headers["Content-Length"]), hashlib.sha256()
        while n > 0:
            d = self.rfile.read(min(n, 1 << 20))
            if not d: break
            h.update(d)
            n -= len(d)
        body = (h.hexdigest() + "\n").encode()
        self.send_response(200 if n == 0 else 400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer.allow_reuse_address = True
http.server.ThreadingHTTPServer.request_queue_size = 1024
print("Serving HTTP", flush=True)
http.server.ThreadingHTTPServer(("", int(sys.argv[1])), lambda *a: H(*a, directory=sys.argv[2])).serve_forever()
"#;

/// Host mode serving `service` on port 80 of each namespace in
/// `instances`, behind an [`HTTP_SERVER`] whose files are under
/// `dir/www<N>` and whose `GET /who` answers `addresses[i]`: the
/// instances of the translator and scale-out labs.
pub fn serve_http(
    instances: &[Netns],
    addresses: &[&str],
    service: &str,
    dir: &std::path::Path,
) -> (Vec<Agent>, Vec<Bg>) {
    let mut agents = Vec::new();
    let mut http = Vec::new();
    for (i, ns) in instances.iter().enumerate() {
        let www = dir.join(format!("www{}", i + 1));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("who"), format!("{}\n", addresses[i])).unwrap();
        agents.push(Agent::start(ns, "e0", &["--serve", &format!("{service}=80")]));
        let mut h = ns.spawn("python3", &["-u", "-c", HTTP_SERVER, "80", www.to_str().unwrap()]);
        h.wait_for_line("Serving HTTP", Duration::from_secs(10));
        http.push(h);
    }
    (agents, http)
}

/// What the client must receive for `GET /gen/BYTES/SEED` (also writes the
/// stream to `file` when given, for uploads).
pub fn generated_sha256(bytes: u64, seed: u64, file: Option<&std::path::Path>) -> String {
    let script = "import hashlib, random, sys\nn, r, h = int(sys.argv[1]), random.Random(int(sys.argv[2])), hashlib.sha256()\nf = open(sys.argv[3], 'wb') if len(sys.argv) > 3 else None\nwhile n > 0:\n    k = min(n, 1 << 20)\n    d = r.randbytes(k)\n    h.update(d)\n    if f: f.write(d)\n    n -= k\nprint(h.hexdigest())\n";
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script, &bytes.to_string(), &seed.to_string()]);
    if let Some(f) = file {
        cmd.arg(f);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub const WEIGHTED: &str = "\"10.10.0.11\", { address = \"10.10.0.12\", weight = 3 }";

pub struct GatewayLab {
    // Drop order: processes, then namespaces.
    pub http: Vec<Bg>,
    pub instance_agents: Vec<Agent>,
    pub gateway_agent: Option<Bg>,
    /// What the translator printed at start, up to its "running" line.
    pub startup: String,
    /// Start agents through `ip netns exec` (else `nsenter --net`).
    pub ip_netns_exec: bool,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    /// `xlate-user` subcommand and extra arguments the gateway runs with.
    pub command: Vec<String>,
    pub instances: Vec<Netns>,
    pub switch: Netns,
    pub gateway: Netns,
    pub client: Netns,
}

impl GatewayLab {
    /// `xdp_mode`: "generic" or "native"; `client_tx_offload`: whether the
    /// client's veth leaves TCP checksums to offload (partial checksums).
    /// GRO is switched on at the far ends of the gateway's links, so that
    /// the gateway may redirect from XDP to them.
    pub fn new(tag: &str, instances_toml: &str, xdp_mode: &str, client_tx_offload: bool) -> GatewayLab {
        Self::with_gro(tag, instances_toml, xdp_mode, client_tx_offload, true)
    }

    /// As [`GatewayLab::new`]; `gro` false leaves every veth as `ip link`
    /// makes it (GRO off): the lab a new user builds.
    pub fn with_gro(tag: &str, instances_toml: &str, xdp_mode: &str, client_tx_offload: bool, gro: bool) -> GatewayLab {
        Self::build(tag, &config(instances_toml), xdp_mode, client_tx_offload, gro, &["run"])
    }

    /// As [`GatewayLab::new`], with the translator started as an operator
    /// starts it, `ip netns exec`, from a mount namespace with no BPF
    /// filesystem (see `start_gateway`).
    pub fn via_ip_netns_exec(tag: &str, instances_toml: &str, xdp_mode: &str, client_tx_offload: bool) -> GatewayLab {
        Self::assemble(tag, &config(instances_toml), xdp_mode, client_tx_offload, true, &["run"], true)
    }

    /// The lab with the configuration `config_text` (see [`config`]), and
    /// the gateway started as `xlate-user <command...>`.
    pub fn build(
        tag: &str,
        config_text: &str,
        xdp_mode: &str,
        client_tx_offload: bool,
        gro: bool,
        command: &[&str],
    ) -> GatewayLab {
        Self::assemble(tag, config_text, xdp_mode, client_tx_offload, gro, command, false)
    }

    fn assemble(
        tag: &str,
        config_text: &str,
        xdp_mode: &str,
        client_tx_offload: bool,
        gro: bool,
        command: &[&str],
        ip_netns_exec: bool,
    ) -> GatewayLab {
        let opts = TranslatorOptions { instances: INSTANCES.len(), gro, client_tx_offload };
        let Translator { instances, switch, gateway, client } =
            Translator::build(Naming::Unique(tag), opts).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
        if xdp_mode == "generic" {
            // Generic XDP would take the client's TSO packets over veth
            // unsegmented and translate them whole into SAL no link
            // carries (docs/translator.md, Limits): the client sends
            // wire-size segments, as a real network delivers them.
            for feature in ["tso", "gso"] {
                client.set_offload("lc0", feature, false).unwrap();
            }
        }
        let dir = std::env::temp_dir().join(format!("xlate-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (instance_agents, http) = serve_http(&instances, &INSTANCES, SERVICE_ID, &dir);
        let config_path = dir.join("xlate.toml");
        std::fs::write(&config_path, config_text).unwrap();
        let mut lab = GatewayLab {
            http,
            instance_agents,
            gateway_agent: None,
            startup: String::new(),
            ip_netns_exec,
            dir,
            config_path,
            command: command.iter().map(|s| s.to_string()).collect(),
            instances,
            switch,
            gateway,
            client,
        };
        lab.start_gateway(xdp_mode);
        lab
    }

    fn start_gateway(&mut self, mode: &str) {
        let bin = crate::xlate_user_bin();
        // As an operator starts it: `ip netns exec`, which gives the agent
        // a mount namespace of its own that dies with it, run from a mount
        // namespace with no BPF filesystem (the host's, here, may have the
        // one other agents of the test mounted at /run/xlate/bpf: it is
        // detached in a private copy first). Or in this host's namespace.
        let mut launcher = if self.ip_netns_exec {
            let mut c = std::process::Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
            c.arg("umount -l /run/xlate/bpf 2>/dev/null; umount -l /sys/fs/bpf 2>/dev/null; exec ip netns exec \"$0\" \"$@\"");
            c.arg(self.gateway.name());
            c
        } else {
            let mut c = std::process::Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{}", self.gateway.name()));
            c
        };
        let child = launcher
            .arg(&bin)
            .args(&self.command)
            .args(["--iface", "g0", "--iface", "g1", "--xdp-mode", mode, "--metrics", "127.0.0.1:9464", "--config"])
            .arg(&self.config_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut bg = Bg::from_child(child);
        self.startup = bg.read_until("xlate translator on", Duration::from_secs(30));
        // The relay (on unless told otherwise) binds its listeners and adds
        // its aliases after that line: a client connecting before it is
        // told the network is unreachable.
        if !self.command.iter().any(|c| c == "--no-relay") {
            self.startup += &bg.read_until("relay: ready", Duration::from_secs(30));
        }
        self.gateway_agent = Some(bg);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{PUBLIC_IP}:{PUBLIC_PORT}/{path}")
    }

    /// `xlate-user <args> --iface g0` in the gateway namespace, as an
    /// operator runs it: `ip netns exec`, with a mount namespace of its own.
    pub fn gw_cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", self.gateway.name()])
            .arg(crate::xlate_user_bin())
            .args(args)
            .args(["--iface", "g0"])
            .output()
            .unwrap();
        assert!(out.status.success(), "xlate-user {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn stats(&self) -> std::collections::BTreeMap<String, u64> {
        self.gw_cli(&["stats"])
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap()))
            .collect()
    }

    pub fn flows(&self) -> Vec<String> {
        self.gw_cli(&["flows"]).lines().skip(1).map(str::to_string).collect()
    }

    /// Rewrites the configuration and sends SIGHUP.
    pub fn reload(&mut self, instances_toml: &str) {
        std::fs::write(&self.config_path, config(instances_toml)).unwrap();
        let bg = self.gateway_agent.as_mut().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(bg.pid(), libc::SIGHUP) };
        bg.wait_for_line("reloaded", Duration::from_secs(10));
    }

    pub fn wait_no_flows(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let f = self.flows();
            if f.is_empty() {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "translator flows left after {within:?}: {f:#?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl GatewayLab {
    /// Stops the translator for good (`xlate-user stop`, as an operator
    /// runs it: every flow reset, programs, pins and sysctls removed);
    /// returns the agent's output (stdout, stderr).
    pub fn stop_gateway(&mut self) -> (String, String) {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", self.gateway.name()])
            .arg(crate::xlate_user_bin())
            .args(["stop", "--iface", "g0"])
            .output();
        // Without an agent, `stop` removed what a stopped agent left (its
        // datapath outlives it; the namespace and pins must not).
        let Some(mut g) = self.gateway_agent.take() else { return Default::default() };
        match out {
            Ok(o) if o.status.success() => g.stop(0),
            _ => g.stop(libc::SIGTERM),
        }
    }

    /// Stops only the translator's agent, with `sig` (SIGTERM, SIGKILL):
    /// the datapath goes on. Returns its output.
    pub fn stop_gateway_agent(&mut self, sig: i32) -> (String, String) {
        self.gateway_agent.take().map(|mut g| g.stop(sig)).unwrap_or_default()
    }

    /// Starts the translator again (generic XDP, as the lab's default);
    /// returns what it printed up to its start-up line.
    pub fn restart_gateway(&mut self, mode: &str) -> String {
        self.start_gateway(mode);
        self.startup.clone()
    }
}

impl Drop for GatewayLab {
    fn drop(&mut self) {
        self.stop_gateway();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
