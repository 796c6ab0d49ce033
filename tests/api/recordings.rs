//! Recorder instance life cycle: start, stop, state, info, active, conversation listing.

use serde_json::{json, Value};

use crate::helpers::*;

/// Parses an ISO-8601 duration like `PT12.345S`, `PT1M2S`, `P1DT2H` into seconds.
pub fn parse_iso_duration(text: &str) -> Option<f64> {
    let rest = text.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total = 0.0;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
            } else {
                let factor = units.iter().find(|(u, _)| *u == c)?.1;
                total += number.parse::<f64>().ok()? * factor;
                number.clear();
                any = true;
            }
        }
        number.is_empty().then_some(())
    };
    take(date, &[('W', 604800.0), ('D', 86400.0)])?;
    if let Some(time) = time {
        if time.is_empty() {
            return None;
        }
        take(time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    any.then_some(total)
}

#[test]
fn iso_duration_parser_works() {
    assert_eq!(parse_iso_duration("PT12.345S"), Some(12.345));
    assert_eq!(parse_iso_duration("PT1M2S"), Some(62.0));
    assert_eq!(parse_iso_duration("PT0S"), Some(0.0));
    assert_eq!(parse_iso_duration("P1DT1H"), Some(90000.0));
    for bad in ["12.3", "PT", "P", "PT5", "PTXS", ""] {
        assert_eq!(parse_iso_duration(bad), None, "{bad}");
    }
}

#[test]
fn start_answers_initialised_and_every_view_agrees() {
    let app = TestApp::spawn();
    let c = conv("start");
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(1);
    let ev = app.start(KEY_A, APP_A, &c);

    let state = app
        .get(&format!("{}/state", instance_path(&ev)), KEY_A)
        .ok_json("RecordingDataEvent");
    assert_eq!(state, ev, "state of a fresh instance differs from the start answer");

    let msg = app.instance(KEY_A, &ev);
    assert_eq!(msg["conversationId"], c.as_str());
    assert_eq!(msg["instanceId"], ev["instanceId"]);
    assert_eq!(msg["recorderId"], ev["recorderId"]);
    assert_eq!(msg["conferenceId"], format!("conf-{c}"));
    assert_eq!(msg["organizationId"], ORG_A);
    assert_eq!(msg["state"], "INITIALISED");
    assert_eq!(msg["audio"], true, "audio defaults to true: {msg}");
    assert_eq!(msg["video"], true, "video defaults to true: {msg}");
    assert_eq!(msg["streams"], json!([]), "a new instance has no streams: {msg}");
    assert!(msg.get("stopped").is_none(), "a live instance has no `stopped`: {msg}");
    assert!(msg.get("chatTranscript").is_none(), "no transcript yet: {msg}");
    let profile = &msg["storageProfile"];
    assert_eq!(profile["applicationId"], APP_A, "{msg}");
    assert!(
        profile["url"].as_str().is_some_and(|u| !u.is_empty()),
        "storageProfile.url: {msg}"
    );
    assert!(
        profile.get("provider").is_none(),
        "LOCAL is not in the spec's provider enum, so it is omitted: {msg}"
    );
    if let Some(started) = msg.get("started") {
        assert!(assert_rfc3339(started, "started") >= t0);
    }

    let info = app
        .get(&format!("{}/storage/info", instance_path(&ev)), KEY_A)
        .ok_json("StorageProfileDataMessage");
    assert_eq!(
        &info, profile,
        "storage/info differs from the instance's storageProfile"
    );
}

#[test]
fn start_keeps_audio_and_video_flags() {
    let app = TestApp::spawn();
    for (audio, video) in [(false, false), (true, false), (false, true)] {
        let c = conv("flags");
        let resp = app.post_json(
            "/recordings/start",
            KEY_A,
            &json!({"applicationId": APP_A, "conferenceId": conv("f"), "conversationId": c, "audio": audio, "video": video}),
        );
        let ev = resp.ok_json("RecordingDataEvent");
        let msg = app.instance(KEY_A, &ev);
        assert_eq!(
            (msg["audio"].as_bool(), msg["video"].as_bool()),
            (Some(audio), Some(video)),
            "{msg}"
        );
        // And in the conversation listing.
        let listing = app
            .get(&format!("/recordings/{c}"), KEY_A)
            .ok_json("ConversationMessage");
        assert_eq!(listing["recordings"][0]["audio"], audio, "{listing}");
        assert_eq!(listing["recordings"][0]["video"], video, "{listing}");
    }
}

#[test]
fn a_second_start_while_live_is_a_conflict() {
    let app = TestApp::spawn();
    let c = conv("conflict");
    let ev = app.start(KEY_A, APP_A, &c);
    let resp = app.post_json(
        "/recordings/start",
        KEY_A,
        &json!({"applicationId": APP_A, "conferenceId": "other", "conversationId": c}),
    );
    resp.assert_error(409);
    // Nothing changed: still exactly one instance, the first one, live.
    let active = app
        .get(&format!("/recordings/{c}/active"), KEY_A)
        .ok_json("RecordingDataEvent");
    assert_eq!(active, ev);
    let listing = app
        .get(&format!("/recordings/{c}"), KEY_A)
        .ok_json("ConversationMessage");
    assert_eq!(listing["recordings"].as_array().map(Vec::len), Some(1), "{listing}");
    // Also through another application of the same organization.
    app.post_json(
        "/recordings/start",
        KEY_A,
        &json!({"applicationId": APP_A2, "conferenceId": "x", "conversationId": c}),
    )
    .assert_error(409);
}

#[test]
fn stop_is_idempotent_and_a_new_start_gets_a_new_instance_on_the_same_recorder() {
    let app = TestApp::spawn();
    let c = conv("stop");
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(1);
    let first = app.start(KEY_A, APP_A, &c);
    let stopped = app.stop(KEY_A, &first);
    assert_eq!(stopped["conversationId"], first["conversationId"]);
    assert_eq!(stopped["recorderId"], first["recorderId"]);

    // Stop again: same answer, 200.
    let again = app
        .post_empty(&format!("{}/stop", instance_path(&first)), KEY_A)
        .ok_json("RecordingDataEvent");
    assert_eq!(again["state"], "STOPPED");
    assert_eq!(again["instanceId"], first["instanceId"]);

    let state = app
        .get(&format!("{}/state", instance_path(&first)), KEY_A)
        .ok_json("RecordingDataEvent");
    assert_eq!(state["state"], "STOPPED");
    let msg = app.instance(KEY_A, &first);
    assert_eq!(msg["state"], "STOPPED");
    let stopped_at = assert_rfc3339(&msg["stopped"], "stopped");
    assert!(
        stopped_at >= t0 && stopped_at <= chrono::Utc::now() + chrono::Duration::seconds(1),
        "stopped = {stopped_at}"
    );

    app.get(&format!("/recordings/{c}/active"), KEY_A).assert_error(404);

    let second = app.start(KEY_A, APP_A, &c);
    assert_ne!(
        second["instanceId"], first["instanceId"],
        "a new start must create a new instance"
    );
    assert_eq!(second["recorderId"], first["recorderId"], "one node, one recorderId");
    let active = app
        .get(&format!("/recordings/{c}/active"), KEY_A)
        .ok_json("RecordingDataEvent");
    assert_eq!(active, second);

    // The old instance is untouched by the new one.
    assert_eq!(app.instance(KEY_A, &first)["state"], "STOPPED");
}

#[test]
fn recorder_id_is_shared_by_all_conversations_of_the_node() {
    let app = TestApp::spawn();
    let a = app.start(KEY_A, APP_A, &conv("n1"));
    let b = app.start(KEY_A, APP_A2, &conv("n2"));
    let c = app.start(KEY_B, APP_B, &conv("n3"));
    assert_eq!(a["recorderId"], b["recorderId"]);
    assert_eq!(a["recorderId"], c["recorderId"]);
    let ids: std::collections::HashSet<_> = [&a, &b, &c].iter().map(|e| e["instanceId"].to_string()).collect();
    assert_eq!(ids.len(), 3, "instance ids must be unique");
}

#[test]
fn active_follows_the_live_instance_and_is_404_when_none() {
    let app = TestApp::spawn();
    let c = conv("active");
    app.get(&format!("/recordings/{c}/active"), KEY_A).assert_error(404);
    let ev = app.start(KEY_A, APP_A, &c);
    let active = app
        .get(&format!("/recordings/{c}/active"), KEY_A)
        .ok_json("RecordingDataEvent");
    assert_eq!(active, ev);
    app.stop(KEY_A, &ev);
    app.get(&format!("/recordings/{c}/active"), KEY_A).assert_error(404);
}

#[test]
fn unknown_ids_are_404_on_every_instance_route() {
    let app = TestApp::spawn();
    let c = conv("unknown");
    let ev = app.start(KEY_A, APP_A, &c);
    let (ci, ri, ii) = (
        ev["conversationId"].as_str().unwrap(),
        ev["recorderId"].as_str().unwrap(),
        ev["instanceId"].as_str().unwrap(),
    );
    // Each triple gets one part wrong.
    let wrong = [
        ("nope-conv", ri, ii),
        (ci, "nope-recorder", ii),
        (ci, ri, "nope-instance"),
        ("nope-conv", "nope-recorder", "nope-instance"),
    ];
    for (c2, r2, i2) in wrong {
        let base = format!("/recordings/{c2}/{r2}/{i2}");
        for path in [base.clone(), format!("{base}/state"), format!("{base}/storage/info")] {
            app.get(&path, KEY_A).assert_error(404);
        }
        app.post_empty(&format!("{base}/stop"), KEY_A).assert_error(404);
        let fake = json!({"conversationId": c2, "recorderId": r2, "instanceId": i2});
        app.add_transcript(KEY_A, &fake, json!([chat("2024-01-01T10:00:00Z", "hi", "u1")]))
            .assert_error(404);
        app.add_event(KEY_A, &fake, "s1", 1, "p", 1).assert_error(404);
    }
    // The real instance was not stopped by any of that.
    assert_eq!(app.instance(KEY_A, &ev)["state"], "INITIALISED");
}

#[test]
fn conversation_listing_shows_every_instance_oldest_first() {
    let app = TestApp::spawn();
    let c = conv("listing");
    let t0 = std::time::Instant::now();
    let first = app.start(KEY_A, APP_A, &c);
    app.stop(KEY_A, &first);
    let second = app.start(KEY_A, APP_A, &c);

    let listing = app
        .get(&format!("/recordings/{c}"), KEY_A)
        .ok_json("ConversationMessage");
    assert_eq!(listing["conversationId"], c.as_str(), "{listing}");
    assert_eq!(listing["applicationId"], APP_A, "{listing}");
    assert!(
        listing.get("provider").is_none(),
        "LOCAL is not in the spec's provider enum: {listing}"
    );
    let recordings = listing["recordings"]
        .as_array()
        .unwrap_or_else(|| panic!("no recordings: {listing}"));
    assert_eq!(recordings.len(), 2, "{listing}");
    for r in recordings {
        assert_eq!(r["recorderId"], first["recorderId"], "{listing}");
        assert_eq!(r["conferenceId"], format!("conf-{c}"), "{listing}");
    }
    assert!(
        recordings[0].get("stopped").is_some(),
        "the first instance is stopped: {listing}"
    );
    assert!(
        recordings[1].get("stopped").is_none(),
        "the second instance is live: {listing}"
    );
    // This project's addition: each recording names its instance and state.
    assert_eq!(recordings[0]["instanceId"], first["instanceId"], "{listing}");
    assert_eq!(recordings[0]["state"], "STOPPED", "{listing}");
    assert_eq!(recordings[1]["instanceId"], second["instanceId"], "{listing}");
    assert_eq!(recordings[1]["state"], "INITIALISED", "{listing}");
    let duration = listing["duration"]
        .as_str()
        .unwrap_or_else(|| panic!("no duration: {listing}"));
    let secs = parse_iso_duration(duration).unwrap_or_else(|| panic!("duration {duration:?} is not ISO-8601"));
    assert!(
        secs >= 0.0 && secs <= t0.elapsed().as_secs_f64() + 1.0,
        "duration {duration} is out of bounds"
    );
}

#[test]
fn a_stopped_conversation_has_a_fixed_duration() {
    let app = TestApp::spawn();
    let c = conv("duration");
    let ev = app.start(KEY_A, APP_A, &c);
    std::thread::sleep(std::time::Duration::from_millis(300));
    app.stop(KEY_A, &ev);
    let d1 = app
        .get(&format!("/recordings/{c}"), KEY_A)
        .ok_json("ConversationMessage")["duration"]
        .clone();
    let secs = parse_iso_duration(d1.as_str().unwrap()).unwrap_or_else(|| panic!("duration {d1} is not ISO-8601"));
    assert!(secs >= 0.25, "the instance lived 300 ms, duration says {d1}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let d2 = app
        .get(&format!("/recordings/{c}"), KEY_A)
        .ok_json("ConversationMessage")["duration"]
        .clone();
    assert_eq!(d1, d2, "the duration of a stopped conversation must not grow");
}

#[test]
fn a_conversation_without_instances_is_404() {
    let app = TestApp::spawn();
    app.get("/recordings/never-started", KEY_A).assert_error(404);
}

#[test]
fn start_with_an_unknown_application_is_404() {
    let app = TestApp::spawn();
    for application in ["no-such-app", APP_B /* org-b's, not org-a's */] {
        let c = conv("unknown-app");
        let resp = app.post_json(
            "/recordings/start",
            KEY_A,
            &json!({"applicationId": application, "conferenceId": conv("f"), "conversationId": c}),
        );
        resp.assert_error(404);
        app.get(&format!("/recordings/{c}"), KEY_A).assert_error(404);
    }
}

#[test]
fn a_key_limited_to_another_application_is_403_on_start() {
    let app = TestApp::spawn();
    let c = conv("limited");
    let resp = app.post_json(
        "/recordings/start",
        KEY_LIMITED,
        &json!({"applicationId": APP_A, "conferenceId": conv("f"), "conversationId": c}),
    );
    resp.assert_error(403);
    app.get(&format!("/recordings/{c}"), KEY_A).assert_error(404);
    // The application it is allowed works.
    app.start(KEY_LIMITED, APP_A2, &c);
}

#[test]
fn conversations_are_independent() {
    let app = TestApp::spawn();
    let (c1, c2) = (conv("ind1"), conv("ind2"));
    let e1 = app.start(KEY_A, APP_A, &c1);
    let e2 = app.start(KEY_A, APP_A, &c2);
    app.stop(KEY_A, &e1);
    assert_eq!(app.instance(KEY_A, &e2)["state"], "INITIALISED");
    let listing: Value = app
        .get(&format!("/recordings/{c2}"), KEY_A)
        .ok_json("ConversationMessage");
    assert_eq!(listing["recordings"].as_array().map(Vec::len), Some(1));
}
