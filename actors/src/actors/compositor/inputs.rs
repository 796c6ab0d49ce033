//! What a composition run reads: the conversation's ended instances on other nodes (cluster
//! mode) and the tracks that are no longer on this node's disk, fetched from storage.

use std::path::PathBuf;

use super::{composition_dir, FetchedTracks};
use crate::domain::{path_component, InstanceRecord};
use crate::storage::download_to_file;
use crate::store::{CompositionId, CompositionRecord, StateStore, StoreError};
use crate::EngineConfig;

/// Track files deleted locally after their upload (an earlier composition of the conversation
/// released them) are read back from the storage profile: the profile's own file when it is
/// local, else a download into `<media.dir>/compositions/.../inputs/`, removed after the run.
/// A track that cannot be fetched is left out and reported by `composition_inputs`.
/// Cluster mode: the conversation's ended instances that other nodes recorded (composed from
/// their uploaded tracks, which this node reads from storage as it does tracks deleted here).
/// The catalogue unreachable: composed without them, and said so.
pub(super) async fn peer_instances(config: &EngineConfig, job: &CompositionRecord) -> Vec<InstanceRecord> {
    let Some(peers) = &config.peers else {
        return Vec::new();
    };
    let id = CompositionId::of(job);
    match peers
        .conversation_instances(&job.organization_id, &job.conversation_id)
        .await
    {
        Ok(records) => records
            .into_iter()
            .filter(|i| i.recorder_id != config.recorder_id && id.includes(i))
            .map(|mut instance| {
                // Their files are on another machine: only the uploaded copies can be read.
                for track in instance.streams.iter_mut().flat_map(|s| s.tracks.iter_mut()) {
                    if track.local.deleted.is_none() {
                        track.local.deleted = track.object.uploaded.or(Some(config.clock().utc()));
                    }
                }
                instance
            })
            .collect(),
        Err(err) => {
            tracing::warn!(conversation_id = %job.conversation_id, error = %err, "the other nodes' instances are left out of this composition");
            Vec::new()
        }
    }
}

pub(super) async fn fetch_uploaded_tracks(
    store: &dyn StateStore,
    config: &EngineConfig,
    job: &CompositionRecord,
    peers: &[InstanceRecord],
) -> Result<(FetchedTracks, Option<PathBuf>), StoreError> {
    let mut fetched = FetchedTracks::new();
    let mut dir_opt = None;
    let id = CompositionId::of(job);
    for instance in store
        .conversation_instances(&job.organization_id, &job.conversation_id)?
        .into_iter()
        .filter(|i| id.includes(i))
        .chain(peers.iter().cloned())
    {
        let Some(profile) = config.application(&instance.organization_id, &instance.application_id) else {
            continue;
        };
        for stream in &instance.streams {
            for track in &stream.tracks {
                let (Some(_), Some(key), Some(_)) = (&track.local.deleted, &track.object.key, &track.object.uploaded)
                else {
                    continue;
                };
                let id = (instance.instance_id.clone(), stream.id.clone(), track.id.clone());
                if let Some(path) = profile.backend.local_path(key).filter(|p| p.is_file()) {
                    fetched.insert(id, path);
                    continue;
                }
                let dir = dir_opt
                    .get_or_insert_with(|| composition_dir(config, job).join("inputs"))
                    .clone();
                let extension = key.rsplit('.').next().unwrap_or("bin");
                let path = dir.join(format!("{}-{}.{extension}", fetched.len(), path_component(&track.id)));
                // Streamed to the file a chunk at a time: a track is never whole in memory.
                if let Err(err) = tokio::fs::create_dir_all(&dir).await {
                    tracing::warn!(path = %dir.display(), error = %err, "composition inputs folder could not be made");
                    continue;
                }
                match download_to_file(profile.backend.as_ref(), key, &path).await {
                    Ok(_) => {
                        fetched.insert(id, path);
                    }
                    Err(err) => {
                        let _ = tokio::fs::remove_file(&path).await;
                        tracing::warn!(key = %key, error = %err, "track for composition could not be fetched");
                    }
                }
            }
        }
    }
    Ok((fetched, dir_opt))
}
