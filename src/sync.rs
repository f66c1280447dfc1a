//! The one poison-tolerant lock helper every module uses.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex, carrying on if a panicking thread poisoned it: every critical section in
/// chat-engine leaves its data consistent at each step, so the data is still good.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
