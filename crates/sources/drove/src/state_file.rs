//! The last known view on disk: written atomically after each change, read at boot so
//! routes are served at once, before the first sync.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::view::NamespaceView;

const VERSION: u32 = 1;

/// Read as owned views; written from borrowed ones.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile<Views> {
    version: u32,
    captured_at_ms: u64,
    namespaces: Views,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not a Gatehouse state file ({reason}); moved aside to {}", path.display(), aside.display())]
    Corrupt { path: PathBuf, reason: String, aside: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Reads the views saved at `path`. A missing file is an empty result; a file that cannot
/// be understood is renamed to `<path>.corrupt-<ms>` so the next write does not destroy the
/// evidence, and reported.
pub fn load(path: &Path) -> Result<BTreeMap<String, NamespaceView>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => return Err(StateError::Read { path: path.into(), source }),
    };
    let reason = match serde_json::from_slice::<StateFile<BTreeMap<String, NamespaceView>>>(&bytes) {
        Ok(file) if file.version == VERSION => return Ok(file.namespaces),
        Ok(file) => format!("version {} where {VERSION} was expected", file.version),
        Err(e) => e.to_string(),
    };
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{}", now_ms()));
    let aside = PathBuf::from(aside);
    if let Err(source) = std::fs::rename(path, &aside) {
        return Err(StateError::Read { path: path.into(), source });
    }
    Err(StateError::Corrupt { path: path.into(), reason, aside })
}

/// Writes the views to `path` atomically: a temporary file in the same folder, fsync,
/// rename over the old one, fsync the folder. A crash or a full disk leaves the old file.
pub fn save(path: &Path, namespaces: &BTreeMap<&str, &NamespaceView>) -> Result<(), StateError> {
    let file = StateFile { version: VERSION, captured_at_ms: now_ms(), namespaces };
    let err = |source| StateError::Write { path: path.into(), source };
    let bytes = serde_json::to_vec_pretty(&file).map_err(|e| err(std::io::Error::other(e)))?;
    gatehouse_files::replace(path, &bytes).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{App, Host};

    #[test]
    fn round_trip_and_corrupt_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        assert!(load(&path).unwrap().is_empty(), "missing file: nothing restored");
        let mut view = NamespaceView::default();
        view.apps.insert(
            "a".into(),
            App {
                vhost: "a".into(),
                hosts: vec![Host { host: "h".into(), port: 1, port_type: "http".into() }],
                ..App::default()
            },
        );
        save(&path, &BTreeMap::from([("stage", &view)])).unwrap();
        assert_eq!(load(&path).unwrap(), BTreeMap::from([("stage".to_string(), view)]));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");

        std::fs::write(&path, b"{\"version\":1,\"namesp").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("is not a Gatehouse state file") && err.contains(".corrupt-"), "{err}");
        assert!(!path.exists(), "moved aside");
        assert!(load(&path).unwrap().is_empty());
    }
}
