//! What a request reads at its start: the route table plus the engine's side tables for it.

use std::sync::Arc;

use gatehouse_metrics::{Metrics, ServiceMetrics, NO_SERVICE};
use gatehouse_model::{RouteTable, Scheme};
use http::HeaderValue;

use crate::throttle::Throttle;

/// One generation of everything routing-related, swapped in as a whole.
pub struct Snapshot {
    pub table: RouteTable,
    /// Indexed by [`gatehouse_model::Service::index`].
    pub(crate) services: Vec<ServiceRuntime>,
    pub(crate) unrouted: ServiceMetrics,
    pub(crate) xproxy: HeaderValue,
}

pub(crate) struct ServiceRuntime {
    pub metrics: ServiceMetrics,
    /// Limits warnings about this service's targets to one a second.
    pub upstream_warnings: Throttle,
    /// Upstream pool key of each target, indexed like the service's targets.
    pub pool_keys: Vec<Arc<str>>,
}

#[derive(Debug, thiserror::Error)]
#[error("xproxy `{0}` cannot be sent as a header value")]
pub struct BadXProxy(String);

impl Snapshot {
    pub fn new(table: RouteTable, xproxy: &str, metrics: &Metrics) -> Result<Self, BadXProxy> {
        let xproxy = HeaderValue::from_str(xproxy).map_err(|_| BadXProxy(xproxy.to_string()))?;
        let services = table
            .services()
            .iter()
            .map(|svc| ServiceRuntime {
                metrics: metrics.service(svc.name()),
                upstream_warnings: Throttle::default(),
                pool_keys: svc
                    .targets
                    .iter()
                    .map(|t| {
                        // Connections are only shared between uses that agree on every
                        // option that shaped them.
                        let verify = match t.spec.scheme {
                            Scheme::Https if !svc.spec.tls_verify => "+noverify",
                            _ => "",
                        };
                        let proto = if svc.spec.upstream_http2 { "h2" } else { "h1" };
                        Arc::from(format!("{proto}{verify} {}", t.spec.url()))
                    })
                    .collect(),
            })
            .collect();
        Ok(Snapshot { table, services, unrouted: metrics.service(NO_SERVICE), xproxy })
    }

    pub fn generation(&self) -> u64 {
        self.table.generation()
    }
}
