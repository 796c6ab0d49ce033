//! Black-box tests of storage profiles: the real `rtc-recorder` binary configured with S3 profiles
//! pointed at s3s-fs servers on loopback (see `scripts/test-services.sh`).
//!
//! - the service is `kill -9`ed while its upload jobs are queued (the store is down); after the
//!   store and the service come back, every artefact and then `recording.json` are uploaded;
//! - verify names the failing check for wrong credentials, a missing bucket and an unreachable
//!   host, and no credential ever appears in an answer or in the logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BASE: &str = "/auvious.video/rtc-recorder/api";
const API_KEY: &str = "storage-test-key-0123456789";
const SECRET_VAR: &str = "RTC_TEST_S3_SECRET";
const WRONG_SECRET_VAR: &str = "RTC_TEST_S3_WRONG_SECRET";
const WRONG_SECRET: &str = "wrong-secret-value-4242";
const AZURE_CONNECTION_VAR: &str = "RTC_TEST_AZURE_CONNECTION";

/// KEY=VALUE lines written by `scripts/test-services.sh start`.
fn services() -> std::collections::HashMap<String, String> {
    testkit::services_env()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private s3s-fs, so this test can stop and start it.
struct S3Server {
    port: u16,
    root: PathBuf,
    child: Option<Child>,
    env: std::collections::HashMap<String, String>,
}

impl S3Server {
    fn new(root: &Path, bucket: &str) -> S3Server {
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        S3Server {
            port: free_port(),
            root: root.into(),
            child: None,
            env: services(),
        }
    }

    fn start(&mut self) {
        let bin = &self.env["RTC_S3S_FS_BIN"];
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--access-key",
                &self.env["RTC_S3_ACCESS_KEY"],
                "--secret-key",
                &self.env["RTC_S3_SECRET_KEY"],
            ])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} ({e}); run scripts/test-services.sh start"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Service {
    service: testkit::Service,
    base: String,
}

impl Service {
    fn start(dir: &Path, config: &str) -> Service {
        let env = services();
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let service = testkit::Launch::new(env!("CARGO_BIN_EXE_rtc-recorder"), dir)
            .config(&config_path)
            .log("debug")
            .env("RECORDER_API_KEY", API_KEY)
            .env(SECRET_VAR, env["RTC_S3_SECRET_KEY"].as_str())
            .env(WRONG_SECRET_VAR, WRONG_SECRET)
            .env(
                AZURE_CONNECTION_VAR,
                format!(
                    "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
                    env["RTC_AZURE_ACCOUNT"], env["RTC_AZURE_KEY"], env["RTC_AZURE_ENDPOINT"]
                ),
            )
            .start();
        let base = service.base_url().to_string();
        Service { service, base }
    }

    /// SIGKILL; answers what the process logged (its output read to the end).
    fn kill9(mut self) -> String {
        self.service.kill9();
        self.service.stderr()
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{BASE}{path}", self.base);
        let req = ureq::request(method, &url)
            .set("Authorization", API_KEY)
            .timeout(Duration::from_secs(60));
        let result = match body {
            Some(body) => req.send_json(body),
            None => req.send_bytes(&[]),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}\nstderr:\n{}", self.service.stderr()),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

fn s3_profile(app: &str, port: u16, bucket: &str, secret_var: &str) -> String {
    let env = services();
    format!(
        "[organizations.default.applications.{app}]\nallowed_origins = [\"*\"]\n\
         [organizations.default.applications.{app}.storage]\nprovider = \"AMAZON_S3\"\nbucket = \"{bucket}\"\n\
         endpoint = \"http://127.0.0.1:{port}\"\npath_style = true\nkey_prefix = \"rec\"\n\
         access_key_id = {{ file = \"{}\" }}\nsecret_access_key = {{ env = \"{secret_var}\" }}\n\n",
        write_access_key_file(&env["RTC_S3_ACCESS_KEY"]).display()
    )
}

/// The access key id comes from a file, to exercise both kinds of credential reference.
fn write_access_key_file(value: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("rtc-recorder-test-ak-{}", std::process::id()));
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path
}

fn poll<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn jobs_queued_at_a_kill_9_finish_after_restart_and_the_manifest_comes_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::new(&dir.path().join("s3"), "recordings");
    let config = format!(
        "[uploads]\nconcurrency = 2\nretry_base_ms = 100\nretry_max_ms = 400\n\n{}",
        s3_profile("s3app", s3.port, "recordings", SECRET_VAR)
    );
    // The store is down: every upload fails and stays queued.
    let service = Service::start(dir.path(), &config);
    let (status, started) = service.call(
        "POST",
        "/recordings/start",
        Some(json!({"applicationId": "s3app", "conferenceId": "room-1", "conversationId": "call-1"})),
    );
    assert_eq!(status, 200, "{started}");
    let (conv, rec, inst) = (
        started["conversationId"].as_str().unwrap().to_string(),
        started["recorderId"].as_str().unwrap().to_string(),
        started["instanceId"].as_str().unwrap().to_string(),
    );
    let ids = json!({"conversationId": conv, "recorderId": rec, "instanceId": inst});
    let mut transcript = ids.clone();
    transcript["chatTranscriptList"] =
        json!([{"timeStamp": "2026-11-27T10:00:00Z", "transcript": "hello", "userId": "agent"}]);
    assert_eq!(
        service
            .call("POST", "/recordings/chat/transcript/add", Some(transcript))
            .0,
        200
    );
    let mut event = ids.clone();
    event["event"] = json!({"sessionId": "cb-1", "sequenceId": 1, "timestamp": 1, "payload": "{}"});
    assert_eq!(service.call("POST", "/recordings/cobrowse/event", Some(event)).0, 200);
    let instance_path = format!("/recordings/{conv}/{rec}/{inst}");
    assert_eq!(service.call("POST", &format!("{instance_path}/stop"), None).0, 200);

    let (_, info) = service.call("GET", &format!("{instance_path}/storage/info"), None);
    assert_eq!(info["provider"], "AMAZON_S3", "{info}");
    assert_eq!(
        info["url"],
        format!("http://127.0.0.1:{}/recordings/rec", s3.port),
        "{info}"
    );
    // Let the uploads fail at least once, so they are in flight or backing off at the kill.
    poll("a failed upload attempt", Duration::from_secs(30), || {
        service
            .service
            .stderr()
            .contains("upload failed, will retry")
            .then_some(())
    });
    let (_, instance) = service.call("GET", &instance_path, None);
    assert!(
        instance["chatTranscript"].get("uploaded").is_none(),
        "nothing can be uploaded yet: {instance}"
    );
    service.kill9();

    s3.start();
    let service = Service::start(dir.path(), &config);
    let instance = poll("the transcript and co-browse uploads", Duration::from_secs(60), || {
        let (_, instance) = service.call("GET", &instance_path, None);
        instance["chatTranscript"].get("uploaded")?;
        Some(instance)
    });
    let prefix = format!("rec/default/s3app/{conv}/{rec}/{inst}");
    assert_eq!(
        instance["chatTranscript"]["location"],
        format!("s3://recordings/{prefix}/chat/transcript.json")
    );
    let bucket = dir.path().join("s3/recordings");
    let manifest_path = bucket.join(format!("{prefix}/recording.json"));
    let manifest: Value = poll("recording.json in the bucket", Duration::from_secs(60), || {
        serde_json::from_slice(&std::fs::read(&manifest_path).ok()?).ok()
    });
    assert!(bucket.join(format!("{prefix}/chat/transcript.json")).is_file());
    assert!(bucket.join(format!("{prefix}/cobrowse/cb-1/events.json")).is_file());
    // The manifest is the API's RecordingDataMessage, rendered after the other uploads.
    assert_eq!(manifest["instanceId"], inst.as_str());
    assert_eq!(manifest["state"], "STOPPED");
    assert_eq!(manifest["storageProfile"]["provider"], "AMAZON_S3");
    assert_eq!(
        manifest["chatTranscript"]["location"], instance["chatTranscript"]["location"],
        "{manifest}"
    );
}

#[test]
fn verify_names_the_failing_check_and_no_secret_leaks() {
    let env = services();
    let dir = tempfile::tempdir().unwrap();
    let shared_port: u16 = env["RTC_S3_ENDPOINT"].rsplit(':').next().unwrap().parse().unwrap();
    let bucket = &env["RTC_S3_BUCKET"];
    let config = [
        s3_profile("good", shared_port, bucket, SECRET_VAR),
        s3_profile("wrongcreds", shared_port, bucket, WRONG_SECRET_VAR),
        // A name no run created before: s3s-fs creates a missing bucket on PUT.
        s3_profile(
            "nobucket",
            shared_port,
            &format!("missing-{}", std::process::id()),
            SECRET_VAR,
        ),
        s3_profile("unreachable", free_port(), bucket, SECRET_VAR),
    ]
    .concat();
    let service = Service::start(dir.path(), &config);
    let verify = |app: &str| {
        let (status, body) = service.call("POST", &format!("/storageproviders/{app}/verify"), None);
        assert_eq!(status, 200, "{body}");
        body
    };
    let good = verify("good");
    for check in [
        "bucketTestResult",
        "writeTestResult",
        "readTestResult",
        "modifyTestResult",
        "deleteTestResult",
    ] {
        assert_eq!(good[check]["passed"], true, "{check}: {good}");
    }
    let wrong = verify("wrongcreds");
    assert_eq!(wrong["bucketTestResult"]["passed"], false);
    assert!(
        wrong["bucketTestResult"]["message"]
            .as_str()
            .unwrap()
            .contains("check the credentials"),
        "{wrong}"
    );
    assert!(
        wrong["writeTestResult"]["message"]
            .as_str()
            .unwrap()
            .contains("not run"),
        "{wrong}"
    );
    let missing = verify("nobucket");
    assert!(
        missing["bucketTestResult"]["message"]
            .as_str()
            .unwrap()
            .contains("bucket does not exist"),
        "{missing}"
    );
    let down = verify("unreachable");
    assert!(
        down["bucketTestResult"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{down}"
    );

    let answers = format!("{good}{wrong}{missing}{down}");
    let logs = service.kill9();
    for secret in [env["RTC_S3_SECRET_KEY"].as_str(), WRONG_SECRET] {
        assert!(!answers.contains(secret), "a credential in an answer");
        assert!(!logs.contains(secret), "a credential in the logs");
    }
    assert!(
        logs.contains("storage profile ready"),
        "debug logs were captured:\n{logs}"
    );
}

/// Starts an instance, posts one co-browse event, stops, and waits for the session upload;
/// returns the instance path.
fn record_cobrowse_session(service: &Service, app: &str, conversation: &str) -> String {
    let (status, started) = service.call(
        "POST",
        "/recordings/start",
        Some(json!({"applicationId": app, "conferenceId": format!("room-{conversation}"), "conversationId": conversation})),
    );
    assert_eq!(status, 200, "{started}");
    let mut event = json!({
        "conversationId": started["conversationId"], "recorderId": started["recorderId"],
        "instanceId": started["instanceId"],
    });
    event["event"] = json!({"sessionId": "cb-1", "sequenceId": 1, "timestamp": 1, "payload": "{\"x\":1}"});
    assert_eq!(service.call("POST", "/recordings/cobrowse/event", Some(event)).0, 200);
    let path = format!(
        "/recordings/{}/{}/{}",
        started["conversationId"].as_str().unwrap(),
        started["recorderId"].as_str().unwrap(),
        started["instanceId"].as_str().unwrap()
    );
    assert_eq!(service.call("POST", &format!("{path}/stop"), None).0, 200);
    poll("the co-browse upload", Duration::from_secs(30), || {
        let (_, list) = service.call("GET", &format!("/recordings/{conversation}/cobrowse"), None);
        list["cobrowseSessions"][0].get("uploaded").map(|_| ())
    });
    path
}

fn signed_url_of(service: &Service, instance_path: &str) -> String {
    let parts: Vec<&str> = instance_path.split('/').collect();
    let url = format!(
        "{}{BASE}{instance_path}/cobrowse/cb-1/url/attachment?conversationId={}&id={}&instanceId={}",
        service.base, parts[2], parts[3], parts[4]
    );
    let resp = ureq::get(&url)
        .set("Authorization", API_KEY)
        .set("referer", "https://agent.example.com/")
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let body: Value = resp.into_json().unwrap();
    body["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no url in {body}"))
        .to_string()
}

#[test]
fn cobrowse_urls_are_the_providers_own_or_served_by_the_recorder() {
    let env = services();
    let dir = tempfile::tempdir().unwrap();
    let shared_port: u16 = env["RTC_S3_ENDPOINT"].rsplit(':').next().unwrap().parse().unwrap();
    let host_key = std::fs::read_to_string(&env["RTC_SFTP_HOST_KEY_FILE"]).unwrap();
    let config = format!(
        "{}[organizations.default.applications.sftpapp]\nallowed_origins = [\"*\"]\n\
         [organizations.default.applications.sftpapp.storage]\nprovider = \"SFTP_STORAGE\"\n\
         host = \"127.0.0.1\"\nport = {}\nusername = \"{}\"\nprivate_key = {{ file = \"{}\" }}\n\
         host_key = \"{}\"\nroot = \"{}\"\nkey_prefix = \"bb-{}\"\n",
        s3_profile("s3app", shared_port, &env["RTC_S3_BUCKET"], SECRET_VAR),
        env["RTC_SFTP_PORT"],
        env["RTC_SFTP_USER"],
        env["RTC_SFTP_KEY_FILE"],
        host_key.trim(),
        env["RTC_SFTP_ROOT"],
        std::process::id(),
    );
    let service = Service::start(dir.path(), &config);

    // S3: a presigned URL straight to the store, which checks it.
    let s3_instance = record_cobrowse_session(&service, "s3app", "call-s3");
    let url = signed_url_of(&service, &s3_instance);
    assert!(
        url.starts_with(&env["RTC_S3_ENDPOINT"]) && url.contains("X-Amz-Signature="),
        "{url}"
    );
    let body = ureq::get(&url).call().unwrap().into_string().unwrap();
    let session: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(session["sessionId"], "cb-1", "{body}");

    // SFTP: the recorder's own signed URL; it fetches the object over SFTP and honours Range.
    let sftp_instance = record_cobrowse_session(&service, "sftpapp", "call-sftp");
    let url = signed_url_of(&service, &sftp_instance);
    assert!(url.starts_with(&service.base) && url.contains("Signature="), "{url}");
    let full = ureq::get(&url).call().unwrap().into_string().unwrap();
    let session: serde_json::Value = serde_json::from_str(&full).unwrap_or_else(|e| panic!("{e}: {full}"));
    assert_eq!(session["sessionId"], "cb-1", "{full}");
    let part = ureq::get(&url).set("Range", "bytes=0-9").call().unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.into_string().unwrap(), full[..10]);
}

/// Creates the Azurite test container through the engine's backend (the conformance suite does
/// the same), so this test does not depend on test order.
fn create_azure_container(env: &std::collections::HashMap<String, String>) {
    use recorder_actors::storage::{AzureBackend, AzureCredentials, AzureSettings, Secret};
    let backend = AzureBackend::new(AzureSettings {
        container: env["RTC_AZURE_CONTAINER"].clone(),
        endpoint: Some(env["RTC_AZURE_ENDPOINT"].clone()),
        key_prefix: String::new(),
        credentials: AzureCredentials::SharedKey {
            account: env["RTC_AZURE_ACCOUNT"].clone(),
            key: Secret::new(env["RTC_AZURE_KEY"].clone()),
        },
    })
    .unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(backend.create_container())
        .expect("create the Azurite test container");
}

#[test]
fn every_provider_is_configured_verified_and_shown_without_credentials() {
    let env = services();
    create_azure_container(&env);
    let dir = tempfile::tempdir().unwrap();
    let shared_port: u16 = env["RTC_S3_ENDPOINT"].rsplit(':').next().unwrap().parse().unwrap();
    let host_key = std::fs::read_to_string(&env["RTC_SFTP_HOST_KEY_FILE"]).unwrap();
    let config = format!(
        "{s3}\
         [organizations.default.applications.azureapp.storage]\nprovider = \"AZURE_BLOB\"\n\
         container = \"{container}\"\nconnection_string = {{ env = \"{AZURE_CONNECTION_VAR}\" }}\n\n\
         [organizations.default.applications.gcsapp.storage]\nprovider = \"GOOGLE_CLOUD\"\n\
         bucket = \"{bucket}\"\nendpoint = \"{gcs}\"\nanonymous = true\n\
         service_account = {{ file = \"{service_account}\" }}\n\n\
         [organizations.default.applications.sftpapp.storage]\nprovider = \"SFTP_STORAGE\"\n\
         host = \"127.0.0.1\"\nport = {port}\nusername = \"{user}\"\nprivate_key = {{ file = \"{key}\" }}\n\
         host_key = \"{host_key}\"\nroot = \"{root}\"\n",
        s3 = s3_profile("s3app", shared_port, &env["RTC_S3_BUCKET"], SECRET_VAR),
        container = env["RTC_AZURE_CONTAINER"],
        bucket = env["RTC_GCS_BUCKET"],
        gcs = env["RTC_GCS_ENDPOINT"],
        service_account = env["RTC_GCS_SERVICE_ACCOUNT_FILE"],
        port = env["RTC_SFTP_PORT"],
        user = env["RTC_SFTP_USER"],
        key = env["RTC_SFTP_KEY_FILE"],
        host_key = host_key.trim(),
        root = env["RTC_SFTP_ROOT"],
    );
    let service = Service::start(dir.path(), &config);
    let mut answers = String::new();
    for (app, provider, url_start) in [
        (
            "s3app",
            "AMAZON_S3",
            format!("{}/{}", env["RTC_S3_ENDPOINT"], env["RTC_S3_BUCKET"]),
        ),
        (
            "azureapp",
            "AZURE_BLOB",
            format!("{}/{}", env["RTC_AZURE_ENDPOINT"], env["RTC_AZURE_CONTAINER"]),
        ),
        (
            "gcsapp",
            "GOOGLE_CLOUD",
            format!("{}/{}", env["RTC_GCS_ENDPOINT"], env["RTC_GCS_BUCKET"]),
        ),
        (
            "sftpapp",
            "SFTP_STORAGE",
            format!("sftp://127.0.0.1:{}{}", env["RTC_SFTP_PORT"], env["RTC_SFTP_ROOT"]),
        ),
    ] {
        let (status, report) = service.call("POST", &format!("/storageproviders/{app}/verify"), None);
        assert_eq!(status, 200, "{app}: {report}");
        for check in [
            "bucketTestResult",
            "writeTestResult",
            "readTestResult",
            "modifyTestResult",
            "deleteTestResult",
        ] {
            assert_eq!(report[check]["passed"], true, "{app} {check}: {report}");
        }
        let (status, started) = service.call(
            "POST",
            "/recordings/start",
            Some(json!({"applicationId": app, "conferenceId": format!("room-{app}"), "conversationId": format!("call-{app}")})),
        );
        assert_eq!(status, 200, "{started}");
        let path = format!(
            "/recordings/{}/{}/{}/storage/info",
            started["conversationId"].as_str().unwrap(),
            started["recorderId"].as_str().unwrap(),
            started["instanceId"].as_str().unwrap()
        );
        let (status, info) = service.call("GET", &path, None);
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["provider"], provider, "{info}");
        assert!(
            info["url"].as_str().unwrap().starts_with(&url_start),
            "{app}: {info} does not start with {url_start}"
        );
        answers.push_str(&format!("{report}{info}"));
    }
    let logs = service.kill9();
    let sftp_key = std::fs::read_to_string(&env["RTC_SFTP_KEY_FILE"]).unwrap();
    let sftp_key_body = sftp_key.lines().nth(1).unwrap();
    for secret in [
        env["RTC_AZURE_KEY"].as_str(),
        env["RTC_S3_SECRET_KEY"].as_str(),
        sftp_key_body,
        "PRIVATE KEY",
    ] {
        assert!(!answers.contains(secret), "a credential in an answer");
        assert!(!logs.contains(secret), "a credential in the logs");
    }
}
