//! drove-sim's own conformance checks (drove-api.md §6.7), over real sockets.

use std::net::SocketAddr;
use std::time::Duration;

use drove_sim::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, head: head.to_string(), body: body.to_string() }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    call(addr, "GET", path, &[], "").await
}

fn quick() -> SimConfig {
    SimConfig { timings: Timings { step_ms: 0, monitor_ms: 0, ..Timings::default() }, ..SimConfig::default() }
}

const GUEST: &str = "Basic Z3Vlc3Q6Z3Vlc3Q="; // guest:guest
const BAD: &str = "Basic Z3Vlc3Q6bm9wZQ=="; // guest:nope

#[tokio::test]
async fn ping_answers_pong_on_the_leader_and_400_elsewhere() {
    let sim = Sim::start(quick()).await.unwrap();
    let a = sim.addresses().to_vec();
    let leader = get(a[0], "/apis/v1/ping").await;
    assert_eq!(leader.status, 200);
    assert_eq!(leader.json(), serde_json::json!({"status": "SUCCESS", "data": "pong", "message": "success"}));
    for follower in &a[1..] {
        let r = get(*follower, "/apis/v1/ping").await;
        assert_eq!(r.status, 400);
        assert_eq!(
            r.json(),
            serde_json::json!({"status": "FAILED", "message": "This node is not the leader controller"}),
            "no data field when it is null"
        );
        assert_eq!(get(*follower, "/apis/v1/endpoints").await.status, 400, "every /apis/v1 path");
    }
    let ui = get(a[1], "/apis/ui/ok").await;
    assert_eq!(ui.status, 303);
    assert!(ui.head.contains(&format!("Location: http://{}/ok", a[0])), "{}", ui.head);
    sim.with(|c| c.failover(None, 0)).unwrap();
    assert_eq!(get(a[0], "/apis/v1/ping").await.status, 400, "no leader: every node 400");
    sim.with(|c| c.failover(Some(2), 0)).unwrap();
    assert_eq!(get(a[2], "/apis/v1/ping").await.status, 200);
}

#[tokio::test]
async fn auth_matrix_and_filter_order() {
    let users = vec![
        User { name: "guest".into(), password: "guest".into(), role: Role::ExternalReadOnly },
        User { name: "admin".into(), password: "admin".into(), role: Role::ExternalReadWrite },
    ];
    let sim = Sim::start(SimConfig { auth: Auth::Basic { users }, ..quick() }).await.unwrap();
    let a = sim.addresses().to_vec();
    for node in &a {
        let r = get(*node, "/apis/v1/ping").await;
        assert_eq!(r.status, 401, "auth comes before the leader check, on every node");
        assert!(r.head.contains("WWW-Authenticate: Basic realm=\"realm\""), "{}", r.head);
        assert!(r.head.contains("Content-Type: text/plain"));
        assert_eq!(r.body, "Credentials are required to access this resource.");
    }
    assert_eq!(call(a[0], "GET", "/apis/v1/ping", &[("Authorization", BAD)], "").await.status, 401);
    assert_eq!(call(a[0], "GET", "/apis/v1/ping", &[("Authorization", GUEST)], "").await.status, 200);
    assert_eq!(call(a[1], "GET", "/apis/v1/ping", &[("Authorization", GUEST)], "").await.status, 400);
    let op = r#"{"type":"SCALE","appId":"x-1","requiredInstances":1}"#;
    let forbidden = call(a[0], "POST", "/apis/v1/applications/operations", &[("Authorization", GUEST)], op).await;
    assert_eq!(forbidden.status, 403);
    assert!(forbidden.body.is_empty());
    sim.set_auth(Auth::RawHeader { value: "O-Bearer T".into(), role: Role::ExternalReadOnly });
    assert_eq!(call(a[0], "GET", "/apis/v1/ping", &[("Authorization", "O-Bearer T")], "").await.status, 200);
    assert_eq!(call(a[0], "GET", "/apis/v1/ping", &[("Authorization", "O-Bearer X")], "").await.status, 401);
    let seen = sim.requests();
    assert!(seen.iter().any(|r| r.header("authorization") == Some("O-Bearer T")), "requests are recorded");
}

#[tokio::test]
async fn endpoints_events_and_reads_have_drove_shapes() {
    let sim = Sim::start(quick()).await.unwrap();
    let a = sim.addresses()[0];
    let app =
        sim.with(|c| c.add_app(AppSpec::web("orders", "7", "orders.local").with_tags(&[("env", "blue")]), 2)).unwrap();
    sim.with(|c| c.add_app(AppSpec::web("idle", "1", "idle.local"), 0)).unwrap();
    let eps = get(a, "/apis/v1/endpoints").await.json();
    assert_eq!(eps["status"], "SUCCESS");
    assert_eq!(eps["data"].as_array().unwrap().len(), 1, "MONITORING app left out: {eps}");
    let entry = &eps["data"][0];
    assert_eq!(entry["appId"], "orders-7");
    assert_eq!(entry["appName"], "orders");
    assert_eq!(entry["vhost"], "orders.local");
    assert_eq!(entry["tags"]["env"], "blue");
    assert_eq!(entry["hosts"][0]["portType"], "HTTP");
    assert!(entry["hosts"][0]["port"].is_u64());
    assert_eq!(get(a, "/apis/v1/endpoints?app=idle").await.json()["data"], serde_json::json!([]));
    assert_eq!(get(a, "/apis/v1/endpoints/app/orders").await.json()["data"].as_array().unwrap().len(), 1);

    let summary = get(a, "/apis/v1/cluster/events/summary?lastSyncTime=0").await.json();
    let last = summary["data"]["lastSyncTime"].as_i64().unwrap();
    assert!(summary["data"]["eventsCount"]["INSTANCE_STATE_CHANGE"].as_u64().unwrap() >= 12);
    let again = get(a, &format!("/apis/v1/cluster/events/summary?lastSyncTime={last}")).await.json();
    assert_eq!(again["data"]["eventsCount"], serde_json::json!({}), "present and empty");
    assert_eq!(get(a, "/apis/v1/cluster/events/summary?lastSyncTime=abc").await.status, 404);
    let negative = get(a, "/apis/v1/cluster/events/summary?lastSyncTime=-1").await;
    assert_eq!(negative.status, 400);
    assert_eq!(
        negative.json()["data"]["validationErrors"][0],
        "query param lastSyncTime must be greater than or equal to 0"
    );
    let latest = get(a, "/apis/v1/cluster/events/latest?lastSyncTime=0&size=2").await.json();
    let events = latest["data"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert!(events[0]["time"].as_i64() >= events[1]["time"].as_i64(), "newest first");
    assert!(events[0]["id"].as_str().unwrap().len() == 36);

    let missing = get(a, "/apis/v1/applications/NOPE-1").await;
    assert_eq!(missing.status, 200);
    assert_eq!(missing.json(), serde_json::json!({"status": "FAILED", "message": "App NOPE-1 not found"}));
    let instances = get(a, &format!("/apis/v1/applications/{app}/instances")).await.json();
    let first = &instances["data"][0];
    assert!(first["instanceId"].as_str().unwrap().starts_with("AI-"));
    assert!(first["created"].is_i64(), "dates are epoch ms");
    assert_eq!(first["state"], "HEALTHY");
    let cluster = get(a, "/apis/v1/cluster").await.json();
    assert_eq!(cluster["data"]["leader"], a.to_string());
    let scale = call(
        a,
        "POST",
        "/apis/v1/applications/operations",
        &[],
        r#"{"type":"SCALE","appId":"orders-7","requiredInstances":3}"#,
    )
    .await;
    assert_eq!(scale.json()["data"]["appId"], "orders-7");
    assert_eq!(get(a, "/apis/v1/endpoints").await.json()["data"][0]["hosts"].as_array().unwrap().len(), 3);
    let refused =
        call(a, "POST", "/apis/v1/applications/operations", &[], r#"{"type":"DESTROY","appId":"orders-7"}"#).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["message"], "Command validation failure");
}

#[tokio::test]
async fn faults_and_node_modes() {
    let sim = Sim::start(quick()).await.unwrap();
    let a = sim.addresses()[0];
    sim.inject(FaultRule::new("/apis/v1/endpoints", FaultAction::ApiFailed { message: "boom".into() }).times(1));
    let failed = get(a, "/apis/v1/endpoints").await;
    assert_eq!((failed.status, failed.json()["status"].as_str()), (200, Some("FAILED")));
    assert_eq!(get(a, "/apis/v1/endpoints").await.json()["status"], "SUCCESS", "times=1 used up");
    sim.inject(FaultRule::new("/apis/v1/endpoints", FaultAction::TruncatedBody).times(1));
    let cut = get(a, "/apis/v1/endpoints").await;
    assert!(serde_json::from_str::<Value>(&cut.body).is_err(), "truncated: {}", cut.body);
    sim.inject(FaultRule::new("/apis/v1/", FaultAction::MalformedJson).times(1));
    assert!(serde_json::from_str::<Value>(&get(a, "/apis/v1/ping").await.body).is_err());
    sim.inject(FaultRule::new("/apis/v1/cluster/events", FaultAction::StaleLastSyncTime { value: 5 }).times(1));
    assert_eq!(get(a, "/apis/v1/cluster/events/summary?lastSyncTime=99").await.json()["data"]["lastSyncTime"], 5);
    sim.inject(
        FaultRule::new(
            "/apis/v1/ping",
            FaultAction::Status { code: 502, body: "bad gateway".into(), content_type: "text/plain".into() },
        )
        .on_node(0)
        .times(1),
    );
    assert_eq!(get(a, "/apis/v1/ping").await.status, 502);

    // Reset and hang at the socket level.
    sim.inject(FaultRule::new("/apis/v1/ping", FaultAction::ConnectionReset).times(1));
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET /apis/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf).await;
    assert!(read.is_err() || buf.is_empty(), "reset, no answer");
    sim.set_mode(0, NodeMode::Hang).unwrap();
    let hung = tokio::time::timeout(Duration::from_millis(300), get(a, "/apis/v1/ping")).await;
    assert!(hung.is_err(), "a hanging node never answers");
    sim.set_mode(0, NodeMode::Down).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(a).await.is_err(), "a down node refuses connections");
    sim.set_mode(0, NodeMode::Up).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(a, "/apis/v1/ping").await.status, 200, "and comes back on the same port");
}

#[tokio::test]
async fn served_instances_answer_and_control_api_drives_the_cluster() {
    let sim = Sim::start(SimConfig { serve_instances: true, ..quick() }).await.unwrap();
    let a = sim.addresses()[1];
    let created = call(a, "POST", "/__sim/apps", &[], r#"{"name":"web","vhost":"web.local","instances":1}"#).await;
    assert_eq!(created.json()["appId"], "web-1", "{}", created.body);
    let leader = sim.addresses()[0];
    let eps = get(leader, "/apis/v1/endpoints").await.json();
    let port = eps["data"][0]["hosts"][0]["port"].as_u64().unwrap() as u16;
    let reply = get(SocketAddr::from(([127, 0, 0, 1], port)), "/").await;
    assert!(reply.body.starts_with("app=web-1 instance=AI-"), "{}", reply.body);
    call(a, "POST", "/__sim/failover", &[], r#"{"to":1,"recovery_ms":150}"#).await;
    assert_eq!(get(a, "/apis/v1/ping").await.status, 200);
    assert_eq!(get(a, "/apis/v1/endpoints").await.json()["data"], serde_json::json!([]), "recovering");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(a, "/apis/v1/endpoints").await.json()["data"].as_array().unwrap().len(), 1, "recovered on time");
    call(a, "POST", "/__sim/apps/web-1/scale", &[], r#"{"instances":0}"#).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err(), "a stopped instance's server is gone");
    let state = get(a, "/__sim/state").await.json();
    assert_eq!(state["apps"][0]["state"], "MONITORING");
    assert_eq!(state["nodes"][1]["leader"], true);
}
