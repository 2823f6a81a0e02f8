//! `invoker`: runs one Rust function, compiled as a `cdylib`, behind riff's gRPC protocols.
//!
//! The layers, top first (ARCHITECTURE.md; `tests/layers.rs` keeps them): [`cmd`] (one file
//! per subcommand) → [`server`] (tonic: the services, the drain, the listeners) → `live`
//! (the library being served) → `engine` (function shapes, errors) → [`stats`] →
//! [`function`] (the library boundary) and `negotiate` → leaves ([`proto`], `config`,
//! [`logging`], `env`, `sync`, [`cli`]).
//!
//! `unsafe` is denied everywhere but at the library boundary: `function::ffi` and
//! `function::crash` (the fatal-signal handler) allow it, and every block says why it is sound.

#![deny(unsafe_code)]

pub mod cli;
pub mod cmd;
pub(crate) mod config;
pub(crate) mod engine;
pub(crate) mod env;
pub mod function;
pub(crate) mod live;
pub mod logging;
pub(crate) mod negotiate;
pub mod proto;
pub mod server;
pub mod stats;
pub(crate) mod sync;
