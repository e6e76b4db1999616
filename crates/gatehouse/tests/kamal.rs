//! Invoked as `kamal-proxy`: kamal-proxy's `run` flags and environment, its default socket,
//! and the command lines Kamal sends.

mod support;

use std::path::Path;
use std::process::Command;

use support::client::get;
use support::{backend, binary, Gatehouse};

fn kamal(link: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    Command::new(link).args(args).envs(env.iter().copied()).output().expect("run kamal-proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kamal_proxy_name_runs_kamals_command_lines() {
    let (web, canary) = tokio::join!(backend::start("web"), backend::start("canary"));
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("kamal-proxy");
    std::os::unix::fs::symlink(binary(), &link).unwrap();
    let socket = dir.path().join("kamal-proxy.sock");
    let home = dir.path().join("home");
    let http_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let env = [("KAMAL_PROXY_SOCKET", socket.to_str().unwrap()), ("HOME", home.to_str().unwrap())];
    let config_path = dir.path().join("unused.toml");
    let state = tempfile::tempdir().unwrap();
    let gh =
        Gatehouse::spawn_as(&link, &["run", "--http-port", &http_port, "--https-port", "0"], state, config_path, &env);
    assert!(gh.wait_for_log("admin socket listening"));

    let target = format!("--target={}", web.addr);
    let out = kamal(
        &link,
        &env,
        &[
            "deploy",
            "app-web",
            &target,
            "--host=app.test",
            "--deploy-timeout=30s",
            "--drain-timeout=30s",
            "--buffer-requests",
            "--buffer-responses",
            "--log-request-header=Cache-Control",
            "--log-request-header=User-Agent",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    assert_eq!(get(proxy, "app.test", "/").await.header("x-backend"), "web");
    let listed = kamal(&link, &env, &["ls"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("app-web"), "{listed:?}");
    assert!(home.join(".config/kamal-proxy/gatehouse-deploys.json").exists(), "state in kamal-proxy's folder");
    let canary_target = format!("--target={}", canary.addr);
    for rollout in [
        &["rollout", "deploy", "app-web", &canary_target][..],
        &["rollout", "set", "app-web", "--percent=0", "--allowlist=tester"],
    ] {
        let out = kamal(&link, &env, rollout);
        assert!(out.status.success(), "{rollout:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let as_tester = http::Request::get("/").header("host", "app.test").header("cookie", "kamal-rollout=tester");
    let reply = support::client::send(proxy, as_tester.body(bytes::Bytes::new()).unwrap()).await;
    assert_eq!(reply.header("x-backend"), "canary");
    assert!(kamal(&link, &env, &["rollout", "stop", "app-web"]).status.success());
    assert_eq!(gh.admin_get("/metrics").await.status, 200);
    let out = kamal(&link, &env, &["rm", "app-web"]);
    assert!(out.status.success());
    assert_eq!(get(proxy, "app.test", "/").await.status, 404);
}
