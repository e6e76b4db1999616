//! The control commands (`deploy`, `remove`, `list`): kamal-proxy's CLI, sent as JSON to a
//! running instance over its admin Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use gatehouse_deploy::{DeployOptions, DeployRequest, HealthCheckOptions, RolloutRequest, RolloutSplit, StateChange};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Where control commands find the configuration when `-c` is not given.
const DEFAULT_CONFIG: &str = "/etc/gatehouse/gatehouse.toml";
/// Replies larger than this are refused.
const MAX_REPLY: usize = 16 * 1024 * 1024;

/// How a control command reaches the instance.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The admin socket (default: the one the configuration file names).
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
}

impl Connection {
    /// `--socket`, else the configuration's `admin_socket` (`-c`, `GATEHOUSE_CONFIG`, or
    /// /etc/gatehouse/gatehouse.toml when it exists), else the default socket.
    pub fn socket(&self, config: Option<&Path>) -> anyhow::Result<PathBuf> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        let from_env = std::env::var_os("GATEHOUSE_CONFIG").map(PathBuf::from);
        let config = match (config, from_env) {
            (Some(path), _) => Some(path.to_path_buf()),
            (None, Some(path)) => Some(path),
            (None, None) => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        match config {
            Some(path) => gatehouse_config::load(&path)?
                .admin
                .socket
                .with_context(|| format!("{}: `admin_socket` is off; pass --socket PATH", path.display())),
            None => Ok(gatehouse_config::default_admin_socket()),
        }
    }
}

/// kamal-proxy's `deploy` flags, with its defaults.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The service to deploy (created when new).
    pub service: String,
    /// Target address: host:port, http://host:port or https://host:port (repeatable, or comma-separated).
    #[arg(long = "target", required = true, value_delimiter = ',')]
    target: Vec<String>,
    /// Host names the service answers for (repeatable, or comma-separated).
    #[arg(long = "host", value_delimiter = ',')]
    host: Vec<String>,
    /// Route only requests under this path prefix.
    #[arg(long = "path-prefix")]
    path_prefix: Vec<String>,
    /// Remove the path prefix before forwarding.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = clap::ArgAction::Set)]
    strip_path_prefix: bool,
    #[arg(long, default_value = "/up")]
    health_check_path: String,
    #[arg(long, default_value = "1s", value_parser = duration)]
    health_check_interval: Duration,
    #[arg(long, default_value = "5s", value_parser = duration)]
    health_check_timeout: Duration,
    /// Check health on this port instead of the target's.
    #[arg(long)]
    health_check_port: Option<u16>,
    /// How long the new targets have to become healthy.
    #[arg(long, default_value = "30s", value_parser = duration)]
    deploy_timeout: Duration,
    /// How long requests on the old targets may run on after the switch.
    #[arg(long, default_value = "30s", value_parser = duration)]
    drain_timeout: Duration,
    /// How long a target has to answer (504 after).
    #[arg(long, default_value = "30s", value_parser = duration)]
    target_timeout: Duration,
    /// The Host header of the health checks.
    #[arg(long)]
    health_check_host: Option<String>,
    /// Read the whole request body before the target sees it (memory, then a temp file).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    buffer_requests: bool,
    /// Read the whole response before the client sees it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    buffer_responses: bool,
    /// Bytes a buffer keeps in memory before it spills to a temp file.
    #[arg(long, default_value = "1048576", value_parser = size)]
    buffer_memory: u64,
    /// Larger request bodies get 413 (0: no limit).
    #[arg(long, default_value = "0", value_parser = size)]
    max_request_body: u64,
    /// Larger buffered responses get 502 (0: no limit).
    #[arg(long, default_value = "0", value_parser = size)]
    max_response_body: u64,
    /// Keep the client's X-Forwarded-* headers (default: on without --tls).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    forward_headers: Option<bool>,
    /// A request header to write into the access log (repeatable, or comma-separated).
    #[arg(long = "log-request-header", value_delimiter = ',')]
    log_request_header: Vec<String>,
    /// A response header to write into the access log (repeatable, or comma-separated).
    #[arg(long = "log-response-header", value_delimiter = ',')]
    log_response_header: Vec<String>,
    /// A target for reads (GET, HEAD and OPTIONS); other requests go to the --target
    /// writers (repeatable, or comma-separated).
    #[arg(long = "read-target", value_delimiter = ',')]
    read_target: Vec<String>,
    /// Send WebSockets to the read targets too.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    read_target_websockets: bool,
    /// After a write, the client's reads go to the writers for this long (a `kamal-writer`
    /// cookie), so it reads what it wrote; 0 turns it off.
    #[arg(long, default_value = "1s", value_parser = duration)]
    writer_affinity_timeout: Duration,
    /// A folder of error pages (502.html, 503.html, ...) for Gatehouse's own answers.
    #[arg(long)]
    error_pages: Option<String>,
    /// HTTPS for the hosts, with a certificate from ACME unless --tls-certificate-path.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    tls: bool,
    /// With --tls: from Let's Encrypt's staging CA (certificates browsers do not trust).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    tls_staging: bool,
    /// HTTPS responses carry Strict-Transport-Security with this max-age (0: none).
    #[arg(long, default_value = "0s", value_parser = duration)]
    hsts_max_age: Duration,
    #[arg(long)]
    tls_certificate_path: Option<String>,
    #[arg(long)]
    tls_private_key_path: Option<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = clap::ArgAction::Set)]
    tls_redirect: bool,
    #[arg(long)]
    canonical_host: Option<String>,
    /// Switch without waiting for the health check.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    force: bool,
    /// Print the outcome as JSON (times in microseconds).
    #[arg(long)]
    json: bool,
}

fn duration(text: &str) -> Result<Duration, String> {
    gatehouse_config::parse_duration(text)
}

fn size(text: &str) -> Result<u64, String> {
    gatehouse_config::parse_size(text)
}

/// A path as the running instance must read it: relative paths are the caller's.
fn absolute(path: &str) -> String {
    std::path::absolute(path).map_or_else(|_| path.to_string(), |p| p.display().to_string())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl DeployArgs {
    fn request(&self) -> DeployRequest {
        DeployRequest {
            force: self.force,
            options: DeployOptions {
                targets: self.target.clone(),
                hosts: self.host.clone(),
                path_prefixes: self.path_prefix.clone(),
                strip_path_prefix: self.strip_path_prefix,
                health_check: HealthCheckOptions {
                    path: self.health_check_path.clone(),
                    interval_ms: millis(self.health_check_interval),
                    timeout_ms: millis(self.health_check_timeout),
                    port: self.health_check_port,
                    host: self.health_check_host.clone(),
                    ..Default::default()
                },
                deploy_timeout_ms: millis(self.deploy_timeout),
                drain_timeout_ms: millis(self.drain_timeout),
                target_timeout_ms: millis(self.target_timeout),
                buffer_requests: self.buffer_requests,
                buffer_responses: self.buffer_responses,
                buffer_memory: self.buffer_memory,
                max_request_body: self.max_request_body,
                max_response_body: self.max_response_body,
                forward_headers: self.forward_headers,
                log_request_headers: self.log_request_header.clone(),
                log_response_headers: self.log_response_header.clone(),
                read_targets: self.read_target.clone(),
                read_target_websockets: self.read_target_websockets,
                writer_affinity_timeout_ms: millis(self.writer_affinity_timeout),
                error_pages: self.error_pages.as_deref().map(absolute),
                tls: self.tls,
                tls_certificate_path: self.tls_certificate_path.as_deref().map(absolute),
                tls_private_key_path: self.tls_private_key_path.as_deref().map(absolute),
                tls_redirect: self.tls_redirect,
                tls_staging: self.tls_staging,
                hsts_max_age_s: self.hsts_max_age.as_secs(),
                canonical_host: self.canonical_host.clone(),
            },
        }
    }
}

pub async fn deploy(socket: &Path, args: &DeployArgs) -> anyhow::Result<()> {
    gatehouse_deploy::check_name(&args.service).map_err(anyhow::Error::msg)?;
    let body = serde_json::to_vec(&args.request())?;
    let path = format!("/v1/services/{}/deploy", args.service);
    let reply = call(socket, http::Method::POST, &path, body).await?;
    if args.json {
        println!("{reply}");
        return Ok(());
    }
    let ms = |field: &str| reply[field].as_u64().unwrap_or(0) as f64 / 1000.0;
    let targets: Vec<&str> =
        reply["targets"].as_array().map(|t| t.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    println!(
        "deployed {} to {} (health gate {:.1} ms, switch {:.1} ms, drain {:.1} ms{})",
        args.service,
        targets.join(", "),
        ms("gate_us"),
        ms("switch_us"),
        ms("drain_us"),
        match reply["drain_left"].as_u64() {
            Some(0) | None => String::new(),
            Some(n) => format!(", {n} requests cut at the drain timeout"),
        }
    );
    Ok(())
}

/// `pause`, `stop` and `resume`, as kamal-proxy takes them.
#[derive(Args, Debug)]
pub struct StateArgs {
    pub service: String,
    /// How long requests in flight may run on (pause, stop).
    #[arg(long, default_value = "30s", value_parser = duration)]
    drain_timeout: Duration,
    /// How long a paused service holds a request before answering 504 (pause).
    #[arg(long, default_value = "30s", value_parser = duration)]
    max_pause: Duration,
    /// What a stopped service answers, with 503 (stop).
    #[arg(long, default_value = "")]
    message: String,
}

/// `stop [SERVICE]`: a deployed service, or (without one) the instance itself.
#[derive(clap::Args)]
pub struct StopArgs {
    pub service: Option<String>,
    /// How long requests in flight may run on.
    #[arg(long, default_value = "30s", value_parser = duration)]
    drain_timeout: Duration,
    /// What the stopped service answers, with 503.
    #[arg(long, default_value = "")]
    message: String,
}

impl StopArgs {
    /// The service's stop, as the other state changes take it.
    pub fn for_service(&self) -> anyhow::Result<StateArgs> {
        let service = self.service.clone().context("stop: which service?")?;
        Ok(StateArgs {
            service,
            drain_timeout: self.drain_timeout,
            max_pause: Duration::ZERO,
            message: self.message.clone(),
        })
    }
}

/// Sends `action` (`pause`, `stop` or `resume`) for the service.
pub async fn change_state(socket: &Path, action: &str, args: &StateArgs) -> anyhow::Result<()> {
    gatehouse_deploy::check_name(&args.service).map_err(anyhow::Error::msg)?;
    let change = StateChange {
        drain_timeout_ms: millis(args.drain_timeout),
        max_pause_ms: millis(args.max_pause),
        message: args.message.clone(),
    };
    let path = format!("/v1/services/{}/{action}", args.service);
    let reply = call(socket, http::Method::POST, &path, serde_json::to_vec(&change)?).await?;
    match reply["left"].as_u64() {
        Some(n) if n > 0 => println!("{action}: {} ({n} requests cut at the drain timeout)", args.service),
        _ => println!("{action}: {}", args.service),
    }
    Ok(())
}

/// `rollout deploy|set|stop`: kamal-proxy's canary.
#[derive(clap::Subcommand, Debug)]
pub enum RolloutCommand {
    /// Deploy a second release of a service, health-gated like a deploy; requests the split
    /// (`rollout set`) picks by their `kamal-rollout` cookie go to it.
    Deploy(RolloutDeployArgs),
    /// Choose which `kamal-rollout` cookie values go to the rollout.
    Set(RolloutSetArgs),
    /// Send every request to the active release again and drain the rollout's targets.
    Stop(RolloutStopArgs),
}

#[derive(Args, Debug)]
pub struct RolloutDeployArgs {
    pub service: String,
    /// A target of the rollout, HOST:PORT or a URL (repeatable, or comma-separated).
    #[arg(long, required = true, value_delimiter = ',')]
    target: Vec<String>,
    /// A read target of the rollout (repeatable, or comma-separated).
    #[arg(long = "read-target", value_delimiter = ',')]
    read_target: Vec<String>,
    /// How long the new targets have to pass the health check.
    #[arg(long, default_value = "30s", value_parser = duration)]
    deploy_timeout: Duration,
    /// How long requests in flight on a previous rollout's targets may run on.
    #[arg(long, default_value = "30s", value_parser = duration)]
    drain_timeout: Duration,
    /// Switch without waiting for the health check.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    force: bool,
}

#[derive(Args, Debug)]
pub struct RolloutSetArgs {
    pub service: String,
    /// Share of `kamal-rollout` cookie values sent to the rollout, 0 to 100.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    percent: u8,
    /// Cookie values always sent to the rollout (comma-separated).
    #[arg(long, alias = "list", value_delimiter = ',')]
    allowlist: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RolloutStopArgs {
    pub service: String,
    /// How long requests in flight on the rollout's targets may run on.
    #[arg(long, default_value = "30s", value_parser = duration)]
    drain_timeout: Duration,
}

pub async fn rollout(socket: &Path, command: &RolloutCommand) -> anyhow::Result<()> {
    let (service, action, body) = match command {
        RolloutCommand::Deploy(args) => {
            let request = RolloutRequest {
                targets: args.target.clone(),
                read_targets: args.read_target.clone(),
                deploy_timeout_ms: millis(args.deploy_timeout),
                drain_timeout_ms: millis(args.drain_timeout),
                force: args.force,
            };
            (&args.service, "deploy", serde_json::to_vec(&request)?)
        }
        RolloutCommand::Set(args) => {
            let split = RolloutSplit { percent: args.percent, allowlist: args.allowlist.clone() };
            (&args.service, "set", serde_json::to_vec(&split)?)
        }
        RolloutCommand::Stop(args) => {
            let change = StateChange { drain_timeout_ms: millis(args.drain_timeout), ..Default::default() };
            (&args.service, "stop", serde_json::to_vec(&change)?)
        }
    };
    gatehouse_deploy::check_name(service).map_err(anyhow::Error::msg)?;
    let reply = call(socket, http::Method::POST, &format!("/v1/services/{service}/rollout/{action}"), body).await?;
    match command {
        RolloutCommand::Deploy(_) => println!("rollout of {service} deployed to {}", strings(&reply["targets"])),
        RolloutCommand::Set(args) => println!(
            "rollout of {service}: {}% of cookie values{}",
            args.percent,
            if args.allowlist.is_empty() { String::new() } else { format!(", and {}", args.allowlist.join(",")) }
        ),
        RolloutCommand::Stop(_) => println!("rollout of {service} stopped"),
    }
    Ok(())
}

pub async fn upgrade(socket: &Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let reply = call(socket, http::Method::POST, "/v1/upgrade", Vec::new()).await?;
    let pid = reply["pid"].as_u64().unwrap_or_default();
    println!("upgraded: process {pid} serves ({} ms); the old one drains and exits", started.elapsed().as_millis());
    Ok(())
}

pub async fn remove(socket: &Path, service: &str) -> anyhow::Result<()> {
    gatehouse_deploy::check_name(service).map_err(anyhow::Error::msg)?;
    call(socket, http::Method::DELETE, &format!("/v1/services/{service}"), Vec::new()).await?;
    println!("removed {service}");
    Ok(())
}

pub async fn list(socket: &Path, json: bool) -> anyhow::Result<()> {
    let reply = call(socket, http::Method::GET, "/v1/services", Vec::new()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    let services = reply["services"].as_array().cloned().unwrap_or_default();
    let rows: Vec<[String; 6]> = services
        .iter()
        .map(|s| {
            let rollout = &s["rollout"];
            [
                s["name"].as_str().unwrap_or("").to_string(),
                strings(&s["hosts"]),
                strings(&s["path_prefixes"]),
                match strings(&s["read_targets"]) {
                    readers if readers.is_empty() => strings(&s["targets"]),
                    readers => format!("{} (reads: {readers})", strings(&s["targets"])),
                },
                s["state"]["state"].as_str().unwrap_or("").to_string(),
                match rollout["percent"].as_u64() {
                    Some(percent) => format!("{} ({percent}%)", strings(&rollout["targets"])),
                    None => String::new(),
                },
            ]
        })
        .collect();
    print!("{}", table(["Service", "Host", "Path", "Target", "State", "Rollout"], &rows));
    Ok(())
}

pub async fn certificates(socket: &Path, json: bool) -> anyhow::Result<()> {
    let reply = call(socket, http::Method::GET, "/v1/certificates", Vec::new()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    if reply["acme"] != serde_json::Value::Bool(true) {
        println!("ACME is off: no listener speaks HTTPS");
        return Ok(());
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let rows: Vec<[String; 6]> = reply["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let state = match (c["ordering"].as_bool(), c["failures"].as_u64(), c["last_error"].as_str()) {
                (Some(true), _, _) => "ordering".to_string(),
                (_, Some(n @ 1..), Some(error)) => format!("failing ({n}x): {error}"),
                _ if c["not_after"].is_null() => "waiting".to_string(),
                _ => "valid".to_string(),
            };
            [
                text(&c["service"]),
                strings(&c["names"]),
                text(&c["issuer"]),
                text(&c["not_after"]),
                text(&c["renew_at"]),
                state,
            ]
        })
        .collect();
    println!("CA: {} ({})", text(&reply["directory"]), text(&reply["challenge"]));
    print!("{}", table(["Service", "Names", "Issuer", "Not after", "Renew at", "State"], &rows));
    Ok(())
}

/// A JSON array of strings, comma-separated.
fn strings(v: &serde_json::Value) -> String {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default()
}

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// One request to the admin socket; a non-2xx answer becomes an error with its message.
async fn call(socket: &Path, method: http::Method, path: &str, body: Vec<u8>) -> anyhow::Result<serde_json::Value> {
    let stream = tokio::net::UnixStream::connect(socket).await.with_context(|| {
        format!("cannot reach Gatehouse at {} (is it running? pass -c FILE or --socket PATH)", socket.display())
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "gatehouse")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await.context("the admin socket closed the connection")?;
    let status = response.status();
    let bytes = http_body_util::Limited::new(response.into_body(), MAX_REPLY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the reply: {e}"))?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::json!({"error": String::from_utf8_lossy(&bytes).trim().to_string()}));
    if !status.is_success() {
        let message = value["error"].as_str().unwrap_or("no message");
        anyhow::bail!("{message} ({status})");
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up() {
        let rows = [["web".to_string(), "a.test".into()], ["api-long".into(), "b.test".into()]];
        assert_eq!(table(["Service", "Host"], &rows), "Service   Host\nweb       a.test\napi-long  b.test\n");
    }
}
