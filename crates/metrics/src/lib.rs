//! The one catalogue of Gatehouse's Prometheus metrics: every name, label and bucket layout
//! is defined here, and nowhere else.
//!
//! Families are looked up by label once, when a route table is installed
//! ([`Metrics::service`]); the request path then only touches atomics.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Metric names, without the `gatehouse_` prefix the registry adds (and without `_total`,
/// which OpenMetrics encoding appends to counters).
pub mod names {
    pub const REQUESTS: &str = "requests";
    pub const UPSTREAM_RESPONSE_SECONDS: &str = "upstream_response_seconds";
    pub const PROXY_ERRORS: &str = "proxy_errors";
    pub const OPEN_CONNECTIONS: &str = "open_connections";
    pub const OPEN_WEBSOCKETS: &str = "open_websockets";
    pub const ROUTE_TABLE_GENERATION: &str = "route_table_generation";
    pub const RELOADS: &str = "reloads";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    code_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        // 0.5 ms .. ~16 s.
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    }
}

const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Label used for requests that matched no service.
pub const NO_SERVICE: &str = "";

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_latency: Family<ServiceLabels, Histogram, LatencyBuckets>,
    proxy_errors: Family<KindLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    pub open_connections: Gauge,
    pub open_websockets: Gauge,
    pub route_table_generation: Gauge,
}

/// Handles for one service, resolved once per route table.
#[derive(Clone)]
pub struct ServiceMetrics {
    by_class: [Counter; 5],
    upstream_latency: Histogram,
}

impl ServiceMetrics {
    pub fn record_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
    }

    pub fn record_upstream_latency(&self, seconds: f64) {
        self.upstream_latency.observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("gatehouse");
        let requests = Family::default();
        registry.register(names::REQUESTS, "Requests answered, by service and status class", requests.clone());
        let upstream_latency = Family::new_with_constructor(LatencyBuckets);
        registry.register(
            names::UPSTREAM_RESPONSE_SECONDS,
            "Time from sending a request upstream to its response head, by service",
            upstream_latency.clone(),
        );
        let proxy_errors = Family::default();
        registry.register(
            names::PROXY_ERRORS,
            "Requests Gatehouse answered itself with an error, by kind",
            proxy_errors.clone(),
        );
        let reloads = Family::default();
        registry.register(names::RELOADS, "Configuration reloads, by result", reloads.clone());
        let open_connections = Gauge::default();
        registry.register(names::OPEN_CONNECTIONS, "Client connections open now", open_connections.clone());
        let open_websockets = Gauge::default();
        registry.register(names::OPEN_WEBSOCKETS, "Upgraded (WebSocket) tunnels open now", open_websockets.clone());
        let route_table_generation = Gauge::default();
        registry.register(
            names::ROUTE_TABLE_GENERATION,
            "Generation of the route table in service",
            route_table_generation.clone(),
        );
        Metrics {
            registry: root,
            requests,
            upstream_latency,
            proxy_errors,
            reloads,
            open_connections,
            open_websockets,
            route_table_generation,
        }
    }

    pub fn service(&self, name: &str) -> ServiceMetrics {
        ServiceMetrics {
            by_class: CODE_CLASSES.map(|code_class| {
                self.requests.get_or_create_owned(&RequestLabels { service: name.to_string(), code_class })
            }),
            upstream_latency: self.upstream_latency.get_or_create_owned(&ServiceLabels { service: name.to_string() }),
        }
    }

    /// Counts an error answered by Gatehouse itself (`kind` is a short snake_case name).
    pub fn proxy_error(&self, kind: &'static str) {
        self.proxy_errors.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_catalogue() {
        let m = Metrics::new();
        let web = m.service("web");
        web.record_status(204);
        web.record_status(503);
        web.record_upstream_latency(0.002);
        m.proxy_error("no_route");
        m.reload(true);
        m.route_table_generation.set(3);
        let text = m.encode();
        for needle in [
            "gatehouse_requests_total{service=\"web\",code_class=\"2xx\"} 1",
            "gatehouse_requests_total{service=\"web\",code_class=\"5xx\"} 1",
            "gatehouse_upstream_response_seconds_count{service=\"web\"} 1",
            "gatehouse_proxy_errors_total{kind=\"no_route\"} 1",
            "gatehouse_reloads_total{result=\"success\"} 1",
            "gatehouse_route_table_generation 3",
            "gatehouse_open_connections 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
