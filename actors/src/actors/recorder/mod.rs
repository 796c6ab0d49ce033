//! One recorder instance: the state machine `INITIALISED → ACTIVE → STOPPED` (with `FAILED`,
//! `PENDING_RECOVERY`, `ABORTED`). Every transition is committed to the state store before it
//! is answered. Owns the instance's streams: publishers are routed here by conference, each
//! (userId, type) gets one `Stream`, and the first frame written makes the instance `ACTIVE`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures_util::future::join_all;

use super::stream::{
    EndSession, FinishStream, OpenRtp, OpenWhip, OpenedSession, QuiesceSlot, RetireStream, Stream, StreamCrashed,
    StreamNotice, RECOVERED_SESSION,
};
use super::supervision::{self, SupervisedActor, SupervisedKind, Supervision};
use super::uploader::Kick;
use crate::snapshot::snapshot_of;
use crate::store::artefacts::enqueue_artefact;
use futures_util::future::Shared;
use futures_util::FutureExt;
use tokio::sync::oneshot;

use crate::domain::{ErrorInfo, InstanceRecord, InstanceState, ParticipantRole, StreamRecord, StreamState, StreamType};
use crate::engine::{MediaConfig, RecoveryConfig};
use crate::media::pause::PauseGate;
use crate::media::MediaError;
use crate::messages::{IngestTransport, Publish, PublishAnswer, Unpublish};
use crate::snapshot::{ActorSnapshot, Counters, Mailbox, RecorderCounters, Snapshot};
use crate::store::{CompositionId, CompositionState, EventKind, OutboxEvent, StateStore};
use crate::EngineError;

mod end;
mod finalize;
pub use finalize::ShutdownRecorder;
mod publish;
mod route;
mod streams;

use route::{route_publisher, Route, StreamLink};

use end::{has_media, merge_stream, plan_end, CompositionPlan, EndContext, EndPlan, Ending};

/// What a recorder is connected to besides the state store.
#[derive(Clone)]
pub struct RecorderLinks {
    /// The uploader of the instance's storage profile, kicked once artefacts are queued.
    pub uploader: Option<Recipient<Kick>>,
    /// Told when the instance ends, so the registry's live index forgets it.
    pub ended: Option<Recipient<InstanceEnded>>,
    pub media: Arc<MediaConfig>,
    pub recovery: RecoveryConfig,
    /// Told when a handler of the recorder failed (its conversation rebuilds it).
    pub crashed: Option<Recipient<RecorderCrashed>>,
    /// Queue the conversation's composition when the instance ends (stopped or aborted), in the
    /// same durable update as its upload jobs (`composition.enabled`).
    pub compose: bool,
    /// Most streams the instance may have (`TenantLimits::max_streams_per_instance`).
    pub max_streams: usize,
    /// The instance's maximum duration and how long before it to warn (the application's
    /// policy); `None`: no limit.
    pub max_duration: Option<(std::time::Duration, std::time::Duration)>,
}

/// A handler of a recorder failed and the actor stopped; its conversation retires `streams` and
/// rebuilds the recorder from the instance record.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecorderCrashed {
    pub instance_id: String,
    pub error: ErrorInfo,
    pub streams: Vec<Addr<Stream>>,
}

/// Retires the streams of a failed recorder: each stops ingest and completes its files.
pub async fn retire_streams(streams: Vec<Addr<Stream>>) {
    join_all(streams.iter().map(|s| s.send(RetireStream))).await;
}

/// Aborts the instance (restart budget of its recorder exhausted): finalized like a stop, then
/// `ABORTED` with `error`.
#[derive(Message)]
#[rtype(result = "Result<InstanceRecord, EngineError>")]
pub struct AbortRecorder(pub ErrorInfo);

/// An instance reached a terminal state (stopped, or aborted by itself).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct InstanceEnded {
    pub organization_id: String,
    pub conversation_id: String,
    pub instance_id: String,
}

pub struct Recorder {
    store: Arc<dyn StateStore>,
    instance_id: String,
    organization_id: String,
    conversation_id: String,
    /// Last committed state, for snapshots; the store holds the truth.
    state: InstanceState,
    audio: bool,
    video: bool,
    media: Arc<MediaConfig>,
    max_streams: usize,
    streams: Vec<StreamEntry>,
    uploader: Option<Recipient<Kick>>,
    ended: Option<Recipient<InstanceEnded>>,
    recovery: RecoveryConfig,
    phase: Phase,
    /// Restarts by supervision, each of which passes the instance through PENDING_RECOVERY: the
    /// streams' (writer restarts, rebuilt stream actors) and this recorder's own rebuilds.
    restarts: u32,
    last_error: Option<ErrorInfo>,
    num_publishes: u64,
    num_publishes_refused: u64,
    /// Streams of the record still `RECORDING` when this actor was built (after a restart), and
    /// `FAILED` ones: their files are on disk and not yet named by the record (only a stop's
    /// commit does that), so they are restored to be finished with the others.
    recovered: Vec<StreamRecord>,
    crashed_to: Option<Recipient<RecorderCrashed>>,
    /// Whether a handler failed (the actor then takes no more work), and its progress probe.
    supervision: Supervision,
    compose: bool,
    /// The instance's pause intervals, shared with every stream's pumps.
    pause: Arc<PauseGate>,
    /// When the instance was created: its maximum duration counts from there.
    created: chrono::DateTime<chrono::Utc>,
    max_duration: Option<(std::time::Duration, std::time::Duration)>,
}

/// Where a recorder is in its life. One value, so a stop cannot be both running and finished;
/// a failed handler ends the actor in any phase (see [`Supervision`]).
enum Phase {
    /// Taking publishers. `resume_stop`: the record says a stop began before a restart; this
    /// actor finishes it once started.
    Running { resume_stop: bool },
    /// A stop (or an abort) began: no new publisher is accepted while the files are finalized.
    /// Resolves when that is over; a second stop waits for it instead of finishing the streams
    /// again (they are gone by then). A stop that fails returns the recorder to `Running`.
    Stopping(Shared<oneshot::Receiver<()>>),
}

struct StreamEntry {
    id: String,
    user_id: String,
    kind: StreamType,
    mailbox: Mailbox<Stream>,
    /// Sessions this stream has had; the live one is the last while it is connected.
    sessions: Vec<String>,
    link: StreamLink,
    /// Restarts of this stream (writer restarts and rebuilt actors), and when, for the budget;
    /// kept here because a rebuilt stream actor starts from its record.
    restarts: u32,
    restart_times: VecDeque<Instant>,
    /// Filled by the stream actor if it fails (see [`QuiesceSlot`]).
    quiesce: QuiesceSlot,
}

impl Recorder {
    pub fn new(store: Arc<dyn StateStore>, record: &InstanceRecord, links: RecorderLinks) -> Self {
        let RecorderLinks {
            uploader,
            ended,
            media,
            recovery,
            crashed,
            compose,
            max_streams,
            max_duration,
        } = links;
        Self {
            store,
            instance_id: record.instance_id.clone(),
            organization_id: record.organization_id.clone(),
            conversation_id: record.conversation_id.clone(),
            state: record.state,
            audio: record.audio,
            video: record.video,
            media,
            max_streams,
            streams: Vec::new(),
            uploader,
            ended,
            recovery,
            phase: Phase::Running {
                resume_stop: record.stop_requested.is_some() && record.state.is_live(),
            },
            restarts: 0,
            last_error: None,
            num_publishes: 0,
            num_publishes_refused: 0,
            recovered: if record.state.is_live() {
                record
                    .streams
                    .iter()
                    .filter(|s| matches!(s.state, StreamState::Recording | StreamState::Failed))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            },
            crashed_to: crashed,
            supervision: Supervision::new(SupervisedKind::Recorder),
            compose,
            pause: Arc::new(PauseGate::new(&record.pauses)),
            created: record.created,
            max_duration,
        }
    }

    /// A recorder rebuilt after its previous actor failed.
    pub fn after_restart(mut self, restarts: u32, error: ErrorInfo) -> Self {
        self.restarts = restarts;
        self.last_error = Some(error);
        self
    }

    fn new_stream(&self, record: StreamRecord, restore: bool, ctx: &mut Context<Self>) -> (Stream, QuiesceSlot) {
        let (instance_id, media, notices) = (self.instance_id.clone(), self.media.clone(), ctx.address().recipient());
        let stream = if restore {
            Stream::restore(record, instance_id, media, notices)
        } else {
            Stream::new(record, instance_id, media, notices)
        };
        let slot = QuiesceSlot::default();
        let stream = stream
            .paused_by(self.pause.clone())
            .supervised(self.recovery)
            .watched_by(ctx.address().recipient(), &self.conversation_id)
            .quiesce_into(slot.clone());
        (stream, slot)
    }

    /// A stop or an abort began.
    fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping(_))
    }

    /// Until a restarted stream writes again, the instance is recovering.
    fn enter_recovery(&mut self) {
        let clock = self.media.clock.clone();
        let result = self.store.update_instance(&self.instance_id, &mut |r| {
            if r.state == InstanceState::Active {
                r.transition(InstanceState::PendingRecovery, clock.utc())?;
            }
            Ok(())
        });
        match result {
            Ok(record) => {
                self.state = record.state;
                let flush = self.store.flush();
                actix::spawn(async move {
                    let _ = flush.await;
                });
            }
            Err(e) => {
                tracing::error!(instance_id = %self.instance_id, error = %e, "cannot record a stream restart")
            }
        }
    }
}

fn media_error(err: MediaError) -> EngineError {
    match err {
        MediaError::Sdp(e) => EngineError::Invalid {
            field: "sdp",
            message: e.to_string(),
        },
        MediaError::Refused(message) => EngineError::Invalid { field: "sdp", message },
        MediaError::WebRtc(message) => EngineError::Invalid {
            field: "sdp",
            message: format!("webrtc: {message}"),
        },
        other => EngineError::Unavailable(other.to_string()),
    }
}

impl Actor for Recorder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Control messages only (publish, stop, snapshots, first-media notices); media never
        // flows through this mailbox.
        ctx.set_mailbox_capacity(64);
        // Streams that were recording when the process ended: their files are on disk.
        for record in std::mem::take(&mut self.recovered) {
            let failed = record.state == StreamState::Failed;
            let (mut stream, quiesce) = self.new_stream(record.clone(), true, ctx);
            let mut sessions = vec![RECOVERED_SESSION.to_string()];
            if failed {
                // It records no more (its budget ran out before this actor was built): restored
                // only so that a stop or an abort finishes its files; no port is bound.
                stream = stream.failed_with(ErrorInfo::new(
                    "RESTART_BUDGET_EXHAUSTED",
                    "the stream had failed before its recorder was rebuilt: only its files are finished",
                ));
            } else {
                // A plain-RTP session is re-bound by the stream as it starts: it counts as
                // connected (and its publisher's DELETE still finds it) unless the stream reports
                // otherwise.
                sessions.extend(record.rtp_session.as_ref().map(|s| s.session_id.clone()));
            }
            self.streams.push(StreamEntry {
                id: record.id.clone(),
                user_id: record.user_id.clone(),
                kind: record.kind,
                mailbox: Mailbox::new(stream.start()),
                sessions,
                link: if failed {
                    StreamLink::Failed
                } else if record.rtp_session.is_some() {
                    StreamLink::Connected
                } else {
                    StreamLink::Disconnected {
                        at: self.media.clock.now(),
                    }
                },
                restarts: 0,
                restart_times: VecDeque::new(),
                quiesce,
            });
        }
        if matches!(self.phase, Phase::Running { resume_stop: true }) {
            // The process ended while this instance was being stopped: finish the stop now.
            // The streams restore their files before they take the finish message.
            tracing::info!(instance_id = %self.instance_id, "finishing a stop interrupted by a restart");
            let stopping = self.finalize(Ending::Stop, ctx).map(|result, act, _ctx| {
                if let Err(e) = result {
                    tracing::error!(instance_id = %act.instance_id, error = %e, "interrupted stop could not be finished");
                }
            });
            ctx.spawn(stopping);
        } else {
            self.arm_duration_limit(ctx);
            if self.state == InstanceState::PendingRecovery {
                self.arm_recovery_window(ctx);
            }
        }
    }
}

impl Recorder {
    /// A recorder rebuilt `PENDING_RECOVERY` waits `recovery.window` for media; without any it
    /// aborts the instance (what was recorded before is finalized all the same).
    fn arm_recovery_window(&mut self, ctx: &mut Context<Self>) {
        let window = self.recovery.window;
        crate::clock::run_later(&self.media.clock.clone(), ctx, window, move |act, ctx| {
            if act.state != InstanceState::PendingRecovery || act.is_stopping() {
                return;
            }
            tracing::warn!(
                instance_id = %act.instance_id,
                window_secs = window.as_secs(),
                "no media resumed within the recovery window: aborting"
            );
            let error = ErrorInfo::new(
                "RECOVERY_WINDOW_EXPIRED",
                format!("no media resumed within {} s of the restart", window.as_secs()),
            );
            let aborting = act.finalize(Ending::Abort(error), ctx).map(|result, act, _ctx| {
                if let Err(e) = result {
                    tracing::error!(instance_id = %act.instance_id, error = %e, "abort failed");
                }
            });
            ctx.spawn(aborting);
        });
    }
}

/// Pauses or resumes the instance (see [`crate::messages::SetPaused`]).
#[derive(Message)]
#[rtype(result = "Result<InstanceRecord, EngineError>")]
pub struct PauseRecorder {
    pub paused: bool,
}

impl Handler<PauseRecorder> for Recorder {
    type Result = ResponseFuture<Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, msg: PauseRecorder, ctx: &mut Self::Context) -> Self::Result {
        let result = self
            .guarded(ctx, "PauseRecorder", |act, _ctx| act.set_paused(msg.paused))
            .unwrap_or_else(|| Err(restarting()));
        let flush = self.store.flush();
        Box::pin(async move {
            let record = result?;
            flush.await?;
            Ok(record)
        })
    }
}

impl Recorder {
    /// Commits the pause (or the resume) and applies it to every pump at once: a frame of a time
    /// after the pause began is not recorded from now on. The reply waits for the store's flush.
    fn set_paused(&mut self, paused: bool) -> Result<InstanceRecord, EngineError> {
        if self.is_stopping() {
            return Err(EngineError::conflict("the recorder instance is stopping"));
        }
        // The gate switches first and picks the time; the record takes that time.
        let switched = self.pause.switch(paused, self.media.clock.utc());
        let now = switched.as_ref().map_or_else(|| self.media.clock.utc(), |s| s.at);
        let mut changed = false;
        let committed = self.store.update_instance(&self.instance_id, &mut |r| {
            changed = r.set_paused(paused, now);
            Ok(())
        });
        let record = match committed {
            Ok(record) if !record.state.is_terminal() => record,
            other => {
                if let Some(switched) = switched {
                    self.pause.undo(switched);
                }
                let record = other?;
                return Err(EngineError::conflict(format!(
                    "recorder instance {} is {}",
                    record.instance_id, record.state
                )));
            }
        };
        // The record is the truth (the gate only ran ahead of it).
        self.pause.set(&record.pauses);
        if changed {
            tracing::info!(instance_id = %self.instance_id, paused, "recording {}", if paused { "paused" } else { "resumed" });
        }
        Ok(record)
    }
}

/// Moves the instance to `STOPPED`, queues its artefacts for upload and ends the actor.
#[derive(Message)]
#[rtype(result = "Result<InstanceRecord, EngineError>")]
pub struct StopRecorder;

/// The answer to a message that reached a recorder whose handler failed.
fn restarting() -> EngineError {
    EngineError::Unavailable("the recorder instance failed and is being restarted; try again".into())
}
impl Recorder {
    /// The instance's maximum duration, counted from its creation on the engine's clock (so a
    /// restart does not reset it): a warning `duration_warning` before, then a stop of its own
    /// with the stop reason `MAX_DURATION_REACHED`.
    fn arm_duration_limit(&mut self, ctx: &mut Context<Self>) {
        let Some((max, warning)) = self.max_duration else {
            return;
        };
        let clock = self.media.clock.clone();
        let age = (clock.utc() - self.created).to_std().unwrap_or_default();
        let left = max.saturating_sub(age);
        crate::clock::run_later(&clock, ctx, left.saturating_sub(warning), move |act, _ctx| {
            if act.is_stopping() || act.state.is_terminal() {
                return;
            }
            tracing::warn!(
                instance_id = %act.instance_id,
                max_secs = max.as_secs(),
                "recorder instance reaches its maximum duration soon: it will stop by itself"
            );
            let now = act.media.clock.utc();
            let stops_at = act.created + chrono::Duration::from_std(max).unwrap_or(chrono::Duration::MAX);
            let warned = act
                .store
                .get_instance(&act.instance_id)
                .and_then(|record| match record {
                    Some(record) => act.store.put_event(&crate::store::OutboxEvent::of(
                        &record,
                        crate::store::EventKind::DurationWarning,
                        now,
                        serde_json::json!({
                            "maxDurationSecs": max.as_secs(),
                            "stopsAt": stops_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        }),
                    )),
                    None => Ok(()),
                });
            if let Err(e) = warned {
                tracing::error!(instance_id = %act.instance_id, error = %e, "cannot queue the duration warning");
            }
        });
        crate::clock::run_later(&clock, ctx, left, move |act, ctx| {
            if act.is_stopping() || act.state.is_terminal() {
                return;
            }
            tracing::warn!(instance_id = %act.instance_id, max_secs = max.as_secs(), "maximum duration reached: stopping");
            let stopping = act.finalize(Ending::Expire, ctx).map(|result, act, _ctx| {
                if let Err(e) = result {
                    tracing::error!(instance_id = %act.instance_id, error = %e, "stop at the maximum duration failed");
                }
            });
            ctx.spawn(stopping);
        });
    }
}

impl SupervisedActor for Recorder {
    const KIND: SupervisedKind = SupervisedKind::Recorder;
    const FAULT_POINT: &'static str = crate::fault::RECORDER_HANDLER;

    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    fn scope_prefix(&self) -> String {
        self.conversation_id.clone()
    }

    /// The actor's fields may be half-changed, so it does not go on. The instance's truth is in
    /// the store; the conversation retires the streams and rebuilds the recorder from the record
    /// (the instance passes through `PENDING_RECOVERY`).
    fn on_crash(&mut self, _ctx: &mut Context<Self>, error: ErrorInfo) {
        self.last_error = Some(error.clone());
        let streams = self.streams.iter().map(|s| s.mailbox.addr().clone()).collect();
        match &self.crashed_to {
            Some(watch) => watch.do_send(RecorderCrashed {
                instance_id: self.instance_id.clone(),
                error,
                streams,
            }),
            // Nobody rebuilds it: at least stop its streams' ingest.
            None => {
                actix::spawn(retire_streams(streams));
            }
        }
    }
}
impl Handler<Snapshot> for Recorder {
    type Result = ResponseFuture<ActorSnapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let streams: Vec<_> = self.streams.iter().map(|s| s.mailbox.clone()).collect();
        // Time in the current state, from the record's history (the store is the truth).
        let millis_in_state = self
            .store
            .get_instance(&self.instance_id)
            .ok()
            .flatten()
            .and_then(|r| {
                r.history
                    .last()
                    .map(|(_, at)| (self.media.clock.utc() - *at).num_milliseconds().max(0) as u64)
            })
            .unwrap_or(0);
        let mut snapshot = ActorSnapshot {
            kind: "Recorder",
            id: self.instance_id.clone(),
            state: self.state.as_str().into(),
            mailbox_depth: 0,
            restarts: self.restarts,
            last_error: self.last_error.clone(),
            counters: Counters::Recorder(RecorderCounters {
                num_streams: self.streams.len() as u64,
                num_publishes: self.num_publishes,
                num_publishes_refused: self.num_publishes_refused,
                millis_in_state,
            }),
            children: vec![],
        };
        Box::pin(async move {
            for stream in &streams {
                snapshot.children.extend(snapshot_of(stream).await);
            }
            snapshot
        })
    }
}
