//! Health of the services of the configuration file that set `health_check`: their targets
//! are checked at the interval, and whoever owns the route table is told when one entered
//! or left the rotation, to install [`Watch::rotated`] specs.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use gatehouse_metrics::DeployMetrics;
use gatehouse_model::{HealthCheck, ServiceSpec, TargetSpec};

use crate::check::Probe;
use crate::monitor::{self, Observer};
use crate::targets::ServiceHealth;

type Changed = Box<dyn Fn(&str) + Send + Sync>;

pub struct Watch {
    services: Mutex<HashMap<String, Watched>>,
    metrics: DeployMetrics,
    /// Called with a service's name when its rotation changed.
    changed: OnceLock<Changed>,
}

struct Watched {
    check: HealthCheck,
    health: ServiceHealth,
}

impl Watch {
    pub fn new(metrics: DeployMetrics) -> Arc<Self> {
        Arc::new(Watch { services: Mutex::new(HashMap::new()), metrics, changed: OnceLock::new() })
    }

    /// Sets what is called when a service's rotation changed (once).
    pub fn on_change(&self, changed: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.changed.set(Box::new(changed));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches the services of `specs` that have a health check, on the current Tokio
    /// runtime, and stops watching the others. A service whose targets and check did not
    /// change keeps its health and monitor; new targets start in rotation (as HAProxy's do).
    pub fn follow(self: &Arc<Self>, specs: &[ServiceSpec]) {
        let mut services = self.lock();
        let mut kept = HashMap::new();
        for spec in specs {
            let Some(check) = &spec.health_check else { continue };
            let targets: Vec<TargetSpec> = spec.all_targets().cloned().collect();
            let previous = services.remove(&spec.name);
            match previous {
                Some(w) if w.check == *check && w.health.targets == targets => {
                    kept.insert(spec.name.clone(), w);
                }
                previous => {
                    let previous = previous.map(|w| w.health);
                    let mut health = ServiceHealth::next(previous.as_ref(), targets.clone(), &[]);
                    if let Some(old) = &previous {
                        old.forget(&spec.name, &self.metrics);
                    }
                    health.publish(&spec.name, &self.metrics);
                    let observer: Weak<dyn Observer> = Arc::downgrade(self) as Weak<dyn Observer>;
                    let probe = Probe { verify: spec.tls_verify, ..Probe::from(check) };
                    health.monitor = Some(monitor::spawn(observer, spec.name.clone(), targets, probe, check.interval));
                    kept.insert(spec.name.clone(), Watched { check: check.clone(), health });
                }
            }
        }
        for (name, gone) in services.drain() {
            gone.health.forget(&name, &self.metrics);
        }
        *services = kept;
    }

    /// `spec` with the targets its checks keep out moved to `down_targets`; as it is when
    /// it is not watched (or its targets changed since).
    pub fn rotated(&self, spec: &ServiceSpec) -> ServiceSpec {
        let mut spec = spec.clone();
        if let Some(w) = self.lock().get(&spec.name).filter(|w| w.health.targets.iter().eq(spec.all_targets())) {
            w.health.rotate(&mut spec);
        }
        spec
    }
}

impl Observer for Watch {
    fn observe<'a>(
        &'a self,
        service: &'a str,
        targets: &'a [TargetSpec],
        results: &'a [Result<(), String>],
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let changed = {
                let mut services = self.lock();
                let Some(w) = services.get_mut(service).filter(|w| w.health.targets == targets) else { return false };
                let changed = w.health.record(service, results, w.check.rise, w.check.fall, &self.metrics);
                if changed && w.health.counters.iter().all(|c| !c.is_up()) {
                    self.metrics.health_panic(service);
                    tracing::error!(service, "every target is unhealthy: all of them take traffic until one recovers");
                }
                changed
            };
            if changed {
                if let Some(changed) = self.changed.get() {
                    changed(service);
                }
            }
            true
        })
    }
}
