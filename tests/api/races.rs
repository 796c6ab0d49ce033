//! Concurrent requests against one conversation: the invariants hold whatever the interleaving
//! (one live instance per conversation, stop is idempotent, every acknowledged entry or event
//! reaches the stored artefact).

use std::sync::Barrier;

use serde_json::{json, Value};

use crate::helpers::*;

#[test]
fn concurrent_stops_of_one_instance_all_answer_200_stopped() {
    let app = TestApp::spawn();
    for round in 0..5 {
        let ev = app.start(KEY_A, APP_A, &conv(&format!("double-stop-{round}")));
        let barrier = Barrier::new(6);
        let answers: Vec<Resp> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let (app, ev, barrier) = (&app, &ev, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        app.post_empty(&format!("{}/stop", instance_path(ev)), KEY_A)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for resp in &answers {
            assert_eq!(
                resp.status,
                200,
                "round {round}: a concurrent stop is not idempotent: {}",
                resp.describe()
            );
            let body = resp.ok_json("RecordingDataEvent");
            assert_eq!(body["state"], "STOPPED", "{}", resp.describe());
        }
        assert_eq!(app.instance(KEY_A, &ev)["state"], "STOPPED");
    }
    app.get_root("/health", NO_KEY).assert_status(200);
}

#[test]
fn concurrent_starts_of_one_conversation_make_exactly_one_instance() {
    let app = TestApp::spawn();
    for round in 0..5 {
        let c = conv(&format!("double-start-{round}"));
        let barrier = Barrier::new(6);
        let answers: Vec<Resp> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let (app, c, barrier) = (&app, &c, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        app.post_json(
                            "/recordings/start",
                            KEY_A,
                            &json!({"applicationId": APP_A, "conferenceId": conv("f"), "conversationId": c}),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok: Vec<&Resp> = answers.iter().filter(|r| r.status == 200).collect();
        assert_eq!(
            ok.len(),
            1,
            "round {round}: {:#?}",
            answers.iter().map(Resp::describe).collect::<Vec<_>>()
        );
        for resp in answers.iter().filter(|r| r.status != 200) {
            resp.assert_error(409);
        }
        let listing = app
            .get(&format!("/recordings/{c}"), KEY_A)
            .ok_json("ConversationMessage");
        assert_eq!(listing["recordings"].as_array().map(Vec::len), Some(1), "{listing}");
    }
}

#[test]
fn transcript_lines_racing_a_stop_all_reach_the_artefact() {
    let app = TestApp::spawn();
    let c = conv("race-transcript");
    let ev = app.start(KEY_A, APP_A, &c);
    let n = 60;
    let (accepted, stop): (Vec<Value>, Resp) = std::thread::scope(|scope| {
        let adder = scope.spawn(|| {
            let mut accepted = Vec::new();
            for i in 0..n {
                let entry = chat(
                    &format!("2024-08-01T10:{:02}:{:02}Z", i / 60, i % 60),
                    &format!("line {i}"),
                    "u1",
                );
                let resp = app.add_transcript(KEY_A, &ev, json!([entry]));
                assert_eq!(resp.status, 200, "line {i}: {}", resp.describe());
                accepted.push(entry);
            }
            accepted
        });
        let stopper = scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(30));
            app.post_empty(&format!("{}/stop", instance_path(&ev)), KEY_A)
        });
        (adder.join().unwrap(), stopper.join().unwrap())
    });
    stop.ok_json("RecordingDataEvent");
    let (_, file) = app.wait_transcript_file(KEY_A, &ev, accepted.len());
    let texts: Vec<&str> = file["chatTranscriptList"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["transcript"].as_str())
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, expected, "every acknowledged line, in order");
}

#[test]
fn cobrowse_events_racing_a_stop_all_reach_the_artefact() {
    let app = TestApp::spawn();
    let c = conv("race-cobrowse");
    let ev = app.start(KEY_A, APP_A, &c);
    let n = 60i64;
    let stop = std::thread::scope(|scope| {
        let adder = scope.spawn(|| {
            for i in (0..n).rev() {
                let resp = app.add_event(KEY_A, &ev, "s1", i, &format!("e{i}"), i);
                assert_eq!(resp.status, 200, "event {i}: {}", resp.describe());
            }
        });
        let stopper = scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(30));
            app.post_empty(&format!("{}/stop", instance_path(&ev)), KEY_A)
        });
        adder.join().unwrap();
        stopper.join().unwrap()
    });
    stop.ok_json("RecordingDataEvent");
    let path = app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &ev, "s1");
    let file = poll(UPLOAD_TIMEOUT, "all 60 events in the stored session", || {
        let file: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        (file["events"].as_array()?.len() == n as usize).then_some(file)
    });
    let seqs: Vec<i64> = file["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequenceId"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (0..n).collect::<Vec<_>>());
}
