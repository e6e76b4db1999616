//! Where the account and certificates are kept. The interface is two calls on opaque keys,
//! so a shared store (etcd, for replicas behind one address) can replace the files without
//! touching the rest.

use std::io;
use std::path::PathBuf;

pub trait Storage: Send + Sync + 'static {
    /// The bytes under `key`, or `None` when nothing was stored there.
    fn load(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Replaces what is under `key`, all or nothing; readable by this service only.
    fn store(&self, key: &str, bytes: &[u8]) -> io::Result<()>;
}

/// Files under one folder (the state directory's `acme/`): each key a file, written to a
/// temporary file, synced and renamed, mode 0600, folders 0700.
#[derive(Debug)]
pub struct FileStorage {
    root: PathBuf,
}

impl FileStorage {
    pub fn new(root: PathBuf) -> Self {
        FileStorage { root }
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        // Keys are ours ("certificates/web.json"), but a service name comes from a user.
        let safe = !key.is_empty()
            && key.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        if !safe {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a storage key: {key:?}")));
        }
        Ok(self.root.join(key))
    }
}

impl Storage for FileStorage {
    fn load(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(key)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn store(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let path = self.path(key)?;
        if let Some(folder) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(folder)?;
        }
        gatehouse_files::replace_private(&path, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_become_private_files_and_never_escape_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FileStorage::new(dir.path().join("acme"));
        assert_eq!(storage.load("certificates/web.json").unwrap(), None);
        storage.store("certificates/web.json", b"{}").unwrap();
        assert_eq!(storage.load("certificates/web.json").unwrap().as_deref(), Some(&b"{}"[..]));
        let file = dir.path().join("acme/certificates/web.json");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let folder = dir.path().join("acme/certificates");
        assert_eq!(std::fs::metadata(folder).unwrap().permissions().mode() & 0o777, 0o700);
        for bad in ["../x", "certificates/../../x", "/etc/passwd", "a//b", "", "a b"] {
            assert!(storage.store(bad, b"x").is_err(), "{bad}");
        }
    }
}
