//! Pieces the load tools share: loopback-only connections, one keep-alive GET, a WebSocket
//! echo server, and the WebSocket liveness check.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

pub type WebSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

pub fn ensure_loopback(addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address; these tools only load this machine");
    }
    Ok(())
}

pub type Sender = http1::SendRequest<Empty<Bytes>>;

/// A keep-alive HTTP/1.1 connection.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    ensure_loopback(addr)?;
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET of `/` for `host`; the body is read to its end. Returns the status.
pub async fn get(sender: &mut Sender, host: &str) -> anyhow::Result<u16> {
    sender.ready().await?;
    let req = hyper::Request::get("/").header("host", host).body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// Echoes every WebSocket message on connections accepted from `listener`, until the task
/// running it is dropped.
pub async fn ws_echo(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() || ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Opens `count` WebSockets to `host` through the proxy at `addr`.
pub async fn open_websockets(addr: SocketAddr, host: &str, count: usize) -> anyhow::Result<Vec<WebSocket>> {
    ensure_loopback(addr)?;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let stream = TcpStream::connect(addr).await?;
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{host}/"), stream).await?;
        sockets.push(ws);
    }
    Ok(sockets)
}

/// How many of `sockets` still echo a message within 2 s.
pub async fn websockets_alive(sockets: &mut [WebSocket]) -> usize {
    let mut alive = 0;
    for (i, ws) in sockets.iter_mut().enumerate() {
        let text = format!("ping {i}");
        if ws.send(text.clone().into()).await.is_ok() {
            if let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
                if msg.to_text().ok() == Some(text.as_str()) {
                    alive += 1;
                }
            }
        }
    }
    alive
}

/// The `p` quantile (0..1) of sorted microsecond samples, in milliseconds.
pub fn quantile_ms(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

pub mod attack;
pub mod handshakes;

/// A TLS connection offering only `h2`, for the HTTP/2 attacks. The proxy's certificate is
/// not checked: these tools only talk to proxies on this machine that the bench started.
pub async fn tls_h2(tcp: TcpStream) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = std::sync::Arc::new(gatehouse_connect::unverified_client(b"h2"));
    let name = rustls::pki_types::ServerName::try_from("app.local")?;
    Ok(tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?)
}
