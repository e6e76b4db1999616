//! The deploy source: services created at run time with `gatehouse deploy` (kamal-proxy's
//! model). A deploy health-gates its new targets, saves the new state, moves every host and
//! path of the service in one route-table swap, then drains the old targets until they are
//! idle or the drain timeout passes. State is saved before a change is acknowledged and
//! restored at boot.
//!
//! The source produces route facts ([`ServiceSpec`]); whoever owns the route table installs
//! them through [`Routes`], which hands back the in-flight counters of what it replaced.

mod gate;
pub mod health;
mod options;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_model::{Availability, Retired, Scope, ServiceSpec};
use serde::Serialize;

pub use gate::GateFailure;
pub use options::{check_name, service_spec, DeployOptions, DeployRequest, HealthCheckOptions, StateChange};
pub use store::{FileStore, Loaded, ServiceRecord, ServiceState, Store, StoreError, STATE_VERSION};

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
    #[error("{0}")]
    Unhealthy(GateFailure),
    #[error("the deploy state could not be saved, nothing was changed: {0}")]
    Store(#[from] StoreError),
}

/// What a deploy did, for the CLI and the log.
#[derive(Debug, Clone, Serialize)]
pub struct DeployOutcome {
    pub service: String,
    pub targets: Vec<String>,
    /// Time the new targets took to pass the gate (0 with `force`).
    pub gate_ms: u64,
    /// Time the old targets took to become idle, or the drain timeout.
    pub drain_ms: u64,
    /// Requests still in flight on the old targets when the drain timeout passed; they were
    /// cancelled.
    pub drain_left: u32,
}

/// A drain's result.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Drained {
    pub drain_ms: u64,
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
    pub state: ServiceState,
}

pub struct DeploySource {
    store: Arc<dyn Store>,
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
    pub fn open(store: Arc<dyn Store>) -> Self {
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
        for record in loaded.records {
            match spec_of(&record) {
                Ok(spec) => {
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
            records: tokio::sync::Mutex::new(records),
            specs: Mutex::new(specs),
            service_locks: Mutex::new(HashMap::new()),
            restore_problems: problems,
        }
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

    fn service_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.service_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    /// Deploys `name`: gate, save, switch, drain. Returns once the old targets are idle or
    /// the drain timeout passed, so stopping the old release afterwards loses nothing.
    pub async fn deploy(
        &self,
        routes: &dyn Routes,
        name: &str,
        request: DeployRequest,
    ) -> Result<DeployOutcome, DeployError> {
        let spec = Arc::new(service_spec(name, &request.options).map_err(DeployError::Invalid)?);
        let lock = self.service_lock(name);
        let _one_at_a_time = lock.lock().await;
        if let Some(holder) = routes.holder(&spec) {
            return Err(DeployError::Conflict(holder));
        }
        tracing::info!(service = name, targets = ?request.options.targets, force = request.force, "deploying");
        let started = Instant::now();
        if !request.force {
            gate::wait_healthy(&spec.targets, &request.options.health_check, request.options.deploy_timeout())
                .await
                .map_err(|failure| {
                    tracing::warn!(service = name, "deploy failed, the current targets keep serving: {failure}");
                    DeployError::Unhealthy(failure)
                })?;
        }
        let gate_ms = started.elapsed().as_millis() as u64;
        // A paused or stopped service stays so across a deploy, as in kamal-proxy.
        let state = self.records.lock().await.get(name).map(|r| r.state.clone()).unwrap_or_default();
        let record = ServiceRecord { name: name.to_string(), options: request.options.clone(), state };
        let installed = Arc::new(spec_of(&record).map_err(DeployError::Invalid)?);
        let retired = self.commit(routes, name, Some(record), installed).await?;
        tracing::info!(service = name, gate_ms, "switched to the new targets; draining the old ones");
        let drained = drain(&retired, request.options.drain_timeout()).await;
        log_drain(name, drained);
        Ok(DeployOutcome {
            service: name.to_string(),
            targets: spec.targets.iter().map(|t| t.url()).collect(),
            gate_ms,
            drain_ms: drained.drain_ms,
            drain_left: drained.left,
        })
    }

    /// Pauses, stops or resumes `name`. Pausing and stopping drain the requests in flight
    /// (the drain's result is returned); resuming releases the held requests.
    pub async fn set_state(
        &self,
        routes: &dyn Routes,
        name: &str,
        state: ServiceState,
        drain_timeout: Duration,
    ) -> Result<Drained, DeployError> {
        let lock = self.service_lock(name);
        let _one_at_a_time = lock.lock().await;
        let Some(mut record) = self.records.lock().await.get(name).cloned() else {
            return Err(DeployError::NotFound(name.to_string()));
        };
        record.state = state;
        let spec = Arc::new(spec_of(&record).map_err(DeployError::Invalid)?);
        let serving = spec.availability == Availability::Serving;
        let retired = self.commit(routes, name, Some(record), spec).await?;
        tracing::info!(service = name, state = if serving { "running" } else { "held" }, "service state changed");
        if serving {
            return Ok(Drained { drain_ms: 0, left: 0 });
        }
        let drained = drain(&retired, drain_timeout).await;
        log_drain(name, drained);
        Ok(drained)
    }

    /// Unroutes `name` at once, without a drain (kamal-proxy's `remove`).
    pub async fn remove(&self, routes: &dyn Routes, name: &str) -> Result<(), DeployError> {
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
        let old_spec = self.lock_specs().remove(name);
        if let Err(e) = routes.apply(Vec::new(), &[name]) {
            // Removing a name cannot conflict; this is the table owner refusing outright.
            tracing::error!(service = name, error = %e, "could not unroute the removed service");
            if let Some(spec) = old_spec {
                self.lock_specs().insert(name.to_string(), spec);
            }
            records.insert(name.to_string(), old);
            self.save(&records).await?;
            return Err(DeployError::Conflict(e));
        }
        tracing::info!(service = name, "service removed");
        Ok(())
    }

    /// Every deployed service.
    pub async fn list(&self) -> Vec<ServiceView> {
        let records = self.records.lock().await;
        records
            .values()
            .map(|r| ServiceView {
                name: r.name.clone(),
                hosts: r.options.hosts.clone(),
                path_prefixes: if r.options.path_prefixes.is_empty() {
                    vec!["/".into()]
                } else {
                    r.options.path_prefixes.clone()
                },
                targets: r.options.targets.clone(),
                state: r.state.clone(),
            })
            .collect()
    }

    /// Saves `record` (or the removal of `name`), then puts `spec` in service. A failed
    /// switch puts the saved state back, so the file never names a service that is not
    /// routed.
    async fn commit(
        &self,
        routes: &dyn Routes,
        name: &str,
        record: Option<ServiceRecord>,
        spec: Arc<ServiceSpec>,
    ) -> Result<Vec<Retired>, DeployError> {
        let mut records = self.records.lock().await;
        let previous = match record {
            Some(record) => records.insert(name.to_string(), record),
            None => records.remove(name),
        };
        let restore = |records: &mut BTreeMap<String, ServiceRecord>| match &previous {
            Some(old) => {
                records.insert(name.to_string(), old.clone());
            }
            None => {
                records.remove(name);
            }
        };
        if let Err(e) = self.save(&records).await {
            restore(&mut records);
            return Err(e.into());
        }
        let old_spec = self.lock_specs().insert(name.to_string(), spec.clone());
        match routes.apply(vec![spec], &[]) {
            Ok(retired) => Ok(retired),
            Err(holder) => {
                {
                    let mut specs = self.lock_specs();
                    match old_spec {
                        Some(old) => specs.insert(name.to_string(), old),
                        None => specs.remove(name),
                    };
                }
                restore(&mut records);
                self.save(&records).await?;
                Err(DeployError::Conflict(holder))
            }
        }
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

/// The route facts of a saved service, its pause or stop included.
fn spec_of(record: &ServiceRecord) -> Result<ServiceSpec, String> {
    let mut spec = service_spec(&record.name, &record.options)?;
    spec.health_path = Some(record.options.health_check.path.clone());
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
    let drain_ms = started.elapsed().as_millis() as u64;
    if left > 0 {
        for service in retired {
            service.signal(Scope::All);
        }
        wait_idle(&in_flight, CANCEL_GRACE).await;
    }
    Drained { drain_ms, left }
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

fn log_drain(service: &str, drained: Drained) {
    if drained.left == 0 {
        tracing::info!(service, drain_ms = drained.drain_ms, "old targets drained");
    } else {
        tracing::warn!(
            service,
            drain_ms = drained.drain_ms,
            left = drained.left,
            "drain timeout passed with requests in flight"
        );
    }
}
