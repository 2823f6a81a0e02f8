//! The HTTP/1.1 fronts' connections (`/metrics`, OpenWhisk, StateFun): an axum router served
//! on hyper's connection (for its header read timeout), at most `max_connections` open at
//! once (more wait in the listen backlog, logged once per episode), each shut down gracefully
//! when the front closes.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The bounds on one front's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// How long a connection has to send a request head, after it opens or after the previous
    /// response.
    pub header_timeout: Duration,
}

/// The connections a front has accepted.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    open: tokio::task::JoinSet<()>,
    closing: CancellationToken,
}

impl Connections {
    /// Accepts connections on `listener` and serves `app` on each, until the future is
    /// dropped (the caller selects it against its shutdown). `name` names the front in logs.
    pub(crate) async fn accept(
        &mut self,
        listener: &TcpListener,
        app: axum::Router,
        limits: Limits,
        name: &'static str,
    ) {
        use tower::ServiceExt as _;

        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        let mut at_limit = false;
        loop {
            let accepted = async {
                let permit = match slots.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        if !at_limit {
                            at_limit = true;
                            tracing::warn!(
                                max_connections = limits.max_connections,
                                "{name} connection limit reached: new connections wait until one closes"
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
                Some(_) = self.open.join_next() => continue,
                accepted = accepted => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!("{name}: accept failed: {e}");
                        // Out of descriptors, say: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let app = app.clone();
            let service = hyper::service::service_fn(move |request: axum::http::Request<_>| {
                app.clone().oneshot(request.map(axum::body::Body::new))
            });
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
            let closing = self.closing.clone();
            self.open.spawn(async move {
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
                    tracing::debug!("{name} connection closed: {e}");
                }
            });
        }
    }

    /// Asks every open connection to finish its request and close, and waits for them at
    /// most `linger`.
    pub(crate) async fn close(mut self, linger: Duration) {
        self.closing.cancel();
        let _ = tokio::time::timeout(linger, async {
            while self.open.join_next().await.is_some() {}
        })
        .await;
    }
}
