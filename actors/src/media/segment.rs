//! Segment bookkeeping: a track is written as one segment per publisher connection; on stop the
//! segments are joined into one file per track, each placed on the track's timeline at its wall
//! time so that a disconnection stays a gap. Pure: the FFmpeg remux lives in `join`.

use std::path::{Path, PathBuf};

use super::codec::Container;

/// What the writer knew about one finished segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub path: PathBuf,
    /// Wall time of the segment's first frame (µs since the Unix epoch), if it had one.
    pub started_wall_micros: Option<i64>,
    /// Time from its first frame to the end of its last frame, µs.
    pub duration_micros: i64,
    pub num_frames: u64,
}

/// Where each segment goes on the joined file's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPart {
    pub path: PathBuf,
    /// Added to the segment's own timestamps (which start at 0), µs.
    pub offset_micros: i64,
}

/// Places segments: each starts at its wall-clock distance from the first segment, but never
/// before the previous one ends (clocks of different connections can disagree by a little).
/// Segments without frames are left out.
pub fn plan_join(segments: &[SegmentInfo]) -> Vec<JoinPart> {
    let mut parts: Vec<JoinPart> = Vec::new();
    let mut origin: Option<i64> = None;
    let mut previous_end = 0i64;
    for segment in segments.iter().filter(|s| s.num_frames > 0) {
        let wanted = match (origin, segment.started_wall_micros) {
            (Some(origin), Some(start)) => start - origin,
            (None, Some(start)) => {
                origin = Some(start);
                0
            }
            (_, None) => previous_end,
        };
        let offset = if parts.is_empty() { 0 } else { wanted.max(previous_end) };
        previous_end = offset + segment.duration_micros;
        parts.push(JoinPart {
            path: segment.path.clone(),
            offset_micros: offset,
        });
    }
    parts
}

/// The name of a file a track writes in its stream's folder: `<track>.seg<N>.<ext>`, one
/// segment per publisher connection, or `<track>.<ext>`, the final file the segments are joined
/// into. Names are written and read back (after a crash) through this type only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackFileName<'a> {
    Segment {
        track_id: &'a str,
        index: usize,
        container: Container,
    },
    Final {
        track_id: &'a str,
        container: Container,
    },
}

impl<'a> TrackFileName<'a> {
    pub fn file_name(&self) -> String {
        match self {
            TrackFileName::Segment {
                track_id,
                index,
                container,
            } => format!("{track_id}.seg{index}.{}", container.extension()),
            TrackFileName::Final { track_id, container } => format!("{track_id}.{}", container.extension()),
        }
    }

    /// Reads a file name written for `track_id`; `None` for any other file (another track's,
    /// a temporary file, an unknown extension).
    pub fn parse(name: &'a str, track_id: &'a str) -> Option<Self> {
        let rest = name.strip_prefix(track_id)?.strip_prefix('.')?;
        let (stem, extension) = rest.rsplit_once('.').unwrap_or(("", rest));
        let container = [Container::WebM, Container::Matroska]
            .into_iter()
            .find(|c| c.extension() == extension)?;
        if stem.is_empty() && !rest.contains('.') {
            return Some(TrackFileName::Final { track_id, container });
        }
        let digits = stem.strip_prefix("seg")?;
        // Only the digits this type writes: no sign, no leading zeros but "0".
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        let index = digits.parse().ok()?;
        Some(TrackFileName::Segment {
            track_id,
            index,
            container,
        })
    }

    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(self.file_name())
    }
}

/// `<dir>/<track>.seg<N>.<ext>`: one file per connection.
pub fn segment_path(dir: &Path, track_id: &str, index: usize, container: Container) -> PathBuf {
    TrackFileName::Segment {
        track_id,
        index,
        container,
    }
    .path_in(dir)
}

/// `<dir>/<track>.<ext>`: the track's final file.
pub fn track_path(dir: &Path, track_id: &str, container: Container) -> PathBuf {
    TrackFileName::Final { track_id, container }.path_in(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, start: Option<i64>, duration: i64, frames: u64) -> SegmentInfo {
        SegmentInfo {
            path: name.into(),
            started_wall_micros: start,
            duration_micros: duration,
            num_frames: frames,
        }
    }

    #[test]
    fn a_reconnect_stays_a_gap_on_the_timeline() {
        let plan = plan_join(&[
            seg("a", Some(10_000_000), 4_000_000, 120),
            seg("b", Some(17_000_000), 2_000_000, 60),
        ]);
        assert_eq!(
            plan.iter().map(|p| p.offset_micros).collect::<Vec<_>>(),
            vec![0, 7_000_000]
        );
    }

    #[test]
    fn overlapping_or_unknown_starts_follow_the_previous_segment_and_empty_ones_are_skipped() {
        let plan = plan_join(&[
            seg("empty", None, 0, 0),
            seg("a", Some(10_000_000), 4_000_000, 120),
            seg("b", Some(13_000_000), 1_000_000, 30),
            seg("c", None, 1_000_000, 30),
        ]);
        let names: Vec<_> = plan.iter().map(|p| p.path.display().to_string()).collect();
        assert_eq!(names, vec!["a", "b", "c"]);
        assert_eq!(
            plan.iter().map(|p| p.offset_micros).collect::<Vec<_>>(),
            vec![0, 4_000_000, 5_000_000]
        );
    }

    #[test]
    fn paths_name_track_and_segment() {
        let dir = Path::new("/d");
        assert_eq!(
            segment_path(dir, "t1", 2, Container::WebM),
            Path::new("/d/t1.seg2.webm")
        );
        assert_eq!(track_path(dir, "t1", Container::Matroska), Path::new("/d/t1.mkv"));
    }

    #[test]
    fn track_file_names_read_back_exactly_what_was_written() {
        let written = [
            TrackFileName::Segment {
                track_id: "t1",
                index: 0,
                container: Container::WebM,
            },
            TrackFileName::Segment {
                track_id: "t1",
                index: 12,
                container: Container::Matroska,
            },
            TrackFileName::Final {
                track_id: "t1",
                container: Container::Matroska,
            },
        ];
        for name in written {
            assert_eq!(TrackFileName::parse(&name.file_name(), "t1"), Some(name));
        }
        // Another track's files, near misses and temporary files are not this track's.
        for other in [
            "t1.seg1.webm.tmp",
            "t10.seg1.webm",
            "t1x.webm",
            "t1.seg.webm",
            "t1.seg01.webm",
            "t1.seg-1.webm",
            "t1.seg1.mp4",
            "t1.webm.part",
            "t1",
            "t1.",
            "t1.segment1.webm",
        ] {
            assert_eq!(TrackFileName::parse(other, "t1"), None, "{other}");
        }
        // A track id with dots in it still reads back.
        let dotted = TrackFileName::Segment {
            track_id: "a.b",
            index: 3,
            container: Container::WebM,
        };
        assert_eq!(TrackFileName::parse(&dotted.file_name(), "a.b"), Some(dotted));
        assert_eq!(TrackFileName::parse("a.b.seg3.webm", "a"), None);
    }
}
