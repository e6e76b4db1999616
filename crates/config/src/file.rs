//! The file as written: serde types with spans, converted by `validate` into [`crate::Config`].

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Admin API bind host (drove-gateway key).
    pub address: Option<Spanned<String>>,
    /// Admin API port; drove-gateway writes it as a string.
    pub port: Option<Spanned<NumberOrText>>,
    pub loglevel: Option<Spanned<String>>,
    pub port_use_tls: Option<Spanned<bool>>,
    pub port_tls_certfile: Option<Spanned<String>>,
    pub port_tls_keyfile: Option<Spanned<String>>,
    pub xproxy: Option<String>,
    pub proxy_platform: Option<Spanned<String>>,
    pub admin_token: Option<String>,
    /// The admin Unix socket (the CLI's control channel); "" turns it off.
    pub admin_socket: Option<Spanned<String>>,
    /// Where deployed services are saved.
    pub deploy_state: Option<Spanned<String>>,
    /// "stdout", "off" or a file: one JSON line per request.
    pub access_log: Option<Spanned<String>>,
    pub workers: Option<Spanned<i64>>,
    /// What one client may cost: timeouts and connection and request caps.
    pub limits: Option<FileLimits>,
    /// Automatic certificates.
    pub acme: Option<FileAcme>,
    /// Peers (CIDRs) whose forwarding headers are kept and extended.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Also write RFC 7239 `Forwarded`.
    #[serde(default)]
    pub forwarded_header: bool,
    /// Keep header fields with `_` in their names (dropped by default, as nginx does).
    #[serde(default)]
    pub underscores_in_headers: bool,
    #[serde(default)]
    pub listeners: Vec<FileListener>,
    #[serde(default)]
    pub services: Vec<FileService>,
    #[serde(default)]
    pub namespaces: Vec<FileNamespace>,
    pub event_refresh_interval_sec: Option<Spanned<NumberOrText>>,
    pub api_timeout: Option<Spanned<NumberOrText>>,
    pub drove_resync_interval_sec: Option<Spanned<NumberOrText>>,
    pub drove_failover_grace_sec: Option<Spanned<NumberOrText>>,
    pub state_path: Option<Spanned<String>>,
    pub state_persistence_enabled: Option<bool>,
    pub state_persistence_dir: Option<Spanned<String>>,
    pub startup_controller_sync_tries: Option<Spanned<i64>>,
    pub startup_controller_sync_retry_delay_sec: Option<Spanned<NumberOrText>>,
    // The nginx and HAProxy engines (drove-gateway's keys).
    pub left_delimiter: Option<String>,
    pub right_delimiter: Option<String>,
    pub nginx_config: Option<Spanned<String>>,
    pub nginx_template: Option<Spanned<String>>,
    pub nginx_cmd: Option<Spanned<String>>,
    pub nginx_ignore_check: Option<bool>,
    pub nginx_reload_disabled: Option<Spanned<bool>>,
    pub nginx_max_fails: Option<Spanned<i64>>,
    pub nginx_fail_timeout: Option<Spanned<String>>,
    pub nginx_slow_start: Option<Spanned<String>>,
    pub maxfailsupstream: Option<Spanned<i64>>,
    pub failtimeoutupstream: Option<Spanned<String>>,
    pub slowstartupstream: Option<Spanned<String>>,
    pub haproxysocketaddr: Option<Spanned<String>>,
    pub nginxplusapiaddr: Option<Spanned<String>>,
    pub haproxy_config: Option<Spanned<String>>,
    pub haproxy_template: Option<Spanned<String>>,
    pub haproxy_cmd: Option<Spanned<String>>,
    pub haproxy_reload_cmd: Option<Spanned<String>>,
    pub haproxy_ignore_check: Option<bool>,
    pub haproxy_reload_disabled: Option<Spanned<bool>>,
    pub haproxy_server_name_prefix: Option<String>,
    pub haproxy_server_name_host_port_delimiter: Option<String>,
    pub haproxy_backend_name_separator: Option<String>,
    pub haproxy_backend_include_routing_tag_suffix: Option<bool>,
    pub haproxy_add_server_attributes_string: Option<String>,
    pub haproxy_add_server_ssl_attributes_string: Option<String>,
    pub haproxy_manage_global_server_state_file: Option<Spanned<bool>>,
    pub dns_resolution_timeout_sec: Option<Spanned<NumberOrText>>,
    pub proxy_control_plane_timeout_sec: Option<Spanned<NumberOrText>>,
    pub haproxy_global_server_state_file_path: Option<Spanned<String>>,
}

/// `[limits]`: every key optional, defaults in `gatehouse_model::EdgeLimits`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileLimits {
    pub head_timeout: Option<Spanned<NumberOrText>>,
    pub keepalive_timeout: Option<Spanned<NumberOrText>>,
    pub body_timeout: Option<Spanned<NumberOrText>>,
    pub send_timeout: Option<Spanned<NumberOrText>>,
    pub tunnel_idle_timeout: Option<Spanned<NumberOrText>>,
    pub http2_ping_interval: Option<Spanned<NumberOrText>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_client: Option<Spanned<i64>>,
    pub max_requests: Option<Spanned<i64>>,
    pub max_requests_per_client: Option<Spanned<i64>>,
}

/// `[acme]`: every key optional; Let's Encrypt production and HTTP-01 by default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileAcme {
    /// A directory URL, or "letsencrypt", "letsencrypt-staging".
    pub directory: Option<Spanned<String>>,
    /// One address or a list: the CA's expiry notices.
    pub email: Option<Spanned<OneOrMany>>,
    pub eab_kid: Option<Spanned<String>>,
    pub eab_mac_key: Option<Spanned<String>>,
    pub ca_root: Option<Spanned<String>>,
    pub challenge: Option<Spanned<String>>,
    pub dns_hook: Option<Spanned<String>>,
    /// `IP:PORT` of the DNS server asked whether DNS-01 records are visible.
    pub dns_resolver: Option<Spanned<String>>,
    pub storage: Option<Spanned<String>>,
    /// On-demand TLS: the URL asked `?domain=NAME` before a certificate for an unknown name.
    pub on_demand_ask: Option<Spanned<String>>,
    pub on_demand_per_minute: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// drove-gateway 2.1's `[[namespaces]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileNamespace {
    pub name: Spanned<String>,
    #[serde(default)]
    pub drove: Vec<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub pass: Option<Spanned<String>>,
    pub access_token: Option<Spanned<String>>,
    pub realm: Option<Spanned<String>>,
    pub realm_suffix: Option<Spanned<String>>,
    pub routing_tag: Option<Spanned<String>>,
    pub leader_vhost: Option<Spanned<String>>,
    /// drove-gateway's own example puts it here, where it does nothing; accepted with a warning.
    pub event_refresh_interval_sec: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum NumberOrText {
    Number(f64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileListener {
    pub address: Spanned<String>,
    /// HTTPS even without certificates of its own (deployed services bring theirs).
    pub tls: Option<Spanned<bool>>,
    #[serde(default)]
    pub tls_certificates: Vec<FileCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileService {
    pub name: Spanned<String>,
    pub hosts: Spanned<Vec<Spanned<String>>>,
    pub path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub targets: Spanned<Vec<Spanned<FileTarget>>>,
    pub balance: Option<FileBalance>,
    pub connect_timeout: Option<Spanned<NumberOrText>>,
    pub response_header_timeout: Option<Spanned<NumberOrText>>,
    pub idle_timeout: Option<Spanned<NumberOrText>>,
    /// How long a target that refused a connection sits out (0: never).
    pub fail_timeout: Option<Spanned<NumberOrText>>,
    pub max_body_size: Option<Spanned<NumberOrText>>,
    /// Speak HTTP/2 to the targets (gRPC).
    #[serde(default)]
    pub http2: bool,
    /// Verify `https://` targets' certificates (default true).
    pub tls_verify: Option<bool>,
    pub retries: Option<Spanned<i64>>,
    pub health_check: Option<FileHealthCheck>,
    /// "auto": a certificate from ACME for the hosts.
    pub tls: Option<Spanned<String>>,
    /// Plain-HTTP requests of a TLS service are redirected to HTTPS (default true).
    pub tls_redirect: Option<bool>,
    /// Strict-Transport-Security max-age on HTTPS responses (off when unset).
    pub hsts_max_age: Option<Spanned<NumberOrText>>,
}

/// `[services.health_check]`: HAProxy's active checks, over HTTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileHealthCheck {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<NumberOrText>>,
    pub timeout: Option<Spanned<NumberOrText>>,
    pub port: Option<Spanned<i64>>,
    pub host: Option<String>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum FileTarget {
    Url(String),
    Table(FileTargetTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileTargetTable {
    pub url: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FileBalance {
    RoundRobin,
    LeastRequests,
    IpHash,
}
