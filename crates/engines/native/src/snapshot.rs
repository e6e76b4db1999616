//! What a request reads at its start: the route table, with the engine's per-service state
//! attached to each service.

use std::sync::{Arc, OnceLock};

use gatehouse_metrics::{Metrics, ServiceMetrics, NO_SERVICE};
use gatehouse_model::{BuildError, RouteTable, Scheme, ServiceSpec};
use http::HeaderValue;

use crate::access_log::ServiceFields;
use crate::throttle::Throttle;

/// One generation of everything routing-related, swapped in as a whole.
pub struct Snapshot {
    pub table: RouteTable<ServiceRuntime>,
    pub(crate) unrouted: ServiceMetrics,
    pub(crate) xproxy: HeaderValue,
}

/// The engine's state for one service; built when the service first appears or changes.
pub struct ServiceRuntime {
    pub(crate) metrics: ServiceMetrics,
    /// Limits warnings about this service's targets to one a second.
    pub(crate) upstream_warnings: Throttle,
    /// Upstream pool key of each target, indexed like the service's targets; made on the
    /// first request, as most of ten thousand discovered services may never see one.
    pool_keys: OnceLock<Box<[Arc<str>]>>,
    /// What the access log writes for the service and each target, made on its first line.
    log_fields: OnceLock<ServiceFields>,
}

impl ServiceRuntime {
    fn new(spec: &ServiceSpec, metrics: &Metrics) -> Self {
        ServiceRuntime {
            metrics: metrics.service(&spec.name),
            upstream_warnings: Throttle::default(),
            pool_keys: OnceLock::new(),
            log_fields: OnceLock::new(),
        }
    }

    /// The access log's fields for the service (`spec` is the service's own).
    pub(crate) fn log_fields(&self, spec: &ServiceSpec) -> &ServiceFields {
        self.log_fields.get_or_init(|| ServiceFields::new(spec))
    }

    /// The upstream pool key of each of `spec`'s targets (`spec` is the service's own).
    pub(crate) fn pool_keys(&self, spec: &ServiceSpec) -> &[Arc<str>] {
        self.pool_keys.get_or_init(|| {
            spec.all_targets()
                .map(|t| {
                    // Connections are only shared between uses that agree on every option
                    // that shaped them.
                    let verify = match t.scheme {
                        Scheme::Https if !spec.tls_verify => "+noverify",
                        _ => "",
                    };
                    let proto = if spec.upstream_http2 { "h2" } else { "h1" };
                    Arc::from(format!("{proto}{verify} {}", t.url()))
                })
                .collect()
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Routes(#[from] BuildError),
    #[error("xproxy `{0}` cannot be sent as a header value")]
    BadXProxy(String),
}

impl Snapshot {
    /// Builds the next snapshot. Services unchanged since `previous` are shared with it, so
    /// a change to one service costs about as much as that service, not the whole table.
    pub fn new(
        generation: u64,
        specs: Vec<Arc<ServiceSpec>>,
        previous: Option<&Snapshot>,
        xproxy: &str,
        metrics: &Metrics,
    ) -> Result<Self, SnapshotError> {
        let xproxy = HeaderValue::from_str(xproxy).map_err(|_| SnapshotError::BadXProxy(xproxy.to_string()))?;
        let table = RouteTable::build(generation, specs, previous.map(|p| &p.table), |spec| {
            ServiceRuntime::new(spec, metrics)
        })?;
        Ok(Snapshot { table, unrouted: metrics.service(NO_SERVICE), xproxy })
    }

    /// The next snapshot with some services replaced or removed (see [`RouteTable::update`]).
    pub fn update(
        &self,
        generation: u64,
        upserts: Vec<Arc<ServiceSpec>>,
        removals: &[&str],
        metrics: &Metrics,
    ) -> Result<Self, SnapshotError> {
        let table = self.table.update(generation, upserts, removals, |spec| ServiceRuntime::new(spec, metrics))?;
        Ok(Snapshot { table, unrouted: self.unrouted.clone(), xproxy: self.xproxy.clone() })
    }

    pub fn generation(&self) -> u64 {
        self.table.generation()
    }
}
