//! A SIGTERM drain with media flowing: the node keeps recording through its drain, then each
//! stream finishes its segment files (every frame received written, where a crash loses what
//! was not flushed yet) and the process exits 0 with the instance still live in the store; the next start
//! re-binds the senders' ports, records on, and the stop joins both halves with no more loss
//! than the downtime between the exit and the restart.

use std::time::{Duration, Instant};

use crate::harness::*;

/// `ops.drain_timeout_secs` of this test's node.
const DRAIN_SECS: u64 = 3;

#[test]
fn a_sigterm_drains_completes_the_files_and_the_next_start_records_on() {
    let _media = media_lock();
    let drain = DRAIN_SECS.to_string();
    let mut app = TestApp::spawn_with_env(&[("RECORDER_OPS__DRAIN_TIMEOUT_SECS", &drain)]);
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, true, true);
    let ports = publish_av_rtp(&app, &conference, "agent");
    let seconds = 14;
    let mut a = lavfi_av(seconds);
    a.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    // A keyframe every 10 frames, as a WebRTC sender answering the restart's PLI would give.
    let gop = a.iter().position(|x| x == "-g").expect("a keyframe interval") + 1;
    a[gop] = "10".into();
    a.extend(rtp_out("0:a", "opus", 111, ports[1]));
    let sender = ffmpeg(&a);
    poll(Duration::from_secs(10), "instance ACTIVE", || {
        (app.instance(&event)["state"] == "ACTIVE").then_some(())
    });
    wait_written(&app, 60);

    app.send_sigterm();
    let signalled = Instant::now();
    let signalled_wall = chrono::Utc::now().timestamp_millis();
    // Draining: not ready, still recording.
    let ready = poll(Duration::from_secs(2), "/ready says draining", || {
        let ready = app.request("GET", &format!("{}/ready", app.base_url), &[], None);
        (ready.status == 503).then_some(ready)
    });
    assert!(ready.text().contains("draining"), "{}", ready.text());
    assert_eq!(app.instance(&event)["state"], "ACTIVE");
    let status = app.wait_exit(Duration::from_secs(DRAIN_SECS + 20));
    assert!(status.success(), "exit after the drain: {status:?}\n{}", app.stderr());
    assert!(
        signalled.elapsed() >= Duration::from_secs(DRAIN_SECS),
        "the live instance kept the node draining until its timeout"
    );
    // Every segment file is readable with its duration, and holds the media of the drain (the
    // segment began 2 s before the signal).
    let segments: Vec<_> = files_under(&app.root.join("data/media"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".seg"))
        .collect();
    assert_eq!(segments.len(), 2, "one segment per track: {segments:?}");
    for segment in &segments {
        let duration = container_duration(segment)
            .unwrap_or_else(|| panic!("{} was not completed: no duration", segment.display()));
        assert!(
            duration > DRAIN_SECS as f64,
            "{}: {duration} s, recorded through the drain",
            segment.display()
        );
    }

    let exited = Instant::now();
    app.restart();
    let downtime = exited.elapsed().as_secs_f64();
    let restarted_wall = chrono::Utc::now().timestamp_millis();
    poll(Duration::from_secs(5), "ACTIVE again with recovered", || {
        let instance = app.instance(&event);
        (instance["state"] == "ACTIVE" && instance["recovered"].is_string()).then_some(())
    });
    wait_ok(sender, "sender");
    let stopped = app.stop(&event);
    assert_eq!(stopped["state"], "STOPPED", "{stopped:#}");
    let instance = app.instance(&event);
    let all = tracks(&instance);
    for (track_kind, frame_secs) in [("VIDEO", 1.0 / 30.0), ("AUDIO", 0.020)] {
        let track = find_track(&all, "agent", "CAM", track_kind);
        assert!(millis(&track["started"]) < signalled_wall, "{track}");
        assert!(millis(&track["stopped"]) > restarted_wall + 1000, "{track}");
        let p = probe(&track_file(track));
        let lost = p.duration - p.num_frames as f64 * frame_secs;
        eprintln!("{track_kind}: {lost:.2} s lost, downtime {downtime:.2} s");
        assert!(
            lost <= downtime + 1.0,
            "{track_kind}: {lost:.2} s lost with {downtime:.2} s between the exit and the restart: {p:?}"
        );
        assert!(
            p.duration > f64::from(seconds) - 1.5,
            "{track_kind}: {p:?} spans the send"
        );
    }
}
