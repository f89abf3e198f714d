//! A two-host lab for host-mode tests: a client and a server namespace on
//! one veth link, each running `xlate-user host`, torn down (agents
//! stopped for good, pins removed, namespaces deleted) on drop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{Bg, Naming, Netns};
use crate::xlate_user_bin;
pub use xlate_lab::topology::host_pair::{CLIENT_IF, CLIENT_IP, SERVER_IF, SERVER_IP};
use xlate_lab::HostPair;

pub const SERVER_IP2: &str = "10.61.0.3";
/// What client applications connect to (`--connect`).
pub const SERVICE_ADDR: &str = "10.61.0.100";
pub const SERVICE_PORT: u16 = 80;
pub const SERVICE_ID: &str = "00000050";
pub const HTTP_PORT: u16 = 8080;
/// A second service for socket-level tests: clients use
/// `APP_ADDR:APP_PORT`, the server listens on `APP_PORT`.
pub const APP_SERVICE_ID: &str = "00000051";
pub const APP_ADDR: &str = "10.61.0.101";
pub const APP_PORT: u16 = 9000;

/// A running `xlate-user host`, stopped for good on drop (`host stop`:
/// flows reset, programs, pins and the segmenter removed).
pub struct Agent {
    bg: Option<Bg>,
    ns: String,
    iface: String,
    args: Vec<String>,
}

impl Agent {
    pub fn start(ns: &Netns, iface: &str, args: &[&str]) -> Agent {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (bg, _) = Self::spawn(ns.name(), iface, &args);
        Agent { bg: Some(bg), ns: ns.name().to_string(), iface: iface.to_string(), args }
    }

    /// As [`Agent::start`]; also returns what the agent printed up to its
    /// start-up line (what it carried over, the fallbacks it takes).
    pub fn start_with_log(ns: &Netns, iface: &str, args: &[&str]) -> (Agent, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (bg, startup) = Self::spawn(ns.name(), iface, &args);
        (Agent { bg: Some(bg), ns: ns.name().to_string(), iface: iface.to_string(), args }, startup)
    }

    /// Starts the agent; returns it and what it printed up to its start-up
    /// line.
    fn spawn(ns: &str, iface: &str, args: &[String]) -> (Bg, String) {
        let bin = xlate_user_bin();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(&bin)
            .args(["host", "--iface", iface])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut bg = Bg::from_child(child);
        let startup = bg.read_until("xlate host mode on", Duration::from_secs(30));
        (bg, startup)
    }

    /// Stops host mode for good (`xlate-user host stop`, as an operator
    /// runs it); returns the agent's stderr.
    pub fn stop(&mut self) -> String {
        let Some(mut bg) = self.bg.take() else { return String::new() };
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(xlate_user_bin())
            .args(["host", "stop", "--iface", &self.iface])
            .output();
        match out {
            Ok(o) if o.status.success() => bg.stop(0).1,
            _ => bg.stop(libc::SIGTERM).1,
        }
    }

    /// Stops only the agent, with `sig` (SIGTERM, SIGKILL): the datapath
    /// goes on. Returns the agent's stdout and stderr.
    pub fn stop_agent(&mut self, sig: i32) -> (String, String) {
        self.bg.take().map(|mut bg| bg.stop(sig)).unwrap_or_default()
    }

    /// Starts the agent again after [`Agent::stop_agent`]; returns what it
    /// printed up to its start-up line.
    pub fn restart(&mut self) -> String {
        let (bg, startup) = Self::spawn(&self.ns, &self.iface, &self.args);
        self.bg = Some(bg);
        startup
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct HostLab {
    // Field order is drop order: agents stop before namespaces go.
    pub server_agent: Agent,
    pub client_agent: Agent,
    pub http: Option<Bg>,
    pub dir: PathBuf,
    pub server: Netns,
    pub client: Netns,
}

impl HostLab {
    /// Client and server namespaces, host mode on both, and a python HTTP
    /// server on the server side serving `dir` (files created by the test).
    pub fn new(tag: &str) -> HostLab {
        HostLab::with_args(tag, &[], &[])
    }

    /// Like [`new`](Self::new), with extra `xlate-user host` arguments for
    /// the server and the client agent.
    pub fn with_args(tag: &str, server_extra: &[&str], client_extra: &[&str]) -> HostLab {
        let HostPair { server, client } =
            HostPair::build(Naming::Unique(tag)).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
        let dir = std::env::temp_dir().join(format!("xlate-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let serve = [format!("{SERVICE_ID}={HTTP_PORT}"), format!("{APP_SERVICE_ID}={APP_PORT}")];
        let mut args: Vec<&str> = vec!["--serve", &serve[0], "--serve", &serve[1]];
        args.extend_from_slice(server_extra);
        let server_agent = Agent::start(&server, SERVER_IF, &args);
        let connect =
            [format!("{SERVICE_ID}={SERVICE_ADDR}:{SERVICE_PORT}"), format!("{APP_SERVICE_ID}={APP_ADDR}:{APP_PORT}")];
        let mut args: Vec<&str> = vec!["--connect", &connect[0], "--connect", &connect[1]];
        args.extend_from_slice(client_extra);
        let client_agent = Agent::start(&client, CLIENT_IF, &args);
        HostLab { server_agent, client_agent, http: None, dir, server, client }
    }

    pub fn start_http(&mut self) {
        // Files (GET), generated streams and uploads (PUT): see HTTP_SERVER.
        let mut http = self.server.spawn(
            "python3",
            &["-u", "-c", crate::gateway::HTTP_SERVER, &HTTP_PORT.to_string(), self.dir.to_str().unwrap()],
        );
        http.wait_for_line("Serving HTTP", Duration::from_secs(10));
        self.http = Some(http);
    }

    /// Starts a python application server (`script`, argv: this host's
    /// address, the application port, then `extra`) on the serving side
    /// and waits for its "listening" line.
    pub fn app_server(&self, script: &str, extra: &[&str]) -> Bg {
        let port = APP_PORT.to_string();
        let mut args = vec!["-c", script, SERVER_IP, &port];
        args.extend_from_slice(extra);
        let mut server = self.server.spawn("python3", &args);
        server.wait_for_line("listening", Duration::from_secs(10));
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{SERVICE_ADDR}:{SERVICE_PORT}/{path}")
    }

    /// `xlate-user host <sub> --iface …` on one side, as an operator runs
    /// it: `ip netns exec`, which also gives the command a mount namespace
    /// of its own (the pins must be reachable from there).
    pub fn host_cli(&self, server_side: bool, sub: &[&str]) -> Output {
        let (ns, iface) = if server_side { (&self.server, SERVER_IF) } else { (&self.client, CLIENT_IF) };
        let mut args = vec!["netns".into(), "exec".into(), ns.name().to_string()];
        args.extend([xlate_user_bin().display().to_string(), "host".into()]);
        args.extend(sub.iter().map(|s| s.to_string()));
        args.extend(["--iface".to_string(), iface.to_string()]);
        Command::new("ip").args(&args).output().unwrap()
    }

    pub fn stats(&self, server_side: bool) -> BTreeMap<String, u64> {
        let out = self.host_cli(server_side, &["stats"]);
        assert!(out.status.success(), "host stats: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap()))
            .collect()
    }

    /// Live flows (rows of `host flows`, header dropped).
    pub fn flows(&self, server_side: bool) -> Vec<String> {
        let out = self.host_cli(server_side, &["flows"]);
        assert!(out.status.success(), "host flows: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().skip(1).map(str::to_string).collect()
    }

    /// Waits until neither side has a flow left; panics naming what is left.
    pub fn wait_no_flows(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (c, s) = (self.flows(false), self.flows(true));
            if c.is_empty() && s.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("flows left after {within:?}:\nclient: {c:#?}\nserver: {s:#?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for HostLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A tcpdump on one interface of a namespace, writing a pcap.
pub struct Capture {
    bg: Option<Bg>,
    pub path: PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns, iface: &str, path: PathBuf, filter: &[&str]) -> Capture {
        // -Z root: Debian's tcpdump otherwise drops to its own user, which
        // cannot write into the test's directory. -B: 64 MiB of kernel
        // buffer (the default 2 MiB overflowed during a fast transfer on a
        // busy machine: tcpdump then saw 936 of some 6,000 packets).
        let mut args = vec![
            "-Z",
            "root",
            "--immediate-mode",
            "-B",
            "65536",
            "-i",
            iface,
            "-n",
            "-U",
            "-w",
            path.to_str().unwrap(),
        ];
        args.extend_from_slice(filter);
        let mut bg = ns.spawn_stderr("tcpdump", &args);
        bg.wait_for_stderr_line("listening on", Duration::from_secs(10));
        Capture { bg: Some(bg), path }
    }

    /// Stops tcpdump; returns its report ("N packets captured" …).
    pub fn stop(&mut self) -> String {
        match self.bg.take() {
            Some(mut bg) => {
                std::thread::sleep(Duration::from_millis(300));
                bg.stop(libc::SIGINT).1
            }
            None => String::new(),
        }
    }
}

/// What `xlate-user decode` printed for a capture it found valid
/// throughout, and how many SAL packets its summary counted.
pub struct Decoded {
    pub text: String,
    pub sal_packets: u64,
}

/// Runs `xlate-user decode` over `pcap`: it checks every SAL packet's
/// receiver rules and checksums and exits non-zero on the first that
/// breaks one; this panics then, with the end of its report.
pub fn decode_valid(pcap: &std::path::Path) -> Decoded {
    let out = Command::new(xlate_user_bin()).arg("decode").arg(pcap).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "decode {}: {}\n{}",
        pcap.display(),
        text.lines().rev().take(20).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    // The summary: "N SAL packets, N valid, 0 invalid".
    let sal_packets =
        text.lines().last().and_then(|l| l.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    Decoded { text, sal_packets }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}
