//! Drains the durable upload queue of one storage profile. Jobs are rows in the state store, so
//! the uploader holds nothing that must survive a crash: on start it picks up every job of its
//! profile, including those that were in flight when the process died.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use rand::Rng;
use serde_json::json;

use crate::domain::{ErrorInfo, InstanceRecord, TranscriptArtefact};
use crate::snapshot::{ActorSnapshot, Snapshot};
use crate::storage::StorageError;
use crate::store::{ArtefactKind, StateStore, StoreError, UploadJob};
use crate::{ApplicationProfile, EngineConfig, EngineError};

pub struct Uploader {
    store: Arc<dyn StateStore>,
    profile: Arc<ApplicationProfile>,
    config: Arc<EngineConfig>,
    running: HashSet<String>,
    /// Jobs waiting for a retry, with when they may run again.
    backoff: HashMap<String, Instant>,
    /// Jobs that failed for good (credentials, missing bucket); retried after a restart.
    parked: HashSet<String>,
    num_uploaded: u64,
    num_bytes: u64,
    num_failures: u64,
    last_error: Option<ErrorInfo>,
}

impl Uploader {
    pub fn new(store: Arc<dyn StateStore>, profile: Arc<ApplicationProfile>, config: Arc<EngineConfig>) -> Self {
        Self {
            store,
            profile,
            config,
            running: HashSet::new(),
            backoff: HashMap::new(),
            parked: HashSet::new(),
            num_uploaded: 0,
            num_bytes: 0,
            num_failures: 0,
            last_error: None,
        }
    }

    fn owns(&self, job: &UploadJob) -> bool {
        job.organization_id == self.profile.organization_id && job.application_id == self.profile.application_id
    }

    /// Starts as many runnable jobs as the concurrency limit allows.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let jobs = match self.store.jobs() {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::error!(error = %err, "upload queue unreadable");
                self.last_error = Some(ErrorInfo::new("STATE_STORE", err.to_string()));
                ctx.run_later(self.config.upload_retry_max, |act, ctx| act.pump(ctx));
                return;
            }
        };
        let now = Instant::now();
        for job in jobs {
            if self.running.len() >= self.config.upload_concurrency.max(1) {
                break;
            }
            if !self.owns(&job) || self.running.contains(&job.key) || self.parked.contains(&job.key) {
                continue;
            }
            if self.backoff.get(&job.key).is_some_and(|at| *at > now) {
                continue;
            }
            self.backoff.remove(&job.key);
            self.running.insert(job.key.clone());
            let store = self.store.clone();
            let profile = self.profile.clone();
            ctx.spawn(
                run_job(store, profile, job.clone())
                    .into_actor(self)
                    .map(move |result, act, ctx| {
                        act.running.remove(&job.key);
                        act.finish(job, result, ctx);
                        act.pump(ctx);
                    }),
            );
        }
    }

    fn finish(&mut self, mut job: UploadJob, result: Result<u64, JobError>, ctx: &mut Context<Self>) {
        match result {
            Ok(size) => {
                self.num_uploaded += 1;
                self.num_bytes += size;
                tracing::info!(key = %job.key, size, "artefact uploaded");
            }
            Err(err) => {
                self.num_failures += 1;
                job.num_attempts += 1;
                let info = ErrorInfo::new(err.code(), err.to_string());
                job.last_error = Some(info.clone());
                self.last_error = Some(info);
                if let Err(store_err) = self.store.update_job(&job) {
                    tracing::error!(error = %store_err, key = %job.key, "could not record upload failure");
                }
                if err.is_retryable() {
                    let delay = retry_delay(&self.config, job.num_attempts);
                    tracing::warn!(key = %job.key, error = %err, attempt = job.num_attempts, retry_in_ms = delay.as_millis() as u64, "upload failed, will retry");
                    self.backoff.insert(job.key.clone(), Instant::now() + delay);
                    ctx.run_later(delay, |act, ctx| act.pump(ctx));
                } else {
                    tracing::error!(key = %job.key, error = %err, "upload failed and will not be retried until restart");
                    self.parked.insert(job.key);
                }
            }
        }
    }
}

/// Exponential backoff with full jitter: `base * 2^(attempt-1)`, capped, times a random factor in
/// [0.5, 1.0) so a fleet of uploaders does not retry in lockstep after an outage.
fn retry_delay(config: &EngineConfig, num_attempts: u32) -> Duration {
    let exp = config
        .upload_retry_base
        .saturating_mul(1u32 << num_attempts.saturating_sub(1).min(16));
    let capped = exp.min(config.upload_retry_max);
    capped.mul_f64(rand::thread_rng().gen_range(0.5..1.0))
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl JobError {
    fn is_retryable(&self) -> bool {
        match self {
            JobError::Storage(err) => err.is_retryable(),
            JobError::Store(StoreError::Io(_)) => true,
            JobError::Store(_) => false,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            JobError::Storage(err) => err.code(),
            JobError::Store(_) => "STATE_STORE",
        }
    }
}

/// Renders the artefact from the state store, uploads it, records where it went, and only then
/// removes the job.
async fn run_job(
    store: Arc<dyn StateStore>,
    profile: Arc<ApplicationProfile>,
    job: UploadJob,
) -> Result<u64, JobError> {
    let Some(record) = store.get_instance(&job.instance_id)? else {
        // The instance is gone (cannot happen today: instances are never deleted); drop the job.
        store.finish_job(&job.key, job.generation)?;
        return Ok(0);
    };
    let body = render(store.as_ref(), &record, &job.artefact)?;
    let size = profile.backend.put(&job.key, body).await?;
    let location = profile.backend.location(&job.key);
    let now = Utc::now();
    store.update_instance(&record.instance_id, &mut |r| {
        match &job.artefact {
            ArtefactKind::ChatTranscript => {
                let id = r
                    .transcript
                    .as_ref()
                    .map(|t| t.id.clone())
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                r.transcript = Some(TranscriptArtefact {
                    id,
                    location: location.clone(),
                    created: now,
                    num_entries: r.num_transcript_entries,
                });
            }
            ArtefactKind::CobrowseSession { session_id } => {
                let session = r.cobrowse_sessions.entry(session_id.clone()).or_default();
                session.location = Some(location.clone());
                session.uploaded = Some(now);
            }
        }
        Ok(())
    })?;
    store.finish_job(&job.key, job.generation)?;
    store.flush().await?;
    Ok(size)
}

fn render(store: &dyn StateStore, record: &InstanceRecord, artefact: &ArtefactKind) -> Result<Vec<u8>, StoreError> {
    let value = match artefact {
        ArtefactKind::ChatTranscript => json!({
            "conversationId": record.conversation_id,
            "recorderId": record.recorder_id,
            "instanceId": record.instance_id,
            "chatTranscriptList": store.transcript(&record.instance_id)?,
        }),
        ArtefactKind::CobrowseSession { session_id } => json!({
            "conversationId": record.conversation_id,
            "recorderId": record.recorder_id,
            "instanceId": record.instance_id,
            "sessionId": session_id,
            "events": store.cobrowse_events(&record.instance_id, session_id)?,
        }),
    };
    Ok(serde_json::to_vec_pretty(&value).expect("json values always serialize"))
}

impl Actor for Uploader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Kicks are idempotent wake-ups; a burst of them collapses into one pump.
        ctx.set_mailbox_capacity(256);
        self.pump(ctx);
    }
}

impl Handler<Kick> for Uploader {
    type Result = ();

    fn handle(&mut self, _msg: Kick, ctx: &mut Self::Context) {
        self.pump(ctx);
    }
}

/// Wakes an uploader: new jobs may be queued.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

impl Handler<Snapshot> for Uploader {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let num_queued = self
            .store
            .jobs()
            .map(|jobs| jobs.iter().filter(|j| self.owns(j)).count())
            .unwrap_or(0);
        MessageResult(ActorSnapshot {
            kind: "Uploader",
            id: format!("{}/{}", self.profile.organization_id, self.profile.application_id),
            state: if self.running.is_empty() { "IDLE" } else { "UPLOADING" }.into(),
            mailbox_depth: 0,
            restarts: 0,
            last_error: self.last_error.clone(),
            counters: BTreeMap::from([
                ("num_queued", num_queued as u64),
                ("num_running", self.running.len() as u64),
                ("num_uploaded", self.num_uploaded),
                ("num_bytes", self.num_bytes),
                ("num_failures", self.num_failures),
                ("num_parked", self.parked.len() as u64),
            ]),
            children: vec![],
        })
    }
}

impl From<JobError> for EngineError {
    fn from(err: JobError) -> Self {
        match err {
            JobError::Storage(e) => EngineError::Storage(e),
            JobError::Store(e) => EngineError::Store(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_stay_capped() {
        let config = EngineConfig {
            recorder_id: "n".into(),
            applications: HashMap::new(),
            upload_concurrency: 1,
            upload_retry_base: Duration::from_secs(1),
            upload_retry_max: Duration::from_secs(60),
            media: Arc::new(crate::engine::MediaConfig::for_tests(std::env::temp_dir())),
        };
        for attempt in 1..40 {
            let delay = retry_delay(&config, attempt);
            let ceiling = Duration::from_secs(1)
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(Duration::from_secs(60));
            assert!(delay < ceiling && delay >= ceiling / 2, "attempt {attempt}: {delay:?}");
        }
    }
}
