//! When to renew and when to try again: pure arithmetic on times, no I/O.

use std::time::{Duration, SystemTime};

/// The moment to renew a certificate valid from `not_before` to `not_after`: two thirds
/// into its lifetime (day 60 of 90, day 4 of 6 for short-lived ones).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or(Duration::ZERO);
    not_before + lifetime * 2 / 3
}

/// The renewal time the CA's suggested window (ACME Renewal Information, RFC 9773) asks for:
/// a point chosen uniformly in `[start, end)` (`fraction` in [0, 1)), so that many clients
/// told the same window do not all come at once; kept when our own time is earlier.
pub fn renew_in_window(ours: SystemTime, start: SystemTime, end: SystemTime, fraction: f64) -> SystemTime {
    let width = end.duration_since(start).unwrap_or(Duration::ZERO);
    let chosen = start + width.mul_f64(fraction.clamp(0.0, 1.0));
    chosen.min(ours)
}

/// When to ask for the window again: the CA's Retry-After, within sane bounds.
pub fn next_window_check(retry_after: Duration) -> Duration {
    retry_after.clamp(Duration::from_secs(600), Duration::from_secs(86_400))
}

/// How long to wait after `failures` failed orders in a row. Let's Encrypt allows 5 failed
/// validations per name per hour: the first retries come quickly (a DNS record or a port
/// just opened), then the pace drops below that limit.
pub fn retry_delay(failures: u32) -> Duration {
    const STEPS: [u64; 6] = [5, 30, 120, 600, 1800, 3600];
    let step = STEPS[(failures.saturating_sub(1) as usize).min(STEPS.len() - 1)];
    Duration::from_secs(step)
}

/// How long to wait after `failures` failed orders in a row, and at least until the moment
/// the CA `asked` for (its `Retry-After` on a rate limit).
pub fn retry_wait(failures: u32, asked: Option<SystemTime>, now: SystemTime) -> Duration {
    let asked = asked.and_then(|until| until.duration_since(now).ok()).unwrap_or(Duration::ZERO);
    retry_delay(failures).max(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renewal_at_two_thirds_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        assert_eq!(renew_at(start, start + 90 * DAY), start + 60 * DAY);
        assert_eq!(renew_at(start, start + 6 * DAY), start + 4 * DAY, "short-lived certificates");
        assert_eq!(renew_at(start + DAY, start), start + DAY, "a backwards certificate is due at once");
    }

    #[test]
    fn the_cas_window_moves_renewal_earlier_never_later() {
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let ours = start + 60 * DAY;
        // A revocation event: the CA asks for renewal within the next day.
        let (from, to) = (start + 10 * DAY, start + 11 * DAY);
        assert_eq!(renew_in_window(ours, from, to, 0.0), from);
        assert_eq!(renew_in_window(ours, from, to, 0.5), from + DAY / 2);
        assert_eq!(renew_in_window(ours, from, to, 7.0), to, "fractions are clamped");
        assert_eq!(renew_in_window(ours, start + 70 * DAY, start + 71 * DAY, 0.5), ours, "later: ours stands");
        assert_eq!(next_window_check(Duration::from_secs(6 * 3600)), Duration::from_secs(6 * 3600));
        assert_eq!(next_window_check(Duration::ZERO), Duration::from_secs(600));
        assert_eq!(next_window_check(Duration::from_secs(9_999_999)), Duration::from_secs(86_400));
    }

    #[test]
    fn retries_slow_down_below_the_cas_limits() {
        let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 30, 120, 600, 1800, 3600, 3600, 3600]);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_cas_retry_after_lengthens_the_wait_never_shortens_it() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        assert_eq!(retry_wait(1, None, now), Duration::from_secs(5));
        assert_eq!(retry_wait(1, Some(now + Duration::from_secs(3600)), now), Duration::from_secs(3600));
        assert_eq!(retry_wait(6, Some(now + Duration::from_secs(60)), now), Duration::from_secs(3600));
        assert_eq!(retry_wait(2, Some(now - Duration::from_secs(60)), now), Duration::from_secs(30), "already past");
    }
}
