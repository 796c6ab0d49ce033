//! Time from stop to every artefact of a recording uploaded: the upload queue (state-store jobs,
//! the `Uploader` actor with the profile's concurrency, `HEAD` verification, one store write per
//! artefact, `recording.json` last) draining the track files of one instance to the test s3s-fs.
//! Run by `scripts/bench-stop-to-uploaded.sh`, which times `aws s3 cp` on the same files and
//! server in the same run.
//!
//! usage: stop_to_uploaded_bench <dir of track files> <key-prefix>

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use recorder_actors::actors::{queue_track_file, Kick, Uploader};
use recorder_actors::domain::*;
use recorder_actors::storage::{S3Backend, StorageBackend};
use recorder_actors::store::{ArtefactKind, SledStore, StateStore, UploadJob};
use recorder_actors::{plain_manifest_renderer, ApplicationProfile, EngineConfig};

#[actix::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(prefix)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: stop_to_uploaded_bench <dir of track files> <key-prefix>");
        std::process::exit(2);
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("directory of track files")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let state = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(SledStore::open(state.path()).unwrap());
    let backend: Arc<dyn StorageBackend> = Arc::new(S3Backend::new(support::Services::load().s3_settings(prefix)));
    let profile = Arc::new(ApplicationProfile {
        organization_id: "org".into(),
        application_id: "app".into(),
        backend,
        policy: Default::default(),
    });
    let config = Arc::new(EngineConfig {
        recorder_id: "node-1".into(),
        applications: HashMap::from([(("org".to_string(), "app".to_string()), profile.clone())]),
        // The service's defaults (`uploads.concurrency`), and the files stay for the baseline.
        upload_concurrency: 4,
        upload_retry_base: Duration::from_millis(500),
        upload_retry_max: Duration::from_secs(5),
        delete_local_after_upload: false,
        render_settle: std::time::Duration::ZERO,
        render_manifest: plain_manifest_renderer(),
        media: Arc::new(recorder_actors::engine::MediaConfig::for_tests(
            state.path().join("media"),
        )),
        composition: Default::default(),
        recovery: Default::default(),
        limits: Default::default(),
        ready_check_interval: std::time::Duration::from_secs(15),
        webhooks: Default::default(),
        peers: None,
    });
    let now = Utc::now();
    let tracks: Vec<(String, String)> = (0..files.len())
        .map(|i| (format!("stream-{}", i / 2), format!("track-{i}")))
        .collect();
    let mut streams: Vec<StreamRecord> = Vec::new();
    for (stream_id, track_id) in &tracks {
        let track = TrackRecord {
            id: track_id.clone(),
            kind: TrackType::Video,
            started: Some(now),
            stopped: Some(now),
            local: LocalFileRecord {
                location: None,
                created: Some(now),
                deleted: None,
                error: None,
            },
            object: ObjectRecord::default(),
            rotation: None,
        };
        match streams.iter_mut().find(|s| &s.id == stream_id) {
            Some(stream) => stream.tracks.push(track),
            None => streams.push(StreamRecord {
                id: stream_id.clone(),
                user_id: "agent".into(),
                kind: StreamType::Cam,
                state: StreamState::Stopped,
                started: Some(now),
                stopped: Some(now),
                tracks: vec![track],
                role: None,
                rtp_session: None,
                silences: Vec::new(),
            }),
        }
    }
    let record = InstanceRecord {
        schema_version: RECORD_SCHEMA_VERSION,
        instance_id: uuid::Uuid::new_v4().to_string(),
        recorder_id: "node-1".into(),
        organization_id: "org".into(),
        application_id: "app".into(),
        conversation_id: "conv".into(),
        conference_id: "room".into(),
        audio: true,
        video: true,
        state: InstanceState::Stopped,
        created: now,
        started: Some(now),
        stopped: Some(now),
        recovered: None,
        error: None,
        provider: Provider::AmazonS3,
        storage_url: String::new(),
        streams,
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
    store.insert_instance(&record).unwrap();
    let uploader = Uploader::new(store.clone(), profile, config).start();

    // What stop does: every track file and the manifest queued, durably, then the uploader kicked.
    let started = Instant::now();
    for ((stream_id, track_id), path) in tracks.iter().zip(&files) {
        queue_track_file(store.as_ref(), &record, stream_id, track_id, path).unwrap();
    }
    store
        .enqueue_job(&UploadJob {
            schema_version: RECORD_SCHEMA_VERSION,
            key: record.manifest_key(),
            instance_id: record.instance_id.clone(),
            organization_id: "org".into(),
            application_id: "app".into(),
            artefact: ArtefactKind::Manifest,
            generation: 0,
            num_attempts: 0,
            last_error: None,
            multipart_opt: None,
            first_failure: None,
        })
        .unwrap();
    store.flush().await.unwrap();
    uploader.send(Kick).await.unwrap();
    while !store.jobs().unwrap().is_empty() {
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let record = store.get_instance(&record.instance_id).unwrap().unwrap();
    let bytes: u64 = record
        .streams
        .iter()
        .flat_map(|s| &s.tracks)
        .map(|t| t.object.size.expect("every track uploaded"))
        .sum();
    println!(
        "rtc-recorder-queue files={} bytes={} seconds={:.3} mib_per_sec={:.1}",
        files.len(),
        bytes,
        secs,
        bytes as f64 / (1 << 20) as f64 / secs
    );
}
