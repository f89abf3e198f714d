//! Issue 18's floors, each read off this one run: host mode against plain
//! TCP on one link, the native fast path against plain routing through the
//! same gateway, the translator's own time per packet, and the flow state
//! a connection costs. The summary shows every floor with what this run
//! measured and whether it holds; a floor whose measurement is missing
//! says so instead of passing.

use std::mem::size_of;

use xlate_common::flow::{FlowState, TupleEntry};
use xlate_common::maps::FlowKey;

use super::connections::{Closer, Load};
use super::host_mode::HostMode;
use super::{bulk, DataPath, Results, Settings};
use crate::transfer::Direction;

/// Which way a floor bounds its measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    AtLeast,
    AtMost,
}

/// One floor and this run's measurement of it.
#[derive(Debug, Clone)]
pub struct Floor {
    /// Which of the items it belongs to (1 to 3).
    pub item: u32,
    pub what: String,
    pub measured: Option<f64>,
    pub bound: Bound,
    pub limit: f64,
    /// How the numbers read: "x" (a ratio), "ns", "B".
    pub unit: &'static str,
}

impl Floor {
    /// Whether it holds; `None` when this run did not measure it.
    pub fn met(&self) -> Option<bool> {
        let v = self.measured.filter(|v| v.is_finite())?;
        Some(match self.bound {
            Bound::AtLeast => v >= self.limit,
            Bound::AtMost => v <= self.limit,
        })
    }

    pub fn limit_text(&self) -> String {
        let op = if self.bound == Bound::AtLeast { ">=" } else { "<=" };
        format!("{op} {}{}", trim(self.limit), self.unit)
    }

    pub fn measured_text(&self) -> String {
        let digits = match self.unit {
            "x" => 3,
            " ns" => 1,
            _ => 0,
        };
        self.measured.filter(|v| v.is_finite()).map_or("not measured".into(), |v| format!("{v:.digits$}{}", self.unit))
    }
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Bytes of map memory one connection holds at the gateway, keys and
/// values: its `FLOWS` slot (an array element, laid out in multiples of
/// 8 bytes) and its `FLOW_TUPLES` key and entry.
pub fn flow_state_bytes() -> usize {
    size_of::<FlowState>().next_multiple_of(8) + size_of::<FlowKey>() + size_of::<TupleEntry>()
}

/// Every floor of issue 18 that a run of the experiments measures.
pub fn evaluate(r: &Results, s: &Settings) -> Vec<Floor> {
    let mut out = Vec::new();
    let floor = |item, what: String, measured, bound, limit, unit| Floor { item, what, measured, bound, limit, unit };

    // 1. Host mode on one link, receiving at XDP.
    let hm: Option<&HostMode> = r.host_mode.as_ref();
    // (false: against the per-segment bound; true: default offloads)
    for (name, default_offloads, limit) in
        [("plain TCP cut into wire-size segments", false, 0.8), ("plain TCP with default offloads", true, 0.3)]
    {
        for (i, way) in HostMode::WAYS.iter().enumerate() {
            let reference = |h: &HostMode| if default_offloads { h.plain[i] } else { h.per_segment[i] };
            out.push(floor(
                1,
                format!("host mode / {name}, {way}"),
                hm.map(|h| h.host_xdp[i] / reference(h)),
                Bound::AtLeast,
                limit,
                "x",
            ));
        }
    }

    // 2. The native fast path against plain routing, the same XDP attach.
    let (fp, rt) = (DataPath::FastNative, DataPath::Routing);
    let mut vs_routing = |what: String, measure: &dyn Fn(DataPath) -> Option<f64>, bound, limit| {
        let v = measure(fp).zip(measure(rt)).map(|(a, b)| a / b);
        out.push(floor(2, format!("translator / routing, {what}"), v, bound, limit, "x"));
    };
    let (many, n) = (s.max_transfers.min(4), s.max_transfers);
    for dir in [Direction::Down, Direction::Up] {
        for k in [1, many] {
            vs_routing(
                format!("goodput, {}, {k} transfer(s)", dir.name()),
                &|p| bulk::goodput(&r.bulk, p, dir, k).map(|v| v.0),
                Bound::AtLeast,
                0.9,
            );
        }
    }
    for dir in [Direction::Down, Direction::Up] {
        vs_routing(
            format!("CPU s per GB (machine), {}, {n} transfers", dir.name()),
            &|p| bulk::cost(&r.bulk, p, dir, n).map(|c| c.machine),
            Bound::AtMost,
            1.1,
        );
    }
    for c in [Closer::Server, Closer::Client] {
        vs_routing(
            format!("short connections per s at saturation, {} closes first", c.name()),
            &|p| {
                let run = r.connections.iter().find(|x| x.path == p && x.closer == c && x.load == Load::Saturation);
                run.map(|x| x.per_second())
            },
            Bound::AtLeast,
            0.85,
        );
    }

    // 3. Per packet, above XDP_PASS in the same run; and the flow state.
    let above = |prefix: &str| r.per_packet.iter().find(|x| x.packet.starts_with(prefix)).map(|x| x.difference_ns());
    for (prefix, limit) in [("data TCP->SAL", 60.0), ("data SAL->TCP", 60.0), ("SYN, new flow (", 400.0)] {
        let name = prefix.trim_end_matches(" (");
        out.push(floor(3, format!("{name}, ns above XDP_PASS"), above(prefix), Bound::AtMost, limit, " ns"));
    }
    out.push(floor(
        3,
        "flow state per connection at the gateway (FLOWS slot + FLOW_TUPLES key and entry)".into(),
        Some(flow_state_bytes() as f64),
        Bound::AtMost,
        128.0,
        " B",
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_holds_only_on_its_side_and_a_missing_measurement_never_holds() {
        let f = |measured, bound| Floor { item: 1, what: "x".into(), measured, bound, limit: 0.8, unit: "x" };
        assert_eq!(f(Some(0.8), Bound::AtLeast).met(), Some(true));
        assert_eq!(f(Some(0.79), Bound::AtLeast).met(), Some(false));
        assert_eq!(f(Some(0.81), Bound::AtMost).met(), Some(false));
        assert_eq!(f(Some(f64::NAN), Bound::AtLeast).met(), None);
        assert_eq!(f(None, Bound::AtMost).met(), None);
        assert_eq!(f(None, Bound::AtMost).measured_text(), "not measured");
    }

    #[test]
    fn an_empty_run_lists_every_floor_unmeasured_but_the_static_one() {
        let s = Settings::quick(std::env::temp_dir());
        let floors = evaluate(&Results::default(), &s);
        // 8 host-mode ratios, 4 goodput, 2 CPU, 2 connections, 3 per packet, 1 state.
        assert_eq!(floors.len(), 20);
        assert!(floors[..19].iter().all(|f| f.met().is_none()), "{floors:?}");
        assert_eq!(floors[19].met(), Some(flow_state_bytes() <= 128));
    }
}
