//! A guard in front of hyper's HTTP/1 parser for request smuggling.
//!
//! hyper accepts a request carrying both `Content-Length` and `Transfer-Encoding` (RFC 9112
//! §6.1 allows it: chunked wins and the length is dropped) and does not show the service that
//! the length was there. We follow nginx instead and refuse such requests, and any
//! `Transfer-Encoding` other than a single `chunked`. The guard reads every request head as
//! it arrives, follows the body framing to find the next head, and when a head breaks the
//! rule it damages that head's final line feed, so hyper itself rejects the request with 400
//! and closes the connection: the request never reaches a handler or a target.
//! It stops watching (and never alters bytes) after an upgrade or anything it cannot follow.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads larger than this are left to hyper, which answers 431.
const MAX_HEAD: usize = 64 * 1024 + 1024;
const MAX_HEADERS: usize = 128;

pub(crate) struct FramingGuard<IO> {
    io: IO,
    scanner: Scanner,
}

impl<IO> FramingGuard<IO> {
    pub fn new(io: IO) -> Self {
        FramingGuard { io, scanner: Scanner::default() }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let fresh = &mut buf.filled_mut()[before..];
        if self.scanner.feed(fresh) {
            tracing::warn!("rejected a request with ambiguous body framing (Content-Length with Transfer-Encoding, or a Transfer-Encoding other than chunked)");
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Head,
    Body(u64),
    Chunked(Chunk),
    /// Not watching any more.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { value: u64, in_extension: bool },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    Trailer { line_len: usize },
}

#[derive(Debug, Default)]
struct Scanner {
    state: State,
    /// Bytes of a head that arrived over several reads.
    pending: Vec<u8>,
}

enum Framing {
    Reject,
    Next(State),
}

impl Scanner {
    /// Follows `data`, the bytes just read. Returns true when it damaged a head to reject it.
    fn feed(&mut self, data: &mut [u8]) -> bool {
        let mut pos = 0;
        while pos < data.len() {
            match self.state {
                State::Off => return false,
                State::Head => {
                    let held = self.pending.len();
                    let parsed = if held == 0 {
                        parse_head(&data[pos..])
                    } else {
                        self.pending.extend_from_slice(&data[pos..]);
                        parse_head(&self.pending)
                    };
                    match parsed {
                        HeadParse::Complete(len, framing) => {
                            let end = pos + (len - held);
                            self.pending.clear();
                            match framing {
                                Framing::Reject => {
                                    data[end - 1] = 0;
                                    self.state = State::Off;
                                    return true;
                                }
                                Framing::Next(next) => self.state = next,
                            }
                            pos = end;
                        }
                        HeadParse::Partial => {
                            if held == 0 {
                                self.pending.extend_from_slice(&data[pos..]);
                            }
                            if self.pending.len() > MAX_HEAD {
                                self.pending = Vec::new();
                                self.state = State::Off;
                            }
                            return false;
                        }
                        HeadParse::Invalid => {
                            self.pending = Vec::new();
                            self.state = State::Off;
                            return false;
                        }
                    }
                }
                State::Body(remaining) => {
                    let take = remaining.min((data.len() - pos) as u64);
                    pos += take as usize;
                    self.state = if remaining == take { State::Head } else { State::Body(remaining - take) };
                }
                State::Chunked(Chunk::Data(remaining)) => {
                    let take = remaining.min((data.len() - pos) as u64);
                    pos += take as usize;
                    self.state =
                        State::Chunked(if remaining == take { Chunk::DataCr } else { Chunk::Data(remaining - take) });
                }
                State::Chunked(chunk) => {
                    self.state = step_chunk(chunk, data[pos]);
                    pos += 1;
                }
            }
        }
        false
    }
}

/// One byte of chunked framing outside chunk data. Lenient where hyper is strict: hyper
/// rejects what is malformed; the guard only has to keep its place.
fn step_chunk(chunk: Chunk, byte: u8) -> State {
    let next = match (chunk, byte) {
        (Chunk::Size { value, in_extension: false }, b) if b.is_ascii_hexdigit() => {
            let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
            match value.checked_mul(16).and_then(|v| v.checked_add(digit)) {
                Some(value) => Chunk::Size { value, in_extension: false },
                None => return State::Off,
            }
        }
        (Chunk::Size { value, .. }, b';') => Chunk::Size { value, in_extension: true },
        (Chunk::Size { value, .. }, b'\r') => Chunk::SizeLf { value },
        (Chunk::Size { value, .. } | Chunk::SizeLf { value }, b'\n') => {
            if value == 0 {
                Chunk::Trailer { line_len: 0 }
            } else {
                Chunk::Data(value)
            }
        }
        (Chunk::Size { value, in_extension: true }, _) => Chunk::Size { value, in_extension: true },
        (Chunk::Size { value, in_extension: false }, b' ' | b'\t') => Chunk::Size { value, in_extension: false },
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataCr | Chunk::DataLf, b'\n') => Chunk::Size { value: 0, in_extension: false },
        (Chunk::Trailer { line_len }, b'\r') => Chunk::Trailer { line_len },
        (Chunk::Trailer { line_len: 0 }, b'\n') => return State::Head,
        (Chunk::Trailer { .. }, b'\n') => Chunk::Trailer { line_len: 0 },
        (Chunk::Trailer { line_len }, _) => Chunk::Trailer { line_len: line_len + 1 },
        _ => return State::Off,
    };
    State::Chunked(next)
}

enum HeadParse {
    Complete(usize, Framing),
    Partial,
    Invalid,
}

fn parse_head(buf: &[u8]) -> HeadParse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return HeadParse::Partial,
        Err(_) => return HeadParse::Invalid,
    };
    let (mut te_count, mut te_chunked, mut cl_count, mut length, mut upgrade) = (0, false, 0, None, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_count += 1;
            te_chunked = trim(h.value).eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cl_count += 1;
            length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    let framing = if te_count > 0 && (cl_count > 0 || te_count > 1 || !te_chunked) {
        Framing::Reject
    } else if upgrade || req.method == Some("CONNECT") {
        Framing::Next(State::Off)
    } else if te_count == 1 {
        Framing::Next(State::Chunked(Chunk::Size { value: 0, in_extension: false }))
    } else {
        match (cl_count, length) {
            (0, _) | (_, Some(0)) => Framing::Next(State::Head),
            (_, Some(n)) => Framing::Next(State::Body(n)),
            // An unreadable length: hyper rejects it.
            (_, None) => Framing::Next(State::Off),
        }
    };
    HeadParse::Complete(len, framing)
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the bytes hyper would see.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut scanner = Scanner::default();
        let mut seen = Vec::new();
        let mut rejected = false;
        for piece in input.chunks(step) {
            let mut piece = piece.to_vec();
            rejected |= scanner.feed(&mut piece);
            seen.extend_from_slice(&piece);
        }
        (seen, rejected)
    }

    fn every_split(input: &[u8], expect_reject: bool) {
        for step in [1, 2, 3, 7, 16, input.len()] {
            let (seen, rejected) = run(input, step);
            assert_eq!(rejected, expect_reject, "step {step}");
            if !expect_reject {
                assert_eq!(seen, input, "step {step}: bytes must pass untouched");
            }
        }
    }

    #[test]
    fn plain_requests_pass_untouched() {
        every_split(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", false);
    }

    #[test]
    fn rejects_length_with_chunked() {
        every_split(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            true,
        );
        every_split(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", true);
    }

    #[test]
    fn rejects_odd_transfer_encodings() {
        every_split(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", true);
        every_split(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            true,
        );
    }

    #[test]
    fn damage_lands_in_the_head() {
        let input = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (seen, _) = run(input, input.len());
        assert_eq!(seen.iter().filter(|b| **b == 0).count(), 1);
        assert!(httparse::Request::new(&mut [httparse::EMPTY_HEADER; 8]).parse(&seen).is_err());
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        // Bodies that look like smuggled heads are body bytes, not heads.
        let evil = b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut input = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", evil.len()).into_bytes();
        input.extend_from_slice(evil);
        input.extend_from_slice(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        input.extend_from_slice(format!("{:x};ext=1\r\n", evil.len()).as_bytes());
        input.extend_from_slice(evil);
        input.extend_from_slice(b"\r\n0\r\nX-Trailer: 1\r\n\r\n");
        every_split(&input, false);
        // ...and still catch a bad head after them.
        input.extend_from_slice(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        every_split(&input, true);
    }

    #[test]
    fn stops_after_an_upgrade() {
        let mut input = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_vec();
        input.extend_from_slice(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        every_split(&input, false);
    }

    #[test]
    fn leaves_garbage_to_hyper() {
        every_split(
            b"G@T / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
    }
}
