//! One published stream (CAM, MIC, SCREEN, ...) of one user within a recorder instance. Owns its
//! tracks' writers: one segment per publisher connection, joined into one file per track when the
//! stream finishes. Ingest threads (plain RTP) or tasks (WHIP) report to it with [`IngestNotice`];
//! frames never pass through this actor.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::domain::{
    ErrorInfo, LocalFileRecord, ObjectRecord, RtpMediaRecord, RtpSessionRecord, StreamRecord, StreamState, TrackRecord,
    TrackType,
};
use crate::engine::{MediaConfig, RecoveryConfig};
use crate::media::codec::Codec;
use crate::media::ingest::{wall_micros_now, EventSink, IngestEvent, SinkSwap, TrackCounters, TrackPump, TrackSummary};
use crate::media::join::join_segments;
use crate::media::plain_rtp::{self, BoundMedia, PlainRtpSession};
use crate::media::receiver::TrackReceiver;
use crate::media::sdp::{build_answer, Accepted, MediaAnswer, SessionOffer};
use crate::media::segment::{plan_join, segment_path, track_path, SegmentInfo};
use crate::media::whip::WhipSession;
use crate::media::writer::{SegmentReport, TrackWriter, WriterStats};
use crate::media::MediaError;
use crate::snapshot::{ActorSnapshot, Snapshot};

use super::supervision::{self, SupervisedKind};

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

/// A segment at a stop: its writer still running (asked to finish once ingest has ended), or
/// already finishing.
enum Finishing {
    Writer(TrackWriter),
    Started(BoxFuture<'static, SegmentReport>),
}

impl Finishing {
    fn start(self) -> BoxFuture<'static, SegmentReport> {
        match self {
            Finishing::Writer(writer) => writer.begin_finish().boxed(),
            Finishing::Started(finishing) => finishing,
        }
    }
}

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
    /// Set for a stream recovered after a restart: its segment files are read when it starts.
    needs_restore: bool,
    recovery: RecoveryConfig,
    /// Supervision: writer failures handled so far, and when (for the restart budget).
    restarts: u32,
    restart_times: VecDeque<Instant>,
    /// Segments whose writer failed and were replaced: their error is not the stream's.
    failed_segments: HashSet<(String, usize)>,
    /// The plain-RTP session to re-bind once the failed one has ended.
    restart_rtp: Option<RtpSessionRecord>,
    /// The restart budget ran out (or the session could not be restarted): no more media.
    failed: bool,
    /// Told when a handler of this actor failed: the recorder rebuilds the stream from its
    /// record.
    watch: Option<Recipient<StreamCrashed>>,
    quiesce_slot: Option<QuiesceSlot>,
    /// The conversation this stream belongs to, for the scope of its fault point.
    conversation_id: String,
    /// A handler failed: the actor quiesced and is stopping; it takes no more work.
    crashed: bool,
    /// When the stream entered its current state (for the debug tree's `millis_in_state`).
    state_since: Instant,
}

struct TrackState {
    id: String,
    codec: Codec,
    counters: Arc<TrackCounters>,
    segments: Vec<Segment>,
    created: Option<DateTime<Utc>>,
}

struct Segment {
    index: usize,
    session_id: String,
    writer: Option<TrackWriter>,
    finishing: Option<BoxFuture<'static, SegmentReport>>,
    summary: Option<TrackSummary>,
    stats: Arc<WriterStats>,
    /// Started by supervision on a connection that stayed up (WHIP): the connection's summary
    /// (its start time) belongs to the session's first segment, not to this one.
    continues: bool,
}

enum Ingest {
    Rtp(PlainRtpSession),
    Whip(WhipSession),
}

struct LiveSession {
    id: String,
    ingest: Ingest,
    /// The session's place in its organization's session budget, returned when it is dropped.
    permit: Option<Arc<crate::limits::SessionPermit>>,
    track_ids: Vec<String>,
    num_tracks_ended: usize,
}

impl Stream {
    pub fn new(
        record: StreamRecord,
        instance_id: String,
        media: Arc<MediaConfig>,
        recorder: Recipient<StreamNotice>,
    ) -> Self {
        let dir = media.media_dir.join(&instance_id).join(&record.id);
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
            recovery: RecoveryConfig::default(),
            restarts: 0,
            restart_times: VecDeque::new(),
            failed_segments: HashSet::new(),
            restart_rtp: None,
            failed: false,
            watch: None,
            quiesce_slot: None,
            conversation_id: String::new(),
            crashed: false,
            state_since: Instant::now(),
        }
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
        self.failed = true;
        self.record.state = StreamState::Failed;
        self.record.rtp_session = None;
        self.last_error = Some(error);
        self.state_since = Instant::now();
        self
    }

    /// Runs a handler body under supervision: a panic (or a failing fault point) inside it ends
    /// this actor (see [`Stream::crash`]) and answers `None`.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        handler: &'static str,
        body: impl FnOnce(&mut Self, &mut Context<Self>) -> R,
    ) -> Option<R> {
        if self.crashed {
            return None;
        }
        let scope = supervision::fault_scope(|| {
            format!(
                "{} {}/{} {handler}",
                self.conversation_id,
                self.record.user_id,
                self.record.kind.as_str()
            )
        });
        match supervision::run_guarded(crate::fault::STREAM_HANDLER, &scope, || body(self, ctx)) {
            Ok(result) => Some(result),
            Err(message) => {
                self.crash(ctx, handler, message);
                None
            }
        }
    }

    /// A handler failed: what the actor holds may be half-changed, so it does not go on. Its
    /// ingest is stopped and its writers finish their files; the recorder hears of it with a
    /// future that resolves once that is done (ports released, files complete) and rebuilds the
    /// stream from its record, as after a restart of the process.
    fn crash(&mut self, ctx: &mut Context<Self>, handler: &'static str, message: String) {
        let error = ErrorInfo::new("ACTOR_FAILED", format!("stream handler {handler} failed: {message}"));
        tracing::error!(stream_id = %self.record.id, handler, error = %message, "stream actor failed: stopping it for a restart");
        self.crashed = true;
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
        ctx.stop();
    }

    /// Makes `ingest` the live session: the stream records, and the store learns the plain-RTP
    /// session to re-bind after a restart (`None` for WHIP, whose publisher reconnects).
    fn begin_session(
        &mut self,
        id: String,
        ingest: Ingest,
        track_ids: Vec<String>,
        rtp_session: Option<RtpSessionRecord>,
    ) {
        self.session = Some(LiveSession {
            id,
            ingest,
            permit: None,
            track_ids,
            num_tracks_ended: 0,
        });
        self.num_sessions += 1;
        self.record.state = StreamState::Recording;
        self.record.rtp_session = rtp_session;
    }

    /// Ends the live session's ingest; one receiver per ingest thread or task, resolved (with the
    /// track's summary) when it has ended.
    fn stop_ingest(&mut self) -> Vec<tokio::sync::oneshot::Receiver<(String, TrackSummary)>> {
        match self.session.take() {
            Some(LiveSession {
                ingest: Ingest::Rtp(rtp),
                ..
            }) => rtp.stop_and_wait(),
            Some(LiveSession {
                ingest: Ingest::Whip(whip),
                ..
            }) => whip.stop_and_wait(),
            None => Vec::new(),
        }
    }

    /// Stops ingest and finishes every writer; the future resolves when the ingest threads or
    /// tasks have ended and the files are complete (or after [`QUIESCE_TIMEOUT`]).
    fn quiesce(&mut self) -> BoxFuture<'static, ()> {
        let mut waits: Vec<BoxFuture<'static, ()>> = Vec::new();
        let ended = self.stop_ingest();
        for rx in ended {
            waits.push(rx.map(|_| ()).boxed());
        }
        for track in &mut self.tracks {
            for segment in &mut track.segments {
                if let Some(writer) = segment.writer.take() {
                    waits.push(writer.begin_finish().map(|_| ()).boxed());
                } else if let Some(finishing) = segment.finishing.take() {
                    waits.push(finishing.map(|_| ()).boxed());
                }
            }
        }
        let stream_id = self.record.id.clone();
        async move {
            if tokio::time::timeout(QUIESCE_TIMEOUT, futures_util::future::join_all(waits))
                .await
                .is_err()
            {
                tracing::warn!(stream_id = %stream_id, "stream ingest or writers did not end in time");
            }
        }
        .boxed()
    }

    /// Supervision: a live segment whose writer failed (muxer error, panicked thread) restarts
    /// within the restart budget — plain RTP: the session into new segments on the same ports,
    /// latched to the same sender; WHIP: the failed track into a new segment on the same peer
    /// connection (the pump switches writer and asks the publisher for a keyframe). Beyond the
    /// budget the stream is FAILED.
    fn check_writers(&mut self, ctx: &mut Context<Self>) {
        if self.failed || self.restart_rtp.is_some() {
            return;
        }
        let failed: Vec<(String, usize)> = self
            .tracks
            .iter()
            .flat_map(|t| {
                t.segments
                    .iter()
                    .filter(|s| s.writer.is_some() && s.stats.failed.load(Ordering::Acquire))
                    .map(|s| (t.id.clone(), s.index))
            })
            .filter(|key| !self.failed_segments.contains(key))
            .collect();
        if failed.is_empty() {
            return;
        }
        self.failed_segments.extend(failed.iter().cloned());
        let window = self.recovery.restart_window;
        let admitted = supervision::admit_restart(&mut self.restart_times, Instant::now(), &self.recovery);
        let whip = matches!(
            &self.session,
            Some(LiveSession {
                ingest: Ingest::Whip(_),
                ..
            })
        );
        if admitted && whip {
            match self.restart_whip_writers(&failed, ctx) {
                Ok(()) => {
                    self.restarts += 1;
                    supervision::count_restart(SupervisedKind::Stream);
                    self.last_error = Some(ErrorInfo::new(
                        "MEDIA_WRITE",
                        "a track writer failed: recording on into a new segment",
                    ));
                    tracing::warn!(stream_id = %self.record.id, num_restarts = self.restarts, "track writer failed: new segment on the same whip connection");
                    self.recorder.do_send(StreamNotice::Restarting {
                        stream_id: self.record.id.clone(),
                    });
                }
                Err(e) => self.fail(ErrorInfo::new("MEDIA", format!("restart failed: {e}"))),
            }
            return;
        }
        let rtp = match &self.session {
            Some(LiveSession {
                ingest: Ingest::Rtp(_), ..
            }) => self.record.rtp_session.clone(),
            _ => None,
        };
        let Some(rtp) = rtp.filter(|_| admitted) else {
            let error = ErrorInfo::new(
                "RESTART_BUDGET_EXHAUSTED",
                format!(
                    "track writer failed {} times within {} s; the stream is not restarted again",
                    self.restart_times.len(),
                    window.as_secs()
                ),
            );
            self.fail(error);
            return;
        };
        self.restarts += 1;
        supervision::count_restart(SupervisedKind::Stream);
        self.last_error = Some(ErrorInfo::new(
            "MEDIA_WRITE",
            "a track writer failed: restarting the stream",
        ));
        tracing::warn!(stream_id = %self.record.id, num_restarts = self.restarts, "track writer failed: restarting the stream");
        self.restart_rtp = Some(rtp);
        self.end_session();
        self.recorder.do_send(StreamNotice::Restarting {
            stream_id: self.record.id.clone(),
        });
    }

    /// Finishes each failed WHIP segment and hands its track's running pump a new writer.
    fn restart_whip_writers(&mut self, failed: &[(String, usize)], ctx: &mut Context<Self>) -> Result<(), MediaError> {
        let Some(LiveSession {
            id: session_id,
            ingest: Ingest::Whip(whip),
            ..
        }) = &self.session
        else {
            return Err(MediaError::Io("no live whip session".into()));
        };
        let session_id = session_id.clone();
        let swaps: Vec<(String, usize, SinkSwap)> = failed
            .iter()
            .filter_map(|(track_id, index)| Some((track_id.clone(), *index, whip.swap_for(track_id)?)))
            .collect();
        for (track_id, index, swap) in swaps {
            let Some(at) = self.tracks.iter().position(|t| t.id == track_id) else {
                continue;
            };
            if let Some(segment) = self.tracks[at].segments.iter_mut().find(|s| s.index == index) {
                if let Some(writer) = segment.writer.take() {
                    let finishing = writer.begin_finish().shared();
                    segment.finishing = Some(finishing.clone().boxed());
                    let addr = ctx.address();
                    let track_id = track_id.clone();
                    ctx.spawn(
                        async move {
                            let report = finishing.await;
                            addr.do_send(SegmentFinished {
                                track_id,
                                index,
                                report,
                            });
                        }
                        .into_actor(self),
                    );
                }
            }
            let (sink, _counters) = self.new_segment(at, &session_id)?;
            if let Some(segment) = self.tracks[at].segments.last_mut() {
                segment.continues = true;
            }
            swap.put(sink);
        }
        Ok(())
    }

    fn fail(&mut self, error: ErrorInfo) {
        tracing::error!(stream_id = %self.record.id, code = %error.code, message = %error.message, "stream failed");
        self.failed = true;
        self.restart_rtp = None;
        self.record.state = StreamState::Failed;
        self.state_since = Instant::now();
        self.last_error = Some(error.clone());
        self.end_session();
        self.recorder.do_send(StreamNotice::Failed {
            stream_id: self.record.id.clone(),
            error,
        });
    }

    /// A stream the store knew from before a restart: its tracks and the segment files they left
    /// (readable up to their last flush) come back when the actor starts, so a returning
    /// publisher continues in a new segment and the stop joins them all.
    pub fn restore(
        record: StreamRecord,
        instance_id: String,
        media: Arc<MediaConfig>,
        recorder: Recipient<StreamNotice>,
    ) -> Self {
        let mut stream = Stream::new(record, instance_id, media, recorder);
        stream.needs_restore = true;
        stream
    }

    fn events(ctx: &Context<Self>) -> EventSink {
        let addr = ctx.address();
        // do_send ignores the mailbox capacity: ingest threads never block on the actor.
        Arc::new(move |event| addr.do_send(IngestNotice(event)))
    }

    /// The track of `codec`'s kind that the new session continues, or a new one. A stream has
    /// at most one track per kind.
    fn track_for(&mut self, codec: Codec) -> usize {
        if let Some(at) = self.tracks.iter().position(|t| t.codec.kind() == codec.kind()) {
            return at;
        }
        self.tracks.push(TrackState {
            id: uuid::Uuid::new_v4().simple().to_string(),
            codec,
            counters: Arc::new(TrackCounters::default()),
            segments: Vec::new(),
            created: None,
        });
        self.record.tracks.push(TrackRecord {
            id: self.tracks.last().expect("pushed just above").id.clone(),
            kind: codec.kind(),
            started: None,
            stopped: None,
            local: LocalFileRecord::default(),
            object: ObjectRecord::default(),
        });
        self.tracks.len() - 1
    }

    /// Starts a new segment writer for a track; returns its sink and counters.
    fn new_segment(
        &mut self,
        at: usize,
        session_id: &str,
    ) -> Result<(crate::media::writer::FrameSink, Arc<TrackCounters>), MediaError> {
        let track = &mut self.tracks[at];
        // After recovered segments the numbering goes on where the files left off.
        let index = track.segments.last().map_or(0, |s| s.index + 1);
        let path = segment_path(&self.dir, &track.id, index, track.codec.container());
        let writer = TrackWriter::spawn(path, track.codec, self.media.writer.clone())?;
        let sink = writer.sink();
        track.segments.push(Segment {
            index,
            session_id: session_id.to_string(),
            stats: writer.stats(),
            writer: Some(writer),
            finishing: None,
            summary: None,
            continues: false,
        });
        Ok((sink, track.counters.clone()))
    }

    /// Ends the live session's ingest (its threads report `TrackEnded`, which finishes the
    /// segments).
    fn end_session(&mut self) {
        if let Some(session) = &self.session {
            match &session.ingest {
                Ingest::Rtp(rtp) => rtp.stop(),
                Ingest::Whip(whip) => whip.stop(),
            }
        }
    }

    fn open_rtp(&mut self, msg: OpenRtp, ctx: &mut Context<Self>) -> Result<OpenedSession, MediaError> {
        if !msg.any_source
            && msg
                .offer
                .media
                .iter()
                .any(|m| m.connection.or(msg.offer.connection).is_none())
        {
            return Err(MediaError::Refused(
                "the offer names no sender address (c=IN IP4|IP6 <address>): without one any datagram could take its ports".into(),
            ));
        }
        let mut answers = Vec::new();
        let mut bound = Vec::new();
        let mut kinds_taken: Vec<TrackType> = Vec::new();
        for media in &msg.offer.media {
            let choice = media.choose(msg.audio, msg.video).and_then(|accepted| {
                if kinds_taken.contains(&accepted.codec.kind()) {
                    Err(crate::media::sdp::Refusal::Duplicate)
                } else {
                    Ok(accepted)
                }
            });
            match choice {
                Ok(accepted) => {
                    // A track keeps one codec across reconnects (one file per track): a new
                    // codec of a kind already recorded is refused rather than mixed in.
                    if self
                        .tracks
                        .iter()
                        .any(|t| t.codec.kind() == accepted.codec.kind() && t.codec != accepted.codec)
                    {
                        answers.push(MediaAnswer::Refused(crate::media::sdp::Refusal::UnsupportedCodec));
                        continue;
                    }
                    let b = BoundMedia::bind(&self.media.ports, media, msg.offer.connection, accepted)?;
                    answers.push(MediaAnswer::Accepted {
                        accepted,
                        rtp_port: b.rtp_port(),
                        rtcp_port: b.rtcp_port(),
                    });
                    kinds_taken.push(accepted.codec.kind());
                    bound.push(b);
                }
                Err(refusal) => answers.push(MediaAnswer::Refused(refusal)),
            }
        }
        if bound.is_empty() {
            let reasons: Vec<_> = answers
                .iter()
                .filter_map(|a| match a {
                    MediaAnswer::Refused(r) => Some(r.as_str()),
                    _ => None,
                })
                .collect();
            return Err(MediaError::Refused(format!(
                "no m-line can be recorded ({})",
                reasons.join(", ")
            )));
        }
        self.end_session();
        let bound = bound
            .into_iter()
            .map(|b| (self.track_for(b.accepted.codec), b))
            .collect();
        self.start_rtp(&msg.session_id, bound, ctx)?;
        if let Some(session) = self.session.as_mut() {
            session.permit = msg.permit;
        }
        let answer_sdp = build_answer(&msg.offer, &answers, self.media.announce_ip, rand_session_number());
        tracing::info!(stream_id = %self.record.id, session_id = %msg.session_id, "plain rtp session opened");
        Ok(OpenedSession {
            answer_sdp,
            record: self.record.clone(),
        })
    }

    /// Starts receive threads for bound ports (track index, sockets), each into a new segment,
    /// and records the session's ports in the stream record for a restart.
    fn start_rtp(
        &mut self,
        session_id: &str,
        bound: Vec<(usize, BoundMedia)>,
        ctx: &mut Context<Self>,
    ) -> Result<(), MediaError> {
        let events = Self::events(ctx);
        let now = Instant::now();
        let mut pumps = Vec::new();
        let mut track_ids = Vec::new();
        let mut persisted = Vec::new();
        for (at, b) in bound {
            let (sink, counters) = self.new_segment(at, session_id)?;
            let track_id = self.tracks[at].id.clone();
            track_ids.push(track_id.clone());
            persisted.push(RtpMediaRecord {
                track_id: track_id.clone(),
                codec: b.accepted.codec.name().to_string(),
                clock_rate: b.accepted.codec.clock_rate(),
                payload_type: b.accepted.payload_type,
                rtp_port: b.rtp_port(),
                rtcp_port: b.rtcp.as_ref().map(|_| b.rtcp_port()),
                allowed_source: b.allowed_source,
                latched_source: b.latched_source,
            });
            let receiver = TrackReceiver::new(b.accepted.codec, self.media.receiver.clone(), now, wall_micros_now());
            let pump = TrackPump::new(
                session_id.to_string(),
                track_id,
                receiver,
                sink,
                counters,
                events.clone(),
                now,
            );
            pumps.push((b, pump));
        }
        let session = plain_rtp::start(pumps, self.media.idle_timeout)?;
        let rtp_session = RtpSessionRecord {
            session_id: session_id.to_string(),
            media: persisted,
        };
        self.begin_session(
            session_id.to_string(),
            Ingest::Rtp(session),
            track_ids,
            Some(rtp_session),
        );
        Ok(())
    }

    /// After a restart: re-binds the ports the session had (latched to the same sender) and
    /// records into new segments, so a sender that kept sending needs no new offer.
    fn resume_rtp(&mut self, session: RtpSessionRecord, ctx: &mut Context<Self>) -> Result<(), MediaError> {
        let mut bound = Vec::new();
        for media in &session.media {
            let codec = Codec::from_rtpmap(&media.codec, media.clock_rate)
                .ok_or_else(|| MediaError::Refused(format!("stored codec {} is not recordable", media.codec)))?;
            let at = match self.tracks.iter().position(|t| t.id == media.track_id) {
                Some(at) => at,
                None => {
                    // The track had no readable segment before the crash.
                    self.tracks.push(TrackState {
                        id: media.track_id.clone(),
                        codec,
                        counters: Arc::new(TrackCounters::default()),
                        segments: Vec::new(),
                        created: None,
                    });
                    self.tracks.len() - 1
                }
            };
            let (rtp, rtcp) = self.media.ports.bind_exact(media.rtp_port, media.rtcp_port)?;
            bound.push((
                at,
                BoundMedia {
                    accepted: Accepted {
                        codec,
                        payload_type: media.payload_type,
                    },
                    rtp,
                    rtcp,
                    allowed_source: media.allowed_source,
                    latched_source: media.latched_source,
                },
            ));
        }
        self.start_rtp(&session.session_id, bound, ctx)?;
        tracing::info!(stream_id = %self.record.id, session_id = %session.session_id, "plain rtp session re-bound after a restart");
        Ok(())
    }
}

fn rand_session_number() -> u64 {
    u64::from(uuid::Uuid::new_v4().as_fields().0)
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
            // Reading the files is blocking work: a thread of its own. Until it is done the
            // actor takes no message (ctx.wait), so nothing sees a half-restored stream.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (dir, tracks) = (self.dir.clone(), self.record.tracks.clone());
            let spawned = std::thread::Builder::new()
                .name("stream-restore".into())
                .spawn(move || {
                    let _ = tx.send(restore_tracks(&dir, &tracks));
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
                    if let Err(e) = act.resume_rtp(session, ctx) {
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
    /// A track wrote its first frame.
    MediaStarted {
        stream_id: String,
        track_id: String,
        at: DateTime<Utc>,
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

impl Handler<OpenRtp> for Stream {
    type Result = Result<OpenedSession, MediaError>;

    fn handle(&mut self, msg: OpenRtp, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, "OpenRtp", |act, ctx| {
            act.open_rtp(msg, ctx).inspect_err(|e| {
                act.last_error = Some(ErrorInfo::new("MEDIA", e.to_string()));
            })
        })
        .unwrap_or_else(|| Err(restarting()))
    }
}

/// The answer to a message that reached a stream whose handler failed.
fn restarting() -> MediaError {
    MediaError::Io("the stream failed and is being restarted; try again".into())
}

impl Handler<SupervisionTick> for Stream {
    type Result = ();

    fn handle(&mut self, _msg: SupervisionTick, ctx: &mut Self::Context) {
        // A failed stream only waits for its finish: nothing left to supervise.
        if self.failed {
            return;
        }
        self.guarded(ctx, "SupervisionTick", |act, ctx| act.check_writers(ctx));
    }
}

impl Handler<RetireStream> for Stream {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: RetireStream, ctx: &mut Self::Context) -> Self::Result {
        // Whoever rebuilds the stream reads its files: they are complete before the answer.
        self.crashed = true;
        let quiesced = self.quiesce();
        ctx.stop();
        quiesced
    }
}

impl Handler<OpenWhip> for Stream {
    type Result = ResponseActFuture<Self, Result<OpenedSession, MediaError>>;

    fn handle(&mut self, msg: OpenWhip, ctx: &mut Self::Context) -> Self::Result {
        match self.guarded(ctx, "OpenWhip", |act, ctx| act.open_whip(msg, ctx)) {
            Some(opening) => opening,
            None => Box::pin(fut::ready(Err(restarting()))),
        }
    }
}

impl Stream {
    fn open_whip(
        &mut self,
        msg: OpenWhip,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<OpenedSession, MediaError>> {
        let events = Self::events(ctx);
        let media = self.media.clone();
        let session_id = msg.session_id.clone();
        let permit = msg.permit.clone();
        // Which kinds this stream already records with which codec: a reconnect keeps them.
        let existing: Vec<Codec> = self.tracks.iter().map(|t| t.codec).collect();
        let refused = || {
            Err(MediaError::Refused(
                "the stream failed and is being restarted; try again".into(),
            ))
        };
        Box::pin(
            supervision::guard(
                "OpenWhip",
                Box::pin(
                    async move {
                        crate::media::whip::negotiate(&media, &msg.offer_sdp, msg.audio, msg.video, &existing).await
                    }
                    .into_actor(self)
                    .map(move |negotiated, act, _ctx| {
                        let negotiated = negotiated?;
                        act.end_session();
                        let mut tracks = Vec::new();
                        for codec in negotiated.codecs() {
                            let at = act.track_for(codec);
                            let (sink, counters) = act.new_segment(at, &session_id)?;
                            tracks.push((codec, act.tracks[at].id.clone(), sink, counters));
                        }
                        let track_ids = tracks.iter().map(|t| t.1.clone()).collect();
                        let (answer_sdp, session) =
                            negotiated.start(session_id.clone(), tracks, act.media.receiver.clone(), events)?;
                        act.begin_session(session_id.clone(), Ingest::Whip(session), track_ids, None);
                        if let Some(live) = act.session.as_mut() {
                            live.permit = permit;
                        }
                        tracing::info!(stream_id = %act.record.id, session_id = %session_id, "whip session opened");
                        Ok(OpenedSession {
                            answer_sdp,
                            record: act.record.clone(),
                        })
                    })
                    .map(|result: Result<OpenedSession, MediaError>, act, _ctx| {
                        if let Err(e) = &result {
                            act.last_error = Some(ErrorInfo::new("MEDIA", e.to_string()));
                        }
                        result
                    }),
                ),
                refused(),
            ),
        )
    }
}

impl supervision::SupervisedActor for Stream {
    fn continuation_failed(&mut self, ctx: &mut Context<Self>, handler: &'static str, message: String) {
        if !self.crashed {
            self.crash(ctx, handler, message);
        }
    }
}

impl Handler<EndSession> for Stream {
    type Result = bool;

    fn handle(&mut self, msg: EndSession, ctx: &mut Self::Context) -> bool {
        self.guarded(ctx, "EndSession", |act, _ctx| {
            if act.session.as_ref().is_some_and(|s| s.id == msg.session_id) {
                act.end_session();
                true
            } else {
                false
            }
        })
        .unwrap_or(false)
    }
}

impl Handler<IngestNotice> for Stream {
    type Result = ();

    fn handle(&mut self, msg: IngestNotice, ctx: &mut Self::Context) {
        self.guarded(ctx, "IngestNotice", |act, ctx| act.ingest_notice(msg, ctx));
    }
}

impl Stream {
    fn ingest_notice(&mut self, msg: IngestNotice, ctx: &mut Context<Self>) {
        match msg.0 {
            IngestEvent::FirstFrame {
                track_id, wall_micros, ..
            } => {
                let at = to_datetime(wall_micros).unwrap_or_else(Utc::now);
                if let Some(track) = self.tracks.iter_mut().find(|t| t.id == track_id) {
                    track.created.get_or_insert(Utc::now());
                }
                self.recorder.do_send(StreamNotice::MediaStarted {
                    stream_id: self.record.id.clone(),
                    track_id,
                    at,
                });
            }
            IngestEvent::Latched {
                session_id,
                track_id,
                source,
            } => {
                let Some(session) = self.record.rtp_session.as_mut().filter(|s| s.session_id == session_id) else {
                    return;
                };
                if let Some(media) = session.media.iter_mut().find(|m| m.track_id == track_id) {
                    media.latched_source = Some(source);
                    self.recorder.do_send(StreamNotice::SessionChanged {
                        stream_id: self.record.id.clone(),
                        rtp_session: self.record.rtp_session.clone(),
                    });
                }
            }
            IngestEvent::TrackEnded {
                session_id,
                track_id,
                summary,
            } => {
                let Some(track) = self.tracks.iter_mut().find(|t| t.id == track_id) else {
                    return;
                };
                let Some(segment) = track.segments.iter_mut().rev().find(|s| s.session_id == session_id) else {
                    return;
                };
                segment.summary = Some(summary);
                if let Some(writer) = segment.writer.take() {
                    // Finish now (the file is complete the moment its connection ends); the
                    // report comes back as a message, or is awaited by FinishStream.
                    let index = segment.index;
                    let finishing = writer.begin_finish().shared();
                    segment.finishing = Some(finishing.clone().boxed());
                    let addr = ctx.address();
                    let track_id = track.id.clone();
                    ctx.spawn(
                        async move {
                            let report = finishing.await;
                            addr.do_send(SegmentFinished {
                                track_id,
                                index,
                                report,
                            });
                        }
                        .into_actor(self),
                    );
                }
                if let Some(session) = &mut self.session {
                    if session.id == session_id {
                        session.num_tracks_ended += 1;
                        if session.num_tracks_ended >= session.track_ids.len() {
                            let permit = session.permit.take();
                            self.session = None;
                            if let Some(rtp) = self.restart_rtp.take() {
                                // A supervised restart: same ports, same sender, new segments
                                // (and the same place in the organization's session budget).
                                if let Err(e) = self.resume_rtp(rtp, ctx) {
                                    self.fail(ErrorInfo::new("MEDIA", format!("restart failed: {e}")));
                                } else if let Some(live) = self.session.as_mut() {
                                    live.permit = permit;
                                }
                                return;
                            }
                            // Nothing to re-bind after a restart any more.
                            if self
                                .record
                                .rtp_session
                                .as_ref()
                                .is_some_and(|s| s.session_id == session_id)
                            {
                                self.record.rtp_session = None;
                                self.recorder.do_send(StreamNotice::SessionChanged {
                                    stream_id: self.record.id.clone(),
                                    rtp_session: None,
                                });
                            }
                            self.recorder.do_send(StreamNotice::Disconnected {
                                stream_id: self.record.id.clone(),
                                session_id,
                            });
                        }
                    }
                }
            }
        }
    }
}

impl Handler<SegmentFinished> for Stream {
    type Result = ();

    fn handle(&mut self, msg: SegmentFinished, ctx: &mut Self::Context) {
        self.guarded(ctx, "SegmentFinished", |act, _ctx| act.segment_finished(msg));
    }
}

impl Stream {
    fn segment_finished(&mut self, msg: SegmentFinished) {
        let replaced = self.failed_segments.contains(&(msg.track_id.clone(), msg.index));
        if let (Some(error), false) = (&msg.report.error, replaced) {
            tracing::error!(track_id = %msg.track_id, segment = msg.index, error = %error, "segment failed");
            self.last_error = Some(ErrorInfo::new("MEDIA_WRITE", error.clone()));
        }
        if let Some(track) = self.tracks.iter_mut().find(|t| t.id == msg.track_id) {
            if let Some(segment) = track.segments.iter_mut().find(|s| s.index == msg.index) {
                segment.finishing = Some(futures_util::future::ready(msg.report).boxed());
            }
        }
    }
}

/// What one track's finish produced.
struct TrackOutcome {
    track_id: String,
    location: Option<PathBuf>,
    started: Option<DateTime<Utc>>,
    stopped: Option<DateTime<Utc>>,
    error: Option<String>,
}

impl Handler<FinishStream> for Stream {
    type Result = ResponseActFuture<Self, Result<StreamRecord, MediaError>>;

    fn handle(&mut self, msg: FinishStream, ctx: &mut Self::Context) -> Self::Result {
        match self.guarded(ctx, "FinishStream", |act, _ctx| act.finish(msg)) {
            Some(finishing) => finishing,
            // The failed actor's files are finished by its replacement, which the recorder does
            // not build while it stops: what this copy knows is all the stop gets.
            None => {
                let mut record = self.record.clone();
                record.state = StreamState::Failed;
                record.rtp_session = None;
                Box::pin(fut::ready(Ok(record)))
            }
        }
    }
}

impl Stream {
    fn finish(&mut self, _msg: FinishStream) -> ResponseActFuture<Self, Result<StreamRecord, MediaError>> {
        // Stop ingest first so no frame arrives after its writer finished.
        let live_session_id = self.session.as_ref().map(|s| s.id.clone());
        let ended = self.stop_ingest();
        let mut jobs = Vec::new();
        for track in &mut self.tracks {
            let mut segments = Vec::new();
            for segment in &mut track.segments {
                let finishing = match (segment.writer.take(), segment.finishing.take()) {
                    // Asked to finish once the ingest threads have ended (below): their last
                    // frames still reach the writer.
                    (Some(writer), _) => Finishing::Writer(writer),
                    (None, Some(finishing)) => Finishing::Started(finishing),
                    (None, None) => continue,
                };
                let replaced = self.failed_segments.contains(&(track.id.clone(), segment.index));
                // A segment that continues its connection takes its start from its own file.
                let session_id = if segment.continues {
                    format!("{} (continued)", segment.session_id)
                } else {
                    segment.session_id.clone()
                };
                segments.push((
                    segment.index,
                    session_id,
                    segment.summary.clone().filter(|_| !segment.continues),
                    finishing,
                    replaced,
                ));
            }
            let container = track.codec.container();
            jobs.push((
                track.id.clone(),
                track_path(&self.dir, &track.id, container),
                container.muxer(),
                segments,
            ));
        }
        let stream_id = self.record.id.clone();
        let scope = supervision::fault_scope(|| {
            format!(
                "{} {}/{} continuation FinishStream",
                self.conversation_id,
                self.record.user_id,
                self.record.kind.as_str()
            )
        });
        // The whole finish after the handler's body is supervised: a panic there (joining the
        // files, or recording where they are) crashes this actor and answers an error, so the
        // recorder does not commit a stop without this stream's files (see `Recorder::finalize`).
        let finishing = async move {
            // Summaries of the connection that was live (refined start times).
            let mut live_summaries = Vec::new();
            for rx in ended {
                if let Ok(Ok(summary)) = tokio::time::timeout(INGEST_STOP_TIMEOUT, rx).await {
                    live_summaries.push(summary);
                }
            }
            // No frame comes any more: every writer is asked to finish now, all at once.
            let jobs: Vec<_> = jobs
                .into_iter()
                .map(|(track_id, final_path, muxer, segments)| {
                    let segments: Vec<_> = segments
                        .into_iter()
                        .map(|(index, session_id, summary, finishing, replaced)| {
                            (index, session_id, summary, finishing.start(), replaced)
                        })
                        .collect();
                    (track_id, final_path, muxer, segments)
                })
                .collect();
            let mut outcomes = Vec::new();
            for (track_id, final_path, muxer, segments) in jobs {
                let mut infos = Vec::new();
                let mut error = None;
                // A segment left by a crash has no trailer: rewriting it gives the final
                // file its duration and cues even when it is the only one.
                let mut remux = segments
                    .iter()
                    .any(|(_, session_id, _, _, _)| session_id == RECOVERED_SESSION);
                for (_index, session_id, summary, finishing, replaced) in segments {
                    let mut report = finishing.await;
                    if replaced {
                        // Supervision replaced this segment; its failure is not the track's.
                        // A panicked writer left no report: the file holds what it flushed,
                        // read back like a segment left by a crash.
                        if report.info.num_frames == 0 {
                            if let Some(info) = probe_on_thread(report.info.path.clone()).await {
                                report.info = info;
                                remux = true;
                            }
                        }
                    } else if report.error.is_some() {
                        error = report.error.clone();
                    }
                    // The live session's summaries belong to its own segments only.
                    let summary = summary.or_else(|| {
                        (!replaced && live_session_id.as_deref() == Some(session_id.as_str()))
                            .then(|| {
                                live_summaries
                                    .iter()
                                    .find(|(t, _)| *t == track_id)
                                    .map(|(_, s)| s.clone())
                            })
                            .flatten()
                    });
                    let mut info = report.info;
                    if let Some(started) = summary.and_then(|s| s.started_wall_micros) {
                        info.started_wall_micros = Some(started);
                    }
                    infos.push(info);
                }
                outcomes.push(finish_track(track_id, final_path, muxer, infos, error, remux).await);
            }
            outcomes
        }
        .into_actor(self)
        .map(move |outcomes, act, ctx| {
            // After the files are final, before the record says where they are.
            if let Err(e) = crate::fault::point_in(crate::fault::STREAM_HANDLER, &scope) {
                panic!("{e}");
            }
            let now = Utc::now();
            let mut failed = false;
            for outcome in outcomes {
                let created = act
                    .tracks
                    .iter()
                    .find(|t| t.id == outcome.track_id)
                    .and_then(|t| t.created);
                if let Some(record) = act.record.tracks.iter_mut().find(|t| t.id == outcome.track_id) {
                    record.started = outcome.started.or(record.started);
                    record.stopped = outcome.stopped.or(Some(now));
                    record.local.location = outcome.location.map(|p| p.display().to_string());
                    record.local.created = created;
                    if let Some(error) = &outcome.error {
                        failed = true;
                        record.local.error = Some(ErrorInfo::new("MEDIA_WRITE", error.clone()));
                    }
                }
            }
            act.record.started = act
                .record
                .tracks
                .iter()
                .filter_map(|t| t.started)
                .min()
                .or(act.record.started);
            act.record.stopped = Some(act.record.tracks.iter().filter_map(|t| t.stopped).max().unwrap_or(now));
            act.record.state = if failed || act.failed {
                StreamState::Failed
            } else {
                StreamState::Stopped
            };
            act.record.rtp_session = None;
            tracing::info!(stream_id = %stream_id, state = act.record.state.as_str(), "stream finished");
            ctx.stop();
            Ok(act.record.clone())
        });
        Box::pin(supervision::guard(
            "FinishStream",
            Box::pin(finishing),
            Err(restarting()),
        ))
    }
}

/// Rebuilds the tracks of a recovered stream from its segment files. Blocking (reads them all).
fn restore_tracks(dir: &std::path::Path, records: &[TrackRecord]) -> Vec<TrackState> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    let mut out = Vec::new();
    for track in records {
        let mut segments: Vec<(usize, PathBuf)> = files
            .iter()
            .filter_map(|path| {
                let name = path.file_name()?.to_str()?;
                let rest = name.strip_prefix(&format!("{}.seg", track.id))?;
                let index = rest.split('.').next()?.parse::<usize>().ok()?;
                Some((index, path.clone()))
            })
            .collect();
        segments.sort();
        // A final file is only ever renamed into place complete (joined and fsynced): a stop
        // interrupted after that point left it, and any segment beside it is already inside it.
        let finals: Vec<&PathBuf> = files
            .iter()
            .filter(|path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name == format!("{}.webm", track.id) || name == format!("{}.mkv", track.id)
            })
            .collect();
        let mut session_id = RECOVERED_SESSION;
        if let Some(final_file) = finals.first() {
            for (_, leftover) in &segments {
                let _ = std::fs::remove_file(leftover);
            }
            segments = vec![(0, (*final_file).clone())];
            session_id = FINALIZED_SESSION;
        }
        let mut state: Option<TrackState> = None;
        for (index, path) in segments {
            let (codec, num_frames, duration_micros, stamped) = match crate::media::join::probe_segment(&path) {
                Ok(probe) => probe,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable segment left out");
                    continue;
                }
            };
            // Each segment's start is stamped in its header; the first one's is in the record too.
            let started = stamped.or_else(|| {
                if index == 0 {
                    track.started.map(|t| t.timestamp_micros())
                } else {
                    None
                }
            });
            let report = SegmentReport {
                info: SegmentInfo {
                    path,
                    started_wall_micros: started,
                    duration_micros,
                    num_frames,
                },
                num_bytes: 0,
                error: None,
            };
            let t = state.get_or_insert_with(|| TrackState {
                id: track.id.clone(),
                codec,
                counters: Arc::new(TrackCounters::default()),
                segments: Vec::new(),
                created: track.local.created,
            });
            t.segments.push(Segment {
                index,
                session_id: session_id.into(),
                writer: None,
                finishing: Some(futures_util::future::ready(report).boxed()),
                summary: None,
                stats: Arc::new(WriterStats::default()),
                continues: false,
            });
        }
        if let Some(state) = state {
            tracing::info!(track_id = %state.id, num_segments = state.segments.len(), "track recovered");
            out.push(state);
        }
    }
    out
}

/// Reads what a segment file without trailer holds, on a thread of its own; `None` when it is
/// missing or unreadable.
async fn probe_on_thread(path: PathBuf) -> Option<SegmentInfo> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("segment-probe".into())
        .spawn(move || {
            let probed =
                crate::media::join::probe_segment(&path).map(|(_, num_frames, duration_micros, started)| SegmentInfo {
                    path,
                    started_wall_micros: started,
                    duration_micros,
                    num_frames,
                });
            let _ = tx.send(probed);
        })
        .ok()?;
    rx.await.ok()?.ok()
}

/// Joins a track's segments (on a blocking thread) and works out its start and stop.
async fn finish_track(
    track_id: String,
    final_path: PathBuf,
    muxer: &'static str,
    infos: Vec<SegmentInfo>,
    error: Option<String>,
    remux: bool,
) -> TrackOutcome {
    let plan = plan_join(&infos);
    let with_media: Vec<&SegmentInfo> = infos.iter().filter(|s| s.num_frames > 0).collect();
    let started = with_media
        .first()
        .and_then(|s| s.started_wall_micros)
        .and_then(to_datetime);
    let stopped = with_media
        .last()
        .and_then(|s| s.started_wall_micros.map(|at| at + s.duration_micros))
        .and_then(to_datetime);
    // Segments without media never produced a file worth keeping.
    for empty in infos.iter().filter(|s| s.num_frames == 0) {
        let _ = std::fs::remove_file(&empty.path);
    }
    if plan.is_empty() {
        return TrackOutcome {
            track_id,
            location: None,
            started,
            stopped,
            error,
        };
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let path = final_path.clone();
    // Remuxing reads and writes whole files: a blocking thread, never the actor's executor.
    let spawned = std::thread::Builder::new().name("track-join".into()).spawn(move || {
        let _ = tx.send(join_segments(&plan, &path, muxer, remux));
    });
    let joined = match spawned {
        Ok(_) => rx
            .await
            .unwrap_or_else(|_| Err(MediaError::Io("join thread ended without a result".into()))),
        Err(e) => Err(MediaError::Io(format!("cannot start a join thread: {e}"))),
    };
    match joined {
        Ok(_) => TrackOutcome {
            track_id,
            location: Some(final_path),
            started,
            stopped,
            error,
        },
        Err(e) => {
            tracing::error!(track_id = %track_id, error = %e, "segments could not be joined");
            TrackOutcome {
                track_id,
                location: None,
                started,
                stopped,
                error: Some(e.to_string()),
            }
        }
    }
}

impl Handler<Snapshot> for Stream {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut children = Vec::new();
        for track in &self.tracks {
            let c = &track.counters;
            let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
            let sum = |f: &dyn Fn(&WriterStats) -> u64| track.segments.iter().map(|s| f(&s.stats)).sum::<u64>();
            let counters = BTreeMap::from([
                ("num_packets", get(&c.num_packets)),
                ("num_bytes", get(&c.num_bytes)),
                ("num_frames", get(&c.num_frames)),
                ("num_lost", get(&c.num_lost)),
                ("num_keyframe_requests", get(&c.num_keyframe_requests)),
                ("num_malformed", get(&c.num_malformed)),
                ("num_refused", get(&c.num_refused)),
                ("bitrate_bps", get(&c.bitrate_bps)),
                (
                    "num_frames_written",
                    sum(&|s| s.num_frames_written.load(Ordering::Relaxed)),
                ),
                (
                    "num_bytes_written",
                    sum(&|s| s.num_bytes_written.load(Ordering::Relaxed)),
                ),
                (
                    "num_frames_dropped",
                    sum(&|s| s.num_frames_dropped.load(Ordering::Relaxed)),
                ),
                ("num_slow_writes", sum(&|s| s.num_slow_writes.load(Ordering::Relaxed))),
                ("num_flushes", sum(&|s| s.num_flushes.load(Ordering::Relaxed))),
                (
                    "max_write_micros",
                    track
                        .segments
                        .iter()
                        .map(|s| s.stats.max_write_micros.load(Ordering::Relaxed))
                        .max()
                        .unwrap_or(0),
                ),
                (
                    "writer_queue_depth",
                    track.segments.iter().map(|s| s.stats.queue_depth()).sum(),
                ),
                ("num_segments", track.segments.len() as u64),
            ]);
            for (name, value) in &counters {
                if matches!(*name, "max_write_micros" | "num_segments") {
                    continue;
                }
                *totals.entry(name).or_default() += value;
            }
            children.push(ActorSnapshot {
                kind: "Track",
                id: track.id.clone(),
                state: format!("{} {}", track.codec.kind().as_str(), track.codec.name()),
                mailbox_depth: 0,
                restarts: 0,
                last_error: None,
                counters,
                children: vec![],
            });
        }
        totals.insert("num_tracks", self.tracks.len() as u64);
        totals.insert("num_sessions", self.num_sessions);
        totals.insert("connected", u64::from(self.session.is_some()));
        totals.insert("num_restarts", u64::from(self.restarts));
        totals.insert("num_failed", u64::from(self.failed));
        totals.insert("millis_in_state", self.state_since.elapsed().as_millis() as u64);
        MessageResult(ActorSnapshot {
            kind: "Stream",
            id: format!(
                "{} {} {}",
                self.record.id,
                self.record.user_id,
                self.record.kind.as_str()
            ),
            state: self.record.state.as_str().into(),
            mailbox_depth: 0,
            restarts: self.restarts,
            last_error: self.last_error.clone(),
            counters: totals,
            children,
        })
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
            StreamRecord {
                id: "s1".into(),
                user_id: "agent".into(),
                kind: StreamType::Cam,
                state: StreamState::Recording,
                started: None,
                stopped: None,
                rtp_session: None,
                tracks: vec![],
            },
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
