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
        Self::write_mode(target, bytes, None)
    }

    /// As [`Staged::write`], the file readable by its owner only (0600) from its creation:
    /// private keys never exist with wider permissions, even for an instant.
    pub fn write_private(target: &Path, bytes: &[u8]) -> std::io::Result<Self> {
        Self::write_mode(target, bytes, Some(0o600))
    }

    fn write_mode(target: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = folder(target);
        std::fs::create_dir_all(dir)?;
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let staged = Staged { temp, target: target.into(), committed: false };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let mut file = options.open(&staged.temp)?;
        file.write_all(bytes)?;
        match std::fs::metadata(target) {
            Ok(meta) if mode.is_none() => file.set_permissions(meta.permissions())?,
            _ => {}
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

/// Replaces `target` with `bytes` atomically, readable by its owner only (keys, credentials).
pub fn replace_private(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    Staged::write_private(target, bytes)?.commit()
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

    #[test]
    fn private_files_are_owner_only_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("key.pem");
        replace(&target, b"public").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let staged = Staged::write_private(&target, b"secret").unwrap();
        assert_eq!(std::fs::metadata(staged.path()).unwrap().permissions().mode() & 0o777, 0o600);
        staged.commit().unwrap();
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600, "not the old file's mode");
    }
}
