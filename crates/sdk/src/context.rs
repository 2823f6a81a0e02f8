//! The call's context: headers, configuration, logging, metrics, deadline.

use std::mem::{offset_of, size_of};
use std::time::Duration;

use invoker_abi::{Header, HostContext, Slice, level};

use crate::{Headers, abi_str};

/// What the invoker tells a function about the call it is running, and lets it report back.
///
/// Its headers are those of one message of the call. A request/reply function's context
/// holds the message it is called with. A streaming function's holds the call's first
/// message: on `function.MessageFunction/Call`, the first message; on `streaming.Riff/Invoke`,
/// the first data frame (its `contentType` as `Content-Type`; the StartFrame has no headers).
/// The context is lent only while the function runs, before its stream is polled, so the
/// invoker starts a streaming function that takes `&Context` and an input when that first
/// message arrives (or, with no headers, when the caller half-closes without sending one).
/// A supplier (no input) starts when the call opens, and its context has no headers. To read
/// the headers of every message, take [`Input<Message<T>>`](crate::Message).
///
/// Take `&Context` as a function's first parameter to receive it:
///
/// ```
/// use invoker_sdk::Context;
///
/// #[invoker_sdk::function]
/// fn whoami(ctx: &Context, name: String) -> String {
///     ctx.log_info(&format!("called by {name}"));
///     format!("{} says hello to {name}", ctx.function_name())
/// }
/// ```
pub struct Context {
    raw: *const HostContext,
}

impl Context {
    /// # Safety
    /// `raw` must point to a valid `HostContext` that outlives the returned value.
    pub(crate) unsafe fn from_raw(raw: *const HostContext) -> Self {
        Context { raw }
    }

    /// The host's context, for the stateful view (`statefun::Context`).
    pub(crate) fn host(&self) -> &HostContext {
        self.raw()
    }

    fn raw(&self) -> &HostContext {
        // SAFETY: `from_raw`'s contract: the host lends the context for as long as this
        // `Context` exists (it is only handed out by reference during one call).
        unsafe { &*self.raw }
    }

    /// Whether the host's context is new enough to have a field ending at `end`.
    fn has(&self, end: usize) -> bool {
        self.raw().size as usize >= end
    }

    /// The name of the function being called (its handler name).
    pub fn function_name(&self) -> &str {
        // SAFETY: the host lends UTF-8 strings for the life of the context.
        unsafe { abi_str(self.raw().function_name) }
    }

    /// This invoker instance's id.
    pub fn instance_id(&self) -> &str {
        // SAFETY: as above.
        unsafe { abi_str(self.raw().instance_id) }
    }

    /// The first value of a header of the call's message (a streaming call's first message),
    /// matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_entries()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// All headers of the call's message (a streaming call's first message; none for a
    /// supplier).
    pub fn headers(&self) -> Headers {
        let mut headers = Headers::new();
        for (name, value) in self.header_entries() {
            headers.append(name, value);
        }
        headers
    }

    fn header_entries(&self) -> impl Iterator<Item = (&str, &str)> {
        let raw = self.raw();
        (0..).map_while(move |index| {
            let mut out = Header {
                name: Slice::EMPTY,
                value: Slice::EMPTY,
            };
            // SAFETY: the callback and its data come from the host, valid for the call.
            let found = unsafe { (raw.header)(raw.data, index, &mut out) };
            // SAFETY: the host lends header strings as UTF-8 for the life of the context.
            found.then(|| unsafe { (abi_str(out.name), abi_str(out.value)) })
        })
    }

    /// The `correlationId` header (any case), if the message has one.
    pub fn correlation_id(&self) -> Option<&str> {
        self.header("correlationId")
    }

    /// A user configuration value (from the invoker's `--config` file or `FUNCTION_CONFIG`).
    pub fn config(&self, key: &str) -> Option<&str> {
        let raw = self.raw();
        let mut out = Slice::EMPTY;
        // SAFETY: host callback with its own data; the key outlives the call.
        let found = unsafe { (raw.config)(raw.data, Slice::from_str(key), &mut out) };
        // SAFETY: the host lends configuration values as UTF-8 for the life of the context.
        found.then(|| unsafe { abi_str(out) })
    }

    fn log(&self, level: u32, message: &str) {
        let raw = self.raw();
        // SAFETY: host callback with its own data; the message outlives the call.
        unsafe { (raw.log)(raw.data, level, Slice::from_str(message)) }
    }

    /// Logs at error level through the invoker's log, tagged with the call.
    pub fn log_error(&self, message: &str) {
        self.log(level::ERROR, message)
    }

    /// Logs at warn level.
    pub fn log_warn(&self, message: &str) {
        self.log(level::WARN, message)
    }

    /// Logs at info level.
    pub fn log_info(&self, message: &str) {
        self.log(level::INFO, message)
    }

    /// Logs at debug level.
    pub fn log_debug(&self, message: &str) {
        self.log(level::DEBUG, message)
    }

    /// Adds `value` to a custom metric, reported by the invoker's status and metrics. A custom
    /// metric is a counter (the running sum of the values added, `invoker_function_metric_total`
    /// in Prometheus): a negative or non-finite value is ignored (logged at debug level). The
    /// invoker keeps at most 1 000 distinct names for the life of the process: a metric with a
    /// new name beyond those is dropped (and logged once), so names should not carry ids.
    pub fn record_metric(&self, name: &str, value: f64) {
        let raw = self.raw();
        // SAFETY: host callback with its own data; the name outlives the call.
        unsafe { (raw.metric)(raw.data, Slice::from_str(name), value) }
    }

    /// Time left until the call's deadline, if the caller set one.
    pub fn deadline(&self) -> Option<Duration> {
        if !self.has(offset_of!(HostContext, deadline_millis) + size_of::<usize>()) {
            return None;
        }
        let raw = self.raw();
        // SAFETY: host callback with its own data.
        let millis = unsafe { (raw.deadline_millis)(raw.data) };
        u64::try_from(millis).ok().map(Duration::from_millis)
    }

    /// Whether the caller has cancelled the call.
    pub fn is_cancelled(&self) -> bool {
        if !self.has(offset_of!(HostContext, is_cancelled) + size_of::<usize>()) {
            return false;
        }
        let raw = self.raw();
        // SAFETY: host callback with its own data.
        unsafe { (raw.is_cancelled)(raw.data) }
    }
}
