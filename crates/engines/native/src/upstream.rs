//! Connections to targets. Each worker thread keeps its own pools (no locks on the request
//! path): idle HTTP/1 connections per target, and one shared HTTP/2 connection per target.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use gatehouse_connect::BoxedIo;
use gatehouse_model::TargetSpec;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::RequestBody;
use crate::h1;

/// Idle connections kept per target and worker; more are closed when returned.
const MAX_IDLE_PER_TARGET: usize = 256;

struct Idle {
    conn: h1::Connection,
    since: Instant,
}

thread_local! {
    static IDLE_H1: RefCell<HashMap<Arc<str>, Vec<Idle>>> = RefCell::new(HashMap::new());
    static SHARED_H2: RefCell<HashMap<Arc<str>, http2::SendRequest<RequestBody>>> = RefCell::new(HashMap::new());
}

/// The most recently used idle HTTP/1 connection to `key` that the target has not closed
/// and that is younger than `max_idle`.
pub(crate) fn check_out(key: &str, max_idle: Duration) -> Option<h1::Connection> {
    IDLE_H1.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(key)?;
        while let Some(mut idle) = idle.pop() {
            if idle.since.elapsed() < max_idle && idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Returns a connection whose last response was read to its end.
pub(crate) fn check_in(key: Arc<str>, conn: h1::Connection) {
    IDLE_H1.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.entry(key).or_default();
        if idle.len() < MAX_IDLE_PER_TARGET {
            idle.push(Idle { conn, since: Instant::now() });
        }
    });
}

/// Drops idle connections older than `max_idle`, and those the target closed, from this
/// thread's pool.
pub(crate) fn sweep(max_idle: Duration) {
    IDLE_H1.with(|pool| {
        pool.borrow_mut().retain(|_, idle| {
            idle.retain_mut(|c| c.since.elapsed() < max_idle && c.conn.is_usable());
            !idle.is_empty()
        })
    });
    SHARED_H2.with(|pool| pool.borrow_mut().retain(|_, s| !s.is_closed()));
}

pub(crate) fn shared_h2(key: &str) -> Option<http2::SendRequest<RequestBody>> {
    SHARED_H2.with(|pool| pool.borrow().get(key).filter(|s| !s.is_closed()).cloned())
}

pub(crate) fn share_h2(key: Arc<str>, sender: http2::SendRequest<RequestBody>) {
    SHARED_H2.with(|pool| pool.borrow_mut().insert(key, sender));
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connecting to {target}: timed out")]
    Timeout { target: String },
    #[error("connecting to {target}: {source}")]
    Io { target: String, source: std::io::Error },
    #[error("HTTP handshake with {target}: {source}")]
    Handshake { target: String, source: hyper::Error },
}

pub(crate) struct ConnectOptions {
    pub timeout: Duration,
    pub http2: bool,
    pub verify: bool,
}

/// Opens an HTTP/1 connection to `target` (TLS included) within the connect timeout.
pub(crate) async fn connect_h1(target: &TargetSpec, opts: &ConnectOptions) -> Result<h1::Connection, ConnectError> {
    Ok(h1::Connection::new(open_within(target, opts).await?))
}

/// Opens an HTTP/2 connection to `target` (TLS included) within the connect timeout.
pub(crate) async fn connect_h2(
    target: &TargetSpec,
    opts: &ConnectOptions,
) -> Result<http2::SendRequest<RequestBody>, ConnectError> {
    let io = open_within(target, opts).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Handshake { target: target.url(), source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

async fn open_within(target: &TargetSpec, opts: &ConnectOptions) -> Result<BoxedIo, ConnectError> {
    match tokio::time::timeout(opts.timeout, gatehouse_connect::open(target, opts.verify, opts.http2)).await {
        Err(_) => Err(ConnectError::Timeout { target: target.url() }),
        Ok(Err(source)) => Err(ConnectError::Io { target: target.url(), source }),
        Ok(Ok(io)) => Ok(io),
    }
}
