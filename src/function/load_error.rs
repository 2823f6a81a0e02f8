//! Why a library or function could not be loaded: [`LoadError`], and the dynamic loader's
//! reasons turned into advice.

use std::fs::File;
use std::path::Path;

/// Why a library or function could not be loaded. Each message names the file and says what
/// to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The file does not exist.
    #[error("function library {path} does not exist: check FUNCTION_URI")]
    Missing {
        /// The path.
        path: String,
    },
    /// The file could not be opened for reading (permissions), or is not a regular file.
    #[error("cannot read function library {path}: {reason}")]
    Unreadable {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file could not be copied to where it is loaded from: a memory file, or (without
    /// `/proc`) a private directory of `$TMPDIR`. A failure of this host, not of the library.
    #[error("cannot read function library {path}: {reason}")]
    CopyFailed {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not a shared library at all (text, an archive, an executable).
    #[error(
        "{path} is not a loadable shared library ({reason}): build the function crate with crate-type = [\"cdylib\"]"
    )]
    NotALibrary {
        /// The path.
        path: String,
        /// What the dynamic loader said.
        reason: String,
    },
    /// The file is a shared library, but the dynamic loader refused it: a dependency it cannot
    /// find, a C library older than the one it was built against, another architecture.
    #[error("cannot load function library {path}: {reason}{}", load_hint(.reason))]
    LoadFailed {
        /// The path.
        path: String,
        /// What the dynamic loader said.
        reason: String,
    },
    /// The library lacks the root symbol.
    #[error(
        "{path} is not a function library: it does not export `invoker_library`; mark a function with #[invoker_sdk::function]"
    )]
    NoRootSymbol {
        /// The path.
        path: String,
    },
    /// The library speaks another ABI version.
    #[error(
        "{path} was built for invoker ABI version {library}, but this invoker speaks ABI version {host}: rebuild the function with a matching invoker-sdk"
    )]
    AbiMismatch {
        /// The path.
        path: String,
        /// The library's ABI version.
        library: u32,
        /// The host's ABI version.
        host: u32,
    },
    /// The descriptor is malformed.
    #[error("{path} has an invalid function descriptor: {reason}")]
    Invalid {
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The library exports no function.
    #[error("{path} exports no functions: mark one with #[invoker_sdk::function]")]
    NoFunctions {
        /// The path.
        path: String,
    },
    /// No handler given, and the library exports several.
    #[error(
        "{path} exports several functions ({handlers}): choose one with ?handler=NAME in FUNCTION_URI"
    )]
    HandlerNeeded {
        /// The path.
        path: String,
        /// The handlers on offer.
        handlers: String,
    },
    /// The handler is not exported.
    #[error("{path} has no function '{handler}'; it exports: {handlers}")]
    UnknownHandler {
        /// The path.
        path: String,
        /// The handler asked for.
        handler: String,
        /// The handlers on offer.
        handlers: String,
    },
}

/// What to do about the dynamic loader's `reason` for refusing a shared library, when it is one
/// of the usual ones.
fn load_hint(reason: &str) -> &'static str {
    if reason.contains("version `GLIBC_") {
        "; the library was built against a newer glibc than this system's: build it on a system \
         (or image) with a glibc no newer than this one"
    } else if reason.contains("cannot open shared object file") {
        "; install the library it depends on, or build the function without that dependency"
    } else {
        ""
    }
}

/// The error for a library the dynamic loader refused to load from `path` (the private copy),
/// named `shown` (the file the operator named). Only a file that is not a shared library at
/// all blames the crate type; anything else (a missing dependency, a too-new glibc) is the
/// loader's own reason, which libloading keeps in the error's `source()`.
pub(crate) fn load_failure(path: &Path, shown: &str, error: &libloading::Error) -> LoadError {
    use std::error::Error as _;
    let reason = match error.source() {
        Some(source) => source.to_string(),
        None => error.to_string(),
    };
    let reason = reason.replace(&*path.to_string_lossy(), shown);
    // A position-independent executable is ET_DYN too: a `bin` crate, not a `cdylib`.
    if is_shared_object(path) && !reason.contains("position-independent executable") {
        LoadError::LoadFailed {
            path: shown.to_owned(),
            reason,
        }
    } else {
        LoadError::NotALibrary {
            path: shown.to_owned(),
            reason,
        }
    }
}

/// Whether the file at `path` is an ELF shared object (`e_type` `ET_DYN`).
fn is_shared_object(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 18];
    let read = File::open(path).and_then(|mut f| f.read_exact(&mut head));
    if read.is_err() || head[..4] != *b"\x7fELF" {
        return false;
    }
    const ET_DYN: u16 = 3;
    let e_type = [head[16], head[17]];
    match head[5] {
        1 => u16::from_le_bytes(e_type) == ET_DYN,
        2 => u16::from_be_bytes(e_type) == ET_DYN,
        _ => false,
    }
}
