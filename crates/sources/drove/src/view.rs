//! Pure logic: controller entries -> a namespace's view (realm filter, merge by vhost,
//! routing-tag groups), the failover grace rule, and the merged view -> route facts.
//!
//! Field names in JSON follow drove-gateway's `App`/`Host`/`HostGroup`, which templates and
//! its state file use.

use std::collections::BTreeMap;

use gatehouse_config::NamespaceSettings;
use gatehouse_model::{HostPattern, Scheme, ServiceSpec, TargetSpec};
use serde::{Deserialize, Serialize};

use crate::api::ExposedApp;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// Sorted, without duplicates, so that a reordered reply is not a change.
    #[serde(rename = "Hosts")]
    pub hosts: Vec<Host>,
    #[serde(rename = "Tags")]
    pub tags: BTreeMap<String, String>,
    /// Keyed by the routing tag's value (lowercased), or by the vhost for untagged apps.
    #[serde(rename = "Groups")]
    pub groups: BTreeMap<String, HostGroup>,
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
    /// Keyed by lowercase vhost.
    #[serde(rename = "Apps")]
    pub apps: BTreeMap<String, App>,
}

/// Counts drove-gateway exports as gauges.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    pub ignored_by_realm: usize,
    pub with_routing_tag: usize,
    pub without_routing_tag: usize,
}

fn realm_accepts(settings: &NamespaceSettings, vhost: &str) -> bool {
    let no_filter = settings.realms.is_empty() && settings.realm_suffix.is_none();
    no_filter
        || settings.realms.iter().any(|r| r == vhost)
        || settings.realm_suffix.as_deref().is_some_and(|s| vhost.ends_with(s))
}

/// Builds a namespace's apps from `/endpoints` entries (in the controller's appId order).
/// Vhosts listed with no healthy hosts are kept, so they answer 503 rather than 404.
pub fn build_apps(entries: &[ExposedApp], settings: &NamespaceSettings) -> (BTreeMap<String, App>, BuildStats) {
    let mut apps: BTreeMap<String, App> = BTreeMap::new();
    let mut stats = BuildStats::default();
    for entry in entries {
        let vhost = entry.vhost.trim().to_ascii_lowercase();
        if vhost.is_empty() {
            continue;
        }
        if !realm_accepts(settings, &vhost) {
            stats.ignored_by_realm += 1;
            continue;
        }
        let tags = entry.tags.clone().unwrap_or_default();
        let tag_value = settings
            .routing_tag
            .as_ref()
            .and_then(|key| tags.get(key))
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty());
        if settings.routing_tag.is_some() {
            if tag_value.is_some() {
                stats.with_routing_tag += 1;
            } else {
                stats.without_routing_tag += 1;
            }
        }
        let group_name = tag_value.unwrap_or_else(|| vhost.clone());
        let hosts: Vec<Host> = entry
            .hosts
            .iter()
            .map(|h| Host { host: h.host.clone(), port: h.port, port_type: h.port_type.to_ascii_lowercase() })
            .collect();
        let app = apps.entry(vhost.clone()).or_insert_with(|| App { vhost: vhost.clone(), ..App::default() });
        app.hosts.extend(hosts.iter().cloned());
        // The first app seen (lowest appId) wins a tag both define, as in drove-gateway;
        // unlike it, groups get their own copy of the tags.
        for (k, v) in &tags {
            app.tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let group = app.groups.entry(group_name).or_default();
        group.hosts.extend(hosts);
        for (k, v) in tags {
            group.tags.entry(k).or_insert(v);
        }
    }
    for app in apps.values_mut() {
        app.hosts.sort();
        app.hosts.dedup();
        for group in app.groups.values_mut() {
            group.hosts.sort();
            group.hosts.dedup();
        }
    }
    (apps, stats)
}

/// Right after a leader change a new controller lists apps it is still recreating as
/// absent; within the grace window such vanished vhosts keep their last known hosts. The
/// first read after the window decides. Returns the vhosts kept this way.
pub fn keep_vanished(previous: &BTreeMap<String, App>, fresh: &mut BTreeMap<String, App>) -> Vec<String> {
    let mut kept = Vec::new();
    for (vhost, app) in previous {
        if !fresh.contains_key(vhost) {
            fresh.insert(vhost.clone(), app.clone());
            kept.push(vhost.clone());
        }
    }
    kept
}

/// The route facts of every namespace's view: one service per vhost (namespaces sharing a
/// vhost are merged, in configuration order) and one per `leader_vhost`.
pub fn services<'a>(views: impl IntoIterator<Item = (&'a NamespaceSettings, &'a NamespaceView)>) -> Vec<ServiceSpec> {
    let mut by_vhost: BTreeMap<String, ServiceSpec> = BTreeMap::new();
    for (settings, view) in views {
        if let (Some(vhost), Some(leader)) = (&settings.leader_vhost, &view.leader) {
            let spec = by_vhost.entry(vhost.clone()).or_insert_with(|| new_service(vhost, &settings.name));
            let scheme = if leader.https { Scheme::Https } else { Scheme::Http };
            push_target(spec, scheme, &leader.host, leader.port);
        }
        for (vhost, app) in &view.apps {
            let spec = by_vhost.entry(vhost.clone()).or_insert_with(|| new_service(vhost, &settings.name));
            for host in &app.hosts {
                let scheme = match host.port_type.as_str() {
                    "http" => Scheme::Http,
                    "https" => Scheme::Https,
                    // TCP and UDP ports cannot carry HTTP routes.
                    _ => continue,
                };
                push_target(spec, scheme, &host.host, host.port);
            }
        }
    }
    by_vhost.into_values().collect()
}

fn new_service(vhost: &str, namespace: &str) -> ServiceSpec {
    let mut spec = ServiceSpec::new(vhost, format!("drove:{namespace}"));
    match HostPattern::parse(vhost) {
        Ok(pattern) => spec.hosts.push(pattern),
        Err(e) => tracing::warn!(namespace, vhost, error = %e, "a Drove vhost is not a valid host name; not routed"),
    }
    spec
}

fn push_target(spec: &mut ServiceSpec, scheme: Scheme, host: &str, port: u16) {
    let target = TargetSpec { scheme, host: host.to_string(), port, weight: 1 };
    if !spec.targets.contains(&target) {
        spec.targets.push(target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ExposedHost;
    use gatehouse_config::Credentials;

    fn settings() -> NamespaceSettings {
        NamespaceSettings {
            name: "stage".into(),
            controllers: Vec::new(),
            credentials: Credentials::None,
            realms: Vec::new(),
            realm_suffix: None,
            routing_tag: None,
            leader_vhost: None,
        }
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

    #[test]
    fn apps_merge_by_vhost_with_first_tags_winning_and_sorted_hosts() {
        let entries = [
            entry("orders-7", "Orders.Local", &[("h2", 2, "HTTP"), ("h1", 1, "HTTP")], &[("team", "a"), ("v", "7")]),
            entry("orders-8", "orders.local", &[("h3", 3, "HTTPS"), ("h1", 1, "HTTP")], &[("v", "8"), ("new", "x")]),
            entry("idle-1", "idle.local", &[], &[]),
        ];
        let (apps, _) = build_apps(&entries, &settings());
        let orders = &apps["orders.local"];
        let hosts: Vec<_> = orders.hosts.iter().map(|h| (h.host.as_str(), h.port_type.as_str())).collect();
        assert_eq!(hosts, [("h1", "http"), ("h2", "http"), ("h3", "https")]);
        assert_eq!(orders.tags["v"], "7", "the first app's tags win");
        assert_eq!(orders.tags["new"], "x");
        assert_eq!(orders.groups.keys().collect::<Vec<_>>(), ["orders.local"]);
        assert!(apps["idle.local"].hosts.is_empty(), "kept so it answers 503");
    }

    #[test]
    fn realm_and_suffix_each_filter_alone_or_together() {
        let entries = [
            entry("a-1", "a.example", &[], &[]),
            entry("b-1", "b.apps.example", &[], &[]),
            entry("c-1", "c.other", &[], &[]),
        ];
        let mut s = settings();
        s.realm_suffix = Some(".apps.example".into());
        let (apps, stats) = build_apps(&entries, &s);
        assert_eq!(apps.keys().collect::<Vec<_>>(), ["b.apps.example"], "suffix alone filters (drove-gateway's bug)");
        assert_eq!(stats.ignored_by_realm, 2);
        s.realms = vec!["a.example".into()];
        let (apps, _) = build_apps(&entries, &s);
        assert_eq!(apps.keys().collect::<Vec<_>>(), ["a.example", "b.apps.example"]);
        s.realm_suffix = None;
        let (apps, _) = build_apps(&entries, &s);
        assert_eq!(apps.keys().collect::<Vec<_>>(), ["a.example"]);
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
        let (apps, stats) = build_apps(&entries, &s);
        let web = &apps["web.local"];
        assert_eq!(web.groups.keys().collect::<Vec<_>>(), ["blue", "green", "web.local"]);
        assert_eq!(web.groups["blue"].hosts[0].host, "h1");
        assert_eq!(web.groups["blue"].tags["env"], "Blue", "group tags are the group's own");
        assert_eq!(web.hosts.len(), 3);
        assert_eq!((stats.with_routing_tag, stats.without_routing_tag), (2, 1));
    }

    #[test]
    fn vanished_vhosts_are_kept_during_grace() {
        let (before, _) =
            build_apps(&[entry("a-1", "a", &[("h", 1, "HTTP")], &[]), entry("b-1", "b", &[], &[])], &settings());
        let (mut after, _) = build_apps(&[entry("b-1", "b", &[("h", 2, "HTTP")], &[])], &settings());
        assert_eq!(keep_vanished(&before, &mut after), ["a"]);
        assert_eq!(after["a"], before["a"]);
        assert_eq!(after["b"].hosts[0].port, 2, "present vhosts take the fresh read");
    }

    #[test]
    fn services_merge_namespaces_and_route_the_leader_vhost() {
        let (apps1, _) = build_apps(&[entry("a-1", "a", &[("h1", 1, "HTTP"), ("t", 9, "TCP")], &[])], &settings());
        let (apps2, _) = build_apps(&[entry("a-1", "a", &[("h2", 2, "HTTPS"), ("h1", 1, "HTTP")], &[])], &settings());
        let mut s1 = settings();
        s1.leader_vhost = Some("drove.stage".into());
        let leader = Leader { endpoint: "http://c1:4000".into(), host: "c1".into(), port: 4000, https: false };
        let v1 = NamespaceView { leader: Some(leader), apps: apps1 };
        let v2 = NamespaceView { leader: None, apps: apps2 };
        let s2 = NamespaceSettings { name: "other".into(), ..settings() };
        let specs = services([(&s1, &v1), (&s2, &v2)]);
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "drove.stage"]);
        let urls: Vec<_> = specs[0].targets.iter().map(|t| t.url()).collect();
        assert_eq!(urls, ["http://h1:1", "https://h2:2"], "tcp skipped, duplicates merged");
        assert_eq!(specs[0].source, "drove:stage");
        assert_eq!(specs[1].targets[0].url(), "http://c1:4000");
    }
}
