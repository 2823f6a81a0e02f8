//! Panics caught in a library, logged: one structured event per panicking call (function, call
//! id, panic message, location), at most [`BURST`] a second; the count of those not logged is
//! logged with the next event after the second is over, or by [`flush`].
//!
//! The library's panic hook prints nothing (the SDK hands the location to the host with the
//! message), so this is the only trace a caught panic leaves in the log.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::CallMeta;
use crate::sync::lock;

/// At most this many panics are logged per [`WINDOW`].
pub const BURST: u32 = 10;

/// The window [`BURST`] counts over.
const WINDOW: Duration = Duration::from_secs(1);

/// The rate limiter's state.
struct Limiter {
    /// When the current window began.
    since: Option<Instant>,
    /// Panics logged in it.
    logged: u32,
    /// Panics not logged since the last report of them.
    suppressed: u64,
}

static LIMITER: Mutex<Limiter> = Mutex::new(Limiter {
    since: None,
    logged: 0,
    suppressed: 0,
});

/// Whether a panic at `now` may be logged, and how many were not logged before it (to log
/// first).
fn admit(now: Instant) -> (bool, u64) {
    let mut limiter = lock(&LIMITER);
    if limiter
        .since
        .is_none_or(|since| now.duration_since(since) >= WINDOW)
    {
        limiter.since = Some(now);
        limiter.logged = 0;
    }
    if limiter.logged < BURST {
        limiter.logged += 1;
        (true, std::mem::take(&mut limiter.suppressed))
    } else {
        limiter.suppressed += 1;
        (false, 0)
    }
}

/// Where a caught panic happened.
pub(crate) enum Source<'a> {
    /// In a call of a function.
    Call {
        /// The function's name.
        function: &'a str,
        /// The call.
        call: &'a CallMeta,
    },
    /// In the init hook of the library at this path.
    Init {
        /// The library's path.
        library: &'a Path,
    },
}

/// Logs a panic caught in a library, with its message and, when the library sent it, its
/// location.
pub(crate) fn report(source: Source<'_>, message: &str, location: Option<&str>) {
    if !tracing::enabled!(tracing::Level::ERROR) {
        return;
    }
    let (log, suppressed) = admit(Instant::now());
    if suppressed > 0 {
        log_suppressed(suppressed);
    }
    if !log {
        return;
    }
    let location = location.unwrap_or("unknown");
    match source {
        Source::Call { function, call } => {
            let _in_call = call.span().enter();
            tracing::error!(
                function,
                call = call.id(),
                panic = message,
                location,
                "the function panicked"
            );
        }
        Source::Init { library } => tracing::error!(
            library = %library.display(),
            panic = message,
            location,
            "the library's init hook panicked"
        ),
    }
}

/// Logs how many panics were not logged since the last time, if any: at shutdown, so that the
/// tail of a storm is counted too.
pub fn flush() {
    let suppressed = std::mem::take(&mut lock(&LIMITER).suppressed);
    if suppressed > 0 {
        log_suppressed(suppressed);
    }
}

fn log_suppressed(suppressed: u64) {
    tracing::error!(
        suppressed,
        "{suppressed} more function panics were not logged (at most {BURST} are, per second)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_logged_a_burst_a_second_with_the_rest_counted() {
        // The limiter is process-wide: this is its only test.
        let start = Instant::now();
        let admitted = (0..100)
            .map(|_| admit(start))
            .filter(|(log, _)| *log)
            .count();
        assert_eq!(admitted, BURST as usize);
        // A second later, the next panic is logged, with the count of those that were not.
        assert_eq!(admit(start + WINDOW), (true, 100 - u64::from(BURST)));
        assert_eq!(admit(start + WINDOW), (true, 0));
    }
}
