//! Composition: every track file of a conversation → one MP4 (H.264 + AAC), through FFmpeg's
//! decoders, one filter graph and its encoders. Runs on the caller's thread, which must not be an
//! async executor's: a composition takes seconds to minutes of CPU.
//!
//! The timeline and the layout are pure functions ([`place_instances`], [`grid`],
//! [`screen_layout`], [`filter_description`]) so they are unit-tested without FFmpeg.
//!
//! Graph shape: a grey `color` source of the call's duration is the canvas; each camera is
//! scaled into its tile (aspect kept, letterboxed) and overlaid with `eof_action=pass`, so
//! before a track's first frame and after its last the tile shows the canvas — a neutral
//! placeholder, never a frozen frame. While a SCREEN track is on, it takes the large tile and
//! the cameras move to a strip (each camera is split into both positions and `enable` picks one).
//! Audio tracks are resampled with `first_pts=0` (silence before a late start and across gaps),
//! mixed with `amix` normalization (no clipping), padded/trimmed to the call's duration.
//!
//! Why one file (~850 lines of code): the pure layout functions and the FFmpeg graph that carries
//! them out are one contract (tile positions, enable windows, pad labels); the FFmpeg-facing part
//! is the only one that needs the libraries.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::ffi;

use super::graph::{run_graph, Output};
use super::MediaError;

/// What a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeMedia {
    Audio,
    Video,
}

/// Where a video track goes in the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeRole {
    Camera,
    Screen,
}

/// One track file placed on the composed timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposeInput {
    pub path: PathBuf,
    pub media: ComposeMedia,
    pub role: ComposeRole,
    /// Cameras of one participant share a tile across instances.
    pub participant: String,
    /// Position of the track's first frame on the composed timeline.
    pub start: Duration,
    /// End of the track on the composed timeline (its stop, or its instance's).
    pub end: Duration,
    /// Video: degrees to turn it clockwise to show it upright (the publisher's orientation).
    pub rotation: u16,
}

#[derive(Debug, Clone)]
pub struct ComposeConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// x264 preset; `veryfast` keeps up with real time on 2 cores for a few participants.
    pub preset: String,
    /// Write each participant's userId into their tile, seen where the tile shows the
    /// placeholder. Needs FFmpeg's drawtext (libfreetype, a font); without it the composition
    /// is made unlabelled.
    pub label_placeholders: bool,
    /// Threads for each video decoder and for the H.264 encoder: 0 sizes them to the machine's
    /// cores, as the FFmpeg CLI does (`-threads auto`). libavcodec's own default is one thread,
    /// which left x264 encoding single-threaded. The composition thread runs niced and every
    /// codec thread inherits it, so live media keeps the CPU it needs.
    pub threads: usize,
}

impl Default for ComposeConfig {
    fn default() -> Self {
        Self {
            width: 1280,
            height: 720,
            fps: 25,
            preset: "veryfast".into(),
            label_placeholders: true,
            threads: 0,
        }
    }
}

/// A userId as drawtext text: ids are letters, digits and `. _ - : @ + = ~` (the API checks),
/// of which `:` would end the option; anything else unexpected becomes `_` too.
fn label_text(user_id: &str) -> String {
    user_id
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_@+=~".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// drawtext for `text` at the bottom left of `tile`, shown while `enable` (if any) holds.
fn label(text: &str, tile: &Tile, enable: Option<&str>) -> String {
    let size = (tile.h / 14).clamp(12, 32);
    let enable = enable.map(|e| format!(":enable='{e}'")).unwrap_or_default();
    format!(
        "drawtext=text='{text}':x={}:y={}:fontsize={size}:fontcolor=white{enable}",
        tile.x + 8,
        tile.y + tile.h - size - 8
    )
}

/// How a composition went: what was used, what had to be left out and why.
#[derive(Debug, Clone, Default)]
pub struct ComposeReport {
    pub num_video_inputs: usize,
    pub num_audio_inputs: usize,
    pub has_video: bool,
    pub has_audio: bool,
    /// Inputs left out (unreadable, empty, undecodable), one line each.
    pub problems: Vec<String>,
}

/// A rectangle of the output picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

fn even(v: u32) -> u32 {
    v & !1
}

/// Near-square grid for `n` cameras filling `width`x`height`, row by row. Sizes are even
/// because yuv420p cannot hold odd ones.
pub fn grid(n: usize, width: u32, height: u32) -> Vec<Tile> {
    if n == 0 {
        return Vec::new();
    }
    let cols = (n as f64).sqrt().ceil() as u32;
    let rows = (n as u32).div_ceil(cols);
    let (w, h) = (even(width / cols), even(height / rows));
    (0..n as u32)
        .map(|i| Tile {
            x: (i % cols) * w,
            y: (i / cols) * h,
            w,
            h,
        })
        .collect()
}

/// The screen's large tile (top three quarters) and a strip of `n` camera tiles below it; a
/// camera tile is at most as wide as 16:9 of the strip's height, centred.
pub fn screen_layout(n: usize, width: u32, height: u32) -> (Tile, Vec<Tile>) {
    let strip_h = even(height / 4);
    let screen = Tile {
        x: 0,
        y: 0,
        w: even(width),
        h: even(height - strip_h),
    };
    if n == 0 {
        return (screen, Vec::new());
    }
    let w = even((width / n as u32).min(strip_h * 16 / 9));
    let left = even((width - w * n as u32) / 2);
    let cams = (0..n as u32)
        .map(|i| Tile {
            x: left + i * w,
            y: screen.h,
            w,
            h: strip_h,
        })
        .collect();
    (screen, cams)
}

/// One instance as the timeline sees it: its span and its tracks' wall-clock starts/stops.
#[derive(Debug, Clone)]
pub struct InstanceSpan<T> {
    pub started_micros: i64,
    pub stopped_micros: i64,
    /// Pauses of the instance, (start, end) in wall-clock microseconds.
    pub pauses: Vec<(i64, i64)>,
    /// (track, started, stopped) in wall-clock microseconds; `None` = the instance's bounds.
    pub tracks: Vec<(T, Option<i64>, Option<i64>)>,
}

/// Places instances one after the other, the time between them cut: instance i starts where
/// instance i-1 ended on the composed timeline. Each track keeps its offset inside its instance,
/// clamped to the instance. Returns (track, start, end) per track and the total duration.
/// Instances must be in time order; a span with stop before start counts as empty.
pub fn place_instances<T: Clone>(instances: &[InstanceSpan<T>]) -> (Vec<(T, Duration, Duration)>, Duration) {
    let mut base: i64 = 0;
    let mut out = Vec::new();
    for instance in instances {
        let length = (instance.stopped_micros - instance.started_micros).max(0);
        for (track, started, stopped) in &instance.tracks {
            let clamp = |t: i64| (t - instance.started_micros).clamp(0, length);
            let start = started.map(clamp).unwrap_or(0);
            let end = stopped.map(clamp).unwrap_or(length).max(start);
            out.push((
                track.clone(),
                Duration::from_micros((base + start) as u64),
                Duration::from_micros((base + end) as u64),
            ));
        }
        base += length;
    }
    (out, Duration::from_micros(base as u64))
}

/// Where the instances' pauses fall on the composed timeline (placed as [`place_instances`]
/// places their tracks, clamped to their instance): the spans the composition shows its
/// "recording paused" slate over.
pub fn place_pauses<T>(instances: &[InstanceSpan<T>]) -> Vec<(Duration, Duration)> {
    let mut base: i64 = 0;
    let mut out = Vec::new();
    for instance in instances {
        let length = (instance.stopped_micros - instance.started_micros).max(0);
        for (paused, resumed) in &instance.pauses {
            let clamp = |t: i64| (t - instance.started_micros).clamp(0, length);
            let (start, end) = (clamp(*paused), clamp(*resumed));
            if end > start {
                out.push((
                    Duration::from_micros((base + start) as u64),
                    Duration::from_micros((base + end) as u64),
                ));
            }
        }
        base += length;
    }
    out
}

/// Merges intervals (in seconds) that overlap or touch.
fn merge_intervals(mut spans: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The filter graph text. Inputs are labelled `[v0]..` and `[a0]..` (in `video`/`audio` order),
/// outputs `[vout]` and `[aout]`; either side is absent when it has no input.
pub fn filter_description(
    video: &[&ComposeInput],
    audio: &[&ComposeInput],
    total: Duration,
    slates: &[(Duration, Duration)],
    config: &ComposeConfig,
) -> String {
    let secs = total.as_secs_f64();
    let mut parts = Vec::new();
    if !video.is_empty() {
        let (w, h) = (even(config.width), even(config.height));
        let mut participants: Vec<&str> = Vec::new();
        for input in video.iter().filter(|i| i.role == ComposeRole::Camera) {
            if !participants.contains(&input.participant.as_str()) {
                participants.push(&input.participant);
            }
        }
        let grid_tiles = grid(participants.len(), w, h);
        let (screen_tile, strip_tiles) = screen_layout(participants.len(), w, h);
        let screen_spans = merge_intervals(
            video
                .iter()
                .filter(|i| i.role == ComposeRole::Screen)
                .map(|i| (i.start.as_secs_f64(), i.end.as_secs_f64()))
                .collect(),
        );
        let screen_on = screen_spans
            .iter()
            .map(|(a, b)| format!("between(t,{a:.3},{b:.3})"))
            .collect::<Vec<_>>()
            .join("+");
        // The canvas: grey, with each participant's name where their tile is (covered by the
        // camera whenever it has a picture).
        let mut canvas_chain = vec![format!("color=c=0x404040:s={w}x{h}:r={}:d={secs:.3}", config.fps)];
        if config.label_placeholders {
            for (slot, participant) in participants.iter().enumerate() {
                let text = label_text(participant);
                if screen_spans.is_empty() {
                    canvas_chain.push(label(&text, &grid_tiles[slot], None));
                } else {
                    canvas_chain.push(label(&text, &grid_tiles[slot], Some(&format!("eq({screen_on},0)"))));
                    canvas_chain.push(label(&text, &strip_tiles[slot], Some(&format!("gt({screen_on},0)"))));
                }
            }
        }
        parts.push(format!("{}[base0]", canvas_chain.join(",")));
        let fit = |t: &Tile| {
            format!(
                "scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1",
                w = t.w,
                h = t.h
            )
        };
        let mut canvas = 0;
        let mut overlay = |parts: &mut Vec<String>, label: String, tile: &Tile, enable: Option<String>| {
            let enable = enable.map(|e| format!(":enable='{e}'")).unwrap_or_default();
            parts.push(format!(
                "[base{canvas}][{label}]overlay=x={}:y={}:eof_action=pass{enable}[base{}]",
                tile.x,
                tile.y,
                canvas + 1
            ));
            canvas += 1;
        };
        for (i, input) in video.iter().enumerate() {
            // Upright first: a phone's portrait picture fills its tile as portrait.
            let turn = match input.rotation {
                90 => Some("transpose=clock"),
                180 => Some("hflip,vflip"),
                270 => Some("transpose=cclock"),
                _ => None,
            };
            let src = match turn {
                Some(turn) => {
                    parts.push(format!("[v{i}]{turn}[u{i}]"));
                    format!("u{i}")
                }
                None => format!("v{i}"),
            };
            match input.role {
                ComposeRole::Screen => {
                    parts.push(format!("[{src}]{}[s{i}]", fit(&screen_tile)));
                    overlay(&mut parts, format!("s{i}"), &screen_tile, None);
                }
                ComposeRole::Camera => {
                    let slot = participants
                        .iter()
                        .position(|p| *p == input.participant)
                        .expect("every camera's participant was collected above");
                    if screen_spans.is_empty() {
                        parts.push(format!("[{src}]{}[g{i}]", fit(&grid_tiles[slot])));
                        overlay(&mut parts, format!("g{i}"), &grid_tiles[slot], None);
                    } else {
                        parts.push(format!("[{src}]split=2[gi{i}][si{i}]"));
                        parts.push(format!("[gi{i}]{}[g{i}]", fit(&grid_tiles[slot])));
                        parts.push(format!("[si{i}]{}[c{i}]", fit(&strip_tiles[slot])));
                        overlay(
                            &mut parts,
                            format!("g{i}"),
                            &grid_tiles[slot],
                            Some(format!("eq({screen_on},0)")),
                        );
                        overlay(
                            &mut parts,
                            format!("c{i}"),
                            &strip_tiles[slot],
                            Some(format!("gt({screen_on},0)")),
                        );
                    }
                }
            }
        }
        // Over the paused spans: a dark slate, and (where drawtext is available) its words.
        let paused = slates
            .iter()
            .map(|(a, b)| format!("between(t,{:.3},{:.3})", a.as_secs_f64(), b.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("+");
        let slate = if paused.is_empty() {
            String::new()
        } else {
            let text = if config.label_placeholders {
                format!(
                    ",drawtext=text='recording paused':x=(w-text_w)/2:y=(h-text_h)/2:fontsize={}:fontcolor=white:enable='{paused}'",
                    (h / 12).max(16)
                )
            } else {
                String::new()
            };
            format!(",drawbox=x=0:y=0:w=iw:h=ih:color=0x202020:t=fill:enable='{paused}'{text}")
        };
        parts.push(format!("[base{canvas}]format=yuv420p{slate}[vout]"));
    }
    if !audio.is_empty() {
        let mut mix = String::new();
        for i in 0..audio.len() {
            // async: silence fills the time before a late first sample and any gap inside.
            parts.push(format!(
                "[a{i}]aresample=48000:async=1:first_pts=0,aformat=sample_fmts=fltp:channel_layouts=stereo[m{i}]"
            ));
            mix.push_str(&format!("[m{i}]"));
        }
        parts.push(format!(
            "{mix}amix=inputs={}:duration=longest:normalize=1,apad=whole_dur={secs:.3},atrim=end={secs:.3}[aout]",
            audio.len()
        ));
    }
    parts.join(";")
}

/// A decoder reading one track file.
pub(super) struct Source {
    input: ffmpeg::format::context::Input,
    stream_index: usize,
    decoder: ffmpeg::decoder::Opened,
    media: ComposeMedia,
    time_base: ffmpeg::Rational,
    /// Offset (µs) that maps the file's first timestamp to its place on the timeline.
    shift_micros: Option<i64>,
    start_micros: i64,
    end_micros: i64,
    eof_sent: bool,
    done: bool,
    peeked: Option<ffmpeg::Frame>,
    /// Timeline pts (µs) of the last video frame handed out.
    last_video_micros: Option<i64>,
}

/// A video track silent for longer than this (a publisher's outage kept as a gap in its file)
/// shows black from one frame after its last picture: overlay would otherwise hold the last
/// frame, a frozen picture.
const MAX_VIDEO_GAP_MICROS: i64 = 500_000;
/// Where the black frame goes after the last real one: one frame at 25 fps.
const GAP_FILL_AFTER_MICROS: i64 = 40_000;

/// Whether a pause between two video frames is an outage to show as black, not a frame held.
fn is_video_gap(previous_micros: i64, next_micros: i64) -> bool {
    next_micros - previous_micros > MAX_VIDEO_GAP_MICROS
}

/// A black frame with the size and pixel format of `like`, at `pts`.
fn black_like(like: &ffmpeg::Frame, pts: i64) -> Option<ffmpeg::Frame> {
    // SAFETY: `like` is a decoded video frame, so its format is a valid AVPixelFormat; the new
    // frame's buffers are allocated by av_frame_get_buffer before they are written.
    unsafe {
        let (w, h, format, range) = {
            let l = &*like.as_ptr();
            (l.width, l.height, l.format, l.color_range)
        };
        let mut frame = ffmpeg::Frame::empty();
        let f = frame.as_mut_ptr();
        (*f).width = w;
        (*f).height = h;
        (*f).format = format;
        (*f).color_range = range;
        if ffi::av_frame_get_buffer(f, 0) < 0 {
            return None;
        }
        let linesize = [
            (*f).linesize[0] as isize,
            (*f).linesize[1] as isize,
            (*f).linesize[2] as isize,
            (*f).linesize[3] as isize,
        ];
        let pix_fmt = std::mem::transmute::<i32, ffi::AVPixelFormat>(format);
        if ffi::av_image_fill_black((*f).data.as_mut_ptr(), linesize.as_ptr(), pix_fmt, range, w, h) < 0 {
            return None;
        }
        (*f).pts = pts;
        Some(frame)
    }
}

impl Source {
    fn open(input: &ComposeInput, threads: usize) -> Result<Self, MediaError> {
        let ctx = ffmpeg::format::input(&input.path).map_err(|e| ffmpeg_err("open", e))?;
        let kind = match input.media {
            ComposeMedia::Audio => ffmpeg::media::Type::Audio,
            ComposeMedia::Video => ffmpeg::media::Type::Video,
        };
        let stream = ctx
            .streams()
            .best(kind)
            .ok_or_else(|| MediaError::Ffmpeg("no stream of the track's kind".into()))?;
        let stream_index = stream.index();
        let time_base = stream.time_base();
        let codec = ffmpeg::decoder::find(stream.parameters().id())
            .ok_or_else(|| MediaError::Ffmpeg(format!("no decoder for {:?}", stream.parameters().id())))?;
        let mut context = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| ffmpeg_err("decoder parameters", e))?;
        if input.media == ComposeMedia::Video {
            // SAFETY: a plain field of a context not opened yet; 0 lets libavcodec use a thread
            // per core (frame threads for VP8/H.264), as the CLI does.
            unsafe { (*context.as_mut_ptr()).thread_count = threads as i32 };
        }
        let decoder = context
            .decoder()
            .open_as(codec)
            .map_err(|e| ffmpeg_err("open decoder", e))?;
        Ok(Self {
            input: ctx,
            stream_index,
            decoder,
            media: input.media,
            time_base,
            shift_micros: None,
            start_micros: input.start.as_micros() as i64,
            end_micros: input.end.as_micros() as i64,
            eof_sent: false,
            done: false,
            peeked: None,
            last_video_micros: None,
        })
    }

    /// The next decoded frame with its pts in timeline microseconds, or `None` at the end.
    /// A read or decode error ends the track early (what was decoded stays in).
    pub(super) fn next(&mut self) -> Option<ffmpeg::Frame> {
        if let Some(frame) = self.peeked.take() {
            return Some(frame);
        }
        loop {
            if self.done {
                return None;
            }
            // SAFETY: an empty frame is a valid target for avcodec_receive_frame.
            let mut frame = unsafe { ffmpeg::Frame::empty() };
            match self.decoder.receive_frame(&mut frame) {
                Ok(()) => {
                    let Some(pts) = frame.timestamp().or(frame.pts()) else {
                        continue;
                    };
                    let micros = rescale(pts, self.time_base, MICROS);
                    let shift = *self.shift_micros.get_or_insert(self.start_micros - micros);
                    let at = micros + shift;
                    if at > self.end_micros + 1_000_000 {
                        // Past the track's recorded end by more than a second: a bad timestamp.
                        continue;
                    }
                    frame.set_pts(Some(at));
                    if self.media == ComposeMedia::Video {
                        let previous = self.last_video_micros.replace(at);
                        if let Some(previous) = previous.filter(|p| is_video_gap(*p, at)) {
                            if let Some(black) = black_like(&frame, previous + GAP_FILL_AFTER_MICROS) {
                                self.peeked = Some(frame);
                                return Some(black);
                            }
                        }
                    }
                    return Some(frame);
                }
                Err(ffmpeg::Error::Eof) => {
                    self.done = true;
                    return None;
                }
                Err(ffmpeg::Error::Other { errno }) if errno == ffi::EAGAIN => {}
                Err(_) => {
                    self.done = true;
                    return None;
                }
            }
            if self.eof_sent {
                continue;
            }
            let mut packet = ffmpeg::Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) => {
                    if packet.stream() == self.stream_index {
                        // A corrupt packet is skipped; the decoder resyncs on the next keyframe.
                        let _ = self.decoder.send_packet(&packet);
                    }
                }
                Err(_) => {
                    let _ = self.decoder.send_eof();
                    self.eof_sent = true;
                }
            }
        }
    }
}

const MICROS: ffmpeg::Rational = ffmpeg::Rational(1, 1_000_000);

pub(super) fn rescale(value: i64, from: ffmpeg::Rational, to: ffmpeg::Rational) -> i64 {
    // SAFETY: pure arithmetic on plain values.
    unsafe { ffi::av_rescale_q(value, from.into(), to.into()) }
}

pub(super) fn ffmpeg_err(step: &str, err: ffmpeg::Error) -> MediaError {
    MediaError::Ffmpeg(format!("{step}: {err}"))
}

pub(super) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ffmpeg::init();
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    });
}

/// Composes `inputs` into an MP4 at `out` of duration `total`. Inputs that cannot be read or
/// hold no frame are left out and listed in the report; it fails only when nothing is left or
/// the encoder/muxer fails.
pub fn compose(
    inputs: &[ComposeInput],
    total: Duration,
    slates: &[(Duration, Duration)],
    out: &Path,
    config: &ComposeConfig,
) -> Result<ComposeReport, MediaError> {
    init();
    let mut report = ComposeReport::default();
    if total.is_zero() {
        return Err(MediaError::Refused("the conversation has no recorded time".into()));
    }
    let mut used = open_sources(inputs.iter(), config.threads, &mut report);
    // Videos first, then audios: the order of the labels in the description.
    used.sort_by_key(|(i, _)| i.media == ComposeMedia::Audio);
    let video: Vec<&ComposeInput> = used
        .iter()
        .filter(|(i, _)| i.media == ComposeMedia::Video)
        .map(|(i, _)| *i)
        .collect();
    let audio: Vec<&ComposeInput> = used
        .iter()
        .filter(|(i, _)| i.media == ComposeMedia::Audio)
        .map(|(i, _)| *i)
        .collect();
    report.num_video_inputs = video.len();
    report.num_audio_inputs = audio.len();
    report.has_video = !video.is_empty();
    report.has_audio = !audio.is_empty();
    if used.is_empty() {
        return Err(MediaError::Refused(format!(
            "no track could be read: {}",
            report.problems.join("; ")
        )));
    }
    let (spec_parts, source_names) = source_specs(&used);
    let mut sinks = Vec::new();
    if report.has_video {
        sinks.push("[vout]buffersink@vout".to_string());
    }
    if report.has_audio {
        sinks.push("[aout]abuffersink@aout".to_string());
    }
    let build = |config: &ComposeConfig| -> Result<ffmpeg::filter::Graph, MediaError> {
        let mut parts = spec_parts.clone();
        parts.push(filter_description(&video, &audio, total, slates, config));
        parts.extend(sinks.iter().cloned());
        let spec = parts.join(";");
        let mut graph = ffmpeg::filter::Graph::new();
        graph
            .parse(&spec)
            .map_err(|e| MediaError::Ffmpeg(format!("filter graph {spec:?}: {e}")))?;
        graph.validate().map_err(|e| ffmpeg_err("configure filter graph", e))?;
        Ok(graph)
    };
    let mut graph = match build(config) {
        Ok(graph) => graph,
        Err(err) if config.label_placeholders => {
            // drawtext missing (no libfreetype) or no font: the names are a nicety.
            tracing::warn!(error = %err, "composing without participant labels");
            build(&ComposeConfig {
                label_placeholders: false,
                ..config.clone()
            })?
        }
        Err(err) => return Err(err),
    };

    let mut octx = ffmpeg::format::output_as(out, "mp4").map_err(|e| ffmpeg_err("open output", e))?;
    let global_header = octx
        .format()
        .flags()
        .contains(ffmpeg::format::flag::Flags::GLOBAL_HEADER);
    let mut output_video = None;
    let mut output_audio = None;
    if report.has_video {
        let codec = ffmpeg::encoder::find_by_name("libx264")
            .or_else(|| ffmpeg::encoder::find(ffmpeg::codec::Id::H264))
            .ok_or_else(|| MediaError::Ffmpeg("no h.264 encoder".into()))?;
        let mut stream = octx.add_stream(codec).map_err(|e| ffmpeg_err("add video stream", e))?;
        let index = stream.index();
        let mut enc = ffmpeg::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| ffmpeg_err("video encoder", e))?;
        let tb = ffmpeg::Rational(1, config.fps as i32);
        enc.set_width(even(config.width));
        enc.set_height(even(config.height));
        enc.set_format(ffmpeg::format::Pixel::YUV420P);
        enc.set_time_base(tb);
        enc.set_frame_rate(Some(ffmpeg::Rational(config.fps as i32, 1)));
        if global_header {
            enc.set_flags(ffmpeg::codec::flag::Flags::GLOBAL_HEADER);
        }
        let mut options = ffmpeg::Dictionary::new();
        options.set("preset", &config.preset);
        options.set("threads", &threads_option(config.threads));
        let enc = enc
            .open_with(options)
            .map_err(|e| ffmpeg_err("open video encoder", e))?;
        stream.set_parameters(&enc);
        stream.set_time_base(tb);
        output_video = Some((enc, index, tb));
    }
    if report.has_audio {
        let codec =
            ffmpeg::encoder::find(ffmpeg::codec::Id::AAC).ok_or_else(|| MediaError::Ffmpeg("no aac encoder".into()))?;
        output_audio = Some(add_audio_encoder(
            &mut octx,
            &mut graph,
            codec,
            ffmpeg::format::Sample::F32(ffmpeg::format::sample::Type::Planar),
            128_000,
        )?);
    }
    let mut header = ffmpeg::Dictionary::new();
    header.set("movflags", "+faststart");
    octx.write_header_with(header)
        .map_err(|e| ffmpeg_err("write header", e))?;
    let output = Output {
        ctx: octx,
        video: output_video,
        audio: output_audio,
    };

    run_graph(&mut graph, &mut used, &source_names, output, &mut report)?;
    Ok(report)
}

/// The libavcodec `threads` option for `threads` (0: one per core).
fn threads_option(threads: usize) -> String {
    if threads == 0 {
        "auto".into()
    } else {
        threads.to_string()
    }
}

/// Opens each input and decodes its first frame (kept in the source); an input that cannot be
/// read or holds no frame is left out and named in `report`. Video decoders get `threads`
/// threads (0: one per core).
pub(super) fn open_sources<'a>(
    inputs: impl Iterator<Item = &'a ComposeInput>,
    threads: usize,
    report: &mut ComposeReport,
) -> Vec<(&'a ComposeInput, Source)> {
    let mut used = Vec::new();
    for input in inputs {
        match Source::open(input, threads) {
            Ok(mut source) => match source.next() {
                Some(frame) => {
                    source.peeked = Some(frame);
                    used.push((input, source));
                }
                None => report
                    .problems
                    .push(format!("{}: no decodable frame", input.path.display())),
            },
            Err(err) => report.problems.push(format!("{}: {err}", input.path.display())),
        }
    }
    used
}

/// The graph's buffer sources, described from each source's first frame: their description
/// parts (`buffer@v0=...[v0]`, `abuffer@a0=...[a0]`, videos and audios numbered apart, in
/// `used` order) and their filter names.
pub(super) fn source_specs(used: &[(&ComposeInput, Source)]) -> (Vec<String>, Vec<String>) {
    // Sources and sinks are named in the description itself (`buffer@v0`): ffmpeg-next's
    // `Parser` links at most two named outputs, and a call has more tracks than that.
    let mut spec_parts = Vec::new();
    let mut source_names = Vec::new();
    let (mut nv, mut na) = (0, 0);
    for (_, source) in used {
        let frame = source.peeked.as_ref().expect("every used source holds its first frame");
        let (label, filter, args) = match source.media {
            ComposeMedia::Video => {
                // SAFETY: reading plain fields of a frame produced by a video decoder.
                let (w, h, format) = unsafe {
                    let f = &*frame.as_ptr();
                    (f.width, f.height, f.format)
                };
                nv += 1;
                (
                    format!("v{}", nv - 1),
                    "buffer",
                    format!("video_size={w}x{h}:pix_fmt={format}:time_base=1/1000000:pixel_aspect=1/1"),
                )
            }
            ComposeMedia::Audio => {
                // SAFETY: reading plain fields of a frame produced by an audio decoder.
                let (rate, format, channels, mask) = unsafe {
                    let f = &*frame.as_ptr();
                    let native = f.ch_layout.order == ffi::AVChannelOrder::AV_CHANNEL_ORDER_NATIVE;
                    (
                        f.sample_rate,
                        f.format,
                        f.ch_layout.nb_channels,
                        native.then_some(f.ch_layout.u.mask),
                    )
                };
                let layout = match mask {
                    Some(mask) if mask != 0 => format!("channel_layout=0x{mask:x}"),
                    _ => format!("channels={channels}"),
                };
                na += 1;
                (
                    format!("a{}", na - 1),
                    "abuffer",
                    format!("time_base=1/1000000:sample_rate={rate}:sample_fmt={format}:{layout}"),
                )
            }
        };
        spec_parts.push(format!("{filter}@{label}={args}[{label}]"));
        source_names.push(format!("{filter}@{label}"));
    }
    (spec_parts, source_names)
}

/// Adds an audio stream to `octx` with an opened 48 kHz stereo encoder of `codec`, and sizes
/// the graph's `abuffersink@aout` frames to the encoder's frame size.
pub(super) fn add_audio_encoder(
    octx: &mut ffmpeg::format::context::Output,
    graph: &mut ffmpeg::filter::Graph,
    codec: ffmpeg::Codec,
    format: ffmpeg::format::Sample,
    bit_rate: usize,
) -> Result<(ffmpeg::encoder::Audio, usize, ffmpeg::Rational), MediaError> {
    let global_header = octx
        .format()
        .flags()
        .contains(ffmpeg::format::flag::Flags::GLOBAL_HEADER);
    let mut stream = octx.add_stream(codec).map_err(|e| ffmpeg_err("add audio stream", e))?;
    let index = stream.index();
    let mut enc = ffmpeg::codec::context::Context::new_with_codec(codec)
        .encoder()
        .audio()
        .map_err(|e| ffmpeg_err("audio encoder", e))?;
    let tb = ffmpeg::Rational(1, 48_000);
    enc.set_rate(48_000);
    enc.set_channel_layout(ffmpeg::ChannelLayout::STEREO);
    enc.set_format(format);
    enc.set_bit_rate(bit_rate);
    enc.set_time_base(tb);
    if global_header {
        enc.set_flags(ffmpeg::codec::flag::Flags::GLOBAL_HEADER);
    }
    let enc = enc.open().map_err(|e| ffmpeg_err("open audio encoder", e))?;
    stream.set_parameters(&enc);
    stream.set_time_base(tb);
    let frame_size = enc.frame_size();
    if let Some(mut sink) = graph.get("abuffersink@aout") {
        sink.sink().set_frame_size(frame_size);
    }
    Ok((enc, index, tb))
}

/// Runs the graph to its end: feeds the sources, encodes what the sinks give, writes the
/// trailer. A source whose frame the graph refuses is closed and named in `report`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_tiles_cover_the_picture_without_overlap() {
        assert!(grid(0, 1280, 720).is_empty());
        assert_eq!(
            grid(1, 1280, 720),
            vec![Tile {
                x: 0,
                y: 0,
                w: 1280,
                h: 720
            }]
        );
        let two = grid(2, 1280, 720);
        // Side by side, full height: two cameras use the whole picture.
        assert_eq!(
            two[0],
            Tile {
                x: 0,
                y: 0,
                w: 640,
                h: 720
            }
        );
        assert_eq!(
            two[1],
            Tile {
                x: 640,
                y: 0,
                w: 640,
                h: 720
            }
        );
        let five = grid(5, 1280, 720);
        assert_eq!(five.len(), 5);
        assert_eq!(
            five[3],
            Tile {
                x: 0,
                y: 360,
                w: 426,
                h: 360
            }
        );
        for t in &five {
            assert!(t.x + t.w <= 1280 && t.y + t.h <= 720);
            assert_eq!(t.w % 2, 0);
        }
    }

    #[test]
    fn screen_takes_the_top_and_cameras_a_centred_strip() {
        let (screen, cams) = screen_layout(2, 1280, 720);
        assert_eq!(
            screen,
            Tile {
                x: 0,
                y: 0,
                w: 1280,
                h: 540
            }
        );
        assert_eq!(cams.len(), 2);
        assert_eq!(cams[0].y, 540);
        assert_eq!(cams[0].h, 180);
        assert_eq!(cams[0].w, 320);
        assert_eq!(cams[0].x, 320);
        assert_eq!(cams[1].x, 640);
        let (_, many) = screen_layout(10, 1280, 720);
        assert!(many.iter().all(|t| t.x + t.w <= 1280));
    }

    #[test]
    fn instances_are_placed_back_to_back_with_the_gap_cut() {
        let s = 1_000_000i64;
        let instances = vec![
            InstanceSpan {
                started_micros: 100 * s,
                stopped_micros: 110 * s,
                pauses: vec![],
                tracks: vec![("a", Some(100 * s), None), ("late", Some(104 * s), Some(108 * s))],
            },
            // 50 s later: the gap is cut.
            InstanceSpan {
                started_micros: 160 * s,
                stopped_micros: 165 * s,
                pauses: vec![],
                tracks: vec![("b", Some(161 * s), None), ("early", Some(150 * s), Some(170 * s))],
            },
        ];
        let (placed, total) = place_instances(&instances);
        assert_eq!(total, Duration::from_secs(15));
        let secs = |d: Duration| d.as_secs_f64();
        let find = |n: &str| placed.iter().find(|p| p.0 == n).cloned().unwrap();
        assert_eq!((secs(find("a").1), secs(find("a").2)), (0.0, 10.0));
        assert_eq!((secs(find("late").1), secs(find("late").2)), (4.0, 8.0));
        assert_eq!((secs(find("b").1), secs(find("b").2)), (11.0, 15.0));
        // Clamped into its instance.
        assert_eq!((secs(find("early").1), secs(find("early").2)), (10.0, 15.0));
    }

    #[test]
    fn pauses_are_placed_like_their_instances_and_slated() {
        let s = 1_000_000i64;
        let instances: Vec<InstanceSpan<&str>> = vec![
            InstanceSpan {
                started_micros: 100 * s,
                stopped_micros: 110 * s,
                // one inside, one running past the stop (clamped)
                pauses: vec![(102 * s, 104 * s), (108 * s, 120 * s)],
                tracks: vec![],
            },
            InstanceSpan {
                started_micros: 160 * s,
                stopped_micros: 165 * s,
                // before the start: nothing of it is on the timeline
                pauses: vec![(150 * s, 155 * s), (161 * s, 162 * s)],
                tracks: vec![],
            },
        ];
        let secs = |d: &Duration| d.as_secs_f64();
        let placed: Vec<(f64, f64)> = place_pauses(&instances)
            .iter()
            .map(|(a, b)| (secs(a), secs(b)))
            .collect();
        assert_eq!(placed, vec![(2.0, 4.0), (8.0, 10.0), (11.0, 12.0)]);

        let camera = ComposeInput {
            path: PathBuf::from("x"),
            media: ComposeMedia::Video,
            role: ComposeRole::Camera,
            participant: "u".into(),
            start: Duration::ZERO,
            end: Duration::from_secs(12),
            rotation: 0,
        };
        let slates = [(Duration::from_secs(2), Duration::from_secs(4))];
        let spec = filter_description(
            &[&camera],
            &[],
            Duration::from_secs(12),
            &slates,
            &ComposeConfig::default(),
        );
        assert!(
            spec.contains("drawbox=x=0:y=0:w=iw:h=ih:color=0x202020:t=fill:enable='between(t,2.000,4.000)'"),
            "{spec}"
        );
        assert!(spec.contains("text='recording paused'"), "{spec}");
        let without = filter_description(&[&camera], &[], Duration::from_secs(12), &[], &ComposeConfig::default());
        assert!(!without.contains("drawbox"), "{without}");
        // A phone's picture turned 90 degrees is turned upright before it is fitted to its tile.
        let portrait = ComposeInput {
            rotation: 90,
            ..camera.clone()
        };
        let turned = filter_description(
            &[&portrait],
            &[],
            Duration::from_secs(12),
            &[],
            &ComposeConfig::default(),
        );
        assert!(
            turned.contains("[v0]transpose=clock[u0]") && turned.contains("[u0]scale="),
            "{turned}"
        );
    }

    #[test]
    fn description_switches_cameras_to_the_strip_while_a_screen_is_on() {
        let input = |media, role, participant: &str, start: u64, end: u64| ComposeInput {
            path: PathBuf::from("x"),
            media,
            role,
            participant: participant.into(),
            start: Duration::from_secs(start),
            end: Duration::from_secs(end),
            rotation: 0,
        };
        let a = input(ComposeMedia::Video, ComposeRole::Camera, "u1", 0, 10);
        let b = input(ComposeMedia::Video, ComposeRole::Camera, "u2", 2, 10);
        let s = input(ComposeMedia::Video, ComposeRole::Screen, "u1", 5, 10);
        let m = input(ComposeMedia::Audio, ComposeRole::Camera, "u1", 0, 10);
        let spec = filter_description(
            &[&a, &b, &s],
            &[&m],
            Duration::from_secs(10),
            &[],
            &ComposeConfig::default(),
        );
        assert!(spec.contains("color=c=0x404040:s=1280x720:r=25:d=10.000"), "{spec}");
        assert!(spec.contains("enable='eq(between(t,5.000,10.000),0)'"), "{spec}");
        assert!(spec.contains("[v2]scale=1280:540"), "{spec}");
        assert!(spec.contains("amix=inputs=1"), "{spec}");
        // Names on the canvas: in the grid while no screen, in the strip while one is on.
        assert!(
            spec.contains("drawtext=text='u2':x=648:y=680:fontsize=32:fontcolor=white:enable='eq("),
            "{spec}"
        );
        assert_eq!(label_text("a:b'c,d[e]"), "a_b_c_d_e_");
        let unlabelled = ComposeConfig {
            label_placeholders: false,
            ..ComposeConfig::default()
        };
        let plain = filter_description(&[&a, &b, &s], &[&m], Duration::from_secs(10), &[], &unlabelled);
        assert!(!plain.contains("drawtext"), "{plain}");
        assert!(spec.ends_with("[aout]"), "{spec}");
        let audio_only = filter_description(&[], &[&m], Duration::from_secs(10), &[], &ComposeConfig::default());
        assert!(!audio_only.contains("vout"));
    }

    use std::process::Command;

    /// A track file from an FFmpeg CLI source (`lavfi` syntax), VP8 or Opus in WebM like the
    /// recorder's own.
    fn track(dir: &Path, name: &str, source: &str, secs: f64, video: bool) -> PathBuf {
        let path = dir.join(name);
        let codec: &[&str] = if video {
            &["-c:v", "libvpx", "-deadline", "realtime", "-b:v", "300k"]
        } else {
            &["-c:a", "libopus", "-ar", "48000"]
        };
        let status = Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                source,
                "-t",
                &format!("{secs}"),
            ])
            .args(codec)
            .arg(&path)
            .status()
            .expect("ffmpeg CLI");
        assert!(status.success(), "ffmpeg could not make {name}");
        path
    }

    fn probe(path: &Path, entries: &str) -> String {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", entries, "-of", "default=nw=1:nk=1"])
            .arg(path)
            .output()
            .expect("ffprobe");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The frame at `secs` as RGB24.
    fn frame(path: &Path, secs: f64) -> Vec<u8> {
        Command::new("ffmpeg")
            .args(["-v", "error", "-ss", &format!("{secs}"), "-i"])
            .arg(path)
            .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .output()
            .expect("ffmpeg")
            .stdout
    }

    /// RGB of the pixel (x, y) of the frame at `secs`.
    pub(crate) fn pixel(path: &Path, secs: f64, x: u32, y: u32, width: u32) -> [u8; 3] {
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-ss", &format!("{secs}"), "-i"])
            .arg(path)
            .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .output()
            .expect("ffmpeg");
        let at = ((y * width + x) * 3) as usize;
        assert!(out.stdout.len() > at + 2, "no frame at {secs}s");
        [out.stdout[at], out.stdout[at + 1], out.stdout[at + 2]]
    }

    fn input(path: PathBuf, media: ComposeMedia, role: ComposeRole, who: &str, start: f64, end: f64) -> ComposeInput {
        ComposeInput {
            path,
            media,
            role,
            participant: who.into(),
            start: Duration::from_secs_f64(start),
            end: Duration::from_secs_f64(end),
            rotation: 0,
        }
    }

    #[test]
    fn two_cameras_a_late_joiner_and_a_screen_make_one_mp4() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let red = track(d, "red.webm", "color=c=red:s=320x240:r=25", 6.0, true);
        let blue = track(d, "blue.webm", "color=c=blue:s=320x240:r=25", 4.0, true);
        let green = track(d, "screen.webm", "color=c=green:s=640x360:r=25", 3.0, true);
        let a440 = track(d, "a440.webm", "sine=frequency=440:sample_rate=48000", 6.0, false);
        let a880 = track(d, "a880.webm", "sine=frequency=880:sample_rate=48000", 4.0, false);
        let empty = d.join("empty.webm");
        std::fs::write(&empty, b"").unwrap();
        let inputs = vec![
            input(red, ComposeMedia::Video, ComposeRole::Camera, "alice", 0.0, 6.0),
            input(blue, ComposeMedia::Video, ComposeRole::Camera, "bob", 2.0, 6.0),
            input(green, ComposeMedia::Video, ComposeRole::Screen, "alice", 3.0, 6.0),
            input(a440, ComposeMedia::Audio, ComposeRole::Camera, "alice", 0.0, 6.0),
            input(a880, ComposeMedia::Audio, ComposeRole::Camera, "bob", 2.0, 6.0),
            input(empty, ComposeMedia::Audio, ComposeRole::Camera, "carol", 0.0, 6.0),
        ];
        let out = d.join("out.mp4");
        let report = compose(&inputs, Duration::from_secs(6), &[], &out, &ComposeConfig::default()).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].contains("empty.webm"));
        assert_eq!(probe(&out, "stream=codec_name"), "h264\naac");
        let duration: f64 = probe(&out, "format=duration").parse().unwrap();
        assert!((duration - 6.0).abs() < 0.2, "duration {duration}");
        // 1 s: alice alone (bob joins at 2 s): left tile red, right tile the grey placeholder.
        let left = pixel(&out, 1.0, 320, 360, 1280);
        let right = pixel(&out, 1.0, 960, 360, 1280);
        assert!(left[0] > 180 && left[2] < 80, "left {left:?}");
        assert!(right.iter().all(|c| (40..=100).contains(c)), "right {right:?}");
        // bob's name is written in his empty tile (bottom left), white on the grey.
        let picture = frame(&out, 1.0);
        let bright = (640..800).any(|x| (660..720).any(|y| picture[((y * 1280 + x) * 3) as usize] > 200));
        assert!(bright, "no label in bob's placeholder");
        // 2.5 s: both cameras in the grid.
        let right = pixel(&out, 2.5, 960, 360, 1280);
        assert!(right[2] > 180 && right[0] < 80, "right {right:?}");
        // 4.5 s: the screen on top, cameras in the strip below.
        let screen = pixel(&out, 4.5, 640, 270, 1280);
        assert!(screen[1] > 80 && screen[0] < 60 && screen[2] < 60, "screen {screen:?}");
        let strip_left = pixel(&out, 4.5, 480, 630, 1280);
        let strip_right = pixel(&out, 4.5, 800, 630, 1280);
        assert!(strip_left[0] > 180 && strip_left[2] < 80, "strip left {strip_left:?}");
        assert!(
            strip_right[2] > 180 && strip_right[0] < 80,
            "strip right {strip_right:?}"
        );
    }

    #[test]
    fn a_gap_inside_a_video_track_shows_black_not_a_frozen_frame() {
        assert!(!is_video_gap(0, 40_000));
        assert!(is_video_gap(0, 600_000));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gap.webm");
        // Red for 1 s, nothing from 1 s to 3 s (timestamps kept), red again until 4 s.
        let status = Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "color=c=red:s=320x240:r=25:d=4",
            ])
            .args(["-vf", "select='lt(t,1)+gte(t,3)'", "-fps_mode", "passthrough"])
            .args(["-c:v", "libvpx", "-deadline", "realtime"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        let out = dir.path().join("out.mp4");
        let inputs = [input(path, ComposeMedia::Video, ComposeRole::Camera, "u", 0.0, 4.0)];
        compose(&inputs, Duration::from_secs(4), &[], &out, &ComposeConfig::default()).unwrap();
        let red = |p: [u8; 3]| p[0] > 180 && p[1] < 80 && p[2] < 80;
        assert!(red(pixel(&out, 0.5, 640, 360, 1280)));
        let during = pixel(&out, 2.0, 640, 360, 1280);
        assert!(during.iter().all(|c| *c < 40), "gap shows {during:?}, not black");
        assert!(red(pixel(&out, 3.5, 640, 360, 1280)));
    }

    #[test]
    fn audio_only_tracks_make_an_audio_only_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = track(dir.path(), "a.webm", "sine=frequency=440:sample_rate=48000", 2.0, false);
        let out = dir.path().join("out.mp4");
        let inputs = [input(a, ComposeMedia::Audio, ComposeRole::Camera, "u", 0.5, 2.5)];
        let report = compose(&inputs, Duration::from_secs(3), &[], &out, &ComposeConfig::default()).unwrap();
        assert!(!report.has_video && report.has_audio);
        assert_eq!(probe(&out, "stream=codec_name"), "aac");
        let duration: f64 = probe(&out, "format=duration").parse().unwrap();
        assert!((duration - 3.0).abs() < 0.2, "duration {duration}");
    }

    #[test]
    fn nothing_readable_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.webm");
        std::fs::write(&bad, b"not a media file").unwrap();
        let input = ComposeInput {
            path: bad,
            media: ComposeMedia::Audio,
            role: ComposeRole::Camera,
            participant: "u".into(),
            start: Duration::ZERO,
            end: Duration::from_secs(1),
            rotation: 0,
        };
        let out = dir.path().join("out.mp4");
        let err = compose(&[input], Duration::from_secs(1), &[], &out, &ComposeConfig::default()).unwrap_err();
        assert!(matches!(err, MediaError::Refused(_)), "{err}");
    }
}
