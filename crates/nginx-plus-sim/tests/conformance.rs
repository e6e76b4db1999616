//! The fake against nginx.org's API reference: paths, methods, server defaults, validation
//! and error objects, over real sockets.

use std::net::SocketAddr;

use nginx_plus_sim::NginxPlusSim;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn call(at: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json = raw.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn versions_upstreams_and_server_lifecycle() {
    let sim = NginxPlusSim::start(&[("web", true), ("static", false)]).await.unwrap();
    let at = sim.address();
    assert_eq!(call(at, "GET", "/api/", None).await, (200, json!([1, 2, 3, 4, 5, 6, 7, 8, 9])));
    let (status, err) = call(at, "GET", "/api/99/http/upstreams", None).await;
    assert_eq!((status, err["error"]["code"].as_str()), (404, Some("UnknownVersion")));
    let (status, all) = call(at, "GET", "/api/8/http/upstreams", None).await;
    assert!(status == 200 && all["web"]["peers"] == json!([]), "{all}");

    let (status, created) = call(
        at,
        "POST",
        "/api/8/http/upstreams/web/servers/",
        Some(json!({"server": "10.0.0.1:8080", "max_fails": 0, "fail_timeout": "5s", "slow_start": "0s"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        created,
        json!({"id": 0, "server": "10.0.0.1:8080", "weight": 1, "max_conns": 0, "max_fails": 0, "fail_timeout": "5s", "slow_start": "0s", "route": "", "backup": false, "down": false})
    );
    let (_, second) = call(at, "POST", "/api/8/http/upstreams/web/servers", Some(json!({"server": "10.0.0.2"}))).await;
    assert_eq!(
        (second["id"].as_u64(), second["server"].as_str()),
        (Some(1), Some("10.0.0.2:80")),
        "port 80 by default"
    );
    let (status, patched) =
        call(at, "PATCH", "/api/8/http/upstreams/web/servers/1/", Some(json!({"down": true, "weight": 3}))).await;
    assert_eq!((status, patched["down"].as_bool(), patched["weight"].as_u64()), (200, Some(true), Some(3)));
    let (status, left) = call(at, "DELETE", "/api/8/http/upstreams/web/servers/0", None).await;
    assert_eq!((status, left.as_array().map(Vec::len)), (200, Some(1)), "DELETE answers the remaining servers");
    assert_eq!(sim.servers("web"), ["10.0.0.2:80"]);
    let (_, listed) = call(at, "GET", "/api/8/http/upstreams/web/servers", None).await;
    assert_eq!(listed[0]["id"], 1);
}

#[tokio::test]
async fn errors_follow_the_reference() {
    let sim = NginxPlusSim::start(&[("web", true), ("static", false)]).await.unwrap();
    let at = sim.address();
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_string();
    let cases = [
        ("GET", "/api/8/http/upstreams/nope/servers", None, 404, "UpstreamNotFound"),
        ("GET", "/api/8/http/upstreams/static/servers", None, 400, "UpstreamStatic"),
        ("GET", "/api/8/http/upstreams/web/servers/7", None, 404, "UpstreamServerNotFound"),
        ("POST", "/api/8/http/upstreams/web/servers", Some(json!({"weight": 2})), 400, "UpstreamConfFormatError"),
        (
            "POST",
            "/api/8/http/upstreams/web/servers",
            Some(json!({"server": "a:1", "colour": "red"})),
            400,
            "UpstreamConfFormatError",
        ),
        ("POST", "/api/8/http/upstreams/web/servers", Some(json!({"server": "bad host!"})), 400, "UpstreamBadAddress"),
        (
            "POST",
            "/api/8/http/upstreams/web/servers",
            Some(json!({"server": "a:1", "weight": 0})),
            400,
            "UpstreamBadWeight",
        ),
        (
            "POST",
            "/api/8/http/upstreams/web/servers",
            Some(json!({"server": "a:1", "fail_timeout": "soon"})),
            400,
            "UpstreamBadFailTimeout",
        ),
        (
            "POST",
            "/api/8/http/upstreams/web/servers",
            Some(json!({"server": "a:1", "route": ["x"]})),
            400,
            "UpstreamConfFormatError",
        ),
    ];
    for (method, path, body, status, expected) in cases {
        let (got, err) = call(at, method, path, body).await;
        assert_eq!((got, code(&err)), (status, expected.to_string()), "{method} {path}: {err}");
        assert!(err["request_id"].is_string() && err["href"].as_str().unwrap_or("").contains("ngx_http_api_module"));
    }
    let (_, created) = call(at, "POST", "/api/8/http/upstreams/web/servers", Some(json!({"server": "a:1"}))).await;
    let (status, err) = call(at, "PATCH", "/api/8/http/upstreams/web/servers/0", Some(json!({"backup": true}))).await;
    assert_eq!((status, code(&err)), (400, "UpstreamConfFormatError".to_string()), "backup cannot be changed");
    assert_eq!(created["id"], 0);
    assert!(sim.requests().iter().any(|r| r == "PATCH /api/8/http/upstreams/web/servers/0"));
}
