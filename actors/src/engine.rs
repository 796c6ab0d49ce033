//! What the engine is configured with, and the one error type of its boundary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::storage::{StorageBackend, StorageError};
use crate::store::StoreError;

/// One application of one organization: where its artefacts are stored.
pub struct ApplicationProfile {
    pub organization_id: String,
    pub application_id: String,
    pub backend: Arc<dyn StorageBackend>,
}

pub struct EngineConfig {
    /// This node's id, the `recorderId` of every instance it owns; stable across restarts.
    pub recorder_id: String,
    /// Keyed by (organizationId, applicationId).
    pub applications: HashMap<(String, String), Arc<ApplicationProfile>>,
    /// Uploads running at once per storage profile.
    pub upload_concurrency: usize,
    /// First retry delay of a failed upload; doubles per attempt up to `upload_retry_max`.
    pub upload_retry_base: Duration,
    pub upload_retry_max: Duration,
}

impl EngineConfig {
    pub fn application(&self, organization_id: &str, application_id: &str) -> Option<&Arc<ApplicationProfile>> {
        self.applications
            .get(&(organization_id.to_string(), application_id.to_string()))
    }
}

/// Errors the engine answers the front with. The front maps each kind to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{message}")]
    NotFound { message: String },
    #[error("{message}")]
    Conflict { message: String },
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

impl EngineError {
    pub fn not_found(message: impl Into<String>) -> Self {
        EngineError::NotFound {
            message: message.into(),
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        EngineError::Conflict {
            message: message.into(),
        }
    }
}

impl From<actix::MailboxError> for EngineError {
    fn from(err: actix::MailboxError) -> Self {
        EngineError::Unavailable(err.to_string())
    }
}
