//! HTTP/2 client connections, served by hyper, with the limits hyper leaves to its user: a
//! new connection must open a stream within `head_timeout`, one with no open stream closes
//! after `keepalive_timeout`, a stream that makes no progress for `send_timeout` is reset
//! (a client that never opens its flow-control window), and PINGs find dead peers.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::{Instant, Sleep};

use crate::body::{ClientBody, ProxyBody};
use crate::handler::{self, ConnInfo, Shared};
use crate::listen::{stop_requested, OpenConnection};

const MAX_CONCURRENT_STREAMS: u32 = 100;
/// What a client may send ahead on one stream, and on the connection, before it is read:
/// 100 streams at hyper's default of 1 MiB each could hold 100 MiB per connection.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes buffered per stream while the client's window is closed.
const SEND_BUFFER: usize = 128 * 1024;
/// Streams a client may reset before the server has taken them (rapid reset,
/// CVE-2023-44487), and streams the server may reset for a client's errors, before the
/// connection is closed with ENHANCE_YOUR_CALM.
const PENDING_RESETS: usize = 20;
const LOCAL_ERROR_RESETS: usize = 1024;

pub(crate) async fn serve<IO>(io: IO, conn: ConnInfo, stopped: crate::listen::Stopped, _counted: OpenConnection)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let shared = conn.shared.clone();
    let limits = &shared.limits;
    let streams = Arc::new(Streams::new(limits.send_timeout));
    let connection = http2::Builder::new(StreamExecutor(streams.clone()))
        .timer(TokioTimer::new())
        .max_header_list_size(crate::h1::MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buf_size(SEND_BUFFER)
        .max_pending_accept_reset_streams(PENDING_RESETS)
        .max_local_error_reset_streams(Some(LOCAL_ERROR_RESETS))
        .keep_alive_interval(limits.http2_ping_interval)
        .keep_alive_timeout(limits.http2_ping_interval)
        .serve_connection(TokioIo::new(io), proxy_service(conn));
    tokio::pin!(connection);
    let mut stop = std::pin::pin!(stop_requested(stopped));
    let mut check = std::pin::pin!(tokio::time::sleep(limits.head_timeout));
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            () = stop.as_mut() => {
                // Finish the streams in flight; the worker's drain time bounds the wait.
                connection.as_mut().graceful_shutdown();
                break connection.await;
            }
            () = check.as_mut() => {
                let allowed = if streams.served() { limits.keepalive_timeout } else { limits.head_timeout };
                match streams.quiet_for() {
                    Some(quiet) if quiet >= allowed => {
                        // GOAWAY, then the connection ends (it has no stream to finish).
                        connection.as_mut().graceful_shutdown();
                        match tokio::time::timeout(limits.head_timeout, connection.as_mut()).await {
                            Ok(result) => break result,
                            Err(_) => return,
                        }
                    }
                    Some(quiet) => check.as_mut().reset(Instant::now() + (allowed - quiet)),
                    None => check.as_mut().reset(Instant::now() + allowed),
                }
            }
        }
    };
    if let Err(e) = result {
        count_connection_error(&shared, &e);
    }
}

/// The request handler, for one HTTP/2 client connection.
fn proxy_service(
    conn: ConnInfo,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<ProxyBody>, Infallible>> + Send,
> + Clone {
    service_fn(move |req| {
        let conn = conn.clone();
        // Boxed so the future hyper keeps for every idle connection is a pointer, not the
        // few kilobytes the request path needs while it runs.
        async move { Ok::<_, Infallible>(Box::pin(handler::handle(req.map(ClientBody::H2), &conn, None)).await.0) }
    })
}

/// Streams hyper's HTTP/2 server refused before they reached a handler.
fn count_connection_error(shared: &Shared, e: &hyper::Error) {
    if e.is_parse_too_large() {
        shared.metrics.proxy_error("headers_too_large");
    } else if e.is_parse() {
        shared.metrics.proxy_error("malformed_request");
    } else if e.is_timeout() {
        shared.metrics.proxy_error("client_timeout");
    } else {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// The streams of one connection: how many are open, and since when none has been.
struct Streams {
    open: AtomicUsize,
    /// Milliseconds from `start` when the last stream ended (or the connection began).
    quiet_since_ms: AtomicU64,
    served: AtomicBool,
    start: Instant,
    send_timeout: Duration,
}

impl Streams {
    fn new(send_timeout: Duration) -> Self {
        Streams {
            open: AtomicUsize::new(0),
            quiet_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            start: Instant::now(),
            send_timeout,
        }
    }

    fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// How long the connection has had no open stream; None while it has one.
    fn quiet_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.quiet_since_ms.load(Ordering::Relaxed));
        Some(self.start.elapsed().saturating_sub(since))
    }

    fn opened(&self) {
        self.served.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    fn closed(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.quiet_since_ms.store(now, Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs hyper's per-stream tasks, each under a no-progress timer.
#[derive(Clone)]
struct StreamExecutor(Arc<Streams>);

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.0.opened();
        let deadline = Instant::now() + self.0.send_timeout;
        tokio::spawn(Guarded { stream, timer: tokio::time::sleep_until(deadline), streams: self.0.clone() });
    }
}

pin_project_lite::pin_project! {
    /// A stream's task, dropped (which resets the stream) when nothing has woken it for the
    /// send timeout: its client's window stays shut, or its target sends nothing.
    struct Guarded<F> {
        #[pin]
        stream: F,
        #[pin]
        timer: Sleep,
        streams: Arc<Streams>,
    }

    impl<F> PinnedDrop for Guarded<F> {
        fn drop(this: Pin<&mut Self>) {
            this.streams.closed();
        }
    }
}

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let now = Instant::now();
        // Polled with the deadline passed: only the timer woke the task, the stream never did.
        if now >= this.timer.deadline() {
            tracing::debug!("HTTP/2 stream reset: no progress within the send timeout");
            return Poll::Ready(());
        }
        if this.stream.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.timer.as_mut().reset(now + this.streams.send_timeout);
        let _ = this.timer.poll(cx);
        Poll::Pending
    }
}
