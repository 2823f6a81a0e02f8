//! Loading a library and choosing its function: the safe face of `ffi`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ffi::{self, BoxInput, Entry, LoadedLibrary};
use super::load_error::LoadError;
use super::worker::Workers;
use super::{
    CallContext, FunctionError, FunctionInfo, InputMessage, OutputMessage, OutputStream, Shape,
};

/// A loaded function library.
pub struct Library {
    inner: Arc<LoadedLibrary>,
    sdk_version: String,
    package: Option<(String, String)>,
    functions: Vec<(Arc<FunctionInfo>, Entry)>,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.inner.path())
            .field("sdk_version", &self.sdk_version)
            .field("functions", &self.handlers())
            .finish()
    }
}

impl Library {
    /// Loads the library at `path` and validates its descriptor.
    ///
    /// The file is read once, through a descriptor opened here, into an anonymous memory file
    /// (`memfd_create`), and the dynamic loader opens that (`/proc/self/fd/N`): nothing is
    /// written to disk, no path another user can create or replace is ever opened, and every
    /// load is a fresh inode, so loading the same path again (a reload) loads the file as it is
    /// now instead of handing back the copy already mapped.
    pub fn load(path: impl AsRef<Path>) -> Result<Library, LoadError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        if let Err(e) = std::fs::metadata(path)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            return Err(LoadError::Missing { path: shown });
        }
        let unreadable = |reason| LoadError::Unreadable {
            path: shown.clone(),
            reason,
        };
        let mut source = open_regular(path).map_err(unreadable)?;
        let image = match Path::new("/proc/self/fd").is_dir() {
            true => memory_copy(&mut source, path).ok(),
            false => None,
        };
        Library::load_image(image, path, || {
            use std::io::Seek;
            source.rewind().map_err(|e| e.to_string())?;
            PrivateCopy::new(&mut source, path)
        })
    }

    /// Loads a library from its bytes (code received over the network, such as OpenWhisk's
    /// `/init`), named `name` in messages, as [`Library::load`] loads a file: the bytes go
    /// straight into an anonymous memory file, or where there is none, into the same private
    /// temporary copy, never to a path of the caller's choosing.
    pub fn load_bytes(name: &Path, bytes: &[u8]) -> Result<Library, LoadError> {
        let image = match Path::new("/proc/self/fd").is_dir() {
            true => memory_copy(&mut &bytes[..], name).ok(),
            false => None,
        };
        Library::load_image(image, name, || PrivateCopy::new(&mut &bytes[..], name))
    }

    /// Loads the memory file `image`, or when there is none, the private copy `fallback` makes.
    fn load_image(
        image: Option<File>,
        path: &Path,
        fallback: impl FnOnce() -> Result<PrivateCopy, String>,
    ) -> Result<Library, LoadError> {
        let loaded = match image {
            Some(image) => {
                let in_memory = PathBuf::from(format!("/proc/self/fd/{}", image.as_raw_fd()));
                ffi::load(&in_memory, Some(image.into()), path)?
            }
            None => {
                // No /proc (a chroot), or no memory file to be had (a kernel or policy that
                // refuses them): a file in a directory only this process can write to.
                let copy = fallback().map_err(|reason| LoadError::CopyFailed {
                    path: path.display().to_string(),
                    reason,
                })?;
                ffi::load(&copy.file, None, path)?
            }
        };
        Ok(Library::from(loaded))
    }

    /// The library linked into this program whose root function is `root`, validated as
    /// [`Library::load`] validates a loaded one, and named `shown`: the round-trip test's.
    #[cfg(test)]
    pub(crate) fn linked(root: invoker_abi::RootFn, shown: &Path) -> Result<Library, LoadError> {
        ffi::linked(root, shown).map(Library::from)
    }

    /// The path it was loaded from.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// The version of `invoker-sdk` it was built with.
    pub fn sdk_version(&self) -> &str {
        &self.sdk_version
    }

    /// The function crate's package name and version, when the library says.
    pub fn package(&self) -> Option<(&str, &str)> {
        self.package
            .as_ref()
            .map(|(name, version)| (name.as_str(), version.as_str()))
    }

    /// Runs its init hook, if it has one, with the user configuration. A library whose init
    /// failed must not serve.
    pub fn init(&self, config: &[(String, String)]) -> Result<(), FunctionError> {
        self.inner.init(config)
    }

    /// Runs its shutdown hook, if it has one, at most once however often this is called.
    pub fn shutdown(&self) {
        self.inner.shutdown()
    }

    /// The names of the functions it exports.
    pub fn handlers(&self) -> Vec<&str> {
        self.functions
            .iter()
            .map(|(f, _)| f.name.as_str())
            .collect()
    }

    /// Chooses a function: by name, or the only one when `handler` is `None`. A name with `-`
    /// that no function has finds the function spelled with `_` instead (riff's default
    /// handler is the function's name, `hello-fn`, which cannot name a Rust function).
    pub fn function(&self, handler: Option<&str>) -> Result<Function, LoadError> {
        let path = self.inner.path().display().to_string();
        let handlers = || self.handlers().join(", ");
        let named = |name: &str| self.functions.iter().find(|(f, _)| f.name == name);
        let found = match handler {
            Some(name) => named(name)
                .or_else(|| name.contains('-').then(|| named(&name.replace('-', "_")))?)
                .ok_or_else(|| LoadError::UnknownHandler {
                    path: path.clone(),
                    handler: name.to_owned(),
                    handlers: handlers(),
                })?,
            None => match self.functions.as_slice() {
                [] => return Err(LoadError::NoFunctions { path }),
                [only] => only,
                _ => {
                    return Err(LoadError::HandlerNeeded {
                        path,
                        handlers: handlers(),
                    });
                }
            },
        };
        Ok(Function {
            info: found.0.clone(),
            backend: Backend::Local {
                library: self.inner.clone(),
                entry: found.1,
            },
        })
    }
}

impl From<ffi::Loaded> for Library {
    fn from(loaded: ffi::Loaded) -> Library {
        Library {
            inner: loaded.library,
            sdk_version: loaded.sdk_version,
            package: loaded.package,
            functions: loaded
                .functions
                .into_iter()
                .map(|(info, entry)| (Arc::new(info), entry))
                .collect(),
        }
    }
}

/// Opens the file at `path` for reading, refusing anything but a regular file.
fn open_regular(path: &Path) -> Result<File, String> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| e.to_string())?;
    let metadata = file.metadata().map_err(|e| e.to_string())?;
    if !metadata.is_file() {
        return Err("it is not a regular file".to_owned());
    }
    Ok(file)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || "function.so".into(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Copies `source` (a file, or bytes) into a new anonymous memory file.
fn memory_copy(source: &mut dyn std::io::Read, path: &Path) -> Result<File, String> {
    // The kernel takes names of up to 249 bytes; the name only shows in /proc/PID/maps.
    let mut name = file_name(path);
    while name.len() > 200 {
        name.pop();
    }
    let flags = rustix::fs::MemfdFlags::CLOEXEC;
    // Where the kernel makes memory files non-executable by default (vm.memfd_noexec),
    // MFD_EXEC asks for an executable one; kernels before 6.3 do not know the flag.
    let memfd = rustix::fs::memfd_create(&*name, flags | rustix::fs::MemfdFlags::EXEC)
        .or_else(|_| rustix::fs::memfd_create(&*name, flags))
        .map_err(|e| format!("cannot create a memory file to load it from: {e}"))?;
    let mut image = File::from(memfd);
    std::io::copy(source, &mut image).map_err(|e| format!("cannot copy it to memory: {e}"))?;
    Ok(image)
}

/// A copy of a library in a fresh directory of `$TMPDIR` made by this process with mode 0700
/// (so no other user can create, replace or link anything in it), under a random name; the
/// file is created with `O_EXCL | O_NOFOLLOW`. Both are removed when this is dropped (the
/// mapping of a loaded library outlives them).
struct PrivateCopy {
    dir: PathBuf,
    file: PathBuf,
}

impl PrivateCopy {
    fn new(source: &mut dyn std::io::Read, path: &Path) -> Result<PrivateCopy, String> {
        use std::hash::{BuildHasher, Hasher};
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let base = crate::env::temp_dir();
        let mut attempt = 0;
        let dir = loop {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.write_u32(attempt);
            let dir = base.join(format!("invoker-{:016x}", hasher.finish()));
            // mkdir fails on anything already there, a symlink included.
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot create a private directory in {}: {e}",
                        base.display()
                    ));
                }
            }
        };
        let copy = PrivateCopy {
            file: dir.join(file_name(path)),
            dir,
        };
        let made = std::fs::symlink_metadata(&copy.dir).map_err(|e| e.to_string())?;
        if !made.is_dir()
            || made.uid() != rustix::process::geteuid().as_raw()
            || made.mode() & 0o077 != 0
        {
            return Err(format!(
                "{} is not the private directory this process made",
                copy.dir.display()
            ));
        }
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&copy.file)
            .map_err(|e| format!("cannot create {}: {e}", copy.file.display()))?;
        std::io::copy(source, &mut out)
            .map_err(|e| format!("cannot copy it to {}: {e}", copy.file.display()))?;
        Ok(copy)
    }
}

impl Drop for PrivateCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A function, ready to be called. Cheap to clone; keeps its library loaded (or, in process
/// isolation, its worker processes running).
#[derive(Clone)]
pub struct Function {
    info: Arc<FunctionInfo>,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    /// Loaded in this process.
    Local {
        library: Arc<LoadedLibrary>,
        entry: Entry,
    },
    /// Loaded in worker processes (`--isolation process`).
    Workers(Workers),
}

impl fmt::Debug for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Function")
            .field("info", &self.info)
            .finish()
    }
}

impl Function {
    /// The function the worker processes of `workers` serve.
    pub fn in_workers(workers: Workers) -> Function {
        Function {
            info: Arc::new(workers.hello().info.clone()),
            backend: Backend::Workers(workers),
        }
    }

    /// What the library says about the function.
    pub fn info(&self) -> &FunctionInfo {
        &self.info
    }

    /// The worker processes it runs in, in process isolation; `None` in this process.
    pub fn workers(&self) -> Option<&Workers> {
        match &self.backend {
            Backend::Workers(workers) => Some(workers),
            Backend::Local { .. } => None,
        }
    }

    /// Calls a request/reply function with at most one input; `media_type` indexes the output
    /// port's media types (ignored when there is no output). In this process only: a function
    /// in worker processes is called with [`Workers::invoke`] (see [`Function::workers`]).
    pub fn invoke(
        &self,
        ctx: &CallContext,
        input: Option<&InputMessage>,
        media_type: usize,
    ) -> Result<Option<OutputMessage>, FunctionError> {
        self.check_invoke(input)?;
        match &self.backend {
            Backend::Local {
                entry: Entry::Invoke(entry),
                ..
            } => ffi::invoke(*entry, ctx, input, media_type),
            Backend::Local { .. } => Err(self.not_request_reply()),
            Backend::Workers(_) => Err(FunctionError::Abi(format!(
                "'{}' runs in worker processes; call it through them",
                self.info.name
            ))),
        }
    }

    /// Checks a request/reply call's input against the function.
    pub fn check_invoke(&self, input: Option<&InputMessage>) -> Result<(), FunctionError> {
        if self.info.shape != Shape::RequestReply {
            return Err(self.not_request_reply());
        }
        if self.info.inputs.is_empty() != input.is_none() {
            return Err(FunctionError::BadInput(format!(
                "Invoker: Bad Input Signal: '{}' takes {} input",
                self.info.name,
                self.info.inputs.len()
            )));
        }
        Ok(())
    }

    fn not_request_reply(&self) -> FunctionError {
        FunctionError::Abi(format!(
            "'{}' is a streaming function; open it instead",
            self.info.name
        ))
    }

    /// Opens a streaming function over one stream per input; returns one stream per output.
    pub fn open(
        &self,
        ctx: &CallContext,
        inputs: Vec<BoxInput>,
    ) -> Result<Vec<OutputStream>, FunctionError> {
        if self.info.shape != Shape::Streaming {
            return Err(FunctionError::Abi(format!(
                "'{}' is a request/reply function; invoke it instead",
                self.info.name
            )));
        }
        if inputs.len() != self.info.inputs.len() {
            return Err(FunctionError::Abi(format!(
                "'{}' takes {} input streams, not {}",
                self.info.name,
                self.info.inputs.len(),
                inputs.len()
            )));
        }
        match &self.backend {
            Backend::Local {
                library,
                entry: Entry::Open(entry),
            } => Ok(
                ffi::open(library, *entry, ctx, inputs, self.info.outputs.len())?
                    .into_iter()
                    .map(OutputStream::local)
                    .collect(),
            ),
            Backend::Local { .. } => Err(FunctionError::Abi(format!(
                "'{}' has no open entry point",
                self.info.name
            ))),
            Backend::Workers(workers) => workers.open(ctx, inputs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_too_new_glibc_is_named_and_explained() {
        let e = LoadError::LoadFailed {
            path: "/f/libx.so".into(),
            reason: "/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.39' not found (required by /f/libx.so)".into(),
        };
        let message = e.to_string();
        assert!(
            message.starts_with("cannot load function library /f/libx.so: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.39' not found"),
            "{message}"
        );
        assert!(message.contains("newer glibc"), "{message}");
        assert!(!message.contains("cdylib"), "{message}");
    }
}
