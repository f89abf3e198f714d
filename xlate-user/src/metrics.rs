//! Prometheus metrics (`--metrics ADDR:PORT`): the counters and the number
//! of live flows, read from the pinned maps, in the text exposition format
//! at `/metrics`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xlate_common::flow::{names, FlowState};

use crate::agent::maps::{open_pinned, read_counters, Kind};

/// Renders the metrics page.
pub fn render(kind: Kind, iface: &str) -> Result<String> {
    let counters: PerCpuArray<MapData, u64> = open_pinned(kind, iface, names::COUNTERS)?.try_into()?;
    let flows: HashMap<MapData, u32, FlowState> = open_pinned(kind, iface, names::FLOWS)?.try_into()?;
    let mode = match kind {
        Kind::Host => "host",
        Kind::Gateway => "translator",
    };
    let labels = format!("mode=\"{mode}\",iface=\"{iface}\"");
    let mut out = String::new();
    out.push_str(
        "# HELP xlate_events_total Packets translated, passed and dropped, and control-plane events, by reason.\n",
    );
    out.push_str("# TYPE xlate_events_total counter\n");
    for (c, v) in read_counters(&counters) {
        let _ = writeln!(out, "xlate_events_total{{{labels},reason=\"{}\"}} {v}", c.name());
    }
    out.push_str("# HELP xlate_flows Live SAL flows.\n# TYPE xlate_flows gauge\n");
    let _ = writeln!(out, "xlate_flows{{{labels}}} {}", flows.keys().filter(|k| k.is_ok()).count());
    Ok(out)
}

/// Serves `/metrics` until the runtime stops.
pub async fn serve(addr: SocketAddr, kind: Kind, iface: String) -> Result<()> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the metrics address {addr}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let mut req = [0u8; 1024];
            let n = conn.read(&mut req).await.unwrap_or(0);
            let path = String::from_utf8_lossy(&req[..n]).split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, body) = match (path.as_str(), render(kind, &iface)) {
                ("/metrics", Ok(b)) => ("200 OK", b),
                ("/metrics", Err(e)) => ("500 Internal Server Error", format!("{e:#}\n")),
                _ => ("404 Not Found", "see /metrics\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        }
    });
    Ok(())
}
