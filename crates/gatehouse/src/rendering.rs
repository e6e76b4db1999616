//! What nginx and HAProxy templates see: drove-gateway's `RenderingData`, filled from the
//! configuration, the Drove views (namespaces in configuration order), the file's
//! `[[services]]` and the deployed services.

use std::sync::Arc;

use gatehouse_config::{Config, NamespaceSettings, ProxyPlatform, TemplatedSettings};
use gatehouse_drove::{view::App, NamespaceView};
use gatehouse_model::{HostPattern, Scheme, ServiceSpec};
use gatehouse_templated::{AppData, GroupData, HostData, LeaderData, NamespaceData, RenderingData};

/// `namespaces` are the Drove namespaces in configuration order, each with its view if it
/// has one yet.
pub fn rendering_data(
    config: &Config,
    deployed: &[Arc<ServiceSpec>],
    settings: &TemplatedSettings,
    xproxy: &str,
    namespaces: &[(&NamespaceSettings, Option<NamespaceView>)],
) -> RenderingData {
    let h = &settings.haproxy;
    let mut data = RenderingData {
        xproxy: xproxy.to_string(),
        proxy_platform: match config.proxy_platform {
            ProxyPlatform::Haproxy => "haproxy",
            _ => "nginx",
        }
        .into(),
        left_delimiter: settings.left_delimiter.clone(),
        right_delimiter: settings.right_delimiter.clone(),
        nginx_max_fails_upstream: settings.nginx_max_fails,
        nginx_fail_timeout_upstream: settings.nginx_fail_timeout.clone(),
        nginx_slow_start_upstream: settings.nginx_slow_start.clone(),
        haproxy_socket_addr: h.socket_addr.clone(),
        haproxy_add_server_attributes_string: h.add_server_attributes.clone(),
        haproxy_add_server_ssl_attributes_string: h.add_server_ssl_attributes.clone(),
        haproxy_server_name_prefix: h.server_name_prefix.clone(),
        haproxy_server_name_host_port_separator: h.server_name_host_port_separator.clone(),
        haproxy_backend_name_separator: h.backend_name_separator.clone(),
        haproxy_backend_include_routing_tag_suffix: h.backend_include_routing_tag_suffix,
        ..Default::default()
    };
    for service in config.services.iter().chain(deployed.iter().map(|s| &**s)) {
        // Templates route by whole vhosts: a service on a path prefix or a wildcard has no
        // drove-gateway shape.
        if service.path_prefixes != ["/"] {
            continue;
        }
        let hosts: Vec<HostData> = service
            .targets
            .iter()
            .map(|t| HostData {
                host: t.host.clone(),
                port: i64::from(t.port),
                port_type: if t.scheme == Scheme::Https { "https" } else { "http" }.into(),
            })
            .collect();
        for host in &service.hosts {
            if let HostPattern::Exact(vhost) = host {
                let group = GroupData { hosts: hosts.clone(), ..Default::default() };
                data.add_app(AppData {
                    id: vhost.clone(),
                    vhost: vhost.clone(),
                    hosts: hosts.clone(),
                    groups: [(vhost.clone(), group)].into(),
                    ..Default::default()
                });
            }
        }
    }
    for (ns, view) in namespaces {
        let leader = view.as_ref().and_then(|v| v.leader.as_ref());
        data.namespaces.insert(
            ns.name.clone(),
            NamespaceData {
                leader_vhost: ns.leader_vhost.clone().unwrap_or_default(),
                leader: leader.map_or_else(LeaderData::default, |l| LeaderData {
                    endpoint: l.endpoint.clone(),
                    host: l.host.clone(),
                    port: i64::from(l.port),
                }),
                routing_tag: ns.routing_tag.clone().unwrap_or_default(),
            },
        );
        let Some(view) = view else { continue };
        for (_, app) in view.apps.sorted() {
            // drove-gateway drops apps without hosts: an empty upstream fails nginx's check.
            if !app.hosts.is_empty() {
                data.add_app(app_data(app, ns.routing_tag.as_deref()));
            }
        }
    }
    data
}

fn hosts(hosts: &[gatehouse_drove::view::Host]) -> Vec<HostData> {
    hosts
        .iter()
        .map(|h| HostData { host: h.host.clone(), port: i64::from(h.port), port_type: h.port_type.clone() })
        .collect()
}

fn app_data(app: &App, routing_tag: Option<&str>) -> AppData {
    AppData {
        id: app.vhost.clone(),
        vhost: app.vhost.clone(),
        hosts: hosts(&app.hosts),
        tags: app.tags.clone(),
        groups: app
            .groups
            .iter()
            .map(|(name, g)| (name.clone(), GroupData { hosts: hosts(&g.hosts), tags: g.tags.clone() }))
            .collect(),
        routing_tag_key: routing_tag.unwrap_or_default().to_string(),
    }
}
