//! Plain RTP ingest with the FFmpeg CLI as the sender.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// Two participants at once: the agent publishes CAM (VP8) and MIC (Opus) as two streams from one
/// FFmpeg; the customer publishes CAM with VP8 + Opus in one stream and a SCREEN in H.264.
#[test]
fn two_participants_with_cam_mic_and_a_screen_are_recorded_track_by_track() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, true, true);
    assert_eq!(event["state"], "INITIALISED");

    let publish = |user: &str, kind: &str, lines: &[(&str, u8, &str)]| {
        let resp = app.publish(
            "rtp",
            &conference,
            &format!("userId={user}&type={kind}"),
            &format!("Bearer {KEY}"),
            "application/sdp",
            &rtp_offer(lines),
        );
        assert_eq!(resp.status, 201, "{}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/sdp"));
        assert!(
            resp.header("location").is_some_and(|l| l.contains("/media/rtp/")),
            "{:?}",
            resp.headers
        );
        let ports = answer_ports(&resp.text());
        assert!(
            ports.iter().all(|p| (app.rtp_ports.0..=app.rtp_ports.1).contains(p)),
            "{ports:?} outside {:?}",
            app.rtp_ports
        );
        ports
    };
    let agent_cam = publish("agent", "CAM", &[("video", 96, "VP8/90000")]);
    let agent_mic = publish("agent", "MIC", &[("audio", 111, "opus/48000/2")]);
    let customer_cam = publish(
        "customer",
        "CAM",
        &[("video", 96, "VP8/90000"), ("audio", 111, "opus/48000/2")],
    );
    let customer_screen = publish("customer", "SCREEN", &[("video", 97, "H264/90000")]);

    let seconds = 5;
    let mut agent = lavfi_av(seconds);
    agent.extend(rtp_out("0:v", "vp8", 96, agent_cam[0]));
    agent.extend(rtp_out("0:a", "opus", 111, agent_mic[0]));
    let mut customer = lavfi_av(seconds);
    customer.extend(rtp_out("0:v", "vp8", 96, customer_cam[0]));
    customer.extend(rtp_out("0:a", "opus", 111, customer_cam[1]));
    let mut screen = lavfi_video(seconds);
    screen.extend(rtp_out("0", "h264", 97, customer_screen[0]));
    let senders = [ffmpeg(&agent), ffmpeg(&customer), ffmpeg(&screen)];

    // While media flows: ACTIVE, and the debug tree shows each stream's counters.
    poll(Duration::from_secs(10), "instance ACTIVE", || {
        (app.instance(&event)["state"] == "ACTIVE").then_some(())
    });
    let live = [
        "num_packets",
        "num_bytes",
        "num_frames",
        "bitrate_bps",
        "num_frames_written",
    ];
    let streams = poll(Duration::from_secs(30), "every stream's counters moving", || {
        let streams = stream_snapshots(&app.debug_tree());
        (streams.len() == 4
            && streams.iter().all(|s| {
                live.iter()
                    .all(|name| s["counters"][name].as_u64().is_some_and(|v| v > 0))
            }))
        .then_some(streams)
    });
    for s in &streams {
        let c = &s["counters"];
        for name in ["num_lost", "num_keyframe_requests", "num_frames_dropped"] {
            assert!(c[name].is_u64(), "{name} in {s}");
        }
        // FFmpeg begins each stream with a keyframe (H.264: its SPS first) and loopback loses
        // nothing: no keyframe is asked for (a request there made Chromium drop two frames).
        assert_eq!(c["num_keyframe_requests"], 0, "{s}");
    }
    // The same counters reach Prometheus, summed over live streams.
    let metrics = app
        .request(
            "GET",
            &format!("{}/metrics", app.base_url),
            &[("Authorization", KEY_ADMIN)],
            None,
        )
        .text();
    let frames = metrics
        .lines()
        .find(|l| l.starts_with("recorder_media_live{counter=\"num_frames_written\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no media metric in:\n{metrics}"));
    assert!(frames > 0, "{metrics}");
    for (i, s) in senders.into_iter().enumerate() {
        wait_ok(s, &format!("ffmpeg sender {i}"));
    }
    let stopped = app.stop(&event);
    assert_eq!(stopped["state"], "STOPPED");

    let instance = app.instance(&event);
    assert_eq!(instance["streams"].as_array().unwrap().len(), 4, "{instance:#}");
    for s in instance["streams"].as_array().unwrap() {
        assert_eq!(s["state"], "STOPPED", "{s}");
    }
    let all = tracks(&instance);
    assert_eq!(all.len(), 5, "{all:#?}");
    let secs = f64::from(seconds);
    // Video: 30 fps; the file's duration runs from the first frame to the last (one interval less).
    let video_secs = secs - 1.0 / 30.0;
    assert_track(find_track(&all, "agent", "CAM", "VIDEO"), "vp8", 150, video_secs);
    assert_track(
        find_track(&all, "agent", "MIC", "AUDIO"),
        "opus",
        ffmpeg_opus_frames(seconds),
        secs,
    );
    assert_track(find_track(&all, "customer", "CAM", "VIDEO"), "vp8", 150, video_secs);
    assert_track(
        find_track(&all, "customer", "CAM", "AUDIO"),
        "opus",
        ffmpeg_opus_frames(seconds),
        secs,
    );
    assert_track(find_track(&all, "customer", "SCREEN", "VIDEO"), "h264", 150, video_secs);
    assert!(track_file(find_track(&all, "customer", "SCREEN", "VIDEO"))
        .extension()
        .is_some_and(|e| e == "mkv"));
    // One participant's audio and video start together, on the sender's clock (RTCP reports).
    // FFmpeg anchors each RTP output's reports at that output's first *sent* packet, so the
    // encoders' start-up latency — larger here, with three FFmpegs starting at once on a small
    // machine — shows up as skew (measured 20-70 ms). The recorder follows the reports; the 40 ms
    // bound is checked with WebRTC publishers (tests/media/whip.rs), whose reports follow capture.
    for user in ["agent", "customer"] {
        let audio_stream = if user == "agent" { "MIC" } else { "CAM" };
        let v = millis(&find_track(&all, user, "CAM", "VIDEO")["started"]);
        let a = millis(&find_track(&all, user, audio_stream, "AUDIO")["started"]);
        assert!((v - a).abs() <= 150, "{user}: video starts at {v}, audio at {a}");
    }
    assert!(instance["started"].is_string(), "ACTIVE set started: {instance}");
}

/// A publisher that goes away and comes back within the grace period continues its stream: one
/// stream, one file per track, the outage kept as a gap in time.
#[test]
fn a_publisher_that_returns_within_the_grace_period_continues_in_one_file() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, true, true);
    let offer = rtp_offer(&[("video", 96, "VP8/90000"), ("audio", 111, "opus/48000/2")]);
    let run = |seconds: u32| {
        let resp = app.publish(
            "rtp",
            &conference,
            "userId=agent&type=CAM",
            &format!("Bearer {KEY}"),
            "application/sdp",
            &offer,
        );
        assert_eq!(resp.status, 201, "{}", resp.text());
        let ports = answer_ports(&resp.text());
        let mut a = lavfi_av(seconds);
        a.extend(rtp_out("0:v", "vp8", 96, ports[0]));
        a.extend(rtp_out("0:a", "opus", 111, ports[1]));
        wait_ok(ffmpeg(&a), "ffmpeg");
        resp.header("location").expect("a location").to_string()
    };
    let first = run(2);
    let end = app.request(
        "DELETE",
        &format!("{}{first}", app.base_url),
        &[("Authorization", &format!("Bearer {KEY}"))],
        None,
    );
    assert_eq!(end.status, 200, "{}", end.text());
    std::thread::sleep(Duration::from_millis(1500));
    let second = run(2);
    assert_ne!(first, second, "a new session");
    app.stop(&event);

    let instance = app.instance(&event);
    assert_eq!(
        instance["streams"].as_array().unwrap().len(),
        1,
        "one stream across the reconnect: {instance:#}"
    );
    let all = tracks(&instance);
    assert_eq!(all.len(), 2);
    let video = probe(&track_file(find_track(&all, "agent", "CAM", "VIDEO")));
    let audio = probe(&track_file(find_track(&all, "agent", "CAM", "AUDIO")));
    assert!(video.num_frames >= 119 && video.num_frames <= 121, "{video:?}");
    assert!(audio.num_frames >= 198 && audio.num_frames <= 202, "{audio:?}");
    // 2 s, an outage of at least 1.5 s, 2 s more: the gap stays in the file.
    assert!(video.duration > 5.3 && video.duration < 8.0, "{video:?}");
    assert!(audio.duration > 5.3 && audio.duration < 8.0, "{audio:?}");
    assert!(video.first_is_keyframe);
    let dir = track_file(find_track(&all, "agent", "CAM", "VIDEO"))
        .parent()
        .unwrap()
        .to_path_buf();
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".seg"))
        .collect();
    assert!(leftovers.is_empty(), "segments are removed once joined: {leftovers:?}");
}

/// After the grace period a returning publisher starts a new stream; the old one is finalized.
#[test]
fn a_publisher_that_returns_after_the_grace_period_starts_a_new_stream() {
    let _media = media_lock();
    let app = TestApp::spawn_with("reconnect_grace_secs = 0");
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, true, true);
    let offer = rtp_offer(&[("video", 96, "VP8/90000")]);
    for round in 0..2 {
        let resp = app.publish(
            "rtp",
            &conference,
            "userId=agent&type=SCREEN",
            &format!("Bearer {KEY}"),
            "application/sdp",
            &offer,
        );
        assert_eq!(resp.status, 201, "{}", resp.text());
        let mut a = lavfi_video(1);
        a.extend(rtp_out("0", "vp8", 96, answer_ports(&resp.text())[0]));
        wait_ok(ffmpeg(&a), "ffmpeg");
        let location = resp.header("location").unwrap().to_string();
        let end = app.request(
            "DELETE",
            &format!("{}{location}", app.base_url),
            &[("Authorization", &format!("Bearer {KEY}"))],
            None,
        );
        assert_eq!(end.status, 200, "round {round}: {}", end.text());
        // The session's end reaches the recorder asynchronously: wait until it has.
        poll(Duration::from_secs(10), "the publisher disconnected", || {
            stream_snapshots(&app.debug_tree())
                .iter()
                .all(|s| s["counters"]["connected"] == 0)
                .then_some(())
        });
    }
    app.stop(&event);
    let instance = app.instance(&event);
    let streams = instance["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2, "two streams for one (userId, type): {instance:#}");
    for s in streams {
        assert_eq!(s["state"], "STOPPED");
        let track = &s["tracks"][0];
        let p = probe(&track_file(track));
        assert!(p.num_frames >= 29 && p.first_is_keyframe, "{p:?}");
    }
}

/// A crash (kill -9) while recording leaves the segment files readable up to the last flush;
/// after a restart the instance is PENDING_RECOVERY, a returning publisher continues the stream
/// (ACTIVE again, `recovered` set), and the stop joins what was written before and after.
#[test]
fn after_a_kill_9_the_files_hold_all_but_the_last_flush_and_recovery_joins_them() {
    let _media = media_lock();
    let mut app = TestApp::spawn();
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, true, true);
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=agent&type=CAM",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let port = answer_ports(&resp.text())[0];
    let mut a = lavfi_video(8);
    a.extend(rtp_out("0", "vp8", 96, port));
    let mut sender = ffmpeg(&a);
    // Count from the first frame written (ACTIVE), not from FFmpeg's start-up.
    poll(Duration::from_secs(10), "instance ACTIVE", || {
        (app.instance(&event)["state"] == "ACTIVE").then_some(())
    });
    // About 3 s of video recorded.
    wait_written(&app, 90);
    // What the recorder had handed to its writer just before the crash (the counter is
    // published every 250 ms, so it can only be lower than the truth).
    let streams = stream_snapshots(&app.debug_tree());
    let handed = streams[0]["counters"]["num_frames"].as_u64().expect("a frame counter");
    let killed_at = std::time::Instant::now();
    app.kill9();
    let _ = sender.kill();
    let _ = sender.wait();
    let media = app.root.join("data/media");
    let file = files_under(&media)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".seg0.webm"))
        .expect("a segment file");
    let p = probe(&file);
    assert_eq!(p.codec, "vp8");
    assert!(p.first_is_keyframe);
    // Flushed every 250 ms (the default): at most ~0.25 s (8 frames at 30 fps, plus the few
    // still queued for the writer) is lost.
    assert!(handed >= 30, "{handed} frames in 3 s");
    assert!(
        p.num_frames + 12 >= handed,
        "{p:?}: {handed} frames were handed to the writer before the crash"
    );

    app.restart();
    assert_eq!(app.instance(&event)["state"], "PENDING_RECOVERY");
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=agent&type=CAM",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let mut a = lavfi_video(2);
    a.extend(rtp_out("0", "vp8", 96, answer_ports(&resp.text())[0]));
    // The outage lasts at least from the kill to this sender's start.
    let outage = killed_at.elapsed().as_secs_f64();
    wait_ok(ffmpeg(&a), "ffmpeg after the restart");
    let active = app.instance(&event);
    assert_eq!(active["state"], "ACTIVE", "{active}");
    assert!(active["recovered"].is_string(), "{active}");
    app.stop(&event);
    let instance = app.instance(&event);
    assert_eq!(
        instance["streams"].as_array().unwrap().len(),
        1,
        "the returning publisher continued its stream: {instance:#}"
    );
    let joined = probe(&track_file(find_track(&tracks(&instance), "agent", "CAM", "VIDEO")));
    assert_eq!(joined.codec, "vp8");
    assert!(joined.first_is_keyframe);
    assert!(
        joined.num_frames >= p.num_frames + 59,
        "{joined:?}: {} before the crash + 60 after",
        p.num_frames
    );
    // Placed by wall time: the outage (restart, reconnect) stays a gap between the two parts:
    // what was kept before the crash, then at least the measured outage, then the 2 s after.
    let gap_floor = p.num_frames as f64 / 30.0 + outage + 2.0 - 0.150;
    assert!(
        joined.duration > gap_floor && joined.duration < 30.0,
        "{joined:?} vs at least {gap_floor} s"
    );
}

/// End to end with the default configuration: after stop every track file goes to the storage
/// profile, is verified there, and only then is deleted locally; `recording.json` comes last
/// and lists every track as uploaded. The stored files play.
#[test]
fn uploaded_tracks_play_from_the_storage_profile() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading();
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, true, true);
    let ports = publish_av_rtp(&app, &conference, "agent");
    let seconds = 3;
    let mut sender = lavfi_av(seconds);
    sender.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    sender.extend(rtp_out("0:a", "opus", 111, ports[1]));
    wait_ok(ffmpeg(&sender), "ffmpeg sender");
    assert_eq!(app.stop(&event)["state"], "STOPPED");

    let instance = poll(
        Duration::from_secs(60),
        "every track uploaded and deleted locally",
        || {
            let instance = app.instance(&event);
            let all = tracks(&instance);
            let done = all.len() == 2
                && all.iter().all(|(_, _, _, t)| {
                    t["storage"]["objectStorage"]["uploaded"].is_string()
                        && t["storage"]["localStorage"]["deleted"].is_string()
                });
            done.then_some(instance)
        },
    );
    let secs = f64::from(seconds);
    for (_, _, kind, track) in tracks(&instance) {
        let object = &track["storage"]["objectStorage"];
        assert!(object.get("error").is_none(), "{track}");
        let location = object["location"]
            .as_str()
            .unwrap_or_else(|| panic!("no location: {track}"));
        let stored = PathBuf::from(location.strip_prefix("file://").unwrap_or_else(|| panic!("{location}")));
        assert!(
            stored.starts_with(app.root.join("storage")),
            "{location} outside the profile"
        );
        let size: u64 = object["size"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        assert_eq!(std::fs::metadata(&stored).map(|m| m.len()).ok(), Some(size), "{track}");
        assert!(
            !track_file(&track).exists(),
            "the local file stays after a verified upload: {track}"
        );
        let p = probe(&stored);
        let (codec, expected) = if kind == "VIDEO" {
            ("vp8", secs - 1.0 / 30.0)
        } else {
            ("opus", secs)
        };
        assert_eq!(p.codec, codec, "{track}");
        assert!(
            (p.duration - expected).abs() <= 0.150,
            "duration {} vs {expected}: {track}",
            p.duration
        );
    }

    // The manifest is written after every other artefact, so it lists them all as uploaded.
    let manifest_path = app.root.join("storage").join(format!(
        "org-a/app-a/{}/{}/{}/recording.json",
        event["conversationId"].as_str().unwrap(),
        event["recorderId"].as_str().unwrap(),
        event["instanceId"].as_str().unwrap()
    ));
    let manifest: Value = poll(Duration::from_secs(30), "recording.json written", || {
        std::fs::read(&manifest_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    });
    assert_eq!(manifest["instanceId"], event["instanceId"], "{manifest:#}");
    assert_eq!(manifest["state"], "STOPPED", "{manifest:#}");
    let listed = tracks(&manifest);
    assert_eq!(listed.len(), 2, "{manifest:#}");
    for (_, _, _, t) in listed {
        assert!(t["storage"]["objectStorage"]["uploaded"].is_string(), "{t}");
    }
}

/// H.264 High with B-frames (what x264, hardware encoders and some SFUs' transcoders send) comes
/// in decode order with presentation times that go back: every frame is written, in
/// presentation order, and the file decodes without an error.
#[test]
fn h264_high_with_b_frames_keeps_every_frame() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conference = unique("bframes");
    let event = app.start(&unique("bframes-call"), &conference, false, true);
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=encoder&type=SCREEN",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 97, "H264/90000")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let port = answer_ports(&resp.text())[0];
    let seconds = 10;
    let mut a = lavfi_video(seconds);
    a.extend(args(&[
        "-c:v",
        "libx264",
        "-profile:v",
        "high",
        "-bf",
        "2",
        "-g",
        "60",
        "-preset",
        "veryfast",
        "-b:v",
        "500k",
        "-payload_type",
        "97",
        "-f",
        "rtp",
        &format!("rtp://127.0.0.1:{port}"),
    ]));
    wait_ok(ffmpeg(&a), "x264 sender");
    app.stop(&event);
    let instance = app.instance(&event);
    let all = tracks(&instance);
    let track = find_track(&all, "encoder", "SCREEN", "VIDEO");
    let path = track_file(track);
    // 30 fps for 10 s; the file from the first frame shown to the last.
    assert_track(track, "h264", 30 * u64::from(seconds), f64::from(seconds) - 1.0 / 30.0);
    // Shown in order: the presentation times, sorted, are one frame apart.
    let mut times = testkit::probe::packet_times(&path);
    let decode_order = times.clone();
    times.sort_by(f64::total_cmp);
    assert_ne!(times, decode_order, "the file keeps B-frames in decode order");
    assert!(
        times.windows(2).all(|w| ((w[1] - w[0]) - 1.0 / 30.0).abs() < 0.002),
        "frames one interval apart in presentation order: {times:?}"
    );
    assert_decodes(&path);
}
