//! Gatehouse's HTTP/1.1 client side, for connections to targets.
//!
//! An exchange runs in the client connection's own task: the request head and body are
//! written while the response head is read, and the rest of the request body keeps flowing
//! while the response body is read (a target may answer before it has read everything).
//! A pooled connection is only its stream: no task and no buffer while it waits.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use super::read::{self, BodyDecoder, Piece};
use super::request::{encode_head, framing_for};
use super::response::{parse_target, TargetHead};
use super::write::Writer;
use crate::body::RequestBody;
use crate::upstream::{self, BoxedIo};

/// An open HTTP/1.1 connection to a target.
pub(crate) struct Connection {
    io: BoxedIo,
    /// It carried an exchange before: a failure to get any answer may only mean the target
    /// closed it while it sat in the pool.
    reused: bool,
}

impl Connection {
    pub fn new(io: BoxedIo) -> Self {
        Connection { io, reused: false }
    }

    /// An idle connection can take a request when the target has neither closed it nor
    /// sent anything on it. Looks without waiting (and without a syscall unless the socket
    /// became readable).
    pub fn is_usable(&mut self) -> bool {
        let mut scratch = [0u8; 1];
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.io).poll_read(&mut cx, &mut ReadBuf::new(&mut scratch)).is_pending()
    }
}

#[derive(thiserror::Error)]
pub(crate) enum SendError {
    /// A reused connection ended before any answer and nothing of the body was taken: the
    /// request may go out again on another connection.
    #[error("the pooled connection was closed by the target")]
    Stale(Box<Request<RequestBody>>),
    #[error("{0}")]
    Io(#[source] io::Error),
    #[error("{0}")]
    Protocol(&'static str),
}

impl std::fmt::Debug for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Sends `req` on `conn`; resolves with the response head once it has arrived. The response
/// body returns the connection to the pool under `pool_key` when it has been read to its end.
pub(crate) async fn send(
    mut conn: Connection,
    req: Request<RequestBody>,
    pool_key: Option<Arc<str>>,
) -> Result<Response<ResponseBody>, SendError> {
    let (parts, body) = req.into_parts();
    let framing = framing_for(&parts.headers, &body.size_hint(), body.is_end_stream());
    let mut head = Vec::with_capacity(512);
    encode_head(&mut head, &parts, framing);
    let mut upload = Some(Writer::new(head, body, framing));
    let mut buf = BytesMut::new();
    // The target answered something (an interim response): a failure after it is the
    // target's, not a stale pooled connection's, and the request is not sent again.
    let mut interim = false;
    let answer = poll_fn(|cx| {
        if let Some(writer) = upload.as_mut() {
            match writer.poll(cx, &mut conn.io) {
                Poll::Ready(Ok(())) => upload = None,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        loop {
            if !buf.is_empty() {
                match parse_target(&mut buf, &parts.method) {
                    // 100 Continue and other interim answers: the final one follows.
                    Ok(Some(head))
                        if head.response.status().is_informational()
                            && head.response.status() != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        interim = true;
                        continue;
                    }
                    Ok(Some(head)) => return Poll::Ready(Ok(head)),
                    Ok(None) => {}
                    Err(why) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why))),
                }
            }
            match read::poll_fill(cx, &mut conn.io, &mut buf, read::HEAD_READ) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    })
    .await;
    let TargetHead { response, framing, reusable } = match answer {
        Ok(head) => head,
        Err(e) => {
            let untouched = upload.as_ref().is_none_or(|w| !w.touched());
            if conn.reused && buf.is_empty() && untouched && !interim {
                if let Some(writer) = upload {
                    return Err(SendError::Stale(Box::new(Request::from_parts(parts, writer.into_body()))));
                }
            }
            return Err(match e.kind() {
                io::ErrorKind::InvalidData => SendError::Protocol("the target sent an invalid response head"),
                _ => SendError::Io(e),
            });
        }
    };
    let decoder = BodyDecoder::new(framing);
    conn.reused = true;
    let body = ResponseBody { conn: Some(conn), buf, decoder, upload, reusable, pool_key };
    Ok(response.map(|()| body))
}

/// A target's response body, read as the client side asks for it. When it has been read
/// to its end (and the request body was all sent), the connection goes back to the pool; a
/// body dropped half-read closes the connection instead.
pub(crate) struct ResponseBody {
    conn: Option<Connection>,
    buf: BytesMut,
    decoder: BodyDecoder,
    /// The rest of the request, when the target answered before taking all of it.
    upload: Option<Writer<RequestBody>>,
    reusable: bool,
    pool_key: Option<Arc<str>>,
}

impl ResponseBody {
    /// For `101 Switching Protocols`: the stream, and what the target sent after its head.
    pub fn into_upgraded(mut self) -> Option<(BoxedIo, Bytes)> {
        let conn = self.conn.take()?;
        Some((conn.io, std::mem::take(&mut self.buf).freeze()))
    }

    fn release(&mut self) {
        if self.decoder.is_ended() && self.upload.is_none() && self.reusable && self.buf.is_empty() {
            if let (Some(conn), Some(key)) = (self.conn.take(), self.pool_key.take()) {
                upstream::check_in(key, conn);
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(writer) = this.upload.as_mut() {
            match writer.poll(cx, &mut conn.io) {
                Poll::Ready(Ok(())) => this.upload = None,
                // The target stopped reading the request: its answer still counts, but the
                // connection is not used again.
                Poll::Ready(Err(_)) => {
                    this.upload = None;
                    this.reusable = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            match this.decoder.next(&mut this.buf) {
                Piece::Frame(frame, last) => {
                    if last {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Piece::End => {
                    this.release();
                    return Poll::Ready(None);
                }
                Piece::Malformed => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed chunked body",
                    ))));
                }
                Piece::NeedMore => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match read::poll_fill(cx, &mut conn.io, &mut this.buf, read::BODY_READ) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => {}
                Poll::Ready(result) => {
                    this.conn = None;
                    if this.decoder.at_eof() {
                        return Poll::Ready(None);
                    }
                    let e = result.err().unwrap_or_else(|| io::ErrorKind::UnexpectedEof.into());
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_ended()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            BodyDecoder::Length(n) => SizeHint::with_exact(n),
            BodyDecoder::Ended => SizeHint::with_exact(0),
            _ => SizeHint::new(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.release();
        // Dropped with the request not all sent or the response not all read: the exchange
        // is given up, and its connection closes with a reset.
        if let Some(conn) = &self.conn {
            if self.upload.is_some() || !self.decoder.is_ended() {
                conn.io.reset_on_close();
            }
        }
    }
}
