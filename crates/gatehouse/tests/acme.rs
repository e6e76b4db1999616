//! Automatic certificates against a real ACME CA (Pebble, real validation): HTTP-01,
//! TLS-ALPN-01 and DNS-01 each issue a certificate that curl verifies against Pebble's root;
//! a restart serves the stored certificate with the CA down; a failing CA shows in
//! /v1/health; renewal swaps the certificate under load with no failed request or handshake.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use support::backend;
use support::pebble::{curl, free_port, verified_get, Pebble};
use support::{binary, Gatehouse};

/// The config of an instance with a plain listener on `http` and an HTTPS one on `https`.
fn config(http: u16, https: u16, acme: &str, services: &str) -> String {
    format!(
        "port = 0\n{acme}\n[[listeners]]\naddress = \"127.0.0.1:{http}\"\n\n[[listeners]]\naddress = \"127.0.0.1:{https}\"\ntls = true\n\n{services}"
    )
}

fn web_service(target: &str, hosts: &str) -> String {
    format!("[[services]]\nname = \"web\"\nhosts = [{hosts}]\ntargets = [\"{target}\"]\ntls = \"auto\"\n")
}

/// Waits (at most 20 s) until `host` answers over HTTPS with a certificate `root` verifies.
fn wait_verified(host: &str, port: u16, root: &Path, gatehouse: &Gatehouse, pebble: &Pebble) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, text) = verified_get(host, port, "/", root);
        if ok {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no verified answer for {host}: {text}\ngatehouse:\n{}\npebble:\n{}",
            gatehouse.logs().join("\n"),
            pebble.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pebble, a backend and Gatehouse serving `app.test` with a certificate from HTTP-01.
struct Issued {
    pebble: Pebble,
    _blue: backend::Backend,
    store: tempfile::TempDir,
    config: String,
    gatehouse: Gatehouse,
    /// Pebble's issuing root, for curl.
    root: std::path::PathBuf,
    http: u16,
    https: u16,
}

/// Starts everything and waits until `app.test` answers with a verified certificate.
async fn issued(validity: Option<Duration>) -> Issued {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, validity);
    let blue = backend::start("blue").await;
    let store = tempfile::tempdir().unwrap();
    let service = format!("{}hsts_max_age = \"1d\"\n", web_service(&blue.url(), "\"app.test\""));
    let text = config(http, https, &pebble.acme_table(store.path(), "http-01"), &service);
    let gatehouse = Gatehouse::start(&text);
    let root = pebble.issuing_root();
    let started = Instant::now();
    let body = wait_verified("app.test", https, &root, &gatehouse, &pebble);
    assert!(body.starts_with("blue"), "{body}");
    eprintln!("first verified HTTPS answer after {:?}", started.elapsed());
    Issued { pebble, _blue: blue, store, config: text, gatehouse, root, http, https }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_at_once_and_a_restart_serves_the_stored_certificate_with_the_ca_down() {
    let Issued { mut pebble, _blue: _backend, store, config: text, gatehouse, root, http, https } = issued(None).await;
    assert!(gatehouse.logs().iter().any(|l| l.contains("answered an HTTP-01 validation")));

    // Plain HTTP is redirected; a token that is not pending is not answered by Gatehouse.
    let plain: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let reply = support::client::get(plain, "app.test", "/.well-known/acme-challenge/not-pending").await;
    assert_eq!(reply.status, 301, "{}", reply.body);
    assert!(!reply.headers.contains_key("strict-transport-security"), "never over plain HTTP (RFC 6797)");
    let resolve = format!("app.test:{https}:127.0.0.1");
    let url = format!("https://app.test:{https}/");
    let head = curl(&["-i", "--resolve", &resolve, "--cacert", root.to_str().unwrap(), &url]);
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(head.contains("\r\nstrict-transport-security: max-age=86400\r\n"), "{head}");
    let own = curl(&["-i", "--resolve", &resolve, "--cacert", root.to_str().unwrap(), &format!("{url}own-hsts")]);
    let own = String::from_utf8_lossy(&own.stdout).to_ascii_lowercase();
    assert_eq!(own.matches("strict-transport-security").count(), 1, "the target's own policy wins: {own}");
    assert!(own.contains("strict-transport-security: max-age=5\r\n"), "{own}");
    assert_eq!(reply.headers["location"], format!("https://app.test:{https}/.well-known/acme-challenge/not-pending"));

    // What the admin API shows, and the stored file is private.
    let shown: serde_json::Value = serde_json::from_str(&gatehouse.admin_get("/v1/certificates").await.body).unwrap();
    let cert = &shown["certificates"][0];
    assert_eq!((cert["service"].as_str(), cert["names"][0].as_str()), (Some("web"), Some("app.test")), "{shown}");
    assert!(cert["issuer"].as_str().unwrap().contains("Pebble"), "{shown}");
    assert!(cert["not_after"].is_string() && cert["renew_at"].is_string() && cert["failures"] == 0, "{shown}");
    let stored = store.path().join("certificates/web.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&stored).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let health = gatehouse.admin_get("/v1/health").await;
    assert!(health.status == 200 && health.body.contains("\"Acme\""), "{}", health.body);

    // Restart with the CA gone: the stored certificate serves from the first handshake.
    drop(gatehouse);
    pebble.stop();
    let again = Gatehouse::start(&text);
    let (ok, body) = verified_get("app.test", https, "/", &root);
    assert!(ok && body.starts_with("blue"), "{body}\n{}", again.logs().join("\n"));
    assert!(again.logs().iter().any(|l| l.contains("stored certificate loaded")));
    assert!(!again.logs().iter().any(|l| l.contains("ACME order created")), "nothing new is ordered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues_for_a_deploy_with_tls() {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, None);
    let blue = backend::start("blue").await;
    let store = tempfile::tempdir().unwrap();
    let text = config(http, https, &pebble.acme_table(store.path(), "tls-alpn-01"), "");
    let gatehouse = Gatehouse::start(&text);
    let socket = gatehouse.dir.path().join("gatehouse.sock");
    let cli =
        |args: &[&str]| std::process::Command::new(binary()).args(args).arg("--socket").arg(&socket).output().unwrap();
    let target = blue.addr.to_string();
    let out =
        cli(&["deploy", "web", "--host", "tls.test", "--target", &target, "--tls", "--health-check-interval", "100ms"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = pebble.issuing_root();
    assert!(wait_verified("tls.test", https, &root, &gatehouse, &pebble).starts_with("blue"));
    assert!(gatehouse.logs().iter().any(|l| l.contains("answered a TLS-ALPN-01 validation")));
    let listed = cli(&["certs"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("tls.test") && listed.contains("valid") && listed.contains("Pebble"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_issues_a_wildcard_through_the_hook() {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, None);
    let blue = backend::start("blue").await;
    let store = tempfile::tempdir().unwrap();
    // The hook sets and clears TXT records through challtestsrv's management API.
    let hook = support::write(
        store.path(),
        "dns-hook.sh",
        &format!(
            "#!/bin/sh\nset -e\ncase \"$1\" in\n  present) path=set-txt; body=\"{{\\\"host\\\":\\\"$2.\\\",\\\"value\\\":\\\"$3\\\"}}\" ;;\n  cleanup) path=clear-txt; body=\"{{\\\"host\\\":\\\"$2.\\\"}}\" ;;\nesac\ncurl -sS --fail --max-time 5 -d \"$body\" http://{}/$path\necho \"$1 $2\" >> {}/hook.log\n",
            pebble.dns_management,
            store.path().display()
        ),
    );
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Gatehouse looks for the record through challtestsrv, as Pebble does, before validation.
    let acme = format!(
        "{}dns_hook = \"{}\"\ndns_resolver = \"{}\"\n",
        pebble.acme_table(store.path(), "dns-01"),
        hook.display(),
        pebble.dns
    );
    let gatehouse = Gatehouse::start(&config(http, https, &acme, &web_service(&blue.url(), "\"*.w.test\"")));
    let root = pebble.issuing_root();
    assert!(wait_verified("a.w.test", https, &root, &gatehouse, &pebble).starts_with("blue"));
    let hook_log = std::fs::read_to_string(store.path().join("hook.log")).unwrap();
    assert!(
        hook_log.contains("present _acme-challenge.w.test") && hook_log.contains("cleanup _acme-challenge.w.test"),
        "{hook_log}"
    );
    assert!(gatehouse.logs().iter().any(|l| l.contains("DNS-01 record visible")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_validation_shows_in_health_and_wildcards_need_dns01() {
    let (http, https) = (free_port(), free_port());
    // The CA validates HTTP-01 on a port where nothing listens.
    let pebble = Pebble::start(free_port(), https, None);
    let blue = backend::start("blue").await;
    let store = tempfile::tempdir().unwrap();
    let services = format!(
        "{}\n[[services]]\nname = \"wild\"\nhosts = [\"*.x.test\"]\ntargets = [\"{}\"]\ntls = \"auto\"\n",
        web_service(&blue.url(), "\"app.test\""),
        blue.url()
    );
    let gatehouse = Gatehouse::start(&config(http, https, &pebble.acme_table(store.path(), "http-01"), &services));
    support::eventually("both orders fail", || async {
        let shown = gatehouse.admin_get("/v1/certificates").await.body;
        let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
        v["certificates"]
            .as_array()
            .is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["failures"].as_u64() >= Some(1)))
    })
    .await;
    let health = gatehouse.admin_get("/v1/health").await;
    assert_eq!(health.status, 500, "{}", health.body);
    assert!(health.body.contains("wildcard names can only be validated with dns-01"), "{}", health.body);
    assert!(
        health.body.contains("Connection refused")
            || health.body.contains("connection refused")
            || health.body.contains("validation"),
        "{}",
        health.body
    );
    assert!(gatehouse.logs().iter().any(|l| l.contains("ACME order failed")));
}

/// A TLS connection to `addr` for `name`, trusting only `root_pem`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    root_pem: &str,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let config = support::client::tls_client(root_pem, &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn count<T, E: std::fmt::Display>(&self, what: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                Some(value)
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("{what} failed: {e}");
                None
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_the_certificate_under_load_without_a_failed_request_or_handshake() {
    // 30 s certificates: renewed 20 s after issue.
    // Bound whole: the CA and the backend must outlive the load.
    let Issued { gatehouse, root, https, pebble: _ca, _blue: _backend, store: _store, .. } =
        issued(Some(Duration::from_secs(30))).await;
    let root_pem = std::fs::read_to_string(&root).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    let not_after = || async {
        let shown: serde_json::Value =
            serde_json::from_str(&gatehouse.admin_get("/v1/certificates").await.body).unwrap();
        shown["certificates"][0]["not_after"].as_str().unwrap_or_default().to_string()
    };
    let first = not_after().await;

    let stop = Arc::new(AtomicBool::new(false));
    let (keep_alive, handshakes, websocket) =
        (Arc::new(Tally::default()), Arc::new(Tally::default()), Arc::new(Tally::default()));
    let leaves = Arc::new(Mutex::new(HashSet::new()));
    let mut load = Vec::new();
    {
        // One keep-alive connection, a request every 10 ms.
        let (stop, tally, root_pem) = (stop.clone(), keep_alive.clone(), root_pem.clone());
        load.push(tokio::spawn(async move {
            let tls = tls_connect(addr, &root_pem, "app.test").await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get("/").header("host", "app.test").body(Full::new(Bytes::new())).unwrap();
                let sent = sender.send_request(req).await;
                if let Some(resp) = tally.count("keep-alive request", sent) {
                    let status = resp.status();
                    let _ = resp.into_body().collect().await;
                    tally.count("keep-alive status", if status == 200 { Ok(()) } else { Err(status) });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    {
        // A new handshake for every request.
        let (stop, tally, root_pem, leaves) = (stop.clone(), handshakes.clone(), root_pem.clone(), leaves.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let got = support::client::tls_get(addr, &root_pem, "app.test", true, &[b"http/1.1"], "/").await;
                if let Some(reply) = tally.count("handshake", got) {
                    leaves.lock().unwrap().insert(reply.leaf.to_vec());
                }
            }
        }));
    }
    {
        // A WebSocket over TLS, a message every 50 ms.
        let (stop, tally, root_pem) = (stop.clone(), websocket.clone(), root_pem.clone());
        load.push(tokio::spawn(async move {
            let tls = tls_connect(addr, &root_pem, "app.test").await.unwrap();
            let (mut ws, _) = tokio_tungstenite::client_async("wss://app.test/ws", tls).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let echoed = async {
                    ws.send("ping".into()).await.map_err(|e| e.to_string())?;
                    match ws.next().await {
                        Some(Ok(m)) if m.to_text().is_ok_and(|t| t == "blue: ping") => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                };
                tally.count("websocket message", echoed.await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut renewed = false;
    while Instant::now() < deadline {
        if not_after().await != first {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Keep the load on a little after the swap.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(renewed, "not renewed within 45 s:\n{}", gatehouse.logs().join("\n"));
    for (what, tally) in [("keep-alive", &keep_alive), ("handshakes", &handshakes), ("websocket", &websocket)] {
        let (ok, failed) = (tally.ok.load(Ordering::Relaxed), tally.failed.load(Ordering::Relaxed));
        eprintln!("{what}: {ok} ok, {failed} failed");
        assert!(ok > 10 && failed == 0, "{what}: {ok} ok, {failed} failed");
    }
    assert!(leaves.lock().unwrap().len() >= 2, "handshakes saw the old and the new certificate");
    let metrics = gatehouse.admin_get("/v1/metrics").await.body;
    assert!(metrics.contains("gatehouse_acme_orders_total{result=\"issued\",challenge=\"http-01\"} 2"), "{metrics}");
    assert!(metrics.contains("gatehouse_acme_certificate_expiry_timestamp_seconds{service=\"web\"}"), "{metrics}");
}

/// The platform's `ask` endpoint: 200 for names starting with "allowed", 403 for the rest;
/// records every name asked.
async fn ask_server() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = vec![0u8; 2048];
            let n = stream.read(&mut head).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&head[..n]).into_owned();
            let domain =
                head.split_once("domain=").map(|(_, rest)| rest.split([' ', '&']).next().unwrap_or("").to_string());
            let domain = domain.unwrap_or_default();
            let status = if domain.starts_with("allowed") { "200 OK" } else { "403 Forbidden" };
            seen.lock().unwrap().push(domain);
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (addr, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_tls_issues_during_the_first_handshake_for_names_the_ask_url_allows() {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, None);
    let blue = backend::start("blue").await;
    let (ask, asked) = ask_server().await;
    let store = tempfile::tempdir().unwrap();
    let acme = format!(
        "{}on_demand_ask = \"http://{ask}/allowed\"\non_demand_per_minute = 2\n",
        pebble.acme_table(store.path(), "tls-alpn-01")
    );
    // A platform routing every host to one application (customers' own domains).
    let services = format!("[[services]]\nname = \"platform\"\nhosts = [\"*\"]\ntargets = [\"{}\"]\n", blue.url());
    let gatehouse = Gatehouse::start(&config(http, https, &acme, &services));
    let root = pebble.issuing_root();
    let started = Instant::now();
    let (ok, body) = verified_get("allowed.test", https, "/", &root);
    assert!(ok && body.starts_with("blue"), "{body}\n{}\n{}", gatehouse.logs().join("\n"), pebble.log());
    eprintln!("first handshake with an on-demand certificate took {:?}", started.elapsed());
    let (ok, again) = verified_get("allowed.test", https, "/", &root);
    assert!(ok, "{again}");
    let (ok, refused) = verified_get("denied.test", https, "/", &root);
    assert!(!ok, "a name the ask URL refuses gets no certificate: {refused}");
    // Two orders started this minute: a third new name waits for the rate, unasked.
    let (ok, limited) = verified_get("allowed-2.test", https, "/", &root);
    assert!(!ok, "over the rate limit: {limited}");
    assert_eq!(*asked.lock().unwrap(), ["allowed.test", "denied.test"], "asked once per new name, not per handshake");
    // The log line may reach the test's reader a moment after the handshake ended.
    assert!(gatehouse.wait_for_log("over the rate limit"), "{}", gatehouse.logs().join("\n"));
    let shown = gatehouse.admin_get("/v1/certificates").await.body;
    assert!(shown.contains("on-demand:allowed.test") && !shown.contains("denied.test"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_requiring_external_account_binding_gets_it() {
    let (http, https) = (free_port(), free_port());
    // A 32-byte HMAC key, base64url, as ZeroSSL or step-ca hand them out.
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start_with(http, https, None, Some(("kid-1", key)));
    let blue = backend::start("blue").await;
    let store = tempfile::tempdir().unwrap();
    let mut acme = pebble.acme_table(store.path(), "http-01");
    let without = Gatehouse::start(&config(http, https, &acme, &web_service(&blue.url(), "\"app.test\"")));
    support::eventually("an account without a binding is refused", || async {
        without.admin_get("/v1/certificates").await.body.contains("externalAccount")
    })
    .await;
    drop(without);
    acme.push_str(&format!("eab_kid = \"kid-1\"\neab_mac_key = \"{key}\"\n"));
    let with = Gatehouse::start(&config(http, https, &acme, &web_service(&blue.url(), "\"app.test\"")));
    let root = pebble.issuing_root();
    assert!(wait_verified("app.test", https, &root, &with, &pebble).starts_with("blue"));
    assert!(!with.admin_get("/v1/config").await.body.contains(key), "the MAC key is never shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_fails_keeps_the_current_certificate_serving_and_shows_in_health() {
    // 20 s certificates: the renewal is due 13.3 s after issue, with the CA gone by then.
    let Issued { mut pebble, gatehouse, root, https, _blue: _backend, store: _store, .. } =
        issued(Some(Duration::from_secs(20))).await;
    pebble.stop();
    let deadline = Instant::now() + Duration::from_secs(25);
    while gatehouse.admin_get("/v1/health").await.status != 500 {
        assert!(Instant::now() < deadline, "the failed renewal does not show:\n{}", gatehouse.logs().join("\n"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = gatehouse.admin_get("/v1/health").await.body;
    assert!(health.contains("\"Failing\"") && health.contains("\"web\""), "{health}");
    let (ok, body) = verified_get("app.test", https, "/", &root);
    assert!(ok && body.starts_with("blue"), "the current certificate still serves: {body}");
    let metrics = gatehouse.admin_get("/v1/metrics").await.body;
    assert!(metrics.contains("gatehouse_acme_consecutive_failures{service=\"web\"} 1"), "{metrics}");
}

/// A TLS server on loopback with `cert_pem` and `key_pem`; returns it and its port.
async fn tls_server(cert_pem: &str, key_pem: &str) -> (tokio::net::TcpListener, tokio_rustls::TlsAcceptor, u16) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, tokio_rustls::TlsAcceptor::from(Arc::new(config)), port)
}

/// The next request on `stream` (its head lowercased, and its whole bytes), reading into
/// `seen`; `None` once the client closed.
async fn next_request<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    seen: &mut Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if seen.len() >= end + 4 + length {
                let request = seen.drain(..end + 4 + length).collect();
                return Some((head, request));
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// A CA that rate-limits: it serves its directory and nonces, and answers every other
/// request 429 `rateLimited` with `Retry-After: 3600`, as Let's Encrypt does over a limit.
/// (Pebble has no rate limits; everything else here is Pebble.)
async fn rate_limiting_ca(ca: &support::certs::Ca) -> u16 {
    use tokio::io::AsyncWriteExt;
    let leaf = ca.leaf(&["localhost"]);
    let (listener, acceptor, port) = tls_server(&leaf.cert_pem, &leaf.key_pem).await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut seen = Vec::new();
                while let Some((head, _)) = next_request(&mut tls, &mut seen).await {
                    let base = format!("https://localhost:{port}");
                    let answer = if head.starts_with("get /dir ") {
                        let body = format!(
                            "{{\"newNonce\":\"{base}/nonce\",\"newAccount\":\"{base}/account\",\"newOrder\":\"{base}/order\",\"revokeCert\":\"{base}/revoke\",\"keyChange\":\"{base}/key\"}}"
                        );
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    } else if head.contains(" /nonce ") {
                        "HTTP/1.1 200 OK\r\nReplay-Nonce: bm9uY2U\r\nCache-Control: no-store\r\nContent-Length: 0\r\n\r\n".to_string()
                    } else {
                        let body = "{\"type\":\"urn:ietf:params:acme:error:rateLimited\",\"detail\":\"too many new accounts; slow down\",\"status\":429}";
                        format!(
                            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/problem+json\r\nReplay-Nonce: bm9uY2U\r\nRetry-After: 3600\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    if tls.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Pebble in Debian (2.4) has no renewal information (RFC 9773). This front adds the
/// `renewalInfo` endpoint to Pebble's directory and answers it with a window that has
/// already opened; everything else goes to Pebble unchanged, on Pebble's own certificate
/// (Pebble builds its URLs from the Host header, so they name the front). Returns the
/// front's directory URL and how many renewal-information requests it answered.
async fn pebble_with_renewal_info(pebble: &Pebble) -> (String, Arc<AtomicU64>) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = |name: &str| std::fs::read_to_string(pebble.dir.path().join(name)).unwrap();
    let (listener, acceptor, port) = tls_server(&read("pebble.pem"), &read("pebble.key")).await;
    let upstream: std::net::SocketAddr =
        pebble.directory.trim_start_matches("https://").trim_end_matches("/dir").parse().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(&pebble.https_root).unwrap()).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let asked = Arc::new(AtomicU64::new(0));
    let counted = asked.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, client, counted) = (acceptor.clone(), client.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut seen = Vec::new();
                while let Some((head, request)) = next_request(&mut tls, &mut seen).await {
                    if head.contains(" /renewal-info/") {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let now = std::time::SystemTime::now();
                        let body = format!(
                            "{{\"suggestedWindow\":{{\"start\":\"{}\",\"end\":\"{}\"}}}}",
                            gatehouse_templated::clock::rfc3339(now - Duration::from_secs(3600)),
                            gatehouse_templated::clock::rfc3339(now - Duration::from_secs(1))
                        );
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nRetry-After: 21600\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    // To Pebble, closed after its answer (read to the end, then passed on).
                    let text = String::from_utf8_lossy(&request).to_string();
                    let (request_head, body) = text.split_once("\r\n\r\n").unwrap();
                    let kept: Vec<&str> =
                        request_head.lines().filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
                    let forwarded = format!("{}\r\nConnection: close\r\n\r\n{body}", kept.join("\r\n"));
                    let tcp = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                    let mut to_pebble =
                        tokio_rustls::TlsConnector::from(client.clone()).connect(name, tcp).await.unwrap();
                    to_pebble.write_all(forwarded.as_bytes()).await.unwrap();
                    let mut answer = Vec::new();
                    let _ = to_pebble.read_to_end(&mut answer).await;
                    if head.starts_with("get /dir ") {
                        let answer_text = String::from_utf8_lossy(&answer).to_string();
                        let (answer_head, json) = answer_text.split_once("\r\n\r\n").unwrap();
                        let mut directory: serde_json::Value = serde_json::from_str(json).unwrap();
                        directory["renewalInfo"] = format!("https://localhost:{port}/renewal-info").into();
                        let json = directory.to_string();
                        let kept: Vec<&str> = answer_head
                            .lines()
                            .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
                            .collect();
                        answer = format!("{}\r\nContent-Length: {}\r\n\r\n{json}", kept.join("\r\n"), json.len())
                            .into_bytes();
                    }
                    let _ = tls.write_all(&answer).await;
                    return;
                }
            });
        }
    });
    (format!("https://localhost:{port}/dir"), asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_window_the_ca_opened_renews_at_once() {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https, None);
    let (directory, asked) = pebble_with_renewal_info(&pebble).await;
    let blue = backend::start("blue").await;
    let store = tempfile::tempdir().unwrap();
    let acme = pebble.acme_table(store.path(), "http-01").replace(&pebble.directory, &directory);
    let gatehouse = Gatehouse::start(&config(http, https, &acme, &web_service(&blue.url(), "\"app.test\"")));
    let root = pebble.issuing_root();
    wait_verified("app.test", https, &root, &gatehouse, &pebble);
    // Pebble's certificates last 5 years: only the CA's window can bring a renewal now.
    let deadline = Instant::now() + Duration::from_secs(40);
    while gatehouse.logs().iter().filter(|l| l.contains("ACME certificate issued")).count() < 2 {
        assert!(Instant::now() < deadline, "no renewal:\n{}", gatehouse.logs().join("\n"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(asked.load(Ordering::SeqCst) >= 1);
    assert!(gatehouse.logs().iter().any(|l| l.contains("the CA's renewal window moves the renewal earlier")));
    wait_verified("app.test", https, &root, &gatehouse, &pebble);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_order_waits_as_long_as_the_ca_asks() {
    let ca = support::certs::Ca::new();
    let port = rate_limiting_ca(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let root = support::write(dir.path(), "ca.pem", &ca.pem());
    let store = tempfile::tempdir().unwrap();
    let acme = format!(
        "[acme]\ndirectory = \"https://localhost:{port}/dir\"\nca_root = \"{}\"\nstorage = \"{}\"\nemail = \"ops@example.com\"\n",
        root.display(),
        store.path().display()
    );
    let blue = backend::start("blue").await;
    let text = config(free_port(), free_port(), &acme, &web_service(&blue.url(), "\"app.test\""));
    let gatehouse = Gatehouse::start(&text);
    assert!(gatehouse.wait_for_log("ACME order failed"), "{}", gatehouse.logs().join("\n"));
    let logs = gatehouse.logs().join("\n");
    let failed = logs.lines().find(|l| l.contains("ACME order failed")).unwrap();
    // The first retry would come after 5 s; the CA asked for an hour.
    let retry: u64 = failed
        .split_whitespace()
        .find_map(|f| f.strip_prefix("retry_in_s="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{failed}"));
    assert!((3590..=3600).contains(&retry), "{failed}");
    assert!(failed.contains("slow down"), "{failed}");
    assert!(logs.contains("the CA asks to wait"), "{logs}");
}
