//! The one policy for poisoned locks: carry on. Every critical section here is a single
//! assignment, push or swap, so a panic elsewhere while a lock was held leaves data that
//! is still well-formed; refusing it would turn one panic into a panic at every later
//! use (the daemon's status, the emulator's next request).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking it over if a panicking thread left it poisoned.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_over() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let m2 = std::sync::Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            g.push(2);
            panic!("while holding the lock");
        })
        .join();
        assert!(m.is_poisoned());
        lock(&m).push(3);
        assert_eq!(*lock(&m), vec![1, 2, 3]);
    }
}
