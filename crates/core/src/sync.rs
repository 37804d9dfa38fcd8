//! Locks that go on after a panic elsewhere: the one place the workspace decides what a
//! poisoned lock means.
//!
//! Every critical section in the workspace leaves its data consistent after each statement
//! (a counter, a map entry, a window of samples), so a panic in another thread while it held
//! the lock does not make the data wrong, only possibly one sample short. A gateway that
//! stopped serving every request because one request panicked would be worse: the guard is
//! taken back from the poison. `std::sync::Mutex::lock` and `RwLock::{read, write}` are
//! disallowed elsewhere (`.clippy.toml`) so that no crate decides it differently by hand.
//!
//! The guards are never held across an `.await` (clippy's `await_holding_lock` is denied).

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, taking the guard back if a panic elsewhere poisoned it.
///
/// ```
/// use std::sync::Mutex;
/// use llm_layers_core::sync::lock;
/// let m = Mutex::new(1);
/// *lock(&m) += 1;
/// assert_eq!(*lock(&m), 2);
/// ```
#[allow(clippy::disallowed_methods)]
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads `l`, taking the guard back if a panic elsewhere poisoned it.
#[allow(clippy::disallowed_methods)]
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `l`, taking the guard back if a panic elsewhere poisoned it.
#[allow(clippy::disallowed_methods)]
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
