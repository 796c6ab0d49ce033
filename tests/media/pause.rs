//! Pause and resume (card payments, PCI-DSS): nothing is recorded inside a paused span — no frame
//! whose time falls inside it in any track file, every frame outside it kept — the composition
//! shows a "recording paused" slate over it, and a pause survives a `kill -9`.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::compose::{pixel, publish, stored_composition};
use crate::harness::*;

fn set_paused(app: &TestApp, event: &Value, paused: bool) -> Value {
    let verb = if paused { "pause" } else { "resume" };
    let resp = app.post_json(&format!("{}/{verb}", instance_path(event)), KEY, &json!({}));
    assert_eq!(resp.status, 200, "{verb}: {}", resp.text());
    let body = resp.json();
    assert_eq!(body["paused"], paused, "{body:#}");
    body
}

/// The sum of a media counter over the live tracks of `kind` (`VIDEO`, `AUDIO`).
fn track_counter(app: &TestApp, kind: &str, name: &str) -> u64 {
    snapshots_of(&app.debug_tree(), "Track")
        .iter()
        .filter(|t| t["state"].as_str().is_some_and(|s| s.starts_with(kind)))
        .map(|t| t["counters"][name].as_u64().unwrap_or(0))
        .sum()
}

/// Seconds from the track's start to `at` (both wall times of the record).
fn on_track(track: &Value, at: &Value) -> f64 {
    (millis(at) - millis(&track["started"])) as f64 / 1000.0
}

#[test]
fn a_paused_span_is_a_gap_in_every_track_and_a_slate_in_the_composition() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conversation = unique("pause");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, true);
    let cam = publish(&app, &conference, "customer", "CAM", &[("video", 96, "VP8/90000")]);
    let mic = publish(&app, &conference, "customer", "MIC", &[("audio", 111, "opus/48000/2")]);
    let seconds = 8;
    let mut a = args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("color=c=red:s=320x240:r=30:d={seconds}[out0];sine=frequency=440:sample_rate=48000:duration={seconds}[out1]"),
    ]);
    let mut video = rtp_out("0:v", "vp8", 96, cam[0]);
    let g = video.iter().position(|arg| arg == "-g").expect("-g");
    video[g + 1] = "10".into();
    a.extend(video);
    a.extend(rtp_out("0:a", "opus", 111, mic[0]));
    let sender = ffmpeg(&a);

    wait_written(&app, 45);
    let paused = set_paused(&app, &event, true);
    assert_eq!(paused["pauseIntervals"].as_array().map(Vec::len), Some(1), "{paused:#}");
    assert!(paused["pauseIntervals"][0]["resumed"].is_null(), "{paused:#}");
    // Idempotent: a second pause changes nothing.
    let again = set_paused(&app, &event, true);
    assert_eq!(again["pauseIntervals"], paused["pauseIntervals"], "{again:#}");
    // Media keeps coming and is dropped: about 2 s of it.
    poll(Duration::from_secs(20), "2 s of video dropped while paused", || {
        (track_counter(&app, "VIDEO", "num_frames_paused") >= 60).then_some(())
    });
    let resumed = set_paused(&app, &event, false);
    assert!(resumed["pauseIntervals"][0]["resumed"].is_string(), "{resumed:#}");
    set_paused(&app, &event, false);
    wait_ok(sender, "ffmpeg");
    let dropped_video = track_counter(&app, "VIDEO", "num_frames_paused");
    let dropped_audio = track_counter(&app, "AUDIO", "num_frames_paused");
    let stopped = app.stop(&event);
    assert_eq!(stopped["state"], "STOPPED");
    // A stopped instance is neither paused nor resumed.
    let refused = app.post_json(&format!("{}/pause", instance_path(&event)), KEY, &json!({}));
    assert_eq!(refused.status, 409, "{}", refused.text());

    let instance = app.instance(&event);
    assert_eq!(instance["paused"], false, "{instance:#}");
    let pause = &instance["pauseIntervals"][0];
    let all = tracks(&instance);
    for (kind, frame_secs, sent, dropped) in [
        ("VIDEO", 1.0 / 30.0, u64::from(seconds) * 30, dropped_video),
        ("AUDIO", 0.020, ffmpeg_opus_frames(seconds), dropped_audio),
    ] {
        let stream = if kind == "VIDEO" { "CAM" } else { "MIC" };
        let track = find_track(&all, "customer", stream, kind);
        let path = track_file(track);
        let times = testkit::probe::packet_times(&path);
        let (from, to) = (on_track(track, &pause["paused"]), on_track(track, &pause["resumed"]));
        // No frame whose time falls inside the pause (1 ms of rounding between the record's
        // millisecond times and the file's).
        let inside: Vec<f64> = times
            .iter()
            .copied()
            .filter(|t| *t > from + 0.001 && *t < to - 0.001)
            .collect();
        assert!(
            inside.is_empty(),
            "{kind}: frames at {inside:?} inside the pause {from:.3}..{to:.3}"
        );
        // Every frame outside it: what the file holds and what the pause dropped are all that
        // was sent.
        assert_eq!(
            times.len() as u64 + dropped,
            sent,
            "{kind}: {} frames in the file, {dropped} dropped by the pause, {sent} sent",
            times.len()
        );
        // The span is a gap in time, not cut out.
        let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
        assert!(
            (gap - (to - from)).abs() <= 3.0 * frame_secs,
            "{kind}: largest gap {gap:.3} s, pause {:.3} s",
            to - from
        );
    }

    // The composition shows the slate over the pause and the camera around it.
    let composed = wait_composed(&app, &conversation, &event["instanceId"]);
    assert_eq!(composed["state"], "STOPPED", "{composed:#}");
    let mp4 = stored_composition(&app, &conversation);
    let started = millis(&instance["started"]);
    let at = |value: &Value| (millis(value) - started) as f64 / 1000.0;
    let (p0, p1) = (at(&pause["paused"]), at(&pause["resumed"]));
    let slate = pixel(Path::new(&mp4), (p0 + p1) / 2.0, 640, 120);
    let camera = pixel(Path::new(&mp4), p1 + 1.0, 640, 120);
    assert!(
        slate.iter().all(|c| (16..=48).contains(c)),
        "the slate at {:.2} s: {slate:?}",
        (p0 + p1) / 2.0
    );
    assert!(
        camera[0] > 150 && camera[1] < 90,
        "the red camera after the pause: {camera:?}"
    );
}

/// A pause is durable before it is answered: after a `kill -9` and recovery the instance is still
/// paused, and media that resumes flowing is still dropped until the resume.
#[test]
fn a_pause_survives_a_kill_9() {
    let _media = media_lock();
    let mut app = TestApp::spawn();
    let conference = unique("room");
    let event = app.start(&unique("pause"), &conference, false, true);
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=agent&type=CAM",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let mut a = lavfi_video(8);
    a.extend(rtp_out("0", "vp8", 96, answer_ports(&resp.text())[0]));
    let sender = ffmpeg(&a);
    wait_written(&app, 30);
    set_paused(&app, &event, true);
    app.restart();
    let after = app.instance(&event);
    assert_eq!(after["paused"], true, "{after:#}");
    assert_eq!(after["state"], "PENDING_RECOVERY", "{after:#}");
    // The sender kept sending to the re-bound ports; the rebuilt recorder drops it all.
    poll(Duration::from_secs(20), "media dropped after the restart", || {
        (track_counter(&app, "VIDEO", "num_frames_paused") >= 30).then_some(())
    });
    assert_eq!(track_counter(&app, "VIDEO", "num_frames_written"), 0);
    set_paused(&app, &event, false);
    poll(Duration::from_secs(20), "recording again after the resume", || {
        (track_counter(&app, "VIDEO", "num_frames_written") > 0).then_some(())
    });
    wait_ok(sender, "ffmpeg");
    let stopped = app.stop(&event);
    assert_eq!(stopped["state"], "STOPPED", "{stopped:#}");
    let instance = app.instance(&event);
    let intervals = instance["pauseIntervals"].as_array().cloned().unwrap_or_default();
    assert_eq!(intervals.len(), 1, "{instance:#}");
    assert!(intervals[0]["resumed"].is_string(), "{instance:#}");
}
