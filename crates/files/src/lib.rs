//! Files replaced atomically: the new content is staged next to the target (same folder,
//! so the rename cannot cross file systems and relative includes resolve the same), made
//! durable, optionally checked, then renamed over the target and the folder synced. A
//! crash or a full disk leaves the old file whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// New content for `target`, written and synced but not yet in place. Dropping it without
/// [`Staged::commit`] removes it.
#[derive(Debug)]
pub struct Staged {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

fn folder(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

impl Staged {
    /// Writes `bytes` to a hidden temporary file beside `target` (creating the folder) and
    /// syncs it. The target's permissions are kept when it exists.
    pub fn write(target: &Path, bytes: &[u8]) -> std::io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = folder(target);
        std::fs::create_dir_all(dir)?;
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let staged = Staged { temp, target: target.into(), committed: false };
        let mut file = std::fs::File::create(&staged.temp)?;
        file.write_all(bytes)?;
        if let Ok(meta) = std::fs::metadata(target) {
            file.set_permissions(meta.permissions())?;
        }
        file.sync_all()?;
        Ok(staged)
    }

    /// Where the staged content is, for a check (`nginx -t -c PATH`).
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Renames the staged file over the target and syncs the folder.
    pub fn commit(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.temp, &self.target)?;
        self.committed = true;
        std::fs::File::open(folder(&self.target))?.sync_all()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Replaces `target` with `bytes` atomically.
pub fn replace(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    Staged::write(target, bytes)?.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_check_commit_or_leave_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/nginx.conf");
        replace(&target, b"one").unwrap();
        let staged = Staged::write(&target, b"two").unwrap();
        assert_eq!(std::fs::read(staged.path()).unwrap(), b"two");
        assert_eq!(std::fs::read(&target).unwrap(), b"one", "not in place before commit");
        drop(staged);
        let files = || std::fs::read_dir(target.parent().unwrap()).unwrap().count();
        assert_eq!(files(), 1, "a dropped stage leaves nothing behind");
        Staged::write(&target, b"three").unwrap().commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"three");
        assert_eq!(files(), 1);
    }
}
