//! Invoked as `kamal-proxy` (a symlink to this binary), Gatehouse speaks kamal-proxy's CLI:
//! `run` with its flags and environment, and the control commands with its default socket
//! and state locations, so a host that Kamal drives works unchanged.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::control::{self, DeployArgs, StateArgs};
use crate::gateway::ConfigSource;

#[derive(Parser)]
#[command(name = "kamal-proxy", version, about = "Gatehouse, speaking kamal-proxy's command line")]
struct KamalCli {
    #[command(subcommand)]
    command: KamalCommand,
}

#[derive(Subcommand)]
enum KamalCommand {
    /// Run the proxy.
    Run(RunArgs),
    /// Deploy a target host.
    Deploy(Box<DeployArgs>),
    /// Remove the service.
    #[command(alias = "rm")]
    Remove { service: String },
    /// Pause a service.
    Pause(StateArgs),
    /// Stop a service.
    Stop(StateArgs),
    /// Resume a service.
    Resume(StateArgs),
    /// List the services.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Canary rollouts.
    Rollout {
        #[command(subcommand)]
        command: control::RolloutCommand,
    },
}

/// kamal-proxy's `run` flags, each also read from the environment (with or without the
/// `KAMAL_PROXY_` prefix, as kamal-proxy does).
#[derive(Args)]
struct RunArgs {
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    debug: Option<bool>,
    #[arg(long)]
    http_port: Option<u16>,
    /// HTTPS for services deployed with a certificate (0: off).
    #[arg(long)]
    https_port: Option<u16>,
    /// Prometheus metrics on /metrics (0: off).
    #[arg(long)]
    metrics_port: Option<u16>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    http3: Option<bool>,
}

/// `KAMAL_PROXY_NAME`, else `NAME`.
fn env(name: &str) -> Option<String> {
    std::env::var(format!("KAMAL_PROXY_{name}")).or_else(|_| std::env::var(name)).ok()
}

fn env_port(name: &str) -> anyhow::Result<Option<u16>> {
    env(name).map(|v| v.parse().map_err(|_| anyhow::anyhow!("{name}={v} is not a port"))).transpose()
}

fn env_bool(name: &str) -> bool {
    env(name).is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "True"))
}

/// kamal-proxy's socket: `KAMAL_PROXY_SOCKET`, else `$XDG_RUNTIME_DIR/kamal-proxy.sock`,
/// else the temp folder.
fn socket() -> PathBuf {
    if let Some(path) = std::env::var_os("KAMAL_PROXY_SOCKET") {
        return path.into();
    }
    let folder = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    folder.join("kamal-proxy.sock")
}

/// kamal-proxy's data folder (`~/.config/kamal-proxy`, else the temp folder). Gatehouse keeps
/// its own file there and never writes kamal-proxy's state file.
fn state_file() -> PathBuf {
    let folder = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".config/kamal-proxy"))
        .unwrap_or_else(std::env::temp_dir);
    folder.join("gatehouse-deploys.json")
}

/// Runs the kamal-proxy command line in `args` (the program name first).
pub fn main(args: Vec<String>) -> anyhow::Result<()> {
    let cli = KamalCli::parse_from(args);
    let socket = socket();
    match cli.command {
        KamalCommand::Run(run) => serve(run),
        other => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                match other {
                    KamalCommand::Deploy(args) => control::deploy(&socket, &args).await,
                    KamalCommand::Remove { service } => control::remove(&socket, &service).await,
                    KamalCommand::Pause(args) => control::change_state(&socket, "pause", &args).await,
                    KamalCommand::Stop(args) => control::change_state(&socket, "stop", &args).await,
                    KamalCommand::Resume(args) => control::change_state(&socket, "resume", &args).await,
                    KamalCommand::List { json } => control::list(&socket, json).await,
                    KamalCommand::Rollout { command } => control::rollout(&socket, &command).await,
                    KamalCommand::Run(_) => Ok(()),
                }
            })
        }
    }
}

fn serve(run: RunArgs) -> anyhow::Result<()> {
    let http_port = match run.http_port {
        Some(port) => port,
        None => env_port("HTTP_PORT")?.unwrap_or(80),
    };
    let https_port = match run.https_port {
        Some(port) => port,
        None => env_port("HTTPS_PORT")?.unwrap_or(443),
    };
    let metrics_port = match run.metrics_port {
        Some(port) => port,
        None => env_port("METRICS_PORT")?.unwrap_or(0),
    };
    let debug = run.debug.unwrap_or_else(|| env_bool("DEBUG"));
    let text = config_text(http_port, https_port, metrics_port, debug);
    let source = ConfigSource::Embedded { text, origin: PathBuf::from("<kamal-proxy run>") };
    let config = source.load()?;
    let log = crate::logging::init(&config.log_level);
    if run.http3.unwrap_or_else(|| env_bool("HTTP3")) {
        tracing::warn!("--http3 is not supported: HTTP/1.1 and HTTP/2 only");
    }
    crate::runtime()?.block_on(crate::serve(source, config, log, None))
}

/// The configuration `kamal-proxy run` stands for: HTTP (and HTTPS for the services that
/// bring certificates, unless its port is 0) on every interface, requests logged to stdout as
/// kamal-proxy does, the admin API (with `/metrics`) on the metrics port.
fn config_text(http_port: u16, https_port: u16, metrics_port: u16, debug: bool) -> String {
    let admin = match metrics_port {
        0 => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        port => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
    };
    let quoted = |p: PathBuf| format!("{:?}", p.display().to_string());
    let https = match https_port {
        0 => String::new(),
        port => format!("[[listeners]]\naddress = \"0.0.0.0:{port}\"\ntls = true\n"),
    };
    format!(
        "address = \"{}\"\nport = {}\nloglevel = \"{}\"\naccess_log = \"stdout\"\nadmin_socket = {}\ndeploy_state = {}\n[[listeners]]\naddress = \"0.0.0.0:{http_port}\"\n{https}",
        admin.ip(),
        admin.port(),
        if debug { "debug" } else { "info" },
        quoted(socket()),
        quoted(state_file()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_stands_for_a_valid_configuration() {
        let text = config_text(8080, 8443, 9090, true);
        let config = gatehouse_config::parse(&text, std::path::Path::new("<test>")).unwrap();
        assert_eq!(config.listeners[0].address, "0.0.0.0:8080".parse().unwrap());
        assert!(config.listeners[1].tls && config.listeners[1].address.port() == 8443);
        assert_eq!(config.admin.address, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(config.log_level, "debug");
        assert!(config.access_log.is_some() && config.admin.socket.is_some());
        let quiet = gatehouse_config::parse(&config_text(80, 0, 0, false), std::path::Path::new("<test>")).unwrap();
        assert!(quiet.admin.address.ip().is_loopback(), "no metrics port: the admin API stays on loopback");
    }
}
