//! Requests: reading clients' heads (httparse's strict parse plus the framing rules of an
//! edge proxy), and writing heads for targets.
//!
//! A head is refused (400, connection closed, nothing forwarded) when its body framing is
//! ambiguous: `Content-Length` with `Transfer-Encoding`, a `Transfer-Encoding` other than a
//! single `chunked`, `Transfer-Encoding` on HTTP/1.0, several or unreadable lengths. These are
//! nginx's rules; RFC 9112 §6.1 would let chunked win, which is how requests get smuggled
//! past a proxy that reads them differently from the target behind it.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};

use super::Framing;

/// Largest request head (request line and headers) accepted; larger gets 431.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// More header fields than this get 431.
pub(crate) const MAX_HEADERS: usize = 100;

#[derive(Debug)]
pub(crate) struct Head {
    pub request: Request<()>,
    pub framing: Framing,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not an HTTP/1 request head we accept (the text says why, for the 400 body).
    Malformed(&'static str),
    /// Over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`].
    TooLarge,
}

/// Takes one complete head off the front of `buf`; `Ok(None)` when more bytes are needed.
/// Header values share the head's bytes instead of copying them.
pub(crate) fn parse(buf: &mut BytesMut) -> Result<Option<Head>, HeadError> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("malformed request\n")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let base = buf.as_ptr() as usize;
    let target_text = req.path.unwrap_or_default().as_bytes();
    let target = Span::of(base, target_text);
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("malformed request\n"))?;
    check_target(target_text, &method).map_err(HeadError::Malformed)?;
    let version = if req.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let spans = FieldSpans::record(base, req.headers);
    let head = buf.split_to(len).freeze();
    let uri = with_root_path(
        Uri::from_maybe_shared(target.slice(&head)).map_err(|_| HeadError::Malformed("malformed request target\n"))?,
    );
    let (fields, noted) = spans.to_map(&head).map_err(HeadError::Malformed)?;
    let framing = framing(&noted, version)?;
    let keep_alive = noted.persistent(version);
    let expect_continue = version == Version::HTTP_11 && framing != Framing::Empty && noted.expect_continue;

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = fields;
    Ok(Some(Head { request, framing, keep_alive, expect_continue }))
}

/// An absolute-form target with no path (`http://a.test?x`) has the path `/` (RFC 9112
/// §3.2.2): made so here, once, so that everything after sees an origin-form path.
fn with_root_path(uri: Uri) -> Uri {
    let Some(query) = uri.path_and_query().and_then(|pq| pq.as_str().strip_prefix('?')) else { return uri };
    let mut parts = uri.clone().into_parts();
    match PathAndQuery::try_from(format!("/?{query}")) {
        Ok(rooted) => {
            parts.path_and_query = Some(rooted);
            Uri::from_parts(parts).unwrap_or(uri)
        }
        Err(_) => uri,
    }
}

/// The request-target rules httparse leaves to us (RFC 9112 §3.2): no fragment, no raw
/// bytes outside ASCII (they would reach the target as they are), `*` only for OPTIONS and
/// the authority form only for CONNECT.
fn check_target(target: &[u8], method: &Method) -> Result<(), &'static str> {
    if target.iter().any(|&b| b == b'#' || !b.is_ascii()) {
        return Err("invalid character in the request target\n");
    }
    let origin_or_absolute = target.starts_with(b"/") || target.windows(3).any(|w| w == b"://");
    match target {
        b"*" if method == Method::OPTIONS => Ok(()),
        b"*" => Err("the asterisk form is only for OPTIONS\n"),
        _ if origin_or_absolute || method == Method::CONNECT => Ok(()),
        _ => Err("the authority form is only for CONNECT\n"),
    }
}

/// Where a piece of a head lies in the buffer it was parsed from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    start: usize,
    len: usize,
}

impl Span {
    pub fn of(base: usize, piece: &[u8]) -> Self {
        Span { start: piece.as_ptr() as usize - base, len: piece.len() }
    }

    pub fn slice(self, head: &Bytes) -> Bytes {
        head.slice(self.start..self.start + self.len)
    }
}

/// Header fields as httparse found them, re-made over the frozen head so that values share
/// its bytes instead of being copied.
pub(crate) struct FieldSpans(Vec<(Span, Span)>);

impl FieldSpans {
    pub fn record(base: usize, parsed: &[httparse::Header<'_>]) -> Self {
        FieldSpans(parsed.iter().map(|f| (Span::of(base, f.name.as_bytes()), Span::of(base, f.value))).collect())
    }

    /// The fields as a map, and what the framing and connection rules need from them
    /// (noted on the way, so that nothing is looked up again).
    pub fn to_map(&self, head: &Bytes) -> Result<(HeaderMap, Noted), &'static str> {
        // Room for the fields a proxy adds (forwarding headers, request id).
        let mut fields = HeaderMap::with_capacity(self.0.len() + 6);
        let mut noted = Noted::default();
        for &(name, value) in &self.0 {
            let name = HeaderName::from_bytes(&head[name.start..name.start + name.len])
                .map_err(|_| "malformed header name\n")?;
            let value = HeaderValue::from_maybe_shared(value.slice(head)).map_err(|_| "malformed header value\n")?;
            noted.note(&name, &value);
            fields.append(name, value);
        }
        Ok((fields, noted))
    }
}

/// What the framing and connection rules need from a head's fields.
#[derive(Debug, Default)]
pub(crate) struct Noted {
    /// `Content-Length` fields, the first one's value (None when unreadable), and whether
    /// all agree.
    pub lengths: usize,
    pub length: Option<u64>,
    pub lengths_agree: bool,
    /// `Transfer-Encoding` fields and the last one.
    pub encodings: usize,
    pub last_encoding: Option<HeaderValue>,
    /// `Connection` tokens.
    pub close: bool,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl Noted {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if *name == header::CONTENT_LENGTH {
            let length = parse_length(value.as_bytes());
            self.lengths += 1;
            if self.lengths == 1 {
                (self.length, self.lengths_agree) = (length, true);
            } else {
                self.lengths_agree &= length == self.length;
            }
        } else if *name == header::TRANSFER_ENCODING {
            self.encodings += 1;
            self.last_encoding = Some(value.clone());
        } else if *name == header::CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',').map(trim) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if *name == header::EXPECT {
            self.expect_continue |= trim(value.as_bytes()).eq_ignore_ascii_case(b"100-continue");
        }
    }

    /// The connection may carry another message after this one.
    pub fn persistent(&self, version: Version) -> bool {
        match version {
            Version::HTTP_10 => self.keep_alive && !self.close,
            _ => !self.close,
        }
    }

    /// The last transfer coding is chunked.
    pub fn chunked_last(&self) -> bool {
        self.last_encoding
            .as_ref()
            .and_then(|v| v.as_bytes().split(|b| *b == b',').next_back())
            .is_some_and(|coding| trim(coding).eq_ignore_ascii_case(b"chunked"))
    }
}

fn framing(noted: &Noted, version: Version) -> Result<Framing, HeadError> {
    match (noted.encodings, noted.lengths) {
        (0, 0) => Ok(Framing::Empty),
        (0, 1) => match noted.length {
            Some(0) => Ok(Framing::Empty),
            Some(n) => Ok(Framing::Length(n)),
            None => Err(HeadError::Malformed("invalid Content-Length\n")),
        },
        (0, _) => Err(HeadError::Malformed("more than one Content-Length\n")),
        (_, 0) if version == Version::HTTP_10 => Err(HeadError::Malformed("Transfer-Encoding on HTTP/1.0\n")),
        (1, 0) if noted.last_encoding.as_ref().is_some_and(|v| trim(v.as_bytes()).eq_ignore_ascii_case(b"chunked")) => {
            Ok(Framing::Chunked)
        }
        (_, 0) => Err(HeadError::Malformed("unsupported Transfer-Encoding\n")),
        _ => Err(HeadError::Malformed("Content-Length with Transfer-Encoding\n")),
    }
}

/// Appends a request head for a target: origin-form target, the fields, and the framing
/// field for `framing` unless the fields carry the length already.
pub(crate) fn encode_head(out: &mut Vec<u8>, parts: &http::request::Parts, framing: Framing) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        Framing::Length(n) if !parts.headers.contains_key(header::CONTENT_LENGTH) => {
            write_field(out, b"content-length", n.to_string().as_bytes())
        }
        Framing::Chunked => write_field(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// How a request body goes to a target: by the length the client declared, else by the
/// body's exact size, else chunked.
pub(crate) fn framing_for(headers: &HeaderMap, hint: &http_body::SizeHint, ended: bool) -> Framing {
    if let Some(length) = headers.get(header::CONTENT_LENGTH).and_then(|v| parse_length(v.as_bytes())) {
        return Framing::Length(length);
    }
    match hint.exact() {
        Some(0) if ended => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

pub(crate) fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Digits only: `u64::from_str` would also take a leading `+`.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = trim(value);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &value[start..end]
}

/// A view of the bytes after a head, for tests.
#[cfg(test)]
fn parse_all(input: &[u8]) -> (Vec<Result<Head, HeadError>>, Bytes) {
    let mut buf = BytesMut::from(input);
    let mut heads = Vec::new();
    loop {
        match parse(&mut buf) {
            Ok(Some(head)) => {
                if let Framing::Length(n) = head.framing {
                    let _ = buf.split_to((n as usize).min(buf.len()));
                }
                heads.push(Ok(head));
            }
            Ok(None) => break,
            Err(e) => {
                heads.push(Err(e));
                break;
            }
        }
    }
    (heads, buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Result<Head, HeadError> {
        parse_all(input).0.into_iter().next().expect("a complete head")
    }

    #[test]
    fn reads_a_head_and_leaves_the_body() {
        let (heads, rest) = parse_all(b"POST /a?b=1 HTTP/1.1\r\nHost: h.test\r\nContent-Length: 3\r\n\r\nabcGET");
        let head = heads[0].as_ref().unwrap();
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri(), "/a?b=1");
        assert_eq!(head.request.headers()["host"], "h.test");
        assert_eq!((head.framing, head.keep_alive), (Framing::Length(3), true));
        assert_eq!(rest, "GET", "the next head waits for more bytes");
    }

    #[test]
    fn an_absolute_target_without_a_path_gets_the_root_path() {
        let head = one(b"GET http://a.test?x=1 HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
        assert_eq!(head.request.uri().path_and_query().unwrap(), "/?x=1");
        assert_eq!(head.request.uri().host(), Some("a.test"));
        let mut out = Vec::new();
        let (parts, ()) = head.request.into_parts();
        encode_head(&mut out, &parts, Framing::Empty);
        assert!(out.starts_with(b"GET /?x=1 HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&out));
        assert_eq!(one(b"GET http://a.test HTTP/1.1\r\n\r\n").unwrap().request.uri().path(), "/");
    }

    #[test]
    fn waits_for_a_whole_head_and_refuses_huge_ones() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a"[..]);
        assert!(parse(&mut buf).unwrap().is_none());
        let mut huge = BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES)).as_bytes());
        assert_eq!(parse(&mut huge).unwrap_err(), HeadError::TooLarge);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(one(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn keep_alive_follows_the_version() {
        assert!(!one(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().keep_alive);
        assert!(!one(b"GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(one(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().keep_alive);
    }

    #[test]
    fn refuses_ambiguous_framing() {
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"G@T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET /\r\n\r\n",
        ] {
            assert!(matches!(one(bad), Err(HeadError::Malformed(_))), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunked_and_expect_continue() {
        let head = one(b"PUT / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert_eq!((head.framing, head.expect_continue), (Framing::Chunked, true));
        assert!(!one(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").unwrap().expect_continue, "no body");
    }

    #[test]
    fn body_bytes_that_look_like_heads_stay_body() {
        let evil = b"GET /smuggled HTTP/1.1\r\n\r\n";
        let mut input = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", evil.len()).into_bytes();
        input.extend_from_slice(evil);
        input.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let (heads, _) = parse_all(&input);
        let targets: Vec<_> = heads.iter().map(|h| h.as_ref().unwrap().request.uri().to_string()).collect();
        assert_eq!(targets, ["/", "/next"]);
    }

    #[test]
    fn an_absolute_form_without_a_path_is_written_with_one() {
        let head = one(b"GET http://h?x HTTP/1.0\r\n\r\n").unwrap();
        let (parts, ()) = head.request.into_parts();
        let mut out = Vec::new();
        encode_head(&mut out, &parts, Framing::Empty);
        assert!(out.starts_with(b"GET /?x HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b" 42 "), Some(42));
        assert_eq!(parse_length(b"99999999999999999999"), None);
        assert_eq!(parse_length(b"-1"), None);
        assert_eq!(parse_length(b""), None);
    }
}
