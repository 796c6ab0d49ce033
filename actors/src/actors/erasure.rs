//! The erasure of an instance (GDPR), run by its profile's uploader as a durable job: every
//! object the instance may have in storage is deleted (tracks, transcript, co-browse sessions,
//! `recording.json`, and the conversation's composition, which holds its media), its files on
//! this node and its captured chat and co-browse entries too, then, in one transaction, the
//! record becomes a tombstone, the job ends and `erasure.done` is queued for the webhook. Each
//! step deletes what may already be gone, so a crash at any point only makes the job run again.

use std::sync::Arc;

use crate::domain::{ErrorInfo, InstanceRecord, InstanceState};
use crate::engine::{ApplicationProfile, EngineConfig};
use crate::media::stereo::StereoFormat;
use crate::storage::StorageError;
use crate::store::artefacts::{composition_key, stereo_key};
use crate::store::{CompositionId, CompositionState, EventKind, OutboxEvent, StateStore, UploadJob};

use super::job::JobError;

/// The job key of an instance's erasure (never an object key: it has no extension).
pub fn erasure_job_key(record: &InstanceRecord) -> String {
    format!("{}/.erasure", record.key_prefix())
}

/// Every object key the instance may have: what its record names, and what its artefacts are
/// named by rule (an upload may have been cut short before the record said where it went).
fn object_keys(record: &InstanceRecord) -> Vec<String> {
    let mut keys = vec![record.manifest_key(), record.transcript_key()];
    for stream in &record.streams {
        for track in &stream.tracks {
            keys.extend(track.object.key.clone());
            for extension in ["webm", "mkv"] {
                keys.push(record.track_key(&stream.id, &track.id, extension));
            }
        }
    }
    for session in record.cobrowse_sessions.keys() {
        keys.push(record.cobrowse_key(session));
    }
    // And their ciphertexts, for an application that encrypts (or did).
    let encrypted: Vec<String> = keys
        .iter()
        .filter(|k| !k.ends_with(crate::storage::encryption::SUFFIX))
        .map(|k| format!("{k}{}", crate::storage::encryption::SUFFIX))
        .collect();
    keys.extend(encrypted);
    keys.sort();
    keys.dedup();
    keys
}

pub(super) async fn run_erasure(
    store: Arc<dyn StateStore>,
    profile: Arc<ApplicationProfile>,
    config: Arc<EngineConfig>,
    record: InstanceRecord,
    job: UploadJob,
) -> Result<u64, JobError> {
    // The primary store, and the backup store where one is configured (an artefact may be in
    // either).
    let mut backends = vec![profile.backend.clone()];
    backends.extend(profile.policy.backup.as_ref().map(|b| b.backend.clone()));
    let mut num_deleted = 0u64;
    for backend in &backends {
        for key in object_keys(&record) {
            match backend.delete(&key).await {
                Ok(()) => num_deleted += 1,
                Err(StorageError::NotFound(_)) => {}
                Err(err) => return Err(err.into()),
            }
            crate::fault::point_in(crate::fault::ERASE_STEP, &record.instance_id)
                .map_err(|e| StorageError::Io(e.to_string()))?;
        }
    }
    // The composition holds this instance's media: it goes too (a later stop of the
    // conversation composes again, without erased instances).
    let composition = CompositionId::of_instance(&record);
    let composition_record = store.get_composition(&composition)?;
    // With it, its stereo audio (in whichever format it was made).
    let mut keys = vec![composition_key(&record, &record.conversation_id)];
    for format in [StereoFormat::Opus, StereoFormat::M4a] {
        keys.push(stereo_key(&record, &record.conversation_id, format.extension()));
    }
    for backend in &backends {
        for key in keys
            .iter()
            .flat_map(|key| [key.clone(), format!("{key}{}", crate::storage::encryption::SUFFIX)])
        {
            match backend.delete(&key).await {
                Ok(()) | Err(StorageError::NotFound(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    // Files on this node: the instance's media folder (segments, tracks), renamed track files,
    // the composition's file.
    let media_dir = config
        .media
        .media_dir
        .join(crate::domain::path_component(&record.instance_id));
    remove_dir(&media_dir).await?;
    for location in record
        .streams
        .iter()
        .flat_map(|s| s.tracks.iter().filter_map(|t| t.local.location.clone()))
    {
        remove_file(std::path::Path::new(&location)).await?;
    }
    if let Some(c) = &composition_record {
        for path in c.local_path.iter().chain(c.stereo.as_ref().map(|s| &s.local_path)) {
            remove_file(std::path::Path::new(path)).await?;
        }
    }
    store.delete_captures(&record.instance_id)?;
    let now = config.clock().utc();
    store.transaction(&mut |tx| {
        let erased = tx.update_instance(&record.instance_id, &mut |r| {
            r.erase(now);
            Ok(())
        })?;
        if composition_record.is_some() {
            tx.update_composition(&composition, &mut |c| {
                c.state = CompositionState::Failed;
                c.key = None;
                c.location = None;
                c.size = None;
                c.uploaded = None;
                c.local_path = None;
                c.stereo = None;
                c.error = Some(ErrorInfo::new(
                    "ERASED",
                    format!("instance {} of the conversation was erased", record.instance_id),
                ));
                Ok(())
            })?;
        }
        tx.put_event(&OutboxEvent::of(
            &erased,
            EventKind::ErasureDone,
            now,
            serde_json::json!({ "numObjectsDeleted": num_deleted }),
        ))?;
        tx.finish_job(&job.key, job.generation)?;
        Ok(())
    })?;
    store.flush().await?;
    tracing::info!(instance_id = %record.instance_id, num_deleted, "recorder instance erased");
    Ok(0)
}

async fn remove_dir(path: &std::path::Path) -> Result<(), JobError> {
    match tokio::fs::remove_dir_all(path).await {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(StorageError::Io(format!("{}: {err}", path.display())).into()),
    }
}

async fn remove_file(path: &std::path::Path) -> Result<(), JobError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(StorageError::Io(format!("{}: {err}", path.display())).into()),
    }
}

/// Whether an instance may be erased: an ended one only (a live one still records).
pub fn erasable(record: &InstanceRecord) -> bool {
    record.state != InstanceState::Initialised && record.state.is_terminal()
}
