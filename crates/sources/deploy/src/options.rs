//! A deploy as asked for (the control API's JSON; kamal-proxy's flags and defaults) and its
//! validation into route facts.

use std::time::Duration;

use gatehouse_model::{
    Buffering, HealthCheck, HostPattern, LogHeaders, ServiceSpec, ServiceTls, TargetSpec, TlsCertificate,
};
use serde::{Deserialize, Serialize};

/// More targets than this in one deploy are refused.
const MAX_TARGETS: usize = 1000;
const MAX_HOSTS: usize = 1000;

/// Everything a deploy says about its service; saved as it is in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployOptions {
    /// `host:port`, `http://host:port` or `https://host:port`.
    pub targets: Vec<String>,
    pub hosts: Vec<String>,
    /// Requests under these prefixes (on segment boundaries); empty means `/`.
    pub path_prefixes: Vec<String>,
    /// Forward `/api/x` as `/x` (kamal-proxy's default).
    pub strip_path_prefix: bool,
    pub health_check: HealthCheckOptions,
    /// How long the new targets have to pass their health check.
    pub deploy_timeout_ms: u64,
    /// How long the old targets' requests may run on after the switch.
    pub drain_timeout_ms: u64,
    /// How long a target has to send its response head (504 after).
    pub target_timeout_ms: u64,
    /// Read the whole request body before the target sees it (memory, then a temp file).
    pub buffer_requests: bool,
    /// Read the whole response before the client sees it.
    pub buffer_responses: bool,
    /// Bytes a buffer keeps in memory before it spills to a temp file.
    pub buffer_memory: u64,
    /// Larger request bodies get 413 (0: no limit).
    pub max_request_body: u64,
    /// Larger buffered responses get 502 (0: no limit).
    pub max_response_body: u64,
    /// Keep the client's X-Forwarded-For/-Proto/-Host (appending to X-Forwarded-For) instead of
    /// replacing them; kamal-proxy's default is on without TLS.
    pub forward_headers: Option<bool>,
    /// Request and response headers written into the access log.
    pub log_request_headers: Vec<String>,
    pub log_response_headers: Vec<String>,
    /// GET and HEAD go to these (kamal-proxy's readers).
    pub read_targets: Vec<String>,
    pub read_target_websockets: bool,
    pub writer_affinity_timeout_ms: u64,
    /// A folder with `502.html`, `503.html`, ... for Gatehouse's own answers.
    pub error_pages: Option<String>,
    pub tls: bool,
    pub tls_certificate_path: Option<String>,
    pub tls_private_key_path: Option<String>,
    pub tls_redirect: bool,
    /// Certificates from Let's Encrypt's staging CA (untrusted; for trying things out).
    pub tls_staging: bool,
    /// HSTS max-age in seconds on HTTPS responses (0: no header).
    pub hsts_max_age_s: u64,
    pub canonical_host: Option<String>,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            targets: Vec::new(),
            hosts: Vec::new(),
            path_prefixes: Vec::new(),
            strip_path_prefix: true,
            health_check: HealthCheckOptions::default(),
            deploy_timeout_ms: 30_000,
            drain_timeout_ms: 30_000,
            target_timeout_ms: 30_000,
            buffer_requests: false,
            buffer_responses: false,
            buffer_memory: 1 << 20,
            max_request_body: 0,
            max_response_body: 0,
            forward_headers: None,
            log_request_headers: Vec::new(),
            log_response_headers: Vec::new(),
            read_targets: Vec::new(),
            read_target_websockets: false,
            writer_affinity_timeout_ms: 1000,
            error_pages: None,
            tls: false,
            tls_certificate_path: None,
            tls_private_key_path: None,
            tls_redirect: true,
            tls_staging: false,
            hsts_max_age_s: 0,
            canonical_host: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckOptions {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Checked on this port instead of the target's.
    pub port: Option<u16>,
    /// Consecutive passes that make a target healthy (HAProxy's `rise`).
    pub rise: u32,
    /// Consecutive failures that take a healthy target out (HAProxy's `fall`).
    pub fall: u32,
    /// The Host header of the checks (default: the target's address).
    pub host: Option<String>,
}

impl Default for HealthCheckOptions {
    fn default() -> Self {
        HealthCheckOptions {
            path: "/up".into(),
            interval_ms: 1000,
            timeout_ms: 5000,
            port: None,
            rise: 1,
            fall: 3,
            host: None,
        }
    }
}

/// A deploy call: the service's options, and whether to skip the health gate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    #[serde(default)]
    pub force: bool,
    pub options: DeployOptions,
}

/// A `pause`, `stop` or `resume` call (kamal-proxy's flags and defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateChange {
    /// How long requests in flight may run on (pause and stop).
    pub drain_timeout_ms: u64,
    /// How long a paused service holds a request before answering 504.
    pub max_pause_ms: u64,
    /// What a stopped service answers, with 503.
    pub message: String,
}

impl Default for StateChange {
    fn default() -> Self {
        StateChange { drain_timeout_ms: 30_000, max_pause_ms: 30_000, message: String::new() }
    }
}

/// A `rollout deploy` call: a second target set for the service, behind the same gate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutRequest {
    pub targets: Vec<String>,
    pub read_targets: Vec<String>,
    pub deploy_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    pub force: bool,
}

impl Default for RolloutRequest {
    fn default() -> Self {
        RolloutRequest {
            targets: Vec::new(),
            read_targets: Vec::new(),
            deploy_timeout_ms: 30_000,
            drain_timeout_ms: 30_000,
            force: false,
        }
    }
}

/// A `rollout set` call: which `kamal-rollout` cookie values go to the rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSplit {
    /// Share of cookie values, 0 to 100.
    pub percent: u8,
    pub allowlist: Vec<String>,
}

/// Most allowlist entries accepted.
const MAX_ALLOWLIST: usize = 10_000;

impl RolloutSplit {
    pub fn check(&self) -> Result<(), String> {
        if self.percent > 100 {
            return Err(format!("--percent {} is over 100", self.percent));
        }
        if self.allowlist.len() > MAX_ALLOWLIST {
            return Err(format!("at most {MAX_ALLOWLIST} allowlist values"));
        }
        // Cookie values as RFC 6265 allows them, so every entry can match.
        let cookie_octet = |b: u8| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\');
        match self.allowlist.iter().find(|v| v.is_empty() || !v.bytes().all(cookie_octet)) {
            Some(bad) => Err(format!("allowlist value `{bad}` cannot be a cookie value")),
            None => Ok(()),
        }
    }
}

impl HealthCheckOptions {
    /// The check as the model knows it.
    pub fn check(&self) -> HealthCheck {
        HealthCheck {
            path: self.path.clone(),
            interval: Duration::from_millis(self.interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            port: self.port,
            host: self.host.clone(),
            rise: self.rise,
            fall: self.fall,
        }
    }
}

impl DeployOptions {
    pub fn deploy_timeout(&self) -> Duration {
        Duration::from_millis(self.deploy_timeout_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

pub use gatehouse_model::check_service_name as check_name;

/// The route facts of service `name` deployed with `options`; every problem is named with
/// what to write instead.
pub fn service_spec(name: &str, options: &DeployOptions) -> Result<ServiceSpec, String> {
    check_name(name)?;
    let mut spec = ServiceSpec::new(name, crate::SOURCE);
    if options.targets.is_empty() {
        return Err("at least one --target is needed".into());
    }
    if options.hosts.len() > MAX_HOSTS {
        return Err(format!("at most {MAX_HOSTS} hosts"));
    }
    spec.targets = targets(&options.targets, &[])?;
    spec.read_targets = targets(&options.read_targets, &spec.targets)?;
    spec.read_target_websockets = options.read_target_websockets;
    spec.writer_affinity = Duration::from_millis(options.writer_affinity_timeout_ms);
    // No host: the service answers hosts nothing else routes, as in kamal-proxy.
    let hosts: &[String] = if options.hosts.is_empty() { &[String::from("*")] } else { &options.hosts };
    for host in hosts {
        let pattern = HostPattern::parse(host).map_err(|e| e.to_string())?;
        if !spec.hosts.contains(&pattern) {
            spec.hosts.push(pattern);
        }
    }
    if let Some(bad) = options.path_prefixes.iter().find(|p| !p.starts_with('/')) {
        return Err(format!("--path-prefix `{bad}` must start with `/`"));
    }
    if !options.path_prefixes.is_empty() {
        spec.path_prefixes = options.path_prefixes.clone();
    }
    spec.strip_prefix = options.strip_path_prefix;
    let hc = &options.health_check;
    if !hc.path.starts_with('/') {
        return Err(format!("--health-check-path `{}` must start with `/`", hc.path));
    }
    if hc.path.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("--health-check-path must be printable ASCII without spaces".into());
    }
    for (value, flag) in [
        (hc.interval_ms, "--health-check-interval"),
        (hc.timeout_ms, "--health-check-timeout"),
        (options.deploy_timeout_ms, "--deploy-timeout"),
        (options.target_timeout_ms, "--target-timeout"),
    ] {
        if value == 0 {
            return Err(format!("{flag} must be greater than zero"));
        }
    }
    if hc.rise == 0 || hc.fall == 0 {
        return Err("health check rise and fall must be at least 1".into());
    }
    spec.timeouts.response_header = Duration::from_millis(options.target_timeout_ms);
    // A target that refused a connection sits out until its next check says otherwise.
    spec.timeouts.fail = Duration::from_millis(hc.interval_ms);
    spec.health_check = Some(hc.check());
    spec.max_body_size = (options.max_request_body > 0).then_some(options.max_request_body);
    spec.buffering = Buffering {
        requests: options.buffer_requests,
        responses: options.buffer_responses,
        memory: options.buffer_memory,
        max_response_body: (options.max_response_body > 0).then_some(options.max_response_body),
    };
    let certificate = match (&options.tls_certificate_path, &options.tls_private_key_path) {
        (None, None) if options.tls => {
            if options.hosts.is_empty() {
                return Err("--tls without a certificate needs at least one --host to obtain it for".into());
            }
            Some(TlsCertificate::Acme { staging: options.tls_staging })
        }
        (None, None) => None,
        (Some(certificate), Some(key)) => {
            Some(TlsCertificate::Files { certificate: certificate.into(), key: key.into() })
        }
        _ => return Err("--tls-certificate-path and --tls-private-key-path go together".into()),
    };
    let hsts_max_age = (options.hsts_max_age_s > 0).then_some(options.hsts_max_age_s);
    spec.tls = certificate.map(|certificate| ServiceTls { certificate, redirect: options.tls_redirect, hsts_max_age });
    spec.forward_headers = options.forward_headers.unwrap_or(spec.tls.is_none());
    if let Some(canonical) = &options.canonical_host {
        match HostPattern::parse(canonical) {
            Ok(HostPattern::Exact(host)) if spec.hosts.contains(&HostPattern::Exact(host.clone())) => {
                spec.canonical_host = Some(host);
            }
            _ => return Err(format!("--canonical-host `{canonical}` must be one of the service's --host names")),
        }
    }
    if let Some(folder) = &options.error_pages {
        spec.error_pages = error_pages(std::path::Path::new(folder))?;
    }
    spec.log_headers = LogHeaders {
        request: header_names(&options.log_request_headers, "--log-request-header")?,
        response: header_names(&options.log_response_headers, "--log-response-header")?,
    };
    Ok(spec)
}

/// Parses target addresses; none may repeat, within the list or from `taken`.
pub fn targets(list: &[String], taken: &[TargetSpec]) -> Result<Vec<TargetSpec>, String> {
    if list.len() > MAX_TARGETS {
        return Err(format!("at most {MAX_TARGETS} targets"));
    }
    let mut parsed: Vec<TargetSpec> = Vec::with_capacity(list.len());
    for target in list {
        let spec = TargetSpec::parse_url(target, true)?;
        if parsed.contains(&spec) || taken.contains(&spec) {
            return Err(format!("target `{target}` is given twice (a target belongs to one set of the service)"));
        }
        parsed.push(spec);
    }
    Ok(parsed)
}

/// Largest error page read.
const MAX_PAGE: u64 = 1 << 20;

/// `<status>.html` files of `folder` (4xx and 5xx), read once at deploy and at restore.
fn error_pages(folder: &std::path::Path) -> Result<std::collections::BTreeMap<u16, String>, String> {
    let entries = std::fs::read_dir(folder).map_err(|e| format!("--error-pages {}: {e}", folder.display()))?;
    let mut pages = std::collections::BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(status) = name.to_str().and_then(|n| n.strip_suffix(".html")).and_then(|n| n.parse::<u16>().ok())
        else {
            continue;
        };
        if !(400..600).contains(&status) {
            continue;
        }
        let path = entry.path();
        let too_big = entry.metadata().is_ok_and(|m| m.len() > MAX_PAGE);
        if too_big {
            return Err(format!("error page {} is larger than 1 MiB", path.display()));
        }
        let page = std::fs::read_to_string(&path).map_err(|e| format!("error page {}: {e}", path.display()))?;
        pages.insert(status, page);
    }
    if pages.is_empty() {
        return Err(format!("--error-pages {} has no 4xx.html or 5xx.html page", folder.display()));
    }
    Ok(pages)
}

/// Lower-cased header names, checked.
fn header_names(names: &[String], flag: &str) -> Result<Vec<String>, String> {
    names
        .iter()
        .map(|n| {
            http::HeaderName::from_bytes(n.trim().as_bytes())
                .map(|h| h.as_str().to_string())
                .map_err(|_| format!("{flag} `{n}` is not a header name"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(targets: &[&str], hosts: &[&str]) -> DeployOptions {
        DeployOptions {
            targets: targets.iter().map(ToString::to_string).collect(),
            hosts: hosts.iter().map(ToString::to_string).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn rollout_splits_and_target_sets_are_checked() {
        let split = |percent, allowlist: &[&str]| RolloutSplit {
            percent,
            allowlist: allowlist.iter().map(ToString::to_string).collect(),
        };
        assert!(split(100, &["vip", "a-b_c.1"]).check().is_ok());
        assert!(split(101, &[]).check().unwrap_err().contains("over 100"));
        for bad in ["", "a;b", "a b", "\"a\"", "é"] {
            assert!(split(5, &[bad]).check().is_err(), "{bad:?}");
        }
        let mut readers = options(&["w:1"], &[]);
        readers.read_targets = vec!["r:1".into(), "r:2".into()];
        let spec = service_spec("s", &readers).unwrap();
        assert_eq!(spec.read_targets.len(), 2);
        readers.read_targets.push("w:1".into());
        assert!(service_spec("s", &readers).unwrap_err().contains("given twice"), "a writer cannot also read");
    }

    #[test]
    fn kamal_defaults() {
        let o: DeployOptions = serde_json::from_str(r#"{"targets":["a:1"],"hosts":["x.test"]}"#).unwrap();
        assert_eq!(o.health_check.path, "/up");
        assert_eq!((o.health_check.interval_ms, o.health_check.timeout_ms), (1000, 5000));
        assert_eq!((o.deploy_timeout_ms, o.drain_timeout_ms, o.target_timeout_ms), (30_000, 30_000, 30_000));
        assert!(o.strip_path_prefix);
        let spec = service_spec("web", &o).unwrap();
        assert_eq!(spec.source, "deploy");
        assert_eq!(spec.targets[0].url(), "http://a:1");
        assert_eq!(spec.timeouts.response_header, Duration::from_secs(30));
        assert!(serde_json::from_str::<DeployOptions>(r#"{"targetz":[]}"#).is_err(), "unknown keys are refused");
    }

    #[test]
    fn bad_options_say_what_to_fix() {
        let err = |o: DeployOptions| service_spec("web", &o).unwrap_err();
        assert!(err(options(&[], &["x.test"])).contains("--target"));
        assert_eq!(service_spec("web", &options(&["a:1"], &[])).unwrap().hosts, [HostPattern::Any], "no host: `*`");
        assert!(err(options(&["a:1", "http://a:1"], &["x.test"])).contains("twice"));
        assert!(err(options(&["unix:s.sock"], &["x.test"])).contains("absolute path"));
        assert!(err(options(&["a:1"], &["bad host"])).contains("bad host"));
        let mut o = options(&["a:1"], &["x.test"]);
        o.path_prefixes = vec!["api".into()];
        assert!(err(o.clone()).contains("must start with `/`"));
        o.path_prefixes = vec!["/api".into()];
        o.health_check.interval_ms = 0;
        assert!(err(o).contains("--health-check-interval"));
        assert!(service_spec("a b", &options(&["a:1"], &["x.test"])).unwrap_err().contains("letters"));
        let mut o = options(&["a:1"], &["x.test"]);
        o.tls = true;
        let spec = service_spec("web", &o).unwrap();
        assert!(
            spec.tls.is_some_and(|t| t.certificate == TlsCertificate::Acme { staging: false }),
            "--tls alone: ACME"
        );
        o.tls_staging = true;
        let spec = service_spec("web", &o).unwrap();
        assert!(spec.tls.is_some_and(|t| t.certificate == TlsCertificate::Acme { staging: true }), "--tls-staging");
        o.tls_staging = false;
        o.hosts.clear();
        assert!(err(o.clone()).contains("--host"), "ACME needs names");
        o.hosts = vec!["x.test".into()];
        o.tls_certificate_path = Some("/c.pem".into());
        assert!(err(o.clone()).contains("go together"));
        o.tls_private_key_path = Some("/c.key".into());
        let spec = service_spec("web", &o).unwrap();
        assert!(spec.tls.is_some_and(|t| t.redirect) && !spec.forward_headers, "kamal-proxy's TLS defaults");
    }
}
