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
    ABI_VERSION, FunctionDescriptor, FunctionDescriptorV1, Header, HostContext, InMessage, InitFn,
    InputStream, InvokeFn, LibraryDescriptor, LibraryDescriptorV1, OpenFn, OutMessage,
    OutputStream as RawOutputStream, PANIC_LOCATION, Port, ROOT_SYMBOL, RootFn, ShutdownFn, Slice,
    StatefulDescriptor, shape, status,
};

use super::crash::Running;
use super::panics::{self, Source};
use super::{
    CallContext, CallMeta, Expiration, FunctionError, FunctionInfo, InputMessage, LoadError,
    OutputMessage, PortInfo, Shape, StatefulInfo, Text, ValueSpecInfo,
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
    if pointer.is_null() {
        return Err("its function table holds a null pointer".to_owned());
    }
    // SAFETY: forwarded from the caller; a descriptor has (at least) ABI version 1's fields,
    // which is all this view covers. Appended fields are read below only if `size` covers them.
    let f: &FunctionDescriptorV1 = unsafe { &*pointer.cast() };
    if (f.size as usize) < FunctionDescriptor::V1_SIZE {
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
    let stateful_end =
        std::mem::offset_of!(FunctionDescriptor, stateful) + size_of::<*const StatefulDescriptor>();
    let stateful = if f.size as usize >= stateful_end {
        // SAFETY: `size` covers the field, so it is in the descriptor: read it through the raw
        // pointer.
        let raw = unsafe { std::ptr::addr_of!((*pointer).stateful).read() };
        // SAFETY: a non-null stateful descriptor lives as long as the library.
        unsafe { read_stateful(raw, f) }.map_err(context)?
    } else {
        None
    };
    if stateful.is_some()
        && (shape != Shape::RequestReply || inputs.len() != 1 || !outputs.is_empty())
    {
        return Err(format!(
            "function '{name}' is stateful but does not take exactly one message and return nothing"
        ));
    }
    let info = FunctionInfo {
        name,
        shape,
        inputs,
        outputs,
        uses_context: f.uses_context,
        stateful,
    };
    Ok((info, entry))
}

/// Reads and validates a stateful function's descriptor (null: not stateful).
///
/// # Safety
/// `raw` must be null or point at a `StatefulDescriptor` living as long as the library, and
/// `f`'s ports must be valid as `read_function` requires.
unsafe fn read_stateful(
    raw: *const StatefulDescriptor,
    f: &FunctionDescriptorV1,
) -> Result<Option<StatefulInfo>, String> {
    if raw.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    let d = unsafe { &*raw };
    if (d.size as usize) < size_of::<StatefulDescriptor>() {
        return Err(format!(
            "its stateful descriptor is {} bytes, too short",
            d.size
        ));
    }
    // SAFETY: as above.
    let function_type = unsafe { read_str(d.function_type) }?;
    if !super::is_typename(&function_type) {
        return Err(format!(
            "its StateFun type '{function_type}' is not `namespace/name`"
        ));
    }
    // SAFETY: as above.
    let specs = unsafe { read_array(d.values, d.values_len) }?;
    let mut values: Vec<ValueSpecInfo> = Vec::with_capacity(specs.len());
    for spec in specs {
        // SAFETY: as above.
        let name = unsafe { read_str(spec.name) }?;
        // SAFETY: as above.
        let typename = unsafe { read_str(spec.typename) }?;
        let expiration = match spec.expiration_mode {
            invoker_abi::expiration::NONE => Expiration::Never,
            invoker_abi::expiration::AFTER_WRITE => {
                Expiration::AfterWrite(spec.expire_after_millis)
            }
            invoker_abi::expiration::AFTER_INVOKE => {
                Expiration::AfterInvoke(spec.expire_after_millis)
            }
            other => {
                return Err(format!(
                    "value '{name}' has unknown expiration mode {other}"
                ));
            }
        };
        if name.is_empty() || values.iter().any(|v| v.name == name) {
            return Err(format!("value '{name}' is empty or declared twice"));
        }
        if !super::is_typename(&typename) {
            return Err(format!(
                "value '{name}' has typename '{typename}', not `namespace/name`"
            ));
        }
        values.push(ValueSpecInfo {
            name,
            typename,
            expiration,
        });
    }
    // The message types exactly as declared (`read_ports` lower-cases media types).
    // SAFETY: the ports were validated by `read_ports` and live as long as the library.
    let ports = unsafe { read_array(f.inputs, f.inputs_len) }?;
    let mut message_types = Vec::new();
    for port in ports {
        // SAFETY: as above.
        for &t in unsafe { read_array(port.media_types, port.media_types_len) }? {
            // SAFETY: as above.
            message_types.push(unsafe { read_str(t) }?);
        }
    }
    Ok(Some(StatefulInfo {
        function_type,
        message_types,
        values,
    }))
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
    let stateful = ctx.stateful.is_some();
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
        state_get: stateful.then_some(ctx_state_get),
        state_set: stateful.then_some(ctx_state_set),
        address: stateful.then_some(ctx_address),
        send: stateful.then_some(ctx_send),
        cancel: stateful.then_some(ctx_cancel),
        egress: stateful.then_some(ctx_egress),
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

// The stateful callbacks: lent only when the call has a StateFun context (`ctx.stateful`).

/// The call's StateFun context and its batch, locked for one callback.
///
/// # Safety
/// As [`call_context`].
unsafe fn stateful<'a>(
    data: *const c_void,
) -> Option<(&'a super::Stateful, std::sync::MutexGuard<'a, super::Batch>)> {
    // SAFETY: forwarded from the caller.
    let ctx = unsafe { call_context(data) };
    let stateful = ctx.stateful.as_ref()?;
    Some((stateful, crate::sync::lock(&stateful.batch)))
}

/// Reads a lent UTF-8 string, `None` when it is not.
///
/// # Safety
/// As [`read_str`].
unsafe fn lent_str<'a>(s: Slice) -> Option<&'a str> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { read_array(s.ptr, s.len) }.ok()?;
    std::str::from_utf8(bytes).ok()
}

unsafe extern "C" fn ctx_state_get(data: *const c_void, name: Slice, out: *mut Slice) -> u32 {
    // SAFETY: the library passes back the `data` of the context we lent it, during the call.
    let Some((_, batch)) = (unsafe { stateful(data) }) else {
        return invoker_abi::state::UNKNOWN;
    };
    // SAFETY: the library lends the name for the duration of this call.
    let Some(name) = (unsafe { lent_str(name) }) else {
        return invoker_abi::state::UNKNOWN;
    };
    match batch.cells.iter().find(|c| c.name == name) {
        Some(cell) => match &cell.value {
            Some(value) => {
                // SAFETY: the library passes a writable `Slice`. The bytes stay in the batch
                // until a later callback replaces them; the ABI lends them until then.
                unsafe { out.write(Slice::new(value)) };
                invoker_abi::state::OK
            }
            None => invoker_abi::state::ABSENT,
        },
        None => invoker_abi::state::UNKNOWN,
    }
}

unsafe extern "C" fn ctx_state_set(data: *const c_void, name: Slice, value: *const Slice) -> u32 {
    // SAFETY: as in `ctx_state_get`.
    let Some((_, mut batch)) = (unsafe { stateful(data) }) else {
        return invoker_abi::state::UNKNOWN;
    };
    // SAFETY: the library lends the name for the duration of this call.
    let Some(name) = (unsafe { lent_str(name) }) else {
        return invoker_abi::state::UNKNOWN;
    };
    // SAFETY: the library passes null or a `Slice` lent for this call, and its bytes.
    let value = match unsafe { value.as_ref() } {
        // SAFETY: as above.
        Some(slice) => match unsafe { read_array(slice.ptr, slice.len) } {
            Ok(bytes) => Some(bytes),
            Err(_) => return invoker_abi::state::INVALID,
        },
        None => None,
    };
    let size = value.map_or(0, <[u8]>::len);
    if batch.bytes.saturating_add(size) > batch.limit {
        return invoker_abi::state::LIMIT;
    }
    let Some(cell) = batch.cells.iter_mut().find(|c| c.name == name) else {
        return invoker_abi::state::UNKNOWN;
    };
    cell.value = value.map(Bytes::copy_from_slice);
    cell.changed = true;
    batch.bytes += size;
    invoker_abi::state::OK
}

unsafe extern "C" fn ctx_address(
    data: *const c_void,
    which: u32,
    out: *mut invoker_abi::Address,
) -> bool {
    // SAFETY: as in `ctx_header`.
    let ctx = unsafe { call_context(data) };
    let Some(stateful) = &ctx.stateful else {
        return false;
    };
    let address = match which {
        invoker_abi::address::SELF => Some(&stateful.self_address),
        invoker_abi::address::CALLER => stateful.caller.as_ref(),
        _ => None,
    };
    match address {
        Some(address) => {
            // SAFETY: the library passes a writable `Address`; the strings live in the
            // context, which outlives the call.
            unsafe {
                out.write(invoker_abi::Address {
                    function_type: Slice::from_str(&address.function_type),
                    id: Slice::from_str(&address.id),
                })
            };
            true
        }
        None => false,
    }
}

/// Copies a lent typed value, if its typename is `namespace/name`.
///
/// # Safety
/// `value`'s slices must be lent for the call.
unsafe fn typed_value(value: &invoker_abi::TypedValue) -> Option<super::TypedValue> {
    // SAFETY: forwarded from the caller.
    let typename = unsafe { lent_str(value.typename) }?;
    // SAFETY: as above.
    let bytes = unsafe { read_array(value.value.ptr, value.value.len) }.ok()?;
    super::is_typename(typename).then(|| super::TypedValue {
        typename: typename.to_owned(),
        value: Bytes::copy_from_slice(bytes),
    })
}

/// Records what the function sent, within the batch's bound.
fn record(batch: &mut super::Batch, sent: super::Sent, size: usize) -> u32 {
    if batch.bytes.saturating_add(size) > batch.limit {
        return invoker_abi::state::LIMIT;
    }
    batch.bytes += size;
    batch.sent.push(sent);
    invoker_abi::state::OK
}

unsafe extern "C" fn ctx_send(data: *const c_void, message: *const invoker_abi::Outgoing) -> u32 {
    use invoker_abi::state::INVALID;
    // SAFETY: as in `ctx_state_get`.
    let Some((_, mut batch)) = (unsafe { stateful(data) }) else {
        return INVALID;
    };
    // SAFETY: the library lends the message, and all it points to, for this call.
    let Some(message) = (unsafe { message.as_ref() }) else {
        return INVALID;
    };
    // SAFETY: as above.
    let function_type = unsafe { lent_str(message.target.function_type) };
    // SAFETY: as above.
    let id = unsafe { lent_str(message.target.id) };
    // SAFETY: as above.
    let token = unsafe { lent_str(message.cancellation_token) };
    // SAFETY: as above.
    let value = unsafe { typed_value(&message.value) };
    let (Some(function_type), Some(id), Some(token), Some(value)) =
        (function_type, id, token, value)
    else {
        return INVALID;
    };
    if !super::is_typename(function_type) || id.is_empty() {
        return INVALID;
    }
    let target = super::Address {
        function_type: function_type.to_owned(),
        id: id.to_owned(),
    };
    let size =
        value.value.len() + value.typename.len() + function_type.len() + id.len() + token.len();
    let sent = if message.delayed {
        super::Sent::Delayed {
            target,
            value,
            delay_millis: message.delay_millis,
            cancellation_token: token.to_owned(),
        }
    } else {
        super::Sent::Message { target, value }
    };
    record(&mut batch, sent, size)
}

unsafe extern "C" fn ctx_cancel(data: *const c_void, token: Slice) -> u32 {
    // SAFETY: as in `ctx_state_get`.
    let Some((_, mut batch)) = (unsafe { stateful(data) }) else {
        return invoker_abi::state::INVALID;
    };
    // SAFETY: the library lends the token for this call.
    match unsafe { lent_str(token) } {
        Some(token) if !token.is_empty() => {
            let sent = super::Sent::Cancel {
                cancellation_token: token.to_owned(),
            };
            record(&mut batch, sent, token.len())
        }
        _ => invoker_abi::state::INVALID,
    }
}

unsafe extern "C" fn ctx_egress(
    data: *const c_void,
    egress: Slice,
    value: *const invoker_abi::TypedValue,
) -> u32 {
    use invoker_abi::state::INVALID;
    // SAFETY: as in `ctx_state_get`.
    let Some((_, mut batch)) = (unsafe { stateful(data) }) else {
        return INVALID;
    };
    // SAFETY: the library lends the egress and the value for this call.
    let egress = unsafe { lent_str(egress) };
    // SAFETY: as above.
    let value = unsafe { value.as_ref() }.and_then(|v| {
        // SAFETY: as above.
        unsafe { typed_value(v) }
    });
    let (Some(egress), Some(value)) = (egress, value) else {
        return INVALID;
    };
    if !super::is_typename(egress) {
        return INVALID;
    }
    let size = egress.len() + value.typename.len() + value.value.len();
    let sent = super::Sent::Egress {
        egress: egress.to_owned(),
        value,
    };
    record(&mut batch, sent, size)
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
