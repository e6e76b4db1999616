//! Bodies streamed through the proxy, never buffered whole.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use gatehouse_model::{InFlight, Scope, Signalled};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::Pending;
use crate::buffer::Buffered;
use crate::h1;
use crate::occupancy::RequestSlot;

/// A request body as the client connection delivers it.
pub(crate) enum ClientBody {
    Empty,
    /// Read by Gatehouse's HTTP/1 server.
    H1(h1::RequestBodyPipe),
    /// An HTTP/2 stream's body, read by hyper.
    H2(Incoming),
    /// Read whole before going upstream (the service buffers requests); boxed so the
    /// common variants stay small.
    Buffered(Box<Buffered>),
}

impl ClientBody {
    /// Ready once the body has begun to arrive (see [`h1::RequestBodyPipe::poll_begun`]);
    /// an HTTP/2 stream's body at once, as its stream has limits of its own.
    pub(crate) async fn begun(&mut self) -> Result<(), h1::BodyError> {
        match self {
            ClientBody::H1(pipe) => std::future::poll_fn(|cx| pipe.poll_begun(cx)).await,
            _ => Ok(()),
        }
    }
}

/// Any error of a body passing through.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(pipe) => Pin::new(pipe).poll_frame(cx).map_err(Into::into),
            ClientBody::H2(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            ClientBody::Buffered(whole) => Pin::new(&mut **whole).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(pipe) => pipe.is_end_stream(),
            ClientBody::H2(incoming) => incoming.is_end_stream(),
            ClientBody::Buffered(whole) => whole.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(pipe) => pipe.size_hint(),
            ClientBody::H2(incoming) => incoming.size_hint(),
            ClientBody::Buffered(whole) => whole.size_hint(),
        }
    }
}

/// A client's request body on its way upstream, cut off at the service's size limit.
pub(crate) struct RequestBody {
    inner: ClientBody,
    remaining: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    #[error("request body is larger than the service allows")]
    TooLarge,
    #[error("reading the request body: {0}")]
    Client(BoxError),
}

impl RequestBody {
    pub fn new(inner: ClientBody, limit: Option<u64>) -> Self {
        RequestBody { inner, remaining: limit }
    }

    pub fn empty() -> Self {
        RequestBody { inner: ClientBody::Empty, remaining: None }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let (Some(data), Some(remaining)) = (frame.data_ref(), this.remaining.as_mut()) {
                    let len = data.len() as u64;
                    if len > *remaining {
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge)));
                    }
                    *remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(RequestBodyError::Client(e)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body on its way to the client: one Gatehouse wrote, or a target's (which
/// holds the target's in-flight count until it is done, and ends with an error, cutting the
/// client's connection or stream, when a deploy's drain timeout passes first).
pub struct ProxyBody {
    kind: Kind,
    /// The access log's record, sent when the body is done (or dropped).
    log: Option<Pending>,
    /// The request's place against the request limits, given back when the body is done.
    slot: Option<RequestSlot>,
}

enum Kind {
    Local(Option<Bytes>),
    /// A target's response read whole; the target is no longer involved.
    Buffered(Box<Buffered>),
    H1 {
        body: h1::ResponseBody,
        drain: Signalled,
    },
    H2 {
        body: Incoming,
        drain: Signalled,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("response cut: its target was drained by a deploy")]
pub(crate) struct DrainedError;

/// Polls a target's body unless its drain timeout has passed; the signal is only waited for
/// once the body itself has to wait.
fn poll_drained<B>(
    body: Pin<&mut B>,
    drain: &mut Signalled,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if drain.is_signalled() {
        return Poll::Ready(Some(Err(DrainedError.into())));
    }
    match body.poll_frame(cx) {
        Poll::Pending if Pin::new(drain).poll(cx).is_ready() => Poll::Ready(Some(Err(DrainedError.into()))),
        polled => polled.map_err(Into::into),
    }
}

impl ProxyBody {
    pub(crate) fn local(text: Bytes) -> Self {
        ProxyBody::of(Kind::Local(Some(text)))
    }

    pub(crate) fn empty() -> Self {
        ProxyBody::of(Kind::Local(None))
    }

    fn of(kind: Kind) -> Self {
        ProxyBody { kind, log: None, slot: None }
    }

    pub(crate) fn attach_log(&mut self, pending: Pending) {
        self.log = Some(pending);
    }

    pub(crate) fn hold(&mut self, slot: RequestSlot) {
        self.slot = Some(slot);
    }

    pub(crate) fn buffered(whole: Buffered) -> Self {
        ProxyBody::of(Kind::Buffered(Box::new(whole)))
    }

    pub(crate) fn h1(body: h1::ResponseBody, in_flight: InFlight) -> Self {
        ProxyBody::of(Kind::H1 { body, drain: in_flight.into_signalled(Scope::All) })
    }

    pub(crate) fn h2(body: Incoming, in_flight: InFlight) -> Self {
        ProxyBody::of(Kind::H2 { body, drain: in_flight.into_signalled(Scope::All) })
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            Kind::Buffered(whole) => Pin::new(&mut **whole).poll_frame(cx),
            Kind::H1 { body, drain } => poll_drained(Pin::new(body), drain, cx),
            Kind::H2 { body, drain } => poll_drained(Pin::new(body), drain, cx),
        };
        if let (Some(log), Poll::Ready(Some(Ok(frame)))) = (&mut this.log, &polled) {
            log.sent(frame.data_ref().map_or(0, Bytes::len));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(text) => text.is_none(),
            Kind::Buffered(whole) => whole.is_end_stream(),
            Kind::H1 { body, .. } => body.is_end_stream(),
            Kind::H2 { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(text) => SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64)),
            Kind::Buffered(whole) => whole.size_hint(),
            Kind::H1 { body, .. } => body.size_hint(),
            Kind::H2 { body, .. } => body.size_hint(),
        }
    }
}
