//! How a queued job (an upload, an erasure) fails: a storage outage or refusal, the state store,
//! or an upload the store holds differently than it was sent. Whether it is retried follows.

use crate::storage::StorageError;
use crate::store::StoreError;
use crate::EngineError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store accepted the upload but holds something else than what was read locally.
    #[error("upload verification failed: {0}")]
    Verification(String),
}

impl JobError {
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            JobError::Storage(err) => err.is_retryable(),
            JobError::Store(StoreError::Io(_)) => true,
            JobError::Store(_) => false,
            // Uploading again replaces the object; a persistent mismatch keeps backing off.
            JobError::Verification(_) => true,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            JobError::Storage(err) => err.code(),
            JobError::Store(_) => "STATE_STORE",
            JobError::Verification(_) => "UPLOAD_VERIFICATION",
        }
    }
}

impl From<JobError> for EngineError {
    fn from(err: JobError) -> Self {
        match err {
            JobError::Storage(e) => EngineError::Storage(e),
            JobError::Store(e) => EngineError::Store(e),
            JobError::Verification(m) => EngineError::Unavailable(m),
        }
    }
}
