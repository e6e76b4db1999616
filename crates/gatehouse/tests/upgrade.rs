//! Hitless binary upgrades with the real binary: `gatehouse upgrade` starts a new process on
//! the same sockets; requests, streams, WebSockets and idle keep-alive connections on the old
//! one finish there, new ones go to the new one, deployed services and Drove views carry
//! over, systemd is told the new main process, and a new process that cannot start leaves
//! the old one serving and says why.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use drove_sim::{AppSpec, NodeMode, Sim, SimConfig, Timings};
use futures_util::{SinkExt, StreamExt};
use support::{backend, binary, client, eventually, Gatehouse};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// The process a successful upgrade started, killed when the test ends (the harness only
/// knows the first one).
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        // SAFETY: a plain system call on a process this test started.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Runs `gatehouse upgrade` against the instance's admin socket.
fn upgrade(gatehouse: &Gatehouse) -> std::process::Output {
    let socket = gatehouse.dir.path().join("gatehouse.sock");
    Command::new(binary()).arg("upgrade").arg("--socket").arg(&socket).output().expect("run gatehouse upgrade")
}

fn upgraded(gatehouse: &Gatehouse) -> Successor {
    let out = upgrade(gatehouse);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}{}\n{}", String::from_utf8_lossy(&out.stderr), gatehouse.logs().join("\n"));
    let pid = said.split_whitespace().find_map(|w| w.parse::<u32>().ok()).expect("the new process id");
    Successor(pid)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

fn config(blue: &backend::Backend) -> String {
    format!(
        "port = 0\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[[services]]\nname = \"web\"\nhosts = [\"web.test\"]\ntargets = [\"{}\"]\n",
        blue.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_finishes_everything_in_flight_and_serves_on_the_same_sockets() {
    let blue = backend::start("blue").await;
    let mut gatehouse = Gatehouse::start(&config(&blue));
    let at = gatehouse.listener();
    let old = gatehouse_pid(&gatehouse).await;

    // A streaming response under way, a WebSocket, an idle keep-alive connection, and a
    // deployed service.
    let mut stream = tokio::net::TcpStream::connect(at).await.unwrap();
    stream.write_all(b"GET /stream HTTP/1.1\r\nHost: web.test\r\n\r\n").await.unwrap();
    let head = client::read_until(&mut stream, |s| s.contains("first\n")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut socket, _) =
        tokio_tungstenite::client_async("ws://web.test/ws", tokio::net::TcpStream::connect(at).await.unwrap())
            .await
            .unwrap();
    let mut idle = client::KeepAlive::connect(at).await;
    assert_eq!(idle.get("web.test", "/").await.unwrap().status, 200);
    let green = backend::start("green").await;
    let socket_path = gatehouse.dir.path().join("gatehouse.sock");
    let deploy = Command::new(binary())
        .args(["deploy", "shop", "--host", "shop.test", "--target"])
        .arg(green.url().trim_start_matches("http://"))
        .arg("--socket")
        .arg(&socket_path)
        .output()
        .unwrap();
    assert!(deploy.status.success(), "{}", String::from_utf8_lossy(&deploy.stderr));

    let successor = upgraded(&gatehouse);
    assert_ne!(successor.0, old);
    assert_eq!(gatehouse_pid(&gatehouse).await, successor.0, "the admin API on the same address is the new one's");
    // New connections, on the same address, reach the new process; the deployed service
    // came along.
    for _ in 0..20 {
        assert_eq!(client::get(at, "web.test", "/").await.status, 200);
    }
    assert_eq!(client::get(at, "shop.test", "/").await.body, "green 0");
    // The old process still carries what it had: the idle connection's next request is
    // answered (and told to close), the WebSocket echoes, the stream ends whole.
    let reply = idle.get("web.test", "/").await.unwrap();
    assert_eq!((reply.status, reply.header("connection")), (200, "close"));
    socket.send(Message::text("still here")).await.unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "blue: still here");
    assert!(gatehouse.wait_exit(Duration::from_millis(300)).is_none(), "the old process waits for the WebSocket");
    blue.stats.release.notify_one();
    let rest = client::read_until(&mut stream, |s| s.ends_with("0\r\n\r\n")).await;
    assert!(rest.contains("second\n"), "{rest}");
    socket.close(None).await.unwrap();
    drop((socket, stream, idle));
    // Nothing left on the old process: it exits, cleanly, well before its drain timeout.
    let status = gatehouse.wait_exit(Duration::from_secs(5)).expect("the old process exits once idle");
    assert!(status.success(), "{status}");
    assert!(alive(successor.0));
    assert!(socket_path.exists(), "the admin socket stays with the new process");
    assert_eq!(client::get(at, "web.test", "/").await.status, 200);

    // And the new process upgrades in turn.
    let third = upgraded(&gatehouse);
    assert_eq!(gatehouse_pid(&gatehouse).await, third.0);
    eventually("the second process exits", || async { !alive(successor.0) }).await;
}

/// The process answering the admin API, from `/v1/health`.
async fn gatehouse_pid(gatehouse: &Gatehouse) -> u32 {
    let health: serde_json::Value = serde_json::from_str(&gatehouse.admin_get("/v1/health").await.body).unwrap();
    health["Pid"].as_u64().expect("Pid in /v1/health") as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_cannot_start_leaves_the_old_one_serving_and_says_why() {
    let blue = backend::start("blue").await;
    let mut gatehouse = Gatehouse::start(&config(&blue));
    let good = std::fs::read_to_string(&gatehouse.config_path).unwrap();
    gatehouse.write_config(&format!("{good}bogus = 1\n"));
    let out = upgrade(&gatehouse);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("the new process did not start") && said.contains("gatehouse.toml:") && said.contains("bogus"),
        "{said}"
    );
    assert!(gatehouse.wait_exit(Duration::from_millis(200)).is_none(), "the old process serves on");
    assert_eq!(client::get(gatehouse.listener(), "web.test", "/").await.status, 200);
    assert!(gatehouse.logs().iter().any(|l| l.contains("upgrade failed")), "{}", gatehouse.logs().join("\n"));

    // Fixed, the next upgrade goes through.
    gatehouse.write_config(&good);
    let successor = upgraded(&gatehouse);
    assert_eq!(gatehouse_pid(&gatehouse).await, successor.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drove_views_carry_over_without_a_state_file_and_systemd_learns_the_new_main_pid() {
    let sim = Sim::start(SimConfig {
        serve_instances: true,
        timings: Timings { step_ms: 0, monitor_ms: 0, ..Timings::default() },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.with(|c| c.add_app(AppSpec::web("web", "1", "web.local"), 1)).unwrap();
    let urls: Vec<String> = sim.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let text = format!(
        "port = 0\nevent_refresh_interval_sec = 0.1\napi_timeout = 1\nstate_persistence_enabled = false\n\
         [[listeners]]\naddress = \"127.0.0.1:0\"\n[[namespaces]]\nname = \"stage\"\ndrove = [{}]\n",
        urls.join(", ")
    );
    let sockets = tempfile::tempdir().unwrap();
    let notify = sockets.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify).unwrap();
    systemd.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let env = [("NOTIFY_SOCKET", notify.to_str().unwrap())];
    let gatehouse = Gatehouse::start_with(&text, tempfile::tempdir().unwrap(), &env);
    eventually("web routed", || async { client::get(gatehouse.listener(), "web.local", "/").await.status == 200 })
        .await;
    // The controllers go away: only the old process's view can route web.local now.
    for node in 0..3 {
        sim.set_mode(node, NodeMode::Down).unwrap();
    }
    let successor = upgraded(&gatehouse);
    assert_eq!(client::get(gatehouse.listener(), "web.local", "/").await.status, 200, "the view came along");
    let said = messages(&systemd, Duration::from_secs(2));
    assert!(said.iter().any(|m| m.contains(&format!("MAINPID={}", successor.0))), "{said:?}");
    assert!(!said.iter().any(|m| m.contains("STOPPING=1")), "the service does not stop: {said:?}");
    assert!(alive(successor.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_start_the_pid_file_follows_the_new_process_and_stop_stops_it() {
    let blue = backend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let config = support::write(&root, "gatehouse.toml", &config(&blue));
    let mut gatehouse =
        Gatehouse::spawn(&["start"], dir, config.clone(), &[("GATEHOUSE_CONFIG", config.to_str().unwrap())]);
    let pid_file = root.join("gatehouse.pid");
    let successor = upgraded(&gatehouse);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), successor.0.to_string());
    gatehouse.wait_exit(Duration::from_secs(5)).expect("the old process exits");
    assert!(pid_file.exists(), "the old process leaves the new one's pid file");
    let stop = Command::new(binary()).arg("stop").env("XDG_RUNTIME_DIR", &root).output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert!(!alive(successor.0) && !pid_file.exists());
}

/// Every message systemd gets within `window`.
fn messages(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + window;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_old_process_keeps_no_listening_socket_open() {
    let blue = backend::start("blue").await;
    let mut gatehouse = Gatehouse::start(&config(&blue));
    let at = gatehouse.listener();
    // A WebSocket keeps the old process draining.
    let (_socket, _) =
        tokio_tungstenite::client_async("ws://web.test/ws", tokio::net::TcpStream::connect(at).await.unwrap())
            .await
            .unwrap();
    let successor = upgraded(&gatehouse);
    // SAFETY: a plain system call on the process the upgrade started.
    unsafe { libc::kill(successor.0 as i32, libc::SIGTERM) };
    eventually("the new process exits", || async { !alive(successor.0) }).await;
    assert!(gatehouse.wait_exit(Duration::from_millis(100)).is_none(), "the old one still drains");
    // Nothing listens any more: a connection is refused, not queued where no one accepts.
    let refused = tokio::net::TcpStream::connect(at).await;
    assert!(refused.is_err(), "the port still accepts connections");
}
