//! Storage backends: where finished artefacts go. The engine sees only [`StorageBackend`]; each
//! provider lives in its own file and is the only module that talks to its SDK or protocol.
//! Errors are a small closed set of kinds that decide whether an upload is retried.

mod local;
mod verify;

use std::path::PathBuf;

use futures_util::future::BoxFuture;

use crate::domain::Provider;

pub use local::LocalBackend;
pub use verify::{verify, CheckResult, VerificationReport};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("object not found: {0}")]
    NotFound(String),
    #[error("access denied: {0}")]
    Unauthorized(String),
    #[error("bucket or container missing: {0}")]
    MissingBucket(String),
    #[error("storage service error: {0}")]
    Service(String),
    #[error("storage timed out: {0}")]
    Timeout(String),
    #[error("storage i/o: {0}")]
    Io(String),
    #[error("invalid object key: {0}")]
    InvalidKey(String),
}

impl StorageError {
    /// Whether trying again later can succeed (an outage) or cannot (wrong credentials, no bucket).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StorageError::Service(_) | StorageError::Timeout(_) | StorageError::Io(_)
        )
    }

    pub fn code(&self) -> &'static str {
        match self {
            StorageError::NotFound(_) => "STORAGE_NOT_FOUND",
            StorageError::Unauthorized(_) => "STORAGE_UNAUTHORIZED",
            StorageError::MissingBucket(_) => "STORAGE_MISSING_BUCKET",
            StorageError::Service(_) => "STORAGE_SERVICE",
            StorageError::Timeout(_) => "STORAGE_TIMEOUT",
            StorageError::Io(_) => "STORAGE_IO",
            StorageError::InvalidKey(_) => "STORAGE_INVALID_KEY",
        }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

pub trait StorageBackend: Send + Sync + 'static {
    fn provider(&self) -> Provider;
    /// Where the profile stores, without credentials; shown by `storage/info`.
    fn url(&self) -> String;
    /// Where one object lives, as recorded in `location` fields.
    fn location(&self, key: &str) -> String;
    /// Writes an object whole and atomically: readers see the old object or the new one.
    fn put(&self, key: &str, bytes: Vec<u8>) -> BoxFuture<'static, StorageResult<u64>>;
    fn get(&self, key: &str) -> BoxFuture<'static, StorageResult<Vec<u8>>>;
    fn delete(&self, key: &str) -> BoxFuture<'static, StorageResult<()>>;
    /// Checks that the bucket (container, directory) exists and is reachable.
    fn check_bucket(&self) -> BoxFuture<'static, StorageResult<()>>;
    /// A file on this node holding the object, for backends the recorder serves itself.
    fn local_path(&self, key: &str) -> Option<PathBuf>;
}

/// Refuses keys that could leave the profile's root: empty or dot segments, absolute paths,
/// backslashes and NUL.
pub fn validate_key(key: &str) -> StorageResult<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key.contains('\0')
        || key
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..");
    if bad {
        return Err(StorageError::InvalidKey(key.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a\\b", "a\0b", "a/"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        validate_key("org/app/conv/rec/inst/chat/transcript.json").unwrap();
    }

    #[test]
    fn only_outages_are_retried() {
        assert!(StorageError::Timeout("t".into()).is_retryable());
        assert!(StorageError::Service("503".into()).is_retryable());
        assert!(!StorageError::Unauthorized("key".into()).is_retryable());
        assert!(!StorageError::MissingBucket("b".into()).is_retryable());
    }
}
