//! What the engine is configured with, and the one error type of its boundary.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::domain::InstanceRecord;
use crate::media::plain_rtp::PortAllocator;
use crate::media::receive::ReceivePool;
use crate::media::receiver::ReceiverConfig;
use crate::media::writer::WriterConfig;
use crate::storage::{StorageBackend, StorageError};
use crate::store::StoreError;
use crate::work::WorkGroup;

/// One application of one organization: where its artefacts are stored, and how it wants them
/// kept.
pub struct ApplicationProfile {
    pub organization_id: String,
    pub application_id: String,
    pub backend: Arc<dyn StorageBackend>,
    pub policy: ApplicationPolicy,
}

/// What an application decides about its recordings (its compliance settings).
#[derive(Debug, Clone, Default)]
pub struct ApplicationPolicy {
    /// Chat lines and co-browse events that arrive while the instance is paused.
    pub pause_capture: PauseCapture,
    /// An instance live this long (from its start) stops by itself, with the stop reason
    /// `MAX_DURATION_REACHED`; `None`: no limit.
    pub max_instance_duration: Option<std::time::Duration>,
    /// How long before that the instance warns (a log line and an `instance.duration_warning`
    /// event).
    pub duration_warning: std::time::Duration,
    /// Where the application's events go; `None`: nowhere (they are discarded).
    pub webhook: Option<Webhook>,
    /// Artefacts encrypted to the customer's key before they leave the node; `None`: stored as
    /// they are.
    pub encryption: Option<Arc<crate::storage::encryption::Encryption>>,
    /// Where an artefact goes when the primary store keeps failing.
    pub backup: Option<BackupStore>,
}

/// The backup store of an application: an artefact whose upload has kept failing for `after`
/// goes there instead (the record and the API say which store holds it).
#[derive(Clone)]
pub struct BackupStore {
    pub backend: Arc<dyn StorageBackend>,
    pub after: Duration,
}

impl std::fmt::Debug for BackupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BackupStore({}, after {:?})",
            self.backend.provider().as_str(),
            self.after
        )
    }
}

impl ApplicationProfile {
    /// Whether an artefact is stored encrypted: every one when the application encrypts, but
    /// the manifest (`recording.json`) only when it asks for that too.
    pub fn encrypts(&self, artefact: &crate::store::ArtefactKind) -> bool {
        self.policy
            .encryption
            .as_ref()
            .is_some_and(|e| *artefact != crate::store::ArtefactKind::Manifest || e.encrypt_manifest)
    }

    /// The object key an artefact whose plain key is `key` is stored under (`<key>.age` when
    /// encrypted).
    pub fn stored_key(&self, key: &str, artefact: &crate::store::ArtefactKind) -> String {
        if self.encrypts(artefact) {
            format!("{key}{}", crate::storage::encryption::SUFFIX)
        } else {
            key.to_string()
        }
    }

    /// The store an artefact is in: the backup one when `backup`.
    pub fn store_of(&self, backup: bool) -> &Arc<dyn StorageBackend> {
        match (&self.policy.backup, backup) {
            (Some(store), true) => &store.backend,
            _ => &self.backend,
        }
    }
}

/// An application's webhook: events are POSTed to `url` as JSON, signed with `secret`.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub secret: crate::storage::Secret,
}

/// How events are delivered to webhooks (every application's).
#[derive(Debug, Clone, Copy)]
pub struct WebhookDelivery {
    /// First retry delay of a failed delivery; doubles per attempt up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long a receiver may take to answer.
    pub timeout: Duration,
    /// How often an idle notifier looks for new events.
    pub poll_interval: Duration,
}

impl Default for WebhookDelivery {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// What happens to chat lines and co-browse events sent while recording is paused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PauseCapture {
    /// Kept like any other (the pause covers the media).
    #[default]
    Keep,
    /// Acknowledged and discarded (counted on the instance): a card number typed in the chat
    /// during a payment is not kept either.
    Drop,
}

pub struct EngineConfig {
    /// This node's id, the `recorderId` of every instance it owns; stable across restarts.
    pub recorder_id: String,
    /// Keyed by (organizationId, applicationId).
    pub applications: HashMap<(String, String), Arc<ApplicationProfile>>,
    /// Uploads running at once per storage profile.
    pub upload_concurrency: usize,
    /// First retry delay of a failed upload; doubles per attempt up to `upload_retry_max`.
    pub upload_retry_base: Duration,
    pub upload_retry_max: Duration,
    /// Delete a local artefact file once its upload is verified.
    pub delete_local_after_upload: bool,
    /// A queued transcript or co-browse session waits this long before it is rendered.
    pub render_settle: Duration,
    /// Renders an instance as `recording.json`. The front passes the API's own
    /// `RecordingDataMessage` rendering, so the manifest has exactly the API's shape while the
    /// engine stays free of HTTP types.
    pub render_manifest: ManifestRenderer,
    pub media: Arc<MediaConfig>,
    pub composition: CompositionConfig,
    pub recovery: RecoveryConfig,
    pub limits: TenantLimits,
    /// How often each storage profile's reachability is checked in the background for `/ready`
    /// (which only reads the last result: a probe opens no connection).
    pub ready_check_interval: Duration,
    pub webhooks: WebhookDelivery,
    /// Cluster mode: where the instances other nodes recorded are known, so a composition
    /// covers the whole conversation (`None`: a single node).
    pub peers: Option<Arc<dyn PeerInstances>>,
}

/// What the other nodes of a cluster share with the engine: the instances of a conversation
/// they recorded, as their owners last wrote them (the cluster's catalogue; their tracks are
/// read from object storage), and the lease that lets one node at a time compose a
/// conversation.
pub trait PeerInstances: Send + Sync {
    fn conversation_instances(
        &self,
        organization_id: &str,
        conversation_id: &str,
    ) -> futures_util::future::BoxFuture<'static, Result<Vec<InstanceRecord>, String>>;

    /// Takes (or keeps) the cluster-wide lease on composing this application's conversation.
    /// A composition runs only under it, from its claim until its MP4 is uploaded (or it
    /// failed), so two nodes never compose one conversation at once nor upload over each
    /// other: each run covers every instance ended when it starts, and the last upload is the
    /// fullest. `Err`: the cluster cannot be asked (the composition waits, queued).
    fn take_composition_lease(
        &self,
        organization_id: &str,
        application_id: &str,
        conversation_id: &str,
    ) -> futures_util::future::BoxFuture<'static, Result<CompositionLease, String>>;

    /// Gives the lease back if this node holds it.
    fn release_composition_lease(
        &self,
        organization_id: &str,
        application_id: &str,
        conversation_id: &str,
    ) -> futures_util::future::BoxFuture<'static, Result<(), String>>;
}

/// The answer of [`PeerInstances::take_composition_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompositionLease {
    /// This node holds it.
    Held,
    /// Another node, alive, holds it (its composition or its upload is under way).
    HeldBy(String),
}

/// Bounds that keep one tenant from starving the others and keep what the node holds from
/// growing without limit. A command beyond one is refused with [`EngineError::Limit`], which
/// names the limit.
#[derive(Debug, Clone, Copy)]
pub struct TenantLimits {
    /// Live (`INITIALISED`, `ACTIVE`, `PENDING_RECOVERY`) instances of one organization.
    pub max_live_instances_per_organization: usize,
    /// Streams (published user + type) of one instance, over its whole life.
    pub max_streams_per_instance: usize,
    /// Plain-RTP sessions (each holding UDP ports) open at once for one organization.
    pub max_rtp_sessions_per_organization: usize,
    /// WHIP sessions (peer connections) open at once for one organization.
    pub max_whip_sessions_per_organization: usize,
    /// Chat transcript lines of one instance, after stop too.
    pub max_transcript_entries_per_instance: u64,
    /// Co-browse events of one instance (all its sessions), after stop too.
    pub max_cobrowse_events_per_instance: u64,
    /// Co-browse sessions of one instance.
    pub max_cobrowse_sessions_per_instance: usize,
    /// Storage verifications (each writes, reads and deletes an object) per organization per
    /// minute.
    pub max_verify_per_minute: u32,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            max_live_instances_per_organization: 500,
            max_streams_per_instance: 32,
            max_rtp_sessions_per_organization: 1000,
            max_whip_sessions_per_organization: 500,
            max_transcript_entries_per_instance: 100_000,
            max_cobrowse_events_per_instance: 100_000,
            max_cobrowse_sessions_per_instance: 100,
            max_verify_per_minute: 10,
        }
    }
}

/// Composition of a conversation into one MP4 when an instance of it stops.
#[derive(Debug, Clone)]
pub struct CompositionConfig {
    pub enabled: bool,
    /// Compositions running at once, each on its own blocking thread. A composition takes a
    /// core or more; the default 1 leaves the others to live recording.
    pub concurrency: usize,
    pub output: crate::media::compose::ComposeConfig,
    /// The conversation's stereo audio (agents left, customers right) made with each
    /// composition; `None` makes none.
    pub stereo: Option<crate::media::stereo::StereoFormat>,
}

impl Default for CompositionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 1,
            output: Default::default(),
            stereo: Some(crate::media::stereo::StereoFormat::Opus),
        }
    }
}

/// How instances come back after a crash.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryConfig {
    /// An instance `PENDING_RECOVERY` after boot whose media has not resumed within this time is
    /// `ABORTED`, and what it recorded before the crash is finalized and uploaded.
    pub window: Duration,
    /// A stream whose writer fails more than `max_restarts` times within `restart_window` is
    /// `FAILED` instead of restarted again.
    pub max_restarts: u32,
    pub restart_window: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            max_restarts: 3,
            restart_window: Duration::from_secs(60),
        }
    }
}

pub type ManifestRenderer = Arc<dyn Fn(&InstanceRecord) -> Vec<u8> + Send + Sync>;

/// A renderer for tests and tools without the HTTP front: the engine's record as JSON.
pub fn plain_manifest_renderer() -> ManifestRenderer {
    Arc::new(|record| serde_json::to_vec_pretty(record).expect("records are plain data and always serialize"))
}

/// How media ingest and recording run.
pub struct MediaConfig {
    /// Track files live under `<media_dir>/<instanceId>/<streamId>/` until uploaded.
    pub media_dir: PathBuf,
    /// UDP ports for plain RTP (and the address they bind).
    pub ports: PortAllocator,
    /// The threads that read every plain-RTP socket.
    pub receive: ReceivePool,
    /// What this node takes on: live sessions and compositions against its budget.
    pub capacity: Arc<crate::capacity::Capacity>,
    /// The address written into SDP answers (what senders send to).
    pub announce_ip: IpAddr,
    /// UDP address WebRTC (WHIP) sessions bind, port 0 = ephemeral.
    pub webrtc_bind_ip: IpAddr,
    /// WHIP: whether mDNS candidates are gathered/resolved.
    pub mdns: bool,
    /// A publisher that comes back (same conference, userId and type) within this time continues
    /// its stream in a new segment; later it starts a new stream.
    pub reconnect_grace: Duration,
    /// Plain RTP: a session none of whose m-lines received anything for this long ends by itself.
    pub idle_timeout: Duration,
    pub receiver: ReceiverConfig,
    pub writer: WriterConfig,
    /// The engine's clock (real time on a node; moved by the test in the engine harness). Every
    /// actor's timers and time stamps read it; it lives here because every actor reaches this.
    pub clock: Clock,
    /// The engine's threads for blocking work, counted (see [`WorkGroup`]).
    pub work: WorkGroup,
}

impl MediaConfig {
    /// Defaults for tests: loopback, a small port range, files under `media_dir`.
    pub fn for_tests(media_dir: PathBuf) -> Self {
        let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
        Self {
            media_dir,
            ports: PortAllocator::new(lo, 46_000, 46_999),
            receive: ReceivePool::default(),
            capacity: Default::default(),
            announce_ip: lo,
            webrtc_bind_ip: lo,
            mdns: false,
            reconnect_grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(1800),
            receiver: ReceiverConfig::default(),
            writer: WriterConfig::default(),
            clock: Clock::system(),
            work: WorkGroup::default(),
        }
    }
}

impl EngineConfig {
    /// The engine's clock (see [`MediaConfig::clock`]).
    pub fn clock(&self) -> &Clock {
        &self.media.clock
    }

    pub fn application(&self, organization_id: &str, application_id: &str) -> Option<&Arc<ApplicationProfile>> {
        self.applications
            .get(&(organization_id.to_string(), application_id.to_string()))
    }
}

/// Errors the engine answers the front with. The front maps each kind to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{message}")]
    NotFound { message: String },
    #[error("{message}")]
    Conflict { message: String },
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// A tenant limit ([`TenantLimits`]) would be exceeded; `limit` is its configuration name.
    #[error("{message}")]
    Limit {
        limit: &'static str,
        message: String,
        /// When the limit frees up by itself (a rate), in seconds.
        retry_after_secs: Option<u64>,
    },
    /// This node is at its capacity (admission control, [`crate::capacity`]); `limit` is the
    /// configuration key that refused.
    #[error("{message}")]
    AtCapacity {
        limit: &'static str,
        message: String,
        retry_after_secs: u64,
    },
}

impl From<crate::capacity::Refused> for EngineError {
    fn from(refused: crate::capacity::Refused) -> Self {
        EngineError::AtCapacity {
            limit: refused.limit,
            message: refused.message,
            retry_after_secs: refused.retry_after_secs,
        }
    }
}

impl EngineError {
    pub fn not_found(message: impl Into<String>) -> Self {
        EngineError::NotFound {
            message: message.into(),
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        EngineError::Conflict {
            message: message.into(),
        }
    }
    pub fn limit(limit: &'static str, message: impl Into<String>) -> Self {
        EngineError::Limit {
            limit,
            message: message.into(),
            retry_after_secs: None,
        }
    }
}

impl From<actix::MailboxError> for EngineError {
    fn from(err: actix::MailboxError) -> Self {
        EngineError::Unavailable(err.to_string())
    }
}
