//! The C ABI between the `invoker` daemon (the *host*) and a function library (the *library*).
//!
//! Everything that crosses the boundary is defined here, and only `#[repr(C)]` types,
//! `extern "C"` function pointers, raw pointers with lengths and plain integers cross it.
//! Function authors never use this crate directly: `invoker-sdk` generates everything.
//!
//! # The rules
//! - **Root symbol.** A library exports one function, [`ROOT_SYMBOL`], of type [`RootFn`]. It
//!   returns a pointer to a [`LibraryDescriptor`] that lives as long as the library is loaded.
//!   The descriptor starts with `abi_version` and `size`, whose layout never changes, so a
//!   host can refuse any other version before reading further. New fields are only ever
//!   appended to a struct that carries a `size`; a reader checks `size` before reading them.
//! - **Ownership.** Whoever allocates a buffer frees it. Inputs ([`InMessage`]) are lent by the
//!   host for the duration of one call (for a stream item: until the next `poll_next` or
//!   `drop` of that stream). Outputs ([`OutMessage`]) are owned by the library and carry their
//!   own `release` function, which the host calls exactly once when it has copied them.
//! - **Panics** never unwind across the boundary: every `extern "C"` function on either side
//!   catches them and reports [`status::PANIC`].
//! - **Streams** are poll-based ([`InputStream`], [`OutputStream`]) with `async-ffi`'s
//!   [`FfiContext`] carrying a C waker vtable, so backpressure and cancellation (dropping a
//!   stream releases it) hold and a library needs no async runtime of its own. A stream's
//!   state may move between threads but is never used from two threads at once.
//! - **Stateful functions** (Flink StateFun) are request/reply functions with a
//!   [`StatefulDescriptor`] appended to their [`FunctionDescriptor`]; their state and messaging
//!   cross as callbacks appended to [`HostContext`], null for calls without a StateFun context.
//! - **Status codes** are plain `u32`s (see [`status`]), never Rust enums, so an unexpected
//!   value is an error the host can report rather than undefined behaviour.

#![forbid(unsafe_code)]

use std::ffi::c_void;

pub use async_ffi::FfiContext;

/// The ABI version this crate describes. A host loads only libraries built with the same one.
pub const ABI_VERSION: u32 = 1;

/// The name of the one symbol every function library exports (without the trailing NUL).
pub const ROOT_SYMBOL: &str = "invoker_library";

/// The root symbol's type: returns the library's descriptor, valid while the library is loaded.
pub type RootFn = unsafe extern "C" fn() -> *const LibraryDescriptor;

/// A borrowed run of bytes (UTF-8 where the field says so). Never owns its memory.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Slice {
    /// First byte; may be dangling (but never null) when `len` is 0.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl Slice {
    /// An empty slice.
    pub const EMPTY: Slice = Slice {
        ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(),
        len: 0,
    };

    /// Borrows a byte slice.
    pub const fn new(bytes: &[u8]) -> Slice {
        Slice {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// Borrows a string.
    pub const fn from_str(s: &str) -> Slice {
        Slice::new(s.as_bytes())
    }
}

/// One header value. A header with several values appears once per value, in order.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// UTF-8 name, as the sender spelled it.
    pub name: Slice,
    /// UTF-8 value.
    pub value: Slice,
}

/// A message lent by the host to the library.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct InMessage {
    /// The payload bytes.
    pub payload: Slice,
    /// The message's headers.
    pub headers: *const Header,
    /// Number of headers.
    pub headers_len: usize,
    /// Index of the payload's media type in the input port's `media_types`; the host has
    /// already checked that it is one of them.
    pub media_type: u32,
}

/// A message owned by the library and handed to the host, which calls `release` exactly once
/// (when `release` is not null) after it has copied what it needs. Without `release`, the
/// memory is lent: until the call returns (`invoke`), or until the next `poll_next` or `drop`
/// of the same stream (an output stream, which may so reuse one buffer for every item); the
/// host copies what it needs before either.
///
/// Also carries error text: for [`status::FUNCTION_ERROR`], [`status::PANIC`] and
/// [`status::BAD_INPUT`], `payload` is a UTF-8 message; a host ignores an error's headers,
/// except [`PANIC_LOCATION`] on a [`status::PANIC`].
#[repr(C)]
#[derive(Debug)]
pub struct OutMessage {
    /// The payload bytes (or an error message).
    pub payload: Slice,
    /// Headers the function set.
    pub headers: *const Header,
    /// Number of headers.
    pub headers_len: usize,
    /// The library's allocation behind `payload` and `headers`.
    pub owner: *mut c_void,
    /// Frees `owner`. Null when there is nothing to free.
    pub release: Option<unsafe extern "C" fn(owner: *mut c_void)>,
}

impl OutMessage {
    /// A message with nothing in it and nothing to release; the value a host passes in.
    pub const EMPTY: OutMessage = OutMessage {
        payload: Slice::EMPTY,
        headers: std::ptr::null(),
        headers_len: 0,
        owner: std::ptr::null_mut(),
        release: None,
    };
}

/// Status codes returned across the boundary.
pub mod status {
    /// An output message was written.
    pub const READY: u32 = 0;
    /// A request/reply function completed without output.
    pub const EMPTY: u32 = 1;
    /// A stream has no more items.
    pub const END: u32 = 2;
    /// A stream has no item yet; the waker in the context will be woken.
    pub const PENDING: u32 = 3;
    /// The function returned an error; the message is in the output's payload.
    pub const FUNCTION_ERROR: u32 = 4;
    /// The function panicked; the panic message is in the output's payload, and where it
    /// happened may be in a [`PANIC_LOCATION`](super::PANIC_LOCATION) header.
    pub const PANIC: u32 = 5;
    /// An input could not be decoded into the function's input type; the output's payload says why.
    pub const BAD_INPUT: u32 = 6;
}

/// The header of a [`status::PANIC`] error message that says where the panic happened, as
/// `file:line:column`. Optional: a library may leave it out (SDKs before it was added did),
/// and a host must not require it; the message itself is the payload, as for any error.
pub const PANIC_LOCATION: &str = "invoker-panic-location";

/// Function shapes.
pub mod shape {
    /// Zero or one input, zero or one output: `invoke` is set.
    pub const REQUEST_REPLY: u32 = 1;
    /// Streams in, streams out: `open` is set.
    pub const STREAMING: u32 = 2;
}

/// A stream of messages from the host to the library (a function's `Input<X>`).
#[repr(C)]
#[derive(Debug)]
pub struct InputStream {
    /// The host's state.
    pub state: *mut c_void,
    /// Polls for the next message: returns [`status::READY`] (with `out` filled, lent until the
    /// next call to `poll_next` or `drop`), [`status::END`] or [`status::PENDING`]; any other
    /// status (the host returns [`status::PANIC`] if its stream panicked) means the input
    /// failed, and the library must fail the call rather than treat it as the end of input.
    pub poll_next: unsafe extern "C" fn(
        state: *mut c_void,
        cx: &mut FfiContext<'_>,
        out: *mut InMessage,
    ) -> u32,
    /// Releases the stream. Called exactly once; `state` is not used afterwards.
    pub drop: unsafe extern "C" fn(state: *mut c_void),
}

/// A stream of messages from the library to the host (one output of a streaming function).
#[repr(C)]
#[derive(Debug)]
pub struct OutputStream {
    /// The library's state.
    pub state: *mut c_void,
    /// Polls for the next item, encoded as the output port's `media_types[media_type]`.
    /// Returns [`status::READY`] (with `out` filled), [`status::END`], [`status::PENDING`], or
    /// an error status with its message in `out`; after an error the stream is finished.
    pub poll_next: unsafe extern "C" fn(
        state: *mut c_void,
        cx: &mut FfiContext<'_>,
        media_type: u32,
        out: *mut OutMessage,
    ) -> u32,
    /// Releases the stream (and with it, the function's own stream). Called exactly once.
    pub drop: unsafe extern "C" fn(state: *mut c_void),
}

/// Log levels for [`HostContext::log`].
pub mod level {
    /// Errors.
    pub const ERROR: u32 = 1;
    /// Warnings.
    pub const WARN: u32 = 2;
    /// Information.
    pub const INFO: u32 = 3;
    /// Debugging detail.
    pub const DEBUG: u32 = 4;
    /// Tracing detail.
    pub const TRACE: u32 = 5;
}

/// The call's context, as callbacks into the host. Lent for the duration of `invoke` or `open`.
#[repr(C)]
#[derive(Debug)]
pub struct HostContext {
    /// `size_of::<HostContext>()` as the host knows it; a library reads a field only if the
    /// field ends within `size`.
    pub size: u32,
    /// The host's state, passed back to every callback.
    pub data: *const c_void,
    /// The function's name.
    pub function_name: Slice,
    /// This invoker instance's id.
    pub instance_id: Slice,
    /// Writes header number `index` of the call's input message into `out`; returns false when
    /// there is no such header.
    pub header: unsafe extern "C" fn(data: *const c_void, index: usize, out: *mut Header) -> bool,
    /// Looks up a user configuration value; returns false when the key is not set.
    pub config: unsafe extern "C" fn(data: *const c_void, key: Slice, out: *mut Slice) -> bool,
    /// Logs a UTF-8 message at a [`level`], tagged with the call.
    pub log: unsafe extern "C" fn(data: *const c_void, level: u32, message: Slice),
    /// Adds `value` to the named custom metric.
    pub metric: unsafe extern "C" fn(data: *const c_void, name: Slice, value: f64),
    /// Milliseconds left until the call's deadline, or -1 when it has none.
    pub deadline_millis: unsafe extern "C" fn(data: *const c_void) -> i64,
    /// Whether the call has been cancelled.
    pub is_cancelled: unsafe extern "C" fn(data: *const c_void) -> bool,
    // Appended for stateful functions (Flink StateFun): read only when `size` covers them
    // (`HostContext::STATEFUL_END`). A host sets them only for a call that has a StateFun
    // context (`invoker statefun`); for any other call they are null.
    /// Lends the current value of the function's value spec `name` in `out` (valid until the
    /// next callback of this context or the end of the call). Returns a [`state`] code:
    /// [`state::OK`] (present), [`state::ABSENT`] (no value), [`state::UNKNOWN`] (the function
    /// declared no spec of that name).
    pub state_get:
        Option<unsafe extern "C" fn(data: *const c_void, name: Slice, out: *mut Slice) -> u32>,
    /// Sets value spec `name` to `value` (the host copies it), or removes its value when
    /// `value` is null. Returns [`state::OK`], [`state::UNKNOWN`] or [`state::LIMIT`].
    pub state_set:
        Option<unsafe extern "C" fn(data: *const c_void, name: Slice, value: *const Slice) -> u32>,
    /// Writes the function's own address ([`address::SELF`]) or the caller's
    /// ([`address::CALLER`]) into `out`, lent for the call; returns false when there is none
    /// (a message from an ingress has no caller).
    pub address:
        Option<unsafe extern "C" fn(data: *const c_void, which: u32, out: *mut Address) -> bool>,
    /// Sends a message (now, or after a delay); the host copies it. Returns [`state::OK`],
    /// [`state::INVALID`] (a malformed address or typename) or [`state::LIMIT`].
    pub send: Option<unsafe extern "C" fn(data: *const c_void, message: *const Outgoing) -> u32>,
    /// Cancels the delayed message sent with cancellation token `token`. Returns
    /// [`state::OK`] or [`state::INVALID`] (an empty token).
    pub cancel: Option<unsafe extern "C" fn(data: *const c_void, token: Slice) -> u32>,
    /// Sends `value` to the egress `egress` (`namespace/type`); the host copies it. Returns
    /// [`state::OK`], [`state::INVALID`] or [`state::LIMIT`].
    pub egress: Option<
        unsafe extern "C" fn(data: *const c_void, egress: Slice, value: *const TypedValue) -> u32,
    >,
}

impl HostContext {
    /// The size of the fields every ABI version 1 context has (up to `is_cancelled`).
    pub const V1_SIZE: usize = std::mem::offset_of!(HostContext, state_get);
    /// Where the stateful callbacks end: a context at least this large has them all (each may
    /// still be null, for a call without a StateFun context).
    pub const STATEFUL_END: usize =
        std::mem::offset_of!(HostContext, egress) + size_of::<Option<unsafe extern "C" fn()>>();
}

/// Result codes of the stateful callbacks of [`HostContext`].
pub mod state {
    /// Done; for `state_get`, the value is present.
    pub const OK: u32 = 0;
    /// `state_get`: the value spec has no value.
    pub const ABSENT: u32 = 1;
    /// The function declared no value spec of that name.
    pub const UNKNOWN: u32 = 2;
    /// The message, egress or token is malformed (the host says nothing more).
    pub const INVALID: u32 = 3;
    /// What the batch has sent and stored passed the host's bound on one response.
    pub const LIMIT: u32 = 4;
}

/// Which address [`HostContext::address`] writes.
pub mod address {
    /// The function's own address (the batch's target).
    pub const SELF: u32 = 0;
    /// The address of the function that sent the message, if a function did.
    pub const CALLER: u32 = 1;
}

/// A StateFun address: a function type and an id.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Address {
    /// The function type, `namespace/name`, UTF-8.
    pub function_type: Slice,
    /// The id, UTF-8.
    pub id: Slice,
}

/// A StateFun value: its typename (`namespace/name`) and its bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TypedValue {
    /// The typename, UTF-8.
    pub typename: Slice,
    /// The serialized value.
    pub value: Slice,
}

/// A message a stateful function sends, lent to the host for the callback.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Outgoing {
    /// Where it goes.
    pub target: Address,
    /// What it carries.
    pub value: TypedValue,
    /// Whether it is a delayed message (sent after `delay_millis`).
    pub delayed: bool,
    /// The delay, for a delayed message.
    pub delay_millis: u64,
    /// A delayed message's cancellation token; empty for none.
    pub cancellation_token: Slice,
}

/// StateFun expiration modes of a [`ValueSpec`].
pub mod expiration {
    /// The value never expires.
    pub const NONE: u32 = 0;
    /// The value expires `expire_after_millis` after it was last written.
    pub const AFTER_WRITE: u32 = 1;
    /// The value expires `expire_after_millis` after it was last read or written (the
    /// function last invoked).
    pub const AFTER_INVOKE: u32 = 2;
}

/// One persisted value a stateful function declares.
#[repr(C)]
#[derive(Debug)]
pub struct ValueSpec {
    /// The value's name, UTF-8.
    pub name: Slice,
    /// Its typename (`namespace/name`), UTF-8.
    pub typename: Slice,
    /// An [`expiration`] mode.
    pub expiration_mode: u32,
    /// The expiration's duration (0 with [`expiration::NONE`]).
    pub expire_after_millis: u64,
}

/// What makes a function a StateFun function: its type and its value specs.
#[repr(C)]
#[derive(Debug)]
pub struct StatefulDescriptor {
    /// `size_of::<StatefulDescriptor>()` as the library knows it.
    pub size: u32,
    /// The function type, `namespace/name`, UTF-8.
    pub function_type: Slice,
    /// The persisted values it declares.
    pub values: *const ValueSpec,
    /// Number of values.
    pub values_len: usize,
}

/// One input or output of a function.
#[repr(C)]
#[derive(Debug)]
pub struct Port {
    /// The port's name (`in`, `out`, or the parameter's name).
    pub name: Slice,
    /// Media type essences (`type/subtype`) the port accepts or produces, in preference order.
    pub media_types: *const Slice,
    /// Number of media types.
    pub media_types_len: usize,
}

/// Signature of a request/reply function's entry point.
///
/// `input` is null for a function without input. `media_type` indexes the output port's
/// media types. Returns [`status::READY`] (with `out` filled), [`status::EMPTY`], or an error
/// status with its message in `out`.
pub type InvokeFn = unsafe extern "C" fn(
    ctx: *const HostContext,
    input: *const InMessage,
    media_type: u32,
    out: *mut OutMessage,
) -> u32;

/// Signature of a streaming function's entry point.
///
/// Takes ownership of `inputs_len` input streams (the library drops each) and writes
/// `outputs_len` output streams (the host drops each). Returns [`status::READY`], or an error
/// status with its message in `error`, in which case no output stream was written and the
/// inputs have been dropped.
pub type OpenFn = unsafe extern "C" fn(
    ctx: *const HostContext,
    inputs: *mut InputStream,
    inputs_len: usize,
    outputs: *mut OutputStream,
    outputs_len: usize,
    error: *mut OutMessage,
) -> u32;

/// Describes one exported function.
#[repr(C)]
#[derive(Debug)]
pub struct FunctionDescriptor {
    /// `size_of::<FunctionDescriptor>()` as the library knows it.
    pub size: u32,
    /// A [`shape`] constant.
    pub shape: u32,
    /// The handler name.
    pub name: Slice,
    /// Inputs (a request/reply function has 0 or 1).
    pub inputs: *const Port,
    /// Number of inputs.
    pub inputs_len: usize,
    /// Outputs (a request/reply function has 0 or 1).
    pub outputs: *const Port,
    /// Number of outputs.
    pub outputs_len: usize,
    /// Whether the function reads the context (the host may skip building one otherwise).
    pub uses_context: bool,
    /// Entry point of a request/reply function.
    pub invoke: Option<InvokeFn>,
    /// Entry point of a streaming function.
    pub open: Option<OpenFn>,
    // Appended after ABI version 1's first fields: read only when `size` covers it.
    /// For a StateFun function (a request/reply function whose input is the message's value,
    /// its media types the typenames it takes, and that has no output): its type and value
    /// specs. Null for any other function.
    pub stateful: *const StatefulDescriptor,
}

impl FunctionDescriptor {
    /// The size of the fields every ABI version 1 function descriptor has (up to `open`).
    pub const V1_SIZE: usize = std::mem::offset_of!(FunctionDescriptor, stateful);
}

/// The fields every ABI version 1 [`FunctionDescriptor`] has, laid out as it starts: what a
/// library built before `stateful` was appended exports (see [`LibraryDescriptorV1`]).
#[repr(C)]
#[derive(Debug)]
pub struct FunctionDescriptorV1 {
    /// As in [`FunctionDescriptor`].
    pub size: u32,
    /// As in [`FunctionDescriptor`].
    pub shape: u32,
    /// As in [`FunctionDescriptor`].
    pub name: Slice,
    /// As in [`FunctionDescriptor`].
    pub inputs: *const Port,
    /// As in [`FunctionDescriptor`].
    pub inputs_len: usize,
    /// As in [`FunctionDescriptor`].
    pub outputs: *const Port,
    /// As in [`FunctionDescriptor`].
    pub outputs_len: usize,
    /// As in [`FunctionDescriptor`].
    pub uses_context: bool,
    /// As in [`FunctionDescriptor`].
    pub invoke: Option<InvokeFn>,
    /// As in [`FunctionDescriptor`].
    pub open: Option<OpenFn>,
}

const _: () = assert!(size_of::<FunctionDescriptorV1>() == FunctionDescriptor::V1_SIZE);

/// Signature of the optional init hook: called once after loading, before any call, with the
/// user configuration as key/value headers. Returns [`status::READY`] or an error status with
/// its message in `error`.
pub type InitFn =
    unsafe extern "C" fn(config: *const Header, config_len: usize, error: *mut OutMessage) -> u32;

/// Signature of the optional shutdown hook: called once at exit, after calls have drained.
pub type ShutdownFn = unsafe extern "C" fn();

/// Describes a library: the value behind [`ROOT_SYMBOL`].
#[repr(C)]
#[derive(Debug)]
pub struct LibraryDescriptor {
    /// [`ABI_VERSION`] of the ABI crate the library was built with. Never moves.
    pub abi_version: u32,
    /// `size_of::<LibraryDescriptor>()` as the library knows it. Never moves.
    pub size: u32,
    /// The SDK's version, UTF-8.
    pub sdk_version: Slice,
    /// Pointers to the function descriptors.
    pub functions: *const *const FunctionDescriptor,
    /// Number of functions.
    pub functions_len: usize,
    /// Whether the library was built with `panic = "unwind"` (so panics can be caught).
    pub panic_unwind: bool,
    /// Optional init hook.
    pub init: Option<InitFn>,
    /// Optional shutdown hook.
    pub shutdown: Option<ShutdownFn>,
    // Appended after ABI version 1's first fields: read only when `size` covers them.
    /// The function crate's package name, UTF-8 (empty when unknown).
    pub package_name: Slice,
    /// The function crate's package version, UTF-8 (empty when unknown).
    pub package_version: Slice,
}

impl LibraryDescriptor {
    /// The size of the fields every ABI version 1 descriptor has (up to `shutdown`): a host
    /// refuses a shorter one, and reads each later field only if `size` covers it.
    pub const V1_SIZE: usize = std::mem::offset_of!(LibraryDescriptor, package_name);

    /// Whether a descriptor of `size` bytes has the field that ends at `end`.
    pub const fn covers(size: u32, end: usize) -> bool {
        size as usize >= end
    }
}

/// The fields every ABI version 1 [`LibraryDescriptor`] has, laid out as it starts (a
/// `#[repr(C)]` struct with the same leading fields has the same layout for them). A host
/// views a descriptor through this until `size` says the rest is there: a reference to the
/// whole struct over a shorter descriptor would reach past its end.
#[repr(C)]
#[derive(Debug)]
pub struct LibraryDescriptorV1 {
    /// As in [`LibraryDescriptor`].
    pub abi_version: u32,
    /// As in [`LibraryDescriptor`].
    pub size: u32,
    /// As in [`LibraryDescriptor`].
    pub sdk_version: Slice,
    /// As in [`LibraryDescriptor`].
    pub functions: *const *const FunctionDescriptor,
    /// As in [`LibraryDescriptor`].
    pub functions_len: usize,
    /// As in [`LibraryDescriptor`].
    pub panic_unwind: bool,
    /// As in [`LibraryDescriptor`].
    pub init: Option<InitFn>,
    /// As in [`LibraryDescriptor`].
    pub shutdown: Option<ShutdownFn>,
}

const _: () = assert!(size_of::<LibraryDescriptorV1>() == LibraryDescriptor::V1_SIZE);
