//! Admission control: a node at its budget refuses new starts and publishes with 503, code
//! AT_CAPACITY, `field` naming the limit and `Retry-After`, creates nothing for them, keeps what
//! it already records, exports what it holds on /metrics, and takes work again once capacity is
//! given back (a session ended). Sessions re-bound after a `kill -9` count again.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// A budget of 25 units and sessions of 10: two sessions fit, a third does not, and with two
/// open the 5 units left are below the cheapest session, so a start is refused too.
const SMALL_NODE: &str =
    "[capacity]\nbudget = 25\nrtp_session = 10\nwhip_session = 10\nmax_cpu_percent = 0\nretry_after_secs = 3\n";

fn publish(app: &TestApp, transport: &str, event: &serde_json::Value, user: &str) -> Resp {
    publish_opus(app, KEY_A, transport, event, user)
}

fn assert_at_capacity(resp: &Resp, limit: &str) {
    let body = resp.assert_error(503);
    assert_eq!(body["code"], "AT_CAPACITY", "{}", resp.describe());
    assert_eq!(body["field"], limit, "{}", resp.describe());
    assert_eq!(resp.header("retry-after"), Some("3"), "{}", resp.describe());
    assert!(
        body["message"].as_str().unwrap().contains("capacity"),
        "{}",
        resp.describe()
    );
}

/// The `recorder_capacity_units{what=...}` sample and the refusal counter.
fn capacity(app: &TestApp, what: &str) -> f64 {
    let resp = app.get_root("/metrics", KEY_ADMIN);
    resp.assert_status(200);
    let text = resp.text();
    let name = if what == "refused" {
        "recorder_capacity_refused_total".to_string()
    } else {
        format!("recorder_capacity_units{{what=\"{what}\"}}")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&name).map(|v| v.trim().parse::<f64>().unwrap()))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

fn num_streams(app: &TestApp, event: &serde_json::Value) -> usize {
    app.instance(KEY_A, event)["streams"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_node_at_its_budget_refuses_with_503_and_retry_after_and_creates_nothing_for_it() {
    let app = TestApp::spawn_with(SMALL_NODE, &[]);
    assert_eq!(capacity(&app, "budget"), 25.0);
    assert_eq!(capacity(&app, "available_live"), 25.0);
    let ready = app.get_root("/ready", NO_KEY);
    assert_eq!(ready.json()["capacity"]["accepting"], true, "{}", ready.describe());
    assert_eq!(
        ready.json()["capacity"]["refusedBy"],
        serde_json::Value::Null,
        "{}",
        ready.describe()
    );
    let one = app.start(KEY_A, APP_A, &conv("cap-1"));
    let two = app.start(KEY_A, APP_A, &conv("cap-2"));
    let first = publish(&app, "rtp", &one, "u1");
    first.assert_status(201);
    publish(&app, "rtp", &one, "u2").assert_status(201);
    assert_eq!(capacity(&app, "used_live"), 20.0);
    assert_eq!(capacity(&app, "available_live"), 5.0);

    // A third session, over plain RTP or WHIP, does not fit.
    assert_at_capacity(&publish(&app, "rtp", &two, "u3"), "capacity.budget");
    assert_at_capacity(&publish(&app, "whip", &two, "u3"), "capacity.budget");
    // Nor does a new instance: the 5 units left hold no session.
    let third = conv("cap-3");
    assert_at_capacity(
        &app.post_json(
            "/recordings/start",
            KEY_A,
            &json!({"applicationId": APP_A, "conferenceId": format!("conf-{third}"), "conversationId": third}),
        ),
        "capacity.budget",
    );
    assert_eq!(capacity(&app, "refused"), 3.0);
    // /ready says the node takes no new recording (and why) while it stays READY for what it
    // holds; asking is no refusal.
    let ready = app.get_root("/ready", NO_KEY);
    ready.assert_status(200);
    let said = &ready.json()["capacity"];
    assert_eq!(said["accepting"], false, "{}", ready.describe());
    assert_eq!(said["refusedBy"], "capacity.budget", "{}", ready.describe());
    assert_eq!(said["budgetUnits"], 25, "{}", ready.describe());
    assert_eq!(said["availableLiveUnits"], 5, "{}", ready.describe());
    assert_eq!(capacity(&app, "refused"), 3.0);

    // Nothing half-way: no instance for the refused start, no stream for the refused
    // publishes, the admitted ones untouched and still live.
    app.get(&format!("/recordings/{third}"), KEY_A).assert_error(404);
    assert_eq!(num_streams(&app, &two), 0, "{}", app.instance(KEY_A, &two));
    assert_eq!(num_streams(&app, &one), 2, "{}", app.instance(KEY_A, &one));
    assert_eq!(capacity(&app, "used_live"), 20.0, "refusals hold nothing");

    // Ending a session gives its units back (once its receive work has ended).
    let location = first.header("location").unwrap().to_string();
    app.request("DELETE", &app.url(&location), &[("Authorization", KEY_A)], None)
        .assert_status(200);
    poll(Duration::from_secs(10), "a session's capacity given back", || {
        let resp = publish(&app, "rtp", &two, "u3");
        if resp.status == 503 {
            return None;
        }
        resp.assert_status(201);
        Some(())
    });
    assert_eq!(num_streams(&app, &two), 1);
    assert_eq!(capacity(&app, "used_live"), 20.0);
    // Stopping an instance frees its sessions too; then a start fits again.
    app.stop(KEY_A, &one);
    poll(Duration::from_secs(10), "a stop's capacity given back", || {
        (capacity(&app, "used_live") == 10.0).then_some(())
    });
    app.start(KEY_A, APP_A, &third);
}

#[test]
fn plain_rtp_sessions_re_bound_after_kill_9_hold_their_capacity_again() {
    let mut app = TestApp::spawn_with(SMALL_NODE, &[]);
    let one = app.start(KEY_A, APP_A, &conv("cap-restart"));
    publish(&app, "rtp", &one, "u1").assert_status(201);
    publish(&app, "rtp", &one, "u2").assert_status(201);
    assert_eq!(capacity(&app, "used_live"), 20.0);
    app.kill9();
    app.restart();
    // Both sessions are re-bound (same ports, so a sender that kept sending goes on), and count.
    poll(Duration::from_secs(15), "restored sessions counted", || {
        (capacity(&app, "used_live") == 20.0).then_some(())
    });
    assert_at_capacity(&publish(&app, "rtp", &one, "u3"), "capacity.budget");
    assert_eq!(num_streams(&app, &one), 2);
}
