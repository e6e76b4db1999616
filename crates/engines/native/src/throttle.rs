//! At most one log line per interval for a repeating condition (a target down during an
//! outage would otherwise log once per request). Metrics still count every occurrence.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// Milliseconds since process start of the last line allowed, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    /// `Some(n)` when a line may be logged now, `n` being how many were held back since the
    /// last one; `None` when one was logged less than `every_ms` ago.
    pub fn allow(&self, every_ms: u64) -> Option<u64> {
        self.allow_at(now_ms(), every_ms)
    }

    fn allow_at(&self, now: u64, every_ms: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last - 1) >= every_ms;
        if due && self.last.compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_a_count_of_the_rest() {
        let t = Throttle::default();
        assert_eq!(t.allow_at(0, 1000), Some(0), "the first is always logged");
        assert_eq!(t.allow_at(10, 1000), None);
        assert_eq!(t.allow_at(999, 1000), None);
        assert_eq!(t.allow_at(1000, 1000), Some(2), "two were held back");
        assert_eq!(t.allow_at(1500, 1000), None);
        assert_eq!(t.allow_at(5000, 1000), Some(1));
    }
}
