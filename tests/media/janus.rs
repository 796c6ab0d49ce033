//! A call forwarded by a real SFU: Janus 1.1 (Debian's package) on loopback, a Chromium publisher
//! (fake camera and microphone) in a VideoRoom through Janus' own JavaScript API, forwarded to the
//! recorder with `rtp_forward`. The room asks for no keyframes of its own (`fir_freq = 0`): only
//! the recorder's keyframe requests, which must reach Janus on the RTCP path its forwarder opens,
//! can bring the keyframe video recording starts from. Both of Janus' syntaxes are recorded: the
//! current `streams` one (with `rtcp_port`), and the deprecated `audio_port`/`video_port` one.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// A Janus server of its own: configuration in a temp dir, HTTP API on a free loopback port, ICE
/// on loopback only, one VideoRoom room (1234) with no periodic keyframe request.
struct Janus {
    child: Child,
    api: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Janus {
    fn start() -> Janus {
        assert!(
            Path::new("/usr/bin/janus").exists(),
            "Debian's janus is not installed; run `scripts/test-setup.sh`"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let rtp_min = 28_200 + (std::process::id() % 8) * 100;
        let lib = "/usr/lib/x86_64-linux-gnu/janus";
        let conf = dir.path();
        std::fs::write(
            conf.join("janus.jcfg"),
            format!(
                r#"general: {{
	configs_folder = "{conf}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = 4
}}
media: {{
	rtp_port_range = "{rtp_min}-{rtp_max}"
}}
nat: {{
	ice_enforce_list = "lo"
	ignore_mdns = true
}}
plugins: {{
	disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so"
}}
transports: {{
	disable = "libjanus_websockets.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so"
}}
events: {{
	broadcast = false
	disable = "libjanus_gelfevh.so,libjanus_mqttevh.so,libjanus_nanomsgevh.so,libjanus_rabbitmqevh.so,libjanus_sampleevh.so,libjanus_wsevh.so"
}}
loggers: {{
	disable = "libjanus_jsonlog.so"
}}
"#,
                conf = conf.display(),
                rtp_max = rtp_min + 99
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("janus.transport.http.jcfg"),
            format!(
                "general: {{\n\tjson = \"compact\"\n\tbase_path = \"/janus\"\n\thttp = true\n\tport = {port}\n\tip = \"127.0.0.1\"\n\thttps = false\n}}\nadmin: {{\n\tadmin_http = false\n}}\ncors: {{\n}}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("janus.plugin.videoroom.jcfg"),
            "general: {\n}\nroom-1234: {\n\tdescription = \"recorder test room\"\n\tpublishers = 4\n\tbitrate = 512000\n\tfir_freq = 0\n\taudiocodec = \"opus\"\n\tvideocodec = \"vp8\"\n}\n",
        )
        .unwrap();
        let log = conf.join("janus.log");
        let child = Command::new("janus")
            .arg("-F")
            .arg(conf)
            .arg("-o")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("janus runs");
        let api = format!("http://127.0.0.1:{port}/janus");
        let janus = Janus {
            child,
            api,
            log,
            _dir: dir,
        };
        poll(Duration::from_secs(20), "janus answers on its HTTP API", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        janus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One Janus API request (`janus` is the request type) to `path` under the API root.
    fn call(&self, app: &TestApp, path: &str, mut body: Value) -> Value {
        body["transaction"] = json!(uuid::Uuid::new_v4().simple().to_string());
        let resp = app.request(
            "POST",
            &format!("{}{path}", self.api),
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(resp.status, 200, "janus {path}: {}", resp.text());
        resp.json()
    }

    /// A session with a handle on the VideoRoom plugin: the path to send plugin messages to.
    fn videoroom_handle(&self, app: &TestApp) -> String {
        let session = self.call(app, "", json!({"janus": "create"}))["data"]["id"]
            .as_u64()
            .unwrap();
        let handle = self.call(
            app,
            &format!("/{session}"),
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )["data"]["id"]
            .as_u64()
            .unwrap();
        format!("/{session}/{handle}")
    }

    /// A synchronous VideoRoom request; its `plugindata.data`.
    fn videoroom(&self, app: &TestApp, handle: &str, body: Value) -> Value {
        let resp = self.call(app, handle, json!({"janus": "message", "body": body}));
        let data = resp["plugindata"]["data"].clone();
        assert!(
            data["error"].is_null() && resp["janus"] == "success",
            "{resp}\n{}",
            self.log()
        );
        data
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium publishing into room 1234 for `seconds`: its stdout's JSON lines as they come.
fn chromium_publisher(janus: &Janus, seconds: u32) -> (Child, mpsc::Receiver<Value>) {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed; run `scripts/test-setup.sh`"
    );
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        json!({"janus": janus.api, "room": 1234, "display": "agent", "seconds": seconds}).to_string(),
    )
    .unwrap();
    let (config_file, config_path) = config.keep().unwrap();
    drop(config_file);
    let mut child = Command::new("node")
        .arg(browser_dir.join("janus-publish.mjs"))
        .arg(&config_path)
        .current_dir(&browser_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs (scripts/test-setup.sh installs it)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    (child, rx)
}

/// Janus forwards what the publisher sent, with the payload types the forward asks for.
fn janus_offer() -> String {
    "v=0\r\no=janus 1 1 IN IP4 127.0.0.1\r\ns=rtp_forward\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
     m=audio 9 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n\
     m=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 ccm fir\r\n"
        .into()
}

/// The RTP and RTCP ports of each m-line of an answer.
fn ports(answer: &str) -> Vec<(u16, Option<u16>)> {
    testkit::rtp::answer_ports(answer)
}

#[test]
fn a_chromium_publisher_forwarded_by_janus_is_recorded_with_keyframes_the_recorder_asked_for() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let janus = Janus::start();
    let conference = unique("janus-room");
    let event = app.start(&unique("janus-call"), &conference, true, true);
    let publish = |user: &str| {
        let resp = app.publish(
            "rtp",
            &conference,
            &format!("userId={user}&type=CAM"),
            &format!("Bearer {KEY}"),
            "application/sdp",
            &janus_offer(),
        );
        assert_eq!(resp.status, 201, "{}", resp.text());
        ports(&resp.text())
    };
    let current = publish("agent");
    let legacy = publish("agent-legacy");
    let seconds = 14;
    let (mut browser, lines) = chromium_publisher(&janus, seconds);
    let publisher_id = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("chromium never published\n{}", janus.log()));
        assert!(line["error"].is_null(), "publisher: {line}\n{}", janus.log());
        if let Some(id) = line["published"].as_u64() {
            break id;
        }
    };
    let handle = janus.videoroom_handle(&app);
    // Let the publisher's first keyframe go by: the forward starts in the middle of a GOP, as
    // it does for a call that was going on before recording began.
    std::thread::sleep(Duration::from_secs(2));
    let keyframes_before = latest_keyframes(&lines);
    let forwarded = Instant::now();
    let answer = janus.videoroom(
        &app,
        &handle,
        json!({"request": "rtp_forward", "room": 1234, "publisher_id": publisher_id, "host": "127.0.0.1",
               "host_family": "ipv4",
               "streams": [{"mid": "0", "port": current[0].0, "pt": 111},
                           {"mid": "1", "port": current[1].0, "pt": 96, "rtcp_port": current[1].1.unwrap()}]}),
    );
    assert_eq!(answer["videoroom"], "rtp_forward", "{answer}");
    // The recorder's keyframe request is the only one: the first frame it writes is the
    // keyframe Chromium encoded for it.
    let first_write = poll(Duration::from_secs(10), "agent's video written", || {
        let tracks = snapshots_of(&app.debug_tree(), "Track");
        tracks
            .iter()
            .filter(|t| t["state"].as_str().is_some_and(|s| s.starts_with("VIDEO")))
            .find(|t| t["counters"]["num_frames_written"].as_u64() > Some(0))
            .map(|_| forwarded.elapsed())
    });
    // Chromium reports its encoder every second: within two, it shows the keyframe it made.
    let mut keyframes_after = keyframes_before;
    let deadline = Instant::now() + Duration::from_secs(3);
    while keyframes_after <= keyframes_before && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            if let Some(n) = line["stats"]["video"]["keyFramesEncoded"].as_u64() {
                keyframes_after = n;
            }
        }
    }
    assert!(
        keyframes_after > keyframes_before,
        "chromium encoded no keyframe for the recorder's request ({keyframes_before} -> {keyframes_after})"
    );
    eprintln!("streams syntax: first video frame written {first_write:?} after the forward");
    // The deprecated syntax, to the second stream.
    let answer = janus.videoroom(
        &app,
        &handle,
        json!({"request": "rtp_forward", "room": 1234, "publisher_id": publisher_id, "host": "127.0.0.1",
               "audio_port": legacy[0].0, "audio_pt": 111,
               "video_port": legacy[1].0, "video_pt": 96, "video_rtcp_port": legacy[1].1.unwrap()}),
    );
    assert_eq!(answer["videoroom"], "rtp_forward", "{answer}");
    let mut done = None;
    while done.is_none() {
        let line = lines.recv_timeout(Duration::from_secs(60)).expect("the publisher ends");
        if line["done"] == true {
            done = Some(line);
        }
    }
    let done = done.unwrap();
    let _ = browser.wait();
    let stats = &done["stats"]["video"];
    assert!(stats["pliCount"].as_u64() >= Some(1), "no PLI reached chromium: {done}");
    // Janus' probes latched the RTCP ports: nothing it sent was refused.
    for t in snapshots_of(&app.debug_tree(), "Track") {
        assert_eq!(t["counters"]["num_refused"], 0, "{t}");
        assert!(t["counters"]["num_packets"].as_u64() > Some(0), "{t}");
    }
    app.stop(&event);

    let instance = app.instance(&event);
    let all = tracks(&instance);
    for user in ["agent", "agent-legacy"] {
        let video = find_track(&all, user, "CAM", "VIDEO");
        let audio = find_track(&all, user, "CAM", "AUDIO");
        let v = probe(&track_file(video));
        let a = probe(&track_file(audio));
        eprintln!("{user}: video {v:?}, audio {a:?}");
        assert_eq!(v.codec, "vp8", "{video}");
        assert!(v.first_is_keyframe, "{user}: the file starts at a keyframe");
        assert!(v.num_frames > 100, "{user}: {} video frames: {video}", v.num_frames);
        assert_eq!(a.codec, "opus");
        assert!(a.num_frames > 200, "{user}: {} audio frames", a.num_frames);
        assert!(video["started"].is_string() && audio["started"].is_string(), "{user}");
        // Without sender reports, both tracks are placed by arrival: the video starts at its
        // first keyframe, with the audio (a keyframe Janus asked for at once) or after it, and
        // within a second of it.
        let offset = (millis(&video["started"]) - millis(&audio["started"])) as f64 / 1000.0;
        assert!(
            (-0.020..1.0).contains(&offset),
            "{user}: video starts {offset:.3} s after audio"
        );
    }
}

/// The newest count of keyframes chromium encoded, from the stats lines received so far.
fn latest_keyframes(lines: &mpsc::Receiver<Value>) -> u64 {
    let mut latest = 0;
    while let Ok(line) = lines.try_recv() {
        if let Some(n) = line["stats"]["video"]["keyFramesEncoded"].as_u64() {
            latest = n;
        }
    }
    latest
}
