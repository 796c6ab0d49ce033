//! Configuration: `config.toml` compiled in as defaults, then the file named by
//! `RECORDER_CONFIG`, then `RECORDER_*` environment variables. Raw values are checked once here
//! and turned into [`Settings`]; an invalid value stops start-up with an error naming its key.
//!
//! Why one file (~900 lines of code): every setting, its default and the check of its raw value sit
//! together, so a key's name, its validation message and its documentation cannot drift apart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use recorder_actors::domain::is_valid_id;

const EMBEDDED_DEFAULTS: &str = include_str!("../config.toml");

/// The organization and application `RECORDER_API_KEY` is bound to.
pub const DEFAULT_ORGANIZATION: &str = "default";
pub const DEFAULT_APPLICATION: &str = "default";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    bind: String,
    data_dir: PathBuf,
    public_url: String,
    recorder_id: String,
    log: String,
    log_format: String,
    /// `RECORDER_API_KEY`: a plain key added for the default organization.
    #[serde(default)]
    api_key: Option<String>,
    limits: Limits,
    signing: RawSigning,
    uploads: Uploads,
    #[serde(default)]
    webhooks: Webhooks,
    ops: Ops,
    media: RawMedia,
    recovery: Recovery,
    #[serde(default)]
    composition: Composition,
    capacity: RawCapacity,
    cluster: RawCluster,
    #[serde(default)]
    organizations: BTreeMap<String, RawOrganization>,
    #[serde(default)]
    api_keys: BTreeMap<String, RawApiKey>,
}

/// `[cluster]`: many nodes as one service on NATS JetStream (see `crate::cluster`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    enabled: bool,
    nats_urls: Vec<String>,
    replicas: usize,
    name: String,
    heartbeat_ms: u64,
    node_ttl_secs: u64,
    request_timeout_ms: u64,
}

impl RawCluster {
    fn check(&self) -> Result<Option<crate::cluster::ClusterSettings>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        if self.nats_urls.is_empty() {
            return Err(invalid("cluster.nats_urls", "at least one NATS server URL is needed"));
        }
        for url in &self.nats_urls {
            if url.parse::<async_nats::ServerAddr>().is_err() {
                return Err(invalid("cluster.nats_urls", format!("not a NATS server URL: {url}")));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(invalid(
                "cluster.replicas",
                "must be between 1 and 5 (JetStream's limit)",
            ));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid("cluster.name", "letters, digits, '_' and '-' only"));
        }
        if !(100..=60_000).contains(&self.heartbeat_ms) {
            return Err(invalid("cluster.heartbeat_ms", "must be between 100 and 60000"));
        }
        if self.node_ttl_secs == 0 || self.node_ttl_secs * 1000 < self.heartbeat_ms * 2 {
            return Err(invalid("cluster.node_ttl_secs", "must cover at least two heartbeats"));
        }
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            return Err(invalid("cluster.request_timeout_ms", "must be between 100 and 60000"));
        }
        Ok(Some(crate::cluster::ClusterSettings {
            nats_urls: self.nats_urls.clone(),
            replicas: self.replicas,
            name: self.name.clone(),
            heartbeat: std::time::Duration::from_millis(self.heartbeat_ms),
            node_ttl: std::time::Duration::from_secs(self.node_ttl_secs),
            request_timeout: std::time::Duration::from_millis(self.request_timeout_ms),
        }))
    }
}

/// `[capacity]`: admission control (see `recorder_actors::capacity`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapacity {
    budget: u64,
    rtp_session: u64,
    whip_session: u64,
    composition: u64,
    max_cpu_percent: u64,
    retry_after_secs: u64,
}

impl RawCapacity {
    fn check(&self) -> Result<recorder_actors::capacity::CapacityConfig, ConfigError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let defaults = recorder_actors::capacity::CapacityConfig::for_cores(cores);
        if self.max_cpu_percent > 100 {
            return Err(invalid(
                "capacity.max_cpu_percent",
                "must be at most 100 (0: no CPU ceiling)",
            ));
        }
        for (key, value) in [
            ("capacity.rtp_session", self.rtp_session),
            ("capacity.whip_session", self.whip_session),
            ("capacity.composition", self.composition),
            ("capacity.retry_after_secs", self.retry_after_secs),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        Ok(recorder_actors::capacity::CapacityConfig {
            budget: if self.budget == 0 { defaults.budget } else { self.budget },
            rtp_session: self.rtp_session,
            whip_session: self.whip_session,
            composition: self.composition,
            max_cpu_percent: self.max_cpu_percent,
            retry_after_secs: self.retry_after_secs,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_id_len: usize,
    pub max_cobrowse_payload_bytes: usize,
    pub max_transcript_len: usize,
    pub max_transcript_entries: usize,
    pub max_live_instances_per_organization: usize,
    pub max_streams_per_instance: usize,
    pub max_rtp_sessions_per_organization: usize,
    pub max_whip_sessions_per_organization: usize,
    pub max_transcript_entries_per_instance: usize,
    pub max_cobrowse_events_per_instance: usize,
    pub max_cobrowse_sessions_per_instance: usize,
    pub max_verify_per_minute: usize,
    /// Seconds a client may take to send its request body once its headers are in (408 after).
    pub body_timeout_secs: usize,
    /// An instance live this long stops by itself (stop reason `MAX_DURATION_REACHED`); 0: no
    /// limit. Applications may set their own (`max_instance_duration_secs`).
    pub max_instance_duration_secs: u64,
    /// How long before its maximum duration an instance warns.
    pub duration_warning_secs: u64,
}

impl Limits {
    /// The engine's tenant bounds.
    pub fn tenant(&self) -> recorder_actors::engine::TenantLimits {
        recorder_actors::engine::TenantLimits {
            max_live_instances_per_organization: self.max_live_instances_per_organization,
            max_streams_per_instance: self.max_streams_per_instance,
            max_rtp_sessions_per_organization: self.max_rtp_sessions_per_organization,
            max_whip_sessions_per_organization: self.max_whip_sessions_per_organization,
            max_transcript_entries_per_instance: self.max_transcript_entries_per_instance as u64,
            max_cobrowse_events_per_instance: self.max_cobrowse_events_per_instance as u64,
            max_cobrowse_sessions_per_instance: self.max_cobrowse_sessions_per_instance,
            max_verify_per_minute: self.max_verify_per_minute.min(u32::MAX as usize) as u32,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    secret: String,
    url_ttl_secs: u64,
}

/// How events reach the applications' webhooks.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub timeout_secs: u64,
    pub poll_interval_ms: u64,
}

impl Default for Webhooks {
    fn default() -> Self {
        Self {
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            timeout_secs: 10,
            poll_interval_ms: 250,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uploads {
    pub concurrency: usize,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Delete a local artefact file once its upload is verified.
    #[serde(default = "yes")]
    pub delete_local_after_upload: bool,
    /// A queued transcript or co-browse session waits this long before it is rendered, so that
    /// the lines or events of a burst land in one upload.
    #[serde(default = "render_settle_ms")]
    pub render_settle_ms: u64,
}

fn render_settle_ms() -> u64 {
    500
}

/// `[composition]`: one MP4 per conversation, composed when an instance of it stops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Composition {
    pub enabled: bool,
    pub concurrency: usize,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub preset: String,
    /// Threads of each composition's video decoders and H.264 encoder; 0: one per core.
    pub threads: usize,
    /// The conversation's stereo audio beside the composition: `opus` (stereo.opus), `m4a`
    /// (stereo.m4a) or `off`.
    pub stereo: String,
}

impl Default for Composition {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 1,
            width: 1280,
            height: 720,
            fps: 25,
            preset: "veryfast".into(),
            threads: 0,
            stereo: "opus".into(),
        }
    }
}

impl Composition {
    /// The stereo format, `None` for `off` (checked at load).
    pub fn stereo_format(&self) -> Option<recorder_actors::media::stereo::StereoFormat> {
        self.stereo.parse().ok()
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !(1..=16).contains(&self.concurrency) {
            return Err(invalid("composition.concurrency", "must be between 1 and 16"));
        }
        if !(64..=3840).contains(&self.width) || !(64..=2160).contains(&self.height) {
            return Err(invalid(
                "composition.width",
                "width must be 64..=3840 and height 64..=2160",
            ));
        }
        if !(1..=60).contains(&self.fps) {
            return Err(invalid("composition.fps", "must be between 1 and 60"));
        }
        if self.preset.is_empty() || !self.preset.chars().all(|c| c.is_ascii_lowercase()) {
            return Err(invalid(
                "composition.preset",
                "must be an x264 preset name like veryfast",
            ));
        }
        if self.threads > 64 {
            return Err(invalid(
                "composition.threads",
                "must be between 0 (one per core) and 64",
            ));
        }
        if self.stereo != "off" && self.stereo_format().is_none() {
            return Err(invalid("composition.stereo", "must be opus, m4a or off"));
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

/// `[recovery]`: how instances come back after a crash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    /// An instance `PENDING_RECOVERY` after boot with no media within this many seconds is `ABORTED`.
    pub window_secs: u64,
    /// A stream restarted more than this many times within `restart_window_secs` is `FAILED`.
    pub max_restarts: u32,
    pub restart_window_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ops {
    pub public_metrics: bool,
    /// Seconds between background reachability checks of the storage profiles (`/ready`).
    pub ready_check_secs: u64,
    /// After SIGTERM, how long live instances may go on recording (the node draining: not
    /// ready, taking no new starts or publishes) before the node completes their files and
    /// exits; what is still live then resumes at the next start.
    pub drain_timeout_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    dir: String,
    bind_ip: String,
    announce_ip: String,
    rtp_port_min: u16,
    rtp_port_max: u16,
    reconnect_grace_secs: u64,
    idle_timeout_secs: u64,
    flush_interval_ms: u64,
    fsync_interval_ms: u64,
    writer_queue_frames: usize,
    reorder_window_ms: u64,
    jitter_buffer_max_ms: u64,
    mdns: bool,
    writer_threads: usize,
    receive_threads: usize,
}

/// Checked `[media]` settings.
#[derive(Debug, Clone)]
pub struct Media {
    pub dir: PathBuf,
    pub bind_ip: std::net::IpAddr,
    pub announce_ip: std::net::IpAddr,
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    pub reconnect_grace_secs: u64,
    pub idle_timeout_secs: u64,
    pub flush_interval_ms: u64,
    pub fsync_interval_ms: u64,
    pub writer_queue_frames: usize,
    pub reorder_window_ms: u64,
    /// The most the jitter buffer waits for a gap once the path showed later packets.
    pub jitter_buffer_max_ms: u64,
    pub mdns: bool,
    /// Threads that write every track file (0: one per core).
    pub writer_threads: usize,
    /// Threads that receive every plain-RTP socket (0: one per core).
    pub receive_threads: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrganization {
    #[serde(default)]
    applications: BTreeMap<String, RawApplication>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    #[serde(default)]
    allowed_origins: Vec<String>,
    storage: StorageConfig,
    /// What happens to chat lines and co-browse events sent while recording is paused.
    #[serde(default)]
    pause_capture: PauseCaptureSetting,
    /// This application's maximum instance duration (0: none); default `limits.`'s.
    #[serde(default)]
    max_instance_duration_secs: Option<u64>,
    /// Where the application's events go.
    #[serde(default)]
    webhook: Option<WebhookConfig>,
    /// Artefacts encrypted to the customer's public key.
    #[serde(default)]
    encryption: Option<EncryptionConfig>,
    /// Where an artefact goes when the primary store keeps failing.
    #[serde(default)]
    backup: Option<BackupConfig>,
}

/// An application's backup store: an artefact whose upload has kept failing for `after_secs`
/// goes to `storage` instead.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    #[serde(default = "default_backup_after_secs")]
    pub after_secs: u64,
    pub storage: StorageConfig,
}

fn default_backup_after_secs() -> u64 {
    300
}

/// An application's encryption: the customer's `age` public key (`age1...`); the recorder never
/// holds the private one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    pub public_key: String,
    /// Encrypt `recording.json` too (default: it stays readable; it lists, it holds no media).
    #[serde(default)]
    pub encrypt_manifest: bool,
}

/// An application's webhook: an http(s) URL and the secret its requests are signed with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: SecretRef,
}

/// `pause_capture` of an application: `"keep"` (default) or `"drop"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PauseCaptureSetting {
    #[default]
    Keep,
    Drop,
}

/// Where an application's artefacts go. Credentials are never written here: a profile names the
/// environment variable or file that holds each one ([`SecretRef`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "provider", deny_unknown_fields)]
pub enum StorageConfig {
    /// Files under `path` (default `<data_dir>/storage`).
    #[serde(rename = "LOCAL")]
    Local {
        #[serde(default)]
        path: String,
    },
    #[serde(rename = "AMAZON_S3")]
    S3(S3Config),
    #[serde(rename = "AZURE_BLOB")]
    Azure(AzureConfig),
    #[serde(rename = "GOOGLE_CLOUD")]
    Gcs(GcsConfig),
    #[serde(rename = "SFTP_STORAGE")]
    Sftp(SftpConfig),
}

/// Names where a credential is: `{ env = "VAR" }` or `{ file = "/run/secrets/x" }`. Read once at
/// start-up; the value itself never appears in the configuration, the API or the logs.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Custom endpoint of an S3-compatible store; empty for AWS.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub key_prefix: String,
    pub access_key_id: SecretRef,
    pub secret_access_key: SecretRef,
    #[serde(default)]
    pub session_token: Option<SecretRef>,
}

fn default_region() -> String {
    "us-east-1".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    pub container: String,
    /// Storage account; needed with `access_key` or `sas_token`, taken from a connection string.
    #[serde(default)]
    pub account: String,
    /// Blob endpoint including the account (Azurite: `http://127.0.0.1:10000/devstoreaccount1`);
    /// empty for `https://{account}.blob.core.windows.net`.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub key_prefix: String,
    /// Exactly one of the three credentials.
    #[serde(default)]
    pub access_key: Option<SecretRef>,
    #[serde(default)]
    pub sas_token: Option<SecretRef>,
    #[serde(default)]
    pub connection_string: Option<SecretRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcsConfig {
    pub bucket: String,
    /// Empty for Google; an emulator's base URL otherwise.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub key_prefix: String,
    /// Service-account key (JSON).
    #[serde(default)]
    pub service_account: Option<SecretRef>,
    /// No token on requests (emulators only); a service account, if given, still signs URLs.
    #[serde(default)]
    pub anonymous: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    pub host: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    pub username: String,
    /// OpenSSH private key of the user.
    pub private_key: SecretRef,
    #[serde(default)]
    pub private_key_passphrase: Option<SecretRef>,
    /// The server's public host key (`ssh-ed25519 AAAA...`): public, so it is written here; a
    /// server presenting another key is refused.
    pub host_key: String,
    /// Absolute directory on the server.
    pub root: String,
    #[serde(default)]
    pub key_prefix: String,
}

fn default_ssh_port() -> u16 {
    22
}

impl SecretRef {
    /// Reads the credential; `at` names the configuration key in errors.
    pub fn resolve(&self, at: &str) -> Result<recorder_actors::storage::Secret, ConfigError> {
        let value = match (&self.env, &self.file) {
            (Some(var), None) => {
                std::env::var(var).map_err(|_| invalid(at, format!("environment variable {var} is not set")))?
            }
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| invalid(at, format!("cannot read {}: {e}", path.display())))?,
            _ => return Err(invalid(at, "name exactly one of env = \"VAR\" or file = \"/path\"")),
        };
        // Files and variables often end in a newline that is not part of the credential.
        let value = value.trim_end_matches(['\n', '\r']).to_string();
        if value.is_empty() {
            return Err(invalid(at, "the credential is empty"));
        }
        Ok(recorder_actors::storage::Secret::new(value))
    }

    fn check(&self, at: &str) -> Result<(), ConfigError> {
        match (&self.env, &self.file) {
            (Some(var), None) if !var.is_empty() => Ok(()),
            (None, Some(path)) if !path.as_os_str().is_empty() => Ok(()),
            _ => Err(invalid(at, "name exactly one of env = \"VAR\" or file = \"/path\"")),
        }
    }
}

impl StorageConfig {
    /// Checks shape only (required values present, one credential each); credentials themselves
    /// are read when the backend is built.
    fn check(&self, at: &str) -> Result<(), ConfigError> {
        let need = |value: &str, key: &str| {
            if value.trim().is_empty() {
                Err(invalid(format!("{at}.{key}"), "must not be empty"))
            } else {
                Ok(())
            }
        };
        let endpoint = |value: &str| {
            if value.is_empty() {
                return Ok(());
            }
            match url::Url::parse(value) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(()),
                _ => Err(invalid(
                    format!("{at}.endpoint"),
                    format!("{value:?} is not an http(s) URL"),
                )),
            }
        };
        match self {
            StorageConfig::Local { .. } => Ok(()),
            StorageConfig::S3(c) => {
                need(&c.bucket, "bucket")?;
                need(&c.region, "region")?;
                endpoint(&c.endpoint)?;
                c.access_key_id.check(&format!("{at}.access_key_id"))?;
                c.secret_access_key.check(&format!("{at}.secret_access_key"))?;
                if let Some(token) = &c.session_token {
                    token.check(&format!("{at}.session_token"))?;
                }
                Ok(())
            }
            StorageConfig::Azure(c) => {
                need(&c.container, "container")?;
                endpoint(&c.endpoint)?;
                let given = [
                    ("access_key", &c.access_key),
                    ("sas_token", &c.sas_token),
                    ("connection_string", &c.connection_string),
                ];
                let named: Vec<_> = given.iter().filter(|(_, v)| v.is_some()).collect();
                if named.len() != 1 {
                    return Err(invalid(
                        at,
                        "name exactly one of access_key, sas_token or connection_string",
                    ));
                }
                let (name, secret) = named[0];
                secret
                    .as_ref()
                    .expect("filtered on is_some")
                    .check(&format!("{at}.{name}"))?;
                if c.connection_string.is_none() {
                    need(&c.account, "account")?;
                }
                Ok(())
            }
            StorageConfig::Gcs(c) => {
                need(&c.bucket, "bucket")?;
                endpoint(&c.endpoint)?;
                match &c.service_account {
                    Some(secret) => secret.check(&format!("{at}.service_account")),
                    None if c.anonymous => Ok(()),
                    None => Err(invalid(
                        format!("{at}.service_account"),
                        "required unless anonymous = true (emulators)",
                    )),
                }
            }
            StorageConfig::Sftp(c) => {
                need(&c.host, "host")?;
                need(&c.username, "username")?;
                need(&c.host_key, "host_key")?;
                if !c.root.starts_with('/') {
                    return Err(invalid(format!("{at}.root"), "must be an absolute path on the server"));
                }
                c.private_key.check(&format!("{at}.private_key"))?;
                if let Some(p) = &c.private_key_passphrase {
                    p.check(&format!("{at}.private_key_passphrase"))?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    hash: String,
    organization: String,
    #[serde(default = "all_applications")]
    applications: Vec<String>,
    #[serde(default)]
    scopes: Vec<Scope>,
    /// Plain RTP: whether this key's offers may leave out the sender's address (`c=`), so that
    /// the first RTP packet from anywhere latches a port. Only for senders whose address is not
    /// known in advance, on a trusted network.
    #[serde(default)]
    rtp_any_source: bool,
}

fn all_applications() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The Recorder API.
    Global,
    /// Ops endpoints of the key's own organization: its part of the debug tree, metrics.
    Admin,
    /// The node's operators: the whole debug tree, every organization's actors.
    Ops,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Application {
    pub organization_id: String,
    pub application_id: String,
    pub allowed_origins: Vec<String>,
    pub storage: StorageConfig,
    pub pause_capture: PauseCaptureSetting,
    /// 0: no limit.
    pub max_instance_duration_secs: u64,
    pub webhook: Option<WebhookConfig>,
    pub encryption: Option<EncryptionConfig>,
    pub backup: Option<BackupConfig>,
}

/// An API key as configured: only its SHA-256 is known.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
    pub organization_id: String,
    /// `None`: every application of the organization.
    pub applications: Option<Vec<String>>,
    pub scopes: Vec<Scope>,
    /// See `api_keys.<name>.rtp_any_source`.
    pub rtp_any_source: bool,
}

/// Checked configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    pub public_url: Option<url::Url>,
    pub recorder_id: Option<String>,
    pub log: String,
    pub log_format: LogFormat,
    pub plain_api_key: Option<String>,
    pub limits: Limits,
    pub signing_secret: Option<Vec<u8>>,
    pub url_ttl_secs: u64,
    pub uploads: Uploads,
    pub webhooks: Webhooks,
    pub ops: Ops,
    pub media: Media,
    pub composition: Composition,
    pub recovery: Recovery,
    /// Admission control: the node's budget and what each kind of work costs.
    pub capacity: recorder_actors::capacity::CapacityConfig,
    /// `None`: a single node (the default).
    pub cluster: Option<crate::cluster::ClusterSettings>,
    pub applications: Vec<Application>,
    pub api_keys: Vec<ApiKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Settings {
    /// Loads defaults, `RECORDER_CONFIG` and the environment of this process.
    pub fn load() -> Result<Settings, ConfigError> {
        let file = std::env::var("RECORDER_CONFIG").ok().filter(|p| !p.is_empty());
        if let Some(path) = &file {
            if !std::path::Path::new(path).is_file() {
                return Err(invalid("RECORDER_CONFIG", format!("no configuration file at {path}")));
            }
        }
        Self::from_figment(figment(file.as_deref()))
    }

    fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let raw: RawConfig = figment.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
        raw.check()
    }

    pub fn application(&self, organization_id: &str, application_id: &str) -> Option<&Application> {
        self.applications
            .iter()
            .find(|a| a.organization_id == organization_id && a.application_id == application_id)
    }
}

fn figment(file: Option<&str>) -> Figment {
    let mut figment = Figment::from(Toml::string(EMBEDDED_DEFAULTS));
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment.merge(Env::prefixed("RECORDER_").split("__").ignore(&["config"]))
}

impl RawConfig {
    fn check(self) -> Result<Settings, ConfigError> {
        let bind: SocketAddr = self.bind.parse().map_err(|e| {
            invalid(
                "bind",
                format!("{:?} is not an address like 127.0.0.1:8080 ({e})", self.bind),
            )
        })?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let public_url = match self.public_url.trim() {
            "" => None,
            text => {
                let url =
                    url::Url::parse(text).map_err(|e| invalid("public_url", format!("{text:?} is not a URL ({e})")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(invalid("public_url", "must be an http or https URL"));
                }
                Some(url)
            }
        };
        let recorder_id = match self.recorder_id.trim() {
            "" => None,
            id if is_valid_id(id) && id.len() <= 128 => Some(id.to_string()),
            id => {
                return Err(invalid(
                    "recorder_id",
                    format!("{id:?} is not a valid id (letters, digits, . _ - : @)"),
                ))
            }
        };
        let log_format = match self.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format",
                    format!("{other:?} is neither \"text\" nor \"json\""),
                ))
            }
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(invalid("log", format!("{:?} is not a log filter ({e})", self.log)));
        }
        let limits = self.limits;
        for (key, value) in [
            ("limits.max_body_bytes", limits.max_body_bytes),
            ("limits.max_id_len", limits.max_id_len),
            ("limits.max_cobrowse_payload_bytes", limits.max_cobrowse_payload_bytes),
            ("limits.max_transcript_len", limits.max_transcript_len),
            ("limits.max_transcript_entries", limits.max_transcript_entries),
            (
                "limits.max_live_instances_per_organization",
                limits.max_live_instances_per_organization,
            ),
            ("limits.max_streams_per_instance", limits.max_streams_per_instance),
            (
                "limits.max_rtp_sessions_per_organization",
                limits.max_rtp_sessions_per_organization,
            ),
            (
                "limits.max_whip_sessions_per_organization",
                limits.max_whip_sessions_per_organization,
            ),
            (
                "limits.max_transcript_entries_per_instance",
                limits.max_transcript_entries_per_instance,
            ),
            (
                "limits.max_cobrowse_events_per_instance",
                limits.max_cobrowse_events_per_instance,
            ),
            (
                "limits.max_cobrowse_sessions_per_instance",
                limits.max_cobrowse_sessions_per_instance,
            ),
            ("limits.max_verify_per_minute", limits.max_verify_per_minute),
            ("limits.body_timeout_secs", limits.body_timeout_secs),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if limits.max_id_len > 255 {
            // Ids are segments of object keys, and so file names in LOCAL and SFTP stores and in
            // the media directory, where a name has at most 255 bytes.
            return Err(invalid(
                "limits.max_id_len",
                "must be at most 255 (ids are file names in local and SFTP stores)",
            ));
        }
        let signing_secret = match self.signing.secret.as_str() {
            "" => None,
            s if s.len() < 16 => return Err(invalid("signing.secret", "must be at least 16 characters")),
            s => Some(s.as_bytes().to_vec()),
        };
        if self.ops.ready_check_secs == 0 || self.ops.ready_check_secs > 3600 {
            return Err(invalid("ops.ready_check_secs", "must be between 1 and 3600"));
        }
        if self.ops.drain_timeout_secs > 24 * 3600 {
            return Err(invalid("ops.drain_timeout_secs", "must be at most 86400 (a day)"));
        }
        if self.signing.url_ttl_secs == 0 || self.signing.url_ttl_secs > 7 * 24 * 3600 {
            return Err(invalid("signing.url_ttl_secs", "must be between 1 and 604800 (7 days)"));
        }
        let hooks = &self.webhooks;
        if hooks.retry_base_ms == 0 || hooks.retry_max_ms < hooks.retry_base_ms {
            return Err(invalid(
                "webhooks.retry_max_ms",
                "retry_base_ms must be greater than 0 and retry_max_ms at least retry_base_ms",
            ));
        }
        if hooks.timeout_secs == 0 || hooks.poll_interval_ms == 0 {
            return Err(invalid(
                "webhooks",
                "timeout_secs and poll_interval_ms must be greater than 0",
            ));
        }
        if self.uploads.render_settle_ms > 60_000 {
            return Err(invalid("uploads.render_settle_ms", "must be at most 60000"));
        }
        if self.uploads.concurrency == 0 || self.uploads.concurrency > 256 {
            return Err(invalid("uploads.concurrency", "must be between 1 and 256"));
        }
        if self.uploads.retry_base_ms == 0 || self.uploads.retry_max_ms < self.uploads.retry_base_ms {
            return Err(invalid(
                "uploads.retry_max_ms",
                "retry_base_ms must be > 0 and retry_max_ms >= retry_base_ms",
            ));
        }

        let media = self.media.check(&self.data_dir)?;
        if self.recovery.window_secs == 0 || self.recovery.window_secs > 86_400 {
            return Err(invalid("recovery.window_secs", "must be between 1 and 86400"));
        }
        if self.recovery.restart_window_secs == 0 {
            return Err(invalid("recovery.restart_window_secs", "must be greater than 0"));
        }

        let mut applications = Vec::new();
        for (org_id, org) in &self.organizations {
            if !is_valid_id(org_id) {
                return Err(invalid(
                    format!("organizations.{org_id}"),
                    "organization id must use letters, digits, . _ - : @",
                ));
            }
            for (app_id, app) in &org.applications {
                let key = format!("organizations.{org_id}.applications.{app_id}");
                if !is_valid_id(app_id) {
                    return Err(invalid(key, "application id must use letters, digits, . _ - : @"));
                }
                app.storage.check(&format!("{key}.storage"))?;
                if let Some(webhook) = &app.webhook {
                    let parsed = url::Url::parse(&webhook.url)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https"));
                    if parsed.is_none() {
                        return Err(invalid(format!("{key}.webhook.url"), "must be an http or https URL"));
                    }
                    webhook.secret.check(&format!("{key}.webhook.secret"))?;
                }
                if let Some(backup) = &app.backup {
                    backup.storage.check(&format!("{key}.backup.storage"))?;
                }
                if let Some(encryption) = &app.encryption {
                    recorder_actors::storage::encryption::Encryption::new(
                        std::slice::from_ref(&encryption.public_key),
                        encryption.encrypt_manifest,
                    )
                    .map_err(|e| invalid(format!("{key}.encryption.public_key"), e))?;
                }
                for origin in &app.allowed_origins {
                    if origin != "*" && url::Url::parse(origin).is_err() {
                        return Err(invalid(
                            format!("{key}.allowed_origins"),
                            format!("{origin:?} is neither \"*\" nor an origin like https://host"),
                        ));
                    }
                }
                applications.push(Application {
                    organization_id: org_id.clone(),
                    application_id: app_id.clone(),
                    allowed_origins: app
                        .allowed_origins
                        .iter()
                        .map(|o| o.trim_end_matches('/').to_string())
                        .collect(),
                    storage: app.storage.clone(),
                    pause_capture: app.pause_capture,
                    max_instance_duration_secs: app
                        .max_instance_duration_secs
                        .unwrap_or(limits.max_instance_duration_secs),
                    webhook: app.webhook.clone(),
                    encryption: app.encryption.clone(),
                    backup: app.backup.clone(),
                });
            }
        }

        let mut api_keys = Vec::new();
        for (name, key) in &self.api_keys {
            let at = format!("api_keys.{name}");
            let hex_hash = key
                .hash
                .strip_prefix("sha256:")
                .ok_or_else(|| invalid(format!("{at}.hash"), "must look like sha256:<64 hex digits>"))?;
            let sha256: [u8; 32] = hex::decode(hex_hash)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| invalid(format!("{at}.hash"), "must look like sha256:<64 hex digits>"))?;
            if !self.organizations.contains_key(&key.organization) {
                return Err(invalid(
                    format!("{at}.organization"),
                    format!("no organization {:?} is configured", key.organization),
                ));
            }
            let applications = if key.applications.iter().any(|a| a == "*") {
                None
            } else {
                Some(key.applications.clone())
            };
            api_keys.push(ApiKey {
                name: name.clone(),
                sha256,
                organization_id: key.organization.clone(),
                applications,
                scopes: key.scopes.clone(),
                rtp_any_source: key.rtp_any_source,
            });
        }

        let plain_api_key = self.api_key.filter(|k| !k.is_empty());
        if let Some(key) = &plain_api_key {
            if key.len() < 16 {
                return Err(invalid("RECORDER_API_KEY", "must be at least 16 characters"));
            }
            if !applications
                .iter()
                .any(|a| a.organization_id == DEFAULT_ORGANIZATION && a.application_id == DEFAULT_APPLICATION)
            {
                applications.push(Application {
                    organization_id: DEFAULT_ORGANIZATION.into(),
                    application_id: DEFAULT_APPLICATION.into(),
                    allowed_origins: vec!["*".into()],
                    storage: StorageConfig::Local { path: String::new() },
                    pause_capture: PauseCaptureSetting::Keep,
                    max_instance_duration_secs: limits.max_instance_duration_secs,
                    webhook: None,
                    encryption: None,
                    backup: None,
                });
            }
        }

        self.composition.check()?;
        let capacity = self.capacity.check()?;
        let cluster = self.cluster.check()?;
        Ok(Settings {
            bind,
            data_dir: self.data_dir,
            public_url,
            recorder_id,
            log: self.log,
            log_format,
            plain_api_key,
            limits,
            signing_secret,
            url_ttl_secs: self.signing.url_ttl_secs,
            uploads: self.uploads,
            webhooks: self.webhooks,
            ops: self.ops,
            media,
            composition: self.composition,
            recovery: self.recovery,
            capacity,
            cluster,
            applications,
            api_keys,
        })
    }
}

impl RawMedia {
    fn check(&self, data_dir: &std::path::Path) -> Result<Media, ConfigError> {
        let ip = |key: &str, text: &str| {
            text.parse::<std::net::IpAddr>()
                .map_err(|e| invalid(format!("media.{key}"), format!("{text:?} is not an IP address ({e})")))
        };
        let bind_ip = ip("bind_ip", &self.bind_ip)?;
        let announce_ip = match self.announce_ip.trim() {
            "" if bind_ip.is_unspecified() => {
                return Err(invalid(
                    "media.announce_ip",
                    "must be set when media.bind_ip is a wildcard",
                ))
            }
            "" => bind_ip,
            text => ip("announce_ip", text)?,
        };
        if self.rtp_port_min < 1024 || self.rtp_port_max < self.rtp_port_min.saturating_add(3) {
            return Err(invalid(
                "media.rtp_port_max",
                "rtp_port_min must be >= 1024 and the range must hold at least two port pairs",
            ));
        }
        for (key, value) in [
            ("media.idle_timeout_secs", self.idle_timeout_secs),
            ("media.flush_interval_ms", self.flush_interval_ms),
            ("media.fsync_interval_ms", self.fsync_interval_ms),
            ("media.reorder_window_ms", self.reorder_window_ms),
            ("media.writer_queue_frames", self.writer_queue_frames as u64),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.flush_interval_ms > 60_000 {
            return Err(invalid("media.flush_interval_ms", "must be at most 60000"));
        }
        if self.fsync_interval_ms > 600_000 {
            return Err(invalid("media.fsync_interval_ms", "must be at most 600000"));
        }
        if self.reorder_window_ms > 5_000 {
            return Err(invalid("media.reorder_window_ms", "must be at most 5000"));
        }
        if self.jitter_buffer_max_ms > 10_000 {
            return Err(invalid("media.jitter_buffer_max_ms", "must be at most 10000"));
        }
        if self.jitter_buffer_max_ms < self.reorder_window_ms {
            return Err(invalid(
                "media.jitter_buffer_max_ms",
                "must be at least media.reorder_window_ms",
            ));
        }
        for (key, value) in [
            ("media.writer_threads", self.writer_threads),
            ("media.receive_threads", self.receive_threads),
        ] {
            if value > 256 {
                return Err(invalid(key, "must be at most 256 (0: one per core)"));
            }
        }
        let dir = match self.dir.trim() {
            "" => data_dir.join("media"),
            path => PathBuf::from(path),
        };
        Ok(Media {
            dir,
            bind_ip,
            announce_ip,
            rtp_port_min: self.rtp_port_min,
            rtp_port_max: self.rtp_port_max,
            reconnect_grace_secs: self.reconnect_grace_secs,
            idle_timeout_secs: self.idle_timeout_secs,
            flush_interval_ms: self.flush_interval_ms,
            fsync_interval_ms: self.fsync_interval_ms,
            writer_queue_frames: self.writer_queue_frames,
            reorder_window_ms: self.reorder_window_ms,
            jitter_buffer_max_ms: self.jitter_buffer_max_ms,
            mdns: self.mdns,
            writer_threads: self.writer_threads,
            receive_threads: self.receive_threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> Result<Settings, ConfigError> {
        Settings::from_figment(Figment::from(Toml::string(EMBEDDED_DEFAULTS)).merge(Toml::string(extra)))
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let settings = load("").unwrap();
        assert_eq!(settings.bind.port(), 8080);
        assert!(settings.application("default", "default").is_some());
        assert!(settings.api_keys.is_empty());
        assert!(settings.composition.enabled);
        assert_eq!(
            (
                settings.composition.concurrency,
                settings.composition.width,
                settings.composition.fps
            ),
            (1, 1280, 25)
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        for (toml, key) in [
            ("bind = \"nowhere\"", "bind"),
            ("[limits]\nmax_body_bytes = 0", "limits.max_body_bytes"),
            ("[limits]\nmax_body_bytes = \"big\"", "max_body_bytes"),
            ("log_format = \"xml\"", "log_format"),
            ("[signing]\nurl_ttl_secs = 0", "signing.url_ttl_secs"),
            ("[api_keys.k]\nhash = \"md5:00\"\norganization = \"default\"", "api_keys.k.hash"),
            (
                "[api_keys.k]\nhash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\norganization = \"nope\"",
                "api_keys.k.organization",
            ),
            ("[organizations.o.applications.a.storage]\nprovider = \"FLOPPY\"", "provider"),
            ("surprise = 1", "surprise"),
            ("[media]\nbind_ip = \"nowhere\"", "media.bind_ip"),
            ("[media]\nrtp_port_min = 50000\nrtp_port_max = 50001", "media.rtp_port_max"),
            ("[media]\nbind_ip = \"0.0.0.0\"", "media.announce_ip"),
            ("[media]\nflush_interval_ms = 0", "media.flush_interval_ms"),
            ("[limits]\nmax_id_len = 256", "limits.max_id_len"),
            ("[media]\nfsync_interval_ms = 0", "media.fsync_interval_ms"),
            ("[composition]\nconcurrency = 0", "composition.concurrency"),
            ("[composition]\nfps = 0", "composition.fps"),
            ("[composition]\nthreads = 65", "composition.threads"),
            ("[composition]\nwidth = 10", "composition.width"),
            ("[composition]\npreset = \"very fast; rm\"", "composition.preset"),
            ("[composition]\nsurprise = 1", "surprise"),
            ("[recovery]\nwindow_secs = 0", "recovery.window_secs"),
            ("[recovery]\nrestart_window_secs = 0", "recovery.restart_window_secs"),
        ] {
            let err = load(toml).expect_err(toml).to_string();
            assert!(err.contains(key), "{toml:?} gave {err:?}, which does not name {key}");
        }
    }

    #[test]
    fn cloud_profiles_parse_and_name_their_credentials() {
        let settings = load(
            "[organizations.o.applications.s3.storage]\nprovider = \"AMAZON_S3\"\nbucket = \"b\"\n\
             endpoint = \"http://127.0.0.1:9000\"\npath_style = true\n\
             access_key_id = { env = \"AK\" }\nsecret_access_key = { file = \"/run/secrets/sk\" }\n\
             [organizations.o.applications.az.storage]\nprovider = \"AZURE_BLOB\"\ncontainer = \"c\"\n\
             connection_string = { env = \"AZ\" }\n\
             [organizations.o.applications.gcs.storage]\nprovider = \"GOOGLE_CLOUD\"\nbucket = \"b\"\nanonymous = true\n\
             [organizations.o.applications.ftp.storage]\nprovider = \"SFTP_STORAGE\"\nhost = \"h\"\nusername = \"u\"\n\
             private_key = { file = \"/k\" }\nhost_key = \"ssh-ed25519 AAAA\"\nroot = \"/srv\"",
        )
        .unwrap();
        match &settings.application("o", "s3").unwrap().storage {
            StorageConfig::S3(c) => {
                assert!(c.path_style);
                assert_eq!(c.region, "us-east-1");
                assert_eq!(c.access_key_id.env.as_deref(), Some("AK"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            settings.application("o", "az").unwrap().storage,
            StorageConfig::Azure(_)
        ));
        assert!(matches!(
            settings.application("o", "gcs").unwrap().storage,
            StorageConfig::Gcs(_)
        ));
        match &settings.application("o", "ftp").unwrap().storage {
            StorageConfig::Sftp(c) => assert_eq!(c.port, 22),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_storage_profiles_name_their_key() {
        let s3 = "[organizations.o.applications.a.storage]\nprovider = \"AMAZON_S3\"\n";
        for (toml, key) in [
            (format!("{s3}bucket = \"b\"\nsecret_access_key = {{ env = \"S\" }}"), "access_key_id"),
            (
                format!("{s3}bucket = \"\"\naccess_key_id = {{ env = \"A\" }}\nsecret_access_key = {{ env = \"S\" }}"),
                "storage.bucket",
            ),
            (
                format!("{s3}bucket = \"b\"\naccess_key_id = {{ env = \"A\", file = \"/f\" }}\nsecret_access_key = {{ env = \"S\" }}"),
                "storage.access_key_id",
            ),
            (
                format!("{s3}bucket = \"b\"\nendpoint = \"ftp://x\"\naccess_key_id = {{ env = \"A\" }}\nsecret_access_key = {{ env = \"S\" }}"),
                "storage.endpoint",
            ),
            (
                format!("{s3}bucket = \"b\"\nsecret = \"inline\"\naccess_key_id = {{ env = \"A\" }}\nsecret_access_key = {{ env = \"S\" }}"),
                "secret",
            ),
            (
                "[organizations.o.applications.a.storage]\nprovider = \"AZURE_BLOB\"\ncontainer = \"c\"\naccount = \"x\"".into(),
                "exactly one of access_key",
            ),
            (
                "[organizations.o.applications.a.storage]\nprovider = \"GOOGLE_CLOUD\"\nbucket = \"b\"".into(),
                "storage.service_account",
            ),
            (
                "[organizations.o.applications.a.storage]\nprovider = \"SFTP_STORAGE\"\nhost = \"h\"\nusername = \"u\"\n\
                 private_key = { env = \"K\" }\nhost_key = \"ssh-ed25519 A\"\nroot = \"relative\"".into(),
                "storage.root",
            ),
        ] {
            let err = load(&toml).expect_err(&toml).to_string();
            assert!(err.contains(key), "{toml:?} gave {err:?}, which does not name {key}");
        }
    }

    #[test]
    fn secrets_come_from_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        let from_file = SecretRef {
            env: None,
            file: Some(path),
        };
        assert_eq!(from_file.resolve("k").unwrap().expose(), "from-file");
        std::env::set_var("RTC_CONFIG_TEST_SECRET", "from-env");
        let from_env = SecretRef {
            env: Some("RTC_CONFIG_TEST_SECRET".into()),
            file: None,
        };
        assert_eq!(from_env.resolve("k").unwrap().expose(), "from-env");
        let unset = SecretRef {
            env: Some("RTC_CONFIG_TEST_UNSET".into()),
            file: None,
        };
        let err = unset.resolve("apps.a.storage.access_key_id").unwrap_err().to_string();
        assert!(
            err.contains("apps.a.storage.access_key_id") && err.contains("RTC_CONFIG_TEST_UNSET"),
            "{err}"
        );
    }

    #[test]
    fn keys_are_bound_to_their_organization_and_applications() {
        let settings = load(
            "[organizations.acme.applications.web.storage]\nprovider = \"LOCAL\"\n\
             [api_keys.k]\nhash = \"sha256:0101010101010101010101010101010101010101010101010101010101010101\"\n\
             organization = \"acme\"\napplications = [\"web\"]\nscopes = [\"global\"]",
        )
        .unwrap();
        let key = &settings.api_keys[0];
        assert_eq!(key.organization_id, "acme");
        assert_eq!(key.applications.as_deref(), Some(&["web".to_string()][..]));
        assert_eq!(key.scopes, vec![Scope::Global]);
        assert_eq!(key.sha256, [1u8; 32]);
    }
}
