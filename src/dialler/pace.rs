//! `max_requests_per_second`: calls spaced evenly, never more than the limit in any
//! second.
//!
//! Each call reserves the slot one interval after the previous call's slot (or now, if
//! that has passed) *before* it sleeps, then sleeps until its slot. A timer that wakes a
//! call a little late therefore does not push the later slots back, so a busy run keeps
//! the configured rate; and after an idle spell the next call simply goes at once: slots
//! never bank up into a burst. (A token bucket holding one token, checked at wake-up,
//! loses each late wake-up for good: about 10% of the rate at 200 calls a second.)

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Duration,
    /// The earliest slot the next call may take.
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    pub(crate) fn new(per_second: u32) -> Pacer {
        Pacer {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: Mutex::new(None),
        }
    }

    /// Waits for this call's slot.
    pub(crate) async fn wait(&self) {
        let slot = {
            let mut next = crate::locking::lock(&self.next);
            let now = Instant::now();
            let slot = next.filter(|n| *n > now).unwrap_or(now);
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The moments (ms after `start`) at which `n` calls in a row get through.
    async fn moments(pacer: &Pacer, start: Instant, n: usize) -> Vec<u128> {
        let mut out = Vec::new();
        for _ in 0..n {
            pacer.wait().await;
            out.push((Instant::now() - start).as_millis());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn calls_are_spaced_by_the_interval_and_idle_time_is_not_banked() {
        let pacer = Pacer::new(50);
        let start = Instant::now();
        assert_eq!(moments(&pacer, start, 4).await, vec![0, 20, 40, 60]);
        // Idle for a second: the next call goes at once, the one after a full interval
        // later, not in a burst.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(moments(&pacer, start, 3).await, vec![1060, 1080, 1100]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate() {
        let pacer = std::sync::Arc::new(Pacer::new(200));
        let start = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let p = pacer.clone();
                tokio::spawn(async move { moments(&p, start, 50).await })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        // 200 calls at 200 a second: one every 5 ms, exactly, from 0 to 995 ms.
        assert_eq!(all, (0..200).map(|i| i * 5).collect::<Vec<u128>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_after_its_slot_goes_at_once_and_missed_slots_are_not_made_up() {
        let pacer = Pacer::new(100);
        let start = Instant::now();
        pacer.wait().await;
        // Its slot: 10 ms; the next free one: 20 ms.
        pacer.wait().await;
        // Busy until 23 ms before the next call: it goes at once, and the one after it a
        // full interval later (no two calls closer than the interval).
        tokio::time::sleep(Duration::from_millis(13)).await;
        assert_eq!(moments(&pacer, start, 2).await, vec![23, 33]);
    }
}
