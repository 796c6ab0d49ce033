//! The durable upload queue against real stores: a track file uploaded in parts, verified, then
//! deleted locally; the storage server (s3s-fs, Azurite, gcp-storage-emulator, sshd) killed in the
//! middle of an upload and restarted (the upload resumes and completes exactly once); wrong
//! credentials (the artefact shows the error, the file stays);
//! `recording.json` written after every other artefact; jobs resumed by a new uploader after a
//! restart.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use recorder_actors::actors::{queue_track_file, Kick, Uploader};
use recorder_actors::domain::*;
use recorder_actors::snapshot::{ActorSnapshot, Counters, Snapshot, UploaderCounters};
use recorder_actors::storage::*;
use recorder_actors::store::{ArtefactKind, SledStore, StateStore, UploadJob};
use recorder_actors::{plain_manifest_renderer, ApplicationProfile, EngineConfig};
use support::*;

const ORG: &str = "org";
const APP: &str = "app";

fn instance(tracks: &[(&str, &str)]) -> InstanceRecord {
    let now = Utc::now();
    let mut streams: Vec<StreamRecord> = Vec::new();
    for (stream_id, track_id) in tracks {
        let track = TrackRecord {
            id: track_id.to_string(),
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
        match streams.iter_mut().find(|s| s.id == *stream_id) {
            Some(stream) => stream.tracks.push(track),
            None => streams.push(StreamRecord {
                id: stream_id.to_string(),
                user_id: "agent".into(),
                kind: StreamType::Cam,
                state: StreamState::Stopped,
                started: Some(now),
                stopped: Some(now),
                role: None,
                rtp_session: None,
                silences: Vec::new(),
                tracks: vec![track],
            }),
        }
    }
    InstanceRecord {
        schema_version: RECORD_SCHEMA_VERSION,
        instance_id: uuid::Uuid::new_v4().to_string(),
        recorder_id: "node-1".into(),
        organization_id: ORG.into(),
        application_id: APP.into(),
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
    }
}

struct Rig {
    store: Arc<dyn StateStore>,
    uploader: Addr<Uploader>,
    backend: Arc<dyn StorageBackend>,
    config: Arc<EngineConfig>,
}

fn config(backend: Arc<dyn StorageBackend>) -> (Arc<ApplicationProfile>, Arc<EngineConfig>) {
    let profile = Arc::new(ApplicationProfile {
        organization_id: ORG.into(),
        application_id: APP.into(),
        backend,
        policy: Default::default(),
    });
    let config = Arc::new(EngineConfig {
        recorder_id: "node-1".into(),
        applications: HashMap::from([((ORG.to_string(), APP.to_string()), profile.clone())]),
        upload_concurrency: 2,
        upload_retry_base: Duration::from_millis(100),
        upload_retry_max: Duration::from_millis(500),
        delete_local_after_upload: true,
        render_settle: std::time::Duration::ZERO,
        render_manifest: plain_manifest_renderer(),
        media: Arc::new(recorder_actors::engine::MediaConfig::for_tests(
            std::env::temp_dir().join("upload-queue-media"),
        )),
        composition: Default::default(),
        recovery: Default::default(),
        limits: Default::default(),
        ready_check_interval: std::time::Duration::from_secs(15),
        webhooks: Default::default(),
        peers: None,
    });
    (profile, config)
}

fn rig(state_dir: &Path, backend: Arc<dyn StorageBackend>) -> Rig {
    let store: Arc<dyn StateStore> = Arc::new(SledStore::open(state_dir).unwrap());
    let (profile, config) = config(backend.clone());
    let uploader = Uploader::new(store.clone(), profile, config.clone()).start();
    Rig {
        store,
        uploader,
        backend,
        config,
    }
}

impl Rig {
    async fn snapshot(&self) -> ActorSnapshot {
        self.uploader.send(Snapshot).await.unwrap()
    }

    async fn queue(&self, record: &InstanceRecord, stream: &str, track: &str, file: &Path) {
        queue_track_file(self.store.as_ref(), record, stream, track, file).unwrap();
        self.store.flush().await.unwrap();
        self.uploader.send(Kick).await.unwrap();
    }

    fn track(&self, instance_id: &str, stream: &str, track: &str) -> TrackRecord {
        let mut record = self.store.get_instance(instance_id).unwrap().unwrap();
        record.track_mut(stream, track).unwrap().clone()
    }

    async fn wait_for<T>(&self, what: &str, timeout: Duration, mut probe: impl FnMut(&Rig) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe(self) {
                return value;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; uploader: {:?}", self.snapshot().await);
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Rig {
    /// The uploader's snapshot once its queue is empty and nothing runs. A job leaves the store
    /// before the uploader counts it (the count is taken when the job's future returns to the
    /// actor), so an empty queue alone does not mean the counters are final.
    async fn snapshot_when_idle(&self, what: &str, timeout: Duration) -> ActorSnapshot {
        let deadline = Instant::now() + timeout;
        loop {
            let snapshot = self.snapshot().await;
            if snapshot.state == "IDLE" && uploader_counters(&snapshot).num_queued == 0 {
                return snapshot;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; uploader: {snapshot:?}"
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn jobs_of(store: &dyn StateStore, instance_id: &str) -> Vec<UploadJob> {
    store
        .jobs()
        .unwrap()
        .into_iter()
        .filter(|j| j.instance_id == instance_id)
        .collect()
}

#[actix::test]
async fn a_track_file_is_uploaded_verified_recorded_then_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let services = Services::load();
    let backend: Arc<dyn StorageBackend> = Arc::new(S3Backend::new(services.s3_settings(&unique_prefix("queue"))));
    let rig = rig(&dir.path().join("state"), backend);
    let record = instance(&[("cam-1", "v1")]);
    rig.store.insert_instance(&record).unwrap();
    let file = dir.path().join("v1.webm");
    let md5 = write_pattern_file(&file, (9 << 20) + 1, 3);
    rig.queue(&record, "cam-1", "v1", &file).await;

    let track = rig
        .wait_for(
            "the track to be uploaded and deleted locally",
            Duration::from_secs(60),
            |r| {
                let track = r.track(&record.instance_id, "cam-1", "v1");
                track.local.deleted.is_some().then_some(track)
            },
        )
        .await;
    let key = record.track_key("cam-1", "v1", "webm");
    assert_eq!(
        track.object.location.as_deref(),
        Some(rig.backend.location(&key).as_str())
    );
    assert_eq!(track.object.size, Some((9 << 20) + 1));
    assert!(
        track.object.uploaded.is_some() && track.object.error.is_none(),
        "{track:?}"
    );
    assert!(!file.exists(), "the local file is deleted after a verified upload");
    assert_eq!(md5_hex(&rig.backend.get(&key).await.unwrap()), md5);
    // The manifest followed, and then the queue of the instance is empty.
    rig.wait_for("the queue to drain", Duration::from_secs(30), |r| {
        jobs_of(r.store.as_ref(), &record.instance_id).is_empty().then_some(())
    })
    .await;
    let manifest = rig.backend.get(&record.manifest_key()).await.unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["streams"][0]["tracks"][0]["object"]["location"],
        serde_json::json!(rig.backend.location(&key))
    );
    // The track's download URL is the provider's own, and reads the object.
    let queries = recorder_actors::queries::Queries::new(rig.store.clone(), rig.config.clone());
    let urls = queries
        .track_urls(recorder_actors::messages::TrackUrls {
            instance: recorder_actors::messages::InstanceRef::of(&record).unwrap(),
            ttl: Duration::from_secs(60),
        })
        .await
        .unwrap();
    assert_eq!(urls.len(), 1, "{urls:?}");
    assert!(urls[0].url.contains("X-Amz-Signature="), "{urls:?}");
    let url = urls[0].url.clone();
    let body = std::thread::spawn(move || {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut ureq::get(&url).call().unwrap().into_reader(), &mut body).unwrap();
        body
    })
    .join()
    .unwrap();
    assert_eq!(md5_hex(&body), md5);
    // The shared test server keeps what tests leave behind.
    rig.backend.delete(&key).await.unwrap();
    rig.backend.delete(&record.manifest_key()).await.unwrap();
}

/// Bytes of requests and of the manifest a whole upload sends besides the file's own: well under
/// one part.
const OVERHEAD: u64 = 1 << 20;

/// The storage server killed in the middle of a 64 MiB track upload and started again on the same
/// data: the upload fails with a retryable error shown on the track, the file and the jobs stay,
/// and after the restart the track is uploaded exactly once, whole, and only then deleted
/// locally. Where the server keeps what it acknowledged, the upload resumes: at least a part's
/// worth of the file is not sent again. Where it forgets, the upload starts afresh and sends it
/// all.
///
/// The backend reaches the server through a proxy that holds each connection to `bytes_per_sec`
/// and counts the bytes sent after the restart; the server is killed once the job's row records
/// a first acknowledged part (and the server persisted it), so the kill lands mid-upload however
/// busy the machine is.
async fn outage_mid_upload(dir: &Path, server: &mut dyn PrivateServer, bytes_per_sec: u64, seed: u8) {
    let proxy = SlowProxy::start(server.port(), bytes_per_sec);
    let rig = rig(&dir.join("state"), server.backend(proxy.port));
    let record = instance(&[("cam-1", "v1")]);
    rig.store.insert_instance(&record).unwrap();
    let file = dir.join("v1.webm");
    let size: u64 = 64 << 20;
    let md5 = write_pattern_file(&file, size, seed);
    let key = record.track_key("cam-1", "v1", "webm");
    rig.queue(&record, "cam-1", "v1", &file).await;

    let acknowledged = |progress: &MultipartProgress| progress.parts.len() as u64 * PART_SIZE as u64 + progress.offset;
    let progress_of = |r: &Rig| r.store.job(&key).unwrap().and_then(|j| j.multipart_opt);
    rig.wait_for(
        &format!("{} to acknowledge and persist a first part", server.name()),
        Duration::from_secs(120),
        |r| {
            let first_part = progress_of(r).is_some_and(|p| acknowledged(&p) > 0);
            (first_part && server.persisted(&key)).then_some(())
        },
    )
    .await;
    server.kill();

    let failed = rig
        .wait_for("the upload to fail", Duration::from_secs(60), |r| {
            r.track(&record.instance_id, "cam-1", "v1").object.error
        })
        .await;
    assert!(
        ["STORAGE_IO", "STORAGE_TIMEOUT", "STORAGE_SERVICE"].contains(&failed.code.as_str()),
        "an outage of {} is a retryable error: {failed:?}",
        server.name()
    );
    let track = rig.track(&record.instance_id, "cam-1", "v1");
    assert!(
        track.object.uploaded.is_none() && track.local.deleted.is_none() && file.exists(),
        "nothing counts as uploaded, the file stays: {track:?}"
    );
    let jobs = jobs_of(rig.store.as_ref(), &record.instance_id);
    assert_eq!(jobs.len(), 2, "track and manifest stay queued: {jobs:?}");
    let saved = progress_of(&rig).expect("the job row keeps the upload's progress");
    assert!(
        acknowledged(&saved) > 0 && acknowledged(&saved) < size,
        "killed after the first part and before the last: {saved:?}"
    );
    // Retried while the server is down, not parked.
    rig.wait_for("a retry to fail too", Duration::from_secs(60), |r| {
        r.store
            .job(&key)
            .unwrap()
            .is_some_and(|j| j.num_attempts >= 2)
            .then_some(())
    })
    .await;
    let snapshot = rig.snapshot().await;
    assert_eq!(uploader_counters(&snapshot).num_parked, 0, "{snapshot:?}");
    assert_eq!(uploader_counters(&snapshot).num_uploaded, 0, "{snapshot:?}");
    assert!(file.exists() && rig.track(&record.instance_id, "cam-1", "v1").object.error.is_some());

    let num_bytes_up = proxy.count_new_connections();
    server.restart();
    let track = rig
        .wait_for(
            "the upload to complete after the restart",
            Duration::from_secs(180),
            |r| {
                let track = r.track(&record.instance_id, "cam-1", "v1");
                track.local.deleted.is_some().then_some(track)
            },
        )
        .await;
    assert!(!file.exists(), "deleted once uploaded");
    assert_eq!(track.object.size, Some(size));
    assert!(
        track.object.uploaded.is_some() && track.object.error.is_none(),
        "a later success clears the error: {track:?}"
    );
    let snapshot = rig
        .snapshot_when_idle("the queue to drain", Duration::from_secs(60))
        .await;
    let num_bytes_up = num_bytes_up.load(std::sync::atomic::Ordering::Relaxed);
    // Exactly once: one track and one manifest went up, and nothing went up twice.
    assert_eq!(uploader_counters(&snapshot).num_uploaded, 2, "{snapshot:?}");
    assert_eq!(rig.backend.head(&key).await.unwrap().size, size);
    assert_eq!(
        md5_hex(&rig.backend.get(&key).await.unwrap()),
        md5,
        "the object is the whole file"
    );
    let resumed = num_bytes_up + PART_SIZE as u64 <= size + OVERHEAD;
    if server.keeps_uploads() {
        assert!(
            resumed,
            "{} kept the upload, so it resumes: {num_bytes_up} bytes sent after the restart for a \
             {size}-byte file, {} acknowledged before the kill ({saved:?})",
            server.name(),
            acknowledged(&saved)
        );
    } else {
        assert!(
            num_bytes_up >= size,
            "{} forgot the upload, so it starts afresh and sends the whole file: {num_bytes_up} bytes \
             sent after the restart for a {size}-byte file",
            server.name()
        );
    }
}

#[actix::test]
async fn an_s3_outage_mid_upload_ends_in_exactly_one_complete_upload() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = S3sServer::start(&Services::load(), &dir.path().join("s3"), "fault");
    // 4 parts in flight at 4 MiB/s each: a round of parts takes 2 s.
    outage_mid_upload(dir.path(), &mut server, 4 << 20, 5).await;
}

#[actix::test]
async fn an_azure_outage_mid_upload_ends_in_exactly_one_complete_upload() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = AzuriteServer::start(&Services::load(), &dir.path().join("azurite"), "fault").await;
    // 4 blocks in flight at 2 MiB/s each: a round of blocks takes 4 s, so the kill, which waits
    // up to 5 s for Azurite to save its block list, still lands before the last round.
    outage_mid_upload(dir.path(), &mut server, 2 << 20, 7).await;
}

#[actix::test]
async fn a_gcs_outage_mid_upload_ends_in_exactly_one_complete_upload() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = GcsEmulator::start(&Services::load(), Some(&dir.path().join("gcs")), "fault");
    // One chunk at a time, a second each.
    outage_mid_upload(dir.path(), &mut server, 8 << 20, 8).await;
}

/// gcp-storage-emulator in memory forgets the resumable session when it restarts: the upload
/// starts a fresh session and still completes exactly once.
#[actix::test]
async fn a_gcs_restart_that_forgets_the_session_ends_in_exactly_one_complete_upload() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = GcsEmulator::start(&Services::load(), None, "fault");
    outage_mid_upload(dir.path(), &mut server, 8 << 20, 9).await;
}

#[actix::test]
async fn an_sftp_outage_mid_upload_ends_in_exactly_one_complete_upload() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = SshdServer::start(&Services::load(), &dir.path().join("sshd"));
    // One connection, drained after every 8 MiB: a part a second.
    outage_mid_upload(dir.path(), &mut server, 8 << 20, 10).await;
}

#[actix::test]
async fn wrong_credentials_fail_the_artefact_and_keep_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let services = Services::load();
    let mut settings = services.s3_settings("wrong-credentials");
    settings.secret_access_key = Secret::new("not-the-secret");
    let rig = rig(&dir.path().join("state"), Arc::new(S3Backend::new(settings)));
    let record = instance(&[("mic-1", "a1")]);
    rig.store.insert_instance(&record).unwrap();
    let file = dir.path().join("a1.webm");
    write_pattern_file(&file, 1000, 1);
    rig.queue(&record, "mic-1", "a1", &file).await;

    let error = rig
        .wait_for("the failure to be recorded", Duration::from_secs(30), |r| {
            r.track(&record.instance_id, "mic-1", "a1").object.error
        })
        .await;
    assert_eq!(error.code, "STORAGE_UNAUTHORIZED", "{error:?}");
    assert!(
        error.message.contains("access denied"),
        "a clear message: {}",
        error.message
    );
    let snapshot = rig.snapshot().await;
    assert_eq!(
        uploader_counters(&snapshot).num_parked,
        1,
        "not retried in a loop: {snapshot:?}"
    );
    assert!(file.exists(), "the local file stays");
    let track = rig.track(&record.instance_id, "mic-1", "a1");
    assert!(track.local.deleted.is_none() && track.object.uploaded.is_none());
}

#[actix::test]
async fn the_manifest_goes_last_and_lists_every_artefact() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn StorageBackend> = Arc::new(LocalBackend::new(dir.path().join("storage")).unwrap());
    let rig = rig(&dir.path().join("state"), backend);
    let record = instance(&[("cam-1", "v1"), ("cam-1", "a1"), ("screen-1", "v2")]);
    rig.store.insert_instance(&record).unwrap();
    // The manifest is queued first: the uploader must still hold it back.
    rig.store
        .enqueue_job(&UploadJob {
            schema_version: RECORD_SCHEMA_VERSION,
            key: record.manifest_key(),
            instance_id: record.instance_id.clone(),
            organization_id: ORG.into(),
            application_id: APP.into(),
            artefact: ArtefactKind::Manifest,
            generation: 0,
            num_attempts: 0,
            last_error: None,
            multipart_opt: None,
            first_failure: None,
        })
        .unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for (stream, track) in [("cam-1", "v1"), ("cam-1", "a1"), ("screen-1", "v2")] {
        let file = dir.path().join(format!("{track}.mkv"));
        write_pattern_file(&file, 3 << 20, 2);
        rig.queue(&record, stream, track, &file).await;
        files.push(file);
    }
    rig.wait_for("every job to finish", Duration::from_secs(60), |r| {
        jobs_of(r.store.as_ref(), &record.instance_id).is_empty().then_some(())
    })
    .await;
    let manifest: serde_json::Value =
        serde_json::from_slice(&rig.backend.get(&record.manifest_key()).await.unwrap()).unwrap();
    let mut num_listed = 0;
    for stream in manifest["streams"].as_array().unwrap() {
        for track in stream["tracks"].as_array().unwrap() {
            assert!(
                track["object"]["location"].is_string(),
                "rendered after the upload: {track}"
            );
            assert!(
                track["local"]["deleted"].is_string(),
                "and after the local delete: {track}"
            );
            num_listed += 1;
        }
    }
    assert_eq!(num_listed, 3);
    assert!(files.iter().all(|f| !f.exists()));
}

#[actix::test]
async fn a_new_uploader_resumes_the_jobs_of_a_crashed_one() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let record = instance(&[("cam-1", "v1")]);
    let file = dir.path().join("v1.webm");
    write_pattern_file(&file, 100_000, 4);
    {
        // Queued and durable, but no uploader ran: the process died right after.
        let store = SledStore::open(&dir.path().join("state")).unwrap();
        store.insert_instance(&record).unwrap();
        queue_track_file(&store, &record, "cam-1", "v1", &file).unwrap();
        store.flush().await.unwrap();
    }
    let rig = rig(
        &dir.path().join("state"),
        Arc::new(LocalBackend::new(&storage).unwrap()),
    );
    let track = rig
        .wait_for("the resumed upload", Duration::from_secs(30), |r| {
            let track = r.track(&record.instance_id, "cam-1", "v1");
            track.local.deleted.is_some().then_some(track)
        })
        .await;
    assert_eq!(track.object.size, Some(100_000));
    assert!(storage.join(record.track_key("cam-1", "v1", "webm")).is_file());
}

#[actix::test]
async fn a_track_the_instance_does_not_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("state")).unwrap();
    let record = instance(&[("cam-1", "v1")]);
    store.insert_instance(&record).unwrap();
    let file = dir.path().join("x.webm");
    std::fs::write(&file, b"x").unwrap();
    let err = queue_track_file(&store, &record, "cam-1", "nope", &file).unwrap_err();
    assert!(err.to_string().contains("cam-1/nope"), "{err}");
    assert!(store.jobs().unwrap().is_empty(), "nothing was queued");
}

/// Forwards loopback TCP connections to `target`, each direction in its own thread; the
/// client-to-server direction at most `bytes_per_sec` per connection, counted, so an upload
/// lasts long enough to be interrupted and its bytes on the wire can be compared. Each
/// connection counts into the counter current when it was accepted: a killed client's bytes
/// still draining from socket buffers do not count for the next one.
struct SlowProxy {
    port: u16,
    counter: Arc<std::sync::Mutex<Arc<std::sync::atomic::AtomicU64>>>,
}

impl SlowProxy {
    fn start(target: u16, bytes_per_sec: u64) -> SlowProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let counter = Arc::new(std::sync::Mutex::new(Arc::new(std::sync::atomic::AtomicU64::new(0))));
        let current = counter.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (mut client_r, mut server_w) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut server_r, mut client_w) = (server, client);
                let counter = current.lock().unwrap().clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = client_r.read(&mut buf) {
                        if n == 0 || server_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_secs_f64(n as f64 / bytes_per_sec as f64));
                    }
                    let _ = server_w.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_r, &mut client_w);
                    let _ = client_w.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        SlowProxy { port, counter }
    }

    /// A fresh byte counter for connections accepted from now on.
    fn count_new_connections(&self) -> Arc<std::sync::atomic::AtomicU64> {
        let fresh = Arc::new(std::sync::atomic::AtomicU64::new(0));
        *self.counter.lock().unwrap() = fresh.clone();
        fresh
    }
}

/// Part files s3s-fs holds for unfinished multipart uploads (`.upload_id-{id}.part-{n}`).
fn stored_part_files(root: &Path) -> usize {
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with(".upload_id-")
                        && name
                            .rsplit_once(".part-")
                            .is_some_and(|(_, n)| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}

const RESUME_CHILD: &str = "RTC_TEST_RESUME_CHILD";

/// The service `kill -9`ed in the middle of a 64 MiB multipart upload: the job row holds the
/// upload id and the acknowledged parts, and the next process sends only the rest. The uploader
/// runs in a child process (this test binary re-run with `RESUME_CHILD` set), so the kill is a
/// real SIGKILL of a process holding the state store.
#[actix::test]
async fn a_multipart_upload_cut_by_kill_9_resumes_with_the_parts_already_sent() {
    let services = Services::load();
    if let Ok(spec) = std::env::var(RESUME_CHILD) {
        // Child: upload through the proxy until killed.
        let (state_dir, port) = spec.split_once('|').unwrap();
        let mut settings = services.s3_settings("");
        settings.endpoint = Some(format!("http://127.0.0.1:{port}"));
        settings.bucket = "resume".into();
        let _rig = rig(Path::new(state_dir), Arc::new(S3Backend::new(settings)));
        actix_rt::time::sleep(Duration::from_secs(600)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = S3sServer::start(&services, &dir.path().join("s3"), "resume");
    // 4 MiB/s per connection: a part of 8 MiB takes 2 s, the whole file (4 parts in flight)
    // about 4 s, so the kill after the first parts lands well before the end.
    let proxy = SlowProxy::start(server.port, 4 << 20);
    let state_dir = dir.path().join("state");
    let record = instance(&[("cam-1", "v1")]);
    let file = dir.path().join("v1.webm");
    let size = 64 << 20;
    let md5 = write_pattern_file(&file, size, 6);
    {
        let store = SledStore::open(&state_dir).unwrap();
        store.insert_instance(&record).unwrap();
        queue_track_file(&store, &record, "cam-1", "v1", &file).unwrap();
        store.flush().await.unwrap();
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_multipart_upload_cut_by_kill_9_resumes_with_the_parts_already_sent",
            "--nocapture",
        ])
        .env(RESUME_CHILD, format!("{}|{}", state_dir.display(), proxy.port))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_part_files(&server.root) < 2 {
        assert!(Instant::now() < deadline, "no part reached the server");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The state store writes its log to disk every 500 ms: give the progress time to land.
    std::thread::sleep(Duration::from_millis(800));
    child.kill().unwrap();
    child.wait().unwrap();

    let saved = {
        let store = SledStore::open(&state_dir).unwrap();
        let job = store
            .job(&record.track_key("cam-1", "v1", "webm"))
            .unwrap()
            .expect("the track's job survives the kill");
        job.multipart_opt.expect("the job row records the multipart upload")
    };
    let num_parts = size.div_ceil(PART_SIZE as u64) as usize;
    assert!(
        !saved.parts.is_empty() && saved.parts.len() < num_parts,
        "killed mid-upload: {saved:?}"
    );

    let num_bytes_up = proxy.count_new_connections();
    let mut settings = server.settings(&services);
    settings.endpoint = Some(format!("http://127.0.0.1:{}", proxy.port));
    let rig = rig(&state_dir, Arc::new(S3Backend::new(settings)));
    rig.wait_for("the resumed upload to complete", Duration::from_secs(120), |r| {
        r.track(&record.instance_id, "cam-1", "v1")
            .local
            .deleted
            .is_some()
            .then_some(())
    })
    .await;
    let key = record.track_key("cam-1", "v1", "webm");
    assert_eq!(
        md5_hex(&rig.backend.get(&key).await.unwrap()),
        md5,
        "the object is the whole file"
    );
    let snapshot = rig
        .snapshot_when_idle("the queue to drain", Duration::from_secs(30))
        .await;
    // Only the parts the first process had not finished went up again (plus requests and the
    // manifest, well under one part).
    let num_bytes_up = num_bytes_up.load(std::sync::atomic::Ordering::Relaxed);
    let missing = size - (saved.parts.len() * PART_SIZE) as u64;
    assert!(
        num_bytes_up >= missing && num_bytes_up < missing + (1 << 20),
        "{num_bytes_up} bytes sent after the restart, {missing} were missing ({} parts reused)",
        saved.parts.len()
    );
    assert_eq!(
        uploader_counters(&snapshot).num_uploaded,
        2,
        "exactly once: {snapshot:?}"
    );
}

/// The typed counters of an uploader's snapshot.
fn uploader_counters(snapshot: &ActorSnapshot) -> UploaderCounters {
    match snapshot.counters {
        Counters::Uploader(counters) => counters,
        ref other => panic!("not an uploader's counters: {other:?}"),
    }
}
