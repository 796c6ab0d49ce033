//! The composition queue across a crash: a composition the store shows as `Composing` (the
//! process died mid-run) or `Queued` is composed when the engine boots, and uploaded.

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
            rtp_session: None,
        }],
        transcript: None,
        num_transcript_entries: 0,
        cobrowse_sessions: BTreeMap::new(),
        history: vec![],
        stop_requested: None,
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
    let backend: Arc<dyn StorageBackend> = Arc::new(LocalBackend::new(&storage).unwrap());
    let profile = Arc::new(ApplicationProfile {
        organization_id: ORG.into(),
        application_id: APP.into(),
        backend,
    });
    let config = Arc::new(EngineConfig {
        recorder_id: "node-1".into(),
        applications: HashMap::from([((ORG.to_string(), APP.to_string()), profile)]),
        upload_concurrency: 1,
        upload_retry_base: Duration::from_millis(100),
        upload_retry_max: Duration::from_millis(500),
        delete_local_after_upload: false,
        render_manifest: plain_manifest_renderer(),
        media: Arc::new(recorder_actors::engine::MediaConfig::for_tests(media.clone())),
        composition: Default::default(),
        recovery: Default::default(),
        limits: Default::default(),
        ready_check_interval: std::time::Duration::from_secs(15),
    });
    let _registry = Registry::boot(store.clone(), config).unwrap();

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
