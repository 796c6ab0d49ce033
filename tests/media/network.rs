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

fn dropped_so_far(relay: &Relay) -> u64 {
    relay.counts.dropped.load(std::sync::atomic::Ordering::Relaxed)
}

/// A forwarder that retransmits (its offer says `a=rtcp-fb:96 nack`) over a path that loses 5 %
/// of the datagrams (retransmissions included): the recorder asks for every missing packet
/// while its jitter buffer waits, and every frame is recorded.
#[test]
fn a_retransmitting_forwarder_over_a_lossy_path_loses_no_frame() {
    use std::collections::HashMap;
    use std::net::UdpSocket;
    use std::sync::{Arc, Mutex};
    let _media = media_lock();
    let app = TestApp::spawn();
    let conference = unique("nack");
    let event = app.start(&unique("nack-call"), &conference, true, true);
    let offer = "v=0\r\no=sfu 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtcp-mux\r\n";
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=sfu&type=CAM",
        &format!("Bearer {KEY}"),
        "application/sdp",
        offer,
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let answer = resp.text();
    assert!(
        answer.contains("a=rtcp-fb:96 nack\r\n"),
        "the answer takes NACK: {answer}"
    );
    let relay = Relay::start(
        format!("127.0.0.1:{}", answer_ports(&answer)[0]).parse().unwrap(),
        Impairment {
            seed: 5,
            loss: 0.05,
            delay: (Duration::from_millis(5), Duration::from_millis(25)),
            ..Default::default()
        },
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let history: Arc<Mutex<HashMap<u16, Vec<u8>>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let retransmitter = {
        let (socket, history, done, to) = (socket.try_clone().unwrap(), history.clone(), done.clone(), relay.addr());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let mut num = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(n) = socket.recv(&mut buf) else { continue };
                for seq in recorder_actors::media::rtp::nacked_sequences(&buf[..n]) {
                    if let Some(p) = history.lock().unwrap().get(&seq) {
                        let _ = socket.send_to(p, to);
                        num += 1;
                    }
                }
            }
            num
        })
    };
    let fixture = testkit::rtp::Fixture::load("vp8");
    let rtp: Vec<&(u64, Vec<u8>)> = fixture
        .datagrams
        .iter()
        .filter(|(_, d)| !(192..=223).contains(&d[1]))
        .collect();
    let start = std::time::Instant::now();
    let (mut seq, mut frames) = (1000u16, 0u64);
    let first_at = rtp[0].0;
    let passes = 5u32;
    for pass in 0..passes {
        let mut last_ts = None;
        for (at, d) in &rtp {
            let due = start + Duration::from_secs(2) * pass + Duration::from_micros(at - first_at);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut p = d.clone();
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            let ts = u32::from_be_bytes([d[4], d[5], d[6], d[7]]).wrapping_add(pass * 60 * 3000);
            p[4..8].copy_from_slice(&ts.to_be_bytes());
            if last_ts != Some(ts) {
                frames += 1;
                last_ts = Some(ts);
            }
            history.lock().unwrap().insert(seq, p.clone());
            socket.send_to(&p, relay.addr()).unwrap();
            seq = seq.wrapping_add(1);
        }
    }
    std::thread::sleep(Duration::from_millis(800));
    let track = snapshots_of(&app.debug_tree(), "Track").remove(0);
    assert_eq!(track["counters"]["num_lost"], 0, "every gap was filled: {track}");
    assert!(
        track["counters"]["num_nacks"].as_u64() >= Some(dropped_so_far(&relay)),
        "{track}"
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let retransmitted = retransmitter.join().unwrap();
    let dropped = relay.counts.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 20, "the path dropped {dropped}");
    assert!(
        retransmitted >= dropped / 2,
        "{retransmitted} retransmitted for {dropped} dropped"
    );
    app.stop(&event);
    let instance = app.instance(&event);
    let all = tracks(&instance);
    let p = assert_track(
        find_track(&all, "sfu", "CAM", "VIDEO"),
        "vp8",
        frames,
        f64::from(passes) * 2.0 - 1.0 / 30.0,
    );
    eprintln!("{p:?}: {frames} sent, {dropped} datagrams dropped, {retransmitted} retransmitted");
}

/// What a Chromium publisher over an impaired WHIP path left in the file.
#[derive(Debug)]
struct LossyWhip {
    video_sent: u64,
    video_frames: u64,
    audio_sent: u64,
    audio_frames: u64,
    /// Longest gap between two consecutive video frames in the file, seconds.
    freeze: f64,
    dropped: u64,
    carried: u64,
    retransmitted: u64,
}

/// Chromium (fake camera, VP8 640x360 and Opus) publishes `seconds` over WHIP through a relay that
/// loses `loss` of what the browser sends and delays each way by 50 ms (100 ms round trip): the
/// answer's candidate is rewritten to the relay and the offer's taken out, so nothing bypasses it.
fn chromium_over_lossy_whip(loss: f64, seed: u64, rtx: bool, seconds: u32) -> LossyWhip {
    use std::io::Write;
    let _media = media_lock();
    let app = TestApp::spawn();
    let conference = unique("lossy-whip");
    let event = app.start(&unique("lossy-whip-call"), &conference, true, true);
    let (mut child, lines) = crate::whip::chromium_whip(
        &app,
        &conference,
        "agent",
        serde_json::json!({"seconds": seconds, "codec": "VP8", "relay": true, "width": 640, "height": 360, "rtx": rtx}),
    );
    let candidate = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the publisher offers");
        assert!(line["error"].is_null(), "{line}");
        if let Some(c) = line["candidate"].as_str() {
            break c.to_string();
        }
    };
    let relay = Relay::start(
        candidate.parse().expect("the answer's candidate is an address"),
        Impairment {
            seed,
            loss,
            delay: (Duration::from_millis(50), Duration::from_millis(50)),
            reverse_delay: Duration::from_millis(50),
            ..Default::default()
        },
    );
    writeln!(child.stdin.take().expect("stdin piped"), "{}", relay.addr()).expect("the publisher reads the relay");
    let (done, _) = crate::whip::chromium_done(child, lines);
    let track = snapshots_of(&app.debug_tree(), "Track");
    app.stop(&event);
    let instance = app.instance(&event);
    let all = tracks(&instance);
    let video = probe(&track_file(find_track(&all, "agent", "CAM", "VIDEO")));
    let audio = probe(&track_file(find_track(&all, "agent", "CAM", "AUDIO")));
    let times = testkit::probe::packet_times(&track_file(find_track(&all, "agent", "CAM", "VIDEO")));
    let stats = &done["stats"];
    eprintln!("chromium's video stats: {}", stats["video"][0]);
    let figures = LossyWhip {
        video_sent: stats["video"][0]["framesEncoded"].as_u64().expect("frames encoded"),
        video_frames: video.num_frames,
        // One Opus frame per packet (20 ms; in RED, the primary).
        audio_sent: stats["audio"]["packetsSent"].as_u64().expect("audio packets sent"),
        audio_frames: audio.num_frames,
        freeze: times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max),
        dropped: relay.counts.dropped.load(std::sync::atomic::Ordering::Relaxed),
        carried: relay.counts.received.load(std::sync::atomic::Ordering::Relaxed),
        retransmitted: stats["video"][0]["retransmittedPacketsSent"].as_u64().unwrap_or(0),
    };
    eprintln!(
        "{:.0} % loss, rtx {rtx}: video {:.2} %, audio {:.2} %: {figures:?}\n{track:#?}",
        loss * 100.0,
        100.0 * figures.video_frames as f64 / figures.video_sent as f64,
        100.0 * figures.audio_frames as f64 / figures.audio_sent as f64,
    );
    assert!(
        figures.dropped * 100 >= figures.carried * 2,
        "the path dropped only {} of {}",
        figures.dropped,
        figures.carried
    );
    assert!(figures.video_frames <= figures.video_sent, "{figures:?}");
    assert!(figures.audio_frames <= figures.audio_sent, "{figures:?}");
    figures
}

/// At 3 % loss and a 100 ms round trip the recorder's NACKs bring the retransmissions (RTX) back
/// in time for its jitter buffer and Opus comes in RED: at least 99.5 % of the video frames and
/// 99 % of the audio frames are in the files, no video freeze is longer than 300 ms. (30 s: a
/// frame lost at the very start, before a round trip is measured, is 0.17 % of them, not 0.5 %.)
#[test]
fn chromium_over_whip_at_3_percent_loss_and_100_ms_rtt_keeps_its_video() {
    let f = chromium_over_lossy_whip(0.03, 17, true, 30);
    assert!(f.video_frames * 1000 >= f.video_sent * 995, "{f:?}");
    assert!(f.audio_frames * 100 >= f.audio_sent * 99, "{f:?}");
    assert!(f.freeze <= 0.300, "{f:?}");
    assert!(f.retransmitted > 0, "{f:?}");
}

/// The same without RTX offered (a publisher that retransmits on the media's own SSRC, as
/// aiortc does). Chromium answers only part of the NACKs on the media SSRC (22 retransmissions
/// for 167 requests in one run; every one in another) and sends its bandwidth probes there as
/// padding, whose lost packets it cannot resend, so this holds the path, not the 99.5 % figure
/// (89–100 % measured): what comes back is written, a frame that never comes costs a keyframe
/// request. Without the recorder's NACK a loss costs a keyframe round trip each (~70 %).
#[test]
fn chromium_over_whip_without_rtx_at_3_percent_loss_keeps_its_video() {
    let f = chromium_over_lossy_whip(0.03, 23, false, 20);
    assert!(f.video_frames * 100 >= f.video_sent * 85, "{f:?}");
    assert!(f.audio_frames * 100 >= f.audio_sent * 99, "{f:?}");
    assert!(f.retransmitted > 0, "{f:?}");
}

/// At 10 % loss (the issue asks for the figure, not a floor): what is kept is reported, and
/// nothing is invented: never more frames than were sent, most of them kept.
#[test]
fn chromium_over_whip_at_10_percent_loss_reports_what_it_keeps() {
    let f = chromium_over_lossy_whip(0.10, 31, true, 20);
    assert!(f.dropped * 100 >= f.carried * 8, "{f:?}");
    assert!(f.video_frames * 100 >= f.video_sent * 90, "{f:?}");
    assert!(f.audio_frames * 100 >= f.audio_sent * 90, "{f:?}");
    eprintln!("10 % loss figures: {f:?}");
}
