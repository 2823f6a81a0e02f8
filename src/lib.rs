//! `invoker`: runs one Rust function, compiled as a `cdylib`, behind riff's gRPC protocols.
//!
//! The data path, in file order: [`protocol`] (wire messages) → [`engine`] (function shapes,
//! errors) → [`function`] (the library boundary) → back. [`negotiate`] is pure content
//! negotiation; [`server`] hosts the services and the drain; [`run`] starts it all.
//! See ARCHITECTURE.md.
//!
//! `unsafe` is denied everywhere but at the library boundary: `function::ffi` and
//! `function::crash` (the fatal-signal handler) allow it, and every block says why it is sound.

#![deny(unsafe_code)]

pub mod admin;
pub mod author;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod function;
pub mod listener;
pub mod live;
pub mod local;
pub mod logging;
pub mod negotiate;
pub mod protocol;
pub mod run;
pub mod server;
pub mod stats;
