//! The engine's boot over a store left by a crash or an older build: a composition the store
//! shows as `Composing` (the process died mid-run) or `Queued` is composed and uploaded; an
//! ended instance without its upload jobs gets them back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use recorder_actors::actors::Registry;
use recorder_actors::domain::*;
use recorder_actors::storage::{LocalBackend, StorageBackend};
use recorder_actors::store::{CompositionId, CompositionState, SledStore, StateStore};
use recorder_actors::{plain_manifest_renderer, ApplicationProfile, EngineConfig};

const ORG: &str = "org";
const APP: &str = "app";

fn track_file(path: &Path, source: &str, video: bool) {
    let codec: &[&str] = if video {
        &["-c:v", "libvpx", "-deadline", "realtime"]
    } else {
        &["-c:a", "libopus"]
    };
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", source, "-t", "2"])
        .args(codec)
        .arg(path)
        .status()
        .expect("ffmpeg CLI");
    assert!(status.success());
}

fn track(id: &str, kind: TrackType, path: &Path, at: chrono::DateTime<Utc>) -> TrackRecord {
    TrackRecord {
        id: id.into(),
        kind,
        started: Some(at),
        stopped: Some(at + chrono::Duration::seconds(2)),
        local: LocalFileRecord {
            location: Some(path.to_string_lossy().into_owned()),
            created: Some(at),
            ..Default::default()
        },
        object: ObjectRecord::default(),
        rotation: None,
    }
}

#[actix::test]
async fn a_composition_cut_short_by_a_crash_runs_again_at_boot() {
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let video = media.join("v.webm");
    let audio = media.join("a.webm");
    track_file(&video, "color=c=red:s=320x240:r=25", true);
    track_file(&audio, "sine=frequency=440:sample_rate=48000", false);

    let store: Arc<dyn StateStore> = Arc::new(SledStore::open(&dir.path().join("state")).unwrap());
    let at = Utc::now() - chrono::Duration::seconds(60);
    let instance = InstanceRecord {
        schema_version: RECORD_SCHEMA_VERSION,
        instance_id: "i1".into(),
        recorder_id: "node-1".into(),
        organization_id: ORG.into(),
        application_id: APP.into(),
        conversation_id: "conv".into(),
        conference_id: "room".into(),
        audio: true,
        video: true,
        state: InstanceState::Stopped,
        created: at,
        started: Some(at),
        stopped: Some(at + chrono::Duration::seconds(2)),
        recovered: None,
        error: None,
        provider: Provider::Local,
        storage_url: String::new(),
        streams: vec![StreamRecord {
            id: "s1".into(),
            user_id: "alice".into(),
            kind: StreamType::Cam,
            state: StreamState::Stopped,
            started: Some(at),
            stopped: Some(at + chrono::Duration::seconds(2)),
            tracks: vec![
                track("t1", TrackType::Video, &video, at),
                track("t2", TrackType::Audio, &audio, at),
            ],
            role: None,
            rtp_session: None,
            silences: Vec::new(),
        }],
        transcript: None,
        num_transcript_entries: 0,
        cobrowse_sessions: BTreeMap::new(),
        history: vec![],
        stop_requested: None,
        pauses: Vec::new(),
        num_discarded_while_paused: 0,
        stop_reason: None,
        erasure: None,
    };
    store.insert_instance(&instance).unwrap();
    let id = CompositionId::new(ORG, APP, "conv");
    store.queue_composition(&id, "i1", Utc::now()).unwrap();
    // The previous process claimed the job and died.
    store
        .update_composition(&id, &mut |c| {
            c.state = CompositionState::Composing;
            Ok(())
        })
        .unwrap();
    store.flush().await.unwrap();

    let storage = dir.path().join("storage");
    let _registry = Registry::boot(store.clone(), config(&storage, &media, true)).unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let composition = loop {
        let c = store.get_composition(&id).unwrap().unwrap();
        if c.uploaded.is_some() {
            break c;
        }
        assert_ne!(c.state, CompositionState::Failed, "{c:?}");
        assert!(Instant::now() < deadline, "not composed after boot: {c:?}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(composition.state, CompositionState::Done);
    assert!(
        composition.has_video && composition.problems.is_empty(),
        "{composition:?}"
    );
    assert_eq!(composition.key.as_deref(), Some("org/app/conv/composition.mp4"));
    let stored = storage.join("org/app/conv/composition.mp4");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0"])
        .arg(&stored)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "h264\naac");
}

fn config(storage: &Path, media: &Path, compose: bool) -> Arc<EngineConfig> {
    let backend: Arc<dyn StorageBackend> = Arc::new(LocalBackend::new(storage).unwrap());
    let profile = Arc::new(ApplicationProfile {
        organization_id: ORG.into(),
        application_id: APP.into(),
        backend,
        policy: Default::default(),
    });
    Arc::new(EngineConfig {
        recorder_id: "node-1".into(),
        applications: HashMap::from([((ORG.to_string(), APP.to_string()), profile)]),
        upload_concurrency: 1,
        upload_retry_base: Duration::from_millis(100),
        upload_retry_max: Duration::from_millis(500),
        delete_local_after_upload: false,
        render_settle: std::time::Duration::ZERO,
        render_manifest: plain_manifest_renderer(),
        media: Arc::new(recorder_actors::engine::MediaConfig::for_tests(media.to_path_buf())),
        composition: recorder_actors::engine::CompositionConfig {
            enabled: compose,
            ..Default::default()
        },
        recovery: Default::default(),
        limits: Default::default(),
        ready_check_interval: Duration::from_secs(15),
        webhooks: Default::default(),
        peers: None,
    })
}

/// A store written by a build whose stop was not one transaction: the instance is STOPPED, but
/// its upload jobs never made it. Boot queues them again, and everything reaches storage.
#[actix::test]
async fn an_ended_instance_without_its_upload_jobs_gets_them_back_at_boot() {
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let audio = media.join("a.webm");
    track_file(&audio, "sine=frequency=440:sample_rate=48000", false);
    let store: Arc<dyn StateStore> = Arc::new(SledStore::open(&dir.path().join("state")).unwrap());
    let at = Utc::now() - chrono::Duration::seconds(60);
    let mut instance = InstanceRecord {
        schema_version: RECORD_SCHEMA_VERSION,
        instance_id: "i2".into(),
        recorder_id: "node-1".into(),
        organization_id: ORG.into(),
        application_id: APP.into(),
        conversation_id: "conv2".into(),
        conference_id: "room".into(),
        audio: true,
        video: false,
        state: InstanceState::Stopped,
        created: at,
        started: Some(at),
        stopped: Some(at + chrono::Duration::seconds(2)),
        recovered: None,
        error: None,
        provider: Provider::Local,
        storage_url: String::new(),
        streams: vec![StreamRecord {
            id: "s1".into(),
            user_id: "alice".into(),
            kind: StreamType::Mic,
            state: StreamState::Stopped,
            started: Some(at),
            stopped: Some(at + chrono::Duration::seconds(2)),
            tracks: vec![track("t1", TrackType::Audio, &audio, at)],
            role: None,
            rtp_session: None,
            silences: Vec::new(),
        }],
        transcript: None,
        num_transcript_entries: 0,
        cobrowse_sessions: BTreeMap::new(),
        history: vec![],
        stop_requested: None,
        pauses: Vec::new(),
        num_discarded_while_paused: 0,
        stop_reason: None,
        erasure: None,
    };
    let line = ChatEntry {
        time_stamp: at,
        transcript: "hello".into(),
        user_display_name: Some("Alice".into()),
        user_id: "alice".into(),
    };
    instance.num_transcript_entries = store.append_transcript("i2", &[line]).unwrap();
    store.insert_instance(&instance).unwrap();
    // An instance whose artefacts are all in storage is left alone.
    let mut done = instance.clone();
    done.instance_id = "i3".into();
    done.conversation_id = "conv3".into();
    done.streams.clear();
    done.num_transcript_entries = 0;
    store.insert_instance(&done).unwrap();
    store.flush().await.unwrap();
    assert!(store.jobs().unwrap().is_empty());

    let storage = dir.path().join("storage");
    let _registry = Registry::boot(store.clone(), config(&storage, &media, false)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let prefix = storage.join("org/app/conv2/node-1/i2");
    loop {
        let record = store.get_instance("i2").unwrap().unwrap();
        let uploaded = record.transcript.is_some()
            && record.streams[0].tracks[0].object.uploaded.is_some()
            && prefix.join("recording.json").is_file()
            && store.jobs().unwrap().is_empty();
        if uploaded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not uploaded after boot: {record:?} {:?}",
            store.jobs()
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(prefix.join("chat/transcript.json").is_file());
    assert!(prefix.join("streams/s1/t1.webm").is_file());
    assert!(
        !storage.join("org/app/conv3").exists(),
        "the complete instance was left alone"
    );
}
