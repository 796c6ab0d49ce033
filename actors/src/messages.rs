//! What the HTTP front may ask the engine: commands sent to the [`crate::actors::Registry`]
//! (`Message`s), and the requests of the read-only questions answered by [`crate::queries`]
//! (plain structs). Every one carries the organization of the caller's key: the engine never
//! shows one organization another's data.

use std::path::PathBuf;
use std::sync::Arc;

use actix::Message;

use crate::domain::{
    ApplicationId, ChatEntry, CobrowseEvent, ConferenceId, ConversationId, IdError, InstanceId, InstanceRecord,
    OrganizationId, RecorderId,
};
use crate::storage::VerificationReport;
use crate::EngineError;

/// The applications of its organization a caller may use: `None` for every one. A caller sees
/// another application's live conference, instance or composition exactly as a missing one.
pub type Applications = Option<Vec<String>>;

/// Whether `applications` lets a caller use `application_id`.
pub fn may_use(applications: &Applications, application_id: &str) -> bool {
    applications
        .as_ref()
        .is_none_or(|apps| apps.iter().any(|a| a == application_id))
}

/// Addresses one instance as the API's paths do; every id parsed at the edge.
#[derive(Debug, Clone)]
pub struct InstanceRef {
    pub organization_id: OrganizationId,
    pub conversation_id: ConversationId,
    pub recorder_id: RecorderId,
    pub instance_id: InstanceId,
}

impl InstanceRef {
    /// The address of a stored instance.
    pub fn of(record: &InstanceRecord) -> Result<Self, IdError> {
        Ok(Self {
            organization_id: OrganizationId::parse(record.organization_id.as_str())?,
            conversation_id: ConversationId::parse(record.conversation_id.as_str())?,
            recorder_id: RecorderId::parse(record.recorder_id.as_str())?,
            instance_id: InstanceId::parse(record.instance_id.as_str())?,
        })
    }
}

#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<InstanceRecord, EngineError>")]
pub struct StartRecording {
    pub organization_id: OrganizationId,
    pub application_id: ApplicationId,
    pub conversation_id: ConversationId,
    pub conference_id: ConferenceId,
    pub audio: bool,
    pub video: bool,
}

#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<InstanceRecord, EngineError>")]
pub struct StopRecording(pub InstanceRef);

/// Pauses (`paused: true`) or resumes a live instance; idempotent, durable before answered.
/// While paused, no media is recorded (dropped at ingest) and chat and co-browse follow the
/// application's pause capture setting.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<InstanceRecord, EngineError>")]
pub struct SetPaused {
    pub instance: InstanceRef,
    pub paused: bool,
}

/// Erases a conversation's ended instances (GDPR), or one of them: durable before answered, run
/// as a job (resumed after a crash), leaving a tombstone of each. Refused (409) while an instance
/// of the conversation the caller may see is live.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Vec<InstanceRecord>, EngineError>")]
pub struct EraseRecordings {
    pub organization_id: OrganizationId,
    pub conversation_id: ConversationId,
    /// One instance (its recorderId and instanceId); `None`: every one of the conversation.
    pub instance_opt: Option<(RecorderId, InstanceId)>,
    /// The caller's applications: another application's instances are neither erased nor seen.
    pub applications: Applications,
}

/// The live instance of a conversation, if it has one.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<InstanceRecord, EngineError>")]
pub struct GetActive {
    pub organization_id: OrganizationId,
    pub conversation_id: String,
}

/// Every instance of a conversation, oldest first; `NotFound` when it has none.
#[derive(Debug, Clone)]
pub struct ListConversation {
    pub organization_id: OrganizationId,
    pub conversation_id: String,
}

#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<InstanceRecord, EngineError>")]
pub struct AddTranscript {
    pub instance: InstanceRef,
    pub entries: Vec<ChatEntry>,
}

/// Reply to [`AddCobrowseEvent`]: the instance after the event, and whether the event was new
/// (a repeated `sequenceId` is accepted and changes nothing).
#[derive(Debug, Clone)]
pub struct CobrowseAccepted {
    pub instance: InstanceRecord,
    pub was_new: bool,
}

#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<CobrowseAccepted, EngineError>")]
pub struct AddCobrowseEvent {
    pub instance: InstanceRef,
    pub event: CobrowseEvent,
}

#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<VerificationReport, EngineError>")]
pub struct VerifyStorage {
    pub organization_id: OrganizationId,
    pub application_id: String,
}

/// Where the bytes of an artefact the recorder serves itself come from: a file on this node
/// (local profiles), or the object fetched from the store (SFTP profiles; co-browse files are
/// small JSON documents).
#[derive(Debug, Clone)]
pub enum ArtefactSource {
    File(PathBuf),
    Bytes(Vec<u8>),
    /// A copy fetched from the store into a temp file of its own, which the receiver removes
    /// once it has opened it.
    Downloaded(PathBuf),
}

/// Resolves a co-browse artefact for a signed download. Carries no organization: the URL's
/// signature, checked by the front, is the authority.
#[derive(Debug, Clone)]
pub struct ResolveCobrowseFile {
    pub conversation_id: String,
    pub recorder_id: String,
    pub instance_id: String,
    pub session_id: String,
    pub file_name: String,
}

/// Resolves an uploaded track file for a signed download by the recorder (profiles without
/// provider URLs: local, SFTP). Like [`ResolveCobrowseFile`], the URL's signature is the authority.
#[derive(Debug, Clone)]
pub struct ResolveTrackFile {
    pub conversation_id: String,
    pub recorder_id: String,
    pub instance_id: String,
    pub stream_id: String,
    pub track_id: String,
}

/// Resolves an uploaded composition for a signed download by the recorder (profiles without
/// provider URLs: local, SFTP). Like [`ResolveTrackFile`], the URL's signature is the authority.
#[derive(Debug, Clone)]
pub struct ResolveCompositionFile {
    pub organization_id: OrganizationId,
    pub application_id: String,
    pub conversation_id: String,
    /// The MP4, or the stereo audio beside it.
    pub stereo: bool,
}

/// Where to read a track for download, and the name to download it as (`{trackId}.{ext}`).
#[derive(Debug)]
pub struct TrackFile {
    pub source: ArtefactSource,
    pub file_name: String,
}

/// The storage provider's own signed URL (S3 presign, Azure SAS, GCS V4) for an uploaded
/// co-browse session file; `None` when the session is not uploaded yet or the provider has no
/// such URLs (local, SFTP), and the recorder signs its own.
#[derive(Debug, Clone)]
pub struct ProviderCobrowseUrl {
    pub instance: InstanceRef,
    pub session_id: String,
    pub ttl: std::time::Duration,
}

/// A conversation's composition with the instance it is uploaded under (its newest stopped
/// one) and, once uploaded, the provider's signed URL (`None` for local and SFTP profiles).
/// `None` when the conversation of that organization has no composition (no stopped instance).
#[derive(Debug, Clone)]
pub struct GetComposition {
    pub organization_id: OrganizationId,
    pub conversation_id: String,
    /// The caller's applications: another application's composition is missing.
    pub applications: Applications,
    /// One application's composition; without it, the newest queued one the caller may see.
    pub application_id_opt: Option<String>,
    pub ttl: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct CompositionView {
    pub composition: crate::store::CompositionRecord,
    pub instance: InstanceRecord,
    pub url: Option<String>,
    /// The provider's signed URL of the uploaded stereo audio.
    pub stereo_url: Option<String>,
}

/// The storage provider's signed download URL of every uploaded track of an instance; tracks of
/// profiles without provider URLs (local, SFTP) are left out.
#[derive(Debug, Clone)]
pub struct TrackUrls {
    pub instance: InstanceRef,
    pub ttl: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackUrl {
    pub stream_id: String,
    pub track_id: String,
    pub url: String,
}

/// Readiness from what the node already knows: the state store answers, and the last
/// background check of each storage profile (a probe opens no connection).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<ReadyReport, EngineError>")]
pub struct CheckReady;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyReport {
    pub store_ok: bool,
    pub num_profiles: usize,
    pub num_reachable: usize,
    /// Profiles whose last check failed; the others not reachable are not checked yet.
    pub num_unreachable: usize,
    /// The node is going down (SIGTERM): not ready for new work, whatever else says.
    pub draining: bool,
}

impl ReadyReport {
    pub fn is_ready(&self) -> bool {
        self.store_ok && self.num_reachable == self.num_profiles && !self.draining
    }
}

/// How a publisher's media comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngestTransport {
    /// Plain RTP over UDP, described by an SDP offer (SFU forwarders, FFmpeg `-f rtp`).
    Rtp,
    /// WebRTC through WHIP (RFC 9725).
    Whip,
}

/// A publisher offers a stream of a conference's live instance.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<PublishAnswer, EngineError>")]
pub struct Publish {
    pub organization_id: OrganizationId,
    pub conference_id: String,
    /// Set when the caller holds a publish token: the token is good for this instance only.
    pub instance_id_opt: Option<String>,
    /// The applications of the caller's key; a conference of another application is missing.
    pub applications: Applications,
    /// Filled in by the registry: the session's place in its organization's session budget,
    /// held by the session for as long as it lives.
    pub permit: Option<Arc<crate::limits::SessionPermit>>,
    /// Plain RTP: the offer may leave out the sender's address (`c=`); otherwise such an offer
    /// is refused, since any datagram could then latch its ports.
    pub rtp_any_source: bool,
    pub user_id: String,
    pub kind: crate::domain::StreamType,
    /// `role=agent|customer`: the publisher's channel in the stereo audio.
    pub role: Option<crate::domain::ParticipantRole>,
    pub transport: IngestTransport,
    pub offer_sdp: String,
}

#[derive(Debug, Clone)]
pub struct PublishAnswer {
    pub session_id: String,
    pub answer_sdp: String,
    pub instance_id: String,
    pub stream_id: String,
}

/// A publisher ends its session (DELETE on the session's location).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), EngineError>")]
pub struct Unpublish {
    pub organization_id: OrganizationId,
    pub conference_id: String,
    pub instance_id_opt: Option<String>,
    pub applications: Applications,
    pub session_id: String,
}

/// The live actor tree for the debug endpoint: one organization's part of it, or with `None`
/// (a key with the operators' scope) the whole node.
#[derive(Message, Debug, Clone)]
#[rtype(result = "crate::snapshot::ActorSnapshot")]
pub struct DebugTree {
    pub organization_id_opt: Option<OrganizationId>,
}

/// The node is going down (SIGTERM, once its drain is over): every live instance's streams end
/// their ingest and complete their files without committing anything, so the instances resume
/// at the next start as after a crash, with no media lost beyond the downtime; uploads and
/// webhook deliveries in flight are cancelled (their jobs stay queued in the store) and a
/// composition running is left to the next start (it is `COMPOSING` in the store, which a
/// start runs again). Answered once all of that is done; the registry takes no command after.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ShutdownNode;

/// Ends an actor at a node's shutdown: its work in flight is dropped; what is durable stays in
/// the store for the next start.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Halt;

/// How many conversations have a live instance on this node (what a drain waits on).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "usize")]
pub struct CountLive;
