//! The state store: everything the recorder must not forget across a crash. The engine talks to
//! the [`StateStore`] trait only; `sled_store` is its one implementation and the only module in the
//! project that imports sled, so the engine could move to another embedded database without
//! touching a caller.
//!
//! Writes go to the database's memory first; [`StateStore::flush`] makes them durable. Callers
//! acknowledge a command to a client only after the flush that follows their writes resolved.

pub mod artefacts;
mod sled_store;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::domain::{ChatEntry, CobrowseEvent, ErrorInfo, IllegalTransition, InstanceRecord};
use crate::storage::MultipartProgress;

pub use sled_store::SledStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store i/o: {0}")]
    Io(String),
    #[error("corrupt record in {tree} at {key}: {message}")]
    Corrupt {
        tree: &'static str,
        key: String,
        message: String,
    },
    #[error("record written by a newer build (schema {found}, this build reads up to {supported})")]
    FutureSchema { found: u32, supported: u32 },
    #[error("no such record: {0}")]
    NotFound(String),
    /// An update closure refused the change; carries its reason to the caller unchanged.
    #[error("{message}")]
    Rejected { code: &'static str, message: String },
    /// Inside [`StateStore::transaction`] only: another writer touched what the transaction read;
    /// the store runs the closure again. Never returned to callers of `transaction`.
    #[error("transaction conflict")]
    TxConflict,
}

/// A state machine's refusal, carried out of an update closure as the caller's 409.
impl From<IllegalTransition> for StoreError {
    fn from(err: IllegalTransition) -> Self {
        StoreError::Rejected {
            code: "ILLEGAL_TRANSITION",
            message: err.to_string(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What an upload job puts into storage. JSON artefacts are rendered from the state store when
/// the job runs, so a job queued twice for one artefact uploads its newest content; a track file
/// is read from the node's disk, in parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ArtefactKind {
    ChatTranscript,
    CobrowseSession {
        session_id: String,
    },
    /// A finished track file on this node; deleted (when configured) after a verified upload.
    TrackFile {
        stream_id: String,
        track_id: String,
        local_path: String,
    },
    /// The conversation's composed MP4 on this node (see [`CompositionRecord`]); the job's
    /// instance is the conversation's newest stopped one.
    Composition {
        conversation_id: String,
        local_path: String,
        /// The conversation's stereo audio, uploaded with the MP4 by the same job.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stereo_path: Option<String>,
    },
    /// `recording.json`: runs only when no other job of its instance is queued, so a complete
    /// manifest in storage means every artefact it lists is there.
    Manifest,
    /// Not an upload: the erasure of the instance — every object it may have in storage, its
    /// local files and its captured entries deleted (each step idempotent, so a crash only makes
    /// it run again), then the record made a tombstone.
    Erasure,
}

/// A durable upload job: a row in the store from the moment an artefact is final until the
/// storage profile holds it. Keyed by the artefact's object key, so queueing an artefact again
/// while a job for it waits or runs bumps `generation` instead of adding a second job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadJob {
    pub schema_version: u32,
    pub key: String,
    pub instance_id: String,
    pub organization_id: String,
    pub application_id: String,
    pub artefact: ArtefactKind,
    pub generation: u64,
    pub num_attempts: u32,
    pub last_error: Option<ErrorInfo>,
    /// The multipart upload of a track file under way, updated as its parts complete, so that
    /// an upload interrupted by a restart continues where it stopped.
    #[serde(default)]
    pub multipart_opt: Option<MultipartProgress>,
    /// When the job first failed: past the application's backup delay, it goes to the backup
    /// store.
    #[serde(default)]
    pub first_failure: Option<DateTime<Utc>>,
}

/// What an event reports (its `type` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The instance moved to another state (created included).
    #[serde(rename = "instance.state_changed")]
    InstanceStateChanged,
    /// The instance stops by itself soon: it reaches its maximum duration.
    #[serde(rename = "instance.duration_warning")]
    DurationWarning,
    /// An artefact (track, transcript, co-browse session, composition) is in storage.
    #[serde(rename = "artefact.uploaded")]
    ArtefactUploaded,
    /// `recording.json` is in storage: every artefact it lists is there too.
    #[serde(rename = "recording.complete")]
    RecordingComplete,
    #[serde(rename = "composition.done")]
    CompositionDone,
    #[serde(rename = "composition.failed")]
    CompositionFailed,
    /// Every artefact of the instance is deleted; the instance is a tombstone.
    #[serde(rename = "erasure.done")]
    ErasureDone,
    /// A track receives packets and cannot write a frame (its error says why).
    #[serde(rename = "track.error")]
    TrackError,
    /// A track that could not write writes frames again.
    #[serde(rename = "track.recovered")]
    TrackRecovered,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::InstanceStateChanged => "instance.state_changed",
            EventKind::DurationWarning => "instance.duration_warning",
            EventKind::ArtefactUploaded => "artefact.uploaded",
            EventKind::RecordingComplete => "recording.complete",
            EventKind::CompositionDone => "composition.done",
            EventKind::CompositionFailed => "composition.failed",
            EventKind::ErasureDone => "erasure.done",
            EventKind::TrackError => "track.error",
            EventKind::TrackRecovered => "track.recovered",
        }
    }
}

/// An event for the application's webhook, in the durable outbox: written in the transaction of
/// the change it reports (a state change, an upload's end), delivered in order per application,
/// at least once, and removed once its receiver acknowledged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// The idempotency id a receiver deduplicates by.
    pub id: String,
    pub kind: EventKind,
    pub occurred: DateTime<Utc>,
    pub organization_id: String,
    pub application_id: String,
    pub conversation_id: String,
    pub recorder_id: String,
    pub instance_id: String,
    /// What the kind says more (the states of a change, the artefact and where it is, ...).
    pub data: serde_json::Value,
}

impl OutboxEvent {
    /// An event about `instance`.
    pub fn of(instance: &InstanceRecord, kind: EventKind, occurred: DateTime<Utc>, data: serde_json::Value) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            occurred,
            organization_id: instance.organization_id.clone(),
            application_id: instance.application_id.clone(),
            conversation_id: instance.conversation_id.clone(),
            recorder_id: instance.recorder_id.clone(),
            instance_id: instance.instance_id.clone(),
            data,
        }
    }

    /// The state change from `before` to `after` (each store write that changes an instance's
    /// state adds one in the same commit).
    pub fn state_changed(before: Option<crate::domain::InstanceState>, after: &InstanceRecord) -> Option<Self> {
        if before == Some(after.state) {
            return None;
        }
        let occurred = after.history.last().map(|(_, at)| *at).unwrap_or(after.created);
        let mut data = serde_json::json!({ "state": after.state.as_str() });
        if let Some(before) = before {
            data["previousState"] = before.as_str().into();
        }
        if let Some(error) = &after.error {
            data["error"] = serde_json::json!({ "code": error.code, "message": error.message });
        }
        if let Some(reason) = &after.stop_reason {
            data["stopReason"] = reason.as_str().into();
        }
        Some(Self::of(after, EventKind::InstanceStateChanged, occurred, data))
    }
}

/// Progress of a conversation's composition. `Queued` again when a later instance of the
/// conversation stops, whatever the state was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompositionState {
    Queued,
    Composing,
    Done,
    Failed,
}

/// Which composition: one per (organization, application, conversation). Applications of one
/// organization may use the same conversationId; each gets its own composition of its own
/// instances, stored under its own profile, and reads only that one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CompositionId {
    pub organization_id: String,
    pub application_id: String,
    pub conversation_id: String,
}

impl CompositionId {
    pub fn new(organization_id: &str, application_id: &str, conversation_id: &str) -> Self {
        Self {
            organization_id: organization_id.to_string(),
            application_id: application_id.to_string(),
            conversation_id: conversation_id.to_string(),
        }
    }

    pub fn of_instance(record: &InstanceRecord) -> Self {
        Self::new(&record.organization_id, &record.application_id, &record.conversation_id)
    }

    pub fn of(record: &CompositionRecord) -> Self {
        Self::new(&record.organization_id, &record.application_id, &record.conversation_id)
    }

    /// Whether `instance` is one of this composition's inputs.
    pub fn includes(&self, instance: &InstanceRecord) -> bool {
        instance.organization_id == self.organization_id
            && instance.application_id == self.application_id
            && instance.conversation_id == self.conversation_id
    }
}

/// A durable composition job and its outcome, one per [`CompositionId`]. The
/// compositor holds nothing that must be recovered: a `Composing` record found at boot was cut
/// short by a crash and is run again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompositionRecord {
    pub schema_version: u32,
    pub organization_id: String,
    pub conversation_id: String,
    /// The application (storage profile) whose instances are composed and which stores the MP4.
    pub application_id: String,
    /// The newest stopped instance of the application's conversation: the upload runs as its job.
    pub instance_id: String,
    pub state: CompositionState,
    /// Bumped by every queueing; a run that finds a newer generation at its end leaves the
    /// record queued so the newer instance is included.
    pub generation: u64,
    pub queued: DateTime<Utc>,
    pub started: Option<DateTime<Utc>>,
    pub stopped: Option<DateTime<Utc>>,
    pub error: Option<ErrorInfo>,
    /// Inputs left out of a produced composition (corrupt or empty track files).
    pub problems: Vec<String>,
    pub has_video: bool,
    pub local_path: Option<String>,
    pub key: Option<String>,
    pub location: Option<String>,
    pub size: Option<u64>,
    pub uploaded: Option<DateTime<Utc>>,
    /// Stored in the application's backup store.
    #[serde(default)]
    pub backup: bool,
    /// The conversation's stereo audio made with this composition, when configured and the
    /// conversation has audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stereo: Option<StereoRecord>,
}

/// The stereo audio of a composition: which publishers are on which channel, its local file
/// and its upload (`{org}/{app}/{conversation}/stereo.{opus|m4a}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StereoRecord {
    pub format: crate::media::stereo::StereoFormat,
    /// userIds mixed into the left channel (agents) and the right one (customers).
    pub left: Vec<String>,
    pub right: Vec<String>,
    pub local_path: String,
    pub key: Option<String>,
    pub location: Option<String>,
    pub size: Option<u64>,
    pub uploaded: Option<DateTime<Utc>>,
    #[serde(default)]
    pub backup: bool,
}

/// The writes of one command, applied all together or not at all (the model is garage's
/// `db::Transaction`). A closure given to [`StateStore::transaction`] reads and writes through
/// this; nothing it writes is visible to anyone, nor survives a crash, before the closure
/// returns `Ok` and the store commits. The closure may run more than once (on a conflict with
/// another writer), so it must not have effects outside the transaction, other than resetting
/// what it collects.
pub trait StoreTx {
    fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceRecord>>;
    /// Read-modify-write of one instance; `change` may refuse with [`StoreError::Rejected`].
    fn update_instance(
        &self,
        instance_id: &str,
        change: &mut dyn FnMut(&mut InstanceRecord) -> StoreResult<()>,
    ) -> StoreResult<InstanceRecord>;
    /// Like [`StateStore::enqueue_job`].
    fn enqueue_job(&self, job: &UploadJob) -> StoreResult<UploadJob>;
    /// Like [`StateStore::finish_job`].
    fn finish_job(&self, key: &str, generation: u64) -> StoreResult<bool>;
    /// Like [`StateStore::queue_composition`].
    fn queue_composition(
        &self,
        id: &CompositionId,
        instance_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<CompositionRecord>;
    /// Like [`StateStore::update_composition`].
    fn update_composition(
        &self,
        id: &CompositionId,
        change: &mut dyn FnMut(&mut CompositionRecord) -> StoreResult<()>,
    ) -> StoreResult<CompositionRecord>;
    /// Like [`StateStore::append_transcript`].
    fn append_transcript(&self, instance_id: &str, entries: &[ChatEntry]) -> StoreResult<u64>;
    /// Like [`StateStore::put_cobrowse_event`].
    fn put_cobrowse_event(&self, instance_id: &str, event: &CobrowseEvent) -> StoreResult<bool>;
    /// Adds an event to the outbox, committed with the rest of the transaction.
    fn put_event(&self, event: &OutboxEvent) -> StoreResult<()>;
    /// A named point between two writes of the command, for fault injection
    /// (`fault::COMMAND_STEP`, scoped by `"<command> <step> <instanceId>"`): armed with `error`,
    /// it ends the process there, which is what a crash at that step leaves behind. A no-op in
    /// normal builds.
    fn step(&self, command: &str, step: &str, instance_id: &str);
}

pub trait StateStore: Send + Sync + 'static {
    /// Runs `command` as one transaction: all of its writes are committed together, or, when it
    /// returns an error (or the process dies before the commit), none. The caller flushes
    /// afterwards, as after any write.
    fn transaction(&self, command: &mut dyn FnMut(&dyn StoreTx) -> StoreResult<()>) -> StoreResult<()>;

    /// Node-level settings that must stay the same across restarts (recorder id, signing secret).
    /// Returns the stored value: `value` if the key was absent, the earlier value otherwise.
    fn meta_get_or_insert(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>>;

    fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceRecord>>;
    /// Inserts a new instance and indexes it under its organization and conversation.
    fn insert_instance(&self, record: &InstanceRecord) -> StoreResult<()>;
    /// Atomic read-modify-write of one instance; `change` may run more than once on contention
    /// and may refuse the change with [`StoreError::Rejected`].
    fn update_instance(
        &self,
        instance_id: &str,
        change: &mut dyn FnMut(&mut InstanceRecord) -> StoreResult<()>,
    ) -> StoreResult<InstanceRecord>;
    /// Instances of one conversation of one organization, oldest first.
    fn conversation_instances(&self, organization_id: &str, conversation_id: &str) -> StoreResult<Vec<InstanceRecord>>;
    fn all_instances(&self) -> StoreResult<Vec<InstanceRecord>>;
    /// The instances in a live state (`INITIALISED`, `ACTIVE`, `PENDING_RECOVERY`): what boot
    /// rebuilds. Reads the others without keeping them, so boot's memory does not grow with the
    /// store's history.
    fn live_instances(&self) -> StoreResult<Vec<InstanceRecord>>;
    /// Calls `visit` with every instance, one at a time (boot's one pass over the store).
    fn for_each_instance(&self, visit: &mut dyn FnMut(InstanceRecord) -> StoreResult<()>) -> StoreResult<()>;
    /// How many instances are in each state, every state listed (zeros included). Kept as the
    /// instances change, so asking costs nothing however many instances the store holds.
    fn instance_counts(&self) -> Vec<(crate::domain::InstanceState, u64)>;

    /// Appends chat entries in order; returns how many entries the instance has now.
    fn append_transcript(&self, instance_id: &str, entries: &[ChatEntry]) -> StoreResult<u64>;
    fn transcript(&self, instance_id: &str) -> StoreResult<Vec<ChatEntry>>;
    /// Calls `visit` with each chat line of an instance, in order, one at a time (artefacts are
    /// rendered from this, never from the whole transcript in memory).
    fn for_each_transcript_entry(
        &self,
        instance_id: &str,
        visit: &mut dyn FnMut(ChatEntry) -> StoreResult<()>,
    ) -> StoreResult<()>;

    /// Stores an event unless one with its session and `sequenceId` is there already; returns
    /// whether it was new. Iteration is in `sequenceId` order whatever the arrival order.
    fn put_cobrowse_event(&self, instance_id: &str, event: &CobrowseEvent) -> StoreResult<bool>;
    fn cobrowse_events(&self, instance_id: &str, session_id: &str) -> StoreResult<Vec<CobrowseEvent>>;
    /// Calls `visit` with each event of a co-browse session, in `sequenceId` order, one at a time.
    fn for_each_cobrowse_event(
        &self,
        instance_id: &str,
        session_id: &str,
        visit: &mut dyn FnMut(CobrowseEvent) -> StoreResult<()>,
    ) -> StoreResult<()>;

    /// Queues (or re-queues, bumping its generation) the job for `job.key`.
    fn enqueue_job(&self, job: &UploadJob) -> StoreResult<UploadJob>;
    /// Stores the job's progress fields (attempts, last error, and the multipart progress when
    /// `job` has one); a no-op when the job is gone.
    fn update_job(&self, job: &UploadJob) -> StoreResult<()>;
    fn job(&self, key: &str) -> StoreResult<Option<UploadJob>>;
    /// The queued jobs of one storage profile, from an index the store keeps (built at open,
    /// moved by every enqueue and finish): an uploader never reads other profiles' jobs.
    fn profile_jobs(&self, organization_id: &str, application_id: &str) -> StoreResult<Vec<UploadJob>>;
    fn jobs(&self) -> StoreResult<Vec<UploadJob>>;
    /// Removes a finished job unless it was re-queued meanwhile; returns whether it was removed.
    fn finish_job(&self, key: &str, generation: u64) -> StoreResult<bool>;

    /// Creates the composition record, or re-queues it (state `Queued`, next generation, newest
    /// instance), whatever its state.
    fn queue_composition(
        &self,
        id: &CompositionId,
        instance_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<CompositionRecord>;
    fn get_composition(&self, id: &CompositionId) -> StoreResult<Option<CompositionRecord>>;
    /// The compositions of one conversation of one organization, one per application.
    fn conversation_compositions(
        &self,
        organization_id: &str,
        conversation_id: &str,
    ) -> StoreResult<Vec<CompositionRecord>>;
    /// Atomic read-modify-write of one composition record, like [`StateStore::update_instance`].
    fn update_composition(
        &self,
        id: &CompositionId,
        change: &mut dyn FnMut(&mut CompositionRecord) -> StoreResult<()>,
    ) -> StoreResult<CompositionRecord>;
    fn compositions(&self) -> StoreResult<Vec<CompositionRecord>>;
    /// Compositions still to run (`Queued` or `Composing`), without reading the finished ones:
    /// the compositor asks on every stop, and finished records accumulate.
    fn pending_compositions(&self) -> StoreResult<Vec<CompositionRecord>>;

    /// Makes every earlier write durable (fsync).
    fn flush(&self) -> BoxFuture<'static, StoreResult<()>>;

    /// Adds an event to the outbox on its own (an event no other write goes with).
    fn put_event(&self, event: &OutboxEvent) -> StoreResult<()>;
    /// The oldest events of an application's outbox, at most `limit`, as (sequence, event).
    fn outbox(
        &self,
        organization_id: &str,
        application_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<(u128, OutboxEvent)>>;
    /// Deletes an instance's chat lines, their count and its co-browse events (an erasure);
    /// what is already gone is not an error.
    fn delete_captures(&self, instance_id: &str) -> StoreResult<()>;
    /// Removes a delivered event.
    fn remove_event(&self, organization_id: &str, application_id: &str, sequence: u128) -> StoreResult<()>;
    /// Cheap liveness probe for readiness checks.
    fn check(&self) -> StoreResult<()>;

    /// The ids of instances as they are written (inserted or updated, transactions included),
    /// from now on: a blocking iterator that ends when the store is dropped. What a cluster's
    /// catalogue follows. `None`: this store cannot tell.
    fn watch_instances(&self) -> Option<Box<dyn Iterator<Item = String> + Send>> {
        None
    }
}
