//! What a recorded file holds, read by `ffprobe` (never by its size): the codec, the frames
//! counted one by one, the duration, whether the first frame is a keyframe, and every frame's
//! time (for gaps and start offsets).

use std::path::Path;
use std::process::Command;

#[derive(Debug, Clone)]
pub struct Probe {
    pub codec: String,
    pub num_frames: u64,
    /// The container's duration, seconds.
    pub duration: f64,
    pub first_is_keyframe: bool,
}

fn ffprobe(path: &Path, args: &[&str]) -> String {
    let out = Command::new("ffprobe")
        .arg("-v")
        .arg("error")
        .args(args)
        .arg(path)
        .output()
        .expect("ffprobe runs (scripts/setup.sh installs ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Probes the first stream of `path`.
pub fn probe(path: &Path) -> Probe {
    let stream = ffprobe(
        path,
        &[
            "-count_frames",
            "-select_streams",
            "0",
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "csv=p=0",
        ],
    );
    let (codec, frames) = stream
        .split_once(',')
        .unwrap_or_else(|| panic!("ffprobe stream line {stream:?}"));
    let duration = ffprobe(path, &["-show_entries", "format=duration", "-of", "csv=p=0"]);
    let first = ffprobe(
        path,
        &[
            "-select_streams",
            "0",
            "-show_entries",
            "packet=flags",
            "-read_intervals",
            "%+#1",
            "-of",
            "csv=p=0",
        ],
    );
    Probe {
        codec: codec.to_string(),
        num_frames: frames.parse().unwrap_or(0),
        duration: duration.parse().unwrap_or(0.0),
        first_is_keyframe: first.starts_with('K'),
    }
}

/// The presentation time (seconds) of every packet of the first stream, in file order.
pub fn packet_times(path: &Path) -> Vec<f64> {
    ffprobe(
        path,
        &[
            "-select_streams",
            "0",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
        ],
    )
    .lines()
    .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
    .collect()
}

/// The duration the container itself states (`None`: it states none, as a Matroska or WebM
/// file whose muxer never wrote its trailer).
pub fn container_duration(path: &Path) -> Option<f64> {
    ffprobe(path, &["-show_entries", "format=duration", "-of", "csv=p=0"])
        .parse()
        .ok()
}
