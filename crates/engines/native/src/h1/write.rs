//! Writing a message (head already encoded, then its body) in the body's framing. Frames that
//! are ready together go out in one write; nothing is buffered past [`WRITE_AT`].

use std::error::Error;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::io::AsyncWrite;

use super::{chunked, Framing};

/// A write is made once this much is buffered, or when the body has nothing ready.
const WRITE_AT: usize = 16 * 1024;

/// A message on its way out: the encoded bytes not yet written, and the body still to encode.
pub(crate) struct Writer<B> {
    out: Vec<u8>,
    sent: usize,
    /// Bytes written so far, all told.
    written: u64,
    body: B,
    framing: Framing,
    ended: bool,
    /// A frame was taken from the body: it cannot be sent again elsewhere.
    touched: bool,
}

impl<B> Writer<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    pub fn new(head: Vec<u8>, body: B, framing: Framing) -> Self {
        let ended = framing == Framing::Empty;
        Writer { out: head, sent: 0, written: 0, body, framing, ended, touched: false }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn touched(&self) -> bool {
        self.touched
    }

    /// The body, untouched when [`Writer::touched`] is false.
    pub fn into_body(self) -> B {
        self.body
    }

    /// Ready once the whole message is written and flushed. A body that breaks off, or says
    /// more or less than its declared length, is an error: the receiver must not take a
    /// short message for a whole one.
    pub fn poll<IO: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, io: &mut IO) -> Poll<io::Result<()>> {
        loop {
            let mut body_waiting = false;
            while !self.ended && self.out.len() - self.sent < WRITE_AT {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Pending => {
                        body_waiting = true;
                        break;
                    }
                    Poll::Ready(frame) => {
                        self.touched = true;
                        self.encode(frame)?;
                    }
                }
            }
            if self.sent < self.out.len() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.out[self.sent..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.sent += n;
                self.written += n as u64;
                if self.sent == self.out.len() {
                    self.out.clear();
                    self.sent = 0;
                }
                continue;
            }
            // All encoded so far is written: push it out of any buffering layer (TLS) before
            // waiting for more of the body, or before the next message.
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            if body_waiting {
                return Poll::Pending;
            }
        }
    }

    fn encode(&mut self, frame: Option<Result<Frame<Bytes>, B::Error>>) -> io::Result<()> {
        let broken = |what: &str| io::Error::other(format!("body {what}"));
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => match &mut self.framing {
                    Framing::Length(remaining) => {
                        if data.len() as u64 > *remaining {
                            return Err(broken("longer than its Content-Length"));
                        }
                        *remaining -= data.len() as u64;
                        self.out.extend_from_slice(&data);
                        if *remaining == 0 && self.body.is_end_stream() {
                            self.ended = true;
                        }
                    }
                    Framing::Chunked => chunked::encode_chunk(&mut self.out, &data),
                    Framing::UntilClose => self.out.extend_from_slice(&data),
                    Framing::Empty => {}
                },
                Err(frame) => {
                    if let (Framing::Chunked, Ok(trailers)) = (self.framing, frame.into_trailers()) {
                        chunked::encode_end(&mut self.out, Some(&trailers));
                        self.ended = true;
                    }
                }
            },
            Some(Err(e)) => return Err(io::Error::other(e)),
            None => {
                match self.framing {
                    Framing::Length(remaining) if remaining > 0 => {
                        return Err(broken("shorter than its Content-Length"))
                    }
                    Framing::Chunked => chunked::encode_end(&mut self.out, None),
                    _ => {}
                }
                self.ended = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::future::poll_fn;

    /// A body of ready frames.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn frames(parts: &[&'static str]) -> Frames {
        Frames(parts.iter().map(|p| Frame::data(Bytes::from_static(p.as_bytes()))).collect())
    }

    async fn write(body: Frames, framing: Framing) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut writer = Writer::new(b"H\r\n\r\n".to_vec(), body, framing);
        poll_fn(|cx| writer.poll(cx, &mut out)).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn writes_each_framing() {
        assert_eq!(write(frames(&["ab", "c"]), Framing::Length(3)).await.unwrap(), b"H\r\n\r\nabc");
        assert_eq!(
            write(frames(&["ab", "c"]), Framing::Chunked).await.unwrap(),
            b"H\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
        );
        assert_eq!(write(frames(&["ab"]), Framing::UntilClose).await.unwrap(), b"H\r\n\r\nab");
        assert_eq!(write(frames(&[]), Framing::Empty).await.unwrap(), b"H\r\n\r\n");
        let mut with_trailers = frames(&["x"]);
        let mut fields = http::HeaderMap::new();
        fields.insert("grpc-status", "0".parse().unwrap());
        with_trailers.0.push_back(Frame::trailers(fields));
        let out = write(with_trailers, Framing::Chunked).await.unwrap();
        assert_eq!(out, b"H\r\n\r\n1\r\nx\r\n0\r\ngrpc-status: 0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_body_that_breaks_its_length_is_an_error() {
        assert!(write(frames(&["abcd"]), Framing::Length(3)).await.is_err());
        assert!(write(frames(&["ab"]), Framing::Length(3)).await.is_err());
    }
}
