//! Media held to the product's promises on a lossless loopback path, in process: RTP that FFmpeg
//! really sent, replayed in real time, and the files checked with ffprobe.
//!
//! - frames in the file >= 99.9 % of the frames sent, and never more;
//! - track duration within 40 ms of what was sent;
//! - the first video frame a keyframe, written <= 300 ms after the first packet left the sender.

use std::path::Path;
use std::time::Duration;

use recorder_actors::domain::{InstanceState, StreamType, TrackType};
use recorder_actors::snapshot::Counters;
use testkit::engine::EngineHarness;
use testkit::rtp::Sent;

use crate::support::*;

/// The promise on frames: at least 99.9 % of those sent (rounded up), never more.
fn assert_frames(what: &str, written: u64, sent: u64) {
    let least = (sent * 999).div_ceil(1000);
    assert!(
        written >= least && written <= sent,
        "{what}: {written} frames in the file, {sent} sent (at least {least})"
    );
}

/// The promise on duration: within 40 ms of what was sent (video: first to last frame; audio:
/// every frame's 20 ms).
fn assert_duration(what: &str, file_secs: f64, sent: &Sent, audio: bool) {
    let sent_secs = sent.span.as_secs_f64() + if audio { 0.020 } else { 0.0 };
    assert!(
        (file_secs - sent_secs).abs() <= 0.040,
        "{what}: the file lasts {file_secs:.3} s, {sent_secs:.3} s were sent"
    );
}

#[tokio::test]
async fn replayed_vp8_opus_and_h264_are_recorded_frame_for_frame_and_start_at_once() {
    let _media = media_lock();
    let engine = EngineHarness::start();
    let conference = unique("room");
    let instance = engine.start_recording(&unique("call"), &conference).await;
    let passes = 3;
    let cam = Publisher::start(
        &engine,
        &conference,
        "customer",
        StreamType::Cam,
        &["vp8", "opus"],
        passes,
    )
    .await;
    let screen = Publisher::start(&engine, &conference, "customer", StreamType::Screen, &["h264"], passes).await;
    let (cam_stream, screen_stream) = (cam.answer.stream_id.clone(), screen.answer.stream_id.clone());
    let cam_sent = cam.finish();
    let screen_sent = screen.finish();

    // While the streams are live: when each track's first frame went into its file.
    let first_writes = engine
        .wait_for_async(PATIENCE, "every track written", || async {
            let mut found = Vec::new();
            for stream in engine.streams().await {
                for track in &stream.children {
                    let Counters::Track { media, track: file } = &track.counters else {
                        continue;
                    };
                    if file.first_write_at_micros == 0 {
                        return None;
                    }
                    found.push((
                        stream.id.clone(),
                        track.state.clone(),
                        file.first_write_at_micros,
                        media.num_frames_written,
                    ));
                }
            }
            (found.len() == 3).then_some(found)
        })
        .await;
    let stopped = engine.stop(&instance).await.unwrap();
    assert_eq!(stopped.state, InstanceState::Stopped);

    let sent_for = |stream_id: &str, kind: TrackType| -> &Sent {
        match (stream_id == cam_stream, kind) {
            (true, TrackType::Video) => &cam_sent[0],
            (true, TrackType::Audio) => &cam_sent[1],
            (false, _) => &screen_sent[0],
        }
    };
    let mut checked = 0;
    for stream in &stopped.streams {
        assert!(stream.id == cam_stream || stream.id == screen_stream, "{stopped:#?}");
        for track in &stream.tracks {
            let sent = sent_for(&stream.id, track.kind);
            let what = format!("{} {:?}", stream.kind.as_str(), track.kind);
            let file = track
                .local
                .location
                .as_ref()
                .unwrap_or_else(|| panic!("{what} has a file"));
            let probe = testkit::probe::probe(Path::new(file));
            eprintln!(
                "fidelity {what}: {} of {} frames, {:.3} s for {:.3} s sent",
                probe.num_frames,
                sent.num_frames,
                probe.duration,
                sent.span.as_secs_f64()
            );
            assert_frames(&what, probe.num_frames, sent.num_frames);
            assert_duration(&what, probe.duration, sent, track.kind == TrackType::Audio);
            if track.kind == TrackType::Video {
                assert!(probe.first_is_keyframe, "{what}: the first frame is not a keyframe");
                let (_, _, first_write, _) = first_writes
                    .iter()
                    .find(|(id, state, _, _)| id.starts_with(&stream.id) && state.starts_with("VIDEO"))
                    .expect("the video track's counters");
                let after = Duration::from_micros((*first_write as i64 - sent.first_sent_wall_micros).max(0) as u64);
                eprintln!("fidelity {what}: first frame written {after:?} after the first packet");
                assert!(
                    after <= Duration::from_millis(300),
                    "{what}: first frame written {after:?} after the first packet"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 3);
}
