//! The Elixir release's interface, as HostKit's unit calls it: `gatehouse start` with
//! HostKit's environment serves the config it names, and `gatehouse stop` stops it
//! gracefully and returns once it has exited.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{backend, binary, client, Gatehouse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_stop_with_hostkits_environment() {
    let blue = backend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let text = format!(
        "import Gatehouse.Config\nadmin port: 0\nhttp port: {}, ip: \"127.0.0.1\"\nservice :shop do\n  host \"shop.example.org\"\n  target :main, \"{}\", active: true\nend\n",
        support::pebble::free_port(),
        blue.url()
    );
    let config = support::write(&root, "config.exs", &text);
    let state = root.join("state.etf");
    // What HostKit's /etc/gatehouse/env holds.
    let env = [
        ("GATEHOUSE_CONFIG", config.to_str().unwrap()),
        ("GATEHOUSE_STATE", state.to_str().unwrap()),
        ("RELEASE_DISTRIBUTION", "name"),
        ("GATEHOUSE_COOKIE", "cookie-secret-value"),
    ];
    let mut gatehouse = Gatehouse::spawn(&["start"], dir, config.clone(), &env);
    let reply = client::get(gatehouse.listener(), "shop.example.org", "/").await;
    assert_eq!(reply.status, 200, "{}", gatehouse.logs().join("\n"));
    let logs = gatehouse.logs().join("\n");
    assert!(logs.contains("GATEHOUSE_COOKIE,RELEASE_DISTRIBUTION") && logs.contains("accepted and ignored"), "{logs}");
    assert!(!logs.contains("cookie-secret-value"), "the cookie is never printed");
    assert!(root.join("gatehouse.pid").exists());
    let health = gatehouse.admin_get("/v1/health").await.body;
    assert!(
        health.contains(&root.join("state.json").display().to_string()),
        "the state beside GATEHOUSE_STATE: {health}"
    );

    let stop = Command::new(binary()).arg("stop").env("XDG_RUNTIME_DIR", &root).output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    // `stop` returned: the instance has already exited, cleanly, and took its pid file.
    let status = gatehouse.wait_exit(Duration::from_millis(500)).expect("exited before stop returned");
    assert!(status.success(), "{status}");
    assert!(!root.join("gatehouse.pid").exists());
    let again = Command::new(binary()).arg("stop").env("XDG_RUNTIME_DIR", &root).output().unwrap();
    assert!(again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not running"));
}

#[test]
fn start_says_what_is_missing() {
    let out = Command::new(binary()).arg("start").env_remove("GATEHOUSE_CONFIG").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GATEHOUSE_CONFIG is not set"));
}

#[test]
fn the_printed_unit_passes_systemds_own_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary()).args(["systemd-unit", "--binary", binary()]).output().unwrap();
    assert!(out.status.success());
    let unit = support::write(dir.path(), "gatehouse.service", &String::from_utf8_lossy(&out.stdout));
    let verify =
        Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze (package systemd)");
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(verify.status.success() && !said.contains("gatehouse.service"), "{said}");
}

#[test]
fn the_packaged_unit_is_the_one_the_binary_prints() {
    let out = Command::new(binary()).args(["systemd-unit", "--binary", "/usr/bin/gatehouse"]).output().unwrap();
    let packaged =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/debian/gatehouse.service"))
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), packaged, "regenerate packaging/debian/gatehouse.service");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/gatehouse.toml");
    let check = Command::new(binary()).args(["check", "-c", config]).output().unwrap();
    assert!(check.status.success(), "the packaged config loads: {}", String::from_utf8_lossy(&check.stderr));
}
