//! Joins a track's segments into its one final file by remuxing (no transcoding), each segment
//! shifted to its place on the track's timeline ([`super::segment::plan_join`]).

use std::path::Path;

use ffmpeg_next as ffmpeg;

use super::segment::JoinPart;
use super::writer::init_ffmpeg;
use super::MediaError;

fn ff(what: &str, path: &Path, e: ffmpeg::Error) -> MediaError {
    MediaError::Ffmpeg(format!("{what} {}: {e}", path.display()))
}

/// Writes `parts` into `output` (through a temporary file renamed into place) and returns the
/// number of packets written. A single finalized segment is only renamed; `remux` forces a
/// rewrite, for segments a crash left without trailer (no duration, no cues). Blocking: call it
/// from a blocking thread.
pub fn join_segments(parts: &[JoinPart], output: &Path, muxer: &str, remux: bool) -> Result<u64, MediaError> {
    init_ffmpeg();
    let Some(first) = parts.first() else {
        return Err(MediaError::Io("no segment with media to join".into()));
    };
    if parts.len() == 1 && first.offset_micros == 0 && !remux {
        std::fs::rename(&first.path, output)
            .map_err(|e| MediaError::Io(format!("rename to {}: {e}", output.display())))?;
        sync_dir(output);
        return Ok(0);
    }
    let temp = output.with_extension("joining");
    let mut out = ffmpeg::format::output_as(&temp, muxer).map_err(|e| ff("open", &temp, e))?;
    let first_input = ffmpeg::format::input(&first.path).map_err(|e| ff("open", &first.path, e))?;
    let parameters = first_input
        .stream(0)
        .ok_or_else(|| MediaError::Ffmpeg(format!("{} has no stream", first.path.display())))?
        .parameters();
    {
        let mut stream = out
            .add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None))
            .map_err(|e| ff("add stream", &temp, e))?;
        stream.set_parameters(parameters);
        // SAFETY: the stream's codecpar is valid; a zero tag lets the muxer pick its own.
        unsafe {
            (*stream.parameters().as_mut_ptr()).codec_tag = 0;
        }
    }
    drop(first_input);
    out.write_header().map_err(|e| ff("write header", &temp, e))?;
    let out_tb = out
        .stream(0)
        .map(|s| s.time_base())
        .unwrap_or(ffmpeg::Rational::new(1, 1000));
    let micros = ffmpeg::Rational::new(1, 1_000_000);
    let mut last_dts: Option<i64> = None;
    let mut num_packets = 0u64;
    for part in parts {
        let mut input = ffmpeg::format::input(&part.path).map_err(|e| ff("open", &part.path, e))?;
        let in_tb = input
            .stream(0)
            .map(|s| s.time_base())
            .unwrap_or(ffmpeg::Rational::new(1, 1000));
        let offset = rescale(part.offset_micros, micros, out_tb);
        for (stream, mut packet) in input.packets() {
            if stream.index() != 0 {
                continue;
            }
            packet.rescale_ts(in_tb, out_tb);
            let pts = packet.pts().map(|p| p + offset);
            let mut dts = packet.dts().or(packet.pts()).map(|d| d + offset);
            if let (Some(d), Some(last)) = (dts, last_dts) {
                if d <= last {
                    dts = Some(last + 1);
                }
            }
            packet.set_pts(pts.map(|p| p.max(dts.unwrap_or(p))));
            packet.set_dts(dts);
            packet.set_stream(0);
            packet.set_position(-1);
            last_dts = dts.or(last_dts);
            packet.write_interleaved(&mut out).map_err(|e| ff("write", &temp, e))?;
            num_packets += 1;
        }
    }
    out.write_trailer().map_err(|e| ff("write trailer", &temp, e))?;
    drop(out);
    std::fs::File::open(&temp)
        .and_then(|f| f.sync_all())
        .and_then(|_| std::fs::rename(&temp, output))
        .map_err(|e| MediaError::Io(format!("finish {}: {e}", output.display())))?;
    sync_dir(output);
    // A part may be an earlier final file of this track (finalized before a restart): it is
    // the output now, not a leftover.
    for part in parts.iter().filter(|p| p.path != output) {
        let _ = std::fs::remove_file(&part.path);
    }
    Ok(num_packets)
}

fn rescale(value: i64, from: ffmpeg::Rational, to: ffmpeg::Rational) -> i64 {
    // SAFETY: pure arithmetic on plain values.
    unsafe { ffmpeg::ffi::av_rescale_q(value, from.into(), to.into()) }
}

fn sync_dir(file: &Path) {
    if let Some(dir) = file.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

fn codec_of(stream: &ffmpeg::format::stream::Stream, path: &Path) -> Result<super::codec::Codec, MediaError> {
    use super::codec::Codec;
    match stream.parameters().id() {
        ffmpeg::codec::Id::VP8 => Ok(Codec::Vp8),
        ffmpeg::codec::Id::VP9 => Ok(Codec::Vp9),
        ffmpeg::codec::Id::H264 => Ok(Codec::H264),
        ffmpeg::codec::Id::AV1 => Ok(Codec::Av1),
        ffmpeg::codec::Id::OPUS => Ok(Codec::Opus),
        ffmpeg::codec::Id::PCM_MULAW => Ok(Codec::Pcmu),
        ffmpeg::codec::Id::PCM_ALAW => Ok(Codec::Pcma),
        ffmpeg::codec::Id::ADPCM_G722 => Ok(Codec::G722),
        other => Err(MediaError::Ffmpeg(format!(
            "{}: unexpected codec {other:?}",
            path.display()
        ))),
    }
}

/// The codec of a segment file, from its header alone (no packet read). Blocking.
pub fn probe_codec(path: &Path) -> Result<super::codec::Codec, MediaError> {
    init_ffmpeg();
    let input = ffmpeg::format::input(&path).map_err(|e| ff("open", path, e))?;
    let stream = input
        .stream(0)
        .ok_or_else(|| MediaError::Ffmpeg(format!("{} has no stream", path.display())))?;
    codec_of(&stream, path)
}

/// What a segment file left behind by a crash holds: its codec, frames, duration and the wall
/// time of its first frame (µs, from the header the writer stamped). Reads the whole file (a
/// recovery-time cost, once per segment). Blocking.
pub fn probe_segment(path: &Path) -> Result<(super::codec::Codec, u64, i64, Option<i64>), MediaError> {
    init_ffmpeg();
    let mut input = ffmpeg::format::input(&path).map_err(|e| ff("open", path, e))?;
    let started = input
        .metadata()
        .get("creation_time")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_micros());
    let stream = input
        .stream(0)
        .ok_or_else(|| MediaError::Ffmpeg(format!("{} has no stream", path.display())))?;
    let codec = codec_of(&stream, path)?;
    let time_base = stream.time_base();
    let micros = ffmpeg::Rational::new(1, 1_000_000);
    let (mut num_frames, mut first, mut last, mut last_duration) = (0u64, None, 0i64, 0i64);
    for (s, packet) in input.packets() {
        if s.index() != 0 {
            continue;
        }
        let pts = packet.pts().or(packet.dts()).unwrap_or(0);
        first.get_or_insert(pts);
        last = last.max(pts);
        last_duration = packet.duration();
        num_frames += 1;
    }
    let ticks = last - first.unwrap_or(0) + last_duration;
    Ok((codec, num_frames, rescale(ticks, time_base, micros), started))
}
