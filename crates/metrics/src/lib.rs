//! The one catalogue of Gatehouse's Prometheus metrics: every name, label and bucket layout
//! is defined here, and nowhere else.
//!
//! A service's series are looked up by label on its first request and kept with the
//! service ([`Metrics::service`]); later requests only touch atomics. Services that never
//! see a request export nothing, so ten thousand idle Drove vhosts cost no scrape time.

use std::sync::OnceLock;

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
    pub const TARGET_EJECTIONS: &str = "target_ejections";
    pub const OPEN_CONNECTIONS: &str = "open_connections";
    pub const OPEN_WEBSOCKETS: &str = "open_websockets";
    pub const PAUSED_REQUESTS: &str = "paused_requests";
    pub const DEPLOYS: &str = "deploys";
    pub const DEPLOY_SECONDS: &str = "deploy_seconds";
    pub const HEALTH_CHECKS: &str = "health_checks";
    pub const TARGET_HEALTHY: &str = "target_healthy";
    pub const HEALTH_PANICS: &str = "health_panics";
    pub const DRAIN_SECONDS: &str = "drain_seconds";
    pub const DRAIN_CANCELLED: &str = "drain_cancelled_requests";
    pub const ROUTE_TABLE_GENERATION: &str = "route_table_generation";
    pub const RELOADS: &str = "reloads";
    pub const DROVE_POLL_SECONDS: &str = "drove_poll_seconds";
    pub const DROVE_APPLY_SECONDS: &str = "drove_apply_seconds";
    pub const DROVE_LEADER_CHANGES: &str = "drove_leader_changes";
    pub const DROVE_CONTROLLER_ERRORS: &str = "drove_controller_errors";
    pub const DROVE_STATE_STALE: &str = "drove_state_stale";
    pub const ACME_ORDERS: &str = "acme_orders";
    pub const ACME_CERTIFICATE_EXPIRY: &str = "acme_certificate_expiry_timestamp_seconds";
    pub const ACME_FAILURES: &str = "acme_consecutive_failures";

    /// drove-gateway's names (prefix `drove_gateway_`), kept where they mean the same thing.
    pub mod drove_gateway {
        pub const PREFIX: &str = "drove_gateway";
        pub const ENDPOINT_DOWN_ERRORS: &str = "endpoint_down_errors";
        pub const ALL_ENDPOINTS_DOWN_ERRORS: &str = "all_endpoints_down_errors";
        pub const DROVE_APP_SYNC_FAILED: &str = "drove_app_sync_failed";
        pub const DROVE_APP_REFRESH_DURATION: &str = "drove_app_refresh_duration";
        pub const APPS_IGNORED_BY_REALM: &str = "apps_ignored_by_realm_total";
        pub const APPS_WITH_ROUTING_TAG: &str = "apps_with_routing_tag_total";
        pub const APPS_WITHOUT_ROUTING_TAG: &str = "apps_without_routing_tag_total";
        pub const CONFIGURED_ENDPOINTS: &str = "configured_endpoints_total";
        pub const HEALTHY_ENDPOINTS: &str = "healthy_endpoints_total";
        pub const RELOADS_SUCCESSFUL: &str = "reloads_successful";
        pub const RELOADS_FAILED: &str = "reloads_failed";
        pub const RELOAD_DURATION: &str = "reload_duration";
        pub const TEMPLATE_RENDER_DURATION_SECONDS: &str = "template_render_duration_seconds";
        pub const CONFIG_GENERATION_HEALTHY: &str = "config_generation_healthy";
        pub const TEMPLATE_RENDERING_HEALTHY: &str = "template_rendering_healthy";
    }
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrderLabels {
    result: &'static str,
    challenge: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    service: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceKindLabels {
    namespace: String,
    kind: &'static str,
}

/// drove-gateway's layout: 0.05 s doubling ten times.
#[derive(Clone)]
struct DroveGatewayBuckets;

impl MetricConstructor<Histogram> for DroveGatewayBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.05, 2.0, 10))
    }
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
    target_ejections: Family<ServiceLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    pub open_connections: Gauge,
    pub open_websockets: Gauge,
    /// Requests held by paused services now.
    pub paused_requests: Gauge,
    pub route_table_generation: Gauge,
    pub deploys: DeployMetrics,
    drove: DroveFamilies,
    pub templated: TemplatedMetrics,
    pub acme: AcmeMetrics,
}

/// The ACME source: orders, and each certificate's expiry and failing renewals.
#[derive(Clone)]
pub struct AcmeMetrics {
    orders: Family<OrderLabels, Counter>,
    expiry: Family<ServiceLabels, Gauge>,
    failures: Family<ServiceLabels, Gauge>,
}

impl AcmeMetrics {
    /// Counts a finished order by result (`issued`, `failed`) and challenge type.
    pub fn order(&self, issued: bool, challenge: &'static str) {
        let result = if issued { "issued" } else { "failed" };
        self.orders.get_or_create(&OrderLabels { result, challenge }).inc();
    }

    /// The service's certificate in service: its not-after as a Unix time, and the failed
    /// orders in a row since the last success.
    pub fn certificate(&self, service: &str, not_after_unix: Option<i64>, failures: u32) {
        let labels = ServiceLabels { service: service.to_string() };
        if let Some(t) = not_after_unix {
            self.expiry.get_or_create(&labels).set(t);
        }
        self.failures.get_or_create(&labels).set(i64::from(failures));
    }

    /// Drops a service's series (it no longer wants a certificate).
    pub fn forget(&self, service: &str) {
        let labels = ServiceLabels { service: service.to_string() };
        self.expiry.remove(&labels);
        self.failures.remove(&labels);
    }
}

/// The deploy source: deploys, health checks, drains.
#[derive(Clone)]
pub struct DeployMetrics {
    deploys: Family<ResultLabels, Counter>,
    /// From a deploy call to its switch (the health gate, the save and the swap), in seconds.
    pub deploy_seconds: Histogram,
    health_checks: Family<ResultLabels, Counter>,
    target_healthy: Family<TargetLabels, Gauge>,
    health_panics: Family<ServiceLabels, Counter>,
    /// From the switch to the old targets being idle (or the drain timeout), in seconds.
    pub drain_seconds: Histogram,
    /// Requests still running on drained targets at the drain timeout, then cancelled.
    pub drain_cancelled: Counter,
}

impl DeployMetrics {
    /// Counts a deploy by its result (`ok`, `unhealthy`, `conflict`, `invalid`, `failed`).
    pub fn deploy(&self, result: &'static str) {
        self.deploys.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn health_check(&self, passed: bool) {
        let result = if passed { "pass" } else { "fail" };
        self.health_checks.get_or_create(&ResultLabels { result }).inc();
    }

    /// 1 while a target is in rotation, 0 while health checks keep it out.
    pub fn target_health(&self, service: &str, target: &str, up: bool) {
        let labels = TargetLabels { service: service.to_string(), target: target.to_string() };
        self.target_healthy.get_or_create(&labels).set(i64::from(up));
    }

    /// Drops a service's target series (its targets changed or it went away).
    pub fn forget_targets(&self, service: &str, targets: &[String]) {
        for target in targets {
            self.target_healthy.remove(&TargetLabels { service: service.to_string(), target: target.clone() });
        }
    }

    /// Counts a moment when every target of a service was down, so all of them took traffic.
    pub fn health_panic(&self, service: &str) {
        self.health_panics.get_or_create(&ServiceLabels { service: service.to_string() }).inc();
    }
}

/// The nginx and HAProxy engines, under drove-gateway's names (counted once per attempt,
/// unlike drove-gateway, which counted one failure several times).
#[derive(Clone)]
pub struct TemplatedMetrics {
    /// Configs put in service with a successful reload command.
    pub reloads_successful: Counter,
    /// Attempts that failed anywhere: render, check, write or reload.
    pub reloads_failed: Counter,
    /// Render, check, write and reload, in seconds.
    pub reload_duration: Histogram,
    render: Family<ResultLabels, Histogram, DroveGatewayBuckets>,
    /// 1 while the last rendered config passed the proxy's check and was written.
    pub config_healthy: Gauge,
    /// 1 while the template loads and renders.
    pub template_healthy: Gauge,
}

impl TemplatedMetrics {
    pub fn render_seconds(&self, ok: bool, seconds: f64) {
        let result = if ok { "success" } else { "error" };
        self.render.get_or_create(&ResultLabels { result }).observe(seconds);
    }
}

struct DroveFamilies {
    poll: Family<NamespaceLabels, Histogram, LatencyBuckets>,
    apply: Family<NamespaceLabels, Histogram, LatencyBuckets>,
    leader_changes: Family<NamespaceLabels, Counter>,
    controller_errors: Family<NamespaceKindLabels, Counter>,
    stale: Family<NamespaceLabels, Gauge>,
    endpoint_down_errors: Family<NamespaceLabels, Counter>,
    all_endpoints_down: Family<NamespaceLabels, Gauge>,
    app_sync_failed: Family<NamespaceLabels, Counter>,
    app_refresh_duration: Family<NamespaceLabels, Histogram, DroveGatewayBuckets>,
    ignored_by_realm: Family<NamespaceLabels, Gauge>,
    with_routing_tag: Family<NamespaceLabels, Gauge>,
    without_routing_tag: Family<NamespaceLabels, Gauge>,
    configured_endpoints: Family<NamespaceLabels, Gauge>,
    healthy_endpoints: Family<NamespaceLabels, Gauge>,
}

impl Default for DroveFamilies {
    fn default() -> Self {
        DroveFamilies {
            poll: Family::new_with_constructor(LatencyBuckets),
            apply: Family::new_with_constructor(LatencyBuckets),
            leader_changes: Family::default(),
            controller_errors: Family::default(),
            stale: Family::default(),
            endpoint_down_errors: Family::default(),
            all_endpoints_down: Family::default(),
            app_sync_failed: Family::default(),
            app_refresh_duration: Family::new_with_constructor(DroveGatewayBuckets),
            ignored_by_realm: Family::default(),
            with_routing_tag: Family::default(),
            without_routing_tag: Family::default(),
            configured_endpoints: Family::default(),
            healthy_endpoints: Family::default(),
        }
    }
}

/// Handles for one Drove namespace.
#[derive(Clone)]
pub struct NamespaceMetrics {
    /// One events poll (and the `/endpoints` read it led to), in seconds.
    pub poll_seconds: Histogram,
    /// From a namespace's new view to the route table carrying it, in seconds.
    pub apply_seconds: Histogram,
    pub leader_changes: Counter,
    errors: Family<NamespaceKindLabels, Counter>,
    namespace: String,
    /// 1 while routes come from the state file rather than a successful sync.
    pub stale: Gauge,
    pub endpoint_down_errors: Counter,
    pub all_endpoints_down: Gauge,
    pub app_sync_failed: Counter,
    pub app_refresh_duration: Histogram,
    pub ignored_by_realm: Gauge,
    pub with_routing_tag: Gauge,
    pub without_routing_tag: Gauge,
    pub configured_endpoints: Gauge,
    pub healthy_endpoints: Gauge,
}

impl NamespaceMetrics {
    /// Counts a failed call to a controller (`kind`: timeout, connect, status, failed, json, ...).
    pub fn controller_error(&self, kind: &'static str) {
        self.errors.get_or_create(&NamespaceKindLabels { namespace: self.namespace.clone(), kind }).inc();
    }
}

/// Handles for one service, each resolved on first use.
#[derive(Clone)]
pub struct ServiceMetrics {
    service: String,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ServiceLabels, Histogram, LatencyBuckets>,
    ejections: Family<ServiceLabels, Counter>,
    by_class: [OnceLock<Counter>; 5],
    upstream_latency: OnceLock<Histogram>,
}

impl ServiceMetrics {
    pub fn record_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class]
            .get_or_init(|| {
                let labels = RequestLabels { service: self.service.clone(), code_class: CODE_CLASSES[class] };
                self.requests.get_or_create_owned(&labels)
            })
            .inc();
    }

    pub fn record_upstream_latency(&self, seconds: f64) {
        self.upstream_latency
            .get_or_init(|| self.latency.get_or_create_owned(&ServiceLabels { service: self.service.clone() }))
            .observe(seconds);
    }

    /// Counts a target taken out of rotation because it refused a connection.
    pub fn target_ejected(&self) {
        self.ejections.get_or_create(&ServiceLabels { service: self.service.clone() }).inc();
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
        let target_ejections = Family::default();
        registry.register(
            names::TARGET_EJECTIONS,
            "Targets taken out of rotation for fail_timeout after a refused connection, by service",
            target_ejections.clone(),
        );
        let reloads = Family::default();
        registry.register(names::RELOADS, "Configuration reloads, by result", reloads.clone());
        let open_connections = Gauge::default();
        registry.register(names::OPEN_CONNECTIONS, "Client connections open now", open_connections.clone());
        let open_websockets = Gauge::default();
        registry.register(names::OPEN_WEBSOCKETS, "Upgraded (WebSocket) tunnels open now", open_websockets.clone());
        let paused_requests = Gauge::default();
        registry.register(
            names::PAUSED_REQUESTS,
            "Requests waiting for a paused service to resume",
            paused_requests.clone(),
        );
        // 5 ms .. ~40 s.
        let deploys = DeployMetrics {
            deploys: Family::default(),
            deploy_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            health_checks: Family::default(),
            target_healthy: Family::default(),
            health_panics: Family::default(),
            drain_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            drain_cancelled: Counter::default(),
        };
        registry.register(names::DEPLOYS, "Deploys, by result", deploys.deploys.clone());
        registry.register(
            names::DEPLOY_SECONDS,
            "From a deploy call to its switch (health gate, save, swap)",
            deploys.deploy_seconds.clone(),
        );
        registry.register(names::HEALTH_CHECKS, "Target health checks, by result", deploys.health_checks.clone());
        registry.register(
            names::TARGET_HEALTHY,
            "1 while a deployed target is in rotation, 0 while its health checks keep it out",
            deploys.target_healthy.clone(),
        );
        registry.register(
            names::HEALTH_PANICS,
            "Times every target of a service was down, so all of them took traffic",
            deploys.health_panics.clone(),
        );
        registry.register(
            names::DRAIN_SECONDS,
            "From a switch to the old targets having no requests left, or the drain timeout",
            deploys.drain_seconds.clone(),
        );
        registry.register(
            names::DRAIN_CANCELLED,
            "Requests still running on drained targets at the drain timeout, then cancelled",
            deploys.drain_cancelled.clone(),
        );
        let route_table_generation = Gauge::default();
        registry.register(
            names::ROUTE_TABLE_GENERATION,
            "Generation of the route table in service",
            route_table_generation.clone(),
        );
        let acme = AcmeMetrics { orders: Family::default(), expiry: Family::default(), failures: Family::default() };
        registry.register(names::ACME_ORDERS, "ACME orders, by result and challenge type", acme.orders.clone());
        registry.register(
            names::ACME_CERTIFICATE_EXPIRY,
            "Not-after of each service's ACME certificate, as a Unix time",
            acme.expiry.clone(),
        );
        registry.register(
            names::ACME_FAILURES,
            "Failed ACME orders in a row for a service's certificate (0 once one succeeds)",
            acme.failures.clone(),
        );
        let drove = DroveFamilies::default();
        registry.register(
            names::DROVE_POLL_SECONDS,
            "Duration of one Drove events poll, with the endpoints read it triggered, by namespace",
            drove.poll.clone(),
        );
        registry.register(
            names::DROVE_APPLY_SECONDS,
            "Time from a namespace's new view to the route table carrying it",
            drove.apply.clone(),
        );
        registry.register(names::DROVE_LEADER_CHANGES, "Leader controller changes seen", drove.leader_changes.clone());
        registry.register(
            names::DROVE_CONTROLLER_ERRORS,
            "Failed calls to Drove controllers, by namespace and kind",
            drove.controller_errors.clone(),
        );
        registry.register(
            names::DROVE_STATE_STALE,
            "1 while a namespace's routes come from the state file, not a sync",
            drove.stale.clone(),
        );
        let templated = TemplatedMetrics {
            reloads_successful: Counter::default(),
            reloads_failed: Counter::default(),
            reload_duration: DroveGatewayBuckets.new_metric(),
            render: Family::new_with_constructor(DroveGatewayBuckets),
            config_healthy: Gauge::default(),
            template_healthy: Gauge::default(),
        };
        {
            use names::drove_gateway as dg;
            let compat = root.sub_registry_with_prefix(dg::PREFIX);
            compat.register(
                dg::ENDPOINT_DOWN_ERRORS,
                "Controller pings that failed to connect",
                drove.endpoint_down_errors.clone(),
            );
            compat.register(
                dg::ALL_ENDPOINTS_DOWN_ERRORS,
                "1 when no controller of the namespace answers",
                drove.all_endpoints_down.clone(),
            );
            compat.register(
                dg::DROVE_APP_SYNC_FAILED,
                "Failed reads of /apis/v1/endpoints",
                drove.app_sync_failed.clone(),
            );
            compat.register(
                dg::DROVE_APP_REFRESH_DURATION,
                "Duration of app refreshes that changed something",
                drove.app_refresh_duration.clone(),
            );
            compat.register(
                dg::APPS_IGNORED_BY_REALM,
                "Apps left out by realm or realm_suffix",
                drove.ignored_by_realm.clone(),
            );
            compat.register(dg::APPS_WITH_ROUTING_TAG, "Apps carrying the routing tag", drove.with_routing_tag.clone());
            compat.register(
                dg::APPS_WITHOUT_ROUTING_TAG,
                "Apps without the routing tag",
                drove.without_routing_tag.clone(),
            );
            compat.register(dg::CONFIGURED_ENDPOINTS, "Controllers configured", drove.configured_endpoints.clone());
            compat.register(
                dg::HEALTHY_ENDPOINTS,
                "Controllers answering the leader ping",
                drove.healthy_endpoints.clone(),
            );
            compat.register(
                dg::RELOADS_SUCCESSFUL,
                "nginx/HAProxy configs put in service with a reload",
                templated.reloads_successful.clone(),
            );
            compat.register(
                dg::RELOADS_FAILED,
                "nginx/HAProxy config attempts that failed (render, check, write or reload)",
                templated.reloads_failed.clone(),
            );
            compat.register(
                dg::RELOAD_DURATION,
                "Render, check, write and reload of an nginx/HAProxy config, in seconds",
                templated.reload_duration.clone(),
            );
            compat.register(
                dg::TEMPLATE_RENDER_DURATION_SECONDS,
                "Template rendering, by result",
                templated.render.clone(),
            );
            compat.register(
                dg::CONFIG_GENERATION_HEALTHY,
                "1 while the last rendered config passed the proxy's check",
                templated.config_healthy.clone(),
            );
            compat.register(
                dg::TEMPLATE_RENDERING_HEALTHY,
                "1 while the template loads and renders",
                templated.template_healthy.clone(),
            );
        }
        Metrics {
            acme,
            drove,
            registry: root,
            requests,
            upstream_latency,
            proxy_errors,
            target_ejections,
            reloads,
            open_connections,
            open_websockets,
            paused_requests,
            route_table_generation,
            deploys,
            templated,
        }
    }

    pub fn service(&self, name: &str) -> ServiceMetrics {
        ServiceMetrics {
            service: name.to_string(),
            requests: self.requests.clone(),
            latency: self.upstream_latency.clone(),
            ejections: self.target_ejections.clone(),
            by_class: Default::default(),
            upstream_latency: OnceLock::new(),
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

    pub fn namespace(&self, name: &str) -> NamespaceMetrics {
        let l = NamespaceLabels { namespace: name.to_string() };
        let d = &self.drove;
        NamespaceMetrics {
            poll_seconds: d.poll.get_or_create_owned(&l),
            apply_seconds: d.apply.get_or_create_owned(&l),
            leader_changes: d.leader_changes.get_or_create_owned(&l),
            errors: d.controller_errors.clone(),
            namespace: name.to_string(),
            stale: d.stale.get_or_create_owned(&l),
            endpoint_down_errors: d.endpoint_down_errors.get_or_create_owned(&l),
            all_endpoints_down: d.all_endpoints_down.get_or_create_owned(&l),
            app_sync_failed: d.app_sync_failed.get_or_create_owned(&l),
            app_refresh_duration: d.app_refresh_duration.get_or_create_owned(&l),
            ignored_by_realm: d.ignored_by_realm.get_or_create_owned(&l),
            with_routing_tag: d.with_routing_tag.get_or_create_owned(&l),
            without_routing_tag: d.without_routing_tag.get_or_create_owned(&l),
            configured_endpoints: d.configured_endpoints.get_or_create_owned(&l),
            healthy_endpoints: d.healthy_endpoints.get_or_create_owned(&l),
        }
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
        let ns = m.namespace("stage");
        ns.leader_changes.inc();
        ns.controller_error("timeout");
        ns.healthy_endpoints.set(2);
        let text = m.encode();
        for needle in [
            "gatehouse_requests_total{service=\"web\",code_class=\"2xx\"} 1",
            "gatehouse_requests_total{service=\"web\",code_class=\"5xx\"} 1",
            "gatehouse_upstream_response_seconds_count{service=\"web\"} 1",
            "gatehouse_proxy_errors_total{kind=\"no_route\"} 1",
            "gatehouse_reloads_total{result=\"success\"} 1",
            "gatehouse_route_table_generation 3",
            "gatehouse_open_connections 0",
            "gatehouse_drove_leader_changes_total{namespace=\"stage\"} 1",
            "gatehouse_drove_controller_errors_total{namespace=\"stage\",kind=\"timeout\"} 1",
            "drove_gateway_healthy_endpoints_total{namespace=\"stage\"} 2",
            "drove_gateway_drove_app_refresh_duration_count{namespace=\"stage\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        let _idle = m.service("idle");
        assert!(!m.encode().contains("idle"), "a service without requests exports nothing");
    }
}
