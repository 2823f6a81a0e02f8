//! The one lock-poisoning policy: recover. A lock is poisoned only by a panic while it was
//! held; every lock in the daemon guards plain data (slots, queues, counters) that each
//! critical section leaves consistent before anything that can panic, so the value is used as
//! it is, and one panicked call cannot wedge every later one.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering it if a panic poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
