//! The backends and servers the routes ask HAProxy for, named as drove-gateway names them.

use std::collections::BTreeSet;

use super::plan::{Wanted, WantedServer};
use crate::data::{AppData, HostData, RenderingData};

/// `vhost`, or `vhost<sep><group>` when the namespace routes by tag and the suffix is on.
pub fn backend_name(data: &RenderingData, app: &AppData, group: &str) -> String {
    if data.haproxy_backend_include_routing_tag_suffix && !app.routing_tag_key.is_empty() {
        format!("{}{}{group}", app.vhost, data.haproxy_backend_name_separator)
    } else {
        app.vhost.clone()
    }
}

/// `<prefix><sep><host, ':' replaced by sep><sep><port>`: keyed on the host name, so a new
/// IP for the same host is a move, not a new server.
pub fn server_name(data: &RenderingData, host: &HostData) -> String {
    let sep = &data.haproxy_server_name_host_port_separator;
    format!("{}{sep}{}{sep}{}", data.haproxy_server_name_prefix, host.host.replace(':', sep), host.port)
}

/// Groups whose hosts are all HTTP(S), as drove-gateway requires, with their backend names.
fn routable(data: &RenderingData) -> impl Iterator<Item = (String, &HostData)> {
    data.apps.values().flat_map(move |app| {
        app.groups
            .iter()
            .filter(|(_, g)| {
                !g.hosts.is_empty() && g.hosts.iter().all(|h| h.port_type == "http" || h.port_type == "https")
            })
            .flat_map(move |(group, g)| {
                let backend = backend_name(data, app, group);
                g.hosts.iter().map(move |h| (backend.clone(), h))
            })
    })
}

/// The backend names a config for `data` has; when they change, HAProxy needs a reload.
pub fn backend_names(data: &RenderingData) -> BTreeSet<String> {
    routable(data).map(|(backend, _)| backend).collect()
}

/// Every wanted server; `address` turns a host into an IP (`None`: unknown, so an existing
/// server of that name is left as it is and none is added).
pub fn wanted(data: &RenderingData, mut address: impl FnMut(&str) -> Option<String>) -> Wanted {
    let mut wanted = Wanted::new();
    for (backend, host) in routable(data) {
        let servers = wanted.entry(backend).or_default();
        let name = server_name(data, host);
        if servers.iter().any(|s: &WantedServer| s.name == name) {
            continue;
        }
        servers.push(WantedServer {
            name,
            addr: address(&host.host),
            port: u16::try_from(host.port).unwrap_or(0),
            https: host.port_type == "https",
        });
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::GroupData;

    fn data(include_suffix: bool) -> RenderingData {
        let host = |h: &str, port, t: &str| HostData { host: h.into(), port, port_type: t.into() };
        let mut d = RenderingData {
            haproxy_server_name_prefix: "server".into(),
            haproxy_server_name_host_port_separator: "_".into(),
            haproxy_backend_name_separator: "-".into(),
            haproxy_backend_include_routing_tag_suffix: include_suffix,
            ..Default::default()
        };
        d.add_app(AppData {
            id: "web.test".into(),
            vhost: "web.test".into(),
            routing_tag_key: "env".into(),
            groups: [
                (
                    "blue".to_string(),
                    GroupData { hosts: vec![host("exec-1.local", 31000, "http")], ..Default::default() },
                ),
                ("green".to_string(), GroupData { hosts: vec![host("fd00::1", 31001, "https")], ..Default::default() }),
                (
                    "mixed".to_string(),
                    GroupData { hosts: vec![host("h", 1, "http"), host("h", 2, "tcp")], ..Default::default() },
                ),
            ]
            .into(),
            ..Default::default()
        });
        d
    }

    #[test]
    fn names_follow_drove_gateway() {
        let with = data(true);
        assert_eq!(
            backend_names(&with).into_iter().collect::<Vec<_>>(),
            ["web.test-blue", "web.test-green"],
            "tcp groups are skipped"
        );
        assert_eq!(
            backend_names(&data(false)).into_iter().collect::<Vec<_>>(),
            ["web.test"],
            "groups merge without the suffix"
        );
        let w = wanted(&with, |h| (h != "exec-1.local").then(|| h.to_string()));
        assert_eq!(w["web.test-blue"][0].name, "server_exec-1.local_31000");
        assert_eq!(w["web.test-blue"][0].addr, None, "unresolved: leave what HAProxy has");
        assert_eq!(w["web.test-green"][0].name, "server_fd00__1_31001");
        assert!(w["web.test-green"][0].https);
    }
}
