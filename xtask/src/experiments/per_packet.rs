//! Experiment 4: nanoseconds per packet of the translator's XDP program
//! beside a program that only returns XDP_PASS and one that swaps MACs and
//! returns XDP_TX, all on the same frames in the same run
//! (`xlate-user bench-xdp`, BPF_PROG_TEST_RUN): the translator's own cost
//! is its time minus XDP_PASS's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

/// One kind of packet.
#[derive(Debug, Clone)]
pub struct PacketCost {
    pub packet: String,
    pub translator_ns: f64,
    pub pass_ns: f64,
    pub mac_swap_ns: f64,
}

impl PacketCost {
    pub fn difference_ns(&self) -> f64 {
        self.translator_ns - self.pass_ns
    }
}

/// Runs `bench-xdp` with `runs` runs per packet kind.
pub fn measure(bin: &Path, runs: u32) -> Result<Vec<PacketCost>> {
    let out = Command::new(bin).args(["bench-xdp", "--runs", &runs.to_string()]).output()?;
    if !out.status.success() {
        bail!("bench-xdp failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let rows = parse(&String::from_utf8_lossy(&out.stdout));
    // The four kinds of packet every build measures first (new SYN,
    // retransmitted SYN, data both ways); newer builds add rows after them.
    if rows.len() < 4 {
        bail!("bench-xdp printed {} rows, not 4 or more:\n{}", rows.len(), String::from_utf8_lossy(&out.stdout));
    }
    Ok(rows)
}

/// The rows of `bench-xdp`'s table: a name, then four numbers
/// (translator, XDP_PASS, MAC swap, difference).
pub fn parse(text: &str) -> Vec<PacketCost> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = f.len().checked_sub(4)?;
            let v: Vec<f64> = f[n..].iter().map(|x| x.parse().ok()).collect::<Option<_>>()?;
            (n > 0).then(|| PacketCost {
                packet: f[..n].join(" "),
                translator_ns: v[0],
                pass_ns: v[1],
                mac_swap_ns: v[2],
            })
        })
        .collect()
}

/// experiment4-per-packet.csv.
pub fn write_csv(rows: &[PacketCost], out: &Path) -> Result<PathBuf> {
    let mut t = String::from("packet,translator_ns,xdp_pass_ns,mac_swap_xdp_tx_ns,translator_minus_pass_ns\n");
    for r in rows {
        let _ = writeln!(
            t,
            "\"{}\",{:.0},{:.0},{:.0},{:.0}",
            r.packet,
            r.translator_ns,
            r.pass_ns,
            r.mac_swap_ns,
            r.difference_ns()
        );
    }
    let p = out.join("experiment4-per-packet.csv");
    std::fs::write(&p, t)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bench_xdp_rows_parse_and_the_header_does_not() {
        let text = "bench xdp: BPF_PROG_TEST_RUN, median of 5 runs, ns/packet; the baselines run the same frames\n\
                    packet      translator   XDP_PASS   MAC swap difference\n\
                    data TCP->SAL (1448 bytes)        300         40         50        260\n\
                    (difference: the translator minus XDP_PASS)\n";
        let rows = super::parse(text);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].packet, "data TCP->SAL (1448 bytes)");
        assert_eq!((rows[0].translator_ns, rows[0].pass_ns, rows[0].mac_swap_ns), (300.0, 40.0, 50.0));
    }
}
