//! Gatehouse's Elixir config read as data by the real binary: a HostKit-rendered file runs
//! and routes; `check` refuses a file that tries to run code, at its place; `convert`
//! prints the TOML equivalent.

mod support;

use std::process::Command;

use support::{backend, binary, client, Gatehouse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostkit_rendered_config_runs_and_routes() {
    let blue = backend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let port = support::pebble::free_port();
    // As HostKit renders it, plus the admin API on a free port for the test.
    let text = format!(
        "import Gatehouse.Config\nadmin(port: 0)\nstate(\"{state}/state.etf\")\nhttp(port: {port}, ip: {{127, 0, 0, 1}})\nservice(:edge_web_shop_example_org_0) do\n  host(\"shop.example.org\")\n  target(:main, \"{url}\", active: true)\n  balance(:round_robin, [])\n  health(\"/\", timeout: 5000)\n  drain(30000)\nend\n",
        state = dir.path().display(),
        url = blue.url()
    );
    let path = support::write(dir.path(), "config.exs", &text);
    let gatehouse = Gatehouse::spawn(&["run", "--config", path.to_str().unwrap()], dir, path.clone(), &[]);
    let reply = client::get(gatehouse.listener(), "shop.example.org", "/").await;
    assert_eq!(reply.status, 200, "{}", gatehouse.logs().join("\n"));
    assert!(reply.body.starts_with("blue"));
    assert_eq!(client::get(gatehouse.listener(), "other.example.org", "/").await.status, 404);
}

#[test]
fn check_refuses_code_at_its_place_and_convert_prints_toml() {
    let dir = tempfile::tempdir().unwrap();
    let evil =
        support::write(dir.path(), "evil.exs", "import Gatehouse.Config\nSystem.cmd(\"touch\", [\"/tmp/pwned\"])\n");
    let out = Command::new(binary()).args(["check", "-c", evil.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("evil.exs:2:7: `.`: calls into modules are not supported"), "{stderr}");
    let good = support::write(
        dir.path(),
        "good.exs",
        "import Gatehouse.Config\nhttp port: 8080\nservice :web do\n  host \"web.test\"\n  target :main, \"http://127.0.0.1:4000\", active: true\nend\n",
    );
    let out = Command::new(binary()).args(["convert", good.to_str().unwrap()]).output().unwrap();
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(toml.contains("[[services]]\nname = \"web\"") && toml.contains("address = \"0.0.0.0:8080\""), "{toml}");
    let converted = support::write(dir.path(), "converted.toml", &toml);
    let out = Command::new(binary()).args(["check", "-c", converted.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "the TOML loads as it is: {}", String::from_utf8_lossy(&out.stderr));
}
