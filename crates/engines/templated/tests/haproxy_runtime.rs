//! The runtime API against the real HAProxy: servers come and go without a reload (the same
//! worker keeps serving), removed servers are drained, then deleted.

use std::process::Command;
use std::time::{Duration, Instant};

use gatehouse_templated::haproxy::{finish_drains, reconcile, servers, SocketAddress, Wanted, WantedServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server answering every request with `name`.
async fn backend(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}", name.len());
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

async fn ask(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
    out.rsplit("\r\n\r\n").next().unwrap_or("").to_string()
}

struct Haproxy {
    dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(port: u16, first_backend: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("haproxy.cfg"),
            format!(
                "global\n    stats socket {d}/admin.sock mode 600 level admin\ndefaults\n    mode http\n    timeout client 5s\n    timeout server 5s\n    timeout connect 1s\n\
                 frontend f\n    bind 127.0.0.1:{port}\n    use_backend %[req.hdr(host),lower,word(1,:)]\n\
                 backend a.test\n    balance roundrobin\n    server one 127.0.0.1:{first_backend}\n"
            ),
        )
        .unwrap();
        let status = Command::new("haproxy")
            .args(["-W", "-D", "-p", &format!("{d}/haproxy.pid"), "-f", &format!("{d}/haproxy.cfg")])
            .status()
            .expect("haproxy is installed (scripts/test.sh installs it)");
        assert!(status.success());
        let h = Haproxy { dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !h.path("admin.sock").exists() || h.pid().is_empty() {
            assert!(Instant::now() < deadline, "haproxy did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
        h
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn pid(&self) -> String {
        std::fs::read_to_string(self.path("haproxy.pid")).unwrap_or_default().trim().to_string()
    }

    /// The worker's pid: a reload would replace it.
    fn worker(&self) -> String {
        let out = Command::new("pgrep").args(["-P", &self.pid()]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid()).status();
    }
}

fn server(name: &str, port: u16) -> WantedServer {
    WantedServer { name: name.into(), addr: Some("127.0.0.1".into()), port, https: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_without_a_reload() {
    let (one, two) = (backend("one").await, backend("two").await);
    let front = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let haproxy = Haproxy::start(front, one);
    let socket = SocketAddress::parse(&haproxy.path("admin.sock").to_string_lossy());
    let worker = haproxy.worker();
    assert_eq!(ask(front).await, "one");

    let wanted = Wanted::from([("a.test".to_string(), vec![server("one", one), server("two", two)])]);
    let done = reconcile(&socket, &wanted, None, "", "ssl verify none").await.unwrap();
    assert_eq!((done.added, done.draining.len()), (1, 0));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        seen.insert(ask(front).await);
    }
    assert_eq!(seen.len(), 2, "both servers take traffic: {seen:?}");
    let again = reconcile(&socket, &wanted, None, "", "").await.unwrap();
    assert_eq!(again, Default::default(), "an unchanged backend costs one read and no command");
    let previous = wanted.clone();

    let wanted = Wanted::from([("a.test".to_string(), vec![server("two", two)])]);
    let done = reconcile(&socket, &wanted, Some(&previous), "", "").await.unwrap();
    assert_eq!(done.draining, [("a.test".to_string(), "one".to_string())], "only the changed backend is read");
    assert_eq!(finish_drains(&socket, &done.draining, Duration::from_secs(5)).await.unwrap(), 1);
    for _ in 0..4 {
        assert_eq!(ask(front).await, "two");
    }
    let left: Vec<String> = servers(&socket).await.unwrap().1.into_iter().map(|s| s.name).collect();
    assert_eq!(left, ["two"], "the drained server is deleted");
    assert_eq!(haproxy.worker(), worker, "no reload: the same worker served throughout");

    let missing = Wanted::from([("b.test".to_string(), vec![server("x", two)])]);
    let err = reconcile(&socket, &missing, Some(&previous), "", "").await.unwrap_err().to_string();
    assert!(err.contains("lacks 1 backend(s) the routes need (b.test)"), "{err}");
}
