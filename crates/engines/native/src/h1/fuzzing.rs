//! Entry points for fuzzers: the cargo-fuzz targets in `fuzz/` and the bounded run in this
//! crate's tests. Each takes any bytes, must never panic, and checks what its parser
//! promises beyond that.

use bytes::BytesMut;
use http::Method;

use super::chunked::{self, Decoded};
use super::read::BODY_READ;
use super::{request, response, Framing};

/// Request heads: a head that is read can be written for a target (as the request path
/// does, hop-by-hop fields removed) and read back with the same method, target and framing.
pub fn request_head(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(head)) = request::parse(&mut buf) {
        let framing = head.framing;
        let (mut parts, ()) = head.request.into_parts();
        crate::headers::remove_hop_by_hop(&mut parts.headers, false);
        let mut written = Vec::new();
        request::encode_head(&mut written, &parts, framing);
        let mut again = BytesMut::from(&written[..]);
        let reread = match request::parse(&mut again) {
            Ok(Some(reread)) => reread,
            other => panic!("a head we wrote does not read back: {other:?}\n{}", String::from_utf8_lossy(&written)),
        };
        assert_eq!(reread.request.method(), parts.method);
        let sent = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let read = reread.request.uri().path_and_query().map_or("/", |p| p.as_str());
        // An empty path (`http://a.test?x`) is written as `/`.
        assert_eq!(read.strip_prefix('/').filter(|_| sent.starts_with('?')).unwrap_or(read), sent);
        assert_eq!(reread.framing, framing);
        assert!(again.is_empty(), "nothing after the head we wrote");
        match framing {
            Framing::Length(n) => {
                let _ = buf.split_to(usize::try_from(n).unwrap_or(usize::MAX).min(buf.len()));
            }
            Framing::Chunked => return,
            Framing::Empty | Framing::UntilClose => {}
        }
    }
}

/// The chunked decoder: the same bytes give the same body and trailers however they are
/// split across reads, and a decoded body encoded again decodes to itself.
pub fn chunked_body(data: &[u8]) {
    let Some((&split, data)) = data.split_first() else { return };
    let whole = decode_in_pieces(data, data.len().max(1));
    let pieces = decode_in_pieces(data, usize::from(split).max(1));
    assert_eq!(whole, pieces, "reads split every {split} bytes decode differently");
    if let Some((body, trailers)) = whole {
        let mut encoded = Vec::new();
        chunked::encode_chunk(&mut encoded, &body);
        chunked::encode_end(&mut encoded, trailers.as_ref());
        let again = decode_in_pieces(&encoded, encoded.len());
        assert_eq!(again, Some((body, trailers)), "an encoded body does not decode to itself");
    }
}

type Body = (Vec<u8>, Option<http::HeaderMap>);

/// The body and trailers of a complete chunked body, fed `step` bytes at a time; None when
/// it is malformed or incomplete.
fn decode_in_pieces(data: &[u8], step: usize) -> Option<Body> {
    let mut decoder = chunked::Decoder::default();
    let mut buf = BytesMut::new();
    let mut pieces = data.chunks(step);
    let mut body = Vec::new();
    loop {
        match decoder.decode_run(&mut buf, BODY_READ).ok()? {
            Decoded::Data(d) => body.extend_from_slice(&d),
            Decoded::Trailers(t) => return Some((body, Some(t))),
            Decoded::End => return Some((body, None)),
            Decoded::NeedMore => buf.extend_from_slice(pieces.next()?),
        }
    }
}

/// Target response heads: never a panic, and a connection is only reusable when the body
/// has an end of its own.
pub fn response_head(data: &[u8]) {
    for method in [Method::GET, Method::HEAD] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(head)) = response::parse_target(&mut buf, &method) {
            assert!(!(head.reusable && head.framing == Framing::UntilClose));
            let fields = head.response.headers();
            assert!(
                !(fields.contains_key(http::header::TRANSFER_ENCODING)
                    && fields.contains_key(http::header::CONTENT_LENGTH))
            );
            if head.framing != Framing::Empty {
                break;
            }
        }
    }
}
