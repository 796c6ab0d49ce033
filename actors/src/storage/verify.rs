//! `storageproviders/{applicationId}/verify`: real checks against a profile's store, each with
//! its own verdict and a message a person can act on.

use std::time::Instant;

use serde::Serialize;

use super::{StorageBackend, StorageError};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    pub passed: bool,
    pub message: String,
}

impl CheckResult {
    fn pass(message: impl Into<String>) -> Self {
        Self {
            passed: true,
            message: message.into(),
        }
    }
    fn fail(message: impl Into<String>) -> Self {
        Self {
            passed: false,
            message: message.into(),
        }
    }
    fn skipped(after: &str) -> Self {
        Self::fail(format!("not run: the {after} check failed"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerificationReport {
    pub bucket: CheckResult,
    pub write: CheckResult,
    pub read: CheckResult,
    pub modify: CheckResult,
    pub delete: CheckResult,
    /// Write throughput of a [`PROBE_SIZE`] object, in MiB/s, when the write passed.
    pub write_mib_per_sec: Option<f64>,
}

/// Size of the object written to measure throughput: large enough to span several packets or
/// parts, small enough to run on every verify.
pub const PROBE_SIZE: usize = 4 << 20;

fn describe(err: &StorageError) -> String {
    match err {
        StorageError::Unauthorized(m) => format!("access denied (check the credentials): {m}"),
        StorageError::MissingBucket(m) => format!("bucket does not exist: {m}"),
        StorageError::Timeout(m) => format!("storage host unreachable (timed out): {m}"),
        other => other.to_string(),
    }
}

/// Runs bucket, write, read, modify and delete checks in order against `key_prefix`; a check
/// whose precondition failed is reported as not run.
pub async fn verify(backend: &dyn StorageBackend, key_prefix: &str) -> VerificationReport {
    let key = format!("{key_prefix}/.verify/{}.bin", uuid::Uuid::new_v4().simple());
    let content: Vec<u8> = (0..PROBE_SIZE).map(|i| (i % 251) as u8).collect();

    let bucket = match backend.check_bucket().await {
        Ok(()) => CheckResult::pass(format!("{} is reachable", backend.url())),
        Err(err) => CheckResult::fail(describe(&err)),
    };
    if !bucket.passed {
        return VerificationReport {
            write: CheckResult::skipped("bucket"),
            read: CheckResult::skipped("bucket"),
            modify: CheckResult::skipped("bucket"),
            delete: CheckResult::skipped("bucket"),
            bucket,
            write_mib_per_sec: None,
        };
    }

    let started = Instant::now();
    let (write, write_mib_per_sec) = match backend.put(&key, content.clone()).await {
        Ok(size) if size == content.len() as u64 => {
            let secs = started.elapsed().as_secs_f64().max(1e-6);
            let rate = PROBE_SIZE as f64 / (1 << 20) as f64 / secs;
            (
                CheckResult::pass(format!("wrote {size} bytes to {}", backend.location(&key))),
                Some(rate),
            )
        }
        Ok(size) => (
            CheckResult::fail(format!("wrote {size} bytes, expected {}", content.len())),
            None,
        ),
        Err(err) => (CheckResult::fail(describe(&err)), None),
    };
    if !write.passed {
        return VerificationReport {
            bucket,
            write,
            read: CheckResult::skipped("write"),
            modify: CheckResult::skipped("write"),
            delete: CheckResult::skipped("write"),
            write_mib_per_sec,
        };
    }

    let read = match backend.get(&key).await {
        Ok(bytes) if bytes == content => CheckResult::pass("read back the same content"),
        Ok(bytes) => CheckResult::fail(format!(
            "read back {} bytes that differ from what was written",
            bytes.len()
        )),
        Err(err) => CheckResult::fail(describe(&err)),
    };

    let modified: Vec<u8> = b"modified by verify".to_vec();
    let modify = match backend.put(&key, modified.clone()).await {
        Ok(_) => match backend.get(&key).await {
            Ok(bytes) if bytes == modified => CheckResult::pass("overwrote the object and read the new content"),
            Ok(_) => CheckResult::fail("overwrite did not take effect: read the old content"),
            Err(err) => CheckResult::fail(describe(&err)),
        },
        Err(err) => CheckResult::fail(describe(&err)),
    };

    let delete = match backend.delete(&key).await {
        Ok(()) => match backend.get(&key).await {
            Err(StorageError::NotFound(_)) => CheckResult::pass("deleted the object and it is gone"),
            Ok(_) => CheckResult::fail("object still readable after delete"),
            Err(err) => CheckResult::fail(describe(&err)),
        },
        Err(err) => CheckResult::fail(describe(&err)),
    };

    VerificationReport {
        bucket,
        write,
        read,
        modify,
        delete,
        write_mib_per_sec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalBackend;

    #[tokio::test]
    async fn a_working_store_passes_every_check() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path()).unwrap();
        let report = verify(&backend, "org/app").await;
        for check in [
            &report.bucket,
            &report.write,
            &report.read,
            &report.modify,
            &report.delete,
        ] {
            assert!(check.passed, "{check:?}");
        }
        assert!(report.write_mib_per_sec.unwrap() > 0.0);
    }

    #[tokio::test]
    async fn a_missing_directory_fails_the_bucket_check_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path().join("gone")).unwrap();
        std::fs::remove_dir(dir.path().join("gone")).unwrap();
        let report = verify(&backend, "org/app").await;
        assert!(!report.bucket.passed);
        assert!(
            report.bucket.message.contains("does not exist"),
            "{}",
            report.bucket.message
        );
        assert!(!report.write.passed && report.write.message.contains("not run"));
    }
}
