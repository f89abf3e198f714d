//! Dynamic aliasing (the paper's §4.2): the relay's public addresses that
//! no interface has are added to the translator's client-facing interface
//! as /32 aliases, so that what XDP passes to the kernel for them reaches
//! the relay's sockets; they are removed when they leave the
//! configuration and when the agent exits (SIGTERM and SIGINT too). An
//! address the operator configured is never touched. Every alias is
//! written down in the agent's record first, so a crashed run's aliases
//! are removed by the next one.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::agent::maps::Kind;
use crate::agent::resident::{AliasRecord, Record};

pub struct Aliases {
    /// The link aliases go on (the translator's first interface).
    pub ifindex: u32,
    /// Names the translator's record (its first interface).
    pub agent_iface: String,
    added: Vec<Ipv4Addr>,
}

impl Aliases {
    pub fn new(ifindex: u32, agent_iface: String) -> Self {
        Aliases { ifindex, agent_iface, added: Vec::new() }
    }

    /// Makes the aliases exactly those of `want` that no interface has.
    pub async fn follow(&mut self, want: &[Ipv4Addr]) -> Result<()> {
        let gone: Vec<Ipv4Addr> = self.added.iter().copied().filter(|a| !want.contains(a)).collect();
        for a in gone {
            crate::netlink::delete_alias(a, self.ifindex).await?;
            self.added.retain(|x| *x != a);
            self.save()?;
            tracing::info!("relay: removed the alias {a}/32 (no longer a service address)");
        }
        let local = crate::netlink::all_ipv4_addresses().await?;
        for &a in want {
            if local.contains(&a) || self.added.contains(&a) {
                continue;
            }
            // Recorded before it exists: a crash in between leaves a record
            // of an alias that is not there, which is harmless.
            self.added.push(a);
            self.save()?;
            crate::netlink::add_alias(a, self.ifindex).await?;
            tracing::info!("relay: added the alias {a}/32 (dynamic aliasing)");
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let mut r = Record::load(Kind::Gateway, &self.agent_iface)?;
        r.aliases = self.added.iter().map(|&addr| AliasRecord { addr, ifindex: self.ifindex }).collect();
        r.save(Kind::Gateway, &self.agent_iface)
    }
}
