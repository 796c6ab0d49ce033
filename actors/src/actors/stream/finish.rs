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
                let finishing = match std::mem::replace(&mut segment.state, SegmentState::HandedOver) {
                    // Asked to finish once the ingest threads have ended (below): their last
                    // frames still reach the writer.
                    SegmentState::Writing(writer) => Finishing::Writer(writer),
                    SegmentState::Finishing(finishing) => Finishing::Started(finishing.boxed()),
                    SegmentState::Done(report) => Finishing::Started(futures_util::future::ready(report).boxed()),
                    SegmentState::HandedOver => continue,
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
        let work = self.media.work.clone();
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
                let mut done = Vec::new();
                for (_index, session_id, summary, finishing, replaced) in segments {
                    let mut report = finishing.await;
                    let mut probed = false;
                    if replaced && report.info.num_frames == 0 {
                        // A panicked writer left no report: its file holds what it flushed,
                        // read back like a segment left by a crash.
                        if let Some(info) = probe_on_thread(report.info.path.clone(), work.clone()).await {
                            report.info = info;
                            probed = true;
                        }
                    }
                    done.push(SegmentDone {
                        session_id,
                        summary,
                        report,
                        replaced,
                        probed,
                    });
                }
                let plan = plan_track(&track_id, done, live_session_id.as_deref(), &live_summaries);
                outcomes.push(finish_track(track_id, final_path, muxer, plan, work.clone()).await);
            }
            outcomes
        }
        .into_actor(self)
        .map(move |outcomes, act, ctx| {
            // After the files are final, before the record says where they are.
            act.continuation_point("FinishStream");
            let now = act.media.clock.utc();
            let created: Vec<(String, Option<DateTime<Utc>>)> =
                act.tracks.iter().map(|t| (t.id.clone(), t.created)).collect();
            act.record = final_record(&act.record, &outcomes, &created, act.has_failed(), now);
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
async fn probe_on_thread(path: PathBuf, work: crate::work::WorkGroup) -> Option<SegmentInfo> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    work.spawn("segment-probe", move || {
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

/// A segment of a track at the stop, its writer finished.
pub(super) struct SegmentDone {
    session_id: String,
    /// The summary its connection left when it ended (None for the live one, which hands it
    /// over as the stop ends ingest, and for a segment that continues its connection).
    summary: Option<TrackSummary>,
    report: SegmentReport,
    /// Supervision replaced it after its writer failed: its failure is not the track's.
    replaced: bool,
    /// Its file was read back after its writer died without a report.
    probed: bool,
}

/// Pure: what a track's finish joins, from its finished segments.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TrackPlan {
    /// Every segment, in order, with the best start time known.
    infos: Vec<SegmentInfo>,
    /// The track's error: a segment that failed and was not replaced.
    error: Option<String>,
    /// Rewrite rather than copy the segments: one has no trailer (left by a crash, or read
    /// back after its writer died).
    remux: bool,
}

/// Plans a track's finish: a segment's start comes from its connection's summary (refined by
/// sender reports) where it has one — the live session's summaries belong to its own segments
/// only — else from its own file.
pub(super) fn plan_track(
    track_id: &str,
    segments: Vec<SegmentDone>,
    live_session_id: Option<&str>,
    live_summaries: &[(String, TrackSummary)],
) -> TrackPlan {
    let remux = segments.iter().any(|s| s.session_id == RECOVERED_SESSION || s.probed);
    let mut error = None;
    let mut infos = Vec::with_capacity(segments.len());
    for segment in segments {
        if !segment.replaced && segment.report.error.is_some() {
            error = segment.report.error.clone();
        }
        let summary = segment.summary.or_else(|| {
            (!segment.replaced && live_session_id == Some(segment.session_id.as_str()))
                .then(|| {
                    live_summaries
                        .iter()
                        .find(|(t, _)| t == track_id)
                        .map(|(_, s)| s.clone())
                })
                .flatten()
        });
        let mut info = segment.report.info;
        if let Some(started) = summary.and_then(|s| s.started_wall_micros) {
            info.started_wall_micros = Some(started);
        }
        infos.push(info);
    }
    TrackPlan { infos, error, remux }
}

/// Pure: a track's start and stop, from its segments with media (the first one's start, the
/// last one's end).
fn track_times(infos: &[SegmentInfo]) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let with_media: Vec<&SegmentInfo> = infos.iter().filter(|s| s.num_frames > 0).collect();
    let started = with_media
        .first()
        .and_then(|s| s.started_wall_micros)
        .and_then(to_datetime);
    let stopped = with_media
        .last()
        .and_then(|s| s.started_wall_micros.map(|at| at + s.duration_micros))
        .and_then(to_datetime);
    (started, stopped)
}

/// Pure: the stream's final record from its tracks' outcomes. A track without a stop time of
/// its own stops `now`; the stream spans its tracks; it is `FAILED` when a track failed or its
/// restart budget ran out (`stream_failed`), else `STOPPED`.
pub(super) fn final_record(
    record: &StreamRecord,
    outcomes: &[TrackOutcome],
    created: &[(String, Option<DateTime<Utc>>)],
    stream_failed: bool,
    now: DateTime<Utc>,
) -> StreamRecord {
    let mut record = record.clone();
    let mut failed = stream_failed;
    for outcome in outcomes {
        let Some(track) = record.tracks.iter_mut().find(|t| t.id == outcome.track_id) else {
            continue;
        };
        track.started = outcome.started.or(track.started);
        track.stopped = outcome.stopped.or(Some(now));
        track.local.location = outcome.location.as_ref().map(|p| p.display().to_string());
        track.local.created = created
            .iter()
            .find(|(id, _)| *id == outcome.track_id)
            .and_then(|(_, c)| *c);
        if let Some(error) = &outcome.error {
            failed = true;
            track.local.error = Some(ErrorInfo::new("MEDIA_WRITE", error.clone()));
        }
    }
    record.started = record.tracks.iter().filter_map(|t| t.started).min().or(record.started);
    record.stopped = Some(record.tracks.iter().filter_map(|t| t.stopped).max().unwrap_or(now));
    record.state = if failed {
        StreamState::Failed
    } else {
        StreamState::Stopped
    };
    record.rtp_session = None;
    // A silence the stop ended ends with the stream.
    let stopped = record.stopped;
    if let Some(last) = record.silences.last_mut().filter(|s| s.to.is_none()) {
        last.to = stopped.or(Some(now)).map(|t| t.max(last.from));
    }
    record
}

/// Joins a track's segments (on a blocking thread) as planned.
async fn finish_track(
    track_id: String,
    final_path: PathBuf,
    muxer: &'static str,
    plan: TrackPlan,
    work: crate::work::WorkGroup,
) -> TrackOutcome {
    let TrackPlan { infos, error, remux } = plan;
    let (started, stopped) = track_times(&infos);
    let plan = plan_join(&infos);
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
    let spawned = work.spawn("track-join", move || {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{StreamType, TrackType};

    const T0: i64 = 1_700_000_000_000_000;

    fn info(name: &str, started: Option<i64>, duration_micros: i64, num_frames: u64) -> SegmentInfo {
        SegmentInfo {
            path: PathBuf::from(name),
            started_wall_micros: started,
            duration_micros,
            num_frames,
        }
    }

    fn done(
        session: &str,
        info: SegmentInfo,
        summary: Option<i64>,
        error: Option<&str>,
        replaced: bool,
    ) -> SegmentDone {
        SegmentDone {
            session_id: session.into(),
            summary: summary.map(|at| TrackSummary {
                started_wall_micros: Some(at),
                ..Default::default()
            }),
            report: SegmentReport {
                info,
                num_bytes: 0,
                error: error.map(str::to_string),
            },
            replaced,
            probed: false,
        }
    }

    /// (segments, live session) → (starts, error, remux)
    type Case = (
        Vec<SegmentDone>,
        Option<&'static str>,
        Vec<Option<i64>>,
        Option<&'static str>,
        bool,
    );

    #[test]
    fn a_tracks_finish_takes_starts_from_summaries_and_errors_from_unreplaced_segments() {
        let live = vec![(
            "t1".to_string(),
            TrackSummary {
                started_wall_micros: Some(T0 + 5),
                ..Default::default()
            },
        )];
        // (segments, live session) → (starts, error, remux)
        let cases: Vec<Case> = vec![
            // an ended connection's summary refines the file's own start
            (
                vec![done("s1", info("a", Some(T0), 10, 3), Some(T0 - 7), None, false)],
                None,
                vec![Some(T0 - 7)],
                None,
                false,
            ),
            // the live session's summary goes to its own segment only
            (
                vec![
                    done("s1", info("a", Some(T0), 10, 3), None, None, false),
                    done("s2", info("b", Some(T0 + 100), 10, 3), None, None, false),
                ],
                Some("s2"),
                vec![Some(T0), Some(T0 + 5)],
                None,
                false,
            ),
            // a replaced segment's failure is not the track's; an unreplaced one's is
            (
                vec![
                    done("s1", info("a", Some(T0), 10, 3), None, Some("disk full"), true),
                    done("s1", info("b", Some(T0 + 20), 10, 3), None, None, false),
                ],
                None,
                vec![Some(T0), Some(T0 + 20)],
                None,
                false,
            ),
            (
                vec![done("s1", info("a", Some(T0), 10, 3), None, Some("disk full"), false)],
                None,
                vec![Some(T0)],
                Some("disk full"),
                false,
            ),
            // a segment left by a crash is rewritten
            (
                vec![done(RECOVERED_SESSION, info("a", None, 10, 3), None, None, false)],
                None,
                vec![None],
                None,
                true,
            ),
        ];
        for (segments, live_session, starts, error, remux) in cases {
            let plan = plan_track("t1", segments, live_session, &live);
            let got: Vec<Option<i64>> = plan.infos.iter().map(|i| i.started_wall_micros).collect();
            assert_eq!((got, plan.error.as_deref(), plan.remux), (starts, error, remux));
        }
    }

    #[test]
    fn a_track_spans_its_segments_with_media() {
        let infos = [
            info("empty", Some(T0 - 1_000), 0, 0),
            info("a", Some(T0), 2_000_000, 60),
            info("b", Some(T0 + 5_000_000), 1_000_000, 30),
        ];
        let (started, stopped) = track_times(&infos);
        assert_eq!(started.unwrap().timestamp_micros(), T0);
        assert_eq!(stopped.unwrap().timestamp_micros(), T0 + 6_000_000);
        assert_eq!(track_times(&[info("empty", Some(T0), 0, 0)]), (None, None));
    }

    #[test]
    fn the_final_record_spans_its_tracks_and_fails_with_any_of_them() {
        let at = |micros| to_datetime(T0 + micros).unwrap();
        let record = StreamRecord {
            tracks: vec![
                TrackRecord::new("v", TrackType::Video),
                TrackRecord::new("a", TrackType::Audio),
            ],
            ..StreamRecord::new("s", "agent", StreamType::Cam)
        };
        let outcome = |id: &str, started, stopped, error: Option<&str>| TrackOutcome {
            track_id: id.into(),
            location: Some(PathBuf::from(format!("/m/{id}.webm"))),
            started,
            stopped,
            error: error.map(str::to_string),
        };
        let now = at(60_000_000);
        let created = vec![("v".to_string(), Some(at(1))), ("a".to_string(), None)];
        let outcomes = [
            outcome("v", Some(at(10)), Some(at(5_000_000)), None),
            outcome("a", Some(at(0)), None, None),
        ];
        let done = final_record(&record, &outcomes, &created, false, now);
        assert_eq!(done.state, StreamState::Stopped);
        assert_eq!(
            (done.started, done.stopped),
            (Some(at(0)), Some(now)),
            "a track without a stop stops now"
        );
        assert_eq!(done.tracks[0].local.location.as_deref(), Some("/m/v.webm"));
        assert_eq!(done.tracks[0].local.created, Some(at(1)));

        let broken = [
            outcome("v", Some(at(10)), Some(at(20)), Some("muxer")),
            outcome("a", Some(at(0)), Some(at(30)), None),
        ];
        let failed = final_record(&record, &broken, &created, false, now);
        assert_eq!(failed.state, StreamState::Failed);
        assert_eq!(
            failed.tracks[0].local.error.as_ref().map(|e| e.code.as_str()),
            Some("MEDIA_WRITE")
        );
        assert_eq!(failed.stopped, Some(at(30)));
        assert_eq!(
            final_record(&record, &outcomes, &created, true, now).state,
            StreamState::Failed
        );
    }
}
