//! A request body handed from the connection task, which reads the socket, to whoever sends
//! it upstream (an upstream connection's task). One frame in flight: the connection reads
//! more only when the previous frame was taken, so a slow target slows the client down
//! instead of filling memory. Nothing is read before the body is first asked for, which is
//! when `100 Continue` goes out.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the client closed the connection before the whole body arrived")]
    Incomplete,
    #[error("malformed chunked body")]
    Malformed,
    #[error("the request body stopped arriving")]
    TimedOut,
}

#[derive(Default)]
struct Slot {
    frame: Option<Frame<Bytes>>,
    error: Option<BodyError>,
    ended: bool,
    /// The reader has asked for the body at least once.
    wanted: bool,
    reader_gone: bool,
    writer_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection's end.
pub(crate) struct Sender {
    slot: Arc<Mutex<Slot>>,
}

/// The body as the upstream request carries it.
pub(crate) struct Receiver {
    slot: Arc<Mutex<Slot>>,
    remaining: Option<u64>,
    /// The client waits for `100 Continue` before it sends the body.
    awaits_continue: bool,
}

/// A pipe for a body of `length` bytes (None: chunked).
pub(crate) fn pipe(length: Option<u64>, awaits_continue: bool) -> (Sender, Receiver) {
    let slot = Arc::new(Mutex::new(Slot::default()));
    (Sender { slot: slot.clone() }, Receiver { slot, remaining: length, awaits_continue })
}

/// Why the writer may not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReaderGone;

impl Sender {
    /// Ready when the reader wants a frame and the previous one was taken.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReaderGone>> {
        let mut slot = lock(&self.slot);
        if slot.reader_gone {
            return Poll::Ready(Err(ReaderGone));
        }
        if slot.wanted && slot.frame.is_none() {
            return Poll::Ready(Ok(()));
        }
        slot.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Call after `poll_ready` said yes.
    pub fn send(&mut self, frame: Frame<Bytes>) {
        let mut slot = lock(&self.slot);
        slot.frame = Some(frame);
        wake(slot.reader.take());
    }

    pub fn finish(self) {
        lock(&self.slot).ended = true;
    }

    pub fn fail(self, error: BodyError) {
        lock(&self.slot).error = Some(error);
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut slot = lock(&self.slot);
        slot.writer_gone = true;
        wake(slot.reader.take());
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut slot = lock(&self.slot);
        slot.reader_gone = true;
        wake(slot.writer.take());
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

impl Receiver {
    /// Ready once a body of announced length has begun to arrive (its first frame waits to
    /// be taken, or it failed), taking nothing; at once for a chunked body, which may
    /// rightly wait for the response, and for a client waiting for `100 Continue`.
    pub fn poll_begun(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        if self.awaits_continue || self.remaining.is_none_or(|n| n == 0) {
            return Poll::Ready(Ok(()));
        }
        let slot = ready!(self.poll_filled(cx));
        Poll::Ready(match slot.error {
            Some(error) => Err(error),
            None if slot.frame.is_none() && !slot.ended => Err(BodyError::Incomplete),
            None => Ok(()),
        })
    }

    /// Ready when the slot holds what a reader waits for (a frame, an error, the end, or a
    /// vanished writer); meanwhile the writer is asked for a frame.
    fn poll_filled(&self, cx: &mut Context<'_>) -> Poll<MutexGuard<'_, Slot>> {
        let mut slot = lock(&self.slot);
        slot.wanted = true;
        if slot.frame.is_some() || slot.error.is_some() || slot.ended || slot.writer_gone {
            return Poll::Ready(slot);
        }
        slot.reader = Some(cx.waker().clone());
        wake(slot.writer.take());
        Poll::Pending
    }
}

impl Body for Receiver {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut slot = ready!(self.poll_filled(cx));
        if let Some(frame) = slot.frame.take() {
            wake(slot.writer.take());
            drop(slot);
            if let (Some(data), Some(remaining)) = (frame.data_ref(), self.remaining.as_mut()) {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = slot.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if slot.ended {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Err(BodyError::Incomplete)))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining.map_or_else(SizeHint::new, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn hands_frames_over_one_at_a_time() {
        let (mut tx, mut rx) = pipe(Some(4), false);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(frame) = poll_fn(|cx| Pin::new(&mut rx).poll_frame(cx)).await {
                got.extend_from_slice(&frame.unwrap().into_data().unwrap());
            }
            (got, rx.is_end_stream())
        });
        for part in ["ab", "cd"] {
            poll_fn(|cx| tx.poll_ready(cx)).await.unwrap();
            tx.send(Frame::data(Bytes::from(part)));
        }
        poll_fn(|cx| tx.poll_ready(cx)).await.unwrap();
        tx.finish();
        assert_eq!(reader.await.unwrap(), (b"abcd".to_vec(), true));
    }

    #[tokio::test]
    async fn a_vanished_writer_is_an_error_and_a_vanished_reader_stops_the_writer() {
        let (tx, mut rx) = pipe(None, false);
        drop(tx);
        let end = poll_fn(|cx| Pin::new(&mut rx).poll_frame(cx)).await;
        assert_eq!(end.unwrap().unwrap_err(), BodyError::Incomplete);
        let (mut tx, rx) = pipe(None, false);
        drop(rx);
        assert_eq!(poll_fn(|cx| tx.poll_ready(cx)).await, Err(ReaderGone));
    }

    #[tokio::test]
    async fn a_body_has_begun_when_its_first_bytes_wait_and_chunked_or_continued_ones_at_once() {
        let (mut tx, mut rx) = pipe(Some(4), false);
        let waiting = tokio::spawn(async move {
            poll_fn(|cx| rx.poll_begun(cx)).await.unwrap();
            // Nothing was taken: the first frame is still there.
            poll_fn(|cx| Pin::new(&mut rx).poll_frame(cx)).await.unwrap().unwrap().into_data().unwrap()
        });
        // Asked for, so the connection may read.
        poll_fn(|cx| tx.poll_ready(cx)).await.unwrap();
        tx.send(Frame::data(Bytes::from("ab")));
        assert_eq!(waiting.await.unwrap(), "ab");

        let (tx, mut rx) = pipe(Some(4), false);
        tx.fail(BodyError::TimedOut);
        assert_eq!(poll_fn(|cx| rx.poll_begun(cx)).await, Err(BodyError::TimedOut));

        for (length, awaits_continue) in [(None, false), (Some(4), true), (Some(0), false)] {
            let (_tx, mut rx) = pipe(length, awaits_continue);
            assert_eq!(poll_fn(|cx| rx.poll_begun(cx)).await, Ok(()));
        }
    }
}
