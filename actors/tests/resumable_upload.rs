//! Uploads interrupted the way a crash interrupts them (the upload future dropped: no abort, no
//! completion, nothing after) continue from the recorded progress with a new backend instance,
//! sending only what the store does not hold; progress the store no longer knows, or progress of
//! another file, starts afresh. One test per provider against the servers of
//! `scripts/test-services.sh`: s3s-fs (multipart parts), Azurite (uncommitted blocks),
//! gcp-storage-emulator (resumable session) and sshd (the SFTP temp file).

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use recorder_actors::storage::*;
use support::*;

/// Every progress report of one upload, in order. The first is the starting point (what a
/// resumed upload found the store holding), every later one an acknowledged part or chunk.
#[derive(Default)]
struct Recorder {
    reports: Mutex<Vec<MultipartProgress>>,
    advanced: tokio::sync::Notify,
}

impl Recorder {
    fn sink(self: &Arc<Self>) -> ProgressSink {
        let me = self.clone();
        Arc::new(move |progress: &MultipartProgress| {
            me.reports.lock().unwrap().push(progress.clone());
            me.advanced.notify_one();
        })
    }

    fn first(&self) -> MultipartProgress {
        self.reports
            .lock()
            .unwrap()
            .first()
            .cloned()
            .expect("progress was reported")
    }

    fn latest(&self) -> MultipartProgress {
        self.reports
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("progress was reported")
    }

    /// Part numbers acknowledged after the starting point (S3, Azure).
    fn sent_parts(&self) -> Vec<i32> {
        let reports = self.reports.lock().unwrap();
        let mut sent = Vec::new();
        for pair in reports.windows(2) {
            let before: BTreeSet<(i32, &str)> = pair[0].parts.iter().map(|p| (p.number, p.etag.as_str())).collect();
            sent.extend(
                pair[1]
                    .parts
                    .iter()
                    .filter(|p| !before.contains(&(p.number, p.etag.as_str())))
                    .map(|p| p.number),
            );
        }
        sent
    }

    /// Offsets confirmed after the starting point (GCS, SFTP), one per chunk sent.
    fn sent_chunks(&self) -> Vec<u64> {
        self.reports.lock().unwrap().iter().skip(1).map(|p| p.offset).collect()
    }
}

/// Runs `upload` until `enough` holds for its latest progress, then drops it mid-flight, the way
/// a crash stops it. Fails if the upload finishes first.
async fn interrupt_when(
    upload: BoxFuture<'static, StorageResult<PutReceipt>>,
    recorder: &Arc<Recorder>,
    enough: impl Fn(&MultipartProgress) -> bool,
) -> MultipartProgress {
    let reached = async {
        loop {
            recorder.advanced.notified().await;
            if recorder.reports.lock().unwrap().last().is_some_and(&enough) {
                break;
            }
        }
    };
    tokio::select! {
        result = upload => panic!("the upload finished before it could be interrupted: {result:?}"),
        _ = reached => {}
    }
    recorder.latest()
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
    let upload = backend.put_file_resumable(key, &path, None, first.sink());
    let saved = interrupt_when(upload, &first, |p| p.parts.len() >= 2).await;
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
    let sent: BTreeSet<i32> = second.sent_parts().into_iter().collect();
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
    assert_eq!(third.sent_parts().len(), num_parts);
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
    assert_eq!(fourth.sent_parts().len(), num_parts);
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
            while first.reports.lock().unwrap().is_empty() {
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

#[tokio::test]
async fn an_interrupted_azure_block_upload_resumes_with_the_blocks_already_stored() {
    let settings = Services::load().azure_settings(&unique_prefix("resume"));
    let backend: Backend = Arc::new(azure_backend(settings.clone()).await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("track.webm");
    // Eight blocks of 8 MiB and a shorter ninth. (The SDK reads a blob back in 16 MiB ranges and
    // asks for a CRC64 of a range under 4 MiB, which Azurite refuses: the size keeps the last
    // range above that.)
    let size = (68 << 20) + 4_321;
    let md5 = write_pattern_file(&path, size, 12);
    let num_blocks = 9;
    let key = "org/app/conv/rec/inst/streams/s1/t1.webm";

    let first = Arc::new(Recorder::default());
    let upload = backend.put_file_resumable(key, &path, None, first.sink());
    let saved = interrupt_when(upload, &first, |p| p.parts.len() >= 2).await;
    assert!(saved.parts.len() >= 2 && saved.parts.len() < num_blocks, "{saved:?}");
    assert_eq!(saved.file_len, size);
    assert!(
        matches!(backend.head(key).await, Err(StorageError::NotFound(_))),
        "an interrupted upload must not be visible"
    );

    // A new process (a new backend) continues: the blocks the service holds are not sent again.
    let restarted: Backend = Arc::new(AzureBackend::new(settings).unwrap());
    let second = Arc::new(Recorder::default());
    let receipt = restarted
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
    // Blocks still in flight when the first attempt died may have arrived too: the starting
    // point is what the service listed, which includes every block the progress recorded.
    let held: BTreeSet<(i32, String)> = second
        .first()
        .parts
        .iter()
        .map(|p| (p.number, p.etag.clone()))
        .collect();
    let recorded: BTreeSet<(i32, String)> = saved.parts.iter().map(|p| (p.number, p.etag.clone())).collect();
    assert!(recorded.is_subset(&held), "recorded {recorded:?}, listed {held:?}");
    let reused: BTreeSet<i32> = held.iter().map(|(n, _)| *n).collect();
    let sent: BTreeSet<i32> = second.sent_parts().into_iter().collect();
    assert!(reused.is_disjoint(&sent), "blocks {reused:?} were sent again: {sent:?}");
    let all: BTreeSet<i32> = reused.union(&sent).copied().collect();
    assert_eq!(all, (0..num_blocks as i32).collect(), "every block is stored once");
    let back = restarted.get(key).await.unwrap();
    assert_eq!(back.len() as u64, size);
    assert_eq!(md5_hex(&back), md5, "the object is the file, byte for byte");
    assert_eq!(
        restarted.head(key).await.unwrap().md5_hex.as_deref(),
        Some(md5.as_str())
    );

    // Committing the block list discarded the uncommitted blocks: the same progress again finds
    // nothing to reuse and sends every block.
    let third = Arc::new(Recorder::default());
    let receipt = restarted
        .put_file_resumable(key, &path, Some(saved.clone()), third.sink())
        .await
        .unwrap();
    assert_eq!(receipt.md5_hex, md5);
    assert!(third.first().parts.is_empty(), "{:?}", third.first());
    assert_eq!(third.sent_parts().len(), num_blocks);
    assert_eq!(md5_hex(&restarted.get(key).await.unwrap()), md5);

    // Blocks of another file under the same name are never taken for this file's: the other
    // file is cut, then this one resumes with the other's progress adjusted to its length.
    let other = dir.path().join("other.webm");
    write_pattern_file(&other, size, 99);
    let fourth = Arc::new(Recorder::default());
    let upload = restarted.put_file_resumable(key, &other, None, fourth.sink());
    let other_saved = interrupt_when(upload, &fourth, |p| p.parts.len() >= 2).await;
    let fifth = Arc::new(Recorder::default());
    restarted
        .put_file_resumable(key, &path, Some(other_saved), fifth.sink())
        .await
        .unwrap();
    assert_eq!(
        fifth.sent_parts().len(),
        num_blocks,
        "blocks of another file were reused"
    );
    assert_eq!(md5_hex(&restarted.get(key).await.unwrap()), md5);

    // Progress of a file of another length is not applied at all.
    let sixth = Arc::new(Recorder::default());
    let mut foreign = saved.clone();
    foreign.file_len += 1;
    restarted
        .put_file_resumable(key, &path, Some(foreign), sixth.sink())
        .await
        .unwrap();
    assert!(sixth.first().parts.is_empty());
    assert_eq!(sixth.sent_parts().len(), num_blocks);
    restarted.delete(key).await.unwrap();
}

#[tokio::test]
async fn an_interrupted_gcs_resumable_session_continues_from_the_confirmed_offset() {
    let settings = Services::load().gcs_settings(&unique_prefix("resume"));
    let backend: Backend = Arc::new(GcsBackend::new(settings.clone()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("track.webm");
    // Four chunks of 8 MiB and a short fifth (the emulator rewrites its whole session file per
    // chunk, so the file is kept smaller than in the other tests).
    let size = (32 << 20) + 4_321;
    let md5 = write_pattern_file(&path, size, 13);
    let num_chunks = 5;
    let key = "org/app/conv/rec/inst/streams/s1/t1.webm";

    let first = Arc::new(Recorder::default());
    let upload = backend.put_file_resumable(key, &path, None, first.sink());
    let saved = interrupt_when(upload, &first, |p| p.offset >= 2 * PART_SIZE as u64).await;
    assert_eq!(first.first().offset, 0);
    assert!(!saved.upload_id.is_empty(), "the session URI is recorded");
    assert_eq!(
        first.first().upload_id,
        saved.upload_id,
        "the session URI is recorded as soon as it opens"
    );
    assert!(saved.offset < size, "{saved:?}");
    assert_eq!(saved.file_len, size);
    assert!(
        matches!(backend.head(key).await, Err(StorageError::NotFound(_))),
        "an interrupted upload must not be visible"
    );

    // A new process continues the same session from the byte the service confirmed.
    let restarted: Backend = Arc::new(GcsBackend::new(settings).await.unwrap());
    let second = Arc::new(Recorder::default());
    let receipt = restarted
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
    let start = second.first();
    assert_eq!(start.upload_id, saved.upload_id, "a new session was opened");
    assert!(
        start.offset >= saved.offset,
        "resumed at {} after {} were confirmed",
        start.offset,
        saved.offset
    );
    assert_eq!(start.offset % PART_SIZE as u64, 0, "{start:?}");
    let sent = second.sent_chunks();
    let num_chunks_held = (start.offset / PART_SIZE as u64) as usize;
    assert_eq!(
        sent.len(),
        num_chunks - num_chunks_held,
        "chunks sent on resume: {sent:?}"
    );
    assert_eq!(sent.last(), Some(&size));
    let back = restarted.get(key).await.unwrap();
    assert_eq!(back.len() as u64, size);
    assert_eq!(md5_hex(&back), md5, "the object is the file, byte for byte");
    assert_eq!(
        restarted.head(key).await.unwrap().md5_hex.as_deref(),
        Some(md5.as_str())
    );

    // The session completed, so the service forgot it: the same progress opens a new session
    // and sends the whole file.
    let third = Arc::new(Recorder::default());
    let receipt = restarted
        .put_file_resumable(key, &path, Some(saved.clone()), third.sink())
        .await
        .unwrap();
    assert_eq!(receipt.md5_hex, md5);
    assert_ne!(third.first().upload_id, saved.upload_id);
    assert_eq!(third.first().offset, 0);
    assert_eq!(third.sent_chunks().len(), num_chunks);
    assert_eq!(md5_hex(&restarted.get(key).await.unwrap()), md5);

    // Progress of a file of another length is not applied.
    let fourth = Arc::new(Recorder::default());
    let mut foreign = saved.clone();
    foreign.file_len += 1;
    restarted
        .put_file_resumable(key, &path, Some(foreign), fourth.sink())
        .await
        .unwrap();
    assert_ne!(fourth.first().upload_id, saved.upload_id);
    assert_eq!(fourth.sent_chunks().len(), num_chunks);
    restarted.delete(key).await.unwrap();
}

/// Temp files an SFTP upload left in `dir` (a directory the test sshd serves from this machine).
fn temp_files(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn an_interrupted_sftp_upload_continues_its_temp_file() {
    let services = Services::load();
    let prefix = unique_prefix("resume");
    let settings = services.sftp_settings(&prefix);
    let backend: Backend = Arc::new(SftpBackend::new(settings.clone()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("track.webm");
    let size = (64 << 20) + 4_321;
    let md5 = write_pattern_file(&path, size, 14);
    let num_parts = 9;
    let key = "org/app/conv/rec/inst/streams/s1/t1.webm";
    let remote_dir = Path::new(&settings.root)
        .join(&prefix)
        .join("org/app/conv/rec/inst/streams/s1");

    let first = Arc::new(Recorder::default());
    let upload = backend.put_file_resumable(key, &path, None, first.sink());
    let saved = interrupt_when(upload, &first, |p| p.offset >= 2 * PART_SIZE as u64).await;
    assert!(saved.offset < size, "{saved:?}");
    assert_eq!(saved.file_len, size);
    assert!(
        matches!(backend.head(key).await, Err(StorageError::NotFound(_))),
        "an interrupted upload must not be visible"
    );
    let tmp_name = saved.upload_id.rsplit('/').next().unwrap().to_string();
    assert_eq!(
        temp_files(&remote_dir),
        vec![tmp_name.clone()],
        "the temp file stays for the resume"
    );

    // A new process continues writing the same temp file from the acknowledged offset.
    let restarted: Backend = Arc::new(SftpBackend::new(settings).unwrap());
    let second = Arc::new(Recorder::default());
    let receipt = restarted
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
    let start = second.first();
    assert_eq!(start.upload_id, saved.upload_id, "a new temp file was started");
    assert_eq!(
        start.offset, saved.offset,
        "resumed at {} of {}",
        start.offset, saved.offset
    );
    assert!(start.offset > 0);
    let sent = second.sent_chunks();
    assert_eq!(
        sent.len(),
        num_parts - (start.offset / PART_SIZE as u64) as usize,
        "{sent:?}"
    );
    assert_eq!(sent.last(), Some(&size));
    let back = restarted.get(key).await.unwrap();
    assert_eq!(back.len() as u64, size);
    assert_eq!(md5_hex(&back), md5, "the object is the file, byte for byte");
    assert!(temp_files(&remote_dir).is_empty(), "{:?}", temp_files(&remote_dir));

    // The temp file was renamed into place: the same progress starts afresh.
    let third = Arc::new(Recorder::default());
    let receipt = restarted
        .put_file_resumable(key, &path, Some(saved.clone()), third.sink())
        .await
        .unwrap();
    assert_eq!(receipt.md5_hex, md5);
    assert_ne!(third.first().upload_id, saved.upload_id);
    assert_eq!(third.first().offset, 0);
    assert_eq!(third.sent_chunks().len(), num_parts);
    assert_eq!(md5_hex(&restarted.get(key).await.unwrap()), md5);

    // An interrupted upload of a file of another length leaves a temp file that is not
    // continued for this one, and is removed.
    let other = dir.path().join("other.webm");
    write_pattern_file(&other, size - 1, 98);
    let fourth = Arc::new(Recorder::default());
    let upload = restarted.put_file_resumable(key, &other, None, fourth.sink());
    let other_saved = interrupt_when(upload, &fourth, |p| p.offset >= PART_SIZE as u64).await;
    let fifth = Arc::new(Recorder::default());
    restarted
        .put_file_resumable(key, &path, Some(other_saved.clone()), fifth.sink())
        .await
        .unwrap();
    assert_ne!(fifth.first().upload_id, other_saved.upload_id);
    assert_eq!(fifth.first().offset, 0);
    assert_eq!(fifth.sent_chunks().len(), num_parts);
    assert_eq!(md5_hex(&restarted.get(key).await.unwrap()), md5);
    assert!(temp_files(&remote_dir).is_empty(), "{:?}", temp_files(&remote_dir));
    restarted.delete(key).await.unwrap();
}
