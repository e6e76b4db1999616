//! Bodies read whole before they are passed on (kamal-proxy's `--buffer-requests` and
//! `--buffer-responses`): in memory up to a limit, then in a temp file that is unlinked as
//! soon as it is made, so nothing is left behind by a crash.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};

use crate::body::BoxError;

/// How long a body being buffered may send nothing before it is given up.
const IDLE: Duration = Duration::from_secs(60);
/// Bytes read from a spilled buffer at a time.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BufferError {
    #[error("the body is larger than the service allows")]
    TooLarge,
    #[error("the body stopped arriving for {0:?}")]
    Idle(Duration),
    #[error("reading the body: {0}")]
    Read(BoxError),
    #[error("the buffer file: {0}")]
    File(#[from] io::Error),
}

/// A body read whole.
pub(crate) struct Buffered {
    kind: Kind,
}

enum Kind {
    Memory(Option<Bytes>),
    File { file: tokio::fs::File, remaining: u64, chunk: BytesMut },
}

/// Reads `body` to its end: up to `memory` bytes in memory, the rest in a temp file; more
/// than `limit` bytes is [`BufferError::TooLarge`].
pub(crate) async fn read_whole<B>(body: B, memory: u64, limit: Option<u64>) -> Result<Buffered, BufferError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut held = BytesMut::new();
    let mut file: Option<tokio::fs::File> = None;
    let mut len = 0u64;
    loop {
        let frame = match tokio::time::timeout(IDLE, body.frame()).await {
            Err(_) => return Err(BufferError::Idle(IDLE)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BufferError::Read(e.into())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue }; // trailers are not kept
        len += data.len() as u64;
        if limit.is_some_and(|limit| len > limit) {
            return Err(BufferError::TooLarge);
        }
        match &mut file {
            Some(file) => file.write_all(&data).await?,
            None if held.len() as u64 + data.len() as u64 <= memory => held.extend_from_slice(&data),
            None => {
                let mut spill = temp_file().await?;
                spill.write_all(&held).await?;
                spill.write_all(&data).await?;
                held = BytesMut::new();
                file = Some(spill);
            }
        }
    }
    let kind = match file {
        None => Kind::Memory(Some(held.freeze())),
        Some(mut file) => {
            file.flush().await?;
            file.seek(io::SeekFrom::Start(0)).await?;
            Kind::File { file, remaining: len, chunk: BytesMut::new() }
        }
    };
    Ok(Buffered { kind })
}

/// A new file in the temp folder, already unlinked.
async fn temp_file() -> io::Result<tokio::fs::File> {
    let dir = std::env::temp_dir();
    loop {
        let path = dir.join(format!("gatehouse-buffer-{}-{:016x}", std::process::id(), fastrand::u64(..)));
        match tokio::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).await {
            Ok(file) => {
                tokio::fs::remove_file(&path).await?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Body for Buffered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Memory(data) => Poll::Ready(data.take().filter(|d| !d.is_empty()).map(|d| Ok(Frame::data(d)))),
            Kind::File { file, remaining, chunk } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                chunk.resize(CHUNK.min(*remaining as usize), 0);
                let mut buf = ReadBuf::new(chunk);
                match Pin::new(file).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        Poll::Ready(Some(Err("the buffer file ended early".into())))
                    }
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        *remaining -= n as u64;
                        Poll::Ready(Some(Ok(Frame::data(chunk.split_to(n).freeze()))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Memory(data) => data.as_ref().is_none_or(Bytes::is_empty),
            Kind::File { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let left = match &self.kind {
            Kind::Memory(data) => data.as_ref().map_or(0, |d| d.len() as u64),
            Kind::File { remaining, .. } => *remaining,
        };
        SizeHint::with_exact(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A body that yields the given parts, one frame each.
    struct Parts(VecDeque<Bytes>);

    impl Body for Parts {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> Parts {
        Parts(parts.iter().map(|p| Bytes::from_static(p)).collect())
    }

    #[tokio::test]
    async fn small_bodies_stay_in_memory_large_ones_spill_and_limits_hold() {
        let small = read_whole(chunks(&[b"ab", b"cd"]), 10, None).await.unwrap();
        assert_eq!(small.size_hint().exact(), Some(4));
        assert_eq!(&small.collect().await.unwrap().to_bytes()[..], b"abcd");

        static X: [u8; 40_000] = [b'x'; 40_000];
        static Y: [u8; 40_000] = [b'y'; 40_000];
        static Z: [u8; 100_000] = [b'z'; 100_000];
        let big: Vec<&'static [u8]> = vec![&X, &Y, &Z];
        let spilled = read_whole(chunks(&big), 50_000, None).await.unwrap();
        assert!(matches!(spilled.kind, Kind::File { .. }));
        let bytes = spilled.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 180_000);
        assert_eq!((bytes[0], bytes[40_000], bytes[179_999]), (b'x', b'y', b'z'));

        assert!(matches!(read_whole(chunks(&big), 1000, Some(100_000)).await, Err(BufferError::TooLarge)));
        let empty = read_whole(chunks(&[]), 10, None).await.unwrap();
        assert!(empty.is_end_stream() && empty.size_hint().exact() == Some(0));
    }
}
