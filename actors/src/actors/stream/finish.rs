//! The finish of a stream at a stop: ingest ended, every writer finished, each track's segments
//! joined into one file, and the stream's final record.

use super::*;

/// A segment at a stop: its writer still running (asked to finish once ingest has ended), or
/// already finishing.
pub(super) enum Finishing {
    Writer(TrackWriter),
    Started(BoxFuture<'static, SegmentReport>),
}

impl Finishing {
    pub(super) fn start(self) -> BoxFuture<'static, SegmentReport> {
        match self {
            Finishing::Writer(writer) => writer.begin_finish().boxed(),
            Finishing::Started(finishing) => finishing,
        }
    }
}

/// What one track's finish produced.
pub(super) struct TrackOutcome {
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
    pub(super) fn finish(&mut self, _msg: FinishStream) -> ResponseActFuture<Self, Result<StreamRecord, MediaError>> {
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
            act.continuation_point("FinishStream");
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
            act.record.state = if failed || act.has_failed() {
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
