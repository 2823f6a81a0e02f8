//! The host side of the library boundary: with `crash`, the only modules of the daemon with
//! `unsafe`.
//!
//! Everything read from a library is validated and copied into owned Rust values at load time
//! ([`load`]); afterwards the rest of the daemon only sees the safe types of
//! [`crate::function`]. Each call into the library goes through a function here, with the
//! library kept alive by an `Arc` in every value that can still reach into it.

use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_ffi::{ContextExt, FfiContext};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use invoker_abi::{
    ABI_VERSION, FunctionDescriptor, Header, HostContext, InMessage, InitFn, InputStream, InvokeFn,
    LibraryDescriptor, LibraryDescriptorV1, OpenFn, OutMessage, OutputStream as RawOutputStream,
    PANIC_LOCATION, Port, ROOT_SYMBOL, RootFn, ShutdownFn, Slice, shape, status,
};

use super::crash::Running;
use super::panics::{self, Source};
use super::{
    CallContext, CallMeta, FunctionError, FunctionInfo, InputMessage, LoadError, OutputMessage,
    PortInfo, Shape, Text,
};

/// A loaded library. Never unloaded: a library may have left threads (timers), thread-locals
/// or wakers behind that still point into its code, so `dlclose` is never safe to call.
pub(crate) struct LoadedLibrary {
    /// The dynamic loader's handle; `None` for a library linked into this program (the
    /// round-trip test's, see [`linked`]).
    _library: ManuallyDrop<Option<libloading::Library>>,
    /// The memory file the library was loaded from, if it was, kept open (see [`load`]).
    _image: ManuallyDrop<Option<std::os::fd::OwnedFd>>,
    path: PathBuf,
    init: Option<InitFn>,
    shutdown: Option<ShutdownFn>,
    /// Set once the shutdown hook ran, so it runs at most once.
    shut_down: std::sync::atomic::AtomicBool,
}

impl LoadedLibrary {
    /// The path the library was loaded from.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the library's init hook, if it has one, with the user configuration.
    pub(crate) fn init(&self, config: &[(String, String)]) -> Result<(), FunctionError> {
        let Some(init) = self.init else {
            return Ok(());
        };
        let headers = abi_headers(config);
        let mut error = OutMessage::EMPTY;
        let path = self.path.to_string_lossy();
        let _running = Running::init(&path);
        // SAFETY: the headers and the strings they point into live until the hook returns;
        // `error` is writable; the hook was read from the validated descriptor of this
        // library, which is loaded.
        let code = unsafe { init(headers.as_ptr(), headers.len(), &mut error) };
        let source = Source::Init {
            library: &self.path,
        };
        match code {
            status::READY => Ok(()),
            // SAFETY: `error` was filled by the library for an error status.
            code => Err(unsafe { error_of(code, error, source) }),
        }
    }

    /// Runs the library's shutdown hook, if it has one and it has not run yet.
    pub(crate) fn shutdown(&self) {
        if let Some(shutdown) = self.shutdown
            && !self
                .shut_down
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let path = self.path.to_string_lossy();
            let _running = Running::shutdown(&path);
            // SAFETY: the hook comes from this loaded library's validated descriptor; the SDK
            // catches panics inside it, and the flag above makes it run at most once.
            unsafe { shutdown() }
        }
    }
}

/// A function's entry point.
#[derive(Clone, Copy)]
pub(crate) enum Entry {
    Invoke(InvokeFn),
    Open(OpenFn),
}

/// What loading a library yields: the library and its validated functions.
pub(crate) struct Loaded {
    pub(crate) library: Arc<LoadedLibrary>,
    pub(crate) sdk_version: String,
    pub(crate) package: Option<(String, String)>,
    pub(crate) functions: Vec<(FunctionInfo, Entry)>,
}

/// Loads the library at `path` (the private copy `Library::load` made) and validates its
/// descriptor; errors and logs name it `shown`, the file the operator named.
///
/// `image`, when the copy is a memory file opened as `/proc/self/fd/N`, is never closed once
/// the dynamic loader has opened it: the loader knows the library by its path, and a later load
/// through a reused descriptor number would be handed this one.
pub(crate) fn load(
    path: &Path,
    image: Option<std::os::fd::OwnedFd>,
    shown: &Path,
) -> Result<Loaded, LoadError> {
    let display = shown.display().to_string();
    let display_path = display.clone();
    // Loading runs the library's code: its initialisers, its root function.
    let _running = Running::loading(&display_path);
    // SAFETY: loading a library runs its initialisers. That is the point of the daemon: the
    // operator named this file as the function to run, and trusts it like any executable.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|e| super::load_error::load_failure(path, &display, &e))?;
    let image = ManuallyDrop::new(image);
    let root_name = format!("{ROOT_SYMBOL}\0");
    // SAFETY: `invoker_library` is declared by the ABI as `RootFn`; if a library exports the
    // name with another type, that library breaks the ABI it claims to implement.
    let root: RootFn = match unsafe { library.get::<RootFn>(root_name.as_bytes()) } {
        Ok(symbol) => *symbol,
        Err(_) => return Err(LoadError::NoRootSymbol { path: display }),
    };
    describe(root, Some(library), image, shown)
}

/// Builds the record of a library linked into this program from its root function, with the
/// validation [`load`] does: the SDK's descriptor and shims called through this module
/// without `dlopen` (the round-trip test, `function::round_trip`).
#[cfg(test)]
pub(crate) fn linked(root: RootFn, shown: &Path) -> Result<Loaded, LoadError> {
    let display = shown.display().to_string();
    let _running = Running::loading(&display);
    describe(root, None, ManuallyDrop::new(None), shown)
}

/// Calls a library's root function and validates the descriptor it returns; `library` and
/// `image` are kept in the record, never dropped (see [`LoadedLibrary`]).
fn describe(
    root: RootFn,
    library: Option<libloading::Library>,
    image: ManuallyDrop<Option<std::os::fd::OwnedFd>>,
    shown: &Path,
) -> Result<Loaded, LoadError> {
    let display = shown.display().to_string();
    let display_path = display.clone();
    // SAFETY: the root function takes no arguments and returns a pointer per the ABI.
    let descriptor = unsafe { root() };
    if descriptor.is_null() {
        return Err(LoadError::Invalid {
            path: display,
            reason: format!("{ROOT_SYMBOL}() returned no descriptor"),
        });
    }
    // SAFETY: the first two fields (`abi_version`, `size`: two u32) are laid out identically in
    // every ABI version, so they can be read before the version is known.
    let (abi_version, size) = unsafe {
        let head = descriptor.cast::<u32>();
        (head.read(), head.add(1).read())
    };
    if abi_version != ABI_VERSION {
        return Err(LoadError::AbiMismatch {
            path: display,
            library: abi_version,
            host: ABI_VERSION,
        });
    }
    if (size as usize) < LibraryDescriptor::V1_SIZE {
        return Err(LoadError::Invalid {
            path: display,
            reason: format!(
                "its descriptor is {size} bytes, shorter than ABI version {ABI_VERSION}'s"
            ),
        });
    }
    let full = descriptor;
    // SAFETY: the version matches this ABI and the size covers its first fields, so the
    // pointer is (at least) a `LibraryDescriptorV1`, living as long as the library (which is
    // never unloaded). Fields appended later are read below only if `size` covers them.
    let descriptor: &'static LibraryDescriptorV1 = unsafe { &*full.cast() };
    let invalid = |reason: String| LoadError::Invalid {
        path: display.clone(),
        reason,
    };
    // SAFETY: strings in a descriptor live as long as the library.
    let sdk_version = unsafe { read_str(descriptor.sdk_version) }.map_err(&invalid)?;
    let package_end = std::mem::offset_of!(LibraryDescriptor, package_version) + size_of::<Slice>();
    let package = if LibraryDescriptor::covers(size, package_end) {
        // SAFETY: `size` covers both fields, so they are in the descriptor: read them through
        // the raw pointer, field by field; their strings live as long as the library.
        let (name, version) = unsafe {
            (
                read_str(std::ptr::addr_of!((*full).package_name).read()),
                read_str(std::ptr::addr_of!((*full).package_version).read()),
            )
        };
        Some((name.map_err(&invalid)?, version.map_err(&invalid)?))
            .filter(|(name, _)| !name.is_empty())
    } else {
        None
    };
    if !descriptor.panic_unwind {
        tracing::warn!(
            path = %display_path,
            "the library was built with panic = \"abort\": a panic in the function will end the invoker"
        );
    }
    // SAFETY: the descriptor points at `functions_len` descriptor pointers.
    let pointers = unsafe { read_array(descriptor.functions, descriptor.functions_len) }
        .map_err(|e| invalid(format!("its function table is invalid: {e}")))?;
    let mut functions = Vec::with_capacity(pointers.len());
    for &pointer in pointers {
        // SAFETY: each pointer in the table points at a descriptor living as long as the library.
        let function = unsafe { read_function(pointer) }.map_err(&invalid)?;
        if functions
            .iter()
            .any(|(f, _): &(FunctionInfo, Entry)| f.name == function.0.name)
        {
            return Err(invalid(format!("it exports '{}' twice", function.0.name)));
        }
        functions.push(function);
    }
    // Link order is not declaration order: sort, so listings and errors are stable.
    functions.sort_by(|(a, _), (b, _)| a.name.cmp(&b.name));
    Ok(Loaded {
        library: Arc::new(LoadedLibrary {
            _library: ManuallyDrop::new(library),
            _image: image,
            path: shown.to_path_buf(),
            init: descriptor.init,
            shutdown: descriptor.shutdown,
            shut_down: std::sync::atomic::AtomicBool::new(false),
        }),
        sdk_version,
        package,
        functions,
    })
}

/// Reads and validates one function descriptor.
///
/// # Safety
/// `pointer` must be null or point at a `FunctionDescriptor` that outlives the library.
unsafe fn read_function(
    pointer: *const FunctionDescriptor,
) -> Result<(FunctionInfo, Entry), String> {
    // SAFETY: forwarded from the caller.
    let Some(f) = (unsafe { pointer.as_ref() }) else {
        return Err("its function table holds a null pointer".to_owned());
    };
    if (f.size as usize) < size_of::<FunctionDescriptor>() {
        return Err(format!(
            "a function descriptor is {} bytes, too short",
            f.size
        ));
    }
    // SAFETY: descriptor strings and arrays live as long as the library.
    let name = unsafe { read_str(f.name) }?;
    let context = |e: String| format!("function '{name}': {e}");
    // SAFETY: as above.
    let inputs = unsafe { read_ports(f.inputs, f.inputs_len) }.map_err(context)?;
    // SAFETY: as above.
    let outputs = unsafe { read_ports(f.outputs, f.outputs_len) }.map_err(context)?;
    let (shape, entry) = match (f.shape, f.invoke, f.open) {
        (shape::REQUEST_REPLY, Some(invoke), _) if inputs.len() <= 1 && outputs.len() <= 1 => {
            (Shape::RequestReply, Entry::Invoke(invoke))
        }
        (shape::STREAMING, _, Some(open)) if !outputs.is_empty() => {
            (Shape::Streaming, Entry::Open(open))
        }
        (other, _, _) => {
            return Err(format!(
                "function '{name}' has an invalid shape ({other}, {} inputs, {} outputs)",
                inputs.len(),
                outputs.len()
            ));
        }
    };
    let info = FunctionInfo {
        name,
        shape,
        inputs,
        outputs,
        uses_context: f.uses_context,
    };
    Ok((info, entry))
}

/// # Safety
/// `ports` must point at `len` ports living as long as the library.
unsafe fn read_ports(ports: *const Port, len: usize) -> Result<Vec<PortInfo>, String> {
    // SAFETY: forwarded from the caller.
    let ports = unsafe { read_array(ports, len) }?;
    ports
        .iter()
        .map(|port| {
            // SAFETY: the port's strings live as long as the library.
            let name = unsafe { read_str(port.name) }?;
            // SAFETY: as above.
            let types = unsafe { read_array(port.media_types, port.media_types_len) }?;
            let media_types = types
                .iter()
                // SAFETY: as above.
                .map(|&t| unsafe { read_str(t) }.map(|s| s.to_ascii_lowercase()))
                .collect::<Result<Vec<_>, _>>()?;
            if media_types.is_empty() {
                return Err(format!("port '{name}' has no media types"));
            }
            Ok(PortInfo { name, media_types })
        })
        .collect()
}

/// # Safety
/// `ptr` must point at `len` initialised values living for `'a` (or `len` must be 0).
unsafe fn read_array<'a, T>(ptr: *const T, len: usize) -> Result<&'a [T], String> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() || !ptr.is_aligned() {
        return Err("an array pointer is null or misaligned".to_owned());
    }
    // SAFETY: forwarded from the caller; checked non-null and aligned.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// # Safety
/// `s` must point at `s.len` readable bytes (or be empty).
unsafe fn read_str(s: Slice) -> Result<String, String> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { read_array(s.ptr, s.len) }?;
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not valid UTF-8".to_owned())
}

/// # Safety
/// As [`read_str`].
unsafe fn read_text(s: Slice) -> Result<Text, String> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { read_array(s.ptr, s.len) }?;
    Text::from_utf8(bytes).map_err(|_| "a string is not valid UTF-8".to_owned())
}

// ---------------------------------------------------------------------------------------------
// The context

/// Builds the C view of a call's context. `ctx` must outlive every use of the result.
fn host_context(ctx: &CallContext) -> HostContext {
    HostContext {
        size: size_of::<HostContext>() as u32,
        data: (ctx as *const CallContext).cast(),
        function_name: Slice::from_str(&ctx.function_name),
        instance_id: Slice::from_str(&ctx.instance_id),
        header: ctx_header,
        config: ctx_config,
        log: ctx_log,
        metric: ctx_metric,
        deadline_millis: ctx_deadline_millis,
        is_cancelled: ctx_is_cancelled,
    }
}

/// # Safety
/// `data` must be the `CallContext` a `HostContext` was built from, still alive.
unsafe fn call_context<'a>(data: *const c_void) -> &'a CallContext {
    // SAFETY: forwarded from the caller.
    unsafe { &*data.cast::<CallContext>() }
}

unsafe extern "C" fn ctx_header(data: *const c_void, index: usize, out: *mut Header) -> bool {
    // SAFETY: the library passes back the `data` of the context we lent it, during the call.
    let ctx = unsafe { call_context(data) };
    match ctx.headers.get(index) {
        Some((name, value)) => {
            let header = Header {
                name: Slice::from_str(name),
                value: Slice::from_str(value),
            };
            // SAFETY: the library passes a writable `Header`.
            unsafe { out.write(header) };
            true
        }
        None => false,
    }
}

unsafe extern "C" fn ctx_config(data: *const c_void, key: Slice, out: *mut Slice) -> bool {
    // SAFETY: as in `ctx_header`.
    let ctx = unsafe { call_context(data) };
    // SAFETY: the library lends the key for the duration of this call.
    let Ok(key) = (unsafe { read_array(key.ptr, key.len) }) else {
        return false;
    };
    let Ok(key) = std::str::from_utf8(key) else {
        return false;
    };
    match ctx.config.get(key) {
        Some(value) => {
            // SAFETY: the library passes a writable `Slice`; the value lives in the config,
            // which outlives the call.
            unsafe { out.write(Slice::from_str(value)) };
            true
        }
        None => false,
    }
}

unsafe extern "C" fn ctx_log(data: *const c_void, level: u32, message: Slice) {
    // SAFETY: as in `ctx_header`.
    let ctx = unsafe { call_context(data) };
    // SAFETY: the library lends the message for the duration of this call.
    let bytes = unsafe { read_array(message.ptr, message.len) }.unwrap_or_default();
    // A panic must not unwind into the library (nor abort the invoker): the line is lost.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        ctx.log(level, &String::from_utf8_lossy(bytes));
    }));
}

unsafe extern "C" fn ctx_metric(data: *const c_void, name: Slice, value: f64) {
    // SAFETY: as in `ctx_header`.
    let ctx = unsafe { call_context(data) };
    // SAFETY: the library lends the name for the duration of this call.
    let bytes = unsafe { read_array(name.ptr, name.len) }.unwrap_or_default();
    // As in `ctx_log`: the sample is lost.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        ctx.record_metric(&String::from_utf8_lossy(bytes), value);
    }));
}

unsafe extern "C" fn ctx_deadline_millis(data: *const c_void) -> i64 {
    // SAFETY: as in `ctx_header`.
    let ctx = unsafe { call_context(data) };
    ctx.deadline_millis()
}

unsafe extern "C" fn ctx_is_cancelled(data: *const c_void) -> bool {
    // SAFETY: as in `ctx_header`.
    let ctx = unsafe { call_context(data) };
    ctx.is_cancelled()
}

// ---------------------------------------------------------------------------------------------
// Calls

/// Views a message's headers (or the configuration's pairs) as ABI headers, borrowing the
/// strings.
fn abi_headers<S: AsRef<str>>(headers: &[(S, S)]) -> Vec<Header> {
    headers
        .iter()
        .map(|(name, value)| Header {
            name: Slice::from_str(name.as_ref()),
            value: Slice::from_str(value.as_ref()),
        })
        .collect()
}

/// Where an output stream's small payloads are copied: blocks shared by the messages cut from
/// them, so a stream costs one allocation per block rather than one per message. A block is
/// freed when the last message cut from it has been sent.
#[derive(Default)]
struct Arena(BytesMut);

impl Arena {
    /// The size of a block.
    const BLOCK: usize = 16 * 1024;

    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if bytes.len() > Self::BLOCK / 4 {
            return Bytes::copy_from_slice(bytes);
        }
        if self.0.capacity() < bytes.len() {
            self.0 = BytesMut::with_capacity(Self::BLOCK);
        }
        self.0.extend_from_slice(bytes);
        self.0.split().freeze()
    }
}

/// Takes an output message from the library: copies it (into `arena`, if given), then
/// releases the library's copy.
///
/// # Safety
/// `out` must have been filled by the library per the ABI (or be [`OutMessage::EMPTY`]).
unsafe fn take_message(
    out: OutMessage,
    arena: Option<&mut Arena>,
) -> Result<OutputMessage, String> {
    let copied = (|| {
        // SAFETY: the library's message stays valid until released (or, lent, until the next
        // call into the library), below.
        let payload = unsafe { read_array(out.payload.ptr, out.payload.len) }?;
        let payload = match arena {
            Some(arena) => arena.copy(payload),
            None => Bytes::copy_from_slice(payload),
        };
        let headers = if out.headers_len == 0 {
            Vec::new()
        } else {
            // SAFETY: as above.
            let raw_headers = unsafe { read_array(out.headers, out.headers_len) }?;
            raw_headers
                .iter()
                .map(|h| {
                    // SAFETY: as above.
                    let name = unsafe { read_text(h.name) }?;
                    // SAFETY: as above.
                    let value = unsafe { read_text(h.value) }?;
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, String>>()?
        };
        Ok(OutputMessage { payload, headers })
    })();
    if let Some(release) = out.release {
        // SAFETY: each message is released exactly once, with the owner the library gave.
        unsafe { release(out.owner) };
    }
    copied
}

/// Converts an error status and its message into a `FunctionError`; a panic is logged (with
/// its location, when the library sent one) as being in `source`.
///
/// # Safety
/// As [`take_message`].
unsafe fn error_of(code: u32, out: OutMessage, source: Source<'_>) -> FunctionError {
    // SAFETY: forwarded from the caller.
    let (text, headers) = match unsafe { take_message(out, None) } {
        Ok(message) => (
            String::from_utf8_lossy(&message.payload).into_owned(),
            message.headers,
        ),
        Err(e) => {
            return FunctionError::Abi(format!("the library returned a malformed error: {e}"));
        }
    };
    match code {
        status::FUNCTION_ERROR => FunctionError::Failed(text),
        status::PANIC => {
            let location = headers
                .iter()
                .find(|(name, _)| name == PANIC_LOCATION)
                .map(|(_, at)| at.as_str());
            panics::report(source, &text, location);
            FunctionError::Panicked(text)
        }
        status::BAD_INPUT => FunctionError::BadInput(text),
        other => FunctionError::Abi(format!("the library returned unknown status {other}")),
    }
}

/// Calls a request/reply function.
pub(crate) fn invoke(
    entry: InvokeFn,
    ctx: &CallContext,
    input: Option<&InputMessage>,
    media_type: usize,
) -> Result<Option<OutputMessage>, FunctionError> {
    let host_ctx = host_context(ctx);
    let headers = input.map(|m| abi_headers(&m.headers)).unwrap_or_default();
    let message = input.map(|m| InMessage {
        payload: Slice::new(&m.payload),
        headers: headers.as_ptr(),
        headers_len: headers.len(),
        media_type: m.media_type as u32,
    });
    let input_ptr = message
        .as_ref()
        .map_or(std::ptr::null(), |m| m as *const InMessage);
    let mut out = OutMessage::EMPTY;
    let _running = Running::call(&ctx.function_name, ctx.call.id());
    // SAFETY: every pointer passed lives until this call returns: the context and its data,
    // the input message with its payload and headers, and `out`. The library validated
    // `entry` as its invoke function at load time, and `self` keeps the library loaded.
    let code = unsafe { entry(&host_ctx, input_ptr, media_type as u32, &mut out) };
    let source = Source::Call {
        function: &ctx.function_name,
        call: &ctx.call,
    };
    match code {
        // SAFETY: `out` was filled by the library for READY.
        status::READY => unsafe { take_message(out, None) }
            .map(Some)
            .map_err(FunctionError::Abi),
        status::EMPTY => Ok(None),
        // SAFETY: `out` was filled by the library for an error status.
        code => Err(unsafe { error_of(code, out, source) }),
    }
}

/// The stream type of a streaming function's inputs.
pub type BoxInput = Pin<Box<dyn Stream<Item = InputMessage> + Send>>;

/// The host state behind an `InputStream` lent to a library.
struct InputState {
    stream: BoxInput,
    /// The message lent by the last READY, kept until the next poll or drop.
    current: Option<InputMessage>,
    /// Its headers as the ABI lends them; the buffer is reused from message to message.
    headers: Vec<Header>,
}

unsafe extern "C" fn input_poll(
    state: *mut c_void,
    cx: &mut FfiContext<'_>,
    out: *mut InMessage,
) -> u32 {
    // SAFETY: `state` is the `InputState` created in `open`; the library polls it from one
    // thread at a time and never after `input_drop`.
    let state = unsafe { &mut *state.cast::<InputState>() };
    state.current = None;
    state.headers.clear();
    let polled = catch_unwind(AssertUnwindSafe(|| {
        cx.with_context(|cx| state.stream.as_mut().poll_next(cx))
    }));
    match polled {
        Ok(Poll::Ready(Some(message))) => {
            state
                .headers
                .extend(message.headers.iter().map(|(name, value)| Header {
                    name: Slice::from_str(name),
                    value: Slice::from_str(value),
                }));
            let lent = InMessage {
                payload: Slice::new(&message.payload),
                headers: state.headers.as_ptr(),
                headers_len: state.headers.len(),
                media_type: message.media_type as u32,
            };
            // The slices point into the payload's buffer and the headers' vector (inline
            // text) or the text's own buffer: none of them moves with the message.
            state.current = Some(message);
            // SAFETY: the library passes a writable `InMessage`.
            unsafe { out.write(lent) };
            status::READY
        }
        Ok(Poll::Ready(None)) => status::END,
        Ok(Poll::Pending) => status::PENDING,
        Err(_) => {
            // Never a silent end of input: the library fails the call.
            tracing::error!("an input stream panicked; failing the call");
            status::PANIC
        }
    }
}

unsafe extern "C" fn input_drop(state: *mut c_void) {
    // SAFETY: `state` came from `Box::into_raw` in `open`; the library drops it exactly once.
    let state = unsafe { Box::from_raw(state.cast::<InputState>()) };
    if catch_unwind(AssertUnwindSafe(move || drop(state))).is_err() {
        tracing::error!("dropping an input stream panicked");
    }
}

/// Opens a streaming function over its input streams.
pub(crate) fn open(
    library: &Arc<LoadedLibrary>,
    entry: OpenFn,
    ctx: &CallContext,
    inputs: Vec<BoxInput>,
    outputs_len: usize,
) -> Result<Vec<OutputStream>, FunctionError> {
    let host_ctx = host_context(ctx);
    let mut raw_inputs: Vec<InputStream> = inputs
        .into_iter()
        .map(|stream| InputStream {
            state: Box::into_raw(Box::new(InputState {
                stream,
                current: None,
                headers: Vec::new(),
            }))
            .cast(),
            poll_next: input_poll,
            drop: input_drop,
        })
        .collect();
    let mut raw_outputs: Vec<RawOutputStream> = Vec::with_capacity(outputs_len);
    let mut error = OutMessage::EMPTY;
    let _running = Running::call(&ctx.function_name, ctx.call.id());
    // SAFETY: the context lives until `entry` returns; ownership of the input streams passes
    // to the library (which drops each exactly once, even on error), so we forget our copies
    // with `set_len(0)` below; `raw_outputs` has room for `outputs_len` streams, which the
    // library writes on READY only.
    let code = unsafe {
        let code = entry(
            &host_ctx,
            raw_inputs.as_mut_ptr(),
            raw_inputs.len(),
            raw_outputs.as_mut_ptr(),
            outputs_len,
            &mut error,
        );
        raw_inputs.set_len(0);
        if code == status::READY {
            raw_outputs.set_len(outputs_len);
        }
        code
    };
    if code != status::READY {
        let source = Source::Call {
            function: &ctx.function_name,
            call: &ctx.call,
        };
        // SAFETY: `error` was filled by the library for an error status.
        return Err(unsafe { error_of(code, error, source) });
    }
    Ok(raw_outputs
        .into_iter()
        .map(|raw| OutputStream {
            _library: library.clone(),
            function: ctx.function_name.clone(),
            call: ctx.call.clone(),
            raw,
            done: false,
            arena: Arena::default(),
        })
        .collect())
}

/// One output stream of a streaming function. Dropping it releases the function's stream.
pub struct OutputStream {
    /// The library the stream's code lives in, held while the stream exists.
    _library: Arc<LoadedLibrary>,
    /// The function and the call, for the crash line and the panic log.
    function: Arc<str>,
    call: CallMeta,
    raw: RawOutputStream,
    done: bool,
    arena: Arena,
}

// SAFETY: the ABI requires stream state to be usable from any thread, one at a time; all uses
// go through `&mut self`.
unsafe impl Send for OutputStream {}

impl OutputStream {
    /// Polls the next output, encoded as the output port's media type number `media_type`.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        media_type: usize,
    ) -> Poll<Option<Result<OutputMessage, FunctionError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut out = OutMessage::EMPTY;
        let raw = &self.raw;
        let _running = Running::call(&self.function, self.call.id());
        // SAFETY: the stream is live (not dropped, not finished) and the library is loaded
        // (`self.library`); `out` is writable.
        let code = cx.with_ffi_context(|fcx| unsafe {
            (raw.poll_next)(raw.state, fcx, media_type as u32, &mut out)
        });
        match code {
            status::PENDING => Poll::Pending,
            status::END => {
                self.done = true;
                Poll::Ready(None)
            }
            // SAFETY: `out` was filled by the library for READY.
            status::READY => Poll::Ready(Some(
                unsafe { take_message(out, Some(&mut self.arena)) }.map_err(FunctionError::Abi),
            )),
            code => {
                self.done = true;
                let source = Source::Call {
                    function: &self.function,
                    call: &self.call,
                };
                // SAFETY: `out` was filled by the library for an error status.
                Poll::Ready(Some(Err(unsafe { error_of(code, out, source) })))
            }
        }
    }
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        let _running = Running::call(&self.function, self.call.id());
        // SAFETY: each output stream is dropped exactly once, here, while the library is loaded.
        unsafe { (self.raw.drop)(self.raw.state) }
    }
}
