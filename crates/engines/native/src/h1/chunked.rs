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
        // The chunks after the first are read from a slice and the buffer is advanced once at
        // the end, not three times per chunk (size line, data, CRLF).
        let read_before = given - buf.len();
        let bytes = &buf[..];
        let mut used = 0;
        // Starts as `first` when a second chunk's data comes; no allocation until then.
        let mut run = BytesMut::new();
        while used < bytes.len() && read_before + used < max && first.len().max(run.len()) < max {
            let rest = &bytes[used..];
            // Between two chunks the framing usually is `\r\n1f\r\n`: one step for it
            // here, the state machine for everything else.
            match between_chunks(rest) {
                Some((size, len)) if self.state == State::DataCr => {
                    used += len;
                    self.state = State::Data(size);
                }
                _ => {
                    let (framing, outcome) = self.read_framing(rest);
                    used += framing;
                    match outcome {
                        None => {}
                        Some(Ok(Decoded::Trailers(fields))) => {
                            self.held = Some(Box::new(fields));
                            break;
                        }
                        // More is needed, the body ended or the framing broke: the state
                        // says so again on the next call.
                        Some(_) => break,
                    }
                }
            }
            let take = self.take_data(bytes.len() - used);
            if run.is_empty() && take > 0 {
                run.reserve(max.min(first.len() + bytes.len()));
                run.extend_from_slice(&first);
            }
            run.extend_from_slice(&bytes[used..used + take]);
            used += take;
        }
        buf.advance(used);
        Ok(Decoded::Data(if run.is_empty() { first } else { run.freeze() }))
    }

    /// Consumes framing from the front of `buf` and returns the next piece of the body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        if let Some(trailers) = self.held.take() {
            return Ok(Decoded::Trailers(*trailers));
        }
        let (framing, outcome) = self.read_framing(buf);
        buf.advance(framing);
        if let Some(decoded) = outcome {
            return decoded;
        }
        let take = self.take_data(buf.len());
        Ok(Decoded::Data(buf.split_to(take).freeze()))
    }

    /// Reads framing from the front of `bytes` up to the next chunk data: how many bytes it
    /// took, and `None` when chunk data follows them, otherwise what [`Decoder::decode`]
    /// returns.
    fn read_framing(&mut self, bytes: &[u8]) -> (usize, Option<Result<Decoded, ChunkError>>) {
        let mut used = 0;
        loop {
            let rest = &bytes[used..];
            match self.state {
                State::Done => return (used, Some(Ok(Decoded::End))),
                State::Failed => return (used, Some(Err(ChunkError))),
                State::Data(_) if rest.is_empty() => return (used, Some(Ok(Decoded::NeedMore))),
                State::Data(_) => return (used, None),
                // The usual framing, `\r\n` after data and a plain `1f\r\n` size line (below),
                // in one step each rather than a step per byte.
                State::DataCr if rest.starts_with(b"\r\n") => {
                    used += 2;
                    self.state = NEXT_SIZE;
                }
                State::Trailers => {
                    let (len, trailers) = self.trailers(rest);
                    if trailers.is_err() {
                        self.state = State::Failed;
                    }
                    return (used + len, Some(trailers));
                }
                state => {
                    let plain = if state == NEXT_SIZE { plain_size_line(rest) } else { None };
                    if let Some((size, len)) = plain {
                        used += len;
                        self.state = if size == 0 { State::Trailers } else { State::Data(size) };
                        continue;
                    }
                    let Some(&byte) = rest.first() else {
                        return (used, Some(Ok(Decoded::NeedMore)));
                    };
                    used += 1;
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

    /// The trailer section at the front of `bytes`: how many bytes it took, and the outcome.
    fn trailers(&mut self, bytes: &[u8]) -> (usize, Result<Decoded, ChunkError>) {
        if bytes.starts_with(b"\r\n") {
            self.state = State::Done;
            return (2, Ok(Decoded::End));
        }
        if bytes.len() < 2 {
            return (0, Ok(Decoded::NeedMore));
        }
        let mut fields = [httparse::EMPTY_HEADER; 32];
        match httparse::parse_headers(bytes, &mut fields) {
            Ok(httparse::Status::Complete((len, parsed))) if len <= MAX_TRAILERS => {
                // httparse takes a bare LF as a line end; the framing of a body does not.
                if bytes[..len].iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r')) {
                    return (0, Err(ChunkError));
                }
                let mut trailers = HeaderMap::with_capacity(parsed.len());
                for field in parsed {
                    let Ok(name) = http::HeaderName::from_bytes(field.name.as_bytes()) else {
                        return (0, Err(ChunkError));
                    };
                    let Ok(value) = http::HeaderValue::from_bytes(field.value) else { return (0, Err(ChunkError)) };
                    if !FORBIDDEN_TRAILERS.contains(&name.as_str()) {
                        trailers.append(name, value);
                    }
                }
                self.state = State::Done;
                // Only forbidden fields: no trailers at all (found by fuzzing).
                (len, Ok(if trailers.is_empty() { Decoded::End } else { Decoded::Trailers(trailers) }))
            }
            Ok(httparse::Status::Partial) if bytes.len() <= MAX_TRAILERS => (0, Ok(Decoded::NeedMore)),
            _ => (0, Err(ChunkError)),
        }
    }
}

/// A size line of hex digits and CRLF alone, short enough to be under the size limit: its
/// size and length. Anything else (extensions, blanks, a line cut short) is for [`step`].
fn plain_size_line(buf: &[u8]) -> Option<(u64, usize)> {
    const MAX_DIGITS: usize = 13; // 16^13 = 2^52, under MAX_CHUNK_SIZE
    let mut size = 0;
    let mut digits = 0;
    while let Some(value) = buf.get(digits).and_then(|&b| hex_digit(b)) {
        if digits == MAX_DIGITS {
            return None;
        }
        size = size << 4 | value;
        digits += 1;
    }
    (digits > 0 && buf.get(digits..digits + 2) == Some(b"\r\n")).then_some((size, digits + 2))
}

/// The framing between two chunks in its usual shape: the CRLF after one chunk's data and a
/// plain size line of a next chunk that is not the last. The next chunk's size and the
/// framing's length.
fn between_chunks(bytes: &[u8]) -> Option<(u64, usize)> {
    let (size, len) = plain_size_line(bytes.strip_prefix(b"\r\n")?)?;
    (size > 0).then_some((size, len + 2))
}

/// The value of a hex digit; `None` for any other byte.
fn hex_digit(byte: u8) -> Option<u64> {
    let value = match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        b'A'..=b'F' => byte - b'A' + 10,
        _ => return None,
    };
    Some(u64::from(value))
}

/// One byte of framing outside chunk data.
fn step(state: State, byte: u8) -> Result<State, ChunkError> {
    use SizePart::{Blank, Digits, Extension};
    Ok(match (state, byte) {
        (State::Size { line, .. }, _) if line >= MAX_SIZE_LINE => return Err(ChunkError),
        (State::Size { value, digits, part: Digits, line }, b) if b.is_ascii_hexdigit() => {
            let value = value << 4 | hex_digit(b).unwrap_or(0);
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

    type Decoding = Result<(Vec<u8>, Option<HeaderMap>, Bytes), ChunkError>;

    /// Decodes `input` fed `step` bytes at a time; returns the body, the trailers and what
    /// was left in the buffer.
    fn decode_in_steps(input: &[u8], step: usize) -> Decoding {
        decode_with(input, step, None)
    }

    /// Like `decode_in_steps`, with [`Decoder::decode_run`] (`run` bytes at most) when given.
    fn decode_with(input: &[u8], step: usize, run: Option<usize>) -> Decoding {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = input.chunks(step);
        loop {
            let decoded = match run {
                Some(max) => decoder.decode_run(&mut buf, max)?,
                None => decoder.decode(&mut buf)?,
            };
            match decoded {
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

    /// Runs of chunks, fed in any split and bounded at any size, decode to what the
    /// byte-by-byte state machine makes of them, and break where it breaks: the usual framing
    /// between chunks takes a shorter way through `decode_run`.
    #[test]
    fn runs_agree_with_the_state_machine_in_any_split() {
        let inputs: [&[u8]; 12] = [
            b"1\r\na\r\n2\r\nbc\r\nA\r\n0123456789\r\nf\r\n0123456789abcde\r\n0\r\n\r\n",
            b"1\r\na\r\n1;ext=1\r\nb\r\n1 \r\nc\r\n0\r\n\r\n",
            b"1\r\na\r\n00000000000000001\r\nb\r\n0\r\n\r\n",
            b"1\r\na\r\n1\r\nb\r\n0\r\nX-Sum: 1\r\n\r\n",
            b"1\r\na\r\n0;last\r\n\r\n",
            b"1\r\na\n1\r\nb\r\n0\r\n\r\n",
            b"1\r\na\r\n1\nb\r\n0\r\n\r\n",
            b"1\r\na\r\nfffffffffffffff\r\n",
            b"1\r\na\r\n\r\nb\r\n",
            b"1\r\na\r\n-1\r\nb\r\n",
            b"1\r\nab\r\n0\r\n\r\n",
            b"1\r\na\r\n1\r\n",
        ];
        for input in inputs {
            let text = String::from_utf8_lossy(input);
            let machine = decode_in_steps(input, 1).map(|(body, trailers, _)| (body, trailers));
            for step in 1..=input.len() {
                for max in [1, 3, 16 * 1024] {
                    let run = decode_with(input, step, Some(max)).map(|(body, trailers, _)| (body, trailers));
                    assert_eq!(run, machine, "{text:?} in steps of {step}, runs of {max}");
                }
            }
        }
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
