//! Backup storage: when the primary store keeps failing past the application's delay, artefacts
//! go to its backup store, and the API, `recording.json` and the events say which store holds
//! each.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

#[test]
fn artefacts_go_to_the_backup_store_when_the_primary_keeps_failing() {
    let app = TestApp::spawn_with(
        r#"
[uploads]
retry_base_ms = 100
retry_max_ms = 300

[organizations.org-a.applications.app-backed]
allowed_origins = ["*"]

[organizations.org-a.applications.app-backed.storage]
provider = "LOCAL"
path = "{tmp}/primary"

[organizations.org-a.applications.app-backed.backup]
after_secs = 1

[organizations.org-a.applications.app-backed.backup.storage]
provider = "LOCAL"
path = "{tmp}/backup"
"#,
        &[],
    );
    let primary = app.root.join("primary");
    let backup = app.root.join("backup");
    let c = conv("backed");
    let ev = app.start(KEY_A, "app-backed", &c);
    app.add_transcript(KEY_A, &ev, json!([chat("2024-05-01T10:00:00Z", "hello", "agent")]))
        .ok_json("RecordingDataEvent");
    // The primary store fails from now on: a file where its folder was.
    std::fs::remove_dir_all(&primary).unwrap();
    std::fs::write(&primary, "outage").unwrap();
    app.stop(KEY_A, &ev);
    let instance: Value = poll(Duration::from_secs(30), "the transcript in the backup store", || {
        let instance = app.instance(KEY_A, &ev);
        (instance["chatTranscript"]["store"] == "BACKUP").then_some(instance)
    });
    let prefix = key_prefix(&ev, ORG_A, "app-backed");
    let location = instance["chatTranscript"]["location"].as_str().unwrap();
    assert!(location.contains(&backup.display().to_string()), "{location}");
    assert!(backup.join(format!("{prefix}/chat/transcript.json")).is_file());
    // The manifest follows it there, and lists where each artefact is.
    let manifest_path = backup.join(format!("{prefix}/recording.json"));
    let manifest: Value = poll(Duration::from_secs(30), "recording.json in the backup store", || {
        serde_json::from_slice(&std::fs::read(&manifest_path).ok()?).ok()
    });
    assert_eq!(manifest["chatTranscript"]["store"], "BACKUP", "{manifest:#}");
    // Nothing reached the failing primary.
    assert!(primary.is_file(), "the primary is still the outage file");
}
