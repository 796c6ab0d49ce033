//! A stream rebuilt after a crash: its tracks and the segment files they left, read back from
//! disk (blocking, on a thread of its own) before the actor takes a message.

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

/// Rebuilds the tracks of a recovered stream from its segment files. Blocking (reads them all).
pub(super) fn restore_tracks(dir: &std::path::Path, records: &[TrackRecord]) -> Vec<TrackState> {
    let _ = crate::fault::point_in(crate::fault::STREAM_RESTORE, &dir.to_string_lossy());
    let names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    let mut out = Vec::new();
    for plan in plan_restore(&names, records) {
        let track = records
            .iter()
            .find(|t| t.id == plan.track_id)
            .expect("a plan is made for one of the records");
        for leftover in &plan.remove {
            let _ = std::fs::remove_file(dir.join(leftover));
        }
        let session_id = plan.session_id;
        let segments: Vec<(usize, PathBuf)> = plan.files.into_iter().map(|(i, name)| (i, dir.join(name))).collect();
        let mut state: Option<TrackState> = None;
        for (index, path) in segments {
            if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
                // Created ahead of its first frame (or killed before its first flush): it holds
                // nothing, and left behind it would only be a file no probe can read.
                tracing::info!(path = %path.display(), "empty segment removed");
                let _ = std::fs::remove_file(&path);
                continue;
            }
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
                state: SegmentState::Done(report),
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
        let tracks = restore_tracks(dir.path(), &[track("t1"), track("t2")]);
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
