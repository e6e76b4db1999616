//! The root `.` of a template: drove-gateway 2.1's `RenderingData`, field for field, so its
//! templates render unchanged. Maps are ranged in key order, as Go does.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RenderingData {
    pub xproxy: String,
    pub proxy_platform: String,
    pub left_delimiter: String,
    pub right_delimiter: String,
    pub nginx_max_fails_upstream: i64,
    pub nginx_fail_timeout_upstream: String,
    pub nginx_slow_start_upstream: String,
    pub haproxy_socket_addr: String,
    pub haproxy_add_server_attributes_string: String,
    #[serde(rename = "HaproxyAddServerSSLAttributesString")]
    pub haproxy_add_server_ssl_attributes_string: String,
    pub haproxy_server_name_prefix: String,
    pub haproxy_server_name_host_port_separator: String,
    pub haproxy_backend_name_separator: String,
    pub haproxy_backend_include_routing_tag_suffix: bool,
    /// Keyed by namespace name.
    pub namespaces: BTreeMap<String, NamespaceData>,
    /// Keyed by lowercase vhost.
    pub apps: BTreeMap<String, AppData>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NamespaceData {
    #[serde(rename = "LeaderVHost")]
    pub leader_vhost: String,
    pub leader: LeaderData,
    pub routing_tag: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LeaderData {
    pub endpoint: String,
    pub host: String,
    pub port: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostData {
    pub host: String,
    pub port: i64,
    /// `http`, `https`, `tcp` or `udp`.
    pub port_type: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupData {
    pub hosts: Vec<HostData>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AppData {
    /// The vhost, as drove-gateway sets it.
    #[serde(rename = "ID")]
    pub id: String,
    pub vhost: String,
    pub hosts: Vec<HostData>,
    pub tags: BTreeMap<String, String>,
    pub groups: BTreeMap<String, GroupData>,
    pub routing_tag_key: String,
}

impl RenderingData {
    /// Adds one source's app for a vhost. A vhost served by several namespaces becomes one
    /// app: hosts and group hosts appended without repeats, tags and group tags merged with
    /// the later source winning, and its routing tag key (drove-gateway's merge, made
    /// deterministic by the caller's order).
    pub fn add_app(&mut self, app: AppData) {
        let Some(existing) = self.apps.get_mut(&app.vhost) else {
            self.apps.insert(app.vhost.clone(), app);
            return;
        };
        append_new(&mut existing.hosts, app.hosts);
        existing.tags.extend(app.tags);
        for (name, group) in app.groups {
            let mine = existing.groups.entry(name).or_default();
            append_new(&mut mine.hosts, group.hosts);
            mine.tags.extend(group.tags);
        }
        existing.routing_tag_key = app.routing_tag_key;
    }
}

fn append_new(hosts: &mut Vec<HostData>, more: Vec<HostData>) {
    for host in more {
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str, port: i64) -> HostData {
        HostData { host: h.into(), port, port_type: "http".into() }
    }

    fn app(vhost: &str, hosts: Vec<HostData>, tag: (&str, &str)) -> AppData {
        let tags = BTreeMap::from([(tag.0.to_string(), tag.1.to_string())]);
        AppData {
            id: vhost.into(),
            vhost: vhost.into(),
            groups: BTreeMap::from([(vhost.to_string(), GroupData { hosts: hosts.clone(), tags: tags.clone() })]),
            hosts,
            tags,
            routing_tag_key: String::new(),
        }
    }

    #[test]
    fn apps_of_one_vhost_merge() {
        let mut data = RenderingData::default();
        data.add_app(app("a", vec![host("h1", 1)], ("v", "1")));
        data.add_app(app("a", vec![host("h2", 2), host("h1", 1)], ("v", "2")));
        data.add_app(app("b", vec![host("h3", 3)], ("v", "3")));
        let a = &data.apps["a"];
        assert_eq!(a.hosts, [host("h1", 1), host("h2", 2)]);
        assert_eq!(a.groups["a"].hosts.len(), 2);
        assert_eq!(a.tags["v"], "2", "the later source wins, as in drove-gateway");
        let json = serde_json::to_string(&data).unwrap();
        for field in [
            "\"Xproxy\"",
            "\"LeftDelimiter\"",
            "\"HaproxyAddServerSSLAttributesString\"",
            "\"ID\":\"a\"",
            "\"PortType\"",
        ] {
            assert!(json.contains(field), "{field} in {json}");
        }
    }
}
