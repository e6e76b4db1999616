//! A target speaking raw HTTP/1.1 from a script, for what real servers do rarely: close
//! pooled connections, answer with odd framing, switch protocols unasked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A target speaking raw HTTP/1.1 from a script: for each connection, `answer` gets the
/// request bytes read so far and returns what to write once the request is complete, and
/// whether to close afterwards. Counts connections.
pub struct ScriptedTarget {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    /// Every byte received, on all connections.
    pub received: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedTarget {
    pub async fn start(answer: fn(&str) -> Option<(String, bool)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorded = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut seen = String::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        recorded.lock().unwrap().extend_from_slice(&chunk[..n]);
                        seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
                        if let Some((reply, close)) = answer(&seen) {
                            seen.clear();
                            if stream.write_all(reply.as_bytes()).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        ScriptedTarget { addr, connections, received, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far, as text.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

impl Drop for ScriptedTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}
