//! `invoker status` and `invoker reload`: clients of the admin service on its Unix socket
//! (`server::admin`).

use std::path::Path;

use anyhow::Context as _;
use tonic::transport::Endpoint;

use super::Exit;
use crate::cli::{ReloadArgs, StatusArgs};
use crate::proto::admin::admin_client::AdminClient;
use crate::proto::admin::{LoadRequest, StatusRequest};

async fn connect(socket: &Path) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    let socket = socket.to_path_buf();
    let shown = socket.display().to_string();
    // The URI is required by the API but unused: every connection goes to the socket.
    let channel = Endpoint::try_from("http://invoker.admin")?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("cannot reach the invoker's admin socket {shown}"))?;
    Ok(AdminClient::new(channel))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `invoker status`: prints the status as JSON. Exits with the gRPC code on failure.
pub fn status(args: StatusArgs) -> anyhow::Result<Exit> {
    runtime()?.block_on(async {
        let mut client = connect(&args.admin_socket).await?;
        let reply = match client.status(StatusRequest {}).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                eprintln!("invoker: {}", status.message());
                return Ok(Exit::from(status.code()));
            }
        };
        let errors: Vec<_> = reply
            .recent_errors
            .iter()
            .map(|e| serde_json::json!({"unix_millis": e.unix_millis, "message": e.message}))
            .collect();
        let json = serde_json::json!({
            "state": reply.state,
            "function": reply.function,
            "library": reply.library,
            "sdk_version": reply.sdk_version,
            "library_version": reply.library_version,
            "generation": reply.generation,
            "instance_id": reply.instance_id,
            "messages_received": reply.messages_received,
            "messages_sent": reply.messages_sent,
            "user_errors": reply.user_errors,
            "panics": reply.panics,
            "calls": reply.calls,
            "calls_in_flight": reply.calls_in_flight,
            "calls_running": reply.calls_running,
            "calls_queued": reply.calls_queued,
            "calls_rejected": reply.calls_rejected,
            "max_concurrency": reply.max_concurrency,
            "max_queued": reply.max_queued,
            "average_call_millis": reply.average_call_millis,
            "recent_errors": errors,
            "custom_metrics": reply.custom_metrics,
            "uptime_seconds": reply.uptime_seconds,
            "crashes": reply.crashes,
            "isolation": reply.isolation,
        });
        let mut json = json;
        if reply.isolation == "process" {
            json["workers"] = serde_json::json!({
                "configured": reply.workers,
                "up": reply.workers_up,
                "restarts": reply.worker_restarts,
                "crashes": reply.worker_crashes,
                "last_crash": (!reply.last_crash.is_empty()).then_some(&reply.last_crash),
                "last_crash_unix_millis": (reply.last_crash_unix_millis > 0)
                    .then_some(reply.last_crash_unix_millis),
            });
        }
        println!("{}", serde_json::to_string_pretty(&json)?);
        Ok(Exit::SUCCESS)
    })
}

/// `invoker reload`: replaces the function; prints what serves now. Exits with the gRPC code.
pub fn reload(args: ReloadArgs) -> anyhow::Result<Exit> {
    runtime()?.block_on(async {
        let mut client = connect(&args.admin_socket).await?;
        let library = match &args.library {
            // The daemon may run elsewhere in the file system: send an absolute path.
            Some(path) => std::path::absolute(path)?.display().to_string(),
            None => String::new(),
        };
        let request = LoadRequest {
            library,
            handler: args.handler.unwrap_or_default(),
        };
        match client.load(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                println!(
                    "serving '{}' from {} (generation {})",
                    reply.function, reply.library, reply.generation
                );
                Ok(Exit::SUCCESS)
            }
            Err(status) => {
                eprintln!("invoker: {}", status.message());
                Ok(Exit::from(status.code()))
            }
        }
    })
}
