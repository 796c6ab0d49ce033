//! Runs the durable composition queue: every `Queued` composition record in the state store is
//! composed (FFmpeg, on a blocking thread, at most `composition.concurrency` at once), then its
//! MP4 is queued for upload like any other artefact. The actor holds nothing that must survive
//! a crash: at start every `Queued` or `Composing` record is (re)run. What a run composes (its
//! inputs on the timeline, the stereo channels) is decided by the pure functions of [`plan`].

mod inputs;
mod lease;
mod plan;

pub use plan::{composition_inputs, ComposeJob, FetchedTracks};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use actix::prelude::*;

use super::uploader::{delete_local, Kick};
use crate::domain::{path_component, ErrorInfo, InstanceRecord};
use crate::media::compose::{self, ComposeInput, ComposeReport};
use crate::media::stereo::{compose_stereo, Side, StereoFormat};
use crate::media::MediaError;
use crate::snapshot::{ActorSnapshot, CompositorCounters, Counters, Snapshot};
use crate::store::artefacts::enqueue_artefact;
use crate::store::{
    ArtefactKind, CompositionId, CompositionRecord, CompositionState, EventKind, OutboxEvent, StateStore, StereoRecord,
    StoreError,
};
use crate::EngineConfig;

/// Wait before looking at the queue again after the store could not be read.
const STORE_RETRY: Duration = Duration::from_secs(5);
/// How often a composition waiting for capacity looks again.
const CAPACITY_RETRY: Duration = Duration::from_secs(2);
pub struct Compositor {
    store: Arc<dyn StateStore>,
    config: Arc<EngineConfig>,
    /// Uploaders by (organization, application), kicked when a composition is queued for upload.
    uploaders: HashMap<(String, String), Recipient<Kick>>,
    running: HashSet<CompositionId>,
    /// A pump is scheduled for when live media may have left room for a composition.
    waiting_for_capacity: bool,
    /// Cluster mode: the composition leases this node holds (see `PeerInstances`), each until
    /// its composition is uploaded or failed; those being taken; those being given back.
    leases: HashSet<CompositionId>,
    acquiring: HashSet<CompositionId>,
    releasing: HashSet<CompositionId>,
    /// Compositions queued here that wait for a lease: why (the node holding it, or the
    /// cluster unreachable).
    waiting_for_lease: HashMap<CompositionId, String>,
    lease_retry_scheduled: bool,
    lease_check_scheduled: bool,
    num_composed: u64,
    num_failed: u64,
    last_error: Option<ErrorInfo>,
}

impl Compositor {
    pub fn new(
        store: Arc<dyn StateStore>,
        config: Arc<EngineConfig>,
        uploaders: HashMap<(String, String), Recipient<Kick>>,
    ) -> Self {
        Self {
            store,
            config,
            uploaders,
            running: HashSet::new(),
            waiting_for_capacity: false,
            leases: HashSet::new(),
            acquiring: HashSet::new(),
            releasing: HashSet::new(),
            waiting_for_lease: HashMap::new(),
            lease_retry_scheduled: false,
            lease_check_scheduled: false,
            num_composed: 0,
            num_failed: 0,
            last_error: None,
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        let records = match self.store.pending_compositions() {
            Ok(records) => records,
            Err(err) => {
                tracing::error!(error = %err, "composition queue unreadable");
                self.last_error = Some(ErrorInfo::new("STATE_STORE", err.to_string()));
                crate::clock::run_later(&self.config.clock().clone(), ctx, STORE_RETRY, |act, ctx| act.pump(ctx));
                return;
            }
        };
        for record in records {
            if self.running.len() >= self.config.composition.concurrency.max(1) {
                break;
            }
            let key = CompositionId::of(&record);
            // `Composing` and not running here: a crash cut it short.
            let runnable = matches!(record.state, CompositionState::Queued | CompositionState::Composing);
            if !runnable || self.running.contains(&key) || self.releasing.contains(&key) {
                continue;
            }
            // Cluster mode: one node at a time composes a conversation (and uploads it).
            if self.config.peers.is_some() && !self.leases.contains(&key) {
                self.take_lease(key, ctx);
                continue;
            }
            // Only what live media leaves of the node's budget: a composition waits (queued,
            // durable) while live recording needs the capacity.
            let Some(capacity) = self.config.media.capacity.admit_composition() else {
                if !self.waiting_for_capacity {
                    self.waiting_for_capacity = true;
                    tracing::info!(conversation_id = %key.conversation_id, "composition waits for capacity left by live media");
                    crate::clock::run_later(&self.config.clock().clone(), ctx, CAPACITY_RETRY, |act, ctx| {
                        act.waiting_for_capacity = false;
                        act.pump(ctx);
                    });
                }
                break;
            };
            let claimed = match self.store.update_composition(&key, &mut |c| {
                c.state = CompositionState::Composing;
                c.started = Some(self.config.clock().utc());
                c.stopped = None;
                c.error = None;
                c.problems.clear();
                Ok(())
            }) {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::error!(error = %err, conversation_id = %key.conversation_id, "cannot claim a composition");
                    continue;
                }
            };
            self.running.insert(key.clone());
            let store = self.store.clone();
            let config = self.config.clone();
            let work = async move {
                // Held until the composition is done.
                let _capacity = capacity;
                let flush = store.flush();
                flush.await?;
                let peers = inputs::peer_instances(&config, &claimed).await;
                let (fetched, fetch_dir) =
                    inputs::fetch_uploaded_tracks(store.as_ref(), &config, &claimed, &peers).await?;
                let store2 = store.clone();
                let job = claimed.clone();
                // A thread of its own rather than the blocking pool: its lower priority (inherited
                // by x264's worker threads) must not stick to a pool thread used for other work.
                let (done, outcome) = tokio::sync::oneshot::channel();
                let work = config.media.work.clone();
                work.spawn("compositor", move || {
                    crate::work::lower_priority();
                    let _ = done.send(run_composition(store2.as_ref(), &config, &job, &fetched, peers));
                })
                .map_err(|e| StoreError::Io(format!("cannot start a composition thread: {e}")))?;
                let outcome = outcome
                    .await
                    .map_err(|_| StoreError::Io("the composition thread ended without an outcome".into()))?;
                if let Some(dir) = fetch_dir {
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                }
                Ok::<_, StoreError>((claimed, outcome))
            };
            ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
                act.running.remove(&key);
                match result {
                    Ok((claimed, outcome)) => act.finish(claimed, outcome, ctx),
                    Err(err) => {
                        tracing::error!(error = %err, conversation_id = %key.conversation_id, "composition could not run");
                        act.last_error = Some(ErrorInfo::new("STATE_STORE", err.to_string()));
                        crate::clock::run_later(&act.config.clock().clone(), ctx, STORE_RETRY, |act, ctx| act.pump(ctx));
                    }
                }
                act.pump(ctx);
            }));
        }
    }

    /// Records the outcome unless the conversation was queued again meanwhile (a newer instance
    /// stopped): then the record stays `Queued` and the next pump composes it with everything.
    fn finish(&mut self, claimed: CompositionRecord, outcome: Result<Composed, MediaError>, ctx: &mut Context<Self>) {
        let now = self.config.clock().utc();
        let mut current = true;
        let mut updated = None;
        let mut change = |c: &mut CompositionRecord| -> Result<(), StoreError> {
            current = c.generation == claimed.generation;
            if !current {
                return Ok(());
            }
            c.stopped = Some(now);
            match &outcome {
                Ok(Composed { path, report, stereo }) => {
                    c.state = CompositionState::Done;
                    c.has_video = report.has_video;
                    c.problems = report.problems.clone();
                    c.local_path = Some(path.to_string_lossy().into_owned());
                    c.stereo = stereo.as_ref().map(|made| StereoRecord {
                        format: made.format,
                        left: made.left.clone(),
                        right: made.right.clone(),
                        local_path: made.path.to_string_lossy().into_owned(),
                        key: None,
                        location: None,
                        size: None,
                        uploaded: None,
                        backup: false,
                    });
                    // A composition made from part of the tracks says so.
                    c.error = (!report.problems.is_empty())
                        .then(|| ErrorInfo::new("COMPOSITION_PARTIAL", report.problems.join("; ")));
                }
                Err(err) => {
                    c.state = CompositionState::Failed;
                    c.error = Some(ErrorInfo::new("COMPOSITION_FAILED", err.to_string()));
                }
            }
            Ok(())
        };
        // The outcome and, for a failure, its event: one commit (a done composition's event
        // comes with its upload).
        let updated = self
            .store
            .transaction(&mut |tx| {
                let record = tx.update_composition(&CompositionId::of(&claimed), &mut change)?;
                if record.generation == claimed.generation && record.state == CompositionState::Failed {
                    if let Some(instance) = tx.get_instance(&record.instance_id)? {
                        tx.put_event(&OutboxEvent::of(
                            &instance,
                            EventKind::CompositionFailed,
                            now,
                            serde_json::json!({
                                "error": record.error.as_ref().map(|e| serde_json::json!({"code": e.code, "message": e.message})),
                            }),
                        ))?;
                    }
                }
                updated = Some(record);
                Ok(())
            })
            .map(|()| updated.take().expect("a committed transaction set it"));
        let record = match updated {
            Ok(record) => record,
            Err(err) => {
                tracing::error!(error = %err, conversation_id = %claimed.conversation_id, "cannot record the composition outcome");
                return;
            }
        };
        if !current {
            tracing::info!(conversation_id = %record.conversation_id, "conversation queued again while composing; composing again");
            return;
        }
        match &outcome {
            Ok(Composed { path, report, .. }) => {
                self.num_composed += 1;
                tracing::info!(
                    conversation_id = %record.conversation_id,
                    path = %path.display(),
                    num_problems = report.problems.len(),
                    "conversation composed"
                );
                self.queue_upload(&record, path, record.stereo.as_ref().map(|s| s.local_path.clone()));
            }
            Err(err) => {
                self.num_failed += 1;
                self.last_error = Some(ErrorInfo::new("COMPOSITION_FAILED", err.to_string()));
                tracing::warn!(conversation_id = %record.conversation_id, error = %err, "composition failed");
            }
        }
        // The uploader kept the conversation's uploaded track files for us; release them.
        if self.config.delete_local_after_upload {
            let store = self.store.clone();
            let id = CompositionId::of(&record);
            let clock = self.config.clock().clone();
            ctx.spawn(
                async move {
                    if let Err(err) = release_tracks(store, &id, clock).await {
                        tracing::warn!(error = %err, conversation_id = %id.conversation_id, "kept track files could not be deleted");
                    }
                }
                .into_actor(self),
            );
        }
    }

    fn queue_upload(&mut self, record: &CompositionRecord, path: &std::path::Path, stereo_path: Option<String>) {
        let instance = match self.store.get_instance(&record.instance_id) {
            Ok(Some(instance)) => instance,
            other => {
                tracing::error!(instance_id = %record.instance_id, error = ?other.err(), "composition has no instance to upload under");
                return;
            }
        };
        let artefact = ArtefactKind::Composition {
            conversation_id: record.conversation_id.clone(),
            local_path: path.to_string_lossy().into_owned(),
            stereo_path,
        };
        if let Err(err) = self
            .store
            .transaction(&mut |tx| enqueue_artefact(tx, &instance, artefact.clone()))
        {
            tracing::error!(error = %err, conversation_id = %record.conversation_id, "cannot queue the composition upload");
            return;
        }
        let uploader = self
            .uploaders
            .get(&(instance.organization_id.clone(), instance.application_id.clone()))
            .cloned();
        let flush = self.store.flush();
        actix::spawn(async move {
            if flush.await.is_ok() {
                if let Some(uploader) = uploader {
                    uploader.do_send(Kick);
                }
            }
        });
    }
}

/// Deletes the local files of the composition's tracks that are safely uploaded.
async fn release_tracks(store: Arc<dyn StateStore>, id: &CompositionId, clock: Clock) -> Result<(), String> {
    if store
        .get_composition(id)
        .map_err(|e| e.to_string())?
        .is_some_and(|c| matches!(c.state, CompositionState::Queued | CompositionState::Composing))
    {
        return Ok(()); // a newer run needs them
    }
    let instances = store
        .conversation_instances(&id.organization_id, &id.conversation_id)
        .map_err(|e| e.to_string())?;
    for instance in instances.into_iter().filter(|i| id.includes(i)) {
        for stream in &instance.streams {
            for track in &stream.tracks {
                if let (Some(path), Some(_), None) =
                    (&track.local.location, &track.object.uploaded, &track.local.deleted)
                {
                    delete_local(
                        store.as_ref(),
                        &instance.instance_id,
                        &stream.id,
                        &track.id,
                        path,
                        clock.utc(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                }
            }
        }
    }
    Ok(())
}

fn composition_dir(config: &EngineConfig, job: &CompositionRecord) -> PathBuf {
    config
        .media
        .media_dir
        .join("compositions")
        .join(path_component(&job.organization_id))
        .join(path_component(&job.application_id))
        .join(path_component(&job.conversation_id))
}

/// The stereo audio a composition run made.
#[derive(Debug, Clone)]
pub struct StereoMade {
    pub path: PathBuf,
    pub format: StereoFormat,
    pub left: Vec<String>,
    pub right: Vec<String>,
}

/// What a composition run made: the MP4, how it went, and the stereo audio if any.
#[derive(Debug)]
pub struct Composed {
    pub path: PathBuf,
    pub report: ComposeReport,
    pub stereo: Option<StereoMade>,
}

/// Blocking: composes the conversation of `job` into `<media_dir>/compositions/...`. The file is
/// written beside its final name and renamed, so an upload of the previous composition never
/// reads a half-written file.
fn run_composition(
    store: &dyn StateStore,
    config: &EngineConfig,
    job: &CompositionRecord,
    fetched: &FetchedTracks,
    peers: Vec<InstanceRecord>,
) -> Result<Composed, MediaError> {
    let id = CompositionId::of(job);
    let instances: Vec<_> = store
        .conversation_instances(&job.organization_id, &job.conversation_id)
        .map_err(|e| MediaError::Io(e.to_string()))?
        .into_iter()
        .filter(|i| id.includes(i))
        .chain(peers)
        .collect();
    let ComposeJob {
        inputs,
        total,
        slates,
        stereo,
        mut problems,
    } = composition_inputs(&instances, fetched);
    let dir = composition_dir(config, job);
    std::fs::create_dir_all(&dir).map_err(|e| MediaError::Io(format!("{}: {e}", dir.display())))?;
    let partial = dir.join("composition.mp4.part");
    let path = dir.join("composition.mp4");
    tracing::info!(conversation_id = %job.conversation_id, num_inputs = inputs.len(), total_ms = total.as_millis() as u64, "composing conversation");
    let mut report = compose::compose(&inputs, total, &slates, &partial, &config.composition.output)?;
    std::fs::rename(&partial, &path).map_err(|e| MediaError::Io(format!("{}: {e}", path.display())))?;
    problems.append(&mut report.problems);
    // The stereo audio is an extra: its failure is reported, the composition stands.
    let stereo = match config.composition.stereo.filter(|_| report.has_audio) {
        Some(format) => match make_stereo(&dir, &stereo, total, format) {
            Ok(made) => Some(made),
            Err(err) => {
                tracing::warn!(conversation_id = %job.conversation_id, error = %err, "stereo audio could not be made");
                problems.push(format!("stereo audio: {err}"));
                None
            }
        },
        None => None,
    };
    report.problems = problems;
    Ok(Composed { path, report, stereo })
}

/// Writes `stereo.<format>` beside the composition (through a `.part` file, as the MP4).
fn make_stereo(
    dir: &std::path::Path,
    inputs: &[(ComposeInput, Side)],
    total: Duration,
    format: StereoFormat,
) -> Result<StereoMade, MediaError> {
    let name = format!("stereo.{}", format.extension());
    let partial = dir.join(format!("{name}.part"));
    let path = dir.join(name);
    let made = compose_stereo(inputs, total, &partial, format)?;
    std::fs::rename(&partial, &path).map_err(|e| MediaError::Io(format!("{}: {e}", path.display())))?;
    Ok(StereoMade {
        path,
        format,
        left: made.left,
        right: made.right,
    })
}

impl Actor for Compositor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Wake-ups only; a burst collapses into one pump.
        ctx.set_mailbox_capacity(64);
        if self.config.composition.enabled {
            // Cluster mode: compositions made before a restart and not uploaded yet still hold
            // their lease, given back once uploaded.
            if self.config.peers.is_some() {
                if let Ok(records) = self.store.compositions() {
                    let unsettled = records
                        .iter()
                        .filter(|c| c.state == CompositionState::Done && !lease::is_settled(c));
                    self.leases.extend(unsettled.map(CompositionId::of));
                }
                self.schedule_lease_check(ctx);
            }
            self.pump(ctx);
        }
    }
}

/// Wakes the compositor: a composition was queued.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CompositionQueued;

impl Handler<CompositionQueued> for Compositor {
    type Result = ();

    fn handle(&mut self, _msg: CompositionQueued, ctx: &mut Self::Context) {
        if self.config.composition.enabled {
            self.pump(ctx);
        }
    }
}

impl Handler<Snapshot> for Compositor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let num_queued = self
            .store
            .pending_compositions()
            .map(|c| c.iter().filter(|c| c.state == CompositionState::Queued).count())
            .unwrap_or(0);
        MessageResult(ActorSnapshot {
            kind: "Compositor",
            id: "compositor".into(),
            state: if !self.running.is_empty() {
                "composing"
            } else if self.waiting_for_capacity {
                "waiting for capacity"
            } else {
                "idle"
            }
            .into(),
            mailbox_depth: 0,
            restarts: 0,
            last_error: self.last_error.clone(),
            counters: Counters::Compositor(CompositorCounters {
                num_running: self.running.len() as u64,
                num_queued: num_queued as u64,
                num_composed: self.num_composed,
                num_failed: self.num_failed,
                num_waiting_for_lease: self.waiting_for_lease.len() as u64,
                num_leases_held: self.leases.len() as u64,
            }),
            children: Vec::new(),
        })
    }
}

impl Handler<crate::messages::Halt> for Compositor {
    type Result = ();

    /// The node's shutdown: work in flight is dropped, its job stays queued in the store.
    fn handle(&mut self, _msg: crate::messages::Halt, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
