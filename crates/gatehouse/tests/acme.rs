//! Automatic certificates against a real ACME CA (Pebble, real validation): HTTP-01,
//! TLS-ALPN-01 and DNS-01 each issue a certificate that curl verifies against Pebble's root;
//! a restart serves the stored certificate with the CA down; a failing CA shows in
//! /v1/health; renewal swaps the certificate under load with no failed request or handshake.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::backend;
use support::pebble::{free_port, verified_get, Pebble};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_at_once_and_a_restart_serves_the_stored_certificate_with_the_ca_down() {
    let (http, https) = (free_port(), free_port());
    let mut pebble = Pebble::start(http, https, None);
    let blue = backend::start("blue").await;
    let store = tempfile::tempdir().unwrap();
    let text =
        config(http, https, &pebble.acme_table(store.path(), "http-01"), &web_service(&blue.url(), "\"app.test\""));
    let gatehouse = Gatehouse::start(&text);
    let root = pebble.issuing_root();
    let started = Instant::now();
    let body = wait_verified("app.test", https, &root, &gatehouse, &pebble);
    assert!(body.starts_with("blue"), "{body}");
    eprintln!("first verified HTTPS answer after {:?}", started.elapsed());
    assert!(gatehouse.logs().iter().any(|l| l.contains("answered an HTTP-01 validation")));

    // Plain HTTP is redirected; a token that is not pending is not answered by Gatehouse.
    let plain: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let reply = support::client::get(plain, "app.test", "/.well-known/acme-challenge/not-pending").await;
    assert_eq!(reply.status, 301, "{}", reply.body);
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
    let acme = format!("{}dns_hook = \"{}\"\n", pebble.acme_table(store.path(), "dns-01"), hook.display());
    let gatehouse = Gatehouse::start(&config(http, https, &acme, &web_service(&blue.url(), "\"*.w.test\"")));
    let root = pebble.issuing_root();
    assert!(wait_verified("a.w.test", https, &root, &gatehouse, &pebble).starts_with("blue"));
    let hook_log = std::fs::read_to_string(store.path().join("hook.log")).unwrap();
    assert!(
        hook_log.contains("present _acme-challenge.w.test") && hook_log.contains("cleanup _acme-challenge.w.test"),
        "{hook_log}"
    );
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
