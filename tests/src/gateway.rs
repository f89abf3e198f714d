//! A translator lab: a legacy client, the gateway running `xlate-user run`
//! (two-armed), and two service instances in host mode behind a bridge,
//! each serving HTTP. Torn down on drop.

use std::path::PathBuf;
use std::time::Duration;

use crate::host::Agent;
use crate::netns::{veth, Bg, Netns};

pub const CLIENT_IP: &str = "198.51.100.2";
pub const GW_CLIENT_IP: &str = "198.51.100.1";
pub const SAL_ADDRESS: &str = "10.10.0.1";
pub const PUBLIC_IP: &str = "203.0.113.1";
pub const PUBLIC_PORT: u16 = 80;
pub const INSTANCES: [&str; 2] = ["10.10.0.11", "10.10.0.12"];
pub const INSTANCE2_ALT: &str = "10.10.0.22";
pub const SERVICE_ID: &str = "00000050";

pub fn config(instances: &str) -> String {
    format!(
        "[translator]\nsal_address = \"{SAL_ADDRESS}\"\n\n[[service]]\naddress = \"{PUBLIC_IP}\"\nport = {PUBLIC_PORT}\nservice_id = \"{SERVICE_ID}\"\ninstances = [{instances}]\n"
    )
}

pub const WEIGHTED: &str = "\"10.10.0.11\", { address = \"10.10.0.12\", weight = 3 }";

pub struct GatewayLab {
    // Drop order: processes, then namespaces.
    pub http: Vec<Bg>,
    pub instance_agents: Vec<Agent>,
    pub gateway_agent: Option<Bg>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub instances: Vec<Netns>,
    pub switch: Netns,
    pub gateway: Netns,
    pub client: Netns,
}

impl GatewayLab {
    /// `xdp_mode`: "generic" or "native"; `client_tx_offload`: whether the
    /// client's veth leaves TCP checksums to offload (partial checksums).
    pub fn new(tag: &str, instances_toml: &str, xdp_mode: &str, client_tx_offload: bool) -> GatewayLab {
        let client = Netns::new(&format!("{tag}-lc"));
        let gateway = Netns::new(&format!("{tag}-gw"));
        let switch = Netns::new(&format!("{tag}-sw"));
        veth(&client, "lc0", &format!("{CLIENT_IP}/24"), &gateway, "g0", &format!("{GW_CLIENT_IP}/24"));
        client.ip(&["route", "add", "default", "via", GW_CLIENT_IP]);
        if !client_tx_offload {
            let out = client.output("ethtool", &["-K", "lc0", "tx", "off"]);
            assert!(out.status.success(), "ethtool: {}", String::from_utf8_lossy(&out.stderr));
        }
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        // Service LAN: gateway g1 and the instances on bridge br0.
        let port = |ns: &Netns, dev: &str, addr: &str, sw_port: &str| {
            let out = std::process::Command::new("ip")
                .args([
                    "link",
                    "add",
                    dev,
                    "netns",
                    ns.name(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    sw_port,
                    "netns",
                    switch.name(),
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            ns.ip(&["addr", "add", addr, "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
            switch.ip(&["link", "set", sw_port, "master", "br0", "up"]);
        };
        port(&gateway, "g1", &format!("{SAL_ADDRESS}/24"), "s0");
        // Frames the gateway redirects from native XDP reach a veth peer
        // only if that peer has NAPI (GRO on) or an XDP program.
        for (ns, dev) in [(&client, "lc0"), (&switch, "s0")] {
            let out = ns.output("ethtool", &["-K", dev, "gro", "on"]);
            assert!(out.status.success(), "ethtool -K {dev} gro on: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut instances = Vec::new();
        for (i, addr) in INSTANCES.iter().enumerate() {
            let ns = Netns::new(&format!("{tag}-i{}", i + 1));
            port(&ns, "e0", &format!("{addr}/24"), &format!("s{}", i + 1));
            ns.ip(&["route", "add", "default", "via", SAL_ADDRESS]);
            instances.push(ns);
        }
        let dir = std::env::temp_dir().join(format!("xlate-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut http = Vec::new();
        let mut instance_agents = Vec::new();
        for (i, ns) in instances.iter().enumerate() {
            let www = dir.join(format!("www{}", i + 1));
            std::fs::create_dir_all(&www).unwrap();
            std::fs::write(www.join("who"), format!("{}\n", INSTANCES[i])).unwrap();
            instance_agents.push(Agent::start(ns, "e0", &["--serve", &format!("{SERVICE_ID}=80")]));
            let mut h = ns.spawn("python3", &["-u", "-m", "http.server", "80", "--directory", www.to_str().unwrap()]);
            h.wait_for_line("Serving HTTP", Duration::from_secs(10));
            http.push(h);
        }
        let config_path = dir.join("xlate.toml");
        std::fs::write(&config_path, config(instances_toml)).unwrap();
        let mut lab = GatewayLab {
            http,
            instance_agents,
            gateway_agent: None,
            dir,
            config_path,
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
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.gateway.name()))
            .arg(&bin)
            .args([
                "run",
                "--iface",
                "g0",
                "--iface",
                "g1",
                "--xdp-mode",
                mode,
                "--metrics",
                "127.0.0.1:9464",
                "--config",
            ])
            .arg(&self.config_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut bg = Bg::from_child(child);
        bg.wait_for_line("xlate translator on", Duration::from_secs(30));
        self.gateway_agent = Some(bg);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{PUBLIC_IP}:{PUBLIC_PORT}/{path}")
    }

    /// `xlate-user <args> --iface g0` in the gateway namespace.
    pub fn gw_cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.gateway.name()))
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

impl Drop for GatewayLab {
    fn drop(&mut self) {
        if let Some(mut g) = self.gateway_agent.take() {
            g.stop(libc::SIGTERM);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
