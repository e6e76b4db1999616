//! Reading a body off the wire in its framing, for request bodies from clients and response
//! bodies from targets alike.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::chunked::{self, Decoded};
use super::Framing;

/// How much room a read is given: a head is usually small, a body may be large.
pub(crate) const HEAD_READ: usize = 4 * 1024;
pub(crate) const BODY_READ: usize = 16 * 1024;

#[derive(Debug)]
pub(crate) enum BodyDecoder {
    Length(u64),
    Chunked(chunked::Decoder),
    /// Until the peer closes (responses only).
    UntilClose,
    Ended,
}

/// The next piece of a body.
#[derive(Debug)]
pub(crate) enum Piece {
    /// A frame; `true` when it is the last.
    Frame(Frame<Bytes>, bool),
    End,
    NeedMore,
    Malformed,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => BodyDecoder::Ended,
            Framing::Length(n) => BodyDecoder::Length(n),
            Framing::Chunked => BodyDecoder::Chunked(chunked::Decoder::default()),
            Framing::UntilClose => BodyDecoder::UntilClose,
        }
    }

    pub fn is_ended(&self) -> bool {
        matches!(self, BodyDecoder::Ended | BodyDecoder::Length(0))
    }

    /// Takes the next piece of the body off the front of `buf`.
    pub fn next(&mut self, buf: &mut BytesMut) -> Piece {
        let piece = match self {
            BodyDecoder::Ended | BodyDecoder::Length(0) => Piece::End,
            BodyDecoder::Length(_) | BodyDecoder::UntilClose if buf.is_empty() => Piece::NeedMore,
            BodyDecoder::Length(remaining) => {
                let take = (*remaining).min(buf.len() as u64);
                *remaining -= take;
                Piece::Frame(Frame::data(buf.split_to(take as usize).freeze()), *remaining == 0)
            }
            BodyDecoder::UntilClose => Piece::Frame(Frame::data(buf.split().freeze()), false),
            BodyDecoder::Chunked(decoder) => match decoder.decode_run(buf, BODY_READ) {
                Ok(Decoded::Data(data)) => Piece::Frame(Frame::data(data), false),
                Ok(Decoded::Trailers(fields)) => Piece::Frame(Frame::trailers(fields), true),
                Ok(Decoded::End) => Piece::End,
                Ok(Decoded::NeedMore) => Piece::NeedMore,
                Err(_) => Piece::Malformed,
            },
        };
        if matches!(piece, Piece::End | Piece::Frame(_, true)) {
            *self = BodyDecoder::Ended;
        }
        piece
    }

    /// The peer closed: the end of an `UntilClose` body, an error for the others.
    pub fn at_eof(&mut self) -> bool {
        let whole = matches!(self, BodyDecoder::UntilClose);
        *self = BodyDecoder::Ended;
        whole
    }
}

/// Reads more into `buf`, making room for `room` bytes when little is left; the number of
/// bytes read (0 at the end of the stream).
///
/// A head read into an empty buffer goes through a scratch array on the stack, and only what
/// arrived is copied into `buf`: a head is a few hundred bytes, an allocation that size comes
/// from the allocator's per-thread cache, while a fresh 4 KB one per message churned its slabs
/// (about a tenth of all instructions per request).
pub(crate) fn poll_fill<IO: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut IO,
    buf: &mut BytesMut,
    room: usize,
) -> Poll<io::Result<usize>> {
    let spare = buf.capacity() - buf.len();
    if spare < room / 4 && buf.is_empty() && room <= HEAD_READ {
        let mut scratch = [MaybeUninit::<u8>::uninit(); HEAD_READ];
        let mut read = ReadBuf::uninit(&mut scratch[..room]);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        return Poll::Ready(Ok(read.filled().len()));
    }
    if spare < room / 4 {
        buf.reserve(room);
    }
    pin!(io.read_buf(buf)).poll(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_framing_ends_where_it_should() {
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        let mut length = BodyDecoder::Length(4);
        assert!(matches!(length.next(&mut buf), Piece::Frame(_, true)));
        assert!(length.is_ended() && matches!(length.next(&mut buf), Piece::End));
        assert_eq!(buf, "ef", "the rest is the next message's");
        let mut close = BodyDecoder::UntilClose;
        assert!(matches!(close.next(&mut buf), Piece::Frame(_, false)));
        assert!(matches!(close.next(&mut buf), Piece::NeedMore));
        assert!(close.at_eof() && close.is_ended());
        assert!(!BodyDecoder::Length(3).at_eof(), "a short body is not whole");
        let mut chunked = BodyDecoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"0\r\n\r\n"[..]);
        assert!(matches!(chunked.next(&mut buf), Piece::End) && chunked.is_ended());
    }
}
