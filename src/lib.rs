//! `invoker`: runs one Rust function, compiled as a `cdylib`, behind riff's gRPC protocols.
//!
//! The data path, in file order: `protocol` (wire messages) → `engine` (function shapes,
//! errors) → `function` (the library boundary) → back. See ARCHITECTURE.md.

pub mod function;
