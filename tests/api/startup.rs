//! Start-up as config.toml documents it: invalid configuration stops the process naming the key,
//! a development key is generated when none is configured, RECORDER_API_KEY and
//! RECORDER_RECORDER_ID are honoured, and a data dir serves one process at a time.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

#[test]
fn invalid_configuration_stops_start_up_naming_the_key() {
    let zeros = "0".repeat(64);
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("[limits]\nmax_body_bytes = 0\n".into(), vec![], "limits.max_body_bytes"),
        ("[signing]\nurl_ttl_secs = 0\n".into(), vec![], "signing.url_ttl_secs"),
        ("surprise = 1\n".into(), vec![], "surprise"),
        ("[api_keys.k]\nhash = \"md5:00\"\norganization = \"default\"\n".into(), vec![], "api_keys.k.hash"),
        (format!("[api_keys.k]\nhash = \"sha256:{zeros}\"\norganization = \"nope\"\n"), vec![], "api_keys.k.organization"),
        ("[organizations.o.applications.a.storage]\nprovider = \"FLOPPY\"\n".into(), vec![], "provider"),
        (
            "[organizations.o.applications.a]\nallowed_origins = [\"not an origin\"]\n[organizations.o.applications.a.storage]\nprovider = \"LOCAL\"\n".into(),
            vec![],
            "allowed_origins",
        ),
        (String::new(), vec![("RECORDER_LIMITS__MAX_BODY_BYTES", "lots")], "max_body_bytes"),
        (String::new(), vec![("RECORDER_API_KEY", "short")], "RECORDER_API_KEY"),
    ];
    for (toml, env, key) in cases {
        let (status, stdout, stderr) = run_config_to_exit(&toml, &env, EXIT_TIMEOUT);
        let status = status.unwrap_or_else(|| {
            panic!("{toml:?} {env:?}: the process kept running\nstdout: {stdout}\nstderr: {stderr}")
        });
        assert!(
            !status.success(),
            "{toml:?} {env:?}: exit {status:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(
            !stdout.contains("listening on"),
            "{toml:?} {env:?}: it listened anyway: {stdout}"
        );
        assert!(
            format!("{stdout}{stderr}").to_lowercase().contains(&key.to_lowercase()),
            "{toml:?} {env:?}: the message does not name {key}\nstdout: {stdout}\nstderr: {stderr}"
        );
    }
}

#[test]
fn without_configured_keys_a_development_key_is_generated_printed_and_kept() {
    let mut app = TestApp::spawn_config(|_| String::new(), &[]);
    let key_file = app.data_dir.join("dev-api-key");
    let key = std::fs::read_to_string(&key_file)
        .unwrap_or_else(|e| panic!("{}: {e}", key_file.display()))
        .trim()
        .to_string();
    assert!(key.len() >= 16, "a development key should be long: {key:?}");
    // Printed after the `listening on` line: wait for it.
    poll(Duration::from_secs(5), "the development key on stdout", || {
        app.stdout().contains(&key).then_some(())
    });
    let ev = app.start(&key, "default", &conv("dev-key"));
    assert_eq!(app.instance(&key, &ev)["organizationId"], "default");
    app.get(&instance_path(&ev), "some-other-key").assert_error(401);

    app.restart();
    let again = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(
        again.trim(),
        key,
        "the development key must stay the same across restarts"
    );
    assert_eq!(app.instance(&key, &ev)["state"], "INITIALISED");
}

#[test]
fn recorder_api_key_and_recorder_id_come_from_the_environment() {
    let key = "env-key-0123456789abcdef";
    let app = TestApp::spawn_config(
        |_| String::new(),
        &[("RECORDER_API_KEY", key), ("RECORDER_RECORDER_ID", "node-7")],
    );
    let resp = app.post_json(
        "/recordings/start",
        key,
        &json!({"applicationId": "default", "conferenceId": conv("f"), "conversationId": conv("env")}),
    );
    let ev = resp.ok_json("RecordingDataEvent");
    assert_eq!(ev["recorderId"], "node-7");
    app.get(&instance_path(&ev), "env-key-0123456789abcdeX")
        .assert_error(401);
}

#[test]
fn a_second_process_cannot_open_the_same_data_dir() {
    let app = TestApp::spawn();
    let ev = app.start(KEY_A, APP_A, &conv("exclusive"));
    let (status, stdout, stderr) = app.run_another(&[], EXIT_TIMEOUT);
    let status = status.unwrap_or_else(|| {
        panic!("a second process on the same data dir kept running\nstdout: {stdout}\nstderr: {stderr}")
    });
    assert!(!status.success(), "exit {status:?}\nstdout: {stdout}\nstderr: {stderr}");
    assert!(
        !stdout.contains("listening on"),
        "two processes served one data dir: {stdout}"
    );
    // The first one is unaffected.
    app.stop(KEY_A, &ev);
}
