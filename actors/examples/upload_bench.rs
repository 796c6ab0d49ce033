//! Upload throughput of a storage backend: uploads every file in a directory with `put_file`,
//! `concurrency` at a time (the uploader's per-profile limit), and prints seconds and MiB/s.
//! Run by `scripts/bench-upload.sh`, which measures `aws s3 cp` on the same files and server in
//! the same run.
//!
//! usage: upload_bench <dir> <key-prefix> [concurrency]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use recorder_actors::storage::{S3Backend, StorageBackend};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, prefix) = match (args.get(1), args.get(2)) {
        (Some(dir), Some(prefix)) => (dir.clone(), prefix.clone()),
        _ => {
            eprintln!("usage: upload_bench <dir> <key-prefix> [concurrency]");
            std::process::exit(2);
        }
    };
    let concurrency: usize = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(4);
    let services = support::Services::load();
    let backend = S3Backend::new(services.s3_settings(&prefix));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("directory of files to upload")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let started = Instant::now();
    let sizes: Vec<u64> = stream::iter(files.iter())
        .map(|path| {
            let key = path.file_name().unwrap().to_string_lossy().into_owned();
            let upload = backend.put_file(&key, path);
            async move { upload.await.expect("upload").size }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let bytes: u64 = sizes.iter().sum();
    println!(
        "rtc-recorder files={} bytes={} seconds={:.3} mib_per_sec={:.1}",
        sizes.len(),
        bytes,
        secs,
        bytes as f64 / (1 << 20) as f64 / secs
    );
}
