//! Starting the daemon: load the function first, then bind the port (an open port means a
//! loaded function), then serve.

use std::collections::HashMap;

use anyhow::Context as _;

use crate::cli::ServeArgs;
use crate::engine::Engine;
use crate::function::Library;
use crate::function::uri::FunctionUri;
use crate::server::{ServeOptions, serve as serve_grpc};

/// `invoker serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let uri = FunctionUri::parse(&args.function_uri)?;
    let library = Library::load(&uri.path)?;
    let function = library.function(uri.handler.as_deref())?;
    tracing::info!(
        function = %function.info().name,
        library = %library.path().display(),
        sdk = library.sdk_version(),
        "function loaded"
    );
    let engine = Engine::new(function, instance_id(), HashMap::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let options = ServeOptions {
        host: args.host,
        port: args.port,
        grace: args.grace_period,
    };
    runtime.block_on(serve_grpc(options, engine))
}

/// This instance's id: the pod name when there is one, else host name and process id.
fn instance_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .map_or_else(
            || format!("invoker-{}", std::process::id()),
            |h| format!("{h}-{}", std::process::id()),
        )
}
