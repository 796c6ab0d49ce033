//! The local-filesystem backend: the default profile, so the recorder runs with no cloud at all.
//! Objects are files under a root directory; writes are atomic (temp file, fsync, rename, fsync
//! of the directory) so a crash leaves the old object or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{validate_key, StorageBackend, StorageError, StorageResult};
use crate::domain::Provider;

#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// Creates the root directory if needed.
    pub fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root: root.canonicalize()?,
        })
    }

    fn path_of(&self, key: &str) -> StorageResult<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

fn io_error(path: &Path, err: std::io::Error) -> StorageError {
    match err.kind() {
        std::io::ErrorKind::NotFound => StorageError::NotFound(path.display().to_string()),
        std::io::ErrorKind::PermissionDenied => StorageError::Unauthorized(format!("{}: {err}", path.display())),
        _ => StorageError::Io(format!("{}: {err}", path.display())),
    }
}

/// Runs blocking file work off the async executor.
fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> BoxFuture<'static, StorageResult<T>> {
    async move {
        tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|err| Err(StorageError::Io(format!("storage worker failed: {err}"))))
    }
    .boxed()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("object paths are below the root");
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .expect("validated keys end in a file name")
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl StorageBackend for LocalBackend {
    fn provider(&self) -> Provider {
        Provider::Local
    }

    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn location(&self, key: &str) -> String {
        format!("file://{}", self.root.join(key).display())
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> BoxFuture<'static, StorageResult<u64>> {
        let path = self.path_of(key);
        blocking(move || {
            let path = path?;
            write_atomically(&path, &bytes).map_err(|err| io_error(&path, err))?;
            Ok(bytes.len() as u64)
        })
    }

    fn get(&self, key: &str) -> BoxFuture<'static, StorageResult<Vec<u8>>> {
        let path = self.path_of(key);
        blocking(move || {
            let path = path?;
            std::fs::read(&path).map_err(|err| io_error(&path, err))
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'static, StorageResult<()>> {
        let path = self.path_of(key);
        blocking(move || {
            let path = path?;
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(err) => Err(io_error(&path, err)),
            }
        })
    }

    fn check_bucket(&self) -> BoxFuture<'static, StorageResult<()>> {
        let root = self.root.clone();
        blocking(move || {
            let meta = std::fs::metadata(&root)
                .map_err(|_| StorageError::MissingBucket(format!("directory {} is missing", root.display())))?;
            if !meta.is_dir() {
                return Err(StorageError::MissingBucket(format!(
                    "{} is not a directory",
                    root.display()
                )));
            }
            Ok(())
        })
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path_of(key).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_overwrite_delete() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path().join("root")).unwrap();
        assert_eq!(backend.put("a/b/c.json", b"one".to_vec()).await.unwrap(), 3);
        assert_eq!(backend.get("a/b/c.json").await.unwrap(), b"one");
        backend.put("a/b/c.json", b"two!".to_vec()).await.unwrap();
        assert_eq!(backend.get("a/b/c.json").await.unwrap(), b"two!");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("root/a/b")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files stay behind");
        backend.delete("a/b/c.json").await.unwrap();
        assert!(matches!(
            backend.get("a/b/c.json").await,
            Err(StorageError::NotFound(_))
        ));
        assert!(matches!(
            backend.put("../escape", vec![]).await,
            Err(StorageError::InvalidKey(_))
        ));
    }
}
