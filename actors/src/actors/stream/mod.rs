//! One published stream (CAM, MIC, SCREEN, ...) of one user within a recorder instance. Owns its
//! tracks' writers: one segment per publisher connection, joined into one file per track when the
//! stream finishes. Ingest threads (plain RTP) or tasks (WHIP) report to it with [`IngestNotice`];
//! frames never pass through this actor.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::domain::{ErrorInfo, RtpMediaRecord, RtpSessionRecord, SilenceSpan, StreamRecord, StreamState, TrackRecord};
use crate::engine::{MediaConfig, RecoveryConfig};
use crate::media::codec::Codec;
use crate::media::ingest::{EventSink, IngestEvent, SinkSwap, TrackCounters, TrackPump, TrackSummary};
use crate::media::join::join_segments;
use crate::media::pause::PauseGate;
use crate::media::plain_rtp::BoundMedia;
use crate::media::receive::{self, PlainRtpSession};
use crate::media::receiver::TrackReceiver;
use crate::media::sdp::{build_answer, Accepted, MediaAnswer, SessionOffer};
use crate::media::segment::{plan_join, segment_path, track_path, SegmentInfo};
use crate::media::whip::WhipSession;
use crate::media::writer::{SegmentReport, TrackWriter, WriterStats};
use crate::media::MediaError;
use crate::snapshot::{ActorSnapshot, Snapshot};

use super::supervision::{self, SupervisedActor, SupervisedKind, Supervision};

mod finish;
mod negotiate;
mod restore;
mod session;
mod snapshot;
mod writers;

use restore::restore_tracks;
use session::{Ingest, LiveSession};

/// The session id of segments found on disk after a restart.
pub(crate) const RECOVERED_SESSION: &str = "recovered";
/// The session id of a track's final file found on disk after a restart (a stop that had
/// finalized the files but not committed).
const FINALIZED_SESSION: &str = "finalized";

/// How long a finishing stream waits for its ingest threads to hand over their summaries.
const INGEST_STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a stream that stops after a handler failure waits for its ingest to end (ports
/// released) and its writers to finish their files, before its replacement is built anyway.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a failed Stream actor leaves the future of its quiesce (ingest stopped, every writer's
/// file complete). The actor's mailbox closes at once, so a stop that finds it gone waits on this
/// before anything (its recorder's rebuild) reads the stream's files.
pub type QuiesceSlot = Arc<std::sync::Mutex<Option<futures_util::future::Shared<BoxFuture<'static, ()>>>>>;

pub struct Stream {
    record: StreamRecord,
    instance_id: String,
    dir: PathBuf,
    media: Arc<MediaConfig>,
    recorder: Recipient<StreamNotice>,
    tracks: Vec<TrackState>,
    session: Option<LiveSession>,
    num_sessions: u64,
    last_error: Option<ErrorInfo>,
    /// Set for a stream recovered after a restart: its segment files are read when it starts
    /// (read once, in `started`; not a phase: a restored stream may be live or failed).
    needs_restore: bool,
    /// A recovered plain-RTP session's sockets, bound the moment the actor starts (before its
    /// files are read back): the kernel keeps what the sender goes on sending, stamped with its
    /// arrival, until the session is resumed on them. Keyed by RTP port.
    prebound: HashMap<u16, (std::net::UdpSocket, Option<std::net::UdpSocket>)>,
    recovery: RecoveryConfig,
    /// Supervision: writer failures handled so far, and when (for the restart budget).
    restarts: u32,
    restart_times: VecDeque<Instant>,
    /// Segments whose writer failed and were replaced: their error is not the stream's.
    failed_segments: HashSet<(String, usize)>,
    phase: StreamPhase,
    /// Told when a handler of this actor failed: the recorder rebuilds the stream from its
    /// record.
    watch: Option<Recipient<StreamCrashed>>,
    quiesce_slot: Option<QuiesceSlot>,
    /// The conversation this stream belongs to, for the scope of its fault point.
    conversation_id: String,
    /// Whether a handler failed (the actor quiesced and takes no more work), and its progress.
    supervision: Supervision,
    /// When the stream entered its current state (for the debug tree's `millis_in_state`).
    state_since: Instant,
    /// The instance's pause intervals, shared with the recorder; every pump drops the frames
    /// inside them.
    pause: Arc<PauseGate>,
}

/// Where a stream is in its life. One value, so a failed stream cannot also be waiting to re-bind
/// its session; a failed handler ends the actor in any phase (see [`Supervision`]).
#[derive(Debug, Clone, PartialEq)]
enum StreamPhase {
    /// Recording, or waiting for a publisher.
    Live,
    /// A writer failed: the plain-RTP session is ending, and this one is bound in its place (same
    /// ports, same sender, new segments) once it has.
    RestartingRtp(RtpSessionRecord),
    /// The restart budget ran out (or the session could not be restarted): no more media; the
    /// stream waits for its finish and ends `FAILED`.
    Failed,
}

struct TrackState {
    id: String,
    codec: Codec,
    counters: Arc<TrackCounters>,
    segments: Vec<Segment>,
    created: Option<DateTime<Utc>>,
    /// Said to the recorder (and the log): packets arrive and no frame can be written.
    not_writing: bool,
}

struct Segment {
    index: usize,
    session_id: String,
    state: SegmentState,
    summary: Option<TrackSummary>,
    stats: Arc<WriterStats>,
    /// Started by supervision on a connection that stayed up (WHIP): the connection's summary
    /// (its start time) belongs to the session's first segment, not to this one.
    continues: bool,
}

/// Where a segment's file is in its life. One value, so a segment cannot be both written and
/// finished.
enum SegmentState {
    /// Its writer takes frames.
    Writing(TrackWriter),
    /// Its writer was asked to finish (its connection ended, or supervision replaced it); the
    /// report comes once the file is complete.
    Finishing(futures_util::future::Shared<BoxFuture<'static, SegmentReport>>),
    /// Its file is complete (finished, or read back after a restart).
    Done(SegmentReport),
    /// Given to a stop's finish or a quiesce, which await it.
    HandedOver,
}

impl Segment {
    fn is_writing(&self) -> bool {
        matches!(self.state, SegmentState::Writing(_))
    }

    /// Asks a writing segment's writer to finish; the shared report, which whoever needs the
    /// file complete awaits. `None` once handed over.
    fn begin_finish(&mut self) -> Option<futures_util::future::Shared<BoxFuture<'static, SegmentReport>>> {
        match std::mem::replace(&mut self.state, SegmentState::HandedOver) {
            SegmentState::Writing(writer) => {
                let finishing = writer.begin_finish().boxed().shared();
                self.state = SegmentState::Finishing(finishing.clone());
                Some(finishing)
            }
            SegmentState::Finishing(finishing) => {
                self.state = SegmentState::Finishing(finishing.clone());
                Some(finishing)
            }
            SegmentState::Done(report) => {
                let ready = futures_util::future::ready(report.clone()).boxed().shared();
                self.state = SegmentState::Done(report);
                Some(ready)
            }
            SegmentState::HandedOver => None,
        }
    }
}

impl Stream {
    pub fn new(
        record: StreamRecord,
        instance_id: String,
        media: Arc<MediaConfig>,
        recorder: Recipient<StreamNotice>,
    ) -> Self {
        let dir = media.media_dir.join(&instance_id).join(&record.id);
        let state_since = media.clock.now();
        Self {
            record,
            instance_id,
            dir,
            media,
            recorder,
            tracks: Vec::new(),
            session: None,
            num_sessions: 0,
            last_error: None,
            needs_restore: false,
            prebound: HashMap::new(),
            recovery: RecoveryConfig::default(),
            restarts: 0,
            restart_times: VecDeque::new(),
            failed_segments: HashSet::new(),
            phase: StreamPhase::Live,
            watch: None,
            quiesce_slot: None,
            conversation_id: String::new(),
            supervision: Supervision::new(SupervisedKind::Stream),
            state_since,
            pause: Arc::default(),
        }
    }

    /// Drops the frames the instance's pauses cover (the recorder's gate).
    pub fn paused_by(mut self, pause: Arc<PauseGate>) -> Self {
        self.pause = pause;
        self
    }

    /// Sets the restart budget of this stream's supervision.
    pub fn supervised(mut self, recovery: RecoveryConfig) -> Self {
        self.recovery = recovery;
        self
    }

    /// Reports a failed handler to `watch` (the recorder, which rebuilds the stream).
    pub fn watched_by(mut self, watch: Recipient<StreamCrashed>, conversation_id: &str) -> Self {
        self.watch = Some(watch);
        self.conversation_id = conversation_id.to_string();
        self
    }

    /// Where this actor leaves its quiesce if it fails (see [`QuiesceSlot`]).
    pub fn quiesce_into(mut self, slot: QuiesceSlot) -> Self {
        self.quiesce_slot = Some(slot);
        self
    }

    /// A stream rebuilt after its actor failed: the restarts so far (and when, for the budget)
    /// and the error that ended the previous actor.
    pub fn after_restart(mut self, restarts: u32, restart_times: VecDeque<Instant>, error: ErrorInfo) -> Self {
        self.restarts = restarts;
        self.restart_times = restart_times;
        self.last_error = Some(error);
        self
    }

    /// A stream rebuilt only to finish what it recorded: its restart budget ran out, it binds no
    /// port and ends `FAILED`.
    pub fn failed_with(mut self, error: ErrorInfo) -> Self {
        self.phase = StreamPhase::Failed;
        self.record.state = StreamState::Failed;
        self.record.rtp_session = None;
        self.last_error = Some(error);
        self.state_since = self.media.clock.now();
        self
    }

    /// The restart budget ran out: no more media.
    fn has_failed(&self) -> bool {
        self.phase == StreamPhase::Failed
    }

    /// The session to bind in place of the one that just ended, if a restart waits for it; the
    /// stream is live again from then on. Any other phase is kept: a failed stream whose
    /// session ends stays failed.
    fn take_rtp_restart(&mut self) -> Option<RtpSessionRecord> {
        match std::mem::replace(&mut self.phase, StreamPhase::Live) {
            StreamPhase::RestartingRtp(rtp) => Some(rtp),
            other => {
                self.phase = other;
                None
            }
        }
    }
}

fn to_datetime(micros: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_micros(micros).single()
}

impl Actor for Stream {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Control messages and ingest notices (a few per track per connection); ingest sends
        // with do_send, which is not held back by this capacity.
        ctx.set_mailbox_capacity(64);
        // Writers run on their own threads and fail there; a failure shows in their shared
        // stats, looked at this often (a restart within the loss a crash would cause).
        ctx.run_interval(Duration::from_millis(200), |_act, ctx| ctx.notify(SupervisionTick));
        if self.needs_restore {
            // The ports first: a sender that kept sending through the crash loses only the
            // downtime, however long the files below take to read back.
            if let Some(session) = &self.record.rtp_session {
                for media in &session.media {
                    match self.media.ports.bind_exact(media.rtp_port, media.rtcp_port) {
                        Ok(sockets) => {
                            self.prebound.insert(media.rtp_port, sockets);
                        }
                        // Tried again (and reported) when the session resumes.
                        Err(e) => tracing::debug!(port = media.rtp_port, error = %e, "port not pre-bound"),
                    }
                }
            }
            // Reading the files is blocking work: a thread of its own. Until it is done the
            // actor takes no message (ctx.wait), so nothing sees a half-restored stream.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (dir, tracks, work) = (self.dir.clone(), self.record.tracks.clone(), self.media.work.clone());
            // The codecs the live session recorded: no file needs reading to know them.
            let known: Vec<(String, Codec)> = self
                .record
                .rtp_session
                .iter()
                .flat_map(|s| &s.media)
                .filter_map(|m| Some((m.track_id.clone(), Codec::from_rtpmap(&m.codec, m.clock_rate)?)))
                .collect();
            let spawned = self.media.work.spawn("stream-restore", move || {
                let _ = tx.send(restore_tracks(&dir, &tracks, &known, &work));
            });
            if spawned.is_err() {
                self.last_error = Some(ErrorInfo::new("MEDIA", "cannot start a restore thread"));
                return;
            }
            // Supervised like a handler: a panic while re-binding crashes the actor (rebuilt by
            // its recorder) instead of ending its task silently.
            let restoring = rx.into_actor(self).map(|restored, act, ctx| {
                act.tracks = restored.unwrap_or_default();
                if let Some(session) = act.record.rtp_session.take() {
                    let session_id = session.session_id.clone();
                    let resumed = act.resume_rtp(session, ctx);
                    // What the session did not take back (or all, when it failed) is let go.
                    act.prebound.clear();
                    if let (Ok(()), Some(live)) = (&resumed, act.session.as_mut()) {
                        live.restored = Some(act.media.capacity.restored(crate::messages::IngestTransport::Rtp));
                    }
                    if let Err(e) = resumed {
                        tracing::warn!(stream_id = %act.record.id, error = %e, "plain rtp ports not re-bound: the sender must offer again");
                        act.last_error = Some(ErrorInfo::new("MEDIA", e.to_string()));
                        act.recorder.do_send(StreamNotice::SessionChanged {
                            stream_id: act.record.id.clone(),
                            rtp_session: None,
                        });
                        act.recorder.do_send(StreamNotice::Disconnected {
                            stream_id: act.record.id.clone(),
                            session_id,
                        });
                    }
                }
            });
            ctx.wait(supervision::guard("Restore", Box::pin(restoring), ()));
        }
    }
}

/// What a stream tells its recorder.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum StreamNotice {
    /// A track receives packets and writes no frame (`Some`: why), or writes again (`None`).
    TrackWriting {
        stream_id: String,
        track_id: String,
        error: Option<ErrorInfo>,
    },
    /// The stream's silences changed (a hold began or ended): kept in its record.
    Silences {
        stream_id: String,
        silences: Vec<SilenceSpan>,
    },
    /// A track wrote its first frame.
    MediaStarted {
        stream_id: String,
        track_id: String,
        at: DateTime<Utc>,
    },
    /// Media arrives while the instance is paused (none of it written).
    MediaWhilePaused { stream_id: String },
    /// A video track's publisher signalled its orientation (kept in the track's record).
    Orientation {
        stream_id: String,
        track_id: String,
        rotation: u16,
    },
    /// The publisher's connection is gone (it may come back within the grace period).
    Disconnected { stream_id: String, session_id: String },
    /// A writer failed and the stream restarts into new segments.
    Restarting { stream_id: String },
    /// The stream cannot record any more (restart budget exhausted).
    Failed { stream_id: String, error: ErrorInfo },
    /// What a restart must re-bind changed (a port latched, or the session ended).
    SessionChanged {
        stream_id: String,
        rtp_session: Option<RtpSessionRecord>,
    },
}

/// A handler failed and the actor stopped (see [`Stream::crash`]); `quiesced` resolves once its
/// ingest ended and its files are complete.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StreamCrashed {
    pub stream_id: String,
    pub error: ErrorInfo,
    pub quiesced: BoxFuture<'static, ()>,
}

/// Stops the stream without finishing its tracks: ingest stopped, files completed, actor ended.
/// Answered once that is done. For a recorder rebuilt after its own failure, which restores the
/// stream from its record.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RetireStream;

/// The stream's own timer: checks its writers (supervision of the writer threads).
#[derive(Message)]
#[rtype(result = "()")]
struct SupervisionTick;

/// Opens a plain-RTP session on this stream (a new segment of each track it carries).
#[derive(Message)]
#[rtype(result = "Result<OpenedSession, MediaError>")]
pub struct OpenRtp {
    pub session_id: String,
    pub permit: Option<Arc<crate::limits::SessionPermit>>,
    /// The offer may leave out the sender's address (the key is trusted for any source).
    pub any_source: bool,
    pub offer: SessionOffer,
    pub audio: bool,
    pub video: bool,
}

/// Opens a WHIP session on this stream.
#[derive(Message)]
#[rtype(result = "Result<OpenedSession, MediaError>")]
pub struct OpenWhip {
    pub session_id: String,
    pub permit: Option<Arc<crate::limits::SessionPermit>>,
    pub offer_sdp: String,
    pub audio: bool,
    pub video: bool,
}

#[derive(Debug, Clone)]
pub struct OpenedSession {
    pub answer_sdp: String,
    pub record: StreamRecord,
}

/// The publisher ends its session (WHIP DELETE, plain-RTP DELETE).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct EndSession {
    pub session_id: String,
}

/// Ends ingest, finalizes every segment and joins each track's segments into its file. Answers
/// the stream's final record; an error when the finish's continuation failed (the actor is gone
/// and the record does not say where its files are: the stop must not commit without them).
#[derive(Message)]
#[rtype(result = "Result<StreamRecord, MediaError>")]
pub struct FinishStream;

#[derive(Message)]
#[rtype(result = "()")]
pub struct IngestNotice(pub IngestEvent);

/// A segment finished after its connection ended.
#[derive(Message)]
#[rtype(result = "()")]
struct SegmentFinished {
    track_id: String,
    index: usize,
    report: SegmentReport,
}

/// The answer to a message that reached a stream whose handler failed.
fn restarting() -> MediaError {
    MediaError::Io("the stream failed and is being restarted; try again".into())
}

impl Handler<RetireStream> for Stream {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: RetireStream, ctx: &mut Self::Context) -> Self::Result {
        // Whoever rebuilds the stream reads its files: they are complete before the answer.
        self.supervision.retire();
        let quiesced = self.quiesce();
        ctx.stop();
        quiesced
    }
}

impl SupervisedActor for Stream {
    const KIND: SupervisedKind = SupervisedKind::Stream;
    const FAULT_POINT: &'static str = crate::fault::STREAM_HANDLER;

    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    fn scope_prefix(&self) -> String {
        format!(
            "{} {}/{}",
            self.conversation_id,
            self.record.user_id,
            self.record.kind.as_str()
        )
    }

    /// What the actor holds may be half-changed, so it does not go on. Its ingest is stopped and
    /// its writers finish their files; the recorder hears of it with a future that resolves once
    /// that is done (ports released, files complete) and rebuilds the stream from its record, as
    /// after a restart of the process.
    fn on_crash(&mut self, _ctx: &mut Context<Self>, error: ErrorInfo) {
        self.last_error = Some(error.clone());
        let quiesced = self.quiesce().shared();
        // Before the mailbox closes: whoever sees this actor gone (a stop waiting on its finish)
        // finds what to wait for before reading its files.
        if let Some(slot) = &self.quiesce_slot {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(quiesced.clone());
        }
        if let Some(watch) = &self.watch {
            watch.do_send(StreamCrashed {
                stream_id: self.record.id.clone(),
                error,
                quiesced: quiesced.boxed(),
            });
        }
    }
}

impl Stream {
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StreamType;

    struct Sink;
    impl Actor for Sink {
        type Context = Context<Self>;
    }
    impl Handler<StreamNotice> for Sink {
        type Result = ();
        fn handle(&mut self, _msg: StreamNotice, _ctx: &mut Self::Context) {}
    }

    #[actix::test]
    async fn a_stream_reports_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let stream = Stream::new(
            StreamRecord::new("s1", "agent", StreamType::Cam),
            "i1".into(),
            Arc::new(MediaConfig::for_tests(dir.path().into())),
            Sink.start().recipient(),
        )
        .start();
        let snapshot = stream.send(Snapshot).await.unwrap();
        assert_eq!((snapshot.kind, snapshot.state.as_str()), ("Stream", "RECORDING"));
        assert!(snapshot.id.starts_with("s1 agent CAM"));
        let finished = stream.send(FinishStream).await.unwrap().unwrap();
        assert_eq!(finished.state, StreamState::Stopped);
    }
}
