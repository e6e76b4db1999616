//! Clients: hyper over plain TCP or rustls, and raw sockets for malformed requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        trailers,
    })
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    send(addr, Request::get(path).header("host", host).body(Bytes::new()).unwrap()).await
}

/// One request on a new connection.
/// The distinct bodies of `requests` GETs of `/` for `host`, each on its own connection
/// (which instances a balanced route reaches).
pub async fn bodies(addr: SocketAddr, host: &str, requests: usize) -> std::collections::HashSet<String> {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..requests {
        seen.insert(get(addr, host, "/").await.body);
    }
    seen
}

pub async fn send(addr: SocketAddr, req: Request<Bytes>) -> Reply {
    tokio::time::timeout(LIMIT, async {
        let mut conn = KeepAlive::connect(addr).await;
        conn.send(req).await.expect("request failed")
    })
    .await
    .expect("request timed out")
}

/// An HTTP/1.1 client connection reused for many requests.
pub struct KeepAlive {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn.with_upgrades());
        KeepAlive { sender }
    }

    pub async fn send(&mut self, req: Request<Bytes>) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let (parts, body) = req.into_parts();
        collect(self.sender.send_request(Request::from_parts(parts, Full::new(body))).await?).await
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, hyper::Error> {
        self.send(Request::get(path).header("host", host).body(Bytes::new()).unwrap()).await
    }

    /// The response head only; the body is read by the caller.
    pub async fn open(&mut self, req: Request<Bytes>) -> http::Response<hyper::body::Incoming> {
        self.sender.ready().await.expect("ready");
        let (parts, body) = req.into_parts();
        self.sender.send_request(Request::from_parts(parts, Full::new(body))).await.expect("response head")
    }
}

/// Writes `bytes` on a new connection and returns everything read until the server closes
/// (or 5 s pass).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `stream` until `done` says the bytes so far are complete (5 s at most).
pub async fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !done(&String::from_utf8_lossy(&seen)) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// The status code of the first response in raw bytes.
pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

pub struct TlsReply {
    pub reply: Reply,
    pub alpn: Option<Vec<u8>>,
    pub leaf: CertificateDer<'static>,
}

/// A TLS client trusting only `ca_pem`, offering `alpn`.
pub fn tls_client(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// One GET over TLS trusting only `ca_pem`, offering `alpn`; `sni = None` sends no SNI
/// (the certificate is still checked against `name`).
pub async fn tls_get(
    addr: SocketAddr,
    ca_pem: &str,
    name: &str,
    sni: bool,
    alpn: &[&[u8]],
    path: &str,
) -> Result<TlsReply, String> {
    let mut config = tls_client(ca_pem, alpn);
    config.enable_sni = sni;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let negotiated = session.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = session.peer_certificates().unwrap()[0].clone().into_owned();
    let io = TokioIo::new(tls);
    let reply = if negotiated.as_deref() == Some(b"h2") {
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let uri = format!("https://{name}{path}");
        let resp = sender
            .send_request(Request::get(uri).header("te", "trailers").body(Full::new(Bytes::new())).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        collect(resp).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path).header("host", name).body(Full::new(Bytes::new())).unwrap();
        collect(sender.send_request(req).await.map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?
    };
    Ok(TlsReply { reply, alpn: negotiated, leaf })
}
