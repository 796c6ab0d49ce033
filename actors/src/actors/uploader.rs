//! Drains the durable upload queue of one storage profile. Jobs are rows in the state store, so
//! the uploader holds nothing that must survive a crash: on start it picks up every job of its
//! profile, including those that were in flight when the process died.
//!
//! Why one file (~650 lines of code): one actor and its retry/verify loop; the per-provider work is
//! in `storage/`, the queue rules in `store/artefacts.rs`. What is left is the job's life (pick,
//! upload, verify, finish, back off) and reads best in one piece.

use super::job::JobError;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::json;

use crate::domain::{ErrorInfo, InstanceRecord, TranscriptArtefact};
use crate::snapshot::{ActorSnapshot, Counters, Snapshot, UploaderCounters};
use crate::storage::{MultipartProgress, ObjectInfo, ProgressSink, PutReceipt, StorageError};
use crate::store::{
    ArtefactKind, CompositionId, CompositionState, EventKind, OutboxEvent, StateStore, StoreError, UploadJob,
};
use crate::{ApplicationProfile, EngineConfig};

pub struct Uploader {
    store: Arc<dyn StateStore>,
    profile: Arc<ApplicationProfile>,
    config: Arc<EngineConfig>,
    running: HashSet<String>,
    /// Jobs waiting for a retry, with when they may run again.
    backoff: HashMap<String, Instant>,
    /// Jobs that failed for good (credentials, missing bucket); retried after a restart.
    parked: HashSet<String>,
    /// Rendered artefacts (transcripts, co-browse sessions) first seen queued: each waits
    /// `render_settle` so that a burst of adds after stop is rendered and uploaded once (the
    /// whole document is uploaded each time: a render per add would cost the square of the adds).
    settling: HashMap<String, Instant>,
    num_uploaded: u64,
    num_bytes: u64,
    num_failures: u64,
    /// Times the queue was looked at (a burst of kicks makes one).
    num_pumps: u64,
    /// A pump is scheduled; kicks until it runs add nothing.
    pump_scheduled: bool,
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
            settling: HashMap::new(),
            num_uploaded: 0,
            num_bytes: 0,
            num_failures: 0,
            num_pumps: 0,
            pump_scheduled: false,
            last_error: None,
        }
    }

    fn owns(&self, job: &UploadJob) -> bool {
        job.organization_id == self.profile.organization_id && job.application_id == self.profile.application_id
    }

    /// Starts as many runnable jobs as the concurrency limit allows.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        self.num_pumps += 1;
        let profile = &self.profile;
        let jobs = match self
            .store
            .profile_jobs(&profile.organization_id, &profile.application_id)
        {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::error!(error = %err, "upload queue unreadable");
                self.last_error = Some(ErrorInfo::new("STATE_STORE", err.to_string()));
                crate::clock::run_later(
                    &self.config.clock().clone(),
                    ctx,
                    self.config.upload_retry_max,
                    |act, ctx| act.pump(ctx),
                );
                return;
            }
        };
        let now = self.config.clock().now();
        // Instances with artefacts still to upload: their manifest waits.
        let pending: HashSet<String> = jobs
            .iter()
            // The composition is the conversation's, not listed in an instance's manifest.
            .filter(|j| j.artefact != ArtefactKind::Manifest && !matches!(j.artefact, ArtefactKind::Composition { .. }))
            .map(|j| j.instance_id.clone())
            .collect();
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
            if job.artefact == ArtefactKind::Manifest && pending.contains(&job.instance_id) {
                continue;
            }
            if matches!(
                job.artefact,
                ArtefactKind::ChatTranscript | ArtefactKind::CobrowseSession { .. }
            ) {
                let since = *self.settling.entry(job.key.clone()).or_insert(now);
                let settled_at = since + self.config.render_settle;
                if settled_at > now {
                    crate::clock::run_later(&self.config.clock().clone(), ctx, settled_at - now, |act, ctx| {
                        act.pump(ctx)
                    });
                    continue;
                }
            }
            self.backoff.remove(&job.key);
            self.running.insert(job.key.clone());
            let store = self.store.clone();
            let profile = self.profile.clone();
            let config = self.config.clone();
            ctx.spawn(
                run_job(store, profile, config, job.clone())
                    .into_actor(self)
                    .map(move |result, act, ctx| {
                        act.running.remove(&job.key);
                        act.settling.remove(&job.key);
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
                job.first_failure.get_or_insert(self.config.clock().utc());
                let info = ErrorInfo::new(err.code(), err.to_string());
                job.last_error = Some(info.clone());
                self.last_error = Some(info.clone());
                if let Err(store_err) = self.store.update_job(&job) {
                    tracing::error!(error = %store_err, key = %job.key, "could not record upload failure");
                }
                record_failure(self.store.as_ref(), &job, &info);
                // With a backup store even a refusal (revoked credentials) is tried again: there.
                if err.is_retryable() || self.profile.policy.backup.is_some() {
                    let delay = retry_delay(&self.config, job.num_attempts);
                    tracing::warn!(key = %job.key, error = %err, attempt = job.num_attempts, retry_in_ms = delay.as_millis() as u64, "upload failed, will retry");
                    self.backoff.insert(job.key.clone(), self.config.clock().now() + delay);
                    crate::clock::run_later(&self.config.clock().clone(), ctx, delay, |act, ctx| act.pump(ctx));
                } else {
                    tracing::error!(key = %job.key, error = %err, "upload failed and will not be retried until restart");
                    self.parked.insert(job.key);
                }
            }
        }
    }
}

/// Shows the last failure on the artefact itself where the API has a place for it
/// (`objectStorage.error` of a track); the local file stays.
fn record_failure(store: &dyn StateStore, job: &UploadJob, info: &ErrorInfo) {
    if let ArtefactKind::TrackFile {
        stream_id, track_id, ..
    } = &job.artefact
    {
        let result = store.update_instance(&job.instance_id, &mut |r| {
            if let Some(track) = r.track_mut(stream_id, track_id) {
                track.object.error = Some(info.clone());
            }
            Ok(())
        });
        if let Err(err) = result {
            tracing::error!(error = %err, key = %job.key, "could not record the failure on the artefact");
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

/// Uploads one artefact, records where it went, and only then removes the job. A track file is
/// verified against what the store reports before it counts as uploaded, and deleted locally
/// (when configured) only after that.
async fn run_job(
    store: Arc<dyn StateStore>,
    profile: Arc<ApplicationProfile>,
    config: Arc<EngineConfig>,
    job: UploadJob,
) -> Result<u64, JobError> {
    let Some(record) = store.get_instance(&job.instance_id)? else {
        // The instance is gone (cannot happen today: instances are never deleted); drop the job.
        store.finish_job(&job.key, job.generation)?;
        return Ok(0);
    };
    if job.artefact == ArtefactKind::Erasure {
        return super::erasure::run_erasure(store, profile, config, record, job).await;
    }
    if record.erasure.is_some() {
        // An instance being erased uploads nothing more.
        store.finish_job(&job.key, job.generation)?;
        return Ok(0);
    }
    let now = config.clock().utc();
    // An artefact whose upload has kept failing past the application's backup delay goes to
    // its backup store.
    let to_backup = profile.policy.backup.as_ref().is_some_and(|backup| {
        job.first_failure
            .is_some_and(|first| (now - first).to_std().unwrap_or_default() >= backup.after)
    });
    let backend = profile.store_of(to_backup).clone();
    let encryption = profile.policy.encryption.clone();
    // Encrypted artefacts are stored as `<key>.age` (the manifest only when asked for).
    let encrypted = profile.encrypts(&job.artefact);
    let object_key = profile.stored_key(&job.key, &job.artefact);
    let location = backend.location(&object_key);
    let mut keep_local = !config.delete_local_after_upload;
    let size = match &job.artefact {
        ArtefactKind::TrackFile {
            stream_id,
            track_id,
            local_path,
        } => {
            // Every backend's parts go through PartReader (its own point); the local backend
            // copies in one go, so the step is also injectable here, before any byte moves.
            crate::fault::point_in(crate::fault::UPLOAD_PART, &job.key).map_err(|e| StorageError::Io(e.to_string()))?;
            // The progress of an upload an earlier attempt or process left unfinished, and
            // every new part recorded in the job's row as it completes.
            // (A multipart upload left unfinished belongs to the primary: the backup starts over.)
            let resume_opt = store
                .job(&job.key)?
                .and_then(|j| j.multipart_opt)
                .filter(|_| !to_backup);
            // What goes to storage: the file, or its ciphertext (made once, beside it).
            let upload_path = match encryption.as_ref().filter(|_| encrypted) {
                Some(encryption) => encrypt_on_thread(encryption.clone(), PathBuf::from(local_path)).await?,
                None => PathBuf::from(local_path),
            };
            let on_progress: ProgressSink = {
                let (store, job) = (store.clone(), job.clone());
                Arc::new(move |progress: &MultipartProgress| {
                    let mut row = job.clone();
                    row.multipart_opt = Some(progress.clone());
                    // Progress is an optimisation: losing it only costs sending parts again.
                    if let Err(err) = store.update_job(&row) {
                        tracing::warn!(key = %row.key, error = %err, "could not record upload progress");
                    }
                })
            };
            let receipt = backend
                .put_file_resumable(&object_key, &upload_path, resume_opt, on_progress)
                .await?;
            let stored = backend.head(&object_key).await?;
            verify_upload(&receipt, &stored)?;
            let mut recorded = false;
            // Where the track went and the job's end, in one transaction.
            store.transaction(&mut |tx| {
                tx.update_instance(&record.instance_id, &mut |r| {
                    recorded = false;
                    if r.erasure.is_some() {
                        // Erased while it uploaded: the object goes below.
                        return Ok(());
                    }
                    if let Some(track) = r.track_mut(stream_id, track_id) {
                        track.object.key = Some(object_key.clone());
                        track.object.location = Some(location.clone());
                        track.object.size = Some(receipt.size);
                        track.object.uploaded = Some(now);
                        track.object.error = None;
                        track.object.backup = to_backup;
                        recorded = true;
                    }
                    Ok(())
                })?;
                tx.step("upload_done", "track_recorded", &record.instance_id);
                if recorded {
                    tx.put_event(&OutboxEvent::of(
                        &record,
                        EventKind::ArtefactUploaded,
                        now,
                        serde_json::json!({
                            "artefact": "track",
                            "streamId": stream_id,
                            "trackId": track_id,
                            "location": location,
                            "size": receipt.size,
                            "store": store_name(to_backup),
                        }),
                    ))?;
                }
                tx.finish_job(&job.key, job.generation)?;
                Ok(())
            })?;
            if upload_path.as_path() != Path::new(local_path) {
                let _ = tokio::fs::remove_file(&upload_path).await;
            }
            if erased_meanwhile(store.as_ref(), &record.instance_id) {
                delete_erased(backend.as_ref(), &object_key).await?;
                return Ok(0);
            }
            if !recorded {
                // Queued for a track the record does not have (queue_track_file refuses that):
                // keep the file, since nothing says where its copy went.
                keep_local = true;
                tracing::warn!(key = %job.key, "uploaded a track the instance does not list; local file kept");
            }
            receipt.size
        }
        ArtefactKind::Composition {
            conversation_id,
            local_path,
            stereo_path,
        } => {
            let encryption = encryption.as_ref().filter(|_| encrypted);
            let receipt = put_file_verified(backend.as_ref(), &object_key, Path::new(local_path), encryption).await?;
            // The stereo audio beside it, under the same rules (encrypted alike).
            let stereo = match stereo_path.as_deref().filter(|p| Path::new(p).is_file()) {
                Some(stereo_path) => {
                    let extension = Path::new(stereo_path)
                        .extension()
                        .and_then(|e| e.to_str())
                        .unwrap_or("opus");
                    let key = format!(
                        "{}{}",
                        crate::store::artefacts::stereo_key(&record, conversation_id, extension),
                        if encrypted {
                            crate::storage::encryption::SUFFIX
                        } else {
                            ""
                        }
                    );
                    let receipt = put_file_verified(backend.as_ref(), &key, Path::new(stereo_path), encryption).await?;
                    Some((backend.location(&key), key, receipt.size))
                }
                None => None,
            };
            let composition = CompositionId::new(&job.organization_id, &job.application_id, conversation_id);
            // Where it went, the manifest that will list it and the job's end: one transaction.
            let mut erased = false;
            store.transaction(&mut |tx| {
                erased = tx
                    .get_instance(&record.instance_id)?
                    .is_some_and(|r| r.erasure.is_some());
                if erased {
                    tx.finish_job(&job.key, job.generation)?;
                    return Ok(());
                }
                tx.update_composition(&composition, &mut |c| {
                    c.key = Some(object_key.clone());
                    c.location = Some(location.clone());
                    c.size = Some(receipt.size);
                    c.uploaded = Some(now);
                    c.backup = to_backup;
                    if let (Some(made), Some((location, key, size))) = (c.stereo.as_mut(), &stereo) {
                        made.key = Some(key.clone());
                        made.location = Some(location.clone());
                        made.size = Some(*size);
                        made.uploaded = Some(now);
                        made.backup = to_backup;
                    }
                    Ok(())
                })?;
                tx.step("upload_done", "composition_recorded", &record.instance_id);
                // The composition is done once it is in storage.
                tx.put_event(&OutboxEvent::of(
                    &record,
                    EventKind::CompositionDone,
                    now,
                    serde_json::json!({
                        "location": location,
                        "size": receipt.size,
                        "store": store_name(to_backup),
                        "stereo": stereo.as_ref().map(|(location, _, size)| serde_json::json!({"location": location, "size": size})),
                    }),
                ))?;
                // The newest stopped instance's `recording.json` is rewritten to list the
                // composition (same profile, so this uploader runs it).
                crate::store::artefacts::enqueue_artefact(tx, &record, ArtefactKind::Manifest)?;
                tx.finish_job(&job.key, job.generation)?;
                Ok(())
            })?;
            store.flush().await?;
            if erased {
                delete_erased(backend.as_ref(), &object_key).await?;
                if let Some((_, key, _)) = &stereo {
                    delete_erased(backend.as_ref(), key).await?;
                }
                return Ok(0);
            }
            if !keep_local {
                // A re-composition writes a new file under the same path before queueing again,
                // so only a finished job (generation unchanged) may remove it.
                for path in std::iter::once(local_path.as_str()).chain(stereo_path.as_deref()) {
                    if let Err(err) = tokio::fs::remove_file(path).await {
                        tracing::warn!(path = %path, error = %err, "uploaded composition could not be deleted locally");
                    }
                }
            }
            return Ok(receipt.size);
        }
        artefact => {
            let size = match artefact {
                ArtefactKind::ChatTranscript | ArtefactKind::CobrowseSession { .. } => {
                    let encryption = encryption.clone().filter(|_| encrypted);
                    upload_rendered(
                        &store,
                        &config,
                        &record,
                        artefact,
                        backend.as_ref(),
                        &object_key,
                        encryption,
                    )
                    .await?
                }
                _ => {
                    let mut body = render(store.as_ref(), &config, &record, artefact)?;
                    if let Some(encryption) = encryption.as_ref().filter(|_| encrypted) {
                        body = encryption
                            .encrypt_bytes(&body)
                            .map_err(|e| StorageError::Io(format!("encrypting {object_key}: {e}")))?;
                    }
                    backend.put(&object_key, body).await?
                }
            };
            let mut erased = false;
            store.transaction(&mut |tx| {
                erased = tx
                    .get_instance(&record.instance_id)?
                    .is_some_and(|r| r.erasure.is_some());
                if erased {
                    tx.finish_job(&job.key, job.generation)?;
                    return Ok(());
                }
                tx.update_instance(&record.instance_id, &mut |r| {
                    match artefact {
                        ArtefactKind::ChatTranscript => {
                            // Made with the first line; a store written by an older build has
                            // none until its first upload.
                            let num_entries = r.num_transcript_entries;
                            let transcript = r
                                .transcript
                                .get_or_insert_with(|| TranscriptArtefact::new(now, location.clone()));
                            transcript.location = location.clone();
                            transcript.pending = false;
                            transcript.uploaded = Some(now);
                            transcript.num_entries = num_entries;
                            transcript.backup = to_backup;
                        }
                        ArtefactKind::CobrowseSession { session_id } => {
                            let session = r.cobrowse_sessions.entry(session_id.clone()).or_default();
                            session.location = Some(location.clone());
                            session.uploaded = Some(now);
                            session.backup = to_backup;
                        }
                        ArtefactKind::Manifest
                        | ArtefactKind::TrackFile { .. }
                        | ArtefactKind::Composition { .. }
                        | ArtefactKind::Erasure => {}
                    }
                    Ok(())
                })?;
                tx.step("upload_done", "artefact_recorded", &record.instance_id);
                let (kind, mut data) = match artefact {
                    ArtefactKind::Manifest => (EventKind::RecordingComplete, serde_json::json!({})),
                    ArtefactKind::ChatTranscript => (
                        EventKind::ArtefactUploaded,
                        serde_json::json!({ "artefact": "chatTranscript" }),
                    ),
                    ArtefactKind::CobrowseSession { session_id } => (
                        EventKind::ArtefactUploaded,
                        serde_json::json!({ "artefact": "cobrowseSession", "sessionId": session_id }),
                    ),
                    ArtefactKind::TrackFile { .. } | ArtefactKind::Composition { .. } | ArtefactKind::Erasure => {
                        unreachable!("run above")
                    }
                };
                data["location"] = location.clone().into();
                data["size"] = size.into();
                data["store"] = store_name(to_backup).into();
                tx.put_event(&OutboxEvent::of(&record, kind, now, data))?;
                tx.finish_job(&job.key, job.generation)?;
                Ok(())
            })?;
            if erased {
                delete_erased(backend.as_ref(), &object_key).await?;
                return Ok(0);
            }
            size
        }
    };
    store.flush().await?;
    if let ArtefactKind::TrackFile {
        stream_id,
        track_id,
        local_path,
    } = &job.artefact
    {
        // The compositor reads the local track files: while the conversation's composition is
        // queued or running the file stays, and the compositor deletes it after its run.
        if !keep_local && !composition_pending(store.as_ref(), &record) {
            delete_local(
                store.as_ref(),
                &record.instance_id,
                stream_id,
                track_id,
                local_path,
                config.clock().utc(),
            )
            .await?;
        }
    }
    Ok(size)
}

/// How the API and events name the store an artefact is in.
fn store_name(backup: bool) -> &'static str {
    if backup {
        "BACKUP"
    } else {
        "PRIMARY"
    }
}

/// The ciphertext of a file, made on a blocking thread (see `Encryption::encrypted_file`).
async fn encrypt_on_thread(
    encryption: Arc<crate::storage::encryption::Encryption>,
    path: PathBuf,
) -> Result<PathBuf, JobError> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || encryption.encrypted_file(&path))
        .await
        .map_err(|e| StorageError::Io(format!("encrypting {shown}: {e}")))?
        .map_err(|e| StorageError::Io(format!("encrypting {shown}: {e}")).into())
}

/// Whether the instance was erased (or its erasure asked for) while an artefact of it uploaded.
fn erased_meanwhile(store: &dyn StateStore, instance_id: &str) -> bool {
    store
        .get_instance(instance_id)
        .ok()
        .flatten()
        .is_some_and(|r| r.erasure.is_some())
}

/// Deletes an object uploaded for an instance erased meanwhile (the erasure may have run before
/// the object was there).
/// Uploads the file at `path` (through an age-encrypted copy when `encryption` is given) under
/// `key`, and checks that storage holds what was sent.
async fn put_file_verified(
    backend: &dyn crate::storage::StorageBackend,
    key: &str,
    path: &Path,
    encryption: Option<&Arc<crate::storage::encryption::Encryption>>,
) -> Result<crate::storage::PutReceipt, JobError> {
    let upload_path = match encryption {
        Some(encryption) => encrypt_on_thread(encryption.clone(), path.to_path_buf()).await?,
        None => path.to_path_buf(),
    };
    let receipt = backend.put_file(key, &upload_path).await;
    if upload_path.as_path() != path {
        let _ = tokio::fs::remove_file(&upload_path).await;
    }
    let receipt = receipt?;
    let stored = backend.head(key).await?;
    verify_upload(&receipt, &stored)?;
    Ok(receipt)
}

async fn delete_erased(backend: &dyn crate::storage::StorageBackend, key: &str) -> Result<(), JobError> {
    match backend.delete(key).await {
        Ok(()) | Err(StorageError::NotFound(_)) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

fn composition_pending(store: &dyn StateStore, record: &InstanceRecord) -> bool {
    match store.get_composition(&CompositionId::of_instance(record)) {
        Ok(Some(c)) => matches!(c.state, CompositionState::Queued | CompositionState::Composing),
        Ok(None) => false,
        // Unknown: keeping a file is the safe side.
        Err(_) => true,
    }
}

/// The stored object must have the size read from the local file, and the same MD5 when the
/// provider reports one.
fn verify_upload(sent: &PutReceipt, stored: &ObjectInfo) -> Result<(), JobError> {
    if stored.size != sent.size {
        return Err(JobError::Verification(format!(
            "the store holds {} bytes, {} were sent",
            stored.size, sent.size
        )));
    }
    if let Some(md5) = &stored.md5_hex {
        if !md5.eq_ignore_ascii_case(&sent.md5_hex) {
            return Err(JobError::Verification(format!(
                "the store reports MD5 {md5}, the local file has {}",
                sent.md5_hex
            )));
        }
    }
    Ok(())
}

/// Deletes a verified upload's local file and records `localStorage.deleted`. A failure to delete
/// is recorded on the artefact (`localStorage.error`) and does not undo the upload.
pub(crate) async fn delete_local(
    store: &dyn StateStore,
    instance_id: &str,
    stream_id: &str,
    track_id: &str,
    local_path: &str,
    now: DateTime<Utc>,
) -> Result<(), JobError> {
    let outcome = match tokio::fs::remove_file(local_path).await {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(ErrorInfo::new(
            "LOCAL_DELETE",
            format!("cannot delete {local_path}: {err}"),
        )),
    };
    store.update_instance(instance_id, &mut |r| {
        if let Some(track) = r.track_mut(stream_id, track_id) {
            match &outcome {
                Ok(()) => track.local.deleted = Some(now),
                Err(info) => track.local.error = Some(info.clone()),
            }
        }
        Ok(())
    })?;
    store.flush().await?;
    if let Err(info) = outcome {
        tracing::warn!(path = %local_path, error = %info.message, "uploaded file could not be deleted locally");
    }
    Ok(())
}

/// Renders a transcript or co-browse session into a file on this node, one stored entry at a
/// time (on a blocking thread), uploads the file in parts and removes it: neither the document
/// nor its entries are ever whole in memory.
async fn upload_rendered(
    store: &Arc<dyn StateStore>,
    config: &EngineConfig,
    record: &InstanceRecord,
    artefact: &ArtefactKind,
    backend: &dyn crate::storage::StorageBackend,
    key: &str,
    encryption: Option<Arc<crate::storage::encryption::Encryption>>,
) -> Result<u64, JobError> {
    let dir = config.media.media_dir.join(".render");
    let path = dir.join(format!("{}.json", uuid::Uuid::new_v4().simple()));
    let rendering = {
        let (store, record, artefact, path) = (store.clone(), record.clone(), artefact.clone(), path.clone());
        tokio::task::spawn_blocking(move || -> Result<(), JobError> {
            let io = |e: std::io::Error| StorageError::Io(format!("{}: {e}", path.display()));
            std::fs::create_dir_all(path.parent().expect("a file in a folder")).map_err(io)?;
            let mut out = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
            crate::store::artefacts::write_capture(store.as_ref(), &record, &artefact, &mut out)?;
            use std::io::Write;
            out.flush().map_err(io)?;
            Ok(())
        })
    };
    let uploaded = async {
        rendering
            .await
            .map_err(|e| StorageError::Io(format!("rendering {key}: {e}")))??;
        let upload_path = match encryption {
            Some(encryption) => encrypt_on_thread(encryption, path.clone()).await?,
            None => path.clone(),
        };
        let receipt = backend.put_file(key, &upload_path).await;
        if upload_path != path {
            let _ = tokio::fs::remove_file(&upload_path).await;
        }
        let receipt = receipt?;
        let stored = backend.head(key).await?;
        verify_upload(&receipt, &stored)?;
        Ok::<_, JobError>(receipt.size)
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    uploaded
}

fn render(
    store: &dyn StateStore,
    config: &EngineConfig,
    record: &InstanceRecord,
    artefact: &ArtefactKind,
) -> Result<Vec<u8>, StoreError> {
    match artefact {
        ArtefactKind::Manifest => Ok(with_composition(store, record, (config.render_manifest)(record))),
        ArtefactKind::ChatTranscript
        | ArtefactKind::CobrowseSession { .. }
        | ArtefactKind::TrackFile { .. }
        | ArtefactKind::Composition { .. }
        | ArtefactKind::Erasure => {
            unreachable!(
                "files are uploaded from disk, transcripts and sessions streamed (upload_rendered), erasures run apart"
            )
        }
    }
}

/// Adds `composition {location, size, uploaded}` (and `stereo {location, size, uploaded, format,
/// channels}`) to a rendered manifest once the conversation's composition is uploaded; the
/// rendered fields are left as they are.
fn with_composition(store: &dyn StateStore, record: &InstanceRecord, manifest: Vec<u8>) -> Vec<u8> {
    let composition = match store.get_composition(&CompositionId::of_instance(record)) {
        Ok(Some(c)) if c.uploaded.is_some() && c.location.is_some() => c,
        _ => return manifest,
    };
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice::<serde_json::Value>(&manifest) else {
        return manifest;
    };
    fields.insert(
        "composition".to_string(),
        json!({
            "location": composition.location,
            "size": composition.size,
            "uploaded": composition.uploaded,
        }),
    );
    // The stereo audio: agents on the left channel, customers on the right.
    if let Some(stereo) = composition.stereo.as_ref().filter(|s| s.uploaded.is_some()) {
        fields.insert(
            "stereo".to_string(),
            json!({
                "location": stereo.location,
                "size": stereo.size,
                "uploaded": stereo.uploaded,
                "format": stereo.format,
                "channels": { "left": stereo.left, "right": stereo.right },
            }),
        );
    }
    serde_json::to_vec_pretty(&serde_json::Value::Object(fields)).expect("json values always serialize")
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
        // A burst of kicks (every stop, add and upload sends one) schedules one pump, which
        // runs once the mailbox has been read.
        if self.pump_scheduled {
            return;
        }
        self.pump_scheduled = true;
        ctx.run_later(Duration::ZERO, |act, ctx| {
            act.pump_scheduled = false;
            act.pump(ctx);
        });
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
            .profile_jobs(&self.profile.organization_id, &self.profile.application_id)
            .map(|jobs| jobs.len())
            .unwrap_or(0);
        MessageResult(ActorSnapshot {
            kind: "Uploader",
            id: format!("{}/{}", self.profile.organization_id, self.profile.application_id),
            state: if self.running.is_empty() { "IDLE" } else { "UPLOADING" }.into(),
            mailbox_depth: 0,
            restarts: 0,
            last_error: self.last_error.clone(),
            counters: Counters::Uploader(UploaderCounters {
                num_queued: num_queued as u64,
                num_running: self.running.len() as u64,
                num_uploaded: self.num_uploaded,
                num_bytes: self.num_bytes,
                num_failures: self.num_failures,
                num_parked: self.parked.len() as u64,
                num_pumps: self.num_pumps,
            }),
            children: vec![],
        })
    }
}

impl Handler<crate::messages::Halt> for Uploader {
    type Result = ();

    /// The node's shutdown: work in flight is dropped, its job stays queued in the store.
    fn handle(&mut self, _msg: crate::messages::Halt, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed counters of an uploader's snapshot.
    fn uploader_counters(snapshot: &ActorSnapshot) -> UploaderCounters {
        match snapshot.counters {
            Counters::Uploader(counters) => counters,
            ref other => panic!("not an uploader's counters: {other:?}"),
        }
    }

    #[test]
    fn uploads_verify_size_and_reported_checksum() {
        let sent = PutReceipt {
            size: 3,
            md5_hex: "900150983cd24fb0d6963f7d28e17f72".into(),
        };
        let same = ObjectInfo {
            size: 3,
            md5_hex: Some("900150983CD24FB0D6963F7D28E17F72".into()),
        };
        verify_upload(&sent, &same).unwrap();
        verify_upload(&sent, &ObjectInfo { size: 3, md5_hex: None }).unwrap();
        let short = ObjectInfo { size: 2, md5_hex: None };
        assert!(matches!(verify_upload(&sent, &short), Err(JobError::Verification(_))));
        let other = ObjectInfo {
            size: 3,
            md5_hex: Some("00000000000000000000000000000000".into()),
        };
        let err = verify_upload(&sent, &other).unwrap_err();
        assert!(err.is_retryable() && err.code() == "UPLOAD_VERIFICATION", "{err}");
    }

    #[test]
    fn retry_delays_grow_and_stay_capped() {
        let config = EngineConfig {
            recorder_id: "n".into(),
            applications: HashMap::new(),
            upload_concurrency: 1,
            upload_retry_base: Duration::from_secs(1),
            upload_retry_max: Duration::from_secs(60),
            delete_local_after_upload: true,
            render_settle: std::time::Duration::ZERO,
            render_manifest: crate::plain_manifest_renderer(),
            media: Arc::new(crate::engine::MediaConfig::for_tests(std::env::temp_dir())),
            composition: Default::default(),
            recovery: Default::default(),
            limits: Default::default(),
            ready_check_interval: std::time::Duration::from_secs(15),
            webhooks: Default::default(),
            peers: None,
        };
        for attempt in 1..40 {
            let delay = retry_delay(&config, attempt);
            let ceiling = Duration::from_secs(1)
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(Duration::from_secs(60));
            assert!(delay < ceiling && delay >= ceiling / 2, "attempt {attempt}: {delay:?}");
        }
    }

    #[actix::test]
    async fn a_burst_of_kicks_makes_one_pump_that_reads_only_its_profiles_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StateStore> = Arc::new(crate::store::SledStore::open(&dir.path().join("state")).unwrap());
        // Another profile's job: this uploader never touches it.
        store
            .enqueue_job(&UploadJob {
                schema_version: 1,
                key: "other/app/x/recording.json".into(),
                instance_id: "missing".into(),
                organization_id: "other".into(),
                application_id: "app".into(),
                artefact: ArtefactKind::Manifest,
                generation: 0,
                num_attempts: 0,
                last_error: None,
                multipart_opt: None,
                first_failure: None,
            })
            .unwrap();
        let backend: Arc<dyn crate::storage::StorageBackend> =
            Arc::new(crate::storage::LocalBackend::new(dir.path().join("storage")).unwrap());
        let profile = Arc::new(ApplicationProfile {
            organization_id: "org".into(),
            application_id: "app".into(),
            backend,
            policy: Default::default(),
        });
        let config = Arc::new(EngineConfig {
            recorder_id: "n".into(),
            applications: HashMap::new(),
            upload_concurrency: 1,
            upload_retry_base: Duration::from_millis(100),
            upload_retry_max: Duration::from_millis(500),
            delete_local_after_upload: true,
            render_settle: std::time::Duration::ZERO,
            render_manifest: crate::plain_manifest_renderer(),
            media: Arc::new(crate::engine::MediaConfig::for_tests(dir.path().join("media"))),
            composition: Default::default(),
            recovery: Default::default(),
            limits: Default::default(),
            ready_check_interval: Duration::from_secs(15),
            webhooks: Default::default(),
            peers: None,
        });
        let uploader = Uploader::new(store.clone(), profile, config).start();
        for _ in 0..200 {
            uploader.do_send(Kick);
        }
        let snapshot = loop {
            let snapshot = uploader.send(Snapshot).await.unwrap();
            if uploader_counters(&snapshot).num_pumps >= 2 {
                break snapshot;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        };
        // One pump at start, one for the whole burst (200 before the change).
        assert_eq!(uploader_counters(&snapshot).num_pumps, 2, "{snapshot:?}");
        assert_eq!(uploader_counters(&snapshot).num_queued, 0, "{snapshot:?}");
        assert_eq!(uploader_counters(&snapshot).num_running, 0, "{snapshot:?}");
        assert_eq!(store.jobs().unwrap().len(), 1, "the other profile's job stays");
    }
}

#[cfg(test)]
mod render_tests {
    use super::*;
    use crate::domain::{ChatEntry, CobrowseEvent};

    #[test]
    fn transcripts_and_sessions_are_written_entry_by_entry_as_the_documented_json() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let record = InstanceRecord {
            schema_version: 1,
            instance_id: "i\"1".into(),
            recorder_id: "r".into(),
            organization_id: "o".into(),
            application_id: "a".into(),
            conversation_id: "c".into(),
            conference_id: "f".into(),
            audio: true,
            video: true,
            state: crate::domain::InstanceState::Stopped,
            created: Utc::now(),
            started: None,
            stopped: None,
            recovered: None,
            error: None,
            provider: crate::domain::Provider::Local,
            storage_url: String::new(),
            streams: vec![],
            transcript: None,
            num_transcript_entries: 0,
            cobrowse_sessions: Default::default(),
            history: vec![],
            stop_requested: None,
            pauses: Vec::new(),
            num_discarded_while_paused: 0,
            stop_reason: None,
            erasure: None,
        };
        let entries: Vec<ChatEntry> = (0..3)
            .map(|n| ChatEntry {
                time_stamp: Utc::now(),
                transcript: format!("line {n} with \"quotes\" and ünïcode"),
                user_display_name: None,
                user_id: "u".into(),
            })
            .collect();
        store.append_transcript(&record.instance_id, &entries).unwrap();
        let mut out = Vec::new();
        crate::store::artefacts::write_capture(&store, &record, &ArtefactKind::ChatTranscript, &mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["instanceId"], "i\"1");
        assert_eq!(value["conversationId"], "c");
        assert_eq!(value["chatTranscriptList"], serde_json::to_value(&entries).unwrap());
        for seq in [3, 1, 2] {
            store
                .put_cobrowse_event(
                    &record.instance_id,
                    &CobrowseEvent {
                        session_id: "s".into(),
                        sequence_id: seq,
                        payload: format!("{{\"n\":{seq}}}"),
                        timestamp: i64::from(seq),
                    },
                )
                .unwrap();
        }
        let mut out = Vec::new();
        let session = ArtefactKind::CobrowseSession { session_id: "s".into() };
        crate::store::artefacts::write_capture(&store, &record, &session, &mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["sessionId"], "s");
        let seqs: Vec<_> = value["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["sequenceId"].clone())
            .collect();
        assert_eq!(seqs, vec![json!(1), json!(2), json!(3)]);
        // An empty session is an empty list.
        let mut out = Vec::new();
        crate::store::artefacts::write_capture(
            &store,
            &record,
            &ArtefactKind::CobrowseSession {
                session_id: "none".into(),
            },
            &mut out,
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["events"], json!([]));
    }
}
