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

use crate::domain::{ChatEntry, CobrowseEvent, CobrowseSessionRecord, InstanceRecord, InstanceState, OrganizationId};
use crate::messages::{
    may_use, ArtefactSource, CompositionView, GetComposition, InstanceRef, ListConversation, ProviderCobrowseUrl,
    ResolveCobrowseFile, ResolveCompositionFile, ResolveTrackFile, TrackFile, TrackUrl, TrackUrls,
};
use crate::storage::StorageError;
use crate::store::{CompositionId, StateStore};
use crate::timeline::Timeline;
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

    /// What the node's admission control holds now (live sessions, compositions, CPU).
    pub fn capacity(&self) -> crate::capacity::CapacityUse {
        self.config.media.capacity.usage()
    }

    /// What would refuse a new instance with `used` (a `capacity()` snapshot).
    pub fn start_refused_by(&self, used: &crate::capacity::CapacityUse) -> Option<&'static str> {
        self.config.media.capacity.start_refused_by(used)
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

    /// The events file of a co-browse session, for a recorder-signed download. Once stored it is
    /// read from storage; before (a live instance, or the moments after a stop while the upload
    /// waits out `uploads.render_settle_ms`) it is rendered from the state store by the same
    /// writer the uploader uses, so the link works from the moment it is handed out and serves
    /// the bytes that will be stored. An application that encrypts gets no render: its file is
    /// served once stored, as the ciphertext it stored (see `Queries::cobrowse_stored`).
    pub async fn cobrowse_file(&self, msg: ResolveCobrowseFile) -> Result<ArtefactSource, EngineError> {
        let missing = || {
            EngineError::not_found(format!(
                "no file {} in co-browse session {}",
                msg.file_name, msg.session_id
            ))
        };
        let record = self.signed_instance(&msg.instance_id, &msg.conversation_id, &msg.recorder_id, missing)?;
        let session = record.cobrowse_sessions.get(&msg.session_id).ok_or_else(missing)?;
        if msg.file_name != "events.json" {
            return Err(missing());
        }
        let profile = self
            .profile_of(&record.organization_id, &record.application_id)
            .ok_or_else(missing)?;
        if session.uploaded.is_none() {
            if profile.policy.encryption.is_some() {
                return Err(missing());
            }
            return self.render_cobrowse(record, msg.session_id.clone()).await;
        }
        let key = stored_cobrowse_key(&record, &msg.session_id, session);
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

    /// A co-browse session rendered from the store into a temp file (removed once opened), on a
    /// blocking thread, one event at a time.
    async fn render_cobrowse(&self, record: InstanceRecord, session_id: String) -> Result<ArtefactSource, EngineError> {
        let store = self.store.clone();
        let temp = std::env::temp_dir().join(format!("rtc-recorder-render-{}", uuid::Uuid::new_v4().simple()));
        let path = temp.clone();
        let rendered = tokio::task::spawn_blocking(move || -> Result<(), crate::store::StoreError> {
            let io = |e: std::io::Error| crate::store::StoreError::Io(format!("{}: {e}", path.display()));
            let mut out = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
            let artefact = crate::store::ArtefactKind::CobrowseSession { session_id };
            crate::store::artefacts::write_capture(store.as_ref(), &record, &artefact, &mut out)?;
            std::io::Write::flush(&mut out).map_err(io)?;
            Ok(())
        })
        .await
        .map_err(|e| crate::store::StoreError::Io(format!("rendering a co-browse session: {e}")));
        match rendered {
            Ok(Ok(())) => Ok(ArtefactSource::Downloaded(temp)),
            Ok(Err(err)) | Err(err) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(err.into())
            }
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
            .signed_url(&stored_cobrowse_key(&record, &msg.session_id, session), msg.ttl)
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

/// What the review page shows of one conversation of one application: its instances placed on
/// the composed timeline, every chat line, every co-browse session, the composition and the
/// provider URLs of the uploaded tracks.
#[derive(Debug, Clone)]
pub struct ReviewView {
    /// The application's instances of the conversation, in timeline order.
    pub instances: Vec<InstanceRecord>,
    pub timeline: Timeline,
    /// Chat lines by instance, each instance's in arrival order.
    pub chat: Vec<(String, ChatEntry)>,
    pub cobrowse: Vec<CobrowseSummary>,
    pub composition: Option<CompositionView>,
    /// Provider-signed URLs of uploaded tracks by instance (local and SFTP profiles have none:
    /// the front signs its own).
    pub track_urls: Vec<(String, TrackUrl)>,
    /// The application encrypts its artefacts to the customer's key: the page must not show
    /// their content (the recorder cannot read what it stored, and must not serve the plain
    /// copies it still holds).
    pub encrypted: bool,
}

/// One co-browse session of an instance, as the review page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CobrowseSummary {
    pub instance_id: String,
    pub session_id: String,
    pub num_events: u64,
    /// The first and last event `timestamp` (milliseconds since the epoch).
    pub first: Option<i64>,
    pub last: Option<i64>,
    /// Every payload is an rrweb event (JSON with `type`, `data` and `timestamp`): the page
    /// replays the session instead of listing it.
    pub rrweb: bool,
}

/// Whether a co-browse payload is an rrweb event.
pub fn is_rrweb_event(payload: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(map)) => {
            map.get("type").is_some_and(|t| t.is_u64())
                && map.contains_key("data")
                && map.get("timestamp").is_some_and(|t| t.is_number())
        }
        _ => false,
    }
}

impl Queries {
    /// The review of `conversation_id` for one application, as of `now`. `NotFound` when the
    /// application has no instance of it.
    pub async fn review(
        &self,
        organization_id: &OrganizationId,
        application_id: &str,
        conversation_id: &str,
        ttl: std::time::Duration,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<ReviewView, EngineError> {
        let mut instances: Vec<InstanceRecord> = self
            .store
            .conversation_instances(organization_id, conversation_id)?
            .into_iter()
            .filter(|i| i.application_id == application_id)
            .collect();
        if instances.is_empty() {
            return Err(EngineError::not_found(format!(
                "no recordings for conversation {conversation_id}"
            )));
        }
        let timeline = Timeline::place(&instances, now);
        let order: Vec<&str> = timeline.instances.iter().map(|p| p.instance_id.as_str()).collect();
        instances.sort_by_key(|i| order.iter().position(|id| *id == i.instance_id));
        let encrypted = self.encrypts(organization_id, application_id);
        let mut chat = Vec::new();
        let mut cobrowse = Vec::new();
        let mut track_urls = Vec::new();
        for instance in instances.iter().filter(|i| i.erasure.is_none()) {
            if encrypted {
                continue;
            }
            let id = &instance.instance_id;
            self.store.for_each_transcript_entry(id, &mut |entry| {
                chat.push((id.clone(), entry));
                Ok(())
            })?;
            for session_id in instance.cobrowse_sessions.keys() {
                let mut summary = CobrowseSummary {
                    instance_id: id.clone(),
                    session_id: session_id.clone(),
                    num_events: 0,
                    first: None,
                    last: None,
                    rrweb: true,
                };
                self.store.for_each_cobrowse_event(id, session_id, &mut |event| {
                    summary.num_events += 1;
                    summary.first = Some(summary.first.map_or(event.timestamp, |f| f.min(event.timestamp)));
                    summary.last = Some(summary.last.map_or(event.timestamp, |l| l.max(event.timestamp)));
                    summary.rrweb = summary.rrweb && is_rrweb_event(&event.payload);
                    Ok(())
                })?;
                summary.rrweb = summary.rrweb && summary.num_events > 0;
                cobrowse.push(summary);
            }
            // Stored records hold checked ids; one that does not parse has no URLs to give.
            if let Ok(at) = InstanceRef::of(instance) {
                for url in self.track_urls(TrackUrls { instance: at, ttl }).await? {
                    track_urls.push((id.clone(), url));
                }
            }
        }
        let composition = if encrypted {
            None
        } else {
            self.composition(GetComposition {
                organization_id: organization_id.clone(),
                conversation_id: conversation_id.to_string(),
                applications: Some(vec![application_id.to_string()]),
                application_id_opt: Some(application_id.to_string()),
                ttl,
            })
            .await?
        };
        Ok(ReviewView {
            instances,
            timeline,
            chat,
            cobrowse,
            composition,
            track_urls,
            encrypted,
        })
    }

    /// Every event of a co-browse session of an instance of (`organization_id`,
    /// `application_id`, `conversation_id`), in `sequenceId` order, for the review page; an
    /// instance of anything else, erased or encrypted is `NotFound`.
    pub fn review_cobrowse_events(
        &self,
        organization_id: &OrganizationId,
        application_id: &str,
        conversation_id: &str,
        instance_id: &str,
        session_id: &str,
    ) -> Result<Vec<CobrowseEvent>, EngineError> {
        let missing = || EngineError::not_found(format!("no co-browse session {session_id}"));
        let record = self
            .review_instance(organization_id, application_id, conversation_id, instance_id)
            .map_err(|_| missing())?;
        if record.erasure.is_some()
            || self.encrypts(organization_id, application_id)
            || !record.cobrowse_sessions.contains_key(session_id)
        {
            return Err(missing());
        }
        Ok(self.store.cobrowse_events(instance_id, session_id)?)
    }

    /// Whether the application encrypts its artefacts to the customer's key.
    fn encrypts(&self, organization_id: &str, application_id: &str) -> bool {
        self.profile_of(organization_id, application_id)
            .is_some_and(|p| p.policy.encryption.is_some())
    }

    /// The instance of a review link's (`organization_id`, `application_id`,
    /// `conversation_id`), for serving its files; `NotFound` for anything else.
    pub fn review_instance(
        &self,
        organization_id: &OrganizationId,
        application_id: &str,
        conversation_id: &str,
        instance_id: &str,
    ) -> Result<InstanceRecord, EngineError> {
        let missing = || EngineError::not_found(format!("no recorder instance {instance_id}"));
        let record = self.store.get_instance(instance_id)?.ok_or_else(missing)?;
        if record.organization_id != organization_id.as_str()
            || record.application_id != application_id
            || record.conversation_id != conversation_id
        {
            return Err(missing());
        }
        Ok(record)
    }
}

/// The object key a stored co-browse session is under: `events.json`, or `events.json.age` when
/// its application encrypted it (the location it was stored at says which).
fn stored_cobrowse_key(record: &InstanceRecord, session_id: &str, session: &CobrowseSessionRecord) -> String {
    let key = record.cobrowse_key(session_id);
    let suffix = crate::storage::encryption::SUFFIX;
    if session.location.as_deref().is_some_and(|l| l.ends_with(suffix)) {
        format!("{key}{suffix}")
    } else {
        key
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
