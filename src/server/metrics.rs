//! Prometheus `/metrics` over HTTP/1.1, on its own port (`--metrics-port`).

use std::sync::Arc;

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
    use tower::ServiceExt as _;

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
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_MAX_CONNECTIONS));
    let closing = tokio_util::sync::CancellationToken::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut at_limit = false;
    tokio::pin!(shutdown);
    loop {
        let accept = async {
            let permit = match slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if !at_limit {
                        at_limit = true;
                        tracing::warn!(
                            max_connections = METRICS_MAX_CONNECTIONS,
                            "/metrics connection limit reached: new connections wait until one closes"
                        );
                    }
                    slots.clone().acquire_owned().await?
                }
            };
            let (io, _) = listener.accept().await?;
            at_limit = false;
            Ok::<_, anyhow::Error>((io, permit))
        };
        let (io, permit) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next() => continue,
            accepted = accept => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("/metrics: accept failed: {e}");
                    // Out of descriptors, say: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: axum::http::Request<_>| {
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
        let closing = closing.clone();
        connections.spawn(async move {
            let _permit = permit;
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!("/metrics connection closed: {e}");
            }
        });
    }
    closing.cancel();
    let _ = tokio::time::timeout(METRICS_LINGER, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}
