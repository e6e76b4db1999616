//! The deploy source: services created at run time with `gatehouse deploy` (kamal-proxy's
//! model). A deploy health-gates its new targets, saves the new state, moves every host and
//! path of the service in one route-table swap, then drains the old targets until they are
//! idle or the drain timeout passes. State is saved before a change is acknowledged and
//! restored at boot.
//!
//! The source produces route facts ([`ServiceSpec`]); whoever owns the route table installs
//! them through [`Routes`], which hands back the in-flight counters of what it replaced.

mod gate;
mod options;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use gatehouse_metrics::DeployMetrics;
use gatehouse_model::{Availability, HealthCheck, Retired, Rollout, Scope, ServiceSpec, TargetSpec};
use serde::Serialize;

use gatehouse_health::{Observer, Probe, ServiceHealth};

pub use gate::GateFailure;
pub use options::{
    check_name, service_spec, DeployOptions, DeployRequest, HealthCheckOptions, RolloutRequest, RolloutSplit,
    StateChange,
};
pub use store::{FileStore, Loaded, RolloutRecord, ServiceRecord, ServiceState, Store, StoreError, STATE_VERSION};

/// The `source` of the services this crate produces.
pub const SOURCE: &str = "deploy";

/// How often a drain looks at the in-flight counts.
const DRAIN_POLL: Duration = Duration::from_millis(2);

/// What the deploy source needs from the owner of the route table.
pub trait Routes: Send + Sync {
    /// Who already holds the name, or a host and path prefix, that `spec` claims (another
    /// source's service, or another deployed one); `None` when it is free.
    fn holder(&self, spec: &ServiceSpec) -> Option<String>;
    /// Puts `upserts` in service and takes `removals` out in one route-table swap. Returns
    /// the in-flight counters of the services that were replaced or removed, or why not.
    fn apply(&self, upserts: Vec<Arc<ServiceSpec>>, removals: &[&str]) -> Result<Vec<Retired>, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("service `{0}` is not deployed")]
    NotFound(String),
    #[error("service `{0}` has no rollout; run `gatehouse rollout deploy {0} --target HOST:PORT` first")]
    NoRollout(String),
    #[error("{0}")]
    Unhealthy(GateFailure),
    #[error("the deploy state could not be saved, nothing was changed: {0}")]
    Store(#[from] StoreError),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl DeployError {
    /// The `result` label of `gatehouse_deploys_total`.
    fn result(&self) -> &'static str {
        match self {
            DeployError::Invalid(_) => "invalid",
            DeployError::Conflict(_) => "conflict",
            DeployError::NotFound(_) | DeployError::NoRollout(_) => "not_found",
            DeployError::Unhealthy(_) => "unhealthy",
            DeployError::Store(_) | DeployError::ShuttingDown => "failed",
        }
    }
}

/// What a deploy did, for the CLI and the log.
#[derive(Debug, Clone, Serialize)]
pub struct DeployOutcome {
    pub service: String,
    pub targets: Vec<String>,
    /// Microseconds the new targets took to pass the gate (0 with `force`).
    pub gate_us: u64,
    /// Microseconds from the gate to the new routes in service (the save and the swap).
    pub switch_us: u64,
    /// Microseconds the old targets took to become idle, or the drain timeout.
    pub drain_us: u64,
    /// Requests still in flight on the old targets when the drain timeout passed; they were
    /// cancelled.
    pub drain_left: u32,
}

/// A deploy at its switch: what it replaced, for the drain.
struct Switched {
    retired: Vec<Retired>,
    gate_us: u64,
    switch_us: u64,
    targets: Vec<String>,
    drain_timeout: Duration,
}

/// A drain's result.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Drained {
    pub drain_us: u64,
    /// Requests still in flight when the timeout passed, then cancelled (0: everything
    /// finished).
    pub left: u32,
}

/// A deployed service as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub hosts: Vec<String>,
    pub path_prefixes: Vec<String>,
    pub targets: Vec<String>,
    pub read_targets: Vec<String>,
    pub state: ServiceState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
    /// Each target's health, when its checks run (services with several targets).
    pub health: Vec<TargetView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub targets: Vec<String>,
    pub read_targets: Vec<String>,
    pub percent: u8,
    pub allowlist: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    pub target: String,
    pub healthy: bool,
    pub last_error: Option<String>,
}

pub struct DeploySource {
    store: Arc<dyn Store>,
    metrics: DeployMetrics,
    /// The owner of the route table, set once by [`DeploySource::attach`].
    routes: OnceLock<Weak<dyn Routes>>,
    /// Target health of services with several targets, by service.
    health: Mutex<HashMap<String, ServiceHealth>>,
    /// The saved state; held across a save so saves never interleave.
    records: tokio::sync::Mutex<BTreeMap<String, ServiceRecord>>,
    /// Route facts of every service, read by table rebuilds.
    specs: Mutex<BTreeMap<String, Arc<ServiceSpec>>>,
    /// One operation at a time per service; different services go side by side.
    service_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Entries of the state that could not be restored, for `/v1/health`.
    pub restore_problems: Vec<String>,
}

impl DeploySource {
    /// Restores the saved services (each unreadable one is skipped and listed in
    /// `restore_problems`). Restored services serve at once, as before the restart.
    pub fn open(store: Arc<dyn Store>, metrics: DeployMetrics) -> Self {
        let (loaded, mut problems) = match store.load() {
            Ok(loaded) => {
                let skipped = loaded.skipped.clone();
                (loaded, skipped)
            }
            Err(e) => (Loaded::default(), vec![e.to_string()]),
        };
        for problem in &problems {
            tracing::error!(state = %store.location(), "deploy state: {problem}");
        }
        let mut records = BTreeMap::new();
        let mut specs = BTreeMap::new();
        let mut health = HashMap::new();
        for record in loaded.records {
            match spec_of(&record) {
                Ok(spec) => {
                    let all: Vec<TargetSpec> = spec.all_targets().cloned().collect();
                    if all.len() > 1 {
                        health.insert(record.name.clone(), ServiceHealth::next(None, all, &[]));
                    }
                    specs.insert(record.name.clone(), Arc::new(spec));
                    records.insert(record.name.clone(), record);
                }
                Err(e) => problems.push(format!("service `{}`: {e}", record.name)),
            }
        }
        if !records.is_empty() {
            tracing::info!(state = %store.location(), services = records.len(), "deployed services restored");
        }
        DeploySource {
            store,
            metrics,
            routes: OnceLock::new(),
            health: Mutex::new(health),
            records: tokio::sync::Mutex::new(records),
            specs: Mutex::new(specs),
            service_locks: Mutex::new(HashMap::new()),
            restore_problems: problems,
        }
    }

    /// Connects the source to the owner of the route table and starts the health checks of
    /// the restored services (on the current Tokio runtime).
    pub fn attach(self: &Arc<Self>, routes: Weak<dyn Routes>) {
        let _ = self.routes.set(routes);
        let watched: Vec<(String, DeployOptions)> = {
            let records = self.records.try_lock();
            let health = self.lock_health();
            health
                .keys()
                .filter_map(|name| records.as_ref().ok()?.get(name).map(|r| (name.clone(), r.options.clone())))
                .collect()
        };
        for (name, options) in watched {
            self.watch_health(&name, &options);
        }
    }

    fn routes(&self) -> Result<Arc<dyn Routes>, DeployError> {
        self.routes.get().and_then(Weak::upgrade).ok_or(DeployError::ShuttingDown)
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, HashMap<String, ServiceHealth>> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Route facts of every deployed service.
    pub fn services(&self) -> Vec<Arc<ServiceSpec>> {
        self.lock_specs().values().cloned().collect()
    }

    pub fn location(&self) -> String {
        self.store.location()
    }

    fn lock_specs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<ServiceSpec>>> {
        self.specs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Services with an operation running now (a deploy, a drain, a state change).
    pub fn busy(&self) -> Vec<String> {
        let locks = self.service_locks.lock().unwrap_or_else(|e| e.into_inner());
        let mut busy: Vec<String> =
            locks.iter().filter(|(_, l)| l.try_lock().is_err()).map(|(n, _)| n.clone()).collect();
        busy.sort();
        busy
    }

    fn service_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.service_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    /// Deploys `name`: gate, save, switch, drain. Returns once the old targets are idle or
    /// the drain timeout passed, so stopping the old release afterwards loses nothing.
    pub async fn deploy(self: &Arc<Self>, name: &str, request: DeployRequest) -> Result<DeployOutcome, DeployError> {
        let started = Instant::now();
        let switched = self.deploy_gated(name, request).await;
        self.drain_switched(name, started, switched).await
    }

    /// Counts a deploy (or rollout deploy) that `started`, then drains what its switch retired.
    async fn drain_switched(
        &self,
        name: &str,
        started: Instant,
        switched: Result<Switched, DeployError>,
    ) -> Result<DeployOutcome, DeployError> {
        match &switched {
            Ok(_) => self.metrics.deploy("ok"),
            Err(e) => self.metrics.deploy(e.result()),
        }
        let switched = switched?;
        self.metrics.deploy_seconds.observe(started.elapsed().as_secs_f64());
        let drained = self.drain(name, &switched.retired, switched.drain_timeout).await;
        Ok(DeployOutcome {
            service: name.to_string(),
            targets: switched.targets,
            gate_us: switched.gate_us,
            switch_us: switched.switch_us,
            drain_us: drained.drain_us,
            drain_left: drained.left,
        })
    }

    /// A deploy up to its switch.
    async fn deploy_gated(self: &Arc<Self>, name: &str, request: DeployRequest) -> Result<Switched, DeployError> {
        let spec = service_spec(name, &request.options).map_err(DeployError::Invalid)?;
        let routes = self.routes()?;
        let lock = self.service_lock(name);
        let _one_at_a_time = lock.lock().await;
        if let Some(holder) = routes.holder(&spec) {
            return Err(DeployError::Conflict(holder));
        }
        tracing::info!(service = name, targets = ?request.options.targets, force = request.force, "deploying");
        let started = Instant::now();
        let new_targets: Vec<TargetSpec> = spec.all_targets().cloned().collect();
        let gate_options =
            (!request.force).then(|| (request.options.health_check.check(), request.options.deploy_timeout()));
        self.gate(name, &new_targets, gate_options).await?;
        let gated = Instant::now();
        let gate_us = micros(gated - started);
        let previous = self.records.lock().await.get(name).cloned();
        let mut record = ServiceRecord {
            name: name.to_string(),
            options: request.options.clone(),
            // A paused or stopped service stays so across a deploy, as in kamal-proxy.
            state: previous.as_ref().map(|r| r.state.clone()).unwrap_or_default(),
            rollout: previous.and_then(|r| r.rollout),
        };
        if let Some(rollout) = &record.rollout {
            // Deploying the rollout's release to everyone promotes it: the rollout has done its job.
            let promoted = rollout
                .targets
                .iter()
                .chain(&rollout.read_targets)
                .any(|t| TargetSpec::parse_url(t, true).is_ok_and(|t| new_targets.contains(&t)));
            if promoted {
                tracing::info!(service = name, "the new targets include the rollout's: the rollout ends");
                record.rollout = None;
            }
        }
        let retired = self.commit(&routes, record, &new_targets).await?;
        let switch_us = micros(gated.elapsed());
        tracing::info!(service = name, gate_us, switch_us, "switched to the new targets; draining the old ones");
        let targets = spec.targets.iter().map(|t| t.url()).collect();
        Ok(Switched { retired, gate_us, switch_us, targets, drain_timeout: request.options.drain_timeout() })
    }

    /// Waits until every one of `targets` passes the health check (`None`: forced, no gate).
    async fn gate(
        &self,
        name: &str,
        targets: &[TargetSpec],
        options: Option<(HealthCheck, Duration)>,
    ) -> Result<(), DeployError> {
        let Some((health_check, timeout)) = options else { return Ok(()) };
        gate::wait_healthy(targets, &health_check, timeout).await.map_err(|failure| {
            tracing::warn!(service = name, "deploy failed, the current targets keep serving: {failure}");
            DeployError::Unhealthy(failure)
        })
    }

    /// Deploys a rollout (kamal-proxy's canary): a second target set of `name`, gated like a
    /// deploy, which takes the requests the split sends it. A previous rollout's targets are
    /// drained; the split is kept.
    pub async fn rollout_deploy(
        self: &Arc<Self>,
        name: &str,
        request: RolloutRequest,
    ) -> Result<DeployOutcome, DeployError> {
        let started = Instant::now();
        let switched = self.rollout_gated(name, &request).await;
        self.drain_switched(name, started, switched).await
    }

    async fn rollout_gated(self: &Arc<Self>, name: &str, request: &RolloutRequest) -> Result<Switched, DeployError> {
        if request.targets.is_empty() {
            return Err(DeployError::Invalid("a rollout needs at least one --target".into()));
        }
        let routes = self.routes()?;
        let lock = self.service_lock(name);
        let _one_at_a_time = lock.lock().await;
        let Some(mut record) = self.records.lock().await.get(name).cloned() else {
            return Err(DeployError::NotFound(name.to_string()));
        };
        let split = record.rollout.take().map(|r| r.split).unwrap_or_default();
        record.rollout =
            Some(RolloutRecord { targets: request.targets.clone(), read_targets: request.read_targets.clone(), split });
        let spec = spec_of(&record).map_err(DeployError::Invalid)?;
        if let Some(refusal) = routes.holder(&spec) {
            return Err(DeployError::Conflict(refusal));
        }
        let new_targets: Vec<TargetSpec> = spec.target_sets()[2..].iter().copied().flatten().cloned().collect();
        tracing::info!(service = name, targets = ?request.targets, force = request.force, "deploying a rollout");
        let started = Instant::now();
        let timeout = Duration::from_millis(request.deploy_timeout_ms);
        let gate_options = (!request.force).then(|| (record.options.health_check.check(), timeout));
        self.gate(name, &new_targets, gate_options).await?;
        let gated = Instant::now();
        let retired = self.commit(&routes, record, &new_targets).await?;
        let switch_us = micros(gated.elapsed());
        tracing::info!(service = name, switch_us, "rollout in service");
        let targets = new_targets.iter().map(TargetSpec::url).collect();
        let drain_timeout = Duration::from_millis(request.drain_timeout_ms);
        Ok(Switched { retired, gate_us: micros(gated - started), switch_us, targets, drain_timeout })
    }

    /// Sets which `kamal-rollout` cookie values go to the rollout of `name`.
    pub async fn rollout_set(self: &Arc<Self>, name: &str, split: RolloutSplit) -> Result<(), DeployError> {
        split.check().map_err(DeployError::Invalid)?;
        self.change(name, |record| {
            let rollout = record.rollout.as_mut().ok_or_else(|| DeployError::NoRollout(name.to_string()))?;
            rollout.split = split.clone();
            Ok(())
        })
        .await?;
        tracing::info!(service = name, percent = split.percent, allowlist = split.allowlist.len(), "rollout split set");
        Ok(())
    }

    /// Ends the rollout of `name`: every request goes to the active targets again, and the
    /// rollout's targets are drained.
    pub async fn rollout_stop(self: &Arc<Self>, name: &str, drain_timeout: Duration) -> Result<Drained, DeployError> {
        let retired = self
            .change(name, |record| match record.rollout.take() {
                Some(_) => Ok(()),
                None => Err(DeployError::NoRollout(name.to_string())),
            })
            .await?;
        tracing::info!(service = name, "rollout stopped; draining its targets");
        Ok(self.drain(name, &retired, drain_timeout).await)
    }

    /// Applies `edit` to the saved record of `name` and puts the result in service; returns
    /// what the change retired.
    async fn change(
        self: &Arc<Self>,
        name: &str,
        edit: impl FnOnce(&mut ServiceRecord) -> Result<(), DeployError>,
    ) -> Result<Vec<Retired>, DeployError> {
        let routes = self.routes()?;
        let lock = self.service_lock(name);
        let _one_at_a_time = lock.lock().await;
        let Some(mut record) = self.records.lock().await.get(name).cloned() else {
            return Err(DeployError::NotFound(name.to_string()));
        };
        edit(&mut record)?;
        self.commit(&routes, record, &[]).await
    }

    /// Pauses, stops or resumes `name`. Pausing and stopping drain the requests in flight
    /// (the drain's result is returned); resuming releases the held requests.
    pub async fn set_state(
        self: &Arc<Self>,
        name: &str,
        state: ServiceState,
        drain_timeout: Duration,
    ) -> Result<Drained, DeployError> {
        let serving = state == ServiceState::Running;
        let retired = self
            .change(name, |record| {
                record.state = state;
                Ok(())
            })
            .await?;
        tracing::info!(service = name, state = if serving { "running" } else { "held" }, "service state changed");
        if serving {
            return Ok(Drained { drain_us: 0, left: 0 });
        }
        Ok(self.drain(name, &retired, drain_timeout).await)
    }

    /// Unroutes `name` at once, without a drain (kamal-proxy's `remove`).
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<(), DeployError> {
        let routes = self.routes()?;
        let lock = self.service_lock(name);
        let _one_at_a_time = lock.lock().await;
        let mut records = self.records.lock().await;
        let Some(old) = records.remove(name) else {
            return Err(DeployError::NotFound(name.to_string()));
        };
        if let Err(e) = self.save(&records).await {
            records.insert(name.to_string(), old);
            return Err(e.into());
        }
        self.lock_specs().remove(name);
        if let Some(health) = self.lock_health().remove(name) {
            health.forget(name, &self.metrics);
        }
        if let Err(e) = routes.apply(Vec::new(), &[name]) {
            // Removing a name cannot conflict; the route table's owner refused outright. The
            // service is no longer saved, so it will not come back after a restart either.
            tracing::error!(service = name, error = %e, "could not unroute the removed service");
        }
        tracing::info!(service = name, "service removed");
        Ok(())
    }

    /// Every deployed service.
    pub async fn list(&self) -> Vec<ServiceView> {
        let records = self.records.lock().await;
        let health = self.lock_health();
        records
            .values()
            .map(|r| ServiceView {
                name: r.name.clone(),
                hosts: if r.options.hosts.is_empty() { vec!["*".into()] } else { r.options.hosts.clone() },
                path_prefixes: if r.options.path_prefixes.is_empty() {
                    vec!["/".into()]
                } else {
                    r.options.path_prefixes.clone()
                },
                targets: r.options.targets.clone(),
                read_targets: r.options.read_targets.clone(),
                state: r.state.clone(),
                rollout: r.rollout.as_ref().map(|rollout| RolloutView {
                    targets: rollout.targets.clone(),
                    read_targets: rollout.read_targets.clone(),
                    percent: rollout.split.percent,
                    allowlist: rollout.split.allowlist.clone(),
                }),
                health: health.get(&r.name).map_or_else(Vec::new, |h| {
                    h.targets
                        .iter()
                        .enumerate()
                        .map(|(i, t)| TargetView {
                            target: t.url(),
                            healthy: h.counters[i].is_up(),
                            last_error: h.last_errors[i].clone(),
                        })
                        .collect()
                }),
            })
            .collect()
    }

    /// Starts (or restarts) the health checks of a service with several targets; a service
    /// with one target is only checked by its deploy's gate, as in kamal-proxy.
    fn watch_health(self: &Arc<Self>, name: &str, options: &DeployOptions) {
        let mut health = self.lock_health();
        let Some(service) = health.get_mut(name) else { return };
        if let Some(old) = service.monitor.take() {
            old.abort();
        }
        service.publish(name, &self.metrics);
        let check = options.health_check.check();
        service.monitor = Some(gatehouse_health::spawn(
            self.observer(),
            name.to_string(),
            service.targets.clone(),
            Probe::from(&check),
            check.interval,
        ));
    }

    fn observer(self: &Arc<Self>) -> Weak<dyn Observer> {
        Arc::downgrade(self) as Weak<dyn Observer>
    }

    /// Counts a round of health checks of `service`; when a target entered or left the
    /// rotation, routes the service's healthy targets. Returns false when `targets` are no
    /// longer the service's (its monitor then stops).
    async fn observe_health(&self, service: &str, targets: &[TargetSpec], results: &[Result<(), String>]) -> bool {
        let Some(check) = self.records.lock().await.get(service).map(|r| r.options.health_check.clone()) else {
            return false;
        };
        let changed = {
            let mut health = self.lock_health();
            let Some(current) = health.get_mut(service).filter(|h| h.targets == targets) else { return false };
            current.record(service, results, check.rise, check.fall, &self.metrics)
        };
        if !changed {
            return true;
        }
        let Ok(routes) = self.routes() else { return false };
        let lock = self.service_lock(service);
        let _one_at_a_time = lock.lock().await;
        let record = self.records.lock().await.get(service).cloned();
        let published = record.and_then(|r| self.published(&r).ok());
        if let Some((spec, panic)) = published {
            if panic {
                self.metrics.health_panic(service);
                tracing::error!(service, "every writer is unhealthy: all of them take traffic until one recovers");
            }
            let spec = Arc::new(spec);
            self.lock_specs().insert(service.to_string(), spec.clone());
            if let Err(e) = routes.apply(vec![spec], &[]) {
                tracing::error!(service, error = %e, "could not apply a health change");
            }
        }
        true
    }

    /// The route facts of `record` with only its healthy targets in rotation, and whether
    /// its writers are all down (panic mode).
    fn published(&self, record: &ServiceRecord) -> Result<(ServiceSpec, bool), String> {
        let mut spec = spec_of(record)?;
        let health = self.lock_health();
        let panic = match health.get(&record.name).filter(|h| h.targets.iter().eq(spec.all_targets())) {
            Some(health) => health.rotate(&mut spec),
            None => false,
        };
        Ok((spec, panic))
    }

    /// Saves `record`, then puts its service in service. Targets in `gated` just passed a gate
    /// and count as healthy; the others keep their health. A failed switch puts the saved
    /// state (and the health) back, so the file never names a service that is not routed.
    async fn commit(
        self: &Arc<Self>,
        routes: &Arc<dyn Routes>,
        record: ServiceRecord,
        gated: &[TargetSpec],
    ) -> Result<Vec<Retired>, DeployError> {
        let name = record.name.clone();
        let all: Vec<TargetSpec> = spec_of(&record).map_err(DeployError::Invalid)?.all_targets().cloned().collect();
        let mut records = self.records.lock().await;
        let previous = records.insert(name.clone(), record.clone());
        let previous_health = {
            let mut health = self.lock_health();
            let old = health.remove(&name);
            match old {
                Some(old) if old.targets == all && gated.is_empty() => {
                    health.insert(name.clone(), old);
                    None
                }
                old => {
                    if all.len() > 1 {
                        health.insert(name.clone(), ServiceHealth::next(old.as_ref(), all, gated));
                    }
                    Some(old)
                }
            }
        };
        let health_changed = previous_health.is_some();
        let options = record.options.clone();
        let undo = |records: &mut BTreeMap<String, ServiceRecord>, previous_health: Option<Option<ServiceHealth>>| {
            match &previous {
                Some(old) => records.insert(name.clone(), old.clone()),
                None => records.remove(&name),
            };
            if let Some(old) = previous_health {
                let mut health = self.lock_health();
                match old {
                    Some(h) => health.insert(name.clone(), h),
                    None => health.remove(&name),
                };
            }
        };
        let result = self.save_and_switch(routes, &mut records, &record).await;
        if let Err(e) = &result {
            undo(&mut records, previous_health);
            if !matches!(e, DeployError::Store(_)) {
                self.save(&records).await?;
            }
        }
        if health_changed {
            // New health (or the old one put back): its monitor starts over.
            let options = previous.as_ref().filter(|_| result.is_err()).map_or(&options, |p| &p.options);
            self.watch_health(&name, options);
        }
        result
    }

    /// The part of [`Self::commit`] that can fail: the save, then the swap.
    async fn save_and_switch(
        &self,
        routes: &Arc<dyn Routes>,
        records: &mut BTreeMap<String, ServiceRecord>,
        record: &ServiceRecord,
    ) -> Result<Vec<Retired>, DeployError> {
        self.save(records).await?;
        let (spec, _) = self.published(record).map_err(DeployError::Invalid)?;
        let spec = Arc::new(spec);
        let old_spec = self.lock_specs().insert(record.name.clone(), spec.clone());
        routes.apply(vec![spec], &[]).map_err(|holder| {
            let mut specs = self.lock_specs();
            match old_spec {
                Some(old) => specs.insert(record.name.clone(), old),
                None => specs.remove(&record.name),
            };
            DeployError::Conflict(holder)
        })
    }

    async fn drain(&self, name: &str, retired: &[Retired], timeout: Duration) -> Drained {
        let drained = drain(retired, timeout).await;
        self.metrics.drain_seconds.observe(drained.drain_us as f64 / 1e6);
        self.metrics.drain_cancelled.inc_by(u64::from(drained.left));
        if drained.left == 0 {
            tracing::info!(service = name, drain_us = drained.drain_us, "old targets drained");
        } else {
            tracing::warn!(
                service = name,
                drain_us = drained.drain_us,
                cancelled = drained.left,
                "drain timeout passed: requests still in flight were cancelled"
            );
        }
        drained
    }

    async fn save(&self, records: &BTreeMap<String, ServiceRecord>) -> Result<(), StoreError> {
        let all: Vec<ServiceRecord> = records.values().cloned().collect();
        // The store does blocking file I/O (fsync); keep it off the async threads.
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.save(&all)).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Write { path: self.store.location().into(), source: std::io::Error::other(e) }),
        }
    }
}

/// The route facts of a saved service, its pause, stop and rollout included.
fn spec_of(record: &ServiceRecord) -> Result<ServiceSpec, String> {
    let mut spec = service_spec(&record.name, &record.options)?;
    if let Some(rollout) = &record.rollout {
        rollout.split.check()?;
        let active: Vec<TargetSpec> = spec.all_targets().cloned().collect();
        let targets = options::targets(&rollout.targets, &active)?;
        let taken: Vec<TargetSpec> = active.iter().chain(&targets).cloned().collect();
        spec.rollout = Some(Rollout {
            read_targets: options::targets(&rollout.read_targets, &taken)?,
            targets,
            percent: rollout.split.percent,
            allowlist: rollout.split.allowlist.clone(),
        });
    }
    spec.availability = match &record.state {
        ServiceState::Running => Availability::Serving,
        ServiceState::Paused { max_pause_ms } => {
            Availability::Paused { max_pause: Duration::from_millis(*max_pause_ms) }
        }
        ServiceState::Stopped { message } => Availability::Stopped { message: message.clone() },
    };
    Ok(spec)
}

/// How long cancelled requests get to let go of their targets after the drain timeout.
const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// Drains `retired`: its tunnels (WebSockets) are closed at once, as kamal-proxy does; other
/// requests may finish until `timeout`, then the rest are cancelled (a request waiting for
/// its response head gets 504, a response being sent is cut).
pub async fn drain(retired: &[Retired], timeout: Duration) -> Drained {
    let started = Instant::now();
    for service in retired {
        service.signal(Scope::Tunnels);
    }
    let in_flight = || retired.iter().map(Retired::in_flight).sum::<u32>();
    let left = wait_idle(&in_flight, timeout).await;
    let drain_us = micros(started.elapsed());
    if left > 0 {
        for service in retired {
            service.signal(Scope::All);
        }
        wait_idle(&in_flight, CANCEL_GRACE).await;
    }
    Drained { drain_us, left }
}

/// Waits until `in_flight` reads 0, at most `timeout`; returns the last count.
async fn wait_idle(in_flight: &impl Fn() -> u32, timeout: Duration) -> u32 {
    let started = Instant::now();
    loop {
        let left = in_flight();
        if left == 0 || started.elapsed() >= timeout {
            return left;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Observer for DeploySource {
    fn observe<'a>(
        &'a self,
        service: &'a str,
        targets: &'a [TargetSpec],
        results: &'a [Result<(), String>],
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(self.observe_health(service, targets, results))
    }
}
