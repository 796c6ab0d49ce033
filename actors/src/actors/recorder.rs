//! One recorder instance: the state machine `INITIALISED → ACTIVE → STOPPED` (with `FAILED`,
//! `PENDING_RECOVERY`, `ABORTED`). Every transition is committed to the state store before it
//! is answered. Owns the instance's streams: publishers are routed here by conference, each
//! (userId, type) gets one `Stream`, and the first frame written makes the instance `ACTIVE`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use chrono::Utc;
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

use crate::domain::{ErrorInfo, InstanceRecord, InstanceState, StreamRecord, StreamState, StreamType};
use crate::engine::{MediaConfig, RecoveryConfig};
use crate::media::MediaError;
use crate::messages::{IngestTransport, Publish, PublishAnswer, Unpublish};
use crate::snapshot::{ActorSnapshot, Mailbox, Snapshot};
use crate::store::{ArtefactKind, CompositionId, CompositionState, StateStore};
use crate::EngineError;

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

/// How a recorder ends: a client's stop, or an abort decided by the recorder itself.
#[derive(Debug, Clone)]
enum Ending {
    Stop,
    Abort(ErrorInfo),
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
    /// Sessions this stream has had; the live one is the last while `connected`.
    sessions: Vec<String>,
    connected: bool,
    disconnected_at: Option<Instant>,
    /// Its restart budget ran out: it records no more.
    failed: bool,
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
        let result = self.store.update_instance(&self.instance_id, &mut |r| {
            if r.state == InstanceState::Active {
                r.transition(InstanceState::PendingRecovery, Utc::now())?;
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

    /// A stream that cannot record any more: `FAILED` in the record; an instance left without a
    /// stream that can record is aborted, and what it recorded is finalized and uploaded.
    fn stream_failed(&mut self, stream_id: &str, error: ErrorInfo, ctx: &mut Context<Self>) {
        self.last_error = Some(error.clone());
        if let Some(entry) = self.streams.iter_mut().find(|s| s.id == stream_id) {
            entry.failed = true;
            entry.connected = false;
        }
        let result = self.store.update_instance(&self.instance_id, &mut |r| {
            if let Some(stream) = r.streams.iter_mut().find(|s| s.id == stream_id) {
                stream.state = StreamState::Failed;
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::error!(instance_id = %self.instance_id, error = %e, "cannot record a failed stream");
        }
        if !self.is_stopping() && self.streams.iter().all(|s| s.failed) {
            let aborting = self.finalize(Ending::Abort(error), ctx).map(|result, act, _ctx| {
                if let Err(e) = result {
                    tracing::error!(instance_id = %act.instance_id, error = %e, "abort failed");
                }
            });
            ctx.spawn(aborting);
        } else {
            let flush = self.store.flush();
            actix::spawn(async move {
                let _ = flush.await;
            });
        }
    }

    /// Rebuilds a stream whose actor failed from its record in the store, once the failed actor
    /// released its ports and completed its files. Within the budget it records on (plain RTP
    /// re-binds its ports; a WHIP publisher must connect again, its connection ended with the
    /// actor); beyond it the stream is rebuilt only to finish its files and is `FAILED`.
    fn restart_stream(&mut self, msg: StreamCrashed, ctx: &mut Context<Self>) {
        let StreamCrashed {
            stream_id,
            error,
            quiesced,
        } = msg;
        if self.is_stopping() || self.state.is_terminal() {
            return;
        }
        let recovery = self.recovery;
        let Some(entry) = self.streams.iter_mut().find(|s| s.id == stream_id) else {
            return;
        };
        let admitted = supervision::admit_restart(&mut entry.restart_times, Instant::now(), &recovery);
        self.last_error = Some(error.clone());
        if admitted {
            entry.restarts += 1;
            self.restarts += 1;
            supervision::count_restart(SupervisedKind::Stream);
            self.enter_recovery();
        }
        tracing::warn!(instance_id = %self.instance_id, stream_id = %stream_id, admitted, "stream actor failed: rebuilding it from its record");
        // Nothing reaches the recorder until the replacement is in place: a stop meanwhile
        // would finish a dead stream.
        // Supervised like the handler's body: a panic while rebuilding crashes this recorder.
        let rebuilding = quiesced.into_actor(self).map(move |(), act, ctx| {
            let record = act
                .store
                .get_instance(&act.instance_id)
                .ok()
                .flatten()
                .and_then(|r| r.streams.into_iter().find(|s| s.id == stream_id));
            let Some(record) = record else {
                tracing::error!(instance_id = %act.instance_id, stream_id = %stream_id, "failed stream not in the record");
                return;
            };
            let is_rtp = record.rtp_session.is_some();
            let (stream, slot) = act.new_stream(record, true, ctx);
            let Some(entry) = act.streams.iter_mut().find(|s| s.id == stream_id) else {
                return;
            };
            entry.quiesce = slot;
            let stream = stream.after_restart(entry.restarts, entry.restart_times.clone(), error.clone());
            let exhausted = ErrorInfo::new(
                "RESTART_BUDGET_EXHAUSTED",
                format!(
                    "stream failed {} times within {} s; it is not restarted again (last: {})",
                    entry.restart_times.len(),
                    recovery.restart_window.as_secs(),
                    error.message
                ),
            );
            let stream = if admitted {
                stream
            } else {
                stream.failed_with(exhausted.clone())
            };
            entry.mailbox = Mailbox::new(stream.start());
            if !is_rtp || !admitted {
                entry.connected = false;
                entry.disconnected_at = Some(Instant::now());
            }
            if !admitted {
                act.stream_failed(&stream_id, exhausted, ctx);
            }
        });
        ctx.wait(supervision::guard("StreamCrashed", Box::pin(rebuilding), ()));
    }

    /// The stream a publisher of (userId, type) continues: the connected one, or one that lost
    /// its connection within the grace period. Otherwise a new stream.
    fn stream_for(
        &mut self,
        user_id: &str,
        kind: StreamType,
        ctx: &mut Context<Self>,
    ) -> Result<(usize, bool), EngineError> {
        let grace = self.media.reconnect_grace;
        let found = self.streams.iter().rposition(|s| {
            s.user_id == user_id
                && s.kind == kind
                && !s.failed
                && (s.connected || s.disconnected_at.is_some_and(|at| at.elapsed() <= grace) || s.sessions.is_empty())
        });
        if let Some(at) = found {
            return Ok((at, false));
        }
        if self.streams.len() >= self.max_streams {
            return Err(EngineError::limit(
                "max_streams_per_instance",
                format!("the recorder instance has {} streams already", self.streams.len()),
            ));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let record = StreamRecord {
            id: id.clone(),
            user_id: user_id.to_string(),
            kind,
            state: StreamState::Recording,
            started: None,
            stopped: None,
            rtp_session: None,
            tracks: vec![],
        };
        let (stream, quiesce) = self.new_stream(record, false, ctx);
        self.streams.push(StreamEntry {
            id,
            user_id: user_id.to_string(),
            kind,
            mailbox: Mailbox::new(stream.start()),
            sessions: Vec::new(),
            connected: false,
            disconnected_at: None,
            failed: false,
            restarts: 0,
            restart_times: VecDeque::new(),
            quiesce,
        });
        Ok((self.streams.len() - 1, true))
    }
}

/// Adds or refreshes a stream in the instance record, keeping what the record already knows
/// (start times set at first media) where the stream's own copy has nothing newer.
fn merge_stream(record: &mut InstanceRecord, stream: &StreamRecord) {
    match record.streams.iter_mut().find(|s| s.id == stream.id) {
        None => record.streams.push(stream.clone()),
        Some(existing) => {
            existing.state = stream.state;
            existing.started = stream.started.or(existing.started);
            existing.stopped = stream.stopped.or(existing.stopped);
            existing.rtp_session = stream.rtp_session.clone();
            for track in &stream.tracks {
                match existing.tracks.iter_mut().find(|t| t.id == track.id) {
                    None => existing.tracks.push(track.clone()),
                    Some(t) => {
                        t.started = track.started.or(t.started);
                        t.stopped = track.stopped.or(t.stopped);
                        if track.local.location.is_some() {
                            t.local.location = track.local.location.clone();
                        }
                        t.local.created = track.local.created.or(t.local.created);
                        if track.local.error.is_some() {
                            t.local.error = track.local.error.clone();
                        }
                    }
                }
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
                connected: !failed && record.rtp_session.is_some(),
                disconnected_at: Some(Instant::now()),
                failed,
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
        } else if self.state == InstanceState::PendingRecovery {
            let window = self.recovery.window;
            ctx.run_later(window, move |act, ctx| {
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
}

/// Moves the instance to `STOPPED`, queues its artefacts for upload and ends the actor.
#[derive(Message)]
#[rtype(result = "Result<InstanceRecord, EngineError>")]
pub struct StopRecorder;

impl Handler<Publish> for Recorder {
    type Result = ResponseActFuture<Self, Result<PublishAnswer, EngineError>>;

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) -> Self::Result {
        match self.guarded(ctx, "Publish", |act, ctx| act.publish(msg, ctx)) {
            Some(publishing) => publishing,
            None => Box::pin(fut::ready(Err(restarting()))),
        }
    }
}

/// The answer to a message that reached a recorder whose handler failed.
fn restarting() -> EngineError {
    EngineError::Unavailable("the recorder instance failed and is being restarted; try again".into())
}

impl Recorder {
    fn publish(
        &mut self,
        msg: Publish,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<PublishAnswer, EngineError>> {
        if self.is_stopping() || self.state.is_terminal() {
            self.num_publishes_refused += 1;
            return Box::pin(fut::ready(Err(EngineError::conflict(
                "the recorder instance is stopping",
            ))));
        }
        let offer = match msg.transport {
            IngestTransport::Rtp => match crate::media::sdp::parse_offer(&msg.offer_sdp) {
                Ok(offer) => Some(offer),
                Err(e) => {
                    self.num_publishes_refused += 1;
                    return Box::pin(fut::ready(Err(media_error(e.into()))));
                }
            },
            IngestTransport::Whip => None,
        };
        let (at, created) = match self.stream_for(&msg.user_id, msg.kind, ctx) {
            Ok(found) => found,
            Err(err) => {
                self.num_publishes_refused += 1;
                return Box::pin(fut::ready(Err(err)));
            }
        };
        let entry = &self.streams[at];
        let stream = entry.mailbox.clone();
        let stream_id = entry.id.clone();
        let session_id = uuid::Uuid::new_v4().simple().to_string();
        let (audio, video) = (self.audio, self.video);
        let sid = session_id.clone();
        let opening = async move {
            let opened: Result<OpenedSession, MediaError> = match offer {
                Some(offer) => {
                    stream
                        .send(OpenRtp {
                            session_id: sid,
                            permit: msg.permit,
                            any_source: msg.rtp_any_source,
                            offer,
                            audio,
                            video,
                        })
                        .await?
                }
                None => {
                    stream
                        .send(OpenWhip {
                            session_id: sid,
                            permit: msg.permit,
                            offer_sdp: msg.offer_sdp,
                            audio,
                            video,
                        })
                        .await?
                }
            };
            opened.map_err(media_error)
        };
        let store = self.store.clone();
        let instance_id = self.instance_id.clone();
        let continuation = opening.into_actor(self).then(move |opened, act, _ctx| {
            // The handler's continuation is supervised too (see `supervision::Guarded`).
            act.continuation_point("Publish");
            let result = opened.and_then(|opened| {
                if act.is_stopping() {
                    // The stop began while this publisher was being answered: the stop owns
                    // the record now (its stream was finished with the others).
                    return Err(EngineError::conflict("the recorder instance is stopping"));
                }
                store.update_instance(&instance_id, &mut |r| {
                    merge_stream(r, &opened.record);
                    Ok(())
                })?;
                Ok(opened)
            });
            match &result {
                Ok(_) => {
                    act.num_publishes += 1;
                    if let Some(entry) = act.streams.iter_mut().find(|s| s.id == stream_id) {
                        entry.connected = true;
                        entry.disconnected_at = None;
                        entry.sessions.push(session_id.clone());
                    }
                }
                Err(_) => {
                    act.num_publishes_refused += 1;
                    if created {
                        // Nothing was recorded on it: drop the stream (its actor ends with the
                        // last address).
                        act.streams.retain(|s| s.id != stream_id);
                    }
                }
            }
            let flush = store.flush();
            async move {
                let opened = result?;
                flush.await?;
                Ok(PublishAnswer {
                    session_id,
                    answer_sdp: opened.answer_sdp,
                    instance_id,
                    stream_id,
                })
            }
            .into_actor(act)
        });
        Box::pin(supervision::guard("Publish", Box::pin(continuation), Err(restarting())))
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

impl Handler<Unpublish> for Recorder {
    type Result = ResponseFuture<Result<(), EngineError>>;

    fn handle(&mut self, msg: Unpublish, ctx: &mut Self::Context) -> Self::Result {
        let session_id = msg.session_id.clone();
        let Some(stream) = self.guarded(ctx, "Unpublish", |act, _ctx| {
            act.streams
                .iter()
                .find(|s| s.sessions.contains(&session_id))
                .map(|s| s.mailbox.clone())
        }) else {
            return Box::pin(fut::ready(Err(restarting())));
        };
        Box::pin(async move {
            let missing = || EngineError::not_found(format!("no live publisher session {}", msg.session_id));
            let stream = stream.ok_or_else(missing)?;
            if stream
                .send(EndSession {
                    session_id: msg.session_id.clone(),
                })
                .await?
            {
                Ok(())
            } else {
                Err(missing())
            }
        })
    }
}

impl Handler<StreamNotice> for Recorder {
    type Result = ();

    fn handle(&mut self, msg: StreamNotice, ctx: &mut Self::Context) {
        self.guarded(ctx, "StreamNotice", |act, ctx| act.stream_notice(msg, ctx));
    }
}

impl Handler<StreamCrashed> for Recorder {
    type Result = ();

    fn handle(&mut self, msg: StreamCrashed, ctx: &mut Self::Context) {
        self.guarded(ctx, "StreamCrashed", |act, ctx| act.restart_stream(msg, ctx));
    }
}

impl Handler<AbortRecorder> for Recorder {
    type Result = ResponseActFuture<Self, Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, msg: AbortRecorder, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, "AbortRecorder", |act, ctx| act.finalize(Ending::Abort(msg.0), ctx))
            .unwrap_or_else(|| Box::pin(fut::ready(Err(restarting()))))
    }
}

impl Recorder {
    fn stream_notice(&mut self, msg: StreamNotice, ctx: &mut Context<Self>) {
        match msg {
            StreamNotice::MediaStarted {
                stream_id,
                track_id,
                at,
            } => {
                let mut became_active = false;
                let result = self.store.update_instance(&self.instance_id, &mut |r| {
                    became_active = false;
                    match r.state {
                        InstanceState::Initialised => {
                            r.transition(InstanceState::Active, Utc::now())?;
                            became_active = true;
                        }
                        InstanceState::PendingRecovery => {
                            r.transition(InstanceState::Active, Utc::now())?;
                            r.recovered = Some(Utc::now());
                            became_active = true;
                        }
                        _ => {}
                    }
                    if let Some(stream) = r.streams.iter_mut().find(|s| s.id == stream_id) {
                        stream.started.get_or_insert(at);
                        if let Some(track) = stream.tracks.iter_mut().find(|t| t.id == track_id) {
                            track.started.get_or_insert(at);
                            track.local.created.get_or_insert(Utc::now());
                        }
                    }
                    Ok(())
                });
                match result {
                    Ok(record) => {
                        self.state = record.state;
                        if became_active {
                            tracing::info!(instance_id = %self.instance_id, "recorder instance active: first media");
                        }
                        let flush = self.store.flush();
                        let instance_id = self.instance_id.clone();
                        actix::spawn(async move {
                            if let Err(e) = flush.await {
                                tracing::error!(instance_id = %instance_id, error = %e, "state store flush failed");
                            }
                        });
                    }
                    Err(e) => tracing::error!(instance_id = %self.instance_id, error = %e, "cannot record first media"),
                }
            }
            StreamNotice::SessionChanged { stream_id, rtp_session } => {
                let result = self.store.update_instance(&self.instance_id, &mut |r| {
                    if let Some(stream) = r.streams.iter_mut().find(|s| s.id == stream_id) {
                        stream.rtp_session = rtp_session.clone();
                    }
                    Ok(())
                });
                match result {
                    // Not acknowledged to anyone: written with the next flush (at most one group
                    // commit later); a crash before that re-binds with what was known.
                    Ok(_) => {
                        let flush = self.store.flush();
                        actix::spawn(async move {
                            let _ = flush.await;
                        });
                    }
                    Err(e) => {
                        tracing::error!(instance_id = %self.instance_id, error = %e, "cannot record the rtp session")
                    }
                }
            }
            StreamNotice::Restarting { stream_id } => {
                self.restarts += 1;
                self.last_error = Some(ErrorInfo::new(
                    "STREAM_RESTARTED",
                    format!("stream {stream_id} restarted after a writer failure"),
                ));
                let recovery = self.recovery;
                if let Some(entry) = self.streams.iter_mut().find(|s| s.id == stream_id) {
                    // The stream judged its budget itself; the entry keeps the history for a
                    // rebuilt actor.
                    entry.restarts += 1;
                    supervision::admit_restart(&mut entry.restart_times, Instant::now(), &recovery);
                }
                self.enter_recovery();
            }
            StreamNotice::Failed { stream_id, error } => self.stream_failed(&stream_id, error, ctx),
            StreamNotice::Disconnected { stream_id, session_id } => {
                if let Some(entry) = self.streams.iter_mut().find(|s| s.id == stream_id) {
                    if entry.sessions.last() == Some(&session_id) {
                        entry.connected = false;
                        entry.disconnected_at = Some(Instant::now());
                    }
                }
            }
        }
    }
}

impl Handler<StopRecorder> for Recorder {
    type Result = ResponseActFuture<Self, Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, _msg: StopRecorder, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, "StopRecorder", |act, ctx| act.finalize(Ending::Stop, ctx))
            .unwrap_or_else(|| Box::pin(fut::ready(Err(restarting()))))
    }
}

impl Recorder {
    /// Finishes every stream (files finalized and joined), commits the terminal state with every
    /// artefact queued for upload, tells the registry and ends the actor. A second call while
    /// one runs waits for it and answers what it committed.
    fn finalize(
        &mut self,
        ending: Ending,
        _ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<InstanceRecord, EngineError>> {
        let handler = match ending {
            Ending::Stop => "StopRecorder",
            Ending::Abort(_) => "AbortRecorder",
        };
        if let Phase::Stopping(finalized) = &self.phase {
            let finalized = finalized.clone();
            let store = self.store.clone();
            let instance_id = self.instance_id.clone();
            // If the finalization it waits for fails by a panic, this actor ends and the waiter
            // with it: its caller gets an error (a closed mailbox), never a hang.
            return Box::pin(
                async move {
                    let _ = finalized.await;
                    match store.get_instance(&instance_id)? {
                        Some(record) if record.state.is_terminal() => Ok(record),
                        _ => Err(EngineError::Unavailable(
                            "the recorder instance could not be stopped".into(),
                        )),
                    }
                }
                .into_actor(self),
            );
        }
        let (done_tx, done_rx) = oneshot::channel();
        self.phase = Phase::Stopping(done_rx.shared());
        let streams: Vec<_> = self
            .streams
            .iter()
            .map(|s| (s.mailbox.clone(), s.quiesce.clone()))
            .collect();
        let store = self.store.clone();
        let instance_id = self.instance_id.clone();
        let compose = self.compose;
        // A stop is marked durably before any file is touched: if the process ends while the
        // files are finalized, boot finishes this stop (see `started`) instead of waiting for
        // media that will not come.
        let marked = match ending {
            Ending::Stop => store
                .update_instance(&instance_id, &mut |r| {
                    r.stop_requested.get_or_insert_with(Utc::now);
                    Ok(())
                })
                .map(|_| ()),
            Ending::Abort(_) => Ok(()),
        };
        let marker_flush = store.flush();
        // Every file is finalized (trailer, cues, segments joined) before the stop commits:
        // STOPPED means the recording on disk is complete.
        let finishing = async move {
            marked?;
            marker_flush.await?;
            let finished = join_all(streams.iter().map(|(s, _)| s.send(FinishStream))).await;
            // A stream actor that failed (before or during its finish) is gone, but its writer
            // threads are still completing its files: wait for that before this stop goes on —
            // a failed finish makes this recorder crash and its rebuild read those files.
            for ((_, slot), answer) in streams.iter().zip(&finished) {
                if !matches!(answer, Ok(Ok(_))) {
                    let quiescing = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Some(quiescing) = quiescing {
                        quiescing.await;
                    }
                }
            }
            // After the files, before the commit: the step a crash during stop interrupts.
            crate::fault::point(crate::fault::FINALIZE).map_err(|e| EngineError::Unavailable(e.to_string()))?;
            Ok::<_, EngineError>(finished)
        };
        // The continuation is supervised (`supervision::guard`): a panic anywhere in it crashes
        // this recorder and answers `restarting()`. The conversation rebuilds the recorder from
        // the record, whose `stop_requested` makes the new actor finish the stop from the files
        // on disk (see `started`) — the path of a process killed during a stop — so the stop is
        // committed once, by whichever actor gets through it.
        let continuation = finishing.into_actor(self).then(move |finished, act, ctx| {
            act.continuation_point(handler);
            // A stream whose finish failed (its actor crashed in its continuation) left its
            // files complete on disk but its record does not name them: committing now would
            // drop its tracks. The recorder crashes instead and its rebuild finishes the stop
            // from the files, as after a restart.
            let lost: Vec<String> = match &finished {
                Ok(finished) => finished
                    .iter()
                    .filter_map(|f| match f {
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(e) => Some(e.to_string()),
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            if !lost.is_empty() {
                act.crash(ctx, handler, format!("a stream could not finish: {}", lost.join("; ")));
            }
            let crashed = act.supervision.has_crashed();
            let result = (|| {
                if crashed {
                    return Err(restarting());
                }
                let finished: Vec<StreamRecord> = finished?.into_iter().flatten().flatten().collect();
                // Read before the transaction: whether an earlier instance of the composition
                // recorded media (this one's tracks are in the record the transaction reads).
                let others_have_media = compose && conversation_has_media(store.as_ref(), &instance_id)?;
                let mut committed = None;
                // One transaction: the terminal state with the streams' final records, the
                // composition job and every upload job. A crash anywhere before its commit leaves
                // the instance live with `stop_requested`, and the next recorder stops it again.
                store.transaction(&mut |tx| {
                    let mut artefacts = Vec::new();
                    let mut ended_here = false;
                    let record = tx.update_instance(&instance_id, &mut |r| {
                        artefacts.clear();
                        ended_here = false;
                        if r.state.is_terminal() {
                            // A stop that queued behind another one: the first already did the work.
                            return Ok(());
                        }
                        for stream in &finished {
                            merge_stream(r, stream);
                        }
                        match &ending {
                            Ending::Stop => r.transition(InstanceState::Stopped, Utc::now())?,
                            Ending::Abort(error) => {
                                // An instance aborted while ACTIVE (media of the last stream that
                                // could record resumed meanwhile) passes through recovery first.
                                if r.state != InstanceState::PendingRecovery {
                                    r.transition(InstanceState::PendingRecovery, Utc::now())?;
                                }
                                r.transition(InstanceState::Aborted, Utc::now())?;
                                r.error = Some(error.clone());
                            }
                        }
                        artefacts = terminal_artefacts(r);
                        ended_here = true;
                        Ok(())
                    })?;
                    tx.step("stop", "terminal_state_written", &instance_id);
                    // The composition job goes with the upload jobs: an uploader that sees it
                    // pending keeps the local track files for the compositor. Stopped and aborted
                    // instances alike: an aborted call's media is worth a composed file too.
                    if compose && ended_here {
                        let now = Utc::now();
                        let composition = CompositionId::of_instance(&record);
                        tx.queue_composition(&composition, &record.instance_id, now)?;
                        if !others_have_media && !has_media(&record) {
                            // Nothing to compose: the outcome is known now, so the compositor
                            // gets no job (a call that never published costs no composition run).
                            tx.update_composition(&composition, &mut |c| {
                                c.state = CompositionState::Failed;
                                c.started = Some(now);
                                c.stopped = Some(now);
                                c.error = Some(ErrorInfo::new(
                                    "COMPOSITION_FAILED",
                                    "the conversation recorded no media: nothing to compose",
                                ));
                                Ok(())
                            })?;
                        }
                        tx.step("stop", "composition_queued", &instance_id);
                    }
                    for (n, artefact) in artefacts.into_iter().enumerate() {
                        enqueue_artefact(tx, &record, artefact)?;
                        if n == 0 {
                            tx.step("stop", "first_job_queued", &instance_id);
                        }
                    }
                    committed = Some(record);
                    Ok(())
                })?;
                let record = committed.expect("a committed transaction set it");
                Ok::<_, EngineError>(record)
            })();
            let flush = store.flush();
            async move {
                let record = result?;
                flush.await?;
                Ok(record)
            }
            .into_actor(act)
            .map(move |result: Result<InstanceRecord, EngineError>, act, ctx| {
                match &result {
                    Ok(record) => {
                        act.state = record.state;
                        tracing::info!(instance_id = %record.instance_id, state = record.state.as_str(), "recorder instance ended");
                        if let Some(uploader) = &act.uploader {
                            uploader.do_send(Kick);
                        }
                        if let Some(ended) = &act.ended {
                            ended.do_send(InstanceEnded {
                                organization_id: act.organization_id.clone(),
                                conversation_id: act.conversation_id.clone(),
                                instance_id: act.instance_id.clone(),
                            });
                        }
                        ctx.stop();
                    }
                    Err(_) => {
                        act.phase = Phase::Running { resume_stop: false };
                    }
                }
                let _ = done_tx.send(());
                result
            })
        });
        Box::pin(supervision::guard(handler, Box::pin(continuation), Err(restarting())))
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
                    .map(|(_, at)| (Utc::now() - *at).num_milliseconds().max(0) as u64)
            })
            .unwrap_or(0);
        let mut snapshot = ActorSnapshot {
            kind: "Recorder",
            id: self.instance_id.clone(),
            state: self.state.as_str().into(),
            mailbox_depth: 0,
            restarts: self.restarts,
            last_error: self.last_error.clone(),
            counters: BTreeMap::from([
                ("num_streams", self.streams.len() as u64),
                ("num_publishes", self.num_publishes),
                ("num_publishes_refused", self.num_publishes_refused),
                ("millis_in_state", millis_in_state),
            ]),
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

/// Whether an ended instance of the composition of `instance_id` other than itself (its
/// application's instances of its conversation) has a track file.
fn conversation_has_media(store: &dyn StateStore, instance_id: &str) -> Result<bool, EngineError> {
    let Some(record) = store.get_instance(instance_id)? else {
        return Ok(false);
    };
    let composition = CompositionId::of_instance(&record);
    Ok(store
        .conversation_instances(&record.organization_id, &record.conversation_id)?
        .iter()
        .filter(|i| i.instance_id != instance_id && i.state.is_terminal() && composition.includes(i))
        .any(has_media))
}

fn has_media(record: &InstanceRecord) -> bool {
    record
        .streams
        .iter()
        .flat_map(|s| s.tracks.iter())
        .any(|t| t.local.location.is_some())
}

/// What an instance that just ended uploads: every track file not uploaded yet, the transcript,
/// each co-browse session and, last, `recording.json` (the uploader holds a manifest back while
/// any other job of its instance is queued).
fn terminal_artefacts(r: &InstanceRecord) -> Vec<ArtefactKind> {
    let mut artefacts = Vec::new();
    for stream in &r.streams {
        for track in &stream.tracks {
            if let (Some(location), None) = (&track.local.location, &track.object.uploaded) {
                artefacts.push(ArtefactKind::TrackFile {
                    stream_id: stream.id.clone(),
                    track_id: track.id.clone(),
                    local_path: location.clone(),
                });
            }
        }
    }
    if r.num_transcript_entries > 0 {
        artefacts.push(ArtefactKind::ChatTranscript);
    }
    for session_id in r.cobrowse_sessions.keys() {
        artefacts.push(ArtefactKind::CobrowseSession {
            session_id: session_id.clone(),
        });
    }
    artefacts.push(ArtefactKind::Manifest);
    artefacts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LocalFileRecord, ObjectRecord, TrackRecord, TrackType};
    use chrono::TimeZone;

    fn track(id: &str, started: Option<i64>, location: Option<&str>) -> TrackRecord {
        TrackRecord {
            id: id.into(),
            kind: TrackType::Video,
            started: started.and_then(|s| Utc.timestamp_opt(s, 0).single()),
            stopped: None,
            local: LocalFileRecord {
                location: location.map(Into::into),
                ..Default::default()
            },
            object: ObjectRecord::default(),
        }
    }

    fn stream(tracks: Vec<TrackRecord>, state: StreamState) -> StreamRecord {
        StreamRecord {
            id: "s".into(),
            user_id: "u".into(),
            kind: StreamType::Cam,
            state,
            started: None,
            stopped: None,
            tracks,
            rtp_session: None,
        }
    }

    #[test]
    fn merging_keeps_what_the_record_knew_and_takes_what_is_new() {
        let mut record = InstanceRecord {
            schema_version: 1,
            instance_id: "i".into(),
            recorder_id: "r".into(),
            organization_id: "o".into(),
            application_id: "a".into(),
            conversation_id: "c".into(),
            conference_id: "f".into(),
            audio: true,
            video: true,
            state: InstanceState::Active,
            created: Utc::now(),
            started: None,
            stopped: None,
            recovered: None,
            error: None,
            provider: crate::domain::Provider::Local,
            storage_url: String::new(),
            streams: vec![],
            transcript: None,
            num_transcript_entries: 0,
            cobrowse_sessions: Default::default(),
            history: vec![],
            stop_requested: None,
        };
        // Publish: the stream appears with its track.
        merge_stream(
            &mut record,
            &stream(vec![track("t1", None, None)], StreamState::Recording),
        );
        // First media set the track's start in the record meanwhile.
        record.streams[0].tracks[0].started = Utc.timestamp_opt(100, 0).single();
        // A reconnect adds a track; the stream's copy does not know the start: it stays.
        merge_stream(
            &mut record,
            &stream(
                vec![track("t1", None, None), track("t2", None, None)],
                StreamState::Recording,
            ),
        );
        assert_eq!(record.streams.len(), 1);
        assert_eq!(record.streams[0].tracks.len(), 2);
        assert_eq!(record.streams[0].tracks[0].started, Utc.timestamp_opt(100, 0).single());
        // The finish brings the location, a refined start and the final state.
        merge_stream(
            &mut record,
            &stream(vec![track("t1", Some(99), Some("/f.webm"))], StreamState::Stopped),
        );
        let t1 = &record.streams[0].tracks[0];
        assert_eq!(t1.local.location.as_deref(), Some("/f.webm"));
        assert_eq!(t1.started, Utc.timestamp_opt(99, 0).single());
        assert_eq!(record.streams[0].state, StreamState::Stopped);
        assert_eq!(
            record.streams[0].tracks.len(),
            2,
            "a track the finished copy lacks is kept"
        );
    }
}
