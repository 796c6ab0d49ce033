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

/// Rebuilds the tracks of a recovered stream from its segment files. Blocking (reads them all).
pub(super) fn restore_tracks(dir: &std::path::Path, records: &[TrackRecord]) -> Vec<TrackState> {
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
            .filter_map(
                |path| match TrackFileName::parse(path.file_name()?.to_str()?, &track.id)? {
                    TrackFileName::Segment { index, .. } => Some((index, path.clone())),
                    TrackFileName::Final { .. } => None,
                },
            )
            .collect();
        segments.sort();
        // A final file is only ever renamed into place complete (joined and fsynced): a stop
        // interrupted after that point left it, and any segment beside it is already inside it.
        let finals: Vec<&PathBuf> = files
            .iter()
            .filter(|path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                matches!(TrackFileName::parse(name, &track.id), Some(TrackFileName::Final { .. }))
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
