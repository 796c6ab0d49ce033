//! A stream rebuilt after a crash: its tracks and the segment files they left, found by name
//! (on a thread of its own) before the actor takes a message; what each file holds is read
//! afterwards, while the stream records again.

use super::*;
use crate::media::segment::TrackFileName;

impl Stream {
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
}

/// Pure: what a recovered track is rebuilt from, given the names of the files in its stream's
/// folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TrackRestore {
    pub(super) track_id: String,
    /// The files to read back, as (segment index, file name), in order.
    pub(super) files: Vec<(usize, String)>,
    /// The session id they are restored under: [`RECOVERED_SESSION`] for segments, or
    /// [`FINALIZED_SESSION`] for a track's final file.
    pub(super) session_id: &'static str,
    /// Segments a final file already holds: removed.
    pub(super) remove: Vec<String>,
}

/// Plans the restore of each of `tracks` from the file names `names` of its stream's folder:
/// its segments in index order; or, when its final file is there (only ever renamed into place
/// complete: a stop was interrupted after that point), the final file alone and every segment
/// beside it removed. Names that are neither (a `.tmp` of a segment being written, another
/// track's files) are left alone.
pub(super) fn plan_restore(names: &[String], tracks: &[TrackRecord]) -> Vec<TrackRestore> {
    let mut plans = Vec::new();
    for track in tracks {
        let mut segments: Vec<(usize, String)> = Vec::new();
        let mut finals: Vec<String> = Vec::new();
        for name in names {
            match TrackFileName::parse(name, &track.id) {
                Some(TrackFileName::Segment { index, .. }) => segments.push((index, name.clone())),
                Some(TrackFileName::Final { .. }) => finals.push(name.clone()),
                None => {}
            }
        }
        segments.sort();
        finals.sort();
        let plan = match finals.into_iter().next() {
            Some(final_file) => TrackRestore {
                track_id: track.id.clone(),
                files: vec![(0, final_file)],
                session_id: FINALIZED_SESSION,
                remove: segments.into_iter().map(|(_, name)| name).collect(),
            },
            None => TrackRestore {
                track_id: track.id.clone(),
                files: segments,
                session_id: RECOVERED_SESSION,
                remove: Vec::new(),
            },
        };
        if !plan.files.is_empty() {
            plans.push(plan);
        }
    }
    plans
}

/// Rebuilds the tracks of a recovered stream from the names of its segment files, at once:
/// each segment comes back `Finishing`, its report (frames, duration, start) resolved by a probe
/// that reads the file on a thread of its own afterwards. So a recovered stream resumes its
/// session without reading hundreds of files first (a stop awaits the probes, as it awaits a
/// writer; the reads run on one low-priority thread for the whole process). A track's codec is the one its live session recorded (`known`), else read from its
/// first file's header; a track whose codec cannot be read is not restored. Blocking (a
/// directory listing, and a header read for a track without a session).
pub(super) fn restore_tracks(
    dir: &std::path::Path,
    records: &[TrackRecord],
    known: &[(String, Codec)],
    work: &crate::work::WorkGroup,
) -> Vec<TrackState> {
    let _ = crate::fault::point_in(crate::fault::STREAM_RESTORE, &dir.to_string_lossy());
    let names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    let mut out = Vec::new();
    let mut probes: Vec<(PathBuf, Option<i64>, tokio::sync::oneshot::Sender<SegmentReport>)> = Vec::new();
    for plan in plan_restore(&names, records) {
        let track = records
            .iter()
            .find(|t| t.id == plan.track_id)
            .expect("a plan is made for one of the records");
        for leftover in &plan.remove {
            let _ = std::fs::remove_file(dir.join(leftover));
        }
        let session_id = plan.session_id;
        let mut segments: Vec<(usize, PathBuf)> = Vec::new();
        for (index, name) in plan.files {
            let path = dir.join(name);
            if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
                // Created ahead of its first frame (or killed before its first flush): it holds
                // nothing, and left behind it would only be a file no probe can read.
                tracing::info!(path = %path.display(), "empty segment removed");
                let _ = std::fs::remove_file(&path);
                continue;
            }
            segments.push((index, path));
        }
        let codec = match known.iter().find(|(id, _)| *id == track.id) {
            Some((_, codec)) => Some(*codec),
            None => segments
                .iter()
                .find_map(|(_, path)| crate::media::join::probe_codec(path).ok()),
        };
        let Some(codec) = codec else {
            if !segments.is_empty() {
                tracing::warn!(track_id = %track.id, "no readable segment: the track is not restored");
            }
            continue;
        };
        if segments.is_empty() {
            continue;
        }
        let mut state = TrackState {
            id: track.id.clone(),
            codec,
            counters: Arc::new(TrackCounters::default()),
            segments: Vec::new(),
            created: track.local.created,
            not_writing: false,
        };
        for (index, path) in segments {
            // The first segment's start is in the record too, for a file without its stamp.
            let started = if index == 0 {
                track.started.map(|t| t.timestamp_micros())
            } else {
                None
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            probes.push((path, started, tx));
            let report = async move { rx.await.unwrap_or_else(|_| unreadable()) }
                .boxed()
                .shared();
            state.segments.push(Segment {
                index,
                session_id: session_id.into(),
                state: SegmentState::Finishing(report),
                summary: None,
                stats: Arc::new(WriterStats::default()),
                continues: false,
            });
        }
        tracing::info!(track_id = %state.id, num_segments = state.segments.len(), "track recovered");
        out.push(state);
    }
    for (path, started, tx) in probes {
        read_back_later(ProbeJob {
            path,
            started,
            report: tx,
            _guard: work.enter(),
        });
    }
    out
}

/// A recovered segment to read back, and where its report goes.
struct ProbeJob {
    path: PathBuf,
    started: Option<i64>,
    report: tokio::sync::oneshot::Sender<SegmentReport>,
    /// Counted in the engine's work until read.
    _guard: crate::work::WorkGuard,
}

/// Queues a recovered segment for the process's one read-back thread, which runs at the
/// compositions' lower priority: after a restart with hundreds of streams, reading every file
/// back must not take the cores from the sessions being resumed (only a stop needs the reports).
fn read_back_later(job: ProbeJob) {
    static QUEUE: std::sync::OnceLock<Option<std::sync::Mutex<std::sync::mpsc::Sender<ProbeJob>>>> =
        std::sync::OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<ProbeJob>();
        let spawned = std::thread::Builder::new()
            .name("segment-read-back".into())
            .spawn(move || {
                crate::work::lower_priority();
                for job in rx {
                    let _ = job.report.send(read_back(job.path, job.started));
                }
            });
        match spawned {
            Ok(_) => Some(std::sync::Mutex::new(tx)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the thread that reads recovered segments back");
                None
            }
        }
    });
    let job = match queue {
        Some(tx) => match tx.lock().unwrap_or_else(|p| p.into_inner()).send(job) {
            Ok(()) => return,
            Err(std::sync::mpsc::SendError(job)) => job,
        },
        None => job,
    };
    // No read-back thread: read it here, on the restore thread.
    let _ = job.report.send(read_back(job.path, job.started));
}

/// A recovered segment's report, read from its file.
fn read_back(path: PathBuf, recorded_start: Option<i64>) -> SegmentReport {
    match crate::media::join::probe_segment(&path) {
        Ok((_codec, num_frames, duration_micros, stamped)) => SegmentReport {
            info: SegmentInfo {
                path,
                // Each segment's start is stamped in its header.
                started_wall_micros: stamped.or(recorded_start),
                duration_micros,
                num_frames,
            },
            num_bytes: 0,
            error: None,
        },
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable segment left out");
            unreadable()
        }
    }
}

/// The report of a segment that cannot be read: no frame, and no path, so the stop leaves the
/// file where it is (it removes the files of segments without frames) and joins the others.
fn unreadable() -> SegmentReport {
    SegmentReport {
        info: SegmentInfo {
            path: PathBuf::new(),
            started_wall_micros: None,
            duration_micros: 0,
            num_frames: 0,
        },
        num_bytes: 0,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TrackType;

    fn track(id: &str) -> TrackRecord {
        TrackRecord::new(id, TrackType::Video)
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn an_empty_segment_file_is_removed_and_restores_nothing() {
        // A writer creates its file before the first frame: a crash before any frame was flushed
        // leaves it empty. It is removed; a non-empty unreadable file is kept (left out, not lost).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t1.seg0.webm"), b"").unwrap();
        std::fs::write(dir.path().join("t2.seg0.webm"), b"not a webm").unwrap();
        let tracks = restore_tracks(dir.path(), &[track("t1"), track("t2")], &[], &Default::default());
        assert!(tracks.is_empty(), "{} tracks restored", tracks.len());
        assert!(
            !dir.path().join("t1.seg0.webm").exists(),
            "the empty segment is removed"
        );
        assert!(
            dir.path().join("t2.seg0.webm").exists(),
            "an unreadable segment with bytes is kept"
        );
    }

    #[test]
    fn segments_come_back_at_once_and_their_reports_follow_from_a_probe() {
        // The live session said the codec: the track is restored without reading its files,
        // each segment finishing once its probe ran; an unreadable one reports no frame and no
        // path (the stop leaves its file alone).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t1.seg0.webm"), b"not a webm").unwrap();
        std::fs::write(dir.path().join("t1.seg1.webm"), b"nor this").unwrap();
        let work = crate::work::WorkGroup::default();
        let tracks = restore_tracks(dir.path(), &[track("t1")], &[("t1".into(), Codec::Vp8)], &work);
        assert_eq!(tracks.len(), 1);
        assert_eq!(tracks[0].codec, Codec::Vp8);
        let indexes: Vec<usize> = tracks[0].segments.iter().map(|s| s.index).collect();
        assert_eq!(indexes, [0, 1]);
        for segment in &tracks[0].segments {
            let SegmentState::Finishing(report) = &segment.state else {
                panic!("a restored segment is finishing until its probe ran");
            };
            let report = futures_executor::block_on(report.clone());
            assert_eq!(report.info.num_frames, 0);
            assert_eq!(report.info.path, PathBuf::new());
        }
        assert!(work.wait_idle(Duration::from_secs(5)), "the probe thread ends");
        assert!(dir.path().join("t1.seg0.webm").exists());
    }

    #[test]
    fn a_track_is_restored_from_its_segments_in_index_order() {
        let plans = plan_restore(
            &names(&[
                "t1.seg10.webm",
                "t1.seg2.webm",
                "t1.seg2.webm.tmp",
                "t2.seg0.webm",
                "notes.txt",
            ]),
            &[track("t1")],
        );
        assert_eq!(
            plans,
            vec![TrackRestore {
                track_id: "t1".into(),
                files: vec![(2, "t1.seg2.webm".into()), (10, "t1.seg10.webm".into())],
                session_id: RECOVERED_SESSION,
                remove: vec![],
            }]
        );
    }

    #[test]
    fn a_final_file_wins_over_the_segments_it_already_holds() {
        let plans = plan_restore(&names(&["t1.seg0.webm", "t1.webm", "t1.seg1.webm"]), &[track("t1")]);
        assert_eq!(
            plans,
            vec![TrackRestore {
                track_id: "t1".into(),
                files: vec![(0, "t1.webm".into())],
                session_id: FINALIZED_SESSION,
                remove: vec!["t1.seg0.webm".into(), "t1.seg1.webm".into()],
            }]
        );
    }

    #[test]
    fn a_track_without_files_is_not_restored_and_others_are_kept_apart() {
        let plans = plan_restore(&names(&["t2.seg0.mkv", "t10.seg0.webm"]), &[track("t1"), track("t2")]);
        assert_eq!(plans.len(), 1, "{plans:?}");
        assert_eq!(plans[0].track_id, "t2");
        assert_eq!(plans[0].files, vec![(0, "t2.seg0.mkv".to_string())]);
        assert!(plan_restore(&[], &[track("t1")]).is_empty());
    }
}
