//! Prometheus metrics (`--metrics ADDR:PORT`): the counters and the number
//! of live flows, read from the pinned maps on every scrape and encoded by
//! `prometheus-client` (OpenMetrics text) at `/metrics`, served by
//! `tiny_http` on a thread of its own.

use std::net::SocketAddr;

use anyhow::{anyhow, Result};
use aya::maps::{MapData, PerCpuArray};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use xlate_common::flow::names;

use crate::agent::flow_table::FlowTable;
use crate::agent::maps::{open_pinned, read_counters, Kind};

/// Reads an agent's maps at scrape time.
#[derive(Debug)]
struct AgentCollector {
    kind: Kind,
    iface: String,
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let read = || -> Result<_> {
            crate::agent::flush_counts(self.kind, &self.iface);
            let counters: PerCpuArray<MapData, u64> =
                open_pinned(self.kind, &self.iface, names::COUNTERS)?.try_into()?;
            let flows = FlowTable::new(open_pinned(self.kind, &self.iface, names::FLOWS)?)?;
            Ok((read_counters(&counters), flows.len()))
        };
        // A scrape that cannot read the maps fails (HTTP 500) rather than
        // reporting zeros.
        let (counters, flows) = read().map_err(|_| std::fmt::Error)?;
        let mut events = encoder.encode_descriptor(
            "xlate_events",
            "Packets translated, passed and dropped, and control-plane events, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (c, v) in counters {
            ConstCounter::new(v).encode(events.encode_family(&[("reason", c.name())])?)?;
        }
        let live = encoder.encode_descriptor("xlate_flows", "Live SAL flows.", None, MetricType::Gauge)?;
        ConstGauge::new(flows as i64).encode(live)
    }
}

/// The registry of one agent: its counters and flows, labelled with the
/// mode and interface.
fn registry(kind: Kind, iface: &str) -> Registry {
    let mode = match kind {
        Kind::Host => "host",
        Kind::Gateway => "translator",
    };
    let labels = [("mode".into(), mode.into()), ("iface".into(), iface.to_string().into())];
    let mut r = Registry::with_labels(labels.into_iter());
    r.register_collector(Box::new(AgentCollector { kind, iface: iface.to_string() }));
    r
}

/// Renders the metrics page.
pub fn render(kind: Kind, iface: &str) -> Result<String> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry(kind, iface))
        .map_err(|_| anyhow!("cannot read the maps of the agent on {iface}"))?;
    Ok(out)
}

/// Serves `/metrics` on `addr` until the process ends. Binding errors are
/// reported here, before the agent says it runs.
pub fn serve(addr: SocketAddr, kind: Kind, iface: String) -> Result<()> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow!("binding the metrics address {addr}: {e}"))?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        let text_type = tiny_http::Header::from_bytes(
            &b"Content-Type"[..],
            &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
        )
        .expect("valid header");
        for req in server.incoming_requests() {
            let resp = match (req.url(), render(kind, &iface)) {
                ("/metrics", Ok(body)) => tiny_http::Response::from_string(body).with_header(text_type.clone()),
                ("/metrics", Err(e)) => tiny_http::Response::from_string(format!("{e:#}\n")).with_status_code(500),
                _ => tiny_http::Response::from_string("see /metrics\n").with_status_code(404),
            };
            let _ = req.respond(resp);
        }
    })?;
    Ok(())
}
