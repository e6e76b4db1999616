//! The deploy state: what every deployed service is, saved before a change is acknowledged.
//!
//! [`Store`] is the narrow interface the source needs; [`FileStore`] keeps it in one JSON
//! file replaced atomically (temp file, fsync, rename, folder fsync), so a crash or a full
//! disk leaves the previous state whole. A shared store (etcd, for replicas behind one
//! address) implements the same two calls.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::options::DeployOptions;

/// The format written; older ones are read, newer ones are refused.
pub const STATE_VERSION: u32 = 1;

/// One deployed service as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRecord {
    pub name: String,
    pub options: DeployOptions,
    #[serde(default)]
    pub state: ServiceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutRecord>,
}

/// A service's rollout (kamal-proxy's canary): its targets and its split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRecord {
    pub targets: Vec<String>,
    #[serde(default)]
    pub read_targets: Vec<String>,
    #[serde(default)]
    pub split: crate::options::RolloutSplit,
}

/// Whether a service takes traffic (kamal-proxy's pause controller).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServiceState {
    #[default]
    Running,
    /// New requests wait for `resume`, at most `max_pause_ms` (then 504).
    Paused { max_pause_ms: u64 },
    /// Requests get 503 with the message.
    Stopped { message: String },
}

/// What a load found: the services that could be read, and a line for each that could not.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<ServiceRecord>,
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a Gatehouse deploy state: {reason} (kept aside as {kept})")]
    Damaged { path: PathBuf, reason: String, kept: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where deploy state lives.
pub trait Store: Send + Sync {
    /// Every saved service; an unreadable one is skipped and named in `skipped`.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Replaces the saved state with `records`; returns only once it is durable.
    fn save(&self, records: &[ServiceRecord]) -> Result<(), StoreError>;
    /// Where the state is, for log lines and `/v1/health`.
    fn location(&self) -> String;
}

pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves a file that cannot be read aside, so the next save does not destroy what an
    /// operator may want to recover.
    fn keep_aside(&self, reason: String) -> StoreError {
        let kept = self.path.with_extension("damaged");
        let _ = std::fs::rename(&self.path, &kept);
        StoreError::Damaged { path: self.path.clone(), reason, kept }
    }
}

#[derive(Serialize)]
struct FileOut<'a> {
    version: u32,
    services: &'a [ServiceRecord],
}

#[derive(Deserialize)]
struct FileIn {
    version: u32,
    services: Vec<serde_json::Value>,
}

impl Store for FileStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(source) => return Err(StoreError::Read { path: self.path.clone(), source }),
        };
        let file: FileIn = serde_json::from_slice(&text).map_err(|e| self.keep_aside(e.to_string()))?;
        if file.version > STATE_VERSION {
            return Err(self.keep_aside(format!(
                "format version {} is newer than this Gatehouse reads ({STATE_VERSION})",
                file.version
            )));
        }
        Ok(parse_records(file.services))
    }

    fn save(&self, records: &[ServiceRecord]) -> Result<(), StoreError> {
        let mut bytes = serde_json::to_vec_pretty(&FileOut { version: STATE_VERSION, services: records })
            .map_err(|e| StoreError::Write { path: self.path.clone(), source: std::io::Error::other(e) })?;
        bytes.push(b'\n');
        gatehouse_files::replace(&self.path, &bytes)
            .map_err(|source| StoreError::Write { path: self.path.clone(), source })
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// Each entry on its own, so one bad entry costs only itself.
fn parse_records(entries: Vec<serde_json::Value>) -> Loaded {
    let mut loaded = Loaded::default();
    for (index, entry) in entries.into_iter().enumerate() {
        let name = entry.get("name").and_then(|n| n.as_str()).map(str::to_string);
        match serde_json::from_value::<ServiceRecord>(entry) {
            Ok(record) if loaded.records.iter().any(|r| r.name == record.name) => loaded
                .skipped
                .push(format!("service `{}` (entry {index}) is saved twice; the first is kept", record.name)),
            Ok(record) => match crate::options::service_spec(&record.name, &record.options) {
                Ok(_) => loaded.records.push(record),
                Err(e) => loaded.skipped.push(format!("service `{}` (entry {index}): {e}", record.name)),
            },
            Err(e) => loaded.skipped.push(format!("service `{}` (entry {index}): {e}", name.as_deref().unwrap_or("?"))),
        }
    }
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> ServiceRecord {
        let options = DeployOptions {
            targets: vec!["127.0.0.1:1".into()],
            hosts: vec![format!("{name}.test")],
            ..Default::default()
        };
        ServiceRecord { name: name.into(), options, state: ServiceState::Running, rollout: None }
    }

    #[test]
    fn saves_and_loads_every_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("sub/deploys.json"));
        assert!(store.load().unwrap().records.is_empty(), "no file is no services");
        let mut paused = record("b");
        paused.state = ServiceState::Paused { max_pause_ms: 5000 };
        let mut stopped = record("c");
        stopped.state = ServiceState::Stopped { message: "back soon".into() };
        let records = vec![record("a"), paused, stopped];
        store.save(&records).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.records, records);
        assert!(loaded.skipped.is_empty());
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1, "no temp file left");
    }

    #[test]
    fn a_bad_entry_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploys.json");
        let good = serde_json::to_value(record("good")).unwrap();
        let text = serde_json::json!({"version": 1, "services": [
            {"name": "broken", "options": {"targets": "not a list"}},
            good,
            {"name": "badhost", "options": {"targets": ["a:1"], "hosts": ["a b"]}},
            serde_json::to_value(record("good")).unwrap(),
        ]});
        std::fs::write(&path, text.to_string()).unwrap();
        let loaded = FileStore::new(&path).load().unwrap();
        assert_eq!(loaded.records.len(), 1);
        assert_eq!(loaded.records[0].name, "good");
        assert_eq!(loaded.skipped.len(), 3, "{:?}", loaded.skipped);
        assert!(loaded.skipped[0].contains("broken"));
        assert!(loaded.skipped[1].contains("badhost"));
        assert!(loaded.skipped[2].contains("twice"));
    }

    #[test]
    fn a_damaged_or_newer_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploys.json");
        std::fs::write(&path, b"{\"version\": 1, \"servi").unwrap();
        let err = FileStore::new(&path).load().unwrap_err().to_string();
        assert!(err.contains("deploys.damaged"), "{err}");
        assert!(!path.exists() && dir.path().join("deploys.damaged").exists());
        std::fs::write(&path, b"{\"version\": 9, \"services\": []}").unwrap();
        assert!(FileStore::new(&path).load().unwrap_err().to_string().contains("newer"));
    }
}
