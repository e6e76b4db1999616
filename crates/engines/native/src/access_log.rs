//! The access log: one JSON line per request (kamal-proxy's fields), written by a thread of
//! its own so the request path only hands over a record. When the writer falls behind,
//! records are dropped and counted rather than slowing requests down.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Request, Version};

use crate::body::ClientBody;

/// Records waiting for the writer at most; past this they are dropped.
const QUEUE: usize = 16_384;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

pub struct AccessLog {
    queue: SyncSender<Record>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Opens the target (a file is appended to) and starts the writer thread.
    pub fn start(target: &AccessLogTarget) -> io::Result<Arc<Self>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (queue, records) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new().name("gatehouse-access-log".into()).spawn(move || write_all(records, out))?;
        Ok(Arc::new(AccessLog { queue, dropped: AtomicU64::new(0) }))
    }

    fn send(&self, record: Record) {
        if self.queue.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Writes records as they come, flushing whenever the queue is empty.
fn write_all(records: Receiver<Record>, out: Box<dyn Write + Send>) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut next = records.recv();
    while let Ok(record) = next {
        let _ = serde_json::to_writer(&mut out, &record.line());
        let _ = out.write_all(b"\n");
        next = match records.try_recv() {
            Ok(record) => Ok(record),
            Err(TryRecvError::Empty) => {
                let _ = out.flush();
                records.recv()
            }
            Err(TryRecvError::Disconnected) => break,
        };
    }
    let _ = out.flush();
}

/// What is known of a request when it arrives.
pub(crate) struct Start {
    at: Instant,
    time: SystemTime,
    method: Method,
    host: Option<HeaderValue>,
    path: String,
    version: Version,
    client: SocketAddr,
    user_agent: Option<HeaderValue>,
    request_length: Option<HeaderValue>,
    request_type: Option<HeaderValue>,
    /// The service's `--log-request-header`s, taken once the request is routed.
    request_headers: Vec<(String, String)>,
}

impl Start {
    pub fn new(req: &Request<ClientBody>, client: SocketAddr) -> Self {
        let h = req.headers();
        Start {
            at: Instant::now(),
            time: SystemTime::now(),
            method: req.method().clone(),
            host: h.get(http::header::HOST).cloned(),
            path: req.uri().path_and_query().map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            version: req.version(),
            client,
            user_agent: h.get(http::header::USER_AGENT).cloned(),
            request_length: h.get(http::header::CONTENT_LENGTH).cloned(),
            request_type: h.get(http::header::CONTENT_TYPE).cloned(),
            request_headers: Vec::new(),
        }
    }

    /// Takes the request headers the routed service logs.
    pub fn take_headers(&mut self, names: &[String], headers: &HeaderMap) {
        self.request_headers = picked(names, headers);
    }
}

/// `(name with _ for -, value)` of each of `names` present in `headers`.
fn picked(names: &[String], headers: &HeaderMap) -> Vec<(String, String)> {
    names.iter().filter_map(|n| headers.get(n.as_str()).map(|v| (n.replace('-', "_"), text(v)))).collect()
}

/// A request answered, waiting for its response body to end.
pub(crate) struct Pending {
    log: Arc<AccessLog>,
    record: Record,
}

impl Pending {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        log: Arc<AccessLog>,
        start: Start,
        status: u16,
        response: &HeaderMap,
        service: Option<&str>,
        target: Option<String>,
        request_id: &HeaderValue,
        log_headers: Option<&gatehouse_model::LogHeaders>,
    ) -> Self {
        let response_headers = log_headers.map_or_else(Vec::new, |l| picked(&l.response, response));
        let record = Record {
            start,
            status,
            service: service.map(str::to_string),
            target,
            request_id: text(request_id),
            response_length: response.get(http::header::CONTENT_LENGTH).map(text),
            response_type: response.get(http::header::CONTENT_TYPE).map(text),
            response_headers,
            bytes_sent: 0,
            duration_us: 0,
        };
        Pending { log, record }
    }

    pub fn sent(&mut self, bytes: usize) {
        self.record.bytes_sent += bytes as u64;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let placeholder = Record::placeholder();
        let mut record = std::mem::replace(&mut self.record, placeholder);
        record.duration_us = u64::try_from(record.start.at.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.log.send(record);
    }
}

fn text(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

struct Record {
    start: Start,
    status: u16,
    service: Option<String>,
    target: Option<String>,
    request_id: String,
    response_length: Option<String>,
    response_type: Option<String>,
    response_headers: Vec<(String, String)>,
    bytes_sent: u64,
    duration_us: u64,
}

impl Record {
    fn placeholder() -> Self {
        Record {
            start: Start {
                at: Instant::now(),
                time: UNIX_EPOCH,
                method: Method::GET,
                host: None,
                path: String::new(),
                version: Version::HTTP_11,
                client: SocketAddr::from(([0, 0, 0, 0], 0)),
                user_agent: None,
                request_length: None,
                request_type: None,
                request_headers: Vec::new(),
            },
            status: 0,
            service: None,
            target: None,
            request_id: String::new(),
            response_length: None,
            response_type: None,
            response_headers: Vec::new(),
            bytes_sent: 0,
            duration_us: 0,
        }
    }

    /// The line as written: kamal-proxy's field names, plus `bytes_sent`.
    fn line(&self) -> serde_json::Value {
        let s = &self.start;
        let time_ms = s.time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let host = s.host.as_ref().map(text).unwrap_or_default();
        let (path, query) = match s.path.split_once('?') {
            Some((p, q)) => (p, q),
            None => (s.path.as_str(), ""),
        };
        let mut line = serde_json::json!({
            "time": time_ms,
            "msg": "Request",
            "host": host,
            "path": path,
            "query": query,
            "method": s.method.as_str(),
            "proto": format!("{:?}", s.version),
            "status": self.status,
            "service": self.service,
            "target": self.target,
            "request_id": self.request_id,
            "client_addr": s.client.ip().to_string(),
            "client_port": s.client.port(),
            "duration": self.duration_us * 1000,
            "user_agent": s.user_agent.as_ref().map(text),
            "req_content_length": s.request_length.as_ref().map(text),
            "req_content_type": s.request_type.as_ref().map(text),
            "resp_content_length": self.response_length,
            "resp_content_type": self.response_type,
            "bytes_sent": self.bytes_sent,
        });
        if let Some(fields) = line.as_object_mut() {
            for (name, value) in &s.request_headers {
                fields.insert(format!("req_{name}"), serde_json::Value::String(value.clone()));
            }
            for (name, value) in &self.response_headers {
                fields.insert(format!("resp_{name}"), serde_json::Value::String(value.clone()));
            }
        }
        line
    }
}
