//! A bounded, seeded fuzz run of malformed bodies against the write endpoints: every answer is a
//! 400/404/413 `Error`, never a 5xx, the service stays up and stored data does not change.

use serde_json::{json, Value};

use crate::helpers::*;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    Bool,
    I32,
    I64,
    DateTime,
    Obj,
    ObjArray,
}

/// A replacement value: JSON, or raw text spliced into the serialized body (numbers JSON
/// parsers cannot hold).
enum Bad {
    Json(Value),
    Raw(&'static str),
}

fn wrong_values(kind: Kind) -> Vec<Bad> {
    use Bad::*;
    match kind {
        Kind::Str => vec![
            Json(json!(1)),
            Json(json!(-1)),
            Json(json!(1.5)),
            Json(json!(true)),
            Json(json!(null)),
            Json(json!([])),
            Json(json!({})),
            Json(json!(["a"])),
            Raw("1e400"),
        ],
        Kind::Bool => vec![
            Json(json!("true")),
            Json(json!(1)),
            Json(json!(0)),
            Json(json!([])),
            Json(json!({})),
            Raw("-1e400"),
        ],
        Kind::I32 => vec![
            Json(json!("1")),
            Json(json!(1.5)),
            Json(json!(-0.5)),
            Json(json!(2147483648i64)),
            Json(json!(-2147483649i64)),
            Json(json!(null)),
            Json(json!(true)),
            Json(json!([])),
            Json(json!({})),
            Raw("1e400"),
            Raw("99999999999999999999999999"),
        ],
        Kind::I64 => vec![
            Json(json!("1")),
            Json(json!(2.5)),
            Json(json!(9223372036854775808u64)),
            Json(json!(null)),
            Json(json!([1])),
            Raw("-9223372036854775809"),
            Raw("1e400"),
        ],
        Kind::DateTime => vec![
            Json(json!("not-a-date")),
            Json(json!("2024-02-30T10:00:00Z")),
            Json(json!("2024-01-01")),
            Json(json!(1700000000)),
            Json(json!(null)),
            Json(json!("")),
            Json(json!(true)),
        ],
        Kind::Obj => vec![
            Json(json!("x")),
            Json(json!(1)),
            Json(json!([])),
            Json(json!(null)),
            Json(json!(true)),
        ],
        Kind::ObjArray => vec![
            Json(json!("x")),
            Json(json!(1)),
            Json(json!({})),
            Json(json!(null)),
            Json(json!([1])),
            Json(json!(["x"])),
            Json(json!([null])),
            Json(json!([[]])),
        ],
    }
}

struct Target {
    path: &'static str,
    body: Value,
    /// Required or typed fields: (dotted path, kind).
    fields: Vec<(&'static str, Kind)>,
}

fn set_at(body: &mut Value, path: &str, value: Value) {
    let mut node = body;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        node = match part.parse::<usize>() {
            Ok(i) => &mut node[i],
            Err(_) => &mut node[*part],
        };
    }
    let last = parts[parts.len() - 1];
    match last.parse::<usize>() {
        Ok(i) => node[i] = value,
        Err(_) => node[last] = value,
    }
}

fn remove_at(body: &mut Value, path: &str) {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, path),
    };
    let mut node = body;
    if let Some(parent) = parent {
        for part in parent.split('.') {
            node = match part.parse::<usize>() {
                Ok(i) => &mut node[i],
                Err(_) => &mut node[part],
            };
        }
    }
    node.as_object_mut().expect("fields live in objects").remove(last);
}

/// One malformed body for `target`, and what it is (for failure messages).
fn mutate(rng: &mut Rng, target: &Target) -> (Vec<u8>, String) {
    let valid = serde_json::to_vec(&target.body).unwrap();
    match rng.below(11) {
        0 => {
            let cut = rng.below(valid.len());
            (valid[..cut].to_vec(), format!("truncated at {cut}"))
        }
        1..=4 => {
            let (field, kind) = target.fields[rng.below(target.fields.len())];
            let choices = wrong_values(kind);
            let choice = &choices[rng.below(choices.len())];
            let mut body = target.body.clone();
            match choice {
                Bad::Json(v) => {
                    set_at(&mut body, field, v.clone());
                    (serde_json::to_vec(&body).unwrap(), format!("{field} = {v}"))
                }
                Bad::Raw(text) => {
                    set_at(&mut body, field, json!("__RAW__"));
                    let s = serde_json::to_string(&body).unwrap().replace("\"__RAW__\"", text);
                    (s.into_bytes(), format!("{field} = {text}"))
                }
            }
        }
        5 | 6 => {
            let (field, _) = target.fields[rng.below(target.fields.len())];
            let mut body = target.body.clone();
            if field.ends_with("audio") || field.ends_with("video") {
                body = json!([body]);
                (serde_json::to_vec(&body).unwrap(), "wrapped in an array".into())
            } else {
                remove_at(&mut body, field);
                (serde_json::to_vec(&body).unwrap(), format!("without {field}"))
            }
        }
        7 => {
            let shapes = [
                json!([]),
                json!(null),
                json!("body"),
                json!(12),
                json!([target.body.clone()]),
                json!(true),
            ];
            let shape = shapes[rng.below(shapes.len())].clone();
            (serde_json::to_vec(&shape).unwrap(), format!("body = {shape}"))
        }
        8 => {
            let (field, kind) = target.fields[rng.below(target.fields.len())];
            if !matches!(kind, Kind::Str | Kind::DateTime) {
                return (b"\xff\xfe\xfd".to_vec(), "non-UTF-8 bytes".into());
            }
            let mut body = target.body.clone();
            set_at(&mut body, field, json!("__BAD__"));
            let text = serde_json::to_vec(&body).unwrap();
            let at = text.windows(7).position(|w| w == b"__BAD__").unwrap();
            let mut bytes = text[..at].to_vec();
            bytes.extend_from_slice(&[b'o', 0xff, 0xc3, 0x28, b'k']);
            bytes.extend_from_slice(&text[at + 7..]);
            (bytes, format!("{field} with invalid UTF-8"))
        }
        9 => {
            let depth = 200 + rng.below(5000);
            let (field, _) = target.fields[rng.below(target.fields.len())];
            let mut body = target.body.clone();
            set_at(&mut body, field, json!("__DEEP__"));
            let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let s = serde_json::to_string(&body).unwrap().replace("\"__DEEP__\"", &nested);
            (s.into_bytes(), format!("{field} nested {depth} deep"))
        }
        _ => {
            let depth = 200 + rng.below(3000);
            let s = format!("{}{}", "{\"a\":".repeat(depth), "1".to_string() + &"}".repeat(depth));
            (s.into_bytes(), format!("object nested {depth} deep"))
        }
    }
}

#[test]
fn malformed_bodies_never_cause_a_5xx_or_change_stored_data() {
    let app = TestApp::spawn();
    let c = conv("fuzz");
    let ev = app.start(KEY_A, APP_A, &c);
    let entries = json!([
        chat("2024-07-01T10:00:00Z", "kept one", "u1"),
        chat("2024-07-01T10:00:01Z", "kept two", "u2")
    ]);
    app.add_transcript(KEY_A, &ev, entries).ok_json("RecordingDataEvent");
    app.add_event(KEY_A, &ev, "s1", 2, "kept-2", 2)
        .ok_json("RecordingDataEvent");
    app.add_event(KEY_A, &ev, "s1", 1, "kept-1", 1)
        .ok_json("RecordingDataEvent");
    let snapshot = |app: &TestApp| {
        let mut listing = app
            .get(&format!("/recordings/{c}"), KEY_A)
            .ok_json("ConversationMessage");
        listing.as_object_mut().unwrap().remove("duration");
        (
            app.instance(KEY_A, &ev),
            listing,
            app.get(&format!("/recordings/{c}/cobrowse"), KEY_A)
                .ok_json("ConversationCobrowseSessionDataMessage"),
        )
    };
    let before = snapshot(&app);

    let ids = |v: Value| -> Value {
        let mut v = v;
        v["conversationId"] = ev["conversationId"].clone();
        v["instanceId"] = ev["instanceId"].clone();
        v["recorderId"] = ev["recorderId"].clone();
        v
    };
    let targets = [
        Target {
            path: "/recordings/start",
            // The live conversation: even a body that slipped through could not start anything.
            body: json!({"applicationId": APP_A, "conferenceId": conv("f"), "conversationId": c, "audio": true, "video": true}),
            fields: vec![
                ("applicationId", Kind::Str),
                ("conferenceId", Kind::Str),
                ("conversationId", Kind::Str),
                ("audio", Kind::Bool),
                ("video", Kind::Bool),
            ],
        },
        Target {
            path: "/recordings/chat/transcript/add",
            body: ids(
                json!({"chatTranscriptList": [chat("2024-07-01T11:00:00Z", "fuzz", "u9"), chat("2024-07-01T11:00:01Z", "fuzz", "u9")]}),
            ),
            fields: vec![
                ("conversationId", Kind::Str),
                ("instanceId", Kind::Str),
                ("recorderId", Kind::Str),
                ("chatTranscriptList", Kind::ObjArray),
                ("chatTranscriptList.0.timeStamp", Kind::DateTime),
                ("chatTranscriptList.0.transcript", Kind::Str),
                ("chatTranscriptList.0.userId", Kind::Str),
                ("chatTranscriptList.1.timeStamp", Kind::DateTime),
                ("chatTranscriptList.1.userId", Kind::Str),
            ],
        },
        Target {
            path: "/recordings/cobrowse/event",
            body: ids(json!({"event": {"payload": "fuzz", "sequenceId": 3, "sessionId": "s-fuzz", "timestamp": 3}})),
            fields: vec![
                ("conversationId", Kind::Str),
                ("instanceId", Kind::Str),
                ("recorderId", Kind::Str),
                ("event", Kind::Obj),
                ("event.payload", Kind::Str),
                ("event.sequenceId", Kind::I32),
                ("event.sessionId", Kind::Str),
                ("event.timestamp", Kind::I64),
            ],
        },
    ];

    let mut rng = Rng::new(0x5EED_2024_0601);
    let mut failures = Vec::new();
    for round in 0..200 {
        let target = &targets[rng.below(targets.len())];
        let (body, what) = if round % 50 == 49 {
            // A few oversized bodies.
            (vec![b'['; 1_100_000], "1.1 MB body".to_string())
        } else {
            mutate(&mut rng, target)
        };
        let resp = if body.len() > 500_000 {
            app.raw_request(
                "POST",
                &format!("{BASE_PATH}{}", target.path),
                &[("Authorization", KEY_A), ("Content-Type", "application/json")],
                &body,
            )
        } else {
            app.post_raw(target.path, KEY_A, "application/json", &body)
        };
        let ok_status = matches!(resp.status, 400 | 404 | 413);
        let ok_body = resp
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json"))
            && serde_json::from_slice::<Value>(&resp.body)
                .is_ok_and(|b| b["code"].is_string() && b["message"].is_string() && b["occurred"].is_string());
        if !ok_status || !ok_body {
            failures.push(format!("round {round}: {} {what}: {}", target.path, resp.describe()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 malformed requests were not answered 400/404/413 with an Error body:\n{}",
        failures.len(),
        failures.join("\n")
    );

    app.get_root("/health", NO_KEY).assert_status(200);
    let after = snapshot(&app);
    assert_eq!(before, after, "malformed requests changed stored data");
    app.stop(KEY_A, &ev);
    let (_, file) = app.wait_transcript_file(KEY_A, &ev, 2);
    let texts: Vec<&str> = file["chatTranscriptList"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["transcript"].as_str())
        .collect();
    assert_eq!(texts, vec!["kept one", "kept two"]);
    app.wait_session_uploaded(KEY_A, &c, "s1");
    let listing = app
        .get(&format!("/recordings/{c}/cobrowse"), KEY_A)
        .ok_json("ConversationCobrowseSessionDataMessage");
    let ids: Vec<&str> = listing["cobrowseSessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["cobrowseSessionId"].as_str())
        .collect();
    assert_eq!(ids, vec!["s1"], "a malformed event created a session: {listing}");
}

/// Many writers at once against one instance. (sled 0.34's `flush_async` is known to lose
/// wake-ups when polled concurrently — spacejam/sled#1241, #1308 — which shows here as requests
/// that never get an answer.)
#[test]
fn the_service_answers_many_concurrent_requests() {
    const THREADS: i64 = 16;
    const PER_THREAD: i64 = 25;
    let app = TestApp::spawn();
    let c = conv("concurrent");
    let ev = app.start(KEY_A, APP_A, &c);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (app, ev) = (&app, &ev);
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    let seq = t * 100 + i;
                    app.add_event(KEY_A, ev, &format!("s{t}"), seq, &format!("{seq}"), seq)
                        .ok_json("RecordingDataEvent");
                    // Each thread also repeats an earlier sequenceId.
                    app.add_event(KEY_A, ev, &format!("s{t}"), t * 100, "dup", 0)
                        .ok_json("RecordingDataEvent");
                }
            });
        }
    });
    app.stop(KEY_A, &ev);
    for t in 0..THREADS {
        app.wait_session_uploaded(KEY_A, &c, &format!("s{t}"));
        let file: Value = serde_json::from_slice(
            &std::fs::read(app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &ev, &format!("s{t}"))).unwrap(),
        )
        .unwrap();
        let seqs: Vec<i64> = file["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["sequenceId"].as_i64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (0..PER_THREAD).map(|i| t * 100 + i).collect::<Vec<_>>(),
            "session s{t}"
        );
        assert_eq!(file["events"][0]["payload"], format!("{}", t * 100), "first copy wins");
    }
}

#[test]
fn odd_path_segments_are_refused_without_a_5xx() {
    let app = TestApp::spawn();
    let c = conv("paths");
    let ev = app.start(KEY_A, APP_A, &c);
    let (r, i) = (
        ev["recorderId"].as_str().unwrap().to_string(),
        ev["instanceId"].as_str().unwrap().to_string(),
    );
    let long = "x".repeat(5000);
    let odd = [
        "%ff",
        "%ff%fe",
        "%00",
        "a%00b",
        "%2F",
        "..",
        "%2e%2e",
        ".",
        "%20",
        "%c3%28",
        "%e2%82",
        "~",
        long.as_str(),
        "%25",
        "%",
        "%zz",
        "a%2Fb",
        "%5C",
        "%u0041",
        "%F0%9F%98%80",
    ];
    let mut failures = Vec::new();
    for seg in odd {
        let targets = [
            format!("{BASE_PATH}/recordings/{seg}"),
            format!("{BASE_PATH}/recordings/{seg}/active"),
            format!("{BASE_PATH}/recordings/{seg}/cobrowse"),
            format!("{BASE_PATH}/recordings/{c}/{seg}/{i}"),
            format!("{BASE_PATH}/recordings/{c}/{r}/{seg}/state"),
            format!("{BASE_PATH}/recordings/{c}/{r}/{i}/cobrowse/{seg}/url/attachment?conversationId={c}&id={r}&instanceId={i}"),
            format!("{BASE_PATH}/compositions/{seg}"),
            format!("{BASE_PATH}/recordings/attachment/cobrowse/{seg}/{r}/{i}/s1/events.json?Date=x&Expires=1&Signature=00"),
        ];
        for target in targets {
            let resp = app.raw_request(
                "GET",
                &target,
                &[("Authorization", KEY_A), ("referer", ALLOWED_ORIGIN)],
                b"",
            );
            let json_error = resp
                .header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json"))
                && serde_json::from_slice::<Value>(&resp.body).is_ok_and(|b| b["code"].is_string());
            if !(400..500).contains(&resp.status) || !json_error {
                failures.push(resp.describe());
            }
        }
        for target in [
            format!("{BASE_PATH}/recordings/{c}/{r}/{seg}/stop"),
            format!("{BASE_PATH}/storageproviders/{seg}/verify"),
        ] {
            let resp = app.raw_request("POST", &target, &[("Authorization", KEY_A)], b"");
            if !(400..500).contains(&resp.status) {
                failures.push(resp.describe());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "odd paths answered outside 4xx or without the Error body:\n{}",
        failures.join("\n")
    );
    assert_eq!(app.instance(KEY_A, &ev)["state"], "INITIALISED");
}

#[test]
fn odd_authorization_headers_are_401() {
    let app = TestApp::spawn();
    let target = format!("{BASE_PATH}/recordings/anything/active");
    let values: [&[u8]; 7] = [
        b"\xff\xfe",
        b"Bearer \xc3\x28",
        b"Bearer",
        b"   ",
        b"Bearer  Bearer key-a-global",
        b"key-a-global\x00",
        b"Basic key-a-global",
    ];
    for value in values {
        let mut head =
            format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: ").into_bytes();
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n\r\n");
        let resp = raw_bytes(app.port, &head);
        assert!(
            resp.status == 401 || resp.status == 400,
            "Authorization {:?}: {}",
            String::from_utf8_lossy(value),
            resp.describe()
        );
        assert!(resp.status != 200);
        if resp.status == 401 {
            resp.assert_error(401);
        }
    }
}
