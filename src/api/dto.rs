//! The Recorder API's messages, with the spec's names and fields, and how engine records render
//! into them. Dates are RFC 3339 in UTC with milliseconds; optional values are left out rather
//! than sent as null; sizes are decimal byte counts; `duration` is ISO 8601 (`PT12.345S`).
//!
//! Why one file (~700 lines): every message of the spec in one place, so a field's name and its
//! rendering are read and checked together against the Swagger text; splitting by endpoint would
//! scatter the shared ones (Error, RecordingDataEvent).

use chrono::{DateTime, Utc};
use recorder_actors::domain::{
    self, ErrorInfo, InstanceRecord, LocalFileRecord, ObjectRecord, Provider, StreamRecord, TrackRecord,
};
use recorder_actors::storage::{CheckResult, VerificationReport};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{timestamp, ErrorBody};

fn opt_ts(at: Option<DateTime<Utc>>) -> Option<String> {
    at.map(timestamp)
}

/// ISO 8601 duration with millisecond precision, e.g. `PT75.250S`.
pub fn iso_duration(duration: chrono::Duration) -> String {
    let millis = duration.num_milliseconds().max(0);
    format!("PT{}.{:03}S", millis / 1000, millis % 1000)
}

// ---- enumerations ------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RecordingState {
    Aborted,
    Active,
    Failed,
    Initialised,
    PendingRecovery,
    Stopped,
}

impl From<domain::InstanceState> for RecordingState {
    fn from(state: domain::InstanceState) -> Self {
        use domain::InstanceState as S;
        match state {
            S::Initialised => RecordingState::Initialised,
            S::Active => RecordingState::Active,
            S::Stopped => RecordingState::Stopped,
            S::Failed => RecordingState::Failed,
            S::PendingRecovery => RecordingState::PendingRecovery,
            S::Aborted => RecordingState::Aborted,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StorageProvider {
    AmazonS3,
    AzureBlob,
    GoogleCloud,
    SftpStorage,
}

/// The spec's provider enum has no value for the local default profile: it is left out.
fn provider(p: Provider) -> Option<StorageProvider> {
    match p {
        Provider::AmazonS3 => Some(StorageProvider::AmazonS3),
        Provider::AzureBlob => Some(StorageProvider::AzureBlob),
        Provider::GoogleCloud => Some(StorageProvider::GoogleCloud),
        Provider::SftpStorage => Some(StorageProvider::SftpStorage),
        Provider::Local => None,
    }
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamState {
    Failed,
    Recording,
    Stopped,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamType {
    Cam,
    Hold,
    Mic,
    Screen,
    Unknown,
    Video,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrackType {
    Audio,
    Video,
}

fn stream_state(s: domain::StreamState) -> StreamState {
    match s {
        domain::StreamState::Recording => StreamState::Recording,
        domain::StreamState::Stopped => StreamState::Stopped,
        domain::StreamState::Failed => StreamState::Failed,
    }
}

fn stream_type(t: domain::StreamType) -> StreamType {
    match t {
        domain::StreamType::Cam => StreamType::Cam,
        domain::StreamType::Hold => StreamType::Hold,
        domain::StreamType::Mic => StreamType::Mic,
        domain::StreamType::Screen => StreamType::Screen,
        domain::StreamType::Unknown => StreamType::Unknown,
        domain::StreamType::Video => StreamType::Video,
    }
}

fn track_type(t: domain::TrackType) -> TrackType {
    match t {
        domain::TrackType::Audio => TrackType::Audio,
        domain::TrackType::Video => TrackType::Video,
    }
}

// ---- responses -----------------------------------------------------------------------------

fn error(e: &Option<ErrorInfo>) -> Option<ErrorBody> {
    e.as_ref().map(|e| ErrorBody {
        code: e.code.clone(),
        message: e.message.clone(),
        occurred: timestamp(e.occurred),
        field: None,
    })
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingDataEvent {
    pub conversation_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    pub instance_id: String,
    pub recorder_id: String,
    pub state: RecordingState,
    /// Addition: recording is paused now (no media is recorded; see `pauseIntervals`).
    pub paused: bool,
    /// Addition: every pause of the instance, oldest first; the last is open while paused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pause_intervals: Vec<PauseIntervalMessage>,
    /// Addition: why the instance stopped by itself (`MAX_DURATION_REACHED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Addition: the instance's erasure; an erased instance is a tombstone (no media).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erasure: Option<ErasureMessage>,
}

/// Addition: one pause of an instance.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseIntervalMessage {
    pub paused: String,
    /// Absent while the instance is still paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<String>,
}

/// Addition: the erasure of an instance (GDPR): asked for at `requested`, done at `erased`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureMessage {
    pub requested: String,
    /// Absent while the erasure runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erased: Option<String>,
}

fn erasure(r: &InstanceRecord) -> Option<ErasureMessage> {
    r.erasure.map(|e| ErasureMessage {
        requested: timestamp(e.requested),
        erased: opt_ts(e.erased),
    })
}

fn pause_intervals(r: &InstanceRecord) -> Vec<PauseIntervalMessage> {
    r.pauses
        .iter()
        .map(|p| PauseIntervalMessage {
            paused: timestamp(p.paused),
            resumed: opt_ts(p.resumed),
        })
        .collect()
}

impl From<&InstanceRecord> for RecordingDataEvent {
    fn from(r: &InstanceRecord) -> Self {
        Self {
            conversation_id: r.conversation_id.clone(),
            error: error(&r.error),
            instance_id: r.instance_id.clone(),
            recorder_id: r.recorder_id.clone(),
            state: r.state.into(),
            paused: r.is_paused(),
            pause_intervals: pause_intervals(r),
            stop_reason: r.stop_reason.clone(),
            erasure: erasure(r),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatTranscriptData {
    pub created: String,
    pub id: String,
    /// Where the transcript is stored; from its first line on, where it will be stored.
    pub location: String,
    /// Addition: when it was last stored; absent until its first upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<String>,
    /// Addition: `BACKUP` when the application's backup store holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// `BACKUP` for an artefact in the backup store; nothing for the primary one.
fn store(backup: bool) -> Option<String> {
    backup.then(|| "BACKUP".to_string())
}

fn transcript(r: &InstanceRecord) -> Option<ChatTranscriptData> {
    r.transcript.as_ref().map(|t| ChatTranscriptData {
        created: timestamp(t.created),
        id: t.id.clone(),
        location: t.location.clone(),
        uploaded: (!t.pending).then(|| timestamp(t.uploaded.unwrap_or(t.created))),
        store: store(t.backup),
    })
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageProfileDataMessage {
    pub application_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<StorageProvider>,
    pub url: String,
}

impl From<&InstanceRecord> for StorageProfileDataMessage {
    fn from(r: &InstanceRecord) -> Self {
        Self {
            application_id: r.application_id.clone(),
            provider: provider(r.provider),
            url: r.storage_url.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalFileDataMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

impl From<&LocalFileRecord> for LocalFileDataMessage {
    fn from(l: &LocalFileRecord) -> Self {
        Self {
            created: opt_ts(l.created),
            deleted: opt_ts(l.deleted),
            error: error(&l.error),
            location: l.location.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadDataMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<String>,
    /// Addition: `BACKUP` when the application's backup store holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

impl From<&ObjectRecord> for UploadDataMessage {
    fn from(o: &ObjectRecord) -> Self {
        Self {
            error: error(&o.error),
            location: o.location.clone(),
            size: o.size.map(|s| s.to_string()),
            uploaded: opt_ts(o.uploaded),
            store: store(o.backup),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackStorageDataMessage {
    pub local_storage: LocalFileDataMessage,
    pub object_storage: UploadDataMessage,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackDataMessage {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub storage: TrackStorageDataMessage,
    #[serde(rename = "type")]
    pub kind: TrackType,
    /// Signed download URL, once the track is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Video: degrees to turn the picture clockwise to show it upright, when the publisher
    /// signalled its orientation (an addition to the spec; players of the track file need it,
    /// the composition applies it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<u16>,
}

impl From<&TrackRecord> for TrackDataMessage {
    fn from(t: &TrackRecord) -> Self {
        Self {
            id: t.id.clone(),
            started: opt_ts(t.started),
            stopped: opt_ts(t.stopped),
            storage: TrackStorageDataMessage {
                local_storage: (&t.local).into(),
                object_storage: (&t.object).into(),
            },
            kind: track_type(t.kind),
            url: None,
            rotation: t.rotation,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamDataMessage {
    pub id: String,
    pub state: StreamState,
    pub tracks: Vec<TrackDataMessage>,
    #[serde(rename = "type")]
    pub kind: StreamType,
    pub user_id: String,
    /// The publisher's declared role, AGENT or CUSTOMER (an addition to the spec).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "AGENT")]
    pub role: Option<&'static str>,
}

impl From<&StreamRecord> for StreamDataMessage {
    fn from(s: &StreamRecord) -> Self {
        Self {
            id: s.id.clone(),
            state: stream_state(s.state),
            tracks: s.tracks.iter().map(Into::into).collect(),
            kind: stream_type(s.kind),
            user_id: s.user_id.clone(),
            role: s.role.map(|r| r.as_str()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingDataMessage {
    pub audio: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_transcript: Option<ChatTranscriptData>,
    pub conference_id: String,
    pub conversation_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    pub instance_id: String,
    pub organization_id: String,
    pub recorder_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    pub state: RecordingState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub storage_profile: StorageProfileDataMessage,
    pub streams: Vec<StreamDataMessage>,
    pub video: bool,
    /// Addition: recording is paused now.
    pub paused: bool,
    /// Addition: every pause of the instance (a span the files keep as a gap).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pause_intervals: Vec<PauseIntervalMessage>,
    /// Addition: chat lines and co-browse events discarded because they came while paused
    /// (applications with `pause_capture = "drop"`).
    #[serde(skip_serializing_if = "is_zero")]
    pub num_discarded_while_paused: u64,
    /// Addition: why the instance stopped by itself (`MAX_DURATION_REACHED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Addition: the instance's erasure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erasure: Option<ErasureMessage>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<&InstanceRecord> for RecordingDataMessage {
    fn from(r: &InstanceRecord) -> Self {
        Self {
            audio: r.audio,
            chat_transcript: transcript(r),
            conference_id: r.conference_id.clone(),
            conversation_id: r.conversation_id.clone(),
            error: error(&r.error),
            instance_id: r.instance_id.clone(),
            organization_id: r.organization_id.clone(),
            recorder_id: r.recorder_id.clone(),
            recovered: opt_ts(r.recovered),
            started: opt_ts(r.started),
            state: r.state.into(),
            stopped: opt_ts(r.stopped),
            storage_profile: r.into(),
            streams: r.streams.iter().map(Into::into).collect(),
            video: r.video,
            paused: r.is_paused(),
            pause_intervals: pause_intervals(r),
            num_discarded_while_paused: r.num_discarded_while_paused,
            stop_reason: r.stop_reason.clone(),
            erasure: erasure(r),
        }
    }
}

/// `GET /compositions/{conversationId}`: the composition in the shape of a recording. State:
/// queued → INITIALISED, composing → ACTIVE, done → STOPPED, failed → FAILED. `instanceId`,
/// `recorderId`, `conferenceId` and `storageProfile` are those of the newest ended (stopped or aborted) instance
/// (the composition is uploaded through its profile); `started`/`stopped` are the composition
/// run's. One stream (`id` "composition", type VIDEO) holds one track: VIDEO, or AUDIO for an
/// audio-only conversation, with its local file, its upload and the provider's signed `url`;
/// a second track (`id` "stereo", AUDIO) is the stereo audio when one was made.
pub fn composition_message(
    c: &recorder_actors::store::CompositionRecord,
    instance: &InstanceRecord,
    url: Option<String>,
    stereo_url: Option<String>,
) -> RecordingDataMessage {
    use recorder_actors::store::CompositionState as C;
    let (state, stream_state) = match c.state {
        C::Queued => (RecordingState::Initialised, StreamState::Recording),
        C::Composing => (RecordingState::Active, StreamState::Recording),
        C::Done => (RecordingState::Stopped, StreamState::Stopped),
        C::Failed => (RecordingState::Failed, StreamState::Failed),
    };
    let done = c.state == C::Done;
    let video = if done { c.has_video } else { instance.video };
    let track = TrackDataMessage {
        id: "composition".into(),
        started: opt_ts(c.started),
        stopped: opt_ts(c.stopped),
        storage: TrackStorageDataMessage {
            local_storage: LocalFileDataMessage {
                created: if done { opt_ts(c.stopped) } else { None },
                deleted: None,
                error: None,
                location: c.local_path.clone(),
            },
            object_storage: UploadDataMessage {
                error: None,
                location: c.location.clone(),
                size: c.size.map(|s| s.to_string()),
                uploaded: opt_ts(c.uploaded),
                store: store(c.backup),
            },
        },
        kind: if video { TrackType::Video } else { TrackType::Audio },
        url,
        rotation: None,
    };
    let mut tracks = vec![track];
    if let Some(stereo) = c.stereo.as_ref().filter(|_| done) {
        tracks.push(TrackDataMessage {
            id: "stereo".into(),
            started: opt_ts(c.started),
            stopped: opt_ts(c.stopped),
            storage: TrackStorageDataMessage {
                local_storage: LocalFileDataMessage {
                    created: opt_ts(c.stopped),
                    deleted: None,
                    error: None,
                    location: Some(stereo.local_path.clone()),
                },
                object_storage: UploadDataMessage {
                    error: None,
                    location: stereo.location.clone(),
                    size: stereo.size.map(|s| s.to_string()),
                    uploaded: opt_ts(stereo.uploaded),
                    store: store(stereo.backup),
                },
            },
            kind: TrackType::Audio,
            url: stereo_url,
            rotation: None,
        });
    }
    RecordingDataMessage {
        audio: instance.audio,
        chat_transcript: None,
        conference_id: instance.conference_id.clone(),
        conversation_id: c.conversation_id.clone(),
        error: error(&c.error),
        instance_id: instance.instance_id.clone(),
        organization_id: c.organization_id.clone(),
        recorder_id: instance.recorder_id.clone(),
        recovered: None,
        started: opt_ts(c.started),
        state,
        stopped: opt_ts(c.stopped),
        storage_profile: instance.into(),
        streams: vec![StreamDataMessage {
            id: "composition".into(),
            state: stream_state,
            tracks,
            kind: StreamType::Video,
            user_id: String::new(),
            role: None,
        }],
        video,
        paused: false,
        pause_intervals: Vec::new(),
        num_discarded_while_paused: 0,
        stop_reason: None,
        erasure: None,
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationTrackStorageData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationTrackData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub storage: ConversationTrackStorageData,
    #[serde(rename = "type")]
    pub kind: TrackType,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationStreamData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub tracks: Vec<ConversationTrackData>,
    #[serde(rename = "type")]
    pub kind: StreamType,
    pub user_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRecordingData {
    pub audio: bool,
    pub conference_id: String,
    /// This project's addition: the instance's id, to reach its own routes.
    pub instance_id: String,
    pub recorder_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// This project's addition: the instance's state.
    pub state: RecordingState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub streams: Vec<ConversationStreamData>,
    pub video: bool,
    /// Addition: the instance's erasure; an erased instance is listed without media.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erasure: Option<ErasureMessage>,
}

impl From<&InstanceRecord> for ConversationRecordingData {
    fn from(r: &InstanceRecord) -> Self {
        Self {
            audio: r.audio,
            conference_id: r.conference_id.clone(),
            instance_id: r.instance_id.clone(),
            recorder_id: r.recorder_id.clone(),
            recovered: opt_ts(r.recovered),
            started: opt_ts(r.started),
            state: r.state.into(),
            stopped: opt_ts(r.stopped),
            streams: r
                .streams
                .iter()
                .map(|s| ConversationStreamData {
                    started: opt_ts(s.started),
                    stopped: opt_ts(s.stopped),
                    tracks: s
                        .tracks
                        .iter()
                        .map(|t| ConversationTrackData {
                            started: opt_ts(t.started),
                            stopped: opt_ts(t.stopped),
                            storage: ConversationTrackStorageData {
                                location: t.object.location.clone(),
                                size: t.object.size.map(|s| s.to_string()),
                                uploaded: opt_ts(t.object.uploaded),
                            },
                            kind: track_type(t.kind),
                        })
                        .collect(),
                    kind: stream_type(s.kind),
                    user_id: s.user_id.clone(),
                })
                .collect(),
            video: r.video,
            erasure: erasure(r),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationMessage {
    pub application_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_transcript: Option<ChatTranscriptData>,
    pub conversation_id: String,
    /// Total recorded time of the conversation's instances, ISO 8601.
    pub duration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<StorageProvider>,
    pub recordings: Vec<ConversationRecordingData>,
}

impl ConversationMessage {
    /// `instances` is oldest first and not empty. The transcript shown is the newest one written.
    pub fn new(instances: &[InstanceRecord], now: DateTime<Utc>) -> Self {
        let newest = instances
            .last()
            .expect("a listed conversation has at least one instance");
        let total = instances
            .iter()
            .fold(chrono::Duration::zero(), |sum, r| sum + r.duration(now));
        Self {
            application_id: newest.application_id.clone(),
            chat_transcript: instances.iter().rev().find_map(transcript),
            conversation_id: newest.conversation_id.clone(),
            duration: iso_duration(total),
            provider: provider(newest.provider),
            recordings: instances.iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CobrowseSessionDataMessage {
    pub cobrowse_session_id: String,
    pub recorder_id: String,
    pub recorder_instance_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationCobrowseSessionDataMessage {
    pub cobrowse_sessions: Vec<CobrowseSessionDataMessage>,
    pub conversation_id: String,
}

impl ConversationCobrowseSessionDataMessage {
    pub fn new(conversation_id: &str, instances: &[InstanceRecord]) -> Self {
        Self {
            conversation_id: conversation_id.to_string(),
            cobrowse_sessions: instances
                .iter()
                .flat_map(|r| {
                    r.cobrowse_sessions.iter().map(|(id, s)| CobrowseSessionDataMessage {
                        cobrowse_session_id: id.clone(),
                        recorder_id: r.recorder_id.clone(),
                        recorder_instance_id: r.instance_id.clone(),
                        uploaded: opt_ts(s.uploaded),
                    })
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct URLResourceMessage {
    /// A signed URL of a given resource.
    pub url: String,
    /// The date until the given URL will remain valid.
    pub valid_until: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StorageTestResult {
    pub message: String,
    pub passed: bool,
}

impl From<&CheckResult> for StorageTestResult {
    fn from(c: &CheckResult) -> Self {
        Self {
            message: c.message.clone(),
            passed: c.passed,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageVerificationStatusMessage {
    pub bucket_test_result: StorageTestResult,
    pub delete_test_result: StorageTestResult,
    pub modify_test_result: StorageTestResult,
    pub read_test_result: StorageTestResult,
    pub write_test_result: StorageTestResult,
    /// This project's addition: write throughput of a 4 MiB probe object, MiB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_throughput_mib_per_sec: Option<f64>,
}

impl From<&VerificationReport> for StorageVerificationStatusMessage {
    fn from(r: &VerificationReport) -> Self {
        Self {
            bucket_test_result: (&r.bucket).into(),
            delete_test_result: (&r.delete).into(),
            modify_test_result: (&r.modify).into(),
            read_test_result: (&r.read).into(),
            write_test_result: (&r.write).into(),
            write_throughput_mib_per_sec: r.write_mib_per_sec.map(|v| (v * 100.0).round() / 100.0),
        }
    }
}

/// The spec's `InputStream` (an opaque stream; documented for completeness).
#[derive(Debug, Serialize, ToSchema)]
pub struct InputStream {}

/// The spec's `Resource`: the download itself is the file's bytes (`application/octet-stream`,
/// or `application/json` for JSON artefacts), with `Range` support.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub description: Option<String>,
    #[schema(value_type = Option<String>, format = Binary)]
    pub file: Option<String>,
    pub filename: Option<String>,
    pub input_stream: Option<InputStream>,
    pub open: Option<bool>,
    pub readable: Option<bool>,
    pub uri: Option<String>,
    pub url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_iso_8601() {
        assert_eq!(iso_duration(chrono::Duration::milliseconds(75_250)), "PT75.250S");
        assert_eq!(iso_duration(chrono::Duration::zero()), "PT0.000S");
        assert_eq!(iso_duration(chrono::Duration::milliseconds(-5)), "PT0.000S");
    }

    #[test]
    fn timestamps_are_utc_with_millis() {
        let at = DateTime::parse_from_rfc3339("2019-08-24T16:15:22.5+02:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(timestamp(at), "2019-08-24T14:15:22.500Z");
    }
}
