//! Which of a service's target sets a request goes to: kamal-proxy's rollout split (the
//! `kamal-rollout` cookie, by allowlist or hash under a percentage) and its read/write split
//! (GET and HEAD to readers, unless a `kamal-writer` cookie says the client just wrote).
//! Pure: the caller passes the request's facts and the clock.

use std::time::Duration;

use crate::facts::{Lane, ServiceSpec};

pub const ROLLOUT_COOKIE: &str = "kamal-rollout";
pub const WRITER_COOKIE: &str = "kamal-writer";

/// What a request's lane depends on.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// GET or HEAD.
    pub read_method: bool,
    pub websocket: bool,
    /// The values of its `kamal-rollout` and `kamal-writer` cookies (see [`cookie`]).
    pub rollout_cookie: Option<&'a [u8]>,
    pub writer_cookie: Option<&'a [u8]>,
    /// Milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// Whether the request reads (goes to readers when the client holds no writer cookie).
pub fn is_read(spec: &ServiceSpec, read_method: bool, websocket: bool) -> bool {
    read_method && (spec.read_target_websockets || !websocket)
}

/// The lane of a request.
pub fn lane(spec: &ServiceSpec, facts: RequestFacts<'_>) -> Lane {
    let rollout = spec.rollout.as_ref().is_some_and(|r| {
        facts
            .rollout_cookie
            .is_some_and(|value| r.allowlist.iter().any(|a| a.as_bytes() == value) || in_percent(value, r.percent))
    });
    let has_readers = match (&spec.rollout, rollout) {
        (Some(r), true) => !r.read_targets.is_empty(),
        _ => !spec.read_targets.is_empty(),
    };
    let read = has_readers
        && is_read(spec, facts.read_method, facts.websocket)
        && facts
            .writer_cookie
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .is_none_or(|until| facts.now_ms >= until);
    Lane { rollout, read }
}

/// The `Set-Cookie` value that sends the client's reads to the writers for the service's
/// writer affinity, after a write; `None` when the service has no readers or no affinity.
pub fn writer_cookie(spec: &ServiceSpec, now_ms: u64) -> Option<String> {
    if !spec.has_readers() || spec.writer_affinity == Duration::ZERO {
        return None;
    }
    let affinity = u64::try_from(spec.writer_affinity.as_millis()).unwrap_or(u64::MAX);
    let until = now_ms.saturating_add(affinity);
    // A second more for the cookie itself, so clock skew never drops it early.
    let max_age = affinity.div_ceil(1000) + 1;
    Some(format!("{WRITER_COOKIE}={until}; Path=/; Max-Age={max_age}; HttpOnly"))
}

/// Whether a cookie value falls in the first `percent` of the FNV-1a 32-bit hash space
/// (kamal-proxy's split point).
pub fn in_percent(value: &[u8], percent: u8) -> bool {
    let split = u64::from(percent.min(100)) * (1u64 << 32) / 100;
    u64::from(fnv1a32(value)) < split
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The value of cookie `name` in `Cookie` header values (`a=1; b=2`), the first one wins.
pub fn cookie<'a>(mut headers: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<&'a [u8]> {
    headers.find_map(|header| {
        header.split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| {
                let value = pair[eq + 1..].trim_ascii();
                value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value)
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Rollout, TargetSpec};

    fn spec(readers: bool, rollout: Option<(u8, &[&str])>) -> ServiceSpec {
        let t = |p: u16| TargetSpec::parse_url(&format!("h:{p}"), true).unwrap();
        let mut spec = ServiceSpec::new("s", "test");
        spec.targets = vec![t(1)];
        if readers {
            spec.read_targets = vec![t(2)];
        }
        spec.writer_affinity = Duration::from_secs(1);
        spec.rollout = rollout.map(|(percent, allow)| Rollout {
            targets: vec![t(3)],
            read_targets: Vec::new(),
            percent,
            allowlist: allow.iter().map(ToString::to_string).collect(),
        });
        spec
    }

    fn lane_of(spec: &ServiceSpec, read_method: bool, websocket: bool, cookies: &[&str], now_ms: u64) -> Lane {
        let find = |name| cookie(cookies.iter().map(|c| c.as_bytes()), name);
        let (rollout_cookie, writer_cookie) = (find(ROLLOUT_COOKIE), find(WRITER_COOKIE));
        lane(spec, RequestFacts { read_method, websocket, rollout_cookie, writer_cookie, now_ms })
    }

    #[test]
    fn cookies_are_found_in_any_header() {
        let headers: [&[u8]; 2] = [b"a=1; kamal-rollout = \"x\" ", b"kamal-writer=5"];
        assert_eq!(cookie(headers.iter().copied(), ROLLOUT_COOKIE), Some(&b"x"[..]));
        assert_eq!(cookie(headers.iter().copied(), WRITER_COOKIE), Some(&b"5"[..]));
        assert_eq!(cookie(headers.iter().copied(), "kamal"), None);
        assert_eq!(cookie([&b"novalue; =x"[..]].into_iter(), "novalue"), None);
    }

    #[test]
    fn reads_go_to_readers_unless_the_client_just_wrote() {
        let s = spec(true, None);
        assert!(lane_of(&s, true, false, &[], 0).read);
        assert!(!lane_of(&s, false, false, &[], 0).read, "writes go to writers");
        assert!(!lane_of(&s, true, true, &[], 0).read, "WebSockets go to writers by default");
        assert!(!lane_of(&s, true, false, &["kamal-writer=2000"], 1000).read, "affinity holds");
        assert!(lane_of(&s, true, false, &["kamal-writer=2000"], 2000).read, "affinity expired");
        assert!(lane_of(&s, true, false, &["kamal-writer=soon"], 0).read, "a bad value is ignored");
        assert!(!lane_of(&spec(false, None), true, false, &[], 0).read, "no readers: no read lane");
        let cookie = writer_cookie(&s, 1000).unwrap();
        assert_eq!(cookie, "kamal-writer=2000; Path=/; Max-Age=2; HttpOnly");
        assert_eq!(writer_cookie(&spec(false, None), 0), None);
    }

    #[test]
    fn rollout_takes_the_allowlist_and_a_share_of_cookie_holders() {
        let s = spec(false, Some((0, &["alice"])));
        assert!(lane_of(&s, true, false, &["kamal-rollout=alice"], 0).rollout);
        assert!(!lane_of(&s, true, false, &["kamal-rollout=bob"], 0).rollout);
        assert!(!lane_of(&s, true, false, &[], 0).rollout, "no cookie: active");
        let all = spec(false, Some((100, &[])));
        assert!(lane_of(&all, true, false, &["kamal-rollout=bob"], 0).rollout);
        for percent in [1u8, 10, 25, 50, 90] {
            let share = (0..10_000).filter(|i| in_percent(format!("user-{i}").as_bytes(), percent)).count();
            let asked = usize::from(percent) * 100;
            assert!(share.abs_diff(asked) <= 250, "{percent}%: {share} of 10000");
        }
    }
}
