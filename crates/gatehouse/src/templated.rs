//! Feeds the nginx or HAProxy engine: after a route change or a reload, the routes of every
//! source are rendered into drove-gateway's template data and sent to the engine as a
//! snapshot. Changes that arrive while a snapshot is being made fold into the next one. The
//! engine never calls back into the gateway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use gatehouse_templated::{TemplatedEngine, Wanted};
use tokio::sync::{watch, Notify};

use crate::gateway::Gateway;

pub struct Feed {
    changed: Notify,
    /// Bumped by each configuration reload, so the engine renders again even if the routes
    /// did not change (the template or the settings may have).
    epoch: AtomicU64,
    pub engine: Arc<TemplatedEngine>,
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Feed {
    /// Starts the engine and its feed on the current Tokio runtime.
    pub fn start(gateway: Weak<Gateway>, api_only: bool, restart_hold: Duration) -> Option<Arc<Self>> {
        let metrics = gateway.upgrade()?.metrics.templated.clone();
        let (sender, receiver) = watch::channel(None);
        let engine = TemplatedEngine::start(receiver, metrics, api_only, restart_hold);
        let feed =
            Arc::new(Feed { changed: Notify::new(), epoch: AtomicU64::new(0), engine, task: Default::default() });
        let task = tokio::spawn(run(feed.clone(), gateway, sender));
        let _ = feed.task.set(task.abort_handle());
        Some(feed)
    }

    /// Routes changed: send a new snapshot soon.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// No more snapshots (a binary upgrade: the new process feeds the engine).
    pub fn stop(&self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }

    /// The configuration was reloaded: the next snapshot is rendered even if unchanged.
    pub fn reloaded(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }
}

async fn run(feed: Arc<Feed>, gateway: Weak<Gateway>, sender: watch::Sender<Option<Arc<Wanted>>>) {
    wait_for_first_views(&gateway).await;
    feed.changed.notify_one();
    loop {
        feed.changed.notified().await;
        let Some(gateway) = gateway.upgrade() else { return };
        let config = gateway.config();
        let Some(settings) = config.templated.clone() else { return };
        let data = gateway.rendering_data(&config, &settings);
        let epoch = feed.epoch.load(Ordering::Relaxed);
        sender.send_replace(Some(Arc::new(Wanted { platform: config.proxy_platform, settings, data, epoch })));
    }
}

/// At startup, waits (bounded by `startup_wait`) until every Drove namespace has a view,
/// from a sync or the state file, so the first config is not rendered without its apps.
async fn wait_for_first_views(gateway: &Weak<Gateway>) {
    let Some(wait) = gateway.upgrade().map(|g| g.config().drove.startup_wait) else { return };
    let deadline = Instant::now() + wait;
    loop {
        let Some(gateway) = gateway.upgrade() else { return };
        let missing: Vec<String> = gateway
            .drove()
            .map(|d| {
                d.namespaces().iter().filter(|ns| ns.view().is_none()).map(|ns| ns.settings.name.clone()).collect()
            })
            .unwrap_or_default();
        if missing.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(?missing, waited = ?wait, "no view yet for some Drove namespaces; rendering without their apps");
            return;
        }
        drop(gateway);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
