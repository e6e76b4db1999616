//! The immutable route table engines serve from.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::balance::{Balancer, PickContext};
use crate::facts::{ServiceSpec, TargetSpec};
use crate::host::HostPattern;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("service name `{0}` is used twice")]
    DuplicateService(String),
    #[error("host `{host}` with path prefix `{prefix}` is claimed by both `{first}` and `{second}`")]
    DuplicateRoute { host: String, prefix: String, first: String, second: String },
    #[error("service `{service}`: path prefix `{prefix}` must start with `/`")]
    BadPrefix { service: String, prefix: String },
}

/// One upstream of a service, with its live in-flight count.
#[derive(Debug)]
pub struct Target {
    pub spec: TargetSpec,
    pub(crate) in_flight: AtomicU32,
}

impl Target {
    pub fn new(spec: TargetSpec) -> Self {
        Self { spec, in_flight: AtomicU32::new(0) }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request against its target until dropped (it may outlive the route table).
pub struct InFlight {
    service: Arc<Service>,
    target: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.service.targets[self.target].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A service as engines use it: its facts, its targets and its balancer.
#[derive(Debug)]
pub struct Service {
    /// Position in [`RouteTable::services`], for engines' per-service side tables.
    pub index: usize,
    pub spec: ServiceSpec,
    pub targets: Box<[Target]>,
    balancer: Balancer,
}

impl Service {
    fn new(index: usize, spec: ServiceSpec) -> Self {
        let balancer = Balancer::new(spec.balance, &spec.targets);
        let targets = spec.targets.iter().cloned().map(Target::new).collect();
        Self { index, spec, targets, balancer }
    }

    /// Counts a request as in flight on `target` until the guard is dropped.
    pub fn begin(self: &Arc<Self>, target: usize) -> InFlight {
        self.targets[target].in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { service: self.clone(), target }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The next target to use, skipping those already tried for this request.
    pub fn pick(&self, ctx: &PickContext, tried: &[usize]) -> Option<usize> {
        self.balancer.pick(&self.targets, ctx, tried)
    }

    /// The path to forward: `path` with the prefix removed when the service strips it.
    pub fn forward_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        let prefix = self.spec.path_prefix.as_str();
        if !self.spec.strip_prefix || prefix == "/" {
            return Cow::Borrowed(path);
        }
        match path.get(prefix.len()..) {
            Some("") | None => Cow::Borrowed("/"),
            Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
            Some(rest) => Cow::Owned(format!("/{rest}")),
        }
    }

    fn matches_path(&self, path: &str) -> bool {
        prefix_matches(&self.spec.path_prefix, path)
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

/// Removes a trailing slash so `/api/` and `/api` are one prefix.
fn canonical_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Services of one host, longest path prefix first.
type HostRoutes = Vec<Arc<Service>>;

/// An immutable snapshot of every route. Engines share it through an `Arc` and swap
/// in a new one on change.
#[derive(Debug, Default)]
pub struct RouteTable {
    generation: u64,
    exact: HashMap<String, HostRoutes>,
    /// Keyed by suffix with its leading dot (`.example.com`).
    wildcard: HashMap<String, HostRoutes>,
    services: Vec<Arc<Service>>,
}

pub type Route = Arc<Service>;

impl RouteTable {
    /// Merges the facts of every source into a table. Fails, leaving the caller's current
    /// table in service, when two services claim the same host and prefix.
    pub fn build(generation: u64, specs: Vec<ServiceSpec>) -> Result<Self, BuildError> {
        let mut table = RouteTable { generation, ..Default::default() };
        let mut owners: HashMap<(HostPattern, String), String> = HashMap::new();
        for mut spec in specs {
            if !spec.path_prefix.starts_with('/') {
                return Err(BuildError::BadPrefix { service: spec.name, prefix: spec.path_prefix });
            }
            spec.path_prefix = canonical_prefix(&spec.path_prefix);
            if table.services.iter().any(|s| s.spec.name == spec.name) {
                return Err(BuildError::DuplicateService(spec.name));
            }
            for host in &spec.hosts {
                let key = (host.clone(), spec.path_prefix.clone());
                if let Some(first) = owners.insert(key, spec.name.clone()) {
                    return Err(BuildError::DuplicateRoute {
                        host: host.to_string(),
                        prefix: spec.path_prefix.clone(),
                        first,
                        second: spec.name.clone(),
                    });
                }
            }
            let service = Arc::new(Service::new(table.services.len(), spec));
            for host in &service.spec.hosts {
                let routes = match host {
                    HostPattern::Exact(name) => table.exact.entry(name.clone()).or_default(),
                    HostPattern::Wildcard(suffix) => table.wildcard.entry(suffix.clone()).or_default(),
                };
                routes.push(service.clone());
            }
            table.services.push(service);
        }
        for routes in table.exact.values_mut().chain(table.wildcard.values_mut()) {
            routes.sort_by_key(|s| std::cmp::Reverse(s.spec.path_prefix.len()));
        }
        Ok(table)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// The service for a normalised host (see [`crate::normalize_host`]) and a request path.
    /// An exact host wins over wildcards, and a longer wildcard suffix over a shorter one;
    /// within the host, the longest matching path prefix wins.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Route> {
        self.host_routes(host)?.iter().find(|s| s.matches_path(path))
    }

    fn host_routes(&self, host: &str) -> Option<&HostRoutes> {
        if let Some(routes) = self.exact.get(host) {
            return Some(routes);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            let suffix = &rest[dot..];
            if let Some(routes) = self.wildcard.get(suffix) {
                return Some(routes);
            }
            rest = &rest[dot + 1..];
        }
        None
    }
}

impl Serialize for RouteTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct TargetView {
            url: String,
            weight: u32,
            in_flight: u32,
        }
        #[derive(Serialize)]
        struct ServiceView<'a> {
            #[serde(flatten)]
            spec: &'a ServiceSpec,
            live_targets: Vec<TargetView>,
        }
        #[derive(Serialize)]
        struct TableView<'a> {
            generation: u64,
            services: Vec<ServiceView<'a>>,
        }
        TableView {
            generation: self.generation,
            services: self
                .services
                .iter()
                .map(|svc| ServiceView {
                    spec: &svc.spec,
                    live_targets: svc
                        .targets
                        .iter()
                        .map(|t| TargetView { url: t.spec.url(), weight: t.spec.weight, in_flight: t.in_flight() })
                        .collect(),
                })
                .collect(),
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Scheme;

    fn svc(name: &str, hosts: &[&str], prefix: &str) -> ServiceSpec {
        let mut spec = ServiceSpec::new(name, "test");
        spec.hosts = hosts.iter().map(|h| HostPattern::parse(h).unwrap()).collect();
        spec.path_prefix = prefix.to_string();
        spec.targets = vec![TargetSpec { scheme: Scheme::Http, host: "127.0.0.1".into(), port: 1, weight: 1 }];
        spec
    }

    fn name<'a>(t: &'a RouteTable, host: &str, path: &str) -> Option<&'a str> {
        t.lookup(host, path).map(|s| s.name())
    }

    #[test]
    fn exact_beats_wildcard_and_longest_suffix_wins() {
        let t = RouteTable::build(
            1,
            vec![
                svc("exact", &["api.example.com"], "/"),
                svc("wild", &["*.example.com"], "/"),
                svc("deeper", &["*.eu.example.com"], "/"),
            ],
        )
        .unwrap();
        assert_eq!(name(&t, "api.example.com", "/"), Some("exact"));
        assert_eq!(name(&t, "www.example.com", "/"), Some("wild"));
        assert_eq!(name(&t, "a.b.example.com", "/"), Some("wild"));
        assert_eq!(name(&t, "x.eu.example.com", "/"), Some("deeper"));
        assert_eq!(name(&t, "example.com", "/"), None, "a wildcard does not match its bare suffix");
        assert_eq!(name(&t, "other.org", "/"), None);
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let t = RouteTable::build(
            1,
            vec![svc("root", &["a.test"], "/"), svc("api", &["a.test"], "/api/"), svc("v2", &["a.test"], "/api/v2")],
        )
        .unwrap();
        assert_eq!(name(&t, "a.test", "/api"), Some("api"));
        assert_eq!(name(&t, "a.test", "/api/users"), Some("api"));
        assert_eq!(name(&t, "a.test", "/api/v2/x"), Some("v2"));
        assert_eq!(name(&t, "a.test", "/apix"), Some("root"));
        assert_eq!(name(&t, "a.test", "/"), Some("root"));
    }

    #[test]
    fn strips_prefixes() {
        let mut spec = svc("api", &["a.test"], "/api");
        spec.strip_prefix = true;
        let t = RouteTable::build(1, vec![spec]).unwrap();
        let s = t.lookup("a.test", "/api/users").unwrap();
        assert_eq!(s.forward_path("/api/users"), "/users");
        assert_eq!(s.forward_path("/api"), "/");
    }

    #[test]
    fn rejects_conflicts() {
        let err = RouteTable::build(1, vec![svc("a", &["x.test"], "/p"), svc("b", &["X.test"], "/p/")]).unwrap_err();
        assert!(matches!(err, BuildError::DuplicateRoute { .. }), "{err}");
        let err = RouteTable::build(1, vec![svc("a", &["x.test"], "/"), svc("a", &["y.test"], "/")]).unwrap_err();
        assert_eq!(err, BuildError::DuplicateService("a".into()));
        let err = RouteTable::build(1, vec![svc("a", &["x.test"], "api")]).unwrap_err();
        assert!(matches!(err, BuildError::BadPrefix { .. }));
    }

    #[test]
    fn serializes_for_the_admin_api() {
        let t = RouteTable::build(7, vec![svc("a", &["*.x.test"], "/")]).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"generation\":7") && json.contains("*.x.test"), "{json}");
    }
}
