//! The Drove source's settings: drove-gateway 2.1's `[[namespaces]]` and top-level keys,
//! plus the container variables of its image.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use crate::file::{FileConfig, FileNamespace};
use crate::validate::{positive_seconds, Checker};
use crate::Secret;

/// Everything the Drove source needs to know.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DroveSettings {
    pub namespaces: Vec<NamespaceSettings>,
    /// How often the events summary is polled (`event_refresh_interval_sec`, default 1 s).
    pub poll_interval: Duration,
    /// Limit for every call to a controller (`api_timeout`, seconds, default 10).
    pub api_timeout: Duration,
    /// A full `/endpoints` read at least this often, events or not (default 30 s).
    pub resync_interval: Duration,
    /// After a leader change, vanished vhosts are kept this long unless a read confirms
    /// them gone afterwards (default 30 s).
    pub failover_grace: Duration,
    /// Where the last known view is kept across restarts; `None` keeps it in memory only.
    pub state_path: Option<PathBuf>,
    /// How long the nginx and HAProxy engines wait at startup for every namespace's first
    /// view (a sync, or the state file) before rendering what they have:
    /// `startup_controller_sync_tries` x (`api_timeout` + `startup_controller_sync_retry_delay_sec`),
    /// drove-gateway's worst case, without blocking anything else.
    pub startup_wait: Duration,
}

/// The default is a namespace with no controllers, no credentials and no filters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NamespaceSettings {
    pub name: String,
    /// Controller base URLs, in priority order.
    pub controllers: Vec<ControllerUrl>,
    pub credentials: Credentials,
    /// Exact vhosts to expose (`realm`, comma-separated); empty means all.
    pub realms: Vec<String>,
    /// Vhost suffix to expose; works alone or together with `realms` (either may match).
    pub realm_suffix: Option<String>,
    pub routing_tag: Option<String>,
    pub leader_vhost: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    #[default]
    None,
    Basic {
        user: String,
        password: Secret,
    },
    /// A raw `Authorization` header value (`access_token`).
    Header(Secret),
}

/// A controller base URL, e.g. `http://ctrl1:4000`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path before `/apis`, without a trailing slash (usually empty).
    pub base_path: String,
}

impl ControllerUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (https, rest) = if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("controller URL `{text}` must start with http:// or https://"));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| format!("controller URL `{text}`: unclosed `[`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("controller URL `{text}` has no host"));
        }
        let port = match port {
            Some(p) => {
                p.parse().ok().filter(|p| *p > 0).ok_or_else(|| format!("controller URL `{text}`: bad port `{p}`"))?
            }
            None if https => 443,
            None => 80,
        };
        Ok(ControllerUrl { https, host: host.to_string(), port, base_path: path.trim_end_matches('/').to_string() })
    }

    /// `host:port` with brackets around IPv6 literals.
    pub fn authority(&self) -> String {
        gatehouse_model::host_port(&self.host, self.port)
    }
}

impl std::fmt::Display for ControllerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.base_path)
    }
}

fn nonempty(v: &Option<Spanned<String>>) -> Option<&Spanned<String>> {
    v.as_ref().filter(|s| !s.get_ref().is_empty())
}

/// The container variables of drove-gateway's image, read when the file has no namespaces.
pub struct Environment {
    pub controllers: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub cluster_name: Option<String>,
    pub leader_vhost: Option<String>,
}

impl Environment {
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Environment {
            controllers: var("DROVE_CONTROLLERS"),
            username: var("DROVE_USERNAME"),
            password: var("DROVE_PASSWORD"),
            cluster_name: var("DROVE_CLUSTER_NAME"),
            leader_vhost: var("NGINX_DROVE_VHOST"),
        }
    }
}

pub(crate) fn convert(c: &mut Checker<'_>, file: &FileConfig, env: &Environment) -> DroveSettings {
    let mut namespaces = Vec::new();
    let mut names = std::collections::HashSet::new();
    for ns in &file.namespaces {
        if let Some(settings) = namespace(c, ns) {
            if !names.insert(settings.name.clone()) {
                c.error(Some(ns.name.span()), format!("namespace `{}` is defined twice", settings.name));
            }
            namespaces.push(settings);
        }
    }
    if namespaces.is_empty() {
        if let Some(list) = &env.controllers {
            namespaces.push(from_environment(c, list, env));
        }
    }
    let state_path = match (&file.state_path, file.state_persistence_enabled, &file.state_persistence_dir) {
        (_, Some(false), _) => None,
        (Some(p), _, _) => Some(c.resolve(p.get_ref())),
        (None, _, Some(dir)) => Some(c.resolve(dir.get_ref()).join("gatehouse-drove-state.json")),
        (None, _, None) => None,
    };
    if !namespaces.is_empty() && state_path.is_none() && file.state_persistence_enabled != Some(false) {
        c.warn(None, "no `state_path`: the last known Drove view is kept in memory only and lost on restart");
    }
    let api_timeout = positive_seconds(c, &file.api_timeout, "api_timeout", Duration::from_secs(10));
    let tries = match &file.startup_controller_sync_tries {
        None => 2,
        Some(t) => u32::try_from(*t.get_ref()).ok().filter(|n| *n > 0).unwrap_or_else(|| {
            c.warn(Some(t.span()), "`startup_controller_sync_tries` must be at least 1; using 2");
            2
        }),
    };
    let retry_delay = positive_seconds(
        c,
        &file.startup_controller_sync_retry_delay_sec,
        "startup_controller_sync_retry_delay_sec",
        Duration::from_secs(1),
    );
    DroveSettings {
        namespaces,
        poll_interval: positive_seconds(
            c,
            &file.event_refresh_interval_sec,
            "event_refresh_interval_sec",
            Duration::from_secs(1),
        ),
        api_timeout,
        resync_interval: positive_seconds(
            c,
            &file.drove_resync_interval_sec,
            "drove_resync_interval_sec",
            Duration::from_secs(30),
        ),
        failover_grace: positive_seconds(
            c,
            &file.drove_failover_grace_sec,
            "drove_failover_grace_sec",
            Duration::from_secs(30),
        ),
        state_path,
        startup_wait: (api_timeout + retry_delay) * tries,
    }
}

fn namespace(c: &mut Checker<'_>, ns: &FileNamespace) -> Option<NamespaceSettings> {
    let name = ns.name.get_ref().trim().to_string();
    if name.is_empty() {
        c.error(Some(ns.name.span()), "namespace `name` must not be empty");
        return None;
    }
    if let Some(misplaced) = &ns.event_refresh_interval_sec {
        c.warn(
            Some(misplaced.span()),
            "`event_refresh_interval_sec` inside [[namespaces]] has no effect (as in drove-gateway); move it to the top level",
        );
    }
    let mut controllers = Vec::new();
    for url in &ns.drove {
        match ControllerUrl::parse(url.get_ref()) {
            Ok(u) => controllers.push(u),
            Err(e) => c.error(Some(url.span()), e),
        }
    }
    if ns.drove.is_empty() {
        c.error(Some(ns.name.span()), format!("namespace `{name}` needs `drove = [\"http://controller:4000\", ...]`"));
    }
    let credentials = match (nonempty(&ns.user), nonempty(&ns.pass), nonempty(&ns.access_token)) {
        (Some(_), _, Some(token)) => {
            c.error(
                Some(token.span()),
                "set either `user`/`pass` or `access_token`, not both: drove-gateway sent two Authorization headers",
            );
            Credentials::None
        }
        (Some(user), pass, None) => Credentials::Basic {
            user: user.get_ref().clone(),
            password: Secret::new(pass.map(|p| p.get_ref().clone()).unwrap_or_default()),
        },
        (None, Some(pass), _) => {
            c.error(Some(pass.span()), "`pass` without `user`");
            Credentials::None
        }
        (None, None, Some(token)) => Credentials::Header(Secret::new(token.get_ref().clone())),
        (None, None, None) => Credentials::None,
    };
    let lower = |v: &Option<Spanned<String>>| {
        v.as_ref().map(|s| s.get_ref().trim().to_ascii_lowercase()).filter(|s| !s.is_empty())
    };
    let realms = lower(&ns.realm)
        .map(|r| r.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    Some(NamespaceSettings {
        name,
        controllers,
        credentials,
        realms,
        realm_suffix: lower(&ns.realm_suffix),
        routing_tag: ns.routing_tag.as_ref().map(|t| t.get_ref().trim().to_string()).filter(|t| !t.is_empty()),
        leader_vhost: lower(&ns.leader_vhost),
    })
}

fn from_environment(c: &mut Checker<'_>, list: &str, env: &Environment) -> NamespaceSettings {
    let mut controllers = Vec::new();
    for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match ControllerUrl::parse(url) {
            Ok(u) => controllers.push(u),
            Err(e) => c.error(None, format!("DROVE_CONTROLLERS: {e}")),
        }
    }
    let credentials = match &env.username {
        Some(user) => {
            Credentials::Basic { user: user.clone(), password: Secret::new(env.password.clone().unwrap_or_default()) }
        }
        None => Credentials::None,
    };
    NamespaceSettings {
        name: env.cluster_name.clone().unwrap_or_else(|| "default".into()),
        controllers,
        credentials,
        realms: Vec::new(),
        realm_suffix: None,
        routing_tag: None,
        leader_vhost: env.leader_vhost.as_ref().map(|v| v.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_urls() {
        let u = ControllerUrl::parse("http://ctrl1:4000").unwrap();
        assert_eq!((u.https, u.host.as_str(), u.port, u.base_path.as_str()), (false, "ctrl1", 4000, ""));
        let u = ControllerUrl::parse("https://[::1]/drove/").unwrap();
        assert_eq!((u.https, u.host.as_str(), u.port, u.base_path.as_str()), (true, "::1", 443, "/drove"));
        assert_eq!(u.to_string(), "https://[::1]:443/drove");
        assert!(ControllerUrl::parse("ctrl1:4000").is_err());
        assert!(ControllerUrl::parse("http://ctrl1:0").is_err());
        assert!(ControllerUrl::parse("http://:80").is_err());
    }
}
