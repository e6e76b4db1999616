//! The access log: one JSON line per request (kamal-proxy's fields). Each request writes
//! its own line as it goes, by hand: the request's fields when it arrives, the response's
//! when its head is known, the totals when its body ends. The finished line is copied into a
//! buffer shared with a writer thread, which takes the buffer every few milliseconds and
//! writes it with one call: the request path never waits on the disk or stdout, and nothing
//! it allocated is freed on another thread. When the writer falls behind, lines are dropped
//! and counted rather than slowing requests down.
//!
//! Nothing of the request or response is kept until the line ends (no header is cloned): a
//! line is cheaper to write at once than to gather. The three steps are never inlined, so a
//! profile shows exactly what the log costs a request (bench/instructions.sh reads it).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Request, Version};

use gatehouse_model::ServiceSpec;

use crate::body::ClientBody;
use crate::snapshot::ServiceRuntime;

/// Bytes of lines waiting for the writer at most; past this, lines are dropped.
const BACKLOG: usize = 16 * 1024 * 1024;
/// How often the writer takes the lines: they are batched, and a request never wakes it.
const WRITE_EVERY: Duration = Duration::from_millis(20);
/// Room for a typical line, so that it is written without growing.
const LINE: usize = 512;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

pub struct AccessLog {
    lines: Mutex<Lines>,
    dropped: AtomicU64,
}

/// Lines not yet written, and the clocks read together by the writer: a line's wall-clock
/// time is found from its request's monotonic start, so a request reads one clock, not two.
struct Lines {
    text: Vec<u8>,
    /// Milliseconds since the Unix epoch at that instant.
    clock: (u64, Instant),
    /// The start of the last line, which is the same for every line in its millisecond.
    opening: Opening,
}

impl Lines {
    fn new() -> Self {
        Lines { text: Vec::with_capacity(64 * 1024), clock: wall_clock(), opening: Opening::default() }
    }

    /// Appends a line whose request started `at`, the rest of it being `rest`.
    fn append(&mut self, at: Instant, rest: &[u8]) {
        let (wall_ms, wall_at) = self.clock;
        let ms = match at.checked_duration_since(wall_at) {
            Some(after) => wall_ms + after.as_millis() as u64,
            None => wall_ms.saturating_sub(wall_at.duration_since(at).as_millis() as u64),
        };
        self.text.extend_from_slice(self.opening.at(ms));
        self.text.extend_from_slice(rest);
    }
}

fn wall_clock() -> (u64, Instant) {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    (ms, Instant::now())
}

/// `{"time":MS,"msg":"Request",` for one millisecond.
#[derive(Default)]
struct Opening {
    ms: u64,
    text: Vec<u8>,
}

impl Opening {
    fn at(&mut self, ms: u64) -> &[u8] {
        if self.ms != ms || self.text.is_empty() {
            self.ms = ms;
            self.text.clear();
            self.text.extend_from_slice(b"{\"time\":");
            number(&mut self.text, ms);
            self.text.extend_from_slice(b",\"msg\":\"Request\",");
        }
        &self.text
    }
}

impl AccessLog {
    /// Opens the target (a file is appended to) and starts the writer thread.
    pub fn start(target: &AccessLogTarget) -> io::Result<Arc<Self>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let log = Arc::new(AccessLog { lines: Mutex::new(Lines::new()), dropped: AtomicU64::new(0) });
        let writer = Arc::downgrade(&log);
        std::thread::Builder::new().name("gatehouse-access-log".into()).spawn(move || {
            let mut out = out;
            let mut taken = Vec::with_capacity(64 * 1024);
            loop {
                std::thread::sleep(WRITE_EVERY);
                let Some(log) = writer.upgrade() else { break };
                {
                    let mut lines = log.lines.lock().unwrap_or_else(|e| e.into_inner());
                    std::mem::swap(&mut lines.text, &mut taken);
                    lines.clock = wall_clock();
                }
                let dropped = log.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    tracing::warn!(dropped, "the access log fell behind; lines were dropped");
                }
                drop(log);
                if !taken.is_empty() {
                    let _ = out.write_all(&taken);
                    let _ = out.flush();
                    taken.clear();
                }
            }
        })?;
        Ok(log)
    }

    fn append(&self, at: Instant, rest: &[u8]) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.text.len() < BACKLOG {
            lines.append(at, rest);
        } else {
            drop(lines);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A line with the request's fields, written when the request arrives.
pub(crate) struct Start {
    at: Instant,
    line: Vec<u8>,
}

impl Start {
    /// `client_text` is `client`'s address as the connection wrote it once.
    #[inline(never)]
    pub fn new(
        req: &Request<ClientBody>,
        client: SocketAddr,
        client_text: &HeaderValue,
        request_id: &HeaderValue,
    ) -> Self {
        use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
        let at = Instant::now();
        let mut out = Vec::with_capacity(LINE);
        // Keys are written with their neighbouring quotes and commas as one constant, so a
        // field costs one copy of a known length plus its value.
        out.extend_from_slice(b"\"host\":\"");
        let [host, user_agent, request_length, request_type] =
            pick(req.headers(), [&HOST, &USER_AGENT, &CONTENT_LENGTH, &CONTENT_TYPE]);
        string_body(&mut out, host.map_or(&b""[..], HeaderValue::as_bytes));
        out.extend_from_slice(b"\",\"path\":\"");
        let (path, query) = req.uri().path_and_query().map_or(("/", ""), |p| (p.path(), p.query().unwrap_or("")));
        string_body(&mut out, path.as_bytes());
        out.extend_from_slice(b"\",\"query\":\"");
        string_body(&mut out, query.as_bytes());
        out.extend_from_slice(b"\",\"method\":\"");
        // A method is a token: nothing in it needs escaping.
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.extend_from_slice(match req.version() {
            Version::HTTP_10 => b"\",\"proto\":\"HTTP/1.0\",\"request_id\":\"",
            Version::HTTP_2 => b"\",\"proto\":\"HTTP/2.0\",\"request_id\":\"",
            _ => b"\",\"proto\":\"HTTP/1.1\",\"request_id\":\"",
        });
        // Neither an id (headers::request_id) nor an address's text needs escaping.
        out.extend_from_slice(request_id.as_bytes());
        out.extend_from_slice(b"\",\"client_addr\":\"");
        out.extend_from_slice(client_text.as_bytes());
        out.extend_from_slice(b"\",\"client_port\":");
        number(&mut out, u64::from(client.port()));
        optional_field(&mut out, b",\"user_agent\":", user_agent);
        optional_field(&mut out, b",\"req_content_length\":", request_length);
        optional_field(&mut out, b",\"req_content_type\":", request_type);
        Start { at, line: out }
    }

    /// Adds the request headers the routed service logs.
    pub fn take_headers(&mut self, names: &[String], headers: &HeaderMap) {
        header_fields(&mut self.line, "req_", names, headers);
    }
}

/// The first value of each of `names` in `headers`. A small map is walked once (standard
/// names compare as enum tags) instead of hashing every name.
fn pick<'a, const N: usize>(
    headers: &'a HeaderMap,
    names: [&http::header::HeaderName; N],
) -> [Option<&'a HeaderValue>; N] {
    const WALKED: usize = 16;
    if headers.len() > WALKED {
        return names.map(|name| headers.get(name));
    }
    let mut found: [Option<&HeaderValue>; N] = [None; N];
    for (name, value) in headers {
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i].get_or_insert(value);
        }
    }
    found
}

/// `,"PREFIXname":"value"` for each of `names` that `headers` has (`-` written as `_`).
#[inline]
fn header_fields(out: &mut Vec<u8>, prefix: &str, names: &[String], headers: &HeaderMap) {
    if !names.is_empty() {
        named_header_fields(out, prefix, names, headers);
    }
}

fn named_header_fields(out: &mut Vec<u8>, prefix: &str, names: &[String], headers: &HeaderMap) {
    for name in names {
        if let Some(value) = headers.get(name.as_str()) {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(prefix.as_bytes());
            out.extend(name.bytes().map(|b| if b == b'-' { b'_' } else { b }));
            out.extend_from_slice(b"\":");
            string(out, value.as_bytes());
        }
    }
}

type Route = gatehouse_model::Route<ServiceRuntime>;

/// A line with the response's fields, waiting for the response body to end; written to the
/// log when it does (or is dropped).
pub(crate) struct Pending {
    log: Arc<AccessLog>,
    at: Instant,
    line: Vec<u8>,
    bytes_sent: u64,
}

impl Pending {
    /// `route` is the service and the target last tried.
    #[inline(never)]
    pub fn new(
        log: Arc<AccessLog>,
        start: Start,
        status: u16,
        response: &HeaderMap,
        route: Option<(&Route, Option<usize>)>,
    ) -> Self {
        let Start { at, line: mut out } = start;
        out.extend_from_slice(b",\"status\":");
        status_code(&mut out, status);
        out.extend_from_slice(match route {
            Some((service, target)) => service.attached.log_fields(&service.spec).get(target),
            None => b",\"service\":null,\"target\":null",
        });
        let [response_length, response_type] =
            pick(response, [&http::header::CONTENT_LENGTH, &http::header::CONTENT_TYPE]);
        optional_field(&mut out, b",\"resp_content_length\":", response_length);
        optional_field(&mut out, b",\"resp_content_type\":", response_type);
        if let Some((service, _)) = route {
            header_fields(&mut out, "resp_", &service.spec.log_headers.response, response);
        }
        Pending { log, at, line: out, bytes_sent: 0 }
    }

    pub fn sent(&mut self, bytes: usize) {
        self.bytes_sent += bytes as u64;
    }
}

impl Drop for Pending {
    /// Ends the line with kamal-proxy's `duration` (in nanoseconds) and `bytes_sent`.
    #[inline(never)]
    fn drop(&mut self) {
        let duration = self.at.elapsed();
        let out = &mut self.line;
        out.extend_from_slice(b",\"duration\":");
        number(out, u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        out.extend_from_slice(b",\"bytes_sent\":");
        number(out, self.bytes_sent);
        out.extend_from_slice(b"}\n");
        self.log.append(self.at, out);
    }
}

/// A service's `service` and `target` keys with its name and each target's URL,
/// escaped once (when the service's first line is written) instead of on every line.
pub(crate) struct ServiceFields(Box<[Box<[u8]>]>);

impl ServiceFields {
    pub(crate) fn new(spec: &ServiceSpec) -> Self {
        let mut name = Vec::new();
        string_body(&mut name, spec.name.as_bytes());
        let fields = spec.all_targets().map(Some).chain([None]).map(|target| {
            let mut field = b",\"service\":\"".to_vec();
            field.extend_from_slice(&name);
            match target {
                Some(t) => {
                    field.extend_from_slice(b"\",\"target\":\"");
                    string_body(&mut field, t.url().as_bytes());
                    field.push(b'"');
                }
                None => field.extend_from_slice(b"\",\"target\":null"),
            }
            field.into_boxed_slice()
        });
        ServiceFields(fields.collect())
    }

    /// The fields for the target at `index` (numbered as [`ServiceSpec::target`] does), or
    /// for none.
    fn get(&self, index: Option<usize>) -> &[u8] {
        let none = self.0.len() - 1;
        &self.0[index.filter(|&i| i < none).unwrap_or(none)]
    }
}

/// `n` in decimal, two digits per division.
fn number(out: &mut Vec<u8>, mut n: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[i..]);
}

/// An HTTP status, three digits (`http::StatusCode` holds 100 to 999), as one copy of a known
/// length.
#[inline]
fn status_code(out: &mut Vec<u8>, status: u16) {
    if (100..1000).contains(&status) {
        out.extend_from_slice(&[
            b'0' + (status / 100) as u8,
            b'0' + (status / 10 % 10) as u8,
            b'0' + (status % 10) as u8,
        ]);
    } else {
        number(out, u64::from(status));
    }
}

/// `key` (with its quotes, colon and leading comma), then the value as a string or `null`.
#[inline(always)]
fn optional_field(out: &mut Vec<u8>, key: &[u8], value: Option<&HeaderValue>) {
    out.extend_from_slice(key);
    match value {
        Some(v) => string(out, v.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: quotes, backslashes and control bytes escaped; bytes that are not UTF-8
/// (header values may carry them) become U+FFFD. Plain printable ASCII, nearly every value,
/// is copied in one go.
fn string(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    string_body(out, value);
    out.push(b'"');
}

/// [`string`] without its quotes.
#[inline]
fn string_body(out: &mut Vec<u8>, value: &[u8]) {
    if value.is_empty() {
        return;
    }
    if is_plain(value) {
        out.extend_from_slice(value);
    } else {
        escaped(out, String::from_utf8_lossy(value).as_bytes());
    }
}

/// Whether every byte is one a JSON string carries as it is ([`PLAIN`]), eight at a time:
/// a byte under 0x20, at or over 0x7f, `"` or `\\` sets its high bit in one of the four
/// masks.
fn is_plain(value: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Zero bytes of `x` set their high bit (exact when `x` has no byte over 0x80 set
    // alongside, which the other terms cover).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = value.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word);
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let high_or_delete = (x | x.wrapping_add(ONES)) & HIGH;
        let quote = zero(x ^ (ONES * u64::from(b'"')));
        let backslash = zero(x ^ (ONES * u64::from(b'\\')));
        if control | high_or_delete | quote | backslash != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| PLAIN[usize::from(b)])
}

/// Bytes a JSON string carries as they are: printable ASCII but `"` and `\`.
static PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        plain[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    plain
};

fn escaped(out: &mut Vec<u8>, text: &[u8]) {
    for &b in text {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_value_of_each_name_in_small_and_large_maps() {
        use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
        for extra in [0, 40] {
            let mut headers = HeaderMap::new();
            for i in 0..extra {
                headers.insert(format!("x-{i}").parse::<http::header::HeaderName>().unwrap(), HeaderValue::from(i));
            }
            headers.append(HOST, HeaderValue::from_static("a.test"));
            headers.append(HOST, HeaderValue::from_static("b.test"));
            headers.append(USER_AGENT, HeaderValue::from_static("ua"));
            let [host, agent, kind] = pick(&headers, [&HOST, &USER_AGENT, &CONTENT_TYPE]);
            assert_eq!(
                (host.unwrap(), agent.unwrap(), kind),
                (&"a.test".parse().unwrap(), &"ua".parse().unwrap(), None)
            );
        }
    }

    #[test]
    fn the_word_check_agrees_with_the_table_on_every_byte_at_every_position() {
        for b in 0..=255u8 {
            for at in 0..16 {
                let mut value = [b'a'; 16];
                value[at] = b;
                assert_eq!(is_plain(&value), PLAIN[usize::from(b)], "byte {b:#x} at {at}");
            }
        }
        assert!(is_plain(b"") && is_plain(b"/path?x=1") && !is_plain(b"/path\"\x7f"));
    }

    #[test]
    fn service_fields_name_each_target_as_its_url_and_none_as_null() {
        let mut spec = ServiceSpec::new("we\"b", "file");
        for url in ["http://10.0.0.1:8080", "https://[::1]:8443", "unix:/run/a\"b.sock"] {
            spec.targets.push(gatehouse_model::TargetSpec::parse_url(url, false).unwrap());
        }
        let fields = ServiceFields::new(&spec);
        let parse = |index| {
            let mut line = b"{\"x\":0".to_vec();
            line.extend_from_slice(fields.get(index));
            line.push(b'}');
            serde_json::from_slice::<serde_json::Value>(&line).unwrap()
        };
        let targets: Vec<_> = [Some(0), Some(1), Some(2), Some(3), None].map(|i| parse(i)["target"].clone()).into();
        assert_eq!(
            targets,
            ["http://10.0.0.1:8080", "https://[::1]:8443", "unix:/run/a\"b.sock"]
                .map(serde_json::Value::from)
                .into_iter()
                .chain([serde_json::Value::Null, serde_json::Value::Null])
                .collect::<Vec<_>>()
        );
        assert_eq!((&parse(Some(1))["service"], &parse(None)["service"]), (&"we\"b".into(), &"we\"b".into()));
    }

    #[test]
    fn a_line_carries_the_request_the_response_and_the_totals() {
        let log = AccessLog { lines: Mutex::new(Lines::new()), dropped: AtomicU64::new(0) };
        let req = Request::post("/up?x=1")
            .header("host", "app.test")
            .header("user-agent", "ua\\1")
            .header("content-type", "text/plain")
            .header("cache-control", "no-cache")
            .body(ClientBody::Empty)
            .unwrap();
        let client = "10.0.0.7:4711".parse().unwrap();
        let mut start = Start::new(&req, client, &HeaderValue::from_static("10.0.0.7"), &"id-1".parse().unwrap());
        start.take_headers(&["cache-control".into(), "x-absent".into()], req.headers());
        let mut response = HeaderMap::new();
        response.insert(http::header::CONTENT_LENGTH, HeaderValue::from(12));
        let log = Arc::new(log);
        let mut pending = Pending::new(log.clone(), start, 404, &response, None);
        pending.sent(7);
        pending.sent(5);
        drop(pending);
        let text = log.lines.lock().unwrap().text.clone();
        assert!(text.ends_with(b"}\n") && text.iter().filter(|&&b| b == b'\n').count() == 1);
        let line: serde_json::Value = serde_json::from_slice(&text).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(line["time"].as_u64().unwrap().abs_diff(now) < 1_000, "{line}");
        let expected = serde_json::json!({
            "msg": "Request", "host": "app.test", "path": "/up", "query": "x=1", "method": "POST",
            "proto": "HTTP/1.1", "request_id": "id-1", "client_addr": "10.0.0.7", "client_port": 4711,
            "user_agent": "ua\\1", "req_content_length": null, "req_content_type": "text/plain",
            "req_cache_control": "no-cache", "status": 404, "service": null, "target": null,
            "resp_content_length": "12", "resp_content_type": null, "bytes_sent": 12,
        });
        for (key, value) in expected.as_object().unwrap() {
            assert_eq!(&line[key], value, "{key} in {line}");
        }
        assert!(line["duration"].as_u64().is_some());
    }

    #[test]
    fn the_opening_changes_with_the_millisecond() {
        let mut opening = Opening::default();
        assert_eq!(opening.at(0), b"{\"time\":0,\"msg\":\"Request\",");
        assert_eq!(opening.at(1_764_000_000_123), b"{\"time\":1764000000123,\"msg\":\"Request\",");
        assert_eq!(opening.at(1_764_000_000_123), b"{\"time\":1764000000123,\"msg\":\"Request\",");
    }

    #[test]
    fn strings_and_numbers_are_valid_json() {
        let mut out = Vec::new();
        out.push(b'[');
        string(&mut out, b"a\"b\\c\n\x01\xff");
        out.push(b',');
        number(&mut out, 0);
        out.push(b',');
        number(&mut out, u64::MAX);
        for n in [7, 10, 99, 100, 101, 1_000_000_007, 10_000_000_000_000_000_000, 999_999] {
            out.push(b',');
            number(&mut out, n);
        }
        out.push(b']');
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed[0], "a\"b\\c\n\u{1}\u{fffd}");
        assert_eq!(parsed[1], 0);
        assert_eq!(parsed[2], u64::MAX);
        let numbers: Vec<u64> = parsed.as_array().unwrap()[3..].iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(numbers, [7, 10, 99, 100, 101, 1_000_000_007, 10_000_000_000_000_000_000, 999_999]);
        // Every length, and the bytes after a number stay the number's.
        for digits in 1..=19 {
            let n = 10u64.pow(digits) - 1;
            for m in [n, n + 1] {
                let mut out = b"x".to_vec();
                number(&mut out, m);
                assert_eq!(out, format!("x{m}").as_bytes());
            }
        }
    }
}
