//! Flink StateFun's remote function endpoint (`invoker statefun`, SPEC §10): `POST /statefun`
//! with a `ToFunction` body answers a `FromFunction`, over HTTP/1.1 (an axum router on
//! hyper's connection, as `/metrics` is served).
//!
//! A batch is the invocations of one address. Each runs as one call of the function through
//! the engine (`Engine::invoke_stateful`, the request/reply path), with a StateFun context
//! whose [`Batch`] holds the address's persisted values and collects what the invocations
//! send; the next invocation sees the values the previous left. Nothing applies unless every
//! invocation succeeds: an error or a panic answers 500 with its text and no mutation, and the
//! cluster retries the batch.
//!
//! Bounds: at most `max_connections` connections (more wait in the backlog); a request head
//! within `header_timeout` (which also bounds an idle kept-alive connection); a body of at
//! most `max_request_bytes`, read within `body_timeout`; at most `max_batches` batches in
//! flight (503 past it); what one batch stores and sends at most `max_request_bytes` too
//! (the function's next write fails the batch); the drain on SIGTERM as `invoker serve`'s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;

use super::drain::Calls;
use super::http::{Connections, Limits};
use crate::engine::{CallMeta, Engine};
use crate::function::{
    Address, Batch, Cell, Expiration, InputMessage, Sent, Stateful, StatefulInfo, TypedValue,
};
use crate::proto::statefun::reqreply::{
    self as wire, FromFunction, ToFunction,
    from_function::{
        self, DelayedInvocation, EgressMessage, ExpirationSpec, IncompleteInvocationContext,
        InvocationResponse, PersistedValueMutation, PersistedValueSpec,
        expiration_spec::ExpireMode, persisted_value_mutation::MutationType,
    },
    to_function,
};

pub mod local;

/// The path the cluster posts to (any path below it too, for a `urlPathTemplate` with
/// `{function.name}`).
pub const PATH: &str = "/statefun";

/// The only Content-Type a StateFun cluster accepts in a response.
pub const CONTENT_TYPE: &str = "application/octet-stream";

/// The endpoint's settings and bounds.
#[derive(Debug, Clone)]
pub struct StatefunOptions {
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long a connection has to send a request head (and may idle between requests).
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive.
    pub body_timeout: Duration,
    /// The largest request body, and the most one batch may store and send.
    pub max_request_bytes: usize,
    /// How long batches in flight may run on after SIGTERM.
    pub grace: Duration,
}

/// Every stateful function of the library, by StateFun type.
#[derive(Debug, Default)]
pub struct Functions {
    by_type: BTreeMap<String, (Engine, Arc<StatefulInfo>)>,
}

impl Functions {
    /// Adds `engine`'s function, which must be stateful; false (and nothing added) if not.
    pub fn add(&mut self, engine: Engine) -> bool {
        let Some(info) = engine.function().info().stateful.clone() else {
            return false;
        };
        self.by_type
            .insert(info.function_type.clone(), (engine, Arc::new(info)));
        true
    }

    /// The function types served.
    pub fn types(&self) -> Vec<&str> {
        self.by_type.keys().map(String::as_str).collect()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }
}

/// Serves the endpoint on `listener` until `signal`, then drains: new batches get 503, those
/// in flight run on for the grace period, and what is left then ends with 503.
pub async fn serve_statefun(
    listener: tokio::net::TcpListener,
    functions: Arc<Functions>,
    calls: Arc<Calls>,
    options: StatefunOptions,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = Arc::new(Endpoint {
        functions,
        calls: calls.clone(),
        options: options.clone(),
    });
    let handler = {
        let state = state.clone();
        move |request: axum::extract::Request| {
            let state = state.clone();
            async move { state.handle(request).await }
        }
    };
    let app = axum::Router::new()
        .route(PATH, axum::routing::post(handler.clone()))
        .route(&format!("{PATH}/{{*rest}}"), axum::routing::post(handler));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, functions = ?state.functions.types(), "serving StateFun functions");
    println!("listening on {addr}");
    let limits = Limits {
        max_connections: options.max_connections,
        header_timeout: options.header_timeout,
    };
    let mut connections = Connections::default();
    tokio::select! {
        () = connections.accept(&listener, app, limits, "StateFun") => {}
        () = signal => {}
    }
    // The drain: the listener is closed (dropped below), new batches on open connections get
    // 503, batches in flight finish or are ended when the grace period is over.
    drop(listener);
    tracing::info!(
        in_flight = calls.in_flight(),
        "shutting down: draining batches in flight"
    );
    calls.start_draining();
    calls.run_out(options.grace).await;
    tracing::info!("drained");
    connections.close(CONNECTION_LINGER).await;
    Ok(())
}

/// How long connections may take to close after the drain.
const CONNECTION_LINGER: Duration = Duration::from_millis(500);

/// What every request shares.
struct Endpoint {
    functions: Arc<Functions>,
    calls: Arc<Calls>,
    options: StatefunOptions,
}

/// A response with a text body (every error's).
fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

/// A `FromFunction` response.
fn from_function(response: from_function::Response) -> Response {
    let body = FromFunction {
        response: Some(response),
    }
    .encode_to_vec();
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// `namespace/name` from a StateFun address or egress.
fn typename(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// A StateFun address on the wire from ours (the type split at its last `/`).
fn wire_address(address: Address) -> wire::Address {
    let (namespace, kind) = address
        .function_type
        .rsplit_once('/')
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .unwrap_or_default();
    wire::Address {
        namespace,
        r#type: kind,
        id: address.id,
    }
}

fn our_address(address: wire::Address) -> Address {
    Address {
        function_type: typename(&address.namespace, &address.r#type),
        id: address.id,
    }
}

fn wire_value(value: TypedValue) -> wire::TypedValue {
    wire::TypedValue {
        typename: value.typename,
        has_value: true,
        value: value.value,
    }
}

fn expiration_spec(expiration: Expiration) -> ExpirationSpec {
    let (mode, millis) = match expiration {
        Expiration::Never => (ExpireMode::None, 0),
        Expiration::AfterWrite(ms) => (ExpireMode::AfterWrite, ms),
        Expiration::AfterInvoke(ms) => (ExpireMode::AfterInvoke, ms),
    };
    ExpirationSpec {
        mode: mode as i32,
        expire_after_millis: i64::try_from(millis).unwrap_or(i64::MAX),
    }
}

/// The bytes of a value as the cluster sent it: `None` when absent in either form (no
/// `TypedValue`, or `has_value` false).
fn present(value: Option<wire::TypedValue>) -> Option<Bytes> {
    value.filter(|v| v.has_value).map(|v| v.value)
}

impl Endpoint {
    async fn handle(self: Arc<Self>, request: axum::extract::Request) -> Response {
        let guard = match self.calls.enter() {
            Ok(guard) => guard,
            Err(status) => return text(StatusCode::SERVICE_UNAVAILABLE, status.message()),
        };
        let limit = self.options.max_request_bytes;
        let body = request.into_body();
        let read =
            tokio::time::timeout(self.options.body_timeout, axum::body::to_bytes(body, limit));
        let body = match read.await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                return if too_large {
                    text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "Invoker: the request is larger than {limit} bytes (--max-request-bytes)"
                        ),
                    )
                } else {
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("Invoker: cannot read the request: {e}"),
                    )
                };
            }
            Err(_) => {
                return text(
                    StatusCode::REQUEST_TIMEOUT,
                    "Invoker: the request body did not arrive in time",
                );
            }
        };
        let batch = match ToFunction::decode(body) {
            Ok(ToFunction {
                request: Some(to_function::Request::Invocation(batch)),
            }) => batch,
            Ok(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "Invoker: the ToFunction holds no invocation batch",
                );
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Invoker: the body is not a ToFunction: {e}"),
                );
            }
        };
        let Some(target) = batch.target else {
            return text(
                StatusCode::BAD_REQUEST,
                "Invoker: the invocation batch has no target address",
            );
        };
        let target = our_address(target);
        let Some((engine, info)) = self.functions.by_type.get(&target.function_type) else {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "Invoker: no function of type {} here (this library has: {})",
                    target.function_type,
                    self.functions.types().join(", ")
                ),
            );
        };
        // The declared values, with the cluster's values for them; those it did not send are
        // missing, and the batch does not run.
        let mut sent_state: BTreeMap<String, Option<Bytes>> = batch
            .state
            .into_iter()
            .map(|v| (v.state_name, present(v.state_value)))
            .collect();
        let missing: Vec<PersistedValueSpec> = info
            .values
            .iter()
            .filter(|spec| !sent_state.contains_key(&spec.name))
            .map(|spec| PersistedValueSpec {
                state_name: spec.name.clone(),
                expiration_spec: Some(expiration_spec(spec.expiration)),
                type_typename: spec.typename.clone(),
            })
            .collect();
        if !missing.is_empty() {
            return from_function(from_function::Response::IncompleteInvocationContext(
                IncompleteInvocationContext {
                    missing_values: missing,
                },
            ));
        }
        let cells = info
            .values
            .iter()
            .map(|spec| Cell {
                name: spec.name.clone(),
                value: sent_state.remove(&spec.name).flatten(),
                changed: false,
            })
            .collect();
        let shared = Arc::new(Mutex::new(Batch {
            cells,
            sent: Vec::new(),
            bytes: 0,
            limit,
        }));
        // Check every invocation before running any: a malformed batch runs nothing.
        let mut invocations = Vec::with_capacity(batch.invocations.len());
        for invocation in batch.invocations {
            let Some(argument) = invocation.argument else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "Invoker: an invocation has no argument",
                );
            };
            let Some(index) = info
                .message_types
                .iter()
                .position(|t| *t == argument.typename)
            else {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "Invoker: a message of type {} for {}, which takes {}",
                        argument.typename,
                        info.function_type,
                        info.message_types.join(", ")
                    ),
                );
            };
            let payload = if argument.has_value {
                argument.value
            } else {
                Bytes::new()
            };
            let message = InputMessage {
                payload,
                headers: Vec::new(),
                media_type: index,
            };
            invocations.push((message, invocation.caller.map(our_address)));
        }
        let meta = CallMeta::new(None);
        let run = {
            let engine = engine.clone();
            let shared = shared.clone();
            let meta = meta.clone();
            async move {
                for (message, caller) in invocations {
                    let stateful = Stateful {
                        self_address: target.clone(),
                        caller,
                        batch: shared.clone(),
                    };
                    engine
                        .invoke_stateful(meta.clone(), message, stateful)
                        .await?;
                }
                Ok(())
            }
        };
        // Counted in flight, ended (and the function's side cancelled) if the drain's grace
        // runs out: the same wrapper as a gRPC call's.
        let stats = engine.stats().clone();
        let mut outcome = guard.wrap(futures_util::stream::once(run), &meta, stats);
        match outcome.next().await {
            Some(Ok(())) => {}
            Some(Err(status)) => {
                // A worker process that crashed (`--isolation process`) failed the function:
                // 500, as an error or panic; 503 is the endpoint's own (drain, overload).
                let crashed = status.message().starts_with("Invoker: Function Crashed");
                let code = match status.code() {
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted if !crashed => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                return text(code, status.message());
            }
            None => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Invoker: the batch ended without an outcome",
                );
            }
        }
        drop(outcome);
        let batch = std::mem::take(&mut *crate::sync::lock(&shared));
        from_function(from_function::Response::InvocationResult(response(
            batch, info,
        )))
    }
}

/// The `InvocationResponse` of a batch that succeeded: one mutation per changed value (in
/// declaration order), then what it sent, each kind in the order it was sent.
fn response(batch: Batch, info: &StatefulInfo) -> InvocationResponse {
    let mut response = InvocationResponse::default();
    for (cell, spec) in batch.cells.into_iter().zip(&info.values) {
        if !cell.changed {
            continue;
        }
        let mutation = match cell.value {
            Some(value) => PersistedValueMutation {
                mutation_type: MutationType::Modify as i32,
                state_name: cell.name,
                state_value: Some(wire::TypedValue {
                    typename: spec.typename.clone(),
                    has_value: true,
                    value,
                }),
            },
            None => PersistedValueMutation {
                mutation_type: MutationType::Delete as i32,
                state_name: cell.name,
                state_value: None,
            },
        };
        response.state_mutations.push(mutation);
    }
    for sent in batch.sent {
        match sent {
            Sent::Message { target, value } => {
                response.outgoing_messages.push(from_function::Invocation {
                    target: Some(wire_address(target)),
                    argument: Some(wire_value(value)),
                })
            }
            Sent::Delayed {
                target,
                value,
                delay_millis,
                cancellation_token,
            } => response.delayed_invocations.push(DelayedInvocation {
                is_cancellation_request: false,
                cancellation_token,
                delay_in_ms: i64::try_from(delay_millis).unwrap_or(i64::MAX),
                target: Some(wire_address(target)),
                argument: Some(wire_value(value)),
            }),
            Sent::Cancel { cancellation_token } => {
                response.delayed_invocations.push(DelayedInvocation {
                    is_cancellation_request: true,
                    cancellation_token,
                    ..DelayedInvocation::default()
                })
            }
            Sent::Egress { egress, value } => {
                let (namespace, kind) = egress
                    .rsplit_once('/')
                    .map(|(n, t)| (n.to_owned(), t.to_owned()))
                    .unwrap_or_default();
                response.outgoing_egresses.push(EgressMessage {
                    egress_namespace: namespace,
                    egress_type: kind,
                    argument: Some(wire_value(value)),
                })
            }
        }
    }
    response
}
