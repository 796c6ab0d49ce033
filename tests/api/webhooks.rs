//! Completion webhooks and the maximum duration, against the real binary: an application's
//! events reach a real HTTP receiver on loopback — which fails at first, then recovers — in
//! order, signed, each with its id; an instance that reaches its maximum duration warns, stops by
//! itself with its reason, and says so in its events.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use testkit::webhook::{Receiver, Request};

use crate::helpers::*;

const SECRET: &str = "whsec-black-box";

fn verify(request: &Request) {
    let header = request.header("x-recorder-signature").expect("a signature header");
    let (t, v1) = header
        .split_once(",v1=")
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v)))
        .unwrap_or_else(|| panic!("signature {header:?}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&request.body);
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()), "signature");
}

fn app_with_webhook(receiver: &Receiver, extra: &str) -> TestApp {
    TestApp::spawn_with(
        &format!(
            r#"
[webhooks]
retry_base_ms = 100
retry_max_ms = 400
poll_interval_ms = 50

[organizations.org-a.applications.app-hooked]
allowed_origins = ["*"]
{extra}

[organizations.org-a.applications.app-hooked.storage]
provider = "LOCAL"
path = "{{tmp}}/storage-hooked"

[organizations.org-a.applications.app-hooked.webhook]
url = "{}"
secret = {{ env = "HOOK_SECRET" }}
"#,
            receiver.url()
        ),
        &[("HOOK_SECRET", SECRET)],
    )
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["data"]["state"].as_str() {
            Some(state) => format!("{} {state}", e["type"].as_str().unwrap()),
            None => e["type"].as_str().unwrap().to_string(),
        })
        .collect()
}

#[test]
fn events_reach_a_receiver_that_fails_then_recovers_in_order_and_signed() {
    let receiver = Receiver::start();
    receiver.fail_next(2);
    let app = app_with_webhook(&receiver, "");
    let c = conv("hooked");
    let ev = app.start(KEY_A, "app-hooked", &c);
    app.add_transcript(KEY_A, &ev, json!([chat("2024-05-01T10:00:00Z", "hello", "agent")]))
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &ev);
    let events: Vec<Value> = poll(Duration::from_secs(30), "recording.complete delivered", || {
        let accepted: Vec<Value> = receiver.accepted().iter().map(Request::json).collect();
        accepted
            .iter()
            .any(|e| e["type"] == "recording.complete")
            .then_some(accepted)
    });
    assert_eq!(
        kinds(&events),
        [
            "instance.state_changed INITIALISED",
            "instance.state_changed STOPPED",
            // Nothing was recorded: nothing to compose.
            "composition.failed",
            "artefact.uploaded",
            "recording.complete"
        ],
        "{events:#?}"
    );
    for (request, event) in receiver.accepted().iter().zip(&events) {
        verify(request);
        assert_eq!(request.header("x-recorder-event-id"), event["id"].as_str());
        assert_eq!(request.header("x-recorder-event-type"), event["type"].as_str());
        assert_eq!(event["conversationId"], c.as_str());
        assert_eq!(event["instanceId"], ev["instanceId"]);
        // The spec's message of the instance.
        assert_eq!(event["recording"]["instanceId"], ev["instanceId"], "{event:#}");
        assert!(event["recording"]["storageProfile"].is_object(), "{event:#}");
    }
    assert_eq!(events[3]["data"]["artefact"], "chatTranscript", "{:#}", events[3]);
    assert!(
        events[4]["data"]["location"]
            .as_str()
            .is_some_and(|l| l.ends_with("/recording.json")),
        "{:#}",
        events[4]
    );
    // The two refused deliveries were the first event's, retried with its id.
    let requests = receiver.requests();
    assert_eq!(requests.iter().filter(|r| r.status == 503).count(), 2);
    assert!(requests[..3]
        .iter()
        .all(|r| r.header("x-recorder-event-id") == events[0]["id"].as_str()));
    let ids: std::collections::BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "every event has its own id");
    // The debug tree counts them exactly.
    let tree = app.get("/debug/actors", KEY_ADMIN).json();
    let notifier = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "Notifier" && c["id"] == "org-a/app-hooked")
        .unwrap_or_else(|| panic!("{tree:#}"))
        .clone();
    assert_eq!(notifier["counters"]["num_failures"], 2, "{notifier:#}");
    assert_eq!(notifier["counters"]["num_delivered"], 5, "{notifier:#}");
}

#[test]
fn an_instance_at_its_maximum_duration_warns_then_stops_by_itself() {
    let receiver = Receiver::start();
    let app = app_with_webhook(&receiver, "max_instance_duration_secs = 3");
    let c = conv("max-duration");
    let ev = app.start(KEY_A, "app-hooked", &c);
    let stopped = poll(Duration::from_secs(30), "the instance stopped by itself", || {
        let instance = app.instance(KEY_A, &ev);
        (instance["state"] == "STOPPED").then_some(instance)
    });
    assert_eq!(stopped["stopReason"], "MAX_DURATION_REACHED", "{stopped:#}");
    let events: Vec<Value> = poll(Duration::from_secs(30), "recording.complete delivered", || {
        let accepted: Vec<Value> = receiver.accepted().iter().map(Request::json).collect();
        accepted
            .iter()
            .any(|e| e["type"] == "recording.complete")
            .then_some(accepted)
    });
    assert_eq!(
        kinds(&events),
        [
            "instance.state_changed INITIALISED",
            "instance.duration_warning",
            "instance.state_changed STOPPED",
            "composition.failed",
            "recording.complete"
        ],
        "{events:#?}"
    );
    assert_eq!(events[1]["data"]["maxDurationSecs"], 3, "{:#}", events[1]);
    assert_eq!(
        events[2]["data"]["stopReason"], "MAX_DURATION_REACHED",
        "{:#}",
        events[2]
    );
    // The stop is a normal one: the conversation may start again.
    let again = app.post_json(
        "/recordings/start",
        KEY_A,
        &json!({"applicationId": "app-hooked", "conferenceId": conv("room"), "conversationId": c}),
    );
    assert_eq!(again.status, 200, "{}", again.describe());
}
