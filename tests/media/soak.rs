//! Bounded soak test of crash recovery, part of `make test` (well under a minute of FFmpeg
//! senders and `kill -9`; `cargo test --test media soak -- --nocapture` prints the figures). Figures go to
//! BENCHMARKS.md.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// A small deterministic generator: the run is reproducible from its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

const NUM_KILLS: usize = 50;

/// Seconds each round's publisher sends (30 fps, a keyframe every 10 frames so that a restarted
/// recorder, which starts its new segment at a keyframe, waits at most a third of a second).
const SEND_SECS: u32 = 4;

/// Recordings with `kill -9` at random points (while recording, right after an acknowledged
/// stop, in the middle of a stop), then a consistency check: every acknowledged start and stop
/// is there, no instance is left live, every track recorded is uploaded and plays. A kill while
/// recording is measured: the publisher goes on sending through the restart, and the media the
/// track lost is at most the downtime (kill to ports re-bound) + 1 s, for every such crash.
#[test]
fn soak_kill_9_at_random_points() {
    let _media = media_lock();
    let mut app = TestApp::spawn_uploading_with("[recovery]\nwindow_secs = 2\n");
    let mut rng = Lcg(std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5));
    let mut started: Vec<Value> = Vec::new();
    let mut acknowledged_stops: Vec<String> = Vec::new();
    let mut restart_secs = Vec::new();
    // (instance id, downtime) of the crashes while recording, whose loss is measured.
    let mut measured: Vec<(String, f64)> = Vec::new();
    for round in 0..NUM_KILLS {
        let conference = unique("room");
        let event = app.start(&unique("soak"), &conference, false, true);
        started.push(event.clone());
        let resp = app.publish(
            "rtp",
            &conference,
            "userId=agent&type=CAM",
            &format!("Bearer {KEY}"),
            "application/sdp",
            &rtp_offer(&[("video", 96, "VP8/90000")]),
        );
        assert_eq!(resp.status, 201, "{}", resp.text());
        let mut a = lavfi_video(SEND_SECS);
        let mut out = rtp_out("0", "vp8", 96, answer_ports(&resp.text())[0]);
        let g = out.iter().position(|arg| arg == "-g").expect("the vp8 output sets -g");
        out[g + 1] = "10".into();
        a.extend(out);
        let mut sender = ffmpeg(&a);
        poll(Duration::from_secs(10), "instance ACTIVE", || {
            (app.instance(&event)["state"] == "ACTIVE").then_some(())
        });
        // Where in the recording the crash falls (a random point, not a wait for something).
        std::thread::sleep(Duration::from_millis(200 + rng.next(1000)));
        let how = rng.next(3);
        match how {
            0 => {}
            1 => {
                let stopped = app.stop(&event);
                acknowledged_stops.push(stopped["instanceId"].as_str().unwrap().to_string());
            }
            _ => {
                let url = app.api(&format!("{}/stop", instance_path(&event)));
                std::thread::spawn(move || {
                    let _ = ureq::post(&url).set("Authorization", KEY).send_bytes(b"");
                });
                std::thread::sleep(Duration::from_millis(rng.next(60)));
            }
        }
        let killed = Instant::now();
        app.restart();
        restart_secs.push(killed.elapsed().as_secs_f64());
        if how == 0 {
            // The recorder re-binds the session's ports and records on from the next keyframe.
            poll(Duration::from_secs(10), "the session re-bound", || {
                stream_snapshots(&app.debug_tree())
                    .iter()
                    .any(|s| s["counters"]["connected"] == 1)
                    .then_some(())
            });
            let downtime = killed.elapsed().as_secs_f64();
            wait_ok(sender, "the soak's publisher");
            let stopped = app.stop(&event);
            assert_eq!(stopped["state"], "STOPPED", "{stopped:#}");
            acknowledged_stops.push(stopped["instanceId"].as_str().unwrap().to_string());
            measured.push((stopped["instanceId"].as_str().unwrap().to_string(), downtime));
        } else {
            let _ = sender.kill();
            let _ = sender.wait();
        }
        eprintln!(
            "soak round {round}: kill after {how}, back in {:.2} s",
            restart_secs.last().unwrap()
        );
    }

    // Every instance ends: stopped ones stay stopped, the others finish their interrupted stop
    // or are aborted when the recovery window passes.
    let finals: Vec<Value> = poll(Duration::from_secs(60), "no instance live", || {
        let all: Vec<Value> = started.iter().map(|e| app.instance(e)).collect();
        all.iter()
            .all(|i| matches!(i["state"].as_str(), Some("STOPPED" | "ABORTED")))
            .then_some(all)
    });
    for id in &acknowledged_stops {
        let instance = finals
            .iter()
            .find(|i| i["instanceId"] == id.as_str())
            .expect("acknowledged");
        assert_eq!(instance["state"], "STOPPED", "{instance:#}");
    }
    // Every track file recorded reaches storage and plays.
    let uploaded: Vec<Value> = poll(Duration::from_secs(120), "every track uploaded", || {
        let all: Vec<Value> = started.iter().map(|e| app.instance(e)).collect();
        all.iter()
            .flat_map(tracks)
            .filter(|(_, _, _, t)| t["storage"]["localStorage"]["location"].is_string())
            .all(|(_, _, _, t)| t["storage"]["objectStorage"]["uploaded"].is_string())
            .then_some(all)
    });
    let mut num_files = 0;
    let mut seconds_kept = 0.0;
    let mut losses = Vec::new();
    for instance in &uploaded {
        for (_, _, _, track) in tracks(instance) {
            let Some(location) = track["storage"]["objectStorage"]["location"].as_str() else {
                continue;
            };
            let p = probe(std::path::Path::new(location.strip_prefix("file://").unwrap()));
            assert_eq!(p.codec, "vp8", "{track}");
            assert!(p.num_frames > 0, "{track}");
            num_files += 1;
            seconds_kept += p.duration;
            if let Some((_, downtime)) = measured.iter().find(|(id, _)| instance["instanceId"] == id.as_str()) {
                let sent = f64::from(SEND_SECS * 30);
                let lost = (sent - p.num_frames as f64) / 30.0;
                assert!(p.num_frames as f64 <= sent, "more frames than sent: {p:?}, {track}");
                assert!(
                    lost <= downtime + 1.0,
                    "a crash while recording lost {lost:.2} s of media with {downtime:.2} s of downtime: {track}"
                );
                losses.push((lost, *downtime));
            }
        }
    }
    assert_eq!(losses.len(), measured.len(), "every measured crash has its track");
    let num_stopped = finals.iter().filter(|i| i["state"] == "STOPPED").count();
    restart_secs.sort_by(f64::total_cmp);
    let worst = losses
        .iter()
        .map(|(lost, downtime)| lost - downtime)
        .fold(f64::NEG_INFINITY, f64::max);
    let mean_lost = losses.iter().map(|(l, _)| l).sum::<f64>() / losses.len().max(1) as f64;
    let mean_down = losses.iter().map(|(_, d)| d).sum::<f64>() / losses.len().max(1) as f64;
    eprintln!(
        "soak: {NUM_KILLS} kills survived; {} instances ({num_stopped} STOPPED, {} ABORTED); {num_files} track files uploaded and playing, {seconds_kept:.1} s of media; restart median {:.2} s, max {:.2} s; {} crashes while recording: mean loss {mean_lost:.2} s for mean downtime {mean_down:.2} s, worst loss - downtime {worst:.2} s",
        started.len(),
        started.len() - num_stopped,
        restart_secs[restart_secs.len() / 2],
        restart_secs.last().unwrap(),
        losses.len(),
    );
    assert!(num_files > 0);
    assert!(!losses.is_empty(), "the seed measured no crash while recording");
}

/// Recovery time for 100 live instances, each with a plain-RTP session whose ports must be
/// re-bound: from `kill -9` to the restarted process answering for all of them.
#[test]
fn recovery_time_for_100_live_instances() {
    let _media = media_lock();
    let mut app = TestApp::spawn();
    // Baseline in the same run: the same restart with nothing to recover.
    let empty = Instant::now();
    app.restart();
    let _ = app.debug_tree();
    let baseline = empty.elapsed().as_secs_f64();
    let mut events = Vec::new();
    for _ in 0..100 {
        let conference = unique("room");
        let event = app.start(&unique("bench"), &conference, false, true);
        let resp = app.publish(
            "rtp",
            &conference,
            "userId=agent&type=CAM",
            &format!("Bearer {KEY}"),
            "application/sdp",
            &rtp_offer(&[("video", 96, "VP8/90000")]),
        );
        assert_eq!(resp.status, 201, "{}", resp.text());
        events.push(event);
    }
    let killed = Instant::now();
    app.restart();
    let listening = killed.elapsed().as_secs_f64();
    for event in &events {
        assert_eq!(app.instance(event)["state"], "INITIALISED");
    }
    let connected = poll(Duration::from_secs(30), "every session re-bound", || {
        let tree = app.debug_tree();
        let n = stream_snapshots(&tree)
            .iter()
            .filter(|s| s["counters"]["connected"] == 1)
            .count();
        (n == 100).then_some(n)
    });
    let answered = killed.elapsed().as_secs_f64();
    eprintln!(
        "100 live instances: listening {listening:.2} s after kill -9, all answered and {connected} sessions re-bound after {answered:.2} s; empty store {baseline:.2} s (ratio {:.1})",
        answered / baseline
    );
    assert_eq!(connected, 100);
}
