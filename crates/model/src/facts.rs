//! The typed facts a source emits about one service.

use std::time::Duration;

use serde::Serialize;

use crate::host::HostPattern;

/// How a service spreads requests over its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    /// Weighted round robin (smooth interleaving, as nginx does).
    #[default]
    RoundRobin,
    /// Power of two random choices by in-flight requests.
    LeastRequests,
    /// Consistent hashing of the client address.
    IpHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
    /// Plain HTTP over a Unix socket; the target's `host` is the socket's path.
    Unix,
}

/// The longest socket path Linux accepts (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// One upstream address of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetSpec {
    pub scheme: Scheme,
    /// Host name or IP literal, as written (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Relative share of requests under weighted policies; at least 1.
    pub weight: u32,
}

impl TargetSpec {
    /// `host:port`, with brackets around IPv6 literals: the form of a Host header
    /// (`localhost` for a Unix socket).
    pub fn authority(&self) -> String {
        match self.scheme {
            Scheme::Unix => "localhost".into(),
            _ => crate::host::host_port(&self.host, self.port),
        }
    }

    /// Reads `http://host:port` or `https://host:port` (the port defaults to the scheme's),
    /// or `unix:/path/to.sock`; with `bare_allowed`, also `host:port` as plain HTTP
    /// (kamal-proxy's form). No path, query or credentials: the error says what to write
    /// instead.
    pub fn parse_url(url: &str, bare_allowed: bool) -> Result<TargetSpec, String> {
        if let Some(path) = url.strip_prefix("unix:") {
            if !path.starts_with('/') || path.len() > MAX_SOCKET_PATH || path.contains('\0') {
                return Err(format!(
                    "target `{url}`: a Unix socket target is `unix:` and an absolute path of at most {MAX_SOCKET_PATH} bytes"
                ));
            }
            return Ok(TargetSpec { scheme: Scheme::Unix, host: path.to_string(), port: 0, weight: 1 });
        }
        let with_scheme;
        let full = if bare_allowed && !url.contains("://") {
            with_scheme = format!("http://{url}");
            with_scheme.as_str()
        } else {
            url
        };
        let uri: http::Uri =
            full.parse().map_err(|_| format!("target `{url}` is not a URL; write e.g. \"http://127.0.0.1:9000\""))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return Err(format!("target `{url}` must start with http:// or https://")),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "target `{url}` must not have a path; use path_prefix and strip_prefix to rewrite paths"
            ));
        }
        let authority = uri.authority().ok_or_else(|| format!("target `{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("target `{url}` must not carry credentials"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(format!("target `{url}` has no host"));
        }
        let port = match authority.port_u16() {
            Some(port) => port,
            None if authority.as_str().contains(':') && !authority.as_str().ends_with(']') => {
                return Err(format!("target `{url}` has a bad port"))
            }
            None if scheme == Scheme::Https => 443,
            None => 80,
        };
        Ok(TargetSpec { scheme, host, port, weight: 1 })
    }

    pub fn url(&self) -> String {
        match self.scheme {
            Scheme::Http => format!("http://{}", self.authority()),
            Scheme::Https => format!("https://{}", self.authority()),
            Scheme::Unix => format!("unix:{}", self.host),
        }
    }
}

/// Upstream timeouts of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// TCP (and TLS) connection establishment; past it the next target is tried.
    #[serde(with = "duration_ms")]
    pub connect: Duration,
    /// From the request being sent to the response head arriving; past it: 504.
    #[serde(with = "duration_ms")]
    pub response_header: Duration,
    /// How long an unused pooled upstream connection is kept.
    #[serde(with = "duration_ms")]
    pub idle: Duration,
    /// How long a target that could not be connected to sits out of rotation while others
    /// can take its requests (nginx's `fail_timeout`); zero keeps it in.
    #[serde(with = "duration_ms")]
    pub fail: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            fail: Duration::from_secs(10),
        }
    }
}

mod duration_ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// Whether bodies are read whole before they are passed on (kamal-proxy's buffering), so a
/// slow client never ties up an application worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Buffering {
    pub requests: bool,
    pub responses: bool,
    /// Bytes kept in memory before a buffer spills to a temp file.
    pub memory: u64,
    /// A buffered response larger than this is answered 502.
    pub max_response_body: Option<u64>,
}

impl Default for Buffering {
    fn default() -> Self {
        Buffering { requests: false, responses: false, memory: 1 << 20, max_response_body: None }
    }
}

/// Headers of a service's requests and responses written into the access log (lower case).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogHeaders {
    pub request: Vec<String>,
    pub response: Vec<String>,
}

/// Whether a service takes traffic (kamal-proxy's pause and stop).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Availability {
    #[default]
    Serving,
    /// New requests wait until the service serves again, at most `max_pause` (then 504).
    Paused {
        #[serde(with = "duration_ms")]
        max_pause: Duration,
    },
    /// Requests get 503 with this message.
    Stopped { message: String },
}

/// A second target set behind a cookie split (kamal-proxy's rollout): requests whose
/// `kamal-rollout` cookie is in the allowlist, or hashes under the percentage, go to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollout {
    pub targets: Vec<TargetSpec>,
    pub read_targets: Vec<TargetSpec>,
    /// Share of cookie values sent to the rollout, 0 to 100.
    pub percent: u8,
    /// Cookie values always sent to the rollout.
    pub allowlist: Vec<String>,
}

/// Which of a service's target sets a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lane {
    pub rollout: bool,
    pub read: bool,
}

/// Everything a source says about one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    pub name: String,
    /// Which source said so ("file", later "deploy" and "drove:<namespace>").
    pub source: String,
    pub hosts: Vec<HostPattern>,
    /// Requests whose path starts with one of these prefixes (on a segment boundary); `/`
    /// is all.
    pub path_prefixes: Vec<String>,
    /// Remove the matched prefix from the path before forwarding.
    pub strip_prefix: bool,
    pub targets: Vec<TargetSpec>,
    /// GET and HEAD go to these when there are any (kamal-proxy's readers); the `targets`
    /// are then the writers.
    pub read_targets: Vec<TargetSpec>,
    /// After a write, the client's reads go to the writers for this long (a `kamal-writer`
    /// cookie); zero turns it off.
    #[serde(with = "duration_ms")]
    pub writer_affinity: Duration,
    /// WebSocket upgrades count as reads (they go to writers otherwise).
    pub read_target_websockets: bool,
    pub rollout: Option<Rollout>,
    /// Targets the source's health checks keep out of rotation (shown, never routed to).
    pub down_targets: Vec<TargetSpec>,
    pub balance: BalancePolicy,
    pub timeouts: Timeouts,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_size: Option<u64>,
    /// Speak HTTP/2 to the targets (needed for gRPC).
    pub upstream_http2: bool,
    /// Verify the certificates of `https://` targets.
    pub tls_verify: bool,
    /// How many further targets to try when a connection cannot be made.
    pub retries: u32,
    pub availability: Availability,
    pub buffering: Buffering,
    /// Keep the client's forwarding headers (append to X-Forwarded-For) instead of replacing
    /// them: for a service behind another proxy.
    pub forward_headers: bool,
    pub log_headers: LogHeaders,
    /// HTML pages for Gatehouse's own answers on this service, by status (kamal-proxy's
    /// `--error-pages`); `{{.Message}}` in the 503 page is a stopped service's message.
    #[serde(skip)]
    pub error_pages: std::collections::BTreeMap<u16, String>,
    /// How the service's targets are checked. While the service is paused or stopped, GET
    /// and HEAD of its path are answered 200 by the proxy, so load balancers in front keep
    /// the host.
    pub health_check: Option<HealthCheck>,
    /// Requests for the service's other hosts are redirected (301) to this one
    /// (kamal-proxy's `--canonical-host`); lowercase.
    pub canonical_host: Option<String>,
    /// The service's own certificate, offered on the HTTPS listeners for its hosts.
    pub tls: Option<ServiceTls>,
}

/// Longest service name accepted.
const MAX_SERVICE_NAME: usize = 128;

/// Checks a service name, from any source that lets people choose one: it becomes a metrics
/// label, a log field, a URL segment and a storage key.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SERVICE_NAME {
        return Err(format!("a service name must have 1 to {MAX_SERVICE_NAME} characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(format!("service name `{name}` may only have letters, digits, `-`, `_` and `.`"));
    }
    Ok(())
}

/// A service's certificate and what it does to plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceTls {
    pub certificate: TlsCertificate,
    /// Plain-HTTP requests get a 301 to HTTPS (kamal-proxy's `--tls-redirect`); ACME's
    /// HTTP-01 requests still get through.
    pub redirect: bool,
    /// HTTPS responses carry `Strict-Transport-Security: max-age=` this many seconds
    /// (unless the target sent its own); off when `None`.
    pub hsts_max_age: Option<u64>,
}

/// Where a service's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsCertificate {
    /// PEM chain and key (kamal-proxy's `--tls-certificate-path`, `--tls-private-key-path`).
    Files { certificate: std::path::PathBuf, key: std::path::PathBuf },
    /// Obtained and renewed by ACME for the service's hosts (`--tls`, `tls = "auto"`), from
    /// Let's Encrypt's staging CA with `staging` (kamal-proxy's `--tls-staging`), else from
    /// the configured one.
    Acme { staging: bool },
}

/// An HTTP health check of a service's targets: a GET of `path` every `interval`; `rise`
/// passes in a row bring a target in, `fall` failures in a row take it out (HAProxy's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub path: String,
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Checked on this port instead of the target's.
    pub port: Option<u16>,
    /// The Host header of the checks (default: the target's address).
    pub host: Option<String>,
    pub rise: u32,
    pub fall: u32,
}

impl ServiceSpec {
    /// A service with the defaults every source starts from.
    pub fn new(name: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: source.into(),
            hosts: Vec::new(),
            path_prefixes: vec!["/".to_string()],
            strip_prefix: false,
            targets: Vec::new(),
            read_targets: Vec::new(),
            writer_affinity: Duration::ZERO,
            read_target_websockets: false,
            rollout: None,
            down_targets: Vec::new(),
            balance: BalancePolicy::default(),
            timeouts: Timeouts::default(),
            max_body_size: None,
            upstream_http2: false,
            tls_verify: true,
            retries: 2,
            availability: Availability::Serving,
            buffering: Buffering::default(),
            forward_headers: false,
            log_headers: LogHeaders::default(),
            error_pages: std::collections::BTreeMap::new(),
            health_check: None,
            canonical_host: None,
            tls: None,
        }
    }
}

impl ServiceSpec {
    /// The target sets in the order engines index them: writers, readers, then the rollout's
    /// writers and readers.
    pub fn target_sets(&self) -> [&[TargetSpec]; 4] {
        let (rollout_writers, rollout_readers) =
            self.rollout.as_ref().map_or((&[][..], &[][..]), |r| (&r.targets[..], &r.read_targets[..]));
        [&self.targets, &self.read_targets, rollout_writers, rollout_readers]
    }

    /// Whether GET and HEAD may go to readers (of the active set or the rollout).
    pub fn has_readers(&self) -> bool {
        !self.read_targets.is_empty() || self.rollout.as_ref().is_some_and(|r| !r.read_targets.is_empty())
    }

    /// Every target, indexed as engines index them.
    pub fn all_targets(&self) -> impl Iterator<Item = &TargetSpec> {
        self.target_sets().into_iter().flatten()
    }

    /// The target at an engine index (see [`ServiceSpec::all_targets`]).
    pub fn target(&self, mut index: usize) -> Option<&TargetSpec> {
        for set in self.target_sets() {
            match set.get(index) {
                Some(target) => return Some(target),
                None => index -= set.len(),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        let t = TargetSpec::parse_url("10.0.0.5:3000", true).unwrap();
        assert_eq!((t.scheme, t.host.as_str(), t.port), (Scheme::Http, "10.0.0.5", 3000));
        assert_eq!(TargetSpec::parse_url("https://[::1]", false).unwrap().authority(), "[::1]:443");
        assert_eq!(TargetSpec::parse_url("http://app", true).unwrap().port, 80);
        assert!(TargetSpec::parse_url("10.0.0.5:3000", false).unwrap_err().contains("http://"));
        assert!(TargetSpec::parse_url("http://a:1/x", true).unwrap_err().contains("path"));
        assert!(TargetSpec::parse_url("http://u@a:1", true).unwrap_err().contains("credentials"));
        assert!(TargetSpec::parse_url("ftp://a:1", true).is_err());
        assert!(TargetSpec::parse_url("a:99999", true).is_err());
        let unix = TargetSpec::parse_url("unix:/run/app.sock", true).unwrap();
        assert_eq!(
            (unix.scheme, unix.url(), unix.authority()),
            (Scheme::Unix, "unix:/run/app.sock".into(), "localhost".into())
        );
        assert!(TargetSpec::parse_url("unix:run/app.sock", true).unwrap_err().contains("absolute path"));
        assert!(TargetSpec::parse_url(&format!("unix:/{}", "x".repeat(107)), true).is_err());
    }
}
