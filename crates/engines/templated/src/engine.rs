//! The nginx or HAProxy engine's loop: for each snapshot of the wanted routes, render the
//! template and put the result in service (check, atomic write, reload), or bring the
//! servers up to date through the runtime API when only membership changed. Snapshots that
//! arrive while one is being applied are folded into the next round (the channel keeps the
//! latest), and rounds are at least `MIN_INTERVAL` apart, so a burst of Drove events costs
//! one reload. A failure keeps the live config and is retried.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gatehouse_config::{ConfigFiles, ProxyPlatform, TemplatedSettings};
use gatehouse_metrics::TemplatedMetrics;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::clock::{go_time, rfc3339};
use crate::haproxy::{self, SocketAddress};
use crate::{
    apply, plus_wanted, reconcile_plus, Applied, CommandLine, Deployment, Platform, PlusError, PlusWanted,
    RenderingData, Resolved, Resolver, ServerParams, Template,
};

/// What the proxy should serve: a snapshot the owner of the routes sends after each change.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub platform: ProxyPlatform,
    pub settings: TemplatedSettings,
    pub data: RenderingData,
    /// Changes when the configuration was reloaded: render again even if `data` is the same
    /// (the template or the settings may have changed).
    pub epoch: u64,
}

/// At most one reload per this interval (drove-gateway's reload ticker).
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Wait before retrying after a failure.
const RETRY: Duration = Duration::from_secs(1);
/// Longest a check or reload command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// A removed server's sessions may run this long before they are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One `/v1/health` section (drove-gateway's `Config` and `Template`).
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    #[serde(rename = "Healthy")]
    pub healthy: bool,
    #[serde(rename = "Message")]
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    #[serde(rename = "Config")]
    pub config: Section,
    #[serde(rename = "Template")]
    pub template: Section,
    #[serde(rename = "UpstreamUpdatesViaAPI")]
    pub runtime_api: Section,
    #[serde(rename = "ServerStateFileUpdate")]
    pub state_file: Section,
}

pub struct TemplatedEngine {
    /// The proxy came back from a restart: bring it up to date.
    poked: Notify,
    /// The proxy is restarting (SIGUSR1 from its systemd drop-in): hold changes back.
    restarting: AtomicBool,
    restarted: Notify,
    /// `proxy_control_plane_timeout_sec`: the longest such a hold lasts without SIGUSR2.
    restart_hold: Duration,
    status: Mutex<EngineStatus>,
}

impl TemplatedEngine {
    /// Runs the engine on the current Tokio runtime until `wanted`'s sender goes away.
    /// `api_only`: reloads are disabled (`*_reload_disabled`), so nothing is rendered.
    pub fn start(
        wanted: watch::Receiver<Option<Arc<Wanted>>>,
        metrics: TemplatedMetrics,
        api_only: bool,
        restart_hold: Duration,
    ) -> Arc<Self> {
        let pending = if api_only {
            Section { healthy: true, message: "OK: reloads are disabled; the runtime API does everything".into() }
        } else {
            Section { healthy: false, message: "pending first check".into() }
        };
        let runtime_api = Section { healthy: true, message: "OK: not in use, every change is a reload".into() };
        let engine = Arc::new(TemplatedEngine {
            poked: Notify::new(),
            restarting: AtomicBool::new(false),
            restarted: Notify::new(),
            restart_hold,
            status: Mutex::new(EngineStatus {
                config: pending.clone(),
                template: pending,
                runtime_api,
                state_file: Section { healthy: true, message: "server state file management disabled".into() },
            }),
        });
        tokio::spawn(run(engine.clone(), wanted, metrics));
        engine
    }

    /// SIGUSR1: the proxy is being restarted; no check or reload runs until
    /// [`TemplatedEngine::proxy_restarted`] (or `proxy_control_plane_timeout_sec`).
    pub fn proxy_restarting(&self) {
        self.restarting.store(true, Ordering::Relaxed);
    }

    /// SIGUSR2: the proxy is back; bring it up to date (a no-op when it already is, so the
    /// reload -> drop-in -> signal loop ends there).
    pub fn proxy_restarted(&self) {
        self.restarting.store(false, Ordering::Relaxed);
        self.restarted.notify_one();
        self.poked.notify_one();
    }

    async fn wait_while_restarting(&self) {
        if self.restarting.load(Ordering::Relaxed)
            && tokio::time::timeout(self.restart_hold, self.restarted.notified()).await.is_err()
        {
            self.restarting.store(false, Ordering::Relaxed);
            tracing::warn!(waited = ?self.restart_hold, "no SIGUSR2 after the proxy restart began (SIGUSR1); applying changes again");
        }
    }

    pub fn status(&self) -> EngineStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update_status(&self, change: impl FnOnce(&mut EngineStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// `reload: false` writes the file for the next restart without reloading (runtime API mode).
fn deployment(platform: ProxyPlatform, files: &ConfigFiles, reload: bool) -> Deployment {
    let platform = match platform {
        ProxyPlatform::Haproxy => Platform::Haproxy,
        _ => Platform::Nginx,
    };
    let command = CommandLine::parse(&files.reload_command);
    Deployment {
        platform,
        config_path: files.config_path.clone(),
        check: files.check_command.as_deref().and_then(CommandLine::parse),
        reload: command.filter(|_| reload).map(|c| platform.reload_command(&c)),
        command_timeout: COMMAND_TIMEOUT,
    }
}

/// What a round failed at, for the two health sections.
enum Failure {
    Template(String),
    Config(String),
}

/// Renders and applies once (blocking: it runs the proxy's commands).
fn render_and_apply(
    wanted: &Wanted,
    files: &ConfigFiles,
    reload: bool,
    metrics: &TemplatedMetrics,
) -> Result<Applied, Failure> {
    let (settings, data) = (&wanted.settings, &wanted.data);
    let started = Instant::now();
    let rendered = Template::load(&files.template_path, &settings.left_delimiter, &settings.right_delimiter)
        .and_then(|t| t.render(data, &go_time(SystemTime::now())));
    metrics.render_seconds(rendered.is_ok(), started.elapsed().as_secs_f64());
    let text = rendered.map_err(|e| Failure::Template(e.to_string()))?;
    apply(&text, &deployment(wanted.platform, files, reload)).map_err(|e| Failure::Config(e.to_string()))
}

/// Where membership changes go without a reload, when the file names one.
enum RuntimeApi {
    Haproxy(SocketAddress),
    NginxPlus(std::net::SocketAddr),
}

/// What the last runtime update applied, so the next one touches only what differs.
enum AppliedMembers {
    Haproxy(haproxy::Wanted),
    NginxPlus(PlusWanted),
}

/// Why a runtime update did not happen.
enum MembersError {
    /// The config lacks a backend or upstream the routes need: reload instead.
    NeedsReload(String),
    Failed(String),
}

impl RuntimeApi {
    fn of(platform: ProxyPlatform, settings: &TemplatedSettings) -> Option<Self> {
        let socket = settings.haproxy.socket_addr.trim();
        match platform {
            ProxyPlatform::Haproxy if !socket.is_empty() => Some(RuntimeApi::Haproxy(SocketAddress::parse(socket))),
            ProxyPlatform::Nginx => settings.nginx_plus_api.map(RuntimeApi::NginxPlus),
            _ => None,
        }
    }

    /// The backend (HAProxy) or upstream (nginx) names a config for `data` declares; while
    /// they stay the same, the API suffices.
    fn names(&self, data: &RenderingData) -> BTreeSet<String> {
        match self {
            RuntimeApi::Haproxy(_) => haproxy::backend_names(data),
            RuntimeApi::NginxPlus(_) => data.apps.keys().cloned().collect(),
        }
    }

    /// Brings the proxy's servers to `data` (only what differs from `previous`, when it is
    /// the same kind). HAProxy's drained servers are deleted in the background once their
    /// sessions end.
    async fn update(
        &self,
        data: &RenderingData,
        settings: &TemplatedSettings,
        resolver: &Resolver,
        previous: Option<&AppliedMembers>,
    ) -> Result<(String, AppliedMembers), MembersError> {
        let mut addresses = std::collections::HashMap::new();
        for host in data.apps.values().flat_map(|a| a.hosts.iter()) {
            if !addresses.contains_key(&host.host) {
                let resolved = resolver.resolve(&host.host, settings.dns_timeout).await;
                if !matches!(resolved, Resolved::Fresh(_)) {
                    tracing::warn!(host = %host.host, ?resolved, "DNS lookup failed; the server keeps its last address");
                }
                addresses.insert(host.host.clone(), resolved.address().map(|ip| ip.to_string()));
            }
        }
        let address = |host: &str| addresses.get(host).cloned().flatten();
        match self {
            RuntimeApi::Haproxy(socket) => {
                let wanted = haproxy::wanted(data, address);
                let previous = match previous {
                    Some(AppliedMembers::Haproxy(w)) => Some(w),
                    _ => None,
                };
                let done = haproxy::reconcile(
                    socket,
                    &wanted,
                    previous,
                    &data.haproxy_add_server_attributes_string,
                    &data.haproxy_add_server_ssl_attributes_string,
                )
                .await
                .map_err(|e| match e {
                    haproxy::RuntimeError::MissingBackends(_) => MembersError::NeedsReload(e.to_string()),
                    other => MembersError::Failed(other.to_string()),
                })?;
                if !done.draining.is_empty() {
                    let (socket, draining) = (socket.clone(), done.draining.clone());
                    tokio::spawn(async move {
                        if let Err(e) = haproxy::finish_drains(&socket, &draining, DRAIN_TIMEOUT).await {
                            tracing::warn!(error = %e, "removing drained HAProxy servers failed; the next change retries");
                        }
                    });
                }
                let summary = format!("added {}, moved {}, draining {}", done.added, done.moved, done.draining.len());
                Ok((summary, AppliedMembers::Haproxy(wanted)))
            }
            RuntimeApi::NginxPlus(api) => {
                let wanted = plus_wanted(data, address);
                let previous = match previous {
                    Some(AppliedMembers::NginxPlus(w)) => Some(w),
                    _ => None,
                };
                let params = ServerParams {
                    max_fails: settings.nginx_max_fails,
                    fail_timeout: settings.nginx_fail_timeout.clone(),
                    slow_start: settings.nginx_slow_start.clone(),
                };
                let done = reconcile_plus(*api, &wanted, previous, &params).await.map_err(|e| match e {
                    PlusError::MissingUpstreams(_) => MembersError::NeedsReload(e.to_string()),
                    other => MembersError::Failed(other.to_string()),
                })?;
                let summary = format!("added {}, updated {}, deleted {}", done.added, done.updated, done.deleted);
                Ok((summary, AppliedMembers::NginxPlus(wanted)))
            }
        }
    }
}

/// With `haproxy_manage_global_server_state_file`, saves HAProxy's servers after a change.
async fn save_server_state(engine: &TemplatedEngine, api: &RuntimeApi, settings: &TemplatedSettings) {
    let (RuntimeApi::Haproxy(socket), Some(state)) = (api, &settings.haproxy_state_file) else { return };
    let section = match haproxy::save_state(socket, &state.path).await {
        Ok(()) => Section { healthy: true, message: format!("saved to {}", state.path.display()) },
        Err(message) => {
            tracing::error!("HAProxy server state not saved: {message}");
            Section { healthy: false, message }
        }
    };
    engine.update_status(|s| s.state_file = section);
}

async fn run(
    engine: Arc<TemplatedEngine>,
    mut wanted: watch::Receiver<Option<Arc<Wanted>>>,
    metrics: TemplatedMetrics,
) {
    let mut applied: Option<RenderingData> = None;
    let mut applied_epoch: Option<u64> = None;
    // Backend or upstream names in the live config: while they stay, the API suffices.
    let mut live_names: Option<BTreeSet<String>> = None;
    // What the last runtime update applied; `None` after a reload (read everything again).
    let mut members: Option<AppliedMembers> = None;
    let resolver = Resolver::default();
    let mut failing = false;
    loop {
        let retry = async {
            if failing {
                tokio::time::sleep(RETRY).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { return },
            () = engine.poked.notified() => {}
            () = retry => {}
        }
        engine.wait_while_restarting().await;
        let Some(current) = wanted.borrow_and_update().clone() else { continue };
        let forced = applied_epoch != Some(current.epoch);
        if !forced && !failing && applied.as_ref() == Some(&current.data) {
            continue;
        }
        let settings = &current.settings;
        let data = &current.data;
        let started = Instant::now();
        let now = rfc3339(SystemTime::now());
        let ok = |what: &str| Section { healthy: true, message: format!("{what} at {now}") };
        let api = RuntimeApi::of(current.platform, settings);
        let names = api.as_ref().map(|api| api.names(data)).unwrap_or_default();
        // Without files (`*_reload_disabled`) the API is all there is.
        let api_only = settings.files.is_none();
        // Membership only: the runtime API, then the file rewritten for the next restart.
        let mut reload = true;
        if let Some(api) = api.as_ref().filter(|_| api_only || (!forced && live_names.as_ref() == Some(&names))) {
            match api.update(data, settings, &resolver, members.as_ref()).await {
                Ok((summary, applied_members)) => {
                    members = Some(applied_members);
                    tracing::info!(changes = %summary, "servers updated through the runtime API");
                    engine.update_status(|s| s.runtime_api = ok("servers reconciled"));
                    save_server_state(&engine, api, settings).await;
                    reload = false;
                    if api_only {
                        failing = false;
                        applied = Some(data.clone());
                        applied_epoch = Some(current.epoch);
                        continue;
                    }
                }
                Err(MembersError::NeedsReload(why)) if api_only => {
                    let message = format!("{why}, and reloads are disabled: add it to the proxy's config by hand");
                    tracing::error!("{message}");
                    engine.update_status(|s| s.runtime_api = Section { healthy: false, message });
                    failing = true;
                    continue;
                }
                Err(MembersError::NeedsReload(why)) => tracing::info!("{why}"),
                Err(MembersError::Failed(message)) => {
                    members = None;
                    tracing::error!("runtime API update failed, retrying: {message}");
                    engine.update_status(|s| s.runtime_api = Section { healthy: false, message });
                    metrics.reloads_failed.inc();
                    failing = true;
                    continue;
                }
            }
        }
        let Some(files) = settings.files.clone() else { continue };
        let (job, job_metrics) = (current.clone(), metrics.clone());
        let outcome = tokio::task::spawn_blocking(move || render_and_apply(&job, &files, reload, &job_metrics)).await;
        match outcome {
            Ok(Ok(result)) => {
                failing = false;
                applied = Some(data.clone());
                applied_epoch = Some(current.epoch);
                live_names = Some(names);
                if reload {
                    members = None;
                }
                metrics.template_healthy.set(1);
                metrics.config_healthy.set(1);
                let what = match result {
                    Applied::Unchanged => "unchanged",
                    Applied::Written { reloaded: true } => {
                        metrics.reloads_successful.inc();
                        metrics.reload_duration.observe(started.elapsed().as_secs_f64());
                        "written and reloaded"
                    }
                    Applied::Written { reloaded: false } => "written",
                };
                tracing::info!(
                    result = what,
                    vhosts = applied.as_ref().map_or(0, |d| d.apps.len()),
                    "proxy config applied"
                );
                engine.update_status(|s| {
                    s.template = ok("rendered");
                    s.config = ok(&format!("config {what}"));
                });
                if reload {
                    tokio::time::sleep(MIN_INTERVAL.saturating_sub(started.elapsed())).await;
                }
            }
            Ok(Err(failure)) => {
                failing = true;
                metrics.reloads_failed.inc();
                match failure {
                    Failure::Template(message) => {
                        metrics.template_healthy.set(0);
                        tracing::error!("{message}; the live config is unchanged");
                        engine.update_status(|s| s.template = Section { healthy: false, message });
                    }
                    Failure::Config(message) => {
                        metrics.template_healthy.set(1);
                        metrics.config_healthy.set(0);
                        tracing::error!("{message}");
                        engine.update_status(|s| {
                            s.template = ok("rendered");
                            s.config = Section { healthy: false, message };
                        });
                    }
                }
            }
            Err(e) => {
                failing = true;
                tracing::error!(error = %e, "the render task failed");
            }
        }
    }
}
