//! What `#[function]` expands to calls into this module. Not part of the public API.
//!
//! All `unsafe` of a function library lives here: the `extern "C"` shims that the generated
//! code instantiates, and the root symbol. Every shim catches panics; the library's panic hook
//! (installed by the root symbol) hands a caught panic's location to the shim, which sends it
//! to the host with the message, instead of printing the standard panic report.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Once, OnceLock};
use std::task::Poll;

use async_ffi::FfiContext;
use futures_util::Stream;
use invoker_abi::{
    ABI_VERSION, FunctionDescriptor, Header, HostContext, InMessage, InputStream, InvokeFn,
    LibraryDescriptor, OpenFn, OutMessage, OutputStream, PANIC_LOCATION, Port, Slice,
    StatefulDescriptor, ValueSpec, expiration, shape, status,
};

pub use linkme;

pub use crate::lent::Failure;
use crate::lent::{abi_str, payload_of};
use crate::payload::{FromPayload, IntoPayload, Outgoing, Payload};
use crate::{Context, Input};

/// Every function exported by this library, collected at link time.
#[linkme::distributed_slice]
pub static FUNCTIONS: [FunctionSpec];

/// A function as the macro describes it; turned into ABI descriptors on first use.
pub struct FunctionSpec {
    /// Handler name.
    pub name: &'static str,
    /// Inputs: (name, media types).
    pub inputs: &'static [(&'static str, &'static [&'static str])],
    /// Outputs: (name, media types).
    pub outputs: &'static [(&'static str, &'static [&'static str])],
    /// Whether the function takes `&Context`.
    pub uses_context: bool,
    /// The entry point.
    pub entry: Entry,
    /// The package (crate) the function is in, and its version.
    pub package: (&'static str, &'static str),
    /// For a stateful function (`#[statefun]`): its StateFun type and value specs.
    pub stateful: Option<&'static crate::statefun::StatefulSpec>,
}

/// A function's entry point.
pub enum Entry {
    /// A request/reply function.
    Invoke(InvokeFn),
    /// A streaming function.
    Open(OpenFn),
}

/// Every init hook of this library, collected at link time.
#[linkme::distributed_slice]
pub static INIT_HOOKS: [InitHook];

/// Every shutdown hook of this library, collected at link time.
#[linkme::distributed_slice]
pub static SHUTDOWN_HOOKS: [ShutdownHook];

/// An init hook as `#[init]` registers it.
pub struct InitHook {
    /// The hook's name, for error messages.
    pub name: &'static str,
    /// Runs the author's function.
    pub run: fn(&crate::Config) -> Result<(), String>,
}

/// A shutdown hook as `#[shutdown]` registers it.
pub struct ShutdownHook {
    /// Runs the author's function.
    pub run: fn(),
}

/// What an init hook may return: nothing, or a `Result` with a `Display` error.
#[diagnostic::on_unimplemented(
    message = "an init hook cannot return `{Self}`",
    label = "unsupported init hook return type",
    note = "an init hook is `fn name(config: &invoker_sdk::Config)` returning nothing or `Result<(), E>` where E: Display"
)]
pub trait IntoInitResult {
    /// The outcome, with the error as text.
    fn into_init_result(self) -> Result<(), String>;
}

impl IntoInitResult for () {
    fn into_init_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> IntoInitResult for Result<(), E> {
    fn into_init_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// Runs every init hook with the configuration the host lends.
///
/// # Safety
/// `config` must point at `config_len` headers whose strings are UTF-8 and valid for the call;
/// `error` must be writable.
unsafe extern "C" fn init_shim(
    config: *const Header,
    config_len: usize,
    error: *mut OutMessage,
) -> u32 {
    let pairs: &[Header] = if config.is_null() || config_len == 0 {
        &[]
    } else {
        // SAFETY: the host lends `config_len` headers for the duration of this call.
        unsafe { std::slice::from_raw_parts(config, config_len) }
    };
    // SAFETY: the host lends UTF-8 strings for the duration of this call; they are copied.
    let config = crate::Config::new(
        pairs
            .iter()
            .map(|h| unsafe { (abi_str(h.name), abi_str(h.value)) }),
    );
    for hook in INIT_HOOKS.iter() {
        match catch(|| (hook.run)(&config)) {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                // SAFETY: the caller guarantees `error` is writable.
                return unsafe { write_error(error, status::FUNCTION_ERROR, message) };
            }
            Err(mut panic) => {
                panic.message = format!("init hook '{}' panicked: {}", hook.name, panic.message);
                // SAFETY: as above.
                return unsafe { write_panic(error, panic) };
            }
        }
    }
    status::READY
}

/// Runs every shutdown hook; a panic in one is reported on stderr (one line: there is no call
/// to report it to) and the others still run.
extern "C" fn shutdown_shim() {
    for hook in SHUTDOWN_HOOKS.iter() {
        if let Err(panic) = catch(hook.run) {
            let at = panic
                .location
                .unwrap_or_else(|| "an unknown place".to_owned());
            eprintln!(
                "invoker-sdk: a shutdown hook panicked at {at}: {}",
                panic.message
            );
        }
    }
}

/// Why a call failed, as the shims report it.
#[derive(Debug)]
pub enum CallError {
    /// The function returned an error.
    Function(String),
    /// An input could not be decoded.
    BadInput(String),
}

/// Turns a function's `Result` into the shim's.
pub fn fallible<Y, E: Display>(result: Result<Y, E>) -> Result<Y, CallError> {
    result.map_err(|e| CallError::Function(e.to_string()))
}

/// Decodes a request/reply function's input.
pub fn decode<X: FromPayload>(input: Option<&Payload<'_>>) -> Result<X, CallError> {
    let payload = input.ok_or_else(|| {
        CallError::BadInput("Invoker: Bad Input Signal: the function needs an input".into())
    })?;
    crate::lent::decode(payload).map_err(CallError::BadInput)
}

/// Encodes a function's output.
pub fn encode<Y: IntoPayload>(value: Y, media_type: &str) -> Result<Outgoing, CallError> {
    let mut out = Outgoing::default();
    encode_into(value, media_type, &mut out)?;
    Ok(out)
}

/// Encodes `value` into `out` (empty, though it may keep the capacity of earlier messages).
fn encode_into<Y: IntoPayload>(
    value: Y,
    media_type: &str,
    out: &mut Outgoing,
) -> Result<(), CallError> {
    value.into_payload(media_type, out).map_err(|e| {
        CallError::Function(format!(
            "Invoker: cannot encode the function's output as {media_type}: {e}"
        ))
    })
}

/// A request/reply function, implemented by the code `#[function]` generates.
pub trait RequestReply {
    /// The input type's media types (empty for a function without input).
    const INPUT_MEDIA_TYPES: &'static [&'static str];
    /// The output type's media types (empty for a function without output).
    const OUTPUT_MEDIA_TYPES: &'static [&'static str];
    /// Calls the user's function.
    fn call(
        ctx: &Context,
        input: Option<&Payload<'_>>,
        media_type: &'static str,
    ) -> Result<Option<Outgoing>, CallError>;
}

/// A streaming function, implemented by the code `#[function]` generates.
pub trait Streaming {
    /// The number of inputs.
    const INPUTS: usize;
    /// The media types of each output, in output order.
    const OUTPUT_MEDIA_TYPES: &'static [&'static [&'static str]];
    /// Opens the user's function over its inputs.
    fn open(ctx: &Context, inputs: &mut Inputs) -> Result<Vec<BoxOutput>, CallError>;
}

/// The input streams handed to a streaming function's `open`.
pub struct Inputs {
    streams: Vec<Option<InputStream>>,
    failure: Arc<Failure>,
}

impl Inputs {
    /// Takes input number `index` as the function's `Input<X>`.
    pub fn take<X>(&mut self, index: usize) -> Input<X> {
        match self.streams.get_mut(index).and_then(Option::take) {
            Some(raw) => Input::new(raw, self.failure.clone()),
            // The shim checked the count, and the generated code takes each index once.
            None => unreachable!("input {index} taken twice or missing"),
        }
    }
}

impl Drop for Inputs {
    fn drop(&mut self) {
        for raw in self.streams.iter_mut().filter_map(Option::take) {
            // SAFETY: an input stream not taken by the function is dropped once, here.
            unsafe { (raw.drop)(raw.state) }
        }
    }
}

/// One output stream of a streaming function, with its items' encoding.
pub trait ErasedOutput: Send {
    /// Polls the next item, encoded as `media_type` into `out` (empty, with the capacity of
    /// earlier items, so a stream of items reuses one buffer).
    fn poll_item(
        &mut self,
        cx: &mut std::task::Context<'_>,
        media_type: &str,
        out: &mut Outgoing,
    ) -> Poll<Option<Result<(), CallError>>>;
}

/// A boxed output stream.
pub type BoxOutput = Box<dyn ErasedOutput>;

struct Plain<S>(Pin<Box<S>>);

impl<S> ErasedOutput for Plain<S>
where
    S: Stream + Send,
    S::Item: IntoPayload,
{
    fn poll_item(
        &mut self,
        cx: &mut std::task::Context<'_>,
        media_type: &str,
        out: &mut Outgoing,
    ) -> Poll<Option<Result<(), CallError>>> {
        self.0
            .as_mut()
            .poll_next(cx)
            .map(|item| item.map(|y| encode_into(y, media_type, out)))
    }
}

struct Fallible<S>(Pin<Box<S>>);

impl<S, Y, E> ErasedOutput for Fallible<S>
where
    S: Stream<Item = Result<Y, E>> + Send,
    Y: IntoPayload,
    E: Display,
{
    fn poll_item(
        &mut self,
        cx: &mut std::task::Context<'_>,
        media_type: &str,
        out: &mut Outgoing,
    ) -> Poll<Option<Result<(), CallError>>> {
        self.0.as_mut().poll_next(cx).map(|item| {
            item.map(|result| match result {
                Ok(y) => encode_into(y, media_type, out),
                Err(e) => Err(CallError::Function(e.to_string())),
            })
        })
    }
}

/// Wraps a stream of payloads as an output.
pub fn output<S>(stream: S) -> BoxOutput
where
    S: Stream + Send + 'static,
    S::Item: IntoPayload,
{
    Box::new(Plain(Box::pin(stream)))
}

/// Wraps a stream of `Result`s as an output: the first error ends the call.
pub fn output_fallible<S, Y, E>(stream: S) -> BoxOutput
where
    S: Stream<Item = Result<Y, E>> + Send + 'static,
    Y: IntoPayload,
    E: Display,
{
    Box::new(Fallible(Box::pin(stream)))
}

// ---------------------------------------------------------------------------------------------
// Shims

/// What a library allocates for an [`OutMessage`]: freed by [`release_owner`].
struct Owner {
    payload: Vec<u8>,
    header_strings: Vec<(String, String)>,
    headers: Vec<Header>,
}

unsafe extern "C" fn release_owner(owner: *mut c_void) {
    let drop_it = || {
        // SAFETY: `owner` came from `Box::into_raw` in `write_message`, and the host releases
        // each message exactly once.
        drop(unsafe { Box::from_raw(owner.cast::<Owner>()) });
    };
    // Dropping plain data does not panic; if it ever did, it must not unwind into the host.
    let _ = catch_unwind(AssertUnwindSafe(drop_it));
}

/// Writes an owned message into `out`.
///
/// # Safety
/// `out` must be valid for writes.
unsafe fn write_message(out: *mut OutMessage, payload: Vec<u8>, headers: Vec<(String, String)>) {
    let mut owner = Box::new(Owner {
        payload,
        header_strings: headers,
        headers: Vec::new(),
    });
    owner.headers = owner
        .header_strings
        .iter()
        .map(|(n, v)| Header {
            name: Slice::from_str(n),
            value: Slice::from_str(v),
        })
        .collect();
    let message = OutMessage {
        payload: Slice::new(&owner.payload),
        headers: owner.headers.as_ptr(),
        headers_len: owner.headers.len(),
        owner: Box::into_raw(owner).cast(),
        release: Some(release_owner),
    };
    // SAFETY: the caller guarantees `out` is writable; moving the box did not move the heap
    // buffers the slices point into.
    unsafe { out.write(message) }
}

/// Lends the output stream's current item to the host (no `release`: valid until the next
/// poll or drop of the stream, per the ABI).
///
/// # Safety
/// `out` must be valid for writes.
unsafe fn lend_item(out: *mut OutMessage, state: &mut OutputState) {
    state
        .item_headers
        .extend(state.item.headers.iter().map(|(n, v)| Header {
            name: Slice::from_str(n),
            value: Slice::from_str(v),
        }));
    let message = OutMessage {
        payload: Slice::new(&state.item.payload),
        headers: state.item_headers.as_ptr(),
        headers_len: state.item_headers.len(),
        owner: std::ptr::null_mut(),
        release: None,
    };
    // SAFETY: the caller guarantees `out` is writable.
    unsafe { out.write(message) }
}

/// Writes an error text into `out` and returns its status.
///
/// # Safety
/// `out` must be valid for writes.
unsafe fn write_error(out: *mut OutMessage, code: u32, message: String) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe { write_message(out, message.into_bytes(), Vec::new()) };
    code
}

/// Writes a caught panic into `out`: the message as the payload, the location (when known) in
/// a [`PANIC_LOCATION`] header. Returns [`status::PANIC`].
///
/// # Safety
/// `out` must be valid for writes.
unsafe fn write_panic(out: *mut OutMessage, panic: Caught) -> u32 {
    let headers = panic
        .location
        .map(|at| vec![(PANIC_LOCATION.to_owned(), at)])
        .unwrap_or_default();
    // SAFETY: forwarded from the caller.
    unsafe { write_message(out, panic.message.into_bytes(), headers) };
    status::PANIC
}

/// # Safety
/// `out` must be valid for writes.
unsafe fn write_call_error(out: *mut OutMessage, error: CallError) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        match error {
            CallError::Function(message) => write_error(out, status::FUNCTION_ERROR, message),
            CallError::BadInput(message) => write_error(out, status::BAD_INPUT, message),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Panics

thread_local! {
    /// How many shims on this thread are running code under [`catch`] now: a panic then is
    /// reported to the host, so the hook prints nothing.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
    /// Where the last panic under [`catch`] on this thread happened, as the hook saw it.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic caught by a shim: its message and, when the library's hook saw it, where it
/// happened (`file:line:column`).
struct Caught {
    message: String,
    location: Option<String>,
}

/// Installs the library's panic hook, once per library. A `cdylib` links its own copy of std,
/// and with it its own panic hook: this one sees only panics of this library's code and leaves
/// the host's hook alone. A panic under [`catch`] is recorded for the shim, which reports it to
/// the host; any other (in a thread the function started, in a drop the host asked for) goes
/// to the hook that was there before, which prints it. Built with `panic = "abort"`, a panic
/// ends the process before any shim could report it: the standard report stays.
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    if cfg!(panic = "abort") {
        return;
    }
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.try_with(Cell::get).unwrap_or(0) == 0 {
                return previous(info);
            }
            let at = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            let _ = LOCATION.try_with(|slot| slot.replace(at));
        }));
    });
}

/// Runs `f`, catching a panic: its message and location come back instead of being printed.
fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
    CATCHING.set(CATCHING.get() + 1);
    let result = catch_unwind(AssertUnwindSafe(f));
    CATCHING.set(CATCHING.get() - 1);
    // Taken either way: a panic the function caught itself leaves nothing for the next one.
    let location = LOCATION.take();
    result.map_err(|panic| Caught {
        message: panic_message(&*panic),
        location,
    })
}

/// The text of a panic payload.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// The `extern "C"` entry point of a request/reply function `H`.
///
/// # Safety
/// Called by the host per the ABI: `ctx` valid, `input` null or valid, `out` writable.
pub unsafe extern "C" fn invoke_shim<H: RequestReply>(
    ctx: *const HostContext,
    input: *const InMessage,
    media_type: u32,
    out: *mut OutMessage,
) -> u32 {
    let run = || {
        let Some(out_type) = H::OUTPUT_MEDIA_TYPES
            .get(media_type as usize)
            .copied()
            .or(H::OUTPUT_MEDIA_TYPES.is_empty().then_some(""))
        else {
            return Err(CallError::Function(format!(
                "Invoker: output media type #{media_type} out of range"
            )));
        };
        // SAFETY: the host passes a context valid for this call.
        let ctx = unsafe { Context::from_raw(ctx) };
        // SAFETY: the host passes null or a message lent for this call.
        let payload = match unsafe { input.as_ref() } {
            None => None,
            // SAFETY: as above.
            Some(msg) => Some(
                unsafe { payload_of(msg, H::INPUT_MEDIA_TYPES) }.map_err(CallError::BadInput)?,
            ),
        };
        H::call(&ctx, payload.as_ref(), out_type)
    };
    let result = catch(run);
    // SAFETY: `out` is writable per the ABI.
    unsafe {
        match result {
            Ok(Ok(Some(message))) => {
                write_message(out, message.payload, message.headers);
                status::READY
            }
            Ok(Ok(None)) => status::EMPTY,
            Ok(Err(error)) => write_call_error(out, error),
            Err(panic) => write_panic(out, panic),
        }
    }
}

/// The state behind an [`OutputStream`] handed to the host.
struct OutputState {
    output: BoxOutput,
    media_types: &'static [&'static str],
    failure: Arc<Failure>,
    done: bool,
    /// The last item, lent to the host until the next poll or drop (so no allocation per
    /// item for its owner, and its buffer is reused for the next item).
    item: Outgoing,
    /// The item's headers as the ABI lends them.
    item_headers: Vec<Header>,
}

unsafe extern "C" fn output_poll(
    state: *mut c_void,
    cx: &mut FfiContext<'_>,
    media_type: u32,
    out: *mut OutMessage,
) -> u32 {
    // SAFETY: `state` is the `OutputState` this library created in `open_shim`; the host
    // polls it from one thread at a time and not after `output_drop`.
    let state = unsafe { &mut *state.cast::<OutputState>() };
    if state.done {
        return status::END;
    }
    if state.failure.is_set() {
        state.done = true;
        // SAFETY: `out` is writable per the ABI.
        return unsafe { write_error(out, status::BAD_INPUT, state.failure.message()) };
    }
    let Some(out_type) = state.media_types.get(media_type as usize).copied() else {
        state.done = true;
        let message = format!("Invoker: output media type #{media_type} out of range");
        // SAFETY: `out` is writable per the ABI.
        return unsafe { write_error(out, status::FUNCTION_ERROR, message) };
    };
    state.item.payload.clear();
    state.item.headers.clear();
    state.item_headers.clear();
    let polled =
        catch(|| cx.with_context(|cx| state.output.poll_item(cx, out_type, &mut state.item)));
    // SAFETY: `out` is writable per the ABI.
    unsafe {
        match polled {
            Ok(Poll::Ready(Some(Ok(())))) => {
                lend_item(out, state);
                status::READY
            }
            Ok(Poll::Ready(Some(Err(error)))) => {
                state.done = true;
                write_call_error(out, error)
            }
            Ok(Poll::Ready(None)) | Ok(Poll::Pending) if state.failure.is_set() => {
                state.done = true;
                write_error(out, status::BAD_INPUT, state.failure.message())
            }
            Ok(Poll::Ready(None)) => {
                state.done = true;
                status::END
            }
            Ok(Poll::Pending) => status::PENDING,
            Err(panic) => {
                state.done = true;
                write_panic(out, panic)
            }
        }
    }
}

unsafe extern "C" fn output_drop(state: *mut c_void) {
    // SAFETY: `state` came from `Box::into_raw` in `open_shim`; the host drops it once.
    let state = unsafe { Box::from_raw(state.cast::<OutputState>()) };
    // The function's stream may run arbitrary code when dropped: keep a panic on this side.
    // There is nothing to report it to (the host asked for the stream to go away, and it has),
    // so it is not under `catch`: the hook that was there before prints it.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(state)));
}

/// The `extern "C"` entry point of a streaming function `H`.
///
/// # Safety
/// Called by the host per the ABI: `ctx` valid; `inputs` points to `inputs_len` streams whose
/// ownership passes to this call; `outputs` has room for `outputs_len` streams; `error` writable.
pub unsafe extern "C" fn open_shim<H: Streaming>(
    ctx: *const HostContext,
    inputs: *mut InputStream,
    inputs_len: usize,
    outputs: *mut OutputStream,
    outputs_len: usize,
    error: *mut OutMessage,
) -> u32 {
    let failure = Arc::new(Failure::default());
    // Take ownership of the inputs first, so they are released whatever happens next.
    let mut owned = Inputs {
        streams: (0..inputs_len)
            // SAFETY: the host passes `inputs_len` initialised streams and gives them to us.
            .map(|i| Some(unsafe { inputs.add(i).read() }))
            .collect(),
        failure: failure.clone(),
    };
    let outputs_expected = H::OUTPUT_MEDIA_TYPES.len();
    if inputs_len != H::INPUTS || outputs_len != outputs_expected {
        let message = format!(
            "Invoker: the function takes {} inputs and {} outputs, not {inputs_len} and {outputs_len}",
            H::INPUTS,
            outputs_expected
        );
        // SAFETY: `error` is writable per the ABI.
        return unsafe { write_error(error, status::FUNCTION_ERROR, message) };
    }
    let opened = catch(|| {
        // SAFETY: the host passes a context valid for this call.
        let ctx = unsafe { Context::from_raw(ctx) };
        H::open(&ctx, &mut owned)
    });
    drop(owned);
    let streams = match opened {
        Ok(Ok(streams)) => streams,
        // SAFETY: `error` is writable per the ABI.
        Ok(Err(e)) => return unsafe { write_call_error(error, e) },
        // SAFETY: as above.
        Err(panic) => return unsafe { write_panic(error, panic) },
    };
    if streams.len() != outputs_len {
        let message = format!(
            "Invoker: the function opened {} outputs, not {outputs_len}",
            streams.len()
        );
        // SAFETY: `error` is writable per the ABI.
        return unsafe { write_error(error, status::FUNCTION_ERROR, message) };
    }
    let typed = streams
        .into_iter()
        .zip(H::OUTPUT_MEDIA_TYPES.iter().copied());
    for (i, (output, media_types)) in typed.enumerate() {
        let state = Box::new(OutputState {
            output,
            media_types,
            failure: failure.clone(),
            done: false,
            item: Outgoing::default(),
            item_headers: Vec::new(),
        });
        let stream = OutputStream {
            state: Box::into_raw(state).cast(),
            poll_next: output_poll,
            drop: output_drop,
        };
        // SAFETY: `outputs` has room for `outputs_len` streams and `i < outputs_len`.
        unsafe { outputs.add(i).write(stream) };
    }
    status::READY
}

// ---------------------------------------------------------------------------------------------
// The root symbol

/// The descriptors, built once from [`FUNCTIONS`]; kept for the life of the library.
struct Descriptors {
    library: LibraryDescriptor,
    // Boxed: each descriptor's address is handed out as it is made, before the vector is
    // complete, so it must not move when the vector grows.
    #[allow(clippy::vec_box)]
    _stateful: Vec<Box<StatefulDescriptor>>,
    _value_specs: Vec<Vec<ValueSpec>>,
    _pointers: Vec<*const FunctionDescriptor>,
    _functions: Vec<FunctionDescriptor>,
    _ports: Vec<Vec<Port>>,
    _media_types: Vec<Vec<Slice>>,
}

// SAFETY: the descriptors are immutable after construction and only point into `'static`
// data or into the vectors they own.
unsafe impl Send for Descriptors {}
// SAFETY: as above.
unsafe impl Sync for Descriptors {}

fn build_descriptors() -> Descriptors {
    let mut media_types = Vec::new();
    let mut ports = Vec::new();
    let mut functions = Vec::new();
    let mut stateful = Vec::new();
    let mut value_specs = Vec::new();
    let mut port_list = |list: &'static [(&'static str, &'static [&'static str])]| {
        let port_vec: Vec<Port> = list
            .iter()
            .map(|(name, types)| {
                let slices: Vec<Slice> = types.iter().map(|t| Slice::from_str(t)).collect();
                let port = Port {
                    name: Slice::from_str(name),
                    media_types: slices.as_ptr(),
                    media_types_len: slices.len(),
                };
                media_types.push(slices);
                port
            })
            .collect();
        let raw = (port_vec.as_ptr(), port_vec.len());
        ports.push(port_vec);
        raw
    };
    for spec in FUNCTIONS.iter() {
        let (inputs, inputs_len) = port_list(spec.inputs);
        let (outputs, outputs_len) = port_list(spec.outputs);
        let (shape, invoke, open) = match spec.entry {
            Entry::Invoke(f) => (shape::REQUEST_REPLY, Some(f), None),
            Entry::Open(f) => (shape::STREAMING, None, Some(f)),
        };
        let stateful_ptr = match spec.stateful {
            Some(spec) => {
                let values: Vec<ValueSpec> = spec.values.iter().map(value_spec).collect();
                let descriptor = Box::new(StatefulDescriptor {
                    size: size_of::<StatefulDescriptor>() as u32,
                    function_type: Slice::from_str(spec.function_type),
                    values: values.as_ptr(),
                    values_len: values.len(),
                });
                let ptr: *const StatefulDescriptor = &*descriptor;
                value_specs.push(values);
                stateful.push(descriptor);
                ptr
            }
            None => std::ptr::null(),
        };
        functions.push(FunctionDescriptor {
            size: size_of::<FunctionDescriptor>() as u32,
            shape,
            name: Slice::from_str(spec.name),
            inputs,
            inputs_len,
            outputs,
            outputs_len,
            uses_context: spec.uses_context,
            invoke,
            open,
            stateful: stateful_ptr,
        });
    }
    // The library's package: its functions' (the first one's, should a dependency export
    // functions too).
    let package = FUNCTIONS.first().map_or(("", ""), |f| f.package);
    // `functions` is complete: it will not reallocate, so these pointers stay valid.
    let pointers: Vec<*const FunctionDescriptor> =
        functions.iter().map(|f| f as *const _).collect();
    let library = LibraryDescriptor {
        abi_version: ABI_VERSION,
        size: size_of::<LibraryDescriptor>() as u32,
        sdk_version: Slice::from_str(env!("CARGO_PKG_VERSION")),
        functions: pointers.as_ptr(),
        functions_len: pointers.len(),
        panic_unwind: cfg!(panic = "unwind"),
        init: (!INIT_HOOKS.is_empty()).then_some(init_shim as invoker_abi::InitFn),
        shutdown: (!SHUTDOWN_HOOKS.is_empty()).then_some(shutdown_shim as invoker_abi::ShutdownFn),
        package_name: Slice::from_str(package.0),
        package_version: Slice::from_str(package.1),
    };
    Descriptors {
        library,
        _stateful: stateful,
        _value_specs: value_specs,
        _pointers: pointers,
        _functions: functions,
        _ports: ports,
        _media_types: media_types,
    }
}

/// A value spec as the ABI describes it.
fn value_spec(spec: &crate::statefun::RawSpec) -> ValueSpec {
    use crate::statefun::Expiration;
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (expiration_mode, expire_after_millis) = match spec.expiration {
        Expiration::Never => (expiration::NONE, 0),
        Expiration::AfterWrite(d) => (expiration::AFTER_WRITE, millis(d)),
        Expiration::AfterInvoke(d) => (expiration::AFTER_INVOKE, millis(d)),
    };
    ValueSpec {
        name: Slice::from_str(spec.name),
        typename: Slice::from_str(spec.typename),
        expiration_mode,
        expire_after_millis,
    }
}

/// The library's root symbol.
///
/// # Safety
/// Always safe to call; `unsafe` only because it is part of the C ABI.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn invoker_library() -> *const LibraryDescriptor {
    static DESCRIPTORS: OnceLock<Descriptors> = OnceLock::new();
    // The host calls this first, before any shim.
    install_panic_hook();
    match catch_unwind(|| &DESCRIPTORS.get_or_init(build_descriptors).library as *const _) {
        Ok(library) => library,
        Err(_) => std::ptr::null(),
    }
}
