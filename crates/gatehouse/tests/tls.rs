//! TLS termination: SNI certificate choice, ALPN, and certificate reloads.

mod support;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::certs::{Ca, Leaf};
use support::client::{tls_get, KeepAlive};
use support::{backend, write, Gatehouse};

fn der(leaf: &Leaf) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()
}

fn put(dir: &std::path::Path, name: &str, leaf: &Leaf) {
    write(dir, &format!("{name}.pem"), &leaf.cert_pem);
    write(dir, &format!("{name}.key"), &leaf.key_pem);
}

fn tls_config(backend_url: &str) -> String {
    format!(
        r#"port = 0
[[listeners]]
address = "127.0.0.1:0"
tls_certificates = [
  {{ cert = "default.pem", key = "default.key" }},
  {{ cert = "exact.pem", key = "exact.key" }},
  {{ cert = "wild.pem", key = "wild.key" }},
]
[[listeners]]
address = "127.0.0.1:0"
[[services]]
name = "app"
hosts = ["default.test", "a.test", "*.w.test"]
targets = ["{backend_url}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picks_certificates_by_sni_and_negotiates_h2() {
    let ca = Ca::new();
    let (default, exact, wild) = (ca.leaf(&["default.test"]), ca.leaf(&["a.test"]), ca.leaf(&["*.w.test"]));
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "default", &default);
    put(dir.path(), "exact", &exact);
    put(dir.path(), "wild", &wild);
    let b = backend::start("app").await;
    let gh = Gatehouse::start_with(&tls_config(&b.url()), dir, &[]);
    let at = gh.listeners[0];
    let ca_pem = ca.pem();

    let r = tls_get(at, &ca_pem, "a.test", true, &[b"h2", b"http/1.1"], "/").await.unwrap();
    assert_eq!(r.leaf, der(&exact));
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]), "h2 offered and chosen");
    assert_eq!((r.reply.status, r.reply.header("x-backend")), (200, "app"));
    let seen = b.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["host"], "a.test", "the HTTP/2 authority becomes Host for an HTTP/1 target");

    let r = tls_get(at, &ca_pem, "x.w.test", true, &[b"http/1.1"], "/").await.unwrap();
    assert_eq!(r.leaf, der(&wild));
    assert_eq!(r.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(r.reply.status, 200);

    let r = tls_get(at, &ca_pem, "default.test", false, &[], "/").await.unwrap();
    assert_eq!(r.leaf, der(&default), "no SNI: the first certificate");
    let wrong = tls_get(at, &ca_pem, "unknown.test", true, &[], "/").await;
    assert!(wrong.is_err(), "unknown names get the default certificate, which does not cover them");
    let deep = tls_get(at, &ca_pem, "a.b.w.test", true, &[], "/").await;
    assert!(deep.is_err(), "a wildcard certificate covers one label only");

    // The plain listener next to it still works.
    assert_eq!(support::client::get(gh.listeners[1], "a.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_certificates_without_touching_the_listener() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (default, exact, wild) = (ca.leaf(&["default.test"]), ca.leaf(&["a.test"]), ca.leaf(&["*.w.test"]));
    put(dir.path(), "default", &default);
    put(dir.path(), "exact", &exact);
    put(dir.path(), "wild", &wild);
    let b = backend::start("app").await;
    let path = dir.path().to_path_buf();
    let gh = Gatehouse::start_with(&tls_config(&b.url()), dir, &[]);
    let at = gh.listeners[0];
    let plain = gh.listeners[1];
    let mut open_plain = KeepAlive::connect(plain).await;
    assert_eq!(open_plain.get("a.test", "/").await.unwrap().status, 200);

    let renewed = ca.leaf(&["a.test"]);
    put(&path, "exact", &renewed);
    gh.signal("HUP");
    assert!(gh.wait_for_log("configuration reloaded"));
    let r = tls_get(at, &ca.pem(), "a.test", true, &[], "/").await.unwrap();
    assert_eq!(r.leaf, der(&renewed), "new handshakes get the new certificate");
    assert_eq!(gh.listeners[0], at);
    assert_eq!(open_plain.get("a.test", "/").await.unwrap().status, 200, "open connections carry on");

    // A broken certificate changes nothing and shows in health.
    write(&path, "exact.pem", "not a certificate");
    let reply = gh.admin_post("/v1/reload", None).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(reply.body.contains("exact.pem"), "{}", reply.body);
    let health = gh.admin_get("/v1/health").await;
    assert_eq!(health.status, 500);
    let r = tls_get(at, &ca.pem(), "a.test", true, &[], "/").await.unwrap();
    assert_eq!(r.leaf, der(&renewed), "the last good certificate keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_http2_end_to_end_keeps_te_and_trailers() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["grpc.test"]);
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "grpc", &leaf);
    let b = backend::start_h2c("grpc").await;
    let config = format!(
        "port = 0\n[[listeners]]\naddress = \"127.0.0.1:0\"\ntls_certificates = [{{ cert = \"grpc.pem\", key = \"grpc.key\" }}]\n[[services]]\nname = \"grpc\"\nhosts = [\"grpc.test\"]\ntargets = [\"{}\"]\nhttp2 = true\n",
        b.url()
    );
    let gh = Gatehouse::start_with(&config, dir, &[]);
    let r = tls_get(gh.listener(), &ca.pem(), "grpc.test", true, &[b"h2"], "/trailers").await.unwrap();
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!((r.reply.status, r.reply.body.as_str()), (200, "ok"));
    let trailers = r.reply.trailers.expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    let seen = b.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.headers["te"], "trailers", "TE: trailers reaches an HTTP/2 target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_speaks_https_with_drove_gateway_keys() {
    let ca = Ca::new();
    let admin = ca.leaf(&["admin.test"]);
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "admin", &admin);
    let config = "port = 0\nport_use_tls = true\nport_tls_certfile = \"admin.pem\"\nport_tls_keyfile = \"admin.key\"\n";
    let gh = Gatehouse::start_with(config, dir, &[]);
    let r = tls_get(gh.admin, &ca.pem(), "admin.test", true, &[b"h2", b"http/1.1"], "/v1/health").await.unwrap();
    assert_eq!(r.leaf, der(&admin));
    assert_eq!(r.alpn.as_deref(), Some(&b"http/1.1"[..]), "HTTP/1.1 only, as drove-gateway");
    assert_eq!(r.reply.status, 200);
    assert!(r.reply.body.contains("RouteTableGeneration"), "{}", r.reply.body);
    let plain = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(gh.admin).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    };
    let plain = tokio::time::timeout(std::time::Duration::from_secs(12), plain).await.unwrap_or_default();
    assert!(!plain.starts_with(b"HTTP/1.1 200"), "no plain HTTP on the TLS port");

    let missing = tempfile::tempdir().unwrap();
    let path = write(missing.path(), "g.toml", "port_use_tls = true\nport_tls_certfile = \"a.pem\"\n");
    let out =
        std::process::Command::new(support::binary()).args(["check", "-c", &path.to_string_lossy()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("g.toml:1:16: `port_use_tls` needs `port_tls_keyfile`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_services_bring_their_own_certificates_and_redirect_plain_http() {
    let ca = Ca::new();
    let app_cert = ca.leaf(&["app.test"]);
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "app", &app_cert);
    let (cert, key) = (dir.path().join("app.pem"), dir.path().join("app.key"));
    let socket = dir.path().join("g.sock");
    let config = format!(
        "port = 0\nadmin_socket = \"{}\"\ndeploy_state = \"{}\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\ntls = true\n",
        socket.display(),
        dir.path().join("deploys.json").display()
    );
    let b = backend::start("app").await;
    let target = b.addr.to_string();
    let gh = Gatehouse::start_with(&config, dir, &[]);
    let (plain, https) = (gh.listeners[0], gh.listeners[1]);
    let deploy = |service: &str, host: &str, extra: &[&str]| {
        let mut args = vec!["deploy", service, "--host", host, "--target", &target];
        args.extend_from_slice(extra);
        std::process::Command::new(support::binary()).args(&args).arg("--socket").arg(&socket).output().unwrap()
    };
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let out = deploy("app", "app.test", &["--tls", "--tls-certificate-path", cert, "--tls-private-key-path", key]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let r = tls_get(https, &ca.pem(), "app.test", true, &[b"http/1.1"], "/x").await.unwrap();
    assert_eq!(r.leaf, der(&app_cert), "the service's own certificate");
    assert_eq!((r.reply.status, r.reply.header("x-backend")), (200, "app"));
    let redirected = support::client::get(plain, "app.test", "/x?y=1").await;
    assert_eq!(redirected.status, 301);
    assert_eq!(redirected.header("location"), format!("https://app.test:{}/x?y=1", https.port()));

    let out = deploy(
        "open",
        "open.test",
        &["--tls-certificate-path", cert, "--tls-private-key-path", key, "--tls-redirect=false"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(support::client::get(plain, "open.test", "/").await.status, 200, "--tls-redirect=false");

    let out = deploy("bad", "bad.test", &["--tls-certificate-path", key, "--tls-private-key-path", key]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read certificates"), "{out:?}");

    for service in ["app", "open"] {
        let out = std::process::Command::new(support::binary())
            .args(["remove", service, "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    assert!(
        tls_get(https, &ca.pem(), "app.test", true, &[b"http/1.1"], "/").await.is_err(),
        "no certificate for the name once its service is gone"
    );
}

/// One request over TLS with `config` (whose session store carries over between calls);
/// whether the handshake was a resumption.
async fn resumed(at: std::net::SocketAddr, config: &std::sync::Arc<rustls::ClientConfig>) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.unwrap();
    let kind = tls.get_ref().1.handshake_kind();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").await.unwrap();
    // Reading the answer also takes in the session tickets sent after the handshake.
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    kind == Some(rustls::HandshakeKind::Resumed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_clients_resume_their_tls_sessions() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    for name in ["default", "exact", "wild"] {
        put(dir.path(), name, &ca.leaf(&["a.test"]));
    }
    let b = backend::start("app").await;
    let gh = Gatehouse::start_with(&tls_config(&b.url()), dir, &[]);
    let at = gh.listeners[0];
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12]] {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let config = std::sync::Arc::new(config);
        assert!(!resumed(at, &config).await, "the first handshake is a full one");
        assert!(resumed(at, &config).await, "the second resumes ({:?})", versions[0].version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_over_tls_gets_its_answer_whole_while_the_rest_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "default", &ca.leaf(&["a.test"]));
    let b = backend::start("app").await;
    let config = format!(
        r#"port = 0
[[listeners]]
address = "127.0.0.1:0"
tls_certificates = [{{ cert = "default.pem", key = "default.key" }}]
[[services]]
name = "app"
hosts = ["a.test"]
targets = ["{}"]
max_body_size = 1000
"#,
        b.url()
    );
    let gh = Gatehouse::start_with(&config, dir, &[]);
    let tcp = tokio::net::TcpStream::connect(gh.listeners[0]).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let client = std::sync::Arc::new(support::client::tls_client(&ca.pem(), &[b"http/1.1"]));
    let tls = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await.unwrap();
    let (mut rx, mut tx) = tokio::io::split(tls);
    // 600 KB of records still on their way (over 300 ms) when the 413 goes out: the proxy
    // drops them (without decrypting) so that its close does not reset the upload midway.
    let body_len = 600_000;
    let upload = tokio::spawn(async move {
        tx.write_all(format!("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: {body_len}\r\n\r\n").as_bytes())
            .await?;
        for _ in 0..body_len / 10_000 {
            tx.write_all(&[b'x'; 10_000]).await?;
            tx.flush().await?;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tx.flush().await?;
        std::io::Result::Ok(tx)
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), rx.read_to_end(&mut got)).await.unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(read.is_ok(), "the answer ended in a reset: {read:?} after {got:?}");
    assert!(got.starts_with("HTTP/1.1 413 "), "{got:?}");
    let sent = tokio::time::timeout(std::time::Duration::from_secs(10), upload).await.unwrap().unwrap();
    assert!(sent.is_ok(), "the upload was cut short: {:?}", sent.err());
    assert_eq!(b.requests(), 0, "the target never saw the refused request");
}
