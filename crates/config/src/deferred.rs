//! drove-gateway keys whose engine or source this build does not have yet: accepted so a
//! `nixy.toml` loads, and named in a warning so nobody thinks they took effect.

/// `(key, what it belongs to)`.
pub(crate) const DEFERRED_KEYS: &[(&str, &str)] = &[
    ("namespaces", "the Drove source"),
    ("event_refresh_interval_sec", "the Drove source"),
    ("api_timeout", "the Drove source"),
    ("startup_controller_sync_tries", "the Drove source"),
    (
        "startup_controller_sync_retry_delay_sec",
        "the Drove source",
    ),
    ("state_persistence_enabled", "the Drove source"),
    ("state_persistence_dir", "the Drove source"),
    ("disk_io_timeout_sec", "the Drove source"),
    (
        "dns_resolution_timeout_sec",
        "the nginx and HAProxy engines",
    ),
    (
        "proxy_control_plane_timeout_sec",
        "the nginx and HAProxy engines",
    ),
    ("left_delimiter", "the nginx and HAProxy engines"),
    ("right_delimiter", "the nginx and HAProxy engines"),
    ("port_use_tls", "admin API TLS"),
    ("port_tls_certfile", "admin API TLS"),
    ("port_tls_keyfile", "admin API TLS"),
    ("nginx_config", "the nginx engine"),
    ("nginx_template", "the nginx engine"),
    ("nginx_cmd", "the nginx engine"),
    ("nginx_ignore_check", "the nginx engine"),
    ("nginx_reload_disabled", "the nginx engine"),
    ("nginxplusapiaddr", "the nginx engine"),
    ("nginx_max_fails", "the nginx engine"),
    ("nginx_fail_timeout", "the nginx engine"),
    ("nginx_slow_start", "the nginx engine"),
    ("maxfailsupstream", "the nginx engine"),
    ("failtimeoutupstream", "the nginx engine"),
    ("slowstartupstream", "the nginx engine"),
    ("haproxysocketaddr", "the HAProxy engine"),
    ("haproxy_config", "the HAProxy engine"),
    ("haproxy_template", "the HAProxy engine"),
    ("haproxy_cmd", "the HAProxy engine"),
    ("haproxy_reload_cmd", "the HAProxy engine"),
    ("haproxy_ignore_check", "the HAProxy engine"),
    ("haproxy_reload_disabled", "the HAProxy engine"),
    (
        "haproxy_disable_large_backend_count_optimisation",
        "the HAProxy engine",
    ),
    ("haproxy_server_name_prefix", "the HAProxy engine"),
    (
        "haproxy_server_name_host_port_delimiter",
        "the HAProxy engine",
    ),
    ("haproxy_backend_name_separator", "the HAProxy engine"),
    (
        "haproxy_backend_include_routing_tag_suffix",
        "the HAProxy engine",
    ),
    ("haproxy_add_server_attributes_string", "the HAProxy engine"),
    (
        "haproxy_add_server_ssl_attributes_string",
        "the HAProxy engine",
    ),
    (
        "haproxy_manage_global_server_state_file",
        "the HAProxy engine",
    ),
    (
        "haproxy_global_server_state_file_path",
        "the HAProxy engine",
    ),
    // Keys drove-gateway 2.1 itself ignores (single-cluster and Marathon eras).
    (
        "drove",
        "drove-gateway's single-cluster era (use [[namespaces]])",
    ),
    (
        "user",
        "drove-gateway's single-cluster era (use [[namespaces]])",
    ),
    (
        "pass",
        "drove-gateway's single-cluster era (use [[namespaces]])",
    ),
    (
        "access_token",
        "drove-gateway's single-cluster era (use [[namespaces]])",
    ),
    (
        "realm",
        "drove-gateway's single-cluster era (use [[namespaces]])",
    ),
    (
        "realm_suffix",
        "drove-gateway's single-cluster era (use [[namespaces]])",
    ),
    (
        "routing_tag",
        "drove-gateway's single-cluster era (use [[namespaces]])",
    ),
    (
        "leader_vhost",
        "drove-gateway's single-cluster era (use [[namespaces]])",
    ),
    (
        "statsd",
        "drove-gateway's statsd output, which 2.1 also ignores",
    ),
    (
        "traefiklabel",
        "the Marathon era, which drove-gateway 2.1 also ignores",
    ),
    (
        "traefikbackend",
        "the Marathon era, which drove-gateway 2.1 also ignores",
    ),
];
