//! The running gateway: the configuration in force, the engine it feeds, and reloads.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::SystemTime;

use anyhow::Context;
use gatehouse_acme::{AcmeSource, FileStorage, Wanted};
use gatehouse_config::{AccessLogDestination, Config, ConfigError, ListenerSpec, TemplatedSettings};
use gatehouse_deploy::{DeploySource, FileStore, Routes};
use gatehouse_drove::DroveSource;
use gatehouse_health::Watch;
use gatehouse_metrics::Metrics;
use gatehouse_model::acme::{Challenges, OnDemand};
use gatehouse_model::{BuildError, HostPattern, Retired, Scheme, ServiceSpec, ServiceTls, TlsCertificate};
use gatehouse_native::{
    AccessLog, AccessLogTarget, CertStore, Certificates, EdgePolicy, ListenerConfig, NativeProxy, Snapshot,
    SnapshotError,
};
use gatehouse_templated::RenderingData;
use serde::Serialize;

use crate::logging::LogHandle;
use crate::templated::Feed;
use gatehouse_templated::clock::rfc3339;
use gatehouse_templated::TemplatedEngine;

/// Handshakes that may wait for on-demand certificates at once; more are refused.
const ON_DEMAND_QUEUE: usize = 64;

/// Where the configuration comes from: a file, or text built in (the demo). `state`, when
/// set, replaces the file's `deploy_state` at every load (`gatehouse start`'s
/// `GATEHOUSE_STATE`).
pub enum ConfigSource {
    File { path: PathBuf, state: Option<PathBuf> },
    Embedded { text: String, origin: PathBuf },
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File { path, state } => {
                let mut config = gatehouse_config::load(path)?;
                if let Some(state) = state {
                    config.deploy_state = state.clone();
                }
                Ok(config)
            }
            ConfigSource::Embedded { text, origin } => gatehouse_config::parse(text, origin),
        }
    }
}

/// Outcome of the last (re)load, shown by `/v1/health`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    #[serde(rename = "Healthy")]
    pub healthy: bool,
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "LastAttempt")]
    pub last_attempt: String,
}

struct State {
    config: Arc<Config>,
    generation: u64,
    status: ReloadStatus,
}

pub struct Gateway {
    source: ConfigSource,
    pub metrics: Arc<Metrics>,
    proxy: NativeProxy,
    /// The TLS listeners' certificate stores: (position in [[listeners]], address, store).
    cert_stores: Vec<(usize, SocketAddr, Arc<CertStore>)>,
    /// The services' certificates on those listeners now.
    service_certificates: Mutex<Vec<(String, ServiceTls)>>,
    listeners: Vec<ListenerSpec>,
    state: Mutex<State>,
    /// Serialises reloads; held across the whole load-build-install sequence.
    reloading: tokio::sync::Mutex<()>,
    /// Serialises route-table installs between reloads and Drove updates.
    installing: Mutex<()>,
    log: LogHandle,
    drove: OnceLock<DroveSource>,
    /// Services deployed at run time (`gatehouse deploy`).
    deploys: Arc<DeploySource>,
    /// Health of the file's services that set `health_check`.
    file_health: Arc<Watch>,
    /// The nginx or HAProxy engine, when one carries the traffic.
    templated: OnceLock<Arc<Feed>>,
    /// Certificates from ACME, when a listener speaks HTTPS.
    acme: Option<AcmeSource>,
}

impl Gateway {
    /// Builds the first route table and starts the engine on the configured listeners.
    pub fn start(source: ConfigSource, config: Config, log: LogHandle) -> anyhow::Result<Arc<Self>> {
        let metrics = Arc::new(Metrics::new());
        let generation = 1;
        // Deployed services are restored before anything listens: no 404 window after a restart.
        let store = Arc::new(FileStore::new(config.deploy_state.clone()));
        let deploys = Arc::new(DeploySource::open(store, metrics.deploys.clone()));
        let file = config.services.iter().cloned().map(Arc::new).collect();
        let snapshot = snapshot(&config, file, deploys.services(), Vec::new(), generation, None, &metrics)?;
        let mut cert_stores = Vec::new();
        let mut listeners = Vec::new();
        // With nginx or HAProxy the native proxy only keeps the route table (for /v1/routes).
        let native_listeners = if config.templated.is_some() { &[][..] } else { &config.listeners[..] };
        let challenges = Challenges::new();
        let on_demand = config.acme.on_demand.as_ref().map(|_| OnDemand::new(ON_DEMAND_QUEUE));
        // Started before the listeners, so that stored certificates serve from the first
        // handshake; it tells the gateway (once built) when certificates change.
        let built: Arc<OnceLock<Weak<Gateway>>> = Arc::default();
        let acme = native_listeners.iter().any(|l| l.tls).then(|| {
            let storage = Arc::new(FileStorage::new(config.acme.storage.clone()));
            let built = built.clone();
            let (acme_metrics, asks) = (metrics.acme.clone(), on_demand.as_deref());
            let acme =
                AcmeSource::start(config.acme.clone(), storage, challenges.clone(), acme_metrics, asks, move || {
                    if let Some(gateway) = built.get().and_then(Weak::upgrade) {
                        gateway.compose_certificates(true);
                    }
                });
            acme.want(wanted_certificates(&config.services, &deploys.services()));
            acme
        });
        for (index, l) in native_listeners.iter().enumerate() {
            let tls = if !l.tls {
                None
            } else {
                let certs = listener_certificates(l, &deploys.services(), acme.as_ref())
                    .with_context(|| format!("listener {}", l.address))?;
                let store = Arc::new(CertStore::new(certs));
                cert_stores.push((index, l.address, store.clone()));
                Some(store)
            };
            let inherited = crate::upgrade::take_tcp(l.address).or_else(|| crate::systemd::take_listener(l.address));
            listeners.push(ListenerConfig { address: l.address, tls, inherited });
        }
        let workers = config.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let access_log = match &config.access_log {
            None => None,
            Some(destination) => {
                let target = match destination {
                    AccessLogDestination::Stdout => AccessLogTarget::Stdout,
                    AccessLogDestination::File(path) => AccessLogTarget::File(path.clone()),
                };
                Some(AccessLog::start(&target).with_context(|| format!("cannot open the access log {destination:?}"))?)
            }
        };
        let proxy = NativeProxy::start(
            listeners,
            workers,
            snapshot,
            metrics.clone(),
            access_log,
            EdgePolicy { limits: config.limits.clone(), forwarding: config.forwarding.clone(), challenges, on_demand },
        )?;
        for (spec, bound) in native_listeners.iter().zip(proxy.addresses()) {
            let tls = if spec.tls { "https" } else { "http" };
            tracing::info!(address = %bound, protocol = tls, "listening");
        }
        tracing::info!(workers, generation, services = config.services.len(), "route table installed");
        let status = ReloadStatus {
            healthy: true,
            message: "configuration loaded".into(),
            last_attempt: rfc3339(SystemTime::now()),
        };
        let listeners = native_listeners.to_vec();
        let drove_settings = config.drove.clone();
        let templated = config.templated.as_ref().map(|t| (t.files.is_none(), t.restart_hold));
        let file_health = Watch::new(metrics.deploys.clone());
        let gateway = Arc::new(Gateway {
            source,
            metrics,
            proxy,
            cert_stores,
            service_certificates: Mutex::new(service_certificates(&deploys.services())),
            listeners,
            state: Mutex::new(State { config: Arc::new(config), generation, status }),
            reloading: tokio::sync::Mutex::new(()),
            installing: Mutex::new(()),
            log,
            drove: OnceLock::new(),
            deploys,
            file_health,
            templated: OnceLock::new(),
            acme,
        });
        let _ = built.set(Arc::downgrade(&gateway));
        let weak: Weak<Gateway> = Arc::downgrade(&gateway);
        gateway.file_health.on_change(move |service: &str| {
            if let Some(gateway) = weak.upgrade() {
                gateway.apply_file_health(service);
            }
        });
        gateway.file_health.follow(&gateway.config().services);
        let routes: Weak<dyn Routes> = Arc::downgrade(&gateway) as Weak<dyn Routes>;
        gateway.deploys.attach(routes);
        if !drove_settings.namespaces.is_empty() {
            let weak: Weak<Gateway> = Arc::downgrade(&gateway);
            let handed_over = crate::upgrade::take_drove_views();
            let source =
                DroveSource::start(drove_settings, handed_over, &gateway.metrics, move |changed: &[String]| {
                    if let Some(gateway) = weak.upgrade() {
                        gateway.apply_drove(Some(changed));
                    }
                });
            let _ = gateway.drove.set(source);
            // Routes restored from the state file serve at once.
            gateway.apply_drove(None);
        }
        if let Some((api_only, restart_hold)) = templated {
            if let Some(feed) = Feed::start(Arc::downgrade(&gateway), api_only, restart_hold) {
                let _ = gateway.templated.set(feed);
            }
        }
        Ok(gateway)
    }

    /// The file's services, each with its down targets out of rotation.
    fn file_services(&self, config: &Config) -> Vec<Arc<ServiceSpec>> {
        config.services.iter().map(|s| Arc::new(self.file_health.rotated(s))).collect()
    }

    /// Puts a route table built between reloads in service (callers hold `installing`), and
    /// tells the nginx or HAProxy engine.
    fn install_routes(&self, next: Snapshot, generation: u64) {
        self.proxy.install(next);
        self.lock().generation = generation;
        if let Some(engine) = self.templated.get() {
            engine.changed();
        }
    }

    /// Installs a file service whose rotation changed.
    fn apply_file_health(&self, service: &str) {
        let _one_at_a_time = self.installing.lock().unwrap_or_else(|e| e.into_inner());
        let config = self.config();
        let Some(spec) = config.services.iter().find(|s| s.name == service) else { return };
        let generation = self.lock().generation + 1;
        let current = self.proxy.current();
        match current.update(generation, vec![Arc::new(self.file_health.rotated(spec))], &[], &self.metrics) {
            Ok(next) => {
                self.install_routes(next, generation);
            }
            Err(e) => tracing::error!(service, error = %e, "could not apply a health change"),
        }
    }

    /// Puts the services' certificates on the TLS listeners when they changed (`acme_changed`:
    /// ACME's did). New handshakes get them; no listener or connection is touched.
    fn compose_certificates(&self, acme_changed: bool) {
        let config = self.config();
        let services = self.deploys.services();
        let wanted = service_certificates(&services);
        let mut current = self.service_certificates.lock().unwrap_or_else(|e| e.into_inner());
        if *current == wanted && !acme_changed {
            return;
        }
        for (index, address, store) in &self.cert_stores {
            let Some(l) = config.listeners.get(*index).filter(|l| l.address == *address) else { continue };
            match listener_certificates(l, &services, self.acme.as_ref()) {
                Ok(certs) => store.replace(certs),
                Err(e) => tracing::error!(listener = %address, error = %format!("{e:#}"), "certificates not updated"),
            }
        }
        *current = wanted;
    }

    /// Tells the ACME source which services want certificates now.
    fn want_certificates(&self) {
        if let Some(acme) = &self.acme {
            acme.want(wanted_certificates(&self.config().services, &self.deploys.services()));
        }
    }

    pub fn acme(&self) -> Option<&AcmeSource> {
        self.acme.as_ref()
    }

    pub fn drove(&self) -> Option<&DroveSource> {
        self.drove.get()
    }

    fn drove_services(&self) -> Vec<Arc<ServiceSpec>> {
        self.drove.get().map(DroveSource::services).unwrap_or_default()
    }

    pub fn deploys(&self) -> &Arc<DeploySource> {
        &self.deploys
    }

    /// Installs the Drove source's current routes for the vhosts that changed (`None`: all
    /// of them) as a new route table that shares every other service with the current one.
    /// The listeners and connections are untouched; requests in flight keep the table they
    /// started with.
    fn apply_drove(&self, changed: Option<&[String]>) {
        let Some(drove) = self.drove.get() else { return };
        let _one_at_a_time = self.installing.lock().unwrap_or_else(|e| e.into_inner());
        let config = self.config();
        let generation = self.lock().generation + 1;
        let current = self.proxy.current();
        let deployed = self.deploys.services();
        let delta = changed.map(|vhosts| {
            let (upserts, removals) = drove_delta(&config, &deployed, drove.vhost_services(vhosts));
            let removals: Vec<&str> = removals.iter().map(String::as_str).collect();
            current.update(generation, upserts, &removals, &self.metrics)
        });
        let next = match delta {
            Some(Ok(next)) => Ok(next),
            partial_or_none => {
                if let Some(Err(e)) = partial_or_none {
                    tracing::warn!(error = %e, "cannot apply the Drove changes alone; rebuilding the route table");
                }
                let file = self.file_services(&config);
                snapshot(&config, file, deployed, drove.services(), generation, Some(&current), &self.metrics)
            }
        };
        match next {
            Ok(next) => {
                self.install_routes(next, generation);
                tracing::debug!(generation, vhosts = changed.map_or(0, <[String]>::len), "Drove routes applied");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot apply the Drove view; keeping the current routes")
            }
        }
    }

    /// Re-reads the configuration and swaps in a new route table and certificates. On any
    /// error the current ones stay in service and the error shows in `/v1/health`.
    pub async fn reload(&self) -> Result<u64, String> {
        let _one_at_a_time = self.reloading.lock().await;
        crate::systemd::reloading();
        if let Some(drove) = self.drove.get() {
            drove.resync();
        }
        let result = self.try_reload();
        let now = rfc3339(SystemTime::now());
        let mut state = self.lock();
        match &result {
            Ok(generation) => {
                state.status = ReloadStatus {
                    healthy: true,
                    message: format!("generation {generation} in service"),
                    last_attempt: now,
                };
                tracing::info!(generation, "configuration reloaded");
            }
            Err(message) => {
                state.status = ReloadStatus { healthy: false, message: message.clone(), last_attempt: now };
                tracing::error!(
                    generation = state.generation,
                    "reload failed; keeping the current configuration:\n{message}"
                );
            }
        }
        drop(state);
        self.metrics.reload(result.is_ok());
        crate::systemd::ready(&self.status_line());
        result
    }

    /// One line for `systemctl status`: what is served, and whether the last reload failed.
    pub fn status_line(&self) -> String {
        let (generation, status) = self.status();
        let routes = self.routes();
        let services = routes.table.services().len();
        let listeners: Vec<String> = self.proxy_addresses().iter().map(ToString::to_string).collect();
        let serving = format!("serving {services} services on {} (route table {generation})", listeners.join(", "));
        if status.healthy {
            serving
        } else {
            format!("{serving}; the last reload failed: {}", status.message.lines().next().unwrap_or_default())
        }
    }

    /// Whether every proxy worker's event loop ran within `within`.
    pub fn workers_alive(&self, within: std::time::Duration) -> bool {
        self.proxy.workers_alive(within)
    }

    fn try_reload(&self) -> Result<u64, String> {
        let config = self.source.load().map_err(|e| e.to_string())?;
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let _one_at_a_time = self.installing.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.lock().generation + 1;
        let current = self.proxy.current();
        let snapshot = snapshot(
            &config,
            self.file_services(&config),
            self.deploys.services(),
            self.drove_services(),
            generation,
            Some(&current),
            &self.metrics,
        )
        .map_err(|e| format!("{e:#}"))?;
        self.warn_about_restart_only_changes(&config);
        // Load every certificate before changing anything, so a bad one changes nothing.
        let mut new_certs = Vec::new();
        for (index, address, store) in &self.cert_stores {
            let same_listener = config.listeners.get(*index).filter(|l| l.address == *address);
            if let Some(l) = same_listener.filter(|l| l.tls) {
                let certs = listener_certificates(l, &self.deploys.services(), self.acme.as_ref())
                    .map_err(|e| format!("listener {address}: {e:#}"))?;
                new_certs.push((store, certs));
            }
        }
        self.proxy.install(snapshot);
        self.log.set_level(&config.log_level);
        for (store, certs) in new_certs {
            store.replace(certs);
        }
        let mut state = self.lock();
        let config = Arc::new(config);
        state.config = config.clone();
        state.generation = generation;
        drop(state);
        self.file_health.follow(&config.services);
        self.want_certificates();
        if let Some(engine) = self.templated.get() {
            engine.reloaded();
        }
        Ok(generation)
    }

    fn warn_about_restart_only_changes(&self, new: &Config) {
        let old = self.lock().config.clone();
        let started: Vec<_> = self.listeners.iter().map(|l| (l.address, l.tls)).collect();
        let wanted: Vec<_> = new.listeners.iter().map(|l| (l.address, l.tls)).collect();
        if started != wanted {
            tracing::warn!("the [[listeners]] changed (addresses or TLS on/off): that takes a restart; routes and certificates were reloaded");
        }
        if old.admin.address != new.admin.address {
            tracing::warn!(from = %old.admin.address, to = %new.admin.address, "the admin address changed: that takes a restart");
        }
        if old.workers != new.workers {
            tracing::warn!("`workers` changed: that takes a restart");
        }
        if old.limits != new.limits || old.forwarding != new.forwarding {
            tracing::warn!("[limits] or the forwarding keys changed: that takes a restart");
        }
        if old.drove != new.drove {
            tracing::warn!("the Drove settings ([[namespaces]] or polling keys) changed: that takes a restart");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    pub fn status(&self) -> (u64, ReloadStatus) {
        let state = self.lock();
        (state.generation, state.status.clone())
    }

    pub fn templated(&self) -> Option<&Arc<TemplatedEngine>> {
        self.templated.get().map(|feed| &feed.engine)
    }

    /// What the nginx or HAProxy template sees now.
    pub fn rendering_data(&self, config: &Config, settings: &TemplatedSettings) -> RenderingData {
        let namespaces: Vec<_> = self
            .drove
            .get()
            .map(|d| d.namespaces().iter().map(|ns| (&ns.settings, ns.view())).collect())
            .unwrap_or_default();
        crate::rendering::rendering_data(config, &self.deploys.services(), settings, &xproxy(config), &namespaces)
    }

    pub fn routes(&self) -> Arc<Snapshot> {
        self.proxy.current()
    }

    pub fn proxy_addresses(&self) -> &[SocketAddr] {
        self.proxy.addresses()
    }

    pub fn certificate_names(&self) -> Vec<(SocketAddr, Vec<String>)> {
        self.cert_stores.iter().map(|(i, _, s)| (self.proxy.addresses()[*i], s.names())).collect()
    }

    /// The Drove views in service, by namespace (a binary upgrade hands them over).
    pub fn drove_views(&self) -> std::collections::BTreeMap<String, gatehouse_drove::NamespaceView> {
        let Some(drove) = self.drove.get() else { return Default::default() };
        drove.namespaces().iter().filter_map(|ns| Some((ns.settings.name.clone(), ns.view()?))).collect()
    }

    /// Copies of the proxy's listening sockets by configured address (a binary upgrade
    /// hands them over).
    pub fn listening_sockets(&self) -> std::io::Result<Vec<(SocketAddr, std::os::fd::OwnedFd)>> {
        Ok(self.listeners.iter().map(|spec| spec.address).zip(self.proxy.socket_copies()?).collect())
    }

    /// After a binary upgrade: the new process polls Drove, orders certificates and feeds
    /// nginx or HAProxy from now on; this one only drains.
    pub fn hand_over(&self) {
        if let Some(drove) = self.drove.get() {
            drove.stop();
        }
        if let Some(acme) = &self.acme {
            acme.stop();
        }
        if let Some(feed) = self.templated.get() {
            feed.stop();
        }
    }

    /// Stops accepting and lets the requests in flight finish as `drain` says (blocking).
    pub fn shutdown(&self, drain: gatehouse_native::Drain) {
        self.proxy.shutdown(drain);
    }
}

impl Gateway {
    /// Why the engine cannot carry `spec` out, if it cannot: nginx and HAProxy templates
    /// see one target list per service, so read targets and rollouts would be lost there.
    fn engine_refuses(&self, spec: &ServiceSpec) -> Option<String> {
        // Gatehouse's own proxy carries every spec.
        self.templated.get()?;
        if spec.has_readers() || spec.rollout.is_some() {
            return Some(format!(
                "service `{}`: read targets and rollouts need Gatehouse's own proxy; nginx and HAProxy templates see one target list",
                spec.name
            ));
        }
        spec.all_targets()
            .any(|t| t.scheme == Scheme::Unix)
            .then(|| format!("service `{}`: unix: targets need Gatehouse's own proxy, not nginx or HAProxy", spec.name))
    }
}

/// The deploy source installs its services through the same route-table swap as the other
/// sources.
impl Routes for Gateway {
    fn holder(&self, spec: &ServiceSpec) -> Option<String> {
        if let Some(refusal) = self.engine_refuses(spec) {
            return Some(refusal);
        }
        if let Some(tls) = &spec.tls {
            if self.cert_stores.is_empty() {
                return Some(format!(
                    "service `{}` brings a certificate, but no listener speaks HTTPS: add [[listeners]] with `tls = true` (kamal-proxy: `run --https-port`)",
                    spec.name
                ));
            }
            if let TlsCertificate::Files { certificate, key } = &tls.certificate {
                if let Err(e) = Certificates::default().add_preferred(certificate, key) {
                    return Some(format!("service `{}`: {e}", spec.name));
                }
            }
        }
        let config = self.config();
        if config.services.iter().any(|s| s.name == spec.name) {
            return Some(format!(
                "service `{}` is defined in the configuration file; it cannot be deployed over",
                spec.name
            ));
        }
        let current = self.proxy.current();
        if let Some(existing) = current.table.service(&spec.name).filter(|s| s.spec.source != gatehouse_deploy::SOURCE)
        {
            return Some(format!("the name `{}` is taken by a service from {}", spec.name, existing.spec.source));
        }
        // The model's own conflict rule, tried on a copy of the table (nothing is installed).
        match current.update(current.generation(), vec![Arc::new(spec.clone())], &[], &self.metrics) {
            Ok(_) => None,
            Err(SnapshotError::Routes(BuildError::DuplicateRoute { host, prefix, first, .. })) => {
                let source = current.table.service(&first).map_or("another source", |s| s.spec.source.as_str());
                Some(format!(
                    "host `{host}` with path prefix `{prefix}` is already routed by service `{first}` (from {source})"
                ))
            }
            Err(e) => Some(e.to_string()),
        }
    }

    fn apply(&self, upserts: Vec<Arc<ServiceSpec>>, removals: &[&str]) -> Result<Vec<Retired>, String> {
        if let Some(refusal) = upserts.iter().find_map(|spec| self.engine_refuses(spec)) {
            return Err(refusal);
        }
        let config = self.config();
        let file = Claims::of_file(&config);
        if let Some(spec) = upserts.iter().find(|s| file.shadow(s)) {
            return Err(format!("service `{}` claims a name or host that [[services]] in the file routes", spec.name));
        }
        let _one_at_a_time = self.installing.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.lock().generation + 1;
        let current = self.proxy.current();
        let next = current.update(generation, upserts.clone(), removals, &self.metrics).map_err(|e| e.to_string())?;
        let names = upserts.iter().map(|s| s.name.as_str()).chain(removals.iter().copied());
        let retired = names
            .filter_map(|name| {
                let old = current.table.service(name)?;
                Some(old.retired_by(next.table.service(name).map(|s| &**s))).filter(|r| !r.is_empty())
            })
            .collect();
        self.install_routes(next, generation);
        self.compose_certificates(false);
        self.want_certificates();
        tracing::debug!(generation, "deployed routes applied");
        Ok(retired)
    }
}

/// The names and hosts a higher-ranked source routes: the file's `[[services]]` win over
/// deployed services, and both over Drove vhosts.
struct Claims<'a> {
    names: HashSet<&'a str>,
    hosts: HashSet<&'a HostPattern>,
}

impl<'a> Claims<'a> {
    fn of_file(config: &'a Config) -> Self {
        let mut claims = Claims { names: HashSet::new(), hosts: HashSet::new() };
        for spec in &config.services {
            claims.add(spec);
        }
        claims
    }

    fn add(&mut self, spec: &'a ServiceSpec) {
        self.names.insert(&spec.name);
        self.hosts.extend(spec.hosts.iter());
    }

    fn shadow(&self, spec: &ServiceSpec) -> bool {
        self.names.contains(spec.name.as_str()) || spec.hosts.iter().any(|h| self.hosts.contains(h))
    }
}

/// Drove vhosts that changed -> services to upsert and names to remove. A vhost named like a
/// file or deployed service is left alone; one whose host such a service routes is removed
/// (it was never installed, so that is a no-op).
fn drove_delta(
    config: &Config,
    deployed: &[Arc<ServiceSpec>],
    vhosts: Vec<(&str, Option<Arc<ServiceSpec>>)>,
) -> (Vec<Arc<ServiceSpec>>, Vec<String>) {
    let mut claims = Claims::of_file(config);
    for spec in deployed {
        claims.add(spec);
    }
    let (mut upserts, mut removals) = (Vec::new(), Vec::new());
    for (vhost, spec) in vhosts {
        if claims.names.contains(vhost) {
            continue;
        }
        match spec {
            Some(spec) if !claims.shadow(&spec) => upserts.push(spec),
            _ => removals.push(vhost.to_string()),
        }
    }
    (upserts, removals)
}

/// The file's services, then the deployed ones and the Drove ones that no higher-ranked
/// source shadows. Services equal to one in `previous` are carried over from it.
/// The route table of the file's services (`file`: `config.services` with their health
/// applied), the deployed ones and Drove's, each source shadowing the next.
fn snapshot(
    config: &Config,
    file: Vec<Arc<ServiceSpec>>,
    deployed: Vec<Arc<ServiceSpec>>,
    drove: Vec<Arc<ServiceSpec>>,
    generation: u64,
    previous: Option<&Snapshot>,
    metrics: &Metrics,
) -> anyhow::Result<Snapshot> {
    let mut claims = Claims::of_file(config);
    let mut specs: Vec<Arc<ServiceSpec>> = Vec::with_capacity(file.len() + deployed.len() + drove.len());
    specs.extend(file);
    for spec in &deployed {
        if claims.shadow(spec) {
            tracing::warn!(service = %spec.name, "a deployed service's name or host is now in [[services]]: the file's routes win");
        } else {
            specs.push(spec.clone());
        }
    }
    for spec in specs[config.services.len()..].iter() {
        claims.add(spec);
    }
    let mut shadowed = Vec::new();
    let kept_drove: Vec<_> = drove
        .into_iter()
        .filter(|spec| {
            let hidden = claims.shadow(spec);
            if hidden {
                shadowed.push(spec.name.clone());
            }
            !hidden
        })
        .collect();
    if !shadowed.is_empty() {
        tracing::warn!(count = shadowed.len(), first = %shadowed[0], "Drove vhosts also routed by [[services]] or a deploy: those routes win");
    }
    specs.extend(kept_drove);
    Ok(Snapshot::new(generation, specs, previous, &xproxy(config), metrics)?)
}

/// The `X-Proxy` value: the configured one, else the host name.
pub(crate) fn xproxy(config: &Config) -> String {
    match &config.xproxy {
        Some(x) => x.clone(),
        None => gethostname::gethostname().to_string_lossy().into_owned(),
    }
}

/// A TLS listener's certificates: its own (the first is the default), then each service's
/// own for its names, then those ACME obtained. A service certificate that cannot be read is
/// logged and left out (the deploy that brought it was refused if it could not be read then).
fn listener_certificates(
    listener: &ListenerSpec,
    services: &[Arc<ServiceSpec>],
    acme: Option<&AcmeSource>,
) -> anyhow::Result<Certificates> {
    let pairs: Vec<_> = listener.tls_certificates.iter().map(|c| (c.cert.clone(), c.key.clone())).collect();
    let mut certs = Certificates::load(&pairs)?;
    for (service, tls) in services.iter().filter_map(|s| Some((&s.name, s.tls.as_ref()?))) {
        if let TlsCertificate::Files { certificate, key } = &tls.certificate {
            if let Err(e) = certs.add_preferred(certificate, key) {
                tracing::error!(service = %service, error = %e, "the service's certificate is left out");
            }
        }
    }
    if let Some(acme) = acme {
        let origin = acme.settings().storage.as_path();
        for issued in acme.certificates() {
            if let Err(e) = certs.add_preferred_pem(issued.chain.as_bytes(), issued.key.as_bytes(), origin) {
                tracing::error!(names = ?issued.names, error = %e, "an ACME certificate is left out");
            }
        }
    }
    Ok(certs)
}

/// The services (from the file and from deploys) whose certificates come from ACME, with
/// the names to obtain them for.
fn wanted_certificates(file: &[ServiceSpec], deployed: &[Arc<ServiceSpec>]) -> Vec<Wanted> {
    file.iter()
        .chain(deployed.iter().map(|s| &**s))
        .filter_map(|s| match s.tls.as_ref()?.certificate {
            TlsCertificate::Acme { staging } => Some(Wanted {
                service: s.name.clone(),
                names: s.hosts.iter().filter(|h| **h != HostPattern::Any).map(|h| h.to_string()).collect(),
                staging,
            }),
            TlsCertificate::Files { .. } => None,
        })
        .filter(|w| !w.names.is_empty())
        .collect()
}

/// The certificates services bring, to see whether the listeners' need composing again.
fn service_certificates(services: &[Arc<ServiceSpec>]) -> Vec<(String, ServiceTls)> {
    services.iter().filter_map(|s| Some((s.name.clone(), s.tls.clone()?))).collect()
}
