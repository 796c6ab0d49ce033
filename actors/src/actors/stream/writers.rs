//! A stream's track writers: one segment per connection and track, supervision of the writer
//! threads (a failed writer restarts into a new segment within the restart budget, beyond it the
//! stream is FAILED), and the quiesce that completes every file.

use super::*;

impl Stream {
    /// Stops ingest and finishes every writer; the future resolves when the ingest threads or
    /// tasks have ended and the files are complete (or after [`QUIESCE_TIMEOUT`]).
    pub(super) fn quiesce(&mut self) -> BoxFuture<'static, ()> {
        let mut waits: Vec<BoxFuture<'static, ()>> = Vec::new();
        let ended = self.stop_ingest();
        for rx in ended {
            waits.push(rx.map(|_| ()).boxed());
        }
        for track in &mut self.tracks {
            for segment in &mut track.segments {
                if let Some(finishing) = segment.begin_finish() {
                    waits.push(finishing.map(|_| ()).boxed());
                }
                segment.state = SegmentState::HandedOver;
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
    pub(super) fn check_writers(&mut self, ctx: &mut Context<Self>) {
        if self.phase != StreamPhase::Live {
            return;
        }
        let failed: Vec<(String, usize)> = self
            .tracks
            .iter()
            .flat_map(|t| {
                t.segments
                    .iter()
                    .filter(|s| s.is_writing() && s.stats.failed.load(Ordering::Acquire))
                    .map(|s| (t.id.clone(), s.index))
            })
            .filter(|key| !self.failed_segments.contains(key))
            .collect();
        if failed.is_empty() {
            return;
        }
        self.failed_segments.extend(failed.iter().cloned());
        let window = self.recovery.restart_window;
        let admitted = supervision::admit_restart(&mut self.restart_times, self.media.clock.now(), &self.recovery);
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
        self.phase = StreamPhase::RestartingRtp(rtp);
        self.end_session();
        self.recorder.do_send(StreamNotice::Restarting {
            stream_id: self.record.id.clone(),
        });
    }

    /// Finishes each failed WHIP segment and hands its track's running pump a new writer.
    pub(super) fn restart_whip_writers(
        &mut self,
        failed: &[(String, usize)],
        ctx: &mut Context<Self>,
    ) -> Result<(), MediaError> {
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
            self.finish_segment(at, index, ctx);
            let (sink, _counters) = self.new_segment(at, &session_id)?;
            if let Some(segment) = self.tracks[at].segments.last_mut() {
                segment.continues = true;
            }
            swap.put(sink);
        }
        Ok(())
    }

    /// Asks a writing segment to finish now (its connection ended, or supervision replaced its
    /// writer): the file is complete the moment it can be; the report comes back as a
    /// [`SegmentFinished`] message, or is awaited by a stop's finish.
    pub(super) fn finish_segment(&mut self, at: usize, index: usize, ctx: &mut Context<Self>) {
        let track = &mut self.tracks[at];
        let Some(segment) = track.segments.iter_mut().find(|s| s.index == index) else {
            return;
        };
        if !segment.is_writing() {
            return;
        }
        let Some(finishing) = segment.begin_finish() else {
            return;
        };
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

    pub(super) fn fail(&mut self, error: ErrorInfo) {
        tracing::error!(stream_id = %self.record.id, code = %error.code, message = %error.message, "stream failed");
        self.phase = StreamPhase::Failed;
        self.record.state = StreamState::Failed;
        self.state_since = self.media.clock.now();
        self.last_error = Some(error.clone());
        self.end_session();
        self.recorder.do_send(StreamNotice::Failed {
            stream_id: self.record.id.clone(),
            error,
        });
    }

    /// The track of `codec`'s kind that the new session continues, or a new one. A stream has
    /// at most one track per kind.
    pub(super) fn track_for(&mut self, codec: Codec) -> usize {
        if let Some(at) = self.tracks.iter().position(|t| t.codec.kind() == codec.kind()) {
            return at;
        }
        self.tracks.push(TrackState {
            id: uuid::Uuid::new_v4().simple().to_string(),
            codec,
            counters: Arc::new(TrackCounters::default()),
            segments: Vec::new(),
            created: None,
            not_writing: false,
        });
        let id = self.tracks.last().expect("pushed just above").id.clone();
        self.record.tracks.push(TrackRecord::new(id, codec.kind()));
        self.tracks.len() - 1
    }

    /// Starts a new segment writer for a track; returns its sink and counters.
    pub(super) fn new_segment(
        &mut self,
        at: usize,
        session_id: &str,
    ) -> Result<(crate::media::writer::FrameSink, Arc<TrackCounters>), MediaError> {
        let track = &mut self.tracks[at];
        // After recovered segments the numbering goes on where the files left off.
        let index = track.segments.last().map_or(0, |s| s.index + 1);
        let path = segment_path(&self.dir, &track.id, index, track.codec.container());
        let config = crate::media::writer::WriterConfig {
            clock: self.media.clock.clone(),
            work: self.media.work.clone(),
            ..self.media.writer.clone()
        };
        let writer = TrackWriter::spawn(path, track.codec, config)?;
        let sink = writer.sink();
        track.segments.push(Segment {
            index,
            session_id: session_id.to_string(),
            stats: writer.stats(),
            state: SegmentState::Writing(writer),
            summary: None,
            continues: false,
        });
        Ok((sink, track.counters.clone()))
    }
}

/// A track that has received packets for this long and written no frame says so: on the API
/// (its `localStorage.error` and the instance's `error`), in the log, in `/metrics` and to the
/// application's webhook. Longer than any sender's wait for a first keyframe that answers PLI.
pub(super) const NO_FRAME_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Stream {
    /// Tracks that receive and cannot write (the decoder state never started: no keyframe
    /// came, or every frame was malformed) are reported once, and again when they write.
    pub(super) fn check_tracks_writing(&mut self) {
        if self.phase != StreamPhase::Live {
            return;
        }
        let now_micros = self.media.clock.utc_micros();
        for at in 0..self.tracks.len() {
            let track = &self.tracks[at];
            let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
            let written: u64 = track
                .segments
                .iter()
                .map(|s| s.stats.num_frames_written.load(Ordering::Relaxed))
                .sum();
            let first_packet = get(&track.counters.first_packet_at_micros) as i64;
            let silent_for = now_micros.saturating_sub(first_packet);
            let error = if written > 0 || first_packet == 0 || get(&track.counters.num_frames_paused) > 0 {
                None
            } else if silent_for >= NO_FRAME_GRACE.as_micros() as i64 {
                let packets = get(&track.counters.num_packets);
                let requests = get(&track.counters.num_keyframe_requests);
                let why = if track.codec.is_video() {
                    format!("no keyframe came ({requests} keyframe requests sent, still asking)")
                } else {
                    format!("{} malformed", get(&track.counters.num_malformed))
                };
                Some(ErrorInfo::new(
                    "NO_DECODABLE_MEDIA",
                    format!(
                        "{packets} {} packets received in {} s and no frame written: {why}",
                        track.codec.name(),
                        silent_for / 1_000_000
                    ),
                ))
            } else {
                continue;
            };
            if error.is_some() == track.not_writing {
                continue;
            }
            let track_id = track.id.clone();
            match &error {
                Some(e) => {
                    tracing::warn!(stream_id = %self.record.id, track_id = %track_id, error = %e.message, "track receives packets and writes no frame")
                }
                None => tracing::info!(stream_id = %self.record.id, track_id = %track_id, "track writes frames again"),
            }
            self.tracks[at].not_writing = error.is_some();
            if let Some(record) = self.record.tracks.iter_mut().find(|t| t.id == track_id) {
                record.local.error = error.clone();
            }
            self.recorder.do_send(StreamNotice::TrackWriting {
                stream_id: self.record.id.clone(),
                track_id,
                error,
            });
        }
    }
}

/// A connected session that received nothing for this long is silent (a hold, a mute): the
/// span goes into the stream record, for the review timeline.
pub(super) const SILENT_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

impl Stream {
    /// Opens a silence when the live plain-RTP session has been quiet for `SILENT_AFTER`, and
    /// closes it when media comes again (at the first packet's time).
    pub(super) fn check_session_silence(&mut self) {
        if self.phase != StreamPhase::Live {
            return;
        }
        let Some(super::session::Ingest::Rtp(rtp)) = self.session.as_ref().map(|s| &s.ingest) else {
            return;
        };
        let silent_for = rtp.activity().silent_for(std::time::Instant::now());
        let now = self.media.clock.utc();
        let since = now - chrono::Duration::from_std(silent_for).unwrap_or_default();
        let open = self.record.silences.last().is_some_and(|s| s.to.is_none());
        let changed = if silent_for >= SILENT_AFTER && !open {
            self.record.silences.push(SilenceSpan { from: since, to: None });
            true
        } else if silent_for < SILENT_AFTER && open {
            if let Some(last) = self.record.silences.last_mut() {
                last.to = Some(since.max(last.from));
            }
            true
        } else {
            false
        };
        if changed {
            // Bounded: a publisher that comes and goes all day keeps its latest holds.
            if self.record.silences.len() > MAX_SILENCES {
                self.record.silences.remove(0);
            }
            self.recorder.do_send(StreamNotice::Silences {
                stream_id: self.record.id.clone(),
                silences: self.record.silences.clone(),
            });
        }
    }
}

/// Silences kept per stream.
const MAX_SILENCES: usize = 200;

impl Handler<SupervisionTick> for Stream {
    type Result = ();

    fn handle(&mut self, _msg: SupervisionTick, ctx: &mut Self::Context) {
        // A failed stream only waits for its finish: nothing left to supervise.
        if self.has_failed() {
            return;
        }
        self.guarded(ctx, "SupervisionTick", |act, ctx| {
            act.check_tracks_writing();
            act.check_session_silence();
            act.check_writers(ctx)
        });
    }
}

impl Handler<SegmentFinished> for Stream {
    type Result = ();

    fn handle(&mut self, msg: SegmentFinished, ctx: &mut Self::Context) {
        self.guarded(ctx, "SegmentFinished", |act, _ctx| act.segment_finished(msg));
    }
}

impl Stream {
    pub(super) fn segment_finished(&mut self, msg: SegmentFinished) {
        let replaced = self.failed_segments.contains(&(msg.track_id.clone(), msg.index));
        if let (Some(error), false) = (&msg.report.error, replaced) {
            tracing::error!(track_id = %msg.track_id, segment = msg.index, error = %error, "segment failed");
            self.last_error = Some(ErrorInfo::new("MEDIA_WRITE", error.clone()));
        }
        if let Some(track) = self.tracks.iter_mut().find(|t| t.id == msg.track_id) {
            if let Some(segment) = track.segments.iter_mut().find(|s| s.index == msg.index) {
                if !matches!(segment.state, SegmentState::HandedOver) {
                    segment.state = SegmentState::Done(msg.report);
                }
            }
        }
    }
}
