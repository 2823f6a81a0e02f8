//! Fatal signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT): a crash in the function — an
//! `abort()`, a stack overflow, a bad pointer — ends the process, and every call with it; this
//! leaves one line in the log saying which signal, and what the crashing thread was running
//! (the function and the call id, or loading a library, or its init or shutdown hook), then
//! exits with `128 + the signal number` (134 for SIGABRT, 139 for SIGSEGV: what a shell or
//! Kubernetes shows for a process the signal killed, so the code means the same either way).
//!
//! The host marks what a thread runs with a [`Running`] guard around every call into a library
//! (`ffi`): it sets a const-initialised thread-local (no lazy registration, so the handler can
//! read it) and restores the previous value when dropped. The handler runs on an alternate
//! signal stack (a stack overflow leaves no room on the thread's own), formats the line into a
//! buffer on that stack, and calls only `write(2)` and `_exit(2)`, which are
//! async-signal-safe. It replaces Rust's own SIGSEGV/SIGBUS handler (which reports a stack
//! overflow and aborts): the line names the signal instead. The alternate stacks are Rust's
//! (std gives one to the main thread and to every thread it starts); a thread that has none
//! when it first calls into a library gets one here.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::libc;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// The signals that end the process with a line in the log.
const FATAL: [Signal; 5] = [
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGILL,
    Signal::SIGFPE,
    Signal::SIGABRT,
];

/// Whether the line is JSON (`LOG_FORMAT=json`), decided at install time.
static JSON: AtomicBool = AtomicBool::new(false);

/// Whether the handler is installed (so threads calling into a library need an alternate
/// stack).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The size of an alternate signal stack made here: the kernel's signal frame (a few KiB with
/// AVX-512 state) and the handler's buffer fit with room to spare.
const ALT_STACK_SIZE: usize = 64 * 1024;

/// What a thread is running.
#[derive(Clone, Copy)]
enum Doing {
    Nothing,
    Loading,
    Init,
    Shutdown,
    Call,
}

/// What a thread is running, as the handler reads it: `name` (the function's, or the
/// library's path) is borrowed from the [`Running`] guard that set the slot, and is valid as
/// long as the slot holds it.
#[derive(Clone, Copy)]
struct Slot {
    doing: Doing,
    name: *const u8,
    len: usize,
    call: u64,
}

impl Slot {
    const NOTHING: Slot = Slot {
        doing: Doing::Nothing,
        name: std::ptr::null(),
        len: 0,
        call: 0,
    };
}

thread_local! {
    /// What this thread is running. Const-initialised and without a destructor: reading it
    /// is a plain memory access, safe in a signal handler.
    static CURRENT: Cell<Slot> = const { Cell::new(Slot::NOTHING) };
    /// Whether this thread's alternate signal stack has been checked.
    static ALT_STACK_CHECKED: Cell<bool> = const { Cell::new(false) };
    /// The alternate signal stack made for this thread, if it had none.
    static OWN_ALT_STACK: RefCell<Option<AltStack>> = const { RefCell::new(None) };
}

/// Installs the handler for the fatal signals, and an alternate signal stack for this thread
/// if it has none. `json`: write the line as a JSON log event.
pub fn install(json: bool) -> nix::Result<()> {
    JSON.store(json, Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(on_fatal_signal),
        // On the alternate stack; back to the default action on entry, so that a fault in
        // the handler itself ends the process instead of looping.
        SaFlags::SA_ONSTACK | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in FATAL {
        // SAFETY: the handler calls only async-signal-safe functions (`write`, `_exit`,
        // `clock_gettime`) and reads a const-initialised thread-local; it never returns.
        unsafe { sigaction(signal, &action) }?;
    }
    INSTALLED.store(true, Ordering::Release);
    ensure_alt_stack();
    Ok(())
}

/// Marks what this thread runs until dropped (then it is what it was before): the function
/// and call a crash line names. Not `Send`: it must be dropped on the thread that made it.
pub(crate) struct Running<'a> {
    previous: Slot,
    _name: PhantomData<&'a str>,
}

impl<'a> Running<'a> {
    /// A call of `function` (`call` is the call id; 0 when there is none).
    pub(crate) fn call(function: &'a str, call: u64) -> Running<'a> {
        Self::enter(Doing::Call, function, call)
    }

    /// Loading the library at `path`.
    pub(crate) fn loading(path: &'a str) -> Running<'a> {
        Self::enter(Doing::Loading, path, 0)
    }

    /// The init hook of the library at `path`.
    pub(crate) fn init(path: &'a str) -> Running<'a> {
        Self::enter(Doing::Init, path, 0)
    }

    /// The shutdown hook of the library at `path`.
    pub(crate) fn shutdown(path: &'a str) -> Running<'a> {
        Self::enter(Doing::Shutdown, path, 0)
    }

    fn enter(doing: Doing, name: &'a str, call: u64) -> Running<'a> {
        ensure_alt_stack();
        let slot = Slot {
            doing,
            name: name.as_ptr(),
            len: name.len(),
            call,
        };
        Running {
            previous: CURRENT.replace(slot),
            _name: PhantomData,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        CURRENT.set(self.previous);
    }
}

/// Gives this thread an alternate signal stack if the handler is installed and the thread has
/// none (checked once per thread).
fn ensure_alt_stack() {
    if !INSTALLED.load(Ordering::Acquire) || ALT_STACK_CHECKED.replace(true) {
        return;
    }
    // SAFETY: `stack_t` is plain data, for which all zeroes is a valid value.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a query only (no new stack); `current` is writable.
    let queried = unsafe { libc::sigaltstack(std::ptr::null(), &mut current) };
    if queried != 0 || current.ss_flags & libc::SS_DISABLE == 0 {
        // Rust's std gave this thread one (or the query failed: nothing better to do).
        return;
    }
    let mut memory = vec![0u8; ALT_STACK_SIZE].into_boxed_slice();
    let stack = libc::stack_t {
        ss_sp: memory.as_mut_ptr().cast(),
        ss_flags: 0,
        ss_size: memory.len(),
    };
    // SAFETY: the memory outlives its use as this thread's signal stack: `AltStack` below
    // keeps it and disables the stack before freeing it, when the thread ends.
    if unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) } == 0 {
        OWN_ALT_STACK.set(Some(AltStack(memory)));
    }
}

/// An alternate signal stack made by [`ensure_alt_stack`]; disabled, then freed, when its
/// thread ends.
struct AltStack(#[allow(dead_code)] Box<[u8]>);

impl Drop for AltStack {
    fn drop(&mut self) {
        let disable = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disabling this thread's alternate stack (not running on it: this is a
        // thread-local destructor) before its memory is freed.
        unsafe { libc::sigaltstack(&disable, std::ptr::null_mut()) };
    }
}

/// The signal handler: one line to stderr, then `_exit(128 + signal)`.
extern "C" fn on_fatal_signal(signal: libc::c_int) {
    let slot = CURRENT.try_with(Cell::get).unwrap_or(Slot::NOTHING);
    let name = if slot.name.is_null() {
        &[][..]
    } else {
        // SAFETY: the `Running` guard that set the slot borrows the string for as long as the
        // slot holds it (the guard restores the previous slot when dropped).
        unsafe { std::slice::from_raw_parts(slot.name, slot.len) }
    };
    let name = utf8_prefix(name, MAX_NAME);
    let code = 128 + signal;
    let mut line = Line::new();
    if JSON.load(Ordering::Relaxed) {
        json_line(&mut line, signal, slot, name, code);
    } else {
        line.push(b"invoker: ");
        message(&mut line, signal, slot, name, code, false);
    }
    line.push_newline();
    let bytes = line.bytes();
    // SAFETY: `write(2)` is async-signal-safe; the buffer is valid for `bytes.len()` bytes.
    // One call: a line of this size reaches a pipe or file whole.
    unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
    // SAFETY: `_exit(2)` is async-signal-safe and ends the process at once, running nothing
    // of it (no atexit handlers, no destructors, no buffered I/O).
    unsafe { libc::_exit(code) }
}

/// Names are cut to this many bytes, so the line fits its buffer.
const MAX_NAME: usize = 256;

/// The longest prefix of `bytes` of at most `max` bytes that ends on a UTF-8 character
/// boundary (the names are UTF-8).
fn utf8_prefix(bytes: &[u8], max: usize) -> &[u8] {
    if bytes.len() <= max {
        return bytes;
    }
    let mut end = max;
    while end > 0 && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    &bytes[..end]
}

/// The message: `fatal signal SIGABRT in function 'NAME' (call 42): the process exits with
/// code 134`; names are JSON-escaped when `json`.
fn message(line: &mut Line, signal: libc::c_int, slot: Slot, name: &[u8], code: i32, json: bool) {
    line.push(b"fatal signal ");
    push_signal(line, signal);
    let quoted = |line: &mut Line| {
        line.push(b"'");
        if json {
            line.push_json_escaped(name);
        } else {
            line.push(name);
        }
        line.push(b"'");
    };
    match slot.doing {
        Doing::Nothing => line.push(b" outside any call into the function"),
        Doing::Call => {
            line.push(b" in function ");
            quoted(line);
            if slot.call != 0 {
                line.push(b" (call ");
                line.push_u64(slot.call);
                line.push(b")");
            }
        }
        Doing::Loading => {
            line.push(b" while loading the library ");
            quoted(line);
        }
        Doing::Init => {
            line.push(b" in the init hook of the library ");
            quoted(line);
        }
        Doing::Shutdown => {
            line.push(b" in the shutdown hook of the library ");
            quoted(line);
        }
    }
    line.push(b": the process exits with code ");
    line.push_u64(code as u64);
}

/// The line as the JSON log's events are (`tracing-subscriber`'s JSON format): timestamp,
/// level, fields (message, signal, function or library, call, exit code), target.
fn json_line(line: &mut Line, signal: libc::c_int, slot: Slot, name: &[u8], code: i32) {
    line.push(b"{\"timestamp\":\"");
    push_timestamp(line);
    line.push(b"\",\"level\":\"ERROR\",\"fields\":{\"message\":\"");
    message(line, signal, slot, name, code, true);
    line.push(b"\",\"signal\":\"");
    push_signal(line, signal);
    line.push(b"\"");
    match slot.doing {
        Doing::Nothing => {}
        Doing::Call => {
            line.push(b",\"function\":\"");
            line.push_json_escaped(name);
            line.push(b"\"");
            if slot.call != 0 {
                line.push(b",\"call\":");
                line.push_u64(slot.call);
            }
        }
        Doing::Loading | Doing::Init | Doing::Shutdown => {
            line.push(b",\"library\":\"");
            line.push_json_escaped(name);
            line.push(b"\"");
        }
    }
    line.push(b",\"exit_code\":");
    line.push_u64(code as u64);
    line.push(b"},\"target\":\"");
    line.push(module_path!().as_bytes());
    line.push(b"\"}");
}

fn push_signal(line: &mut Line, signal: libc::c_int) {
    match Signal::try_from(signal) {
        Ok(signal) => line.push(signal.as_str().as_bytes()),
        Err(_) => {
            line.push(b"signal ");
            line.push_u64(signal as u64);
        }
    }
}

/// The time as `2025-01-31T12:34:56.123456Z` (UTC, microseconds), as the JSON log writes it.
fn push_timestamp(line: &mut Line) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    line.push_padded(year, 4);
    line.push(b"-");
    line.push_padded(month, 2);
    line.push(b"-");
    line.push_padded(day, 2);
    line.push(b"T");
    line.push_padded(of_day / 3600, 2);
    line.push(b":");
    line.push_padded(of_day / 60 % 60, 2);
    line.push(b":");
    line.push_padded(of_day % 60, 2);
    line.push(b".");
    line.push_padded(u64::from(since.subsec_micros()), 6);
    line.push(b"Z");
}

/// The date (year, month, day) `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A line built in a fixed buffer on the (signal) stack: no allocation. What does not fit is
/// cut, keeping room for the newline.
struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 1024],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push_byte(b);
        }
    }

    fn push_byte(&mut self, b: u8) {
        // The last byte is kept for the newline.
        if self.len < self.buf.len() - 1 {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn push_newline(&mut self) {
        self.buf[self.len] = b'\n';
        self.len += 1;
    }

    fn push_u64(&mut self, n: u64) {
        self.push_padded(n, 1);
    }

    /// `n` in decimal, with leading zeros to at least `width` digits.
    fn push_padded(&mut self, mut n: u64, width: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        while n > 0 || digits.len() - i < width {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.push(&digits[i..]);
    }

    /// UTF-8 text inside a JSON string: `"`, `\` and control characters escaped.
    fn push_json_escaped(&mut self, text: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in text {
            match b {
                b'"' => self.push(b"\\\""),
                b'\\' => self.push(b"\\\\"),
                0..0x20 => {
                    self.push(b"\\u00");
                    self.push_byte(HEX[usize::from(b >> 4)]);
                    self.push_byte(HEX[usize::from(b & 0xF)]);
                }
                _ => self.push_byte(b),
            }
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Line)) -> String {
        let mut line = Line::new();
        f(&mut line);
        String::from_utf8(line.bytes().to_vec()).unwrap()
    }

    #[test]
    fn days_since_the_epoch_are_calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
    }

    #[test]
    fn the_json_line_parses_and_names_the_call() {
        let name = "we\"ird\\\n";
        let slot = Slot {
            doing: Doing::Call,
            name: name.as_ptr(),
            len: name.len(),
            call: 42,
        };
        let line = text(|l| json_line(l, libc::SIGABRT, slot, name.as_bytes(), 134));
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["level"], "ERROR");
        assert_eq!(event["fields"]["signal"], "SIGABRT");
        assert_eq!(event["fields"]["function"], name);
        assert_eq!(event["fields"]["call"], 42);
        assert_eq!(event["fields"]["exit_code"], 134);
        assert_eq!(
            event["fields"]["message"],
            format!(
                "fatal signal SIGABRT in function '{name}' (call 42): the process exits with code 134"
            )
        );
        let timestamp = event["timestamp"].as_str().unwrap();
        assert_eq!(
            timestamp.len(),
            "2025-01-31T12:34:56.123456Z".len(),
            "{timestamp}"
        );
    }

    #[test]
    fn a_long_name_is_cut_on_a_character_boundary() {
        let name = "é".repeat(200);
        let cut = utf8_prefix(name.as_bytes(), MAX_NAME);
        assert!(std::str::from_utf8(cut).is_ok());
        assert_eq!(cut.len(), MAX_NAME);
        let cut = utf8_prefix(&name.as_bytes()[1..], MAX_NAME);
        assert_eq!(cut.len(), MAX_NAME - 1);
        // The line is cut to its buffer, and still ends with its newline.
        let long = "x".repeat(5000);
        let line = text(|l| {
            l.push(long.as_bytes());
            l.push_newline();
        });
        assert_eq!(line.len(), 1024);
        assert!(line.ends_with("x\n"));
    }
}
