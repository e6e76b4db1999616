//! File types -> validated [`Config`], collecting every problem with its position.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use std::time::Duration;

use gatehouse_model::acme::{self, AcmeSettings, ChallengeKind, ExternalAccount, OnDemandSettings};
use gatehouse_model::{
    BalancePolicy, BuildError, Cidr, EdgeLimits, ForwardingPolicy, HealthCheck, HostPattern, RouteTable, ServiceSpec,
    ServiceTls, TargetSpec, TlsCertificate,
};
use toml::de::{DeTable, Deserializer};
use toml::Spanned;

use crate::deferred::DEFERRED_KEYS;
use crate::diagnostic::{ConfigError, Diagnostic};
use crate::drove::Environment;
use crate::file::{
    FileAcme, FileBalance, FileConfig, FileHealthCheck, FileLimits, FileListener, FileService, FileTarget,
    NumberOrText, OneOrMany,
};
use crate::units::{parse_duration, parse_size};
use crate::{AdminSettings, CertificatePaths, Config, ListenerSpec, ProxyPlatform, Secret};

const DEFAULT_ADMIN_PORT: u16 = 6000;
const MAX_WEIGHT: i64 = 1000;
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

pub(crate) struct Checker<'a> {
    origin: &'a Path,
    text: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Checker<'_> {
    pub(crate) fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.errors.push(Diagnostic::at(self.origin, self.text, span, message));
    }

    pub(crate) fn warn(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.warnings.push(Diagnostic::at(self.origin, self.text, span, message));
    }

    /// Paths in the file are relative to the file's folder.
    pub(crate) fn resolve(&self, path: &str) -> PathBuf {
        let dir = self.origin.parent().unwrap_or(Path::new(""));
        dir.join(path)
    }
}

pub(crate) fn parse(text: &str, origin: &Path, env: &Environment) -> Result<Config, ConfigError> {
    let mut c = Checker { origin, text, errors: Vec::new(), warnings: Vec::new() };
    let mut root = DeTable::parse(text).map_err(|e| invalid(&c, e.span(), e.message()))?;
    for (key, owner) in DEFERRED_KEYS {
        if let Some((k, _)) = root.get_mut().remove_entry(*key) {
            c.warn(Some(k.span()), format!("`{key}` belongs to {owner}, which this build does not have yet; ignored"));
        }
    }
    let file: FileConfig =
        serde::Deserialize::deserialize(Deserializer::from(root)).map_err(|e| invalid(&c, e.span(), e.message()))?;
    let config = convert(&mut c, file, env);
    if c.errors.is_empty() {
        let mut config = config;
        config.warnings = c.warnings;
        Ok(config)
    } else {
        Err(ConfigError::Invalid(c.errors))
    }
}

fn invalid(c: &Checker<'_>, span: Option<Range<usize>>, message: &str) -> ConfigError {
    ConfigError::Invalid(vec![Diagnostic::at(c.origin, c.text, span, message.trim_end())])
}

fn convert(c: &mut Checker<'_>, file: FileConfig, env: &Environment) -> Config {
    let drove = crate::drove::convert(c, &file, env);
    let admin_ip = match &file.address {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(a) => match a.get_ref().trim() {
            "" => {
                c.warn(Some(a.span()), "empty `address`: the admin API listens on all interfaces");
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            text => text.parse().unwrap_or_else(|_| {
                c.error(Some(a.span()), format!("`address` must be an IP address, not `{text}`"));
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            }),
        },
    };
    let admin_port = match &file.port {
        None => DEFAULT_ADMIN_PORT,
        Some(p) => port_number(p.get_ref()).unwrap_or_else(|| {
            c.error(Some(p.span()), "`port` must be a port number from 1 to 65535");
            DEFAULT_ADMIN_PORT
        }),
    };
    let log_level = match &file.loglevel {
        None => "info".to_string(),
        Some(l) if LOG_LEVELS.contains(&l.get_ref().to_ascii_lowercase().as_str()) => l.get_ref().to_ascii_lowercase(),
        Some(l) => {
            c.warn(
                Some(l.span()),
                format!("unknown `loglevel` `{}`; using info (one of {})", l.get_ref(), LOG_LEVELS.join(", ")),
            );
            "info".to_string()
        }
    };
    let proxy_platform = match &file.proxy_platform {
        None => crate::templated::implied_platform(&file),
        Some(p) => match p.get_ref().as_str() {
            "native" => ProxyPlatform::Native,
            "nginx" => ProxyPlatform::Nginx,
            "haproxy" => ProxyPlatform::Haproxy,
            other => {
                c.error(
                    Some(p.span()),
                    format!("unknown `proxy_platform` `{other}`; expected \"native\", \"nginx\" or \"haproxy\""),
                );
                ProxyPlatform::Native
            }
        },
    };
    let workers = file.workers.as_ref().and_then(|w| match usize::try_from(*w.get_ref()) {
        Ok(n @ 1..=1024) => Some(n),
        _ => {
            c.error(Some(w.span()), "`workers` must be from 1 to 1024");
            None
        }
    });
    let limits = file.limits.as_ref().map_or_else(EdgeLimits::default, |l| limits(c, l));
    let mut forwarding = ForwardingPolicy {
        trusted_proxies: Vec::new(),
        write_forwarded: file.forwarded_header,
        underscores_in_headers: file.underscores_in_headers,
    };
    for block in &file.trusted_proxies {
        match Cidr::parse(block.get_ref()) {
            Ok(cidr) => forwarding.trusted_proxies.push(cidr),
            Err(e) => c.error(Some(block.span()), format!("`trusted_proxies`: {e}")),
        }
    }
    let templated = crate::templated::convert(c, &file, proxy_platform);
    let token = file.admin_token.filter(|t| !t.is_empty()).map(Secret::new);
    let admin_tls = match &file.port_use_tls {
        Some(flag) if *flag.get_ref() => {
            let path = |c: &mut Checker<'_>, key: &str, value: &Option<Spanned<String>>| match value {
                Some(v) if !v.get_ref().trim().is_empty() => Some(c.resolve(v.get_ref().trim())),
                _ => {
                    c.error(Some(flag.span()), format!("`port_use_tls` needs `{key}`"));
                    None
                }
            };
            let cert = path(c, "port_tls_certfile", &file.port_tls_certfile);
            let key = path(c, "port_tls_keyfile", &file.port_tls_keyfile);
            cert.zip(key).map(|(cert, key)| CertificatePaths { cert, key })
        }
        _ => None,
    };
    let admin_socket = match &file.admin_socket {
        None => Some(crate::default_admin_socket()),
        Some(p) if p.get_ref().trim().is_empty() => None,
        Some(p) => Some(c.resolve(p.get_ref().trim())),
    };
    let deploy_state = match &file.deploy_state {
        Some(p) if !p.get_ref().trim().is_empty() => c.resolve(p.get_ref().trim()),
        Some(p) => {
            c.error(Some(p.span()), "`deploy_state` must name a file");
            crate::default_deploy_state()
        }
        None => crate::default_deploy_state(),
    };
    let access_log = match file.access_log.as_ref().map(|v| v.get_ref().trim()) {
        None | Some("off" | "") => None,
        Some("stdout") => Some(crate::AccessLogDestination::Stdout),
        Some(path) => Some(crate::AccessLogDestination::File(c.resolve(path))),
    };
    let listeners = listeners(c, file.listeners);
    let services = services(c, file.services);
    let acme_storage = deploy_state.parent().unwrap_or(Path::new(".")).join("acme");
    let acme = acme(c, file.acme.as_ref(), acme_storage);
    if let Some(s) = services.iter().find(|s| s.tls.is_some()) {
        if !listeners.iter().any(|l| l.tls) {
            c.error(
                None,
                format!(
                    "service `{}` has `tls = \"auto\"` but no [[listeners]] speaks HTTPS: add one with `tls = true`",
                    s.name
                ),
            );
        }
        if acme.challenge == ChallengeKind::Http01 && !listeners.iter().any(|l| !l.tls) {
            c.warn(None, "ACME's http-01 challenge is answered on plain-HTTP listeners (port 80), and there is none: add one, or set [acme] challenge = \"tls-alpn-01\"");
        }
    }
    if templated.is_some() && !listeners.is_empty() {
        c.warn(
            None,
            "[[listeners]] belong to the native proxy; with nginx or HAProxy the template decides what listens",
        );
    }
    if templated.is_some() {
        let unix = services.iter().find(|s| s.all_targets().any(|t| t.scheme == gatehouse_model::Scheme::Unix));
        if let Some(s) = unix {
            c.error(
                None,
                format!("service `{}`: unix: targets need Gatehouse's own proxy, not nginx or HAProxy", s.name),
            );
        }
    }
    if templated.is_none() && !services.is_empty() && listeners.is_empty() {
        c.warn(None, "services are defined but no [[listeners]]: nothing will accept their traffic");
    }
    Config {
        origin: c.origin.to_path_buf(),
        admin: AdminSettings {
            address: SocketAddr::new(admin_ip, admin_port),
            token,
            tls: admin_tls,
            socket: admin_socket,
        },
        log_level,
        xproxy: file.xproxy.filter(|x| !x.is_empty()),
        proxy_platform,
        templated,
        workers,
        limits,
        forwarding,
        listeners,
        services,
        drove,
        deploy_state,
        acme,
        access_log,
        warnings: Vec::new(),
    }
}

/// `[acme]` with its defaults: Let's Encrypt production, HTTP-01, kept beside the deploy state.
fn acme(c: &mut Checker<'_>, file: Option<&FileAcme>, storage: PathBuf) -> AcmeSettings {
    let mut settings = AcmeSettings::new(storage);
    let Some(file) = file else { return settings };
    if let Some(d) = &file.directory {
        settings.directory = match d.get_ref().trim() {
            "letsencrypt" => acme::LETS_ENCRYPT.to_string(),
            "letsencrypt-staging" => acme::LETS_ENCRYPT_STAGING.to_string(),
            url if url.starts_with("https://") => url.to_string(),
            other => {
                c.error(
                    Some(d.span()),
                    format!(
                        "[acme] `directory` `{other}`: an https:// URL, \"letsencrypt\" or \"letsencrypt-staging\""
                    ),
                );
                settings.directory
            }
        };
    }
    if let Some(email) = &file.email {
        let list = match email.get_ref() {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        };
        for address in list {
            let address = address.trim().trim_start_matches("mailto:").to_string();
            if address.contains('@') && !address.contains(char::is_whitespace) {
                settings.contact.push(format!("mailto:{address}"));
            } else {
                c.error(Some(email.span()), format!("[acme] `email` `{address}` is not an e-mail address"));
            }
        }
    }
    match (&file.eab_kid, &file.eab_mac_key) {
        (None, None) => {}
        (Some(kid), Some(mac)) if !kid.get_ref().is_empty() && !mac.get_ref().is_empty() => {
            settings.external_account =
                Some(ExternalAccount { key_id: kid.get_ref().clone(), mac_key: mac.get_ref().trim().to_string() });
        }
        (Some(one), _) | (_, Some(one)) => {
            let span = one.span();
            c.error(Some(span), "[acme] `eab_kid` and `eab_mac_key` go together, neither empty");
        }
    }
    if let Some(root) = &file.ca_root {
        settings.ca_root = existing_file(c, root, "[acme] `ca_root`");
    }
    if let Some(kind) = &file.challenge {
        match ChallengeKind::parse(kind.get_ref().trim()) {
            Some(kind) => settings.challenge = kind,
            None => c.error(
                Some(kind.span()),
                format!("[acme] `challenge` `{}`: \"http-01\", \"tls-alpn-01\" or \"dns-01\"", kind.get_ref()),
            ),
        }
    }
    if let Some(hook) = &file.dns_hook {
        settings.dns_hook = existing_file(c, hook, "[acme] `dns_hook`");
    }
    if let Some(resolver) = &file.dns_resolver {
        match resolver.get_ref().trim().parse() {
            Ok(addr) => settings.dns_resolver = Some(addr),
            Err(_) => c.error(Some(resolver.span()), "[acme] `dns_resolver` is an IP:PORT, as \"10.0.0.2:53\""),
        }
    }
    if settings.challenge == ChallengeKind::Dns01 && file.dns_hook.is_none() {
        let span = file.challenge.as_ref().map(|k| k.span());
        c.error(
            span,
            "[acme] challenge = \"dns-01\" needs `dns_hook`, a command run as `HOOK present|cleanup NAME VALUE`",
        );
    }
    if let Some(storage) = &file.storage {
        settings.storage = c.resolve(storage.get_ref().trim());
    }
    match (&file.on_demand_ask, &file.on_demand_per_minute) {
        (Some(ask), rate) => {
            let per_minute = match rate.as_ref().map(|r| (u32::try_from(*r.get_ref()), r.span())) {
                None => 10,
                Some((Ok(n @ 1..=10_000), _)) => n,
                Some((_, span)) => {
                    c.error(Some(span), "[acme] `on_demand_per_minute` must be from 1 to 10000");
                    10
                }
            };
            let on_demand = OnDemandSettings { ask: ask.get_ref().trim().to_string(), per_minute };
            match on_demand.ask_target() {
                Ok(_) => settings.on_demand = Some(on_demand),
                Err(e) => c.error(Some(ask.span()), format!("[acme] `on_demand_ask`: {e}")),
            }
        }
        (None, Some(rate)) => c.error(Some(rate.span()), "[acme] `on_demand_per_minute` needs `on_demand_ask`"),
        (None, None) => {}
    }
    settings
}

/// `[limits]`: timeouts above zero, caps from 0 (no limit) up.
fn limits(c: &mut Checker<'_>, file: &FileLimits) -> EdgeLimits {
    let mut limits = EdgeLimits::default();
    for (value, slot, key) in [
        (&file.head_timeout, &mut limits.head_timeout, "head_timeout"),
        (&file.keepalive_timeout, &mut limits.keepalive_timeout, "keepalive_timeout"),
        (&file.body_timeout, &mut limits.body_timeout, "body_timeout"),
        (&file.send_timeout, &mut limits.send_timeout, "send_timeout"),
        (&file.tunnel_idle_timeout, &mut limits.tunnel_idle_timeout, "tunnel_idle_timeout"),
        (&file.http2_ping_interval, &mut limits.http2_ping_interval, "http2_ping_interval"),
    ] {
        *slot = positive_seconds(c, value, key, *slot);
    }
    for (value, slot, key) in [
        (&file.max_connections, &mut limits.max_connections, "max_connections"),
        (&file.max_connections_per_client, &mut limits.max_connections_per_client, "max_connections_per_client"),
        (&file.max_requests, &mut limits.max_requests, "max_requests"),
        (&file.max_requests_per_client, &mut limits.max_requests_per_client, "max_requests_per_client"),
    ] {
        if let Some(v) = value {
            match u32::try_from(*v.get_ref()) {
                Ok(n) => *slot = n,
                Err(_) => c.error(Some(v.span()), format!("`{key}` must be from 0 (no limit) to {}", u32::MAX)),
            }
        }
    }
    limits
}

fn port_number(value: &NumberOrText) -> Option<u16> {
    let n = match value {
        NumberOrText::Number(n) if n.fract() == 0.0 => *n as i64,
        NumberOrText::Number(_) => return None,
        NumberOrText::Text(t) => t.trim().parse().ok()?,
    };
    u16::try_from(n).ok()
}

fn listeners(c: &mut Checker<'_>, file: Vec<FileListener>) -> Vec<ListenerSpec> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for l in file {
        let Ok(address) = l.address.get_ref().parse::<SocketAddr>() else {
            c.error(
                Some(l.address.span()),
                format!("listener address `{}` must be IP:PORT, e.g. \"127.0.0.1:8080\"", l.address.get_ref()),
            );
            continue;
        };
        if address.port() != 0 && !seen.insert(address) {
            c.error(Some(l.address.span()), format!("listener address `{address}` is listed twice"));
        }
        let mut tls_certificates = Vec::new();
        for pair in l.tls_certificates {
            let cert = existing_file(c, &pair.cert, "certificate");
            let key = existing_file(c, &pair.key, "key");
            if let (Some(cert), Some(key)) = (cert, key) {
                tls_certificates.push(CertificatePaths { cert, key });
            }
        }
        let tls = match &l.tls {
            Some(flag) if !*flag.get_ref() && !tls_certificates.is_empty() => {
                c.error(Some(flag.span()), "`tls = false` with `tls_certificates`: remove one of them");
                false
            }
            Some(flag) => *flag.get_ref(),
            None => !tls_certificates.is_empty(),
        };
        out.push(ListenerSpec { address, tls, tls_certificates });
    }
    out
}

fn existing_file(c: &mut Checker<'_>, path: &Spanned<String>, what: &str) -> Option<PathBuf> {
    let resolved = c.resolve(path.get_ref());
    if resolved.is_file() {
        Some(resolved)
    } else {
        c.error(Some(path.span()), format!("{what} file `{}` does not exist", resolved.display()));
        None
    }
}

fn services(c: &mut Checker<'_>, file: Vec<FileService>) -> Vec<ServiceSpec> {
    let mut specs = Vec::new();
    let mut name_spans = Vec::new();
    for s in file {
        let name = s.name.get_ref().trim().to_string();
        if let Err(e) = gatehouse_model::check_service_name(&name) {
            c.error(Some(s.name.span()), e);
        }
        let mut spec = ServiceSpec::new(name, "file");
        if s.hosts.get_ref().is_empty() {
            c.error(Some(s.hosts.span()), "`hosts` must list at least one host");
        }
        for host in s.hosts.get_ref() {
            match HostPattern::parse(host.get_ref()) {
                Ok(h) => spec.hosts.push(h),
                Err(e) => c.error(Some(host.span()), e.to_string()),
            }
        }
        if let Some(prefix) = &s.path_prefix {
            if !prefix.get_ref().starts_with('/') {
                c.error(Some(prefix.span()), format!("`path_prefix` `{}` must start with `/`", prefix.get_ref()));
            }
            spec.path_prefixes = vec![prefix.get_ref().clone()];
        }
        spec.strip_prefix = s.strip_prefix;
        for target in s.targets.get_ref() {
            match target_spec(target.get_ref()) {
                Ok(t) => spec.targets.push(t),
                Err(e) => c.error(Some(target.span()), e),
            }
        }
        spec.balance = match s.balance {
            None | Some(FileBalance::RoundRobin) => BalancePolicy::RoundRobin,
            Some(FileBalance::LeastRequests) => BalancePolicy::LeastRequests,
            Some(FileBalance::IpHash) => BalancePolicy::IpHash,
        };
        for (value, slot, zero_ok) in [
            (&s.connect_timeout, &mut spec.timeouts.connect, false),
            (&s.response_header_timeout, &mut spec.timeouts.response_header, false),
            (&s.idle_timeout, &mut spec.timeouts.idle, false),
            (&s.fail_timeout, &mut spec.timeouts.fail, true),
        ] {
            if let Some(v) = value {
                match duration(v.get_ref()) {
                    Ok(d) if zero_ok || !d.is_zero() => *slot = d,
                    Ok(_) => c.error(Some(v.span()), "a timeout must be greater than zero"),
                    Err(e) => c.error(Some(v.span()), e),
                }
            }
        }
        if let Some(v) = &s.max_body_size {
            match size(v.get_ref()) {
                Ok(n) => spec.max_body_size = Some(n),
                Err(e) => c.error(Some(v.span()), e),
            }
        }
        spec.upstream_http2 = s.http2;
        spec.tls_verify = s.tls_verify.unwrap_or(true);
        if let Some(r) = &s.retries {
            match u32::try_from(*r.get_ref()) {
                Ok(n @ 0..=10) => spec.retries = n,
                _ => c.error(Some(r.span()), "`retries` must be from 0 to 10"),
            }
        }
        if let Some(h) = &s.health_check {
            spec.health_check = Some(health_check(c, h));
        }
        if let Some(tls) = &s.tls {
            if tls.get_ref() == "auto" {
                let redirect = s.tls_redirect.unwrap_or(true);
                let hsts_max_age = s.hsts_max_age.as_ref().map(|v| match duration(v.get_ref()) {
                    Ok(d) if !d.is_zero() => d.as_secs(),
                    _ => {
                        c.error(Some(v.span()), "`hsts_max_age` must be a positive duration, as \"365d\"");
                        0
                    }
                });
                let certificate = TlsCertificate::Acme { staging: false };
                spec.tls = Some(ServiceTls { certificate, redirect, hsts_max_age });
            } else {
                c.error(Some(tls.span()), format!("`tls` `{}`: only \"auto\" (a certificate from ACME) is supported here; give files on [[listeners]] `tls_certificates`", tls.get_ref()));
            }
        }
        name_spans.push((spec.name.clone(), s.name.span()));
        specs.push(spec);
    }
    // The model owns the rules for conflicts between services; point at the second one.
    if c.errors.is_empty() {
        let shared = specs.iter().cloned().map(std::sync::Arc::new).collect();
        if let Err(e) = RouteTable::<()>::build(0, shared, None, |_| ()) {
            let culprit = match &e {
                BuildError::DuplicateService(name) => name,
                BuildError::DuplicateRoute { second, .. } => second,
                BuildError::BadPrefix { service, .. } => service,
            };
            let span = name_spans.iter().rev().find(|(n, _)| n == culprit).map(|(_, s)| s.clone());
            c.error(span, e.to_string());
        }
    }
    specs
}

/// `[services.health_check]` with HAProxy's defaults (every 2 s, 2 passes in, 3 failures out).
fn health_check(c: &mut Checker<'_>, h: &FileHealthCheck) -> HealthCheck {
    let interval = positive_seconds(c, &h.interval, "interval", Duration::from_secs(2));
    let mut check = HealthCheck {
        path: "/up".into(),
        interval,
        timeout: positive_seconds(c, &h.timeout, "timeout", interval),
        port: None,
        host: h.host.clone(),
        rise: 2,
        fall: 3,
    };
    if let Some(path) = &h.path {
        if path.get_ref().starts_with('/') {
            check.path = path.get_ref().clone();
        } else {
            c.error(Some(path.span()), "the health check `path` must start with `/`");
        }
    }
    if let Some(port) = &h.port {
        match u16::try_from(*port.get_ref()) {
            Ok(p) if p > 0 => check.port = Some(p),
            _ => c.error(Some(port.span()), "`port` must be a port number from 1 to 65535"),
        }
    }
    for (value, slot, key) in [(&h.rise, &mut check.rise, "rise"), (&h.fall, &mut check.fall, "fall")] {
        if let Some(v) = value {
            match u32::try_from(*v.get_ref()) {
                Ok(n @ 1..=100) => *slot = n,
                _ => c.error(Some(v.span()), format!("`{key}` must be from 1 to 100")),
            }
        }
    }
    check
}

/// A duration key that must be above zero (`default` when absent; an error when bad).
pub(crate) fn positive_seconds(
    c: &mut Checker<'_>,
    value: &Option<Spanned<NumberOrText>>,
    key: &str,
    default: std::time::Duration,
) -> std::time::Duration {
    let Some(v) = value else { return default };
    match duration(v.get_ref()) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            c.error(Some(v.span()), format!("`{key}` must be a positive number of seconds"));
            default
        }
    }
}

fn duration(value: &NumberOrText) -> Result<std::time::Duration, String> {
    match value {
        NumberOrText::Number(n) => {
            std::time::Duration::try_from_secs_f64(*n).map_err(|_| format!("duration {n} is out of range"))
        }
        NumberOrText::Text(t) => parse_duration(t),
    }
}

fn size(value: &NumberOrText) -> Result<u64, String> {
    match value {
        NumberOrText::Number(n) if *n >= 0.0 && n.fract() == 0.0 => Ok(*n as u64),
        NumberOrText::Number(n) => Err(format!("size {n} must be a whole number of bytes")),
        NumberOrText::Text(t) => parse_size(t),
    }
}

fn target_spec(target: &FileTarget) -> Result<TargetSpec, String> {
    let (url, weight) = match target {
        FileTarget::Url(url) => (url.as_str(), 1),
        FileTarget::Table(t) => (t.url.as_str(), t.weight.unwrap_or(1)),
    };
    if !(1..=MAX_WEIGHT).contains(&weight) {
        return Err(format!("target weight must be from 1 to {MAX_WEIGHT}"));
    }
    let mut target = TargetSpec::parse_url(url, false)?;
    target.weight = weight as u32;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_model::Scheme;

    fn no_env() -> Environment {
        Environment { controllers: None, username: None, password: None, cluster_name: None, leader_vhost: None }
    }

    fn check(text: &str) -> Result<Config, String> {
        parse(text, Path::new("g.toml"), &no_env()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file_loads() {
        let cfg = check(
            r#"
address = "127.0.0.1"
port = "6100"
loglevel = "debug"
xproxy = "edge-1"
admin_token = "s3cret"
workers = 2

trusted_proxies = ["10.0.0.0/8", "::1"]
forwarded_header = true

[limits]
head_timeout = "5s"
max_connections_per_client = 0

[[listeners]]
address = "127.0.0.1:8080"

[[services]]
name = "web"
hosts = ["Example.com", "*.example.com"]
path_prefix = "/api"
strip_prefix = true
targets = ["http://127.0.0.1:9000", { url = "https://[::1]:9443", weight = 3 }]
balance = "least_requests"
connect_timeout = "250ms"
response_header_timeout = 30
fail_timeout = "0s"
max_body_size = "1MiB"
retries = 1
"#,
        )
        .unwrap();
        assert_eq!(cfg.admin.address, "127.0.0.1:6100".parse().unwrap());
        assert_eq!(cfg.workers, Some(2));
        assert_eq!((cfg.limits.head_timeout.as_secs(), cfg.limits.max_connections_per_client), (5, 0));
        assert_eq!(cfg.limits.body_timeout, EdgeLimits::default().body_timeout, "unset keys keep their defaults");
        assert!(cfg.forwarding.trusts("10.1.1.1".parse().unwrap()) && cfg.forwarding.trusts("::1".parse().unwrap()));
        assert!(cfg.forwarding.write_forwarded && !cfg.forwarding.underscores_in_headers);
        let s = &cfg.services[0];
        assert_eq!(s.hosts[1].to_string(), "*.example.com");
        assert_eq!(s.targets[1].host, "::1");
        assert_eq!(s.targets[1].weight, 3);
        assert_eq!(s.targets[1].scheme, Scheme::Https);
        assert_eq!(s.timeouts.connect.as_millis(), 250);
        assert!(s.timeouts.fail.is_zero(), "fail_timeout = 0 keeps failed targets in");
        assert_eq!(s.max_body_size, Some(1 << 20));
        assert_eq!(s.balance, BalancePolicy::LeastRequests);
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(!json.contains("s3cret") && !format!("{cfg:?}").contains("s3cret"), "secrets never shown");
    }

    #[test]
    fn defaults_are_safe() {
        let cfg = check("").unwrap();
        assert_eq!(cfg.admin.address, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(cfg.log_level, "info");
        assert!(cfg.admin.token.is_none());
    }

    #[test]
    fn unknown_keys_are_errors_with_positions() {
        let err = check("port = \"6000\"\nlisten = 1\n").unwrap_err();
        assert!(err.starts_with("g.toml:2:1: unknown field `listen`"), "{err}");
        let err = check("[[services]]\nname = \"a\"\nhosts = [\"a\"]\ntargets = []\nbogus = 1\n").unwrap_err();
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn drove_gateway_keys_are_accepted_with_warnings() {
        let cfg = check("haproxy_disable_large_backend_count_optimisation = true\ndisk_io_timeout_sec = 2\n").unwrap();
        let w: Vec<_> = cfg.warnings.iter().map(ToString::to_string).collect();
        assert!(
            w.iter().any(|w| w.starts_with(
                "g.toml:1:1: `haproxy_disable_large_backend_count_optimisation` belongs to drove-gateway's per-backend"
            )),
            "{w:?}"
        );
        assert!(w.iter().any(|w| w.contains("`disk_io_timeout_sec` belongs to drove-gateway's blocking")), "{w:?}");
    }

    #[test]
    fn namespaces_load_as_drove_gateway_writes_them() {
        let cfg = check(
            r#"
event_refresh_interval_sec = 0.5
api_timeout = 3
state_path = "state/drove.json"
[[namespaces]]
name = "stage1"
drove = ["http://ctrl1:4000", "https://ctrl2"]
user = "guest"
pass = "guest"
realm = "A.example, b.example"
realm_suffix = ".Apps.example"
routing_tag = "env"
leader_vhost = "drove.stage1"
event_refresh_interval_sec = 5
[[namespaces]]
name = "stage2"
drove = ["http://ctrl3:4000"]
access_token = "O-Bearer T"
"#,
        )
        .unwrap();
        let d = &cfg.drove;
        assert_eq!(d.poll_interval, std::time::Duration::from_millis(500));
        assert_eq!(d.api_timeout, std::time::Duration::from_secs(3));
        assert_eq!(d.state_path.as_deref(), Some(Path::new("state/drove.json")));
        let s1 = &d.namespaces[0];
        assert_eq!(s1.controllers[1].to_string(), "https://ctrl2:443");
        assert_eq!(s1.realms, ["a.example", "b.example"]);
        assert_eq!(s1.realm_suffix.as_deref(), Some(".apps.example"));
        assert!(matches!(&s1.credentials, crate::Credentials::Basic { user, .. } if user == "guest"));
        assert!(matches!(&d.namespaces[1].credentials, crate::Credentials::Header(t) if t.expose() == "O-Bearer T"));
        let w: Vec<_> = cfg.warnings.iter().map(ToString::to_string).collect();
        assert!(
            w.iter().any(|w| w.starts_with("g.toml:14:30: `event_refresh_interval_sec` inside [[namespaces]]")),
            "{w:?}"
        );
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(!json.contains("O-Bearer") && !json.contains("\"guest\"}"), "secrets redacted: {json}");
    }

    #[test]
    fn bad_namespaces_are_reported() {
        let err = check(
            "[[namespaces]]\nname = \"a\"\ndrove = [\"ctrl:4000\"]\nuser = \"u\"\naccess_token = \"t\"\n[[namespaces]]\nname = \"a\"\ndrove = [\"http://c:1\"]\n",
        )
        .unwrap_err();
        assert!(err.contains("g.toml:3:10: controller URL `ctrl:4000` must start with http://"), "{err}");
        assert!(err.contains("g.toml:5:16: set either `user`/`pass` or `access_token`, not both"), "{err}");
        assert!(err.contains("g.toml:7:8: namespace `a` is defined twice"), "{err}");
    }

    #[test]
    fn container_variables_define_a_namespace_when_the_file_has_none() {
        let env = Environment {
            controllers: Some("http://c1:4000, http://c2:4000".into()),
            username: Some("guest".into()),
            password: Some("pw".into()),
            cluster_name: Some("prod".into()),
            leader_vhost: Some("Drove.Prod".into()),
        };
        let cfg = parse("", Path::new("g.toml"), &env).unwrap();
        let ns = &cfg.drove.namespaces[0];
        assert_eq!(ns.name, "prod");
        assert_eq!(ns.controllers.len(), 2);
        assert_eq!(ns.leader_vhost.as_deref(), Some("drove.prod"));
        let file = "[[namespaces]]\nname = \"x\"\ndrove = [\"http://c:1\"]\n";
        let cfg = parse(file, Path::new("g.toml"), &env).unwrap();
        assert_eq!(cfg.drove.namespaces.len(), 1, "the file's namespaces win");
        assert_eq!(cfg.drove.namespaces[0].name, "x");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = check("port = \n").unwrap_err();
        assert!(err.starts_with("g.toml:1:"), "{err}");
    }

    #[test]
    fn bad_trusted_proxies_are_reported_at_their_place() {
        let err = check("trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/40\"]\n").unwrap_err();
        assert!(err.contains("g.toml:1:34: `trusted_proxies`: `10.0.0.0/40` is not an address block"), "{err}");
    }

    #[test]
    fn bad_limits_are_reported_at_their_place() {
        let err = check("[limits]\nhead_timeout = \"0s\"\nmax_requests = -1\nmax_conns = 3\n").unwrap_err();
        assert!(err.contains("g.toml:4:1: unknown field `max_conns`"), "{err}");
        let err = check("[limits]\nhead_timeout = \"0s\"\nmax_requests = -1\n").unwrap_err();
        assert!(err.contains("g.toml:2:16: `head_timeout` must be a positive number of seconds"), "{err}");
        assert!(err.contains("g.toml:3:16: `max_requests` must be from 0 (no limit)"), "{err}");
    }

    #[test]
    fn every_bad_value_is_reported() {
        let err = check(
            r#"address = "not-an-ip"
[[listeners]]
address = "8080"
[[services]]
name = "a"
hosts = ["a..b"]
targets = ["ftp://x", "http://h/path", { url = "http://h", weight = 0 }]
connect_timeout = "5 fortnights"
[services.health_check]
path = "up"
rise = 0
"#,
        )
        .unwrap_err();
        let lines: Vec<_> = err.lines().collect();
        assert!(lines[0].starts_with("g.toml:1:11: `address` must be an IP"), "{err}");
        assert!(lines[1].starts_with("g.toml:3:11: listener address"), "{err}");
        assert!(err.contains("g.toml:6:10: host `a..b` has an empty label"), "{err}");
        assert!(err.contains("g.toml:7:12: target `ftp://x` must start with"), "{err}");
        assert!(err.contains("must not have a path"), "{err}");
        assert!(err.contains("weight must be from 1"), "{err}");
        assert!(err.contains("g.toml:8:19: unknown duration unit"), "{err}");
        assert!(err.contains("g.toml:10:8: the health check `path` must start with `/`"), "{err}");
        assert!(err.contains("g.toml:11:8: `rise` must be from 1 to 100"), "{err}");
        let err =
            check("[[services]]\nname = \"my shop\"\nhosts = [\"a.test\"]\ntargets = [\"http://h:1\"]\n").unwrap_err();
        assert!(err.contains("g.toml:2:8: service name `my shop` may only have letters"), "{err}");
    }

    #[test]
    fn health_checks_take_haproxys_defaults() {
        let cfg = check(
            "[[services]]\nname = \"a\"\nhosts = [\"a.test\"]\ntargets = [\"http://h:1\"]\n[services.health_check]\npath = \"/healthz\"\nfall = 5\n",
        )
        .unwrap();
        let check = cfg.services[0].health_check.clone().unwrap();
        assert_eq!((check.path.as_str(), check.rise, check.fall), ("/healthz", 2, 5));
        assert_eq!((check.interval, check.timeout), (Duration::from_secs(2), Duration::from_secs(2)));
    }

    #[test]
    fn conflicts_point_at_the_second_service() {
        let err = check(
            "[[services]]\nname = \"a\"\nhosts = [\"x.test\"]\ntargets = []\n[[services]]\nname = \"b\"\nhosts = [\"X.test\"]\ntargets = []\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("g.toml:6:8: host `x.test` with path prefix `/` is claimed by both `a` and `b`"),
            "{err}"
        );
    }

    #[test]
    fn acme_defaults_to_lets_encrypt_production_beside_the_deploy_state() {
        let cfg = check("deploy_state = \"/var/lib/gh/deploys.json\"\n").unwrap();
        assert_eq!(cfg.acme.directory, acme::LETS_ENCRYPT);
        assert_eq!(cfg.acme.challenge, ChallengeKind::Http01);
        assert_eq!(cfg.acme.storage, Path::new("/var/lib/gh/acme"));
        let text = r#"
[acme]
directory = "letsencrypt-staging"
email = ["ops@example.com", "mailto:sec@example.com"]
eab_kid = "kid-1"
eab_mac_key = "c2VjcmV0"
challenge = "tls-alpn-01"
storage = "/srv/acme"
on_demand_ask = "http://127.0.0.1:9000/allowed"

[[listeners]]
address = "127.0.0.1:8443"
tls = true

[[services]]
name = "web"
hosts = ["a.test", "b.test"]
targets = ["http://127.0.0.1:9000"]
tls = "auto"
tls_redirect = false
hsts_max_age = "365d"
"#;
        let cfg = check(text).unwrap();
        assert_eq!(cfg.acme.directory, acme::LETS_ENCRYPT_STAGING);
        assert_eq!(cfg.acme.contact, ["mailto:ops@example.com", "mailto:sec@example.com"]);
        assert_eq!(cfg.acme.external_account.as_ref().map(|e| e.mac_key.as_str()), Some("c2VjcmV0"));
        assert_eq!(
            (cfg.acme.challenge, cfg.acme.storage.as_path()),
            (ChallengeKind::TlsAlpn01, Path::new("/srv/acme"))
        );
        let tls = cfg.services[0].tls.as_ref().unwrap();
        assert_eq!((&tls.certificate, tls.redirect), (&TlsCertificate::Acme { staging: false }, false));
        assert_eq!(tls.hsts_max_age, Some(365 * 86_400));
        let on_demand = cfg.acme.on_demand.as_ref().unwrap();
        assert_eq!((on_demand.ask.as_str(), on_demand.per_minute), ("http://127.0.0.1:9000/allowed", 10));
    }

    #[test]
    fn bad_acme_settings_say_what_to_fix() {
        let err = check(
            "[acme]\ndirectory = \"http://ca.test\"\nemail = \"nobody\"\neab_kid = \"k\"\nchallenge = \"dns-01\"\n",
        )
        .unwrap_err();
        for says in
            ["g.toml:2:", "https:// URL", "g.toml:3:", "not an e-mail", "g.toml:4:", "go together", "needs `dns_hook`"]
        {
            assert!(err.contains(says), "{says}: {err}");
        }
        let err = check("[acme]\non_demand_ask = \"/allowed\"\n").unwrap_err();
        assert!(err.contains("g.toml:2:") && err.contains("needs http://"), "{err}");
        let err = check("[acme]\non_demand_per_minute = 5\n").unwrap_err();
        assert!(err.contains("needs `on_demand_ask`"), "{err}");
        let err = check(
            "[[services]]\nname = \"w\"\nhosts = [\"a.test\"]\ntargets = [\"http://127.0.0.1:1\"]\ntls = \"yes\"\n",
        )
        .unwrap_err();
        assert!(err.contains("only \"auto\""), "{err}");
        let err = check("[[listeners]]\naddress = \"127.0.0.1:80\"\n[[services]]\nname = \"w\"\nhosts = [\"a.test\"]\ntargets = [\"http://127.0.0.1:1\"]\ntls = \"auto\"\n").unwrap_err();
        assert!(err.contains("no [[listeners]] speaks HTTPS"), "{err}");
    }

    #[test]
    fn missing_certificates_are_reported() {
        let err = check("[[listeners]]\naddress = \"127.0.0.1:8443\"\ntls_certificates = [{ cert = \"nope.pem\", key = \"nope.key\" }]\n").unwrap_err();
        assert!(err.contains("certificate file `nope.pem` does not exist"), "{err}");
    }

    #[test]
    fn a_drove_gateway_nginx_file_selects_the_nginx_engine() {
        let cfg = check(
            "nginx_config = \"/etc/nginx/nginx.conf\"\nnginx_template = \"nginx.tmpl\"\nnginx_cmd = \"docker exec nginx nginx\"\n\
             left_delimiter = \"[[\"\nright_delimiter = \"]]\"\nmaxfailsupstream = 3\nnginx_fail_timeout = \"10\"\n\
             nginxplusapiaddr = \"127.0.0.1:8080\"\ndns_resolution_timeout_sec = 5\n",
        )
        .unwrap();
        assert_eq!(
            cfg.proxy_platform,
            ProxyPlatform::Nginx,
            "nginx keys and no proxy_platform: nginx, as drove-gateway"
        );
        let t = cfg.templated.unwrap();
        let f = t.files.as_ref().unwrap();
        assert_eq!(f.config_path, Path::new("/etc/nginx/nginx.conf"));
        assert_eq!(f.template_path, Path::new("nginx.tmpl"), "relative to the file's folder");
        assert_eq!(
            (f.check_command.as_deref(), f.reload_command.as_str()),
            (Some("docker exec nginx nginx"), "docker exec nginx nginx")
        );
        assert_eq!((t.left_delimiter.as_str(), t.nginx_max_fails, t.nginx_fail_timeout.as_str()), ("[[", 3, "0s"));
        assert_eq!(t.haproxy.add_server_ssl_attributes, "ssl verify none");
        assert_eq!(t.nginx_plus_api, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!((t.dns_timeout.as_secs(), t.restart_hold.as_secs()), (5, 30));
        assert_eq!(cfg.drove.startup_wait.as_secs(), 22, "drove-gateway's worst case: 2 tries x (10 s + 1 s)");
        let w: Vec<_> = cfg.warnings.iter().map(ToString::to_string).collect();
        assert!(w.iter().any(|w| w.contains("`maxfailsupstream` is deprecated")), "{w:?}");
        assert!(w.iter().any(|w| w.starts_with("g.toml:7:22: `nginx_fail_timeout` must be whole seconds")), "{w:?}");
    }

    #[test]
    fn templated_engines_say_what_they_miss() {
        let err = check("proxy_platform = \"haproxy\"\nhaproxy_config = \"h.cfg\"\n").unwrap_err();
        for needle in [
            "g.toml:1:18: the haproxy engine needs `haproxy_template`",
            "g.toml:1:18: the haproxy engine needs `haproxy_cmd`",
            "g.toml:1:18: the haproxy engine needs `haproxy_reload_cmd`",
        ] {
            assert!(err.contains(needle), "{needle} in\n{err}");
        }
        let err = check("proxy_platform = \"haproxy\"\nhaproxy_reload_disabled = true\n").unwrap_err();
        assert!(err.contains("g.toml:2:27: `haproxy_reload_disabled` needs `haproxysocketaddr`"), "{err}");
        let cfg = check(
            "proxy_platform = \"haproxy\"\nhaproxy_config = \"h.cfg\"\nhaproxy_template = \"h.tmpl\"\n\
             haproxy_ignore_check = true\nhaproxy_reload_cmd = \"systemctl reload haproxy\"\n",
        )
        .unwrap();
        let f = cfg.templated.unwrap().files.unwrap();
        assert_eq!((f.check_command, f.reload_command.as_str()), (None, "systemctl reload haproxy"));
        let api_only = check(
            "proxy_platform = \"haproxy\"\nhaproxysocketaddr = \"/run/haproxy.sock\"\nhaproxy_reload_disabled = true\n",
        )
        .unwrap();
        assert_eq!(api_only.templated.unwrap().files, None, "no file, template or command needed");
        let err = check("proxy_platform = \"haproxy\"\nhaproxysocketaddr = \"/s\"\nhaproxy_reload_disabled = true\nhaproxy_manage_global_server_state_file = true\n").unwrap_err();
        assert!(
            err.contains(
                "g.toml:4:43: `haproxy_manage_global_server_state_file` needs `haproxy_global_server_state_file_path`"
            ),
            "{err}"
        );
        assert_eq!(check("").unwrap().proxy_platform, ProxyPlatform::Native);
    }
}
