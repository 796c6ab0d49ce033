//! Real networks: plain RTP through an impairing relay (testkit::relay: seeded jitter,
//! reordering, loss, duplication on loopback; `tc netem` is not in this kernel).

use std::time::Duration;

use testkit::relay::{Impairment, Relay};

use crate::harness::*;

/// FFmpeg's VP8 + Opus through 0–150 ms of jitter (each datagram delayed uniformly, so they
/// overtake each other), nothing lost: every frame is recorded and each file is as long as
/// what was sent. FFmpeg ignores keyframe requests, so a keyframe lost to a bad start or a
/// too-short wait would cost a whole GOP.
#[test]
fn jitter_up_to_150_ms_without_loss_loses_no_frame() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conference = unique("jitter");
    let event = app.start(&unique("jitter-call"), &conference, true, true);
    let seconds = 10;
    let mut relays = Vec::new();
    let mut senders = Vec::new();
    for (n, seed) in [(0, 11u64), (1, 23), (2, 37)] {
        let ports = publish_av_rtp(&app, &conference, &format!("user-{n}"));
        let jitter = |seed: u64, port: u16| {
            Relay::start(
                format!("127.0.0.1:{port}").parse().unwrap(),
                Impairment {
                    seed,
                    delay: (Duration::ZERO, Duration::from_millis(150)),
                    ..Default::default()
                },
            )
        };
        let (video, audio) = (jitter(seed, ports[0]), jitter(seed + 1, ports[1]));
        let mut a = lavfi_av(seconds);
        a.extend(rtp_out("0:v", "vp8", 96, video.addr().port()));
        a.extend(rtp_out("0:a", "opus", 111, audio.addr().port()));
        senders.push(ffmpeg(&a));
        relays.push(video);
        relays.push(audio);
    }
    for (i, s) in senders.into_iter().enumerate() {
        wait_ok(s, &format!("sender {i}"));
    }
    // The last datagrams are still in flight for up to 150 ms.
    std::thread::sleep(Duration::from_millis(400));
    let overtaken: u64 = relays
        .iter()
        .map(|r| r.counts.overtaken.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(overtaken > 100, "the path reordered only {overtaken} datagrams");
    app.stop(&event);
    let instance = app.instance(&event);
    let all = tracks(&instance);
    for n in 0..3 {
        let user = format!("user-{n}");
        // The video file runs from the first frame to the last: one interval less.
        let secs = f64::from(seconds);
        assert_track(
            find_track(&all, &user, "CAM", "VIDEO"),
            "vp8",
            30 * u64::from(seconds),
            secs - 1.0 / 30.0,
        );
        assert_track(
            find_track(&all, &user, "CAM", "AUDIO"),
            "opus",
            ffmpeg_opus_frames(seconds),
            secs,
        );
    }
}
