//! Freed memory given back to the system while a run works.
//!
//! A run's allocations churn: sled deserializes a node for each page it reads and drops
//! it when its cache evicts it, the executor's windows come and go, the planner's batches
//! too. glibc's malloc keeps the pages of the small blocks freed in the middle of its
//! heap, and the process's resident memory climbs to the sum of what each phase left
//! behind: 1M removals peaked at 174 MB RSS with about 105 MB of live heap (heaptrack).
//! `malloc_trim(0)` hands those pages back (`MADV_DONTNEED` on each free page). One
//! thread does it every quarter of a second while any run is under way, and sleeps
//! without a timer when none is: an idle daemon wakes for nothing.
//!
//! Measured (1M contacts, `[state] cache_mb = 2`, the same state restored for each):
//! removals 164 -> 126 MB, updates 125 -> 113 MB (with the old 8 MB cache, removals
//! 174 -> 156 MB), with no change in wall time (see BENCHMARKS.md).
//!
//! Other allocators and platforms: nothing is done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

/// How often the heap is trimmed while a run is under way.
const EVERY: Duration = Duration::from_millis(250);

/// Runs under way (guards alive).
static RUNS: AtomicUsize = AtomicUsize::new(0);
/// The trimming thread, started by the first guard.
static TRIMMER: OnceLock<Option<Thread>> = OnceLock::new();

/// While this lives, the heap is trimmed every [`EVERY`]. Guards nest and overlap (a
/// daemon's jobs run at once): the thread works while any is alive.
pub(crate) struct Trimming(());

/// Starts trimming until the guard is dropped.
pub(crate) fn while_running() -> Trimming {
    RUNS.fetch_add(1, Ordering::SeqCst);
    if let Some(thread) = TRIMMER.get_or_init(start) {
        thread.unpark();
    }
    Trimming(())
}

impl Drop for Trimming {
    fn drop(&mut self) {
        RUNS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The thread, where trimming does something; `None` if it could not start (the run
/// goes on without).
fn start() -> Option<Thread> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return None;
    }
    let spawned = std::thread::Builder::new()
        .name("dialsync-trim".into())
        .stack_size(64 * 1024)
        .spawn(|| loop {
            if RUNS.load(Ordering::SeqCst) == 0 {
                // Woken by the next guard (or spuriously: the loop checks again).
                std::thread::park();
                continue;
            }
            std::thread::sleep(EVERY);
            if RUNS.load(Ordering::SeqCst) > 0 {
                release_free_memory();
            }
        });
    match spawned {
        Ok(handle) => Some(handle.thread().clone()),
        Err(e) => {
            tracing::debug!(error = %e, "no thread to give freed memory back while runs work");
            None
        }
    }
}

/// Gives the memory freed so far back to the system (`malloc_trim(0)`): what the
/// trimming thread does while runs work, and the daemon after each run. glibc keeps
/// what its threads free in their arenas, and a daemon between runs has no use for it:
/// 20 jobs of 100 rows each left 45 MB resident, 38 MB with this after each run
/// (measured with `dialsync run` against `dialsync emulator`, the jobs on `* * * * *`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn release_free_memory() {
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the
    // system; it takes the arenas' locks itself and has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_serves_every_run() {
        drop(while_running());
        let first = TRIMMER.get().cloned().flatten().map(|t| t.id());
        assert_eq!(
            first.is_some(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
        // A later run wakes the parked thread rather than starting another.
        let _again = while_running();
        assert_eq!(TRIMMER.get().cloned().flatten().map(|t| t.id()), first);
    }
}
