//! Stateful functions for Apache Flink StateFun, served by `invoker statefun`.
//!
//! A StateFun function is addressed by its type (`namespace/name`) and an id; the cluster
//! keeps each address's persisted values, delivers messages to it one at a time, and applies
//! what the function changed once it returns. A function declares its type and its value
//! specs with [`#[invoker_sdk::statefun]`](macro@crate::statefun), takes a [`&Context`](Context)
//! and the message, and reads and writes its state, sends messages (now, or after a delay
//! that can be cancelled) and sends to egresses through the context.
//!
//! ```
//! use std::time::Duration;
//!
//! use invoker_sdk::statefun::{Address, Context, JsonType, ValueSpec};
//! use invoker_sdk::Json;
//!
//! /// How often this address has been greeted: an `io.statefun.types/int`, kept for good.
//! const SEEN: ValueSpec<i32> = ValueSpec::new("seen");
//! /// The last name seen, forgotten five minutes after the last message.
//! const LAST: ValueSpec<String> =
//!     ValueSpec::new("last").expire_after_invoke(Duration::from_secs(300));
//!
//! #[invoker_sdk::statefun(type = "example/greeter", state = [SEEN, LAST])]
//! fn greeter(ctx: &Context, name: String) -> Result<(), String> {
//!     let seen = ctx.get(&SEEN).map_err(|e| e.to_string())?.unwrap_or(0) + 1;
//!     ctx.set(&SEEN, &seen);
//!     ctx.set(&LAST, &name);
//!     ctx.egress("example/greets", &format!("Hello {name}, visit {seen}"));
//!     if seen == 1 {
//!         // A reminder to ourselves in a minute; `cancel_delayed` would take it back.
//!         let me = ctx.self_address();
//!         ctx.send_after(Duration::from_secs(60), &me, &"again".to_owned(), Some("again"));
//!     }
//!     Ok(())
//! }
//!
//! /// A JSON message under a typename of ours.
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Person { name: String, age: i32 }
//!
//! impl JsonType for Person {
//!     const TYPENAME: &'static str = "example/Person";
//! }
//!
//! #[invoker_sdk::statefun(type = "example/relay")]
//! fn relay(ctx: &Context, Json(person): Json<Person>) {
//!     // Greets the person at the greeter whose id is their name.
//!     ctx.send(&Address::new("example/greeter", &person.name), &person.name);
//! }
//! ```
//!
//! A function returns nothing or a `Result<(), E>` with a `Display` error. An error or a
//! panic fails the whole batch of messages it was in: the invoker answers the cluster with
//! HTTP 500 and the error's text, none of the batch's state changes or messages apply, and
//! StateFun retries the batch.
//!
//! # Types
//! Messages, persisted values and egress values are [`ValueType`]s: StateFun's built-in
//! types (`String`, `i32`, `i64`, `f32`, `f64`, `bool`), [`Json<T>`](crate::Json) of a
//! [`JsonType`], and bytes types declared with [`bytes_type!`](crate::bytes_type). A message
//! of another typename than the function takes fails the batch.
//!
//! # Value specs
//! A [`ValueSpec`] names a persisted value, its type and its expiration. A function lists the
//! specs it uses in its attribute (`state = [SEEN, LAST]`); the invoker tells the cluster
//! about them, and reading or writing a spec the function did not list panics (failing the
//! batch). Two specs of one function with the same name are a compile error:
//!
//! ```compile_fail
//! use invoker_sdk::statefun::{Context, ValueSpec};
//! const A: ValueSpec<i32> = ValueSpec::new("count");
//! const B: ValueSpec<i64> = ValueSpec::new("count");
//!
//! #[invoker_sdk::statefun(type = "example/counter", state = [A, B])]
//! fn counter(ctx: &Context, n: i64) {}
//! ```
//!
//! # Where it runs
//! Only `invoker statefun` gives a function its StateFun context. Called any other way (over
//! gRPC, or by an invoker older than this SDK, whose context has no state callbacks), a
//! stateful function fails with an error that says so, and runs nothing.

mod types;

use std::marker::PhantomData;
use std::mem::size_of;
use std::time::Duration;

use invoker_abi::{HostContext, Slice, state};

pub use types::{BOOL, DOUBLE, FLOAT, INT, JsonType, LONG, STRING, ValueType};

use crate::abi_str;

/// When a persisted value expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiration {
    /// Never.
    Never,
    /// This long after it was last written.
    AfterWrite(Duration),
    /// This long after the function was last invoked for its address (read or written).
    AfterInvoke(Duration),
}

/// A persisted value of a stateful function: its name, its type `T` and its expiration.
/// Declare it as a `const` and list it in the function's `#[statefun(state = [...])]`.
///
/// ```
/// use std::time::Duration;
/// use invoker_sdk::statefun::ValueSpec;
///
/// const SEEN: ValueSpec<i32> = ValueSpec::new("seen");
/// const TOKEN: ValueSpec<String> =
///     ValueSpec::new("token").expire_after_write(Duration::from_secs(24 * 3600));
/// ```
///
/// A name is what the cluster stores the value under: letters, digits and `_`, not starting
/// with a digit (StateFun's rule); another name fails to compile.
pub struct ValueSpec<T> {
    name: &'static str,
    expiration: Expiration,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for ValueSpec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ValueSpec<T> {}

impl<T> std::fmt::Debug for ValueSpec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueSpec")
            .field("name", &self.name)
            .field("expiration", &self.expiration)
            .finish()
    }
}

impl<T: ValueType> ValueSpec<T> {
    /// A value named `name` that never expires.
    pub const fn new(name: &'static str) -> Self {
        assert!(
            valid_name(name),
            "a value spec's name must be letters, digits and `_`, not starting with a digit"
        );
        ValueSpec {
            name,
            expiration: Expiration::Never,
            _type: PhantomData,
        }
    }

    /// The same value, expiring `after` its last write.
    pub const fn expire_after_write(self, after: Duration) -> Self {
        ValueSpec {
            expiration: Expiration::AfterWrite(after),
            ..self
        }
    }

    /// The same value, expiring `after` the function was last invoked for its address.
    pub const fn expire_after_invoke(self, after: Duration) -> Self {
        ValueSpec {
            expiration: Expiration::AfterInvoke(after),
            ..self
        }
    }

    /// The name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The expiration.
    pub const fn expiration(&self) -> Expiration {
        self.expiration
    }

    /// What the attribute registers: name, typename, expiration.
    #[doc(hidden)]
    pub const fn raw(&self) -> RawSpec {
        RawSpec {
            name: self.name,
            typename: T::TYPENAME,
            expiration: self.expiration,
        }
    }
}

/// StateFun's rule for state names: `[a-zA-Z_][a-zA-Z0-9_]*`.
const fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes[0].is_ascii_digit() {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if !(bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

/// A value spec as registered: what the host is told.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct RawSpec {
    pub name: &'static str,
    pub typename: &'static str,
    pub expiration: Expiration,
}

/// Fails the build when two specs share a name (run in a `const` by the attribute).
#[doc(hidden)]
pub const fn check_specs(specs: &[RawSpec]) {
    let mut i = 0;
    while i < specs.len() {
        let mut j = i + 1;
        while j < specs.len() {
            if str_eq(specs[i].name, specs[j].name) {
                panic!(
                    "two value specs of this #[statefun] function have the same name: give each persisted value a name of its own"
                );
            }
            j += 1;
        }
        i += 1;
    }
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Fails the build when a function type is not `namespace/name` (run in a `const`).
#[doc(hidden)]
pub const fn check_typename(typename: &str) {
    let bytes = typename.as_bytes();
    let mut slash = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'/' {
            slash = Some(i);
        }
        i += 1;
    }
    match slash {
        Some(at) if at > 0 && at + 1 < bytes.len() => {}
        _ => panic!("a StateFun typename is `namespace/name`, both parts non-empty"),
    }
}

/// A StateFun address: a function type (`namespace/name`) and an id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// The function type, `namespace/name`.
    pub function_type: String,
    /// The id.
    pub id: String,
}

impl Address {
    /// The address of function type `function_type` (`namespace/name`) with `id`.
    pub fn new(function_type: impl Into<String>, id: impl Into<String>) -> Self {
        Address {
            function_type: function_type.into(),
            id: id.into(),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.function_type, self.id)
    }
}

/// A record for a Kafka egress (StateFun's `io.statefun.sdk.egress.KafkaProducerRecord`),
/// sent with [`Context::kafka_egress`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaRecord {
    /// The topic.
    pub topic: String,
    /// The record's key (empty for none).
    pub key: String,
    /// The record's value bytes.
    pub value: Vec<u8>,
}

impl KafkaRecord {
    /// A record of `value`, encoded as its [`ValueType`] bytes, for `topic` under `key`.
    pub fn new<T: ValueType>(topic: impl Into<String>, key: impl Into<String>, value: &T) -> Self {
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        KafkaRecord {
            topic: topic.into(),
            key: key.into(),
            value: bytes,
        }
    }
}

/// The typename StateFun's Kafka egress takes its records under.
pub const KAFKA_PRODUCER_RECORD: &str =
    "type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord";

/// A persisted value that did not decode as its spec's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError {
    name: &'static str,
    reason: String,
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the persisted value '{}' cannot be read: {}",
            self.name, self.reason
        )
    }
}

impl std::error::Error for StateError {}

/// A stateful function's view of one message's invocation: its address, the caller, its
/// persisted values, and the messages and egress records it sends. It dereferences to the
/// invoker's [`Context`](crate::Context) (logging, configuration, metrics).
///
/// What the function changes applies only if it (and every other invocation of its batch)
/// succeeds: an error or a panic discards the batch's changes, and the cluster retries it.
pub struct Context<'a> {
    base: &'a crate::Context,
}

impl std::ops::Deref for Context<'_> {
    type Target = crate::Context;

    fn deref(&self) -> &crate::Context {
        self.base
    }
}

/// How a stateful function fails without a StateFun context.
fn unavailable(function_type: &str, host_too_old: bool) -> String {
    if host_too_old {
        format!(
            "Invoker: '{function_type}' is a stateful function, and this invoker predates state: its context has no StateFun callbacks; run it with a newer invoker's `invoker statefun`"
        )
    } else {
        format!(
            "Invoker: '{function_type}' is a stateful function (Flink StateFun): serve it with `invoker statefun`, not over this protocol"
        )
    }
}

impl<'a> Context<'a> {
    /// The stateful view of `base`, if the host lent it the StateFun callbacks; otherwise
    /// the error to fail the call with, saying why.
    #[doc(hidden)]
    pub fn of(base: &'a crate::Context, function_type: &str) -> Result<Self, String> {
        let raw = base.host();
        if (raw.size as usize) < HostContext::STATEFUL_END {
            return Err(unavailable(function_type, true));
        }
        let complete = raw.state_get.is_some()
            && raw.state_set.is_some()
            && raw.address.is_some()
            && raw.send.is_some()
            && raw.cancel.is_some()
            && raw.egress.is_some();
        if !complete {
            return Err(unavailable(function_type, false));
        }
        Ok(Context { base })
    }

    fn raw(&self) -> &HostContext {
        self.base.host()
    }

    fn address(&self, which: u32) -> Option<Address> {
        let raw = self.raw();
        let callback = raw.address?;
        let mut out = invoker_abi::Address {
            function_type: Slice::EMPTY,
            id: Slice::EMPTY,
        };
        // SAFETY: a host callback with its own data, checked present in `of`; `out` is
        // writable.
        let found = unsafe { callback(raw.data, which, &mut out) };
        // SAFETY: the host lends UTF-8 strings for the call; they are copied here.
        found.then(|| unsafe { Address::new(abi_str(out.function_type), abi_str(out.id)) })
    }

    /// This function's address: its type and the id the message was sent to.
    pub fn self_address(&self) -> Address {
        self.address(invoker_abi::address::SELF)
            .unwrap_or_else(|| Address::new("", ""))
    }

    /// The address of the function that sent the message; `None` for a message from an
    /// ingress.
    pub fn caller(&self) -> Option<Address> {
        self.address(invoker_abi::address::CALLER)
    }

    /// The current value of `spec` (as the previous message of the batch left it), or `None`
    /// when it has none.
    ///
    /// # Panics
    /// If the function's attribute does not list `spec`.
    pub fn get<T: ValueType>(&self, spec: &ValueSpec<T>) -> Result<Option<T>, StateError> {
        let raw = self.raw();
        let Some(callback) = raw.state_get else {
            return Ok(None);
        };
        let mut out = Slice::EMPTY;
        // SAFETY: a host callback with its own data; the name outlives the call; `out` is
        // writable.
        let code = unsafe { callback(raw.data, Slice::from_str(spec.name), &mut out) };
        match code {
            state::OK => {
                // SAFETY: the host lends the value until its next callback; it is decoded
                // (copied) before any.
                let bytes = unsafe { crate::lent::abi_bytes(out) };
                T::decode(bytes).map(Some).map_err(|reason| StateError {
                    name: spec.name,
                    reason,
                })
            }
            state::ABSENT => Ok(None),
            _ => undeclared(spec.name),
        }
    }

    /// Sets `spec`'s value.
    ///
    /// # Panics
    /// If the function's attribute does not list `spec`.
    pub fn set<T: ValueType>(&self, spec: &ValueSpec<T>, value: &T) {
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        self.write(spec.name, Some(&bytes));
    }

    /// Removes `spec`'s value.
    ///
    /// # Panics
    /// If the function's attribute does not list `spec`.
    pub fn remove<T: ValueType>(&self, spec: &ValueSpec<T>) {
        self.write(spec.name, None);
    }

    fn write(&self, name: &'static str, value: Option<&[u8]>) {
        let raw = self.raw();
        let Some(callback) = raw.state_set else {
            return;
        };
        let slice = value.map(Slice::new);
        let value_ptr = slice
            .as_ref()
            .map_or(std::ptr::null(), |s| s as *const Slice);
        // SAFETY: a host callback with its own data; the name and value outlive the call
        // (the host copies the value).
        let code = unsafe { callback(raw.data, Slice::from_str(name), value_ptr) };
        match code {
            state::OK => {}
            state::LIMIT => over_limit(),
            _ => undeclared(name),
        }
    }

    fn send_raw(
        &self,
        to: &Address,
        typename: &str,
        value: &[u8],
        delay: Option<(Duration, &str)>,
    ) {
        let raw = self.raw();
        let Some(callback) = raw.send else { return };
        let (delayed, delay_millis, token) = match delay {
            Some((delay, token)) => (
                true,
                u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                token,
            ),
            None => (false, 0, ""),
        };
        let message = invoker_abi::Outgoing {
            target: invoker_abi::Address {
                function_type: Slice::from_str(&to.function_type),
                id: Slice::from_str(&to.id),
            },
            value: invoker_abi::TypedValue {
                typename: Slice::from_str(typename),
                value: Slice::new(value),
            },
            delayed,
            delay_millis,
            cancellation_token: Slice::from_str(token),
        };
        // SAFETY: a host callback with its own data; the message and everything it points to
        // outlive the call (the host copies them).
        let code = unsafe { callback(raw.data, &message) };
        match code {
            state::OK => {}
            state::LIMIT => over_limit(),
            _ => panic!(
                "cannot send to {to}: an address is a function type `namespace/name` and a non-empty id"
            ),
        }
    }

    /// Sends `value` to the function at `to`.
    ///
    /// # Panics
    /// If `to`'s function type is not `namespace/name` or its id is empty.
    pub fn send<T: ValueType>(&self, to: &Address, value: &T) {
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        self.send_raw(to, T::TYPENAME, &bytes, None);
    }

    /// Sends `value` to the function at `to` after `delay`. With a `cancellation_token`, the
    /// message can be taken back until it is delivered, with
    /// [`cancel_delayed`](Self::cancel_delayed).
    ///
    /// # Panics
    /// As [`send`](Self::send).
    pub fn send_after<T: ValueType>(
        &self,
        delay: Duration,
        to: &Address,
        value: &T,
        cancellation_token: Option<&str>,
    ) {
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        self.send_raw(
            to,
            T::TYPENAME,
            &bytes,
            Some((delay, cancellation_token.unwrap_or(""))),
        );
    }

    /// Cancels the delayed message sent with `cancellation_token`, if it has not been
    /// delivered yet.
    ///
    /// # Panics
    /// If the token is empty.
    pub fn cancel_delayed(&self, cancellation_token: &str) {
        let raw = self.raw();
        let Some(callback) = raw.cancel else { return };
        // SAFETY: a host callback with its own data; the token outlives the call.
        let code = unsafe { callback(raw.data, Slice::from_str(cancellation_token)) };
        if code != state::OK {
            panic!("cannot cancel a delayed message without a cancellation token");
        }
    }

    fn egress_raw(&self, egress: &str, typename: &str, value: &[u8]) {
        let raw = self.raw();
        let Some(callback) = raw.egress else { return };
        let value = invoker_abi::TypedValue {
            typename: Slice::from_str(typename),
            value: Slice::new(value),
        };
        // SAFETY: a host callback with its own data; the egress and the value outlive the
        // call (the host copies them).
        let code = unsafe { callback(raw.data, Slice::from_str(egress), &value) };
        match code {
            state::OK => {}
            state::LIMIT => over_limit(),
            _ => panic!("cannot send to egress '{egress}': an egress is `namespace/type`"),
        }
    }

    /// Sends `value` to the egress `egress` (`namespace/type`, as the cluster's module names
    /// it), as a typed value.
    ///
    /// # Panics
    /// If `egress` is not `namespace/type`.
    pub fn egress<T: ValueType>(&self, egress: &str, value: &T) {
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        self.egress_raw(egress, T::TYPENAME, &bytes);
    }

    /// Sends a record to the Kafka egress `egress` (`namespace/type`): a
    /// `KafkaProducerRecord`, as StateFun's Kafka egress takes it.
    ///
    /// # Panics
    /// As [`egress`](Self::egress).
    pub fn kafka_egress(&self, egress: &str, record: &KafkaRecord) {
        let bytes = types::kafka_record(&record.topic, &record.key, &record.value);
        self.egress_raw(egress, KAFKA_PRODUCER_RECORD, &bytes);
    }
}

fn over_limit() -> ! {
    panic!(
        "this batch's state and messages passed the invoker's bound on one response: send less per message"
    )
}

fn undeclared<T>(name: &str) -> T {
    panic!(
        "the value spec '{name}' is not declared for this function: list it in #[statefun(state = [...])]"
    )
}

/// Decodes a stateful function's message.
#[doc(hidden)]
pub fn decode_message<T: ValueType>(bytes: &[u8], typename: &str) -> Result<T, String> {
    if typename != T::TYPENAME {
        return Err(format!(
            "Invoker: the message is a {typename}; the function takes {}",
            T::TYPENAME
        ));
    }
    T::decode(bytes).map_err(|e| format!("Invoker: the message cannot be read: {e}"))
}

/// The registration of a stateful function: its type and value specs.
#[doc(hidden)]
#[derive(Debug)]
pub struct StatefulSpec {
    pub function_type: &'static str,
    pub values: &'static [RawSpec],
}

const _: () = assert!(size_of::<Option<unsafe extern "C" fn()>>() == size_of::<usize>());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_statefun_rules() {
        assert!(valid_name("seen"));
        assert!(valid_name("_a1"));
        assert!(!valid_name(""));
        assert!(!valid_name("1a"));
        assert!(!valid_name("a-b"));
    }

    #[test]
    fn a_context_without_state_callbacks_says_why() {
        use invoker_abi::HostContext;
        unsafe extern "C" fn header(
            _: *const std::ffi::c_void,
            _: usize,
            _: *mut invoker_abi::Header,
        ) -> bool {
            false
        }
        unsafe extern "C" fn config(_: *const std::ffi::c_void, _: Slice, _: *mut Slice) -> bool {
            false
        }
        unsafe extern "C" fn log(_: *const std::ffi::c_void, _: u32, _: Slice) {}
        unsafe extern "C" fn metric(_: *const std::ffi::c_void, _: Slice, _: f64) {}
        unsafe extern "C" fn deadline(_: *const std::ffi::c_void) -> i64 {
            -1
        }
        unsafe extern "C" fn cancelled(_: *const std::ffi::c_void) -> bool {
            false
        }
        let mut host = HostContext {
            size: HostContext::V1_SIZE as u32,
            data: std::ptr::null(),
            function_name: Slice::EMPTY,
            instance_id: Slice::EMPTY,
            header,
            config,
            log,
            metric,
            deadline_millis: deadline,
            is_cancelled: cancelled,
            state_get: None,
            state_set: None,
            address: None,
            send: None,
            cancel: None,
            egress: None,
        };
        // SAFETY: `host` outlives the context.
        let base = unsafe { crate::Context::from_raw(&host) };
        let old = Context::of(&base, "example/greeter").err().unwrap();
        assert!(old.contains("predates state"), "{old}");
        host.size = size_of::<HostContext>() as u32;
        // SAFETY: as above.
        let base = unsafe { crate::Context::from_raw(&host) };
        let other = Context::of(&base, "example/greeter").err().unwrap();
        assert!(
            other.contains("serve it with `invoker statefun`"),
            "{other}"
        );
    }
}
