//! `invoker statefun`: load the library and run its init hook, then serve every stateful
//! function in it to a Flink StateFun cluster (`server::statefun`) until SIGTERM and the
//! drain; then the shutdown hook.
//!
//! Each stateful function gets an engine of its own (the request/reply machinery, blocking
//! policy and counters), all sharing one pool of function threads and one `Stats`. There is
//! no reload: a StateFun endpoint is replaced by rolling the deployment.
//!
//! With `--isolation process` this process never loads the library: each stateful function
//! gets a set of `--workers` worker processes of its own (the first set, started on the
//! library's first stateful function, names the others in its hello), and each invocation
//! carries its batch's state to a worker and brings back what it changed and sent.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Exit;
use crate::cli::StatefunArgs;
use crate::engine::Engine;
use crate::engine::pool::{Limits, Pool};
use crate::function::uri::FunctionUri;
use crate::function::worker::{Select, Source, StartSpec, Workers, WorkersWatch};
use crate::function::{Function, Library};
use crate::server::drain::Calls;
use crate::server::listener::bind_tcp;
use crate::server::statefun::{Functions, StatefunOptions, serve_statefun};
use crate::stats::Stats;

/// Every stateful function of `library`, each with an engine of its own (sharing `pool` and
/// `stats`); empty when it has none. `invoker run` on a StateFun library uses it too.
pub(super) fn stateful_functions(
    library: &Library,
    config: Arc<std::collections::HashMap<String, String>>,
    stats: &Arc<Stats>,
    pool: &Arc<Pool>,
) -> anyhow::Result<Functions> {
    let found = library
        .handlers()
        .into_iter()
        .map(|name| library.function(Some(name)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(engines(found, config, stats, pool))
}

/// An engine for each stateful function among `found` (sharing `pool` and `stats`).
fn engines(
    found: Vec<Function>,
    config: Arc<std::collections::HashMap<String, String>>,
    stats: &Arc<Stats>,
    pool: &Arc<Pool>,
) -> Functions {
    let instance_id = super::serve::instance_id();
    let mut functions = Functions::default();
    for function in found {
        let engine = Engine::new(
            function,
            &instance_id,
            config.clone(),
            stats.clone(),
            pool.clone(),
        );
        functions.add(engine);
    }
    functions
}

/// `invoker statefun`.
pub fn statefun(args: StatefunArgs) -> anyhow::Result<Exit> {
    super::install_crash_handler();
    let uri = FunctionUri::parse(&args.function_uri)?;
    let config = args.config.load()?;
    let pairs: Vec<(String, String)> = config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let instance_id = super::serve::instance_id();
    let runtime = super::serving_runtime()?;
    // In process: the library; in worker processes: their sets, to shut down at the end.
    let mut library = None;
    let mut worker_sets: Vec<WorkersWatch> = Vec::new();
    let (sdk, functions_found): (String, Vec<Function>) =
        match super::worker_options(&args.isolation) {
            None => {
                let loaded = Library::load(&uri.path)?;
                loaded.init(&pairs).map_err(|e| {
                    anyhow::anyhow!("the init hook of {} failed: {e}", uri.path.display())
                })?;
                let found = loaded
                    .handlers()
                    .into_iter()
                    .map(|name| loaded.function(Some(name)))
                    .collect::<Result<Vec<_>, _>>()?;
                let sdk = loaded.sdk_version().to_owned();
                library = Some(loaded);
                (sdk, found)
            }
            Some(options) => {
                let start = |select: Select| {
                    let spec = StartSpec {
                        source: Source::File(uri.path.clone()),
                        select,
                        config: pairs.clone(),
                        instance_id: instance_id.clone(),
                        named: 0,
                    };
                    // A monitor per function: each set's workers are counted apart.
                    let options = crate::function::worker::WorkerOptions {
                        monitor: Default::default(),
                        ..options.clone()
                    };
                    Workers::start(spec, options).inspect(Workers::make_current)
                };
                let first = start(Select::FirstStateful)?;
                let hello = first.hello().clone();
                let mut sets = vec![first];
                for name in &hello.stateful_handlers {
                    if *name != hello.info.name {
                        sets.push(start(Select::Named(name.clone()))?);
                    }
                }
                worker_sets = sets.iter().map(Workers::watch).collect();
                tracing::info!(
                    workers = options.workers,
                    memory_limit = options.memory_limit,
                    "the stateful functions run in worker processes"
                );
                let found = sets.into_iter().map(Function::in_workers).collect();
                (hello.sdk_version, found)
            }
        };
    let stats = Arc::new(Stats::new());
    let mut limits = match args.max_concurrency {
        Some(n) => Limits::with_max_running(n as usize),
        None => Limits::default_for_this_machine(),
    };
    if let Some(queued) = args.max_queued {
        limits.max_queued = queued as usize;
    }
    let pool = Arc::new(Pool::new(limits, stats.clone()));
    let functions = engines(functions_found, Arc::new(config), &stats, &pool);
    if functions.is_empty() {
        if let Some(library) = &library {
            library.shutdown();
        }
        anyhow::bail!(
            "{} has no stateful functions (#[invoker_sdk::statefun]): serve its functions with `invoker serve`",
            uri.path.display()
        );
    }
    tracing::info!(
        library = %uri.path.display(),
        sdk = %sdk,
        functions = ?functions.types(),
        "stateful functions loaded"
    );
    let options = StatefunOptions {
        max_connections: args.max_connections as usize,
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        max_request_bytes: usize::try_from(args.max_request_bytes).unwrap_or(usize::MAX),
        grace: args.grace_period,
    };
    let terminate = CancellationToken::new();
    super::serve::watch_for_termination(terminate.clone(), args.grace_period)?;
    let functions = Arc::new(functions);
    let served = runtime.block_on(async {
        let listener = bind_tcp(&args.host, args.port, "", "--port or STATEFUN_PORT").await?;
        let calls = Arc::new(Calls::with_max(args.max_calls as usize));
        serve_statefun(
            listener,
            functions,
            calls,
            options,
            terminate.cancelled_owned(),
        )
        .await
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(300));
    if let Some(library) = &library {
        library.shutdown();
    }
    // Each worker runs the shutdown hook and exits.
    for set in &worker_sets {
        set.shutdown(std::time::Duration::from_secs(5));
    }
    crate::function::flush_panic_log();
    served.map(|()| Exit::SUCCESS)
}
