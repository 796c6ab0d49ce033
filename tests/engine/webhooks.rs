//! Webhooks from the durable outbox: a receiver that is down for minutes (on the clock) gets every
//! event afterwards, in order, each with its id and a valid signature.

use std::time::Duration;

use hmac::{Hmac, Mac};
use recorder_actors::engine::{ApplicationPolicy, Webhook, WebhookDelivery};
use recorder_actors::snapshot::{Counters, NotifierCounters};
use recorder_actors::storage::Secret;
use sha2::Sha256;
use testkit::engine::{EngineHarness, HarnessSettings};
use testkit::webhook::{Receiver, Request};

use crate::support::*;

const SECRET: &str = "whsec-harness";

/// Checks `X-Recorder-Signature: t=<t>,v1=<hex>` against HMAC-SHA256(secret, "<t>.<body>").
pub fn assert_signed(request: &Request) {
    let header = request.header("x-recorder-signature").expect("a signature header");
    let (t, v1) = header
        .split_once(",v1=")
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v)))
        .unwrap_or_else(|| panic!("signature {header:?}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&request.body);
    let expected = hex::encode(mac.finalize().into_bytes());
    assert_eq!(v1, expected, "signature of {}", String::from_utf8_lossy(&request.body));
}

async fn notifier(engine: &EngineHarness) -> NotifierCounters {
    engine
        .tree()
        .await
        .children
        .iter()
        .find_map(|c| match c.counters {
            Counters::Notifier(n) => Some(n),
            _ => None,
        })
        .expect("the application's notifier")
}

#[tokio::test]
async fn a_receiver_down_for_minutes_gets_every_event_afterwards_in_order() {
    let receiver = Receiver::start();
    receiver.set_down(true);
    let engine = EngineHarness::with(HarnessSettings {
        policy: ApplicationPolicy {
            webhook: Some(Webhook {
                url: receiver.url(),
                secret: Secret::new(SECRET),
            }),
            ..Default::default()
        },
        webhooks: WebhookDelivery {
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(120),
            ..Default::default()
        },
        ..HarnessSettings::default()
    });
    let instance = engine.start_recording(&unique("call"), &unique("room")).await;
    engine.stop(&instance).await.unwrap();
    engine
        .wait_for_async(PATIENCE, "a first failed delivery", || async {
            (notifier(&engine).await.num_failures >= 1).then_some(())
        })
        .await;
    // Ten minutes down: each retry on the clock fails (the backoff reaches its 2 min ceiling).
    for _ in 0..5 {
        let failed = notifier(&engine).await.num_failures;
        engine.advance(Duration::from_secs(120));
        engine
            .wait_for_async(PATIENCE, "the retry", || async {
                (notifier(&engine).await.num_failures > failed).then_some(())
            })
            .await;
    }
    assert!(receiver.accepted().is_empty());
    // The receiver is back: the next retry delivers the first event, the rest follow at once.
    receiver.set_down(false);
    engine.advance(Duration::from_secs(120));
    let accepted = engine
        .wait_for(PATIENCE, "three events delivered", || {
            Some(receiver.accepted()).filter(|a| a.len() == 3)
        })
        .await;
    let bodies: Vec<serde_json::Value> = accepted.iter().map(Request::json).collect();
    let kinds: Vec<(&str, &str)> = bodies
        .iter()
        .map(|b| (b["type"].as_str().unwrap(), b["data"]["state"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        kinds,
        [
            ("instance.state_changed", "INITIALISED"),
            ("instance.state_changed", "STOPPED"),
            ("recording.complete", "")
        ],
        "{bodies:#?}"
    );
    for (request, body) in accepted.iter().zip(&bodies) {
        assert_signed(request);
        assert_eq!(request.header("x-recorder-event-id"), body["id"].as_str());
        assert_eq!(body["instanceId"], instance.instance_id.as_str());
        // The instance as recording.json shows it now (the harness renders the engine's record).
        assert_eq!(
            body["recording"]["instance_id"],
            instance.instance_id.as_str(),
            "{body:#}"
        );
    }
    // Every failed attempt was at the first event, with its id: at least once, in order.
    let first_id = bodies[0]["id"].as_str().unwrap();
    let failed: Vec<Request> = receiver.requests().into_iter().filter(|r| r.status != 200).collect();
    assert_eq!(failed.len(), 6, "one failed attempt, then one per retry while down");
    assert!(failed.iter().all(|r| r.header("x-recorder-event-id") == Some(first_id)));
    let counters = notifier(&engine).await;
    assert_eq!((counters.num_delivered, counters.num_pending), (3, 0), "{counters:?}");
    assert_eq!(counters.num_failures, failed.len() as u64, "{counters:?}");
}
