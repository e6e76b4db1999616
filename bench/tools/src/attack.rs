//! Cheap attacks on a proxy, for `bench/attacks.sh`: each runs for a fixed time from a given
//! loopback source address and reports what it managed (connections opened, closed by the
//! proxy, bytes sent). They never read more than they must, which is the point.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::ensure_loopback;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kind {
    /// Heads sent one byte every 2 s, never finished (slowloris).
    Slowloris,
    /// Request bodies in 1-byte chunks, as fast as the proxy takes them.
    TinyChunks,
    /// Request bodies that send one byte every 2 s.
    SlowBody,
    /// 10,000 pipelined requests per connection, no response ever read.
    PipelineUnread,
    /// HTTP/2 connections that open 100 streams each with a zero flow-control window.
    H2ZeroWindow,
    /// HTTP/2 connections that finish TLS, send the preface and then nothing.
    H2Idle,
    /// New TLS connections back to back, each a full handshake and then closed (a reconnect
    /// storm: the handshake is the costly part for the proxy).
    TlsStorm,
}

/// What an attack did, printed as JSON.
#[derive(Default)]
pub struct Tally {
    pub opened: AtomicU64,
    /// Connections the proxy closed (read end or reset) while the attack held them.
    pub closed_by_proxy: AtomicU64,
    pub bytes_sent: AtomicU64,
}

pub struct Attack {
    pub kind: Kind,
    /// Plain HTTP/1.1 address; `tls` is the HTTP/2 (TLS, ALPN h2) one.
    pub addr: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub source: IpAddr,
    pub connections: usize,
    pub seconds: u64,
    pub host: String,
}

impl Attack {
    pub async fn run(self) -> anyhow::Result<serde_json::Value> {
        ensure_loopback(self.addr)?;
        if !self.source.is_loopback() {
            anyhow::bail!("{} is not a loopback address", self.source);
        }
        let tally = Arc::new(Tally::default());
        let until = Instant::now() + Duration::from_secs(self.seconds);
        let this = Arc::new(self);
        let mut tasks = Vec::new();
        for n in 0..this.connections {
            let (this, tally) = (this.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                // Spread the connections' starts over the first second.
                tokio::time::sleep(Duration::from_millis((n as u64 * 1000) / this.connections.max(1) as u64)).await;
                while Instant::now() < until {
                    if tokio::time::timeout_at(until, this.once(&tally)).await.is_err() {
                        break;
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        Ok(serde_json::json!({
            "kind": format!("{:?}", this.kind),
            "connections_opened": tally.opened.load(Ordering::Relaxed),
            "closed_by_proxy": tally.closed_by_proxy.load(Ordering::Relaxed),
            "bytes_sent": tally.bytes_sent.load(Ordering::Relaxed),
        }))
    }

    async fn connect(&self, to: SocketAddr, tally: &Tally) -> anyhow::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(self.source, 0))?;
        let stream = socket.connect(to).await.with_context(|| format!("connect to {to}"))?;
        stream.set_nodelay(true)?;
        tally.opened.fetch_add(1, Ordering::Relaxed);
        Ok(stream)
    }

    /// One connection's worth of the attack; returns when the proxy ends it.
    async fn once(&self, tally: &Tally) {
        let result = match self.kind {
            Kind::Slowloris => {
                let head = format!("GET / HTTP/1.1\r\nHost: {}\r\n", self.host);
                self.dribble(tally, head.as_bytes(), b"X-Slow: y\r\n").await
            }
            Kind::SlowBody => {
                let head = format!("POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000000\r\n\r\n", self.host);
                self.dribble(tally, head.as_bytes(), b"a").await
            }
            Kind::TinyChunks => self.tiny_chunks(tally).await,
            Kind::PipelineUnread => self.pipeline_unread(tally).await,
            Kind::H2ZeroWindow => self.h2(tally, true).await,
            Kind::H2Idle => self.h2(tally, false).await,
            Kind::TlsStorm => self.handshake(tally).await,
        };
        if result.is_err() {
            tally.closed_by_proxy.fetch_add(1, Ordering::Relaxed);
            // A refused or closed connection is retried, but not in a tight loop.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One full TLS handshake (no session is kept to resume), then the connection is closed.
    async fn handshake(&self, tally: &Tally) -> anyhow::Result<()> {
        let addr = self.tls.context("the TLS storm needs --tls")?;
        let tcp = self.connect(addr, tally).await?;
        drop(crate::tls_h2(tcp).await?);
        Ok(())
    }

    /// Sends `head`, then one byte of `drip` every 2 s, for as long as the proxy keeps the
    /// connection (an error when it closes it).
    async fn dribble(&self, tally: &Tally, head: &[u8], drip: &[u8]) -> anyhow::Result<()> {
        let mut stream = self.connect(self.addr, tally).await?;
        stream.write_all(head).await?;
        tally.bytes_sent.fetch_add(head.len() as u64, Ordering::Relaxed);
        let mut scratch = [0u8; 1024];
        for byte in drip.iter().cycle() {
            tokio::select! {
                read = stream.read(&mut scratch) => {
                    // An answer (408) or a close: the proxy ended it.
                    let _ = read;
                    anyhow::bail!("closed");
                }
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            stream.write_all(&[*byte]).await?;
            tally.bytes_sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Uploads 64 KiB bodies in 1-byte chunks, request after request on one connection.
    async fn tiny_chunks(&self, tally: &Tally) -> anyhow::Result<()> {
        let mut stream = self.connect(self.addr, tally).await?;
        let head = format!("POST / HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n", self.host);
        let mut body: Vec<u8> = b"1\r\na\r\n".repeat(64 * 1024);
        body.extend_from_slice(b"0\r\n\r\n");
        let mut scratch = vec![0u8; 16 * 1024];
        loop {
            stream.write_all(head.as_bytes()).await?;
            for piece in body.chunks(4096) {
                stream.write_all(piece).await?;
            }
            tally.bytes_sent.fetch_add((head.len() + body.len()) as u64, Ordering::Relaxed);
            // Read the answer's head so the connection carries on.
            let n = stream.read(&mut scratch).await?;
            if n == 0 {
                anyhow::bail!("closed");
            }
        }
    }

    /// Writes 10,000 pipelined GETs and never reads; holds the connection until the proxy
    /// gives up on it.
    async fn pipeline_unread(&self, tally: &Tally) -> anyhow::Result<()> {
        let mut stream = self.connect(self.addr, tally).await?;
        let one = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        let all = one.repeat(10_000);
        // The proxy stops reading once its answers back up: the write may never finish.
        let _ = tokio::time::timeout(Duration::from_secs(60), stream.write_all(all.as_bytes())).await;
        tally.bytes_sent.fetch_add(all.len() as u64, Ordering::Relaxed);
        let mut probe = [0u8; 1];
        // Peek for a close without reading the answers.
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match stream.peek(&mut probe).await {
                Ok(0) | Err(_) => anyhow::bail!("closed"),
                Ok(_) => {}
            }
        }
    }

    async fn h2(&self, tally: &Tally, zero_window: bool) -> anyhow::Result<()> {
        let addr = self.tls.context("the HTTP/2 attacks need --tls")?;
        let tcp = self.connect(addr, tally).await?;
        let mut tls = crate::tls_h2(tcp).await?;
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        if zero_window {
            // SETTINGS_INITIAL_WINDOW_SIZE = 0, then 100 GETs that can never get their bodies.
            out.extend(frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]));
            for n in 0..100u32 {
                out.extend(frame(1, 5, 2 * n + 1, &request_block(&self.host)));
            }
        } else {
            out.extend(frame(4, 0, 0, &[]));
        }
        tls.write_all(&out).await?;
        tally.bytes_sent.fetch_add(out.len() as u64, Ordering::Relaxed);
        // Read (to see the close) but never acknowledge or open a window.
        let mut scratch = vec![0u8; 16 * 1024];
        loop {
            if tls.read(&mut scratch).await? == 0 {
                anyhow::bail!("closed");
            }
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `GET https://HOST/` as HPACK literals without indexing.
fn request_block(host: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [(":method", "GET"), (":scheme", "https"), (":authority", host), (":path", "/")] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}
