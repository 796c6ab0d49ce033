//! Read-only questions about recordings, answered from the state store and the storage
//! profiles without any actor: an instance, a conversation's instances, the instance counts,
//! and the artefacts a download or a signed URL needs. They hold no actor state, so they are
//! plain functions the front calls on its own threads (no mailbox hop through the Registry,
//! which keeps its mailbox for the commands that need the live tree).
//!
//! Every lookup is scoped like the Registry's: an instance of another organization, or one whose
//! path ids do not match, is the same `NotFound` as a missing one. Only object keys the recorder
//! itself recorded are read: the ids of a path select a record, they never become a path.

use std::sync::Arc;

use crate::domain::{InstanceRecord, InstanceState};
use crate::messages::{
    may_use, ArtefactSource, CompositionView, GetComposition, InstanceRef, ListConversation, ProviderCobrowseUrl,
    ResolveCobrowseFile, ResolveCompositionFile, ResolveTrackFile, TrackFile, TrackUrl, TrackUrls,
};
use crate::storage::StorageError;
use crate::store::{CompositionId, StateStore};
use crate::{ApplicationProfile, EngineConfig, EngineError};

/// The instance `at` names, if its organization and path ids match.
pub fn find_instance(store: &dyn StateStore, at: &InstanceRef) -> Result<InstanceRecord, EngineError> {
    let missing = || {
        EngineError::not_found(format!(
            "no recorder instance {} in conversation {}",
            at.instance_id, at.conversation_id
        ))
    };
    let record = store.get_instance(&at.instance_id)?.ok_or_else(missing)?;
    if record.organization_id != at.organization_id
        || record.conversation_id != at.conversation_id
        || record.recorder_id != at.recorder_id
    {
        return Err(missing());
    }
    Ok(record)
}

/// The read side of the engine: the store and the applications' storage profiles.
#[derive(Clone)]
pub struct Queries {
    store: Arc<dyn StateStore>,
    config: Arc<EngineConfig>,
}

impl Queries {
    pub fn new(store: Arc<dyn StateStore>, config: Arc<EngineConfig>) -> Self {
        Self { store, config }
    }

    pub fn instance(&self, at: &InstanceRef) -> Result<InstanceRecord, EngineError> {
        find_instance(self.store.as_ref(), at)
    }

    /// Every instance of a conversation, oldest first; `NotFound` when it has none.
    pub fn conversation(&self, msg: &ListConversation) -> Result<Vec<InstanceRecord>, EngineError> {
        let instances = self
            .store
            .conversation_instances(&msg.organization_id, &msg.conversation_id)?;
        if instances.is_empty() {
            return Err(EngineError::not_found(format!(
                "no recordings for conversation {}",
                msg.conversation_id
            )));
        }
        Ok(instances)
    }

    /// Instances per state, kept by the store as instances change: a scrape reads no instance.
    pub fn instance_counts(&self) -> Vec<(InstanceState, u64)> {
        self.store.instance_counts()
    }

    /// The instance a recorder-signed download names (the URL's signature is the authority, so
    /// no organization is checked here), if its path ids match; else `missing()`.
    fn signed_instance(
        &self,
        instance_id: &str,
        conversation_id: &str,
        recorder_id: &str,
        missing: impl Fn() -> EngineError,
    ) -> Result<InstanceRecord, EngineError> {
        let record = self.store.get_instance(instance_id)?.ok_or_else(&missing)?;
        // An instance being erased serves nothing any more.
        if record.conversation_id != conversation_id || record.recorder_id != recorder_id || record.erasure.is_some() {
            return Err(missing());
        }
        Ok(record)
    }

    fn profile_of(&self, organization_id: &str, application_id: &str) -> Option<Arc<ApplicationProfile>> {
        self.config.application(organization_id, application_id).cloned()
    }

    /// The events file of an uploaded co-browse session, for a recorder-signed download.
    pub async fn cobrowse_file(&self, msg: ResolveCobrowseFile) -> Result<ArtefactSource, EngineError> {
        let missing = || {
            EngineError::not_found(format!(
                "no file {} in co-browse session {}",
                msg.file_name, msg.session_id
            ))
        };
        let record = self.signed_instance(&msg.instance_id, &msg.conversation_id, &msg.recorder_id, missing)?;
        let session = record.cobrowse_sessions.get(&msg.session_id).ok_or_else(missing)?;
        if msg.file_name != "events.json" || session.uploaded.is_none() {
            return Err(missing());
        }
        let profile = self
            .profile_of(&record.organization_id, &record.application_id)
            .ok_or_else(missing)?;
        let key = record.cobrowse_key(&msg.session_id);
        let backend = profile.store_of(session.backup);
        if let Some(path) = backend.local_path(&key) {
            return Ok(ArtefactSource::File(path));
        }
        match backend.get(&key).await {
            Ok(bytes) => Ok(ArtefactSource::Bytes(bytes)),
            Err(StorageError::NotFound(_)) => Err(missing()),
            Err(err) => Err(err.into()),
        }
    }

    /// An uploaded track file, for a recorder-signed download.
    pub async fn track_file(&self, msg: ResolveTrackFile) -> Result<TrackFile, EngineError> {
        let missing = || {
            EngineError::not_found(format!(
                "no uploaded track {} in stream {}",
                msg.track_id, msg.stream_id
            ))
        };
        let record = self.signed_instance(&msg.instance_id, &msg.conversation_id, &msg.recorder_id, missing)?;
        let (key, backup) = record
            .streams
            .iter()
            .find(|s| s.id == msg.stream_id)
            .and_then(|s| s.tracks.iter().find(|t| t.id == msg.track_id))
            .and_then(|t| {
                t.object
                    .key
                    .clone()
                    .filter(|_| t.object.uploaded.is_some())
                    .map(|k| (k, t.object.backup))
            })
            .ok_or_else(missing)?;
        let profile = self
            .profile_of(&record.organization_id, &record.application_id)
            .ok_or_else(missing)?;
        fetch_for_download(profile, backup, key, missing).await
    }

    /// The uploaded composition of a conversation, for a recorder-signed download.
    pub async fn composition_file(&self, msg: ResolveCompositionFile) -> Result<TrackFile, EngineError> {
        let missing = || {
            EngineError::not_found(format!(
                "no uploaded composition for conversation {}",
                msg.conversation_id
            ))
        };
        let id = CompositionId::new(&msg.organization_id, &msg.application_id, &msg.conversation_id);
        let composition = self.store.get_composition(&id)?.ok_or_else(missing)?;
        let (key, uploaded, backup) = match (&composition.stereo, msg.stereo) {
            (_, false) => (composition.key.clone(), composition.uploaded, composition.backup),
            (Some(stereo), true) => (stereo.key.clone(), stereo.uploaded, stereo.backup),
            (None, true) => (None, None, false),
        };
        let key = key.filter(|_| uploaded.is_some()).ok_or_else(missing)?;
        let profile = self
            .profile_of(&composition.organization_id, &composition.application_id)
            .ok_or_else(missing)?;
        fetch_for_download(profile, backup, key, missing).await
    }

    /// The provider's own signed URL of an uploaded co-browse session; `None` when it is not
    /// uploaded or its provider has no such URLs (local, SFTP: the recorder signs its own).
    pub async fn cobrowse_url(&self, msg: ProviderCobrowseUrl) -> Result<Option<String>, EngineError> {
        let record = self.instance(&msg.instance)?;
        if record.erasure.is_some() {
            return Ok(None);
        }
        let Some(session) = record
            .cobrowse_sessions
            .get(&msg.session_id)
            .filter(|s| s.uploaded.is_some())
        else {
            return Ok(None);
        };
        let backup = session.backup;
        let Some(profile) = self.profile_of(&record.organization_id, &record.application_id) else {
            return Ok(None);
        };
        Ok(profile
            .store_of(backup)
            .signed_url(&record.cobrowse_key(&msg.session_id), msg.ttl)
            .await?)
    }

    /// The composition of a conversation the caller may see: each application has its own, and
    /// without a choice the one queued last is answered.
    pub async fn composition(&self, msg: GetComposition) -> Result<Option<CompositionView>, EngineError> {
        let Some(composition) = self
            .store
            .conversation_compositions(&msg.organization_id, &msg.conversation_id)?
            .into_iter()
            .filter(|c| may_use(&msg.applications, &c.application_id))
            .filter(|c| msg.application_id_opt.as_ref().is_none_or(|a| *a == c.application_id))
            .max_by_key(|c| c.queued)
        else {
            return Ok(None);
        };
        let Some(instance) = self.store.get_instance(&composition.instance_id)? else {
            return Ok(None);
        };
        let profile = self.profile_of(&instance.organization_id, &instance.application_id);
        let url = match (&composition.key, &composition.uploaded, profile.clone()) {
            (Some(key), Some(_), Some(profile)) => {
                profile.store_of(composition.backup).signed_url(key, msg.ttl).await?
            }
            _ => None,
        };
        let stereo_url = match (&composition.stereo, profile) {
            (Some(stereo), Some(profile)) if stereo.uploaded.is_some() => match &stereo.key {
                Some(key) => profile.store_of(stereo.backup).signed_url(key, msg.ttl).await?,
                None => None,
            },
            _ => None,
        };
        Ok(Some(CompositionView {
            composition,
            instance,
            url,
            stereo_url,
        }))
    }

    /// The provider's signed URLs of an instance's uploaded tracks; tracks of profiles without
    /// provider URLs (local, SFTP) are left out, and so is one the provider cannot sign for (it
    /// is shown without its `url`, not a failed answer for the whole instance).
    pub async fn track_urls(&self, msg: TrackUrls) -> Result<Vec<TrackUrl>, EngineError> {
        let record = self.instance(&msg.instance)?;
        if record.erasure.is_some() {
            return Ok(vec![]);
        }
        let Some(profile) = self.profile_of(&record.organization_id, &record.application_id) else {
            return Ok(vec![]);
        };
        let mut urls = Vec::new();
        for stream in &record.streams {
            for track in &stream.tracks {
                let Some(key) = track.object.key.as_ref().filter(|_| track.object.uploaded.is_some()) else {
                    continue;
                };
                match profile.store_of(track.object.backup).signed_url(key, msg.ttl).await {
                    Ok(Some(url)) => urls.push(TrackUrl {
                        stream_id: stream.id.clone(),
                        track_id: track.id.clone(),
                        url,
                    }),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(key = %key, error = %e, "cannot sign a track url"),
                }
            }
        }
        Ok(urls)
    }
}

/// An uploaded object ready to serve: the file itself for backends on this node, else a copy
/// streamed to a temp file (never into memory: tracks and compositions can be large).
async fn fetch_for_download(
    profile: Arc<ApplicationProfile>,
    backup: bool,
    key: String,
    missing: impl Fn() -> EngineError,
) -> Result<TrackFile, EngineError> {
    let file_name = key.rsplit('/').next().unwrap_or(&key).to_string();
    let backend = profile.store_of(backup);
    if let Some(path) = backend.local_path(&key) {
        return Ok(TrackFile {
            source: ArtefactSource::File(path),
            file_name,
        });
    }
    let temp = std::env::temp_dir().join(format!("rtc-recorder-download-{}", uuid::Uuid::new_v4().simple()));
    match crate::storage::download_to_file(backend.as_ref(), &key, &temp).await {
        Ok(_) => Ok(TrackFile {
            source: ArtefactSource::Downloaded(temp),
            file_name,
        }),
        Err(err) => {
            let _ = tokio::fs::remove_file(&temp).await;
            match err {
                StorageError::NotFound(_) => Err(missing()),
                err => Err(err.into()),
            }
        }
    }
}
