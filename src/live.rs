//! The function being served, replaceable while running (hot reload, like OpenWhisk's
//! runtime taking a new action).
//!
//! Every load reads the library file into a fresh anonymous memory file, loads that, runs its
//! init hook and only then makes it the function for new calls; calls in flight keep the engine (and so
//! the library) they started with. A library that fails to load, to offer the handler, or to
//! initialise leaves the current one serving, and the error goes back to whoever asked. No
//! library is ever unloaded (see ARCHITECTURE.md), so each reload costs the memory of one
//! library; nothing is written to disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::config;
use crate::engine::Engine;
use crate::engine::pool::Pool;
use crate::function::worker::{
    self, StartError, StartSpec, WorkerOptions, WorkerStats, Workers, WorkersWatch,
};
use crate::function::{Function, FunctionError, Library, LoadError};
use crate::stats::Stats;
use crate::sync::{lock, read, write};

/// Why a function could not be loaded (at start) or replaced (a reload); the current function
/// keeps serving after a failed reload. [`LiveError::kind`] says whose fault it is, which the
/// admin service turns into a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The library could not be loaded or does not offer the handler.
    #[error("{}", load_message(.error, *.named))]
    Load {
        /// What went wrong, typed.
        error: LoadError,
        /// Where the library and handler were named, for the advice in the message.
        named: Named,
    },
    /// The library loaded, but its init hook failed.
    #[error("the init hook of {} failed: {error}", .path.display())]
    Init {
        /// The library file.
        path: PathBuf,
        /// What the hook reported (or its panic).
        error: FunctionError,
    },
    /// With `--isolation process`: a worker process refused the library (its message is the
    /// worker's own load or init error), died loading it, or could not be started.
    #[error("{0}")]
    Worker(StartError),
}

/// Where the library (and handler) being loaded were named. The advice in an error points
/// there: `FUNCTION_URI` for the start and SIGHUP (and a reload that names no library), the
/// request (`invoker reload LIBRARY --handler NAME`) for a reload that names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// `FUNCTION_URI`.
    Uri,
    /// A reload request.
    Request,
    /// OpenWhisk's `/init`: the code came in the request, the handler as its `main`.
    Init,
}

/// Whose fault a failed load is (see [`LiveError::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The library is not one this invoker can serve: not a shared library, another ABI, an
    /// invalid descriptor, no functions, a file that is not a regular file or that the daemon
    /// may not open, or an init hook that failed. Fixing the file (and reloading) is what
    /// helps; asking again does not.
    BadLibrary,
    /// The library file does not exist.
    NotFound,
    /// The handler asked for is not in the library, or none was asked for and it has several.
    BadRequest,
    /// The invoker could not copy the library to where it loads it from (a memory file, or a
    /// private directory of `$TMPDIR`): a failure of this host, not of the library.
    Internal,
}

impl LiveError {
    /// Whose fault it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LiveError::Init { .. } => ErrorKind::BadLibrary,
            LiveError::Worker(error) => match error {
                StartError::Refused { kind: 1, .. } => ErrorKind::NotFound,
                StartError::Refused { kind: 2, .. } => ErrorKind::BadRequest,
                StartError::Refused { kind: 3, .. } | StartError::Spawn { .. } => {
                    ErrorKind::Internal
                }
                StartError::Refused { .. } | StartError::Crashed { .. } => ErrorKind::BadLibrary,
            },
            LiveError::Load { error, .. } => match error {
                LoadError::Missing { .. } => ErrorKind::NotFound,
                LoadError::HandlerNeeded { .. } | LoadError::UnknownHandler { .. } => {
                    ErrorKind::BadRequest
                }
                LoadError::CopyFailed { .. } => ErrorKind::Internal,
                LoadError::Unreadable { .. }
                | LoadError::NotALibrary { .. }
                | LoadError::LoadFailed { .. }
                | LoadError::NoRootSymbol { .. }
                | LoadError::AbiMismatch { .. }
                | LoadError::Invalid { .. }
                | LoadError::NoFunctions { .. } => ErrorKind::BadLibrary,
            },
        }
    }
}

/// The message of a load error: [`LoadError`]'s own, whose advice names `FUNCTION_URI`,
/// unless the library was named by a reload request, where the advice names the request.
fn load_message(error: &LoadError, named: Named) -> String {
    match (named, error) {
        (Named::Request, LoadError::Missing { path }) => {
            format!("function library {path} does not exist")
        }
        (Named::Request, LoadError::HandlerNeeded { path, handlers }) => {
            format!("{path} exports several functions ({handlers}): choose one with --handler NAME")
        }
        (Named::Init, LoadError::HandlerNeeded { path, handlers }) => format!(
            "{path} exports several functions ({handlers}) and none called main: name one as the action's main (wsk action create ... --main NAME)"
        ),
        (
            Named::Init,
            LoadError::UnknownHandler {
                path,
                handler,
                handlers,
            },
        ) => {
            format!(
                "{path} has no function '{handler}' (the action's main); it exports: {handlers}"
            )
        }
        _ => error.to_string(),
    }
}

/// What serves new calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The handler's name.
    pub function: String,
    /// The library file it was loaded from (before copying).
    pub library: PathBuf,
    /// The invoker-sdk version the library was built with.
    pub sdk_version: String,
    /// The function crate's package and version ("rot13 0.1.0"), empty when unknown.
    pub library_version: String,
    /// 1 for the function loaded at start, +1 per reload.
    pub generation: u64,
}

/// How long the end waits for a worker set to run its shutdown hook and exit.
pub const WORKER_SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The served function and everything needed to replace it.
#[derive(Debug)]
pub struct Live {
    engine: RwLock<(Engine, Current)>,
    /// Every library loaded so far, kept for their shutdown hooks (and never unloaded).
    libraries: Mutex<Vec<Arc<Library>>>,
    /// Serialises reloads.
    reloading: Mutex<()>,
    generations: AtomicU64,
    instance_id: Arc<str>,
    config: Arc<HashMap<String, String>>,
    stats: Arc<Stats>,
    /// The function threads, shared by every load of the function.
    pool: Arc<Pool>,
    /// With `--isolation process`: how worker processes are started.
    isolation: Option<WorkerOptions>,
    /// Every worker set started so far (weakly: a set closes when its last call is done).
    worker_sets: Mutex<Vec<WorkersWatch>>,
}

impl Live {
    /// Loads the function for the first time: `path`'s library, `handler` (optional when the
    /// library exports one function), both named by `FUNCTION_URI`. Fails, with a one-line
    /// reason, on any load or init error.
    pub fn start(
        path: &Path,
        handler: Option<&str>,
        instance_id: &str,
        config: HashMap<String, String>,
        stats: Arc<Stats>,
        pool: Arc<Pool>,
    ) -> Result<Live, LiveError> {
        Live::start_isolated(path, handler, instance_id, config, stats, pool, None)
    }

    /// As [`Live::start`]; with `isolation`, the function runs in worker processes and this
    /// process never loads the library.
    pub fn start_isolated(
        path: &Path,
        handler: Option<&str>,
        instance_id: &str,
        config: HashMap<String, String>,
        stats: Arc<Stats>,
        pool: Arc<Pool>,
        isolation: Option<WorkerOptions>,
    ) -> Result<Live, LiveError> {
        if let Some(options) = isolation {
            return Live::start_in_workers(
                worker::Source::File(path.to_path_buf()),
                Select::from(handler).into(),
                Named::Uri,
                instance_id,
                config,
                stats,
                pool,
                options,
            );
        }
        let library = Library::load(path).map_err(|error| LiveError::Load {
            error,
            named: Named::Uri,
        })?;
        Live::start_loaded(
            library,
            path,
            handler,
            Named::Uri,
            instance_id,
            config,
            stats,
            pool,
        )
    }

    /// Starts worker processes (`--isolation process`) on `source`'s library and serves
    /// `select` of it there; this process never loads the library. `named` says where the
    /// library and handler were named, for the advice in an error.
    #[allow(clippy::too_many_arguments)]
    pub fn start_in_workers(
        source: worker::Source,
        select: worker::Select,
        named: Named,
        instance_id: &str,
        config: HashMap<String, String>,
        stats: Arc<Stats>,
        pool: Arc<Pool>,
        options: WorkerOptions,
    ) -> Result<Live, LiveError> {
        let config = Arc::new(config);
        let workers = start_workers(source, select, &config, named, instance_id, &options)?;
        let current = workers_current(&workers, 1);
        stats.set_generation(1);
        stats.watch_workers(options.monitor.subscribe());
        workers.make_current();
        let watch = workers.watch();
        let engine = Engine::new(
            Function::in_workers(workers),
            instance_id,
            config.clone(),
            stats.clone(),
            pool.clone(),
        );
        Ok(Live {
            engine: RwLock::new((engine, current)),
            libraries: Mutex::new(Vec::new()),
            reloading: Mutex::new(()),
            generations: AtomicU64::new(1),
            instance_id: instance_id.into(),
            config,
            stats,
            pool,
            isolation: Some(options),
            worker_sets: Mutex::new(vec![watch]),
        })
    }

    /// As [`Live::start`], for a library already loaded (from bytes: OpenWhisk's `/init`);
    /// `path` names it in messages, and `named` says where it and the handler were named.
    #[allow(clippy::too_many_arguments)]
    pub fn start_loaded(
        library: Library,
        path: &Path,
        handler: Option<&str>,
        named: Named,
        instance_id: &str,
        config: HashMap<String, String>,
        stats: Arc<Stats>,
        pool: Arc<Pool>,
    ) -> Result<Live, LiveError> {
        let config = Arc::new(config);
        let (library, function) = prepare(library, path, &Select::from(handler), &config, named)?;
        let current = Current {
            function: function.info().name.clone(),
            library: path.to_path_buf(),
            sdk_version: library.sdk_version().to_owned(),
            library_version: library_version(&library),
            generation: 1,
        };
        stats.set_generation(1);
        let engine = Engine::new(
            function,
            instance_id,
            config.clone(),
            stats.clone(),
            pool.clone(),
        );
        Ok(Live {
            engine: RwLock::new((engine, current)),
            libraries: Mutex::new(vec![library]),
            reloading: Mutex::new(()),
            generations: AtomicU64::new(1),
            instance_id: instance_id.into(),
            config,
            stats,
            pool,
            isolation: None,
            worker_sets: Mutex::new(Vec::new()),
        })
    }

    /// The worker processes serving new calls, with `--isolation process`.
    pub fn workers(&self) -> Option<WorkerStats> {
        self.isolation.as_ref().map(|o| o.monitor.stats())
    }

    /// With `--isolation process`: the workers' counters, sent again each time a worker of
    /// the set serving new calls goes up or down (health watches it).
    pub fn watch_workers(&self) -> Option<tokio::sync::watch::Receiver<WorkerStats>> {
        self.isolation.as_ref().map(|o| o.monitor.subscribe())
    }

    /// The engine for a new call.
    pub fn engine(&self) -> Engine {
        read(&self.engine).0.clone()
    }

    /// What serves new calls.
    pub fn current(&self) -> Current {
        read(&self.engine).1.clone()
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Replaces the function for new calls with `handler` of the library at `path`. Without a
    /// handler: the current function's name if the library exports it, else its only function.
    /// `named` says where the library was named, for the advice in an error. On error the
    /// current function keeps serving.
    pub fn reload(
        &self,
        path: &Path,
        handler: Option<&str>,
        named: Named,
    ) -> Result<Current, LiveError> {
        let _one_at_a_time = lock(&self.reloading);
        let generation = self.generations.load(Ordering::Acquire) + 1;
        let selection = match handler {
            Some(handler) => Select::Named(handler.to_owned()),
            None => Select::PreferNamed(self.current().function),
        };
        let (function, current) = match &self.isolation {
            Some(options) => {
                let workers = start_workers(
                    worker::Source::File(path.to_path_buf()),
                    (&selection).into(),
                    &self.config,
                    named,
                    &self.instance_id,
                    options,
                )?;
                let current = workers_current(&workers, generation);
                lock(&self.worker_sets).push(workers.watch());
                (Function::in_workers(workers), current)
            }
            None => {
                let (library, function) = load(path, &selection, &self.config, named)?;
                let current = Current {
                    function: function.info().name.clone(),
                    library: path.to_path_buf(),
                    sdk_version: library.sdk_version().to_owned(),
                    library_version: library_version(&library),
                    generation,
                };
                lock(&self.libraries).push(library);
                (function, current)
            }
        };
        let engine = Engine::new(
            function,
            &self.instance_id,
            self.config.clone(),
            self.stats.clone(),
            self.pool.clone(),
        );
        let workers = engine.function().workers().cloned();
        *write(&self.engine) = (engine, current.clone());
        if let Some(workers) = workers {
            workers.make_current();
        }
        self.generations.store(generation, Ordering::Release);
        self.stats.reloaded(generation);
        tracing::info!(
            function = %current.function,
            library = %current.library.display(),
            generation,
            "reloaded: new calls use the new function; calls in flight finish on the old one"
        );
        Ok(current)
    }

    /// In worker processes: handles on its worker sets that do not keep them (for a caller
    /// that must run their shutdown at the end without keeping them serving until then);
    /// `None` in process.
    pub fn worker_watches(&self) -> Option<Vec<worker::WorkersWatch>> {
        self.isolation
            .as_ref()
            .map(|_| lock(&self.worker_sets).clone())
    }

    /// Runs the shutdown hook of every library loaded, once each, newest first.
    pub fn shutdown(&self) {
        // Worker processes run their library's shutdown hook themselves.
        for set in lock(&self.worker_sets).iter().rev() {
            set.shutdown(WORKER_SHUTDOWN_WAIT);
        }
        let libraries = lock(&self.libraries);
        for library in libraries.iter().rev() {
            library.shutdown();
        }
    }
}

/// Loads the library (into memory, see [`Library::load`]), picks the function and runs the
/// init hook.
fn load(
    path: &Path,
    selection: &Select,
    config: &HashMap<String, String>,
    named: Named,
) -> Result<(Arc<Library>, Function), LiveError> {
    let library = Library::load(path).map_err(|error| LiveError::Load { error, named })?;
    prepare(library, path, selection, config, named)
}

/// Picks the function of a loaded library and runs the init hook.
fn prepare(
    library: Library,
    path: &Path,
    selection: &Select,
    config: &HashMap<String, String>,
    named: Named,
) -> Result<(Arc<Library>, Function), LiveError> {
    let failed = |error| LiveError::Load { error, named };
    let function = match selection {
        Select::Named(name) => library.function(Some(name)),
        Select::Only => library.function(None),
        Select::PreferNamed(name) if library.handlers().contains(&name.as_str()) => {
            library.function(Some(name))
        }
        Select::PreferNamed(_) => library.function(None),
    }
    .map_err(failed)?;
    library
        .init(&config::pairs(config))
        .map_err(|error| LiveError::Init {
            path: path.to_path_buf(),
            error,
        })?;
    Ok((Arc::new(library), function))
}

/// Starts worker processes on `source`'s library (`--isolation process`).
fn start_workers(
    source: worker::Source,
    select: worker::Select,
    config: &HashMap<String, String>,
    named: Named,
    instance_id: &str,
    options: &WorkerOptions,
) -> Result<Workers, LiveError> {
    let spec = StartSpec {
        source,
        select,
        config: config::pairs(config),
        instance_id: instance_id.to_owned(),
        named: match named {
            Named::Uri => 0,
            Named::Request => 1,
            Named::Init => 2,
        },
    };
    let workers = Workers::start(spec, options.clone()).map_err(LiveError::Worker)?;
    tracing::info!(
        workers = options.workers,
        memory_limit = options.memory_limit,
        "the function runs in worker processes"
    );
    Ok(workers)
}

/// What worker processes serve.
fn workers_current(workers: &Workers, generation: u64) -> Current {
    let hello = workers.hello();
    Current {
        function: hello.info.name.clone(),
        library: workers.path().to_path_buf(),
        sdk_version: hello.sdk_version.clone(),
        library_version: hello
            .package
            .as_ref()
            .map(|(name, version)| format!("{name} {version}"))
            .unwrap_or_default(),
        generation,
    }
}

/// "name version" of the library's package, or empty.
fn library_version(library: &Library) -> String {
    library
        .package()
        .map(|(name, version)| format!("{name} {version}"))
        .unwrap_or_default()
}

/// Which function of a library to serve.
enum Select {
    /// This handler.
    Named(String),
    /// The library's only function.
    Only,
    /// This handler if the library has it, else its only function.
    PreferNamed(String),
}

impl From<&Select> for worker::Select {
    fn from(select: &Select) -> worker::Select {
        match select {
            Select::Named(name) => worker::Select::Named(name.clone()),
            Select::Only => worker::Select::Only,
            Select::PreferNamed(name) => worker::Select::PreferNamed(name.clone()),
        }
    }
}

impl From<Select> for worker::Select {
    fn from(select: Select) -> worker::Select {
        (&select).into()
    }
}

impl From<Option<&str>> for Select {
    fn from(handler: Option<&str>) -> Select {
        handler.map_or(Select::Only, |h| Select::Named(h.to_owned()))
    }
}
