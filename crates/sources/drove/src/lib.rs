//! The Drove source: for each `[[namespaces]]` entry it follows the leader controller, polls
//! its events, reads `/apis/v1/endpoints` when something relevant happened (and every
//! `resync_interval` regardless), and turns the result into route facts for the model.
//! On any failure the last good view stays; the view survives restarts in `state_path`.

mod api;
mod client;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod namespace;
mod state_file;
pub mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use gatehouse_config::DroveSettings;
use gatehouse_metrics::Metrics;
use gatehouse_model::ServiceSpec;
use tokio::sync::watch;

pub use namespace::{EndpointStatus, NamespaceRuntime, NamespaceStatus};
pub use state_file::{load as load_state_file, StateError};
pub use view::NamespaceView;

/// Outcome of the last state-file write, for `/v1/health`.
#[derive(Debug, Clone)]
pub struct DiskStatus {
    pub healthy: bool,
    pub message: String,
}

pub struct DroveSource {
    settings: DroveSettings,
    namespaces: Vec<Arc<NamespaceRuntime>>,
    disk: Arc<Mutex<DiskStatus>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DroveSource {
    /// Restores the last known views (`handed_over` by the process this one replaces, else
    /// the state file's), then starts the probes and polls (on the current Tokio runtime). `apply` is called after a namespace's view changed;
    /// it gets the vhosts that changed, reads [`DroveSource::vhost_services`] and installs them.
    pub fn start(
        settings: DroveSettings,
        handed_over: BTreeMap<String, NamespaceView>,
        metrics: &Metrics,
        apply: impl Fn(&[String]) + Send + Sync + 'static,
    ) -> Self {
        let mut restored = match &settings.state_path {
            _ if !handed_over.is_empty() => {
                tracing::info!(
                    namespaces = handed_over.len(),
                    "serving the Drove view the old process handed over until the first sync"
                );
                handed_over
            }
            Some(path) => match state_file::load(path) {
                Ok(views) => {
                    if !views.is_empty() {
                        tracing::info!(path = %path.display(), namespaces = views.len(), "serving the last known Drove view until the first sync");
                    }
                    views
                }
                Err(e) => {
                    tracing::error!("{e}; starting without a last known Drove view");
                    BTreeMap::new()
                }
            },
            None => BTreeMap::new(),
        };
        let namespaces: Vec<Arc<NamespaceRuntime>> = settings
            .namespaces
            .iter()
            .map(|ns| {
                let view = restored.remove(&ns.name);
                Arc::new(NamespaceRuntime::new(ns.clone(), metrics.namespace(&ns.name), view))
            })
            .collect();
        let (persist, persist_rx) = watch::channel(0u64);
        let message = if settings.state_path.is_some() { "no write yet" } else { "state persistence disabled" };
        let disk = Arc::new(Mutex::new(DiskStatus { healthy: true, message: message.into() }));
        let publisher: namespace::Publish = Arc::new(move |changed: &[String]| {
            apply(changed);
            persist.send_modify(|v| *v += 1);
        });
        let mut tasks = Vec::new();
        for ns in &namespaces {
            tasks.extend(ns.start(&settings, publisher.clone()));
        }
        if let Some(path) = settings.state_path.clone() {
            tasks.push(tokio::spawn(persist_loop(path, namespaces.clone(), persist_rx, disk.clone())));
        }
        DroveSource { settings, namespaces, disk, tasks }
    }

    pub fn settings(&self) -> &DroveSettings {
        &self.settings
    }

    pub fn namespaces(&self) -> &[Arc<NamespaceRuntime>] {
        &self.namespaces
    }

    /// Route facts of every namespace's current view (restored or synced). Specs of vhosts
    /// that did not change are the same `Arc`s as last time.
    pub fn services(&self) -> Vec<Arc<ServiceSpec>> {
        let per_namespace: Vec<_> = self.namespaces.iter().filter_map(|ns| ns.services()).collect();
        view::merge_namespaces(&per_namespace.iter().collect::<Vec<_>>())
    }

    /// Route facts of some vhosts, merged over the namespaces; `None` for a vhost no
    /// namespace has (any more).
    pub fn vhost_services<'a>(&self, vhosts: &'a [String]) -> Vec<(&'a str, Option<Arc<ServiceSpec>>)> {
        let per_namespace: Vec<_> = self.namespaces.iter().filter_map(|ns| ns.services()).collect();
        vhosts.iter().map(|v| (v.as_str(), view::merge_vhost(v, &per_namespace))).collect()
    }

    /// Every namespace reads its endpoints on its next poll, which starts now.
    pub fn resync(&self) {
        for ns in &self.namespaces {
            ns.resync.notify_one();
        }
    }

    pub fn disk_status(&self) -> DiskStatus {
        self.disk.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops polling; the views already published stay with whoever copied them.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for DroveSource {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes the views after each change. A watch channel keeps only the newest request, so a
/// burst of changes costs one write and the last one is never skipped.
async fn persist_loop(
    path: std::path::PathBuf,
    namespaces: Vec<Arc<NamespaceRuntime>>,
    mut changes: watch::Receiver<u64>,
    disk: Arc<Mutex<DiskStatus>>,
) {
    while changes.changed().await.is_ok() {
        let views: Vec<(String, NamespaceView)> =
            namespaces.iter().filter_map(|ns| ns.view().map(|v| (ns.settings.name.clone(), v))).collect();
        let target = path.clone();
        let result = tokio::task::spawn_blocking(move || {
            let borrowed = views.iter().map(|(name, view)| (name.as_str(), view)).collect();
            state_file::save(&target, &borrowed)
        })
        .await;
        let status = match result {
            Ok(Ok(())) => DiskStatus { healthy: true, message: format!("state saved to {}", path.display()) },
            Ok(Err(e)) => {
                tracing::error!("{e}; the previous state file is left as it was");
                DiskStatus { healthy: false, message: e.to_string() }
            }
            Err(e) => DiskStatus { healthy: false, message: format!("state write task failed: {e}") },
        };
        *disk.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
}
