//! One client connection: read a head, hand the request to the handler while the body is
//! read on demand, write the response, and between requests hold no buffer at all.
//!
//! An idle keep-alive connection costs its task, its socket registration and a few words of
//! state: the read buffer is released once a request has been read and its body handed on,
//! and the write buffer lives only while a response is written (hyper's server kept 16 KB per
//! connection). The exchange itself runs in a boxed future so the idle task stays small.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Response, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::pipe::{self, BodyError};
use super::read::{self, BodyDecoder, Piece};
use super::request::{self, Head, HeadError};
use super::response::{self, After};
use super::write::Writer;
use super::Framing;
use crate::body::{ClientBody, ProxyBody};
use crate::handler::{self, ConnInfo};
use crate::heavy;
use crate::local::LocalError;

/// After refusing a request whose body is still arriving, read and drop this much (or for
/// this long) before closing, so the client sees the answer instead of a reset.
const LINGER_BYTES: usize = 1 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);
/// While lingering, the worker wakes for a client's bytes once this many wait (or it
/// closed): an upload sent 4 KiB at a time could wake it for each packet, 256 times per MiB.
const DISCARD_WAKE: usize = 64 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// A body of announced length goes to the handler (and is routed) once this much of it, or
/// all of it when it is shorter, has arrived: a client that trickles its body ties up no
/// target, as with nginx's request buffering and HAProxy's `http-buffer-request`.
const FIRST_PIECE: u64 = read::BODY_READ as u64;

/// Bytes of answers the client has not taken (sent and not acknowledged: beyond what its
/// receive window holds) past which no further request of its is read. A client that
/// pipelines requests and never reads would otherwise have the proxy, and the target, work
/// through every one of them as fast as the kernel's buffers take the answers.
const UNTAKEN_ANSWERS: usize = 64 * 1024;

/// Framing bytes in one piece of a chunked body above which the piece is heavy work (see
/// [`heavy`]): 16 KiB of 1-byte chunks carry 13.6 KiB of framing, of 100-byte chunks about
/// 1 KiB, of 8 KiB chunks 16 bytes.
const DENSE_FRAMING: usize = 1024;

/// A client stream the HTTP/1 server can run on.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// Ready when a read would find bytes, without holding a buffer while waiting. Streams
    /// that buffer internally (TLS) are always ready and simply read.
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// Bytes written that the client has not acknowledged yet (None: not known).
    fn untaken(&self) -> Option<usize> {
        None
    }

    /// From now on, wakes a reader only once `bytes` wait or the client closed, not for
    /// every packet (where the stream can).
    fn wake_after(&self, bytes: usize) {
        let _ = bytes;
    }

    /// Drops up to about `max` bytes the client sent (Ok(0): it closed). A socket drops them
    /// in the kernel without copying; other streams read them into `scratch`.
    fn poll_discard(&mut self, cx: &mut Context<'_>, scratch: &mut BytesMut, max: usize) -> Poll<io::Result<usize>> {
        scratch.clear();
        read::poll_fill(cx, self, scratch, max.min(read::BODY_READ))
    }
}

impl Transport for TcpStream {
    fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn untaken(&self) -> Option<usize> {
        use std::os::fd::AsRawFd;
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ on a socket) writes one int through the pointer, which
        // outlives the call.
        let done = unsafe { libc::ioctl(self.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        (done == 0).then(|| usize::try_from(queued).unwrap_or(0))
    }

    fn wake_after(&self, bytes: usize) {
        use std::os::fd::AsRawFd;
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_RCVLOWAT reads one int through the pointer, which outlives the call.
        unsafe {
            libc::setsockopt(self.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, (&raw const bytes).cast(), size)
        };
    }

    fn poll_discard(&mut self, cx: &mut Context<'_>, _scratch: &mut BytesMut, max: usize) -> Poll<io::Result<usize>> {
        use std::os::fd::AsRawFd;
        let fd = self.as_raw_fd();
        loop {
            ready!(self.poll_read_ready(cx))?;
            let dropped = self.try_io(tokio::io::Interest::READABLE, || {
                // SAFETY: with MSG_TRUNC a TCP socket drops the bytes and writes nothing
                // through the (null) buffer, see tcp(7).
                let n = unsafe { libc::recv(fd, std::ptr::null_mut(), max, libc::MSG_TRUNC | libc::MSG_DONTWAIT) };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match dropped {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn untaken(&self) -> Option<usize> {
        self.get_ref().0.untaken()
    }

    fn wake_after(&self, bytes: usize) {
        self.get_ref().0.wake_after(bytes);
    }

    /// The records are dropped undecrypted: the connection is closing and nothing after
    /// this is read.
    fn poll_discard(&mut self, cx: &mut Context<'_>, scratch: &mut BytesMut, max: usize) -> Poll<io::Result<usize>> {
        self.get_mut().0.poll_discard(cx, scratch, max)
    }
}

/// Serves HTTP/1.1 on `io` until the client leaves, an exchange ends the connection, or
/// the worker stops (the request in flight finishes first).
pub(crate) async fn serve<IO: Transport>(io: IO, conn: ConnInfo, stopped: crate::listen::Stopped) {
    let limits = &conn.shared.limits;
    let mut c = Connection {
        io,
        buf: BytesMut::new(),
        scanned: 0,
        response_timer: None,
        send_timeout: limits.send_timeout,
        body_timeout: limits.body_timeout,
    };
    // One timer for the life of the connection: pushing its deadline later is cheap, while
    // a new timer per request costs a registration and a removal.
    let mut deadline = pin!(tokio::time::sleep(limits.head_timeout));
    let mut stop = pin!(crate::listen::stop_closes_idle(stopped.clone()));
    // The first head's time counts from the connection's start, later ones from their
    // first byte (before it, the connection is an idle keep-alive one).
    let mut idle = false;
    loop {
        let wait = if idle && c.buf.is_empty() { limits.keepalive_timeout } else { limits.head_timeout };
        deadline.as_mut().reset(tokio::time::Instant::now() + wait);
        let head = loop {
            let read = tokio::select! {
                // The head first: when it is there, the timer and the stop signal need no look.
                biased;
                read = c.read_head() => read,
                () = deadline.as_mut() => {
                    if c.buf.is_empty() {
                        return;
                    }
                    // A head begun and not finished in time: say so, as HAProxy does.
                    return Box::pin(c.refuse(LocalError::HeadTimeout, &conn)).await;
                }
                () = stop.as_mut() => return,
            };
            match read {
                Ok(Read::Head(head)) => break head,
                Ok(Read::Started) if idle => {
                    deadline.as_mut().reset(tokio::time::Instant::now() + limits.head_timeout);
                }
                Ok(Read::Started) => {}
                // Closed between requests, or reset.
                Ok(Read::Closed) | Err(ReadError::Io) => return,
                Err(ReadError::Head(e)) => {
                    let refused = match e {
                        HeadError::Malformed(why) => LocalError::Malformed(why),
                        HeadError::TooLarge => LocalError::HeadersTooLarge,
                    };
                    return Box::pin(c.refuse(refused, &conn)).await;
                }
            }
        };
        match Box::pin(c.exchange(head, &conn, &stopped)).await {
            After::KeepAlive => {
                let taken = tokio::select! {
                    taken = c.client_takes_answers() => taken,
                    () = stop.as_mut() => return,
                };
                if !taken {
                    conn.shared.metrics.proxy_error("response_stalled");
                    return;
                }
                if c.buf.is_empty() {
                    // Let the buffer go (the request's header values may still share it).
                    c.buf = BytesMut::new();
                }
                idle = true;
            }
            After::Close | After::Upgrade => return,
        }
    }
}

enum ReadError {
    Head(HeadError),
    Io,
}

// Returned, never stored: boxing the head would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Read {
    Head(Head),
    /// The first bytes of a head arrived on an empty buffer, not yet the whole head.
    Started,
    /// The client closed cleanly between requests.
    Closed,
}

struct Connection<IO> {
    io: IO,
    /// Bytes read and not yet used: part of a head, or body bytes, or a pipelined request.
    buf: BytesMut,
    /// How much of a partial head in `buf` has been looked at for its end: a head sent a
    /// few bytes at a time is parsed once it is whole, not again at every read.
    scanned: usize,
    /// Times the wait for each target's answer (see `handler::ResponseTimer`); made on the
    /// first request that needs it.
    response_timer: Option<Pin<Box<Sleep>>>,
    /// See [`gatehouse_model::EdgeLimits`].
    send_timeout: Duration,
    body_timeout: Duration,
}

impl<IO: Transport> Connection<IO> {
    /// The next request head, or word that one has begun and is not whole yet (a head that
    /// arrives in one read, nearly all, comes back at once: no timer is touched for it).
    async fn read_head(&mut self) -> Result<Read, ReadError> {
        // This call put the first bytes into an empty buffer.
        let mut began = false;
        loop {
            if self.buf.is_empty() {
                poll_fn(|cx| self.io.poll_idle(cx)).await.map_err(|_| ReadError::Io)?;
            } else if self.head_may_be_whole() {
                match request::parse(&mut self.buf).map_err(ReadError::Head)? {
                    Some(head) => {
                        self.scanned = 0;
                        return Ok(Read::Head(head));
                    }
                    None => self.scanned = self.buf.len(),
                }
                if began {
                    return Ok(Read::Started);
                }
            } else if self.buf.len() > request::MAX_HEAD_BYTES {
                return Err(ReadError::Head(HeadError::TooLarge));
            }
            let was_empty = self.buf.is_empty();
            match poll_fn(|cx| read::poll_fill(cx, &mut self.io, &mut self.buf, read::HEAD_READ)).await {
                Ok(0) if self.buf.is_empty() => return Ok(Read::Closed),
                Ok(0) | Err(_) => return Err(ReadError::Io),
                Ok(_) => began |= was_empty,
            }
        }
    }

    /// Waits until the client has taken all but [`UNTAKEN_ANSWERS`] of the answers sent to
    /// it (at once, nearly always); false when it took nothing for the send timeout. Polled:
    /// the kernel signals no wakeup for acknowledgements.
    async fn client_takes_answers(&self) -> bool {
        let Some(mut untaken) = self.io.untaken().filter(|&n| n > UNTAKEN_ANSWERS) else {
            return true;
        };
        let mut deadline = tokio::time::Instant::now() + self.send_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            tokio::time::sleep(pause).await;
            let Some(now_untaken) = self.io.untaken().filter(|&n| n > UNTAKEN_ANSWERS) else {
                return true;
            };
            let now = tokio::time::Instant::now();
            if now_untaken < untaken {
                (untaken, deadline) = (now_untaken, now + self.send_timeout);
            } else if now >= deadline {
                return false;
            }
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Whether the bytes added since the last parse may end the head (an empty line): the
    /// first look parses at once (most heads arrive whole); later looks scan only new bytes.
    fn head_may_be_whole(&self) -> bool {
        if self.scanned == 0 {
            return true;
        }
        let new = &self.buf[self.scanned.saturating_sub(2)..];
        new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n")
    }

    /// Answers a request that could not be read, and closes.
    async fn refuse(&mut self, error: LocalError, conn: &ConnInfo) {
        let response = handler::refuse(error, conn);
        let _ = self.respond(response, &Method::GET, Version::HTTP_11, false, &[], &mut None).await;
        self.close(true).await;
    }

    /// One request and its response. Returns what the connection does next.
    async fn exchange(&mut self, head: Head, conn: &ConnInfo, stopped: &crate::listen::Stopped) -> After {
        let Head { request, framing, keep_alive, expect_continue } = head;
        let (method, version) = (request.method().clone(), request.version());
        let (body, mut pump) = match framing {
            Framing::Empty => (ClientBody::Empty, None),
            framing => {
                let (tx, rx) = pipe::pipe(
                    match framing {
                        Framing::Length(n) => Some(n),
                        _ => None,
                    },
                    expect_continue,
                );
                let decode = BodyDecoder::new(framing);
                (ClientBody::H1(rx), Some(Pump::new(tx, decode, expect_continue, self.body_timeout)))
            }
        };
        let (response, tunnel) = {
            let timer = self.response_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::ZERO)));
            let mut handling = pin!(handler::handle(request.map(|()| body), conn, Some(timer.as_mut())));
            poll_fn(|cx| {
                if let Poll::Ready(handled) = handling.as_mut().poll(cx) {
                    return Poll::Ready(handled);
                }
                if let Some(pump) = pump.as_mut() {
                    let _ = pump.poll(cx, &mut self.io, &mut self.buf);
                }
                Poll::Pending
            })
            .await
        };
        // Too late for `100 Continue`: the final response goes out now, after the rest of
        // one already begun (a client must never see half an interim response).
        let unfinished_continue = pump.as_mut().map_or(&[][..], |p| {
            let rest = if p.continue_sent > 0 { &CONTINUE[p.continue_sent..] } else { &[] };
            p.continue_sent = CONTINUE.len();
            rest
        });
        let stopping = stopped.borrow().is_some();
        // An answer that comes before the whole body did (a refusal, a target that answers
        // early) closes the connection, and says so in its head: the rest of the body may still
        // go to the target while the answer is written, but it is not read to its end after
        // that (an attacker's body can be endless), and a head that promised keep-alive could
        // not be taken back once the target let go of the body.
        let body_unfinished = pump.as_ref().is_some_and(Pump::unfinished);
        let keep_alive = keep_alive && !stopping && !body_unfinished;
        let after = match self.respond(response, &method, version, keep_alive, unfinished_continue, &mut pump).await {
            Ok(after) => after,
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    conn.shared.metrics.proxy_error("response_stalled");
                }
                tracing::debug!(error = %e, "writing a response failed");
                After::Close
            }
        };
        match after {
            After::Upgrade => {
                if let Some(tunnel) = tunnel {
                    let early = std::mem::take(&mut self.buf).freeze();
                    tokio::select! {
                        () = tunnel.run(&mut self.io, early) => {}
                        () = crate::listen::stop_closes_idle(stopped.clone()) => {}
                    }
                }
                After::Upgrade
            }
            After::KeepAlive => After::KeepAlive,
            After::Close => {
                // Bytes the client sent that were not read (the rest of a body, pipelined
                // requests) would turn the close into a reset that can destroy the response
                // on its way: read and drop them first.
                let unread = !self.buf.is_empty() || pump.as_ref().is_some_and(Pump::unfinished);
                self.close(unread).await;
                After::Close
            }
        }
    }

    /// Writes `response` (after `before`, bytes still owed to the client) while the request
    /// body (if any) keeps flowing upstream.
    async fn respond(
        &mut self,
        response: Response<ProxyBody>,
        method: &Method,
        version: Version,
        keep_alive: bool,
        before: &[u8],
        pump: &mut Option<Pump>,
    ) -> io::Result<After> {
        let (parts, body) = response.into_parts();
        let plan = response::plan(method, version, parts.status, &parts.headers, body.size_hint(), keep_alive);
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(before);
        response::encode_head(&mut out, parts.status, &parts.headers, version, &plan);
        drop(parts);
        let mut writer = Writer::new(out, body, plan.framing);
        let send_timeout = self.send_timeout;
        // Armed only when a write has to wait (never for a response written at once).
        let mut stall: Option<(Pin<Box<Sleep>>, u64)> = None;
        poll_fn(|cx| {
            if let Some(pump) = pump.as_mut() {
                let _ = pump.poll(cx, &mut self.io, &mut self.buf);
            }
            if let Poll::Ready(done) = writer.poll(cx, &mut self.io) {
                return Poll::Ready(done);
            }
            let progress = writer.written();
            let (timer, seen) = stall.get_or_insert_with(|| (Box::pin(tokio::time::sleep(send_timeout)), progress));
            if *seen != progress {
                *seen = progress;
                timer.as_mut().reset(tokio::time::Instant::now() + send_timeout);
            }
            ready!(timer.as_mut().poll(cx));
            Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the response made no progress")))
        })
        .await?;
        Ok(plan.after)
    }

    /// Ends the connection. With `linger`, first reads and drops what the client is still
    /// sending (a refused body), so the answer is not lost to a reset.
    async fn close(&mut self, linger: bool) {
        let _ = tokio::time::timeout(LINGER_TIME, self.io.shutdown()).await;
        if linger {
            let mut seen = 0;
            self.io.wake_after(DISCARD_WAKE);
            let _ = tokio::time::timeout(LINGER_TIME, async {
                while seen < LINGER_BYTES {
                    let max = LINGER_BYTES - seen;
                    match poll_fn(|cx| self.io.poll_discard(cx, &mut self.buf, max)).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen += n,
                    }
                }
            })
            .await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The whole body went upstream.
    Complete,
    /// The client sent a malformed body or went away.
    Failed,
    /// Nobody wants the rest of the body (the request was answered without it).
    Abandoned,
}

/// Moves a request body from the socket into its pipe, a frame at a time, as it is asked for.
struct Pump {
    tx: Option<pipe::Sender>,
    decode: BodyDecoder,
    /// Bytes of `100 Continue` written; all of it when none is due.
    continue_sent: usize,
    outcome: Option<Outcome>,
    /// A body that stops arriving for this long fails (armed at the first wait).
    idle_timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
    /// Bytes arrived since the idle timer was last set.
    progressed: bool,
    /// Bytes the connection's buffer must hold before the first frame is made (see
    /// [`FIRST_PIECE`]); zero once it is made.
    gather: usize,
    /// The last frame came out of dense framing: the next waits for the worker's heavy lane.
    dense: bool,
    turn: heavy::Turn,
}

impl Pump {
    fn new(tx: pipe::Sender, decode: BodyDecoder, expect_continue: bool, idle_timeout: Duration) -> Self {
        let continue_sent = if expect_continue { 0 } else { CONTINUE.len() };
        // A client waiting for `100 Continue` sends nothing until the target wants the body.
        let gather = match decode {
            BodyDecoder::Length(n) if !expect_continue => n.min(FIRST_PIECE) as usize,
            _ => 0,
        };
        let idle = None;
        Pump {
            tx: Some(tx),
            decode,
            continue_sent,
            outcome: None,
            idle_timeout,
            idle,
            progressed: false,
            gather,
            dense: false,
            turn: heavy::Turn::default(),
        }
    }

    /// The body has not all gone upstream (yet, or ever).
    fn unfinished(&self) -> bool {
        self.outcome != Some(Outcome::Complete)
    }

    /// Ready when the client has sent nothing for the idle timeout.
    fn poll_idle_timeout(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = tokio::time::Instant::now() + self.idle_timeout;
        let timer = self.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if std::mem::take(&mut self.progressed) {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx)
    }

    fn end(&mut self, outcome: Outcome, error: Option<BodyError>) {
        if let Some(tx) = self.tx.take() {
            match error {
                Some(e) => tx.fail(e),
                None if outcome == Outcome::Complete => tx.finish(),
                None => {}
            }
        }
        self.outcome = Some(outcome);
    }

    /// The next piece of the body in `buf`; a piece after one that came out of dense framing
    /// (more framing than [`DENSE_FRAMING`]: chunks of a few bytes) waits for the worker's
    /// heavy lane, and such a piece closes the lane for a while.
    fn next_piece(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<Piece> {
        if self.dense && !buf.is_empty() {
            ready!(self.turn.poll(cx));
        }
        let (given, began) = (buf.len(), Instant::now());
        let piece = self.decode.next(buf);
        let used = given - buf.len();
        // A call that found the buffer empty says nothing about the framing.
        if used > 0 {
            let data = match &piece {
                Piece::Frame(frame, _) => frame.data_ref().map_or(0, Bytes::len),
                _ => 0,
            };
            self.dense = used.saturating_sub(data) > DENSE_FRAMING;
            if self.dense {
                heavy::rest_after(began.elapsed());
            }
        }
        Poll::Ready(piece)
    }

    /// Ready once the body has ended one way or another (see `outcome`).
    fn poll<IO: Transport>(&mut self, cx: &mut Context<'_>, io: &mut IO, buf: &mut BytesMut) -> Poll<()> {
        loop {
            let Some(tx) = self.tx.as_mut() else {
                return Poll::Ready(());
            };
            if ready!(tx.poll_ready(cx)).is_err() {
                self.end(Outcome::Abandoned, None);
                continue;
            }
            if self.continue_sent < CONTINUE.len() {
                match Pin::new(&mut *io).poll_write(cx, &CONTINUE[self.continue_sent..]) {
                    Poll::Ready(Ok(n)) if n > 0 => self.continue_sent += n,
                    Poll::Ready(_) => self.end(Outcome::Failed, Some(BodyError::Incomplete)),
                    Poll::Pending => return Poll::Pending,
                }
                if self.continue_sent == CONTINUE.len() {
                    let _ = Pin::new(&mut *io).poll_flush(cx);
                }
                continue;
            }
            let piece = if buf.len() < self.gather {
                Piece::NeedMore
            } else {
                self.gather = 0;
                ready!(self.next_piece(cx, buf))
            };
            match piece {
                Piece::Frame(frame, last) => {
                    if let Some(tx) = self.tx.as_mut() {
                        tx.send(frame);
                    }
                    // Waiting for the target to take it is not the client's idleness.
                    self.progressed = true;
                    if last {
                        self.end(Outcome::Complete, None);
                    }
                }
                Piece::End => self.end(Outcome::Complete, None),
                Piece::Malformed => self.end(Outcome::Failed, Some(BodyError::Malformed)),
                Piece::NeedMore => match read::poll_fill(cx, io, buf, read::BODY_READ) {
                    Poll::Pending => {
                        ready!(self.poll_idle_timeout(cx));
                        self.end(Outcome::Failed, Some(BodyError::TimedOut));
                    }
                    Poll::Ready(Ok(n)) if n > 0 => self.progressed = true,
                    Poll::Ready(_) => self.end(Outcome::Failed, Some(BodyError::Incomplete)),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use gatehouse_metrics::Metrics;
    use gatehouse_model::{EdgeLimits, ForwardingPolicy, HostPattern, ServiceSpec, TargetSpec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::super::chunked::{Decoded, Decoder};
    use super::*;
    use crate::handler::Shared;
    use crate::occupancy::Occupancy;
    use crate::snapshot::Snapshot;

    // A pipe with a tiny buffer: a write stops after a few bytes until the client reads.
    impl Transport for tokio::io::DuplexStream {}

    /// The proxy's side of a connection routed to `target` for host `a.test`.
    fn connection_to(target: SocketAddr) -> ConnInfo {
        let metrics = Arc::new(Metrics::new());
        let mut spec = ServiceSpec::new("web", "test");
        spec.hosts = vec![HostPattern::parse("a.test").unwrap()];
        spec.targets = vec![TargetSpec::parse_url(&format!("http://{target}"), true).unwrap()];
        let snapshot = Snapshot::new(1, vec![Arc::new(spec)], None, "", &metrics).unwrap();
        let limits = EdgeLimits::default();
        let occupancy = Occupancy::new(&limits);
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let slot = occupancy.connect(peer.ip()).unwrap();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            access_log: None,
            installed: tokio::sync::Notify::new(),
            https_port: None,
            limits,
            forwarding: ForwardingPolicy::default(),
            occupancy,
            refusals: Default::default(),
            challenges: gatehouse_model::acme::Challenges::new(),
            on_demand: None,
        });
        let client = slot.client().clone();
        // The slot is the connection's count; the test's one connection keeps it.
        std::mem::forget(slot);
        ConnInfo::new(shared, peer, false, client)
    }

    /// A target that answers `ok` as soon as it has a request head, without reading the body.
    async fn target_answering_at_once() -> SocketAddr {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = target.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = target.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&buf[..n]);
            }
            socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        at
    }

    /// Reads from `from` until what arrived ends with `end` (5 s for each read); a close
    /// before that fails the test.
    async fn read_until(from: &mut (impl AsyncRead + Unpin), end: &[u8]) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while !seen.ends_with(end) {
            let n = tokio::time::timeout(Duration::from_secs(5), from.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "{} bytes arrived, then a close", seen.len());
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    }

    #[tokio::test]
    async fn a_body_reaches_no_target_before_its_first_piece_has_arrived() {
        // A body longer than the first piece and one shorter: each held until 16 KiB, or all
        // of it, is there.
        for (length, first) in [(40_000usize, 16_000usize), (10, 9)] {
            let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (mut client, proxy) = tokio::io::duplex(64 * 1024);
            let (_stop, stopped) = tokio::sync::watch::channel(None);
            tokio::spawn(serve(proxy, connection_to(target.local_addr().unwrap()), stopped));
            let head = format!("POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: {length}\r\n\r\n");
            let body: Vec<u8> = (0..length).map(|i| b'a' + (i % 26) as u8).collect();
            client.write_all(head.as_bytes()).await.unwrap();
            client.write_all(&body[..first]).await.unwrap();
            let early = tokio::time::timeout(Duration::from_millis(300), target.accept()).await;
            assert!(early.is_err(), "a target was connected with {first} of {length} body bytes sent");

            client.write_all(&body[first..]).await.unwrap();
            let (mut socket, _) = tokio::time::timeout(Duration::from_secs(5), target.accept()).await.unwrap().unwrap();
            let seen = read_until(&mut socket, &body).await;
            let seen = String::from_utf8_lossy(&seen);
            assert!(seen.starts_with("POST /up HTTP/1.1\r\n"), "{seen:?}");
            assert!(seen.contains(&format!("\r\ncontent-length: {length}\r\n")), "{seen:?}");
            socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
            let got = read_until(&mut client, b"ok").await;
            assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{:?}", String::from_utf8_lossy(&got));
        }
    }

    #[tokio::test]
    async fn a_body_in_1_byte_chunks_reaches_the_target_whole_in_large_chunks_through_the_heavy_lane() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, proxy) = tokio::io::duplex(64 * 1024);
        let (_stop, stopped) = tokio::sync::watch::channel(None);
        tokio::spawn(serve(proxy, connection_to(target.local_addr().unwrap()), stopped));
        let body: Vec<u8> = (0..20_000).map(|i| b'a' + (i % 26) as u8).collect();
        let mut sent = b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for byte in &body {
            sent.extend_from_slice(&[b'1', b'\r', b'\n', *byte, b'\r', b'\n']);
        }
        sent.extend_from_slice(b"0\r\n\r\n");
        let upload = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client
        });
        let (mut socket, _) = tokio::time::timeout(Duration::from_secs(5), target.accept()).await.unwrap().unwrap();
        let seen = read_until(&mut socket, b"\r\n0\r\n\r\n").await;
        assert!(heavy::waits() > 0, "the pieces after the first dense one waited for the worker's heavy lane");
        let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&seen[..head_end]);
        assert!(
            head.starts_with("POST /up HTTP/1.1\r\n") && head.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{head:?}"
        );
        let mut wire = BytesMut::from(&seen[head_end..]);
        let (mut decoder, mut got, mut chunks) = (Decoder::default(), Vec::new(), 0);
        loop {
            match decoder.decode(&mut wire).unwrap() {
                Decoded::Data(data) => {
                    got.extend_from_slice(&data);
                    chunks += 1;
                }
                Decoded::End => break,
                other => panic!("{other:?} before the end"),
            }
        }
        assert_eq!(got, body, "the body arrived whole and in order");
        assert!(chunks <= 10, "20,000 chunks of a byte went upstream as {chunks}");
        socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
        let mut client = upload.await.unwrap();
        let got = read_until(&mut client, b"ok").await;
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{:?}", String::from_utf8_lossy(&got));
    }

    #[tokio::test]
    async fn a_partly_written_100_continue_is_completed_before_the_final_response() {
        let at = target_answering_at_once().await;
        let (mut client, proxy) = tokio::io::duplex(4);
        let (_stop, stopped) = tokio::sync::watch::channel(None);
        tokio::spawn(serve(proxy, connection_to(at), stopped));
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            .await
            .unwrap();
        // Not reading yet: the proxy wrote the first 4 bytes of `100 Continue` and waits,
        // while the target's answer arrives.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !got.ends_with(b"ok") {
            let n = tokio::time::timeout_at(deadline, client.read(&mut buf)).await.unwrap().unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), "{got:?}");
    }

    #[tokio::test]
    async fn a_socket_drops_a_closing_clients_bytes_uncopied_and_wakes_only_for_a_batch() {
        // Segments of a network's size: on loopback's 64 KiB segments, a window with room
        // for less than one segment wakes the reader whatever the mark.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_tcp_mss(1400).unwrap();
        socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        socket.listen(1).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(socket.into()).unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        server.wake_after(64 * 1024);
        let mut scratch = BytesMut::new();
        let wait = Duration::from_millis(200);
        // (The first call also clears the readiness tokio assumes for a new connection.)
        let early = tokio::time::timeout(wait, poll_fn(|cx| server.poll_discard(cx, &mut scratch, 1 << 20))).await;
        assert!(early.is_err(), "dropped bytes before any were sent: {early:?}");
        client.write_all(&[b'x'; 1000]).await.unwrap();
        let early = tokio::time::timeout(wait, poll_fn(|cx| server.poll_discard(cx, &mut scratch, 1 << 20))).await;
        assert!(early.is_err(), "woke for 1,000 bytes: {early:?}");
        // The rest, then the close: the close wakes the reader whatever is left below the mark.
        tokio::spawn(async move { client.write_all(&[b'x'; 100_000]).await });
        let mut dropped = 0;
        loop {
            let discard = poll_fn(|cx| server.poll_discard(cx, &mut scratch, 1 << 20));
            match tokio::time::timeout(Duration::from_secs(10), discard).await.unwrap().unwrap() {
                0 => break,
                n => dropped += n,
            }
        }
        assert_eq!(dropped, 101_000);
        assert_eq!(scratch.capacity(), 0, "the bytes were copied");
    }

    #[tokio::test]
    async fn an_answer_before_the_body_arrived_reaches_the_client_whole_and_the_rest_is_dropped() {
        let at = target_answering_at_once().await;
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_at = proxy.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = proxy.accept().await.unwrap();
            let (_stop, stopped) = tokio::sync::watch::channel(None);
            serve(socket, connection_to(at), stopped).await;
        });
        let client = tokio::net::TcpStream::connect(proxy_at).await.unwrap();
        let (mut rx, mut tx) = client.into_split();
        // 600 KB still on its way when the answer comes: under the linger limit, so all of it
        // is dropped (in the kernel, over several wake-ups) and the client's writes all succeed.
        let body_len = 600_000;
        let upload = tokio::spawn(async move {
            tx.write_all(format!("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: {body_len}\r\n\r\n").as_bytes())
                .await?;
            for _ in 0..body_len / 1000 {
                tx.write_all(&[b'x'; 1000]).await?;
            }
            io::Result::Ok(())
        });
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(&mut got)).await.unwrap();
        let got = String::from_utf8_lossy(&got);
        assert!(read.is_ok(), "the answer ended in a reset: {read:?} after {got:?}");
        // The head says the connection closes, whether or not the target had let go of the
        // body when the answer went out.
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nok"), "{got:?}");
        assert!(got.contains("\r\nconnection: close\r\n"), "{got:?}");
        upload.await.unwrap().unwrap();
    }
}
