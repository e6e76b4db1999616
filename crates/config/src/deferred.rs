//! drove-gateway keys whose engine or source this build does not have yet: accepted so a
//! `nixy.toml` loads, and named in a warning so nobody thinks they took effect.

/// `(key, what it belongs to)`.
pub(crate) const DEFERRED_KEYS: &[(&str, &str)] = &[
    ("disk_io_timeout_sec", "drove-gateway's blocking state-file reads (Gatehouse writes the state in the background and never waits on it)"),
    ("haproxy_disable_large_backend_count_optimisation", "drove-gateway's per-backend state reads (Gatehouse reads only the backends that changed)"),
    // Keys drove-gateway 2.1 itself ignores (single-cluster and Marathon eras).
    ("drove", "drove-gateway's single-cluster era (use [[namespaces]])"),
    ("user", "drove-gateway's single-cluster era (use [[namespaces]])"),
    ("pass", "drove-gateway's single-cluster era (use [[namespaces]])"),
    ("access_token", "drove-gateway's single-cluster era (use [[namespaces]])"),
    ("realm", "drove-gateway's single-cluster era (use [[namespaces]])"),
    ("realm_suffix", "drove-gateway's single-cluster era (use [[namespaces]])"),
    ("routing_tag", "drove-gateway's single-cluster era (use [[namespaces]])"),
    ("leader_vhost", "drove-gateway's single-cluster era (use [[namespaces]])"),
    ("statsd", "drove-gateway's statsd output, which 2.1 also ignores"),
    ("traefiklabel", "the Marathon era, which drove-gateway 2.1 also ignores"),
    ("traefikbackend", "the Marathon era, which drove-gateway 2.1 also ignores"),
];
