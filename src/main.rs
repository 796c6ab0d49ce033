//! rtc-recorder: the service. Loads configuration, opens the state store, boots the engine's
//! actor tree and serves the Recorder API until SIGTERM/SIGINT.

mod api;
mod cluster;
mod config;
mod metrics;
mod profiles;
mod publish_token;
mod signing;

/// mimalloc instead of glibc's malloc: the ingest path allocates a buffer or two per packet and
/// per frame on one thread and frees them on another (receive pool → writer pool), which glibc
/// served with arena consolidation and chunk unlinking (~10 % of the recorder's CPU at 200
/// streams, `perf`); BENCHMARKS.md has the before/after.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpServer};
use anyhow::Context as _;
use rand::RngCore;
use recorder_actors::actors::Registry;
use recorder_actors::engine::{
    ApplicationPolicy, BackupStore, CompositionConfig, MediaConfig, PauseCapture, RecoveryConfig, Webhook,
    WebhookDelivery,
};
use recorder_actors::media::compose::ComposeConfig;
use recorder_actors::media::plain_rtp::PortAllocator;
use recorder_actors::media::receiver::ReceiverConfig;
use recorder_actors::media::writer::WriterConfig;
use recorder_actors::snapshot::Mailbox;
use recorder_actors::storage::encryption::Encryption;
use recorder_actors::store::{SledStore, StateStore};
use recorder_actors::{ApplicationProfile, EngineConfig};

use crate::api::auth::KeyRing;
use crate::api::AppState;
use crate::config::{ApiKey, Scope, Settings, DEFAULT_ORGANIZATION};
use crate::metrics::Metrics;
use crate::publish_token::PublishTokens;
use crate::signing::UrlSigner;

/// How long in-flight requests get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often a drain looks whether live instances are left.
const DRAIN_POLL: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("rtc-recorder: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    if std::env::args().skip(1).any(|a| a == "--check-config") {
        // What a deploy pipeline runs on a configuration before it rolls it out.
        println!(
            "configuration OK: {} application(s), {} API key(s), cluster mode {}",
            settings.applications.len(),
            settings.api_keys.len(),
            if settings.cluster.is_some() { "on" } else { "off" }
        );
        return ExitCode::SUCCESS;
    }
    init_tracing(&settings);
    match actix_web::rt::System::new().block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "rtc-recorder stopped on an error");
            eprintln!("rtc-recorder: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::new(&settings.log);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match settings.log_format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}

async fn run(mut settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data_dir {}", settings.data_dir.display()))?;
    let store = SledStore::open(&settings.data_dir.join("state")).with_context(|| {
        format!(
            "cannot open the state store in {}",
            settings.data_dir.join("state").display()
        )
    })?;
    let store: Arc<dyn StateStore> = Arc::new(store);

    let recorder_id = match &settings.recorder_id {
        Some(id) => id.clone(),
        None => {
            String::from_utf8(store.meta_get_or_insert("recorder_id", uuid::Uuid::new_v4().to_string().as_bytes())?)
                .context("stored recorder_id is not text")?
        }
    };
    let secret = match &settings.signing_secret {
        Some(secret) => secret.clone(),
        None => {
            let mut fresh = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut fresh);
            store.meta_get_or_insert("signing_secret", &fresh)?
        }
    };
    let key_notice = add_plain_keys(&mut settings)?;

    let mut applications = HashMap::new();
    for app in &settings.applications {
        let backend = profiles::build_backend(app, &settings.data_dir).await?;
        tracing::info!(
            organization_id = %app.organization_id,
            application_id = %app.application_id,
            provider = backend.provider().as_str(),
            url = %backend.url(),
            "storage profile ready"
        );
        applications.insert(
            (app.organization_id.clone(), app.application_id.clone()),
            Arc::new(ApplicationProfile {
                organization_id: app.organization_id.clone(),
                application_id: app.application_id.clone(),
                backend,
                policy: ApplicationPolicy {
                    pause_capture: match app.pause_capture {
                        config::PauseCaptureSetting::Keep => PauseCapture::Keep,
                        config::PauseCaptureSetting::Drop => PauseCapture::Drop,
                    },
                    max_instance_duration: (app.max_instance_duration_secs > 0)
                        .then(|| Duration::from_secs(app.max_instance_duration_secs)),
                    duration_warning: Duration::from_secs(settings.limits.duration_warning_secs),
                    webhook: match &app.webhook {
                        Some(hook) => Some(Webhook {
                            url: hook.url.clone(),
                            secret: hook.secret.resolve(&format!(
                                "organizations.{}.applications.{}.webhook.secret",
                                app.organization_id, app.application_id
                            ))?,
                        }),
                        None => None,
                    },
                    backup: match &app.backup {
                        Some(backup) => Some(BackupStore {
                            backend: profiles::build_backend(
                                &config::Application {
                                    storage: backup.storage.clone(),
                                    ..app.clone()
                                },
                                &settings.data_dir,
                            )
                            .await?,
                            after: Duration::from_secs(backup.after_secs),
                        }),
                        None => None,
                    },
                    encryption: match &app.encryption {
                        Some(e) => Some(Arc::new(
                            Encryption::new(std::slice::from_ref(&e.public_key), e.encrypt_manifest)
                                .map_err(|message| anyhow::anyhow!("encryption.public_key: {message}"))?,
                        )),
                        None => None,
                    },
                },
            }),
        );
    }
    let cluster = match settings.cluster.clone() {
        Some(cluster_settings) => Some(
            cluster::Cluster::connect(cluster_settings, recorder_id.clone())
                .await
                .context("cluster: cannot set up the NATS client")?,
        ),
        None => None,
    };
    let media = Arc::new(media_config(&settings)?);
    let capacity = media.capacity.clone();
    let engine = Arc::new(EngineConfig {
        recorder_id: recorder_id.clone(),
        applications,
        upload_concurrency: settings.uploads.concurrency,
        upload_retry_base: Duration::from_millis(settings.uploads.retry_base_ms),
        upload_retry_max: Duration::from_millis(settings.uploads.retry_max_ms),
        delete_local_after_upload: settings.uploads.delete_local_after_upload,
        render_settle: Duration::from_millis(settings.uploads.render_settle_ms),
        render_manifest: Arc::new(|record| {
            serde_json::to_vec_pretty(&api::dto::RecordingDataMessage::from(record))
                .expect("API messages always serialize")
        }),
        media: media.clone(),
        composition: composition_config(&settings),
        recovery: RecoveryConfig {
            window: Duration::from_secs(settings.recovery.window_secs),
            max_restarts: settings.recovery.max_restarts,
            restart_window: Duration::from_secs(settings.recovery.restart_window_secs),
        },
        limits: settings.limits.tenant(),
        ready_check_interval: Duration::from_secs(settings.ops.ready_check_secs),
        webhooks: WebhookDelivery {
            retry_base: Duration::from_millis(settings.webhooks.retry_base_ms),
            retry_max: Duration::from_millis(settings.webhooks.retry_max_ms),
            timeout: Duration::from_secs(settings.webhooks.timeout_secs),
            poll_interval: Duration::from_millis(settings.webhooks.poll_interval_ms),
        },
        peers: cluster
            .clone()
            .map(|c| Arc::new(cluster::PeerCatalogue(c)) as Arc<dyn recorder_actors::engine::PeerInstances>),
    });
    let queries = recorder_actors::queries::Queries::new(store.clone(), engine.clone());
    let registry =
        Registry::boot(store.clone(), engine).context("cannot rebuild the actor tree from the state store")?;

    let keys = KeyRing::new(&settings.api_keys);
    let listener = std::net::TcpListener::bind(settings.bind)
        .with_context(|| format!("bind: cannot listen on {}", settings.bind))?;
    let bound = listener.local_addr()?;
    let public_url = match &settings.public_url {
        Some(url) => url.as_str().trim_end_matches('/').to_string(),
        None => format!("http://{bound}"),
    };
    if let Some(cluster) = &cluster {
        cluster.start(
            capacity.clone(),
            store.clone(),
            public_url.clone(),
            format!("http://{bound}"),
        );
        tracing::info!(recorder_id = %recorder_id, "cluster mode: on NATS JetStream");
    }
    let publish_tokens = PublishTokens::new(&secret);
    let signer = UrlSigner::new(secret, settings.url_ttl_secs);
    let state = web::Data::new(AppState {
        registry: Mailbox::new(registry),
        queries,
        keys,
        settings,
        signer,
        publish_tokens,
        public_url: public_url.clone(),
        metrics: Metrics::new(),
        cluster,
    });
    let server_state = state.clone();
    // Signals are this function's: the API keeps serving through a drain (stops of live
    // instances, reads), and only then stops.
    let server = HttpServer::new(move || api::app(server_state.clone()))
        .listen(listener)?
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .disable_signals()
        .run();
    let http = server.handle();
    let serving = actix_web::rt::spawn(server);

    tracing::info!(address = %bound, recorder_id = %recorder_id, "listening");
    println!("listening on http://{bound}");
    println!("recorder id: {recorder_id}");
    println!("api base:    {public_url}{}", api::BASE_PATH);
    println!("api key:     {key_notice}");

    let mut signals = Signals::new()?;
    tokio::select! {
        signal = signals.next() => tracing::info!(signal, "draining before the node stops"),
        ended = serving => {
            // The HTTP server ends by itself only on an error.
            ended.context("the HTTP server task failed")??;
            anyhow::bail!("the HTTP server stopped by itself");
        }
    }
    let drain = Duration::from_secs(state.settings.ops.drain_timeout_secs);
    let registry = state.registry.clone();
    drain_live(&registry, &capacity, drain, &mut signals).await;
    // In-flight requests finish (a stop's finalization among them); nothing new is accepted.
    http.stop(true).await;
    tracing::info!("shutting down: completing the files of what is still live");
    registry.send(recorder_actors::messages::ShutdownNode).await?;
    store.flush().await?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, as one stream of names.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// The drain: the node refuses new work and reports itself not ready, and its live instances go
/// on recording until they have all stopped, `timeout` has passed or another signal came.
async fn drain_live(
    registry: &Mailbox<Registry>,
    capacity: &recorder_actors::capacity::Capacity,
    timeout: Duration,
    signals: &mut Signals,
) {
    capacity.set_draining();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let num_live = registry.send(recorder_actors::messages::CountLive).await.unwrap_or(0);
        if num_live == 0 {
            tracing::info!("drained: no live instance left");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(num_live, "drain timeout: what is still live resumes at the next start");
            return;
        }
        tracing::info!(num_live, "draining: live instances still recording");
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_POLL.min(deadline - tokio::time::Instant::now())) => {}
            signal = signals.next() => {
                tracing::warn!(signal, num_live, "drain cut short: what is still live resumes at the next start");
                return;
            }
        }
    }
}

fn composition_config(settings: &Settings) -> CompositionConfig {
    let c = &settings.composition;
    CompositionConfig {
        enabled: c.enabled,
        concurrency: c.concurrency,
        output: ComposeConfig {
            width: c.width,
            height: c.height,
            fps: c.fps,
            preset: c.preset.clone(),
            label_placeholders: true,
            threads: c.threads,
        },
        stereo: c.stereo_format(),
    }
}

fn media_config(settings: &Settings) -> anyhow::Result<MediaConfig> {
    let m = &settings.media;
    Ok(MediaConfig {
        media_dir: m.dir.clone(),
        ports: PortAllocator::new(m.bind_ip, m.rtp_port_min, m.rtp_port_max),
        receive: recorder_actors::media::receive::ReceivePool::new(m.receive_threads)
            .map_err(|e| anyhow::anyhow!("cannot start the plain-RTP receive threads: {e}"))?,
        capacity: recorder_actors::capacity::Capacity::new(settings.capacity),
        announce_ip: m.announce_ip,
        webrtc_bind_ip: m.bind_ip,
        mdns: m.mdns,
        reconnect_grace: Duration::from_secs(m.reconnect_grace_secs),
        idle_timeout: Duration::from_secs(m.idle_timeout_secs),
        receiver: ReceiverConfig {
            reorder_delay: Duration::from_millis(m.reorder_window_ms),
            jitter_buffer_max: Duration::from_millis(m.jitter_buffer_max_ms),
            ..ReceiverConfig::default()
        },
        writer: WriterConfig {
            flush_interval: Duration::from_millis(m.flush_interval_ms),
            fsync_interval: Duration::from_millis(m.fsync_interval_ms),
            queue_capacity: m.writer_queue_frames,
            pool: recorder_actors::media::writer::WriterPool::new(m.writer_threads)
                .map_err(|e| anyhow::anyhow!("cannot start the track writer threads: {e}"))?,
            ..WriterConfig::default()
        },
        clock: recorder_actors::clock::Clock::system(),
        work: Default::default(),
    })
}

/// Adds `RECORDER_API_KEY`, or with no key configured at all a development key kept in
/// `<data_dir>/dev-api-key`, and says what to use.
fn add_plain_keys(settings: &mut Settings) -> anyhow::Result<String> {
    let default_key = |key: &str, name: &str| ApiKey {
        name: name.into(),
        sha256: api::auth::sha256(key),
        organization_id: DEFAULT_ORGANIZATION.into(),
        applications: None,
        scopes: vec![Scope::Global, Scope::Admin],
        rtp_any_source: false,
    };
    if let Some(key) = settings.plain_api_key.clone() {
        settings.api_keys.push(default_key(&key, "RECORDER_API_KEY"));
        return Ok("the value of RECORDER_API_KEY".into());
    }
    if !settings.api_keys.is_empty() {
        return Ok("one of the keys configured in [api_keys]".into());
    }
    let path = settings.data_dir.join("dev-api-key");
    let key = read_or_create_dev_key(&path)?;
    settings.api_keys.push(default_key(&key, "development"));
    Ok(format!("{key}   (development key, kept in {})", path.display()))
}

fn read_or_create_dev_key(path: &Path) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_string();
        if existing.len() >= 16 {
            return Ok(existing);
        }
    }
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let key = format!("dev-{}", hex::encode(bytes));
    write_private(path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}
