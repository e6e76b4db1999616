//! Load tools for `bench/`: an open-loop generator, an idle-connection memory meter, a
//! WebSocket echo backend and the reload storm. They talk only to loopback addresses given
//! on the command line, and every run is bounded in count and time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use gatehouse_bench::{connect, ensure_loopback, get, open_websockets, quantile_ms, websockets_alive, ws_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(name = "gatehouse-bench", about = "Loopback load tools for Gatehouse's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sends requests at a fixed rate; latency counts from when each request was due.
    OpenLoop {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "app.local")]
        host: String,
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Also writes every latency (microseconds, one per line) to this file, for pooling
        /// runs.
        #[arg(long)]
        samples: Option<std::path::PathBuf>,
    },
    /// Opens idle keep-alive connections (one request each) and reports the RSS growth of PIDS.
    Idle {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "app.local")]
        host: String,
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        #[arg(required = true)]
        pids: Vec<u32>,
    },
    /// A WebSocket echo server.
    WsBackend {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Keep-alive load, open WebSockets and (optionally) a long streaming response while a
    /// command reloads or upgrades the proxy N times.
    ReloadStorm(StormArgs),
    /// Answers every request with a chunked body, one chunk every 100 ms for `seconds`.
    StreamBackend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Runs one cheap attack (bench/attacks.sh) from a loopback source address for a while
    /// and prints what it did as JSON.
    Attack {
        #[arg(long, value_enum)]
        kind: gatehouse_bench::attack::Kind,
        #[arg(long)]
        addr: SocketAddr,
        /// The TLS (HTTP/2) address, for the h2 attacks.
        #[arg(long)]
        tls: Option<SocketAddr>,
        #[arg(long, default_value = "127.0.0.2")]
        source: std::net::IpAddr,
        #[arg(long, default_value_t = 500)]
        connections: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value = "app.local")]
        host: String,
    },
    /// New TLS connections in a loop (handshake, GET, close): completions and failures per
    /// second, and the seconds in which the certificate changed, as JSON.
    Handshakes {
        #[arg(long)]
        addr: SocketAddr,
        /// The SNI name and Host.
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Deploys a service to each target in turn over Gatehouse's admin socket, one every
    /// interval, for a while (no process started per deploy).
    Deploys {
        #[arg(long)]
        socket: std::path::PathBuf,
        #[arg(long)]
        service: String,
        #[arg(long)]
        host: String,
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<SocketAddr>,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

#[derive(clap::Args)]
struct StormArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value = "app.local")]
    host: String,
    #[arg(long, default_value = "ws.local")]
    ws_host: String,
    /// A host whose backend streams (stream-backend): one response stays open throughout.
    #[arg(long)]
    stream_host: Option<String>,
    #[arg(long, default_value_t = 100)]
    reloads: usize,
    #[arg(long, default_value_t = 50)]
    websockets: usize,
    #[arg(long, default_value_t = 20)]
    connections: usize,
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Shell command that performs one reload; `{n}` is replaced by the reload number.
    #[arg(long)]
    reload_cmd: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::OpenLoop { addr, host, rate, seconds, connections, samples } => {
                open_loop(addr, host, rate, seconds, connections, samples).await
            }
            Command::Idle { addr, host, connections, pids } => idle(addr, host, connections, pids).await,
            Command::WsBackend { listen } => ws_backend(listen).await,
            Command::ReloadStorm(args) => reload_storm(args).await,
            Command::StreamBackend { listen, seconds } => stream_backend(listen, seconds).await,
            Command::Deploys { socket, service, host, targets, interval_ms, seconds } => {
                deploys(socket, service, host, targets, interval_ms, seconds).await
            }
            Command::Handshakes { addr, name, connections, seconds } => {
                println!("{}", gatehouse_bench::handshakes::run(addr, name, connections, seconds).await?);
                Ok(())
            }
            Command::Attack { kind, addr, tls, source, connections, seconds, host } => {
                let attack = gatehouse_bench::attack::Attack { kind, addr, tls, source, connections, seconds, host };
                println!("{}", attack.run().await?);
                Ok(())
            }
        }
    })
}

async fn open_loop(
    addr: SocketAddr,
    host: String,
    rate: u64,
    seconds: u64,
    connections: usize,
    samples: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    ensure_loopback(addr)?;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for k in 0..connections {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut sender = connect(addr).await?;
            let mut i = k as u64;
            let mut previous_done = start;
            while i < total {
                let due = start + interval * i as u32;
                tokio::time::sleep_until(due.into()).await;
                // Timers wake up to a millisecond late. That slack is the generator's, not the
                // proxy's: count from the wake-up when this connection was idle at `due`, and
                // from `due` itself when it was still busy (coordinated-omission correction).
                let began = if previous_done <= due { Instant::now() } else { due };
                let result = get(&mut sender, &host).await;
                previous_done = Instant::now();
                match result {
                    Ok(200) => latencies.push(previous_done.duration_since(began).as_micros() as u64),
                    _ => {
                        errors += 1;
                        sender = connect(addr).await?;
                    }
                }
                i += connections as u64;
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await??;
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    if let Some(path) = samples {
        let text: String = all.iter().map(|us| format!("{us}\n")).collect();
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let pct = |p: f64| quantile_ms(&all, p);
    println!(
        "{}",
        serde_json::json!({"rps": all.len() as f64 / elapsed, "ok": all.len(), "errors": errors,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999)})
    );
    Ok(())
}

fn rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("pid {pid}"))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
        total += line.split_whitespace().nth(1).context("VmRSS value")?.parse::<u64>()?;
    }
    Ok(total)
}

async fn idle(addr: SocketAddr, host: String, connections: usize, pids: Vec<u32>) -> anyhow::Result<()> {
    ensure_loopback(addr)?;
    let before = rss_kib(&pids)?;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut open = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        open.push(stream);
    }
    for stream in &mut open {
        read_one_response(stream).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(&pids)?;
    // Memory freed by the burst (transient upstream connections, buffers) may take a moment
    // to go back to the system; "settled" is the lowest RSS over the next 10 s, with every
    // connection still open.
    let mut settled = after;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        settled = settled.min(rss_kib(&pids)?);
    }
    let per_connection = |rss: u64| (rss.saturating_sub(before) * 1024) as f64 / connections as f64;
    println!(
        "{}",
        serde_json::json!({"connections": connections, "rss_before_kib": before, "rss_after_kib": after,
            "rss_settled_kib": settled, "bytes_per_connection": per_connection(after),
            "bytes_per_connection_settled": per_connection(settled)})
    );
    Ok(())
}

/// Reads one response with a Content-Length body (what the benchmark backend sends).
async fn read_one_response(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Ok(());
            }
        }
        let n = tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await??;
        if n == 0 {
            bail!("connection closed before a whole response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn ws_backend(listen: SocketAddr) -> anyhow::Result<()> {
    ensure_loopback(listen)?;
    ws_echo(TcpListener::bind(listen).await?).await
}

async fn reload_storm(args: StormArgs) -> anyhow::Result<()> {
    let StormArgs { addr, host, ws_host, stream_host, reloads, websockets, connections, interval_ms, reload_cmd } =
        args;
    ensure_loopback(addr)?;
    let mut sockets = open_websockets(addr, &ws_host, websockets).await?;
    let stream = match &stream_host {
        Some(stream_host) => Some(Stream::open(addr, stream_host).await?),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, refused) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..connections {
        let (stop, ok, failed, refused, host) =
            (stop.clone(), ok.clone(), failed.clone(), refused.clone(), host.clone());
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut sender = None;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Some(open) = sender.as_mut() else {
                    match connect(addr).await {
                        Ok(s) => sender = Some(s),
                        Err(_) => {
                            // Refused (or reset before the handshake): counted, retried shortly.
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    continue;
                };
                // A connection the server closed after its last answer (`Connection: close`,
                // a drained keep-alive) is not ready: no request was sent, reconnect.
                if open.ready().await.is_err() {
                    sender = None;
                    continue;
                }
                match get(open, &host).await {
                    Ok(200..=299) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => failed.fetch_add(1, Ordering::Relaxed),
                    // Sent, and no answer: what a client sees as a failed request.
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        sender = None;
                        0
                    }
                };
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut reload_failures = 0;
    for n in 0..reloads {
        let cmd = reload_cmd.replace("{n}", &n.to_string());
        let status = tokio::process::Command::new("sh").arg("-c").arg(&cmd).status().await?;
        if !status.success() {
            reload_failures += 1;
        }
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await?;
    }
    let alive = websockets_alive(&mut sockets).await;
    let stream_alive = match stream {
        Some(stream) => serde_json::json!(stream.alive().await),
        None => serde_json::Value::Null,
    };
    println!(
        "{}",
        serde_json::json!({"reloads": reloads, "reload_command_failures": reload_failures,
            "requests_ok": ok.load(Ordering::Relaxed), "requests_failed": failed.load(Ordering::Relaxed),
            "connections_refused": refused.load(Ordering::Relaxed),
            "websockets_alive": alive, "websockets": websockets, "stream_alive": stream_alive})
    );
    Ok(())
}

/// One streaming response read in the background: whether bytes still arrive.
struct Stream {
    last: Arc<std::sync::Mutex<(Instant, bool)>>,
}

impl Stream {
    async fn open(addr: SocketAddr, host: &str) -> anyhow::Result<Self> {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(format!("GET /stream HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
        let last = Arc::new(std::sync::Mutex::new((Instant::now(), false)));
        let seen = last.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                if n == 0 || buf[..n].ends_with(b"0\r\n\r\n") {
                    seen.1 = true;
                    return;
                }
                seen.0 = Instant::now();
            }
        });
        Ok(Stream { last })
    }

    /// Not ended, and a chunk within the last second.
    async fn alive(&self) -> bool {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (last, ended) = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        !ended && last.elapsed() < Duration::from_secs(1)
    }
}

async fn stream_backend(listen: SocketAddr, seconds: u64) -> anyhow::Result<()> {
    ensure_loopback(listen)?;
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (mut tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
                if head.len() > 16 * 1024 {
                    return;
                }
            }
            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await;
            for _ in 0..seconds * 10 {
                if tcp.write_all(b"2\r\nx\n\r\n").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = tcp.write_all(b"0\r\n\r\n").await;
        });
    }
}

async fn deploys(
    socket: std::path::PathBuf,
    service: String,
    host: String,
    targets: Vec<SocketAddr>,
    interval_ms: u64,
    seconds: u64,
) -> anyhow::Result<()> {
    for target in &targets {
        ensure_loopback(*target)?;
    }
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut ticks = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    let (mut done, mut failed) = (0u64, 0u64);
    let mut n = 0;
    while Instant::now() < end {
        ticks.tick().await;
        let target = targets[n % targets.len()];
        n += 1;
        let body = serde_json::json!({
            "options": {"targets": [target.to_string()], "hosts": [host], "health_check": {"path": "/"}}
        });
        let stream = tokio::net::UnixStream::connect(&socket).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let request = hyper::Request::post(format!("/v1/services/{service}/deploy"))
            .header("host", "gatehouse")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))?;
        match sender.send_request(request).await {
            Ok(response) if response.status().is_success() => done += 1,
            _ => failed += 1,
        }
    }
    println!("{}", serde_json::json!({"deploys": done, "failed": failed}));
    Ok(())
}
