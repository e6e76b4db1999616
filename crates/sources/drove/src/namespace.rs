//! One namespace at run time: a background leader probe, and the poll loop that reads
//! events and endpoints from the leader and publishes a new view when it changed.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use gatehouse_config::{DroveSettings, NamespaceSettings};
use gatehouse_metrics::NamespaceMetrics;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::api::{self, CallError, EventsSummary, ExposedApp};
use crate::client::Client;
use crate::view::{
    build_apps, changed_vhosts, keep_vanished, read_stats, rebuild_app, Leader, NamespaceState, NamespaceView, Services,
};

/// Longest wait between polls while a namespace keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Leader probes run at most this far apart (drove-gateway: every 2 s).
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Past this many changed vhosts in one read, the whole view is rebuilt instead.
const INCREMENTAL_LIMIT: usize = 32;

#[derive(Debug, Clone)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub healthy: bool,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct NamespaceStatus {
    pub endpoints: Vec<EndpointStatus>,
    /// Set once a read of `/endpoints` succeeded in this process.
    pub synced: bool,
    /// The view came from the state file and no sync has replaced it yet.
    pub restored: bool,
    pub last_sync: Option<SystemTime>,
    pub last_error: Option<String>,
}

pub struct NamespaceRuntime {
    pub settings: NamespaceSettings,
    published: Mutex<Option<NamespaceState>>,
    status: Mutex<NamespaceStatus>,
    pub(crate) metrics: NamespaceMetrics,
    pub(crate) resync: Notify,
    probe_now: Notify,
    leader: watch::Sender<Option<usize>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the poll loop calls after publishing a new view, with the vhosts that changed (the
/// gateway's apply, then a save).
pub(crate) type Publish = Arc<dyn Fn(&[String]) + Send + Sync>;

impl NamespaceRuntime {
    pub(crate) fn new(settings: NamespaceSettings, metrics: NamespaceMetrics, restored: Option<NamespaceView>) -> Self {
        let endpoints = settings
            .controllers
            .iter()
            .map(|c| EndpointStatus { endpoint: c.to_string(), healthy: false, message: "pending first check".into() })
            .collect();
        metrics.configured_endpoints.set(settings.controllers.len() as i64);
        metrics.stale.set(1);
        let status = NamespaceStatus {
            endpoints,
            synced: false,
            restored: restored.is_some(),
            last_sync: None,
            last_error: None,
        };
        let published = restored.map(|view| NamespaceState::new(&settings, view));
        NamespaceRuntime {
            settings,
            published: Mutex::new(published),
            status: Mutex::new(status),
            metrics,
            resync: Notify::new(),
            probe_now: Notify::new(),
            leader: watch::channel(None).0,
        }
    }

    /// The current view (cheap: it shares storage with the live one).
    pub fn view(&self) -> Option<NamespaceView> {
        lock(&self.published).as_ref().map(|p| p.view.clone())
    }

    /// The route facts of the current view, keyed by vhost.
    pub fn services(&self) -> Option<Services> {
        lock(&self.published).as_ref().map(|p| p.services.clone())
    }

    pub fn status(&self) -> NamespaceStatus {
        lock(&self.status).clone()
    }

    pub(crate) fn start(self: &Arc<Self>, drove: &DroveSettings, publish: Publish) -> Vec<tokio::task::JoinHandle<()>> {
        let client = Client::new(&self.settings.credentials, drove.api_timeout);
        let probe_interval = drove.poll_interval.min(MAX_PROBE_INTERVAL);
        vec![
            tokio::spawn(self.clone().probe_loop(client.clone(), probe_interval)),
            tokio::spawn(self.clone().poll_loop(client, drove.clone(), publish)),
        ]
    }

    /// Pings every controller concurrently; the leader is the first, in configured order,
    /// that answers 200. Each answer updates the choice as it arrives, so one hanging
    /// controller does not hold up the others.
    async fn probe_loop(self: Arc<Self>, client: Client, interval: Duration) {
        let controllers = self.settings.controllers.clone();
        let mut healthy = vec![false; controllers.len()];
        loop {
            let mut probes = JoinSet::new();
            for (i, url) in controllers.iter().cloned().enumerate() {
                let client = client.clone();
                probes.spawn(async move { (i, client.get(&url, "/apis/v1/ping").await) });
            }
            while let Some(joined) = probes.join_next().await {
                let Ok((i, result)) = joined else { continue };
                let (ok, message) = match result {
                    Ok((200, _)) => (true, "OK".to_string()),
                    Ok((status, _)) => (false, format!("HTTP {status}")),
                    Err(e) => {
                        if matches!(e, CallError::Connect(_) | CallError::Timeout(_)) {
                            self.metrics.endpoint_down_errors.inc();
                        }
                        (false, e.to_string())
                    }
                };
                healthy[i] = ok;
                if let Some(status) = lock(&self.status).endpoints.get_mut(i) {
                    status.healthy = ok;
                    status.message = message;
                }
                let leader = healthy.iter().position(|h| *h);
                self.leader.send_if_modified(|current| {
                    let changed = *current != leader;
                    *current = leader;
                    changed
                });
                self.metrics.healthy_endpoints.set(healthy.iter().filter(|h| **h).count() as i64);
                self.metrics.all_endpoints_down.set(i64::from(!healthy.iter().any(|h| *h)));
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.probe_now.notified() => {}
            }
        }
    }

    async fn poll_loop(self: Arc<Self>, client: Client, drove: DroveSettings, publish: Publish) {
        let name = self.settings.name.clone();
        let mut leader_rx = self.leader.subscribe();
        let mut poll = PollState::new(drove.resync_interval);
        // The last `/endpoints` reply, to find what the next one changed.
        let mut last_entries: Option<Vec<ExposedApp>> = None;
        // Give the first probe round a chance before concluding there is no leader.
        let _ = tokio::time::timeout(drove.api_timeout, leader_rx.wait_for(Option::is_some)).await;
        // The first poll goes out at once.
        let mut next_poll = Instant::now().checked_sub(drove.poll_interval).unwrap_or_else(Instant::now);
        loop {
            let delay = drove.poll_interval + poll.backoff(drove.poll_interval);
            tokio::select! {
                _ = tokio::time::sleep_until((next_poll + delay).into()) => {}
                _ = self.resync.notified() => poll.read_pending = true,
                _ = leader_rx.changed() => {}
            }
            next_poll = Instant::now();
            let Some(index) = *leader_rx.borrow_and_update() else {
                poll.failed();
                self.record_error("no leader: every controller is down or none answers the leader ping".into());
                continue;
            };
            let controller = self.settings.controllers[index].clone();
            if poll.leader != Some(index) {
                if poll.leader.is_some() || poll.synced_once {
                    self.metrics.leader_changes.inc();
                    tracing::info!(namespace = %name, leader = %controller, "leader controller changed; full resync");
                    poll.grace_until = Some(Instant::now() + drove.failover_grace);
                }
                poll.leader_changed(index);
            }
            let started = Instant::now();
            let summary = client
                .get(&controller, &format!("/apis/v1/cluster/events/summary?lastSyncTime={}", poll.last_sync_time))
                .await
                .and_then(|(status, body)| api::decode::<EventsSummary>(status, &body));
            match summary {
                Ok(summary) => poll.saw_summary(&summary),
                Err(e) => {
                    self.call_failed("events summary", &controller, e, &mut poll);
                    continue;
                }
            }
            if !poll.wants_read() {
                poll.succeeded();
                self.metrics.poll_seconds.observe(started.elapsed().as_secs_f64());
                continue;
            }
            let entries = client
                .get(&controller, "/apis/v1/endpoints")
                .await
                .and_then(|(status, body)| api::decode::<Vec<ExposedApp>>(status, &body));
            let mut entries = match entries {
                Ok(entries) => entries,
                Err(e) => {
                    self.metrics.app_sync_failed.inc();
                    self.call_failed("endpoints", &controller, e, &mut poll);
                    continue;
                }
            };
            poll.read_done();
            self.metrics.poll_seconds.observe(started.elapsed().as_secs_f64());
            // Applying covers everything after the reply is decoded: the view, the diff with
            // the last one, and the route table install.
            let apply_started = Instant::now();
            let in_grace = poll.grace_until.is_some_and(|until| Instant::now() < until);
            // Drove lists apps by appId already; sorting keeps the diff right if one does not.
            entries.sort_by(|a, b| a.app_id.cmp(&b.app_id));
            let changed = self.take_read(&entries, last_entries.as_deref(), index, in_grace);
            last_entries = Some(entries);
            {
                let mut status = lock(&self.status);
                status.synced = true;
                status.restored = false;
                status.last_sync = Some(SystemTime::now());
                status.last_error = None;
            }
            self.metrics.stale.set(0);
            if !changed.is_empty() {
                publish(&changed);
                self.metrics.apply_seconds.observe(apply_started.elapsed().as_secs_f64());
                self.metrics.app_refresh_duration.observe(started.elapsed().as_secs_f64());
            }
        }
    }

    /// Takes a successful read into the view. With the previous reply at hand and no leader
    /// change, only the vhosts whose entries differ are rebuilt. Returns the vhosts whose
    /// app or route facts changed.
    fn take_read(
        &self,
        entries: &[ExposedApp],
        previous: Option<&[ExposedApp]>,
        leader_index: usize,
        in_grace: bool,
    ) -> Vec<String> {
        let stats = read_stats(entries, &self.settings);
        self.metrics.ignored_by_realm.set(stats.ignored_by_realm as i64);
        if self.settings.routing_tag.is_some() {
            self.metrics.with_routing_tag.set(stats.with_routing_tag as i64);
            self.metrics.without_routing_tag.set(stats.without_routing_tag as i64);
        }
        let controller = &self.settings.controllers[leader_index];
        let leader = Leader {
            endpoint: controller.to_string(),
            host: controller.host.clone(),
            port: controller.port,
            https: controller.https,
        };
        let published = lock(&self.published).clone();
        let first = published.is_none();
        let mut state = published.unwrap_or_default();
        let same_leader = state.view.leader.as_ref() == Some(&leader);
        let incremental = previous
            .filter(|_| !in_grace && same_leader)
            .and_then(|old| changed_vhosts(old, entries, INCREMENTAL_LIMIT));
        let changed = match incremental {
            Some(vhosts) => state.set_apps(
                &self.settings,
                vhosts.into_iter().map(|vhost| {
                    let app = rebuild_app(entries, &vhost, &self.settings);
                    (vhost, app)
                }),
            ),
            None => {
                let mut apps = build_apps(entries, &self.settings);
                if in_grace {
                    let kept = keep_vanished(&state.view.apps, &mut apps);
                    if !kept.is_empty() {
                        tracing::warn!(
                            namespace = %self.settings.name,
                            vhosts = kept.len(),
                            first = %kept[0],
                            "vhosts missing right after a leader change are kept until a later read confirms them gone"
                        );
                    }
                }
                for realm in &self.settings.realms {
                    if !apps.contains_key(realm) {
                        tracing::debug!(namespace = %self.settings.name, realm, "an explicitly listed realm has no app");
                    }
                }
                state.replace(&self.settings, NamespaceView { leader: Some(leader), apps })
            }
        };
        if first || !changed.is_empty() {
            *lock(&self.published) = Some(state);
        }
        changed
    }

    fn call_failed(
        &self,
        what: &str,
        controller: &gatehouse_config::ControllerUrl,
        e: CallError,
        poll: &mut PollState,
    ) {
        self.metrics.controller_error(e.kind());
        poll.failed();
        // A non-leader's 400 or a dead leader: find out who leads now.
        self.probe_now.notify_one();
        self.record_error(format!("{what} from {controller}: {e}"));
    }

    fn record_error(&self, message: String) {
        let mut status = lock(&self.status);
        if status.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(namespace = %self.settings.name, "{message}; keeping the last known routes");
        }
        status.last_error = Some(message);
    }
}

/// The poll loop's decisions, apart from its I/O.
#[derive(Debug)]
struct PollState {
    leader: Option<usize>,
    last_sync_time: i64,
    read_pending: bool,
    next_resync: Instant,
    resync_interval: Duration,
    failures: u32,
    synced_once: bool,
    grace_until: Option<Instant>,
}

impl PollState {
    fn new(resync_interval: Duration) -> Self {
        PollState {
            leader: None,
            last_sync_time: 0,
            read_pending: true,
            next_resync: Instant::now() + resync_interval,
            resync_interval,
            failures: 0,
            synced_once: false,
            grace_until: None,
        }
    }

    /// A new leader has a fresh event store: start from zero and read everything.
    fn leader_changed(&mut self, index: usize) {
        self.leader = Some(index);
        self.last_sync_time = 0;
        self.read_pending = true;
    }

    fn saw_summary(&mut self, summary: &EventsSummary) {
        if summary.last_sync_time < self.last_sync_time {
            // The store was reset (a leader change we did not see): events may be lost.
            self.read_pending = true;
        }
        if summary.events_count.keys().any(|k| api::is_relevant(k)) {
            self.read_pending = true;
        }
        self.last_sync_time = summary.last_sync_time;
    }

    fn wants_read(&self) -> bool {
        self.read_pending || Instant::now() >= self.next_resync
    }

    fn read_done(&mut self) {
        self.read_pending = false;
        self.next_resync = Instant::now() + self.resync_interval;
        self.synced_once = true;
        self.failures = 0;
    }

    fn succeeded(&mut self) {
        self.failures = 0;
    }

    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// Extra wait on top of the poll interval: none while healthy, then doubling with jitter.
    fn backoff(&self, interval: Duration) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let doubled = interval.saturating_mul(1u32 << self.failures.min(6)).min(MAX_BACKOFF);
        doubled.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn summary(last: i64, kinds: &[&str]) -> EventsSummary {
        EventsSummary {
            events_count: kinds.iter().map(|k| (k.to_string(), serde_json::json!(1))).collect::<BTreeMap<_, _>>(),
            last_sync_time: last,
        }
    }

    #[test]
    fn relevant_events_backwards_time_and_leader_changes_ask_for_a_read() {
        let mut p = PollState::new(Duration::from_secs(30));
        p.leader_changed(0);
        assert!(p.wants_read());
        p.read_done();
        p.saw_summary(&summary(100, &["TASK_STATE_CHANGE"]));
        assert!(!p.wants_read(), "irrelevant events");
        assert_eq!(p.last_sync_time, 100);
        p.saw_summary(&summary(150, &["EXECUTOR_REMOVED"]));
        assert!(p.wants_read());
        p.read_done();
        p.saw_summary(&summary(90, &[]));
        assert!(p.wants_read(), "lastSyncTime went backwards");
        p.read_done();
        p.leader_changed(1);
        assert_eq!(p.last_sync_time, 0);
        assert!(p.wants_read());
    }

    #[test]
    fn a_failed_read_stays_pending_and_backs_off() {
        let mut p = PollState::new(Duration::from_secs(30));
        p.saw_summary(&summary(5, &["APP_STATE_CHANGE"]));
        p.failed();
        assert!(p.wants_read(), "the read is retried on the next poll");
        let one = Duration::from_secs(1);
        assert!(p.backoff(one) >= one && p.backoff(one) <= 2 * one);
        for _ in 0..20 {
            p.failed();
        }
        assert!(p.backoff(one) <= MAX_BACKOFF);
        p.read_done();
        assert_eq!(p.backoff(one), Duration::ZERO);
    }

    #[test]
    fn periodic_resync_without_events() {
        let mut p = PollState::new(Duration::ZERO);
        p.read_done();
        p.saw_summary(&summary(5, &[]));
        assert!(p.wants_read());
    }
}
