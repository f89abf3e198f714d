//! `xlate-user check --config FILE`: validates a translator configuration
//! the way `run` and a SIGHUP reload would load it, without touching the
//! system (no BPF, no netlink, no pins, no privileges), like `nginx -t`.
//! systemd units run it before a start and before a reload, so a bad file
//! is refused while the running translator goes on unchanged.
//!
//! Errors are the configuration parser's own (file, line, field, value).
//! On top of them, `check` warns about what loads but is probably not
//! meant; warnings do not fail the check, since `run` accepts such a file.
//!
//! Not checked here, because the answer depends on the running system:
//! that a service collides with a socket listening on the gateway (a
//! running relay's own listeners would look like collisions), and the
//! reload-only rules (sal_address and max_flows cannot change while
//! running). The agent still enforces them, and logs a refused reload.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;
use xlate_common::flow::gw::MAGLEV_SIZE;

use crate::config::{Config, Service, ServiceMode};

/// What a valid configuration holds, and what looks wrong in it.
pub struct Report {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Loads `path` exactly as `run` does and looks for the mistakes the
/// parser lets through.
pub fn check(path: &Path) -> Result<Report> {
    let config = Config::load(path)?;
    Ok(Report { warnings: warnings(&config), config })
}

fn warnings(c: &Config) -> Vec<String> {
    c.services.iter().flat_map(|s| maglev_warning(s).into_iter().chain(target_warnings(s, c))).collect()
}

/// Each instance is `weight` virtual nodes in a Maglev table of
/// MAGLEV_SIZE slots; with more nodes than slots the shares stop following
/// the weights, and the instances filled last may get no slot at all.
fn maglev_warning(s: &Service) -> Option<String> {
    let nodes: u32 = s.instances.iter().map(|i| i.weight).sum();
    if nodes <= MAGLEV_SIZE {
        return None;
    }
    let table = crate::maglev::table(&s.instances, MAGLEV_SIZE);
    let starved: Vec<String> =
        s.instances.iter().filter(|i| !table.contains(&i.address)).map(|i| i.address.to_string()).collect();
    let mut w = format!(
        "service {}:{}: its instances' weights sum to {nodes}, more than the {MAGLEV_SIZE} slots of its Maglev \
         table, so connections no longer split by weight",
        s.address, s.port
    );
    if !starved.is_empty() {
        w += &format!("; {} get no connection at all", starved.join(", "));
    }
    Some(w)
}

/// An instance or router must be a Serval host behind the gateway: neither
/// the gateway's own SAL address nor a public service address (which the
/// gateway takes over, and with --alias owns).
fn target_warnings(s: &Service, c: &Config) -> Vec<String> {
    let targets = s.instances.iter().map(|i| ("instance", i.address)).chain(s.router.map(|r| ("router", r)));
    let mut out = Vec::new();
    for (what, a) in targets {
        if what == "router" && a == c.sal_address {
            out.push(format!(
                "service {}:{}: router {a} is the translator's own sal_address: SYNs would come back here",
                s.address, s.port
            ));
        }
        if let Some(p) = c.services.iter().find(|p| p.address == a) {
            out.push(format!(
                "service {}:{}: {what} {a} is also the public address of service {}:{}: SAL packets to it may stay \
                 on the gateway (with --alias it is the gateway's own)",
                s.address, s.port, p.address, p.port
            ));
        }
    }
    out
}

/// The one-line summary: `FILE: ok: 2 services (2 fast, 0 relay), …`.
pub struct Summary<'a>(pub &'a Path, pub &'a Config);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Summary(path, c) = self;
        let relayed = c.services.iter().filter(|s| s.mode == ServiceMode::Relay).count();
        let instances: std::collections::HashSet<Ipv4Addr> = c
            .services
            .iter()
            .flat_map(|s| &s.instances)
            .chain(c.prefixes.iter().flat_map(|p| &p.instances))
            .map(|i| i.address)
            .collect();
        let routers = c.services.iter().filter(|s| s.router.is_some()).count()
            + c.prefixes.iter().filter(|p| p.router.is_some()).count();
        let prefixes = if c.prefixes.is_empty() {
            String::new()
        } else {
            let held: u64 = c.prefixes.iter().map(|p| 1u64 << (32 - u32::from(p.len))).sum();
            format!(" + {} ({held} addresses)", counted(c.prefixes.len(), "prefix"))
        };
        write!(
            f,
            "{}: ok: {} ({} fast, {relayed} relay){prefixes}, {}, {routers} behind a router; sal_address {}, \
             idle_timeout {} s, max_flows {}, relay data_mover {}, buffer {}",
            path.display(),
            counted(c.services.len(), "service"),
            c.services.len() - relayed,
            counted(instances.len(), "instance"),
            c.sal_address,
            c.idle_timeout,
            c.max_flows.unwrap_or(xlate_common::flow::MAX_FLOWS),
            format!("{:?}", c.relay.mover).to_lowercase(),
            c.relay.buffer,
        )
    }
}

/// "1 service", "2 services", "2 prefixes".
fn counted(n: usize, noun: &str) -> String {
    let plural = if noun.ends_with('x') { "es" } else { "s" };
    format!("{n} {noun}{}", if n == 1 { "" } else { plural })
}

/// `xlate-user check`: the summary on stdout, warnings on stderr, exit 0;
/// an invalid file is the caller's error (stderr, exit 2).
pub fn run(path: &Path) -> Result<()> {
    let r = check(path)?;
    for w in &r.warnings {
        eprintln!("{}: warning: {w}", path.display());
    }
    println!("{}", Summary(path, &r.config));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warned(text: &str) -> Vec<String> {
        warnings(&Config::parse(text).unwrap())
    }

    const HEAD: &str = "[translator]\nsal_address = \"10.10.0.1\"\n\n[[service]]\naddress = \"203.0.113.1\"\nport = 80\nservice_id = 80\n";

    #[test]
    fn a_plain_configuration_has_no_warning() {
        assert!(warned(&format!("{HEAD}instances = [\"10.10.0.11\", \"10.10.0.12\"]\n")).is_empty());
    }

    #[test]
    fn weights_beyond_the_maglev_table_name_the_starved_instances() {
        let list: Vec<String> = (1..=20).map(|i| format!("{{ address = \"10.10.1.{i}\", weight = 100 }}")).collect();
        let w = warned(&format!("{HEAD}instances = [{}]\n", list.join(", ")));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("weights sum to 2000, more than the 1021 slots"), "{w:?}");
        assert!(w[0].contains("10.10.1.20") && w[0].contains("get no connection at all"), "{w:?}");
    }

    #[test]
    fn targets_on_the_gateways_own_addresses_are_named() {
        let w = warned(&format!("{HEAD}router = \"10.10.0.1\"\n"));
        assert!(w[0].contains("router 10.10.0.1 is the translator's own sal_address"), "{w:?}");
        let w = warned(&format!("{HEAD}instances = [\"203.0.113.1\"]\n"));
        assert!(w[0].contains("instance 203.0.113.1 is also the public address of service 203.0.113.1:80"), "{w:?}");
    }
}
