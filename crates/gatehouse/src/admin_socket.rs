//! The admin Unix socket: the control channel of the CLI. Its file mode (0660) is the access
//! control, so it lives in a folder only the service's user (and group) can reach.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::net::UnixListener;

/// The socket's file, removed when this is dropped.
pub struct SocketFile(pub PathBuf);

impl SocketFile {
    /// Leaves the file in place (a binary upgrade: the new process serves on this socket).
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds `path`, replacing a stale socket file, or takes the socket a binary upgrade handed
/// over. Returns `None` (after a warning) when another running instance answers there: its
/// socket is never taken over.
pub async fn bind(path: &Path) -> anyhow::Result<Option<(UnixListener, SocketFile)>> {
    if let Some(inherited) = crate::upgrade::take_unix(path) {
        inherited.set_nonblocking(true)?;
        return Ok(Some((UnixListener::from_std(inherited)?, SocketFile(path.to_path_buf()))));
    }
    let hint = "set `admin_socket` to a writable path, or `admin_socket = \"\"` to turn it off";
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {} for the admin socket ({hint})", folder.display()))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            tracing::warn!(socket = %path.display(), "another Gatehouse answers on the admin socket; this one runs without it");
            return Ok(None);
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the admin socket {} ({hint})", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(Some((listener, SocketFile(path.to_path_buf()))))
}
