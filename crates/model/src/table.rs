//! The immutable route table engines serve from.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::balance::{Balancer, PickContext};
use crate::cow_map::CowMap;
use crate::facts::{Lane, ServiceSpec};
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

/// The live state of one upstream of a service. A new table shares it with the previous
/// one while the target stays in the service, so counts and drain signals follow the target,
/// not the table.
#[derive(Debug, Default)]
pub struct Target {
    pub(crate) in_flight: AtomicU32,
    /// Until when (in [`clock_ms`]) a failed connection keeps the target out of rotation;
    /// 0 when it is in.
    ejected_until: AtomicU64,
    retirement: Retirement,
}

impl Target {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether a failed connection keeps the target out of rotation now (one atomic load
    /// while it is in).
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock_ms() < until
    }
}

/// Milliseconds on a monotonic clock that starts with the process.
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Counts a request against its target until dropped (it may outlive the route table).
pub struct InFlight {
    target: Arc<Target>,
}

impl InFlight {
    /// Takes the target out of rotation for `period` (passive health: it refused a
    /// connection), so requests stop paying for the failure before the next check.
    pub fn eject(&self, period: Duration) {
        if !period.is_zero() {
            let until = clock_ms().saturating_add(u64::try_from(period.as_millis()).unwrap_or(u64::MAX)).max(1);
            self.target.ejected_until.store(until, Ordering::Relaxed);
        }
    }

    pub(crate) fn retirement(&self) -> &Retirement {
        &self.target.retirement
    }

    /// Whether the target's drain has signalled `scope` (one atomic load).
    pub fn is_signalled(&self, scope: Scope) -> bool {
        self.target.retirement.is_signalled(scope)
    }

    /// Resolves when the target's drain signals `scope`; allocates nothing (for a request
    /// waiting in place).
    pub async fn signalled(&self, scope: Scope) {
        self.target.retirement.wait(scope).await
    }

    /// This count, awaitable for `scope` by a value that owns it (a response body).
    pub fn into_signalled(self, scope: Scope) -> Signalled {
        Signalled::new(self, scope)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The live counters of targets taken out of service, for whoever drains them: requests
/// (with their response bodies and tunnels) that started on them keep counting here.
#[derive(Debug, Clone, Default)]
pub struct Retired {
    targets: Vec<Arc<Target>>,
}

impl Retired {
    /// Requests still in flight on the retired targets.
    pub fn in_flight(&self) -> u32 {
        self.targets.iter().map(|t| t.in_flight()).sum()
    }

    /// Tells the requests on the retired targets to stop: tunnels only, or everything.
    pub fn signal(&self, scope: Scope) {
        for target in &self.targets {
            target.retirement.signal(scope);
        }
    }

    /// How many targets were retired.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// One target set of a service (writers, readers, rollout writers, rollout readers): a
/// range of the service's targets and the balancer that picks within it.
#[derive(Debug)]
struct Pool {
    start: usize,
    len: usize,
    balancer: Balancer,
}

/// A service as engines use it: its facts, its targets, its balancers, and whatever the
/// engine attached to it. A table build reuses the whole service while its spec is
/// unchanged, so balancer positions, in-flight counts and attachments carry over.
#[derive(Debug)]
pub struct Service<X = ()> {
    pub spec: Arc<ServiceSpec>,
    /// Indexed like [`ServiceSpec::all_targets`].
    targets: Box<[Arc<Target>]>,
    /// Writers, readers, rollout writers, rollout readers.
    pools: [Pool; 4],
    /// Engine state derived from the spec (metrics handles, connection keys, ...).
    pub attached: X,
}

impl<X> Service<X> {
    /// A service for `spec`; targets it shares with `previous` keep their live state, unless
    /// the service's availability changed (a pause or stop drains every target).
    fn new<Y>(spec: Arc<ServiceSpec>, previous: Option<&Service<Y>>, attached: X) -> Self {
        let previous = previous.filter(|p| p.spec.availability == spec.availability);
        let targets = spec
            .all_targets()
            .map(|t| {
                previous
                    .and_then(|p| p.spec.all_targets().position(|old| old == t).map(|i| &p.targets[i]))
                    .filter(|live| !live.retirement.is_signalled(Scope::Tunnels))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let mut start = 0;
        let pools = spec.target_sets().map(|set| {
            let pool = Pool { start, len: set.len(), balancer: Balancer::new(spec.balance, set) };
            start += set.len();
            pool
        });
        Self { spec, targets, pools, attached }
    }

    /// The live state of each target, indexed like [`ServiceSpec::all_targets`].
    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// How many targets the lane of `ctx` can use.
    pub fn lane_len(&self, ctx: &PickContext) -> usize {
        self.pool(ctx.lane).len
    }

    /// The pool of a lane: readers fall back to the writers of their side when there are
    /// none, and a rollout lane without targets to the active writers.
    fn pool(&self, lane: Lane) -> &Pool {
        let side = if lane.rollout && self.pools[2].len > 0 { 2 } else { 0 };
        if lane.read && self.pools[side + 1].len > 0 {
            &self.pools[side + 1]
        } else {
            &self.pools[side]
        }
    }

    /// Counts a request as in flight on `target` until the guard is dropped.
    pub fn begin(&self, target: usize) -> InFlight {
        let target = self.targets[target].clone();
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { target }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The targets of this service that `next` (its replacement, if any) does not keep,
    /// for a drain.
    pub fn retired_by<Y>(&self, next: Option<&Service<Y>>) -> Retired {
        let kept = |t: &Arc<Target>| next.is_some_and(|n| n.targets.iter().any(|k| Arc::ptr_eq(k, t)));
        Retired { targets: self.targets.iter().filter(|t| !kept(t)).cloned().collect() }
    }

    /// The next target of the request's lane to use, skipping those already tried for this
    /// request.
    pub fn pick(&self, ctx: &PickContext, tried: &[usize]) -> Option<usize> {
        let pool = self.pool(ctx.lane);
        let targets = &self.targets[pool.start..pool.start + pool.len];
        pool.balancer.pick(targets, ctx, tried, pool.start)
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
                    let before = previous.and_then(|p| p.service(&spec.name)).map(|s| &**s);
                    Arc::new(Service::new(spec, before, attached))
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
                    let before = self.service(&spec.name).map(|s| &**s);
                    Arc::new(Service::new(spec, before, attached))
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

    /// The service for a normalised host (see [`crate::Authority`]) and a request path.
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
                        .all_targets()
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
    fn kept_targets_keep_their_counts_and_only_leaving_ones_are_retired() {
        let target = |port: u16| TargetSpec { scheme: Scheme::Http, host: "127.0.0.1".into(), port, weight: 1 };
        let mut spec = svc("a", &["a.test"], "/");
        spec.targets = vec![target(1), target(2)];
        let first = table(vec![spec.clone()]).unwrap();
        let old = first.service("a").unwrap().clone();
        let on_kept = old.begin(1);
        let on_leaving = old.begin(0);
        spec.targets = vec![target(2), target(3)];
        let second = first.update(2, vec![Arc::new(spec.clone())], &[], |_| ()).unwrap();
        let new = second.service("a").unwrap();
        assert_eq!(new.targets()[0].in_flight(), 1, "target 2 carries its count over");
        let retired = old.retired_by(Some(new));
        assert_eq!((retired.len(), retired.in_flight()), (1, 1), "only target 1 is drained");
        retired.signal(Scope::All);
        assert!(on_leaving.is_signalled(Scope::All) && !on_kept.is_signalled(Scope::Tunnels));
        assert_eq!(old.retired_by::<()>(None).len(), 2, "a removal retires everything");

        spec.availability = crate::facts::Availability::Stopped { message: String::new() };
        let third = second.update(3, vec![Arc::new(spec)], &[], |_| ()).unwrap();
        let stopped = third.service("a").unwrap();
        assert_eq!(stopped.targets()[0].in_flight(), 0, "a pause or stop starts afresh");
        assert_eq!(new.retired_by(Some(stopped)).len(), 2, "and drains every target");
    }

    #[test]
    fn lanes_pick_from_their_pool_and_fall_back_to_writers() {
        let target = |port: u16| TargetSpec { scheme: Scheme::Http, host: "127.0.0.1".into(), port, weight: 1 };
        let mut spec = svc("a", &["a.test"], "/");
        spec.targets = vec![target(1)];
        spec.read_targets = vec![target(2), target(3)];
        spec.rollout = Some(crate::facts::Rollout {
            targets: vec![target(4)],
            read_targets: Vec::new(),
            percent: 0,
            allowlist: Vec::new(),
        });
        let t = table(vec![spec]).unwrap();
        let s = t.service("a").unwrap();
        let ctx = |rollout, read| PickContext {
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            random: 0,
            lane: Lane { rollout, read },
        };
        let port = |i: usize| s.spec.target(i).unwrap().port;
        assert_eq!(port(s.pick(&ctx(false, false), &[]).unwrap()), 1);
        let reads: HashSet<u16> = (0..4).map(|_| port(s.pick(&ctx(false, true), &[]).unwrap())).collect();
        assert_eq!(reads, HashSet::from([2, 3]));
        assert_eq!(port(s.pick(&ctx(false, true), &[1]).unwrap()), 3, "tried targets are skipped");
        assert_eq!(s.pick(&ctx(false, true), &[1, 2]), None);
        assert_eq!(port(s.pick(&ctx(true, false), &[]).unwrap()), 4);
        assert_eq!(port(s.pick(&ctx(true, true), &[]).unwrap()), 4, "no rollout readers: rollout writers");
        assert_eq!(s.lane_len(&ctx(false, true)), 2);

        // A target that refused a connection sits out while the other reader can serve.
        s.begin(1).eject(Duration::from_secs(60));
        for _ in 0..4 {
            assert_eq!(port(s.pick(&ctx(false, true), &[]).unwrap()), 3, "the ejected reader sits out");
        }
        s.begin(2).eject(Duration::from_secs(60));
        let reads: HashSet<u16> = (0..4).map(|_| port(s.pick(&ctx(false, true), &[]).unwrap())).collect();
        assert_eq!(reads, HashSet::from([2, 3]), "all ejected: all serve, never none");
        assert_eq!(port(s.pick(&ctx(false, true), &[2]).unwrap()), 2);
        s.begin(3).eject(Duration::ZERO);
        assert!(!s.targets[3].is_ejected(), "a zero fail timeout ejects nothing");
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
