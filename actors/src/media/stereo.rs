//! The conversation's stereo audio: every audio track on the composition's timeline (placed
//! exactly as [`super::compose`] places it, gaps as silence), agents mixed to the left channel
//! and customers to the right, for speech analytics and QA tools that separate the speakers by
//! channel. Same decoders and the same demand-driven run as the composition; only the graph
//! and the encoder differ.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use ffmpeg_next as ffmpeg;
use serde::{Deserialize, Serialize};

use super::compose::{
    add_audio_encoder, ffmpeg_err, init, open_sources, source_specs, ComposeInput, ComposeMedia, ComposeReport,
};
use super::graph::{run_graph, Output};
use super::MediaError;

/// The stereo file's container and codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StereoFormat {
    /// Opus in Ogg (`stereo.opus`), 64 kbit/s.
    Opus,
    /// AAC in MP4 (`stereo.m4a`), 128 kbit/s.
    M4a,
}

impl StereoFormat {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Opus => "opus",
            Self::M4a => "m4a",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Opus => "audio/ogg",
            Self::M4a => "audio/mp4",
        }
    }
}

impl FromStr for StereoFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "opus" => Ok(Self::Opus),
            "m4a" => Ok(Self::M4a),
            other => Err(format!("stereo format must be opus or m4a, not {other:?}")),
        }
    }
}

/// A channel of the stereo file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
}

/// One side's mix: its inputs (already resampled to mono as `[m{i}]`) into `[{name}]`, the
/// call's length, silence where no input speaks.
fn side_mix(name: &str, inputs: &[usize], secs: f64) -> String {
    let pad = format!("apad=whole_dur={secs:.3},atrim=end={secs:.3}");
    match inputs {
        [] => format!("anullsrc=r=48000:cl=mono,atrim=end={secs:.3}[{name}]"),
        [one] => format!("[m{one}]{pad}[{name}]"),
        many => format!(
            "{}amix=inputs={}:duration=longest:normalize=1,{pad}[{name}]",
            many.iter().map(|i| format!("[m{i}]")).collect::<String>(),
            many.len()
        ),
    }
}

/// The filter graph text for `left` and `right` audio sources `[a0]..` (left ones first):
/// each resampled onto the timeline (silence before a late start and across gaps) and made mono,
/// each side mixed, the two joined as FL and FR into `[aout]`.
pub fn stereo_description(left: usize, right: usize, total: Duration, format: StereoFormat) -> String {
    let secs = total.as_secs_f64();
    let mut parts = Vec::new();
    for i in 0..left + right {
        parts.push(format!(
            "[a{i}]aresample=48000:async=1:first_pts=0,aformat=sample_fmts=fltp:channel_layouts=mono[m{i}]"
        ));
    }
    let left_inputs: Vec<usize> = (0..left).collect();
    let right_inputs: Vec<usize> = (left..left + right).collect();
    parts.push(side_mix("left", &left_inputs, secs));
    parts.push(side_mix("right", &right_inputs, secs));
    let sample_format = match format {
        // libopus takes interleaved samples; FFmpeg's AAC encoder planar ones.
        StereoFormat::Opus => "flt",
        StereoFormat::M4a => "fltp",
    };
    parts.push(format!(
        "[left][right]join=inputs=2:channel_layout=stereo:map=0.0-FL|1.0-FR,aformat=sample_fmts={sample_format}[aout]"
    ));
    parts.join(";")
}

/// What a stereo run made: the report, and the participants heard on each channel.
#[derive(Debug, Clone, Default)]
pub struct StereoReport {
    pub report: ComposeReport,
    pub left: Vec<String>,
    pub right: Vec<String>,
}

/// The distinct participants of `inputs`, sorted.
fn participants<'a>(inputs: impl Iterator<Item = &'a ComposeInput>) -> Vec<String> {
    let mut users: Vec<String> = inputs.map(|i| i.participant.clone()).collect();
    users.sort();
    users.dedup();
    users
}

/// Writes `inputs` (audio tracks placed on the timeline, each with its side) into a stereo file
/// at `out` of duration `total`. Unreadable inputs are left out and listed in the report; it
/// fails when no audio track can be read.
pub fn compose_stereo(
    inputs: &[(ComposeInput, Side)],
    total: Duration,
    out: &Path,
    format: StereoFormat,
) -> Result<StereoReport, MediaError> {
    init();
    let mut report = ComposeReport::default();
    if total.is_zero() {
        return Err(MediaError::Refused("the conversation has no recorded time".into()));
    }
    let audio = |side: Side| {
        inputs
            .iter()
            .filter(move |(i, s)| *s == side && i.media == ComposeMedia::Audio)
            .map(|(i, _)| i)
    };
    let mut used = open_sources(audio(Side::Left), 1, &mut report);
    let num_left = used.len();
    used.extend(open_sources(audio(Side::Right), 1, &mut report));
    let num_right = used.len() - num_left;
    let left = participants(used[..num_left].iter().map(|(i, _)| *i));
    let right = participants(used[num_left..].iter().map(|(i, _)| *i));
    report.num_audio_inputs = used.len();
    report.has_audio = !used.is_empty();
    if used.is_empty() {
        return Err(MediaError::Refused(format!(
            "no audio track could be read: {}",
            report.problems.join("; ")
        )));
    }
    let (mut parts, source_names) = source_specs(&used);
    parts.push(stereo_description(num_left, num_right, total, format));
    parts.push("[aout]abuffersink@aout".into());
    let spec = parts.join(";");
    let mut graph = ffmpeg::filter::Graph::new();
    graph
        .parse(&spec)
        .map_err(|e| MediaError::Ffmpeg(format!("filter graph {spec:?}: {e}")))?;
    graph.validate().map_err(|e| ffmpeg_err("configure filter graph", e))?;

    let (muxer, codec, sample_format, bit_rate) = match format {
        StereoFormat::Opus => (
            "opus",
            ffmpeg::encoder::find_by_name("libopus").ok_or_else(|| MediaError::Ffmpeg("no libopus encoder".into()))?,
            ffmpeg::format::Sample::F32(ffmpeg::format::sample::Type::Packed),
            64_000,
        ),
        StereoFormat::M4a => (
            "ipod",
            ffmpeg::encoder::find(ffmpeg::codec::Id::AAC).ok_or_else(|| MediaError::Ffmpeg("no aac encoder".into()))?,
            ffmpeg::format::Sample::F32(ffmpeg::format::sample::Type::Planar),
            128_000,
        ),
    };
    let mut octx = ffmpeg::format::output_as(out, muxer).map_err(|e| ffmpeg_err("open output", e))?;
    let audio = add_audio_encoder(&mut octx, &mut graph, codec, sample_format, bit_rate)?;
    let mut header = ffmpeg::Dictionary::new();
    if format == StereoFormat::M4a {
        header.set("movflags", "+faststart");
    }
    octx.write_header_with(header)
        .map_err(|e| ffmpeg_err("write header", e))?;
    let output = Output {
        ctx: octx,
        video: None,
        audio: Some(audio),
    };
    run_graph(&mut graph, &mut used, &source_names, output, &mut report)?;
    Ok(StereoReport { report, left, right })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::compose::ComposeRole;
    use std::path::PathBuf;
    use std::process::Command;

    #[test]
    fn each_side_is_mixed_alone_and_an_empty_side_is_silence() {
        let d = stereo_description(2, 0, Duration::from_secs(3), StereoFormat::Opus);
        assert!(d.contains("[m0][m1]amix=inputs=2"), "{d}");
        assert!(d.contains("anullsrc=r=48000:cl=mono,atrim=end=3.000[right]"), "{d}");
        assert!(d.contains("map=0.0-FL|1.0-FR"), "{d}");
        assert!(d.ends_with("aformat=sample_fmts=flt[aout]"), "{d}");
        let d = stereo_description(1, 1, Duration::from_secs(2), StereoFormat::M4a);
        assert!(d.contains("[m0]apad=whole_dur=2.000,atrim=end=2.000[left]"), "{d}");
        assert!(d.contains("[m1]apad=whole_dur=2.000,atrim=end=2.000[right]"), "{d}");
        assert!(d.ends_with("sample_fmts=fltp[aout]"), "{d}");
    }

    fn tone(dir: &Path, name: &str, hz: u32, secs: f64) -> PathBuf {
        let path = dir.join(name);
        let status = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("sine=frequency={hz}:sample_rate=48000:duration={secs}"))
            .args(["-c:a", "libopus", "-ac", "2"])
            .arg(&path)
            .status()
            .expect("ffmpeg runs");
        assert!(status.success());
        path
    }

    /// One channel of `path` as f64 samples at 48 kHz.
    fn channel(path: &Path, index: usize) -> Vec<f64> {
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(path)
            .args([
                "-af",
                &format!("pan=mono|c0=c{index}"),
                "-ar",
                "48000",
                "-f",
                "s16le",
                "-",
            ])
            .output()
            .expect("ffmpeg runs");
        out.stdout
            .chunks_exact(2)
            .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect()
    }

    fn power(samples: &[f64], hz: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * hz / 48_000.0;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for x in samples {
            let s0 = x + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (samples.len() as f64).powi(2)
    }

    #[test]
    fn agent_and_customer_tones_land_each_in_its_channel() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let input = |path: PathBuf, who: &str, start: f64, end: f64| ComposeInput {
            path,
            media: ComposeMedia::Audio,
            role: ComposeRole::Camera,
            participant: who.into(),
            start: Duration::from_secs_f64(start),
            end: Duration::from_secs_f64(end),
            rotation: 0,
        };
        let inputs = vec![
            (input(tone(d, "agent.webm", 440, 3.0), "agent", 0.0, 3.0), Side::Left),
            (
                input(tone(d, "customer.webm", 1000, 2.0), "customer", 1.0, 3.0),
                Side::Right,
            ),
        ];
        for format in [StereoFormat::Opus, StereoFormat::M4a] {
            let out = d.join(format!("stereo.{}", format.extension()));
            let made = compose_stereo(&inputs, Duration::from_secs(3), &out, format).unwrap();
            assert!(made.report.problems.is_empty(), "{:?}", made.report.problems);
            assert_eq!(
                (made.left, made.right),
                (vec!["agent".to_string()], vec!["customer".to_string()])
            );
            let (left, right) = (channel(&out, 0), channel(&out, 1));
            assert!(left.len() > 48_000 * 2, "{} samples", left.len());
            // 1.5 s to 2.5 s: both speak, each on its own channel.
            let (l, r) = (&left[72_000..120_000], &right[72_000..120_000]);
            assert!(
                power(l, 440.0) > 1000.0 * power(l, 1000.0).max(1e-12),
                "{format:?} left"
            );
            assert!(
                power(r, 1000.0) > 1000.0 * power(r, 440.0).max(1e-12),
                "{format:?} right"
            );
            // 0.2 s to 0.8 s: the customer has not joined: the right channel is silent.
            let quiet = &right[9_600..38_400];
            assert!(
                quiet.iter().all(|x| x.abs() < 0.01),
                "{format:?} right before the customer joined"
            );
        }
    }
}
