//! Hot reconfiguration and the admin API.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use support::client::{get, KeepAlive};
use support::{backend, Gatehouse};

fn config(host_target: &str, extra_services: &str, ws_target: &str) -> String {
    format!(
        r#"port = 0
admin_token = "let-me-in"
[[listeners]]
address = "127.0.0.1:0"
[[services]]
name = "main"
hosts = ["h.test"]
targets = ["{host_target}"]
[[services]]
name = "ws"
hosts = ["ws.test"]
targets = ["{ws_target}"]
{extra_services}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_routes_and_keeps_what_is_open() {
    let (one, two, ws) = tokio::join!(backend::start("one"), backend::start("two"), backend::start("ws"));
    let gh = Gatehouse::start(&config(&one.url(), "", &ws.url()));
    let at = gh.listener();
    let mut kept = KeepAlive::connect(at).await;
    assert_eq!(kept.get("h.test", "/").await.unwrap().header("x-backend"), "one");
    let stream = tokio::net::TcpStream::connect(at).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async("ws://ws.test/ws", stream).await.unwrap();
    let slow = tokio::spawn(async move { get(at, "h.test", "/slow?ms=1500").await });
    one.wait_for_request(2).await;

    gh.write_config(&config(
        &two.url(),
        "[[services]]\nname = \"new\"\nhosts = [\"new.test\"]\ntargets = [\"http://127.0.0.1:1\"]\n",
        &ws.url(),
    ));
    gh.signal("HUP");
    assert!(gh.wait_for_log("configuration reloaded"));

    assert_eq!(kept.get("h.test", "/").await.unwrap().header("x-backend"), "two", "same client connection, new table");
    assert_eq!(get(at, "new.test", "/").await.status, 502, "the new service exists");
    let in_flight = slow.await.unwrap();
    assert_eq!(
        (in_flight.status, in_flight.header("x-backend")),
        (200, "one"),
        "a request in flight finished on the old target"
    );
    socket.send("still there?".into()).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echo.to_text().unwrap(), "ws: still there?", "the WebSocket survived");
    let routes = gh.admin_get("/v1/routes").await;
    assert!(routes.body.contains("\"generation\":2") && routes.body.contains("new.test"), "{}", routes.body);
    assert_eq!(gh.metric("gatehouse_route_table_generation").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_old_table() {
    let (one, ws) = tokio::join!(backend::start("one"), backend::start("ws"));
    let gh = Gatehouse::start(&config(&one.url(), "", &ws.url()));
    gh.write_config("port = 0\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[[services]]\nname = \"x\"\nhosts = [\"h.test\"]\ntargets = [\"ftp://nope\"]\n");
    let reply = gh.admin_post("/v1/reload", Some("let-me-in")).await;
    assert_eq!(reply.status, 422);
    assert!(
        reply.body.contains("gatehouse.toml:7:12: target `ftp://nope` must start with http:// or https://"),
        "{}",
        reply.body
    );
    let health = gh.admin_get("/v1/health").await;
    assert_eq!(health.status, 500);
    assert!(
        health.body.contains("ftp://nope") && health.body.contains("\"RouteTableGeneration\":1"),
        "{}",
        health.body
    );
    assert!(gh.wait_for_log("reload failed; keeping the current configuration"));
    assert_eq!(get(gh.listener(), "h.test", "/").await.header("x-backend"), "one", "still serving the old table");
    assert_eq!(gh.metric("gatehouse_reloads_total{result=\"failure\"}").await, 1.0);

    gh.write_config(&config(&one.url(), "", &ws.url()));
    assert_eq!(gh.admin_post("/v1/reload", Some("let-me-in")).await.status, 200);
    assert_eq!(gh.admin_get("/v1/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_reloads_under_load() {
    let (one, two, ws) = tokio::join!(backend::start("one"), backend::start("two"), backend::start("ws"));
    let gh = Arc::new(Gatehouse::start(&config(&one.url(), "", &ws.url())));
    let at = gh.listener();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = KeepAlive::connect(at).await;
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match conn.get("h.test", "/").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for i in 0..20 {
        let target = if i % 2 == 0 { two.url() } else { one.url() };
        gh.write_config(&config(&target, "", &ws.url()));
        let reply = gh.admin_post("/v1/reload", Some("let-me-in")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100, "the load ran");
    assert_eq!(gh.metric("gatehouse_reloads_total{result=\"success\"}").await, 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_reports_and_guards() {
    let (one, ws) = tokio::join!(backend::start("one"), backend::start("ws"));
    let gh = Gatehouse::start(&config(&one.url(), "", &ws.url()));
    assert_eq!(gh.admin.ip().to_string(), "127.0.0.1", "loopback by default");
    let root = gh.admin_get("/").await;
    assert_eq!(root.body, format!("version: {}\n", env!("CARGO_PKG_VERSION")));

    let cfg = gh.admin_get("/v1/config").await;
    assert_eq!(cfg.status, 200);
    assert!(cfg.body.contains("\"token\":\"<redacted>\"") && !cfg.body.contains("let-me-in"), "{}", cfg.body);

    assert_eq!(gh.admin_post("/v1/reload", None).await.status, 401);
    assert_eq!(gh.admin_post("/v1/reload", Some("wrong")).await.status, 401);
    assert_eq!(gh.admin_get("/v1/reload").await.status, 401, "drove-gateway's GET works too, behind the token");
    let ok = gh.admin_post("/v1/reload", Some("let-me-in")).await;
    assert_eq!(ok.status, 200);
    assert!(ok.body.contains("\"generation\":2"), "{}", ok.body);

    get(gh.listener(), "h.test", "/").await;
    let metrics = gh.admin_get("/v1/metrics").await.body;
    for name in [
        "gatehouse_requests_total{service=\"main\",code_class=\"2xx\"} 1",
        "gatehouse_upstream_response_seconds_bucket",
        "gatehouse_open_connections",
        "gatehouse_route_table_generation 2",
        "gatehouse_reloads_total{result=\"success\"} 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    let health = gh.admin_get("/v1/health").await;
    assert_eq!(health.status, 200);
    assert!(health.body.contains("\"Healthy\":true"), "{}", health.body);

    gh.write_config(&config(&one.url(), "", &ws.url()).replace("127.0.0.1:0", "127.0.0.1:1"));
    gh.admin_post("/v1/reload", Some("let-me-in")).await;
    assert!(gh.wait_for_log("takes a restart"), "listener changes are reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight() {
    let (one, ws) = tokio::join!(backend::start("one"), backend::start("ws"));
    let mut gh = Gatehouse::start(&config(&one.url(), "", &ws.url()));
    let at = gh.listener();
    let slow = tokio::spawn(async move {
        let mut conn = KeepAlive::connect(at).await;
        conn.send(Request::get("/slow?ms=800").header("host", "h.test").body(Bytes::new()).unwrap()).await
    });
    one.wait_for_request(1).await;
    gh.signal("TERM");
    let reply = slow.await.unwrap().expect("the request in flight completes");
    assert_eq!(reply.status, 200);
    let status = gh.wait_exit(Duration::from_secs(15)).expect("gatehouse exits");
    assert!(status.success());
    assert!(tokio::net::TcpStream::connect(at).await.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drove_gateway_restart_signals_never_stop_the_process() {
    let main = backend::start("main").await;
    let gh = Gatehouse::start(&config(&main.url(), "", &main.url()));
    for signal in ["USR1", "USR2", "USR1", "USR2"] {
        gh.signal(signal);
    }
    assert!(gh.wait_for_log("SIGUSR2"));
    assert_eq!(get(gh.listener(), "h.test", "/").await.status, 200);
    assert_eq!(gh.admin_get("/v1/health").await.status, 200);
}
