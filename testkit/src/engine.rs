//! [`EngineHarness`]: the engine's actor tree run in process — between a unit test and the whole
//! binary. The real Registry, recorders, streams, uploader and compositor on a state store and a
//! local storage profile in a temporary directory, with real UDP ingest on loopback, on a
//! [`Clock`] the test moves: recovery windows, reconnect grace, restart budgets, upload retries
//! and flush intervals pass when the test says so, not by sleeping.
//!
//! The engine runs in an actix system on a thread of its own, so [`EngineHarness::restart`] can
//! end it (every actor dropped, sockets closed, files left as they are) and boot a new one on the
//! same store and files, as the process does after a crash. Tests talk to it through the same
//! messages the HTTP front sends, from any async runtime.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use recorder_actors::actors::Registry;
use recorder_actors::clock::{Clock, ClockControl};
use recorder_actors::domain::{IdError, InstanceRecord, StreamType};
use recorder_actors::engine::{CompositionConfig, MediaConfig, RecoveryConfig, TenantLimits};
use recorder_actors::media::plain_rtp::PortAllocator;
use recorder_actors::media::receiver::ReceiverConfig;
use recorder_actors::media::writer::WriterConfig;
use recorder_actors::messages::{
    IngestTransport, InstanceRef, Publish, PublishAnswer, StartRecording, StopRecording, Unpublish,
};
use recorder_actors::queries::Queries;
use recorder_actors::snapshot::{ActorSnapshot, Snapshot};
use recorder_actors::storage::{LocalBackend, StorageBackend};
use recorder_actors::store::{SledStore, StateStore};
use recorder_actors::{plain_manifest_renderer, ApplicationProfile, EngineConfig, EngineError};

pub const ORGANIZATION: &str = "org-harness";
pub const APPLICATION: &str = "app-harness";

/// How the engine under test is configured; every field has the value a test most often wants.
#[derive(Clone)]
pub struct HarnessSettings {
    pub recovery: RecoveryConfig,
    pub reconnect_grace: Duration,
    pub idle_timeout: Duration,
    pub writer: WriterConfig,
    pub receiver: ReceiverConfig,
    pub compose: bool,
    pub upload_retry_base: Duration,
    pub upload_retry_max: Duration,
    pub render_settle: Duration,
    pub delete_local_after_upload: bool,
    pub limits: TenantLimits,
    /// The storage profile of (ORGANIZATION, APPLICATION); `None`: a local one under the
    /// harness's directory.
    pub storage: Option<Arc<dyn StorageBackend>>,
    /// UDP ports of plain-RTP ingest (loopback).
    pub rtp_ports: (u16, u16),
    /// The application's compliance settings (pause capture, maximum duration, ...).
    pub policy: recorder_actors::engine::ApplicationPolicy,
    pub webhooks: recorder_actors::engine::WebhookDelivery,
    /// The engine's admission control (shared: a test can read what it holds).
    pub capacity: std::sync::Arc<recorder_actors::capacity::Capacity>,
}

impl Default for HarnessSettings {
    fn default() -> Self {
        Self {
            recovery: RecoveryConfig::default(),
            reconnect_grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(1800),
            writer: WriterConfig::default(),
            receiver: ReceiverConfig::default(),
            compose: false,
            upload_retry_base: Duration::from_secs(1),
            upload_retry_max: Duration::from_secs(60),
            render_settle: Duration::ZERO,
            delete_local_after_upload: false,
            limits: TenantLimits::default(),
            storage: None,
            rtp_ports: next_port_range(),
            policy: Default::default(),
            webhooks: Default::default(),
            capacity: Default::default(),
        }
    }
}

/// Each harness of a test process gets its own 100-port UDP range (47000-56999), so engines of
/// parallel tests never take each other's ports.
fn next_port_range() -> (u16, u16) {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100;
    let min = 47_000 + n * 100;
    (min, min + 99)
}

/// A running engine and what the test reaches it by.
struct Running {
    registry: Addr<Registry>,
    store: Arc<dyn StateStore>,
    queries: Queries,
    system: actix::System,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct EngineHarness {
    root: tempfile::TempDir,
    settings: HarnessSettings,
    clock: Clock,
    control: ClockControl,
    config: Arc<EngineConfig>,
    running: Option<Running>,
}

impl EngineHarness {
    /// An engine with the default settings.
    pub fn start() -> Self {
        Self::with(HarnessSettings::default())
    }

    pub fn with(settings: HarnessSettings) -> Self {
        Self::with_store(settings, |_| {})
    }

    /// An engine booted over a store `seed` wrote first (what a crash left, an older build's
    /// records).
    pub fn with_store(settings: HarnessSettings, seed: impl FnOnce(&dyn StateStore)) -> Self {
        init_logs();
        let root = tempfile::tempdir().expect("a temporary directory");
        let (clock, control) = Clock::manual();
        let config = engine_config(root.path(), &settings, &clock);
        {
            let store = SledStore::open(&root.path().join("state")).expect("the state store opens");
            seed(&store);
            futures_executor::block_on(store.flush()).expect("the seeded store flushes");
        }
        let mut harness = Self {
            root,
            settings,
            clock,
            control,
            config,
            running: None,
        };
        harness.boot();
        harness
    }

    fn boot(&mut self) {
        let store: Arc<dyn StateStore> =
            Arc::new(SledStore::open(&self.root.path().join("state")).expect("the state store opens"));
        let (tx, rx) = std::sync::mpsc::channel();
        let (boot_store, config) = (store.clone(), self.config.clone());
        let thread = std::thread::Builder::new()
            .name("engine-harness".into())
            .spawn(move || {
                let system = actix::System::new();
                let booted = system.block_on(async move {
                    Registry::boot(boot_store, config).map(|registry| (registry, actix::System::current()))
                });
                let ok = booted.is_ok();
                let _ = tx.send(booted);
                if ok {
                    let _ = system.run();
                }
            })
            .expect("the engine thread starts");
        let (registry, system) = rx
            .recv()
            .expect("the engine thread answers")
            .unwrap_or_else(|e| panic!("the engine does not boot: {e}"));
        self.running = Some(Running {
            registry,
            queries: Queries::new(store.clone(), self.config.clone()),
            store,
            system,
            thread: Some(thread),
        });
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("the engine is running")
    }

    /// Ends the engine as a crash would end the process (every actor dropped in the middle of
    /// what it does, sockets closed, what the store acknowledged kept) and boots a new one on the
    /// same store, files and clock. Unlike a crash, the writers of the old engine complete their
    /// files (their trailers written) before the new one starts: a test of what a `kill -9`
    /// leaves on disk belongs to the black-box suite.
    pub fn restart(&mut self) {
        self.shutdown();
        self.boot();
    }

    fn shutdown(&mut self) {
        if let Some(mut running) = self.running.take() {
            running.system.stop();
            if let Some(thread) = running.thread.take() {
                let _ = thread.join();
            }
            // The actors are gone; their threads (writers completing files, receive threads
            // releasing ports) end right after. A process that dies takes them with it: the next
            // engine must not see them still at work.
            let work = &self.config.media.work;
            assert!(
                work.wait_idle(Duration::from_secs(30)),
                "{} engine threads still running 30 s after the engine ended",
                work.num_running()
            );
        }
    }

    /// Moves the engine's clock forward: timers whose time comes run (on the engine's thread,
    /// right after; wait for what they do with [`EngineHarness::wait_for`]).
    pub fn advance(&self, by: Duration) {
        self.control.advance(by);
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn config(&self) -> &Arc<EngineConfig> {
        &self.config
    }

    pub fn settings(&self) -> &HarnessSettings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.running().store
    }

    pub fn queries(&self) -> &Queries {
        &self.running().queries
    }

    pub fn registry(&self) -> &Addr<Registry> {
        &self.running().registry
    }

    /// Where the engine keeps track files until they are uploaded.
    pub fn media_dir(&self) -> PathBuf {
        self.config.media.media_dir.clone()
    }

    /// Where the local storage profile puts uploaded artefacts.
    pub fn storage_dir(&self) -> PathBuf {
        self.root.path().join("storage")
    }

    pub async fn start_recording(&self, conversation_id: &str, conference_id: &str) -> InstanceRecord {
        self.try_start(conversation_id, conference_id, true, true)
            .await
            .unwrap_or_else(|e| panic!("start of {conversation_id}: {e}"))
    }

    pub async fn try_start(
        &self,
        conversation_id: &str,
        conference_id: &str,
        audio: bool,
        video: bool,
    ) -> Result<InstanceRecord, EngineError> {
        self.registry()
            .send(StartRecording {
                organization_id: id(ORGANIZATION),
                application_id: id(APPLICATION),
                conversation_id: id(conversation_id),
                conference_id: id(conference_id),
                audio,
                video,
            })
            .await?
    }

    pub async fn stop(&self, instance: &InstanceRecord) -> Result<InstanceRecord, EngineError> {
        self.registry().send(StopRecording(instance_ref(instance))).await?
    }

    /// A plain-RTP publisher of `conference` offers `offer_sdp` as (user, kind).
    pub async fn publish_rtp(
        &self,
        conference_id: &str,
        user_id: &str,
        kind: StreamType,
        offer_sdp: &str,
    ) -> Result<PublishAnswer, EngineError> {
        self.registry()
            .send(Publish {
                organization_id: id(ORGANIZATION),
                conference_id: conference_id.into(),
                instance_id_opt: None,
                applications: None,
                permit: None,
                rtp_any_source: false,
                user_id: user_id.into(),
                kind,
                role: None,
                transport: IngestTransport::Rtp,
                offer_sdp: offer_sdp.into(),
            })
            .await?
    }

    pub async fn unpublish(&self, conference_id: &str, session_id: &str) -> Result<(), EngineError> {
        self.registry()
            .send(Unpublish {
                organization_id: id(ORGANIZATION),
                conference_id: conference_id.into(),
                instance_id_opt: None,
                applications: None,
                session_id: session_id.into(),
            })
            .await?
    }

    /// The instance as the store has it now.
    pub fn instance(&self, instance: &InstanceRecord) -> InstanceRecord {
        self.queries()
            .instance(&instance_ref(instance))
            .unwrap_or_else(|e| panic!("instance {}: {e}", instance.instance_id))
    }

    /// The live actor tree.
    pub async fn tree(&self) -> ActorSnapshot {
        self.registry().send(Snapshot).await.expect("the registry answers")
    }

    /// The snapshot of each live Stream actor, as (userId/TYPE, snapshot).
    pub async fn streams(&self) -> Vec<ActorSnapshot> {
        fn walk(node: &ActorSnapshot, out: &mut Vec<ActorSnapshot>) {
            if node.kind == "Stream" {
                out.push(node.clone());
            }
            for child in &node.children {
                walk(child, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.tree().await, &mut out);
        out
    }

    /// Waits (real time, at most `within`) until `probe` answers, checking every 10 ms; panics
    /// naming `what` otherwise. For conditions the engine reaches by itself after a message or a
    /// clock advance; never a timing assertion.
    pub async fn wait_for<T>(&self, within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            if Instant::now() >= deadline {
                panic!("waited {within:?} for {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Like [`EngineHarness::wait_for`], with an async probe (actor snapshots).
    pub async fn wait_for_async<T, F, Fut>(&self, within: Duration, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            if Instant::now() >= deadline {
                panic!("waited {within:?} for {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for EngineHarness {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The engine's log goes to the test's captured output (printed when it fails), at
/// `RTC_TEST_LOG` (default `info`).
fn init_logs() {
    let filter = std::env::var("RTC_TEST_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

pub fn instance_ref(instance: &InstanceRecord) -> InstanceRef {
    InstanceRef::of(instance).expect("a stored instance has valid ids")
}

/// A test's id, which must be valid.
fn id<T: TryFrom<String, Error = IdError>>(value: &str) -> T {
    T::try_from(value.to_string()).unwrap_or_else(|e| panic!("{value:?} is not an id: {e}"))
}

fn engine_config(root: &Path, settings: &HarnessSettings, clock: &Clock) -> Arc<EngineConfig> {
    let storage = settings
        .storage
        .clone()
        .unwrap_or_else(|| Arc::new(LocalBackend::new(root.join("storage")).expect("a local storage directory")));
    let profile = Arc::new(ApplicationProfile {
        organization_id: ORGANIZATION.into(),
        application_id: APPLICATION.into(),
        backend: storage,
        policy: settings.policy.clone(),
    });
    let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
    Arc::new(EngineConfig {
        recorder_id: "harness-node".into(),
        applications: HashMap::from([((ORGANIZATION.to_string(), APPLICATION.to_string()), profile)]),
        upload_concurrency: 2,
        upload_retry_base: settings.upload_retry_base,
        upload_retry_max: settings.upload_retry_max,
        delete_local_after_upload: settings.delete_local_after_upload,
        render_settle: settings.render_settle,
        render_manifest: plain_manifest_renderer(),
        media: Arc::new(MediaConfig {
            media_dir: root.join("media"),
            ports: PortAllocator::new(lo, settings.rtp_ports.0, settings.rtp_ports.1),
            receive: Default::default(),
            capacity: settings.capacity.clone(),
            announce_ip: lo,
            webrtc_bind_ip: lo,
            mdns: false,
            reconnect_grace: settings.reconnect_grace,
            idle_timeout: settings.idle_timeout,
            receiver: settings.receiver.clone(),
            writer: settings.writer.clone(),
            clock: clock.clone(),
            work: Default::default(),
        }),
        composition: CompositionConfig {
            enabled: settings.compose,
            ..CompositionConfig::default()
        },
        recovery: settings.recovery,
        limits: settings.limits,
        ready_check_interval: Duration::from_secs(3600),
        webhooks: settings.webhooks,
        peers: None,
    })
}
