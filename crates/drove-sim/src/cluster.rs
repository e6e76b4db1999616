//! The simulated cluster: apps, instances, executors, the leader's event store, and timed
//! simulation steps. Everything here is synchronous and I/O-free; the HTTP nodes read it.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::model::*;

/// Instances not refreshed for this long are left out of `/endpoints` (Drove's
/// `MAX_ACCEPTABLE_UPDATE_INTERVAL`).
pub const STALE_AFTER_MS: i64 = 60_000;
/// How long after a maintenance set or unset the cluster still counts as in maintenance.
pub const MAINTENANCE_WINDOW_MS: i64 = 40_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposedPort {
    pub name: String,
    pub port: u16,
    pub port_type: PortType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub vhost: String,
    pub port_name: String,
}

/// The parts of an `ApplicationSpec` the gateway can observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    pub name: String,
    pub version: String,
    pub exposed_ports: Vec<ExposedPort>,
    pub exposure: Option<Exposure>,
    pub tags: Option<BTreeMap<String, String>>,
}

impl AppSpec {
    /// An app with one HTTP port named `main` exposed under `vhost`.
    pub fn web(name: &str, version: &str, vhost: &str) -> Self {
        AppSpec {
            name: name.into(),
            version: version.into(),
            exposed_ports: vec![ExposedPort { name: "main".into(), port: 8080, port_type: PortType::Http }],
            exposure: Some(Exposure { vhost: vhost.into(), port_name: "main".into() }),
            tags: None,
        }
    }

    pub fn with_tags(mut self, tags: &[(&str, &str)]) -> Self {
        self.tags = Some(tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        self
    }

    pub fn app_id(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }

    fn ports_text(&self) -> String {
        let ports: Vec<_> =
            self.exposed_ports.iter().map(|p| format!("{}:{}:{}", p.name, p.port, p.port_type.lower())).collect();
        ports.join(",")
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub executor_id: String,
    pub hostname: String,
    pub ports: BTreeMap<String, InstancePort>,
    pub state: InstanceState,
    pub error: String,
    pub created: i64,
    /// `Some` once pinned: by a test, or when its executor stopped reporting.
    pub updated_pinned: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct App {
    pub spec: AppSpec,
    pub state: AppState,
    pub required: u32,
    pub instances: BTreeMap<String, Instance>,
    pub created: i64,
    pub updated: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutorState {
    Active,
    BlacklistRequested,
    Blacklisted,
    Removed,
}

#[derive(Debug, Clone)]
pub struct Executor {
    pub id: String,
    pub hostname: String,
    pub port: u16,
    pub state: ExecutorState,
    /// False once the executor stopped sending snapshots (it is being lost).
    pub reporting: bool,
}

/// Where a new instance's host port comes from: made up, or a real server started for it.
pub trait Ports: Send {
    /// Returns the (hostname, host port) the instance serves on.
    fn open(&mut self, app_id: &str, instance_id: &str, executor_hostname: &str) -> (String, u16);
    fn close(&mut self, host_port: u16);
}

/// Host ports counted up from 31000 on the executor's hostname; nothing listens on them.
pub struct MadeUpPorts(pub u16);

impl Ports for MadeUpPorts {
    fn open(&mut self, _: &str, _: &str, executor_hostname: &str) -> (String, u16) {
        self.0 = self.0.wrapping_add(1).max(31_000);
        (executor_hostname.to_string(), self.0)
    }
    fn close(&mut self, _: u16) {}
}

#[derive(Debug, Clone)]
enum Timer {
    InstanceState {
        app: String,
        instance: String,
        state: InstanceState,
    },
    RemoveInstance {
        app: String,
        instance: String,
    },
    AppState {
        app: String,
        state: AppState,
    },
    /// The app monitor noticed missing instances: outage, then scale back to `required`.
    Recover {
        app: String,
    },
    RecoveryWindowEnd,
    RemoveExecutor {
        executor: String,
    },
}

/// Timings of the simulation; zero makes a step happen at once.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Between two steps of an instance walk (PENDING -> ... -> HEALTHY, or the stop walk).
    pub step_ms: i64,
    /// From a crash to the app monitor's recovery (Drove: up to 30 s).
    pub monitor_ms: i64,
    /// From an executor going silent to EXECUTOR_REMOVED (Drove: 45 s).
    pub executor_removal_ms: i64,
    /// How long events are kept (Drove: 60 minutes).
    pub retention_ms: i64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings { step_ms: 200, monitor_ms: 1_000, executor_removal_ms: 5_000, retention_ms: 60 * 60 * 1000 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    #[error("App {0} not found")]
    NoApp(String),
    #[error("No such application instance {0}/{1}")]
    NoInstance(String, String),
    #[error("App {0} already exists")]
    AppExists(String),
    #[error("Executor {0} not found")]
    NoExecutor(String),
    #[error("No executors to place instances on")]
    NoExecutors,
    #[error("controller node {0} does not exist")]
    NoNode(usize),
}

pub struct ClusterState {
    manual_now: Option<i64>,
    pub nodes: usize,
    pub leader: Option<usize>,
    pub apps: BTreeMap<String, App>,
    pub executors: BTreeMap<String, Executor>,
    events: BTreeMap<i64, Vec<Event>>,
    maintenance: bool,
    maintenance_changed: Option<i64>,
    recovery_until: Option<i64>,
    /// Whether a failover records LEADERSHIP_ACQUIRED (in Drove it may or may not survive).
    pub record_leadership_event: bool,
    /// The next event is recorded this many ms in the past, as Drove's async recording can.
    pub record_next_event_late_ms: Option<i64>,
    pub timings: Timings,
    timers: BTreeMap<(i64, u64), Timer>,
    timer_seq: u64,
    ports: Box<dyn Ports>,
    placement: usize,
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn random_uuid() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

impl ClusterState {
    pub fn new(nodes: usize, timings: Timings, ports: Box<dyn Ports>) -> Self {
        ClusterState {
            manual_now: None,
            nodes,
            leader: if nodes > 0 { Some(0) } else { None },
            apps: BTreeMap::new(),
            executors: BTreeMap::new(),
            events: BTreeMap::new(),
            maintenance: false,
            maintenance_changed: None,
            recovery_until: None,
            record_leadership_event: true,
            record_next_event_late_ms: None,
            timings,
            timers: BTreeMap::new(),
            timer_seq: 0,
            ports,
            placement: 0,
        }
    }

    /// Epoch milliseconds: the wall clock, or the manual clock once [`Self::use_manual_clock`].
    pub fn now(&self) -> i64 {
        self.manual_now.unwrap_or_else(wall_clock_ms)
    }

    pub fn use_manual_clock(&mut self, at: i64) {
        self.manual_now = Some(at);
    }

    /// Moves the manual clock on and runs what fell due.
    pub fn advance(&mut self, ms: i64) {
        let now = self.now() + ms;
        self.manual_now = Some(now);
        self.run_due();
    }

    /// When the next timed step is due, if any.
    pub fn next_due(&self) -> Option<i64> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    // ---- events ----

    fn record(&mut self, kind: &'static str, metadata: Map<String, Value>) {
        let mut time = self.now();
        if let Some(late) = self.record_next_event_late_ms.take() {
            time -= late;
        }
        let event = Event { kind, id: random_uuid(), time, metadata };
        self.events.entry(time).or_default().push(event);
    }

    fn purge_old_events(&mut self) {
        let oldest_kept = self.now() - self.timings.retention_ms;
        self.events = self.events.split_off(&oldest_kept);
    }

    /// `/cluster/events/summary`: counts of events newer than `last_sync_time`.
    pub fn events_summary(&mut self, last_sync_time: i64) -> EventsSummary {
        self.purge_old_events();
        let mut events_count = BTreeMap::new();
        for event in self.events.range(last_sync_time + 1..).flat_map(|(_, v)| v) {
            *events_count.entry(event.kind.to_string()).or_insert(0) += 1;
        }
        EventsSummary { events_count, last_sync_time: self.last_event_time().unwrap_or(last_sync_time) }
    }

    /// `/cluster/events/latest`: newest first, cut to `size`.
    pub fn events_latest(&mut self, last_sync_time: i64, size: usize) -> EventsList {
        self.purge_old_events();
        let events: Vec<Event> = self
            .events
            .range(last_sync_time + 1..)
            .rev()
            .flat_map(|(_, v)| v.iter().rev())
            .take(size)
            .cloned()
            .collect();
        EventsList { events, last_sync_time: self.last_event_time().unwrap_or(last_sync_time) }
    }

    fn last_event_time(&self) -> Option<i64> {
        self.events.keys().next_back().copied()
    }

    fn app_event(&mut self, app_id: &str) {
        let Some(app) = self.apps.get(app_id) else { return };
        let mut m = Map::new();
        m.insert("APP_ID".into(), json!(app_id));
        m.insert("APP_NAME".into(), json!(app.spec.name));
        m.insert("APP_VERSION".into(), json!(app.spec.version));
        m.insert("CURRENT_STATE".into(), json!(app.state));
        m.insert("CURRENT_INSTANCES".into(), json!(app.required));
        m.insert("EXECUTABLE".into(), json!(format!("docker.example/{}:{}", app.spec.name, app.spec.version)));
        m.insert("PLACEMENT_POLICY".into(), json!("ANY"));
        m.insert("CPU_COUNT".into(), json!(1));
        m.insert("MEMORY".into(), json!(512));
        m.insert("PORTS".into(), json!(app.spec.ports_text()));
        if let Some(exposure) = &app.spec.exposure {
            m.insert("VHOST".into(), json!(exposure.vhost));
        }
        self.record("APP_STATE_CHANGE", m);
    }

    fn instance_event(&mut self, app_id: &str, instance_id: &str) {
        let Some(app) = self.apps.get(app_id) else { return };
        let Some(i) = app.instances.get(instance_id) else { return };
        let mut m = Map::new();
        m.insert("APP_ID".into(), json!(app_id));
        m.insert("APP_NAME".into(), json!(app.spec.name));
        m.insert("INSTANCE_ID".into(), json!(i.id));
        m.insert("EXECUTOR_ID".into(), json!(i.executor_id));
        m.insert("CREATED".into(), json!(i.created));
        m.insert("CURRENT_STATE".into(), json!(i.state));
        m.insert("EXECUTOR_HOST".into(), json!(i.hostname));
        let ports: Vec<_> =
            i.ports.iter().map(|(n, p)| format!("{n}:{}:{}", p.host_port, p.port_type.lower())).collect();
        m.insert("PORTS".into(), json!(ports.join(",")));
        if !i.error.is_empty() {
            m.insert("ERROR".into(), json!(i.error));
        }
        self.record("INSTANCE_STATE_CHANGE", m);
    }

    fn executor_event(&mut self, kind: &'static str, executor_id: &str) {
        let mut m = Map::new();
        m.insert("EXECUTOR_ID".into(), json!(executor_id));
        if kind != "EXECUTOR_REMOVED" {
            if let Some(e) = self.executors.get(executor_id) {
                m.insert("HOSTNAME".into(), json!(e.hostname));
                m.insert("PORT".into(), json!(e.port));
            }
        }
        self.record(kind, m);
    }

    fn controller_event(&mut self, kind: &'static str) {
        let mut m = Map::new();
        m.insert("HOSTNAME".into(), json!("127.0.0.1"));
        self.record(kind, m);
    }

    // ---- reads ----

    fn in_maintenance_window(&self) -> bool {
        self.maintenance || self.maintenance_changed.is_some_and(|at| self.now() - at < MAINTENANCE_WINDOW_MS)
    }

    /// The state the leader's state machine reports: INIT for every app while a new leader
    /// is still recreating them.
    pub fn effective_state(&self, app: &App) -> AppState {
        match self.recovery_until {
            Some(until) if self.now() < until => AppState::Init,
            _ => app.state,
        }
    }

    pub fn instance_updated(&self, instance: &Instance) -> i64 {
        instance.updated_pinned.unwrap_or_else(|| self.now())
    }

    /// `/endpoints`, with the inclusion rules of drove-api.md §1.2.
    pub fn endpoints(&self, names: &[String]) -> Vec<ExposedAppInfo> {
        let now = self.now();
        let skip_stale_check = self.in_maintenance_window();
        let mut out = Vec::new();
        for (app_id, app) in &self.apps {
            let Some(exposure) = &app.spec.exposure else { continue };
            if !self.effective_state(app).is_active() || app.spec.exposed_ports.is_empty() {
                continue;
            }
            if !names.is_empty() && !names.contains(&app.spec.name) {
                continue;
            }
            let mut instances: Vec<&Instance> = app
                .instances
                .values()
                .filter(|i| i.state == InstanceState::Healthy)
                .filter(|i| skip_stale_check || now - self.instance_updated(i) <= STALE_AFTER_MS)
                .filter(|i| i.ports.contains_key(&exposure.port_name))
                .collect();
            instances.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
            out.push(ExposedAppInfo {
                app_name: app.spec.name.clone(),
                app_id: app_id.clone(),
                vhost: exposure.vhost.clone(),
                tags: app.spec.tags.clone(),
                hosts: instances
                    .iter()
                    .map(|i| {
                        let port = &i.ports[&exposure.port_name];
                        ExposedHost { host: i.hostname.clone(), port: port.host_port, port_type: port.port_type }
                    })
                    .collect(),
            });
        }
        out
    }

    pub fn instance_info(&self, app: &App, i: &Instance) -> InstanceInfo {
        InstanceInfo {
            app_id: app.spec.app_id(),
            app_name: app.spec.name.clone(),
            instance_id: i.id.clone(),
            executor_id: i.executor_id.clone(),
            local_info: LocalInfo { hostname: i.hostname.clone(), ports: i.ports.clone() },
            resources: vec![
                json!({"type": "CPU", "cores": {"0": [1]}}),
                json!({"type": "MEMORY", "memoryInMB": {"0": 512}}),
            ],
            state: i.state,
            metadata: BTreeMap::new(),
            error_message: i.error.clone(),
            created: i.created,
            updated: self.instance_updated(i),
        }
    }

    pub fn app_summary(&self, app: &App) -> AppSummary {
        let healthy = app.instances.values().filter(|i| i.state == InstanceState::Healthy).count() as u32;
        AppSummary {
            id: app.spec.app_id(),
            name: app.spec.name.clone(),
            required_instances: app.required,
            healthy_instances: healthy,
            total_cpus: healthy,
            total_memory: healthy as u64 * 512,
            tags: app.spec.tags.clone(),
            state: self.effective_state(app),
            created: app.created,
            updated: app.updated,
        }
    }

    pub fn cluster_summary(&self, leader: String) -> ClusterSummary {
        let executors = self.executors.values().filter(|e| e.state != ExecutorState::Removed).count();
        let active = self.apps.values().filter(|a| self.effective_state(a).is_active()).count();
        let used = self.apps.values().flat_map(|a| a.instances.values()).filter(|i| i.state.is_active()).count() as u32;
        let total = executors as u32 * 8;
        ClusterSummary {
            leader,
            state: if self.maintenance { "MAINTENANCE" } else { "NORMAL" },
            num_executors: executors,
            num_applications: self.apps.len(),
            num_active_applications: active,
            num_active_tasks: 0,
            num_local_services: 0,
            num_active_local_services: 0,
            free_cores: total.saturating_sub(used),
            used_cores: used,
            total_cores: total,
            free_memory: (total.saturating_sub(used) as u64) * 1024,
            used_memory: used as u64 * 1024,
            total_memory: total as u64 * 1024,
        }
    }

    // ---- direct changes (each emits what Drove emits) ----

    pub fn add_executor(&mut self, id: &str, hostname: &str) {
        let port = 3000 + self.executors.len() as u16;
        let e =
            Executor { id: id.into(), hostname: hostname.into(), port, state: ExecutorState::Active, reporting: true };
        self.executors.insert(id.into(), e);
        self.executor_event("EXECUTOR_ADDED", id);
    }

    /// Registers an app. With `required > 0` it goes RUNNING at once (as Drove does, before
    /// any instance starts) and instances are started for it.
    pub fn add_app(&mut self, spec: AppSpec, required: u32) -> Result<String, SimError> {
        let app_id = spec.app_id();
        if self.apps.contains_key(&app_id) {
            return Err(SimError::AppExists(app_id));
        }
        let now = self.now();
        let state = if required > 0 { AppState::Running } else { AppState::Monitoring };
        let app = App { spec, state, required: 0, instances: BTreeMap::new(), created: now, updated: now };
        self.apps.insert(app_id.clone(), app);
        self.app_event(&app_id);
        if required > 0 {
            self.scale(&app_id, required)?;
        }
        Ok(app_id)
    }

    pub fn set_app_state(&mut self, app_id: &str, state: AppState) -> Result<(), SimError> {
        let now = self.now();
        let app = self.apps.get_mut(app_id).ok_or_else(|| SimError::NoApp(app_id.into()))?;
        app.state = state;
        app.updated = now;
        self.app_event(app_id);
        Ok(())
    }

    pub fn set_tags(&mut self, app_id: &str, tags: Option<BTreeMap<String, String>>) -> Result<(), SimError> {
        let app = self.apps.get_mut(app_id).ok_or_else(|| SimError::NoApp(app_id.into()))?;
        app.spec.tags = tags;
        Ok(())
    }

    /// Destroys an app: DESTROY_REQUESTED, DESTROYED, then its data is gone.
    pub fn remove_app(&mut self, app_id: &str) -> Result<(), SimError> {
        self.set_app_state(app_id, AppState::DestroyRequested)?;
        self.set_app_state(app_id, AppState::Destroyed)?;
        if let Some(app) = self.apps.remove(app_id) {
            for i in app.instances.values() {
                for p in i.ports.values() {
                    self.ports.close(p.host_port);
                }
            }
        }
        Ok(())
    }

    /// Adds an instance as the test describes it; one INSTANCE_STATE_CHANGE.
    pub fn add_instance(
        &mut self,
        app_id: &str,
        executor_id: &str,
        hostname: &str,
        ports: BTreeMap<String, InstancePort>,
        state: InstanceState,
    ) -> Result<String, SimError> {
        let now = self.now();
        let app = self.apps.get_mut(app_id).ok_or_else(|| SimError::NoApp(app_id.into()))?;
        let id = format!("AI-{}", random_uuid());
        let instance = Instance {
            id: id.clone(),
            executor_id: executor_id.into(),
            hostname: hostname.into(),
            ports,
            state,
            error: String::new(),
            created: now,
            updated_pinned: None,
        };
        app.instances.insert(id.clone(), instance);
        self.instance_event(app_id, &id);
        Ok(id)
    }

    /// Emits INSTANCE_STATE_CHANGE only when the state really changes, as Drove does.
    pub fn set_instance_state(
        &mut self,
        app_id: &str,
        instance_id: &str,
        state: InstanceState,
    ) -> Result<(), SimError> {
        let instance = self.instance_mut(app_id, instance_id)?;
        if instance.state == state {
            return Ok(());
        }
        instance.state = state;
        instance.error = match state {
            InstanceState::Unhealthy => "Health check failed".into(),
            _ => String::new(),
        };
        self.instance_event(app_id, instance_id);
        Ok(())
    }

    /// Removes an instance record without an event (as an executor loss does).
    pub fn remove_instance(&mut self, app_id: &str, instance_id: &str) -> Result<(), SimError> {
        let app = self.apps.get_mut(app_id).ok_or_else(|| SimError::NoApp(app_id.into()))?;
        let instance =
            app.instances.remove(instance_id).ok_or_else(|| SimError::NoInstance(app_id.into(), instance_id.into()))?;
        for p in instance.ports.values() {
            self.ports.close(p.host_port);
        }
        Ok(())
    }

    pub fn set_instance_updated(&mut self, app_id: &str, instance_id: &str, at: i64) -> Result<(), SimError> {
        self.instance_mut(app_id, instance_id)?.updated_pinned = Some(at);
        Ok(())
    }

    fn instance_mut(&mut self, app_id: &str, instance_id: &str) -> Result<&mut Instance, SimError> {
        self.apps
            .get_mut(app_id)
            .and_then(|a| a.instances.get_mut(instance_id))
            .ok_or_else(|| SimError::NoInstance(app_id.into(), instance_id.into()))
    }

    pub fn set_maintenance(&mut self, on: bool) {
        self.maintenance = on;
        self.maintenance_changed = Some(self.now());
        self.controller_event(if on { "MAINTENANCE_MODE_SET" } else { "MAINTENANCE_MODE_REMOVED" });
    }

    pub fn blacklist(&mut self, executor_id: &str, on: bool) -> Result<(), SimError> {
        let e = self.executors.get_mut(executor_id).ok_or_else(|| SimError::NoExecutor(executor_id.into()))?;
        if on {
            e.state = ExecutorState::BlacklistRequested;
            self.executor_event("EXECUTOR_BLACKLIST_REQUESTED", executor_id);
            if let Some(e) = self.executors.get_mut(executor_id) {
                e.state = ExecutorState::Blacklisted;
            }
            self.executor_event("EXECUTOR_BLACKLISTED", executor_id);
        } else {
            e.state = ExecutorState::Active;
            self.executor_event("EXECUTOR_UN_BLACKLISTED", executor_id);
        }
        Ok(())
    }

    /// Switches the leader (or leaves none): the event store is wiped, LEADERSHIP_ACQUIRED
    /// may be recorded, and for `recovery_ms` every app reads as INIT (absent from
    /// `/endpoints`) until the new leader has recreated it. Instances are untouched.
    pub fn failover(&mut self, to: Option<usize>, recovery_ms: i64) -> Result<(), SimError> {
        if let Some(node) = to.filter(|n| *n >= self.nodes) {
            return Err(SimError::NoNode(node));
        }
        self.leader = to;
        self.events.clear();
        if to.is_none() {
            return Ok(());
        }
        if self.record_leadership_event {
            self.controller_event("LEADERSHIP_ACQUIRED");
        }
        if recovery_ms > 0 {
            let until = self.now() + recovery_ms;
            self.recovery_until = Some(until);
            self.schedule_at(until, Timer::RecoveryWindowEnd);
        } else {
            self.end_recovery_window();
        }
        Ok(())
    }

    fn end_recovery_window(&mut self) {
        self.recovery_until = None;
        let ids: Vec<String> = self.apps.keys().cloned().collect();
        for id in ids {
            self.app_event(&id);
        }
    }

    // ---- simulated operations (timed walks) ----

    fn schedule(&mut self, after_ms: i64, timer: Timer) {
        let at = self.now() + after_ms;
        self.schedule_at(at, timer);
    }

    fn schedule_at(&mut self, at: i64, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
        if at <= self.now() {
            self.run_due();
        }
    }

    /// Runs every timed step whose time has come, in order.
    pub fn run_due(&mut self) {
        loop {
            let now = self.now();
            let Some(entry) = self.timers.first_entry() else { return };
            if entry.key().0 > now {
                return;
            }
            let timer = entry.remove();
            self.fire(timer);
        }
    }

    fn fire(&mut self, timer: Timer) {
        // A step may refer to something a test removed meanwhile; it is then moot.
        let _ = match timer {
            Timer::InstanceState { app, instance, state } => self.set_instance_state(&app, &instance, state),
            Timer::RemoveInstance { app, instance } => self.remove_instance(&app, &instance),
            Timer::AppState { app, state } => self.set_app_state(&app, state),
            Timer::Recover { app } => self.recover(&app),
            Timer::RecoveryWindowEnd => {
                self.end_recovery_window();
                Ok(())
            }
            Timer::RemoveExecutor { executor } => self.remove_executor(&executor),
        };
    }

    fn pick_executor(&mut self) -> Result<(String, String), SimError> {
        let usable: Vec<&Executor> =
            self.executors.values().filter(|e| e.state == ExecutorState::Active && e.reporting).collect();
        if usable.is_empty() {
            return Err(SimError::NoExecutors);
        }
        let e = usable[self.placement % usable.len()];
        self.placement += 1;
        Ok((e.id.clone(), e.hostname.clone()))
    }

    /// Scales to `required` instances: new ones walk PENDING -> HEALTHY a step at a time,
    /// surplus ones (newest first) walk HEALTHY -> STOPPED and are deleted. The app goes
    /// SCALING_REQUESTED, then RUNNING (or MONITORING at zero).
    pub fn scale(&mut self, app_id: &str, required: u32) -> Result<(), SimError> {
        let app = self.apps.get_mut(app_id).ok_or_else(|| SimError::NoApp(app_id.into()))?;
        app.required = required;
        let mut live: Vec<(i64, String)> =
            app.instances.values().filter(|i| i.state.is_active()).map(|i| (i.created, i.id.clone())).collect();
        let port_names: Vec<ExposedPort> = app.spec.exposed_ports.clone();
        live.sort();
        self.set_app_state(app_id, AppState::ScalingRequested)?;
        let step = self.timings.step_ms;
        let current = live.len() as u32;
        let mut last_step = 0;
        if required > current {
            for _ in current..required {
                let (executor_id, executor_host) = self.pick_executor()?;
                let id = format!("AI-{}", random_uuid());
                let mut ports = BTreeMap::new();
                let mut hostname = executor_host.clone();
                for p in &port_names {
                    let (host, host_port) = self.ports.open(app_id, &id, &executor_host);
                    hostname = host;
                    ports.insert(
                        p.name.clone(),
                        InstancePort { container_port: p.port, host_port, port_type: p.port_type },
                    );
                }
                let now = self.now();
                let instance = Instance {
                    id: id.clone(),
                    executor_id,
                    hostname,
                    ports,
                    state: InstanceState::Pending,
                    error: String::new(),
                    created: now,
                    updated_pinned: None,
                };
                if let Some(app) = self.apps.get_mut(app_id) {
                    app.instances.insert(id.clone(), instance);
                }
                self.instance_event(app_id, &id);
                let walk = [
                    InstanceState::Provisioning,
                    InstanceState::Starting,
                    InstanceState::Unready,
                    InstanceState::Ready,
                    InstanceState::Healthy,
                ];
                for (k, state) in walk.into_iter().enumerate() {
                    let at = step * (k as i64 + 1);
                    self.schedule(at, Timer::InstanceState { app: app_id.into(), instance: id.clone(), state });
                    last_step = last_step.max(at);
                }
            }
        } else {
            for (_, id) in live.iter().rev().take((current - required) as usize) {
                let walk = [InstanceState::Stopping, InstanceState::Deprovisioning, InstanceState::Stopped];
                for (k, state) in walk.into_iter().enumerate() {
                    let at = step * (k as i64 + 1);
                    self.schedule(at, Timer::InstanceState { app: app_id.into(), instance: id.clone(), state });
                }
                let at = step * 3;
                self.schedule(at, Timer::RemoveInstance { app: app_id.into(), instance: id.clone() });
                last_step = last_step.max(at);
            }
        }
        let done = if required > 0 { AppState::Running } else { AppState::Monitoring };
        self.schedule(last_step + step, Timer::AppState { app: app_id.into(), state: done });
        Ok(())
    }

    /// A health check fails: HEALTHY -> UNHEALTHY -> DEPROVISIONING -> STOPPED, then the app
    /// monitor detects the outage and starts a replacement.
    pub fn crash(&mut self, app_id: &str, instance_id: &str) -> Result<(), SimError> {
        self.set_instance_state(app_id, instance_id, InstanceState::Unhealthy)?;
        let step = self.timings.step_ms;
        let (app, instance) = (app_id.to_string(), instance_id.to_string());
        self.schedule(
            step,
            Timer::InstanceState { app: app.clone(), instance: instance.clone(), state: InstanceState::Deprovisioning },
        );
        self.schedule(
            2 * step,
            Timer::InstanceState { app: app.clone(), instance: instance.clone(), state: InstanceState::Stopped },
        );
        self.schedule(2 * step, Timer::RemoveInstance { app: app.clone(), instance });
        self.schedule(2 * step + self.timings.monitor_ms, Timer::Recover { app });
        Ok(())
    }

    /// Toggles an instance between HEALTHY and UNHEALTHY without stopping it (not something
    /// Drove does; useful to shake a gateway).
    pub fn flap(&mut self, app_id: &str, instance_id: &str) -> Result<(), SimError> {
        let state = self
            .apps
            .get(app_id)
            .and_then(|a| a.instances.get(instance_id))
            .map(|i| i.state)
            .ok_or_else(|| SimError::NoInstance(app_id.into(), instance_id.into()))?;
        let next = if state == InstanceState::Healthy { InstanceState::Unhealthy } else { InstanceState::Healthy };
        self.set_instance_state(app_id, instance_id, next)
    }

    fn recover(&mut self, app_id: &str) -> Result<(), SimError> {
        let required = self.apps.get(app_id).ok_or_else(|| SimError::NoApp(app_id.into()))?.required;
        self.set_app_state(app_id, AppState::OutageDetected)?;
        self.scale(app_id, required)
    }

    /// The executor stops reporting: its instances go stale (60 s), then EXECUTOR_REMOVED,
    /// the instance records vanish without events, and the app monitor recovers the apps.
    pub fn lose_executor(&mut self, executor_id: &str) -> Result<(), SimError> {
        let now = self.now();
        let e = self.executors.get_mut(executor_id).ok_or_else(|| SimError::NoExecutor(executor_id.into()))?;
        e.reporting = false;
        for app in self.apps.values_mut() {
            for i in app.instances.values_mut().filter(|i| i.executor_id == executor_id) {
                i.updated_pinned.get_or_insert(now);
            }
        }
        let after = self.timings.executor_removal_ms;
        self.schedule(after, Timer::RemoveExecutor { executor: executor_id.into() });
        Ok(())
    }

    /// EXECUTOR_REMOVED at once, instances deleted silently, apps recovered by the monitor.
    pub fn remove_executor(&mut self, executor_id: &str) -> Result<(), SimError> {
        let e = self.executors.get_mut(executor_id).ok_or_else(|| SimError::NoExecutor(executor_id.into()))?;
        e.state = ExecutorState::Removed;
        e.reporting = false;
        self.executor_event("EXECUTOR_REMOVED", executor_id);
        let mut affected = Vec::new();
        let mut closed = Vec::new();
        for (app_id, app) in self.apps.iter_mut() {
            let before = app.instances.len();
            app.instances.retain(|_, i| {
                let gone = i.executor_id == executor_id;
                if gone {
                    closed.extend(i.ports.values().map(|p| p.host_port));
                }
                !gone
            });
            if app.instances.len() != before {
                affected.push(app_id.clone());
            }
        }
        for port in closed {
            self.ports.close(port);
        }
        let monitor = self.timings.monitor_ms;
        for app in affected {
            self.schedule(monitor, Timer::Recover { app });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterState {
        let timings = Timings { step_ms: 0, monitor_ms: 0, ..Timings::default() };
        let mut c = ClusterState::new(3, timings, Box::new(MadeUpPorts(31_000)));
        c.use_manual_clock(1_767_225_600_000);
        c.add_executor("exec-1", "exec-1.local");
        c
    }

    fn port(host_port: u16) -> BTreeMap<String, InstancePort> {
        BTreeMap::from([("main".into(), InstancePort { container_port: 8080, host_port, port_type: PortType::Http })])
    }

    #[test]
    fn scale_up_walks_each_instance_to_healthy_and_lists_it() {
        let mut c = cluster();
        let app = c.add_app(AppSpec::web("orders", "1", "orders.local"), 2).unwrap();
        let eps = c.endpoints(&[]);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].app_id, app);
        assert_eq!(eps[0].hosts.len(), 2);
        assert_eq!(c.apps[&app].state, AppState::Running);
        // RUNNING, SCALING_REQUESTED, RUNNING + 2 x 6 instance states.
        let summary = c.events_summary(0);
        assert_eq!(summary.events_count["APP_STATE_CHANGE"], 3);
        assert_eq!(summary.events_count["INSTANCE_STATE_CHANGE"], 12);
    }

    #[test]
    fn endpoints_apply_drove_inclusion_rules() {
        let mut c = cluster();
        let running = c.add_app(AppSpec::web("a", "1", "a.local"), 0).unwrap();
        c.set_app_state(&running, AppState::Running).unwrap();
        let healthy = c.add_instance(&running, "exec-1", "h1", port(1), InstanceState::Healthy).unwrap();
        c.advance(5);
        let newer = c.add_instance(&running, "exec-1", "h2", port(2), InstanceState::Healthy).unwrap();
        c.add_instance(&running, "exec-1", "h3", port(3), InstanceState::Ready).unwrap();
        c.add_instance(&running, "exec-1", "h4", BTreeMap::new(), InstanceState::Healthy).unwrap();
        let stale = c.add_instance(&running, "exec-1", "h5", port(5), InstanceState::Healthy).unwrap();
        c.set_instance_updated(&running, &stale, c.now() - STALE_AFTER_MS - 1).unwrap();
        c.add_app(AppSpec::web("m", "1", "m.local"), 0).unwrap();
        let mut hidden = AppSpec::web("n", "1", "n.local");
        hidden.exposure = None;
        let hidden = c.add_app(hidden, 0).unwrap();
        c.set_app_state(&hidden, AppState::Running).unwrap();
        let empty = c.add_app(AppSpec::web("b", "1", "b.local").with_tags(&[("env", "x")]), 0).unwrap();
        c.set_app_state(&empty, AppState::Running).unwrap();

        let eps = c.endpoints(&[]);
        let ids: Vec<_> = eps.iter().map(|e| e.app_id.as_str()).collect();
        assert_eq!(ids, ["a-1", "b-1"], "MONITORING and unexposed apps are left out; sorted by appId");
        let hosts: Vec<_> = eps[0].hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts, ["h1", "h2"], "only fresh HEALTHY instances with the port, oldest first");
        assert!(eps[0].tags.is_none());
        assert!(eps[1].hosts.is_empty());
        assert_eq!(eps[1].tags.as_ref().unwrap()["env"], "x");
        let json = serde_json::to_value(&eps[0]).unwrap();
        assert!(json.get("tags").is_none(), "tags omitted when absent: {json}");
        assert_eq!(c.endpoints(&["b".into()]).len(), 1);
        // The stale check is skipped in the maintenance window.
        c.set_maintenance(true);
        assert_eq!(c.endpoints(&["a".into()])[0].hosts.len(), 3);
        let _ = (healthy, newer);
    }

    #[test]
    fn events_summary_counts_strictly_newer_and_echoes_on_empty_store() {
        let mut c = cluster();
        let empty = c.events_summary(0);
        let t0 = c.now();
        assert_eq!(empty.last_sync_time, t0, "executor added at t0");
        c.failover(Some(1), 0).unwrap();
        c.record_leadership_event = false;
        c.failover(Some(2), 0).unwrap();
        let s = c.events_summary(42);
        assert!(s.events_count.is_empty());
        assert_eq!(s.last_sync_time, 42, "an empty store echoes the input");
        c.advance(10);
        let app = c.add_app(AppSpec::web("a", "1", "a.local"), 0).unwrap();
        let t1 = c.now();
        let s = c.events_summary(t1 - 1);
        assert_eq!(s.events_count["APP_STATE_CHANGE"], 1);
        assert_eq!(s.last_sync_time, t1);
        assert!(c.events_summary(t1).events_count.is_empty(), "strictly greater than lastSyncTime");
        c.advance(10);
        c.set_app_state(&app, AppState::Running).unwrap();
        let latest = c.events_latest(0, 1);
        assert_eq!(latest.events.len(), 1);
        assert_eq!(latest.events[0].time, t1 + 10, "newest first, cut by size");
    }

    #[test]
    fn failover_clears_events_and_hides_apps_during_recovery() {
        let mut c = cluster();
        c.add_app(AppSpec::web("a", "1", "a.local"), 1).unwrap();
        c.failover(Some(1), 1_000).unwrap();
        assert_eq!(c.leader, Some(1));
        let s = c.events_summary(0);
        assert_eq!(s.events_count.keys().collect::<Vec<_>>(), ["LEADERSHIP_ACQUIRED"]);
        assert!(c.endpoints(&[]).is_empty(), "apps are INIT while the new leader recreates them");
        c.advance(1_000);
        assert_eq!(c.endpoints(&[])[0].hosts.len(), 1, "instances survive failover");
        assert_eq!(c.events_summary(0).events_count["APP_STATE_CHANGE"], 1);
    }

    #[test]
    fn crash_and_executor_loss_recover_with_replacements() {
        let mut c = cluster();
        let app = c.add_app(AppSpec::web("a", "1", "a.local"), 2).unwrap();
        let victim = c.apps[&app].instances.keys().next().unwrap().clone();
        c.crash(&app, &victim).unwrap();
        assert_eq!(c.endpoints(&[])[0].hosts.len(), 2, "replacement started by the monitor");
        assert!(!c.apps[&app].instances.contains_key(&victim));
        c.add_executor("exec-2", "exec-2.local");
        c.remove_executor("exec-1").unwrap();
        let hosts: Vec<_> = c.endpoints(&[])[0].hosts.iter().map(|h| h.host.clone()).collect();
        assert_eq!(hosts, ["exec-2.local", "exec-2.local"]);
        assert_eq!(c.events_summary(0).events_count["EXECUTOR_REMOVED"], 1);
    }

    #[test]
    fn instance_events_only_on_real_state_changes() {
        let mut c = cluster();
        let app = c.add_app(AppSpec::web("a", "1", "a.local"), 0).unwrap();
        let i = c.add_instance(&app, "exec-1", "h", port(1), InstanceState::Healthy).unwrap();
        let before = c.events_summary(0).events_count["INSTANCE_STATE_CHANGE"];
        c.set_instance_state(&app, &i, InstanceState::Healthy).unwrap();
        assert_eq!(c.events_summary(0).events_count["INSTANCE_STATE_CHANGE"], before);
        c.flap(&app, &i).unwrap();
        assert_eq!(c.events_summary(0).events_count["INSTANCE_STATE_CHANGE"], before + 1);
    }

    #[test]
    fn scale_down_stops_newest_first_then_monitoring_at_zero() {
        let mut c = cluster();
        let app = c.add_app(AppSpec::web("a", "1", "a.local"), 3).unwrap();
        c.scale(&app, 1).unwrap();
        assert_eq!(c.apps[&app].instances.len(), 1);
        c.scale(&app, 0).unwrap();
        assert_eq!(c.apps[&app].state, AppState::Monitoring);
        assert!(c.endpoints(&[]).is_empty());
    }
}
