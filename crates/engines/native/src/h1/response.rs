//! Writing a response head: the status line, the fields, and the framing and connection
//! headers this hop decides.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::SizeHint;

use super::request::parse_length;

/// How the response body is delimited towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// No body on the wire (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 clients without a length: the end of the body is the end of the connection.
    UntilClose,
}

/// What the connection does after this response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    KeepAlive,
    Close,
    /// `101 Switching Protocols`: the connection becomes a tunnel.
    Upgrade,
}

pub(crate) struct Plan {
    pub encoding: Encoding,
    pub after: After,
}

/// Decides framing and connection handling for a response to a request made with `method`
/// and `version`. `keep_alive` is what the client and the server side (stop, unread body)
/// allow.
pub(crate) fn plan(
    method: &Method,
    version: Version,
    status: StatusCode,
    headers: &HeaderMap,
    hint: SizeHint,
    keep_alive: bool,
) -> Plan {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Plan { encoding: Encoding::None, after: After::Upgrade };
    }
    let encoding = if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Encoding::None
    } else if let Some(length) = headers.get(header::CONTENT_LENGTH).and_then(|v| parse_length(v.as_bytes())) {
        Encoding::Length(length)
    } else if let Some(length) = hint.exact() {
        Encoding::Length(length)
    } else if version == Version::HTTP_11 {
        Encoding::Chunked
    } else {
        Encoding::UntilClose
    };
    let close = !keep_alive || encoding == Encoding::UntilClose || crate::headers::connection_has(headers, "close");
    Plan { encoding, after: if close { After::Close } else { After::KeepAlive } }
}

/// Appends the head: status line, the response's fields (less the connection and framing
/// fields this hop decides), `Date` when missing, then the framing and connection fields.
pub(crate) fn encode_head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap, version: Version, plan: &Plan) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let own_length = matches!(plan.encoding, Encoding::Length(_));
    for (name, value) in headers {
        let decided_here = name == header::TRANSFER_ENCODING
            || (name == header::CONNECTION && plan.after != After::Upgrade)
            || (name == header::CONTENT_LENGTH && own_length);
        if !decided_here {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !headers.contains_key(header::DATE) {
        with_date(|date| field(out, b"date", date));
    }
    match plan.encoding {
        Encoding::Length(n) => field(out, b"content-length", n.to_string().as_bytes()),
        Encoding::Chunked => field(out, b"transfer-encoding", b"chunked"),
        Encoding::None | Encoding::UntilClose => {}
    }
    match plan.after {
        After::Close => field(out, b"connection", b"close"),
        After::KeepAlive if version == Version::HTTP_10 => field(out, b"connection", b"keep-alive"),
        After::KeepAlive | After::Upgrade => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` value, formatted once a second per worker.
    static DATE: RefCell<(SystemTime, HeaderValue)> =
        const { RefCell::new((SystemTime::UNIX_EPOCH, HeaderValue::from_static(""))) };
}

fn with_date(write: impl FnOnce(&[u8])) {
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        let now = SystemTime::now();
        if now.duration_since(cached.0).unwrap_or(Duration::MAX) >= Duration::from_secs(1) {
            let text = httpdate::fmt_http_date(now);
            // An HTTP date is always a valid header value.
            cached.1 = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""));
            cached.0 = now;
        }
        write(cached.1.as_bytes());
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_for(method: Method, version: Version, status: u16, length: Option<&str>, hint: SizeHint) -> Plan {
        let mut headers = HeaderMap::new();
        if let Some(l) = length {
            headers.insert(header::CONTENT_LENGTH, l.parse().unwrap());
        }
        plan(&method, version, StatusCode::from_u16(status).unwrap(), &headers, hint, true)
    }

    #[test]
    fn framing_follows_the_response_and_the_client() {
        let unknown = SizeHint::new();
        let p = plan_for(Method::GET, Version::HTTP_11, 200, Some("5"), unknown);
        assert_eq!((p.encoding, p.after), (Encoding::Length(5), After::KeepAlive));
        assert_eq!(
            plan_for(Method::GET, Version::HTTP_11, 200, None, SizeHint::with_exact(3)).encoding,
            Encoding::Length(3)
        );
        assert_eq!(plan_for(Method::GET, Version::HTTP_11, 200, None, unknown).encoding, Encoding::Chunked);
        let old = plan_for(Method::GET, Version::HTTP_10, 200, None, unknown);
        assert_eq!((old.encoding, old.after), (Encoding::UntilClose, After::Close));
        assert_eq!(plan_for(Method::HEAD, Version::HTTP_11, 200, Some("5"), unknown).encoding, Encoding::None);
        assert_eq!(plan_for(Method::GET, Version::HTTP_11, 304, None, unknown).encoding, Encoding::None);
        assert_eq!(plan_for(Method::GET, Version::HTTP_11, 101, None, unknown).after, After::Upgrade);
    }

    #[test]
    fn head_carries_decided_fields_once() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "close".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "2".parse().unwrap());
        headers.insert("x-a", "1".parse().unwrap());
        let p = plan(&Method::GET, Version::HTTP_10, StatusCode::OK, &headers, SizeHint::new(), true);
        assert_eq!(p.after, After::Close, "the response asked to close");
        let mut out = Vec::new();
        encode_head(&mut out, StatusCode::OK, &headers, Version::HTTP_10, &p);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert_eq!(text.matches("content-length: 2\r\n").count(), 1, "{text}");
        assert_eq!(text.matches("connection: close\r\n").count(), 1, "{text}");
        assert!(text.contains("x-a: 1\r\n") && text.contains("date: ") && text.ends_with("\r\n\r\n"), "{text}");
    }
}
