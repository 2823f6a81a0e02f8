//! Prometheus `/metrics` over HTTP/1.1, on its own port (`--metrics-port`).

use std::sync::Arc;

use super::http::{Connections, Limits};
use crate::live::Live;

/// How many `/metrics` connections may be open at once; more wait in the listen backlog.
pub const METRICS_MAX_CONNECTIONS: usize = 16;

/// How long open `/metrics` connections may take to finish after the daemon stops serving.
const METRICS_LINGER: std::time::Duration = std::time::Duration::from_millis(200);

/// Serves Prometheus text on `http://host:port/metrics` until `shutdown` completes.
///
/// HTTP/1.1 only, at most [`METRICS_MAX_CONNECTIONS`] connections at once. A connection must
/// send a complete request head (request line and headers) within `header_timeout` of
/// connecting, or of the previous response on a kept-alive connection, or it is closed: a
/// client that sends part of a request and stops holds its connection only that long.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    live: Arc<Live>,
    header_timeout: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let live = live.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    live.stats().prometheus_text(),
                )
            }
        }),
    );
    let limits = Limits {
        max_connections: METRICS_MAX_CONNECTIONS,
        header_timeout,
    };
    let mut connections = Connections::default();
    tokio::select! {
        () = connections.accept(&listener, app, limits, "/metrics") => {}
        () = shutdown => {}
    }
    connections.close(METRICS_LINGER).await;
    Ok(())
}
