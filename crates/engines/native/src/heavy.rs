//! Each worker's lane for heavy work: steps that cost the worker far more than the bytes that
//! asked for them, and that a client can ask for over and over (a TLS handshake the worker
//! computes itself, a body framed in tiny chunks).
//!
//! A step runs only once the lane is free, and the lane then rests [`REST`] times as long as
//! the step took. Such work gets at most a fifth of the worker, and in small pieces: between
//! them the worker serves its other connections and, with nothing else to do, gives the CPU
//! back to the targets and clients that may share it. Without the rests a worker kept busy by
//! four tiny-chunk uploads ran 5 ms at a stretch, and a request on another connection (or its
//! target on the same CPU) waited for the whole stretch, as HAProxy keeps such tasks in a
//! "heavy" class served after the others.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// After a step, the lane stays closed this many times as long as the step took.
const REST: u32 = 4;

thread_local! {
    /// When the worker on this thread may take its next heavy step (a worker is one thread).
    static FREE_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

#[cfg(test)]
thread_local! {
    static WAITS: Cell<u64> = const { Cell::new(0) };
}

/// How often a turn on this thread found the lane closed (each test runs on a thread of its
/// own).
#[cfg(test)]
pub(crate) fn waits() -> u64 {
    WAITS.get()
}

/// A wait for the lane, kept by whoever polls for it.
#[derive(Default)]
pub(crate) struct Turn {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Turn {
    /// Ready when the lane is free: take the step in the same poll, then call [`rest_after`].
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(free_at) = FREE_AT.get().filter(|at| *at > Instant::now()) else {
                self.sleep = None;
                return Poll::Ready(());
            };
            // Another step may have taken the lane meanwhile and moved `free_at` on.
            #[cfg(test)]
            if self.sleep.is_none() {
                WAITS.set(WAITS.get() + 1);
            }
            let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(free_at)));
            if sleep.deadline() != free_at {
                sleep.as_mut().reset(free_at);
            }
            ready!(sleep.as_mut().poll(cx));
        }
    }
}

/// Waits for the lane to be free.
pub(crate) async fn turn() {
    let mut turn = Turn::default();
    poll_fn(|cx| turn.poll(cx)).await;
}

/// Closes the lane after a step that took `took`.
pub(crate) fn rest_after(took: Duration) {
    FREE_AT.set(Some(Instant::now() + took * REST));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_lane_rests_four_times_as_long_as_a_step_took() {
        turn().await;
        rest_after(Duration::from_millis(10));
        let began = Instant::now();
        turn().await;
        assert_eq!(began.elapsed(), Duration::from_millis(40));
        rest_after(Duration::ZERO);
        let began = Instant::now();
        turn().await;
        assert_eq!(began.elapsed(), Duration::ZERO, "a free lane is taken at once");
    }
}
