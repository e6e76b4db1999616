//! The command line: check, version, help, drove-gateway's -f, and the demo.

mod support;

use std::process::Command;

use support::client::get;
use support::{binary, write, Gatehouse};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).output().expect("run gatehouse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_accepts_good_files_and_points_at_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[[services]]\nname = \"a\"\nhosts = [\"a.test\"]\ntargets = [\"http://127.0.0.1:9000\"]\n");
    let (code, stdout, _) = run(&["check", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("good.toml: OK (1 services, 1 listeners)"), "{stdout}");

    let bad = write(dir.path(), "bad.toml", "port = \"6000\"\nlisten = true\n");
    let (code, _, stderr) = run(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with(&format!("{}:2:1: unknown field `listen`", bad.display())), "{stderr}");

    let nixy_text = "address = \"127.0.0.1\"\nport = \"6000\"\nnginx_config = \"/etc/nginx/nginx.conf\"\nnginx_template = \"/etc/nixy/nginx.tmpl\"\nnginx_cmd = \"nginx\"\ndisk_io_timeout_sec = 2\n[[namespaces]]\nname = \"stage\"\ndrove = [\"http://ctrl:4000\"]\n";
    let nixy = write(dir.path(), "nixy.toml", nixy_text);
    let (code, stdout, stderr) = run(&["check", "-f", nixy.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("OK"));
    assert!(
        stderr.contains("nixy.toml:6:1: `disk_io_timeout_sec` belongs to drove-gateway's blocking state-file reads"),
        "{stderr}"
    );
    let partial = write(dir.path(), "partial.toml", "port = \"6000\"\nnginx_config = \"/etc/nginx/nginx.conf\"\n");
    let (code, _, stderr) = run(&["check", "-f", partial.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("partial.toml:2:16: the nginx engine needs `nginx_template`"), "{stderr}");

    let (code, _, stderr) = run(&["check", "-c", "/definitely/not/here.toml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/definitely/not/here.toml: cannot read the configuration file"), "{stderr}");
}

#[test]
fn version_help_and_usage() {
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!((code, stdout.trim()), (0, format!("gatehouse {}", env!("CARGO_PKG_VERSION")).as_str()));
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for word in ["demo", "check", "run", "--config", "SIGHUP"] {
        assert!(stdout.contains(word), "help mentions {word}:\n{stdout}");
    }
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("gatehouse demo"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drove_gateway_style_dash_f_runs() {
    let b = support::backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!("port = 0\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[[services]]\nname = \"s\"\nhosts = [\"h.test\"]\ntargets = [\"{}\"]\n", b.url());
    let path = write(dir.path(), "nixy.toml", &config);
    let gh = Gatehouse::spawn(&["-f", path.to_str().unwrap()], dir, path.clone(), &[]);
    assert_eq!(get(gh.listener(), "h.test", "/").await.header("x-backend"), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_its_sample_apps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unused.toml");
    let gh = Gatehouse::spawn(&["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"], dir, path, &[]);
    let at = gh.listener();
    let first = get(at, "localhost", "/").await.body;
    let second = get(at, "localhost", "/").await.body;
    assert!(first.starts_with("Hello from web1") && second.starts_with("Hello from web2"), "{first}{second}");
    let api = get(at, "web.localhost", "/api/users").await.body;
    assert!(api.starts_with("Hello from api") && api.contains("GET /users"), "{api}");
    assert!(get(at, "shop.apps.localhost", "/").await.body.starts_with("Hello from tenant"));
    assert_eq!(get(at, "nowhere.test", "/").await.status, 404);
    assert!(gh.admin_get("/v1/routes").await.body.contains("tenants"));
    // The simulated Drove cluster's apps are discovered, and the leader is reachable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !get(at, "shop.drove.localhost", "/").await.body.starts_with("app=shop-1") {
        assert!(std::time::Instant::now() < deadline, "the demo's Drove apps were not routed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(get(at, "drove.localhost", "/apis/v1/ping").await.body.contains("pong"));
}
