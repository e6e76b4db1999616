//! Gatehouse's configuration file.
//!
//! The file is TOML and a superset of drove-gateway's `nixy.toml`: keys that file already
//! has keep their names and meaning. [`load`] turns it into a validated [`Config`]; every
//! problem is reported as `FILE:LINE:COL: what is wrong`. Its `[[services]]` are the static
//! source of routes, handed to the model as [`gatehouse_model::ServiceSpec`] facts.

mod deferred;
mod diagnostic;
mod drove;
mod exs;
mod file;
mod templated;
mod units;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gatehouse_model::ServiceSpec;
use serde::Serialize;

pub use diagnostic::{ConfigError, Diagnostic};
pub use drove::{ControllerUrl, Credentials, DroveSettings, Environment, NamespaceSettings};
pub use templated::{ConfigFiles, HaproxyNaming, HaproxyStateFile, TemplatedSettings};
pub use units::{parse_duration, parse_size};

/// Which engine carries the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyPlatform {
    Native,
    Nginx,
    Haproxy,
}

/// A validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file it came from (relative paths inside it are resolved against its folder).
    pub origin: PathBuf,
    pub admin: AdminSettings,
    pub log_level: String,
    /// Value of the `X-Proxy` response header; the host name when unset.
    pub xproxy: Option<String>,
    pub proxy_platform: ProxyPlatform,
    /// The nginx or HAProxy engine's settings; `Some` exactly when the platform is one of them.
    pub templated: Option<TemplatedSettings>,
    /// Worker threads of the native proxy; all cores when unset.
    pub workers: Option<usize>,
    /// Timeouts and caps on what one client may cost (`[limits]`).
    pub limits: gatehouse_model::EdgeLimits,
    /// Whose forwarding headers are kept, and what is written (`trusted_proxies`, ...).
    pub forwarding: gatehouse_model::ForwardingPolicy,
    pub listeners: Vec<ListenerSpec>,
    pub services: Vec<ServiceSpec>,
    /// The Drove source: `[[namespaces]]` and their polling settings.
    pub drove: DroveSettings,
    /// The deploy source's state file.
    pub deploy_state: PathBuf,
    /// Automatic certificates (`[acme]`), for the services that ask for them.
    pub acme: gatehouse_model::acme::AcmeSettings,
    /// Where the access log goes (`None`: off).
    pub access_log: Option<AccessLogDestination>,
    /// Things worth a log line that do not stop the file from loading.
    #[serde(skip)]
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminSettings {
    pub address: SocketAddr,
    /// Bearer token required by mutating endpoints.
    pub token: Option<Secret>,
    /// `port_use_tls` with `port_tls_certfile` and `port_tls_keyfile`: HTTPS (HTTP/1.1 only).
    pub tls: Option<CertificatePaths>,
    /// The admin Unix socket, where the CLI's control commands go (`None`: off). Its file
    /// permissions are the access control, so no token is asked there.
    pub socket: Option<PathBuf>,
}

/// The access log's destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogDestination {
    Stdout,
    File(PathBuf),
}

/// Where the admin socket is when the file does not say: systemd's `RUNTIME_DIRECTORY`, else
/// `XDG_RUNTIME_DIR`, else `/run/gatehouse`.
pub fn default_admin_socket() -> PathBuf {
    runtime_folder(&["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"], "/run/gatehouse").join("gatehouse.sock")
}

/// Where `gatehouse start` records its process id, for `gatehouse stop`: beside the admin
/// socket's default.
pub fn default_pid_file() -> PathBuf {
    runtime_folder(&["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"], "/run/gatehouse").join("gatehouse.pid")
}

/// Our state file for the Elixir release's `GATEHOUSE_STATE` or `state` path: JSON beside it
/// (`state.etf` -> `state.json`), never over the Elixir file.
pub fn state_beside(elixir_state: &Path) -> PathBuf {
    match elixir_state.extension() {
        Some(ext) if ext == "etf" => elixir_state.with_extension("json"),
        _ => {
            let mut name = elixir_state.as_os_str().to_owned();
            name.push(".json");
            PathBuf::from(name)
        }
    }
}

/// Where deployed services are saved when the file does not say: systemd's
/// `STATE_DIRECTORY`, else `/var/lib/gatehouse`.
pub fn default_deploy_state() -> PathBuf {
    runtime_folder(&["STATE_DIRECTORY"], "/var/lib/gatehouse").join("deploys.json")
}

fn runtime_folder(variables: &[&str], fallback: &str) -> PathBuf {
    variables
        .iter()
        .filter_map(std::env::var_os)
        // systemd may list several folders separated by colons; the first is ours.
        .filter_map(|v| v.to_str().and_then(|s| s.split(':').next()).map(PathBuf::from))
        .find(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(fallback))
}

/// A value never printed or returned: `Debug` and `Serialize` show it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerSpec {
    pub address: SocketAddr,
    /// HTTPS: with `tls_certificates`, or `tls = true` (deployed services bring their own).
    pub tls: bool,
    /// Certificates offered by SNI; the first is the default.
    pub tls_certificates: Vec<CertificatePaths>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&text, path)
}

/// Validates configuration text that came from `origin`.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    parse_with_environment(text, origin, &Environment::from_process())
}

/// [`parse`] with the container variables given rather than read from the process. A file
/// named `*.exs` is Gatehouse's Elixir config, read as data.
pub fn parse_with_environment(text: &str, origin: &Path, env: &Environment) -> Result<Config, ConfigError> {
    if !exs::is_exs(origin) {
        return validate::parse(text, origin, env);
    }
    let translated = exs::translate(text, origin)?;
    let mut config = validate::parse(&translated.toml, origin, env).map_err(|e| match e {
        ConfigError::Invalid(found) => ConfigError::Invalid(translated.relocate(found, text, origin)),
        other => other,
    })?;
    config.warnings = translated.relocate(std::mem::take(&mut config.warnings), text, origin);
    Ok(config)
}

/// The TOML file equivalent to a Gatehouse `.exs` config (`gatehouse convert`).
pub fn convert_exs(path: &Path) -> Result<String, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    Ok(exs::translate(&text, path)?.toml)
}
