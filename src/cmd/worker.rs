//! `invoker worker` (hidden): one worker process of `--isolation process`. Its stdin is its end
//! of the channel to the serving process (`function::worker`). It loads the library the
//! start frame names with the same loader as in process, picks the function, runs the init
//! hook, says hello, and then serves calls: request/reply calls one at a time on a call
//! thread (giving back unstarted those queued behind one that has run past
//! `channel::STALLED`, for another worker), streams as tasks on the thread that reads the channel (a frame for a stream wakes
//! its task with no hand-off to another thread), each output sent only against the host's credits; the host forwards a window of
//! inputs ahead (`channel::INPUT_WINDOW`), and credits go back (`TAKEN`) as the function takes
//! them, every half window or when it waits for more. It exits when the serving process closes the channel or
//! asks it to (after the shutdown hook), and dies with the serving process
//! (`PR_SET_PDEATHSIG`). A crash in the library kills this process alone: the fatal-signal
//! handler logs the signal, function and call, and exits with 128 + the signal.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::Exit;
use crate::cli::WorkerArgs;
use crate::function::channel::{self, Frame, Reader, code, to_host, to_worker};
use crate::function::{
    BoxInput, CallContext, CallMeta, Function, InputMessage, Library, MetricSink, OutputStream,
    Stateful,
};
use crate::live::{LiveError, Named};
use crate::sync::lock;

/// `invoker worker`.
pub fn worker(args: WorkerArgs) -> anyhow::Result<Exit> {
    // End with the serving process, whatever it dies of.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if let Some(limit) = args.memory_limit {
        let limit = rustix::process::Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        };
        rustix::process::setrlimit(rustix::process::Resource::As, limit)
            .context("cannot set the worker's memory limit (RLIMIT_AS)")?;
    }
    super::install_crash_handler();
    let socket = UnixStream::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("the worker's channel (stdin)")?,
    );
    // The channel stays open on this process's own descriptor (close-on-exec) only: fd 0
    // becomes /dev/null, so a process the function starts (inheriting stdin, as `Command`
    // does by default) cannot keep the channel open after this worker dies, which would hide
    // the death from the serving process.
    let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
    rustix::stdio::dup2_stdin(&null).context("replacing the worker's stdin")?;
    drop(null);
    // The request/reply socket comes first, before the start frame (see `receive_calls`).
    let calls_socket = receive_calls(&socket)?;
    let writer = Arc::new(Writer(Mutex::new(
        socket.try_clone().context("the worker's channel")?,
    )));
    let mut reader = FrameReader {
        socket,
        buf: BytesMut::with_capacity(64 * 1024),
    };
    let Some((to_worker::START, _, mut start)) = reader.next()? else {
        anyhow::bail!("the worker's channel did not begin with a start frame");
    };
    let (library, function, config, instance_id) = match load(&mut start) {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => {
            let kind = match e.kind() {
                crate::live::ErrorKind::BadLibrary => 0,
                crate::live::ErrorKind::NotFound => 1,
                crate::live::ErrorKind::BadRequest => 2,
                crate::live::ErrorKind::Internal => 3,
            };
            writer.write(
                &Frame::new(to_host::INIT_FAILED, 0)
                    .u8(kind)
                    .str(&e.to_string())
                    .finish(),
            );
            return Ok(Exit::FAILURE);
        }
        Err(e) => anyhow::bail!("{e}"),
    };
    let (package, version) = library.package().unwrap_or(("", ""));
    let stateful: Vec<&str> = library
        .handlers()
        .into_iter()
        .filter(|name| {
            library
                .function(Some(name))
                .is_ok_and(|f| f.info().stateful.is_some())
        })
        .collect();
    let mut hello = Frame::new(to_host::HELLO, 0)
        .str(library.sdk_version())
        .str(package)
        .str(version)
        .info(function.info())
        .u32(stateful.len() as u32);
    for name in stateful {
        hello = hello.str(name);
    }
    writer.write(&hello.finish());
    let worker = Arc::new(Serving {
        function,
        instance_id: instance_id.into(),
        config: Arc::new(config),
        writer,
        calls_writer: Arc::new(Writer(Mutex::new(
            calls_socket
                .try_clone()
                .context("the worker's request/reply channel")?,
        ))),
        calls_in: Mutex::new(FrameReader {
            socket: calls_socket,
            buf: BytesMut::with_capacity(64 * 1024),
        }),
        cancels: Mutex::default(),
        streams: Mutex::new(HashMap::new()),
        active: AtomicUsize::new(0),
        shutting_down: AtomicBool::new(false),
        exiting: AtomicBool::new(false),
        library,
        queue: Mutex::default(),
    });
    worker.serve(reader)
}

type Loaded = (Library, Function, HashMap<String, String>, String);

/// Receives the request/reply socket the serving process passes (`SCM_RIGHTS`, with one byte)
/// over the channel before anything else: the call thread reads its calls there itself, with
/// no hand-off from the thread that reads the channel.
fn receive_calls(socket: &UnixStream) -> anyhow::Result<UnixStream> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(
        socket,
        &mut [std::io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .context("receiving the worker's request/reply channel")?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(UnixStream::from(fd));
        }
    }
    anyhow::bail!("the worker's channel did not begin with its request/reply channel")
}

/// Reads the start frame, loads the library, picks the function and runs the init hook.
fn load(r: &mut Reader) -> Result<Result<Loaded, LiveError>, channel::Malformed> {
    let source = r.u8()?;
    let path = PathBuf::from(r.str()?);
    let bytes = match source {
        1 => Some(r.bytes()?),
        _ => None,
    };
    let select = r.u8()?;
    let name = r.str()?;
    let named = match r.u8()? {
        1 => Named::Request,
        2 => Named::Init,
        _ => Named::Uri,
    };
    let config = r.pairs()?;
    let instance_id = r.str()?;
    let failed = |error| LiveError::Load { error, named };
    let library = match &bytes {
        Some(bytes) => Library::load_bytes(&path, bytes),
        None => Library::load(&path),
    };
    let library = match library {
        Ok(library) => library,
        Err(e) => return Ok(Err(failed(e))),
    };
    let function = match select {
        0 => library.function(Some(&name)),
        2 if library.handlers().contains(&name.as_str()) => library.function(Some(&name)),
        3 => {
            let first = library.handlers().into_iter().find(|name| {
                library
                    .function(Some(name))
                    .is_ok_and(|f| f.info().stateful.is_some())
            });
            library.function(first)
        }
        _ => library.function(None),
    };
    let function = match function {
        Ok(function) => function,
        Err(e) => return Ok(Err(failed(e))),
    };
    if let Err(error) = library.init(&config) {
        return Ok(Err(LiveError::Init { path, error }));
    }
    Ok(Ok((
        library,
        function,
        config.into_iter().collect(),
        instance_id,
    )))
}

/// The worker's end of the channel, for writing: frames from the call thread, the stream
/// tasks and the reader, one whole frame (or batch) per lock.
struct Writer(Mutex<UnixStream>);

impl Writer {
    fn write(&self, frame: &[u8]) {
        let socket = lock(&self.0);
        let mut rest = frame;
        while !rest.is_empty() {
            match (&*socket).write(rest) {
                Ok(n) if n > 0 => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The socket is non-blocking once the stream thread reads it: wait for room.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_writable(&socket),
                // The serving process is gone: nothing left to serve.
                _ => std::process::exit(0),
            }
        }
    }
}

/// Waits until a non-blocking socket can take more.
fn wait_writable(socket: &UnixStream) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    // An error or a signal just makes the caller try the write again.
    let _ = poll(
        &mut [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)],
        PollTimeout::NONE,
    );
}

struct FrameReader {
    socket: UnixStream,
    buf: BytesMut,
}

impl FrameReader {
    /// Reads what the socket has (blocking until something): false at its end.
    fn fill(&mut self) -> anyhow::Result<bool> {
        self.read_with(rustix::net::RecvFlags::empty())
    }

    /// Reads what the socket has now, without waiting: false if nothing (or at its end).
    fn try_fill(&mut self) -> anyhow::Result<bool> {
        self.read_with(rustix::net::RecvFlags::DONTWAIT)
    }

    fn read_with(&mut self, flags: rustix::net::RecvFlags) -> anyhow::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        let len = self.buf.len();
        // The read goes into zeroed room: zero only what it may fill, the rest of a frame
        // begun (its length is known) or a few KiB, not the whole spare capacity, which on
        // the call thread would cost more per call than the read.
        let rest_of_frame = <[u8; 4]>::try_from(self.buf.get(..4).unwrap_or_default())
            .map_or(0, |n| {
                (u32::from_le_bytes(n) as usize + 4).saturating_sub(len)
            });
        let room = rest_of_frame.max(8 * 1024).min(self.buf.capacity() - len);
        self.buf.resize(len + room, 0);
        loop {
            match rustix::net::recv(&self.socket, &mut self.buf[len..], flags) {
                Ok((0, _)) => {
                    self.buf.truncate(len);
                    return Ok(false);
                }
                Ok((n, _)) => {
                    self.buf.truncate(len + n);
                    return Ok(true);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    self.buf.truncate(len);
                    return Ok(false);
                }
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e).context("reading the worker's channel");
                }
            }
        }
    }

    /// The next frame; `None` when the serving process closed the channel.
    fn next(&mut self) -> anyhow::Result<Option<(u8, u64, Reader)>> {
        loop {
            if let Some(frame) = channel::next_frame(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }
}

/// A serving worker.
struct Serving {
    function: Function,
    instance_id: Arc<str>,
    config: Arc<HashMap<String, String>>,
    writer: Arc<Writer>,
    /// The request/reply socket, for writing: replies, their metrics, calls given back.
    calls_writer: Arc<Writer>,
    /// The request/reply socket, for reading: the call thread reads it while it has no call,
    /// `reclaim` (on the channel thread) while the call thread runs one that blocks.
    calls_in: Mutex<FrameReader>,
    /// The request/reply calls taken and not answered, and cancellations that came first.
    cancels: Mutex<Cancels>,
    /// The streams open.
    streams: Mutex<HashMap<u64, Arc<StreamCtl>>>,
    /// Calls and streams in progress.
    active: AtomicUsize,
    shutting_down: AtomicBool,
    /// Set by the one thread that runs the shutdown hook and exits (see `maybe_exit`).
    exiting: AtomicBool,
    library: Library,
    /// The call thread's calls read and not started, and since when it runs its call.
    queue: Mutex<CallQueue>,
}

/// The call thread's work: the calls read and waiting, and since when it has run the one it
/// runs.
#[derive(Default)]
struct CallQueue {
    waiting: std::collections::VecDeque<Invoke>,
    running: Option<Instant>,
}

/// How many cancellations of calls not yet read are remembered (`CANCEL` comes on the
/// channel, its call on the request/reply socket, and may be read first).
const EARLY_CANCELS: usize = 256;

/// Request/reply calls for cancellation.
#[derive(Default)]
struct Cancels {
    /// Taken (read by the call thread) and not answered.
    calls: HashMap<u64, CallMeta>,
    /// Cancelled before they were read: the oldest are forgotten past [`EARLY_CANCELS`].
    early: std::collections::VecDeque<u64>,
}

/// A request/reply call for the call thread.
struct Invoke {
    call: CallMeta,
    media_type: usize,
    input: Option<InputMessage>,
    /// A StateFun invocation's context: its batch as the host had it.
    stateful: Option<Stateful>,
}

impl Serving {
    fn serve(self: &Arc<Self>, reader: FrameReader) -> anyhow::Result<Exit> {
        let on_thread = self.clone();
        std::thread::Builder::new()
            .name("invoker-call".into())
            .spawn(move || on_thread.call_thread())
            .context("cannot start the call thread")?;
        // One thread reads the channel and runs the streams: a frame for a stream wakes its
        // task on the same thread, with no hand-off.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name("invoker-stream")
            .enable_all()
            .build()
            .context("cannot start the worker's runtime")?;
        let FrameReader { socket, mut buf } = reader;
        socket
            .set_nonblocking(true)
            .context("the worker's channel")?;
        runtime.block_on(async {
            let mut socket =
                tokio::net::UnixStream::from_std(socket).context("the worker's channel")?;
            loop {
                while let Some((kind, call, r)) = channel::next_frame(&mut buf)? {
                    self.frame(kind, call, r)?;
                }
                if buf.capacity() - buf.len() < 16 * 1024 {
                    buf.reserve(64 * 1024);
                }
                match socket.read_buf(&mut buf).await {
                    // The serving process closed the channel: it is gone or going.
                    Ok(0) => return Ok(Exit::SUCCESS),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("reading the worker's channel"),
                }
            }
        })
    }

    /// Handles one frame from the serving process (on the stream thread).
    fn frame(self: &Arc<Self>, kind: u8, call: u64, mut r: Reader) -> anyhow::Result<()> {
        {
            match kind {
                to_worker::INVOKE => {
                    anyhow::bail!("a request/reply call on the channel, not on its own socket")
                }
                to_worker::RECLAIM => self.reclaim(),
                to_worker::CANCEL => {
                    let mut cancels = lock(&self.cancels);
                    match cancels.calls.get(&call) {
                        Some(meta) => meta.cancel(),
                        None => {
                            // Its call is still on the request/reply socket (or was answered).
                            if cancels.early.len() == EARLY_CANCELS {
                                cancels.early.pop_front();
                            }
                            cancels.early.push_back(call);
                        }
                    }
                }
                to_worker::OPEN => {
                    let deadline = deadline(r.i64()?);
                    let headers = r.headers()?;
                    let inputs = r.u32()? as usize;
                    self.open(call, deadline, headers, inputs);
                }
                to_worker::INPUT | to_worker::INPUT_END | to_worker::CREDIT | to_worker::CLOSE => {
                    let ctl = lock(&self.streams).get(&call).cloned();
                    if let Some(ctl) = ctl {
                        ctl.frame(kind, &mut r)?;
                    }
                }
                to_worker::SHUTDOWN => {
                    self.shutting_down.store(true, Ordering::SeqCst);
                    self.maybe_exit();
                }
                _ => anyhow::bail!("unknown frame kind {kind} on the worker's channel"),
            }
        }
        Ok(())
    }

    /// Exits (after the shutdown hook) once asked to and nothing is in progress.
    ///
    /// Called by whichever thread ended the last piece of work (the call thread, the channel
    /// thread) or set `shutting_down` (the channel thread), so two may see both conditions at
    /// once: only the first runs the hook and exits, or the other's `exit` would cut the hook
    /// short. The flag and the count are `SeqCst` (as is every decrement of `active`): with
    /// weaker orderings each thread could read the other's variable from before its write, and
    /// then neither would exit.
    fn maybe_exit(&self) {
        if self.shutting_down.load(Ordering::SeqCst)
            && self.active.load(Ordering::SeqCst) == 0
            && !self.exiting.swap(true, Ordering::SeqCst)
        {
            self.library.shutdown();
            crate::function::flush_panic_log();
            std::process::exit(0);
        }
    }

    fn context(
        &self,
        call: CallMeta,
        headers: crate::function::Headers,
        writer: &Arc<Writer>,
    ) -> CallContext {
        CallContext {
            function_name: self.function.info().name.as_str().into(),
            instance_id: self.instance_id.clone(),
            metrics: Some(Arc::new(Metrics {
                writer: writer.clone(),
                call: call.id(),
            })),
            call,
            headers,
            config: self.config.clone(),
            // Set by a StateFun invocation (`invoke`).
            stateful: None,
        }
    }

    /// Reads a request/reply `INVOKE` (from the request/reply socket): the call is taken.
    fn take_call(&self, call: u64, mut r: Reader) -> anyhow::Result<Invoke> {
        let deadline = deadline(r.i64()?);
        let media_type = r.u32()? as usize;
        let input = match r.u8()? {
            0 => None,
            _ => Some({
                let media_type = r.u32()? as usize;
                let headers = r.headers()?;
                let payload = r.bytes()?;
                InputMessage {
                    payload,
                    headers,
                    media_type,
                }
            }),
        };
        let stateful = match r.u8()? {
            0 => None,
            _ => {
                let (self_address, caller, batch) = r.batch_in()?;
                Some(Stateful {
                    self_address,
                    caller,
                    batch: Arc::new(Mutex::new(batch)),
                })
            }
        };
        let meta = CallMeta::with_id(call, deadline);
        let mut cancels = lock(&self.cancels);
        if let Some(i) = cancels.early.iter().position(|&c| c == call) {
            cancels.early.remove(i);
            meta.cancel();
        }
        cancels.calls.insert(call, meta.clone());
        drop(cancels);
        self.active.fetch_add(1, Ordering::AcqRel);
        Ok(Invoke {
            call: meta,
            media_type,
            input,
            stateful,
        })
    }

    /// Reads the request/reply socket until at least one call has come (blocking; the call
    /// thread, with no call to run). `None` once the serving process has closed it.
    fn read_calls(&self) -> anyhow::Result<Option<Vec<Invoke>>> {
        let mut input = lock(&self.calls_in);
        let mut jobs = Vec::new();
        loop {
            while let Some((kind, call, r)) = channel::next_frame(&mut input.buf)? {
                match kind {
                    to_worker::INVOKE => jobs.push(self.take_call(call, r)?),
                    _ => anyhow::bail!("frame kind {kind} on the request/reply socket"),
                }
            }
            if !jobs.is_empty() {
                return Ok(Some(jobs));
            }
            if !input.fill()? {
                return Ok(None);
            }
        }
    }

    /// The host asks for the calls queued behind one that blocks (`RECLAIM`, on the channel
    /// thread): if the call thread's call has run past `channel::STALLED`, every call read and
    /// waiting, and every call still on the socket, goes back (`RETURNED`), for other workers.
    fn reclaim(&self) {
        let mut queue = lock(&self.queue);
        if queue
            .running
            .is_none_or(|since| since.elapsed() < channel::STALLED)
        {
            // Not (or no longer) blocking: the host asks again if it still has calls waiting.
            return;
        }
        let mut given_back: Vec<u64> = queue.waiting.drain(..).map(|j| j.call.id()).collect();
        let mut taken = 0;
        // The call thread runs a call, so it is not reading: the socket is free.
        if let Ok(mut input) = self.calls_in.try_lock() {
            // Until nothing more now (or the host is gone: then nothing matters).
            while let Ok(true) = input.try_fill() {}
            // A partial frame stays for the call thread. Only `INVOKE` travels here: anything
            // else would end the loop, dropped (the call thread would exit on it).
            while let Ok(Some((to_worker::INVOKE, call, _))) = channel::next_frame(&mut input.buf) {
                given_back.push(call);
                taken += 1;
            }
        }
        if given_back.is_empty() {
            return;
        }
        let mut frames = BytesMut::new();
        for &call in &given_back {
            frames.extend_from_slice(&Frame::new(to_host::RETURNED, call).finish());
        }
        // Written under the queue's lock: before the running call's reply (the call thread
        // marks itself not running, under this lock, before it writes its reply), so the
        // host never takes a call given back for the one running.
        self.calls_writer.write(&frames);
        drop(queue);
        let mut cancels = lock(&self.cancels);
        for call in &given_back {
            cancels.calls.remove(call);
        }
        drop(cancels);
        // Those read from the socket here were never counted as taken.
        self.active
            .fetch_sub(given_back.len() - taken, Ordering::SeqCst);
        self.maybe_exit();
    }

    /// The call thread: reads the request/reply calls itself and runs them one at a time, in
    /// the order sent.
    fn call_thread(&self) {
        loop {
            let job = {
                let mut queue = lock(&self.queue);
                match queue.waiting.pop_front() {
                    Some(job) => {
                        queue.running = Some(Instant::now());
                        job
                    }
                    None => {
                        drop(queue);
                        match self.read_calls() {
                            Ok(Some(jobs)) => lock(&self.queue).waiting.extend(jobs),
                            // The serving process is gone or going: the channel decides.
                            Ok(None) => return,
                            Err(e) => {
                                // The host treats the worker's death as a crash.
                                eprintln!("invoker worker: {e:#}");
                                std::process::exit(2);
                            }
                        }
                        continue;
                    }
                }
            };
            let reply = self.invoke(job);
            // Not running before the reply is written: a call given back while this one ran
            // is on the socket before its reply (see `reclaim`).
            lock(&self.queue).running = None;
            self.calls_writer.write(&reply);
            self.active.fetch_sub(1, Ordering::SeqCst);
            self.maybe_exit();
        }
    }

    /// Runs one request/reply call; returns its `REPLY` frame.
    fn invoke(&self, job: Invoke) -> bytes::Bytes {
        let id = job.call.id();
        let headers = match (&job.input, self.function.info().uses_context) {
            (Some(input), true) => input.headers.clone(),
            _ => Vec::new(),
        };
        // Its metrics go on the request/reply socket, ahead of its reply.
        let mut ctx = self.context(job.call, headers, &self.calls_writer);
        ctx.stateful = job.stateful;
        let result = self
            .function
            .invoke(&ctx, job.input.as_ref(), job.media_type);
        lock(&self.cancels).calls.remove(&id);
        let frame = Frame::new(to_host::REPLY, id);
        let frame = match &result {
            Ok(Some(out)) => frame.u8(code::OK).headers(&out.headers).bytes(&out.payload),
            Ok(None) => frame.u8(code::EMPTY),
            Err(e) => frame.error(e),
        };
        // What a StateFun invocation changed and sent goes back with its reply.
        let frame = match &ctx.stateful {
            None => frame.u8(0),
            Some(stateful) => frame.u8(1).batch_out(&lock(&stateful.batch)),
        };
        frame.finish()
    }

    fn open(
        self: &Arc<Self>,
        call: u64,
        deadline: Option<Instant>,
        headers: crate::function::Headers,
        inputs: usize,
    ) {
        let meta = CallMeta::with_id(call, deadline);
        let outputs = self.function.info().outputs.len();
        let queues: Vec<Arc<Mutex<InQueue>>> = (0..inputs).map(|_| Arc::default()).collect();
        let ctl = Arc::new(StreamCtl {
            meta: meta.clone(),
            inputs: queues.clone(),
            state: Mutex::new(CtlState {
                credits: vec![0; outputs],
                media_types: vec![0; outputs],
                closed: vec![false; outputs],
                sent: vec![Default::default(); outputs],
                waker: None,
            }),
        });
        lock(&self.streams).insert(call, ctl.clone());
        self.active.fetch_add(1, Ordering::AcqRel);
        let streams: Vec<BoxInput> = queues
            .into_iter()
            .enumerate()
            .map(|(port, queue)| {
                Box::pin(RemoteInput {
                    queue,
                    port,
                    call,
                    writer: self.writer.clone(),
                }) as BoxInput
            })
            .collect();
        let ctx = self.context(meta, headers, &self.writer);
        let opened = self.function.open(&ctx, streams);
        let frame = Frame::new(to_host::OPENED, call);
        let outputs = match opened {
            Ok(outputs) => {
                self.writer.write(&frame.u8(code::OK).finish());
                outputs
            }
            Err(e) => {
                self.writer.write(&frame.error(&e).finish());
                self.stream_done(call);
                return;
            }
        };
        let serving = self.clone();
        tokio::spawn(async move {
            let mut outputs: Vec<Option<OutputStream>> = outputs.into_iter().map(Some).collect();
            std::future::poll_fn(|cx| serving.pump(call, &ctl, &mut outputs, cx)).await;
            drop(outputs);
            serving.stream_done(call);
        });
    }

    fn stream_done(&self, call: u64) {
        lock(&self.streams).remove(&call);
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.maybe_exit();
    }

    /// Polls a stream's outputs against their credits, sending what they yield in one write.
    fn pump(
        &self,
        call: u64,
        ctl: &StreamCtl,
        outputs: &mut [Option<OutputStream>],
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut batch = BytesMut::new();
        lock(&ctl.state).waker = Some(cx.waker().clone());
        for (port, slot) in outputs.iter_mut().enumerate() {
            while let Some(output) = slot.as_mut() {
                let (credit, media_type, closed, bytes_full) = {
                    let state = lock(&ctl.state);
                    let (sizes, bytes) = &state.sent[port];
                    (
                        state.credits[port],
                        state.media_types[port],
                        state.closed[port],
                        // At least one output is always allowed, whatever its size.
                        !sizes.is_empty() && *bytes >= channel::OUTPUT_WINDOW_BYTES,
                    )
                };
                if closed {
                    *slot = None;
                    break;
                }
                if credit == 0 || bytes_full {
                    break;
                }
                match output.poll_next(cx, media_type as usize) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(message))) => {
                        let frame = Frame::new(to_host::OUTPUT, call)
                            .u32(port as u32)
                            .headers(&message.headers)
                            .bytes(&message.payload)
                            .finish();
                        {
                            let mut state = lock(&ctl.state);
                            state.credits[port] -= 1;
                            let (sizes, bytes) = &mut state.sent[port];
                            sizes.push_back(frame.len() as u32);
                            *bytes += frame.len();
                        }
                        batch.extend_from_slice(&frame);
                        if batch.len() >= 64 * 1024 {
                            self.writer.write(&batch);
                            batch.clear();
                        }
                    }
                    Poll::Ready(end) => {
                        // Release the function's stream (and so its inputs) before the end.
                        self.writer.write(&batch);
                        batch.clear();
                        *slot = None;
                        let frame = Frame::new(to_host::OUTPUT_END, call).u32(port as u32);
                        let frame = match end {
                            Some(Err(e)) => frame.error(&e),
                            _ => frame.u8(code::OK),
                        };
                        self.writer.write(&frame.finish());
                    }
                }
            }
        }
        if !batch.is_empty() {
            self.writer.write(&batch);
        }
        let all_closed = {
            let state = lock(&ctl.state);
            state.closed.iter().all(|c| *c)
        };
        match all_closed {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

fn deadline(millis: i64) -> Option<Instant> {
    u64::try_from(millis)
        .ok()
        .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)))
}

/// Sends a call's custom metrics to the serving process.
#[derive(Debug)]
struct Metrics {
    writer: Arc<Writer>,
    call: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl MetricSink for Metrics {
    fn custom_metric(&self, name: &str, value: f64) {
        self.writer.write(
            &Frame::new(to_host::METRIC, self.call)
                .str(name)
                .f64(value)
                .finish(),
        );
    }
}

/// A stream's control state, written as frames arrive, read by the stream's task.
struct StreamCtl {
    meta: CallMeta,
    inputs: Vec<Arc<Mutex<InQueue>>>,
    state: Mutex<CtlState>,
}

struct CtlState {
    credits: Vec<u32>,
    media_types: Vec<u32>,
    closed: Vec<bool>,
    /// Per output port, the outputs sent and not yet credited back: their sizes, oldest first,
    /// and their sum, bounded by `channel::OUTPUT_WINDOW_BYTES`.
    sent: Vec<(std::collections::VecDeque<u32>, usize)>,
    waker: Option<Waker>,
}

impl StreamCtl {
    fn frame(&self, kind: u8, r: &mut Reader) -> Result<(), channel::Malformed> {
        let port = r.u32()? as usize;
        match kind {
            to_worker::INPUT | to_worker::INPUT_END => {
                let queue = self
                    .inputs
                    .get(port)
                    .ok_or(channel::Malformed("no such input"))?;
                let message = match kind {
                    to_worker::INPUT => {
                        let media_type = r.u32()? as usize;
                        let headers = r.headers()?;
                        let payload = r.bytes()?;
                        Some(InputMessage {
                            payload,
                            headers,
                            media_type,
                        })
                    }
                    _ => None,
                };
                let mut queue = lock(queue);
                if queue.released {
                    // Taken by no one: the host counts it unread from the release's total.
                    return Ok(());
                }
                match message {
                    Some(message) if queue.items.len() >= channel::INPUT_WINDOW as usize => {
                        drop(message);
                        return Err(channel::Malformed("inputs past the window"));
                    }
                    Some(message) => queue.items.push_back(message),
                    None => queue.ended = true,
                }
                if let Some(waker) = queue.waker.take() {
                    drop(queue);
                    waker.wake();
                }
                return Ok(());
            }
            to_worker::CREDIT => {
                let n = r.u32()?;
                let media_type = r.u32()?;
                let mut state = lock(&self.state);
                let credit = state
                    .credits
                    .get_mut(port)
                    .ok_or(channel::Malformed("no such output"))?;
                *credit = credit.saturating_add(n);
                state.media_types[port] = media_type;
                // A credit returns the oldest outputs the host's caller has taken (the first
                // grants, before anything was sent, return nothing).
                let (sizes, bytes) = &mut state.sent[port];
                for _ in 0..n {
                    match sizes.pop_front() {
                        Some(size) => *bytes -= size as usize,
                        None => break,
                    }
                }
            }
            _ => {
                let mut state = lock(&self.state);
                let closed = state
                    .closed
                    .get_mut(port)
                    .ok_or(channel::Malformed("no such output"))?;
                *closed = true;
                if state.closed.iter().all(|c| *c) {
                    self.meta.cancel();
                }
            }
        }
        let waker = lock(&self.state).waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

/// Inputs the host sent for one input port and the function has not taken yet: at most
/// `channel::INPUT_WINDOW`.
#[derive(Default)]
struct InQueue {
    items: std::collections::VecDeque<InputMessage>,
    ended: bool,
    /// Taken by the function in all.
    taken: u64,
    /// Taken and not yet reported to the host (its credits to return).
    unreported: u32,
    /// The function released the port: what still comes is dropped.
    released: bool,
    waker: Option<Waker>,
}

/// An input stream of a streaming function in a worker: takes what the host forwarded, and
/// returns the host's credits every half window, or at once when the function waits.
struct RemoteInput {
    queue: Arc<Mutex<InQueue>>,
    port: usize,
    call: u64,
    writer: Arc<Writer>,
}

impl RemoteInput {
    fn report(&self, queue: std::sync::MutexGuard<'_, InQueue>, n: u32) {
        drop(queue);
        self.writer.write(
            &Frame::new(to_host::TAKEN, self.call)
                .u32(self.port as u32)
                .u32(n)
                .finish(),
        );
    }
}

impl futures_util::Stream for RemoteInput {
    type Item = InputMessage;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut queue = lock(&self.queue);
        if let Some(message) = queue.items.pop_front() {
            queue.taken += 1;
            queue.unreported += 1;
            if queue.unreported >= channel::INPUT_WINDOW / 2 {
                let n = std::mem::take(&mut queue.unreported);
                self.report(queue, n);
            }
            return Poll::Ready(Some(message));
        }
        if queue.ended {
            return Poll::Ready(None);
        }
        queue.waker = Some(cx.waker().clone());
        if queue.unreported > 0 {
            let n = std::mem::take(&mut queue.unreported);
            self.report(queue, n);
        }
        Poll::Pending
    }
}

impl Drop for RemoteInput {
    fn drop(&mut self) {
        // The function released its input: so must the host; what it forwarded past `taken`
        // was never read.
        let taken = {
            let mut queue = lock(&self.queue);
            queue.released = true;
            queue.items.clear();
            queue.taken
        };
        self.writer.write(
            &Frame::new(to_host::RELEASED, self.call)
                .u32(self.port as u32)
                .u64(taken)
                .finish(),
        );
    }
}
