//! Cluster mode with real media: two recorder nodes, a three-server NATS JetStream cluster and one
//! shared store. Everything goes through node A, the one with little capacity, and is recorded
//! on node B: FFmpeg's plain RTP to the ports of B's answer (forwarded), aiortc's WHIP after a
//! 307 to B. B is killed with `kill -9` while FFmpeg sends: A shows the instance
//! PENDING_RECOVERY; B restarts, re-binds the ports and records on (ACTIVE with `recovered`);
//! the stop through A leaves one file per track holding both halves.

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
fn media_through_any_node_is_recorded_by_the_owner_across_its_kill_9() {
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
    let resp = a.publish(
        "rtp",
        &conference,
        "userId=agent&type=CAM",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000"), ("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let ports = answer_ports(&resp.text());
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
}
