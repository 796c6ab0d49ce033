//! The review page in headless Chromium (Debian's `chromium`, driven by `playwright-core` from
//! `tests/browser/review.mjs`): a call with video, chat and an rrweb co-browse session is
//! opened from a signed link while live (banner, refreshed chat) and after it is composed (the
//! video plays, a click on a chat line seeks within one frame of its time and highlights it,
//! the rrweb replay follows the video, screenshot regions show what they should); an
//! audio-only call shows its player and waveform; expired, tampered and foreign links are
//! refused; no API key reaches the browser.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::harness::*;

/// One frame of the composition (25 fps).
const FRAME_SECS: f64 = 0.040;

const BLUE: [u8; 3] = [0x15, 0x65, 0xc0];
const PURPLE: [u8; 3] = [0x6a, 0x1b, 0x9a];
const INSTANCE_GREEN: [u8; 3] = [0x2e, 0x7d, 0x32];
const CURRENT_LINE: [u8; 3] = [0xff, 0xf5, 0x9d];
const WAVEFORM: [u8; 3] = [0x4f, 0xc3, 0xf7];

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Runs `review.mjs` in `mode` against `url`; its JSON report.
fn run_browser(mode: &str, url: &str, out_dir: &Path, wait_secs: u64) -> std::process::Child {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}; run `scripts/test-setup.sh`",
        dir.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed; run `scripts/test-setup.sh`"
    );
    let config = out_dir.join(format!("{mode}.json"));
    std::fs::write(
        &config,
        serde_json::to_vec(&json!({
            "url": url, "chromium": "/usr/bin/chromium",
            "outDir": out_dir, "waitSecs": wait_secs,
        }))
        .unwrap(),
    )
    .unwrap();
    Command::new("node")
        .arg(dir.join("review.mjs"))
        .arg(mode)
        .arg(&config)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (scripts/test-setup.sh installs it)")
}

/// Copies the run's screenshots to `$RTC_REVIEW_SHOTS` when it is set (to look at the page).
fn keep_shots(dir: &Path) {
    let Ok(keep) = std::env::var("RTC_REVIEW_SHOTS") else {
        return;
    };
    std::fs::create_dir_all(&keep).unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "png") {
            std::fs::copy(entry.path(), Path::new(&keep).join(entry.file_name())).unwrap();
        }
    }
}

fn report(child: std::process::Child) -> Value {
    let out = child.wait_with_output().expect("node finishes");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "review.mjs printed no report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(report["error"].is_null(), "the browser run failed: {}", report["error"]);
    report
}

/// The page, the data and every script, style and JSON the browser loaded: no API key in any
/// of them, and no request sent one.
fn assert_no_key(report: &Value) {
    let mut seen = report["html"].as_str().unwrap_or_default().to_string();
    for body in report["bodies"].as_array().into_iter().flatten() {
        seen.push_str(body.as_str().unwrap_or_default());
    }
    assert!(!seen.is_empty());
    for key in [KEY, KEY_ADMIN, KEY_OTHER_ORG] {
        assert!(!seen.contains(key), "an API key reached the browser");
    }
    for request in report["requests"].as_array().expect("requests") {
        assert!(request["authorization"].is_null(), "a request carried a key: {request}");
    }
}

fn review_url(app: &TestApp, conversation: &str, query: &str) -> Value {
    let resp = app.get(&format!("/recordings/{conversation}/url/review{query}"), KEY);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert!(body["validUntil"].is_string(), "{body}");
    body
}

fn at(base: DateTime<Utc>, secs: f64) -> DateTime<Utc> {
    base + chrono::Duration::milliseconds((secs * 1000.0) as i64)
}

fn add_chat(app: &TestApp, event: &Value, time: DateTime<Utc>, text: &str) {
    let resp = app.post_json(
        "/recordings/chat/transcript/add",
        KEY,
        &json!({
            "conversationId": event["conversationId"], "recorderId": event["recorderId"],
            "instanceId": event["instanceId"],
            "chatTranscriptList": [{"timeStamp": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "transcript": text, "userDisplayName": "Agent Smith", "userId": "agent-1"}],
        }),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
}

fn add_rrweb(app: &TestApp, event: &Value, sequence: i64, payload: Value) {
    let timestamp = payload["timestamp"].as_i64().unwrap();
    let resp = app.post_json(
        "/recordings/cobrowse/event",
        KEY,
        &json!({
            "conversationId": event["conversationId"], "recorderId": event["recorderId"],
            "instanceId": event["instanceId"],
            "event": {"sessionId": "checkout", "sequenceId": sequence, "timestamp": timestamp,
                "payload": payload.to_string()},
        }),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// A page recorded by rrweb: its body blue from `from_ms`, purple from `from_ms + 2000`.
fn rrweb_session(app: &TestApp, event: &Value, from_ms: i64) {
    add_rrweb(
        app,
        event,
        1,
        json!({"type": 4, "data": {"href": "https://shop.example/checkout", "width": 800, "height": 600}, "timestamp": from_ms}),
    );
    add_rrweb(
        app,
        event,
        2,
        json!({"type": 2, "timestamp": from_ms, "data": {"initialOffset": {"left": 0, "top": 0}, "node": {
        "type": 0, "id": 1, "childNodes": [
            {"type": 1, "id": 2, "name": "html", "publicId": "", "systemId": ""},
            {"type": 2, "id": 3, "tagName": "html", "attributes": {}, "childNodes": [
                {"type": 2, "id": 4, "tagName": "head", "attributes": {}, "childNodes": []},
                {"type": 2, "id": 5, "tagName": "body", "attributes": {"style": "background:#1565c0;margin:0"},
                 "childNodes": [{"type": 3, "id": 6, "textContent": "Checkout"}]}
            ]}
        ]}}}),
    );
    add_rrweb(
        app,
        event,
        3,
        json!({"type": 3, "timestamp": from_ms + 2000, "data": {"source": 0, "texts": [], "removes": [], "adds": [],
            "attributes": [{"id": 5, "attributes": {"style": "background:#6a1b9a;margin:0"}}]}}),
    );
}

/// An RGB screenshot: (width, height, pixels).
fn screenshot(path: &Path) -> (u32, u32, Vec<u8>) {
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=width,height", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let dims = String::from_utf8_lossy(&probe.stdout).trim().to_string();
    let (w, h) = dims
        .split_once(',')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .unwrap_or_else(|| panic!("{}: not an image ({dims})", path.display()));
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg runs");
    assert_eq!(out.stdout.len(), (w * h * 3) as usize, "{}", path.display());
    (w, h, out.stdout)
}

/// The pixels of the central half of `bbox` (a playwright bounding box).
fn region(shot: &(u32, u32, Vec<u8>), bbox: &Value) -> Vec<[u8; 3]> {
    let (w, h, pixels) = shot;
    let f = |k: &str| bbox[k].as_f64().unwrap_or_else(|| panic!("no {k} in {bbox}"));
    let (x, y, bw, bh) = (f("x"), f("y"), f("width"), f("height"));
    let x0 = (x + bw / 4.0).max(0.0) as u32;
    let x1 = ((x + 3.0 * bw / 4.0) as u32).min(*w);
    let y0 = (y + bh / 4.0).max(0.0) as u32;
    let y1 = ((y + 3.0 * bh / 4.0) as u32).min(*h);
    assert!(x1 > x0 && y1 > y0, "empty region {bbox}");
    let mut out = Vec::new();
    for yy in y0..y1 {
        for xx in x0..x1 {
            let at = ((yy * w + xx) * 3) as usize;
            out.push([pixels[at], pixels[at + 1], pixels[at + 2]]);
        }
    }
    out
}

fn share_near(pixels: &[[u8; 3]], color: [u8; 3]) -> f64 {
    let near = pixels
        .iter()
        .filter(|p| (0..3).all(|c| (i16::from(p[c]) - i16::from(color[c])).abs() <= 40))
        .count();
    near as f64 / pixels.len() as f64
}

/// Distinct colours after quantizing to 3 bits per channel: a picture has many, a blank or a
/// placeholder tile few.
fn distinct_colours(pixels: &[[u8; 3]]) -> usize {
    let mut seen = std::collections::HashSet::new();
    for p in pixels {
        seen.insert((p[0] >> 5, p[1] >> 5, p[2] >> 5));
    }
    seen.len()
}

/// When the instance started recording (its first media): the start of its timeline.
fn started_of(app: &TestApp, event: &Value) -> DateTime<Utc> {
    poll(Duration::from_secs(20), "the instance ACTIVE with media", || {
        app.instance(event)["started"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    })
}

#[test]
fn a_call_is_reviewed_in_the_browser_live_and_after_composition() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading();
    let conversation = unique("review");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, true);
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=customer-1&type=CAM&role=customer",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000"), ("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let ports = answer_ports(&resp.text());
    let mut a = lavfi_av(7);
    a.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    a.extend(rtp_out("0:a", "opus", 111, ports[1]));
    let sender = ffmpeg(&a);
    let started = started_of(&app, &event);
    add_chat(&app, &event, at(started, 1.0), "Hello, how can I help?");
    rrweb_session(&app, &event, at(started, 0.5).timestamp_millis());

    // Live: the page says so, shows what there is, and picks up a new chat line by itself.
    let dir = tempfile::tempdir().unwrap();
    let link = review_url(&app, &conversation, "?applicationId=app-a");
    let url = link["url"].as_str().unwrap().to_string();
    assert!(url.contains("/review/") && url.contains("Signature="), "{link}");
    let live = run_browser("live", &url, dir.path(), 20);
    poll(Duration::from_secs(40), "the live page loaded", || {
        dir.path().join("live-ready").exists().then_some(())
    });
    add_chat(&app, &event, at(started, 3.5), "Let me check your order.");
    let live = report(live);
    assert_eq!(live["status"], 200, "{live}");
    assert_eq!(live["data"]["live"], true);
    assert!(
        live["banners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["class"].as_str().unwrap().contains("live")),
        "no live banner: {}",
        live["banners"]
    );
    assert_eq!(live["chatLines"], 1, "{}", live["data"]["chat"]);
    assert_eq!(live["laterChatLines"], 2, "the live page did not refresh its chat");
    assert!(
        live["playerText"].as_str().unwrap().contains("Recording in progress"),
        "{}",
        live["playerText"]
    );
    assert_no_key(&live);

    wait_ok(sender, "ffmpeg");
    app.stop(&event);
    wait_composed(&app, &conversation, &event["instanceId"]);

    // Recorded: play, seek from the chat, replay the co-browse session, screenshots.
    let link = review_url(&app, &conversation, "");
    let url = link["url"].as_str().unwrap().to_string();
    let full = report(run_browser("full", &url, dir.path(), 0));
    keep_shots(dir.path());
    assert_eq!(full["status"], 200, "{full}");
    assert!(
        full["consoleErrors"].as_array().unwrap().is_empty(),
        "{} {}",
        full["consoleErrors"],
        full["failed"]
    );
    let data = &full["data"];
    assert_eq!(data["live"], false);
    assert_eq!(data["composition"]["state"], "done", "{data}");
    assert_eq!(data["instances"][0]["placement"], "composed");
    let cobrowse = &data["cobrowse"][0];
    assert_eq!(cobrowse["rrweb"], true, "{cobrowse}");
    assert!((cobrowse["start"].as_f64().unwrap() - 0.5).abs() < 0.002, "{cobrowse}");
    let played = &full["played"];
    let (t1, t2) = (played["t1"].as_f64().unwrap(), played["t2"].as_f64().unwrap());
    assert!(t2 - t1 > 1.0, "the video does not play: {played}");
    assert_eq!(full["pausedAfterToggle"], true);

    // Each chat line sits at its time in the call (as sent, from the instance's start), and a
    // click seeks the video there within one frame, and highlights it.
    let expected = [1.0, 3.5];
    let seeks = full["seeks"].as_array().unwrap();
    assert_eq!(seeks.len(), 2, "{seeks:?}");
    for (seek, want) in seeks.iter().zip(expected) {
        let t = seek["t"].as_f64().unwrap();
        assert!((t - want).abs() < 0.002, "chat line placed at {t}, sent at {want}");
        let current = seek["currentTime"].as_f64().unwrap();
        assert!(
            (current - want).abs() <= FRAME_SECS,
            "clicking the line at {want}s seeked to {current}s"
        );
        assert_eq!(seek["highlighted"], true, "{seek}");
    }
    assert_eq!(
        full["playingHighlight"],
        json!(["1"]),
        "playing past line 1 highlights it"
    );
    assert_eq!(full["stereoLink"], true, "the stereo audio is offered");

    // Screenshots: the video shows a picture, the timeline the recorded instance, the clicked
    // line its highlight, and the replay the page as it was at that moment.
    let shots = full["shots"].as_array().unwrap();
    for (i, shot) in shots.iter().enumerate() {
        let image = screenshot(Path::new(shot["path"].as_str().unwrap()));
        let video = region(&image, &shot["video"]);
        assert!(
            distinct_colours(&video) >= 12,
            "shot {i}: the video region shows no picture"
        );
        let bar = share_near(&region(&image, &shot["instance"]), INSTANCE_GREEN);
        assert!(bar > 0.6, "shot {i}: the timeline's instance bar is {bar:.2} green");
        let line = share_near(&region(&image, &shot["line"]), CURRENT_LINE);
        assert!(line > 0.5, "shot {i}: the current chat line is {line:.2} highlighted");
        assert_eq!(shot["replayOff"], true, "shot {i}: inside the session the replay shows");
        let replay = region(&image, &shot["replay"]);
        let (want, other) = if i == 0 { (BLUE, PURPLE) } else { (PURPLE, BLUE) };
        let share = share_near(&replay, want);
        assert!(
            share > 0.6 && share_near(&replay, other) < 0.1,
            "shot {i}: the replayed page is {share:.2} of the expected colour: {}",
            shot["replayInfo"]
        );
    }
    assert_no_key(&full);

    // Refused: an expired link, a tampered one, one moved to another organization, and a
    // key of another organization asking for one.
    let short = review_url(&app, &conversation, "?ttlSecs=1");
    std::thread::sleep(Duration::from_millis(2100));
    let expired = report(run_browser("refused", short["url"].as_str().unwrap(), dir.path(), 0));
    assert_eq!(expired["status"], 403, "{expired}");
    assert_eq!(expired["refused"], 1, "{expired}");
    assert!(
        expired["reason"].as_str().unwrap().contains("expired"),
        "{}",
        expired["reason"]
    );
    let mut tampered = url.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    let page = app.request("GET", &tampered, &[], None);
    assert_eq!(page.status, 403, "{}", page.text());
    assert!(page.text().contains("id=\"refused\""), "{}", page.text());
    let data_url = tampered.replacen("?", "/data?", 1);
    app.request("GET", &data_url, &[], None).assert_error(403);
    let moved = url.replace("organizationId=org-a", "organizationId=org-b");
    assert_ne!(moved, url);
    app.request("GET", &moved.replacen("?", "/data?", 1), &[], None)
        .assert_error(403);
    app.get(&format!("/recordings/{conversation}/url/review"), KEY_OTHER_ORG)
        .assert_error(404);
    let bad_ttl = app.get(&format!("/recordings/{conversation}/url/review?ttlSecs=0"), KEY);
    assert_eq!(bad_ttl.assert_error(400)["field"], "ttlSecs");
    let other_app = app.get(
        &format!("/recordings/{conversation}/url/review?applicationId=app-b"),
        KEY,
    );
    other_app.assert_error(404);
}

#[test]
fn an_audio_only_call_shows_its_waveform_and_an_erased_one_says_so() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading();
    let conversation = unique("review-audio");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, false);
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=caller&type=MIC",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let port = answer_ports(&resp.text())[0];
    let mut a = args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=300:sample_rate=48000:duration=3",
    ]);
    a.extend(rtp_out("0:a", "opus", 111, port));
    wait_ok(ffmpeg(&a), "ffmpeg");
    app.stop(&event);
    wait_composed(&app, &conversation, &event["instanceId"]);

    let dir = tempfile::tempdir().unwrap();
    let link = review_url(&app, &conversation, "");
    let url = link["url"].as_str().unwrap().to_string();
    let audio = report(run_browser("audio", &url, dir.path(), 0));
    keep_shots(dir.path());
    assert_eq!(audio["data"]["hasVideo"], false);
    assert_eq!(audio["audio"], 1, "{audio}");
    assert_eq!(audio["video"], 0, "{audio}");
    assert_eq!(audio["waveform"], "true", "the waveform was not drawn");
    let shot = &audio["shots"][0];
    let image = screenshot(Path::new(shot["path"].as_str().unwrap()));
    let waveform = share_near(&region(&image, &shot["waveform"]), WAVEFORM);
    assert!(
        waveform > 0.2,
        "the waveform of a steady tone fills its middle: {waveform:.2}"
    );
    assert_no_key(&audio);

    // Erased: the page still opens (the tombstone), says so, and shows nothing of it.
    let erase = app.request(
        "DELETE",
        &app.api(&format!("/recordings/{conversation}")),
        &[("Authorization", KEY)],
        None,
    );
    assert_eq!(erase.status, 202, "{}", erase.text());
    poll(Duration::from_secs(60), "the erasure done", || {
        app.instance(&event)["erasure"]["erased"].is_string().then_some(())
    });
    let erased = report(run_browser("load", &url, dir.path(), 0));
    let instance = &erased["data"]["instances"][0];
    assert!(instance["erased"].is_string(), "{instance}");
    assert_eq!(instance["tracks"], json!([]), "{instance}");
    assert!(
        erased["banners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["class"].as_str().unwrap().contains("erased")),
        "{}",
        erased["banners"]
    );
    assert!(
        erased["data"]["composition"].is_null() || erased["data"]["composition"]["url"].is_null(),
        "an erased call's composition is not offered: {}",
        erased["data"]["composition"]
    );
}

#[test]
fn before_a_composition_the_track_files_play_in_step_on_the_timeline() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading_with("\n[composition]\nenabled = false\n");
    let conversation = unique("review-tracks");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, true);
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=agent-1&type=CAM",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000"), ("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let ports = answer_ports(&resp.text());
    let mut a = lavfi_av(5);
    a.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    a.extend(rtp_out("0:a", "opus", 111, ports[1]));
    wait_ok(ffmpeg(&a), "ffmpeg");
    app.stop(&event);
    poll(Duration::from_secs(60), "both tracks uploaded", || {
        let all = tracks(&app.instance(&event));
        (all.len() == 2
            && all
                .iter()
                .all(|(_, _, _, t)| t["storage"]["objectStorage"]["uploaded"].is_string()))
        .then_some(())
    });

    let dir = tempfile::tempdir().unwrap();
    let url = review_url(&app, &conversation, "")["url"].as_str().unwrap().to_string();
    let run = report(run_browser("tracks", &url, dir.path(), 0));
    assert!(run["data"]["composition"].is_null(), "{}", run["data"]);
    assert_eq!(run["mainVideo"], 0);
    assert_eq!(run["trackVideos"], 1, "{run}");
    assert_eq!(run["trackAudios"], 1, "{run}");
    let step = &run["inStep"];
    let f = |k: &str| step[k].as_f64().unwrap_or_else(|| panic!("{k}: {step}"));
    assert!(f("clock") > 1.5, "the page's clock runs: {step}");
    assert_eq!(step["paused"], false, "the file inside its span plays: {step}");
    let want = f("clock") - f("start");
    assert!(
        (f("videoTime") - want).abs() < 0.35,
        "the file plays at the clock's time in its span: {step}"
    );
    assert_no_key(&run);
}
