//! A multipart S3 upload interrupted the way a crash interrupts it (the upload future dropped:
//! no abort, no completion, nothing after) continues from the recorded progress, sending only the
//! parts the store does not hold; an upload the store no longer knows starts afresh. Against the
//! s3s-fs test server of `scripts/test-services.sh`.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use recorder_actors::storage::*;
use support::*;

/// Records every progress report; `reported` is the part numbers as they were acknowledged.
#[derive(Default)]
struct Recorder {
    latest: Mutex<Option<MultipartProgress>>,
    reported: Mutex<Vec<i32>>,
    part_done: tokio::sync::Notify,
}

impl Recorder {
    fn sink(self: &Arc<Self>) -> ProgressSink {
        let me = self.clone();
        Arc::new(move |progress: &MultipartProgress| {
            let mut latest = me.latest.lock().unwrap();
            // The first report is the starting point (a resumed upload's parts), not a new part.
            let before = latest.as_ref().map(|p| p.parts.len()).unwrap_or(usize::MAX);
            if progress.parts.len() > before {
                me.reported.lock().unwrap().push(progress.parts.last().unwrap().number);
                me.part_done.notify_one();
            }
            *latest = Some(progress.clone());
        })
    }

    fn latest(&self) -> MultipartProgress {
        self.latest.lock().unwrap().clone().expect("progress was reported")
    }
}

#[tokio::test]
async fn an_interrupted_s3_multipart_upload_resumes_with_the_parts_already_stored() {
    let backend: Backend = Arc::new(S3Backend::new(Services::load().s3_settings(&unique_prefix("resume"))));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("track.webm");
    // Eight parts of 8 MiB and a short ninth.
    let size = (64 << 20) + 4_321;
    let md5 = write_pattern_file(&path, size, 11);
    let num_parts = 9;
    let key = "org/app/conv/rec/inst/streams/s1/t1.webm";

    // The first attempt dies once two parts are acknowledged.
    let first = Arc::new(Recorder::default());
    {
        let upload = backend.put_file_resumable(key, &path, None, first.sink());
        let two_parts = async {
            loop {
                first.part_done.notified().await;
                if first
                    .latest
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|p| p.parts.len() >= 2)
                {
                    break;
                }
            }
        };
        tokio::select! {
            result = upload => panic!("the upload finished before it could be interrupted: {result:?}"),
            _ = two_parts => {}
        }
    }
    let saved = first.latest();
    assert!(saved.parts.len() >= 2 && saved.parts.len() < num_parts, "{saved:?}");
    assert_eq!(saved.file_len, size);
    assert!(
        matches!(backend.head(key).await, Err(StorageError::NotFound(_))),
        "an interrupted upload must not be visible"
    );

    // The next attempt continues the same upload and sends only the missing parts.
    let second = Arc::new(Recorder::default());
    let receipt = backend
        .put_file_resumable(key, &path, Some(saved.clone()), second.sink())
        .await
        .unwrap();
    assert_eq!(
        receipt,
        PutReceipt {
            size,
            md5_hex: md5.clone()
        }
    );
    let resumed = second.latest();
    assert_eq!(resumed.upload_id, saved.upload_id, "a new upload was started");
    let reused: BTreeSet<i32> = saved.parts.iter().map(|p| p.number).collect();
    let sent: BTreeSet<i32> = second.reported.lock().unwrap().iter().copied().collect();
    assert!(reused.is_disjoint(&sent), "parts {reused:?} were sent again: {sent:?}");
    let all: BTreeSet<i32> = reused.union(&sent).copied().collect();
    assert_eq!(all, (1..=num_parts as i32).collect(), "every part is stored once");
    let back = backend.get(key).await.unwrap();
    assert_eq!(back.len() as u64, size);
    assert_eq!(md5_hex(&back), md5, "the object is the file, byte for byte");

    // The upload is complete now, so the store no longer knows its id: resuming it again
    // falls back to a fresh upload of the whole file.
    let third = Arc::new(Recorder::default());
    let receipt = backend
        .put_file_resumable(key, &path, Some(saved.clone()), third.sink())
        .await
        .unwrap();
    assert_eq!(receipt.md5_hex, md5);
    assert_ne!(third.latest().upload_id, saved.upload_id);
    assert_eq!(third.reported.lock().unwrap().len(), num_parts);
    assert_eq!(md5_hex(&backend.get(key).await.unwrap()), md5);

    // Progress of another file (a different length) is not applied to this one.
    let fourth = Arc::new(Recorder::default());
    let mut foreign = saved.clone();
    foreign.file_len += 1;
    backend
        .put_file_resumable(key, &path, Some(foreign), fourth.sink())
        .await
        .unwrap();
    assert_ne!(fourth.latest().upload_id, saved.upload_id);
    assert_eq!(fourth.reported.lock().unwrap().len(), num_parts);
    backend.delete(key).await.unwrap();
}

/// Files s3s-fs keeps for an open multipart upload: `.upload-{id}.json` (the upload) and
/// `.upload_id-{id}.part-{n}` (its parts), in the server's root. s3s-fs 0.14.1 does not implement
/// `ListMultipartUploads`, so this is how a test sees which uploads are still open.
fn open_upload_files(root: &std::path::Path, upload_id: &str) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.starts_with(&format!(".upload-{upload_id}")) || name.starts_with(&format!(".upload_id-{upload_id}"))
        })
        .collect()
}

/// A crash right after an upload started, before any part was acknowledged (or recorded), leaves
/// a job row with an upload id and no part to reuse. The next attempt starts a fresh upload and
/// aborts the recorded one, so no incomplete upload is left behind in the bucket.
#[tokio::test]
async fn a_recorded_upload_with_no_reusable_part_is_aborted_when_a_fresh_one_starts() {
    let services = Services::load();
    let dir = tempfile::tempdir().unwrap();
    let server = S3sServer::start(&services, &dir.path().join("s3"), "stale");
    let backend: Backend = Arc::new(S3Backend::new(server.settings(&services)));
    let path = dir.path().join("track.webm");
    let size = (PART_SIZE as u64) + 4_321;
    let md5 = write_pattern_file(&path, size, 3);
    let key = "org/app/conv/rec/inst/streams/s1/t1.webm";

    // The first attempt gets as far as starting its upload: the first progress report.
    let first = Arc::new(Recorder::default());
    {
        let upload = backend.put_file_resumable(key, &path, None, first.sink());
        let started = async {
            while first.latest.lock().unwrap().is_none() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        tokio::select! {
            result = upload => panic!("the upload finished before it could be interrupted: {result:?}"),
            _ = started => {}
        }
    }
    // What the job row holds if the crash came before any part's acknowledgement was recorded.
    let stale = MultipartProgress {
        parts: Vec::new(),
        ..first.latest()
    };
    assert!(
        !open_upload_files(&server.root, &stale.upload_id).is_empty(),
        "the interrupted upload is open in the store"
    );

    let second = Arc::new(Recorder::default());
    let receipt = backend
        .put_file_resumable(key, &path, Some(stale.clone()), second.sink())
        .await
        .unwrap();
    assert_eq!(
        receipt,
        PutReceipt {
            size,
            md5_hex: md5.clone()
        }
    );
    assert_ne!(
        second.latest().upload_id,
        stale.upload_id,
        "nothing to reuse: a fresh upload"
    );
    assert_eq!(md5_hex(&backend.get(key).await.unwrap()), md5);
    assert_eq!(
        open_upload_files(&server.root, &stale.upload_id),
        Vec::<String>::new(),
        "the recorded upload was left open"
    );
}
