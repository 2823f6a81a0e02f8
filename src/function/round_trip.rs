//! The boundary in one process: the SDK's descriptor and shims, linked into this test binary,
//! called through the host's `ffi` code without `dlopen` (`Library::linked` validates the
//! descriptor as `Library::load` does).
//!
//! What each test shows is observable from the host: outputs, errors, drop flags, wakers, and
//! the allocations a call leaves behind on its thread (a counting allocator: an owned output
//! the host never released would stay allocated; one released twice would free too much, when
//! glibc does not abort first). `scripts/test` runs these tests under valgrind too, which sees
//! what counting cannot: a read of a lent buffer after the host took it back, a double free.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use invoker_sdk::{Input, Json};

use super::{
    BoxInput, CallContext, FunctionError, InputMessage, Library, OutputMessage, OutputStream, Shape,
};

// ---------------------------------------------------------------------------------------------
// The functions, as a function crate writes them

#[invoker_sdk::function]
fn greet(name: String) -> String {
    format!("Hello {name}")
}

#[invoker_sdk::function]
fn reverse(bytes: Bytes) -> Bytes {
    bytes.iter().rev().copied().collect::<Vec<u8>>().into()
}

#[invoker_sdk::function]
fn total(Json(numbers): Json<Vec<i64>>) -> Json<i64> {
    Json(numbers.iter().sum())
}

#[invoker_sdk::function]
fn refuse(name: String) -> Result<String, String> {
    Err(format!("no greeting for {name}"))
}

#[invoker_sdk::function]
fn explode(name: String) -> String {
    panic!("boom: {name}")
}

/// How many `shout` streams were dropped.
static SHOUTS_DROPPED: AtomicUsize = AtomicUsize::new(0);

struct CountDrop(&'static AtomicUsize);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[invoker_sdk::function]
fn shout(words: Input<String>) -> impl Stream<Item = String> {
    let dropped = CountDrop(&SHOUTS_DROPPED);
    words.map(move |word| {
        let _held = &dropped;
        word.to_uppercase()
    })
}

#[invoker_sdk::function]
fn explode_streaming(words: Input<String>) -> impl Stream<Item = String> {
    words.map(|word| -> String { panic!("boom in a stream: {word}") })
}

/// Joins its chunks two by two: the first of each pair is held across the next poll of the
/// input, after which the host no longer lends its bytes.
#[invoker_sdk::function]
fn pairs(chunks: Input<Bytes>) -> impl Stream<Item = Bytes> {
    chunks
        .chunks(2)
        .map(|pair| pair.concat().into_iter().collect::<Bytes>())
}

#[invoker_sdk::function]
fn echo(words: Input<String>) -> impl Stream<Item = String> {
    words
}

/// `later`'s state: whether its item may come, and the waker of the poll that found it could not.
static LATER: Mutex<(bool, Option<Waker>)> = Mutex::new((false, None));

/// A supplier whose one item comes when another thread says so (`release_later`).
#[invoker_sdk::function]
fn later() -> impl Stream<Item = String> {
    stream::poll_fn(|cx| {
        let mut later = LATER.lock().unwrap();
        if later.0 {
            later.0 = false;
            return Poll::Ready(Some("woken".to_owned()));
        }
        later.1 = Some(cx.waker().clone());
        Poll::Pending
    })
    .take(1)
}

/// Lets `later`'s item come and wakes the waker it kept (on the calling thread).
fn release_later() {
    let waker = {
        let mut later = LATER.lock().unwrap();
        later.0 = true;
        later.1.take()
    };
    waker.expect("later kept no waker").wake();
}

// ---------------------------------------------------------------------------------------------
// The host's side

/// The functions above as one library, through the SDK's root symbol.
fn library() -> &'static Library {
    static LIBRARY: OnceLock<Library> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        Library::linked(
            invoker_sdk::private::invoker_library,
            Path::new("round-trip"),
        )
        .expect("the SDK's descriptor is valid")
    })
}

fn context(function: &str) -> CallContext {
    CallContext {
        function_name: function.into(),
        ..CallContext::default()
    }
}

fn invoke(function: &str, payload: &'static [u8]) -> Result<Option<OutputMessage>, FunctionError> {
    let input = InputMessage {
        payload: Bytes::from_static(payload),
        ..InputMessage::default()
    };
    let function = library().function(Some(function)).unwrap();
    function.invoke(&context(function.info().name.as_str()), Some(&input), 0)
}

fn open(function: &str, inputs: Vec<BoxInput>) -> OutputStream {
    let function = library().function(Some(function)).unwrap();
    let mut outputs = function
        .open(&context(&function.info().name), inputs)
        .expect("the function opens");
    assert_eq!(outputs.len(), 1);
    outputs.pop().unwrap()
}

/// A message of text (media type 0 of a `String` input, `text/plain`).
fn text(s: &str) -> InputMessage {
    InputMessage {
        payload: Bytes::copy_from_slice(s.as_bytes()),
        ..InputMessage::default()
    }
}

/// A host input stream that records when it is dropped.
struct Watched {
    inner: BoxInput,
    dropped: Arc<AtomicBool>,
}

impl Stream for Watched {
    type Item = InputMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<InputMessage>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

fn watched(
    inner: impl Stream<Item = InputMessage> + Send + 'static,
) -> (BoxInput, Arc<AtomicBool>) {
    let dropped = Arc::new(AtomicBool::new(false));
    let stream = Watched {
        inner: Box::pin(inner),
        dropped: dropped.clone(),
    };
    (Box::pin(stream), dropped)
}

/// A waker that counts its wakes.
#[derive(Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Wakes {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Polls `output` once with `waker`, for output media type 0.
fn poll(output: &mut OutputStream, waker: &Waker) -> Poll<Option<Result<String, FunctionError>>> {
    let mut cx = Context::from_waker(waker);
    output.poll_next(&mut cx, 0).map(|item| {
        item.map(|message| {
            message.map(|m| String::from_utf8(m.payload.to_vec()).expect("UTF-8 output"))
        })
    })
}

/// Polls `output` to its end, which must come without waiting.
fn collect(mut output: OutputStream) -> Vec<Result<String, FunctionError>> {
    let waker = Waker::noop();
    let mut items = Vec::new();
    loop {
        match poll(&mut output, waker) {
            Poll::Ready(Some(item)) => items.push(item),
            Poll::Ready(None) => return items,
            Poll::Pending => panic!("the stream waits, after {items:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Allocations left behind

/// Counts this thread's allocations that are not freed yet (a free on another thread of memory
/// allocated here is not seen: only single-threaded code is measured).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // A const-initialised `Cell` has no destructor: it is there until the thread's last
    // instruction, so `try_with` only guards against a platform where it is not.
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

// SAFETY: every method forwards to `System` with the caller's arguments, so `System`'s
// guarantees hold; the bookkeeping allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-1);
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

// The unit tests' allocator (the daemon's, jemalloc, is set by the binary only).
#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// How many allocations of this thread ten runs of `f` leave behind, after one run first (for
/// what is made once: the library's descriptors, lazily registered log call sites).
fn kept_by(mut f: impl FnMut()) -> isize {
    f();
    let before = LIVE.with(Cell::get);
    for _ in 0..10 {
        f();
    }
    LIVE.with(Cell::get) - before
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn the_linked_library_is_validated_like_a_loaded_one() {
    let library = library();
    assert_eq!(
        library.handlers(),
        [
            "echo",
            "explode",
            "explode_streaming",
            "greet",
            "later",
            "pairs",
            "refuse",
            "reverse",
            "shout",
            "total"
        ]
    );
    assert_eq!(library.sdk_version(), env!("CARGO_PKG_VERSION"));
    assert_eq!(
        library.package(),
        Some(("invoker", env!("CARGO_PKG_VERSION")))
    );
    let shout = library.function(Some("shout")).unwrap();
    assert_eq!(shout.info().shape, Shape::Streaming);
    assert_eq!(shout.info().inputs[0].media_types[0], "text/plain");
    let greet = library.function(Some("greet")).unwrap();
    assert_eq!(greet.info().shape, Shape::RequestReply);
}

#[test]
fn owned_outputs_are_copied_and_released_once() {
    let payload = |function, input| invoke(function, input).unwrap().unwrap().payload;
    assert_eq!(payload("greet", b"Riff"), "Hello Riff");
    assert_eq!(payload("reverse", b"abc"), "cba");
    assert_eq!(payload("total", b"[1, 2, 39]"), "42");
    for function in ["greet", "reverse", "total"] {
        let kept = kept_by(|| drop(invoke(function, b"[1]").unwrap()));
        assert_eq!(kept, 0, "{function} leaves allocations behind");
    }
}

#[test]
fn an_error_text_is_returned_and_released() {
    assert_eq!(
        invoke("refuse", b"Riff"),
        Err(FunctionError::Failed("no greeting for Riff".into()))
    );
    assert_eq!(kept_by(|| drop(invoke("refuse", b"Riff"))), 0);
}

#[test]
fn an_undecodable_input_is_bad_input() {
    let Err(FunctionError::BadInput(message)) = invoke("total", b"[1, two]") else {
        panic!("a bad JSON input was taken");
    };
    assert!(
        message.starts_with("Invoker: Bad Input Signal"),
        "{message}"
    );
    assert_eq!(kept_by(|| drop(invoke("total", b"{"))), 0);
}

#[test]
fn a_panic_is_reported_with_its_message() {
    assert_eq!(
        invoke("explode", b"Riff"),
        Err(FunctionError::Panicked("boom: Riff".into()))
    );
    // The message (and the location header with it) is released too.
    assert_eq!(kept_by(|| drop(invoke("explode", b"Riff"))), 0);
}

#[test]
fn a_panic_in_a_stream_ends_it_with_the_message() {
    let input = stream::iter([text("a"), text("b")]);
    let items = collect(open("explode_streaming", vec![Box::pin(input)]));
    assert_eq!(
        items,
        [Err(FunctionError::Panicked("boom in a stream: a".into()))]
    );
    let kept = kept_by(|| {
        drop(collect(open(
            "explode_streaming",
            vec![Box::pin(stream::iter([text("a")]))],
        )))
    });
    assert_eq!(kept, 0);
}

#[test]
fn lent_stream_items_are_copied_before_the_next_poll() {
    // Each message is its own allocation, freed by the host when the next one is polled: a
    // library that kept a pointer to the first of a pair would read freed memory (valgrind).
    let input = stream::iter(["ab", "cd", "ef"].map(text));
    let items = collect(open("pairs", vec![Box::pin(input)]));
    assert_eq!(items, [Ok("abcd".to_owned()), Ok("ef".to_owned())]);
    let kept = kept_by(|| {
        let input = stream::iter(["ab", "cd", "ef"].map(text));
        drop(collect(open("pairs", vec![Box::pin(input)])));
    });
    assert_eq!(kept, 0);
}

#[test]
fn dropping_an_output_stream_drops_the_function_and_its_input() {
    // An input that never ends: only dropping the output can end the call.
    let (input, input_dropped) = watched(stream::iter([text("hi")]).chain(stream::pending()));
    let mut output = open("shout", vec![input]);
    assert_eq!(
        poll(&mut output, Waker::noop()),
        Poll::Ready(Some(Ok("HI".to_owned())))
    );
    assert!(poll(&mut output, Waker::noop()).is_pending());
    let before = SHOUTS_DROPPED.load(Ordering::SeqCst);
    drop(output);
    assert_eq!(SHOUTS_DROPPED.load(Ordering::SeqCst), before + 1);
    assert!(
        input_dropped.load(Ordering::SeqCst),
        "the host's input stream was kept"
    );

    // Opened and dropped without a poll, both sides are released too.
    let kept = kept_by(|| {
        let (input, _) = watched(stream::pending());
        let mut output = open("shout", vec![input]);
        assert!(poll(&mut output, Waker::noop()).is_pending());
    });
    assert_eq!(kept, 0);
}

#[test]
fn the_function_wakes_the_host_from_another_thread() {
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(wakes.clone());
    let mut output = open("later", Vec::new());
    assert!(poll(&mut output, &waker).is_pending());
    assert_eq!(wakes.count(), 0);
    std::thread::spawn(release_later).join().unwrap();
    assert_eq!(wakes.count(), 1, "the host's waker was not woken");
    assert_eq!(
        poll(&mut output, &waker),
        Poll::Ready(Some(Ok("woken".to_owned())))
    );
    assert_eq!(poll(&mut output, &waker), Poll::Ready(None));
}

#[test]
fn the_host_input_wakes_the_host_through_the_function() {
    // The host's waker goes to the library, which polls the host's input with its own view of
    // it: a message sent from another thread must wake the host's task.
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let input = tokio_stream::wrappers::UnboundedReceiverStream::new(receiver);
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(wakes.clone());
    let mut output = open("echo", vec![Box::pin(input)]);
    assert!(poll(&mut output, &waker).is_pending());
    std::thread::spawn(move || sender.send(text("hello")).unwrap())
        .join()
        .unwrap();
    assert_eq!(wakes.count(), 1, "the host's waker was not woken");
    assert_eq!(
        poll(&mut output, &waker),
        Poll::Ready(Some(Ok("hello".to_owned())))
    );
    // The sender is gone: the input ends, and so does the output.
    assert_eq!(poll(&mut output, &waker), Poll::Ready(None));
}
