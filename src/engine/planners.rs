//! The threads that read and plan: the same few for the whole life of the process.
//!
//! Planning is CPU work on two threads (the planner here and a reader beside it, see
//! [`crate::engine::pipeline`]). A thread that maps phone numbers gets its own caches of
//! the number patterns from the `regex` crate, kept by the pattern after the thread ends
//! (one for the first thread to use it, then up to eight more, one per slot the threads'
//! IDs fall in). A daemon that planned each run on a new thread grew them to nine: 20
//! jobs with phone numbers held 6 MB of such caches where one thread holds 0.7 MB
//! (heaptrack of `dialsync run`, 2026-12-05). So plans run here, one per two cores at a time (more
//! would only share the same cores), in the order they come.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

type Work = Box<dyn FnOnce() + Send>;

/// How many plans run at once: one per two cores, at least one.
fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .div_ceil(2)
}

/// The queue to the planning threads, started at first use; `None` if not even one
/// thread could be started.
fn queue() -> Option<&'static Sender<Work>> {
    static QUEUE: OnceLock<Option<Sender<Work>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Work>();
            let rx = Arc::new(Mutex::new(rx));
            let started = (0..threads())
                .filter(|i| {
                    let rx = Arc::clone(&rx);
                    std::thread::Builder::new()
                        .name(format!("dialsync-plan-{i}"))
                        .spawn(move || serve(&rx))
                        .is_ok()
                })
                .count();
            (started > 0).then_some(tx)
        })
        .as_ref()
}

fn serve(rx: &Mutex<Receiver<Work>>) {
    loop {
        // The queue's lock is let go before the work runs (in a `while let` it would be
        // held through the body, and the other planning threads would wait on it).
        let next = crate::locking::lock(rx).recv();
        match next {
            Ok(work) => work(),
            Err(_) => return,
        }
    }
}

/// Runs `work` on a planning thread, in the caller's tracing span and tokio runtime, and
/// waits for it. A panic comes back as `panicked: ` and its message.
pub(crate) async fn plan_on<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let span = tracing::Span::current();
    let runtime = tokio::runtime::Handle::try_current().ok();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Work = Box::new(move || {
        let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
        let _span = span.enter();
        let done = std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("panicked: {message}")
        });
        // The waiter may be gone (its run cancelled): the result is dropped.
        let _ = tx.send(done);
    });
    let Some(queue) = queue() else {
        return Err("cannot start a thread to plan on".into());
    };
    if queue.send(job).is_err() {
        return Err("the planning threads are gone".into());
    }
    rx.await
        .map_err(|_| "the planning thread dropped the work".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plans_run_on_the_same_threads_and_panics_come_back() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let (id, name) = plan_on(|| {
                let me = std::thread::current();
                (me.id(), me.name().map(str::to_string))
            })
            .await
            .unwrap();
            assert!(
                name.as_deref()
                    .is_some_and(|n| n.starts_with("dialsync-plan-")),
                "planned on {name:?}"
            );
            seen.insert(id);
        }
        assert!(
            seen.len() <= threads(),
            "20 plans ran on {} threads, not on the {} planning threads",
            seen.len(),
            threads()
        );
        let err = plan_on(|| -> u32 { panic!("mapped a row into nothing") })
            .await
            .unwrap_err();
        assert!(err.contains("mapped a row into nothing"), "{err}");
        // The thread that caught the panic still plans.
        assert_eq!(plan_on(|| 7).await, Ok(7));
        // In the caller's runtime: a task can be spawned from the plan.
        let spawned = plan_on(|| tokio::runtime::Handle::current().spawn(async { 5 }))
            .await
            .unwrap();
        assert_eq!(spawned.await.unwrap(), 5);
    }
}
