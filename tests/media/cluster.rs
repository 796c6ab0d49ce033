//! Cluster mode with real media: two recorder nodes, a three-server NATS JetStream cluster and one
//! shared store. Everything goes through node A, the one with little capacity, and is recorded
//! on node B: FFmpeg's plain RTP to the ports of B's answer (forwarded), aiortc's WHIP after a
//! 307 to B. B is killed with `kill -9` while FFmpeg sends: A shows the instance
//! PENDING_RECOVERY; B restarts, re-binds the ports and records on (ACTIVE with `recovered`);
//! the stop through A leaves one file per track holding both halves. The conversation then goes
//! on on A (B down) and again on B: B's composition covers all three instances, A's read from the
//! shared store.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::nats::NatsCluster;

use crate::harness::*;

fn node(nats: &NatsCluster, name: &str, budget: u64, shared: &str, bucket_name: &str) -> TestApp {
    let urls: Vec<String> = nats.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let extra = format!(
        "[cluster]\nenabled = true\nnats_urls = [{}]\nreplicas = 3\nname = \"{bucket_name}\"\n\
         heartbeat_ms = 200\nnode_ttl_secs = 2\nrequest_timeout_ms = 2000\n\n\
         [capacity]\nbudget = {budget}\nmax_cpu_percent = 0\n\n\
         [signing]\nsecret = \"one-secret-shared-by-every-node-of-the-cluster\"\n",
        urls.join(", ")
    );
    let shared = shared.to_string();
    TestApp::spawn_with_profile_and(&extra, &[("RECORDER_RECORDER_ID", name)], move |_| {
        format!("provider = \"LOCAL\"\npath = \"{shared}\"")
    })
}

fn connected(app: &TestApp, num_nodes: u64) -> bool {
    let ready = app.request("GET", &format!("{}/ready", app.base_url), &[], None);
    let cluster = serde_json::from_slice::<Value>(&ready.body).unwrap_or_default()["cluster"].clone();
    cluster["connected"] == true && cluster["nodes"] == num_nodes
}

#[test]
fn media_through_any_node_is_recorded_by_the_owner_across_its_kill_9_and_composed_once_whole() {
    let _media = media_lock();
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsCluster::start(dir.path(), 3);
    let shared = dir.path().join("store");
    let shared = shared.to_string_lossy();
    let bucket_name = format!("rtc_media_{}", uuid::Uuid::new_v4().simple());
    let a = node(&nats, "node-a", 100, &shared, &bucket_name);
    let mut b = node(&nats, "node-b", 900, &shared, &bucket_name);
    for app in [&a, &b] {
        poll(Duration::from_secs(60), "both nodes in the cluster", || {
            connected(app, 2).then_some(())
        });
    }

    let conference = unique("room");
    let event = a.start(&unique("call"), &conference, true, true);
    assert_eq!(
        event["recorderId"], "node-b",
        "placed on the node with capacity: {event}"
    );

    // Plain RTP through A: the answer is B's, with B's ports.
    let ports = publish_av_rtp(&a, &conference, "agent");
    assert!(
        ports.iter().all(|p| (b.rtp_ports.0..=b.rtp_ports.1).contains(p)),
        "{ports:?} are B's ports {:?}",
        b.rtp_ports
    );
    let seconds = 14;
    let mut args = lavfi_av(seconds);
    args.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    // A keyframe every 10 frames, as a WebRTC sender answering the restart's PLI would give.
    let gop = args.iter().position(|x| x == "-g").expect("a keyframe interval") + 1;
    args[gop] = "10".into();
    args.extend(rtp_out("0:a", "opus", 111, ports[1]));
    let sender = ffmpeg(&args);

    // WHIP through A: redirected to B, where aiortc publishes.
    let whip = crate::whip::aiortc(&a, &conference, "customer", KEY, 3, "vp8");
    assert!(
        whip["answeredBy"].as_str().unwrap().starts_with(&b.base_url),
        "answered by B: {whip}"
    );
    let path = instance_path(&event);
    poll(Duration::from_secs(10), "ACTIVE through A", || {
        (a.get(&format!("{path}/state"), KEY).json()["state"] == "ACTIVE").then_some(())
    });
    wait_written(&b, 30);

    // B dies: A shows it PENDING_RECOVERY; B restarts and records on.
    let killed = Instant::now();
    let killed_wall = chrono::Utc::now().timestamp_millis();
    b.kill9();
    poll(Duration::from_secs(10), "PENDING_RECOVERY through A", || {
        (a.get(&format!("{path}/state"), KEY).json()["state"] == "PENDING_RECOVERY").then_some(())
    });
    b.restart();
    let downtime = killed.elapsed().as_secs_f64();
    let restarted_wall = chrono::Utc::now().timestamp_millis();
    poll(Duration::from_secs(20), "ACTIVE with recovered through A", || {
        let state = a.get(&format!("{path}/state"), KEY).json();
        // Shown if the poll times out: what A and B each say.
        eprintln!("A: {state} B: {}", b.get(&format!("{path}/state"), KEY).text());
        (state["state"] == "ACTIVE").then_some(())
    });
    wait_ok(sender, "sender");
    let stopped = a.stop(&event);
    assert_eq!(stopped["state"], "STOPPED", "{stopped:#}");
    let instance = a.instance(&event);
    assert!(instance["recovered"].is_string(), "{instance:#}");
    let all = tracks(&instance);
    let sent_video = whip["videoFrames"].as_u64().unwrap();
    let sent_audio = whip["audioFrames"].as_u64().unwrap();
    assert_track(
        find_track(&all, "customer", "CAM", "VIDEO"),
        "vp8",
        sent_video,
        3.0 - 1.0 / 30.0,
    );
    assert_track(find_track(&all, "customer", "CAM", "AUDIO"), "opus", sent_audio, 3.0);
    for (kind, frame_secs) in [("VIDEO", 1.0 / 30.0), ("AUDIO", 0.020)] {
        let track = find_track(&all, "agent", "CAM", kind);
        assert!(millis(&track["started"]) < killed_wall, "{track}");
        assert!(millis(&track["stopped"]) > restarted_wall + 1000, "{track}");
        let p = probe(&track_file(track));
        let lost = p.duration - p.num_frames as f64 * frame_secs;
        assert!(
            lost <= downtime + 1.0,
            "{kind}: {lost:.2} s lost, downtime {downtime:.2} s: {p:?}"
        );
    }

    // The conversation goes on: on A while B is down, then on B again.
    let conversation = event["conversationId"].as_str().unwrap().to_string();
    b.kill9();
    poll(Duration::from_secs(10), "A alone", || connected(&a, 1).then_some(()));
    let second = record_a_little(&a, &conversation);
    assert_eq!(second["recorderId"], "node-a", "{second}");
    b.restart();
    for app in [&a, &b] {
        poll(Duration::from_secs(60), "both nodes back", || {
            connected(app, 2).then_some(())
        });
    }
    let third = record_a_little(&a, &conversation);
    assert_eq!(third["recorderId"], "node-b", "{third}");
    // B composes the whole conversation: its two instances and A's, the time between cut.
    wait_composed(&b, &conversation, &third["instanceId"]);
    // Asked through A, the composition's status comes from B, which made it.
    let through_a = a.get(&format!("/compositions/{conversation}"), KEY);
    assert_eq!(through_a.status, 200, "{}", through_a.text());
    assert_eq!(
        through_a.json()["instanceId"],
        third["instanceId"],
        "{}",
        through_a.text()
    );
    let listing = a.get(&format!("/recordings/{conversation}"), KEY).json();
    let spans: Vec<f64> = listing["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (millis(&r["stopped"]) - millis(&r["started"])) as f64 / 1000.0)
        .collect();
    assert_eq!(spans.len(), 3, "{listing:#}");
    let stored: Vec<_> = files_under(std::path::Path::new(&*shared))
        .into_iter()
        .filter(|p| p.ends_with("composition.mp4"))
        .collect();
    assert_eq!(stored.len(), 1, "one composition: {stored:?}");
    let composed = container_duration(&stored[0]).expect("a composition with a duration");
    let total: f64 = spans.iter().sum();
    assert!(
        (composed - total).abs() < 1.0,
        "the composition ({composed:.2} s) covers the three instances ({spans:?})"
    );
    // B down: A answers for B's stopped, uploaded instance from the catalogue.
    b.kill9();
    poll(Duration::from_secs(10), "A alone again", || {
        connected(&a, 1).then_some(())
    });
    let seen = a.get(&instance_path(&third), KEY);
    assert_eq!(seen.status, 200, "{}", seen.text());
    assert_eq!(seen.json()["state"], "STOPPED", "{}", seen.text());
}

/// A new instance of `conversation` started through `app`, 3 s of plain RTP through it, stopped.
fn record_a_little(app: &TestApp, conversation: &str) -> Value {
    let conference = unique("room");
    let event = poll(Duration::from_secs(10), "a start", || {
        let resp = app.post_json(
            "/recordings/start",
            KEY,
            &serde_json::json!({"applicationId": "app-a", "conversationId": conversation, "conferenceId": conference}),
        );
        (resp.status == 200).then(|| resp.json())
    });
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=agent&type=MIC",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let port = answer_ports(&resp.text())[0];
    let mut args = args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000:duration=3",
    ]);
    args.extend(rtp_out("0", "opus", 111, port));
    wait_ok(ffmpeg(&args), "ffmpeg");
    assert_eq!(app.stop(&event)["state"], "STOPPED");
    event
}
