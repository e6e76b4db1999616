//! Deploys through the CLI and the admin socket: blue-green switches, the health gate,
//! drains, conflicts, the token model and restarts.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::backend::{self, Backend};
use support::client::{get, KeepAlive};
use support::{binary, Gatehouse};

/// A config with one listener, a file service on `file.test`, and the socket and state in
/// `state` (a folder the test owns, so it outlives one gatehouse process).
fn config(state: &Path, listen: &str, extra: &str) -> String {
    format!(
        r#"port = 0
admin_socket = "{socket}"
deploy_state = "{state_file}"
{extra}
[[listeners]]
address = "{listen}"
[[services]]
name = "file-svc"
hosts = ["file.test"]
targets = ["http://127.0.0.1:1"]
"#,
        socket = state.join("gatehouse.sock").display(),
        state_file = state.join("deploys.json").display(),
    )
}

fn socket(state: &Path) -> PathBuf {
    state.join("gatehouse.sock")
}

/// Runs the CLI against the instance whose socket is in `state`.
fn cli(state: &Path, args: &[&str]) -> Output {
    let socket = socket(state);
    Command::new(binary()).args(args).arg("--socket").arg(&socket).output().expect("run gatehouse")
}

fn deploy(state: &Path, service: &str, host: &str, target: &Backend, extra: &[&str]) -> Output {
    let addr = target.addr.to_string();
    let mut args = vec!["deploy", service, "--host", host, "--target", &addr, "--health-check-interval", "100ms"];
    args.extend_from_slice(extra);
    cli(state, &args)
}

fn ok(out: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "command failed: {text}");
    text
}

async fn backend_of(gh: &Gatehouse, host: &str) -> String {
    let reply = get(gh.listener(), host, "/").await;
    format!("{} {}", reply.status, reply.header("x-backend"))
}

/// Keep-alive clients sending GETs until stopped; counts answers and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(gh: &Gatehouse, host: &'static str, clients: usize) -> Load {
        let (stop, ok, failed) = (Arc::new(AtomicBool::new(false)), Arc::default(), Arc::default());
        let addr = gh.listener();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
                    (stop.clone(), Arc::clone(&ok), Arc::clone(&failed));
                tokio::spawn(async move {
                    let mut conn = KeepAlive::connect(addr).await;
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match conn.get(host, "/").await {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => {
                                conn = KeepAlive::connect(addr).await;
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, tasks }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_under_load_loses_no_request() {
    let (blue, green) = tokio::join!(backend::start("blue"), backend::start("green"));
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    let out = ok(&deploy(state.path(), "web", "web.test", &blue, &[]));
    assert!(out.contains("deployed web"), "{out}");
    assert_eq!(backend_of(&gh, "web.test").await, "200 blue");

    let load = Load::start(&gh, "web.test", 8);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..6 {
        let (to, name) = if round % 2 == 0 { (&green, "green") } else { (&blue, "blue") };
        let target = to.addr.to_string();
        let state_path = state.path().to_path_buf();
        let out = tokio::task::spawn_blocking(move || {
            cli(
                &state_path,
                &["deploy", "web", "--host", "web.test", "--target", &target, "--health-check-interval", "100ms"],
            )
        })
        .await
        .unwrap();
        ok(&out);
        assert_eq!(backend_of(&gh, "web.test").await, format!("200 {name}"), "round {round}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (answered, failed) = load.finish().await;
    assert_eq!(failed, 0, "{answered} answered");
    assert!(answered > 100, "the load ran ({answered} answered)");
    assert!(blue.requests() > 0 && green.requests() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gate_keeps_the_current_targets_and_exits_non_zero() {
    let blue = backend::start("blue").await;
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    ok(&deploy(state.path(), "web", "web.test", &blue, &[]));

    let dead = backend::closed_port().to_string();
    let started = Instant::now();
    let out = cli(state.path(), &["deploy", "web", "--host", "web.test", "--target", &dead, "--deploy-timeout", "1s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("failed to become healthy within 1s") && stderr.contains(&dead), "{stderr}");
    assert!(stderr.to_lowercase().contains("refused"), "the target's last error is named: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(backend_of(&gh, "web.test").await, "200 blue", "blue still serves");

    // A target that answers, but not 2xx, on the health path.
    let unhealthy = backend::start("unhealthy").await;
    let out = deploy(
        state.path(),
        "web",
        "web.test",
        &unhealthy,
        &["--health-check-path", "/status/503", "--deploy-timeout", "500ms"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"), "{out:?}");
    assert_eq!(backend_of(&gh, "web.test").await, "200 blue");

    // --force skips the gate.
    ok(&cli(state.path(), &["deploy", "web", "--host", "web.test", "--target", &dead, "--force"]));
    assert_eq!(get(gh.listener(), "web.test", "/").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_returns_only_after_a_long_response_on_the_old_target_finished() {
    let (blue, green) = tokio::join!(backend::start("blue"), backend::start("green"));
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    ok(&deploy(state.path(), "web", "web.test", &blue, &[]));

    let mut conn = KeepAlive::connect(gh.listener()).await;
    let resp =
        conn.open(http::Request::get("/stream").header("host", "web.test").body(bytes::Bytes::new()).unwrap()).await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first\n");

    let (state_path, target) = (state.path().to_path_buf(), green.addr.to_string());
    let started = Instant::now();
    let deploying = tokio::task::spawn_blocking(move || {
        let out = cli(
            &state_path,
            &["deploy", "web", "--host", "web.test", "--target", &target, "--health-check-interval", "100ms"],
        );
        (out, Instant::now())
    });
    // New requests go to green while the stream on blue is still open.
    support::eventually("green takes new requests", || async { backend_of(&gh, "web.test").await == "200 green" })
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!deploying.is_finished(), "deploy waits for the drain");
    let released = Instant::now();
    blue.stats.release.notify_one();
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap_or_default());
    }
    assert_eq!(rest, b"second\n", "the response on blue finished whole");
    let (out, returned) = deploying.await.unwrap();
    let text = ok(&out);
    assert!(returned >= released, "deploy returned after the stream ended: {text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A request whose body has not begun is at no target: a deploy does not wait for it, and
/// it goes where the route points once its body arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_its_body_follows_the_switch() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (blue, green) = tokio::join!(backend::start("blue"), backend::start("green"));
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    ok(&deploy(state.path(), "web", "web.test", &blue, &[]));

    let mut s = tokio::net::TcpStream::connect(gh.listener()).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The deploy returns although the request is open: it is at no target yet.
    ok(&tokio::task::block_in_place(|| deploy(state.path(), "web", "web.test", &green, &[])));

    s.write_all(b"hello").await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("\r\n\r\ngreen"), "{reply}");
    assert_eq!(green.last().body_len, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_tokens_and_dropped_hosts() {
    let (blue, green) = tokio::join!(backend::start("blue"), backend::start("green"));
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));

    let out = deploy(state.path(), "file-svc", "other.test", &blue, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("defined in the configuration file"), "{out:?}");
    let out = deploy(state.path(), "web", "file.test", &blue, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("`file-svc` (from file)") && stderr.contains("409"), "{stderr}");

    ok(&deploy(state.path(), "web", "a.test,b.test", &blue, &[]));
    let out = deploy(state.path(), "api", "b.test", &green, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("service `web` (from deploy)"), "{out:?}");
    ok(&deploy(state.path(), "api", "b.test", &green, &["--path-prefix", "/api"]));
    assert_eq!(get(gh.listener(), "b.test", "/api/x").await.header("x-backend"), "green");
    assert_eq!(green.last().target, "/x", "the prefix is stripped by default");

    // A redeploy without b.test leaves it behind.
    ok(&deploy(state.path(), "web", "a.test", &green, &[]));
    assert_eq!(backend_of(&gh, "a.test").await, "200 green");
    assert_eq!(get(gh.listener(), "b.test", "/").await.status, 404);

    let list = ok(&cli(state.path(), &["list"]));
    assert!(list.starts_with("Service") && list.contains("api") && list.contains("/api"), "{list}");
    let json: serde_json::Value = serde_json::from_slice(&cli(state.path(), &["list", "--json"]).stdout).unwrap();
    assert_eq!(json["services"].as_array().unwrap().len(), 2);

    // Over TCP, changing services needs the token; without one configured it is refused.
    let reply = gh.admin_post("/v1/services/web/deploy", None).await;
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("admin_token"), "{}", reply.body);
    assert_eq!(gh.admin_get("/v1/services").await.status, 200, "reading needs no token");

    ok(&cli(state.path(), &["rm", "api"]));
    assert_eq!(get(gh.listener(), "b.test", "/api/x").await.status, 404);
    let out = cli(state.path(), &["remove", "api"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not deployed"));
    let out = cli(state.path(), &["deploy", "bad name", "--target", "a:1", "--host", "x.test"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("letters"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_opens_deploys_over_tcp() {
    let blue = backend::start("blue").await;
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", "admin_token = \"s3cret\""));
    let body = format!(r#"{{"options":{{"targets":["{}"],"hosts":["web.test"]}}}}"#, blue.addr);
    let post = |token: Option<&'static str>| {
        let mut req = http::Request::post("/v1/services/web/deploy").header("host", "admin");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        support::client::send(gh.admin, req.body(bytes::Bytes::from(body.clone())).unwrap())
    };
    assert_eq!(post(None).await.status, 401);
    assert_eq!(post(Some("wrong")).await.status, 401);
    let reply = post(Some("s3cret")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(backend_of(&gh, "web.test").await, "200 blue");
    assert!(!gh.admin_get("/v1/config").await.body.contains("s3cret"), "the token is never returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_deploys_then_restart_restores_a_consistent_state() {
    let (blue, green) = tokio::join!(backend::start("blue"), backend::start("green"));
    let state = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let text = config(state.path(), &listen, "");
    for round in 0..4 {
        let gh = Gatehouse::start(&text);
        if round == 0 {
            ok(&deploy(state.path(), "web", "web.test", &blue, &[]));
        } else {
            // Served at once after the restart, from the saved state.
            let served = backend_of(&gh, "web.test").await;
            assert!(served == "200 blue" || served == "200 green", "round {round}: {served}");
        }
        // Deploys back and forth, killed at a varying moment.
        let state_path = state.path().to_path_buf();
        let (b, g) = (blue.addr.to_string(), green.addr.to_string());
        let deploys = std::thread::spawn(move || {
            for i in 0..50 {
                let target = if i % 2 == 0 { &g } else { &b };
                let out = cli(&state_path, &["deploy", "web", "--host", "web.test", "--target", target, "--force"]);
                if !out.status.success() {
                    return;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(100 + 70 * round));
        drop(gh); // SIGKILL
        deploys.join().unwrap();
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.path().join("deploys.json")).unwrap()).unwrap();
        assert_eq!(saved["version"], 1);
        assert_eq!(saved["services"].as_array().unwrap().len(), 1, "the state file is whole");
    }
    let gh = Gatehouse::start(&text);
    let health: serde_json::Value = serde_json::from_str(&gh.admin_get("/v1/health").await.body).unwrap();
    assert_eq!(health["Deploys"]["RestoreProblems"].as_array().unwrap().len(), 0, "{health}");
    let listed = ok(&cli(state.path(), &["list"]));
    assert!(listed.contains("web.test"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_entry_is_skipped_and_reported() {
    let blue = backend::start("blue").await;
    let state = tempfile::tempdir().unwrap();
    let entry = |name: &str| serde_json::json!({"name": name, "options": {"targets": [blue.addr.to_string()], "hosts": [format!("{name}.test")]}});
    let saved =
        serde_json::json!({"version": 1, "services": [entry("good"), {"name": "bad", "options": {"targets": 7}}]});
    std::fs::write(state.path().join("deploys.json"), saved.to_string()).unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    assert_eq!(backend_of(&gh, "good.test").await, "200 blue");
    let reply = gh.admin_get("/v1/health").await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("service `bad`"), "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_cancels_what_is_left_and_websockets_close_at_the_switch() {
    use futures_util::{SinkExt, StreamExt};
    let (blue, green) = tokio::join!(backend::start("blue"), backend::start("green"));
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    ok(&deploy(state.path(), "web", "web.test", &blue, &[]));
    let at = gh.listener();

    // A stream that never finishes, a request still waiting for its head, a WebSocket.
    let mut streaming = KeepAlive::connect(at).await;
    let resp = streaming
        .open(http::Request::get("/stream").header("host", "web.test").body(bytes::Bytes::new()).unwrap())
        .await;
    let mut body = resp.into_body();
    assert_eq!(&body.frame().await.unwrap().unwrap().into_data().unwrap()[..], b"first\n");
    let waiting = tokio::spawn(async move { get(at, "web.test", "/slow?ms=5000").await });
    let stream = tokio::net::TcpStream::connect(at).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://web.test/ws", stream).await.unwrap();
    ws.send("hi".into()).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "blue: hi");
    blue.wait_for_request(4).await; // the health check, the stream, the slow request, the WebSocket

    let started = Instant::now();
    let (state_path, target) = (state.path().to_path_buf(), green.addr.to_string());
    let out = tokio::task::spawn_blocking(move || {
        cli(&state_path, &["deploy", "web", "--host", "web.test", "--target", &target, "--drain-timeout", "500ms"])
    })
    .await
    .unwrap();
    let text = ok(&out);
    assert!(text.contains("2 requests cut at the drain timeout"), "{text}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(4), "{took:?}");

    let closed = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("the WebSocket was closed");
    assert!(!matches!(closed, Some(Ok(ref m)) if m.is_text()), "{closed:?}");
    let cut = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                other => return other.map(|r| r.map(|_| ())),
            }
        }
    })
    .await
    .expect("the stream ended");
    assert!(matches!(cut, Some(Err(_))), "the stream was cut, not ended cleanly: {cut:?}");
    let waited = waiting.await.unwrap();
    assert_eq!(waited.status, 504);
    assert!(waited.body.contains("drained"), "{}", waited.body);
    assert_eq!(backend_of(&gh, "web.test").await, "200 green");
    assert_eq!(gh.metric("gatehouse_proxy_errors_total{kind=\"drain_cancelled\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_requests_until_resume_and_stop_answers_with_its_message() {
    let blue = backend::start("blue").await;
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    ok(&deploy(state.path(), "web", "web.test", &blue, &[]));
    let at = gh.listener();

    ok(&cli(state.path(), &["pause", "web"]));
    let held: Vec<_> =
        (0..5).map(|i| tokio::spawn(async move { get(at, "web.test", &format!("/held-{i}")).await })).collect();
    support::eventually("five requests held", || async { gh.metric("gatehouse_paused_requests").await == 5.0 }).await;
    let probe = get(at, "web.test", "/up").await;
    assert_eq!((probe.status, probe.body.as_str()), (200, "OK\n"), "the health path is answered while paused");
    let before = blue.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(held.iter().all(|h| !h.is_finished()), "nothing is answered while paused");
    assert_eq!(blue.requests(), before, "nothing reaches the target while paused");
    let listed = ok(&cli(state.path(), &["list"]));
    assert!(listed.contains("paused"), "{listed}");

    ok(&cli(state.path(), &["resume", "web"]));
    for h in held {
        assert_eq!(h.await.unwrap().header("x-backend"), "blue");
    }
    assert_eq!(gh.metric("gatehouse_paused_requests").await, 0.0);

    // --max-pause bounds the wait.
    ok(&cli(state.path(), &["pause", "web", "--max-pause", "300ms"]));
    let started = Instant::now();
    assert_eq!(get(at, "web.test", "/").await.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(300));

    ok(&cli(state.path(), &["stop", "web", "--message", "Back at noon"]));
    let stopped = get(at, "web.test", "/").await;
    assert_eq!((stopped.status, stopped.body.as_str()), (503, "Back at noon\n"));
    assert_eq!(get(at, "web.test", "/up").await.status, 200);

    // The state survives a restart.
    drop(gh);
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    assert_eq!(get(gh.listener(), "web.test", "/").await.status, 503);
    ok(&cli(state.path(), &["resume", "web"]));
    assert_eq!(backend_of(&gh, "web.test").await, "200 blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_targets_leave_the_rotation_and_come_back() {
    let (blue, green) = tokio::join!(backend::start("blue"), backend::start("green"));
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    let targets = format!("{},{}", blue.addr, green.addr);
    ok(&cli(
        state.path(),
        &["deploy", "web", "--host", "web.test", "--target", &targets, "--health-check-interval", "100ms"],
    ));
    let seen = support::client::bodies(gh.listener(), "web.test", 6).await;
    assert_eq!(seen.len(), 2, "both targets serve: {seen:?}");

    let green_addr = green.addr;
    drop(green);
    // fall = 3 failures at 100 ms.
    support::eventually("green leaves the rotation", || async {
        gh.metric(&format!("gatehouse_target_healthy{{service=\"web\",target=\"http://{green_addr}\"}}")).await == 0.0
    })
    .await;
    let listed: serde_json::Value = serde_json::from_slice(&cli(state.path(), &["list", "--json"]).stdout).unwrap();
    let health = &listed["services"][0]["health"];
    assert_eq!(health[1]["healthy"], false, "{listed}");
    assert!(health[1]["last_error"].as_str().unwrap().to_lowercase().contains("refused"), "{listed}");
    let routes = gh.admin_get("/v1/routes").await.body;
    assert!(routes.contains("down_targets"), "{routes}");
    for _ in 0..10 {
        assert_eq!(backend_of(&gh, "web.test").await, "200 blue", "only the healthy target takes requests");
    }

    let green = backend::start_at("green", green_addr).await;
    support::eventually("green is back", || async {
        gh.metric(&format!("gatehouse_target_healthy{{service=\"web\",target=\"http://{green_addr}\"}}")).await == 1.0
    })
    .await;
    support::eventually("green takes requests again", || async { backend_of(&gh, "web.test").await == "200 green" })
        .await;

    // Every target down: all of them keep taking traffic (panic mode), never none.
    drop(green);
    drop(blue);
    support::eventually("panic mode", || async {
        gh.metric("gatehouse_health_panics_total{service=\"web\"}").await >= 1.0
    })
    .await;
    // (Pooled connections to the stopped backends may still answer.)
    let status = get(gh.listener(), "web.test", "/").await.status;
    assert!(status == 200 || status == 502, "the targets are still tried, not unrouted: {status}");
    assert!(gh.metric("gatehouse_health_checks_total{result=\"fail\"}").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_path_prefixes_and_a_service_without_hosts() {
    let (blue, green) = tokio::join!(backend::start("blue"), backend::start("green"));
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    ok(&deploy(state.path(), "assets", "a.test", &green, &["--path-prefix", "/static", "--path-prefix", "/img"]));
    let catch_all = blue.addr.to_string();
    ok(&cli(state.path(), &["deploy", "fallback", "--target", &catch_all, "--health-check-interval", "100ms"]));
    assert_eq!(get(gh.listener(), "a.test", "/img/x.png").await.header("x-backend"), "green");
    assert_eq!(green.last().target, "/x.png");
    assert_eq!(get(gh.listener(), "a.test", "/static/app.js").await.header("x-backend"), "green");
    assert_eq!(get(gh.listener(), "a.test", "/").await.status, 404, "a routed host does not fall through");
    assert_eq!(backend_of(&gh, "anything.test").await, "200 blue", "no --host: every other host");
    assert_eq!(backend_of(&gh, "file.test").await, "502 ", "the file's service keeps its host");
    let list = ok(&cli(state.path(), &["list"]));
    assert!(list.contains("/static,/img") && list.contains('*'), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamal_command_lines_buffering_and_forwarding() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blue = backend::start("blue").await;
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    let target = format!("--target={}", blue.addr);
    // What Kamal 2 runs (kamal-proxy's flag forms: --flag=value, bare booleans).
    ok(&cli(
        state.path(),
        &[
            "deploy",
            "app-web",
            &target,
            "--host=app.test",
            "--deploy-timeout=30s",
            "--drain-timeout=30s",
            "--health-check-interval=1s",
            "--health-check-timeout=5s",
            "--health-check-path=/up",
            "--target-timeout=30s",
            "--buffer-requests",
            "--buffer-responses",
            "--buffer-memory=1000",
            "--max-request-body=50000",
            "--max-response-body=20000",
            "--log-request-header=Cache-Control",
            "--log-request-header=Last-Modified",
            "--log-request-header=User-Agent",
            "--forward-headers",
        ],
    ));
    let at = gh.listener();

    // A body sent in pieces reaches the target only once whole (past the memory part, so
    // through the temp file too).
    let mut slow = tokio::net::TcpStream::connect(at).await.unwrap();
    slow.write_all(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
        .await
        .unwrap();
    let before = blue.requests();
    for _ in 0..3 {
        slow.write_all(format!("{:x}\r\n{}\r\n", 10_000, "x".repeat(10_000)).as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(blue.requests(), before, "nothing reaches the target before the body is whole");
    }
    slow.write_all(b"0\r\n\r\n").await.unwrap();
    let mut reply = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut reply)).await.unwrap().unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]).to_string();
    assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("blue 30000"), "{reply}");
    let seen = blue.last();
    assert_eq!(seen.headers["content-length"], "30000", "sent with its length, not chunked");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "--forward-headers appends");

    // Limits: the request body (413), the buffered response (502).
    let mut big = KeepAlive::connect(at).await;
    let too_big =
        http::Request::post("/").header("host", "app.test").body(bytes::Bytes::from(vec![b'y'; 60_000])).unwrap();
    assert_eq!(big.send(too_big).await.unwrap().status, 413);
    assert_eq!(get(at, "app.test", "/size?n=5000").await.body.len(), 5000);
    assert_eq!(get(at, "app.test", "/size?n=30000").await.status, 502);

    // Options that cannot be carried out here are refused with what to do, never ignored
    // (this instance has no HTTPS listener to serve a certificate on).
    for (flag, says) in [("--tls", "no listener speaks HTTPS"), ("--error-pages=/nowhere", "/nowhere")] {
        let out = cli(state.path(), &["deploy", "other", &target, "--host=o.test", flag]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{flag}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_json_line_per_request() {
    let blue = backend::start("blue").await;
    let state = tempfile::tempdir().unwrap();
    let log_path = state.path().join("access.log");
    let gh =
        Gatehouse::start(&config(state.path(), "127.0.0.1:0", &format!("access_log = \"{}\"", log_path.display())));
    ok(&deploy(
        state.path(),
        "web",
        "web.test",
        &blue,
        &["--log-request-header=Cache-Control", "--log-response-header=X-Backend"],
    ));
    let req = http::Request::get("/size?n=1234")
        .header("host", "web.test")
        .header("cache-control", "no-cache")
        .header("user-agent", "test-agent")
        .header("x-request-id", "req-1")
        .body(bytes::Bytes::new())
        .unwrap();
    assert_eq!(support::client::send(gh.listener(), req).await.status, 200);
    assert_eq!(get(gh.listener(), "nowhere.test", "/x").await.status, 404);
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    support::eventually("two lines", || async { lines().len() >= 2 }).await;
    let all = lines();
    let line = all.iter().find(|l| l["request_id"] == "req-1").expect("the request's line");
    assert_eq!(line["host"], "web.test");
    assert_eq!((line["path"].as_str(), line["query"].as_str()), (Some("/size"), Some("n=1234")));
    assert_eq!((line["status"].as_u64(), line["method"].as_str()), (Some(200), Some("GET")));
    assert_eq!(line["service"], "web");
    assert_eq!(line["target"], format!("http://{}", blue.addr));
    assert_eq!(line["bytes_sent"], 1234);
    assert_eq!((line["req_cache_control"].as_str(), line["resp_x_backend"].as_str()), (Some("no-cache"), Some("blue")));
    assert_eq!(line["user_agent"], "test-agent");
    assert_eq!(line["client_addr"], "127.0.0.1");
    assert!(line["duration"].as_u64().unwrap() > 0);
    let miss = all.iter().find(|l| l["host"] == "nowhere.test").expect("the 404's line");
    assert_eq!((miss["status"].as_u64(), &miss["service"]), (Some(404), &serde_json::Value::Null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_answer_for_the_service() {
    let state = tempfile::tempdir().unwrap();
    let pages = state.path().join("pages");
    std::fs::create_dir(&pages).unwrap();
    std::fs::write(pages.join("502.html"), "<h1>We are deploying</h1>").unwrap();
    std::fs::write(pages.join("503.html"), "<p>{{.Message}}</p>").unwrap();
    std::fs::write(pages.join("notes.txt"), "ignored").unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    let dead = backend::closed_port().to_string();
    let folder = format!("--error-pages={}", pages.display());
    ok(&cli(state.path(), &["deploy", "web", "--host", "web.test", "--target", &dead, "--force", &folder]));
    let down = get(gh.listener(), "web.test", "/").await;
    assert_eq!((down.status, down.body.as_str()), (502, "<h1>We are deploying</h1>"));
    assert!(down.header("content-type").starts_with("text/html"));
    ok(&cli(state.path(), &["stop", "web", "--message", "Back <soon>"]));
    let stopped = get(gh.listener(), "web.test", "/").await;
    assert_eq!((stopped.status, stopped.body.as_str()), (503, "<p>Back &lt;soon&gt;</p>"), "the message, escaped");
    let other = get(gh.listener(), "other.test", "/").await;
    assert_eq!(other.body, "no route for this host and path\n", "other answers keep their text");
}

/// A GET of `/` for `host` with `cookie`; which backend answered.
async fn backend_with_cookie(conn: &mut KeepAlive, host: &str, cookie: &str) -> String {
    let req = http::Request::get("/").header("host", host).header("cookie", cookie).body(bytes::Bytes::new()).unwrap();
    conn.send(req).await.expect("request").header("x-backend").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_takes_its_share_of_cookies_and_its_allowlist_and_survives_a_restart() {
    let (blue, green) = tokio::join!(backend::start("blue"), backend::start("green"));
    let state = tempfile::tempdir().unwrap();
    let text = config(state.path(), "127.0.0.1:0", "");
    let mut gh = Gatehouse::start(&text);
    ok(&deploy(state.path(), "web", "web.test", &blue, &[]));
    let refused = cli(state.path(), &["rollout", "set", "web", "--percent", "10"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("rollout deploy"));
    let green_addr = green.addr.to_string();
    ok(&cli(state.path(), &["rollout", "deploy", "web", "--target", &green_addr]));
    let mut conn = KeepAlive::connect(gh.listener()).await;
    assert_eq!(backend_with_cookie(&mut conn, "web.test", "kamal-rollout=a").await, "blue", "no split yet");

    ok(&cli(state.path(), &["rollout", "set", "web", "--percent", "30"]));
    let mut to_green = 0;
    for i in 0..1000 {
        let cookie = format!("theme=dark; kamal-rollout=user-{i}");
        let first = backend_with_cookie(&mut conn, "web.test", &cookie).await;
        assert_eq!(backend_with_cookie(&mut conn, "web.test", &cookie).await, first, "a cookie sticks to its side");
        to_green += usize::from(first == "green");
    }
    assert!((250..=350).contains(&to_green), "30% of 1000 cookie values, within 5%: {to_green}");
    assert_eq!(backend_of(&gh, "web.test").await, "200 blue", "no cookie: the active targets");

    ok(&cli(state.path(), &["rollout", "set", "web", "--percent", "0", "--allowlist", "vip,tester"]));
    assert_eq!(backend_with_cookie(&mut conn, "web.test", "kamal-rollout=vip").await, "green");
    assert_eq!(backend_with_cookie(&mut conn, "web.test", "kamal-rollout=user-1").await, "blue");
    let list = ok(&cli(state.path(), &["list"]));
    assert!(list.contains(&format!("{green_addr} (0%)")), "{list}");

    // The rollout and its split are saved: a restart keeps them.
    gh.signal("TERM");
    assert!(gh.wait_exit(Duration::from_secs(10)).is_some());
    let gh = Gatehouse::start(&text);
    let mut conn = KeepAlive::connect(gh.listener()).await;
    assert_eq!(backend_with_cookie(&mut conn, "web.test", "kamal-rollout=tester").await, "green");

    ok(&cli(state.path(), &["rollout", "stop", "web"]));
    assert_eq!(backend_with_cookie(&mut conn, "web.test", "kamal-rollout=vip").await, "blue", "stopped");
    let listed: serde_json::Value = serde_json::from_slice(&cli(state.path(), &["list", "--json"]).stdout).unwrap();
    assert!(listed["services"][0].get("rollout").is_none(), "{listed}");

    // A rollout whose targets fail the gate changes nothing.
    let closed = backend::closed_port().to_string();
    let failed = cli(state.path(), &["rollout", "deploy", "web", "--target", &closed, "--deploy-timeout", "300ms"]);
    assert!(!failed.status.success());
    assert_eq!(backend_with_cookie(&mut conn, "web.test", "kamal-rollout=vip").await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_read_targets_and_a_writer_reads_its_writes() {
    let (writer, reader) = tokio::join!(backend::start("writer"), backend::start("reader"));
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    let reader_addr = reader.addr.to_string();
    ok(&deploy(
        state.path(),
        "web",
        "web.test",
        &writer,
        &["--read-target", &reader_addr, "--writer-affinity-timeout", "3s"],
    ));
    let mut conn = KeepAlive::connect(gh.listener()).await;
    let send = |method: &str, cookie: Option<&str>| {
        let mut req = http::Request::builder().method(method).uri("/").header("host", "web.test");
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        req.body(bytes::Bytes::from_static(b"x")).unwrap()
    };
    assert_eq!(conn.send(send("GET", None)).await.unwrap().header("x-backend"), "reader");
    assert_eq!(conn.send(send("HEAD", None)).await.unwrap().header("x-backend"), "reader");
    let wrote = conn.send(send("POST", None)).await.unwrap();
    assert_eq!(wrote.header("x-backend"), "writer");
    let set_cookie = wrote.header("set-cookie").to_string();
    assert!(set_cookie.starts_with("kamal-writer=") && set_cookie.contains("Max-Age=4"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    assert_eq!(
        conn.send(send("GET", Some(&cookie))).await.unwrap().header("x-backend"),
        "writer",
        "after a write, reads go to the writer"
    );
    assert_eq!(conn.send(send("GET", Some("kamal-writer=1"))).await.unwrap().header("x-backend"), "reader", "expired");

    // WebSockets go to the writers unless --read-target-websockets.
    let stream = tokio::net::TcpStream::connect(gh.listener()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://web.test/ws", stream).await.unwrap();
    assert_eq!(writer.last().target, "/ws");
    ws.close(None).await.ok();

    // A reader that goes down leaves the rotation; reads then go to the writer.
    let listed: serde_json::Value = serde_json::from_slice(&cli(state.path(), &["list", "--json"]).stdout).unwrap();
    assert_eq!(listed["services"][0]["read_targets"][0], reader_addr.as_str(), "{listed}");
    drop(reader);
    support::eventually("the reader leaves the rotation", || async {
        gh.metric(&format!("gatehouse_target_healthy{{service=\"web\",target=\"http://{reader_addr}\"}}")).await == 0.0
    })
    .await;
    let mut fresh = KeepAlive::connect(gh.listener()).await;
    assert_eq!(fresh.send(send("GET", None)).await.unwrap().header("x-backend"), "writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_targets_are_gated_and_served() {
    let state = tempfile::tempdir().unwrap();
    let socket_path = state.path().join("app.sock");
    let app = backend::start_unix("socket-app", &socket_path).await;
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    let target = format!("unix:{}", socket_path.display());
    ok(&cli(
        state.path(),
        &["deploy", "app", "--host", "u.test", "--target", &target, "--health-check-interval", "100ms"],
    ));
    assert_eq!(app.last().target, "/up", "the gate checked the socket");
    let reply = get(gh.listener(), "u.test", "/hello").await;
    assert_eq!((reply.status, reply.header("x-backend")), (200, "socket-app"));
    assert_eq!(app.last().headers["host"], "u.test", "the client's Host is forwarded");
    let list = ok(&cli(state.path(), &["list"]));
    assert!(list.contains(&target), "{list}");

    let missing = format!("unix:{}", state.path().join("nothing.sock").display());
    let out =
        cli(state.path(), &["deploy", "app", "--host", "u.test", "--target", &missing, "--deploy-timeout", "300ms"]);
    assert!(!out.status.success(), "a socket nobody listens on fails the gate");
    assert_eq!(get(gh.listener(), "u.test", "/").await.header("x-backend"), "socket-app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canonical_host_takes_the_other_hosts_by_redirect() {
    let web = backend::start("web").await;
    let state = tempfile::tempdir().unwrap();
    let gh = Gatehouse::start(&config(state.path(), "127.0.0.1:0", ""));
    let extra = ["--host", "www.app.test", "--canonical-host", "App.test"];
    ok(&deploy(state.path(), "web", "app.test", &web, &extra));
    let before = web.requests();
    let answer = support::client::raw(
        gh.listener(),
        b"GET /a/b?c=1 HTTP/1.1\r\nHost: WWW.app.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 301"), "{answer}");
    assert!(answer.to_lowercase().contains("\r\nlocation: http://app.test:8080/a/b?c=1\r\n"), "{answer}");
    assert_eq!(web.requests(), before, "the target never sees a redirected request");
    assert_eq!(backend_of(&gh, "app.test").await, "200 web", "the canonical host is served");

    let not_ours = deploy(state.path(), "other", "o.test", &web, &["--canonical-host", "elsewhere.test"]);
    assert!(String::from_utf8_lossy(&not_ours.stderr).contains("must be one of the service's --host names"));
}
