//! Shared test harness: the real `gatehouse` binary, real backends and real clients, all on
//! loopback. Every server a test starts is stopped when its handle drops.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod backend;
pub mod certs;
pub mod client;
pub mod h2raw;
pub mod pebble;
pub mod scripted;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `gatehouse` process.
pub struct Gatehouse {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// Bound proxy listeners, in configuration order.
    pub listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

impl Gatehouse {
    /// Starts gatehouse on `config` (written to a fresh folder). Use `127.0.0.1:0` for
    /// listeners and `port = 0` for the admin API: the bound ports are read from the log.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, tempfile::tempdir().expect("temp dir"), &[])
    }

    pub fn start_with(config: &str, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let config_path = dir.path().join("gatehouse.toml");
        std::fs::write(&config_path, config).expect("write config");
        let path = config_path.to_str().expect("utf-8 path").to_string();
        Self::spawn(&["run", "--config", &path], dir, config_path, env)
    }

    /// Runs the binary with `args` and waits until its admin API listens.
    pub fn spawn(args: &[&str], dir: tempfile::TempDir, config_path: PathBuf, env: &[(&str, &str)]) -> Self {
        Self::spawn_as(Path::new(binary()), args, dir, config_path, env)
    }

    /// [`Gatehouse::spawn`] through another name for the binary (a `kamal-proxy` symlink).
    pub fn spawn_as(
        program: &Path,
        args: &[&str],
        dir: tempfile::TempDir,
        config_path: PathBuf,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(program);
        command.args(args).envs(env.iter().copied());
        Self::spawn_command(command, dir, config_path)
    }

    /// Runs a prepared command (a wrapper, inherited descriptors) and waits until its admin
    /// API listens.
    pub fn spawn_command(mut command: Command, dir: tempfile::TempDir, config_path: PathBuf) -> Self {
        let mut child = command
            // The default admin socket and deploy state go to the test's own folder.
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("STATE_DIRECTORY", dir.path())
            .env("GATEHOUSE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gatehouse");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut gatehouse =
            Gatehouse { child, dir, config_path, listeners: Vec::new(), admin: "0.0.0.0:0".parse().unwrap(), logs };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = gatehouse.logs();
            if let Some(line) = lines.iter().find(|l| l.contains("admin API listening")) {
                gatehouse.admin = address_in(line);
                gatehouse.listeners =
                    lines.iter().filter(|l| l.contains(" listening address=")).map(|l| address_in(l)).collect();
                return gatehouse;
            }
            if let Ok(Some(status)) = gatehouse.child.try_wait() {
                panic!("gatehouse exited with {status}:\n{}", lines.join("\n"));
            }
            assert!(Instant::now() < deadline, "gatehouse did not start:\n{}", lines.join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn listener(&self) -> SocketAddr {
        self.listeners[0]
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.logs().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn write_config(&self, config: &str) {
        // Written whole then renamed, as an operator's tooling should.
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, config).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit and returns whether it exited cleanly.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub async fn admin_get(&self, path: &str) -> client::Reply {
        client::get(self.admin, "admin", path).await
    }

    pub async fn admin_post(&self, path: &str, token: Option<&str>) -> client::Reply {
        let mut req = http::Request::post(path).header("host", "admin");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        client::send(self.admin, req.body(bytes::Bytes::new()).unwrap()).await
    }

    /// A metric's value from `/v1/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.admin_get("/v1/metrics").await.body;
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn address_in(line: &str) -> SocketAddr {
    let start = line.find("address=").expect("address field") + "address=".len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().unwrap_or_else(|_| panic!("no address in {line}"))
}

/// Polls `check` until it returns true, for at most 15 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A folder holding files for a test (certificates, configs).
pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write file");
    path
}
