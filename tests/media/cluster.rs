//! Cluster mode with real media: two recorder nodes, a three-server NATS JetStream cluster and one
//! object store they share (an Azure Blob container on Azurite: real object keys).
//!
//! 1. Everything goes through node A, the one with little capacity, and is recorded on node B:
//!    FFmpeg's plain RTP to the ports of B's answer (forwarded), aiortc's WHIP after a 307 to B.
//!    B is killed with `kill -9` while FFmpeg sends: A shows the instance PENDING_RECOVERY; B
//!    restarts, re-binds the ports and records on (ACTIVE with `recovered`); the stop through A
//!    leaves one file per track holding both halves. The conversation then goes on on A (B down)
//!    and again on B: B's composition covers all three instances, A's read from the store.
//! 2. With every NATS server down, a node's live instance records on (every frame) while cluster
//!    commands answer 503, and the catalogue catches up once NATS is back. One node composes a
//!    conversation at a time: while B's composition of it is not uploaded (its store frozen), A's
//!    composition of the same conversation waits, queued, for the composition lease; once B's
//!    upload is through, A composes everything.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::azurite::{Azurite, Container};
use testkit::nats::NatsCluster;

use crate::harness::*;

/// The environment variable the nodes read the Azure connection string from.
const AZURE_CONNECTION_VAR: &str = "RTC_TEST_AZURE_CONNECTION";

/// Fetches `url` (a provider's signed URL) into `path`.
fn download(url: &str, path: &std::path::Path) {
    let resp = ureq::get(url)
        .timeout(Duration::from_secs(60))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let mut file = std::fs::File::create(path).unwrap();
    std::io::copy(&mut resp.into_reader(), &mut file).unwrap();
}

fn node(nats: &NatsCluster, name: &str, budget: u64, store: &Container, bucket_name: &str) -> TestApp {
    let urls: Vec<String> = nats.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let extra = format!(
        "[cluster]\nenabled = true\nnats_urls = [{}]\nreplicas = 3\nname = \"{bucket_name}\"\n\
         heartbeat_ms = 200\nnode_ttl_secs = 2\nrequest_timeout_ms = 2000\n\n\
         [capacity]\nbudget = {budget}\nmax_cpu_percent = 0\n\n\
         [signing]\nsecret = \"one-secret-shared-by-every-node-of-the-cluster\"\n",
        urls.join(", ")
    );
    let profile = store.profile(AZURE_CONNECTION_VAR);
    TestApp::spawn_with_profile_and(
        &extra,
        &[
            ("RECORDER_RECORDER_ID", name),
            (AZURE_CONNECTION_VAR, &store.connection_string),
        ],
        move |_| profile,
    )
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
    let store = Container::on_services();
    let bucket_name = format!("rtc_media_{}", uuid::Uuid::new_v4().simple());
    let a = node(&nats, "node-a", 100, &store, &bucket_name);
    let mut b = node(&nats, "node-b", 900, &store, &bucket_name);
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
    let composition = through_a.json();
    assert_eq!(composition["instanceId"], third["instanceId"], "{composition:#}");
    let listing = a.get(&format!("/recordings/{conversation}"), KEY).json();
    let spans: Vec<f64> = listing["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (millis(&r["stopped"]) - millis(&r["started"])) as f64 / 1000.0)
        .collect();
    assert_eq!(spans.len(), 3, "{listing:#}");
    let composed = stored_duration(&composition, dir.path());
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

/// The duration of a composition as stored: fetched through its signed URL (the store's own).
fn stored_duration(composition: &Value, dir: &std::path::Path) -> f64 {
    let url = composition["streams"][0]["tracks"][0]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("a composition without a URL: {composition:#}"));
    let path = dir.join(format!("composition-{}.mp4", uuid::Uuid::new_v4().simple()));
    download(url, &path);
    container_duration(&path).expect("a composition with a duration")
}

/// A new instance of `conversation` started through `app`, 3 s of plain RTP through it, stopped.
fn record_a_little(app: &TestApp, conversation: &str) -> Value {
    record_a_little_then(app, conversation, || {})
}

/// [`record_a_little`], with `before_stop` run between the media and the stop.
fn record_a_little_then(app: &TestApp, conversation: &str, before_stop: impl FnOnce()) -> Value {
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
    before_stop();
    assert_eq!(app.stop(&event)["state"], "STOPPED");
    event
}

fn compositor(app: &TestApp) -> Value {
    snapshots_of(&app.debug_tree(), "Compositor")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no compositor in {}", app.debug_tree()))
}

#[test]
fn media_records_on_with_nats_down_and_one_node_at_a_time_composes_a_conversation() {
    let _media = media_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsCluster::start(dir.path(), 3);
    // A store of this test's own: it is frozen below.
    let azurite = Azurite::start(dir.path());
    let store = Container::on(&azurite);
    let bucket_name = format!("rtc_media_{}", uuid::Uuid::new_v4().simple());
    // B has a little more capacity: the first start goes there.
    let a = node(&nats, "node-a", 100, &store, &bucket_name);
    let b = node(&nats, "node-b", 101, &store, &bucket_name);
    for app in [&a, &b] {
        poll(Duration::from_secs(60), "both nodes in the cluster", || {
            connected(app, 2).then_some(())
        });
    }

    // The conversation's first instance on B; the store freezes before its stop, so B's
    // composition of it is made but cannot be uploaded: B holds the composition lease.
    let conversation = unique("call");
    let first = record_a_little_then(&a, &conversation, || azurite.pause());
    assert_eq!(first["recorderId"], "node-b", "{first}");
    poll(Duration::from_secs(60), "B composed under the lease", || {
        let counters = compositor(&b)["counters"].clone();
        (counters["num_leases_held"] == 1 && counters["num_composed"] == 1).then_some(())
    });
    // Its composition capacity is back in B's heartbeat.
    std::thread::sleep(Duration::from_secs(1));

    // Another call on B takes some of B's capacity, so the conversation's next instance goes to A.
    let other_room = unique("room");
    let other = a.start(&unique("other"), &other_room, true, true);
    assert_eq!(other["recorderId"], "node-b", "{other}");
    publish_av_rtp(&a, &other_room, "agent");
    std::thread::sleep(Duration::from_secs(1)); // a few heartbeats
    let conference = unique("room");
    let second = poll(Duration::from_secs(10), "the second instance", || {
        let resp = b.post_json(
            "/recordings/start",
            KEY,
            &serde_json::json!({"applicationId": "app-a", "conversationId": conversation, "conferenceId": conference}),
        );
        (resp.status == 200).then(|| resp.json())
    });
    assert_eq!(second["recorderId"], "node-a", "placed on A: {second}");
    let ports = publish_av_rtp(&b, &conference, "agent");
    assert!(
        ports.iter().all(|p| (a.rtp_ports.0..=a.rtp_ports.1).contains(p)),
        "{ports:?} are A's ports {:?}",
        a.rtp_ports
    );
    let seconds = 8;
    let mut args = lavfi_av(seconds);
    args.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    args.extend(rtp_out("0:a", "opus", 111, ports[1]));
    let sender = ffmpeg(&args);
    wait_written(&a, 15);

    // Every NATS server down while A records: cluster commands answer 503, media goes on.
    for i in 0..3 {
        nats.kill(i);
    }
    poll(Duration::from_secs(10), "A disconnected", || {
        let ready = a.request("GET", &format!("{}/ready", a.base_url), &[], None);
        let cluster = serde_json::from_slice::<Value>(&ready.body).unwrap_or_default()["cluster"].clone();
        (cluster["connected"] == false).then_some(())
    });
    let refused = b.post_json(
        "/recordings/start",
        KEY,
        &serde_json::json!({"applicationId": "app-a", "conversationId": unique("call"), "conferenceId": unique("room")}),
    );
    refused.assert_error(503);
    assert!(refused.header("Retry-After").is_some(), "{:?}", refused.headers);
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..3 {
        nats.start_server(i);
    }
    for app in [&a, &b] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !connected(app, 2) {
            if std::time::Instant::now() > deadline {
                let ready = app.request("GET", &format!("{}/ready", app.base_url), &[], None);
                let log = app.stderr();
                let nats_log = nats.logs();
                panic!(
                    "both nodes not back in the cluster within 60 s; /ready: {}\nlog tail: {}\nNATS log tail: {}",
                    ready.text(),
                    log.get(log.len().saturating_sub(6000)..).unwrap_or(&log),
                    nats_log.get(nats_log.len().saturating_sub(6000)..).unwrap_or(&nats_log)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    wait_ok(sender, "sender");
    let stopped = b.stop(&second);
    assert_eq!(stopped["state"], "STOPPED", "{stopped:#}");
    let instance = a.instance(&second);
    let all = tracks(&instance);
    let secs = f64::from(seconds);
    assert_track(
        find_track(&all, "agent", "CAM", "VIDEO"),
        "vp8",
        30 * u64::from(seconds),
        secs - 1.0 / 30.0,
    );
    assert_track(
        find_track(&all, "agent", "CAM", "AUDIO"),
        "opus",
        ffmpeg_opus_frames(seconds),
        secs,
    );
    // B's catalogue caught up with what A did while NATS was down.
    poll(Duration::from_secs(20), "B lists both instances STOPPED", || {
        let listing = b.get(&format!("/recordings/{conversation}"), KEY).json();
        let states: Vec<_> = listing["recordings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["state"].clone())
            .collect();
        (states.len() == 2 && states.iter().all(|s| s == "STOPPED")).then_some(())
    });

    // A's composition of the conversation waits, queued, while B's is not uploaded.
    let waiting = Instant::now();
    while waiting.elapsed() < Duration::from_secs(4) {
        let resp = a.get(&format!("/compositions/{conversation}"), KEY);
        if resp.status == 200 {
            let composition = resp.json();
            assert_eq!(composition["instanceId"], second["instanceId"], "{composition:#}");
            assert_eq!(
                composition["state"], "INITIALISED",
                "queued behind B's: {composition:#}"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        compositor(&a)["counters"]["num_waiting_for_lease"],
        1,
        "{}",
        compositor(&a)
    );
    assert_eq!(compositor(&b)["counters"]["num_leases_held"], 1, "{}", compositor(&b));

    // The store back: B's upload goes through and gives the lease back; A composes everything.
    azurite.resume();
    let composition = wait_composed(&a, &conversation, &second["instanceId"]);
    assert_eq!(composition["recorderId"], "node-a", "{composition:#}");
    poll(Duration::from_secs(10), "every lease given back", || {
        (compositor(&a)["counters"]["num_leases_held"] == 0 && compositor(&b)["counters"]["num_leases_held"] == 0)
            .then_some(())
    });
    let listing = b.get(&format!("/recordings/{conversation}"), KEY).json();
    let total: f64 = listing["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (millis(&r["stopped"]) - millis(&r["started"])) as f64 / 1000.0)
        .sum();
    let composed = stored_duration(&composition, dir.path());
    assert!(
        (composed - total).abs() < 1.0,
        "the composition ({composed:.2} s) covers both instances ({total:.2} s): {listing:#}"
    );
    assert_eq!(a.stop(&other)["state"], "STOPPED");
}
