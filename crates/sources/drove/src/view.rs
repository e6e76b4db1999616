//! Pure logic: controller entries -> a namespace's view (realm filter, merge by vhost,
//! routing-tag groups), which vhosts a new reply changed, the failover grace rule, and
//! the view -> route facts, per vhost so that one change costs one vhost.
//!
//! Field names in JSON follow drove-gateway's `App`/`Host`/`HostGroup`, which templates and
//! its state file use.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gatehouse_config::NamespaceSettings;
use gatehouse_model::{CowMap, HostPattern, Scheme, ServiceSpec, TargetSpec};
use serde::{Deserialize, Serialize};

use crate::api::ExposedApp;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Host {
    #[serde(rename = "Host")]
    pub host: String,
    #[serde(rename = "Port")]
    pub port: u16,
    /// `http`, `https`, `tcp` or `udp`.
    #[serde(rename = "PortType")]
    pub port_type: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostGroup {
    #[serde(rename = "Hosts")]
    pub hosts: Vec<Host>,
    #[serde(rename = "Tags")]
    pub tags: BTreeMap<String, String>,
}

/// Everything routed under one vhost, merged over the Drove apps that share it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    #[serde(rename = "Vhost")]
    pub vhost: String,
    /// In drove-gateway's order (each later app's hosts before the earlier ones', the
    /// controller's order within an app), without repeats, so templates render as they did
    /// there. [`App::same_routes`] compares them as a set.
    #[serde(rename = "Hosts")]
    pub hosts: Vec<Host>,
    #[serde(rename = "Tags")]
    pub tags: BTreeMap<String, String>,
    /// Keyed by the routing tag's value (lowercased), or by the vhost for untagged apps.
    #[serde(rename = "Groups")]
    pub groups: BTreeMap<String, HostGroup>,
}

fn sorted(hosts: &[Host]) -> Vec<&Host> {
    let mut v: Vec<&Host> = hosts.iter().collect();
    v.sort_unstable();
    v
}

impl App {
    /// Equal but for the order of hosts: a controller listing the same instances in another
    /// order changes nothing (drove-gateway reloaded for it).
    pub fn same_routes(&self, other: &App) -> bool {
        self.vhost == other.vhost
            && self.tags == other.tags
            && sorted(&self.hosts) == sorted(&other.hosts)
            && self.groups.len() == other.groups.len()
            && self
                .groups
                .iter()
                .zip(&other.groups)
                .all(|((n1, g1), (n2, g2))| n1 == n2 && g1.tags == g2.tags && sorted(&g1.hosts) == sorted(&g2.hosts))
    }
}

/// Both absent, or present with the same routes.
fn same_app(a: Option<&App>, b: Option<&App>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b || a.same_routes(b),
        (None, None) => true,
        _ => false,
    }
}

/// Keeps the first of each host, in order.
fn without_repeats(hosts: &mut Vec<Host>) {
    let mut seen = std::collections::HashSet::new();
    hosts.retain(|h| seen.insert(h.clone()));
}

/// The leader controller a namespace follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    #[serde(rename = "Endpoint")]
    pub endpoint: String,
    #[serde(rename = "Host")]
    pub host: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "Https", default)]
    pub https: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceView {
    #[serde(rename = "Leader")]
    pub leader: Option<Leader>,
    /// Keyed by lowercase vhost; written sorted.
    #[serde(rename = "Apps", with = "sorted_map")]
    pub apps: CowMap<App>,
}

mod sorted_map {
    use std::collections::BTreeMap;

    use gatehouse_model::CowMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<V: Serialize, S: Serializer>(map: &CowMap<V>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(map.sorted())
    }

    pub fn deserialize<'de, V: Deserialize<'de> + Clone, D: Deserializer<'de>>(d: D) -> Result<CowMap<V>, D::Error> {
        Ok(BTreeMap::<String, V>::deserialize(d)?.into_iter().collect())
    }
}

/// One namespace's route facts, keyed by vhost.
pub type Services = CowMap<Arc<ServiceSpec>>;

/// Counts drove-gateway exports as gauges.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    pub ignored_by_realm: usize,
    pub with_routing_tag: usize,
    pub without_routing_tag: usize,
}

/// An entry's vhost as routes see it (trimmed; compared without regard to case).
fn raw_vhost(entry: &ExposedApp) -> &str {
    entry.vhost.trim()
}

fn realm_accepts(settings: &NamespaceSettings, vhost: &str) -> bool {
    let no_filter = settings.realms.is_empty() && settings.realm_suffix.is_none();
    let suffix_matches = |suffix: &str| {
        let (v, s) = (vhost.as_bytes(), suffix.as_bytes());
        v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s)
    };
    no_filter
        || settings.realms.iter().any(|r| r.eq_ignore_ascii_case(vhost))
        || settings.realm_suffix.as_deref().is_some_and(suffix_matches)
}

fn routing_tag_value<'a>(settings: &NamespaceSettings, entry: &'a ExposedApp) -> Option<&'a str> {
    let key = settings.routing_tag.as_ref()?;
    entry.tags.as_ref()?.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// drove-gateway's counters over one `/endpoints` reply; allocates nothing.
pub fn read_stats(entries: &[ExposedApp], settings: &NamespaceSettings) -> BuildStats {
    let mut stats = BuildStats::default();
    for entry in entries.iter().filter(|e| !raw_vhost(e).is_empty()) {
        if !realm_accepts(settings, raw_vhost(entry)) {
            stats.ignored_by_realm += 1;
        } else if settings.routing_tag.is_some() {
            if routing_tag_value(settings, entry).is_some() {
                stats.with_routing_tag += 1;
            } else {
                stats.without_routing_tag += 1;
            }
        }
    }
    stats
}

/// Builds a namespace's apps from `/endpoints` entries (in the controller's appId order).
/// Vhosts listed with no healthy hosts are kept, so they answer 503 rather than 404.
pub fn build_apps(entries: &[ExposedApp], settings: &NamespaceSettings) -> CowMap<App> {
    let mut by_vhost: BTreeMap<String, Vec<&ExposedApp>> = BTreeMap::new();
    for entry in entries {
        let vhost = raw_vhost(entry);
        if !vhost.is_empty() && realm_accepts(settings, vhost) {
            by_vhost.entry(vhost.to_ascii_lowercase()).or_default().push(entry);
        }
    }
    by_vhost
        .into_iter()
        .map(|(vhost, group)| {
            let app = build_app(&vhost, group.into_iter(), settings);
            (vhost, app)
        })
        .collect()
}

/// The app of one vhost from the entries that name it (in appId order). The first app
/// seen wins a tag both define, as in drove-gateway; unlike it, groups get their own copy
/// of the tags.
fn build_app<'a>(vhost: &str, entries: impl Iterator<Item = &'a ExposedApp>, settings: &NamespaceSettings) -> App {
    let mut app = App { vhost: vhost.to_string(), ..App::default() };
    for entry in entries {
        let group_name = match routing_tag_value(settings, entry) {
            Some(value) => value.to_ascii_lowercase(),
            None => vhost.to_string(),
        };
        let group = app.groups.entry(group_name).or_default();
        let fresh: Vec<Host> = entry
            .hosts
            .iter()
            .map(|h| Host { host: h.host.clone(), port: h.port, port_type: h.port_type.to_ascii_lowercase() })
            .collect();
        // drove-gateway puts each later app's hosts first.
        group.hosts.splice(0..0, fresh.iter().cloned());
        app.hosts.splice(0..0, fresh);
        for (k, v) in entry.tags.iter().flatten() {
            app.tags.entry(k.clone()).or_insert_with(|| v.clone());
            group.tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    without_repeats(&mut app.hosts);
    for group in app.groups.values_mut() {
        without_repeats(&mut group.hosts);
    }
    app
}

/// The app of `vhost` (lowercase) in a whole reply, or none if no accepted entry names it.
pub fn rebuild_app(entries: &[ExposedApp], vhost: &str, settings: &NamespaceSettings) -> Option<App> {
    if !realm_accepts(settings, vhost) {
        return None;
    }
    let mut named = entries.iter().filter(|e| raw_vhost(e).eq_ignore_ascii_case(vhost)).peekable();
    named.peek()?;
    Some(build_app(vhost, named, settings))
}

/// The vhosts (lowercase) whose entries differ between two replies sorted by appId, or
/// `None` when more than `limit` do and rebuilding everything is cheaper.
pub fn changed_vhosts(old: &[ExposedApp], new: &[ExposedApp], limit: usize) -> Option<BTreeSet<String>> {
    let mut vhosts = BTreeSet::new();
    let note = |vhosts: &mut BTreeSet<String>, entry: &ExposedApp| {
        let vhost = raw_vhost(entry);
        if !vhost.is_empty() {
            vhosts.insert(vhost.to_ascii_lowercase());
        }
    };
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a.app_id == b.app_id => {
                if a != b {
                    note(&mut vhosts, a);
                    note(&mut vhosts, b);
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.app_id < b.app_id => {
                note(&mut vhosts, a);
                i += 1;
            }
            (Some(a), None) => {
                note(&mut vhosts, a);
                i += 1;
            }
            (_, Some(b)) => {
                note(&mut vhosts, b);
                j += 1;
            }
            (None, None) => break,
        }
        if vhosts.len() > limit {
            return None;
        }
    }
    Some(vhosts)
}

/// Right after a leader change a new controller lists apps it is still recreating as
/// absent; within the grace window such vanished vhosts keep their last known hosts. The
/// first read after the window decides. Returns the vhosts kept this way.
pub fn keep_vanished(previous: &CowMap<App>, fresh: &mut CowMap<App>) -> Vec<String> {
    let mut kept = Vec::new();
    for (vhost, app) in previous.iter() {
        if !fresh.contains_key(vhost) {
            fresh.insert(vhost.to_string(), app.clone());
            kept.push(vhost.to_string());
        }
    }
    kept.sort();
    kept
}

/// A namespace's view with the route facts made from it; clones share storage.
#[derive(Clone, Default)]
pub struct NamespaceState {
    pub view: NamespaceView,
    pub services: Services,
}

impl NamespaceState {
    pub fn new(settings: &NamespaceSettings, view: NamespaceView) -> Self {
        let mut state = NamespaceState::default();
        state.replace(settings, view);
        state
    }

    /// Replaces the view with `fresh`; returns the vhosts whose app or route facts changed.
    /// A vhost whose app (and leader, for `leader_vhost`) is unchanged keeps its spec, so
    /// the route table can keep the service.
    pub fn replace(&mut self, settings: &NamespaceSettings, fresh: NamespaceView) -> Vec<String> {
        let leader_changed = self.view.leader != fresh.leader;
        let old = std::mem::replace(&mut self.view, fresh);
        let leader_vhost = settings.leader_vhost.as_deref();
        let mut changed: Vec<String> = Vec::new();
        let mut reordered = Vec::new();
        for (vhost, app) in self.view.apps.iter() {
            let leader_moved = leader_changed && leader_vhost == Some(vhost);
            let before = old.apps.get(vhost);
            if leader_moved || !same_app(before, Some(app)) {
                changed.push(vhost.to_string());
            } else if before != Some(app) {
                reordered.push(vhost.to_string());
            }
        }
        // Only the order differs: keep the old one, so nothing downstream sees a change.
        for vhost in reordered {
            if let Some(app) = old.apps.get(&vhost) {
                self.view.apps.insert(vhost, app.clone());
            }
        }
        for (vhost, _) in old.apps.iter() {
            if !self.view.apps.contains_key(vhost) {
                changed.push(vhost.to_string());
            }
        }
        if let Some(vhost) = leader_vhost.filter(|v| leader_changed && !changed.iter().any(|c| c == v)) {
            changed.push(vhost.to_string());
        }
        for vhost in &changed {
            self.refresh_service(settings, vhost);
        }
        changed.sort_unstable();
        changed
    }

    /// Sets (or, with `None`, removes) the app of each vhost and rebuilds its route facts;
    /// returns the vhosts whose app or route facts changed.
    pub fn set_apps(
        &mut self,
        settings: &NamespaceSettings,
        updates: impl IntoIterator<Item = (String, Option<App>)>,
    ) -> Vec<String> {
        let mut changed = Vec::new();
        for (vhost, app) in updates {
            let app_changed = !same_app(app.as_ref(), self.view.apps.get(&vhost));
            match app {
                Some(app) if app_changed => self.view.apps.insert(vhost.clone(), app),
                None => self.view.apps.remove(&vhost),
                Some(_) => None,
            };
            if self.refresh_service(settings, &vhost) || app_changed {
                changed.push(vhost);
            }
        }
        changed
    }

    /// Rebuilds the route facts of one vhost from the view; returns whether they changed.
    fn refresh_service(&mut self, settings: &NamespaceSettings, vhost: &str) -> bool {
        let leader = self.view.leader.as_ref().filter(|_| settings.leader_vhost.as_deref() == Some(vhost));
        let app = self.view.apps.get(vhost);
        let spec = (app.is_some() || leader.is_some()).then(|| vhost_service(settings, vhost, leader, app));
        if spec.as_ref() == self.services.get(vhost).map(|s| &**s) {
            return false;
        }
        match spec {
            Some(spec) => self.services.insert(vhost.to_string(), Arc::new(spec)),
            None => self.services.remove(vhost),
        };
        true
    }
}

fn vhost_service(settings: &NamespaceSettings, vhost: &str, leader: Option<&Leader>, app: Option<&App>) -> ServiceSpec {
    let mut spec = ServiceSpec::new(vhost, format!("drove:{}", settings.name));
    match HostPattern::parse(vhost) {
        Ok(pattern) => spec.hosts.push(pattern),
        Err(e) => {
            tracing::warn!(namespace = %settings.name, vhost, error = %e, "a Drove vhost is not a valid host name; not routed")
        }
    }
    if let Some(leader) = leader {
        let scheme = if leader.https { Scheme::Https } else { Scheme::Http };
        spec.targets.push(TargetSpec { scheme, host: leader.host.clone(), port: leader.port, weight: 1 });
    }
    for host in app.map_or(&[][..], |a| &a.hosts) {
        let scheme = match host.port_type.as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            // TCP and UDP ports cannot carry HTTP routes.
            _ => continue,
        };
        let target = TargetSpec { scheme, host: host.host.clone(), port: host.port, weight: 1 };
        // App hosts are unique already; only the leader's address could repeat one.
        if leader.is_none() || !spec.targets.contains(&target) {
            spec.targets.push(target);
        }
    }
    spec
}

/// The route facts of one vhost over every namespace, in configuration order. A vhost
/// served by more than one namespace becomes one service with the targets of all (the
/// first namespace names the source); otherwise the namespace's spec is used as it is.
pub fn merge_vhost<'a>(vhost: &str, namespaces: impl IntoIterator<Item = &'a Services>) -> Option<Arc<ServiceSpec>> {
    let mut merged: Option<Arc<ServiceSpec>> = None;
    for spec in namespaces.into_iter().filter_map(|services| services.get(vhost)) {
        match &mut merged {
            None => merged = Some(spec.clone()),
            Some(first) => {
                let first = Arc::make_mut(first);
                for target in &spec.targets {
                    if !first.targets.contains(target) {
                        first.targets.push(target.clone());
                    }
                }
            }
        }
    }
    merged
}

/// Every vhost's route facts over every namespace, by vhost.
pub fn merge_namespaces(namespaces: &[&Services]) -> Vec<Arc<ServiceSpec>> {
    let vhosts: BTreeSet<&str> = namespaces.iter().flat_map(|s| s.iter().map(|(v, _)| v)).collect();
    vhosts.into_iter().filter_map(|v| merge_vhost(v, namespaces.iter().copied())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ExposedHost;

    fn settings() -> NamespaceSettings {
        NamespaceSettings { name: "stage".into(), ..NamespaceSettings::default() }
    }

    fn entry(app_id: &str, vhost: &str, hosts: &[(&str, u16, &str)], tags: &[(&str, &str)]) -> ExposedApp {
        ExposedApp {
            app_id: app_id.into(),
            vhost: vhost.into(),
            tags: if tags.is_empty() {
                None
            } else {
                Some(tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
            },
            hosts: hosts
                .iter()
                .map(|(h, p, t)| ExposedHost { host: h.to_string(), port: *p, port_type: t.to_string() })
                .collect(),
        }
    }

    fn keys(apps: &CowMap<App>) -> Vec<&str> {
        apps.sorted().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn apps_merge_by_vhost_with_first_tags_winning_and_sorted_hosts() {
        let entries = [
            entry("orders-7", "Orders.Local", &[("h2", 2, "HTTP"), ("h1", 1, "HTTP")], &[("team", "a"), ("v", "7")]),
            entry("orders-8", "orders.local", &[("h3", 3, "HTTPS"), ("h1", 1, "HTTP")], &[("v", "8"), ("new", "x")]),
            entry("idle-1", "idle.local", &[], &[]),
        ];
        let apps = build_apps(&entries, &settings());
        let orders = apps.get("orders.local").unwrap();
        let hosts: Vec<_> = orders.hosts.iter().map(|h| (h.host.as_str(), h.port_type.as_str())).collect();
        assert_eq!(hosts, [("h3", "https"), ("h1", "http"), ("h2", "http")], "drove-gateway's order, without repeats");
        assert_eq!(orders.tags["v"], "7", "the first app's tags win");
        assert_eq!(orders.tags["new"], "x");
        assert_eq!(orders.groups.keys().collect::<Vec<_>>(), ["orders.local"]);
        assert!(apps.get("idle.local").unwrap().hosts.is_empty(), "kept so it answers 503");
        assert_eq!(rebuild_app(&entries, "orders.local", &settings()).as_ref(), Some(orders));
        assert_eq!(rebuild_app(&entries, "gone.local", &settings()), None);
    }

    #[test]
    fn realm_and_suffix_each_filter_alone_or_together() {
        let entries = [
            entry("a-1", "a.example", &[], &[]),
            entry("b-1", "B.Apps.Example", &[], &[]),
            entry("c-1", "c.other", &[], &[]),
        ];
        let mut s = settings();
        s.realm_suffix = Some(".apps.example".into());
        assert_eq!(keys(&build_apps(&entries, &s)), ["b.apps.example"], "suffix alone filters (drove-gateway's bug)");
        assert_eq!(read_stats(&entries, &s).ignored_by_realm, 2);
        assert_eq!(rebuild_app(&entries, "c.other", &s), None, "one vhost is filtered as the whole reply is");
        s.realms = vec!["a.example".into()];
        assert_eq!(keys(&build_apps(&entries, &s)), ["a.example", "b.apps.example"]);
        s.realm_suffix = None;
        assert_eq!(keys(&build_apps(&entries, &s)), ["a.example"]);
    }

    #[test]
    fn routing_tag_splits_hosts_into_groups() {
        let entries = [
            entry("web-1", "web.local", &[("h1", 1, "HTTP")], &[("env", "Blue")]),
            entry("web-2", "web.local", &[("h2", 2, "HTTP")], &[("env", "green")]),
            entry("web-3", "web.local", &[("h3", 3, "HTTP")], &[]),
        ];
        let mut s = settings();
        s.routing_tag = Some("env".into());
        let apps = build_apps(&entries, &s);
        let web = apps.get("web.local").unwrap();
        assert_eq!(web.groups.keys().collect::<Vec<_>>(), ["blue", "green", "web.local"]);
        assert_eq!(web.groups["blue"].hosts[0].host, "h1");
        assert_eq!(web.groups["blue"].tags["env"], "Blue", "group tags are the group's own");
        assert_eq!(web.hosts.len(), 3);
        let stats = read_stats(&entries, &s);
        assert_eq!((stats.with_routing_tag, stats.without_routing_tag), (2, 1));
    }

    #[test]
    fn vanished_vhosts_are_kept_during_grace() {
        let before =
            build_apps(&[entry("a-1", "a", &[("h", 1, "HTTP")], &[]), entry("b-1", "b", &[], &[])], &settings());
        let mut after = build_apps(&[entry("b-1", "b", &[("h", 2, "HTTP")], &[])], &settings());
        assert_eq!(keep_vanished(&before, &mut after), ["a"]);
        assert_eq!(after.get("a"), before.get("a"));
        assert_eq!(after.get("b").unwrap().hosts[0].port, 2, "present vhosts take the fresh read");
    }

    #[test]
    fn changed_vhosts_come_from_the_entries_that_differ() {
        let old = [
            entry("a-1", "A", &[("h", 1, "HTTP")], &[]),
            entry("b-1", "b", &[("h", 2, "HTTP")], &[]),
            entry("c-1", "c", &[], &[]),
        ];
        let new = [
            entry("a-1", "a", &[("h", 1, "HTTP")], &[]),
            entry("b-1", "b2", &[("h", 2, "HTTP")], &[]),
            entry("d-1", "d", &[], &[]),
        ];
        let changed = changed_vhosts(&old, &new, 10).unwrap();
        assert_eq!(changed.into_iter().collect::<Vec<_>>(), ["a", "b", "b2", "c", "d"]);
        assert_eq!(changed_vhosts(&old, &old, 10).unwrap().len(), 0);
        assert!(changed_vhosts(&old, &new, 2).is_none(), "too many: rebuild everything");
    }

    #[test]
    fn route_facts_merge_namespaces_and_route_the_leader_vhost() {
        let apps1 = build_apps(&[entry("a-1", "a", &[("h1", 1, "HTTP"), ("t", 9, "TCP")], &[])], &settings());
        let apps2 = build_apps(&[entry("a-1", "a", &[("h2", 2, "HTTPS"), ("h1", 1, "HTTP")], &[])], &settings());
        let mut s1 = settings();
        s1.leader_vhost = Some("drove.stage".into());
        let leader = Leader { endpoint: "http://c1:4000".into(), host: "c1".into(), port: 4000, https: false };
        let n1 = NamespaceState::new(&s1, NamespaceView { leader: Some(leader), apps: apps1 });
        let s2 = NamespaceSettings { name: "other".into(), ..settings() };
        let n2 = NamespaceState::new(&s2, NamespaceView { leader: None, apps: apps2 });
        let specs = merge_namespaces(&[&n1.services, &n2.services]);
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "drove.stage"]);
        let urls: Vec<_> = specs[0].targets.iter().map(|t| t.url()).collect();
        assert_eq!(urls, ["http://h1:1", "https://h2:2"], "tcp skipped, duplicates merged");
        assert_eq!(specs[0].source, "drove:stage");
        assert_eq!(specs[1].targets[0].url(), "http://c1:4000");
        assert!(Arc::ptr_eq(&specs[1], n1.services.get("drove.stage").unwrap()), "one namespace's spec is used as is");
        assert_eq!(merge_vhost("nope", [&n1.services, &n2.services]), None);
    }

    #[test]
    fn a_reordered_reply_changes_nothing() {
        let s = settings();
        let read = |hosts: &[(&str, u16, &str)]| build_apps(&[entry("a-1", "a", hosts, &[])], &s);
        let mut state = NamespaceState::new(
            &s,
            NamespaceView { leader: None, apps: read(&[("h1", 1, "HTTP"), ("h2", 2, "HTTP")]) },
        );
        let before = state.view.apps.get("a").unwrap().clone();
        let reordered = NamespaceView { leader: None, apps: read(&[("h2", 2, "HTTP"), ("h1", 1, "HTTP")]) };
        assert!(state.replace(&s, reordered).is_empty());
        assert_eq!(state.view.apps.get("a"), Some(&before), "the old order is kept");
        let app = read(&[("h2", 2, "HTTP"), ("h1", 1, "HTTP")]).get("a").cloned();
        assert!(state.set_apps(&s, [("a".to_string(), app)]).is_empty());
        assert_eq!(state.view.apps.get("a"), Some(&before));
    }

    #[test]
    fn only_changed_vhosts_get_new_specs() {
        let mut s = settings();
        s.leader_vhost = Some("drove.stage".into());
        let leader = |port| Some(Leader { endpoint: String::new(), host: "c1".into(), port, https: false });
        let read = |b_hosts: &[(&str, u16, &str)]| {
            build_apps(&[entry("a-1", "a", &[("h1", 1, "HTTP")], &[]), entry("b-1", "b", b_hosts, &[])], &s)
        };
        let first = NamespaceView { leader: leader(4000), apps: read(&[("h2", 2, "HTTP")]) };
        let before = NamespaceState::new(&s, first.clone());
        let mut state = before.clone();
        assert!(state.replace(&s, first.clone()).is_empty(), "the same view changes nothing");

        let changed = state
            .replace(&s, NamespaceView { leader: leader(4000), apps: read(&[("h2", 2, "HTTP"), ("h3", 3, "HTTP")]) });
        assert_eq!(changed, ["b"]);
        let spec = |st: &NamespaceState, v: &str| st.services.get(v).unwrap().clone();
        assert!(Arc::ptr_eq(&spec(&state, "a"), &spec(&before, "a")));
        assert_eq!(spec(&state, "b").targets.len(), 2);
        assert_eq!(spec(&before, "b").targets.len(), 1, "clones do not see later changes");

        let apps = state.view.apps.clone();
        assert_eq!(state.replace(&s, NamespaceView { leader: leader(4001), apps }), ["drove.stage"]);
        assert_eq!(spec(&state, "drove.stage").targets[0].port, 4001);

        let mut tagged = state.view.apps.get("a").unwrap().clone();
        tagged.tags.insert("team".into(), "x".into());
        assert_eq!(state.set_apps(&s, [("a".to_string(), Some(tagged))]), ["a"], "a view change counts");
        assert_eq!(state.set_apps(&s, [("b".to_string(), None)]), ["b"]);
        assert!(state.services.get("b").is_none() && state.view.apps.get("b").is_none());
        assert_eq!(state.set_apps(&s, [("zz".to_string(), None)]), Vec::<String>::new());
    }
}
