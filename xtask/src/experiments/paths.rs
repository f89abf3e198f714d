//! The ways from the client to the instance's server that the experiments
//! compare, and how each is set up on the gateway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xlate_lab::topology::translator;
use xlate_lab::{Bg, Netns, Translator};

use crate::agent::{start as start_agent, Running};

pub const PORT: u16 = 5401;
pub const SERVICE_ID: &str = "00001541";
/// Where the gateway's host-mode side sends its connections (HAProxy's,
/// and the Serval client's of `serval-direct`).
const GATEWAY_SVC: &str = "10.99.0.100";

/// A way from the client to the instance's server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    Routing,
    ServalDirect,
    FastNative,
    FastGeneric,
    RelaySplice,
    RelayCopy,
    Haproxy,
}

impl DataPath {
    /// How the instance's host mode receives on this path: as an operator
    /// starts it (`--receive auto`: on the lab's veth, TC round through
    /// GRO), except for routing, the reference. Routed TCP reaches the
    /// instance in segments (the XDP program on the gateway's veth takes
    /// the client's TSO), and veth hands GRO only what comes from a peer
    /// without TSO, which the gateway's veth has. An XDP program on the
    /// instance's veth puts every frame through veth's NAPI and GRO, and
    /// routing moves the most that way: 8.64 / 7.76 Gbit/s uploads in
    /// run 4, against 5.38 / 5.34 in run 5, which started the instance
    /// with `auto` for every path (docs/performance.md).
    pub fn instance_receive(self) -> &'static [&'static str] {
        match self {
            DataPath::Routing => &["--receive", "xdp"],
            _ => &[],
        }
    }
}

pub const PATHS: [DataPath; 7] = [
    DataPath::Routing,
    DataPath::ServalDirect,
    DataPath::FastNative,
    DataPath::FastGeneric,
    DataPath::RelaySplice,
    DataPath::RelayCopy,
    DataPath::Haproxy,
];

impl DataPath {
    /// The short name in CSV files and plots.
    pub fn key(self) -> &'static str {
        match self {
            DataPath::Routing => "routing",
            DataPath::ServalDirect => "serval-direct",
            DataPath::FastNative => "fast-path-native",
            DataPath::FastGeneric => "fast-path-generic",
            DataPath::RelaySplice => "relay-splice",
            DataPath::RelayCopy => "relay-copy",
            DataPath::Haproxy => "haproxy",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            DataPath::Routing => "plain IP routing through the gateway (XDP attached, passing)",
            DataPath::ServalDirect => "a Serval client on the gateway straight to the instance (the SAL ceiling)",
            DataPath::FastNative => "xlate fast path, native XDP (TCP -> SAL per packet)",
            DataPath::FastGeneric => "xlate fast path, generic XDP (the client's TSO and GSO off)",
            DataPath::RelaySplice => "xlate stream relay, splice",
            DataPath::RelayCopy => "xlate stream relay, read/write copies",
            DataPath::Haproxy => "HAProxy (TCP mode, splice) + xlate host mode on the gateway",
        }
    }
}

/// Where a path's client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAt {
    /// The legacy client's namespace.
    Client,
    /// The gateway itself (`serval-direct`: its client is a Serval host).
    Gateway,
}

/// What keeps a path up; dropped, it tears it down.
pub struct PathUp {
    _guards: Vec<Box<dyn std::any::Any>>,
    pub dst: SocketAddr,
    pub client_at: ClientAt,
}

impl PathUp {
    pub fn client<'a>(&self, lab: &'a Translator) -> &'a Netns {
        match self.client_at {
            ClientAt::Client => &lab.client,
            ClientAt::Gateway => &lab.gateway,
        }
    }
}

fn config_file(out: &Path) -> Result<PathBuf> {
    let p = out.join("experiments.toml");
    std::fs::write(
        &p,
        format!(
            "[translator]\nsal_address = \"{}\"\n\n[[service]]\naddress = \"{}\"\nport = {PORT}\nservice_id = \"{SERVICE_ID}\"\ninstances = [\"{}\"]\n",
            translator::SAL_ADDRESS,
            translator::PUBLIC_IP,
            translator::INSTANCES[0]
        ),
    )?;
    Ok(p)
}

const HAPROXY_CFG: &str = "global
    maxconn 4096
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend serval
    bind {PUBLIC}:{PORT}
    default_backend instances
backend instances
    server s1 {SVC}:{PORT}
";

/// xlate host mode on the gateway's service side: connections to
/// GATEWAY_SVC:PORT become Serval connections to the service, routed to
/// the instance. It receives as `--receive auto` does (on this veth: at
/// TC, round through GRO).
fn gateway_host_mode(bin: &Path, gw: &Netns, out: &Path) -> Result<Running> {
    let connect = format!("{SERVICE_ID}={GATEWAY_SVC}:{PORT}");
    let route = format!("{SERVICE_ID}={}", translator::INSTANCES[0]);
    start_agent(
        bin,
        gw,
        out,
        "gateway-host-mode",
        &["host", "--iface", "g1", "--connect", &connect, "--route", &route],
        &["host", "stop", "--iface", "g1"],
    )
}

pub fn start(p: DataPath, bin: &Path, lab: &Translator, out: &Path) -> Result<PathUp> {
    let config = config_file(out)?;
    let config = config.to_str().context("config path")?;
    let gw = &lab.gateway;
    let public: SocketAddr = format!("{}:{PORT}", translator::PUBLIC_IP).parse()?;
    let run = |mode: &str| -> Result<Running> {
        start_agent(
            bin,
            gw,
            out,
            "gateway",
            &["run", "--xdp-mode", mode, "--iface", "g0", "--iface", "g1", "--config", config],
            &["stop", "--iface", "g0"],
        )
    };
    let relay = |mode: &str| -> Result<Running> {
        start_agent(
            bin,
            gw,
            out,
            "gateway",
            &["relay", "--alias", "--mode", mode, "--iface", "g0", "--iface", "g1", "--config", config],
            &["stop", "--iface", "g0"],
        )
    };
    let from_client =
        |guards: Vec<Box<dyn std::any::Any>>, dst| PathUp { _guards: guards, dst, client_at: ClientAt::Client };
    Ok(match p {
        DataPath::Routing => {
            from_client(vec![Box::new(run("native")?)], format!("{}:{PORT}", translator::INSTANCES[0]).parse()?)
        }
        DataPath::ServalDirect => PathUp {
            _guards: vec![Box::new(gateway_host_mode(bin, gw, out)?)],
            dst: format!("{GATEWAY_SVC}:{PORT}").parse()?,
            client_at: ClientAt::Gateway,
        },
        DataPath::FastNative => from_client(vec![Box::new(run("native")?)], public),
        DataPath::FastGeneric => {
            // Generic XDP takes what reaches the stack, after GRO, and a
            // local veth peer's TSO packets unsegmented: translated whole
            // they are SAL packets no link carries (the instance's bridge
            // port drops them). The client sends wire-size segments, as a
            // real network delivers them.
            for feature in ["tso", "gso"] {
                lab.client.set_offload("lc0", feature, false)?;
            }
            from_client(vec![Box::new(run("generic")?)], public)
        }
        DataPath::RelaySplice => from_client(vec![Box::new(relay("splice")?)], public),
        DataPath::RelayCopy => from_client(vec![Box::new(relay("copy")?)], public),
        DataPath::Haproxy => {
            // Debian puts it in /usr/sbin, which a user's PATH may lack.
            let haproxy = crate::util::which("haproxy")
                .or_else(|| Some(PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.exists()))
                .context("haproxy is not installed: run `cargo xtask setup`")?;
            gw.try_ip(&["addr", "add", &format!("{}/32", translator::PUBLIC_IP), "dev", "g0"])?;
            let host = gateway_host_mode(bin, gw, out)?;
            let cfg = out.join("haproxy.cfg");
            std::fs::write(
                &cfg,
                HAPROXY_CFG
                    .replace("{PUBLIC}", translator::PUBLIC_IP)
                    .replace("{SVC}", GATEWAY_SVC)
                    .replace("{PORT}", &PORT.to_string()),
            )?;
            let child = gw
                .net_cmd(&haproxy)
                .args(["-db", "-f"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting haproxy")?;
            let haproxy = Running::process(Bg::from_child(child).terminate_on_drop());
            wait_listening(gw, public)?;
            // Dropped in order: HAProxy, then host mode.
            from_client(vec![Box::new(haproxy), Box::new(host)], public)
        }
    })
}

/// Waits until something in `ns` listens on `addr`.
fn wait_listening(ns: &Netns, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = format!(":{}", addr.port());
    while Instant::now() < deadline {
        let out = ns.output("ss", &["-Hltn"]);
        if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.contains(&port)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on {addr} after 10 s")
}
