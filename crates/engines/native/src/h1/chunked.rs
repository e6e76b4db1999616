//! The chunked transfer coding (RFC 9112 §7.1): a strict decoder for request bodies and the
//! encoder for response bodies.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

/// Longest chunk-size line (size and extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// Chunk sizes from 2^56 on are refused at once, as HAProxy does: no body is that large,
/// and waiting for one would hold the target until a timeout.
const MAX_CHUNK_SIZE: u64 = 1 << 56;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// Fields that must not come in a trailer (RFC 9110 §6.5.1): framing, routing, connection
/// control, authentication and content description. Dropped, not forwarded: a recipient
/// that merged them into the head would be told a different story than the head told us.
const FORBIDDEN_TRAILERS: [&str; 19] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "range",
    "content-type",
    "content-encoding",
    "content-range",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "cache-control",
    "location",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line; `digits` counted to refuse a line without any.
    Size {
        value: u64,
        digits: u8,
        part: SizePart,
        line: usize,
    },
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailers,
    Done,
    /// The framing was broken; every later call says so again.
    Failed,
}

/// Where a chunk-size line is: `1f`, then optional blanks, then optional `;extensions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizePart {
    Digits,
    Blank,
    Extension,
}

const NEXT_SIZE: State = State::Size { value: 0, digits: 0, part: SizePart::Digits, line: 0 };

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes),
    /// The last chunk's trailer fields; the body has ended.
    Trailers(HeaderMap),
    /// The body has ended (no trailers).
    End,
    /// Everything in the buffer is consumed; more bytes are needed.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub(crate) struct ChunkError;

#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
    /// Trailers that came after a run of data that [`Decoder::decode_run`] returned first
    /// (an end or an error needs no holding: the state says it again).
    held: Option<Box<HeaderMap>>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: NEXT_SIZE, held: None }
    }
}

impl Decoder {
    /// Like [`Decoder::decode`], but the data of chunks that are in `buf` together comes back
    /// as one piece (up to about `max` bytes, from about `max` bytes of `buf` at most): a body
    /// sent in 1-byte chunks costs a piece per read, not a piece (and an upstream write) per
    /// chunk, each chunk's data is copied straight into the piece, and one call decodes a
    /// bounded number of chunks whatever the buffer holds.
    pub fn decode_run(&mut self, buf: &mut BytesMut, max: usize) -> Result<Decoded, ChunkError> {
        let given = buf.len();
        let first = match self.decode(buf)? {
            Decoded::Data(data) => data,
            other => return Ok(other),
        };
        let mut run: Option<BytesMut> = None;
        while !buf.is_empty() && given - buf.len() < max && first.len() + run.as_ref().map_or(0, BytesMut::len) < max {
            match self.read_framing(buf) {
                None => {
                    let take = self.take_data(buf.len());
                    run.get_or_insert_with(|| {
                        let mut run = BytesMut::with_capacity(max.min(first.len() + buf.len()));
                        run.extend_from_slice(&first);
                        run
                    })
                    .extend_from_slice(&buf[..take]);
                    buf.advance(take);
                }
                Some(Ok(Decoded::Trailers(fields))) => {
                    self.held = Some(Box::new(fields));
                    break;
                }
                // More is needed, the body ended or the framing broke: the state says so
                // again on the next call.
                Some(_) => break,
            }
        }
        Ok(Decoded::Data(run.map_or(first, BytesMut::freeze)))
    }

    /// Consumes framing from the front of `buf` and returns the next piece of the body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        if let Some(trailers) = self.held.take() {
            return Ok(Decoded::Trailers(*trailers));
        }
        if let Some(decoded) = self.read_framing(buf) {
            return decoded;
        }
        let take = self.take_data(buf.len());
        Ok(Decoded::Data(buf.split_to(take).freeze()))
    }

    /// Consumes framing up to the next chunk data: `None` when some is at the front of `buf`,
    /// otherwise what [`Decoder::decode`] returns.
    fn read_framing(&mut self, buf: &mut BytesMut) -> Option<Result<Decoded, ChunkError>> {
        loop {
            match self.state {
                State::Done => return Some(Ok(Decoded::End)),
                State::Failed => return Some(Err(ChunkError)),
                State::Data(_) if buf.is_empty() => return Some(Ok(Decoded::NeedMore)),
                State::Data(_) => return None,
                // The usual framing, `\r\n` after data and a plain `1f\r\n` size line (below),
                // in one step each rather than a step per byte.
                State::DataCr if buf.starts_with(b"\r\n") => {
                    buf.advance(2);
                    self.state = NEXT_SIZE;
                }
                State::Trailers => {
                    let trailers = self.trailers(buf);
                    if trailers.is_err() {
                        self.state = State::Failed;
                    }
                    return Some(trailers);
                }
                state => {
                    let plain = if state == NEXT_SIZE { plain_size_line(buf) } else { None };
                    if let Some((size, len)) = plain {
                        buf.advance(len);
                        self.state = if size == 0 { State::Trailers } else { State::Data(size) };
                        continue;
                    }
                    let Some(&byte) = buf.first() else {
                        return Some(Ok(Decoded::NeedMore));
                    };
                    buf.advance(1);
                    self.state = step(state, byte).unwrap_or(State::Failed);
                }
            }
        }
    }

    /// How many of the `available` bytes at the front of the buffer are the current chunk's
    /// data; the state moves past them.
    fn take_data(&mut self, available: usize) -> usize {
        let State::Data(remaining) = self.state else { return 0 };
        let take = remaining.min(available as u64);
        self.state = if take == remaining { State::DataCr } else { State::Data(remaining - take) };
        take as usize
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = State::Done;
            return Ok(Decoded::End);
        }
        if buf.len() < 2 {
            return Ok(Decoded::NeedMore);
        }
        let mut fields = [httparse::EMPTY_HEADER; 32];
        match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((len, parsed))) if len <= MAX_TRAILERS => {
                // httparse takes a bare LF as a line end; the framing of a body does not.
                if buf[..len].iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || buf[i - 1] != b'\r')) {
                    return Err(ChunkError);
                }
                let mut trailers = HeaderMap::with_capacity(parsed.len());
                for field in parsed {
                    let name = http::HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| ChunkError)?;
                    let value = http::HeaderValue::from_bytes(field.value).map_err(|_| ChunkError)?;
                    if !FORBIDDEN_TRAILERS.contains(&name.as_str()) {
                        trailers.append(name, value);
                    }
                }
                buf.advance(len);
                self.state = State::Done;
                // Only forbidden fields: no trailers at all (found by fuzzing).
                Ok(if trailers.is_empty() { Decoded::End } else { Decoded::Trailers(trailers) })
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => Ok(Decoded::NeedMore),
            _ => Err(ChunkError),
        }
    }
}

/// A size line of hex digits and CRLF alone, short enough to be under the size limit: its
/// size and length. Anything else (extensions, blanks, a line cut short) is for [`step`].
fn plain_size_line(buf: &[u8]) -> Option<(u64, usize)> {
    const MAX_DIGITS: usize = 13; // 16^13 = 2^52, under MAX_CHUNK_SIZE
    let digits = buf.iter().take(MAX_DIGITS + 1).take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_DIGITS || buf.get(digits..digits + 2) != Some(b"\r\n") {
        return None;
    }
    let size = buf[..digits].iter().fold(0u64, |size, &b| size << 4 | hex_value(b));
    Some((size, digits + 2))
}

/// The value of a hex digit (callers checked that it is one).
fn hex_value(digit: u8) -> u64 {
    (digit as char).to_digit(16).map_or(0, u64::from)
}

/// One byte of framing outside chunk data.
fn step(state: State, byte: u8) -> Result<State, ChunkError> {
    use SizePart::{Blank, Digits, Extension};
    Ok(match (state, byte) {
        (State::Size { line, .. }, _) if line >= MAX_SIZE_LINE => return Err(ChunkError),
        (State::Size { value, digits, part: Digits, line }, b) if b.is_ascii_hexdigit() => {
            let value = value << 4 | hex_value(b);
            if value >= MAX_CHUNK_SIZE {
                return Err(ChunkError);
            }
            State::Size { value, digits: digits.saturating_add(1), part: Digits, line: line + 1 }
        }
        (State::Size { digits: 0, .. }, _) => return Err(ChunkError),
        (State::Size { value, .. }, b'\r') => State::SizeLf(value),
        (State::Size { value, digits, part: Digits | Blank, line }, b' ' | b'\t') => {
            State::Size { value, digits, part: Blank, line: line + 1 }
        }
        (State::Size { value, digits, line, .. }, b';') => {
            State::Size { value, digits, part: Extension, line: line + 1 }
        }
        (State::Size { value, digits, part: Extension, line }, b) if b == b'\t' || (b' '..=b'~').contains(&b) => {
            State::Size { value, digits, part: Extension, line: line + 1 }
        }
        (State::SizeLf(0), b'\n') => State::Trailers,
        (State::SizeLf(size), b'\n') => State::Data(size),
        (State::DataCr, b'\r') => State::DataLf,
        (State::DataLf, b'\n') => NEXT_SIZE,
        _ => return Err(ChunkError),
    })
}

/// Appends one chunk carrying `data` (nothing for empty data: that would end the body).
pub(crate) fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and the trailer section.
pub(crate) fn encode_end(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed `step` bytes at a time; returns the body and the trailers.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, Bytes), ChunkError> {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = input.chunks(step);
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => return Ok((body, Some(t), buf.freeze())),
                Decoded::End => return Ok((body, None, buf.freeze())),
                Decoded::NeedMore => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return Err(ChunkError),
                },
            }
        }
    }

    #[test]
    fn decodes_in_any_split() {
        let input = b"5;name=value\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, input.len()] {
            let (body, trailers, rest) = decode_in_steps(input, step).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
            assert!(b"NEXT".starts_with(&rest), "bytes after the body are left: {rest:?}");
        }
        let (body, trailers, _) = decode_in_steps(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((body.as_slice(), trailers), (&b"abc"[..], None));
    }

    #[test]
    fn refuses_malformed_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"11111111111111111\r\n",
            b"5 5\r\n",
            b"ffffffffffffffff\r\n",
            b"100000000000000\r\n",
        ] {
            // Byte by byte, and whole (the plain size line's one step).
            for step in [1, bad.len()] {
                assert_eq!(decode_in_steps(bad, step), Err(ChunkError), "{}", String::from_utf8_lossy(bad));
            }
        }
        for (size_line, size) in [("fffffffffffff", 16u64.pow(13) - 1), ("ffffffffffffff", (1 << 56) - 1), ("0001", 1)]
        {
            let input = format!("{size_line}\r\n");
            for step in [1, input.len()] {
                let mut decoder = Decoder::default();
                let mut buf = BytesMut::new();
                for piece in input.as_bytes().chunks(step) {
                    buf.extend_from_slice(piece);
                    assert_eq!(decoder.decode(&mut buf), Ok(Decoded::NeedMore), "{size_line}");
                }
                assert_eq!(decoder.state, State::Data(size), "{size_line} in steps of {step}");
            }
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_SIZE_LINE));
        assert!(decode_in_steps(long.as_bytes(), 64).is_err());
    }

    #[test]
    fn trailers_end_with_crlf_and_never_carry_framing_or_routing() {
        let input = b"0\r\nContent-Length: 5\r\nHost: evil.test\r\nX-Sum: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (_, trailers, _) = decode_in_steps(input, 3).unwrap();
        let trailers = trailers.unwrap();
        assert_eq!(trailers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-sum"]);
        assert!(decode_in_steps(b"0\r\nX-Sum: 1\n\n", 1).is_err(), "bare LF");
        let (_, none, _) = decode_in_steps(b"0\r\nTE: x\r\n\r\n", 2).unwrap();
        assert!(none.is_none(), "forbidden fields only: no trailers");
        assert!(decode_in_steps(b"0\r\nX-Sum: 1\r\n\n", 64).is_err(), "bare LF at the end");
        let (body, _, _) = decode_in_steps(b"00000000000000000005\r\nhello\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(body, b"hello", "leading zeros are not a large size");
    }

    #[test]
    fn chunks_that_arrive_together_come_out_as_one_piece() {
        let mut input: Vec<u8> = (0..1000).flat_map(|_| *b"1\r\na\r\n").collect();
        input.extend_from_slice(b"0\r\nX-Sum: 1\r\n\r\n");
        let mut buf = BytesMut::from(&input[..]);
        let mut decoder = Decoder::default();
        let Decoded::Data(run) = decoder.decode_run(&mut buf, 16 * 1024).unwrap() else { panic!("data first") };
        assert_eq!(run.len(), 1000, "one piece for a thousand chunks");
        assert!(matches!(decoder.decode_run(&mut buf, 16 * 1024), Ok(Decoded::Trailers(_))), "then the trailers");
        let mut buf = BytesMut::from(&b"1\r\na\r\n1\r\nbX"[..]);
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode_run(&mut buf, 1024), Ok(Decoded::Data(Bytes::from_static(b"ab"))));
        assert_eq!(decoder.decode_run(&mut buf, 1024), Err(ChunkError), "the error after the run is kept");
        let mut buf = BytesMut::from(&b"1\r\na\r\n1\r\nb\r\n"[..]);
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode_run(&mut buf, 1), Ok(Decoded::Data(Bytes::from_static(b"a"))), "bounded");
        let mut buf: BytesMut = (0..1000).flat_map(|_| *b"1\r\na\r\n").collect();
        let Decoded::Data(run) = Decoder::default().decode_run(&mut buf, 600).unwrap() else { panic!("data") };
        assert_eq!((run.len(), buf.len()), (101, 5396), "bounded by the framing read too (to the chunk)");
    }

    #[test]
    fn encodes_chunks_and_trailers() {
        let mut out = Vec::new();
        encode_chunk(&mut out, b"hello world, sixteen");
        encode_chunk(&mut out, b"");
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        encode_end(&mut out, Some(&trailers));
        assert_eq!(out, b"14\r\nhello world, sixteen\r\n0\r\ngrpc-status: 0\r\n\r\n");
        let (body, t, _) = decode_in_steps(&out, 5).unwrap();
        assert_eq!(body, b"hello world, sixteen");
        assert_eq!(t.unwrap()["grpc-status"], "0");
    }
}
