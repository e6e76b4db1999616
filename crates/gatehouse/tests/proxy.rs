//! The native proxy's behaviour, end to end: real binary, real sockets, real backends.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use support::backend::{self, closed_port};
use support::client::{self, get, raw, status_of, KeepAlive};
use support::Gatehouse;

fn config(services: &str) -> String {
    config_with("", services)
}

fn config_with(top_level: &str, services: &str) -> String {
    format!("port = 0\nxproxy = \"test-proxy\"\n{top_level}\n[[listeners]]\naddress = \"127.0.0.1:0\"\n{services}")
}

fn service(name: &str, hosts: &str, targets: &[String], extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!("[[services]]\nname = \"{name}\"\nhosts = [{hosts}]\ntargets = [{}]\n{extra}\n", targets.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_longest_path_prefix() {
    let (exact, wild, api, v2) =
        tokio::join!(backend::start("exact"), backend::start("wild"), backend::start("api"), backend::start("v2"));
    let gh = Gatehouse::start(&config(
        &[
            service("exact", "\"app.example.com\"", &[exact.url()], ""),
            service("wild", "\"*.example.com\"", &[wild.url()], ""),
            service("api", "\"app.example.com\"", &[api.url()], "path_prefix = \"/api\"\nstrip_prefix = true"),
            service("v2", "\"app.example.com\"", &[v2.url()], "path_prefix = \"/api/v2\""),
        ]
        .concat(),
    ));
    let at = gh.listener();
    assert_eq!(get(at, "app.example.com", "/").await.header("x-backend"), "exact");
    assert_eq!(get(at, "APP.Example.COM:8080", "/x").await.header("x-backend"), "exact", "case and port ignored");
    assert_eq!(get(at, "www.example.com", "/").await.header("x-backend"), "wild");
    assert_eq!(get(at, "a.b.example.com", "/").await.header("x-backend"), "wild");
    assert_eq!(get(at, "app.example.com", "/api/users?id=7").await.header("x-backend"), "api");
    assert_eq!(api.last().target, "/users?id=7", "prefix stripped, query kept");
    assert_eq!(get(at, "app.example.com", "/api").await.header("x-backend"), "api");
    assert_eq!(api.last().target, "/");
    assert_eq!(get(at, "app.example.com", "/api/v2/x").await.header("x-backend"), "v2");
    assert_eq!(v2.last().target, "/api/v2/x", "not stripped");
    assert_eq!(get(at, "app.example.com", "/apix").await.header("x-backend"), "exact", "segment boundary");

    let missing = get(at, "nowhere.test", "/").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(missing.header("x-proxy"), "test-proxy");
    assert_eq!(get(at, "example.com", "/").await.status, 404, "a wildcard does not cover its bare suffix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_headers_like_a_reverse_proxy() {
    let b = backend::start("b").await;
    let gh = Gatehouse::start(&config(&service("s", "\"h.test\"", &[b.url()], "")));
    let req = Request::get("/p")
        .header("host", "h.test")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9v")
        .header("x-custom", "kept")
        .body(Bytes::new())
        .unwrap();
    let reply = client::send(gh.listener(), req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-proxy"), "test-proxy");
    assert!(reply.headers.get("x-hop").is_none(), "hop-by-hop headers named by the target's Connection are removed");
    let seen = b.last().headers;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "client value replaced");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "h.test");
    assert_eq!(seen["host"], "h.test", "Host preserved");
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(seen["x-request-id"].len(), 32, "request id generated");
    for gone in ["x-drop-me", "keep-alive", "proxy-authorization"] {
        assert!(!seen.contains_key(gone), "{gone} must not be forwarded");
    }
    let req = Request::get("/").header("host", "h.test").header("x-request-id", "req-42").body(Bytes::new()).unwrap();
    client::send(gh.listener(), req).await;
    assert_eq!(b.last().headers["x-request-id"], "req-42", "client request id kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_by_policy() {
    let (a, b) = tokio::join!(backend::start("a"), backend::start("b"));
    let weighted = format!(
        "[[services]]\nname = \"rr\"\nhosts = [\"rr.test\"]\ntargets = [{{ url = \"{}\", weight = 3 }}, \"{}\"]\n",
        a.url(),
        b.url()
    );
    let gh = Gatehouse::start(&config(
        &[
            weighted,
            service("sticky", "\"ip.test\"", &[a.url(), b.url()], "balance = \"ip_hash\""),
            service("p2c", "\"p2c.test\"", &[a.url(), b.url()], "balance = \"least_requests\""),
        ]
        .concat(),
    ));
    let mut conn = KeepAlive::connect(gh.listener()).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let r = conn.get("rr.test", "/").await.unwrap();
        *counts.entry(r.header("x-backend").to_string()).or_default() += 1;
    }
    assert_eq!((counts["a"], counts["b"]), (30, 10), "weights 3:1");

    let first = conn.get("ip.test", "/").await.unwrap().header("x-backend").to_string();
    for _ in 0..20 {
        assert_eq!(conn.get("ip.test", "/").await.unwrap().header("x-backend"), first, "same client, same target");
    }
    let mut used = std::collections::HashSet::new();
    for _ in 0..40 {
        used.insert(conn.get("p2c.test", "/").await.unwrap().header("x-backend").to_string());
    }
    assert_eq!(used.len(), 2, "least_requests uses both targets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_statuses() {
    let (slow, good) = tokio::join!(backend::start("slow"), backend::start("good"));
    let refused = format!("http://{}", closed_port());
    let gh = Gatehouse::start(&config(
        &[
            service("down", "\"down.test\"", &[refused.clone(), format!("http://{}", closed_port())], ""),
            service("retry", "\"retry.test\"", &[refused.clone(), good.url()], "retries = 1"),
            service("kept", "\"kept.test\"", &[refused.clone(), good.url()], "fail_timeout = 0"),
            service("slow", "\"slow.test\"", &[slow.url()], "response_header_timeout = \"300ms\""),
            service("empty", "\"empty.test\"", &[], ""),
            service("limited", "\"limit.test\"", &[good.url()], "max_body_size = 100"),
        ]
        .concat(),
    ));
    let at = gh.listener();
    let down = get(at, "down.test", "/").await;
    assert_eq!(down.status, 502, "{down:?}");
    assert_eq!(down.body, "no target could be reached\n");
    for _ in 0..6 {
        let r = get(at, "retry.test", "/").await;
        assert_eq!((r.status, r.header("x-backend")), (200, "good"), "a refused target is skipped");
    }
    let post =
        client::send(at, Request::post("/").header("host", "retry.test").body(Bytes::from_static(b"body")).unwrap())
            .await;
    assert_eq!(post.status, 200, "nothing was sent to the refusing target, so a POST is retried too");
    // Passive health: the refusal ejected the target for fail_timeout, so only the first
    // request that met it paid for the refusal.
    assert_eq!(gh.metric("gatehouse_target_ejections_total{service=\"retry\"}").await, 1.0);
    for _ in 0..4 {
        assert_eq!(get(at, "kept.test", "/").await.status, 200);
    }
    assert_eq!(gh.metric("gatehouse_target_ejections_total{service=\"kept\"}").await, 0.0, "fail_timeout = 0");
    for _ in 0..3 {
        assert_eq!(get(at, "down.test", "/").await.status, 502, "all ejected: still tried, never unrouted");
    }
    assert_eq!(gh.metric("gatehouse_target_ejections_total{service=\"down\"}").await, 8.0, "both, each time");
    assert_eq!(get(at, "slow.test", "/slow?ms=3000").await.status, 504);
    assert_eq!(get(at, "empty.test", "/").await.status, 503);

    let big =
        client::send(at, Request::post("/").header("host", "limit.test").body(Bytes::from(vec![b'x'; 101])).unwrap())
            .await;
    assert_eq!(big.status, 413);
    let ok =
        client::send(at, Request::post("/").header("host", "limit.test").body(Bytes::from(vec![b'x'; 100])).unwrap())
            .await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "good 100"));
    let before = good.requests();
    let chunked = raw(at, b"POST / HTTP/1.1\r\nHost: limit.test\r\nTransfer-Encoding: chunked\r\n\r\n50\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n50\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n0\r\n\r\n").await;
    assert_eq!(status_of(&chunked), 413, "{chunked}");
    assert!(good.requests() <= before + 1);

    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"upstream_unreachable\"}").await >= 1.0);
    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"upstream_timeout\"}").await >= 1.0);
    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"body_too_large\"}").await >= 2.0);
    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"no_targets\"}").await >= 1.0);
    assert!(gh.metric("gatehouse_requests_total{service=\"down\",code_class=\"5xx\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_rejected_and_never_forwarded() {
    let b = backend::start("b").await;
    let gh = Gatehouse::start(&config(&service("s", "\"h.test\"", &[b.url()], "")));
    let at = gh.listener();
    let cases: &[(&[u8], u16, &str)] = &[
        (b"POST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "CL with TE"),
        (b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, "TE with CL"),
        (b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "TE not chunked"),
        (b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, "TE list"),
        (b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "two TE"),
        (b"POST / HTTP/1.0\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "TE on 1.0"),
        (b"POST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, "two lengths"),
        (b"G@T / HTTP/1.1\r\nHost: h.test\r\n\r\n", 400, "bad method"),
        (b"GET / HTTP/1.1\r\nHost : h.test\r\n\r\n", 400, "space before colon"),
        (b"GET / HTTP/1.1\r\nHost: h.test\r\nX: a\r\n b\r\n\r\n", 400, "obs-fold"),
        (b"GET /\r\n\r\n", 400, "HTTP/0.9"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "no Host"),
        (b"GET / HTTP/1.1\r\nHost: h.test\r\nHost: other.test\r\n\r\n", 400, "two Hosts"),
        (b"CONNECT h.test:443 HTTP/1.1\r\nHost: h.test\r\n\r\n", 405, "CONNECT"),
        (b"TRACE / HTTP/1.1\r\nHost: h.test\r\n\r\n", 405, "TRACE"),
    ];
    for (request, status, what) in cases {
        let reply = raw(at, request).await;
        assert_eq!(status_of(&reply), *status, "{what}: {reply}");
    }
    let huge = format!("GET / HTTP/1.1\r\nHost: h.test\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000));
    assert_eq!(status_of(&raw(at, huge.as_bytes()).await), 431, "header section over 64 KiB");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: h.test\r\n{many}\r\n");
    assert_eq!(status_of(&raw(at, many.as_bytes()).await), 431, "too many headers");
    assert_eq!(b.requests(), 0, "nothing malformed reached the backend");

    // A smuggling attempt after a valid request on the same connection.
    let reply = raw(at, b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\nPOST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h.test\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("HTTP/1.1 400"), "{reply}");
    assert_eq!(b.requests(), 1, "only the first request was forwarded");
    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"malformed_request\"}").await >= 8.0);
    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"headers_too_large\"}").await >= 2.0);
    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"bad_request\"}").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_request_targets_are_strict_and_forwarded_in_normal_form() {
    let b = backend::start("b").await;
    let gh = Gatehouse::start(&config(&service("s", "\"a.test\", \"*.a.test\"", &[b.url()], "")));
    let at = gh.listener();
    let refused: &[(&[u8], &str)] = &[
        (b"GET / HTTP/1.1\r\nHost: a.test:@evil.test\r\n\r\n", "credentials after the port"),
        (b"GET / HTTP/1.1\r\nHost: a.test:80, evil.test\r\n\r\n", "a list"),
        (b"GET / HTTP/1.1\r\nHost: evil.test/.a.test\r\n\r\n", "a path that ends like a wildcard"),
        (b"GET / HTTP/1.1\r\nHost: [a.test]\r\n\r\n", "a bracketed name"),
        (b"GET / HTTP/1.1\r\nHost: a..test\r\n\r\n", "an empty label"),
        (b"GET http://a.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n", "absolute form against Host"),
        (b"GET http://a.test/ HTTP/1.1\r\n\r\n", "absolute form without Host on 1.1"),
        (b"GET /#frag HTTP/1.1\r\nHost: a.test\r\n\r\n", "a fragment"),
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a.test\r\n\r\n", "raw non-ASCII bytes"),
        (b"GET * HTTP/1.1\r\nHost: a.test\r\n\r\n", "asterisk form for GET"),
        (b"GET a.test:80 HTTP/1.1\r\nHost: a.test\r\n\r\n", "authority form for GET"),
    ];
    for (request, what) in refused {
        let reply = raw(at, request).await;
        assert_eq!(status_of(&reply), 400, "{what}: {reply}");
    }
    assert_eq!(b.requests(), 0, "nothing refused reached the target");

    // What a client claims about its origin never reaches the target.
    let reply = raw(
        at,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /admin\r\nX-Forwarded-Server: evil\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = b.last();
    let mut names: Vec<&str> = seen
        .headers
        .keys()
        .map(|n| n.as_str())
        .filter(|n| n.contains("forward") || n.contains("real") || n.contains('_'))
        .collect();
    names.sort();
    assert_eq!(names, ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]);
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");

    // Accepted values reach the target in normal form, as Host and X-Forwarded-Host.
    for (request, host, target) in [
        (&b"GET /x HTTP/1.1\r\nHost: A.Test.\r\n\r\n"[..], "a.test", "/x"),
        (b"GET /x HTTP/1.1\r\nHost: www.a.test:080\r\n\r\n", "www.a.test:80", "/x"),
        (b"GET http://A.test?q=1 HTTP/1.1\r\nHost: a.test\r\n\r\n", "a.test", "/?q=1"),
        (b"GET http://a.test:8080/p HTTP/1.0\r\n\r\n", "a.test:8080", "/p"),
    ] {
        let reply = raw(at, request).await;
        assert_eq!(status_of(&reply), 200, "{reply}");
        let seen = b.last();
        assert_eq!((seen.headers["host"].to_str().unwrap(), seen.target.as_str()), (host, target));
        assert_eq!(seen.headers["x-forwarded-host"], host);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_connections_alive_on_both_sides() {
    let b = backend::start("b").await;
    let gh = Gatehouse::start(&config_with("workers = 1", &service("s", "\"h.test\"", &[b.url()], "")));
    let mut conn = KeepAlive::connect(gh.listener()).await;
    for i in 0..50 {
        let r = conn.get("h.test", &format!("/n{i}")).await.expect("keep-alive request");
        assert_eq!(r.status, 200);
    }
    assert_eq!(b.requests(), 50);
    assert_eq!(b.connections(), 1, "one pooled upstream connection served all requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_bodies_without_buffering_them() {
    let b = backend::start("b").await;
    let gh = Gatehouse::start(&config(&service("s", "\"h.test\"", &[b.url()], "")));
    let mut conn = KeepAlive::connect(gh.listener()).await;
    let resp = conn.open(Request::get("/stream").header("host", "h.test").body(Bytes::new()).unwrap()).await;
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first part arrives before the backend finishes");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "first\n");
    b.stats.release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect()).await.unwrap().unwrap().to_bytes();
    assert_eq!(rest, "second\n");

    let upload = Bytes::from(vec![b'u'; 8 << 20]);
    let r = conn.send(Request::post("/").header("host", "h.test").body(upload).unwrap()).await.unwrap();
    assert_eq!(r.body, format!("b {}", 8 << 20));
    let r = conn.get("h.test", &format!("/size?n={}", 8 << 20)).await.unwrap();
    assert_eq!(r.body.len(), 8 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_websockets_both_ways() {
    let b = backend::start("ws").await;
    let gh = Gatehouse::start(&config(&service("s", "\"ws.test\"", &[b.url()], "")));
    let stream = tokio::net::TcpStream::connect(gh.listener()).await.unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async("ws://ws.test/ws", stream).await.expect("upgrade through the proxy");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-proxy"], "test-proxy");
    for i in 0..5 {
        ws.send(format!("hello {i}").into()).await.unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(msg.to_text().unwrap(), format!("ws: hello {i}"));
    }
    assert!(gh.metric("gatehouse_open_websockets").await >= 1.0);
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_http2_to_targets_that_ask_for_it() {
    let b = backend::start_h2c("grpc").await;
    // One worker: pools are per worker thread.
    let gh = Gatehouse::start(&config_with("workers = 1", &service("s", "\"g.test\"", &[b.url()], "http2 = true")));
    for _ in 0..3 {
        let r = client::send(
            gh.listener(),
            Request::post("/pkg.Svc/Call").header("host", "g.test").body(Bytes::from_static(b"abc")).unwrap(),
        )
        .await;
        assert_eq!((r.status, r.body.as_str()), (200, "grpc 3"));
    }
    let seen = b.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.target, "/pkg.Svc/Call");
    assert_eq!(b.connections(), 1, "one multiplexed connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_https_targets_unless_told_not_to() {
    let ca = support::certs::Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let b = backend::start_tls("secure", &leaf.cert_pem, &leaf.key_pem).await;
    let url = format!("https://localhost:{}", b.addr.port());
    // Health checks go over TLS too, with the service's verification.
    let check = "[services.health_check]\ninterval = \"100ms\"\nrise = 1\nfall = 1";
    let services = [
        service("checked", "\"checked.test\"", std::slice::from_ref(&url), check),
        service("unchecked", "\"unchecked.test\"", std::slice::from_ref(&url), &format!("tls_verify = false\n{check}")),
    ]
    .concat();
    let healthy = |service: &str| format!("gatehouse_target_healthy{{service=\"{service}\",target=\"{url}\"}}");
    let untrusting = Gatehouse::start(&config(&services));
    assert_eq!(get(untrusting.listener(), "checked.test", "/").await.status, 502, "unknown CA refused");
    assert_eq!(get(untrusting.listener(), "unchecked.test", "/").await.status, 200);
    support::eventually("the check of the unknown CA fails", || async {
        untrusting.metric(&healthy("checked")).await == 0.0
    })
    .await;
    assert_eq!(untrusting.metric(&healthy("unchecked")).await, 1.0);
    assert!(untrusting.metric("gatehouse_health_checks_total{result=\"pass\"}").await >= 1.0);

    let dir = tempfile::tempdir().unwrap();
    let ca_file = support::write(dir.path(), "ca.pem", &ca.pem());
    let trusting = Gatehouse::start_with(&config(&services), dir, &[("SSL_CERT_FILE", ca_file.to_str().unwrap())]);
    let r = get(trusting.listener(), "checked.test", "/").await;
    assert_eq!((r.status, r.header("x-backend")), (200, "secure"), "trusted CA accepted");
    support::eventually("checks of the trusted target pass", || async {
        trusting.metric("gatehouse_health_checks_total{result=\"pass\"}").await >= 4.0
    })
    .await;
    assert_eq!(trusting.metric(&healthy("checked")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_services_with_a_health_check_take_sick_targets_out_and_back() {
    let (blue, green) = tokio::join!(backend::start("blue"), backend::start("green"));
    let check = "[services.health_check]\npath = \"/up\"\ninterval = \"100ms\"\nrise = 2\nfall = 2";
    let gh = Gatehouse::start(&config(&service("web", "\"web.test\"", &[blue.url(), green.url()], check)));
    let at = gh.listener();
    support::eventually("both targets are checked", || async {
        gh.metric("gatehouse_health_checks_total{result=\"pass\"}").await >= 4.0
    })
    .await;
    let green_addr = green.addr;
    let gauge = format!("gatehouse_target_healthy{{service=\"web\",target=\"http://{green_addr}\"}}");
    assert_eq!(gh.metric(&gauge).await, 1.0);
    drop(green);
    support::eventually("green leaves the rotation", || async { gh.metric(&gauge).await == 0.0 }).await;
    let routes = gh.admin_get("/v1/routes").await.body;
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(routes["services"][0]["down_targets"][0]["port"], green_addr.port(), "{routes}");
    for _ in 0..6 {
        assert_eq!(get(at, "web.test", "/").await.header("x-backend"), "blue");
    }
    let _green = backend::start_at("green", green_addr).await;
    support::eventually("green is back after two passes", || async { gh.metric(&gauge).await == 1.0 }).await;
    support::eventually("green takes requests again", || async {
        get(at, "web.test", "/").await.header("x-backend") == "green"
    })
    .await;
}
