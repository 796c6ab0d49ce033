//! Upload-queue rules shared by every actor that queues work: the object key of each artefact
//! and the helpers that put its upload job (and, after stop, the manifest's) into a transaction.
//! They live below the actors so that the recorder, the uploader and the compositor need not
//! import each other or the registry.

use chrono::Utc;

use super::{ArtefactKind, CompositionId, StateStore, StoreError, StoreTx, UploadJob};
use crate::domain::{InstanceRecord, RECORD_SCHEMA_VERSION};

/// Object key of an artefact of `record`.
pub fn artefact_key(record: &InstanceRecord, artefact: &ArtefactKind) -> String {
    match artefact {
        ArtefactKind::ChatTranscript => record.transcript_key(),
        ArtefactKind::CobrowseSession { session_id } => record.cobrowse_key(session_id),
        ArtefactKind::TrackFile {
            stream_id,
            track_id,
            local_path,
        } => {
            let extension = std::path::Path::new(local_path)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("bin");
            record.track_key(stream_id, track_id, extension)
        }
        ArtefactKind::Manifest => record.manifest_key(),
        ArtefactKind::Composition { conversation_id, .. } => composition_key(record, conversation_id),
        ArtefactKind::Erasure => crate::actors::erasure_job_key(record),
    }
}

/// `{organizationId}/{applicationId}/{conversationId}/composition.mp4`: one composition per
/// conversation, beside its instances' folders, overwritten by a re-composition.
pub fn composition_key(record: &InstanceRecord, conversation_id: &str) -> String {
    format!(
        "{}/{}/{}/composition.mp4",
        record.organization_id, record.application_id, conversation_id
    )
}

/// `{organizationId}/{applicationId}/{conversationId}/stereo.{extension}`: the conversation's
/// stereo audio, beside its composition.
pub fn stereo_key(record: &InstanceRecord, conversation_id: &str, extension: &str) -> String {
    format!(
        "{}/{}/{}/stereo.{extension}",
        record.organization_id, record.application_id, conversation_id
    )
}

/// What an ended instance has neither uploaded nor queued, queued again in one transaction
/// (with its manifest), and its composition if it has none. Returns whether anything was queued.
/// A track whose local file is gone cannot be uploaded again and is only logged.
pub fn reconcile_ended(store: &dyn StateStore, record: &InstanceRecord, compose: bool) -> Result<bool, StoreError> {
    if record.erasure.is_some() {
        // Erased, or being erased (its erasure job is queued with the request).
        return Ok(false);
    }
    let mut missing = Vec::new();
    for stream in &record.streams {
        for track in &stream.tracks {
            let (Some(location), None) = (&track.local.location, &track.object.uploaded) else {
                continue;
            };
            if track.local.deleted.is_some() || !std::path::Path::new(location).is_file() {
                tracing::warn!(instance_id = %record.instance_id, path = %location, "an ended instance's track was never uploaded and its file is gone");
                continue;
            }
            missing.push(ArtefactKind::TrackFile {
                stream_id: stream.id.clone(),
                track_id: track.id.clone(),
                local_path: location.clone(),
            });
        }
    }
    if record.num_transcript_entries > 0
        && record
            .transcript
            .as_ref()
            .is_none_or(|t| t.num_entries < record.num_transcript_entries)
    {
        missing.push(ArtefactKind::ChatTranscript);
    }
    for (session_id, session) in &record.cobrowse_sessions {
        if session.uploaded.is_none() {
            missing.push(ArtefactKind::CobrowseSession {
                session_id: session_id.clone(),
            });
        }
    }
    let mut queue = Vec::new();
    for artefact in missing {
        if store.job(&artefact_key(record, &artefact))?.is_none() {
            queue.push(artefact);
        }
    }
    if queue.is_empty() {
        return Ok(false);
    }
    queue.push(ArtefactKind::Manifest);
    // A stop cut in half lacks its composition job too. (Only then: instances that ended while
    // composition was off are not composed after the fact.)
    let composition = CompositionId::of_instance(record);
    let needs_composition = compose && store.get_composition(&composition)?.is_none();
    store.transaction(&mut |tx| {
        for artefact in &queue {
            enqueue_artefact(tx, record, artefact.clone())?;
        }
        if needs_composition {
            tx.queue_composition(&composition, &record.instance_id, Utc::now())?;
        }
        Ok(())
    })?;
    tracing::warn!(instance_id = %record.instance_id, num_jobs = queue.len(), needs_composition, "ended instance reconciled");
    Ok(true)
}

/// Queues the upload of one artefact of `record`, as part of the caller's transaction.
pub fn enqueue_artefact(tx: &dyn StoreTx, record: &InstanceRecord, artefact: ArtefactKind) -> Result<(), StoreError> {
    tx.enqueue_job(&UploadJob {
        schema_version: RECORD_SCHEMA_VERSION,
        key: artefact_key(record, &artefact),
        instance_id: record.instance_id.clone(),
        organization_id: record.organization_id.clone(),
        application_id: record.application_id.clone(),
        artefact,
        generation: 0,
        num_attempts: 0,
        last_error: None,
        multipart_opt: None,
        first_failure: None,
    })?;
    Ok(())
}

/// Queues an artefact that changed after stop, and the manifest after it, so `recording.json`
/// is rewritten once the new content is stored.
pub fn enqueue_with_manifest(
    tx: &dyn StoreTx,
    record: &InstanceRecord,
    artefact: ArtefactKind,
) -> Result<(), StoreError> {
    enqueue_artefact(tx, record, artefact)?;
    if record.state.is_terminal() {
        enqueue_artefact(tx, record, ArtefactKind::Manifest)?;
    }
    Ok(())
}

/// Queues the upload of a finished track file of `record` (for media ingest, which owns the
/// file until then). The caller flushes the store and kicks the profile's uploader. After a
/// verified upload the file is deleted when `uploads.delete_local_after_upload` says so.
pub fn queue_track_file(
    store: &dyn StateStore,
    record: &InstanceRecord,
    stream_id: &str,
    track_id: &str,
    local_path: &std::path::Path,
) -> Result<(), StoreError> {
    // The upload is recorded on the track: without one the file would go up and be deleted
    // with no record of where it went.
    let has_track = record
        .streams
        .iter()
        .any(|s| s.id == stream_id && s.tracks.iter().any(|t| t.id == track_id));
    if !has_track {
        return Err(StoreError::NotFound(format!(
            "instance {} has no track {stream_id}/{track_id}",
            record.instance_id
        )));
    }
    let artefact = ArtefactKind::TrackFile {
        stream_id: stream_id.to_string(),
        track_id: track_id.to_string(),
        local_path: local_path.to_string_lossy().into_owned(),
    };
    store.transaction(&mut |tx| enqueue_with_manifest(tx, record, artefact.clone()))
}

/// Writes a transcript (`{conversationId, recorderId, instanceId, chatTranscriptList}`) or a
/// co-browse session (`{..., sessionId, events}`) as JSON, reading the store one entry at a time.
pub fn write_capture(
    store: &dyn StateStore,
    record: &InstanceRecord,
    artefact: &ArtefactKind,
    out: &mut dyn std::io::Write,
) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Io(format!("rendering an artefact: {e}"));
    let json = |e: serde_json::Error| StoreError::Io(format!("rendering an artefact: {e}"));
    let head = |out: &mut dyn std::io::Write| -> Result<(), StoreError> {
        write!(out, "{{\"conversationId\":").map_err(io)?;
        serde_json::to_writer(&mut *out, &record.conversation_id).map_err(json)?;
        write!(out, ",\"recorderId\":").map_err(io)?;
        serde_json::to_writer(&mut *out, &record.recorder_id).map_err(json)?;
        write!(out, ",\"instanceId\":").map_err(io)?;
        serde_json::to_writer(&mut *out, &record.instance_id).map_err(json)?;
        Ok(())
    };
    head(out)?;
    let mut first = true;
    let mut item = |out: &mut dyn std::io::Write, value: &dyn erased::Json| -> Result<(), StoreError> {
        let sep = if std::mem::take(&mut first) { "" } else { "," };
        out.write_all(sep.as_bytes())
            .and_then(|_| value.write_to(out))
            .map_err(|e| StoreError::Io(format!("rendering an artefact: {e}")))
    };
    match artefact {
        ArtefactKind::ChatTranscript => {
            write!(out, ",\"chatTranscriptList\":[").map_err(io)?;
            store.for_each_transcript_entry(&record.instance_id, &mut |entry| item(out, &entry))?;
        }
        ArtefactKind::CobrowseSession { session_id } => {
            write!(out, ",\"sessionId\":").map_err(io)?;
            serde_json::to_writer(&mut *out, session_id).map_err(json)?;
            write!(out, ",\"events\":[").map_err(io)?;
            store.for_each_cobrowse_event(&record.instance_id, session_id, &mut |event| item(out, &event))?;
        }
        _ => unreachable!("only transcripts and co-browse sessions are streamed"),
    }
    write!(out, "]}}").map_err(io)?;
    Ok(())
}

/// Serialization of one entry behind a trait object (the entries are of two types).
mod erased {
    pub trait Json {
        fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()>;
    }

    impl<T: serde::Serialize> Json for T {
        fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
            serde_json::to_writer(out, self).map_err(std::io::Error::other)
        }
    }
}
