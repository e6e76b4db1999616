//! A deliberately small HTTP/1.1 server for the controller nodes. It is written by hand so
//! that faults a real proxy or JVM produces (resets, hangs, truncated bodies) can be made
//! exactly, which a full HTTP library would not allow.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the client allows another request on the connection.
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn query_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn query_one<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.query_all(name).next()
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Announce the whole body but send half of it, then close.
    pub truncate: bool,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body: body.into(),
            truncate: false,
        }
    }

    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
        Response::new(status, "application/json", body)
    }

    pub fn empty(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Vec::new(), truncate: false }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

pub enum ReadError {
    /// The peer closed the connection between requests.
    Closed,
    /// Unparseable; answer 400 and close.
    Bad(&'static str),
}

/// Reads one request from `stream`, using `buf` to keep bytes of a pipelined next one.
pub async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Request, ReadError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = parsed.method.unwrap_or("GET").to_string();
                let target = parsed.path.unwrap_or("/").to_string();
                let version = parsed.version.unwrap_or(1);
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let find = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
                let length = match find("content-length") {
                    Some(v) => v.trim().parse::<usize>().map_err(|_| ReadError::Bad("bad Content-Length"))?,
                    None => 0,
                };
                if find("transfer-encoding").is_some() {
                    return Err(ReadError::Bad("chunked request bodies are not supported"));
                }
                if length > MAX_BODY {
                    return Err(ReadError::Bad("body too large"));
                }
                let connection = find("connection").map(|v| v.to_ascii_lowercase()).unwrap_or_default();
                let keep_alive = if version == 0 { connection == "keep-alive" } else { connection != "close" };
                while buf.len() < head_len + length {
                    read_more(stream, buf).await?;
                }
                let body = buf[head_len..head_len + length].to_vec();
                buf.drain(..head_len + length);
                let (path, query) = split_target(&target);
                return Ok(Request { method, path, query, headers, body, keep_alive });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => read_more(stream, buf).await?,
            Ok(httparse::Status::Partial) => return Err(ReadError::Bad("request head too large")),
            Err(_) => return Err(ReadError::Bad("malformed request")),
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => Err(ReadError::Closed),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

fn split_target(target: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    (percent_decode(path), pairs)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `response`; returns whether the connection may carry another request.
pub async fn write_response(stream: &mut TcpStream, request_keep_alive: bool, response: &Response) -> bool {
    let keep_alive = request_keep_alive && !response.truncate;
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, reason(response.status));
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let body = if response.truncate { &response.body[..response.body.len() / 2] } else { &response.body[..] };
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.is_ok() && keep_alive
}

/// Closes with a TCP reset rather than a FIN, as a crashed peer or a firewall does.
pub fn reset(stream: TcpStream) {
    if let Ok(std) = stream.into_std() {
        let socket = socket2::Socket::from(std);
        let _ = socket.set_linger(Some(Duration::ZERO));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_path_and_decoded_query() {
        let (path, query) = split_target("/apis/v1/endpoints?app=a%20b&app=c&lastSyncTime=5");
        assert_eq!(path, "/apis/v1/endpoints");
        assert_eq!(
            query,
            [("app".into(), "a b".into()), ("app".into(), "c".into()), ("lastSyncTime".into(), "5".into())]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
