//! HAProxy runtime API timings (issue: nginx and HAProxy engines): (1) reconcile 1,000
//! backends of 10 servers from cold; (2) one server change; (3) 100 membership changes under
//! keep-alive load (failed requests), with nginx OSS reload mode as the contrast. Loopback
//! only; every loop is bounded in count and time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use gatehouse_templated::haproxy::{finish_drains, reconcile, SocketAddress, Wanted, WantedServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// Folder for configs, sockets and pid files.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 1000)]
    backends: usize,
    #[arg(long, default_value_t = 10)]
    servers: usize,
    #[arg(long, default_value_t = 100)]
    changes: usize,
}

fn server(name: String, port: u16) -> WantedServer {
    WantedServer { name, addr: Some("127.0.0.1".into()), port, https: false }
}

/// A proxy process started by this bench, stopped on drop.
struct Proxy {
    stop: Vec<String>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = Command::new(&self.stop[0]).args(&self.stop[1..]).status();
    }
}

fn start_haproxy(dir: &Path, config: &str) -> anyhow::Result<(Proxy, SocketAddress)> {
    let d = dir.display();
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!("global\n    stats socket {d}/admin.sock mode 600 level admin\n    maxconn 4096\n{config}"),
    )?;
    let status = Command::new("haproxy")
        .args(["-W", "-D", "-p", &format!("{d}/haproxy.pid"), "-f", &format!("{d}/haproxy.cfg")])
        .status()
        .context("haproxy")?;
    if !status.success() {
        bail!("haproxy did not start");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        let pid = std::fs::read_to_string(dir.join("haproxy.pid")).unwrap_or_default().trim().to_string();
        if !pid.is_empty() && dir.join("admin.sock").exists() {
            break pid;
        }
        if Instant::now() > deadline {
            bail!("haproxy did not come up");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let socket = SocketAddress::parse(&dir.join("admin.sock").to_string_lossy());
    Ok((Proxy { stop: vec!["kill".into(), pid] }, socket))
}

const DEFAULTS: &str = "defaults\n    mode http\n    timeout client 10s\n    timeout server 10s\n    timeout connect 1s\n    option http-keep-alive\n";

async fn cold_and_one_change(args: &Args) -> anyhow::Result<()> {
    let dir = args.dir.join("cold");
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut config =
        format!("{DEFAULTS}frontend f\n    bind 127.0.0.1:{port}\n    use_backend %[req.hdr(host),lower,word(1,:)]\n");
    for b in 0..args.backends {
        config.push_str(&format!("backend app{b}.bench\n    balance roundrobin\n"));
    }
    let (_haproxy, socket) = start_haproxy(&dir, &config)?;
    let mut wanted = Wanted::new();
    for b in 0..args.backends {
        let servers = (0..args.servers)
            .map(|s| server(format!("server_10.0.{b}.{s}_{}", 20_000 + s), (20_000 + b * args.servers + s) as u16))
            .collect();
        wanted.insert(format!("app{b}.bench"), servers);
    }
    let started = Instant::now();
    let done = reconcile(&socket, &wanted, None, "", "").await?;
    let cold = started.elapsed();
    println!(
        "haproxy_cold_reconcile backends={} servers={} added={} ms={:.0} target_ms<=2000",
        args.backends,
        args.backends * args.servers,
        done.added,
        cold.as_secs_f64() * 1000.0
    );
    let mut one = Vec::new();
    for i in 0..20u16 {
        let previous = wanted.clone();
        if let Some(servers) = wanted.get_mut("app0.bench") {
            servers.push(server(format!("extra_{i}"), 40_000 + i));
        }
        let started = Instant::now();
        let done = reconcile(&socket, &wanted, Some(&previous), "", "").await?;
        one.push(started.elapsed().as_secs_f64() * 1000.0);
        if done.added != 1 {
            bail!("expected one added server, got {done:?}");
        }
    }
    one.sort_by(|a, b| a.total_cmp(b));
    println!(
        "haproxy_one_server_change ms_median={:.1} ms_max={:.1} changes={} (with {} servers in HAProxy) target_ms<=10",
        one[one.len() / 2],
        one[one.len() - 1],
        one.len(),
        args.backends * args.servers
    );
    Ok(())
}

/// An HTTP/1.1 keep-alive server answering every request with `name`.
async fn backend(name: String) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}", name.len());
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if s.write_all(reply.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Keep-alive clients sending requests until `stop`; counts answers other than 200.
fn load(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(300);
                let mut sender = None;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if sender.is_none() {
                        sender = gatehouse_bench::connect(addr).await.ok();
                    }
                    let Some(s) = sender.as_mut() else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    match gatehouse_bench::get(s, "app.bench").await {
                        Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            sender = None;
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect()
}

/// Makes `changes` changes, 20 ms apart, while 8 keep-alive clients send requests through
/// `at`; returns the requests answered 200 and the others.
async fn changes_under_load(
    at: std::net::SocketAddr,
    changes: usize,
    mut change: impl AsyncFnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<(usize, usize)> {
    let (stop, ok, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients = load(at, stop.clone(), ok.clone(), failed.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..changes {
        change(i).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    Ok((ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed)))
}

async fn under_load(args: &Args) -> anyhow::Result<()> {
    let mut ports = Vec::new();
    for i in 0..4 {
        ports.push(backend(format!("b{i}")).await?);
    }
    let front = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let at: std::net::SocketAddr = format!("127.0.0.1:{front}").parse()?;

    // HAProxy, runtime API: one server swapped for another on each change.
    let dir = args.dir.join("runtime");
    std::fs::create_dir_all(&dir)?;
    let config = format!(
        "{DEFAULTS}frontend f\n    bind 127.0.0.1:{front}\n    use_backend %[req.hdr(host),lower,word(1,:)]\nbackend app.bench\n    balance roundrobin\n    server s0 127.0.0.1:{}\n    server s1 127.0.0.1:{}\n",
        ports[0], ports[1]
    );
    let (haproxy, socket) = start_haproxy(&dir, &config)?;
    let mut previous = None;
    let (ok, failed) = changes_under_load(at, args.changes, async |i| {
        // Keep s0; the second server alternates between two ports, under new names.
        let port = ports[1 + (i + 1) % 3];
        let wanted = Wanted::from([(
            "app.bench".to_string(),
            vec![server("s0".into(), ports[0]), server(format!("c{i}"), port)],
        )]);
        let done = reconcile(&socket, &wanted, previous.as_ref(), "", "").await?;
        previous = Some(wanted);
        finish_drains(&socket, &done.draining, Duration::from_secs(5)).await?;
        Ok(())
    })
    .await?;
    println!(
        "haproxy_runtime_changes changes={} requests_ok={ok} requests_failed={failed} target_failed=0",
        args.changes
    );
    drop(haproxy);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Contrast: nginx OSS, a config rewrite and `nginx -s reload` per change.
    let dir = args.dir.join("nginx");
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let nginx_conf = |second: u16| {
        format!(
            "pid {d}/nginx.pid;\nevents {{ worker_connections 1024; }}\nhttp {{ access_log off; upstream app {{ server 127.0.0.1:{}; server 127.0.0.1:{second}; keepalive 16; }}\n\
             server {{ listen 127.0.0.1:{front}; keepalive_timeout 60s; location / {{ proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://app; }} }} }}\n",
            ports[0]
        )
    };
    std::fs::write(dir.join("nginx.conf"), nginx_conf(ports[1]))?;
    let base = [
        "-p".to_string(),
        d.to_string(),
        "-e".into(),
        format!("{d}/error.log"),
        "-c".into(),
        format!("{d}/nginx.conf"),
    ];
    if !Command::new("nginx").args(&base).status()?.success() {
        bail!("nginx did not start");
    }
    let _nginx = Proxy {
        stop: ["nginx".to_string()]
            .into_iter()
            .chain(base.iter().cloned())
            .chain(["-s".into(), "quit".into()])
            .collect(),
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = changes_under_load(at, args.changes, async |i| {
        gatehouse_files::replace(&dir.join("nginx.conf"), nginx_conf(ports[1 + (i + 1) % 3]).as_bytes())?;
        Command::new("nginx").args(&base).args(["-s", "reload"]).status()?;
        Ok(())
    })
    .await?;
    println!("nginx_oss_reload_changes changes={} requests_ok={ok} requests_failed={failed} (contrast)", args.changes);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    cold_and_one_change(&args).await?;
    under_load(&args).await
}
