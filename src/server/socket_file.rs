//! Binding a Unix socket file safely, for the admin socket and the gRPC socket: the socket
//! never exists with another mode than its own, start-up never removes anything at its path
//! but a stale socket, and the file is removed at the end only if it is still this process's.

use std::os::unix::fs::{
    DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Which socket, for messages, and its modes.
#[derive(Debug, Clone, Copy)]
pub struct SocketKind {
    /// What it is called in messages: `admin socket`.
    pub what: &'static str,
    /// The flag that chooses its path: `--admin-socket`.
    pub flag: &'static str,
    /// The socket file's mode.
    pub mode: u32,
    /// The mode of its directory, when created.
    pub dir_mode: u32,
}

/// The socket file this process bound; removed when dropped, if it is still that file.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the socket, so that whatever replaced it is left alone.
    id: (u64, u64),
}

impl SocketFile {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The directory `path` is in (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Binds `kind`'s socket at `path`, with `kind.mode` whatever the process's umask. Its
/// directory must exist ([`prepare_dir`] makes it).
///
/// - **What is there already.** A socket nobody answers on (left by a process that died) is
///   replaced. A socket someone answers on (another invoker) is refused, and so is anything
///   that is not a socket (a regular file, a symbolic link, a FIFO, a directory): left as it
///   is, with an error naming the path.
/// - **The mode.** `bind` creates the file with 0777 minus the umask. Setting the umask around
///   `bind` would change it for the whole process, racing with every other thread that
///   creates files; `chmod` after `bind` leaves a window in which another local user could
///   connect through the wider mode and keep that connection after the `chmod` (permission is
///   checked at connect only). So the socket is bound inside a fresh private directory (0700,
///   so nobody else can reach the socket there; made in the socket's own directory, because a
///   hard link cannot cross file systems), given its mode, and then hard-linked to `path`: the
///   link appears with its final mode, atomically, and fails if anything appeared at `path`
///   meanwhile (unlike `rename`, which would replace it). The private directory is then
///   removed.
pub fn bind(
    path: &Path,
    kind: &SocketKind,
) -> anyhow::Result<(std::os::unix::net::UnixListener, SocketFile)> {
    let shown = path.display();
    let what = kind.what;
    anyhow::ensure!(
        path.file_name().is_some(),
        "the {what} {shown} does not name a file"
    );
    clear_socket_path(path, kind)?;
    let private = PrivateDir::create(parent(path))
        .with_context(|| format!("cannot create the {what} {shown}"))?;
    let bound = private.path.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&bound)
        .with_context(|| format!("cannot listen on the {what} {shown}"))?;
    std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(kind.mode))
        .with_context(|| format!("cannot set the mode of the {what} {shown}"))?;
    let meta = std::fs::symlink_metadata(&bound)
        .with_context(|| format!("cannot create the {what} {shown}"))?;
    std::fs::hard_link(&bound, path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "something appeared at the {what} path {shown} while the socket was being created; not replacing it"
            )
        } else {
            anyhow::anyhow!("cannot create the {what} {shown}: {e}")
        }
    })?;
    let file = SocketFile {
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
    };
    drop(private);
    listener.set_nonblocking(true)?;
    Ok((listener, file))
}

/// Creates the socket's directory (`kind.dir_mode`) if it is missing (only the last
/// component: a missing parent of it is an error); warns if others can replace files in an
/// existing one (anyone who may write there can replace the socket with one of their own).
pub fn prepare_dir(path: &Path, kind: &SocketKind) -> anyhow::Result<()> {
    let dir = parent(path);
    let shown = dir.display();
    let what = kind.what;
    match std::fs::DirBuilder::new().mode(kind.dir_mode).create(dir) {
        Ok(()) => {
            // The umask may have taken bits from the mode; it cannot have added any.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(kind.dir_mode))
                .with_context(|| {
                    format!("cannot set the mode of the {what}'s directory {shown}")
                })?;
            tracing::info!(
                directory = %shown,
                "created the {what}'s directory (mode {:04o})",
                kind.dir_mode
            );
            return Ok(());
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            anyhow::bail!("cannot create the {what}'s directory {shown}: {e}")
        }
    }
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot use the {what}'s directory {shown}"))?;
    anyhow::ensure!(
        meta.is_dir(),
        "the {what}'s directory {shown} is not a directory"
    );
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        tracing::warn!(
            directory = %shown,
            mode = format!("{:o}", mode & 0o7777),
            "the {what}'s directory is writable by others and has no sticky bit: they can replace the socket with their own; use a directory only this user can write to"
        );
    }
    Ok(())
}

/// What answers at a socket path.
#[derive(Debug)]
pub enum Probe {
    /// Nothing is there.
    Missing,
    /// A socket someone listens on.
    Live,
    /// A socket nobody listens on: left by a process that ended without removing it.
    Stale,
    /// Something that is not a socket (named).
    NotASocket(&'static str),
    /// It could not be told (the error).
    Unknown(std::io::Error),
}

/// Looks at `path` without following a symbolic link, and connects if it is a socket.
pub fn probe(path: &Path) -> Probe {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Probe::Missing,
        Err(e) => return Probe::Unknown(e),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        return Probe::NotASocket(if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_file() {
            "a regular file"
        } else {
            "a device"
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Probe::Live,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Stale,
        Err(e) => Probe::Unknown(e),
    }
}

/// Makes way for the socket at `path`: nothing there, or a stale socket (removed). Refuses a
/// live socket and anything that is not a socket, leaving it as it is.
fn clear_socket_path(path: &Path, kind: &SocketKind) -> anyhow::Result<()> {
    let shown = path.display();
    let (what, flag) = (kind.what, kind.flag);
    match probe(path) {
        Probe::Missing => Ok(()),
        Probe::NotASocket(is) => anyhow::bail!(
            "the {what} path {shown} is {is}, not a socket; not replacing it (remove it, or choose another {flag})"
        ),
        Probe::Live => anyhow::bail!(
            "another process is listening on the {what} {shown} (another invoker?); not replacing it"
        ),
        Probe::Stale => {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot replace the stale {what} {shown}"))?;
            tracing::info!(socket = %shown, "replaced a stale {what}");
            Ok(())
        }
        Probe::Unknown(e) => anyhow::bail!(
            "cannot tell whether the {what} {shown} is in use ({e}); not replacing it"
        ),
    }
}

/// A fresh directory, mode 0700, that only this process uses; removed (with the socket bound
/// in it) when dropped.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// A short name, so that the socket's temporary path fits the 107 bytes a Unix socket's
    /// path may have whenever its final one does (or nearly: `.inv-XXXXXXXX/s`).
    fn create(dir: &Path) -> std::io::Result<PrivateDir> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
            ^ std::process::id().rotate_left(16);
        let mut attempt = 0u32;
        loop {
            let tag = seed.wrapping_add(attempt.wrapping_mul(0x9e37_79b9));
            let path = dir.join(format!(".inv-{tag:08x}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let private = PrivateDir { path };
                    std::fs::set_permissions(
                        &private.path,
                        std::fs::Permissions::from_mode(0o700),
                    )?;
                    return Ok(private);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path.join("s"));
        let _ = std::fs::remove_dir(&self.path);
    }
}
