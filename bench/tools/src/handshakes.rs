//! New TLS connections in a loop (handshake, one GET, close) for `bench/acme.sh`: how many
//! complete each second, how many fail, and in which seconds the server's certificate
//! changed (a renewal swapped in).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::ensure_loopback;

#[derive(Default)]
struct Seconds {
    done: Vec<u64>,
    failed: Vec<u64>,
    /// The leaf seen last, and the seconds in which it changed.
    leaf: Vec<u8>,
    changes: Vec<usize>,
}

impl Seconds {
    fn slot(counts: &mut Vec<u64>, second: usize) -> &mut u64 {
        if counts.len() <= second {
            counts.resize(second + 1, 0);
        }
        &mut counts[second]
    }
}

/// Runs `connections` loops against `addr` with SNI `name` for `seconds`.
pub async fn run(
    addr: SocketAddr,
    name: String,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<serde_json::Value> {
    ensure_loopback(addr)?;
    let mut config = gatehouse_connect::unverified_client(b"http/1.1");
    // Every connection a full handshake with the certificate sent (a resumed one would
    // neither cost what a new client costs nor show a renewed certificate).
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let tally = Arc::new(Mutex::new(Seconds::default()));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (config, tally, name) = (config.clone(), tally.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let outcome = tokio::time::timeout(Duration::from_secs(5), once(addr, &name, config.clone())).await;
                let second = start.elapsed().as_secs() as usize;
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok(Ok(leaf)) => {
                        *Seconds::slot(&mut t.done, second) += 1;
                        if t.leaf != leaf {
                            if !t.leaf.is_empty() {
                                t.changes.push(second);
                            }
                            t.leaf = leaf;
                        }
                    }
                    _ => *Seconds::slot(&mut t.failed, second) += 1,
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
    Ok(
        serde_json::json!({ "per_second": t.done, "failed_per_second": t.failed, "certificate_changed_in_second": t.changes }),
    )
}

/// One connection: handshake, `GET /`, read to the end; returns the server's leaf.
async fn once(addr: SocketAddr, name: &str, config: Arc<rustls::ClientConfig>) -> anyhow::Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    let server = rustls::pki_types::ServerName::try_from(name.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(server, tcp).await?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await?;
    anyhow::ensure!(answer.starts_with(b"HTTP/1.1 200"), "not a 200");
    Ok(leaf)
}
