//! Backends the proxy forwards to: HTTP/1 (with WebSocket), h2c and TLS, each recording
//! what it received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub version: http::Version,
}

#[derive(Default)]
pub struct Stats {
    pub requests: AtomicUsize,
    pub connections: AtomicUsize,
    pub seen: Mutex<Vec<Seen>>,
    /// Lets `/stream` send its second part.
    pub release: Notify,
}

pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl Backend {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Waits (at most 10 s) until a request has reached this backend.
    pub async fn wait_for_request(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.requests() < count {
            assert!(tokio::time::Instant::now() < deadline, "{} did not receive request {count}", self.name);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn last(&self) -> Seen {
        self.stats.seen.lock().unwrap().last().cloned().expect("the backend saw a request")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy)]
enum Protocol {
    Http1,
    H2c,
}

pub async fn start(name: &'static str) -> Backend {
    serve(name, Protocol::Http1, None).await
}

/// An HTTP/1 backend on a given address (to bring one back where it was).
pub async fn start_at(name: &'static str, addr: SocketAddr) -> Backend {
    serve_at(name, Protocol::Http1, None, addr).await
}

pub async fn start_h2c(name: &'static str) -> Backend {
    serve(name, Protocol::H2c, None).await
}

pub async fn start_tls(name: &'static str, cert_pem: &str, key_pem: &str) -> Backend {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    serve(name, Protocol::Http1, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
}

/// An HTTP/1 backend on a Unix socket at `path` (its `addr` means nothing).
pub async fn start_unix(name: &'static str, path: &std::path::Path) -> Backend {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let stats = Arc::new(Stats::default());
    let shared = stats.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let stats = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| respond(name, stats.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend { name, addr: "127.0.0.1:0".parse().unwrap(), stats, task }
}

/// An address nothing listens on (connections are refused).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn serve(name: &'static str, protocol: Protocol, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
    serve_at(name, protocol, tls, "127.0.0.1:0".parse().unwrap()).await
}

async fn serve_at(
    name: &'static str,
    protocol: Protocol,
    tls: Option<tokio_rustls::TlsAcceptor>,
    addr: SocketAddr,
) -> Backend {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let shared = stats.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let (stats, tls) = (shared.clone(), tls.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| respond(name, stats.clone(), req));
                match (protocol, tls) {
                    (Protocol::Http1, None) => {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    }
                    (Protocol::Http1, Some(tls)) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    (Protocol::H2c, _) => {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    Backend { name, addr, stats, task }
}

type Body = BoxBody<Bytes, Infallible>;

fn text(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn respond(
    name: &'static str,
    stats: Arc<Stats>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if path == "/ws" && req.headers().contains_key("upgrade") {
        return Ok(websocket(&mut req, &stats, name));
    }
    let ms = query(&req, "ms");
    let n = query(&req, "n");
    let (parts, body) = req.into_parts();
    let body_len = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    stats.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
        headers: parts.headers.clone(),
        body_len,
        version: parts.version,
    });
    let mut resp = match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(ms.unwrap_or(1000))).await;
            text(200, name)
        }
        "/size" => text(200, vec![b'x'; n.unwrap_or(0) as usize]),
        "/stream" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            let stats = stats.clone();
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first\n")))).await;
                stats.release.notified().await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"second\n")))).await;
            });
            Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))))
        }
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![Ok(Frame::data(Bytes::from_static(b"ok"))), Ok(Frame::trailers(trailers))];
            Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames))))
        }
        p if p.starts_with("/status/") => text(p[8..].parse().unwrap_or(500), name),
        // An application that sets its own HSTS policy.
        "/own-hsts" => {
            let mut resp = text(200, name);
            resp.headers_mut().insert("strict-transport-security", "max-age=5".parse().unwrap());
            resp
        }
        _ => text(200, format!("{name} {body_len}")),
    };
    resp.headers_mut().insert("x-backend", name.parse().unwrap());
    resp.headers_mut().insert("connection", "keep-alive, x-hop".parse().unwrap());
    resp.headers_mut().insert("x-hop", "must not reach the client".parse().unwrap());
    Ok(resp)
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Answers 101 and echoes every WebSocket message, prefixed with the backend's name.
fn websocket(req: &mut Request<Incoming>, stats: &Arc<Stats>, name: &'static str) -> Response<Body> {
    let key = req.headers().get("sec-websocket-key").cloned().unwrap_or_else(|| "x".parse().unwrap());
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    let stats = stats.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        stats.seen.lock().unwrap().push(Seen {
            method: "GET".into(),
            target: "/ws".into(),
            headers: HeaderMap::new(),
            body_len: 0,
            version: http::Version::HTTP_11,
        });
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() {
                let reply = format!("{name}: {}", msg.to_text().unwrap_or(""));
                if ws.send(reply.into()).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    let mut resp = text(101, Bytes::new());
    let h = resp.headers_mut();
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("sec-websocket-accept", accept.parse().unwrap());
    resp
}
