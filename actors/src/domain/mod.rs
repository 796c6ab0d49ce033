//! Domain types of the recorder: identities, the instance state machine and the records the state
//! store keeps. These are the engine's own types; the HTTP front renders them into the Recorder API's
//! messages.

use std::collections::BTreeMap;
use std::fmt;

mod ids;
mod rtp;
pub use ids::*;
pub use rtp::*;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Version of the record format written by this build. Bumped when a record changes shape; the
/// store refuses records from a newer build instead of misreading them.
pub const RECORD_SCHEMA_VERSION: u32 = 1;

/// Whether `id` is a valid id of the API (conversationId, applicationId, userId, ...): letters,
/// digits and `. _ - : @ + = ~`, never `.` or `..`. Such an id is a safe file name as it is.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@+=~".contains(&b))
}

/// A path component made from an id: a valid id as it is (so two ids never share a folder), and
/// anything else percent-escaped (`%` never occurs in a valid id, so the escape cannot collide
/// with one), so even an id that skipped validation can neither climb out of its folder nor
/// land in another id's.
pub fn path_component(id: &str) -> String {
    if is_valid_id(id) {
        return id.to_string();
    }
    let mut out = String::with_capacity(id.len() * 3 + 1);
    if id.is_empty() {
        out.push('%');
    }
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"_-:@+=~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// State of one recorder instance (the spec's `RecordingDataEvent.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    Initialised,
    Active,
    Stopped,
    Failed,
    PendingRecovery,
    Aborted,
}

impl InstanceState {
    pub const ALL: [InstanceState; 6] = [
        InstanceState::Initialised,
        InstanceState::Active,
        InstanceState::Stopped,
        InstanceState::Failed,
        InstanceState::PendingRecovery,
        InstanceState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Initialised => "INITIALISED",
            InstanceState::Active => "ACTIVE",
            InstanceState::Stopped => "STOPPED",
            InstanceState::Failed => "FAILED",
            InstanceState::PendingRecovery => "PENDING_RECOVERY",
            InstanceState::Aborted => "ABORTED",
        }
    }

    /// A live instance still records (or may record again); at most one per conversation.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            InstanceState::Initialised | InstanceState::Active | InstanceState::PendingRecovery
        )
    }

    pub fn is_terminal(self) -> bool {
        !self.is_live()
    }

    /// The legal transitions of the instance state machine. Terminal states never change again.
    pub fn can_transition_to(self, next: InstanceState) -> bool {
        use InstanceState::*;
        matches!(
            (self, next),
            (Initialised, Active)
                | (Initialised, Stopped)
                | (Initialised, Failed)
                | (Initialised, PendingRecovery)
                | (Active, Stopped)
                | (Active, Failed)
                | (Active, PendingRecovery)
                | (PendingRecovery, Active)
                | (PendingRecovery, Stopped)
                | (PendingRecovery, Failed)
                | (PendingRecovery, Aborted)
        )
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// State of one published stream (the spec's `StreamDataMessage.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamState {
    Recording,
    Stopped,
    Failed,
}

impl StreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Recording => "RECORDING",
            StreamState::Stopped => "STOPPED",
            StreamState::Failed => "FAILED",
        }
    }
}

/// Kind of published stream, as the spec enumerates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamType {
    Cam,
    Hold,
    Mic,
    Screen,
    Unknown,
    Video,
}

/// What a publisher is in a contact-center call: the stereo audio puts agents on the left
/// channel and customers on the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ParticipantRole {
    Agent,
    Customer,
}

impl ParticipantRole {
    /// `agent` / `customer`, in any case; anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "agent" => Some(Self::Agent),
            "customer" => Some(Self::Customer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "AGENT",
            Self::Customer => "CUSTOMER",
        }
    }
}

impl StreamType {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Cam => "CAM",
            StreamType::Hold => "HOLD",
            StreamType::Mic => "MIC",
            StreamType::Screen => "SCREEN",
            StreamType::Unknown => "UNKNOWN",
            StreamType::Video => "VIDEO",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrackType {
    Audio,
    Video,
}

impl TrackType {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackType::Audio => "AUDIO",
            TrackType::Video => "VIDEO",
        }
    }
}

/// Storage provider of a profile. `Local` is this project's addition: the default profile that
/// keeps artefacts on the node's filesystem; it never appears in the spec's `provider` enum, so the
/// API leaves `provider` out for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Provider {
    AmazonS3,
    AzureBlob,
    GoogleCloud,
    SftpStorage,
    Local,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::AmazonS3 => "AMAZON_S3",
            Provider::AzureBlob => "AZURE_BLOB",
            Provider::GoogleCloud => "GOOGLE_CLOUD",
            Provider::SftpStorage => "SFTP_STORAGE",
            Provider::Local => "LOCAL",
        }
    }
}

/// The spec's `Error {code, message, occurred}` as the engine records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    pub occurred: DateTime<Utc>,
}

impl ErrorInfo {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            occurred: Utc::now(),
        }
    }
}

/// Where an artefact lives on the node before (and, until deleted, after) its upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFileRecord {
    pub location: Option<String>,
    pub created: Option<DateTime<Utc>>,
    pub deleted: Option<DateTime<Utc>>,
    pub error: Option<ErrorInfo>,
}

/// Where an artefact lives in the application's storage profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Object key within the profile (before its key prefix), to sign download URLs with.
    #[serde(default)]
    pub key: Option<String>,
    pub location: Option<String>,
    pub size: Option<u64>,
    pub uploaded: Option<DateTime<Utc>>,
    pub error: Option<ErrorInfo>,
    /// Stored in the application's backup store (its primary kept failing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackRecord {
    pub id: String,
    pub kind: TrackType,
    pub started: Option<DateTime<Utc>>,
    pub stopped: Option<DateTime<Utc>>,
    pub local: LocalFileRecord,
    pub object: ObjectRecord,
    /// Video: degrees to turn the picture clockwise to show it upright, as the publisher last
    /// signalled it (RTP video orientation; a phone held upright: 90). `None`: never signalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub id: String,
    pub user_id: String,
    pub kind: StreamType,
    pub state: StreamState,
    pub started: Option<DateTime<Utc>>,
    pub stopped: Option<DateTime<Utc>>,
    pub tracks: Vec<TrackRecord>,
    /// The publisher's declared role (`role=agent|customer` on publish or in its token): the
    /// stereo audio's channel. `None` when it declared none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ParticipantRole>,
    /// The stream's live plain-RTP session, so a restart re-binds its ports and a sender that
    /// kept sending is recorded again without a new offer. `None` for WHIP and once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp_session: Option<RtpSessionRecord>,
    /// Times its session was connected and silent (a hold, a mute): the gaps in its tracks,
    /// for the review timeline. `to` is `None` while the silence lasts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silences: Vec<SilenceSpan>,
}

/// A span a connected publisher sent nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceSpan {
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
}

impl TrackRecord {
    /// A track as it begins: nothing recorded, nothing stored yet.
    pub fn new(id: impl Into<String>, kind: TrackType) -> Self {
        Self {
            id: id.into(),
            kind,
            started: None,
            stopped: None,
            local: LocalFileRecord::default(),
            object: ObjectRecord::default(),
            rotation: None,
        }
    }
}

impl StreamRecord {
    /// A stream as it begins: recording, no track and no session yet.
    pub fn new(id: impl Into<String>, user_id: impl Into<String>, kind: StreamType) -> Self {
        Self {
            id: id.into(),
            user_id: user_id.into(),
            kind,
            state: StreamState::Recording,
            started: None,
            stopped: None,
            tracks: Vec::new(),
            role: None,
            rtp_session: None,
            silences: Vec::new(),
        }
    }
}

/// The chat transcript artefact of an instance: made with its first line, so a stopped instance
/// never looks as if it had no chat while its transcript waits out the settle time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptArtefact {
    pub id: String,
    /// Where the transcript is stored; before its first upload, where it will be (the primary
    /// store's location of its key: the spec makes `location` required).
    pub location: String,
    pub created: DateTime<Utc>,
    /// Not stored yet (a record written before this field existed was made by its upload).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// When it was last stored (`None` in records written before this field existed, whose
    /// `created` is their upload's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<DateTime<Utc>>,
    /// Lines in the stored copy (0 before the first upload).
    pub num_entries: u64,
    /// Stored in the application's backup store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
}

impl TranscriptArtefact {
    /// A transcript whose first line came at `now`, to be stored at `location`.
    pub fn new(now: DateTime<Utc>, location: String) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            location,
            created: now,
            pending: true,
            uploaded: None,
            num_entries: 0,
            backup: false,
        }
    }
}

/// One co-browse session seen by an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CobrowseSessionRecord {
    pub num_events: u64,
    pub location: Option<String>,
    pub uploaded: Option<DateTime<Utc>>,
    /// Stored in the application's backup store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
}

/// One recorder instance: one start..stop of one conversation. This is the durable record; every
/// field the API shows comes from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub schema_version: u32,
    pub instance_id: String,
    pub recorder_id: String,
    pub organization_id: String,
    pub application_id: String,
    pub conversation_id: String,
    pub conference_id: String,
    pub audio: bool,
    pub video: bool,
    pub state: InstanceState,
    pub created: DateTime<Utc>,
    pub started: Option<DateTime<Utc>>,
    pub stopped: Option<DateTime<Utc>>,
    pub recovered: Option<DateTime<Utc>>,
    pub error: Option<ErrorInfo>,
    pub provider: Provider,
    pub storage_url: String,
    pub streams: Vec<StreamRecord>,
    pub transcript: Option<TranscriptArtefact>,
    pub num_transcript_entries: u64,
    pub cobrowse_sessions: BTreeMap<String, CobrowseSessionRecord>,
    /// Every state the instance went through, with when: the audit trail a reviewer asks for.
    pub history: Vec<(InstanceState, DateTime<Utc>)>,
    /// Set when a stop began finalizing the files. A live instance that has it after a restart
    /// was being stopped when the process ended: boot finishes that stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_requested: Option<DateTime<Utc>>,
    /// When recording was paused and resumed (a card payment, say), oldest first; the last one
    /// is open while the instance is paused. Nothing is recorded inside an interval: media is
    /// dropped at ingest (the files keep the span as a gap), and chat and co-browse follow the
    /// application's `pause_capture`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pauses: Vec<PauseInterval>,
    /// Chat lines and co-browse events discarded because they came while paused (an
    /// application with `pause_capture = "drop"`).
    #[serde(default)]
    pub num_discarded_while_paused: u64,
    /// Why a stop that no client asked for happened ([`STOP_REASON_MAX_DURATION`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// An erasure was asked for (GDPR): every artefact is being deleted, or is (`erased`); what
    /// stays is this tombstone — ids, states and times, never the media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure: Option<ErasureRecord>,
}

/// The erasure of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureRecord {
    pub requested: DateTime<Utc>,
    /// When every artefact was gone; `None` while the erasure runs.
    pub erased: Option<DateTime<Utc>>,
}

/// The stop reason of an instance that reached its maximum duration
/// (`limits.max_instance_duration_secs`) and stopped by itself.
pub const STOP_REASON_MAX_DURATION: &str = "MAX_DURATION_REACHED";

/// One pause of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseInterval {
    pub paused: DateTime<Utc>,
    /// `None` while the instance is still paused.
    pub resumed: Option<DateTime<Utc>>,
}

impl InstanceRecord {
    /// Makes the instance a tombstone: every place an artefact was (local files, objects,
    /// the transcript, co-browse sessions) forgotten; ids, states and times kept.
    pub fn erase(&mut self, now: DateTime<Utc>) {
        for stream in &mut self.streams {
            stream.rtp_session = None;
            for track in &mut stream.tracks {
                track.local = LocalFileRecord::default();
                track.object = ObjectRecord::default();
            }
        }
        self.transcript = None;
        self.num_transcript_entries = 0;
        self.cobrowse_sessions.clear();
        let requested = self.erasure.map_or(now, |e| e.requested);
        self.erasure = Some(ErasureRecord {
            requested,
            erased: Some(now),
        });
    }

    /// Whether recording is paused now (the last pause is open).
    pub fn is_paused(&self) -> bool {
        self.pauses.last().is_some_and(|p| p.resumed.is_none())
    }

    /// Pauses (`true`) or resumes (`false`) at `now`; `false` when that changes nothing (already
    /// so). A terminal instance is neither paused nor resumed.
    pub fn set_paused(&mut self, paused: bool, now: DateTime<Utc>) -> bool {
        if self.state.is_terminal() || paused == self.is_paused() {
            return false;
        }
        if paused {
            self.pauses.push(PauseInterval {
                paused: now,
                resumed: None,
            });
        } else if let Some(open) = self.pauses.last_mut() {
            open.resumed = Some(now.max(open.paused));
        }
        true
    }

    /// Applies a transition of the state machine, recording when it happened.
    pub fn transition(&mut self, next: InstanceState, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        if !self.state.can_transition_to(next) {
            return Err(IllegalTransition {
                from: self.state,
                to: next,
            });
        }
        self.state = next;
        self.history.push((next, now));
        match next {
            InstanceState::Active => {
                if self.started.is_none() {
                    self.started = Some(now);
                }
            }
            InstanceState::Stopped | InstanceState::Failed | InstanceState::Aborted => {
                self.stopped = Some(now);
                // An instance that ends paused: its last pause ends with it.
                if let Some(open) = self.pauses.last_mut().filter(|p| p.resumed.is_none()) {
                    open.resumed = Some(now.max(open.paused));
                }
            }
            InstanceState::Initialised | InstanceState::PendingRecovery => {}
        }
        Ok(())
    }

    /// Object-key prefix of every artefact of this instance:
    /// `{organizationId}/{applicationId}/{conversationId}/{recorderId}/{instanceId}`.
    pub fn key_prefix(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.organization_id, self.application_id, self.conversation_id, self.recorder_id, self.instance_id
        )
    }

    pub fn transcript_key(&self) -> String {
        format!("{}/chat/transcript.json", self.key_prefix())
    }

    pub fn cobrowse_key(&self, session_id: &str) -> String {
        format!("{}/cobrowse/{}/events.json", self.key_prefix(), session_id)
    }

    /// `recording.json`: the instance as the API shows it, written after every other artefact.
    pub fn manifest_key(&self) -> String {
        format!("{}/recording.json", self.key_prefix())
    }

    /// `streams/{streamId}/{trackId}.{extension}`, the extension being the local file's.
    pub fn track_key(&self, stream_id: &str, track_id: &str, extension: &str) -> String {
        format!("{}/streams/{}/{}.{}", self.key_prefix(), stream_id, track_id, extension)
    }

    pub fn track_mut(&mut self, stream_id: &str, track_id: &str) -> Option<&mut TrackRecord> {
        self.streams
            .iter_mut()
            .find(|s| s.id == stream_id)?
            .tracks
            .iter_mut()
            .find(|t| t.id == track_id)
    }

    /// How long the instance recorded: from start (or creation) to stop (or now while live).
    pub fn duration(&self, now: DateTime<Utc>) -> chrono::Duration {
        let from = self.started.unwrap_or(self.created);
        let to = self.stopped.unwrap_or(now);
        (to - from).max(chrono::Duration::zero())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition from {from} to {to}")]
pub struct IllegalTransition {
    pub from: InstanceState,
    pub to: InstanceState,
}

/// One chat line as posted by a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatEntry {
    pub time_stamp: DateTime<Utc>,
    pub transcript: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_display_name: Option<String>,
    pub user_id: String,
}

/// One co-browse event as posted by a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CobrowseEvent {
    pub payload: String,
    pub sequence_id: i32,
    pub session_id: String,
    pub timestamp: i64,
}

/// Identifies which tenant asks: every engine query is scoped by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrgId(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> InstanceRecord {
        InstanceRecord {
            schema_version: RECORD_SCHEMA_VERSION,
            instance_id: "i".into(),
            recorder_id: "r".into(),
            organization_id: "o".into(),
            application_id: "a".into(),
            conversation_id: "c".into(),
            conference_id: "f".into(),
            audio: true,
            video: true,
            state: InstanceState::Initialised,
            created: Utc::now(),
            started: None,
            stopped: None,
            recovered: None,
            error: None,
            provider: Provider::Local,
            storage_url: String::new(),
            streams: vec![],
            transcript: None,
            num_transcript_entries: 0,
            cobrowse_sessions: BTreeMap::new(),
            history: vec![],
            stop_requested: None,
            pauses: Vec::new(),
            num_discarded_while_paused: 0,
            stop_reason: None,
            erasure: None,
        }
    }

    #[test]
    fn every_pair_of_states_is_legal_exactly_as_the_state_machine_says() {
        use InstanceState::*;
        let legal: &[(InstanceState, InstanceState)] = &[
            (Initialised, Active),
            (Initialised, Stopped),
            (Initialised, Failed),
            (Initialised, PendingRecovery),
            (Active, Stopped),
            (Active, Failed),
            (Active, PendingRecovery),
            (PendingRecovery, Active),
            (PendingRecovery, Stopped),
            (PendingRecovery, Failed),
            (PendingRecovery, Aborted),
        ];
        let mut num_checked = 0;
        for from in InstanceState::ALL {
            for to in InstanceState::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.can_transition_to(to), expected, "{from} -> {to}");
                let mut rec = record();
                rec.state = from;
                let result = rec.transition(to, Utc::now());
                assert_eq!(result.is_ok(), expected, "{from} -> {to}");
                if expected {
                    assert_eq!(rec.state, to);
                    assert_eq!(rec.history.last().map(|h| h.0), Some(to));
                } else {
                    assert_eq!(rec.state, from, "an illegal transition leaves the state alone");
                    assert!(rec.history.is_empty());
                }
                num_checked += 1;
            }
        }
        assert_eq!(num_checked, 36);
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in InstanceState::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(
                InstanceState::ALL.iter().all(|to| !from.can_transition_to(*to)),
                "{from}"
            );
        }
    }

    #[test]
    fn timestamps_follow_transitions() {
        let mut rec = record();
        let t1 = Utc::now();
        rec.transition(InstanceState::Active, t1).unwrap();
        assert_eq!(rec.started, Some(t1));
        rec.transition(InstanceState::PendingRecovery, t1).unwrap();
        let t2 = t1 + chrono::Duration::seconds(3);
        rec.transition(InstanceState::Active, t2).unwrap();
        assert_eq!(rec.started, Some(t1), "recovery keeps the first start");
        let t3 = t2 + chrono::Duration::seconds(5);
        rec.transition(InstanceState::Stopped, t3).unwrap();
        assert_eq!(rec.stopped, Some(t3));
        assert_eq!(rec.duration(Utc::now()), chrono::Duration::seconds(8));
    }

    #[test]
    fn path_components_are_the_ids_and_never_collide_or_climb() {
        for id in ["conv-1", "a.b", "a_b", "a:b", "a@b", "a+b", "a=b", "a~b", "x..y"] {
            assert_eq!(path_component(id), id);
        }
        // The old mapping sent all of these to "a_b".
        let ids = ["a_b", "a.b", "a:b", "a@b", "a+b", "a=b", "a~b"];
        let set: std::collections::HashSet<_> = ids.iter().map(|i| path_component(i)).collect();
        assert_eq!(set.len(), ids.len());
        for bad in ["..", ".", "../etc", "a/b", "", "%2E%2E"] {
            let c = path_component(bad);
            assert!(
                !c.contains('/') && c != ".." && c != "." && !c.is_empty(),
                "{bad:?} -> {c:?}"
            );
            assert!(!is_valid_id(bad) || c == bad);
        }
        assert_ne!(path_component(".."), path_component("%2E%2E"));
        assert_ne!(path_component(""), path_component("%"));
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let rec = record();
        assert_eq!(rec.transcript_key(), "o/a/c/r/i/chat/transcript.json");
        assert_eq!(rec.cobrowse_key("s1"), "o/a/c/r/i/cobrowse/s1/events.json");
        assert_eq!(rec.manifest_key(), "o/a/c/r/i/recording.json");
        assert_eq!(rec.track_key("cam-1", "v1", "webm"), "o/a/c/r/i/streams/cam-1/v1.webm");
    }
}
