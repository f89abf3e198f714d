//! Experiment 5: host mode against plain TCP on one veth pair, with GRO on
//! at both ends as a NIC has it (veth has it off), iperf3 from the client
//! both ways, 1 and 4 streams:
//!
//! - plain TCP with default offloads (TSO and GRO: 64 KB packets);
//! - plain TCP with the senders' segmentation and checksum offloads off,
//!   so that wire-size segments cross the link as SAL's must: the
//!   per-segment bound (the kernel has no GSO or GRO for protocol 144);
//! - plain TCP beside running agents (what host mode costs other traffic);
//! - host mode receiving at XDP (before GRO, which then coalesces the
//!   translated TCP), at TC ingress with the translated TCP sent round
//!   through GRO (`--receive tc`, what `auto` picks on a veth), and at TC
//!   ingress in place (`--receive tc-in-place`, one segment at a time).
//!
//! `cargo xtask bench --only host-mode` prints the same measurement as a
//! table; the experiments keep it for issue 18's floors ([`super::floors`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use xlate_lab::topology::host_pair;
use xlate_lab::{HostPair, Naming};

use crate::bench::{agent, four_ways, iperf_server, PORT};

/// Where the host-mode client connects (`--connect`).
const SVC_ADDR: &str = "10.61.0.100";

/// Goodput in Gbit/s, each in the order of [`HostMode::WAYS`].
#[derive(Debug, Clone)]
pub struct HostMode {
    pub seconds: u32,
    pub plain: [f64; 4],
    pub per_segment: [f64; 4],
    pub plain_beside_xdp: [f64; 4],
    pub plain_beside_tc: [f64; 4],
    pub host_xdp: [f64; 4],
    pub host_tc: [f64; 4],
    pub host_tc_in_place: [f64; 4],
}

impl HostMode {
    /// Client to server and server to client, 1 and 4 streams.
    pub const WAYS: [&'static str; 4] = ["c->s 1", "c->s 4", "s->c 1", "s->c 4"];

    /// The rows, named, in the order they are written.
    pub fn rows(&self) -> [(&'static str, &[f64; 4]); 7] {
        [
            ("plain TCP, default offloads", &self.plain),
            ("plain TCP, senders' tx/tso/gso off (the per-segment bound)", &self.per_segment),
            ("plain TCP beside host mode receiving at XDP", &self.plain_beside_xdp),
            ("plain TCP beside host mode receiving at TC", &self.plain_beside_tc),
            ("host mode, receive at XDP", &self.host_xdp),
            ("host mode, receive at TC ingress, coalesced through GRO", &self.host_tc),
            ("host mode, receive at TC ingress, in place", &self.host_tc_in_place),
        ]
    }
}

/// Measures every row on a fresh host pair, `seconds` per iperf3 run.
pub fn measure(bin: &Path, seconds: u32) -> Result<HostMode> {
    let lab = HostPair::build(Naming::Fixed("xlt-bench"))?;
    let (c, s) = (&lab.client, &lab.server);
    let ends = [(c, host_pair::CLIENT_IF), (s, host_pair::SERVER_IF)];
    for (ns, dev) in ends {
        ns.set_offload(dev, "gro", true)?;
    }
    let _iperf = iperf_server(s)?;
    let plain = four_ways(c, host_pair::SERVER_IP, seconds)?;
    let offloads = |on: bool| -> Result<()> {
        for (ns, dev) in ends {
            for f in ["tx", "tso", "gso"] {
                ns.set_offload(dev, f, on)?;
            }
        }
        Ok(())
    };
    offloads(false)?;
    let per_segment = four_ways(c, host_pair::SERVER_IP, seconds);
    offloads(true)?;
    let per_segment = per_segment?;
    let serve = format!("00001451={PORT}");
    let connect = format!("00001451={SVC_ADDR}:{PORT}");
    let host = |receive: &str| -> Result<([f64; 4], [f64; 4])> {
        let _s = agent(
            bin,
            s,
            &["host", "--iface", host_pair::SERVER_IF, "--serve", &serve, "--receive", receive],
            &["host", "stop", "--iface", host_pair::SERVER_IF],
        )?;
        let _c = agent(
            bin,
            c,
            &["host", "--iface", host_pair::CLIENT_IF, "--connect", &connect, "--receive", receive],
            &["host", "stop", "--iface", host_pair::CLIENT_IF],
        )?;
        let beside = if receive == "tc-in-place" { [0.0; 4] } else { four_ways(c, host_pair::SERVER_IP, seconds)? };
        Ok((beside, four_ways(c, SVC_ADDR, seconds)?))
    };
    let (plain_beside_xdp, host_xdp) = host("xdp")?;
    let (plain_beside_tc, host_tc) = host("tc")?;
    // Plain TCP beside it moves as beside `tc`: the same programs.
    let (_, host_tc_in_place) = host("tc-in-place")?;
    Ok(HostMode { seconds, plain, per_segment, plain_beside_xdp, plain_beside_tc, host_xdp, host_tc, host_tc_in_place })
}

/// experiment5-host-mode.csv: one line per row and way.
pub fn write_csv(h: &HostMode, out: &Path) -> Result<PathBuf> {
    let mut t = String::from("row,direction,streams,seconds,goodput_gbit_s\n");
    for (name, values) in h.rows() {
        for (way, v) in HostMode::WAYS.iter().zip(values) {
            let (dir, streams) = way.split_once(' ').unwrap_or((way, ""));
            let _ = writeln!(t, "\"{name}\",{dir},{streams},{},{v:.3}", h.seconds);
        }
    }
    let p = out.join("experiment5-host-mode.csv");
    std::fs::write(&p, t)?;
    Ok(p)
}
