//! The immutable route table engines serve from.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::balance::{Balancer, PickContext};
use crate::cow_map::CowMap;
use crate::facts::ServiceSpec;
use crate::host::HostPattern;
use crate::retire::{Retirement, Scope, Signalled};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("service name `{0}` is used twice")]
    DuplicateService(String),
    #[error("host `{host}` with path prefix `{prefix}` is claimed by both `{first}` and `{second}`")]
    DuplicateRoute { host: String, prefix: String, first: String, second: String },
    #[error("service `{service}`: path prefix `{prefix}` must start with `/`")]
    BadPrefix { service: String, prefix: String },
}

/// The live state of one upstream of a service (its facts are the spec's target at the
/// same index).
#[derive(Debug, Default)]
pub struct Target {
    pub(crate) in_flight: AtomicU32,
}

impl Target {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A service's live state shared with its requests: the targets' counts, and the signals
/// a drain sends to the requests still on them.
#[derive(Debug, Default)]
pub(crate) struct Live {
    targets: Box<[Target]>,
    retirement: Retirement,
}

/// Counts a request against its target until dropped (it may outlive the route table).
pub struct InFlight {
    live: Arc<Live>,
    target: usize,
}

impl InFlight {
    pub(crate) fn retirement(&self) -> &Retirement {
        &self.live.retirement
    }

    /// Whether the service's drain has signalled `scope` (one atomic load).
    pub fn is_signalled(&self, scope: Scope) -> bool {
        self.live.retirement.is_signalled(scope)
    }

    /// Resolves when the service's drain signals `scope`; allocates nothing (for a request
    /// waiting in place).
    pub async fn signalled(&self, scope: Scope) {
        self.live.retirement.wait(scope).await
    }

    /// This count, awaitable for `scope` by a value that owns it (a response body).
    pub fn into_signalled(self, scope: Scope) -> Signalled {
        Signalled::new(self, scope)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.live.targets[self.target].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The live counters of a service taken out of the table, for whoever drains it: requests
/// (with their response bodies and tunnels) that started on it keep counting here.
#[derive(Debug, Clone)]
pub struct Retired {
    live: Arc<Live>,
}

impl Retired {
    /// Requests still in flight on any of the service's targets.
    pub fn in_flight(&self) -> u32 {
        self.live.targets.iter().map(Target::in_flight).sum()
    }

    /// Tells the requests on the service's targets to stop: tunnels only, or everything.
    pub fn signal(&self, scope: Scope) {
        self.live.retirement.signal(scope);
    }
}

/// A service as engines use it: its facts, its targets, its balancer, and whatever the
/// engine attached to it. A table build reuses the whole service while its spec is
/// unchanged, so balancer positions, in-flight counts and attachments carry over.
#[derive(Debug)]
pub struct Service<X = ()> {
    pub spec: Arc<ServiceSpec>,
    live: Arc<Live>,
    balancer: Balancer,
    /// Engine state derived from the spec (metrics handles, connection keys, ...).
    pub attached: X,
}

impl<X> Service<X> {
    fn new(spec: Arc<ServiceSpec>, attached: X) -> Self {
        let balancer = Balancer::new(spec.balance, &spec.targets);
        let targets = spec.targets.iter().map(|_| Target::default()).collect();
        Self { spec, live: Arc::new(Live { targets, retirement: Retirement::default() }), balancer, attached }
    }

    /// The live state of each target, indexed like the spec's.
    pub fn targets(&self) -> &[Target] {
        &self.live.targets
    }

    /// Counts a request as in flight on `target` until the guard is dropped.
    pub fn begin(&self, target: usize) -> InFlight {
        self.live.targets[target].in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { live: self.live.clone(), target }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// A handle on this service's in-flight counts that outlives the table.
    pub fn retired(&self) -> Retired {
        Retired { live: self.live.clone() }
    }

    /// The next target to use, skipping those already tried for this request.
    pub fn pick(&self, ctx: &PickContext, tried: &[usize]) -> Option<usize> {
        self.balancer.pick(&self.live.targets, ctx, tried)
    }

    /// The path to forward: `path` with the longest of the service's prefixes that matches
    /// it removed, when the service strips them.
    pub fn forward_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        if !self.spec.strip_prefix {
            return Cow::Borrowed(path);
        }
        let matched = self.spec.path_prefixes.iter().filter(|p| prefix_matches(p, path)).max_by_key(|p| p.len());
        let Some(prefix) = matched.filter(|p| p.as_str() != "/") else {
            return Cow::Borrowed(path);
        };
        match path.get(prefix.len()..) {
            Some("") | None => Cow::Borrowed("/"),
            Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
            Some(rest) => Cow::Owned(format!("/{rest}")),
        }
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
fn canonical_prefix(prefix: &str) -> &str {
    match prefix.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    }
}

pub type Route<X = ()> = Arc<Service<X>>;

/// The (path prefix, service) pairs of one host, longest prefix first.
type HostRoutes<X> = Vec<(String, Route<X>)>;

/// An immutable snapshot of every route. Engines share it through an `Arc` and swap
/// in a new one on change; [`RouteTable::update`] shares everything untouched with the
/// table it starts from.
pub struct RouteTable<X = ()> {
    generation: u64,
    exact: CowMap<HostRoutes<X>>,
    /// Keyed by suffix with its leading dot (`.example.com`).
    wildcard: CowMap<HostRoutes<X>>,
    /// `*`: hosts nothing else routes.
    any: Arc<HostRoutes<X>>,
    /// Keyed by service name.
    services: CowMap<Route<X>>,
}

impl<X> Clone for RouteTable<X> {
    fn clone(&self) -> Self {
        RouteTable {
            generation: self.generation,
            exact: self.exact.clone(),
            wildcard: self.wildcard.clone(),
            any: self.any.clone(),
            services: self.services.clone(),
        }
    }
}

impl<X> Default for RouteTable<X> {
    fn default() -> Self {
        RouteTable {
            generation: 0,
            exact: CowMap::new(),
            wildcard: CowMap::new(),
            any: Arc::new(Vec::new()),
            services: CowMap::new(),
        }
    }
}

impl<X> std::fmt::Debug for RouteTable<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("generation", &self.generation)
            .field("services", &self.services.len())
            .finish()
    }
}

/// Checks a spec's path prefixes and removes their trailing slashes and repeats (none is `/`).
fn canonical(mut spec: Arc<ServiceSpec>) -> Result<Arc<ServiceSpec>, BuildError> {
    if let Some(bad) = spec.path_prefixes.iter().find(|p| !p.starts_with('/')) {
        return Err(BuildError::BadPrefix { service: spec.name.clone(), prefix: bad.clone() });
    }
    let mut prefixes: Vec<String> = Vec::with_capacity(spec.path_prefixes.len().max(1));
    for prefix in &spec.path_prefixes {
        let prefix = canonical_prefix(prefix);
        if !prefixes.iter().any(|p| p == prefix) {
            prefixes.push(prefix.to_string());
        }
    }
    if prefixes.is_empty() {
        prefixes.push("/".to_string());
    }
    if prefixes != spec.path_prefixes {
        Arc::make_mut(&mut spec).path_prefixes = prefixes;
    }
    Ok(spec)
}

impl<X> RouteTable<X> {
    /// Merges the facts of every source into a table. Fails, leaving the caller's current
    /// table in service, when two services share a name or claim the same host and prefix.
    /// A service whose spec equals one in `previous` is carried over as it is (balancer
    /// position, in-flight counts, attachment); `attach` runs for the others.
    pub fn build(
        generation: u64,
        specs: Vec<Arc<ServiceSpec>>,
        previous: Option<&RouteTable<X>>,
        mut attach: impl FnMut(&ServiceSpec) -> X,
    ) -> Result<Self, BuildError> {
        let specs = specs.into_iter().map(canonical).collect::<Result<Vec<_>, _>>()?;
        check_conflicts(&specs)?;
        let mut table = RouteTable { generation, ..Default::default() };
        for spec in specs {
            let service = match previous.and_then(|p| p.unchanged(&spec)) {
                Some(old) => old.clone(),
                None => {
                    let attached = attach(&spec);
                    Arc::new(Service::new(spec, attached))
                }
            };
            table.insert(service);
        }
        Ok(table)
    }

    /// This table with services added or replaced (`upserts`, matched by name) and removed
    /// (`removals`, by name; unknown names are ignored). Costs about as much as the changed
    /// services. Fails, changing nothing, when an upsert claims another service's host and
    /// prefix.
    pub fn update(
        &self,
        generation: u64,
        upserts: Vec<Arc<ServiceSpec>>,
        removals: &[&str],
        mut attach: impl FnMut(&ServiceSpec) -> X,
    ) -> Result<Self, BuildError> {
        let mut table = self.clone();
        table.generation = generation;
        for name in removals {
            table.remove(name);
        }
        for spec in upserts {
            let spec = canonical(spec)?;
            let kept = self.unchanged(&spec).cloned();
            if let Some(kept) = &kept {
                if table.service(&spec.name).is_some_and(|current| Arc::ptr_eq(current, kept)) {
                    continue;
                }
            }
            table.remove(&spec.name);
            for host in &spec.hosts {
                for prefix in &spec.path_prefixes {
                    let owner = table.routes_of(host).and_then(|r| r.iter().find(|(p, _)| p == prefix));
                    if let Some((_, owner)) = owner {
                        return Err(BuildError::DuplicateRoute {
                            host: host.to_string(),
                            prefix: prefix.clone(),
                            first: owner.spec.name.clone(),
                            second: spec.name.clone(),
                        });
                    }
                }
            }
            let service = match kept {
                Some(kept) => kept,
                None => {
                    let attached = attach(&spec);
                    Arc::new(Service::new(spec, attached))
                }
            };
            table.insert(service);
        }
        Ok(table)
    }

    /// The service named like `spec` if its spec is the same.
    fn unchanged(&self, spec: &Arc<ServiceSpec>) -> Option<&Route<X>> {
        self.service(&spec.name).filter(|old| Arc::ptr_eq(&old.spec, spec) || old.spec == *spec)
    }

    fn routes_of(&self, host: &HostPattern) -> Option<&HostRoutes<X>> {
        match host {
            HostPattern::Exact(name) => self.exact.get(name),
            HostPattern::Wildcard(suffix) => self.wildcard.get(suffix),
            HostPattern::Any => Some(&self.any),
        }
    }

    fn insert(&mut self, service: Route<X>) {
        for host in &service.spec.hosts {
            let routes = match host {
                HostPattern::Exact(name) => self.exact.get_or_insert_with(name, Vec::new),
                HostPattern::Wildcard(suffix) => self.wildcard.get_or_insert_with(suffix, Vec::new),
                HostPattern::Any => Arc::make_mut(&mut self.any),
            };
            for prefix in &service.spec.path_prefixes {
                routes.push((prefix.clone(), service.clone()));
            }
            if routes.len() > 1 {
                routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
            }
        }
        self.services.insert(service.spec.name.clone(), service);
    }

    fn remove(&mut self, name: &str) {
        let Some(service) = self.services.remove(name) else { return };
        for host in &service.spec.hosts {
            let (map, key) = match host {
                HostPattern::Exact(k) => (&mut self.exact, k.as_str()),
                HostPattern::Wildcard(k) => (&mut self.wildcard, k.as_str()),
                HostPattern::Any => {
                    Arc::make_mut(&mut self.any).retain(|(_, s)| !Arc::ptr_eq(s, &service));
                    continue;
                }
            };
            if let Some(routes) = map.get_mut(key) {
                routes.retain(|(_, s)| !Arc::ptr_eq(s, &service));
                if routes.is_empty() {
                    map.remove(key);
                }
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every service, by name.
    pub fn services(&self) -> Vec<&Route<X>> {
        self.services.sorted().into_iter().map(|(_, s)| s).collect()
    }

    pub fn service(&self, name: &str) -> Option<&Route<X>> {
        self.services.get(name)
    }

    /// The service for a normalised host (see [`crate::normalize_host`]) and a request path.
    /// An exact host wins over wildcards, and a longer wildcard suffix over a shorter one;
    /// within the host, the longest matching path prefix wins.
    /// A host no exact name or wildcard routes falls to the `*` services.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Route<X>> {
        let routes = self.host_routes(host).unwrap_or(&self.any);
        routes.iter().find(|(prefix, _)| prefix_matches(prefix, path)).map(|(_, s)| s)
    }

    fn host_routes(&self, host: &str) -> Option<&HostRoutes<X>> {
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

/// Two services with one name, or two claiming the same host and path prefix.
fn check_conflicts(specs: &[Arc<ServiceSpec>]) -> Result<(), BuildError> {
    let mut names: HashSet<&str> = HashSet::with_capacity(specs.len());
    let mut owners: HashMap<(&HostPattern, &str), &str> = HashMap::with_capacity(specs.len());
    for spec in specs {
        if !names.insert(&spec.name) {
            return Err(BuildError::DuplicateService(spec.name.clone()));
        }
        for host in &spec.hosts {
            for prefix in &spec.path_prefixes {
                if let Some(first) = owners.insert((host, prefix), &spec.name) {
                    return Err(BuildError::DuplicateRoute {
                        host: host.to_string(),
                        prefix: prefix.clone(),
                        first: first.to_string(),
                        second: spec.name.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

impl<X> Serialize for RouteTable<X> {
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
                .services()
                .into_iter()
                .map(|svc| ServiceView {
                    spec: &svc.spec,
                    live_targets: svc
                        .spec
                        .targets
                        .iter()
                        .zip(svc.targets().iter())
                        .map(|(t, live)| TargetView { url: t.url(), weight: t.weight, in_flight: live.in_flight() })
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
    use crate::facts::{Scheme, TargetSpec};

    fn svc(name: &str, hosts: &[&str], prefix: &str) -> ServiceSpec {
        let mut spec = ServiceSpec::new(name, "test");
        spec.hosts = hosts.iter().map(|h| HostPattern::parse(h).unwrap()).collect();
        spec.path_prefixes = vec![prefix.to_string()];
        spec.targets = vec![TargetSpec { scheme: Scheme::Http, host: "127.0.0.1".into(), port: 1, weight: 1 }];
        spec
    }

    fn table(specs: Vec<ServiceSpec>) -> Result<RouteTable, BuildError> {
        RouteTable::build(1, specs.into_iter().map(Arc::new).collect(), None, |_| ())
    }

    fn name<'a>(t: &'a RouteTable, host: &str, path: &str) -> Option<&'a str> {
        t.lookup(host, path).map(|s| s.name())
    }

    #[test]
    fn exact_beats_wildcard_and_longest_suffix_wins() {
        let t = table(vec![
            svc("exact", &["api.example.com"], "/"),
            svc("wild", &["*.example.com"], "/"),
            svc("deeper", &["*.eu.example.com"], "/"),
        ])
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
        let t = table(vec![
            svc("root", &["a.test"], "/"),
            svc("api", &["a.test"], "/api/"),
            svc("v2", &["a.test"], "/api/v2"),
        ])
        .unwrap();
        assert_eq!(name(&t, "a.test", "/api"), Some("api"));
        assert_eq!(name(&t, "a.test", "/api/users"), Some("api"));
        assert_eq!(name(&t, "a.test", "/api/v2/x"), Some("v2"));
        assert_eq!(name(&t, "a.test", "/apix"), Some("root"));
        assert_eq!(name(&t, "a.test", "/"), Some("root"));
    }

    #[test]
    fn several_prefixes_and_a_catch_all() {
        let mut multi = svc("multi", &["a.test"], "/");
        multi.path_prefixes = vec!["/app/".into(), "/static".into(), "/app".into()];
        multi.strip_prefix = true;
        let t = table(vec![multi, svc("deep", &["a.test"], "/app/admin"), svc("any", &["*"], "/")]).unwrap();
        assert_eq!(name(&t, "a.test", "/static/x.css"), Some("multi"));
        assert_eq!(name(&t, "a.test", "/app/admin/x"), Some("deep"), "the longest prefix wins across services");
        assert_eq!(name(&t, "a.test", "/other"), None, "a routed host does not fall to `*`");
        assert_eq!(name(&t, "b.test", "/x"), Some("any"));
        let s = t.service("multi").unwrap();
        assert_eq!(s.spec.path_prefixes, ["/app", "/static"], "canonical and without repeats");
        assert_eq!(s.forward_path("/static/x.css"), "/x.css");
        assert_eq!(s.forward_path("/app"), "/");
        let err = t.update(2, vec![Arc::new(svc("clash", &["a.test"], "/static"))], &[], |_| ()).unwrap_err();
        assert!(matches!(err, BuildError::DuplicateRoute { ref first, .. } if first == "multi"), "{err}");
        let gone = t.update(2, Vec::new(), &["any", "multi"], |_| ()).unwrap();
        assert_eq!(name(&gone, "b.test", "/"), None);
        assert_eq!(name(&gone, "a.test", "/static"), None);
        assert_eq!(name(&gone, "a.test", "/app/admin"), Some("deep"));
    }

    #[test]
    fn strips_prefixes() {
        let mut spec = svc("api", &["a.test"], "/api");
        spec.strip_prefix = true;
        let t = table(vec![spec]).unwrap();
        let s = t.lookup("a.test", "/api/users").unwrap();
        assert_eq!(s.forward_path("/api/users"), "/users");
        assert_eq!(s.forward_path("/api"), "/");
    }

    #[test]
    fn rejects_conflicts() {
        let err = table(vec![svc("a", &["x.test"], "/p"), svc("b", &["X.test"], "/p/")]).unwrap_err();
        assert!(matches!(err, BuildError::DuplicateRoute { .. }), "{err}");
        let err = table(vec![svc("a", &["x.test"], "/"), svc("a", &["y.test"], "/")]).unwrap_err();
        assert_eq!(err, BuildError::DuplicateService("a".into()));
        let err = table(vec![svc("a", &["x.test"], "api")]).unwrap_err();
        assert!(matches!(err, BuildError::BadPrefix { .. }));
    }

    #[test]
    fn unchanged_services_are_carried_over_with_their_state() {
        let mut attached = 0;
        let mut count = |_: &ServiceSpec| {
            attached += 1;
            attached
        };
        let first = RouteTable::build(
            1,
            vec![Arc::new(svc("a", &["a.test"], "/")), Arc::new(svc("b", &["b.test"], "/"))],
            None,
            &mut count,
        )
        .unwrap();
        let a = first.service("a").unwrap().clone();
        let held = a.begin(0);
        let mut changed = svc("b", &["b.test"], "/");
        changed.targets[0].port = 2;
        let specs = vec![Arc::new(svc("a", &["a.test"], "/")), Arc::new(changed), Arc::new(svc("c", &["c.test"], "/"))];
        let second = RouteTable::build(2, specs, Some(&first), &mut count).unwrap();
        let a2 = second.service("a").unwrap();
        assert!(Arc::ptr_eq(&a, a2), "an equal spec keeps its service");
        assert_eq!(a2.targets()[0].in_flight(), 1, "in-flight counts carry over");
        assert_eq!(second.service("b").unwrap().attached, 3, "a changed spec is attached anew");
        assert_eq!(second.service("c").unwrap().attached, 4);
        assert_eq!(second.lookup("b.test", "/").unwrap().spec.targets[0].port, 2);
        drop(held);
        assert_eq!(a2.targets()[0].in_flight(), 0);
        assert!(second.service("zzz").is_none());
    }

    #[test]
    fn updates_touch_only_what_they_name() {
        let t =
            table(vec![svc("a", &["a.test"], "/"), svc("b", &["b.test", "*.b.test"], "/"), svc("c", &["c.test"], "/")])
                .unwrap();
        let mut moved = svc("b", &["b2.test"], "/");
        moved.targets[0].port = 9;
        let next =
            t.update(2, vec![Arc::new(moved), Arc::new(svc("d", &["d.test"], "/x/"))], &["c", "nope"], |_| ()).unwrap();
        assert_eq!(next.generation(), 2);
        assert!(Arc::ptr_eq(next.service("a").unwrap(), t.service("a").unwrap()));
        assert_eq!(name(&next, "b2.test", "/"), Some("b"));
        assert_eq!(name(&next, "b.test", "/"), None, "the old hosts of a replaced service are gone");
        assert_eq!(name(&next, "x.b.test", "/"), None);
        assert_eq!(name(&next, "c.test", "/"), None);
        assert_eq!(name(&next, "d.test", "/x/y"), Some("d"), "prefixes are made canonical");
        assert_eq!(next.services().iter().map(|s| s.name()).collect::<Vec<_>>(), ["a", "b", "d"]);
        assert_eq!(name(&t, "b.test", "/"), Some("b"), "the table updated from is untouched");
        assert_eq!(t.services().len(), 3);

        let err = next.update(3, vec![Arc::new(svc("e", &["a.test"], "/"))], &[], |_| ()).unwrap_err();
        assert!(matches!(err, BuildError::DuplicateRoute { ref first, .. } if first == "a"), "{err}");
        let same = next.update(3, vec![Arc::new(svc("a", &["a.test"], "/"))], &[], |_| ()).unwrap();
        assert!(Arc::ptr_eq(same.service("a").unwrap(), t.service("a").unwrap()), "an equal upsert keeps the service");
        let swapped = next.update(3, vec![Arc::new(svc("e", &["a.test"], "/"))], &["a"], |_| ()).unwrap();
        assert_eq!(name(&swapped, "a.test", "/"), Some("e"), "a host can move in one update");
    }

    #[test]
    fn serializes_for_the_admin_api() {
        let t = RouteTable::build(7, vec![Arc::new(svc("a", &["*.x.test"], "/"))], None, |_| ()).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"generation\":7") && json.contains("*.x.test"), "{json}");
    }
}
