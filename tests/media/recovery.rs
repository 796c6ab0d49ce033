//! Crash recovery, black box: the real binary killed with `kill -9`, restarted on its data dir,
//! FFmpeg plain-RTP senders, ffprobe on what reached the storage profile.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// The stored copy of an uploaded track (LOCAL profile: a `file://` location).
fn stored_file(app: &TestApp, track: &Value) -> PathBuf {
    let location = track["storage"]["objectStorage"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("track not uploaded: {track}"));
    let stored = PathBuf::from(location.strip_prefix("file://").unwrap_or_else(|| panic!("{location}")));
    assert!(
        stored.starts_with(app.root.join("storage")),
        "{location} outside the profile"
    );
    stored
}

fn manifest_path(app: &TestApp, event: &Value) -> PathBuf {
    app.root.join("storage").join(format!(
        "org-a/app-a/{}/{}/{}/recording.json",
        event["conversationId"].as_str().unwrap(),
        event["recorderId"].as_str().unwrap(),
        event["instanceId"].as_str().unwrap()
    ))
}

/// No publisher comes back after a crash: once the recovery window has passed the instance is
/// ABORTED with an error, and what it recorded before the crash is still finalized, uploaded
/// (plays from the storage profile) and listed in `recording.json`. The conversation is free
/// for a new instance.
#[test]
fn with_no_publisher_back_within_the_window_the_instance_is_aborted_and_its_media_kept() {
    let _media = media_lock();
    let window_secs = 3;
    let mut app = TestApp::spawn_uploading_with(&format!("[recovery]\nwindow_secs = {window_secs}\n"));
    let conference = unique("room");
    let conversation = unique("call");
    let event = app.start(&conversation, &conference, true, true);
    let ports = publish_av_rtp(&app, &conference, "agent");
    let mut a = lavfi_av(10);
    a.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    a.extend(rtp_out("0:a", "opus", 111, ports[1]));
    let mut sender = ffmpeg(&a);
    poll(Duration::from_secs(10), "instance ACTIVE", || {
        (app.instance(&event)["state"] == "ACTIVE").then_some(())
    });
    // About 3 s of media recorded.
    wait_written(&app, 90);
    app.kill9();
    let _ = sender.kill();
    let _ = sender.wait();

    app.restart();
    let booted = Instant::now();
    assert_eq!(app.instance(&event)["state"], "PENDING_RECOVERY");
    // A new instance is refused while this one may still recover.
    let resp = app.post_json(
        "/recordings/start",
        KEY,
        &serde_json::json!({"applicationId": "app-a", "conferenceId": conference, "conversationId": conversation, "audio": true, "video": true}),
    );
    assert_eq!(resp.status, 409, "{}", resp.text());

    let aborted = poll(Duration::from_secs(30), "instance ABORTED", || {
        let instance = app.instance(&event);
        (instance["state"] == "ABORTED").then_some(instance)
    });
    assert!(
        booted.elapsed() >= Duration::from_secs(window_secs) - Duration::from_millis(200),
        "aborted after {:?}, before the {window_secs} s window",
        booted.elapsed()
    );
    let error = &aborted["error"];
    for field in ["code", "message", "occurred"] {
        assert!(error[field].as_str().is_some_and(|s| !s.is_empty()), "{aborted:#}");
    }
    assert_eq!(error["code"], "RECOVERY_WINDOW_EXPIRED", "{aborted:#}");
    assert!(aborted["recovered"].is_null(), "{aborted:#}");

    let instance = poll(Duration::from_secs(60), "every track uploaded", || {
        let instance = app.instance(&event);
        let all = tracks(&instance);
        let done = all.len() == 2
            && all
                .iter()
                .all(|(_, _, _, t)| t["storage"]["objectStorage"]["uploaded"].is_string());
        done.then_some(instance)
    });
    for (_, _, kind, track) in tracks(&instance) {
        let p = probe(&stored_file(&app, &track));
        let codec = if kind == "VIDEO" { "vp8" } else { "opus" };
        assert_eq!(p.codec, codec, "{track}");
        // 3 s were recorded before the kill; a flush each second keeps all but the last one.
        assert!(p.duration >= 1.5 && p.duration < 10.0, "{p:?}: {track}");
        assert!(p.num_frames > 0, "{p:?}");
    }
    let manifest: Value = poll(Duration::from_secs(30), "recording.json written", || {
        std::fs::read(manifest_path(&app, &event))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    });
    assert_eq!(manifest["state"], "ABORTED", "{manifest:#}");

    // The aborted call is composed like a stopped one, from the media it kept; its span ends
    // with its media, not when the recovery window ran out.
    let composed = wait_composed(&app, &conversation, &event["instanceId"]);
    assert_eq!(composed["instanceId"], event["instanceId"], "{composed:#}");
    let url = composed["streams"][0]["tracks"][0]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no composition url: {composed:#}"));
    let resp = app.request("GET", url, &[], None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let file = app.root.join("aborted-composition.mp4");
    std::fs::write(&file, &resp.body).unwrap();
    let p = probe(&file);
    assert!(p.num_frames > 0, "{p:?}");
    assert!(
        p.duration >= 1.5 && p.duration < 5.0,
        "the composition spans the ~3 s recorded before the kill, not the {window_secs} s window: {p:?}"
    );
    // The review page says the instance was aborted and why, on the composition's timeline.
    let link = app.get(&format!("/recordings/{conversation}/url/review"), KEY);
    assert_eq!(link.status, 200, "{}", link.text());
    let url = link.json()["url"].as_str().unwrap().replacen('?', "/data?", 1);
    let review = app.request("GET", &url, &[], None);
    assert_eq!(review.status, 200, "{}", review.text());
    let review = review.json();
    let shown = &review["instances"][0];
    assert_eq!(shown["state"], "ABORTED", "{review:#}");
    assert_eq!(shown["error"]["code"], "RECOVERY_WINDOW_EXPIRED", "{review:#}");
    assert_eq!(shown["placement"], "composed", "{review:#}");
    let length = review["duration"].as_f64().unwrap();
    assert!(
        (length - p.duration).abs() < 0.2,
        "the page's timeline ({length} s) is the composition's ({} s)",
        p.duration
    );

    // The conversation can record again.
    let next = app.start(&conversation, &conference, true, true);
    assert_eq!(next["state"], "INITIALISED", "{next}");
    assert_ne!(next["instanceId"], event["instanceId"]);
    assert_eq!(app.stop(&next)["state"], "STOPPED");
    // Stopping the aborted one again is idempotent.
    assert_eq!(app.stop(&event)["state"], "ABORTED");
}

/// Two FFmpeg plain-RTP senders keep sending across a `kill -9`: the restarted recorder re-binds
/// the ports they send to (latched to the same senders) and records again without a new offer.
/// The instance passes through PENDING_RECOVERY to ACTIVE with `recovered`; after stop each
/// track holds media from before and after the crash, and lost no more than the downtime + 1 s,
/// even when reading the files back after the restart is slow (the ports are bound first).
#[test]
fn senders_that_keep_sending_across_a_kill_9_are_recorded_again_on_the_same_ports() {
    let _media = media_lock();
    // Loss has three parts: what was not yet flushed at the kill (≤ the default 250 ms flush
    // interval), the downtime, and for video the wait for the next keyframe after the restart —
    // FFmpeg ignores PLI, so that is the sender's keyframe interval (10 frames, 0.33 s, as a
    // WebRTC sender's answer to a PLI would be). Default settings throughout.
    let mut app = TestApp::spawn();
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, true, true);
    let publish = |user: &str, kind: &str, line: (&str, u8, &str)| {
        let resp = app.publish(
            "rtp",
            &conference,
            &format!("userId={user}&type={kind}"),
            &format!("Bearer {KEY}"),
            "application/sdp",
            &rtp_offer(&[line]),
        );
        assert_eq!(resp.status, 201, "{}", resp.text());
        answer_ports(&resp.text())[0]
    };
    let video_port = publish("agent", "CAM", ("video", 96, "VP8/90000"));
    let audio_port = publish("customer", "MIC", ("audio", 111, "opus/48000/2"));
    let seconds = 12;
    let mut v = lavfi_video(seconds);
    v.extend(rtp_out("0", "vp8", 96, video_port));
    let gop = v.iter().position(|a| a == "-g").expect("a keyframe interval") + 1;
    v[gop] = "10".into();
    let mut a = args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("sine=frequency=440:sample_rate=48000:duration={seconds}"),
    ]);
    a.extend(rtp_out("0", "opus", 111, audio_port));
    let video_sender = ffmpeg(&v);
    let audio_sender = ffmpeg(&a);
    poll(Duration::from_secs(10), "instance ACTIVE", || {
        (app.instance(&event)["state"] == "ACTIVE").then_some(())
    });
    // About 3 s of media recorded.
    wait_written(&app, 90);
    let before = stream_snapshots(&app.debug_tree());
    assert_eq!(before.len(), 2);
    assert!(
        before.iter().all(|s| s["counters"]["num_frames"].as_u64() > Some(30)),
        "{before:#?}"
    );

    let killed_at = Instant::now();
    let killed_wall = chrono::Utc::now().timestamp_millis();
    // Reading the files back takes 3 s (a slow disk, many segments, many streams recovering at
    // once): the ports are bound before it, so the senders lose only the downtime.
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", "stream_restore=sleep3000")]);
    let downtime = killed_at.elapsed().as_secs_f64();
    let restarted_wall = chrono::Utc::now().timestamp_millis();
    let state = app.instance(&event)["state"].clone();
    assert!(
        state == "PENDING_RECOVERY" || state == "ACTIVE",
        "{state} right after the restart"
    );
    let recovered = poll(Duration::from_secs(15), "ACTIVE again with recovered", || {
        let instance = app.instance(&event);
        (instance["state"] == "ACTIVE" && instance["recovered"].is_string()).then_some(instance)
    });
    let back_after = killed_at.elapsed().as_secs_f64() - downtime;
    eprintln!("recording again {back_after:.2} s after the restart");
    assert_eq!(recovered["streams"].as_array().unwrap().len(), 2, "{recovered:#}");
    // The review page of the live, recovered instance says both.
    let link = app.get(
        &format!("/recordings/{}/url/review", event["conversationId"].as_str().unwrap()),
        KEY,
    );
    assert_eq!(link.status, 200, "{}", link.text());
    let review = app.request(
        "GET",
        &link.json()["url"].as_str().unwrap().replacen('?', "/data?", 1),
        &[],
        None,
    );
    assert_eq!(review.status, 200, "{}", review.text());
    let review = review.json();
    assert_eq!(review["live"], true, "{review:#}");
    assert_eq!(review["instances"][0]["placement"], "live", "{review:#}");
    assert_eq!(
        review["instances"][0]["recovered"], recovered["recovered"],
        "{review:#}"
    );
    // The debug tree shows the re-bound sessions connected.
    let streams = stream_snapshots(&app.debug_tree());
    assert!(streams.iter().all(|s| s["counters"]["connected"] == 1), "{streams:#?}");
    wait_ok(video_sender, "video sender");
    wait_ok(audio_sender, "audio sender");
    let stopped = app.stop(&event);
    assert_eq!(stopped["state"], "STOPPED", "{stopped:#}");
    let instance = app.instance(&event);
    assert_eq!(
        instance["streams"].as_array().unwrap().len(),
        2,
        "no new stream: {instance:#}"
    );
    let all = tracks(&instance);
    for (user, kind, track_kind, frame_secs) in [
        ("agent", "CAM", "VIDEO", 1.0 / 30.0),
        ("customer", "MIC", "AUDIO", 0.020),
    ] {
        let track = find_track(&all, user, kind, track_kind);
        // Media from before the crash and from after the restart, in one file.
        assert!(millis(&track["started"]) < killed_wall, "{track}");
        assert!(millis(&track["stopped"]) > restarted_wall + 1000, "{track}");
        let p = probe(&track_file(track));
        let media_secs = p.num_frames as f64 * frame_secs;
        let lost = p.duration - media_secs;
        eprintln!("{user} {track_kind}: {lost:.2} s lost, downtime {downtime:.2} s");
        assert!(
            lost <= downtime + 1.0,
            "{user} {track_kind}: {lost:.2} s lost, downtime {downtime:.2} s: {p:?}"
        );
        assert!(
            p.duration > f64::from(seconds) - 1.5,
            "{user}: {p:?} spans the whole send"
        );
    }
}

/// `kill -9` during a stop: the stop has finalized the track files and is about to commit
/// STOPPED when the process is killed (an injected `stall` holds it at exactly that step, and the
/// test sends SIGKILL to the whole service). Boot finishes the stop: the instance is STOPPED with
/// no publisher and no second stop, each track is uploaded once and plays, `recording.json` says
/// STOPPED.
#[test]
fn a_stop_interrupted_by_a_kill_9_is_finished_on_boot_and_uploaded_once() {
    let _media = media_lock();
    let mut app = TestApp::spawn_uploading();
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", "finalize=stall")]);
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, true, true);
    let ports = publish_av_rtp(&app, &conference, "agent");
    let mut a = lavfi_av(3);
    a.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    a.extend(rtp_out("0:a", "opus", 111, ports[1]));
    wait_ok(ffmpeg(&a), "ffmpeg sender");
    // The stop never answers: the process is killed inside it.
    let url = app.api(&format!("{}/stop", instance_path(&event)));
    let stop = std::thread::spawn({
        let url = url.clone();
        move || ureq::post(&url).set("Authorization", KEY).send_bytes(b"").is_ok()
    });
    poll(
        Duration::from_secs(20),
        "the stop held after finalizing the files",
        || app.stderr().contains("fault injected").then_some(()),
    );
    // The files are final (joined, renamed into place) and STOPPED is not committed.
    let files = files_under(&app.root.join("data"));
    let joined = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "webm") && !p.to_string_lossy().contains(".seg"))
        .count();
    // (The API cannot be asked now: the stalled step holds the actors' arbiter.)
    assert_eq!(joined, 2, "the final track files: {files:#?}");
    app.kill9();
    assert!(
        !stop.join().unwrap(),
        "the stop answered although the process was killed inside it"
    );

    app.restart_with_env(&[]);
    let instance = poll(Duration::from_secs(30), "the interrupted stop finished", || {
        let instance = app.instance(&event);
        (instance["state"] == "STOPPED").then_some(instance)
    });
    assert_eq!(tracks(&instance).len(), 2, "{instance:#}");
    let instance = poll(Duration::from_secs(60), "every track uploaded", || {
        let instance = app.instance(&event);
        tracks(&instance)
            .iter()
            .all(|(_, _, _, t)| t["storage"]["objectStorage"]["uploaded"].is_string())
            .then_some(instance)
    });
    for (_, _, kind, track) in tracks(&instance) {
        let p = probe(&stored_file(&app, &track));
        let (codec, expected) = if kind == "VIDEO" {
            ("vp8", 3.0 - 1.0 / 30.0)
        } else {
            ("opus", 3.0)
        };
        assert_eq!(p.codec, codec, "{track}");
        assert!((p.duration - expected).abs() <= 0.150, "{p:?}: {track}");
    }
    // One object per track in the profile: nothing uploaded twice under another name.
    let stored = files_under(&app.root.join("storage"));
    let media: Vec<_> = stored
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "webm" || e == "mkv"))
        .collect();
    assert_eq!(media.len(), 2, "{stored:#?}");
    let manifest: Value = poll(Duration::from_secs(30), "recording.json written", || {
        std::fs::read(manifest_path(&app, &event))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    });
    assert_eq!(manifest["state"], "STOPPED", "{manifest:#}");
    // The conversation is free again, and a second stop answers the same final state.
    assert_eq!(app.stop(&event)["state"], "STOPPED");
}

/// Supervision: a track writer that panics (injected at the muxer write of H.264 tracks, the
/// only `.mkv` files here) restarts its stream into a new segment on the same ports; the
/// instance passes through PENDING_RECOVERY back to ACTIVE with `recovered`; the debug tree
/// shows the restart. Another conversation records on untouched.
#[test]
fn a_writer_panic_restarts_the_stream_and_other_conversations_keep_recording() {
    let _media = media_lock();
    let mut app = TestApp::spawn();
    // 45 frames (1.5 s) are written before the panic.
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", "muxer_write@.mkv=panic*1+45")]);
    let (failing, healthy) = (unique("room"), unique("room"));
    let a = app.start(&unique("call"), &failing, false, true);
    let b = app.start(&unique("call"), &healthy, false, true);
    let seconds = 7;
    let mut x = lavfi_video(seconds);
    x.extend(rtp_out(
        "0",
        "h264",
        96,
        publish_rtp(&app, &failing, "agent", "CAM", ("video", 96, "H264/90000")),
    ));
    let (x, y) = (ffmpeg(&x), send_vp8_cam(&app, &healthy, "agent", seconds));
    let recovered = poll(Duration::from_secs(15), "the failing instance recovered", || {
        let instance = app.instance(&a);
        (instance["state"] == "ACTIVE" && instance["recovered"].is_string()).then_some(instance)
    });
    assert_eq!(recovered["streams"].as_array().unwrap().len(), 1, "{recovered:#}");
    let tree = app.debug_tree();
    let streams = stream_snapshots(&tree);
    let restarted: Vec<_> = streams.iter().filter(|s| s["restarts"] == 1).collect();
    assert_eq!(restarted.len(), 1, "{streams:#?}");
    assert_eq!(restarted[0]["lastError"]["code"], "MEDIA_WRITE", "{streams:#?}");
    assert_eq!(restarted[0]["state"], "RECORDING");
    // The recorder above it counts the restart, and how long it has been in its state.
    fn recorders(node: &Value, out: &mut Vec<Value>) {
        if node["kind"] == "Recorder" {
            out.push(node.clone());
        }
        for child in node["children"].as_array().into_iter().flatten() {
            recorders(child, out);
        }
    }
    let mut all = Vec::new();
    recorders(&tree, &mut all);
    let recorder = all
        .iter()
        .find(|r| r["id"] == recovered["instanceId"])
        .unwrap_or_else(|| panic!("{tree:#}"));
    assert_eq!(recorder["restarts"], 1, "{recorder:#}");
    assert_eq!(recorder["state"], "ACTIVE", "{recorder:#}");
    assert!(recorder["counters"]["millis_in_state"].is_u64(), "{recorder:#}");
    // The same as metrics: time in state per state, restarts and actors with an error set.
    let scrape = || {
        let resp = app.request(
            "GET",
            &format!("{}/metrics", app.base_url),
            &[("Authorization", KEY_ADMIN)],
            None,
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.text()
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    // The healthy conversation's own live figures (the debug tree splits `/metrics`' sums per
    // instance) keep growing after the other's writer panicked.
    let healthy_id = app.instance(&b)["instanceId"].clone();
    let frames_written = |tree: &Value| -> u64 {
        let mut all = Vec::new();
        recorders(tree, &mut all);
        let recorder = all
            .iter()
            .find(|r| r["id"] == healthy_id)
            .unwrap_or_else(|| panic!("{tree:#}"));
        recorder["children"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["counters"]["num_frames_written"].as_u64().unwrap_or(0))
            .sum()
    };
    let before = scrape();
    let healthy_before = frames_written(&app.debug_tree());
    assert!(
        value(&before, "recorder_actor_restarts{kind=\"Stream\"}") >= 1.0,
        "{before}"
    );
    assert!(
        value(&before, "recorder_actor_restarts{kind=\"Recorder\"}") >= 1.0,
        "{before}"
    );
    assert!(
        value(&before, "recorder_actors_with_last_error{kind=\"Stream\"}") >= 1.0,
        "{before}"
    );
    let healthy_after = poll(Duration::from_secs(15), "the healthy conversation writing on", || {
        let written = frames_written(&app.debug_tree());
        (written > healthy_before).then_some(written)
    });
    let after = scrape();
    assert!(
        healthy_after > healthy_before,
        "healthy conversation: {healthy_before} then {healthy_after} frames written"
    );
    // Both instances record (ACTIVE) and their time in state grows; so do the frames written
    // while one conversation's writer has panicked and restarted.
    let active = "recorder_instance_state_seconds{state=\"ACTIVE\"}";
    assert!(value(&before, active) > 0.0, "{before}");
    assert!(value(&after, active) > value(&before, active), "{before}\n{after}");
    let written = "recorder_media_live{counter=\"num_frames_written\"}";
    assert!(value(&after, written) > value(&before, written), "{before}\n{after}");
    wait_ok(x, "h264 sender");
    wait_ok(y, "vp8 sender");
    let untouched = app.instance(&b);
    assert!(untouched["recovered"].is_null(), "{untouched:#}");
    assert_eq!(app.stop(&a)["state"], "STOPPED");
    assert_eq!(app.stop(&b)["state"], "STOPPED");
    let a = app.instance(&a);
    let b = app.instance(&b);
    assert_eq!(a["streams"][0]["state"], "STOPPED", "{a:#}");
    // The failed segment's flushed part and the restarted one, joined on one timeline.
    let failed_track = probe(&track_file(find_track(&tracks(&a), "agent", "CAM", "VIDEO")));
    assert_eq!(failed_track.codec, "h264");
    assert!(failed_track.num_frames >= 90, "{failed_track:?}");
    assert!(
        failed_track.duration >= f64::from(seconds) - 1.5,
        "{failed_track:?} spans the panic"
    );
    let healthy_track = probe(&track_file(find_track(&tracks(&b), "agent", "CAM", "VIDEO")));
    assert!(
        healthy_track.num_frames as f64 >= 0.95 * f64::from(seconds * 30),
        "{healthy_track:?}"
    );
}

/// Supervision budget: a writer that fails every time (H.264 tracks here) is restarted
/// `max_restarts` times, then its stream is FAILED — in the API and in the debug tree, with the
/// error — while the instance's other stream records on; an instance whose only stream failed is
/// ABORTED with the error. Another conversation keeps recording.
#[test]
fn an_exhausted_restart_budget_fails_the_stream_and_aborts_an_instance_left_without_one() {
    let _media = media_lock();
    let mut app = TestApp::spawn_with("[recovery]\nmax_restarts = 2\n");
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", "muxer_write@.mkv=panic")]);
    let (only_h264, mixed, healthy) = (unique("room"), unique("room"), unique("room"));
    let a = app.start(&unique("call"), &only_h264, true, true);
    let c = app.start(&unique("call"), &mixed, true, true);
    let b = app.start(&unique("call"), &healthy, true, true);
    let publish = |conference: &str, kind: &str, line| publish_rtp(&app, conference, "agent", kind, line);
    let seconds = 8;
    let mut x = lavfi_video(seconds);
    x.extend(rtp_out(
        "0",
        "h264",
        96,
        publish(&only_h264, "CAM", ("video", 96, "H264/90000")),
    ));
    let mut z = lavfi_av(seconds);
    z.extend(rtp_out(
        "0:v",
        "h264",
        96,
        publish(&mixed, "CAM", ("video", 96, "H264/90000")),
    ));
    z.extend(rtp_out(
        "0:a",
        "opus",
        111,
        publish(&mixed, "MIC", ("audio", 111, "opus/48000/2")),
    ));
    let senders = [ffmpeg(&x), ffmpeg(&z), send_vp8_cam(&app, &healthy, "agent", seconds)];

    let aborted = poll(Duration::from_secs(20), "the H.264-only instance ABORTED", || {
        let instance = app.instance(&a);
        (instance["state"] == "ABORTED").then_some(instance)
    });
    assert_eq!(aborted["error"]["code"], "RESTART_BUDGET_EXHAUSTED", "{aborted:#}");
    assert_eq!(aborted["streams"][0]["state"], "FAILED", "{aborted:#}");
    assert_only_the_mixed_cam_failed(&app, &c, Duration::from_secs(20));
    // And as metrics (live instances' streams: the mixed one's failed CAM stream).
    let metrics = app.request(
        "GET",
        &format!("{}/metrics", app.base_url),
        &[("Authorization", KEY_ADMIN)],
        None,
    );
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    let text = metrics.text();
    assert!(
        text.contains("recorder_media_live{counter=\"num_restarts\"} 2"),
        "{text}"
    );
    assert!(text.contains("recorder_media_live{counter=\"num_failed\"} 1"), "{text}");
    for sender in senders {
        wait_ok(sender, "sender");
    }
    let b_stopped = app.stop(&b);
    assert_eq!(b_stopped["state"], "STOPPED");
    let b = app.instance(&b);
    assert!(b["recovered"].is_null(), "{b:#}");
    let healthy_track = probe(&track_file(find_track(&tracks(&b), "agent", "CAM", "VIDEO")));
    assert!(
        healthy_track.num_frames as f64 >= 0.95 * f64::from(seconds * 30),
        "{healthy_track:?}"
    );
    let c_stopped = app.stop(&c);
    assert_eq!(c_stopped["state"], "STOPPED", "{c_stopped:#}");
    let c = app.instance(&c);
    let audio = probe(&track_file(find_track(&tracks(&c), "agent", "MIC", "AUDIO")));
    assert!(audio.duration >= f64::from(seconds) - 0.5, "{audio:?}");
}

/// Fault injection at the state commit: a start whose record cannot be written is answered
/// with an error and leaves nothing behind; the next start works.
#[test]
fn a_failed_state_commit_is_an_error_and_leaves_nothing_half_written() {
    let mut app = TestApp::spawn();
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", "state_commit=error*1")]);
    let conversation = unique("call");
    let body = serde_json::json!({"applicationId": "app-a", "conferenceId": unique("room"), "conversationId": conversation, "audio": true, "video": true});
    let refused = app.post_json("/recordings/start", KEY, &body);
    let error = refused.assert_error(refused.status);
    assert!(refused.status >= 500, "{}", refused.text());
    // The client hears of an unavailable state store; the cause (here the injected fault)
    // is in the log, not in the answer.
    assert!(error["message"].as_str().unwrap().contains("state store"), "{error}");
    assert!(!error["message"].as_str().unwrap().contains("injected"), "{error}");
    assert!(app.wait_stderr("injected"), "the log names the cause: {}", app.stderr());
    assert_eq!(
        app.get(&format!("/recordings/{conversation}"), KEY).status,
        404,
        "no instance was recorded"
    );
    let started = app.post_json("/recordings/start", KEY, &body);
    assert_eq!(started.status, 200, "{}", started.text());
    assert_eq!(app.stop(&started.json())["state"], "STOPPED");
}

/// Fault injection at the upload of a track: two failed attempts are retried with backoff and
/// the third stores the file, verified, once.
#[test]
fn failed_track_uploads_are_retried_until_stored() {
    let _media = media_lock();
    let mut app = TestApp::spawn_uploading();
    app.restart_with_env(&[
        ("RTC_RECORDER_FAULTS", "upload_part@/streams/=error*2"),
        ("RECORDER_UPLOADS__RETRY_BASE_MS", "100"),
        ("RECORDER_UPLOADS__RETRY_MAX_MS", "400"),
    ]);
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, false, true);
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
    wait_ok(ffmpeg(&a), "ffmpeg sender");
    assert_eq!(app.stop(&event)["state"], "STOPPED");
    let instance = poll(Duration::from_secs(30), "the track uploaded", || {
        let instance = app.instance(&event);
        tracks(&instance)
            .iter()
            .all(|(_, _, _, t)| t["storage"]["objectStorage"]["uploaded"].is_string())
            .then_some(instance)
    });
    let track = find_track(&tracks(&instance), "agent", "CAM", "VIDEO").clone();
    assert!(track["storage"]["objectStorage"].get("error").is_none(), "{track}");
    assert_eq!(probe(&stored_file(&app, &track)).codec, "vp8");
    assert!(app.wait_stderr("fault injected"), "the fault never fired");
}

/// `kill -9` while the project's WHIP publisher (webrtc-rs) streams; after the restart it
/// reconnects with a new WHIP POST for the same conference, userId and type: the instance is
/// ACTIVE with `recovered`, the stream continues, and after stop each track holds media from
/// before and after the crash with the outage as a gap.
#[test]
fn a_whip_publisher_that_reconnects_after_a_kill_9_continues_its_stream() {
    let _media = media_lock();
    let mut app = TestApp::spawn();
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, true, true);
    let whip = |app: &TestApp, seconds: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_whip-publish"))
            .arg(app.api(&format!("/media/whip/{conference}?userId=agent&type=CAM")))
            .args(["--token", KEY, "--seconds", seconds, "--keep"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("whip-publish runs")
    };
    let mut first = whip(&app, "10");
    poll(Duration::from_secs(15), "instance ACTIVE", || {
        (app.instance(&event)["state"] == "ACTIVE").then_some(())
    });
    // About 3 s of media recorded.
    wait_written(&app, 90);
    let killed_wall = chrono::Utc::now().timestamp_millis();
    app.restart();
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(app.instance(&event)["state"], "PENDING_RECOVERY");
    let restarted_wall = chrono::Utc::now().timestamp_millis();
    let mut second = whip(&app, "3");
    let active = poll(Duration::from_secs(15), "ACTIVE again with recovered", || {
        let instance = app.instance(&event);
        (instance["state"] == "ACTIVE" && instance["recovered"].is_string()).then_some(instance)
    });
    assert_eq!(active["streams"].as_array().unwrap().len(), 1, "{active:#}");
    // About 3 s more recorded by the restarted process.
    wait_written(&app, 90);
    app.stop(&event);
    let _ = second.kill();
    let _ = second.wait();
    let instance = app.instance(&event);
    assert_eq!(instance["streams"].as_array().unwrap().len(), 1, "{instance:#}");
    let all = tracks(&instance);
    for kind in ["VIDEO", "AUDIO"] {
        let track = find_track(&all, "agent", "CAM", kind);
        assert!(millis(&track["started"]) < killed_wall, "{track}");
        assert!(millis(&track["stopped"]) > restarted_wall + 1000, "{track}");
        let p = probe(&track_file(track));
        let gap_secs = (restarted_wall - killed_wall) as f64 / 1000.0;
        // ~3 s before (less the unflushed last second), the outage, ~3 s after.
        assert!(p.duration > 4.0 + gap_secs, "{kind}: {p:?}");
    }
}

/// The Recorder snapshots in the debug tree.
fn recorder_snapshots(tree: &Value) -> Vec<Value> {
    snapshots_of(tree, "Recorder")
}

/// One series of `/metrics` (admin key); `None` when it is not exported.
fn metric(app: &TestApp, series: &str) -> Option<f64> {
    let resp = app.request(
        "GET",
        &format!("{}/metrics", app.base_url),
        &[("Authorization", KEY_ADMIN)],
        None,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Publishes one plain-RTP m-line for `user`'s `kind` stream; answers the port to send to.
fn publish_rtp(app: &TestApp, conference: &str, user: &str, kind: &str, line: (&str, u8, &str)) -> u16 {
    let resp = app.publish(
        "rtp",
        conference,
        &format!("userId={user}&type={kind}"),
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[line]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    answer_ports(&resp.text())[0]
}

/// The budget tests' mixed instance `c` (a CAM and a MIC stream): its CAM stream ends FAILED
/// after two restarts with `RESTART_BUDGET_EXHAUSTED`, its MIC keeps the instance recording, and
/// that CAM stream is the only failed stream in the debug tree.
fn assert_only_the_mixed_cam_failed(app: &TestApp, c: &Value, timeout: Duration) {
    let mixed_now = poll(timeout, "the mixed instance's CAM FAILED", || {
        let instance = app.instance(c);
        let cam_failed = instance["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["type"] == "CAM" && s["state"] == "FAILED");
        cam_failed.then_some(instance)
    });
    assert_ne!(mixed_now["state"], "ABORTED", "its MIC still records: {mixed_now:#}");
    let tree = app.debug_tree();
    let failed: Vec<_> = stream_snapshots(&tree)
        .into_iter()
        .filter(|s| s["state"] == "FAILED")
        .collect();
    assert_eq!(failed.len(), 1, "the mixed instance's CAM stream: {tree:#}");
    assert_eq!(failed[0]["restarts"], 2, "{failed:#?}");
    assert_eq!(
        failed[0]["lastError"]["code"], "RESTART_BUDGET_EXHAUSTED",
        "{failed:#?}"
    );
}

/// Starts an FFmpeg sender of `seconds` of VP8 to a new plain-RTP CAM stream of `user` in
/// `conference`.
fn send_vp8_cam(app: &TestApp, conference: &str, user: &str, seconds: u32) -> std::process::Child {
    let mut args = lavfi_video(seconds);
    args.extend(rtp_out(
        "0",
        "vp8",
        96,
        publish_rtp(app, conference, user, "CAM", ("video", 96, "VP8/90000")),
    ));
    ffmpeg(&args)
}

/// Stops the recovered instance `a` and the untouched `b` (one VP8 camera of "agent" each, sent
/// for `seconds`): `a`'s track holds media from well before to well after its recovery, `b` never
/// recovered and holds the whole send. Answers `a` as stopped.
fn stop_recovered_beside_healthy(app: &TestApp, a: &Value, b: &Value, seconds: u32) -> Value {
    assert_eq!(app.stop(a)["state"], "STOPPED");
    assert_eq!(app.stop(b)["state"], "STOPPED");
    let a = app.instance(a);
    let b = app.instance(b);
    assert_spans(
        find_track(&tracks(&a), "agent", "CAM", "VIDEO"),
        &a["recovered"],
        seconds,
    );
    assert!(b["recovered"].is_null(), "{b:#}");
    let healthy_track = probe(&track_file(find_track(&tracks(&b), "agent", "CAM", "VIDEO")));
    assert!(
        healthy_track.num_frames as f64 >= 0.95 * f64::from(seconds * 30),
        "{healthy_track:?}"
    );
    a
}

/// A track that holds media from well before `at` to well after it, in one file.
fn assert_spans(track: &Value, at: &Value, seconds_sent: u32) {
    let at = millis(at);
    assert!(millis(&track["started"]) < at - 1000, "{track} starts before {at}");
    assert!(millis(&track["stopped"]) > at + 1000, "{track} goes on after {at}");
    let p = probe(&track_file(track));
    assert_eq!(p.codec, "vp8", "{track}");
    // What was lost: the restart (ingest stopped, files completed, ports re-bound) and the
    // wait for the next keyframe (1 s GOP).
    assert!(p.duration >= f64::from(seconds_sent) - 2.5, "{p:?}: {track}");
    assert!(
        p.num_frames as f64 >= 0.6 * f64::from(seconds_sent * 30),
        "{p:?}: {track}"
    );
}

/// Actor supervision: a panic inside a Stream actor's handler (injected at its supervision
/// tick, for one conversation only) stops that actor; its recorder rebuilds the stream from its
/// record, re-binding the same ports into a new segment. The instance passes through
/// PENDING_RECOVERY back to ACTIVE with `recovered`; the debug tree and the restart counter show
/// it; the other conversation records on untouched; after stop the track holds media from
/// before and after the panic.
#[test]
fn a_panic_in_a_stream_handler_restarts_the_stream_from_its_record_and_other_conversations_keep_recording() {
    let _media = media_lock();
    let mut app = TestApp::spawn();
    let (failing_call, healthy_call) = (unique("call"), unique("call"));
    // 15 ticks of 200 ms after the stream started: ~3 s of media before the panic.
    let faults = format!("stream_handler@{failing_call} agent/CAM SupervisionTick=panic*1+15");
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", &faults)]);
    let restarts_before = metric(&app, "recorder_actor_restarts_total{kind=\"Stream\"}").unwrap_or(0.0);
    let (failing, healthy) = (unique("room"), unique("room"));
    let a = app.start(&failing_call, &failing, false, true);
    let b = app.start(&healthy_call, &healthy, false, true);
    let seconds = 12;
    let (x, y) = (
        send_vp8_cam(&app, &failing, "agent", seconds),
        send_vp8_cam(&app, &healthy, "agent", seconds),
    );
    let recovered = poll(Duration::from_secs(20), "the failing instance recovered", || {
        let instance = app.instance(&a);
        (instance["state"] == "ACTIVE" && instance["recovered"].is_string()).then_some(instance)
    });
    assert_eq!(recovered["streams"].as_array().unwrap().len(), 1, "{recovered:#}");
    assert_eq!(recovered["streams"][0]["state"], "RECORDING", "{recovered:#}");
    let tree = app.debug_tree();
    let restarted: Vec<_> = stream_snapshots(&tree)
        .into_iter()
        .filter(|s| s["restarts"].as_u64().unwrap_or(0) >= 1)
        .collect();
    assert_eq!(restarted.len(), 1, "{tree:#}");
    assert_eq!(restarted[0]["lastError"]["code"], "ACTOR_FAILED", "{restarted:#?}");
    assert_eq!(restarted[0]["state"], "RECORDING", "{restarted:#?}");
    assert!(restarted[0]["counters"]["millis_in_state"].is_u64(), "{restarted:#?}");
    let recorder = recorder_snapshots(&tree)
        .into_iter()
        .find(|r| r["id"] == recovered["instanceId"])
        .unwrap_or_else(|| panic!("{tree:#}"));
    assert_eq!(recorder["restarts"], 1, "{recorder:#}");
    assert_eq!(recorder["lastError"]["code"], "ACTOR_FAILED", "{recorder:#}");
    // Exactly one panic was injected: one failure counted, one restart.
    let restarts_after = metric(&app, "recorder_actor_restarts_total{kind=\"Stream\"}").expect("restart counter");
    assert_eq!(restarts_after, restarts_before + 1.0, "one stream restart");
    let failures = metric(&app, "recorder_actor_failures_total{kind=\"Stream\"}").expect("failure counter");
    assert_eq!(failures, 1.0, "one stream handler failure");
    wait_ok(x, "failing conversation's sender");
    wait_ok(y, "healthy conversation's sender");
    let a = stop_recovered_beside_healthy(&app, &a, &b, seconds);
    assert_eq!(a["streams"][0]["state"], "STOPPED", "{a:#}");
}

/// Actor supervision budget: a Stream actor whose handler panics every time is rebuilt
/// `max_restarts` times, then FAILED — in the API and the debug tree — and what it recorded is
/// still finalized; an instance whose only stream failed is ABORTED with the error, one with
/// another stream recording goes on. The restart counter keeps the restarts of the aborted
/// instance. Another conversation keeps recording.
#[test]
fn stream_handler_panics_beyond_the_budget_fail_the_stream_and_abort_an_instance_left_without_one() {
    let _media = media_lock();
    let mut app = TestApp::spawn_with("[recovery]\nmax_restarts = 2\n");
    // The CAM streams of user "crashy" (two of them, whose ticks count down one skip) panic at
    // every supervision tick once ~2 s have passed.
    app.restart_with_env(&[(
        "RTC_RECORDER_FAULTS",
        "stream_handler@crashy/CAM SupervisionTick=panic+20",
    )]);
    let restarts_before = metric(&app, "recorder_actor_restarts_total{kind=\"Stream\"}").unwrap_or(0.0);
    let (only_cam, mixed, healthy) = (unique("room"), unique("room"), unique("room"));
    let a = app.start(&unique("call"), &only_cam, false, true);
    let c = app.start(&unique("call"), &mixed, true, true);
    let b = app.start(&unique("call"), &healthy, false, true);
    let seconds = 8;
    let mut z = lavfi_av(seconds);
    z.extend(rtp_out(
        "0:v",
        "vp8",
        96,
        publish_rtp(&app, &mixed, "crashy", "CAM", ("video", 96, "VP8/90000")),
    ));
    z.extend(rtp_out(
        "0:a",
        "opus",
        111,
        publish_rtp(&app, &mixed, "crashy", "MIC", ("audio", 111, "opus/48000/2")),
    ));
    let senders = [
        send_vp8_cam(&app, &only_cam, "crashy", seconds),
        ffmpeg(&z),
        send_vp8_cam(&app, &healthy, "agent", seconds),
    ];

    let aborted = poll(Duration::from_secs(30), "the CAM-only instance ABORTED", || {
        let instance = app.instance(&a);
        (instance["state"] == "ABORTED").then_some(instance)
    });
    assert_eq!(aborted["error"]["code"], "RESTART_BUDGET_EXHAUSTED", "{aborted:#}");
    for field in ["message", "occurred"] {
        assert!(
            aborted["error"][field].as_str().is_some_and(|s| !s.is_empty()),
            "{aborted:#}"
        );
    }
    assert_eq!(aborted["streams"][0]["state"], "FAILED", "{aborted:#}");
    // A crash never deletes media: what the stream recorded before its failures is finalized.
    let kept = probe(&track_file(find_track(&tracks(&aborted), "crashy", "CAM", "VIDEO")));
    assert!(kept.num_frames > 0, "{kept:?}");
    assert_only_the_mixed_cam_failed(&app, &c, Duration::from_secs(30));
    // The counter outlives the aborted instance: both instances' rebuilds are in it.
    let restarts_after = metric(&app, "recorder_actor_restarts_total{kind=\"Stream\"}").expect("restart counter");
    assert!(
        restarts_after >= restarts_before + 4.0,
        "{restarts_before} then {restarts_after}"
    );
    for sender in senders {
        wait_ok(sender, "sender");
    }
    assert_eq!(app.stop(&b)["state"], "STOPPED");
    let b = app.instance(&b);
    assert!(b["recovered"].is_null(), "{b:#}");
    let healthy_track = probe(&track_file(find_track(&tracks(&b), "agent", "CAM", "VIDEO")));
    assert!(
        healthy_track.num_frames as f64 >= 0.95 * f64::from(seconds * 30),
        "{healthy_track:?}"
    );
    let c_stopped = app.stop(&c);
    assert_eq!(c_stopped["state"], "STOPPED", "{c_stopped:#}");
    let c = app.instance(&c);
    let audio = probe(&track_file(find_track(&tracks(&c), "crashy", "MIC", "AUDIO")));
    assert!(audio.duration >= f64::from(seconds) - 0.5, "{audio:?}");
}

/// Actor supervision of the Recorder: a panic inside its Publish handler (the second publish of
/// one conversation) is answered 503; the conversation retires the instance's streams and
/// rebuilds the recorder from the record, which restores the recording stream on its ports
/// (PENDING_RECOVERY, then ACTIVE with `recovered`). The publisher that was refused publishes
/// again; the other conversation records on untouched.
#[test]
fn a_panic_in_a_recorder_handler_rebuilds_the_recorder_and_its_streams_record_on() {
    recorder_panic_rebuilds_the_recorder("Publish");
}

/// The same with the panic in the part of the Publish handler that runs after its await (once the
/// stream opened the session): the continuation is supervised like the handler's body.
#[test]
fn a_panic_in_a_recorder_handlers_continuation_rebuilds_the_recorder_too() {
    recorder_panic_rebuilds_the_recorder("continuation Publish");
}

/// The second Publish of one conversation panics at `point` (a `recorder_handler` fault scope):
/// it is answered 503, the recorder is rebuilt from its record and records on, another
/// conversation is unaffected.
fn recorder_panic_rebuilds_the_recorder(point: &str) {
    let _media = media_lock();
    let mut app = TestApp::spawn();
    let (failing_call, healthy_call) = (unique("call"), unique("call"));
    let faults = format!("recorder_handler@{failing_call} {point}=panic*1+1");
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", &faults)]);
    let restarts_before = metric(&app, "recorder_actor_restarts_total{kind=\"Recorder\"}").unwrap_or(0.0);
    let (failing, healthy) = (unique("room"), unique("room"));
    let a = app.start(&failing_call, &failing, true, true);
    let b = app.start(&healthy_call, &healthy, false, true);
    let seconds = 12;
    let (x, y) = (
        send_vp8_cam(&app, &failing, "agent", seconds),
        send_vp8_cam(&app, &healthy, "agent", seconds),
    );
    poll(Duration::from_secs(15), "the failing instance ACTIVE", || {
        (app.instance(&a)["state"] == "ACTIVE").then_some(())
    });
    // About 2 s of media recorded by both conversations.
    wait_written(&app, 60);
    let mic = rtp_offer(&[("audio", 111, "opus/48000/2")]);
    let publish_mic = || {
        app.publish(
            "rtp",
            &failing,
            "userId=agent&type=MIC",
            &format!("Bearer {KEY}"),
            "application/sdp",
            &mic,
        )
    };
    let refused = publish_mic();
    assert_eq!(refused.status, 503, "{}", refused.text());
    let recovered = poll(Duration::from_secs(20), "the instance recovered", || {
        let instance = app.instance(&a);
        (instance["state"] == "ACTIVE" && instance["recovered"].is_string()).then_some(instance)
    });
    assert_eq!(recovered["streams"].as_array().unwrap().len(), 1, "{recovered:#}");
    let tree = app.debug_tree();
    let recorder = recorder_snapshots(&tree)
        .into_iter()
        .find(|r| r["id"] == recovered["instanceId"])
        .unwrap_or_else(|| panic!("{tree:#}"));
    assert_eq!(recorder["restarts"], 1, "{recorder:#}");
    assert_eq!(recorder["lastError"]["code"], "ACTOR_FAILED", "{recorder:#}");
    assert_eq!(recorder["state"], "ACTIVE", "{recorder:#}");
    // Exactly one panic was injected: one failure counted, one rebuild.
    let restarts_after = metric(&app, "recorder_actor_restarts_total{kind=\"Recorder\"}").expect("restart counter");
    assert_eq!(restarts_after, restarts_before + 1.0, "one recorder rebuild");
    let failures = metric(&app, "recorder_actor_failures_total{kind=\"Recorder\"}").expect("failure counter");
    assert_eq!(failures, 1.0, "one recorder handler failure");
    // The rebuilt recorder takes publishers again.
    let again = publish_mic();
    assert_eq!(again.status, 201, "{}", again.text());
    wait_ok(x, "failing conversation's sender");
    wait_ok(y, "healthy conversation's sender");
    stop_recovered_beside_healthy(&app, &a, &b, seconds);
}

/// Supervision of a WHIP stream: its video writer panics (injected after 60 frames; the
/// publisher sends video only); the peer connection stays up, the track goes on in a new segment
/// (the pump switches writer and asks the publisher for a keyframe), within the budget, without
/// the publisher reconnecting. The instance passes through PENDING_RECOVERY back to ACTIVE with
/// `recovered`; after stop the track holds media from before and after the failure.
#[test]
fn a_whip_stream_whose_writer_fails_records_on_into_a_new_segment_on_the_same_connection() {
    let _media = media_lock();
    let mut app = TestApp::spawn();
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", "muxer_write@.webm=panic*1+60")]);
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, false, true);
    let seconds = 10;
    let publisher = std::process::Command::new(env!("CARGO_BIN_EXE_whip-publish"))
        .arg(app.api(&format!("/media/whip/{conference}?userId=agent&type=CAM")))
        .args(["--token", KEY, "--seconds", &seconds.to_string(), "--no-audio"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("whip-publish runs");
    let recovered = poll(Duration::from_secs(20), "ACTIVE again with recovered", || {
        let instance = app.instance(&event);
        (instance["state"] == "ACTIVE" && instance["recovered"].is_string()).then_some(instance)
    });
    assert_eq!(recovered["streams"].as_array().unwrap().len(), 1, "{recovered:#}");
    assert_eq!(recovered["streams"][0]["state"], "RECORDING", "{recovered:#}");
    let tree = app.debug_tree();
    let streams = stream_snapshots(&tree);
    assert_eq!(streams.len(), 1, "{tree:#}");
    assert_eq!(streams[0]["restarts"], 1, "{streams:#?}");
    assert_eq!(streams[0]["lastError"]["code"], "MEDIA_WRITE", "{streams:#?}");
    assert_eq!(streams[0]["state"], "RECORDING", "{streams:#?}");
    // The same connection: the publisher did not have to come back.
    assert_eq!(streams[0]["counters"]["num_sessions"], 1, "{streams:#?}");
    let out = publisher.wait_with_output().expect("whip-publish ends");
    assert!(
        out.status.success(),
        "whip-publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(app.stop(&event)["state"], "STOPPED");
    let instance = app.instance(&event);
    assert_eq!(instance["streams"].as_array().unwrap().len(), 1, "{instance:#}");
    assert_eq!(instance["streams"][0]["state"], "STOPPED", "{instance:#}");
    assert_spans(
        find_track(&tracks(&instance), "agent", "CAM", "VIDEO"),
        &instance["recovered"],
        seconds,
    );
}

/// The Recorder's restart budget: with `max_restarts = 0` the first panic inside the recorder's
/// handler is beyond it; the rebuilt recorder aborts the instance (ABORTED with
/// `RESTART_BUDGET_EXHAUSTED`) and still finalizes what it recorded. Another conversation
/// records on untouched.
#[test]
fn a_recorder_failing_beyond_its_budget_aborts_its_instance_and_keeps_its_media() {
    let _media = media_lock();
    let mut app = TestApp::spawn_with("[recovery]\nmax_restarts = 0\n");
    let (failing_call, healthy_call) = (unique("call"), unique("call"));
    let faults = format!("recorder_handler@{failing_call} Publish=panic*1+1");
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", &faults)]);
    let (failing, healthy) = (unique("room"), unique("room"));
    let a = app.start(&failing_call, &failing, true, true);
    let b = app.start(&healthy_call, &healthy, false, true);
    let seconds = 6;
    let (x, y) = (
        send_vp8_cam(&app, &failing, "agent", seconds),
        send_vp8_cam(&app, &healthy, "agent", seconds),
    );
    poll(Duration::from_secs(15), "the failing instance ACTIVE", || {
        (app.instance(&a)["state"] == "ACTIVE").then_some(())
    });
    // About 2 s of media recorded by both conversations.
    wait_written(&app, 60);
    let refused = app.publish(
        "rtp",
        &failing,
        "userId=agent&type=MIC",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(refused.status, 503, "{}", refused.text());
    let aborted = poll(Duration::from_secs(20), "the instance ABORTED", || {
        let instance = app.instance(&a);
        (instance["state"] == "ABORTED").then_some(instance)
    });
    assert_eq!(aborted["error"]["code"], "RESTART_BUDGET_EXHAUSTED", "{aborted:#}");
    let message = aborted["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("recorder"), "{aborted:#}");
    let kept = probe(&track_file(find_track(&tracks(&aborted), "agent", "CAM", "VIDEO")));
    assert_eq!(kept.codec, "vp8");
    // Frames before the panic, at least: how many depends on how fast the sender got going.
    assert!(kept.num_frames > 0, "{kept:?}");
    // The conversation is free for a new instance.
    let next = app.start(&failing_call, &unique("room"), true, true);
    assert_eq!(next["state"], "INITIALISED", "{next}");
    assert_eq!(app.stop(&next)["state"], "STOPPED");
    wait_ok(x, "failing conversation's sender");
    wait_ok(y, "healthy conversation's sender");
    assert_eq!(app.stop(&b)["state"], "STOPPED");
    let b = app.instance(&b);
    assert!(b["recovered"].is_null(), "{b:#}");
    let healthy_track = probe(&track_file(find_track(&tracks(&b), "agent", "CAM", "VIDEO")));
    assert!(
        healthy_track.num_frames as f64 >= 0.95 * f64::from(seconds * 30),
        "{healthy_track:?}"
    );
}

/// A panic in the Recorder's stop continuation (after the streams finished their files, before
/// STOPPED is committed): the stop is answered 503, the conversation rebuilds the recorder from
/// the record, and the rebuilt recorder finishes the stop by itself (the record says a stop
/// began), from the final files on disk — no second stop needed. A stop retried afterwards
/// answers the stopped instance (200, the same stop time). Nothing is lost or done twice.
#[test]
fn a_panic_in_the_stop_continuation_still_stops_the_instance_once_with_its_media() {
    stop_continuation_panic_completes_the_stop_once("recorder_handler@{call} continuation StopRecorder");
}

/// The same with the panic in a Stream's finish continuation (its files final, its record not
/// yet told where they are): the recorder does not commit a stop without that stream's files; it
/// crashes, and its rebuild finishes the stop from the files on disk.
#[test]
fn a_panic_in_a_streams_finish_continuation_still_stops_the_instance_once_with_its_media() {
    stop_continuation_panic_completes_the_stop_once("stream_handler@{call} agent/CAM continuation FinishStream");
}

/// The same with the panic at the start of a Stream's FinishStream handler, before it asked its
/// writers to finish: the stream's files are completed by the failed actor's quiesce, the
/// recorder does not commit without them, and its rebuild finishes the stop from disk.
#[test]
fn a_panic_as_a_stream_begins_to_finish_still_stops_the_instance_once_with_its_media() {
    stop_continuation_panic_completes_the_stop_once("stream_handler@{call} agent/CAM FinishStream");
}

/// Stops one conversation's instance (3 s of VP8 recorded) with `fault` armed once for it
/// (`{call}` is its conversation id) while another conversation records: checks the stop's 503,
/// the instance STOPPED without another stop, its track complete, every artefact uploaded
/// once, each conversation composed once, and the other conversation untouched.
fn stop_continuation_panic_completes_the_stop_once(fault: &str) {
    let _media = media_lock();
    let mut app = TestApp::spawn_uploading();
    let (failing_call, healthy_call) = (unique("call"), unique("call"));
    let faults = format!("{}=panic*1", fault.replace("{call}", &failing_call));
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", &faults)]);
    let restarts_before = metric(&app, "recorder_actor_restarts_total{kind=\"Recorder\"}").unwrap_or(0.0);
    let (failing, healthy) = (unique("room"), unique("room"));
    let a = app.start(&failing_call, &failing, false, true);
    let b = app.start(&healthy_call, &healthy, false, true);
    let (seconds, healthy_seconds) = (3, 10);
    let y = send_vp8_cam(&app, &healthy, "agent", healthy_seconds);
    wait_ok(
        send_vp8_cam(&app, &failing, "agent", seconds),
        "failing conversation's sender",
    );

    // The other conversation is still recording while this stop fails.
    let stop = app.request(
        "POST",
        &app.api(&format!("{}/stop", instance_path(&a))),
        &[("Authorization", KEY)],
        Some(b""),
    );
    stop.assert_error(503);
    let stopped = poll(Duration::from_secs(30), "the failed stop finished by itself", || {
        let instance = app.instance(&a);
        (instance["state"] == "STOPPED").then_some(instance)
    });
    assert!(stopped["error"].is_null(), "{stopped:#}");
    assert_eq!(stopped["streams"].as_array().unwrap().len(), 1, "{stopped:#}");
    assert_eq!(stopped["streams"][0]["state"], "STOPPED", "{stopped:#}");
    let restarts_after = metric(&app, "recorder_actor_restarts_total{kind=\"Recorder\"}").expect("restart counter");
    assert_eq!(restarts_after, restarts_before + 1.0, "one rebuild of the recorder");
    // A retried stop answers the instance as it was stopped: not stopped a second time.
    let retried = app.stop(&a);
    assert_eq!(retried["state"], "STOPPED", "{retried:#}");
    let after_retry = app.instance(&a);
    assert_eq!(after_retry["stopped"], stopped["stopped"], "{after_retry:#}");

    wait_ok(y, "healthy conversation's sender");
    assert_eq!(app.stop(&b)["state"], "STOPPED");
    let (a, b) = (app.instance(&a), app.instance(&b));
    assert!(b["recovered"].is_null(), "{b:#}");

    for (instance, call) in [(&a, &failing_call), (&b, &healthy_call)] {
        let uploaded = poll(Duration::from_secs(60), "every track uploaded", || {
            let instance = app.instance(instance);
            let all = tracks(&instance);
            let done = all.len() == 1
                && all
                    .iter()
                    .all(|(_, _, _, t)| t["storage"]["objectStorage"]["uploaded"].is_string());
            done.then_some(instance)
        });
        let p = probe(&stored_file(
            &app,
            find_track(&tracks(&uploaded), "agent", "CAM", "VIDEO"),
        ));
        assert_eq!(p.codec, "vp8", "{p:?}");
        if call == &failing_call {
            assert!((p.duration - (f64::from(seconds) - 1.0 / 30.0)).abs() <= 0.150, "{p:?}");
        } else {
            assert!(p.num_frames as f64 >= 0.95 * f64::from(healthy_seconds * 30), "{p:?}");
        }
        let manifest: Value = poll(Duration::from_secs(30), "recording.json written", || {
            std::fs::read(manifest_path(&app, instance))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        });
        assert_eq!(manifest["state"], "STOPPED", "{manifest:#}");
        wait_composed(&app, call, &instance["instanceId"]);
    }

    // Exactly once: per conversation, its track file, its `recording.json`, its composition and
    // the `recording.json` rewritten to list the composition — 4 uploads, 3 objects; a track
    // uploaded again (or queued twice) would be a 5th upload.
    let tree = poll(Duration::from_secs(30), "the uploader idle", || {
        let tree = app.debug_tree();
        snapshots_of(&tree, "Uploader")
            .iter()
            .all(|u| u["counters"]["num_queued"] == 0 && u["counters"]["num_running"] == 0)
            .then_some(tree)
    });
    let stored = files_under(&app.root.join("storage"));
    let num_uploaded: u64 = snapshots_of(&tree, "Uploader")
        .iter()
        .map(|u| u["counters"]["num_uploaded"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(stored.len(), 6, "{stored:#?}");
    assert_eq!(num_uploaded, 8, "{stored:#?}\n{tree:#}");
    let media: Vec<_> = stored
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "webm" || e == "mkv"))
        .collect();
    assert_eq!(media.len(), 2, "{stored:#?}");
    let compositor = &snapshots_of(&tree, "Compositor")[0];
    assert_eq!(compositor["counters"]["num_composed"], 2, "{compositor:#}");
}

/// A stream that failed beyond its budget (its CAM; the MIC records on) is not lost by a
/// recorder rebuilt during the stop: the rebuilt recorder restores it with the recording streams
/// (as failed, binding no port) and the stop it finishes names its file too.
#[test]
fn a_stop_finished_by_a_rebuilt_recorder_keeps_the_files_of_a_failed_stream() {
    let _media = media_lock();
    let mut app = TestApp::spawn_with("[recovery]\nmax_restarts = 2\n");
    let call = unique("call");
    let faults = format!(
        "stream_handler@crashy/CAM SupervisionTick=panic+20,recorder_handler@{call} continuation StopRecorder=panic*1"
    );
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", &faults)]);
    let mixed = unique("room");
    let c = app.start(&call, &mixed, true, true);
    let seconds = 8;
    let mut z = lavfi_av(seconds);
    z.extend(rtp_out(
        "0:v",
        "vp8",
        96,
        publish_rtp(&app, &mixed, "crashy", "CAM", ("video", 96, "VP8/90000")),
    ));
    z.extend(rtp_out(
        "0:a",
        "opus",
        111,
        publish_rtp(&app, &mixed, "crashy", "MIC", ("audio", 111, "opus/48000/2")),
    ));
    let sender = ffmpeg(&z);
    assert_only_the_mixed_cam_failed(&app, &c, Duration::from_secs(30));
    wait_ok(sender, "sender");
    let stop = app.request(
        "POST",
        &app.api(&format!("{}/stop", instance_path(&c))),
        &[("Authorization", KEY)],
        Some(b""),
    );
    stop.assert_error(503);
    let stopped = poll(Duration::from_secs(30), "the failed stop finished by itself", || {
        let instance = app.instance(&c);
        (instance["state"] == "STOPPED").then_some(instance)
    });
    let cam = stopped["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "CAM")
        .unwrap_or_else(|| panic!("{stopped:#}"));
    assert_eq!(cam["state"], "FAILED", "{stopped:#}");
    let all = tracks(&stopped);
    // A crash never deletes media: what the CAM recorded before it failed is in its file.
    let kept = probe(&track_file(find_track(&all, "crashy", "CAM", "VIDEO")));
    assert_eq!(kept.codec, "vp8", "{kept:?}");
    assert!(kept.num_frames > 0, "{kept:?}");
    let audio = probe(&track_file(find_track(&all, "crashy", "MIC", "AUDIO")));
    assert!(audio.duration >= f64::from(seconds) - 0.5, "{audio:?}");
}
