//! Responses: writing heads to clients (the status line, the fields, and the framing and
//! connection fields this hop decides), and reading heads from targets.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::SizeHint;

use super::request::{parse_length, write_field as field, FieldSpans, MAX_HEADERS, MAX_HEAD_BYTES};
use super::Framing;

/// What the connection does after this response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    KeepAlive,
    Close,
    /// `101 Switching Protocols`: the connection becomes a tunnel.
    Upgrade,
}

pub(crate) struct Plan {
    pub framing: Framing,
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
        return Plan { framing: Framing::Empty, after: After::Upgrade };
    }
    let framing = if *method == Method::HEAD || !status_has_body(status) {
        Framing::Empty
    } else if let Some(length) =
        hint.exact().or_else(|| headers.get(header::CONTENT_LENGTH).and_then(|v| parse_length(v.as_bytes())))
    {
        Framing::Length(length)
    } else if version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        Framing::UntilClose
    };
    let close = !keep_alive || framing == Framing::UntilClose || crate::headers::connection_has(headers, "close");
    Plan { framing, after: if close { After::Close } else { After::KeepAlive } }
}

/// 1xx, 204 and 304 responses never have a body (RFC 9112 §6.3).
fn status_has_body(status: StatusCode) -> bool {
    !(status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED)
}

/// Appends the head: status line, the response's fields (less the connection and framing
/// fields this hop decides), `Date` when missing, then the framing and connection fields.
pub(crate) fn encode_head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap, version: Version, plan: &Plan) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    // A 204 or 304 carries no length (a 304's would describe a body that is not sent).
    let own_length = matches!(plan.framing, Framing::Length(_)) || !status_has_body(status);
    // Transfer codings the target applied under chunked (`gzip, chunked`) stay on the body.
    let codings = headers.get(header::TRANSFER_ENCODING).filter(|_| plan.framing == Framing::Chunked);
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
    match plan.framing {
        Framing::Length(n) => field(out, b"content-length", n.to_string().as_bytes()),
        Framing::Chunked => match codings {
            Some(codings) => {
                out.extend_from_slice(b"transfer-encoding: ");
                out.extend_from_slice(codings.as_bytes());
                out.extend_from_slice(b", chunked\r\n");
            }
            None => field(out, b"transfer-encoding", b"chunked"),
        },
        Framing::Empty | Framing::UntilClose => {}
    }
    match plan.after {
        After::Close => field(out, b"connection", b"close"),
        After::KeepAlive if version == Version::HTTP_10 => field(out, b"connection", b"keep-alive"),
        After::KeepAlive | After::Upgrade => {}
    }
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

/// A target's response head, with how its body is delimited.
#[derive(Debug)]
pub(crate) struct TargetHead {
    pub response: Response<()>,
    pub framing: Framing,
    /// The connection can carry another request once this body is read.
    pub reusable: bool,
}

/// Takes a target's response head off the front of `buf` (RFC 9112 §6.3 for the framing);
/// `Ok(None)` when more bytes are needed. `method` is the request's.
pub(crate) fn parse_target(buf: &mut BytesMut, method: &Method) -> Result<Option<TargetHead>, &'static str> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut fields)
    {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err("response head too large"),
        Err(_) => return Err("malformed response head"),
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or_default()).map_err(|_| "invalid status code")?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let spans = FieldSpans::record(buf.as_ptr() as usize, parsed.headers);
    let head = buf.split_to(len).freeze();
    let (fields, noted) = spans.to_map(&head).map_err(str::trim_end)?;
    let (framing, ambiguous) = if *method == Method::HEAD || !status_has_body(status) {
        (Framing::Empty, false)
    } else if noted.encodings > 0 {
        let framing = if noted.chunked_last() { Framing::Chunked } else { Framing::UntilClose };
        // With a length too, the message is suspect: read it as chunked, then close.
        (framing, noted.lengths > 0)
    } else {
        match (noted.lengths, noted.length) {
            (0, _) => (Framing::UntilClose, false),
            (_, Some(n)) if noted.lengths_agree => (Framing::Length(n), false),
            _ => return Err("invalid Content-Length"),
        }
    };
    let mut fields = fields;
    if noted.encodings > 0 {
        // Chunked framing wins over a length beside it (and the length never reaches the
        // client); what remains of Transfer-Encoding is the codings under chunked, if any.
        fields.remove(header::CONTENT_LENGTH);
        match codings_under_chunked(&fields) {
            Some(codings) => fields.insert(header::TRANSFER_ENCODING, codings),
            None => fields.remove(header::TRANSFER_ENCODING),
        };
    }
    let keep_alive = noted.persistent(version);
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = fields;
    // After a 101 the connection belongs to whoever asked for the switch: never pooled.
    let reusable =
        keep_alive && !ambiguous && framing != Framing::UntilClose && status != StatusCode::SWITCHING_PROTOCOLS;
    Ok(Some(TargetHead { response, framing, reusable }))
}

/// The transfer codings a target applied before chunked (`gzip` of `gzip, chunked`), joined
/// from every Transfer-Encoding field; None when chunked is all there is.
fn codings_under_chunked(fields: &HeaderMap) -> Option<HeaderValue> {
    let all: Vec<&[u8]> = fields
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
        .collect();
    let under = match all.split_last() {
        Some((last, rest)) if last.eq_ignore_ascii_case(b"chunked") => rest,
        _ => &all[..],
    };
    (!under.is_empty()).then(|| HeaderValue::from_bytes(&under.join(&b", "[..])).ok()).flatten()
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
        assert_eq!((p.framing, p.after), (Framing::Length(5), After::KeepAlive));
        assert_eq!(
            plan_for(Method::GET, Version::HTTP_11, 200, None, SizeHint::with_exact(3)).framing,
            Framing::Length(3)
        );
        assert_eq!(plan_for(Method::GET, Version::HTTP_11, 200, None, unknown).framing, Framing::Chunked);
        let old = plan_for(Method::GET, Version::HTTP_10, 200, None, unknown);
        assert_eq!((old.framing, old.after), (Framing::UntilClose, After::Close));
        assert_eq!(plan_for(Method::HEAD, Version::HTTP_11, 200, Some("5"), unknown).framing, Framing::Empty);
        assert_eq!(plan_for(Method::GET, Version::HTTP_11, 304, None, unknown).framing, Framing::Empty);
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

        let mut out = Vec::new();
        let p = plan(&Method::GET, Version::HTTP_11, StatusCode::NO_CONTENT, &headers, SizeHint::new(), true);
        encode_head(&mut out, StatusCode::NO_CONTENT, &headers, Version::HTTP_11, &p);
        assert!(!String::from_utf8(out).unwrap().contains("content-length"), "a 204 has no length");
        headers.insert(header::TRANSFER_ENCODING, "gzip".parse().unwrap());
        headers.remove(header::CONTENT_LENGTH);
        let mut out = Vec::new();
        let p = plan(&Method::GET, Version::HTTP_11, StatusCode::OK, &headers, SizeHint::new(), false);
        encode_head(&mut out, StatusCode::OK, &headers, Version::HTTP_11, &p);
        assert!(String::from_utf8(out).unwrap().contains("transfer-encoding: gzip, chunked\r\n"));
    }

    fn target(input: &str, method: Method) -> TargetHead {
        parse_target(&mut BytesMut::from(input.as_bytes()), &method).unwrap().unwrap()
    }

    #[test]
    fn reads_target_heads_and_their_framing() {
        let t = target("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello", Method::GET);
        assert_eq!((t.framing, t.reusable), (Framing::Length(5), true));
        assert_eq!(t.response.headers()["x-a"], "1");
        let t = target("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Method::GET);
        assert_eq!((t.framing, t.reusable), (Framing::Chunked, true));
        assert_eq!(t.response.headers()["transfer-encoding"], "gzip", "the coding under chunked stays");
        let t = target("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Method::GET);
        assert_eq!((t.framing, t.reusable), (Framing::Chunked, false), "suspect: closed after");
        let fields = t.response.headers();
        assert!(!fields.contains_key("content-length") && !fields.contains_key("transfer-encoding"), "{fields:?}");
        let t = target("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", Method::GET);
        assert!(!t.reusable, "a switched connection is never pooled");
        let t = target("HTTP/1.0 200 OK\r\n\r\n", Method::GET);
        assert_eq!((t.framing, t.reusable), (Framing::UntilClose, false));
        let t = target("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD);
        assert_eq!((t.framing, t.reusable), (Framing::Empty, true));
        let t = target("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n", Method::GET);
        assert!(!t.reusable);
        assert_eq!(target("HTTP/1.1 100 Continue\r\n\r\n", Method::POST).framing, Framing::Empty);
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        assert!(parse_target(&mut partial, &Method::GET).unwrap().is_none());
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(parse_target(&mut BytesMut::from(bad.as_bytes()), &Method::GET).is_err(), "{bad}");
        }
    }
}
