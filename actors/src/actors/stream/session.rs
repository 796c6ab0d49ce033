//! A stream's publisher connections: opening a plain-RTP or WHIP session (negotiation, ports,
//! receive threads or tasks), re-binding a plain-RTP session after a restart, ending it, and what
//! ingest reports about it (first frame, latched source, a track that ended).

use super::negotiate::{plan_rtp_answer, MediaPlan};
use super::*;

pub(super) enum Ingest {
    Rtp(PlainRtpSession),
    Whip(WhipSession),
}

pub(super) struct LiveSession {
    pub(super) id: String,
    pub(super) ingest: Ingest,
    /// The session's place in its organization's session budget, returned when it is dropped.
    pub(super) permit: Option<Arc<crate::limits::SessionPermit>>,
    /// A session re-bound after a process restart: the node capacity it holds (admitted before
    /// the crash; counted again whatever the budget says).
    pub(super) restored: Option<crate::capacity::CapacityPermit>,
    pub(super) track_ids: Vec<String>,
    pub(super) num_tracks_ended: usize,
}

impl Stream {
    /// Makes `ingest` the live session: the stream records, and the store learns the plain-RTP
    /// session to re-bind after a restart (`None` for WHIP, whose publisher reconnects).
    pub(super) fn begin_session(
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
            restored: None,
            track_ids,
            num_tracks_ended: 0,
        });
        self.num_sessions += 1;
        self.record.state = StreamState::Recording;
        self.record.rtp_session = rtp_session;
    }

    /// Ends the live session's ingest; one receiver per ingest thread or task, resolved (with the
    /// track's summary) when it has ended.
    pub(super) fn stop_ingest(&mut self) -> Vec<tokio::sync::oneshot::Receiver<(String, TrackSummary)>> {
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

    pub(super) fn events(ctx: &Context<Self>) -> EventSink {
        let addr = ctx.address();
        // do_send ignores the mailbox capacity: ingest threads never block on the actor.
        Arc::new(move |event| addr.do_send(IngestNotice(event)))
    }

    /// Ends the live session's ingest (its threads report `TrackEnded`, which finishes the
    /// segments).
    pub(super) fn end_session(&mut self) {
        if let Some(session) = &self.session {
            match &session.ingest {
                Ingest::Rtp(rtp) => rtp.stop(),
                Ingest::Whip(whip) => whip.stop(),
            }
        }
    }

    pub(super) fn open_rtp(&mut self, msg: OpenRtp, ctx: &mut Context<Self>) -> Result<OpenedSession, MediaError> {
        let recorded: Vec<Codec> = self.tracks.iter().map(|t| t.codec).collect();
        let plans = plan_rtp_answer(&msg.offer, msg.audio, msg.video, msg.any_source, &recorded)?;
        let mut answers = Vec::new();
        let mut bound = Vec::new();
        for (media, plan) in msg.offer.media.iter().zip(plans) {
            match plan {
                MediaPlan::Record(accepted) => {
                    let b = BoundMedia::bind(&self.media.ports, media, msg.offer.connection, accepted)?;
                    answers.push(MediaAnswer::Accepted {
                        accepted,
                        rtp_port: b.rtp_port(),
                        rtcp_port: b.rtcp_port(),
                    });
                    bound.push(b);
                }
                MediaPlan::Refuse(refusal) => answers.push(MediaAnswer::Refused(refusal)),
            }
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
    pub(super) fn start_rtp(
        &mut self,
        session_id: &str,
        bound: Vec<(usize, BoundMedia)>,
        ctx: &mut Context<Self>,
    ) -> Result<(), MediaError> {
        let events = Self::events(ctx);
        let now = Instant::now();
        // Media wall times follow the engine's clock as it reads when the session opens.
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
                nack: b.accepted.nack,
                fir: b.accepted.fir,
                aux: b.accepted.aux,
                rtp_port: b.rtp_port(),
                rtcp_port: b.rtcp.as_ref().map(|_| b.rtcp_port()),
                allowed_source: b.allowed_source,
                latched_source: b.latched_source,
            });
            let receiver = TrackReceiver::new(
                b.accepted.codec,
                self.media.receiver.clone(),
                now,
                self.media.clock.utc_micros(),
            )
            .with_payloads(b.accepted.payload_type, b.accepted.aux)
            .with_nack(b.accepted.nack)
            .with_h264_parameter_sets(b.parameter_sets.clone());
            let mut pump = TrackPump::new(
                session_id.to_string(),
                track_id,
                receiver,
                sink,
                counters,
                events.clone(),
                now,
            );
            pump.pause = self.pause.clone();
            pumps.push((b, pump));
        }
        let session = receive::start(pumps, self.media.idle_timeout, &self.media.work, &self.media.receive)?;
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
    pub(super) fn resume_rtp(&mut self, session: RtpSessionRecord, ctx: &mut Context<Self>) -> Result<(), MediaError> {
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
                        not_writing: false,
                    });
                    self.tracks.len() - 1
                }
            };
            let (rtp, rtcp) = match self.prebound.remove(&media.rtp_port) {
                Some(sockets) => sockets,
                None => self.media.ports.bind_exact(media.rtp_port, media.rtcp_port)?,
            };
            bound.push((
                at,
                BoundMedia {
                    accepted: Accepted {
                        codec,
                        payload_type: media.payload_type,
                        nack: media.nack,
                        fir: media.fir,
                        aux: media.aux,
                    },
                    rtp,
                    rtcp,
                    allowed_source: media.allowed_source,
                    latched_source: media.latched_source,
                    greet: None,
                    parameter_sets: Vec::new(),
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
    pub(super) fn open_whip(
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
                        let (answer_sdp, session) = negotiated.start(
                            session_id.clone(),
                            tracks,
                            act.media.receiver.clone(),
                            events,
                            act.media.clock.utc_micros(),
                            act.pause.clone(),
                        )?;
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
    pub(super) fn ingest_notice(&mut self, msg: IngestNotice, ctx: &mut Context<Self>) {
        match msg.0 {
            IngestEvent::FirstFrame {
                track_id, wall_micros, ..
            } => {
                let now = self.media.clock.utc();
                let at = to_datetime(wall_micros).unwrap_or(now);
                if let Some(track) = self.tracks.iter_mut().find(|t| t.id == track_id) {
                    track.created.get_or_insert(now);
                }
                self.recorder.do_send(StreamNotice::MediaStarted {
                    stream_id: self.record.id.clone(),
                    track_id,
                    at,
                });
            }
            IngestEvent::Orientation { track_id, rotation, .. } => {
                if let Some(track) = self.record.tracks.iter_mut().find(|t| t.id == track_id) {
                    track.rotation = Some(rotation);
                }
                tracing::info!(stream_id = %self.record.id, %track_id, rotation, "video orientation");
                self.recorder.do_send(StreamNotice::Orientation {
                    stream_id: self.record.id.clone(),
                    track_id,
                    rotation,
                });
            }
            IngestEvent::MediaWhilePaused { .. } => {
                self.recorder.do_send(StreamNotice::MediaWhilePaused {
                    stream_id: self.record.id.clone(),
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
                let Some(at) = self.tracks.iter().position(|t| t.id == track_id) else {
                    return;
                };
                let Some(segment) = self.tracks[at]
                    .segments
                    .iter_mut()
                    .rev()
                    .find(|s| s.session_id == session_id)
                else {
                    return;
                };
                segment.summary = Some(summary);
                let index = segment.index;
                // The file is complete the moment its connection ends.
                self.finish_segment(at, index, ctx);
                if let Some(session) = &mut self.session {
                    if session.id == session_id {
                        session.num_tracks_ended += 1;
                        if session.num_tracks_ended >= session.track_ids.len() {
                            let permit = session.permit.take();
                            let restored = session.restored.take();
                            self.session = None;
                            if let Some(rtp) = self.take_rtp_restart() {
                                // A supervised restart: same ports, same sender, new segments
                                // (and the same place in the organization's session budget).
                                if let Err(e) = self.resume_rtp(rtp, ctx) {
                                    self.fail(ErrorInfo::new("MEDIA", format!("restart failed: {e}")));
                                } else if let Some(live) = self.session.as_mut() {
                                    live.permit = permit;
                                    live.restored = restored;
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
