//! Chat transcripts and co-browse events: accepted while live and after stop, written to the
//! application's storage as artefacts, listed by the API.

use serde_json::{json, Value};

use crate::helpers::*;

fn read_json(path: &std::path::Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Checks that the stored entries are `expected`, in order (timestamps compared as instants).
fn assert_entries(file: &Value, expected: &[Value]) {
    let stored = file["chatTranscriptList"]
        .as_array()
        .unwrap_or_else(|| panic!("no chatTranscriptList: {file}"));
    assert_eq!(stored.len(), expected.len(), "stored entries: {file:#}");
    for (i, (s, e)) in stored.iter().zip(expected).enumerate() {
        for field in ["transcript", "userId", "userDisplayName"] {
            assert_eq!(s.get(field), e.get(field), "entry {i}, {field}: stored {s}, sent {e}");
        }
        let ts = assert_rfc3339(&s["timeStamp"], "stored timeStamp");
        let sent = assert_rfc3339(&e["timeStamp"], "sent timeStamp");
        assert_eq!(ts, sent, "entry {i}: the time stamp changed");
    }
}

fn seqs(file: &Value) -> Vec<i64> {
    file["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {file}"))
        .iter()
        .map(|e| {
            e["sequenceId"]
                .as_i64()
                .unwrap_or_else(|| panic!("event without sequenceId: {e}"))
        })
        .collect()
}

fn event_ok(resp: Resp, ev: &Value, state: &str) {
    let body = resp.ok_json("RecordingDataEvent");
    assert_eq!(body["instanceId"], ev["instanceId"], "{body}");
    assert_eq!(body["conversationId"], ev["conversationId"], "{body}");
    assert_eq!(body["state"], state, "{body}");
}

#[test]
fn transcript_is_written_on_stop_with_every_entry_in_order() {
    let app = TestApp::spawn();
    let c = conv("transcript");
    let ev = app.start(KEY_A, APP_A, &c);
    let e1 = chat("2024-03-01T10:00:00Z", "Hello, how can I help?", "agent-1");
    let e2 = chat(
        "2024-03-01T10:00:05.250Z",
        "My order is late 😟 — «ünïcode»",
        "customer-7",
    );
    let e3 = json!({"timeStamp": "2024-03-01T12:00:09+02:00", "transcript": "no display name", "userId": "customer-7"});
    event_ok(app.add_transcript(KEY_A, &ev, json!([e1, e2])), &ev, "INITIALISED");
    event_ok(app.add_transcript(KEY_A, &ev, json!([e3])), &ev, "INITIALISED");

    let t_stop = chrono::Utc::now() - chrono::Duration::seconds(1);
    app.stop(KEY_A, &ev);
    let (instance, file) = app.wait_transcript_file(KEY_A, &ev, 3);
    assert_entries(&file, &[e1, e2, e3]);

    let transcript = &instance["chatTranscript"];
    assert!(transcript["id"].as_str().is_some_and(|s| !s.is_empty()), "{instance}");
    assert!(
        transcript["location"]
            .as_str()
            .is_some_and(|l| l.contains("chat/transcript.json")),
        "location: {instance}"
    );
    assert!(assert_rfc3339(&transcript["created"], "chatTranscript.created") >= t_stop);

    let listing = app
        .get(&format!("/recordings/{c}"), KEY_A)
        .ok_json("ConversationMessage");
    assert_eq!(
        &listing["chatTranscript"], transcript,
        "the conversation shows the instance's transcript: {listing}"
    );
}

#[test]
fn transcript_added_after_stop_is_appended_to_the_stored_file() {
    let app = TestApp::spawn();
    let c = conv("late-transcript");
    let ev = app.start(KEY_A, APP_A, &c);
    let e1 = chat("2024-03-01T10:00:00Z", "first", "u1");
    event_ok(app.add_transcript(KEY_A, &ev, json!([e1])), &ev, "INITIALISED");
    app.stop(KEY_A, &ev);
    let (before, file) = app.wait_transcript_file(KEY_A, &ev, 1);
    assert_entries(&file, std::slice::from_ref(&e1));

    let e2 = chat("2024-03-01T10:01:00Z", "second, after stop", "u2");
    let e3 = chat("2024-03-01T10:02:00Z", "third, after stop", "u1");
    event_ok(app.add_transcript(KEY_A, &ev, json!([e2, e3])), &ev, "STOPPED");
    let (after, file) = app.wait_transcript_file(KEY_A, &ev, 3);
    assert_entries(&file, &[e1, e2, e3]);
    assert_eq!(
        after["chatTranscript"]["id"], before["chatTranscript"]["id"],
        "still the same transcript artefact"
    );
    assert!(
        assert_rfc3339(&after["chatTranscript"]["created"], "created")
            >= assert_rfc3339(&before["chatTranscript"]["created"], "created"),
        "created went back in time: {before} -> {after}"
    );
    assert_eq!(after["state"], "STOPPED");
}

#[test]
fn transcript_first_sent_after_stop_is_written() {
    let app = TestApp::spawn();
    let c = conv("post-stop-transcript");
    let ev = app.start(KEY_A, APP_A, &c);
    app.stop(KEY_A, &ev);
    assert!(
        app.instance(KEY_A, &ev).get("chatTranscript").is_none(),
        "no transcript was ever sent"
    );
    assert!(!app.transcript_file(&ev).exists());
    let e1 = chat("2024-03-01T10:00:00Z", "only line", "u1");
    event_ok(app.add_transcript(KEY_A, &ev, json!([e1])), &ev, "STOPPED");
    let (_, file) = app.wait_transcript_file(KEY_A, &ev, 1);
    assert_entries(&file, &[e1]);
    assert_eq!(file["conversationId"].as_str().unwrap_or(c.as_str()), c, "{file}");
}

#[test]
fn transcripts_of_two_instances_stay_apart() {
    let app = TestApp::spawn();
    let c = conv("two-transcripts");
    let first = app.start(KEY_A, APP_A, &c);
    let a = chat("2024-03-01T10:00:00Z", "instance one", "u1");
    app.add_transcript(KEY_A, &first, json!([a]))
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &first);
    let second = app.start(KEY_A, APP_A, &c);
    let b = chat("2024-03-01T11:00:00Z", "instance two", "u1");
    app.add_transcript(KEY_A, &second, json!([b]))
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &second);
    let (_, f1) = app.wait_transcript_file(KEY_A, &first, 1);
    let (_, f2) = app.wait_transcript_file(KEY_A, &second, 1);
    assert_entries(&f1, &[a]);
    assert_entries(&f2, &[b]);
}

#[test]
fn cobrowse_events_are_stored_in_sequence_order_and_first_copy_wins() {
    let app = TestApp::spawn();
    let c = conv("cobrowse");
    let ev = app.start(KEY_A, APP_A, &c);
    for (seq, payload, ts) in [
        (3, "{\"n\":3}", 1_700_000_000_300i64),
        (1, "{\"n\":1}", 1_700_000_000_100),
        (2, "{\"n\":2}", 1_700_000_000_200),
    ] {
        event_ok(app.add_event(KEY_A, &ev, "s1", seq, payload, ts), &ev, "INITIALISED");
    }
    // A repeated sequenceId is accepted and changes nothing.
    event_ok(
        app.add_event(KEY_A, &ev, "s1", 1, "{\"n\":\"duplicate\"}", 9),
        &ev,
        "INITIALISED",
    );
    event_ok(
        app.add_event(KEY_A, &ev, "s2", 7, "other session", 5),
        &ev,
        "INITIALISED",
    );
    // Extremes of the declared integer ranges are fine.
    event_ok(
        app.add_event(KEY_A, &ev, "s3", i32::MAX as i64, "max", i64::MAX),
        &ev,
        "INITIALISED",
    );
    event_ok(
        app.add_event(KEY_A, &ev, "s3", i32::MIN as i64, "min", i64::MIN),
        &ev,
        "INITIALISED",
    );

    let listing = app
        .get(&format!("/recordings/{c}/cobrowse"), KEY_A)
        .ok_json("ConversationCobrowseSessionDataMessage");
    assert_eq!(listing["conversationId"], c.as_str(), "{listing}");
    let mut sessions: Vec<Value> = listing["cobrowseSessions"].as_array().cloned().unwrap_or_default();
    sessions.sort_by_key(|s| s["cobrowseSessionId"].as_str().unwrap_or("").to_string());
    assert_eq!(sessions.len(), 3, "{listing}");
    for (s, id) in sessions.iter().zip(["s1", "s2", "s3"]) {
        assert_eq!(s["cobrowseSessionId"], id, "{listing}");
        assert_eq!(s["recorderId"], ev["recorderId"], "{listing}");
        assert_eq!(s["recorderInstanceId"], ev["instanceId"], "{listing}");
        assert!(
            s.get("uploaded").is_none(),
            "nothing is uploaded before stop: {listing}"
        );
    }

    app.stop(KEY_A, &ev);
    for s in ["s1", "s2", "s3"] {
        app.wait_session_uploaded(KEY_A, &c, s);
    }
    let s1 = read_json(&app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &ev, "s1"));
    assert_eq!(seqs(&s1), vec![1, 2, 3], "{s1:#}");
    let events = s1["events"].as_array().unwrap();
    assert_eq!(
        events[0]["payload"], "{\"n\":1}",
        "the first copy of sequenceId 1 wins: {s1:#}"
    );
    assert_eq!(events[0]["timestamp"], 1_700_000_000_100i64, "{s1:#}");
    assert_eq!(events[2]["payload"], "{\"n\":3}", "{s1:#}");
    assert!(events.iter().all(|e| e["sessionId"] == "s1"), "{s1:#}");
    let s2 = read_json(&app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &ev, "s2"));
    assert_eq!(seqs(&s2), vec![7], "{s2:#}");
    assert_eq!(s2["events"][0]["payload"], "other session");
    let s3 = read_json(&app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &ev, "s3"));
    assert_eq!(seqs(&s3), vec![i32::MIN as i64, i32::MAX as i64], "{s3:#}");
    assert_eq!(s3["events"][0]["timestamp"], i64::MIN, "{s3:#}");
    assert_eq!(s3["events"][1]["timestamp"], i64::MAX, "{s3:#}");

    let listing = app
        .get(&format!("/recordings/{c}/cobrowse"), KEY_A)
        .ok_json("ConversationCobrowseSessionDataMessage");
    for s in listing["cobrowseSessions"].as_array().unwrap() {
        assert_rfc3339(&s["uploaded"], "uploaded");
    }
}

#[test]
fn cobrowse_events_after_stop_update_the_stored_session() {
    let app = TestApp::spawn();
    let c = conv("late-cobrowse");
    let ev = app.start(KEY_A, APP_A, &c);
    event_ok(app.add_event(KEY_A, &ev, "s1", 2, "two", 2), &ev, "INITIALISED");
    app.stop(KEY_A, &ev);
    app.wait_session_uploaded(KEY_A, &c, "s1");
    let path = app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &ev, "s1");
    assert_eq!(seqs(&read_json(&path)), vec![2]);

    event_ok(app.add_event(KEY_A, &ev, "s1", 1, "one, late", 1), &ev, "STOPPED");
    poll(UPLOAD_TIMEOUT, "the late event in the stored session", || {
        let file: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        (seqs(&file) == vec![1, 2]).then_some(())
    });
    // A late duplicate changes nothing.
    event_ok(app.add_event(KEY_A, &ev, "s1", 2, "two, duplicate", 22), &ev, "STOPPED");
    let file = read_json(&path);
    assert_eq!(seqs(&file), vec![1, 2]);
    assert_eq!(file["events"][1]["payload"], "two", "{file:#}");
    // A session first seen after stop is stored too.
    event_ok(
        app.add_event(KEY_A, &ev, "s-late", 9, "late session", 9),
        &ev,
        "STOPPED",
    );
    app.wait_session_uploaded(KEY_A, &c, "s-late");
    let late = read_json(&app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &ev, "s-late"));
    assert_eq!(seqs(&late), vec![9], "{late:#}");
}

#[test]
fn cobrowse_listing_spans_every_instance_of_the_conversation() {
    let app = TestApp::spawn();
    let c = conv("cobrowse-instances");
    let first = app.start(KEY_A, APP_A, &c);
    app.add_event(KEY_A, &first, "s1", 1, "a", 1)
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &first);
    let second = app.start(KEY_A, APP_A, &c);
    app.add_event(KEY_A, &second, "s1", 1, "b", 1)
        .ok_json("RecordingDataEvent");
    let listing = app
        .get(&format!("/recordings/{c}/cobrowse"), KEY_A)
        .ok_json("ConversationCobrowseSessionDataMessage");
    let sessions = listing["cobrowseSessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{listing}"));
    let mut instances: Vec<&str> = sessions
        .iter()
        .filter_map(|s| s["recorderInstanceId"].as_str())
        .collect();
    instances.sort();
    let mut expected = vec![
        first["instanceId"].as_str().unwrap(),
        second["instanceId"].as_str().unwrap(),
    ];
    expected.sort();
    assert_eq!(instances, expected, "{listing}");
}

#[test]
fn cobrowse_listing_of_an_instance_without_sessions_is_empty() {
    let app = TestApp::spawn();
    let c = conv("no-sessions");
    app.start(KEY_A, APP_A, &c);
    let listing = app
        .get(&format!("/recordings/{c}/cobrowse"), KEY_A)
        .ok_json("ConversationCobrowseSessionDataMessage");
    assert_eq!(listing["conversationId"], c.as_str(), "{listing}");
    assert_eq!(
        listing
            .get("cobrowseSessions")
            .and_then(Value::as_array)
            .map(Vec::len)
            .unwrap_or(0),
        0,
        "{listing}"
    );
}

#[test]
fn oversized_cobrowse_payloads_are_refused_naming_event_payload() {
    let app = TestApp::spawn_with("[limits]\nmax_cobrowse_payload_bytes = 1024\n", &[]);
    let c = conv("payload");
    let ev = app.start(KEY_A, APP_A, &c);
    let at_limit = "x".repeat(1024);
    event_ok(app.add_event(KEY_A, &ev, "s-ok", 1, &at_limit, 1), &ev, "INITIALISED");
    let over = "x".repeat(1025);
    let resp = app.add_event(KEY_A, &ev, "s-big", 1, &over, 1);
    assert!(resp.status == 413 || resp.status == 400, "{}", resp.describe());
    resp.assert_error_naming(resp.status, "event.payload");
    // Multi-byte characters count as bytes: 513 × "é" is 1026 bytes.
    let resp = app.add_event(KEY_A, &ev, "s-big", 2, &"é".repeat(513), 1);
    assert!(resp.status == 413 || resp.status == 400, "{}", resp.describe());

    let listing = app
        .get(&format!("/recordings/{c}/cobrowse"), KEY_A)
        .ok_json("ConversationCobrowseSessionDataMessage");
    let ids: Vec<&str> = listing["cobrowseSessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["cobrowseSessionId"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec!["s-ok"],
        "a refused event must not create its session: {listing}"
    );
    app.stop(KEY_A, &ev);
    app.wait_session_uploaded(KEY_A, &c, "s-ok");
    let file = read_json(&app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &ev, "s-ok"));
    assert_eq!(file["events"][0]["payload"].as_str().map(str::len), Some(1024));
}

/// The uploader of app-a as the debug tree shows it.
fn uploader_counters(app: &TestApp) -> serde_json::Value {
    let tree = app.get("/debug/actors", KEY_ADMIN).json();
    tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "Uploader" && c["id"] == "org-a/app-a")
        .unwrap_or_else(|| panic!("no uploader of org-a/app-a: {tree}"))["counters"]
        .clone()
}

#[test]
fn a_burst_of_lines_after_stop_is_rendered_and_uploaded_once_not_once_per_line() {
    // A settle long enough for the ten requests below on any machine.
    let app = TestApp::spawn_with("[uploads]\nrender_settle_ms = 5000\n", &[]);
    let ev = app.start(KEY_A, APP_A, &conv("burst-after-stop"));
    app.add_transcript(KEY_A, &ev, json!([chat("2024-01-01T10:00:00Z", "first", "u1")]))
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &ev);
    app.wait_transcript_file(KEY_A, &ev, 1);
    let idle = |app: &TestApp| {
        poll(UPLOAD_TIMEOUT, "the uploader idle", || {
            let c = uploader_counters(app);
            (c["num_queued"] == 0 && c["num_running"] == 0).then_some(c)
        })
    };
    let before = idle(&app)["num_uploaded"].as_u64().unwrap();
    for n in 0..10 {
        app.add_transcript(
            KEY_A,
            &ev,
            json!([chat("2024-01-01T10:00:01Z", &format!("late {n}"), "u1")]),
        )
        .ok_json("RecordingDataEvent");
    }
    let (_, file) = app.wait_transcript_file(KEY_A, &ev, 11);
    assert!(file.to_string().contains("late 9"), "{file}");
    let after = idle(&app)["num_uploaded"].as_u64().unwrap();
    // The transcript and the manifest that lists it, once each for the whole burst.
    assert_eq!(after - before, 2, "uploads for a burst of 10 lines");
}
