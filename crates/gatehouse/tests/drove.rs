//! The Drove source end to end: the real binary against drove-sim's controllers, with real
//! instance servers behind the routes.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use drove_sim::{AppSpec, Auth, FaultAction, FaultRule, NodeMode, Role, Sim, SimConfig, Timings, User};
use support::client::get;
use support::{eventually, Gatehouse};

fn sim_config() -> SimConfig {
    SimConfig {
        serve_instances: true,
        timings: Timings { step_ms: 0, monitor_ms: 0, ..Timings::default() },
        ..SimConfig::default()
    }
}

fn namespace(name: &str, sim: &Sim, extra: &str) -> String {
    let urls: Vec<String> = sim.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!("[[namespaces]]\nname = \"{name}\"\ndrove = [{}]\n{extra}\n", urls.join(", "))
}

fn config(namespaces: &str) -> String {
    format!(
        "port = 0\nevent_refresh_interval_sec = 0.1\napi_timeout = 1\nstate_path = \"state.json\"\n\
         [[listeners]]\naddress = \"127.0.0.1:0\"\n{namespaces}"
    )
}

async fn body_of(at: SocketAddr, host: &str) -> (u16, String) {
    let reply = get(at, host, "/").await;
    (reply.status, reply.body)
}

/// The `app=...` parts of `requests` answers for `host`.
async fn apps_answering(at: SocketAddr, host: &str, requests: usize) -> std::collections::HashSet<String> {
    let seen = support::client::bodies(at, host, requests).await;
    seen.iter().map(|body| body.split(' ').next().unwrap_or("").to_string()).collect()
}

async fn health(gh: &Gatehouse) -> (u16, serde_json::Value) {
    let reply = gh.admin_get("/v1/health").await;
    (reply.status, serde_json::from_str(&reply.body).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_the_cluster_merge_by_vhost_and_503_without_healthy_hosts() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let gh = Gatehouse::start(&config(&namespace("stage", &sim, "")));
    let at = gh.listener();
    assert_eq!(body_of(at, "orders.local").await.0, 404);
    let v1 = sim.with(|c| c.add_app(AppSpec::web("orders", "1", "Orders.Local"), 2)).unwrap();
    eventually("orders routed", || async { body_of(at, "orders.local").await.1.starts_with("app=orders-1") }).await;

    // Blue/green: a second app under the same vhost; both are served.
    sim.with(|c| c.add_app(AppSpec::web("orders", "2", "orders.local"), 1)).unwrap();
    eventually("both versions behind one vhost", || async {
        let seen = apps_answering(at, "orders.local", 12).await;
        seen.contains("app=orders-1") && seen.contains("app=orders-2")
    })
    .await;
    sim.with(|c| c.scale(&v1, 0)).unwrap();
    eventually("old version drained", || async {
        let mut all_v2 = true;
        for _ in 0..6 {
            all_v2 &= body_of(at, "orders.local").await.1.starts_with("app=orders-2");
        }
        all_v2
    })
    .await;

    // Every instance unhealthy: the vhost is still known and answers 503, not 404.
    sim.with(|c| {
        let ids: Vec<String> = c.apps["orders-2"].instances.keys().cloned().collect();
        for id in ids {
            c.flap("orders-2", &id).unwrap();
        }
    });
    eventually("503 for a known vhost without hosts", || async { body_of(at, "orders.local").await.0 == 503 }).await;
    assert_eq!(body_of(at, "unknown.local").await.0, 404);

    let (code, h) = health(&gh).await;
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["NamespaceHealth"]["stage"]["Message"], "1 out of 3 endpoints are healthy");
    assert_eq!(h["Namespaces"]["stage"]["Leader"], sim.urls()[0]);
    assert_eq!(h["DataManagerState"]["UsingFreshDroveState"], true);
    let polls = sim.requests();
    assert!(
        polls.iter().any(|r| r.path == "/apis/v1/cluster/events/summary"
            && r.query.iter().any(|(k, v)| k == "lastSyncTime" && v != "0")),
        "lastSyncTime is echoed back"
    );
    assert!(gh.metric("gatehouse_drove_apply_seconds_count{namespace=\"stage\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_resyncs_without_withdrawing_routes() {
    let sim = Sim::start(sim_config()).await.unwrap();
    sim.with(|c| c.add_app(AppSpec::web("web", "1", "web.local"), 2)).unwrap();
    let gh = Gatehouse::start(&config(&namespace("stage", &sim, "leader_vhost = \"drove.local\"")));
    let at = gh.listener();
    eventually("web routed", || async { body_of(at, "web.local").await.0 == 200 }).await;
    let ping = get(at, "drove.local", "/apis/v1/ping").await;
    assert!(ping.body.contains("pong"), "leader_vhost routes to the leader: {}", ping.body);

    // The new leader lists no apps for 2 s while it recreates them.
    sim.with(|c| c.failover(Some(1), 2_000)).unwrap();
    let started = Instant::now();
    let mut failures = 0;
    let mut requests = 0;
    while started.elapsed() < Duration::from_millis(2_600) {
        requests += 1;
        if body_of(at, "web.local").await.0 != 200 {
            failures += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failures, 0, "{failures} of {requests} requests failed across the failover");
    eventually("the new leader is followed", || async {
        health(&gh).await.1["Namespaces"]["stage"]["Leader"] == sim.urls()[1]
    })
    .await;
    assert!(
        sim.requests().iter().any(|r| r.node == 1
            && r.path == "/apis/v1/cluster/events/summary"
            && r.query.iter().any(|(k, v)| k == "lastSyncTime" && v == "0")),
        "lastSyncTime starts over with the new leader"
    );
    assert!(get(at, "drove.local", "/apis/v1/ping").await.body.contains("pong"));
    assert!(gh.logs().iter().any(|l| l.contains("vhosts missing right after a leader change are kept")));
    assert_eq!(gh.metric("gatehouse_drove_leader_changes_total{namespace=\"stage\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_faults_keep_the_last_good_view() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let app = sim.with(|c| c.add_app(AppSpec::web("web", "1", "web.local"), 1)).unwrap();
    let gh = Gatehouse::start(&config(&namespace("stage", &sim, "")));
    let at = gh.listener();
    eventually("web routed", || async { body_of(at, "web.local").await.0 == 200 }).await;
    let faults = [
        ("FAILED envelope", FaultAction::ApiFailed { message: "Could not fetch".into() }),
        ("malformed JSON", FaultAction::MalformedJson),
        ("truncated JSON", FaultAction::TruncatedBody),
        ("proxy 502", FaultAction::Status { code: 502, body: "bad gateway".into(), content_type: "text/html".into() }),
        ("hang", FaultAction::Hang),
        ("reset", FaultAction::ConnectionReset),
        ("empty list", FaultAction::EmptyEndpoints),
    ];
    for (what, action) in faults {
        let is_empty_list = matches!(action, FaultAction::EmptyEndpoints);
        sim.inject(FaultRule::new("/apis/v1/endpoints", action).times(1));
        let before = sim.requests().iter().filter(|r| r.path == "/apis/v1/endpoints").count();
        gh.admin_post("/v1/reload", None).await;
        eventually(&format!("{what}: the read was attempted"), || async {
            sim.requests().iter().filter(|r| r.path == "/apis/v1/endpoints").count() > before
        })
        .await;
        if is_empty_list {
            // A valid empty answer is believed: the cluster really has no apps.
            eventually("an empty list removes the vhost", || async { body_of(at, "web.local").await.0 == 404 }).await;
            sim.with(|c| c.scale(&app, 2)).unwrap();
        }
        eventually(&format!("{what}: still served"), || async { body_of(at, "web.local").await.0 == 200 }).await;
    }
    let (_, h) = health(&gh).await;
    assert!(h["Namespaces"]["stage"]["LastError"].is_null(), "recovered: {h}");
    assert!(gh.logs().iter().any(|l| l.contains("controller answered FAILED: Could not fetch")));
    assert!(gh.logs().iter().any(|l| l.contains("no answer within")), "the hang hit api_timeout");
    assert!(gh.metric("drove_gateway_drove_app_sync_failed_total{namespace=\"stage\"}").await >= 5.0);

    // Every controller down: routes stay, health says so.
    for node in 0..3 {
        sim.set_mode(node, NodeMode::Down).unwrap();
    }
    eventually("health 500 with every controller down", || async {
        let (code, h) = health(&gh).await;
        code == 500 && h["NamespaceHealth"]["stage"]["Message"] == "All endpoints are down"
    })
    .await;
    assert_eq!(body_of(at, "web.local").await.0, 200, "traffic still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_sent_and_wrong_ones_are_reported() {
    let users = vec![User { name: "guest".into(), password: "guest".into(), role: Role::ExternalReadOnly }];
    let sim = Sim::start(SimConfig { auth: Auth::Basic { users }, ..sim_config() }).await.unwrap();
    sim.with(|c| c.add_app(AppSpec::web("web", "1", "web.local"), 1)).unwrap();
    let good = Gatehouse::start(&config(&namespace("stage", &sim, "user = \"guest\"\npass = \"guest\"")));
    eventually("routed with credentials", || async { body_of(good.listener(), "web.local").await.0 == 200 }).await;
    assert!(sim.requests().iter().all(|r| r.header("authorization") == Some("Basic Z3Vlc3Q6Z3Vlc3Q=")));
    let config_json = good.admin_get("/v1/config").await.body;
    assert!(!config_json.contains("\"guest\"}") && config_json.contains("<redacted>"), "{config_json}");

    let bad = Gatehouse::start(&config(&namespace("stage", &sim, "user = \"guest\"\npass = \"wrong\"")));
    eventually("401 shown per controller", || async {
        let (code, h) = health(&bad).await;
        code == 500 && h["NamespaceEndpoints"]["stage"][0]["Message"] == "HTTP 401"
    })
    .await;
    assert_eq!(body_of(bad.listener(), "web.local").await.0, 404);
    assert!(!bad.logs().iter().any(|l| l.contains("wrong")), "the password is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realm_suffix_routing_tag_and_namespaces_merged_by_vhost() {
    let (one, two) = (Sim::start(sim_config()).await.unwrap(), Sim::start(sim_config()).await.unwrap());
    one.with(|c| {
        c.add_app(AppSpec::web("a", "1", "a.apps.local").with_tags(&[("env", "blue")]), 1).unwrap();
        c.add_app(AppSpec::web("b", "1", "b.other.local"), 1).unwrap();
    });
    two.with(|c| c.add_app(AppSpec::web("a", "9", "a.apps.local"), 1)).unwrap();
    let namespaces = format!(
        "{}{}",
        namespace("one", &one, "realm_suffix = \".apps.local\"\nrouting_tag = \"env\""),
        namespace("two", &two, "realm = \"a.apps.local\"")
    );
    let gh = Gatehouse::start(&config(&namespaces));
    let at = gh.listener();
    eventually("a.apps.local served from both namespaces", || async {
        let seen = apps_answering(at, "a.apps.local", 8).await;
        seen.contains("app=a-1") && seen.contains("app=a-9")
    })
    .await;
    assert_eq!(body_of(at, "b.other.local").await.0, 404, "realm_suffix alone filters");
    let state_path = gh.dir.path().join("state.json");
    eventually("state file written", || async { state_path.exists() }).await;
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    let groups = &state["namespaces"]["one"]["Apps"]["a.apps.local"]["Groups"];
    assert_eq!(groups["blue"]["Hosts"].as_array().unwrap().len(), 1, "routing-tag group: {state}");
    assert!(gh.metric("drove_gateway_apps_ignored_by_realm_total{namespace=\"one\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_controllers_down_serves_the_state_file() {
    let sim = Sim::start(sim_config()).await.unwrap();
    sim.with(|c| c.add_app(AppSpec::web("web", "1", "web.local"), 1)).unwrap();
    let text = config(&namespace("stage", &sim, ""));
    let mut first = Gatehouse::start(&text);
    eventually("web routed", || async { body_of(first.listener(), "web.local").await.0 == 200 }).await;
    let state_path = first.dir.path().join("state.json");
    eventually("state file written", || async { state_path.exists() }).await;
    first.signal("TERM");
    first.wait_exit(Duration::from_secs(15)).expect("exits on SIGTERM");
    for node in 0..3 {
        sim.set_mode(node, NodeMode::Down).unwrap();
    }
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().unwrap());
    let second = Gatehouse::start_with(&text, dir, &[]);
    assert_eq!(body_of(second.listener(), "web.local").await.0, 200, "served at once from the state file");
    let (code, h) = health(&second).await;
    assert_eq!(code, 500, "every controller is down: {h}");
    assert_eq!(h["DataManagerState"]["UsingFreshDroveState"], false);
    assert_eq!(h["Namespaces"]["stage"]["Stale"], true);
    assert_eq!(h["Namespaces"]["stage"]["RestoredFromStateFile"], true);
    drop(second);

    // A corrupt state file is set aside with a clear log, and startup goes on.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.json"), "{ not json").unwrap();
    let third = Gatehouse::start_with(&text, dir, &[]);
    assert!(third.wait_for_log("is not a Gatehouse state file"));
    assert!(std::fs::read_dir(third.dir.path())
        .unwrap()
        .any(|e| { e.unwrap().file_name().to_string_lossy().starts_with("state.json.corrupt-") }));
    assert_eq!(body_of(third.listener(), "web.local").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_variables_define_the_namespace() {
    let sim = Sim::start(sim_config()).await.unwrap();
    sim.with(|c| c.add_app(AppSpec::web("web", "1", "web.local"), 1)).unwrap();
    let controllers = sim.urls().join(",");
    let text = "port = 0\nevent_refresh_interval_sec = 0.1\n[[listeners]]\naddress = \"127.0.0.1:0\"\n";
    let env = [
        ("DROVE_CONTROLLERS", controllers.as_str()),
        ("DROVE_CLUSTER_NAME", "prod"),
        ("NGINX_DROVE_VHOST", "drove.prod"),
    ];
    let gh = Gatehouse::start_with(text, tempfile::tempdir().unwrap(), &env);
    let at = gh.listener();
    eventually("web routed", || async { body_of(at, "web.local").await.0 == 200 }).await;
    assert!(get(at, "drove.prod", "/apis/v1/ping").await.body.contains("pong"));
    assert!(health(&gh).await.1["NamespaceHealth"]["prod"].is_object());
}
