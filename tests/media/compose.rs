//! Composition: participants from known sources (a solid colour per camera, a sine frequency per
//! microphone) recorded over plain RTP, composed by the recorder, and the MP4 checked by
//! decoding it with the FFmpeg CLI: codecs, duration, the colour of each tile at chosen times,
//! the frequencies in the mix.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

pub(crate) const WIDTH: u32 = 1280;

/// One FFmpeg sending a solid-colour camera (VP8) and a tone (Opus) for `seconds`.
fn send_participant(app: &TestApp, conference: &str, user: &str, colour: &str, hz: u32, seconds: f64) -> Child {
    let cam = publish(app, conference, user, "CAM", &[("video", 96, "VP8/90000")]);
    let mic = publish(app, conference, user, "MIC", &[("audio", 111, "opus/48000/2")]);
    let mut a = args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!(
            "color=c={colour}:s=320x240:r=25:d={seconds}[out0];sine=frequency={hz}:sample_rate=48000:duration={seconds}[out1]"
        ),
    ]);
    a.extend(rtp_out("0:v", "vp8", 96, cam[0]));
    a.extend(rtp_out("0:a", "opus", 111, mic[0]));
    ffmpeg(&a)
}

fn send_screen(app: &TestApp, conference: &str, user: &str, colour: &str, seconds: f64) -> Child {
    let screen = publish(app, conference, user, "SCREEN", &[("video", 97, "H264/90000")]);
    let mut a = args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("color=c={colour}:s=640x360:r=25:d={seconds}"),
    ]);
    a.extend(rtp_out("0", "h264", 97, screen[0]));
    ffmpeg(&a)
}

pub(crate) fn publish(app: &TestApp, conference: &str, user: &str, kind: &str, lines: &[(&str, u8, &str)]) -> Vec<u16> {
    let resp = app.publish(
        "rtp",
        conference,
        &format!("userId={user}&type={kind}"),
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(lines),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    answer_ports(&resp.text())
}

pub(crate) fn stored_composition(app: &TestApp, conversation: &str) -> PathBuf {
    app.root
        .join("storage/org-a/app-a")
        .join(conversation)
        .join("composition.mp4")
}

/// Waits until the instance's `recording.json` in the LOCAL storage folder lists the uploaded
/// composition, and checks that it names `composition.mp4`'s location.
fn manifest_lists_composition(app: &TestApp, event: &Value, message: &Value) {
    let manifest_path = app.root.join("storage").join(format!(
        "org-a/app-a/{}/{}/{}/recording.json",
        event["conversationId"].as_str().unwrap(),
        event["recorderId"].as_str().unwrap(),
        event["instanceId"].as_str().unwrap()
    ));
    let manifest: Value = poll(Duration::from_secs(30), "recording.json lists the composition", || {
        std::fs::read(&manifest_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(|m| m["composition"].is_object())
    });
    let location = manifest["composition"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("{manifest:#}"));
    assert!(location.ends_with("/composition.mp4"), "{location}");
    assert_eq!(
        message["streams"][0]["tracks"][0]["storage"]["objectStorage"]["location"].as_str(),
        Some(location),
        "{manifest:#}"
    );
    assert!(manifest["composition"]["uploaded"].is_string(), "{manifest:#}");
    assert!(
        manifest["composition"]["size"].as_u64().is_some_and(|n| n > 0),
        "{manifest:#}"
    );
    // Additions only: the instance's own fields are still there.
    assert_eq!(manifest["instanceId"], event["instanceId"], "{manifest:#}");
}

fn ffprobe(path: &Path, entries: &str) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", entries, "-of", "default=nw=1:nk=1"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// RGB of pixel (x, y) of the frame shown at `secs`.
pub(crate) fn pixel(path: &Path, secs: f64, x: u32, y: u32) -> [u8; 3] {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-ss", &format!("{secs:.3}"), "-i"])
        .arg(path)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg runs");
    let at = ((y * WIDTH + x) * 3) as usize;
    assert!(out.stdout.len() > at + 2, "no frame at {secs}s in {}", path.display());
    [out.stdout[at], out.stdout[at + 1], out.stdout[at + 2]]
}

fn is_red(p: [u8; 3]) -> bool {
    p[0] > 180 && p[1] < 80 && p[2] < 80
}

fn is_blue(p: [u8; 3]) -> bool {
    p[2] > 180 && p[0] < 80 && p[1] < 80
}

fn is_green(p: [u8; 3]) -> bool {
    p[1] > 80 && p[0] < 60 && p[2] < 60
}

/// The placeholder: neutral grey, no colour of any source.
fn is_grey(p: [u8; 3]) -> bool {
    p.iter().all(|c| (40..=100).contains(c)) && p.iter().max().unwrap() - p.iter().min().unwrap() < 12
}

/// Mono 48 kHz samples of the mix from `from` for `secs`.
fn pcm(path: &Path, from: f64, secs: f64) -> Vec<f64> {
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-ss",
            &format!("{from:.3}"),
            "-t",
            &format!("{secs:.3}"),
            "-i",
        ])
        .arg(path)
        .args(["-vn", "-ac", "1", "-ar", "48000", "-f", "s16le", "-"])
        .output()
        .expect("ffmpeg runs");
    out.stdout
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

/// Power of `hz` in `samples` (Goertzel), normalized by the length.
fn goertzel(samples: &[f64], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (samples.len() as f64).powi(2)
}

/// Whether both tones are in the mix between `from` and `from + secs`, well above a frequency
/// nobody sent.
fn tones(path: &Path, from: f64, secs: f64) -> (bool, bool) {
    let samples = pcm(path, from, secs);
    assert!(samples.len() > 4800, "no audio at {from}s");
    let floor = goertzel(&samples, 660.0).max(1e-12);
    (
        goertzel(&samples, 440.0) > 100.0 * floor,
        goertzel(&samples, 880.0) > 100.0 * floor,
    )
}

/// Seconds from the instance's start to a track's start/stop.
#[test]
fn two_participants_one_late_with_a_screen_halfway_compose_into_one_mp4() {
    let _media = media_lock();
    // Track files are deleted after upload by default: the composition must still find them.
    let app = TestApp::spawn_uploading();
    let conversation = unique("compose");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, true);

    let alice = send_participant(&app, &conference, "alice", "red", 440, 8.0);
    std::thread::sleep(Duration::from_millis(2500));
    let bob = send_participant(&app, &conference, "bob", "blue", 880, 5.5);
    std::thread::sleep(Duration::from_millis(1500));
    let screen = send_screen(&app, &conference, "alice", "green", 3.5);
    wait_ok(alice, "alice");
    wait_ok(bob, "bob");
    wait_ok(screen, "screen");
    app.stop(&event);

    let message = wait_composed(&app, &conversation, &event["instanceId"]);
    let track = &message["streams"][0]["tracks"][0];
    assert_eq!(message["streams"][0]["type"], "VIDEO");
    assert_eq!(track["type"], "VIDEO");
    assert!(message["error"].is_null(), "{message:#}");
    assert!(message["started"].is_string() && message["stopped"].is_string());
    let path = stored_composition(&app, &conversation);
    assert!(path.is_file(), "{}", path.display());

    let instance = app.instance(&event);
    let all = tracks(&instance);
    let call = offset(&instance, &instance["stopped"]);
    let bob_start = offset(&instance, &find_track(&all, "bob", "CAM", "VIDEO")["started"]);
    let screen_track = find_track(&all, "alice", "SCREEN", "VIDEO");
    let screen_start = offset(&instance, &screen_track["started"]);
    let screen_stop = offset(&instance, &screen_track["stopped"]);

    assert_eq!(ffprobe(&path, "stream=codec_name"), "h264\naac");
    let duration: f64 = ffprobe(&path, "format=duration").parse().unwrap();
    assert!((duration - call).abs() <= 0.2, "composition {duration}s, call {call}s");

    // Before bob joined: alice's red tile, and a grey placeholder where bob will be.
    let t = bob_start / 2.0;
    assert!(
        is_red(pixel(&path, t, 320, 360)),
        "{t}: {:?}",
        pixel(&path, t, 320, 360)
    );
    assert!(
        is_grey(pixel(&path, t, 960, 360)),
        "{t}: {:?}",
        pixel(&path, t, 960, 360)
    );
    // Both in the grid, before the screen.
    let t = (bob_start + screen_start) / 2.0;
    assert!(
        is_red(pixel(&path, t, 320, 360)),
        "{t}: {:?}",
        pixel(&path, t, 320, 360)
    );
    assert!(
        is_blue(pixel(&path, t, 960, 360)),
        "{t}: {:?}",
        pixel(&path, t, 960, 360)
    );
    let (a440, a880) = tones(&path, t - 0.3, 0.6);
    assert!(a440 && a880, "both voices at {t}s: 440 {a440}, 880 {a880}");
    // Before bob joined only alice's tone.
    let (a440, a880) = tones(&path, bob_start / 2.0 - 0.3, 0.6);
    assert!(a440 && !a880, "alice alone: 440 {a440}, 880 {a880}");
    // The screen in the large tile, the cameras in the strip below it.
    let t = (screen_start + screen_stop) / 2.0;
    assert!(
        is_green(pixel(&path, t, 640, 270)),
        "{t}: {:?}",
        pixel(&path, t, 640, 270)
    );
    assert!(
        is_red(pixel(&path, t, 480, 630)),
        "{t}: {:?}",
        pixel(&path, t, 480, 630)
    );
    assert!(
        is_blue(pixel(&path, t, 800, 630)),
        "{t}: {:?}",
        pixel(&path, t, 800, 630)
    );

    // The track files went to storage and, composition done, are gone locally.
    let instance = poll(Duration::from_secs(30), "local track files deleted", || {
        let instance = app.instance(&event);
        tracks(&instance)
            .iter()
            .all(|t| t.3["storage"]["localStorage"]["deleted"].is_string())
            .then_some(instance)
    });
    for (_, _, _, t) in tracks(&instance) {
        assert!(!track_file(&t).exists(), "{t}");
    }
}

#[test]
fn two_instances_make_one_composition_with_the_gap_cut_and_a_corrupt_track_is_left_out() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conversation = unique("compose2");

    let conference = unique("room");
    let first = app.start(&conversation, &conference, true, true);
    wait_ok(send_participant(&app, &conference, "alice", "red", 440, 3.0), "alice");
    app.stop(&first);
    wait_composed(&app, &conversation, &first["instanceId"]);
    let first_record = app.instance(&first);
    let first_secs = offset(&first_record, &first_record["stopped"]);

    // Time between the instances: cut from the composition.
    std::thread::sleep(Duration::from_secs(2));
    // Alice's camera file of the first instance is damaged before the re-composition.
    let alice_video = track_file(find_track(&tracks(&first_record), "alice", "CAM", "VIDEO"));
    std::fs::write(&alice_video, b"\x1a\x45\xdf\xa3 not a webm any more").unwrap();

    let conference = unique("room");
    let second = app.start(&conversation, &conference, true, true);
    wait_ok(send_participant(&app, &conference, "bob", "blue", 880, 3.0), "bob");
    app.stop(&second);
    let message = wait_composed(&app, &conversation, &second["instanceId"]);
    let second_record = app.instance(&second);
    let second_secs = offset(&second_record, &second_record["stopped"]);

    assert_eq!(message["error"]["code"], "COMPOSITION_PARTIAL", "{message:#}");
    assert!(
        message["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(alice_video.to_str().unwrap())),
        "{message:#}"
    );
    let path = stored_composition(&app, &conversation);
    let duration: f64 = ffprobe(&path, "format=duration").parse().unwrap();
    let call = first_secs + second_secs;
    assert!(
        (duration - call).abs() <= 0.2,
        "composition {duration}s, instances {first_secs}s + {second_secs}s"
    );
    // First instance: alice's video is gone (placeholder), her voice is there.
    let t = first_secs / 2.0;
    assert!(
        is_grey(pixel(&path, t, 320, 360)),
        "{t}: {:?}",
        pixel(&path, t, 320, 360)
    );
    let (a440, a880) = tones(&path, t - 0.3, 0.6);
    assert!(a440 && !a880, "first instance: 440 {a440}, 880 {a880}");
    // Second instance right after the first: bob's tile and tone.
    let t = first_secs + second_secs / 2.0;
    assert!(
        is_blue(pixel(&path, t, 960, 360)),
        "{t}: {:?}",
        pixel(&path, t, 960, 360)
    );
    let (a440, a880) = tones(&path, t - 0.3, 0.6);
    assert!(!a440 && a880, "second instance: 440 {a440}, 880 {a880}");
}

/// Per-frame brightness (0-255) of pixel (x, y) through the whole video, at the file's 25 fps.
fn brightness_track(path: &Path, x: u32, y: u32) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-an",
            "-vf",
            // 2x2: yuv420p cannot crop to an odd size.
            &format!("crop=2:2:{x}:{y},format=gray"),
            "-f",
            "rawvideo",
            "-",
        ])
        .output()
        .expect("ffmpeg runs");
    out.stdout.chunks_exact(4).map(|c| c[0]).collect()
}

/// A flash and a beep made at the same instant by one FFmpeg source land in the composition
/// within one frame (40 ms) of each other.
#[test]
fn a_flash_and_a_beep_sent_together_stay_together_in_the_composition() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conversation = unique("sync");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, true);
    let cam = publish(&app, &conference, "alice", "CAM", &[("video", 96, "VP8/90000")]);
    let mic = publish(&app, &conference, "alice", "MIC", &[("audio", 111, "opus/48000/2")]);
    // One lavfi input, one clock: black with a white flash at 3.0-3.2 s, silence with a 1 kHz
    // beep at the same time.
    let mut a = args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        "color=c=black:s=320x240:r=25:d=6,drawbox=x=0:y=0:w=320:h=240:color=white:t=fill:enable='between(t,3,3.2)'[out0];\
         aevalsrc='if(between(t,3,3.2),0.8*sin(2*PI*1000*t),0)':s=48000:d=6[out1]",
    ]);
    a.extend(rtp_out("0:v", "vp8", 96, cam[0]));
    a.extend(rtp_out("0:a", "opus", 111, mic[0]));
    wait_ok(ffmpeg(&a), "sender");
    app.stop(&event);
    wait_composed(&app, &conversation, &event["instanceId"]);
    let path = stored_composition(&app, &conversation);

    // One participant: the tile is the whole picture (letterboxed), the centre is the camera.
    let frames = brightness_track(&path, 640, 360);
    let flash = frames
        .iter()
        .position(|v| *v > 128)
        .unwrap_or_else(|| panic!("no flash in {} frames", frames.len()));
    let flash_at = flash as f64 / 25.0;
    let samples = pcm(&path, 0.0, 60.0);
    let beep = samples
        .iter()
        .position(|s| s.abs() > 0.1)
        .unwrap_or_else(|| panic!("no beep in {} samples", samples.len()));
    let beep_at = beep as f64 / 48_000.0;
    // The output samples video every 40 ms, so the first white frame shows the flash up to one
    // frame after it happened: flash_at - beep_at = error + [0, 40 ms). An error within one
    // frame either way therefore reads as -40..+80 ms.
    let diff = flash_at - beep_at;
    assert!(
        (-0.040..=0.080).contains(&diff),
        "flash at {flash_at:.3}s, beep at {beep_at:.3}s"
    );
}

/// With track files deleted after upload (the default), a later instance's re-composition
/// reads the earlier instance's tracks back from the storage profile.
#[test]
fn a_recomposition_reads_tracks_already_deleted_locally_from_storage() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading();
    let conversation = unique("compose3");

    let conference = unique("room");
    let first = app.start(&conversation, &conference, true, true);
    wait_ok(send_participant(&app, &conference, "alice", "red", 440, 2.0), "alice");
    app.stop(&first);
    wait_composed(&app, &conversation, &first["instanceId"]);
    let first_record = poll(Duration::from_secs(30), "first instance's files deleted", || {
        let instance = app.instance(&first);
        tracks(&instance)
            .iter()
            .all(|t| t.3["storage"]["localStorage"]["deleted"].is_string())
            .then_some(instance)
    });
    let first_secs = offset(&first_record, &first_record["stopped"]);

    let conference = unique("room");
    let second = app.start(&conversation, &conference, true, true);
    wait_ok(send_participant(&app, &conference, "bob", "blue", 880, 2.0), "bob");
    app.stop(&second);
    let message = wait_composed(&app, &conversation, &second["instanceId"]);
    assert!(message["error"].is_null(), "{message:#}");
    // The newest instance's recording.json lists the re-composition.
    manifest_lists_composition(&app, &second, &message);
    let path = stored_composition(&app, &conversation);
    let t = first_secs / 2.0;
    assert!(
        is_red(pixel(&path, t, 320, 360)),
        "{t}: {:?}",
        pixel(&path, t, 320, 360)
    );
    let (a440, _) = tones(&path, t - 0.3, 0.6);
    assert!(a440, "alice's voice from storage at {t}s");
    let t = first_secs + 1.0;
    assert!(
        is_blue(pixel(&path, t, 960, 360)),
        "{t}: {:?}",
        pixel(&path, t, 960, 360)
    );
}

/// LOCAL profile: the composition's `url` is served by the recorder behind its signed URL: no
/// API key, the stored bytes, Range, and 403 when tampered with.
#[test]
fn a_local_profile_composition_is_served_by_the_recorder_behind_a_signed_url() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading();
    let conversation = unique("compose4");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, true);
    wait_ok(send_participant(&app, &conference, "alice", "red", 440, 2.0), "alice");
    app.stop(&event);
    let message = wait_composed(&app, &conversation, &event["instanceId"]);
    let track = &message["streams"][0]["tracks"][0];
    let url = track["url"].as_str().unwrap_or_else(|| panic!("no url: {message:#}"));
    assert!(
        url.starts_with(&format!(
            "{}{BASE_PATH}/recordings/attachment/composition/",
            app.base_url
        )),
        "{url}"
    );
    let stored = stored_composition(&app, &conversation);
    let expected = std::fs::read(&stored).unwrap_or_else(|e| panic!("{}: {e}", stored.display()));
    let len = expected.len();
    assert!(len > 300, "{len}");

    let whole = app.request("GET", url, &[], None);
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert!(
        whole.body == expected,
        "the download differs from the stored composition"
    );
    assert!(
        whole
            .header("content-disposition")
            .is_some_and(|d| d.contains("composition.mp4")),
        "{:?}",
        whole.headers
    );
    let part = app.request("GET", url, &[("Range", "bytes=100-199")], None);
    assert_eq!(part.status, 206, "{}", part.text());
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 100-199/{len}").as_str())
    );
    assert!(
        part.body == expected[100..200],
        "the range differs from the stored bytes"
    );

    let (path, query) = url.split_once('?').unwrap();
    let signature_at = query.find("Signature=").unwrap() + "Signature=".len();
    let mut flipped = query.to_string();
    let c = if &query[signature_at..signature_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    flipped.replace_range(signature_at..signature_at + 1, c);
    let (org_path, _) = path.rsplit_once('/').unwrap();
    for tampered in [
        format!("{path}?{flipped}"),
        format!("{org_path}/{}?{query}", unique("other")),
    ] {
        app.request("GET", &tampered, &[], None).assert_error(403);
    }

    // The instance's recording.json is rewritten to list the composition.
    manifest_lists_composition(&app, &event, &message);
}

/// The compositor's node in the debug tree.
fn compositor(app: &TestApp) -> Value {
    let tree = app.debug_tree();
    tree["children"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["kind"] == "Compositor").cloned())
        .unwrap_or_else(|| panic!("no Compositor: {tree:#}"))
}

/// Admission control, black-box: a composition takes only what live media leaves of the node's
/// budget. With a budget of 1,005 units, compositions of 1,000 and sessions of 10, one live
/// session on another call leaves too little: the stopped call's composition stays queued
/// (INITIALISED, the compositor "waiting for capacity", nothing composed or uploaded) for as
/// long as that session is open, and is composed, whole, once it ends.
#[test]
fn a_composition_waits_while_live_media_holds_the_capacity_and_runs_once_it_is_given_back() {
    let _media = media_lock();
    let app = TestApp::spawn_with(
        "[capacity]\nbudget = 1005\nrtp_session = 10\nwhip_session = 10\ncomposition = 1000\nmax_cpu_percent = 0\n",
    );
    let conversation = unique("compose-cap");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, true);
    wait_ok(send_participant(&app, &conference, "alice", "red", 440, 3.0), "alice");

    // Another call goes on: its open session holds 10 of the 1,005 units.
    let other = unique("compose-cap-live");
    let other_conference = unique("room");
    let live = app.start(&other, &other_conference, true, false);
    publish(&app, &other_conference, "bob", "MIC", &[("audio", 111, "opus/48000/2")]);

    app.stop(&event);
    let waiting = poll(Duration::from_secs(20), "the composition waits for capacity", || {
        let c = compositor(&app);
        (c["state"] == "waiting for capacity").then_some(c)
    });
    // It stays queued while the other call is live, and nothing is written for it.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        let message = app.get(&format!("/compositions/{conversation}"), KEY).json();
        assert_eq!(message["state"], "INITIALISED", "{message:#}");
        let c = compositor(&app);
        assert_eq!(c["state"], "waiting for capacity", "{c:#}\n{waiting:#}");
        assert_eq!(c["counters"]["num_running"], 0, "{c:#}");
        assert_eq!(c["counters"]["num_queued"], 1, "{c:#}");
        assert_eq!(c["counters"]["num_composed"], 0, "{c:#}");
    }
    assert!(!stored_composition(&app, &conversation).exists());

    // The live call ends: its capacity comes back and the composition runs.
    app.stop(&live);
    let message = wait_composed(&app, &conversation, &event["instanceId"]);
    assert!(message["error"].is_null(), "{message:#}");
    let path = stored_composition(&app, &conversation);
    assert_eq!(ffprobe(&path, "stream=codec_name"), "h264\naac");
    let duration: f64 = ffprobe(&path, "format=duration").parse().unwrap();
    let instance = app.instance(&event);
    let call = offset(&instance, &instance["stopped"]);
    assert!((duration - call).abs() <= 0.2, "composition {duration}s, call {call}s");
    assert!(is_red(pixel(&path, 1.5, 640, 360)), "{:?}", pixel(&path, 1.5, 640, 360));
    assert_eq!(compositor(&app)["counters"]["num_composed"], 1);
}
