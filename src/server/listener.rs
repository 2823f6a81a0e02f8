//! Accepting gRPC connections, with bounds: how many connections at once, how long a new
//! connection may take to start HTTP/2, how long a connection may stay without calls, and what
//! happens when the process runs out of file descriptors.
//!
//! - **Connections.** At most `max_connections` are open at once; past that, new ones wait in
//!   the kernel's listen backlog until one closes (logged once per episode).
//! - **Handshake.** A connection that has not sent the HTTP/2 preface and its first frame
//!   header within `handshake_timeout` of being accepted is closed (a slowloris client that
//!   connects and sends nothing, or a byte at a time, holds a descriptor only that long).
//! - **Idle.** A connection with no call open for `idle_timeout` is closed. HTTP/2 keepalive
//!   pings (configured on the server) close connections whose peer stopped answering.
//! - **Accept errors.** When `accept` fails for lack of descriptors or memory (EMFILE, ENFILE,
//!   ENOBUFS, ENOMEM) the loop backs off (10 ms doubling to 1 s) instead of spinning, and logs
//!   once until a connection is accepted again.
//!
//! The timers are checked only when a connection's read would wait: a busy connection pays
//! nothing for them.
//!
//! The same bounds hold on the TCP port and on the Unix socket (`--socket`), each listener
//! with its own `max_connections`. A Unix connection's reads also pass through the
//! `authority` rewrite (clients there send an `:authority` h2 refuses); a TCP connection's go
//! straight to h2.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf as _, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use super::authority::Rewriter;

/// The bounds on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// From accept to the HTTP/2 preface and first frame header.
    pub handshake_timeout: Duration,
    /// How long a connection may stay open with no call.
    pub idle_timeout: Duration,
}

/// The client's HTTP/2 connection preface (24 bytes) and the header of its first frame, the
/// SETTINGS frame (9 bytes): a connection that sent this much has started HTTP/2.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// What a connection shares with the calls made on it: how many are open, and since when
/// none has been (milliseconds since [`epoch`]).
#[derive(Debug, Default)]
pub struct ConnState {
    active: AtomicUsize,
    idle_since: AtomicU64,
}

/// The connection a call came on, as tonic puts it in the request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer (none on the Unix socket).
    pub remote: Option<SocketAddr>,
    state: Arc<ConnState>,
}

impl ConnInfo {
    /// Marks a call open on this connection until the returned guard is dropped.
    pub fn call_started(&self) -> ActiveCall {
        self.state.active.fetch_add(1, Ordering::AcqRel);
        ActiveCall(self.state.clone())
    }
}

/// A call open on a connection (it is not idle while one is).
#[derive(Debug)]
pub struct ActiveCall(Arc<ConnState>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(millis_now(), Ordering::Release);
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_now() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// An accepted stream: TCP, or a Unix socket's behind the `:authority` rewrite.
enum Io {
    Tcp(TcpStream),
    Unix(Box<UnixIo>),
}

/// A Unix socket's connection: what the client sent goes through `rewriter` into `ready`,
/// which h2 reads. Reading from the socket waits until `ready` is empty, so `ready` holds at
/// most one read's worth (or one rewritten header block).
struct UnixIo {
    stream: UnixStream,
    rewriter: Rewriter,
    ready: BytesMut,
    inbox: Box<[u8]>,
}

/// How much a Unix connection reads from its socket at once.
const UNIX_READ: usize = 16 * 1024;

impl UnixIo {
    /// Fills `buf` with rewritten bytes; `read` counts the bytes taken from the socket.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        read: &mut usize,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.ready.is_empty() {
                let n = self.ready.len().min(buf.remaining());
                buf.put_slice(&self.ready[..n]);
                self.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.rewriter.passes_through() {
                // Nothing left to rewrite on this connection: h2 reads the socket directly.
                let before = buf.filled().len();
                ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
                *read += buf.filled().len() - before;
                return Poll::Ready(Ok(()));
            }
            let mut inbox = ReadBuf::new(&mut self.inbox);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut inbox))?;
            let got = inbox.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(()));
            }
            *read += got.len();
            self.rewriter
                .feed(got, &mut self.ready)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

/// An accepted connection: the stream with its timers and its place under the limit.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    limits: ConnectionLimits,
    accepted: Instant,
    /// Bytes read, counted until the handshake is done.
    handshake: usize,
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn new(io: Io, limits: ConnectionLimits, permit: OwnedSemaphorePermit) -> Conn {
        let remote = match &io {
            Io::Tcp(stream) => stream.peer_addr().ok(),
            Io::Unix(_) => None,
        };
        let state = Arc::new(ConnState::default());
        state.idle_since.store(millis_now(), Ordering::Release);
        let accepted = Instant::now();
        Conn {
            io,
            info: ConnInfo { remote, state },
            limits,
            accepted,
            handshake: 0,
            timer: Box::pin(tokio::time::sleep_until(
                (accepted + limits.handshake_timeout).into(),
            )),
            _permit: permit,
        }
    }

    /// The timer fired: whether the connection is to be closed, and why; else the timer is
    /// set to the next time it could be.
    fn expired(&mut self) -> Option<&'static str> {
        let now = Instant::now();
        if self.handshake < HANDSHAKE_BYTES {
            if now >= self.accepted + self.limits.handshake_timeout {
                return Some("the client did not start HTTP/2 within the handshake timeout");
            }
            self.timer
                .as_mut()
                .reset((self.accepted + self.limits.handshake_timeout).into());
            return None;
        }
        let next = if self.info.state.active.load(Ordering::Acquire) == 0 {
            let idle_since =
                epoch() + Duration::from_millis(self.info.state.idle_since.load(Ordering::Acquire));
            let closes = idle_since + self.limits.idle_timeout;
            // Read `active` again: a call may have started after the first look.
            if now >= closes && self.info.state.active.load(Ordering::Acquire) == 0 {
                return Some("no call for the idle timeout");
            }
            closes.max(now + Duration::from_millis(10))
        } else {
            now + self.limits.idle_timeout
        };
        self.timer.as_mut().reset(next.into());
        None
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Tcp(stream) => {
                let before = buf.filled().len();
                let polled = Pin::new(stream).poll_read(cx, buf);
                if polled.is_ready() && this.handshake < HANDSHAKE_BYTES {
                    this.handshake += buf.filled().len() - before;
                }
                polled
            }
            Io::Unix(unix) => {
                let mut read = 0;
                let polled = unix.poll_read(cx, buf, &mut read);
                this.handshake = this.handshake.saturating_add(read);
                if let Poll::Ready(Err(e)) = &polled
                    && e.kind() == io::ErrorKind::InvalidData
                {
                    tracing::debug!("closing a connection on the Unix socket: {e}");
                }
                polled
            }
        };
        match polled {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => loop {
                ready!(this.timer.as_mut().poll(cx));
                if let Some(why) = this.expired() {
                    tracing::debug!(remote = ?this.info.remote, "closing a connection: {why}");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                }
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Unix(unix) => Pin::new(&mut unix.stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Unix(unix) => Pin::new(&mut unix.stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(stream) => stream.is_write_vectored(),
            Io::Unix(unix) => unix.stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Io::Unix(unix) => Pin::new(&mut unix.stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Unix(unix) => Pin::new(&mut unix.stream).poll_shutdown(cx),
        }
    }
}

/// Whether an accept error means the process or system is out of a resource (retrying at
/// once would spin), rather than one connection failing.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
            || code == rustix::io::Errno::NOBUFS.raw_os_error()
            || code == rustix::io::Errno::NOMEM.raw_os_error()
    )
}

/// A bound listener: the TCP port or the Unix socket.
#[derive(Debug)]
pub enum Listener {
    /// The TCP port.
    Tcp(TcpListener),
    /// The Unix socket.
    Unix(UnixListener),
}

impl Listener {
    async fn accept(&self) -> io::Result<Io> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Io::Tcp(stream))
            }
            Listener::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                Ok(Io::Unix(Box::new(UnixIo {
                    stream,
                    rewriter: Rewriter::new(),
                    ready: BytesMut::new(),
                    inbox: vec![0; UNIX_READ].into_boxed_slice(),
                })))
            }
        }
    }
}

struct Acceptor {
    listener: Listener,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    /// Set while accepting is held back (by the limit or by errors), so it is logged once.
    at_limit: bool,
    failing: bool,
    backoff: Duration,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const LAST_BACKOFF: Duration = Duration::from_secs(1);

impl Acceptor {
    async fn next(&mut self) -> Conn {
        loop {
            let permit = match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if !self.at_limit {
                        self.at_limit = true;
                        tracing::warn!(
                            max_connections = self.limits.max_connections,
                            "connection limit reached: new connections wait until one closes"
                        );
                    }
                    match self.slots.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        // The semaphore is never closed.
                        Err(_) => std::future::pending().await,
                    }
                }
            };
            match self.listener.accept().await {
                Ok(io) => {
                    let was_failing = std::mem::take(&mut self.failing);
                    let was_at_limit = std::mem::take(&mut self.at_limit);
                    if was_failing || was_at_limit {
                        tracing::info!("accepting connections again");
                    }
                    self.backoff = FIRST_BACKOFF;
                    return Conn::new(io, self.limits, permit);
                }
                Err(e) if out_of_resources(&e) => {
                    drop(permit);
                    if !self.failing {
                        self.failing = true;
                        tracing::error!(
                            "cannot accept connections: {e}; retrying with backoff (raise the file-descriptor limit, or lower --max-connections)"
                        );
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(LAST_BACKOFF);
                }
                // One connection failed (reset before it was accepted): go on.
                Err(e) => tracing::debug!("accept failed: {e}"),
            }
        }
    }
}

/// The connections accepted on `listener`, within `limits`. Never ends and never yields an
/// error: accept errors are handled here.
pub fn incoming(
    listener: Listener,
    limits: ConnectionLimits,
) -> impl Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    let acceptor = Acceptor {
        listener,
        limits,
        slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        at_limit: false,
        failing: false,
        backoff: FIRST_BACKOFF,
    };
    futures_util::stream::unfold(acceptor, |mut acceptor| async move {
        let conn = acceptor.next().await;
        Some((Ok(conn), acceptor))
    })
}

/// Binds a TCP port, or says why not: `what` says what for (after "listen", as " for
/// /metrics", or empty) and `flags` how to choose another (as "--port or GRPC_PORT"), added
/// when the port is taken.
pub async fn bind_tcp(
    host: &str,
    port: u16,
    what: &str,
    flags: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::AddrInUse => {
                    format!("; choose another port with {flags} (0 picks a free one)")
                }
                _ => String::new(),
            };
            anyhow::anyhow!("cannot listen{what} on {host}:{port}: {e}{hint}")
        })
}
