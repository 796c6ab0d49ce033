//! Input validation: every refusal is a 400 (or 413 for size limits) with the `Error` body naming
//! the offending field, and a refused request changes nothing.

use serde_json::{json, Value};

use crate::helpers::*;

fn start_body(c: &str) -> Value {
    json!({"applicationId": APP_A, "conferenceId": conv("conf"), "conversationId": c, "audio": true, "video": false})
}

#[test]
fn start_checks_every_field() {
    let app = TestApp::spawn();
    let c = conv("start-fields");
    for field in ["applicationId", "conferenceId", "conversationId"] {
        let mut body = start_body(&c);
        body.as_object_mut().unwrap().remove(field);
        app.post_json("/recordings/start", KEY_A, &body)
            .assert_error_naming(400, field);
        for bad in [
            json!(null),
            json!(""),
            json!(42),
            json!(true),
            json!(["x"]),
            json!({"x": 1}),
        ] {
            let mut body = start_body(&c);
            body[field] = bad.clone();
            let resp = app.post_json("/recordings/start", KEY_A, &body);
            assert_eq!(resp.status, 400, "{field} = {bad}: {}", resp.describe());
            resp.assert_error_naming(400, field);
        }
    }
    for field in ["audio", "video"] {
        for bad in [
            json!("yes"),
            json!(1),
            json!(0),
            json!("true"),
            json!([true]),
            json!({}),
        ] {
            let mut body = start_body(&c);
            body[field] = bad.clone();
            let resp = app.post_json("/recordings/start", KEY_A, &body);
            assert_eq!(resp.status, 400, "{field} = {bad}: {}", resp.describe());
            resp.assert_error_naming(400, field);
        }
    }
    // Nothing was started by any of that.
    app.get(&format!("/recordings/{c}"), KEY_A).assert_error(404);
    // Null booleans count as absent (defaults).
    let mut body = start_body(&c);
    body["audio"] = json!(null);
    let ev = app
        .post_json("/recordings/start", KEY_A, &body)
        .ok_json("RecordingDataEvent");
    assert_eq!(app.instance(KEY_A, &ev)["audio"], true);
}

#[test]
fn ids_must_be_plain_and_not_too_long() {
    let app = TestApp::spawn();
    for bad in ["../etc", "a/b", "a\\b", "..", "a b", "a\u{0}b", "%2e%2e"] {
        let resp = app.post_json(
            "/recordings/start",
            KEY_A,
            &json!({"applicationId": APP_A, "conferenceId": conv("f"), "conversationId": bad}),
        );
        assert_eq!(resp.status, 400, "conversationId {bad:?}: {}", resp.describe());
        resp.assert_error_naming(400, "conversationId");
    }
    let long = "c".repeat(256);
    app.post_json(
        "/recordings/start",
        KEY_A,
        &json!({"applicationId": APP_A, "conferenceId": conv("f"), "conversationId": long}),
    )
    .assert_error_naming(400, "conversationId");
    let max = format!("c{}", "x".repeat(254));
    let resp = app.post_json(
        "/recordings/start",
        KEY_A,
        &json!({"applicationId": APP_A, "conferenceId": max, "conversationId": max}),
    );
    let ev = resp.ok_json("RecordingDataEvent");
    assert_eq!(app.instance(KEY_A, &ev)["conversationId"], max.as_str());
}

#[test]
fn malformed_bodies_are_400_with_the_error_body() {
    let app = TestApp::spawn();
    let c = conv("malformed");
    let ev = app.start(KEY_A, APP_A, &c);
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"{".to_vec(),
        b"{\"conversationId\": }".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"\"a string\"".to_vec(),
        b"42".to_vec(),
        b"{\"applicationId\": \"app-a\", \"conferenceId\": \"f\", \"conversationId\": \"\xff\xfe\"}".to_vec(),
        b"\xef\xbb\xbf{}".to_vec(),
        b"{} trailing".to_vec(),
    ];
    for path in [
        "/recordings/start",
        "/recordings/chat/transcript/add",
        "/recordings/cobrowse/event",
    ] {
        for body in &bodies {
            let resp = app.post_raw(path, KEY_A, "application/json", body);
            assert_eq!(
                resp.status,
                400,
                "{path} with {:?}: {}",
                String::from_utf8_lossy(body),
                resp.describe()
            );
            resp.assert_error(400);
        }
    }
    let _ = ev;
}

#[test]
fn transcript_entries_are_checked_and_a_bad_batch_stores_nothing() {
    let app = TestApp::spawn_with("[limits]\nmax_transcript_entries = 5\nmax_transcript_len = 100\n", &[]);
    let c = conv("transcript-fields");
    let ev = app.start(KEY_A, APP_A, &c);
    let good = chat("2024-01-01T10:00:00Z", "fine", "u1");
    let cases: Vec<(Value, &str)> = vec![
        (json!([chat("yesterday", "x", "u1")]), "chatTranscriptList[0].timeStamp"),
        (
            json!([chat("2024-01-01 10:00:00", "x", "u1")]),
            "chatTranscriptList[0].timeStamp",
        ),
        (
            json!([chat("2024-13-01T10:00:00Z", "x", "u1")]),
            "chatTranscriptList[0].timeStamp",
        ),
        (
            json!([good, {"timeStamp": "2024-01-01T10:00:00Z", "transcript": "x"}]),
            "chatTranscriptList[1].userId",
        ),
        (
            json!([good, {"timeStamp": "2024-01-01T10:00:00Z", "userId": "u"}]),
            "chatTranscriptList[1].transcript",
        ),
        (
            json!([{"timeStamp": 1700000000, "transcript": "x", "userId": "u"}]),
            "chatTranscriptList[0].timeStamp",
        ),
        (
            json!([{"timeStamp": "2024-01-01T10:00:00Z", "transcript": 5, "userId": "u"}]),
            "chatTranscriptList[0].transcript",
        ),
        (
            json!([{"timeStamp": "2024-01-01T10:00:00Z", "transcript": "x", "userId": "u", "userDisplayName": 7}]),
            "chatTranscriptList[0].userDisplayName",
        ),
        (json!([good, "not an object"]), "chatTranscriptList[1]"),
        (json!("not a list"), "chatTranscriptList"),
        (json!({"timeStamp": "2024-01-01T10:00:00Z"}), "chatTranscriptList"),
    ];
    for (list, field) in cases {
        let resp = app.add_transcript(KEY_A, &ev, list.clone());
        assert_eq!(resp.status, 400, "{list}: {}", resp.describe());
        resp.assert_error_naming(400, field);
    }
    // Too many entries, too long a line: 400 or 413, naming the field.
    let six: Vec<Value> = (0..6)
        .map(|i| chat("2024-01-01T10:00:00Z", &format!("l{i}"), "u"))
        .collect();
    let resp = app.add_transcript(KEY_A, &ev, json!(six));
    assert!(resp.status == 400 || resp.status == 413, "{}", resp.describe());
    resp.assert_error_naming(resp.status, "chatTranscriptList");
    let resp = app.add_transcript(KEY_A, &ev, json!([chat("2024-01-01T10:00:00Z", &"x".repeat(101), "u")]));
    assert!(resp.status == 400 || resp.status == 413, "{}", resp.describe());
    resp.assert_error_naming(resp.status, "chatTranscriptList[0].transcript");
    // The command's own ids.
    for field in ["conversationId", "instanceId", "recorderId"] {
        let mut body = json!({"chatTranscriptList": [good], "conversationId": ev["conversationId"], "instanceId": ev["instanceId"], "recorderId": ev["recorderId"]});
        body.as_object_mut().unwrap().remove(field);
        app.post_json("/recordings/chat/transcript/add", KEY_A, &body)
            .assert_error_naming(400, field);
        body[field] = json!(12);
        app.post_json("/recordings/chat/transcript/add", KEY_A, &body)
            .assert_error_naming(400, field);
    }

    // Exactly at the limits is fine.
    let five: Vec<Value> = (0..4)
        .map(|i| chat("2024-01-01T10:00:00Z", &format!("l{i}"), "u"))
        .chain([chat("2024-01-01T10:00:01Z", &"y".repeat(100), "u")])
        .collect();
    app.add_transcript(KEY_A, &ev, json!(five))
        .ok_json("RecordingDataEvent");
    // Only that batch reached the transcript.
    app.stop(KEY_A, &ev);
    let (_, file) = app.wait_transcript_file(KEY_A, &ev, 5);
    let texts: Vec<&str> = file["chatTranscriptList"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["transcript"].as_str())
        .collect();
    assert_eq!(&texts[..4], &["l0", "l1", "l2", "l3"], "{file:#}");
}

#[test]
fn cobrowse_events_are_checked() {
    let app = TestApp::spawn();
    let c = conv("cobrowse-fields");
    let ev = app.start(KEY_A, APP_A, &c);
    let with_event = |event: Value| json!({"conversationId": ev["conversationId"], "event": event, "instanceId": ev["instanceId"], "recorderId": ev["recorderId"]});
    let base = || json!({"payload": "p", "sequenceId": 1, "sessionId": "s1", "timestamp": 1});
    let mut cases: Vec<(Value, &str)> = Vec::new();
    for (field, bad) in [
        ("sequenceId", json!("1")),
        ("sequenceId", json!(2147483648i64)),
        ("sequenceId", json!(-2147483649i64)),
        ("sequenceId", json!(1.5)),
        ("sequenceId", json!(null)),
        ("sequenceId", json!(true)),
        ("timestamp", json!(9223372036854775808u64)),
        ("timestamp", json!(18446744073709551615u64)),
        ("timestamp", json!(2.5)),
        ("timestamp", json!("1700000000000")),
        ("sessionId", json!("")),
        ("sessionId", json!(5)),
        ("sessionId", json!("../x")),
        ("payload", json!(5)),
        ("payload", json!({"a": 1})),
        ("payload", json!(null)),
    ] {
        let mut event = base();
        event[field] = bad;
        cases.push((with_event(event), ["event.", field].concat().leak()));
    }
    for field in ["payload", "sequenceId", "sessionId", "timestamp"] {
        let mut event = base();
        event.as_object_mut().unwrap().remove(field);
        cases.push((with_event(event), ["event.", field].concat().leak()));
    }
    cases.push((with_event(json!("not an object")), "event"));
    cases.push((with_event(json!(null)), "event"));
    cases.push((
        json!({"conversationId": ev["conversationId"], "instanceId": ev["instanceId"], "recorderId": ev["recorderId"]}),
        "event",
    ));
    for (body, field) in cases {
        let resp = app.post_json("/recordings/cobrowse/event", KEY_A, &body);
        assert_eq!(resp.status, 400, "{body}: {}", resp.describe());
        resp.assert_error_naming(400, field);
    }
    // Numbers JSON itself cannot hold are a 400 too.
    let raw = format!(
        "{{\"conversationId\":\"{}\",\"instanceId\":\"{}\",\"recorderId\":\"{}\",\"event\":{{\"payload\":\"p\",\"sequenceId\":1e400,\"sessionId\":\"s1\",\"timestamp\":1}}}}",
        c,
        ev["instanceId"].as_str().unwrap(),
        ev["recorderId"].as_str().unwrap()
    );
    app.post_raw("/recordings/cobrowse/event", KEY_A, "application/json", raw.as_bytes())
        .assert_error(400);
    // None of it created a session.
    let listing = app
        .get(&format!("/recordings/{c}/cobrowse"), KEY_A)
        .ok_json("ConversationCobrowseSessionDataMessage");
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
fn bodies_over_the_limit_are_413() {
    let app = TestApp::spawn_with("[limits]\nmax_body_bytes = 4096\n", &[]);
    let c = conv("limit");
    let ev = app.start(KEY_A, APP_A, &c);
    // Just under the limit: accepted.
    let mut body =
        json!({"applicationId": APP_A, "conferenceId": conv("f"), "conversationId": conv("limit-ok"), "padding": ""});
    let size = serde_json::to_vec(&body).unwrap().len();
    body["padding"] = json!("p".repeat(4000 - size));
    app.post_json("/recordings/start", KEY_A, &body)
        .ok_json("RecordingDataEvent");

    let big = |extra: usize| "x".repeat(4096 + extra);
    let entries = json!([chat("2024-01-01T10:00:00Z", &big(0), "u")]);
    let resp = app.add_transcript(KEY_A, &ev, entries);
    resp.assert_error(413);
    let resp = app.add_event(KEY_A, &ev, "s1", 1, &big(10), 1);
    resp.assert_error(413);
    let resp = app.raw_request(
        "POST",
        &format!("{BASE_PATH}/recordings/start"),
        &[("Authorization", KEY_A), ("Content-Type", "application/json")],
        big(100_000).as_bytes(),
    );
    resp.assert_error(413);
    // Over the raw client too, with a declared length far beyond the limit.
    let resp = app.raw_request(
        "POST",
        &format!("{BASE_PATH}/recordings/start"),
        &[("Authorization", KEY_A), ("Content-Type", "application/json")],
        &vec![b' '; 64 * 1024],
    );
    resp.assert_error(413);
    // Chunked upload without a length.
    let mut chunked = Vec::new();
    for _ in 0..10 {
        chunked.extend_from_slice(format!("{:x}\r\n", 1024).as_bytes());
        chunked.extend_from_slice(&[b' '; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let resp = app.raw_request(
        "POST",
        &format!("{BASE_PATH}/recordings/start"),
        &[
            ("Authorization", KEY_A),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        &chunked,
    );
    resp.assert_error(413);
    // The instance saw none of it.
    let listing = app
        .get(&format!("/recordings/{c}/cobrowse"), KEY_A)
        .ok_json("ConversationCobrowseSessionDataMessage");
    assert_eq!(
        listing
            .get("cobrowseSessions")
            .and_then(Value::as_array)
            .map(Vec::len)
            .unwrap_or(0),
        0
    );
}

#[test]
fn the_default_body_limit_is_one_mebibyte() {
    let app = TestApp::spawn();
    let ev = app.start(KEY_A, APP_A, &conv("default-limit"));
    let body = serde_json::to_vec(&cobrowse_cmd(&ev, "s1", 1, &"x".repeat(1_100_000), 1)).unwrap();
    let resp = app.raw_request(
        "POST",
        &format!("{BASE_PATH}/recordings/cobrowse/event"),
        &[("Authorization", KEY_A), ("Content-Type", "application/json")],
        &body,
    );
    resp.assert_error(413);
    // Just under it is not refused for its size (the payload limit may refuse it: 400/413
    // naming event.payload, never `body`).
    let body = serde_json::to_vec(&cobrowse_cmd(&ev, "s1", 1, &"x".repeat(1_000_000), 1)).unwrap();
    let resp = app.post_raw("/recordings/cobrowse/event", KEY_A, "application/json", &body);
    assert!(resp.status == 400 || resp.status == 413, "{}", resp.describe());
    resp.assert_error_naming(resp.status, "event.payload");
}
