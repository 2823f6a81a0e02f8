//! `invoker openwhisk`: the OpenWhisk action runtime (SPEC §9). Optionally load the function
//! `FUNCTION_URI` names first, then bind the port and serve `/init` and `/run` until SIGTERM,
//! drain as `serve` does, and run the shutdown hook of every function loaded.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Exit;
use super::serve::{BLOCKED_CALL_WAIT, instance_id, watch_for_termination};
use crate::cli::OpenWhiskArgs;
use crate::engine::pool::{Limits as PoolLimits, Pool};
use crate::function::uri::FunctionUri;
use crate::live::Live;
use crate::server::drain::Calls;
use crate::server::listener::bind_tcp;
use crate::server::openwhisk::{Runtime, Settings, serve};
use crate::stats::Stats;

/// `invoker openwhisk`.
pub fn openwhisk(args: OpenWhiskArgs) -> anyhow::Result<Exit> {
    // Before any library is loaded: a crash in its initialisers or init hook is named too.
    super::install_crash_handler();
    let config = args.config.load()?;
    let stats = Arc::new(Stats::new());
    let limits = &args.limits;
    let pool = Arc::new(Pool::new(PoolLimits::from_args(limits), stats.clone()));
    let instance_id = instance_id();
    let isolation = super::worker_options(&args.isolation);
    let tokio = super::serving_runtime()?;
    let preloaded = match args.function_uri.as_deref().filter(|u| !u.is_empty()) {
        None => None,
        Some(uri) => {
            let uri = FunctionUri::parse(uri)?;
            let live = Live::start_isolated(
                &uri.path,
                uri.handler.as_deref(),
                &instance_id,
                config.clone(),
                stats.clone(),
                pool.clone(),
                isolation.clone(),
            )?;
            let current = live.current();
            tracing::info!(
                function = %current.function,
                library = %current.library.display(),
                sdk = %current.sdk_version,
                "function loaded"
            );
            Some(live)
        }
    };
    let settings = Settings {
        debug: args.debug,
        grace: args.grace_period,
        max_connections: limits.max_connections as usize,
        header_timeout: limits.idle_timeout,
        instance_id,
        config,
        stats,
        pool,
        isolation,
    };
    let calls = Arc::new(Calls::with_max(limits.max_calls as usize));
    let runtime = Arc::new(Runtime::new(settings, calls, preloaded));
    let terminate = CancellationToken::new();
    watch_for_termination(terminate.clone(), args.grace_period)?;
    let served = tokio.block_on(async {
        let listener = bind_tcp(&args.host, args.port, "", "--port").await?;
        serve(listener, runtime.clone(), terminate.cancelled_owned()).await
    });
    // As `serve`: a call still blocked in the function after the grace period is left behind.
    tokio.shutdown_timeout(BLOCKED_CALL_WAIT);
    runtime.shutdown();
    crate::function::flush_panic_log();
    served.map(|()| Exit::SUCCESS)
}
