//! Worker processes (`--isolation process`), the host's side: the function runs in N child
//! processes (this same binary, `invoker worker`), each of which loads the library and runs
//! its init hook; calls cross to them over a Unix socket pair (`channel`). A worker that dies
//! fails the calls it was serving, and only those, with `Invoker: Function Crashed: <cause>`;
//! it is restarted with exponential backoff.
//!
//! Who owns what: a [`Workers`] set owns its worker processes and their channels. Each worker
//! has one task on the channel runtime (`io`: the serving runtime, see [`serve_channels_on`])
//! that reads its channel and dispatches frames to the calls waiting for them (a map of call id
//! to [`Pending`]), and on its death (once a second task has read what the worker wrote on its
//! request/reply socket) fails those calls and starts the next worker in its slot; a thread of
//! its own spawns the process and waits for it. Frames to a worker are written by the task
//! that sends them (a non-blocking `write`); what a socket cannot take at once waits in a
//! backlog that a writer task per socket flushes. A request/reply call takes a place on the
//! worker holding fewest ([`DEPTH`] places each, none behind a call that has run past
//! `channel::STALLED`, waiting if none is free) and gives it back when the reply arrives, or
//! when the worker gives it back unstarted (`RETURNED`) for another worker. A worker runs its
//! calls one at a time in the order sent, so when it dies the host fails the one it was
//! running and sends the rest elsewhere: a crash loses that call alone. Streams are spread
//! over the workers round-robin and may share one.
//!
//! Bounds: frames queued for a worker are at most [`DEPTH`] `INVOKE`s (it runs one at a time,
//! the others wait in it), `CANCEL`s, and per stream the credits the host granted and the inputs it forwarded
//! ahead: per input port at most `channel::INPUT_WINDOW` (1024) not yet taken by the function,
//! and past `channel::INPUT_WINDOW_BYTES` (1 MiB) of them no more; outputs the worker sends
//! are at most the credits granted, [`WINDOW`] per output port, and stop at
//! `channel::OUTPUT_WINDOW_BYTES` (1 MiB) sent and not credited back. A frame is at most
//! `channel::MAX_FRAME`.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};

use super::channel::{self, Frame, Reader, code, to_host, to_worker};
use super::{
    CallContext, FunctionError, FunctionInfo, InputMessage, MetricSink, OutputMessage, Shape,
};
use crate::sync::lock;

/// How many outputs of a stream's port the worker may send ahead of the caller reading them.
/// A stream moves at most a window per round trip over the channel: 32 held one stream to
/// about 0.1x in process (BENCHMARKS.md, "Process mode against in process").
pub const WINDOW: u32 = 1024;

/// How many request/reply calls a worker may hold at once: the one it runs and the rest
/// queued behind it, so its call thread goes from one call to the next without waiting for a
/// round trip. A new call goes to the worker holding fewest. A worker runs its calls in the
/// order sent, so the host knows which one was running when a worker dies: only that call
/// fails, and the calls queued behind it, not yet started, go to another worker.
const DEPTH: usize = 8;

/// How long a worker whose call was cancelled may go on running it before it is killed (and
/// restarted): a function that never returns would otherwise hold the worker for good.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// The first restart waits this long; each crash in a row doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A worker that served this long before it died starts its slot's backoff afresh.
const HEALTHY_FOR: Duration = Duration::from_secs(10);

/// How worker processes are started.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How many workers.
    pub workers: usize,
    /// Each worker's address-space limit (`RLIMIT_AS`), set before it loads the library.
    pub memory_limit: Option<u64>,
    /// The program to run as `PROGRAM worker`: this binary.
    pub program: PathBuf,
    /// Where the sets started with these options publish their availability and counters.
    pub monitor: Arc<Monitor>,
}

/// Where the library comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file.
    File(PathBuf),
    /// Bytes (OpenWhisk's `/init`), named by a path in messages.
    Bytes {
        /// The name.
        name: PathBuf,
        /// The library.
        bytes: Arc<[u8]>,
    },
}

impl Source {
    /// The path that names the library in messages.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Source::File(path) => path,
            Source::Bytes { name, .. } => name,
        }
    }
}

/// Which function of the library to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// This handler.
    Named(String),
    /// The library's only function.
    Only,
    /// This handler if the library has it, else its only function.
    PreferNamed(String),
    /// The library's first stateful (StateFun) function, else its only function: what
    /// `invoker statefun` starts with, to learn the others from the hello.
    FirstStateful,
}

/// What a worker is started with: the library, the function, the user configuration.
#[derive(Debug, Clone)]
pub struct StartSpec {
    /// The library.
    pub source: Source,
    /// The function.
    pub select: Select,
    /// User configuration, for the init hook and the function's context.
    pub config: Vec<(String, String)>,
    /// This invoker's instance id, for the function's context.
    pub instance_id: String,
    /// Where the library was named, for the advice in a load error (`live::Named`, as a
    /// number the worker understands).
    pub named: u8,
}

/// What a worker says once it has loaded the library and run its init hook.
#[derive(Debug, Clone)]
pub struct Hello {
    /// The function served.
    pub info: FunctionInfo,
    /// The invoker-sdk version the library was built with.
    pub sdk_version: String,
    /// The function crate's package name and version, if known.
    pub package: Option<(String, String)>,
    /// The names of the library's stateful (StateFun) functions, for `invoker statefun`.
    pub stateful_handlers: Vec<String>,
}

/// Why workers could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The worker refused: the library did not load or its init hook failed. `kind` is the
    /// worker's classification (see `live::ErrorKind`, in the order of [`REFUSED_KINDS`]).
    #[error("{message}")]
    Refused {
        /// Whose fault: an index into [`REFUSED_KINDS`].
        kind: u8,
        /// The worker's message.
        message: String,
    },
    /// The worker died while loading the library or running its init hook.
    #[error("the worker process died while loading {path} or running its init hook: {cause}")]
    Crashed {
        /// The library.
        path: String,
        /// The signal or exit status.
        cause: String,
    },
    /// The worker process could not be started.
    #[error("cannot start a worker process ({program}): {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
}

/// The kinds a worker's refusal can have, by their number on the channel.
pub const REFUSED_KINDS: [&str; 4] = ["bad-library", "not-found", "bad-request", "internal"];

/// Counters of the worker processes, for the status, `/metrics` and health: `workers` and
/// `up` are those of the set serving new calls; the others count over every set started
/// with the same [`Monitor`] (every reload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Workers configured.
    pub workers: usize,
    /// Workers up (started and serving).
    pub up: usize,
    /// Restarts after a worker died.
    pub restarts: u64,
    /// Workers that died while serving (crashes, whatever their cause).
    pub crashes: u64,
    /// The last crash's cause, if a worker ever died.
    pub last_crash: Option<String>,
    /// When it was, in milliseconds since the Unix epoch (0 if never).
    pub last_crash_unix_millis: u64,
}

/// Where worker sets publish their counters: one per served function (a `Live`), shared by
/// every set it starts, of which the set serving new calls (the last made current) is the one
/// whose `up` is published. Health watches [`Monitor::subscribe`]; the status and `/metrics`
/// read it.
#[derive(Debug)]
pub struct Monitor {
    published: watch::Sender<WorkerStats>,
    /// The id of the set serving new calls.
    current: AtomicU64,
    restarts: AtomicU64,
    crashes: AtomicU64,
    last_crash: Mutex<(Option<String>, u64)>,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            published: watch::channel(WorkerStats::default()).0,
            current: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            last_crash: Mutex::new((None, 0)),
        }
    }
}

impl Monitor {
    /// The counters now, sent again whenever a worker of the serving set goes up or down.
    pub fn subscribe(&self) -> watch::Receiver<WorkerStats> {
        self.published.subscribe()
    }

    /// The counters now.
    pub fn stats(&self) -> WorkerStats {
        self.published.borrow().clone()
    }

    fn crashed(&self, cause: &str) {
        self.crashes.fetch_add(1, Ordering::Relaxed);
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        *lock(&self.last_crash) = (Some(cause.to_owned()), millis);
    }

    /// Publishes `set`'s counters if it is the one serving new calls.
    fn publish(&self, set: &Set) {
        if self.current.load(Ordering::Acquire) != set.id {
            return;
        }
        let (last_crash, last_crash_unix_millis) = lock(&self.last_crash).clone();
        self.published.send_replace(WorkerStats {
            workers: set.options.workers.max(1),
            up: set.up.load(Ordering::Acquire),
            restarts: self.restarts.load(Ordering::Relaxed),
            crashes: self.crashes.load(Ordering::Relaxed),
            last_crash,
            last_crash_unix_millis,
        });
    }
}

/// Numbers worker sets, for [`Monitor::current`].
static SET_IDS: AtomicU64 = AtomicU64::new(1);

/// Where the channels are served, once chosen: see [`serve_channels_on`].
static CHANNELS: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Serves the workers' channels (each worker's reading task, its backlog's writer, restarts)
/// on `runtime`, the serving runtime: a reply read there wakes the call waiting for it on the
/// same runtime, without a hand-off between threads (two wake-ups per call fewer). Call it
/// before the first worker set starts; once the channels have a runtime this does nothing.
/// Without it they get a runtime of their own. Process mode runs no function in the serving
/// process, so nothing blocks the serving runtime's threads.
pub fn serve_channels_on(runtime: tokio::runtime::Handle) {
    let _ = CHANNELS.set(runtime);
}

/// The channel runtime: the serving runtime if [`serve_channels_on`] named it, else one of
/// its own (which may be needed before any serving runtime exists).
fn io() -> &'static tokio::runtime::Handle {
    CHANNELS.get_or_init(|| {
        static OWN: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        OWN.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("invoker-channel")
                .enable_all()
                .build()
                .unwrap_or_else(|e| {
                    // Without it no worker can be reached; this is at start, before any call.
                    eprintln!("invoker: cannot start the worker channel's runtime: {e}");
                    std::process::exit(1)
                })
        })
        .handle()
        .clone()
    })
}

/// A set of worker processes serving one function of one library. Cheap to clone. When the
/// last clone is dropped (every engine and call holding it is gone: after a reload, when the
/// old function's calls have finished), its workers run the shutdown hook and exit.
#[derive(Debug, Clone)]
pub struct Workers {
    handle: Arc<Handle>,
}

/// Closes the set when the last [`Workers`] goes.
#[derive(Debug)]
struct Handle(Arc<Set>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[derive(Debug)]
struct Set {
    id: u64,
    spec: StartSpec,
    options: WorkerOptions,
    hello: Hello,
    /// Told when a request/reply place may have come free (a reply, a call given back, a
    /// worker up): calls waiting in [`Set::acquire`] look again.
    freed: tokio::sync::Notify,
    /// The worker in each slot while it is up.
    slots: Mutex<Vec<Option<Arc<Worker>>>>,
    up: AtomicUsize,
    closed: AtomicBool,
    next_stream: AtomicUsize,
}

/// A call waiting for frames from a worker.
enum Pending {
    Reply {
        done: oneshot::Sender<Outcome>,
        metrics: Option<Arc<dyn MetricSink>>,
        /// A StateFun invocation's batch, which the reply's changes apply to.
        batch: Option<Arc<Mutex<super::Batch>>>,
    },
    Stream(Arc<stream::Shared>),
}

/// How a request/reply call sent to a worker ended.
enum Outcome {
    Done(Result<Option<OutputMessage>, FunctionError>),
    /// The worker died before it started the call: it goes to another worker.
    NotStarted,
}

/// One worker process and its channel.
struct Worker {
    slot: usize,
    pid: u32,
    pidfd: Option<OwnedFd>,
    /// The channel: everything but request/reply calls.
    out: Arc<Out>,
    /// The request/reply socket: `INVOKE`s, which the worker's call thread reads itself.
    calls_out: Arc<Out>,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Set, under `pending`'s lock, once its death has failed what was pending: a call added
    /// later would wait for ever (see [`Worker::add_pending`]).
    drained: AtomicBool,
    /// Its request/reply calls.
    calls: Mutex<Calls>,
    alive: AtomicBool,
    /// Set once the process has exited (by the thread that waits for it, so even with the
    /// channel runtime gone, as at the very end).
    exited: Arc<AtomicBool>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("slot", &self.slot)
            .field("pid", &self.pid)
            .finish()
    }
}

/// A worker's end of the channel, for writing. Frames are written straight from the task
/// that sends them (a non-blocking `write`, no hand-off to another thread); only what the
/// socket cannot take at once waits in `backlog`, which the channel runtime's writer task
/// flushes when the socket has room. While a backlog is waiting every frame joins it, so
/// frames keep their order.
#[derive(Debug)]
struct Out {
    /// The socket (non-blocking; the same open file as the reader's).
    socket: StdUnixStream,
    state: Mutex<OutState>,
    /// Tells the writer task a backlog is waiting (or the worker is gone).
    wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct OutState {
    backlog: BytesMut,
    /// The worker is gone (its socket failed, or it was dropped): frames go nowhere.
    closed: bool,
}

impl Out {
    fn send(&self, frame: &[u8]) {
        let mut state = lock(&self.state);
        if state.closed {
            // The worker is gone; its death fails what was pending.
            return;
        }
        if !state.backlog.is_empty() {
            state.backlog.extend_from_slice(frame);
            return;
        }
        let mut rest = frame;
        while !rest.is_empty() {
            match (&self.socket).write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    state.backlog.extend_from_slice(rest);
                    drop(state);
                    self.wake.notify_one();
                    return;
                }
                Err(_) => {
                    // The reader sees the end and reports the death.
                    state.closed = true;
                    return;
                }
            }
        }
    }

    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.backlog = BytesMut::new();
        drop(state);
        self.wake.notify_one();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Ends the writer tasks, which hold the sockets open.
        self.out.close();
        self.calls_out.close();
    }
}

impl Worker {
    /// Adds a call waiting for frames, unless the worker's death already failed what was
    /// pending (a caller that chose it just before it died): then the call must go elsewhere.
    fn add_pending(&self, call: u64, pending: Pending) -> bool {
        let mut map = lock(&self.pending);
        if self.drained.load(Ordering::Acquire) {
            return false;
        }
        map.insert(call, pending);
        true
    }

    fn send(&self, frame: Bytes) {
        self.out.send(&frame);
    }

    fn kill(&self) {
        let killed = match &self.pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL),
            // Without a pidfd, by pid while the process has not been reaped (its pid could be
            // another's after): not `alive`, which a dead channel clears before `run_slot`
            // kills the process it must then wait for.
            None => match rustix::process::Pid::from_raw(self.pid as i32) {
                Some(pid) if !self.exited.load(Ordering::Acquire) => {
                    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
                }
                _ => Ok(()),
            },
        };
        if let Err(e) = killed {
            tracing::debug!(pid = self.pid, "cannot kill the worker: {e}");
        }
    }
}

/// A worker's request/reply calls, as the host knows them.
#[derive(Debug)]
struct Calls {
    /// Sent and not answered, in the order sent: it runs the first, the others wait in it.
    sent: std::collections::VecDeque<u64>,
    /// Places taken (sent, or about to be), at most [`DEPTH`].
    held: usize,
    /// About when the first of `sent` started: when it was sent to a worker holding none, or
    /// when the reply before it came.
    front_since: Instant,
    /// Whether a task watches for calls waiting behind one that blocks ([`watch_calls`]).
    watched: bool,
}

impl Calls {
    /// Whether a new call may go to this worker: it holds none, or fewer than [`DEPTH`] and
    /// the call it runs has run less than `channel::STALLED` (a call queued behind one that
    /// blocks would wait for it, however many other workers are free).
    fn takes_one_more(&self) -> bool {
        self.held == 0 || (self.held < DEPTH && self.front_since.elapsed() < channel::STALLED)
    }
}

/// A worker process started and past its handshake, with what it said.
struct Started {
    worker: Arc<Worker>,
    hello: Hello,
    reader: UnixStream,
    calls_reader: UnixStream,
    buf: BytesMut,
    exited: oneshot::Receiver<ExitStatus>,
}

impl Workers {
    /// Starts `options.workers` workers on `spec` and waits until each has loaded the library
    /// and run its init hook. Any failure stops them all and is returned. Blocks the calling
    /// thread while the channel runtime does the work: call it from outside that runtime's
    /// workers (at start, or from a blocking thread, as reloads and `/init` do), since the
    /// channel runtime is the serving runtime once [`serve_channels_on`] named it.
    pub fn start(spec: StartSpec, options: WorkerOptions) -> Result<Workers, StartError> {
        let (tx, rx) = std::sync::mpsc::channel();
        io().spawn(async move {
            let _ = tx.send(Workers::start_async(spec, options).await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(StartError::Spawn {
                program: "invoker worker".into(),
                reason: "the channel runtime stopped".into(),
            })
        })
    }

    async fn start_async(spec: StartSpec, options: WorkerOptions) -> Result<Workers, StartError> {
        let n = options.workers.max(1);
        let starting: Vec<_> = (0..n)
            .map(|slot| {
                let spec = spec.clone();
                let options = options.clone();
                tokio::spawn(async move { spawn_worker(slot, &spec, &options).await })
            })
            .collect();
        let mut started = Vec::with_capacity(n);
        let mut failed = None;
        for task in starting {
            match task.await {
                Ok(Ok(s)) => started.push(s),
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(e) => {
                    failed = failed.or(Some(StartError::Spawn {
                        program: options.program.display().to_string(),
                        reason: e.to_string(),
                    }))
                }
            }
        }
        if let Some(e) = failed {
            for s in &started {
                s.worker.kill();
            }
            return Err(e);
        }
        let hello = started[0].hello.clone();
        let set = Arc::new(Set {
            id: SET_IDS.fetch_add(1, Ordering::Relaxed),
            spec,
            options,
            hello,
            freed: tokio::sync::Notify::new(),
            slots: Mutex::new(vec![None; n]),
            up: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            next_stream: AtomicUsize::new(0),
        });
        for s in started {
            set.serving(&s.worker);
            tokio::spawn(run_slot(set.clone(), s));
        }
        Ok(Workers {
            handle: Arc::new(Handle(set)),
        })
    }

    /// What the workers said about the function and library.
    pub fn hello(&self) -> &Hello {
        &self.handle.0.hello
    }

    /// The library's path (as named).
    pub fn path(&self) -> &std::path::Path {
        self.handle.0.spec.source.path()
    }

    /// Counters for the status and `/metrics`.
    pub fn stats(&self) -> WorkerStats {
        self.handle.0.stats()
    }

    /// Makes this set the one whose availability its [`Monitor`] publishes: the set serving
    /// new calls (at start, and once a reload has switched to it).
    pub fn make_current(&self) {
        let set = &self.handle.0;
        set.options.monitor.current.store(set.id, Ordering::Release);
        set.options.monitor.publish(set);
    }

    /// A handle on the set that does not keep it open (for the status and the final shutdown).
    pub fn watch(&self) -> WorkersWatch {
        WorkersWatch(Arc::downgrade(&self.handle.0))
    }

    /// Calls the request/reply function in a worker. Waits for a place on a worker; the call holds
    /// it until the reply comes, and goes to another worker if its worker dies before starting
    /// it. Dropping the future cancels the call (the worker's function
    /// sees it cancelled; a worker still running it [`CANCEL_GRACE`] later is killed).
    pub async fn invoke(
        &self,
        ctx: &CallContext,
        input: Option<&InputMessage>,
        media_type: usize,
    ) -> Result<Option<OutputMessage>, FunctionError> {
        let set = &self.handle.0;
        let call = ctx.call.id();
        loop {
            let worker = set.acquire().await?;
            let mut frame = Frame::new(to_worker::INVOKE, call)
                .i64(deadline_millis(ctx))
                .u32(media_type as u32);
            frame = match input {
                Some(m) => frame
                    .u8(1)
                    .u32(m.media_type as u32)
                    .headers(&m.headers)
                    .bytes(&m.payload),
                None => frame.u8(0),
            };
            // A StateFun invocation carries its batch's state in, and its reply the changes
            // out: one round trip, however many state and messaging callbacks the function
            // makes.
            frame = match &ctx.stateful {
                None => frame.u8(0),
                Some(stateful) => frame.u8(1).batch_in(
                    &stateful.self_address,
                    stateful.caller.as_ref(),
                    &lock(&stateful.batch),
                ),
            };
            let (done, reply) = oneshot::channel();
            let added = worker.add_pending(
                call,
                Pending::Reply {
                    done,
                    metrics: ctx.metrics.clone(),
                    batch: ctx.stateful.as_ref().map(|s| s.batch.clone()),
                },
            );
            if !added {
                // It died after giving this call a place: another worker.
                continue;
            }
            {
                // The queue's order is the order on the wire.
                let mut calls = lock(&worker.calls);
                if calls.sent.is_empty() {
                    calls.front_since = Instant::now();
                }
                calls.sent.push_back(call);
                worker.calls_out.send(&frame.finish());
                if calls.sent.len() > 1 && !calls.watched {
                    // It waits behind another: watch for that one blocking.
                    calls.watched = true;
                    io().spawn(watch_calls(worker.clone()));
                }
            }
            let mut guard = CancelOnDrop {
                worker: Some(worker),
                call,
            };
            let result = reply.await;
            guard.worker = None;
            return match result {
                Ok(Outcome::Done(result)) => result,
                Ok(Outcome::NotStarted) => continue,
                // The worker died: its death sent the cause first, so this is not reached in
                // practice; a dropped sender without a cause is still a crash.
                Err(_) => Err(FunctionError::Crashed(
                    "the worker process went away".into(),
                )),
            };
        }
    }

    /// Opens the streaming function in a worker over `inputs`; returns one stream per output.
    pub fn open(
        &self,
        ctx: &CallContext,
        inputs: Vec<super::BoxInput>,
    ) -> Result<Vec<super::OutputStream>, FunctionError> {
        stream::open(self, ctx, inputs)
    }
}

/// A weak handle on a worker set: its counters while it lives, and the shutdown at exit.
#[derive(Debug, Clone)]
pub struct WorkersWatch(std::sync::Weak<Set>);

impl WorkersWatch {
    /// Counters, if the set is still open.
    pub fn stats(&self) -> Option<WorkerStats> {
        self.0.upgrade().map(|set| set.stats())
    }

    /// Asks each worker to run the shutdown hook and exit, and waits up to `wait` for them.
    pub fn shutdown(&self, wait: Duration) {
        let Some(set) = self.0.upgrade() else {
            return;
        };
        set.close();
        let until = Instant::now() + wait;
        // The processes themselves, not `up`: the channel runtime may be gone already.
        let running = || {
            lock(&set.slots)
                .iter()
                .flatten()
                .any(|w| !w.exited.load(Ordering::Acquire))
        };
        while running() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Sends `CANCEL` if a call's future is dropped before its reply, and kills the worker if it
/// has not answered [`CANCEL_GRACE`] later.
struct CancelOnDrop {
    worker: Option<Arc<Worker>>,
    call: u64,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        worker.send(Frame::new(to_worker::CANCEL, self.call).finish());
        let call = self.call;
        io().spawn(async move {
            // A call queued behind another starts later: its grace runs from its start (as
            // the host knows it), and from the cancellation at the earliest.
            let mut wait = CANCEL_GRACE;
            loop {
                tokio::time::sleep(wait).await;
                if !worker.alive.load(Ordering::Acquire)
                    || !lock(&worker.pending).contains_key(&call)
                {
                    return;
                }
                let calls = lock(&worker.calls);
                wait = match calls.sent.front() == Some(&call) {
                    true => match CANCEL_GRACE.checked_sub(calls.front_since.elapsed()) {
                        None => break,
                        Some(left) => left.max(Duration::from_millis(1)),
                    },
                    false => CANCEL_GRACE,
                };
            }
            tracing::warn!(
                pid = worker.pid,
                call,
                "a cancelled call was still running {} s later: killing its worker process",
                CANCEL_GRACE.as_secs()
            );
            worker.kill();
        });
    }
}

fn deadline_millis(ctx: &CallContext) -> i64 {
    ctx.deadline_millis()
}

impl Set {
    fn stats(&self) -> WorkerStats {
        let monitor = &self.options.monitor;
        let (last_crash, last_crash_unix_millis) = lock(&monitor.last_crash).clone();
        WorkerStats {
            workers: self.options.workers.max(1),
            up: self.up.load(Ordering::Acquire),
            restarts: monitor.restarts.load(Ordering::Relaxed),
            crashes: monitor.crashes.load(Ordering::Relaxed),
            last_crash,
            last_crash_unix_millis,
        }
    }

    /// A worker is up: it takes calls.
    fn serving(&self, worker: &Arc<Worker>) {
        self.up.fetch_add(1, Ordering::AcqRel);
        self.options.monitor.publish(self);
        if let Some(slot) = lock(&self.slots).get_mut(worker.slot) {
            *slot = Some(worker.clone());
        }
        if self.closed.load(Ordering::Acquire) {
            // Up after the set closed (a restart racing the close): nothing to serve.
            worker.send(Frame::new(to_worker::SHUTDOWN, 0).finish());
            return;
        }
        self.freed.notify_waiters();
    }

    /// Takes a place on a worker for a request/reply call, waiting for one: on the worker
    /// holding fewest of those that take one more ([`Calls::takes_one_more`]).
    async fn acquire(&self) -> Result<Arc<Worker>, FunctionError> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking: a place freed after the look wakes this call.
            freed.as_mut().enable();
            if let Some((worker, room_left)) = self.take_place() {
                if room_left {
                    // A call woken for one place passes the news on while there is more room
                    // (a worker just up, or back from a call that blocked, has [`DEPTH`]).
                    self.freed.notify_one();
                }
                return Ok(worker);
            }
            freed.await;
        }
    }

    /// A place on the worker holding fewest calls, if any takes one more; and whether it has
    /// room for yet another.
    fn take_place(&self) -> Option<(Arc<Worker>, bool)> {
        let slots = lock(&self.slots);
        let mut best: Option<(&Arc<Worker>, usize)> = None;
        for worker in slots.iter().flatten() {
            if !worker.alive.load(Ordering::Acquire) {
                continue;
            }
            let calls = lock(&worker.calls);
            if calls.takes_one_more() && best.is_none_or(|(_, held)| calls.held < held) {
                best = Some((worker, calls.held));
            }
        }
        let (worker, _) = best?;
        let mut calls = lock(&worker.calls);
        if calls.held == 0 {
            // It starts this call as soon as it is sent.
            calls.front_since = Instant::now();
        }
        calls.held += 1;
        Some((worker.clone(), calls.held < DEPTH))
    }

    /// A place on `worker` is free again (its call was answered or given back).
    fn release(&self, worker: &Worker) {
        let mut calls = lock(&worker.calls);
        calls.held = calls.held.saturating_sub(1);
        drop(calls);
        self.freed.notify_one();
    }

    /// No new calls: each worker runs the shutdown hook and exits when its calls are done.
    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for worker in lock(&self.slots).iter().flatten() {
            worker.send(Frame::new(to_worker::SHUTDOWN, 0).finish());
        }
    }
}

/// Starts one worker process and waits for its handshake.
async fn spawn_worker(
    slot: usize,
    spec: &StartSpec,
    options: &WorkerOptions,
) -> Result<Started, StartError> {
    let spawn_error = |reason: String| StartError::Spawn {
        program: options.program.display().to_string(),
        reason,
    };
    // Both ends are close-on-exec; the child's end becomes its stdin (fd 0), which `Command`
    // dup2s without the flag: nothing else of this process leaks into the worker.
    let (ours, theirs) = StdUnixStream::pair().map_err(|e| spawn_error(e.to_string()))?;
    // The request/reply socket: its worker end goes over the channel, first thing.
    let (calls_ours, calls_theirs) =
        StdUnixStream::pair().map_err(|e| spawn_error(e.to_string()))?;
    let mut command = Command::new(&options.program);
    // A process group of its own: a signal to the serving process's group (Ctrl-C at a
    // terminal, a hangup) is the serving process's to handle, not a crash of every worker.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
        .arg("worker")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some(limit) = options.memory_limit {
        command.arg("--memory-limit").arg(limit.to_string());
    }
    // Spawned by a thread that lives exactly as long as the worker, waiting for it: the
    // worker's death signal (`PR_SET_PDEATHSIG`) fires when the thread that spawned it ends,
    // not the process, so a runtime thread (which ends when the runtime shuts down, before the
    // workers run their shutdown hook) must not spawn it.
    let (spawned_tx, spawned) = oneshot::channel();
    let (exit_tx, exited) = oneshot::channel();
    let gone = Arc::new(AtomicBool::new(false));
    let gone_at_exit = gone.clone();
    std::thread::Builder::new()
        .name("invoker-wait".into())
        .spawn(move || {
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let _ = spawned_tx.send(Err(e));
                    return;
                }
            };
            // The worker's end of the channel, held by the command: only the worker holds it
            // now, so its death ends the channel.
            drop(command);
            let _ = spawned_tx.send(Ok(child.id()));
            let status = child.wait();
            gone_at_exit.store(true, Ordering::Release);
            if let Ok(status) = status {
                let _ = exit_tx.send(status);
            }
        })
        .map_err(|e| spawn_error(e.to_string()))?;
    let pid = match spawned.await {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) => return Err(spawn_error(e.to_string())),
        Err(_) => return Err(spawn_error("the thread that spawns it ended".into())),
    };
    let pidfd = rustix::process::Pid::from_raw(pid as i32)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    pass_socket(&ours, &calls_theirs).map_err(|e| spawn_error(e.to_string()))?;
    drop(calls_theirs);
    let (mut reader, out) = host_end(ours).map_err(|e| spawn_error(e.to_string()))?;
    let (calls_reader, calls_out) = host_end(calls_ours).map_err(|e| spawn_error(e.to_string()))?;
    let worker = Arc::new(Worker {
        slot,
        pid,
        pidfd,
        out,
        calls_out,
        pending: Mutex::new(HashMap::new()),
        calls: Mutex::new(Calls {
            sent: std::collections::VecDeque::new(),
            held: 0,
            front_since: Instant::now(),
            watched: false,
        }),
        alive: AtomicBool::new(true),
        drained: AtomicBool::new(false),
        exited: gone,
    });
    // The start frame: the library, the function, the configuration.
    let mut frame = Frame::new(to_worker::START, 0);
    frame = match &spec.source {
        Source::File(path) => frame.u8(0).str(&path.to_string_lossy()),
        Source::Bytes { name, bytes } => frame.u8(1).str(&name.to_string_lossy()).bytes(bytes),
    };
    frame = match &spec.select {
        Select::Named(name) => frame.u8(0).str(name),
        Select::Only => frame.u8(1).str(""),
        Select::PreferNamed(name) => frame.u8(2).str(name),
        Select::FirstStateful => frame.u8(3).str(""),
    };
    worker.send(
        frame
            .u8(spec.named)
            .pairs(&spec.config)
            .str(&spec.instance_id)
            .finish(),
    );
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let path = spec.source.path().display().to_string();
    let answer = loop {
        match channel::next_frame(&mut buf) {
            Ok(Some(frame)) => break Ok(frame),
            Ok(None) => {}
            Err(e) => break Err(e.to_string()),
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => break Err(String::new()),
            Ok(_) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    let hello = match answer {
        Ok((to_host::HELLO, _, mut r)) => match read_hello(&mut r) {
            Ok(hello) => hello,
            Err(e) => {
                worker.kill();
                return Err(StartError::Crashed {
                    path,
                    cause: e.to_string(),
                });
            }
        },
        Ok((to_host::INIT_FAILED, _, mut r)) => {
            let refused = (|| Ok::<_, channel::Malformed>((r.u8()?, r.str()?)))();
            worker.kill();
            return Err(match refused {
                Ok((kind, message)) => StartError::Refused { kind, message },
                Err(e) => StartError::Crashed {
                    path,
                    cause: e.to_string(),
                },
            });
        }
        Ok((kind, _, _)) => {
            worker.kill();
            return Err(StartError::Crashed {
                path,
                cause: format!("unexpected frame {kind} before its hello"),
            });
        }
        Err(_) => {
            worker.alive.store(false, Ordering::Release);
            let cause = cause_of(&worker, exited).await;
            return Err(StartError::Crashed { path, cause });
        }
    };
    Ok(Started {
        worker,
        hello,
        reader,
        calls_reader,
        buf,
        exited,
    })
}

/// The host's end of one of a worker's sockets: non-blocking, read by the returned stream, and
/// written through the returned [`Out`] (directly, and by a backlog writer task spawned here).
fn host_end(socket: StdUnixStream) -> std::io::Result<(UnixStream, Arc<Out>)> {
    socket.set_nonblocking(true)?;
    let out = Arc::new(Out {
        socket: socket.try_clone()?,
        state: Mutex::new(OutState::default()),
        wake: tokio::sync::Notify::new(),
    });
    // The backlog's writer waits for room on a descriptor of its own: not a write half of the
    // reader's stream, whose drop (as when the serving runtime shuts down, before the workers
    // are asked to run their shutdown hook) would shut the socket down for writing.
    let writer = socket.try_clone().and_then(UnixStream::from_std)?;
    tokio::spawn(write_loop(writer, out.clone()));
    Ok((UnixStream::from_std(socket)?, out))
}

/// Passes the worker's end of the request/reply socket over the channel (`SCM_RIGHTS`, with
/// one byte), before the start frame.
fn pass_socket(channel: &StdUnixStream, calls: &StdUnixStream) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::os::fd::AsFd;
    let fds = [calls.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("no room for the descriptor"));
    }
    rustix::net::sendmsg(
        channel,
        &[std::io::IoSlice::new(&[0])],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

fn read_hello(r: &mut Reader) -> Result<Hello, channel::Malformed> {
    let sdk_version = r.str()?;
    let name = r.str()?;
    let version = r.str()?;
    let info = r.info()?;
    let n = r.u32()? as usize;
    let stateful_handlers = (0..n.min(4096))
        .map(|_| r.str())
        .collect::<Result<_, _>>()?;
    Ok(Hello {
        info,
        sdk_version,
        package: (!name.is_empty()).then_some((name, version)),
        stateful_handlers,
    })
}

/// Flushes a worker's backlog: the frames its socket could not take when they were sent.
async fn write_loop(writer: UnixStream, out: Arc<Out>) {
    loop {
        out.wake.notified().await;
        loop {
            // Fails only when the runtime is going (at the very end): direct writes still
            // work, as the shutdown frames sent after it need.
            if writer.writable().await.is_err() {
                return;
            }
            let mut state = lock(&out.state);
            if state.closed {
                return;
            }
            if state.backlog.is_empty() {
                break;
            }
            match writer.try_write(&state.backlog) {
                Ok(n) => {
                    let _ = state.backlog.split_to(n);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The worker is gone; its reader sees the end and reports the death.
                    drop(state);
                    out.close();
                    return;
                }
            }
        }
    }
}

/// Why a worker's channel ended: its exit status (waiting a moment for it; a worker that
/// closed its end but lives on is killed).
async fn cause_of(worker: &Worker, mut exited: oneshot::Receiver<ExitStatus>) -> String {
    let status = match tokio::time::timeout(Duration::from_secs(1), &mut exited).await {
        Ok(Ok(status)) => Some(status),
        _ => {
            worker.kill();
            tokio::time::timeout(Duration::from_secs(5), exited)
                .await
                .ok()
                .and_then(Result::ok)
        }
    };
    match status {
        Some(status) => describe(status),
        None => "it closed its channel and did not exit".into(),
    }
}

/// An exit status as a crash cause: the signal by name, or the exit code. The worker's
/// fatal-signal handler exits with 128 + the signal (after logging the function and call), so
/// those codes are named as the signal.
pub fn describe(status: ExitStatus) -> String {
    let name = |n: i32| {
        nix::sys::signal::Signal::try_from(n)
            .map_or_else(|_| format!("signal {n}"), |s| s.as_str().to_owned())
    };
    if let Some(signal) = status.signal() {
        return format!("killed by {}", name(signal));
    }
    match status.code() {
        Some(code @ 129..=159) if [4, 6, 7, 8, 11].contains(&(code - 128)) => {
            format!("{} (exit code {code})", name(code - 128))
        }
        Some(code) => format!("exit status {code}"),
        None => "unknown exit".into(),
    }
}

/// A worker slot's life: serve the worker until it dies, fail its calls, restart it after a
/// backoff, until the set is closed.
async fn run_slot(set: Arc<Set>, first: Started) {
    let slot = first.worker.slot;
    let mut started = first;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let since = Instant::now();
        let worker = started.worker.clone();
        // Replies (and their metrics, and calls given back) come on the request/reply socket.
        let calls_loop = {
            let (set, worker) = (set.clone(), worker.clone());
            let reader = started.calls_reader;
            tokio::spawn(async move {
                let buf = BytesMut::with_capacity(64 * 1024);
                if let Err(e) = read_loop(&set, &worker, reader, buf).await {
                    tracing::error!(pid = worker.pid, "a worker's request/reply socket: {e}");
                    worker.kill();
                }
            })
        };
        let ended = read_loop(&set, &worker, started.reader, started.buf).await;
        worker.alive.store(false, Ordering::Release);
        set.up.fetch_sub(1, Ordering::AcqRel);
        if let Some(s) = lock(&set.slots).get_mut(slot) {
            *s = None;
        }
        if set.closed.load(Ordering::Acquire) {
            set.options.monitor.publish(&set);
        }
        let cause = match ended {
            Ok(()) => cause_of(&worker, started.exited).await,
            Err(e) => {
                worker.kill();
                format!("{e}; {}", cause_of(&worker, started.exited).await)
            }
        };
        // The process is gone, so its request/reply socket has ended too: what it wrote there
        // before it died is read before its pending calls fail.
        let _ = calls_loop.await;
        let message = format!("worker process {} died: {cause}", worker.pid);
        let failed: Vec<(u64, Pending)> = {
            let mut pending = lock(&worker.pending);
            worker.drained.store(true, Ordering::Release);
            pending.drain().collect()
        };
        // The call it was running is the first it had not answered; those behind it had not
        // started.
        let running = lock(&worker.calls).sent.front().copied();
        for (call, pending) in failed {
            let error = FunctionError::Crashed(message.clone());
            match pending {
                Pending::Reply { done, .. } if Some(call) == running => {
                    let _ = done.send(Outcome::Done(Err(error)));
                }
                Pending::Reply { done, .. } => {
                    let _ = done.send(Outcome::NotStarted);
                }
                Pending::Stream(shared) => shared.fail(error),
            }
        }
        if set.closed.load(Ordering::Acquire) {
            return;
        }
        set.options.monitor.crashed(&message);
        set.options.monitor.publish(&set);
        if since.elapsed() >= HEALTHY_FOR {
            backoff = FIRST_BACKOFF;
        }
        tracing::error!(
            slot,
            restart_in_ms = backoff.as_millis() as u64,
            "{message}; the calls it was serving failed, and it restarts"
        );
        started = loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if set.closed.load(Ordering::Acquire) {
                return;
            }
            match spawn_worker(slot, &set.spec, &set.options).await {
                Ok(s) => break s,
                Err(e) => {
                    set.options.monitor.crashed(&e.to_string());
                    set.options.monitor.publish(&set);
                    tracing::error!(
                        slot,
                        restart_in_ms = backoff.as_millis() as u64,
                        "a worker process could not restart: {e}"
                    );
                }
            }
        };
        set.options.monitor.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::info!(slot, pid = started.worker.pid, "worker process restarted");
        set.serving(&started.worker);
    }
}

/// While calls wait behind the one a worker runs: once that one has run past
/// `channel::STALLED` (as the host knows it), asks the worker to give back those waiting
/// (`RECLAIM`), and again every `STALLED` while some wait, until none does.
async fn watch_calls(worker: Arc<Worker>) {
    loop {
        let check_at = {
            let mut calls = lock(&worker.calls);
            if calls.sent.len() < 2 || !worker.alive.load(Ordering::Acquire) {
                calls.watched = false;
                return;
            }
            calls.front_since + channel::STALLED
        };
        tokio::time::sleep_until(check_at.into()).await;
        let stalled = {
            let calls = lock(&worker.calls);
            calls.sent.len() >= 2 && calls.front_since.elapsed() >= channel::STALLED
        };
        if stalled {
            worker.send(Frame::new(to_worker::RECLAIM, 0).finish());
            // The worker's clock may say not yet (it started the call a little later):
            // ask again after a while, if calls still wait.
            tokio::time::sleep(channel::STALLED).await;
        }
    }
}

/// Reads a worker's frames and hands each to its call, until the channel ends.
async fn read_loop(
    set: &Arc<Set>,
    worker: &Arc<Worker>,
    mut reader: UnixStream,
    mut buf: BytesMut,
) -> Result<(), String> {
    loop {
        while let Some((kind, call, mut r)) =
            channel::next_frame(&mut buf).map_err(|e| e.to_string())?
        {
            dispatch(set, worker, kind, call, &mut r).map_err(|e| e.to_string())?;
        }
        // Frames share the buffer while their payloads live: room for a big read, else
        // `read_buf` would grow it a few bytes at a time.
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn dispatch(
    set: &Arc<Set>,
    worker: &Arc<Worker>,
    kind: u8,
    call: u64,
    r: &mut Reader,
) -> Result<(), channel::Malformed> {
    match kind {
        to_host::REPLY => {
            let result = match r.u8()? {
                code::OK => {
                    let headers = r.headers()?;
                    let payload = r.bytes()?;
                    Ok(Some(OutputMessage { payload, headers }))
                }
                code::EMPTY => Ok(None),
                other => Err(r.error(other)?),
            };
            // Checked before the call is taken from `pending`: a reply that is not the running
            // call's (a stream's id, say) must leave that call for the death to fail.
            {
                let mut calls = lock(&worker.calls);
                if calls.sent.front() != Some(&call) {
                    return Err(channel::Malformed("a reply out of order"));
                }
                calls.sent.pop_front();
                if !calls.sent.is_empty() {
                    // The worker starts the next one now.
                    calls.front_since = Instant::now();
                }
            }
            let pending = lock(&worker.pending).remove(&call);
            if let Some(Pending::Reply { done, batch, .. }) = pending {
                if let (1, Some(batch)) = (r.u8()?, batch) {
                    r.batch_out(&mut lock(&batch))?;
                }
                let _ = done.send(Outcome::Done(result));
            }
            // Whether or not the caller still waits, the place is free again.
            set.release(worker);
        }
        to_host::RETURNED => {
            // The worker gives back a call it had not started (the one it runs blocks): it
            // goes to another worker.
            {
                let mut calls = lock(&worker.calls);
                match calls.sent.iter().position(|&c| c == call) {
                    Some(0) | None => {
                        return Err(channel::Malformed("a call given back that was not waiting"));
                    }
                    Some(i) => {
                        calls.sent.remove(i);
                    }
                }
            }
            let pending = lock(&worker.pending).remove(&call);
            if let Some(Pending::Reply { done, .. }) = pending {
                let _ = done.send(Outcome::NotStarted);
            }
            set.release(worker);
        }
        to_host::METRIC => {
            let name = r.str()?;
            let value = r.f64()?;
            let pending = lock(&worker.pending);
            let sink = match pending.get(&call) {
                Some(Pending::Reply { metrics, .. }) => metrics.clone(),
                Some(Pending::Stream(shared)) => shared.metrics.clone(),
                None => None,
            };
            drop(pending);
            if let Some(sink) = sink {
                sink.custom_metric(&name, value);
            }
        }
        to_host::OPENED
        | to_host::OUTPUT
        | to_host::OUTPUT_END
        | to_host::TAKEN
        | to_host::RELEASED => {
            let shared = match lock(&worker.pending).get(&call) {
                Some(Pending::Stream(shared)) => Some(shared.clone()),
                _ => None,
            };
            if let Some(shared) = shared {
                shared.frame(kind, r)?;
            }
        }
        _ => return Err(channel::Malformed("unknown frame kind")),
    }
    Ok(())
}

mod stream;

pub(crate) use stream::RemoteOutput;

/// Whether a function is request/reply (for the worker's side of `open`/`invoke` checks).
pub fn is_request_reply(info: &FunctionInfo) -> bool {
    info.shape == Shape::RequestReply
}
