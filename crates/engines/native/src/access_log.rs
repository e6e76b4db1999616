//! The access log: one JSON line per request (kamal-proxy's fields). The request path
//! formats its line when the response ends, by hand, into a buffer shared with a writer
//! thread, which takes the buffer every few milliseconds and writes it with one call: the
//! request path never waits on the disk or stdout, and nothing it allocated is freed on
//! another thread. When the writer falls behind, lines are dropped and counted rather than
//! slowing requests down.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Version};

use gatehouse_model::ServiceSpec;

use crate::body::ClientBody;
use crate::snapshot::ServiceRuntime;

/// Bytes of lines waiting for the writer at most; past this, lines are dropped.
const BACKLOG: usize = 16 * 1024 * 1024;
/// How often the writer takes the lines: they are batched, and a request never wakes it.
const WRITE_EVERY: Duration = Duration::from_millis(20);

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
}

fn wall_clock() -> (u64, Instant) {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    (ms, Instant::now())
}

/// `{"time":MS,"msg":"Request","host":"` for one millisecond.
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
            self.text.extend_from_slice(b",\"msg\":\"Request\",\"host\":\"");
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

    fn write(&self, record: &Record) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.text.len() < BACKLOG {
            record.write_line(&mut lines);
        } else {
            drop(lines);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What is known of a request when it arrives.
pub(crate) struct Start {
    at: Instant,
    method: Method,
    host: Option<HeaderValue>,
    path: Option<PathAndQuery>,
    version: Version,
    /// The client's address as text (shared with its connection) and its port.
    client: HeaderValue,
    client_port: u16,
    user_agent: Option<HeaderValue>,
    request_length: Option<HeaderValue>,
    request_type: Option<HeaderValue>,
    /// The routed service's `--log-request-header`s, in its order.
    request_headers: Vec<Option<HeaderValue>>,
}

impl Start {
    /// `client_text` is `client`'s address as the connection wrote it once.
    pub fn new(req: &Request<ClientBody>, client: SocketAddr, client_text: &HeaderValue) -> Self {
        use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
        let [host, user_agent, request_length, request_type] =
            pick(req.headers(), [&HOST, &USER_AGENT, &CONTENT_LENGTH, &CONTENT_TYPE]);
        Start {
            at: Instant::now(),
            method: req.method().clone(),
            host,
            path: req.uri().path_and_query().cloned(),
            version: req.version(),
            client: client_text.clone(),
            client_port: client.port(),
            user_agent,
            request_length,
            request_type,
            request_headers: Vec::new(),
        }
    }

    /// Takes the request headers the routed service logs.
    pub fn take_headers(&mut self, names: &[String], headers: &HeaderMap) {
        if !names.is_empty() {
            self.request_headers = names.iter().map(|n| headers.get(n.as_str()).cloned()).collect();
        }
    }
}

/// The first value of each of `names` in `headers`. A small map is walked once (standard
/// names compare as enum tags) instead of hashing every name.
fn pick<const N: usize>(headers: &HeaderMap, names: [&http::header::HeaderName; N]) -> [Option<HeaderValue>; N] {
    const WALKED: usize = 16;
    if headers.len() > WALKED {
        return names.map(|name| headers.get(name).cloned());
    }
    let mut found: [Option<HeaderValue>; N] = std::array::from_fn(|_| None);
    for (name, value) in headers {
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i].get_or_insert_with(|| value.clone());
        }
    }
    found
}

type Route = gatehouse_model::Route<ServiceRuntime>;

/// A request answered, waiting for its response body to end.
pub(crate) struct Pending {
    log: Arc<AccessLog>,
    record: Record,
}

impl Pending {
    pub fn new(
        log: Arc<AccessLog>,
        start: Start,
        status: u16,
        response: &HeaderMap,
        route: Option<(Route, Option<usize>)>,
        request_id: &HeaderValue,
    ) -> Self {
        let response_headers = match &route {
            Some((service, _)) if !service.spec.log_headers.response.is_empty() => {
                service.spec.log_headers.response.iter().map(|n| response.get(n.as_str()).cloned()).collect()
            }
            _ => Vec::new(),
        };
        let [response_length, response_type] =
            pick(response, [&http::header::CONTENT_LENGTH, &http::header::CONTENT_TYPE]);
        let record = Record {
            start,
            status,
            route,
            request_id: request_id.clone(),
            response_length,
            response_type,
            response_headers,
            bytes_sent: 0,
            duration: Duration::ZERO,
        };
        Pending { log, record }
    }

    pub fn sent(&mut self, bytes: usize) {
        self.record.bytes_sent += bytes as u64;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.record.duration = self.record.start.at.elapsed();
        self.log.write(&self.record);
    }
}

struct Record {
    start: Start,
    status: u16,
    /// The service and the target last tried.
    route: Option<(Route, Option<usize>)>,
    request_id: HeaderValue,
    response_length: Option<HeaderValue>,
    response_type: Option<HeaderValue>,
    response_headers: Vec<Option<HeaderValue>>,
    bytes_sent: u64,
    duration: Duration,
}

impl Record {
    /// The line: kamal-proxy's field names (durations in nanoseconds), plus `bytes_sent`.
    fn write_line(&self, lines: &mut Lines) {
        let s = &self.start;
        let (wall_ms, wall_at) = lines.clock;
        let time_ms = match s.at.checked_duration_since(wall_at) {
            Some(after) => wall_ms + after.as_millis() as u64,
            None => wall_ms.saturating_sub(wall_at.duration_since(s.at).as_millis() as u64),
        };
        let out = &mut lines.text;
        let path = s.path.as_ref().map_or("/", PathAndQuery::path);
        let query = s.path.as_ref().and_then(PathAndQuery::query).unwrap_or("");
        // Keys are written with their neighbouring quotes and commas as one constant, so a
        // field costs one copy of a known length plus its value.
        out.extend_from_slice(lines.opening.at(time_ms));
        string_body(out, s.host.as_ref().map_or(&b""[..], HeaderValue::as_bytes));
        out.extend_from_slice(b"\",\"path\":\"");
        string_body(out, path.as_bytes());
        out.extend_from_slice(b"\",\"query\":\"");
        string_body(out, query.as_bytes());
        out.extend_from_slice(b"\",\"method\":\"");
        // A method is a token: nothing in it needs escaping.
        out.extend_from_slice(s.method.as_str().as_bytes());
        out.extend_from_slice(match s.version {
            Version::HTTP_10 => b"\",\"proto\":\"HTTP/1.0\",\"status\":",
            Version::HTTP_2 => b"\",\"proto\":\"HTTP/2.0\",\"status\":",
            _ => b"\",\"proto\":\"HTTP/1.1\",\"status\":",
        });
        number(out, u64::from(self.status));
        out.extend_from_slice(match &self.route {
            Some((service, target)) => service.attached.log_fields(&service.spec).get(*target),
            None => b",\"service\":null,\"target\":null,\"request_id\":\"",
        });
        string_body(out, self.request_id.as_bytes());
        out.extend_from_slice(b"\",\"client_addr\":\"");
        // An address's text needs no escaping.
        out.extend_from_slice(s.client.as_bytes());
        out.extend_from_slice(b"\",\"client_port\":");
        number(out, u64::from(s.client_port));
        out.extend_from_slice(b",\"duration\":");
        number(out, u64::try_from(self.duration.as_nanos()).unwrap_or(u64::MAX));
        optional_field(out, b",\"user_agent\":", s.user_agent.as_ref());
        optional_field(out, b",\"req_content_length\":", s.request_length.as_ref());
        optional_field(out, b",\"req_content_type\":", s.request_type.as_ref());
        optional_field(out, b",\"resp_content_length\":", self.response_length.as_ref());
        optional_field(out, b",\"resp_content_type\":", self.response_type.as_ref());
        out.extend_from_slice(b",\"bytes_sent\":");
        number(out, self.bytes_sent);
        if let Some((service, _)) = &self.route {
            let names = &service.spec.log_headers;
            for (prefix, names, values) in
                [("req_", &names.request, &s.request_headers), ("resp_", &names.response, &self.response_headers)]
            {
                for (name, value) in names.iter().zip(values) {
                    if let Some(value) = value {
                        out.extend_from_slice(b",\"");
                        out.extend_from_slice(prefix.as_bytes());
                        out.extend(name.bytes().map(|b| if b == b'-' { b'_' } else { b }));
                        out.extend_from_slice(b"\":");
                        string(out, value.as_bytes());
                    }
                }
            }
        }
        out.extend_from_slice(b"}\n");
    }
}

/// A service's `service`, `target` and `request_id` keys with its name and each target's URL,
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
                    field.extend_from_slice(b"\",\"request_id\":\"");
                }
                None => field.extend_from_slice(b"\",\"target\":null,\"request_id\":\""),
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
fn string_body(out: &mut Vec<u8>, value: &[u8]) {
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
            assert_eq!((host.unwrap(), agent.unwrap(), kind), ("a.test".parse().unwrap(), "ua".parse().unwrap(), None));
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
            line.extend_from_slice(b"id\"}");
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
        assert_eq!((&parse(Some(1))["service"], &parse(None)["request_id"]), (&"we\"b".into(), &"id".into()));
    }

    #[test]
    fn the_opening_changes_with_the_millisecond() {
        let mut opening = Opening::default();
        assert_eq!(opening.at(0), b"{\"time\":0,\"msg\":\"Request\",\"host\":\"");
        assert_eq!(opening.at(1_764_000_000_123), b"{\"time\":1764000000123,\"msg\":\"Request\",\"host\":\"");
        assert_eq!(opening.at(1_764_000_000_123), b"{\"time\":1764000000123,\"msg\":\"Request\",\"host\":\"");
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
        for n in [7, 10, 99, 100, 101, 1_000_000_007, 10_000_000_000_000_000_000] {
            out.push(b',');
            number(&mut out, n);
        }
        out.push(b']');
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed[0], "a\"b\\c\n\u{1}\u{fffd}");
        assert_eq!(parsed[1], 0);
        assert_eq!(parsed[2], u64::MAX);
        let numbers: Vec<u64> = parsed.as_array().unwrap()[3..].iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(numbers, [7, 10, 99, 100, 101, 1_000_000_007, 10_000_000_000_000_000_000]);
    }
}
