//! Running a composition's filter graph in two stages: this thread decodes and filters (the
//! sources the graph asks for), an encoder thread encodes and muxes what its sinks give, so the
//! next frames are decoded while the last ones are encoded. Used by [`super::compose`] (video and
//! audio) and [`super::stereo`] (audio only).

use ffmpeg::ffi;
use ffmpeg_next as ffmpeg;

use super::compose::{ffmpeg_err, rescale, ComposeInput, ComposeReport, Source};
use super::MediaError;

pub(super) struct Output {
    pub(super) ctx: ffmpeg::format::context::Output,
    pub(super) video: Option<(ffmpeg::encoder::Video, usize, ffmpeg::Rational)>,
    pub(super) audio: Option<(ffmpeg::encoder::Audio, usize, ffmpeg::Rational)>,
}

impl Output {
    pub(super) fn write_packets(&mut self, video: bool) -> Result<(), MediaError> {
        let Output {
            ctx,
            video: v,
            audio: a,
        } = self;
        let (encoder, index, enc_tb): (&mut ffmpeg::encoder::Encoder, usize, ffmpeg::Rational) = if video {
            let (e, i, tb) = v.as_mut().expect("video packets only when there is a video encoder");
            (e, *i, *tb)
        } else {
            let (e, i, tb) = a.as_mut().expect("audio packets only when there is an audio encoder");
            (e, *i, *tb)
        };
        let stream_tb = ctx.stream(index).expect("the stream was added at setup").time_base();
        let mut packet = ffmpeg::Packet::empty();
        while encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(index);
            packet.rescale_ts(enc_tb, stream_tb);
            packet
                .write_interleaved(ctx)
                .map_err(|e| ffmpeg_err("write packet", e))?;
        }
        Ok(())
    }
}

pub(super) fn run_graph(
    graph: &mut ffmpeg::filter::Graph,
    used: &mut [(&ComposeInput, Source)],
    source_names: &[String],
    output: Output,
    report: &mut ComposeReport,
) -> Result<(), MediaError> {
    // Two stages, like a pipeline: this thread decodes and filters, an encoder thread encodes
    // and muxes what the sinks give it, so decoding the next frames overlaps encoding the last
    // ones (the FFmpeg 5.1 CLI does both on one thread). The thread inherits this one's
    // priority; the bounded channel keeps a few frames in flight, not the whole call.
    let (tx, rx) = std::sync::mpsc::sync_channel::<ToEncoder>(ENCODER_QUEUE);
    let encoder = std::thread::Builder::new()
        .name("compose-encode".into())
        .spawn(move || encode_loop(output, rx))
        .map_err(|e| MediaError::Ffmpeg(format!("cannot start the encoder thread: {e}")))?;
    let fed = feed_graph(graph, used, source_names, &tx, report);
    if fed.is_ok() {
        // Only a whole graph ends the file: without `End` the encoder thread leaves it unfinished.
        let _ = tx.send(ToEncoder::End);
    }
    drop(tx);
    let encoded = encoder
        .join()
        .unwrap_or_else(|_| Err(MediaError::Ffmpeg("the encoder thread panicked".into())));
    // A feeding error that came from the encoder side (its channel closed) is the encoder's.
    match (fed, encoded) {
        (_, Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// Frames in flight between the filter graph and the encoder thread.
const ENCODER_QUEUE: usize = 8;

enum ToEncoder {
    /// A frame from a sink (video or audio) with the sink's time base.
    Frame {
        video: bool,
        frame: ffmpeg::Frame,
        time_base: ffmpeg::Rational,
    },
    /// Every frame was sent: flush the encoders and finish the file.
    End,
}

/// Decodes and filters: feeds the sources the graph asks for and hands every frame its sinks
/// give to the encoder thread.
fn feed_graph(
    graph: &mut ffmpeg::filter::Graph,
    used: &mut [(&ComposeInput, Source)],
    source_names: &[String],
    tx: &std::sync::mpsc::SyncSender<ToEncoder>,
    report: &mut ComposeReport,
) -> Result<(), MediaError> {
    // Demand-driven, like the FFmpeg CLI: after draining the sinks, feed the source the graph
    // asked for most (a buffered overlay waits on it); feeding by timestamp instead would make
    // a late joiner's tile hold every earlier frame of the others in memory.
    let mut open: Vec<bool> = vec![true; used.len()];
    loop {
        drain(graph, tx)?;
        let pick = (0..used.len()).filter(|i| open[*i]).max_by_key(|i| {
            graph
                .get(&source_names[*i])
                .map(|mut c| c.source().failed_requests())
                .unwrap_or(0)
        });
        let Some(i) = pick else { break };
        let mut ctx = graph
            .get(&source_names[i])
            .expect("every source was added to the graph");
        match used[i].1.next() {
            Some(mut frame) => {
                // SAFETY: ctx is a buffer source of this graph and frame a valid decoded frame.
                // NO_CHECK_FORMAT: a publisher may change resolution mid-call; scale adapts.
                let ret = unsafe {
                    ffi::av_buffersrc_add_frame_flags(
                        ctx.as_mut_ptr(),
                        frame.as_mut_ptr(),
                        ffi::AV_BUFFERSRC_FLAG_NO_CHECK_FORMAT as i32,
                    )
                };
                if ret < 0 {
                    report.problems.push(format!(
                        "{}: frame refused by the filter graph ({})",
                        used[i].0.path.display(),
                        ffmpeg::Error::from(ret)
                    ));
                    let _ = ctx.source().flush();
                    open[i] = false;
                }
            }
            None => {
                let _ = ctx.source().flush();
                open[i] = false;
            }
        }
    }
    drain(graph, tx)
}

/// Moves every frame the sinks hold to the encoder thread.
fn drain(graph: &mut ffmpeg::filter::Graph, tx: &std::sync::mpsc::SyncSender<ToEncoder>) -> Result<(), MediaError> {
    for video in [true, false] {
        let name = if video { "buffersink@vout" } else { "abuffersink@aout" };
        let Some(mut sink) = graph.get(name) else { continue };
        let time_base = sink.sink().time_base();
        loop {
            // SAFETY: an empty frame is a valid target for av_buffersink_get_frame.
            let mut frame = unsafe { ffmpeg::Frame::empty() };
            if sink.sink().frame(&mut frame).is_err() {
                break;
            }
            tx.send(ToEncoder::Frame {
                video,
                frame,
                time_base,
            })
            .map_err(|_| MediaError::Ffmpeg("the encoder stopped".into()))?;
        }
    }
    Ok(())
}

/// The encoder thread: encodes each frame into its stream and writes the packets; on `End`
/// flushes the encoders and writes the trailer. A closed channel without `End` (the feeding side
/// failed) leaves the file unfinished.
fn encode_loop(mut output: Output, rx: std::sync::mpsc::Receiver<ToEncoder>) -> Result<(), MediaError> {
    for message in rx {
        match message {
            ToEncoder::Frame {
                video,
                mut frame,
                time_base,
            } => {
                let (encoder, enc_tb): (&mut ffmpeg::encoder::Encoder, ffmpeg::Rational) = if video {
                    let (e, _, tb) = output.video.as_mut().expect("a video sink implies a video encoder");
                    (e, *tb)
                } else {
                    let (e, _, tb) = output.audio.as_mut().expect("an audio sink implies an audio encoder");
                    (e, *tb)
                };
                if let Some(pts) = frame.pts() {
                    frame.set_pts(Some(rescale(pts, time_base, enc_tb)));
                }
                if video {
                    // SAFETY: plain field write on a frame we own; lets the encoder pick frame types.
                    unsafe { (*frame.as_mut_ptr()).pict_type = ffi::AVPictureType::AV_PICTURE_TYPE_NONE };
                }
                encoder.send_frame(&frame).map_err(|e| ffmpeg_err("encode", e))?;
                output.write_packets(video)?;
            }
            ToEncoder::End => {
                for video in [true, false] {
                    let encoder: Option<&mut ffmpeg::encoder::Encoder> = if video {
                        output
                            .video
                            .as_mut()
                            .map(|t| -> &mut ffmpeg::encoder::Encoder { &mut t.0 })
                    } else {
                        output
                            .audio
                            .as_mut()
                            .map(|t| -> &mut ffmpeg::encoder::Encoder { &mut t.0 })
                    };
                    if let Some(encoder) = encoder {
                        let _ = encoder.send_eof();
                        output.write_packets(video)?;
                    }
                }
                return output.ctx.write_trailer().map_err(|e| ffmpeg_err("write trailer", e));
            }
        }
    }
    Err(MediaError::Ffmpeg("the composition ended before its last frame".into()))
}
