//! Write a plain Rust function; run it behind riff's gRPC function protocols with `invoker`.
//!
//! A function crate depends on `invoker-sdk`, is built as a `cdylib`, and marks each function
//! it exports with [`#[invoker_sdk::function]`](function). The `invoker` daemon loads the
//! library, decodes each incoming message into the function's input type, calls it, and
//! encodes what it returns. You never write `unsafe`, `extern "C"` or `#[no_mangle]`.
//!
//! ```toml
//! [package]
//! name = "greeter"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! invoker-sdk = { path = "../invoker/crates/sdk" }  # until the SDK is published
//! futures-util = "0.3"                                 # only for streaming functions
//! serde = { version = "1", features = ["derive"] }     # only for Json/Form types
//! ```
//!
//! # Request/reply
//! A function that takes at most one input and returns at most one output is called once per
//! message. It may return a `Result` whose error is any `Display` type; the error's text
//! reaches the caller.
//!
//! ```
//! #[invoker_sdk::function]
//! fn hello(name: String) -> Result<String, String> {
//!     if name == "Riff" {
//!         return Err("error condition".into());
//!     }
//!     Ok(format!("Hello {name}"))
//! }
//!
//! #[invoker_sdk::function]
//! fn double(x: i64) -> i64 {
//!     x * 2
//! }
//! ```
//!
//! All eight shapes work, each with or without a leading `&Context`:
//! `f(X) -> Result<Y, E>`, `f(X) -> Y`, `f(X)`, `f(X) -> Result<(), E>`, `f() -> Result<Y, E>`,
//! `f() -> Y`, `f()`, `f() -> Result<(), E>`.
//!
//! # JSON
//! [`Json<T>`] carries any serde type as `application/json` (and accepts HTML form posts);
//! [`Form<T>`] carries `application/x-www-form-urlencoded`.
//!
//! ```
//! use invoker_sdk::Json;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Person { name: String }
//!
//! #[derive(Serialize)]
//! struct Greeting { greeting: String }
//!
//! #[invoker_sdk::function]
//! fn greet_json(Json(person): Json<Person>) -> Json<Greeting> {
//!     Json(Greeting { greeting: format!("Hello {}", person.name) })
//! }
//! ```
//!
//! # Streaming
//! A function that takes [`Input<X>`] parameters and returns `impl Stream<Item = Y>` (or
//! `impl Stream<Item = Result<Y, E>>`, which ends the call at the first error) is called once
//! per call with the call's input stream. A function with no input that returns a stream is a
//! supplier: it starts when the call opens and stops when the caller goes away. Backpressure
//! holds: your stream is polled only as fast as the caller reads. The library needs no async
//! runtime of its own.
//!
//! A streaming function must not block: its stream is polled on the invoker's async workers,
//! so `std::thread::sleep`, blocking I/O or a long computation inside it stalls other calls.
//! Use [`time::sleep`] and [`time::interval`] for timers.
//!
//! ```
//! use invoker_sdk::{Input, stream::{Stream, StreamExt}};
//!
//! #[invoker_sdk::function]
//! fn running_average(numbers: Input<f64>) -> impl Stream<Item = f64> {
//!     numbers.scan((0.0, 0.0), |(sum, count), x| {
//!         *sum += x;
//!         *count += 1.0;
//!         std::future::ready(Some(*sum / *count))
//!     })
//! }
//! ```
//!
//! A streaming function may take `&Context` first, like a request/reply one. The context is
//! lent only while the function runs, not while its stream is polled: copy what the stream
//! needs out of it before returning (the attribute makes the returned `impl Stream` capture
//! nothing, as if written `+ use<>`). Its headers are the call's first message's (on Invoke,
//! the first data frame's), so the invoker starts such a function when that message arrives,
//! not when the call opens (or at half-close, with no headers, if none comes); a supplier's
//! context has no headers. Take `Input<Message<T>>` to see every message's headers.
//!
//! ```
//! use invoker_sdk::{Context, Input, stream::{Stream, StreamExt}};
//!
//! #[invoker_sdk::function]
//! fn tagged(ctx: &Context, words: Input<String>) -> impl Stream<Item = String> {
//!     let tag = ctx.correlation_id().unwrap_or("no correlationId").to_owned();
//!     words.map(move |word| format!("{tag}: {word}"))
//! }
//! ```
//!
//! # Several inputs and outputs
//! Over `streaming.Riff/Invoke`, a streaming function may take several `Input<X>` parameters and
//! return a tuple of streams, one per output; each output completes on its own, and the call
//! completes when the last one does. [`fan_out::partition`] splits one stream in two.
//!
//! ```
//! use invoker_sdk::{Input, fan_out::partition, stream::Stream};
//!
//! #[invoker_sdk::function]
//! fn partition_parity(numbers: Input<i64>) -> (impl Stream<Item = i64>, impl Stream<Item = i64>) {
//!     partition(numbers, |n: &i64| n % 2 == 0)
//! }
//! ```
//!
//! # Media types
//! Each payload type names the media types it accepts and produces, in preference order;
//! the invoker negotiates `Content-Type` and `Accept` against them.
//!
//! | type | decodes from | encodes as |
//! |---|---|---|
//! | `String`, `&'static str` (output only) | `text/plain`, `application/json` (a JSON string), `application/octet-stream` (valid UTF-8) | `text/plain`, `application/json` (a JSON string) |
//! | integers, floats, `bool` | `text/plain`, `application/json` | `text/plain`, `application/json` |
//! | `Vec<u8>`, `Bytes` | `application/octet-stream`, `text/plain` | `application/octet-stream` |
//! | [`Json<T>`] | `application/json`, `application/x-www-form-urlencoded` | `application/json` |
//! | [`Form<T>`] | `application/x-www-form-urlencoded` | `application/x-www-form-urlencoded` |
//! | [`Message<T>`] | as `T`, plus the message's headers | as `T`, plus headers you set |
//!
//! Implement [`FromPayload`] or [`IntoPayload`] for your own types to add more.
//!
//! # Lifecycle hooks
//! A library may have an init hook, run once after the invoker loads it and before any call,
//! with the user configuration (the invoker's `--config` file and `FUNCTION_CONFIG`), and a
//! shutdown hook, run once when the invoker exits, after the calls in flight have drained. A
//! failing (or panicking) init hook stops the invoker from serving the library, with the hook's
//! message.
//!
//! ```
//! use std::sync::OnceLock;
//! use invoker_sdk::Config;
//!
//! static GREETING: OnceLock<String> = OnceLock::new();
//!
//! #[invoker_sdk::init]
//! fn setup(config: &Config) -> Result<(), String> {
//!     let greeting = config.get("greeting").unwrap_or("Hello");
//!     if greeting.is_empty() {
//!         return Err("the greeting must not be empty".into());
//!     }
//!     GREETING.get_or_init(|| greeting.to_owned());
//!     Ok(())
//! }
//!
//! #[invoker_sdk::shutdown]
//! fn teardown() {
//!     eprintln!("goodbye");
//! }
//!
//! #[invoker_sdk::function]
//! fn greet(name: String) -> String {
//!     format!("{} {name}", GREETING.get().map_or("Hello", String::as_str))
//! }
//! ```
//!
//! With several hooks of a kind in one library, all run, in link order; init stops at the
//! first error.
//!
//! # Stateful functions (Flink StateFun)
//! [`#[invoker_sdk::statefun]`](macro@statefun) exports a function for Apache Flink Stateful
//! Functions, served by `invoker statefun`: addressed by type and id, with persisted values
//! (typed [`ValueSpec`](statefun::ValueSpec)s with expiration), messages to other functions,
//! delayed messages with cancellation, and egress. See the [`statefun`](mod@statefun) module
//! for a complete example.
//!
//! ```
//! use invoker_sdk::statefun::{Context, ValueSpec};
//!
//! const SEEN: ValueSpec<i32> = ValueSpec::new("seen");
//!
//! #[invoker_sdk::statefun(type = "example/greeter", state = [SEEN])]
//! fn greeter(ctx: &Context, name: String) -> Result<(), String> {
//!     let seen = ctx.get(&SEEN).map_err(|e| e.to_string())?.unwrap_or(0) + 1;
//!     ctx.set(&SEEN, &seen);
//!     ctx.egress("example/greets", &format!("Hello {name}, visit {seen}"));
//!     Ok(())
//! }
//! ```
//!
//! # Unsupported signatures
//! Anything else is a compile error that lists the supported signatures (and, for a payload
//! type, the supported types: see [`FromPayload`] and [`IntoPayload`]). An exported function is
//! a plain, safe, non-generic, synchronous free function, so `#[invoker_sdk::function]` refuses
//! each of these (an `async fn`, an `unsafe fn`, an `extern "C" fn`, a generic function and a
//! method); for asynchronous work, return a stream.
//!
//! ```compile_fail
//! #[invoker_sdk::function]
//! async fn hello(name: String) -> String {
//!     format!("Hello {name}")
//! }
//! ```
//!
//! ```compile_fail
//! #[invoker_sdk::function]
//! unsafe fn hello(name: String) -> String {
//!     format!("Hello {name}")
//! }
//! ```
//!
//! ```compile_fail
//! #[invoker_sdk::function]
//! extern "C" fn hello(name: String) -> String {
//!     format!("Hello {name}")
//! }
//! ```
//!
//! ```compile_fail
//! #[invoker_sdk::function]
//! fn hello<T: std::fmt::Display>(name: T) -> String {
//!     format!("Hello {name}")
//! }
//! ```
//!
//! ```compile_fail
//! struct Greeter;
//!
//! impl Greeter {
//!     #[invoker_sdk::function]
//!     fn hello(&self, name: String) -> String {
//!         format!("Hello {name}")
//!     }
//! }
//! ```
//!
//! # Panics
//! A panic in your function is caught at the library boundary (so build with the default
//! `panic = "unwind"`): the call ends with `INTERNAL` and the panic message, and the invoker
//! goes on serving.

#![deny(unsafe_code)]

mod config;
// The modules that cross the library boundary are the only ones with `unsafe`: the call's
// context (the host's callbacks), the input streams and messages the host lends (`input`,
// `lent`), the headers of a lent message, the state and messaging callbacks (`statefun`), and
// the shims with the root symbol. Every block says why it is sound.
#[allow(unsafe_code)]
mod context;
pub mod fan_out;
#[allow(unsafe_code)]
mod input;
#[allow(unsafe_code)]
mod lent;
#[allow(unsafe_code)]
mod message;
mod payload;
// Stateful functions: the state and messaging callbacks the host lends.
#[allow(unsafe_code)]
pub mod statefun;
pub mod time;

#[doc(hidden)]
#[allow(unsafe_code)]
pub mod private;

pub use bytes::Bytes;
pub use config::Config;
pub use context::Context;
pub use input::Input;
pub use invoker_sdk_macros::{function, init, shutdown, statefun};
pub use message::{Headers, Message};
pub use payload::{
    APPLICATION_JSON, FORM_URLENCODED, Form, FromPayload, IntoPayload, Json, OCTET_STREAM,
    Outgoing, Payload, PayloadError, TEXT_PLAIN,
};

pub(crate) use lent::abi_str;

/// Streams: the `Stream` trait and its combinators, re-exported from `futures-util`.
pub mod stream {
    pub use futures_util::stream::*;
}
