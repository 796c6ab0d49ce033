//! Track writers: encoded frames → a WebM/Matroska file through FFmpeg's muxers, without
//! transcoding. Each writer owns one segment file, fed by a bounded channel: a slow disk fills the
//! channel, frames are then dropped and counted, and the receiving side is told to wait for the
//! next keyframe — it never blocks. Writers run on a [`WriterPool`]: a fixed set of threads
//! (never an async executor), each serving many writers in rounds, so hundreds of tracks cost a
//! few threads, not one each.
//!
//! The file is flushed (muxer cluster closed, buffers written to the kernel) at least every
//! `flush_interval`, so a process crash loses at most that much and the file stays readable up to
//! the last flush; every `fsync_interval` the pool's sync thread also fsyncs it, bounding what a
//! power loss costs. `finish` writes the trailer (cues, duration).
//!
//! Why one file (~750 lines of code): the pool, its writers' channels and their flush/fsync
//! clocks are one unit; the FFmpeg muxer calls are only here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use ffmpeg_next as ffmpeg;
use ffmpeg_next::ffi;

use super::codec::Codec;
use super::receiver::TimedFrame;
use super::segment::SegmentInfo;
use super::MediaError;

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// How often the muxer's buffered cluster is handed to the kernel: what a process crash
    /// (`kill -9` included) can cost at most, since the page cache outlives the process.
    pub flush_interval: Duration,
    /// How often a flush also fsyncs the file: what a power loss or kernel crash can cost.
    pub fsync_interval: Duration,
    /// Frames the channel holds before new ones are dropped: ~8 s of 30 fps video; a disk that
    /// stalls longer than that costs frames, not memory.
    pub queue_capacity: usize,
    /// After writing what was queued, the writer sleeps this long before it looks again, so it
    /// wakes once per batch rather than once per frame (and the receiving thread never has to
    /// wake it). Bounds how long a frame waits in the queue; far below `flush_interval`.
    pub batch_interval: Duration,
    /// A write + flush slower than this counts as a slow write.
    pub slow_write: Duration,
    /// What the flush and fsync intervals are measured on (the engine's clock: a test can move it
    /// on to make a flush due).
    pub clock: crate::clock::Clock,
    /// The group the writer is counted in until its file is final.
    pub work: crate::work::WorkGroup,
    /// The threads that serve the writer.
    pub pool: WriterPool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(250),
            fsync_interval: Duration::from_secs(1),
            queue_capacity: 256,
            batch_interval: Duration::from_millis(40),
            slow_write: Duration::from_millis(200),
            clock: crate::clock::Clock::system(),
            work: crate::work::WorkGroup::default(),
            pool: WriterPool::default(),
        }
    }
}

/// Counters a writer shares with whoever watches it; all relaxed, read for snapshots only.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub num_frames_queued: AtomicU64,
    pub num_frames_written: AtomicU64,
    pub num_bytes_written: AtomicU64,
    /// Dropped because the channel was full (the disk did not keep up).
    pub num_frames_dropped: AtomicU64,
    pub num_flushes: AtomicU64,
    /// fsyncs of the file done by the pool's sync thread.
    pub num_syncs: AtomicU64,
    pub num_slow_writes: AtomicU64,
    pub max_write_micros: AtomicU64,
    pub num_errors: AtomicU64,
    /// Wall time (µs since the Unix epoch, on the writer's clock) the first frame went into the
    /// file; 0 before.
    pub first_write_at_micros: AtomicU64,
    /// The writer can write no more (a muxer error, or its thread panicked): its stream's
    /// supervision restarts the track into a new segment.
    pub failed: std::sync::atomic::AtomicBool,
}

impl WriterStats {
    pub fn queue_depth(&self) -> u64 {
        let queued = self.num_frames_queued.load(Ordering::Relaxed);
        let done = self.num_frames_written.load(Ordering::Relaxed);
        queued.saturating_sub(done)
    }
}

/// How one segment ended.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    pub info: SegmentInfo,
    pub num_bytes: u64,
    pub error: Option<String>,
}

enum Command {
    Frame(TimedFrame),
}

/// The sending half, held by the ingest side.
#[derive(Clone)]
pub struct FrameSink {
    tx: SyncSender<Command>,
    stats: Arc<WriterStats>,
}

impl FrameSink {
    /// Queues a frame without blocking; `false` when the writer is behind (or gone) and the
    /// frame was dropped.
    pub fn offer(&self, frame: TimedFrame) -> bool {
        match self.tx.try_send(Command::Frame(frame)) {
            Ok(()) => {
                self.stats.num_frames_queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.num_frames_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// A running segment writer.
pub struct TrackWriter {
    sink: FrameSink,
    finish: Arc<AtomicBool>,
    /// Wakes the pool thread that serves this writer (asked to finish: no need to wait a round).
    wake: mpsc::Sender<Control>,
    done: tokio::sync::oneshot::Receiver<SegmentReport>,
    path: PathBuf,
}

impl TrackWriter {
    /// Hands the writer to one of its pool's threads, which creates the file at once (before any
    /// media: a first frame then costs no file creation). The header is written at the first frame
    /// (a keyframe for video), which gives the picture size and, for H.264, the parameter sets; a
    /// writer finished without a frame removes its empty file.
    pub fn spawn(path: PathBuf, codec: Codec, config: WriterConfig) -> Result<TrackWriter, MediaError> {
        init_ffmpeg();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| MediaError::Io(format!("{}: {e}", dir.display())))?;
        }
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let finish = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let pool = config.pool.clone();
        let slot = Slot {
            guard: config.work.enter(),
            state: WriterState::new(path.clone(), codec, config, stats.clone()),
            rx,
            finish: finish.clone(),
            done: Some(done_tx),
        };
        let wake = pool.assign(slot)?;
        Ok(TrackWriter {
            sink: FrameSink { tx, stats },
            finish,
            wake,
            done,
            path,
        })
    }

    pub fn sink(&self) -> FrameSink {
        self.sink.clone()
    }

    pub fn stats(&self) -> Arc<WriterStats> {
        self.sink.stats.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes what is queued, then the trailer; resolves when the file is final. Sinks still
    /// held elsewhere no longer matter: the writer stops reading once asked to finish.
    pub async fn finish(self) -> SegmentReport {
        self.begin_finish().await
    }

    /// Asks the writer to finish and returns at once; the future resolves with the report.
    pub fn begin_finish(self) -> impl std::future::Future<Output = SegmentReport> + Send + 'static {
        self.finish.store(true, Ordering::Release);
        let _ = self.wake.send(Control::Wake);
        let path = self.path.clone();
        drop(self.sink);
        let done = self.done;
        async move {
            done.await.unwrap_or_else(|_| SegmentReport {
                info: SegmentInfo {
                    path,
                    started_wall_micros: None,
                    duration_micros: 0,
                    num_frames: 0,
                },
                num_bytes: 0,
                error: Some("the writer ended without a report (it panicked)".into()),
            })
        }
    }
}

pub(crate) fn init_ffmpeg() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Registration is a no-op on FFmpeg >= 4; the log level keeps FFmpeg's own stderr quiet
        // (errors come back as return codes and are logged by us).
        let _ = ffmpeg::init();
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    });
}

/// The threads that write every track of an engine: a fixed set, each serving many writers in
/// rounds (every writer's queued frames, then its flush when due), instead of a thread per
/// track. A round comes every `batch_interval` while any writer is open, so a pool thread wakes
/// ~25 times a second whatever the number of tracks; fsyncs go to one more thread of the pool, so
/// a slow disk sync never holds a round back.
#[derive(Clone)]
pub struct WriterPool(Arc<PoolInner>);

struct PoolInner {
    threads: Vec<PoolThread>,
}

struct PoolThread {
    control: Mutex<mpsc::Sender<Control>>,
    /// Writers this thread serves now.
    load: Arc<AtomicUsize>,
}

enum Control {
    Add(Box<Slot>),
    Wake,
}

/// A file whose fsync is due, and the counters to charge a failure to.
struct SyncRequest {
    path: PathBuf,
    stats: Arc<WriterStats>,
}

impl std::fmt::Debug for WriterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WriterPool({} threads, {} writers)",
            self.0.threads.len(),
            self.num_writers()
        )
    }
}

impl Default for WriterPool {
    /// The process-wide pool, one thread per core (tests and tools; the service sizes its own).
    fn default() -> Self {
        static SHARED: std::sync::OnceLock<WriterPool> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| WriterPool::new(0).expect("the writer pool starts"))
            .clone()
    }
}

impl WriterPool {
    /// A pool of `threads` writer threads (0: one per core), started now; an error when a
    /// thread cannot be started (a pool short of a thread would take writers it never serves).
    pub fn new(threads: usize) -> std::io::Result<WriterPool> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            threads
        };
        let (sync, sync_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("track-sync".into())
            .spawn(move || sync_thread(sync_rx))?;
        let threads = (0..threads)
            .map(|i| {
                let (tx, rx) = mpsc::channel();
                let load = Arc::new(AtomicUsize::new(0));
                let thread_load = load.clone();
                let thread_sync = sync.clone();
                std::thread::Builder::new()
                    .name(format!("track-writer-{i}"))
                    .spawn(move || pool_thread(rx, thread_load, thread_sync))?;
                Ok(PoolThread {
                    control: Mutex::new(tx),
                    load,
                })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(WriterPool(Arc::new(PoolInner { threads })))
    }

    pub fn num_threads(&self) -> usize {
        self.0.threads.len()
    }

    /// Writers open on the pool's threads.
    pub fn num_writers(&self) -> usize {
        self.0.threads.iter().map(|t| t.load.load(Ordering::Relaxed)).sum()
    }

    /// Gives the writer to the least loaded thread; the sender wakes that thread.
    fn assign(&self, slot: Slot) -> Result<mpsc::Sender<Control>, MediaError> {
        let thread = self
            .0
            .threads
            .iter()
            .min_by_key(|t| t.load.load(Ordering::Relaxed))
            .ok_or_else(|| MediaError::Io("the writer pool has no thread".into()))?;
        let control = thread.control.lock().unwrap_or_else(|p| p.into_inner()).clone();
        thread.load.fetch_add(1, Ordering::Relaxed);
        if control.send(Control::Add(Box::new(slot))).is_err() {
            thread.load.fetch_sub(1, Ordering::Relaxed);
            return Err(MediaError::Io("the writer thread is gone".into()));
        }
        Ok(control)
    }
}

/// One writer on a pool thread: its state, its queue and how it reports its end.
struct Slot {
    state: WriterState,
    rx: mpsc::Receiver<Command>,
    finish: Arc<AtomicBool>,
    done: Option<tokio::sync::oneshot::Sender<SegmentReport>>,
    /// Counted in the engine's work group until the file is final.
    #[allow(dead_code)]
    guard: crate::work::WorkGuard,
}

impl Slot {
    /// One round: every queued frame, then a flush when due. `false` once the writer is done
    /// (asked to finish, or every sink dropped) and its report sent.
    fn serve(&mut self, sync: &mpsc::Sender<SyncRequest>) -> bool {
        let mut open = true;
        loop {
            match self.rx.try_recv() {
                Ok(Command::Frame(frame)) => self.state.handle(frame),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if self.finish.load(Ordering::Acquire) {
            // Frames queued before the finish was asked for are in the file.
            while let Ok(Command::Frame(frame)) = self.rx.try_recv() {
                self.state.handle(frame);
            }
            open = false;
        }
        if !open {
            let report = self.state.finish();
            if let Some(done) = self.done.take() {
                let _ = done.send(report);
            }
            return false;
        }
        if self.state.flush_if_due() {
            let _ = sync.send(SyncRequest {
                path: self.state.path.clone(),
                stats: self.state.stats.clone(),
            });
        }
        true
    }
}

/// A pool thread: rounds over its writers, new writers and wake-ups from its control channel.
fn pool_thread(control: mpsc::Receiver<Control>, load: Arc<AtomicUsize>, sync: mpsc::Sender<SyncRequest>) {
    let mut slots: Vec<Slot> = Vec::new();
    let mut next_round = Instant::now();
    loop {
        // Idle, the thread blocks until a writer arrives; otherwise it waits for the next round
        // (or a wake-up: a writer asked to finish).
        let message = if slots.is_empty() {
            control.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            control.recv_timeout(next_round.saturating_duration_since(Instant::now()))
        };
        match message {
            Ok(Control::Add(mut slot)) => {
                slot.state.prepare();
                slots.push(*slot);
            }
            Ok(Control::Wake) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) if slots.is_empty() => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        while let Ok(message) = control.try_recv() {
            if let Control::Add(mut slot) = message {
                slot.state.prepare();
                slots.push(*slot);
            }
        }
        let before = slots.len();
        slots.retain_mut(|slot| {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| slot.serve(&sync))) {
                Ok(open) => open,
                Err(_) => {
                    // Only this writer is lost: marked failed (its stream's supervision
                    // restarts the track into a new segment); its report channel is dropped.
                    tracing::error!(path = %slot.state.path.display(), "track writer panicked");
                    slot.state.stats.failed.store(true, Ordering::Release);
                    false
                }
            }
        });
        load.fetch_sub(before - slots.len(), Ordering::Relaxed);
        let round = slots
            .iter()
            .map(|s| s.state.round_interval())
            .min()
            .unwrap_or(Duration::from_millis(40));
        next_round = Instant::now() + round;
    }
}

/// fsyncs what the pool threads flushed, one file after another, off their rounds.
fn sync_thread(requests: mpsc::Receiver<SyncRequest>) {
    // One fdatasync per file due. (One `syncfs` for many files was measured at 600 streams: no
    // less CPU, and the writers' slowest write went from ~20 ms to ~100 ms: BENCHMARKS.md.)
    while let Ok(first) = requests.recv() {
        // Several requests for one file queued meanwhile need one fsync.
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        let mut seen = std::collections::HashSet::new();
        for request in batch {
            if !seen.insert(request.path.clone()) {
                continue;
            }
            // A second descriptor syncs the same inode; the file may be gone (finished and
            // moved) by now, which is not an error.
            match std::fs::File::open(&request.path).and_then(|file| file.sync_data()) {
                Ok(()) => {
                    request.stats.num_syncs.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(path = %request.path.display(), error = %e, "track fsync failed");
                    request.stats.num_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn note_duration(stats: &WriterStats, config: &WriterConfig, took: Duration) {
    let micros = took.as_micros() as u64;
    stats.max_write_micros.fetch_max(micros, Ordering::Relaxed);
    if took >= config.slow_write {
        stats.num_slow_writes.fetch_add(1, Ordering::Relaxed);
    }
}

/// One writer's file and clocks, served by a pool thread.
struct WriterState {
    path: PathBuf,
    codec: Codec,
    config: WriterConfig,
    stats: Arc<WriterStats>,
    muxer: Option<Muxer>,
    /// The file, created and opened when the writer joined its pool thread (before its first
    /// frame, which only adds the stream and writes the header); `None` once the muxer has it,
    /// or when it could not be created then (the first frame tries again and reports).
    prepared: Option<ffmpeg::format::context::Output>,
    error: Option<String>,
    first_wall: Option<i64>,
    next_flush: Instant,
    next_sync: Instant,
    /// The muxer_write fault point's scope (the path); empty where the point compiles away.
    fault_scope: String,
}

impl WriterState {
    fn new(path: PathBuf, codec: Codec, config: WriterConfig, stats: Arc<WriterStats>) -> Self {
        let now = config.clock.now();
        let fault_scope = if cfg!(feature = "fault-injection") {
            path.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        Self {
            next_flush: now + config.flush_interval,
            next_sync: now + config.fsync_interval,
            path,
            codec,
            config,
            stats,
            muxer: None,
            prepared: None,
            error: None,
            first_wall: None,
            fault_scope,
        }
    }

    /// Creates and opens the file ahead of the first frame: creating a file is most of what
    /// opening a muxer costs (~0.2 ms on a virtio disk), and when hundreds of tracks start at
    /// once their first frames would otherwise wait behind each other's file creation on the
    /// pool thread. A failure here is not reported: the first frame tries again and reports.
    fn prepare(&mut self) {
        if self.muxer.is_some() || self.prepared.is_some() {
            return;
        }
        match ffmpeg::format::output_as(&self.path, self.codec.container().muxer()) {
            Ok(output) => self.prepared = Some(output),
            Err(e) => tracing::debug!(path = %self.path.display(), error = %e, "track file not created ahead"),
        }
    }

    /// How often this writer wants a round: its batch interval, never longer than a flush
    /// tick (so flushes are on time).
    fn round_interval(&self) -> Duration {
        let tick = self.config.flush_interval.min(Duration::from_millis(100));
        self.config.batch_interval.min(tick).max(Duration::from_millis(1))
    }

    fn handle(&mut self, frame: TimedFrame) {
        let stats = self.stats.clone();
        if self.error.is_some() {
            stats.num_frames_written.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let started = Instant::now();
        if self.muxer.is_none() {
            if self.codec.is_video() && !frame.frame.keyframe {
                stats.num_frames_written.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match Muxer::open(
                &self.path,
                self.prepared.take(),
                self.codec,
                &frame.frame.data,
                frame.wall_micros,
            ) {
                Ok(m) => self.muxer = Some(m),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot create track file");
                    stats.num_errors.fetch_add(1, Ordering::Relaxed);
                    self.error = Some(e.to_string());
                    stats.num_frames_written.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            self.first_wall = frame.wall_micros;
        }
        let m = self.muxer.as_mut().expect("opened just above when absent");
        let size = frame.frame.data.len() as u64;
        let written = crate::fault::point_in(crate::fault::MUXER_WRITE, &self.fault_scope)
            .map_err(|e| MediaError::Ffmpeg(e.to_string()))
            .and_then(|_| m.write(&frame));
        if let Err(e) = written {
            tracing::error!(path = %self.path.display(), error = %e, "track write failed");
            stats.num_errors.fetch_add(1, Ordering::Relaxed);
            stats.failed.store(true, Ordering::Release);
            self.error = Some(e.to_string());
        } else {
            stats.num_bytes_written.fetch_add(size, Ordering::Relaxed);
            if stats.first_write_at_micros.load(Ordering::Relaxed) == 0 {
                let at = u64::try_from(self.config.clock.utc_micros()).unwrap_or(0);
                stats.first_write_at_micros.store(at, Ordering::Relaxed);
            }
        }
        stats.num_frames_written.fetch_add(1, Ordering::Relaxed);
        note_duration(&stats, &self.config, started.elapsed());
    }

    /// Flushes the muxer when a flush is due; whether an fsync is due too.
    fn flush_if_due(&mut self) -> bool {
        let now = self.config.clock.now();
        if now < self.next_flush {
            return false;
        }
        self.next_flush = now + self.config.flush_interval;
        let (Some(m), None) = (self.muxer.as_mut(), &self.error) else {
            return false;
        };
        let started = Instant::now();
        if let Err(e) = m.flush() {
            tracing::error!(path = %self.path.display(), error = %e, "track flush failed");
            self.stats.num_errors.fetch_add(1, Ordering::Relaxed);
            self.error = Some(e.to_string());
            return false;
        }
        self.stats.num_flushes.fetch_add(1, Ordering::Relaxed);
        note_duration(&self.stats, &self.config, started.elapsed());
        let sync = now >= self.next_sync;
        if sync {
            self.next_sync = now + self.config.fsync_interval;
        }
        sync
    }

    /// The trailer (cues, duration) and an fsync; the segment's report.
    fn finish(&mut self) -> SegmentReport {
        let mut error = self.error.take();
        let (duration_micros, num_frames, num_bytes) = match self.muxer.take() {
            Some(m) => {
                let summary = (m.duration_micros(), m.num_frames, m.num_bytes);
                if let Err(e) = m.finish() {
                    tracing::error!(path = %self.path.display(), error = %e, "track finalize failed");
                    error.get_or_insert(e.to_string());
                }
                summary
            }
            None => {
                // Created ahead and never written: no frame, no file (a crash leaves it empty,
                // and restore removes empty segment files).
                if self.prepared.take().is_some() {
                    let _ = std::fs::remove_file(&self.path);
                }
                (0, 0, 0)
            }
        };
        SegmentReport {
            info: SegmentInfo {
                path: self.path.clone(),
                started_wall_micros: self.first_wall,
                duration_micros,
                num_frames,
            },
            num_bytes,
            error,
        }
    }
}

fn ff(what: &str, e: ffmpeg::Error) -> MediaError {
    MediaError::Ffmpeg(format!("{what}: {e}"))
}

/// An open output file with one stream.
struct Muxer {
    output: ffmpeg::format::context::Output,
    path: PathBuf,
    codec: Codec,
    clock: ffmpeg::Rational,
    stream_time_base: ffmpeg::Rational,
    first_timestamp: Option<i64>,
    last_timestamp: i64,
    last_pts: Option<i64>,
    last_dts: Option<i64>,
    last_duration: i64,
    num_frames: u64,
    num_bytes: u64,
}

impl Muxer {
    /// The stream and the header, in `prepared` (the file created ahead) or in a file created now.
    fn open(
        path: &Path,
        prepared: Option<ffmpeg::format::context::Output>,
        codec: Codec,
        first_frame: &[u8],
        wall_micros: Option<i64>,
    ) -> Result<Muxer, MediaError> {
        let mut output = match prepared {
            Some(output) => output,
            None => ffmpeg::format::output_as(path, codec.container().muxer()).map_err(|e| ff("open output", e))?,
        };
        let clock = ffmpeg::Rational::new(1, codec.clock_rate() as i32);
        // SAFETY: `output` owns a valid AVFormatContext; the new stream's codecpar is allocated by
        // avformat_new_stream and owned by the context; extradata is allocated with av_mallocz as
        // FFmpeg requires (it frees it with the context).
        unsafe {
            let ctx = output.as_mut_ptr();
            let stream = ffi::avformat_new_stream(ctx, std::ptr::null());
            if stream.is_null() {
                return Err(MediaError::Ffmpeg("avformat_new_stream failed".into()));
            }
            (*stream).time_base = clock.into();
            let par = (*stream).codecpar;
            let extradata: Vec<u8> = match codec {
                Codec::Vp8 => {
                    (*par).codec_type = ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
                    (*par).codec_id = ffi::AVCodecID::AV_CODEC_ID_VP8;
                    if let Some((w, h)) = super::depacketize::payload_format(codec).dimensions(first_frame) {
                        (*par).width = w as i32;
                        (*par).height = h as i32;
                    }
                    Vec::new()
                }
                Codec::Vp9 => {
                    (*par).codec_type = ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
                    (*par).codec_id = ffi::AVCodecID::AV_CODEC_ID_VP9;
                    // The WebM muxer refuses a VP9 track without a size.
                    let (w, h) = super::depacketize::payload_format(codec)
                        .dimensions(first_frame)
                        .unwrap_or((640, 480));
                    (*par).width = w as i32;
                    (*par).height = h as i32;
                    Vec::new()
                }
                Codec::H264 => {
                    (*par).codec_type = ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
                    (*par).codec_id = ffi::AVCodecID::AV_CODEC_ID_H264;
                    if let Some((w, h)) = super::depacketize::payload_format(codec).dimensions(first_frame) {
                        (*par).width = w as i32;
                        (*par).height = h as i32;
                    }
                    h264_parameter_sets(first_frame)
                }
                Codec::Av1 => {
                    (*par).codec_type = ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
                    (*par).codec_id = ffi::AVCodecID::AV_CODEC_ID_AV1;
                    let (w, h) = super::depacketize::payload_format(codec)
                        .dimensions(first_frame)
                        .unwrap_or((640, 480));
                    (*par).width = w as i32;
                    (*par).height = h as i32;
                    // The muxer builds the track's `av1C` from the sequence header OBU.
                    super::depacketize::av1::sequence_header(first_frame)
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default()
                }
                Codec::Opus => {
                    (*par).codec_type = ffi::AVMediaType::AVMEDIA_TYPE_AUDIO;
                    (*par).codec_id = ffi::AVCodecID::AV_CODEC_ID_OPUS;
                    (*par).sample_rate = 48_000;
                    ffi::av_channel_layout_default(&mut (*par).ch_layout, 2);
                    opus_head(2).to_vec()
                }
                Codec::Pcmu | Codec::Pcma | Codec::G722 => {
                    // Matroska stores them as A_MS/ACM (a WAVEFORMATEX: format tag 7 μ-law, 6
                    // A-law, 0x028F G.722), which needs the bits per coded sample and the block.
                    (*par).codec_type = ffi::AVMediaType::AVMEDIA_TYPE_AUDIO;
                    let (id, bits) = match codec {
                        Codec::Pcmu => (ffi::AVCodecID::AV_CODEC_ID_PCM_MULAW, 8),
                        Codec::Pcma => (ffi::AVCodecID::AV_CODEC_ID_PCM_ALAW, 8),
                        _ => (ffi::AVCodecID::AV_CODEC_ID_ADPCM_G722, 4),
                    };
                    (*par).codec_id = id;
                    (*par).sample_rate = codec.sample_rate() as i32;
                    (*par).bits_per_coded_sample = bits;
                    (*par).block_align = 1;
                    ffi::av_channel_layout_default(&mut (*par).ch_layout, 1);
                    Vec::new()
                }
            };
            if !extradata.is_empty() {
                let padding = ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
                let buf = ffi::av_mallocz(extradata.len() + padding) as *mut u8;
                if buf.is_null() {
                    return Err(MediaError::Ffmpeg("out of memory for extradata".into()));
                }
                std::ptr::copy_nonoverlapping(extradata.as_ptr(), buf, extradata.len());
                (*par).extradata = buf;
                (*par).extradata_size = extradata.len() as i32;
            }
        }
        if let Some(at) = wall_micros.and_then(chrono::DateTime::from_timestamp_micros) {
            // The segment's start in its own header (Matroska DateUTC): what recovery after a
            // crash places the segment by, with nothing else to go on.
            let mut metadata = ffmpeg::Dictionary::new();
            metadata.set(
                "creation_time",
                &at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            );
            output.set_metadata(metadata);
        }
        let mut options = ffmpeg::Dictionary::new();
        // An H.264 track's first decode times are before 0 (see `H264_DTS_LAG_TICKS`): they must
        // not shift the presentation times, which are the track's timeline.
        if codec == Codec::H264 {
            options.set("avoid_negative_ts", "disabled");
        }
        // Close a cluster at least every second so flushes have whole clusters to write.
        options.set("cluster_time_limit", "1000");
        output.write_header_with(options).map_err(|e| ff("write header", e))?;
        let stream_time_base = output.stream(0).map(|s| s.time_base()).unwrap_or(clock);
        Ok(Muxer {
            output,
            path: path.to_path_buf(),
            codec,
            clock,
            stream_time_base,
            first_timestamp: None,
            last_timestamp: 0,
            last_pts: None,
            last_dts: None,
            last_duration: 0,
            num_frames: 0,
            num_bytes: 0,
        })
    }

    fn write(&mut self, frame: &TimedFrame) -> Result<(), MediaError> {
        let first = *self.first_timestamp.get_or_insert(frame.timestamp);
        // Gaps stay gaps: the file's clock is the sender's RTP clock, shifted to start at 0.
        let ticks = frame.timestamp - first;
        let pts = rescale(ticks, self.clock, self.stream_time_base);
        // Decode order: the same as presentation order, except H.264 with B-frames, whose
        // frames come in decode order with their presentation times. Matroska stores only the
        // presentation time; the muxer wants a decode time that grows and is no later than it.
        let dts = if self.codec == Codec::H264 {
            let lagged = pts - rescale(H264_DTS_LAG_TICKS, self.clock, self.stream_time_base);
            self.last_dts.map_or(lagged, |last| lagged.max(last + 1))
        } else {
            pts
        };
        if ticks < 0 || dts > pts || self.last_dts.is_some_and(|last| dts <= last) || self.last_pts == Some(pts) {
            // Before the file's first frame, or two frames in one tick of the container's
            // clock: the muxer would refuse it.
            return Ok(());
        }
        // The muxer reads the frame where it is: a packet without a buffer of its own borrows
        // its data, which `av_write_frame` never frees or changes (it copies only what it keeps,
        // e.g. for a bitstream filter), so no copy and no allocation per frame.
        let data = &frame.frame.data;
        let size = i32::try_from(data.len()).map_err(|_| MediaError::Ffmpeg("frame too large".into()))?;
        let mut packet = ffmpeg::Packet::empty();
        // SAFETY: `data` outlives the packet, which is written below and dropped in this
        // function; with `buf` left NULL, dropping it (av_packet_unref) does not touch the data.
        unsafe {
            let raw = ffmpeg::codec::packet::Mut::as_mut_ptr(&mut packet);
            (*raw).data = data.as_ptr().cast_mut();
            (*raw).size = size;
        }
        packet.set_stream(0);
        packet.set_pts(Some(pts));
        packet.set_dts(Some(dts));
        let duration = match self.codec {
            Codec::Opus => opus_packet_samples(&frame.frame.data).unwrap_or(960),
            // One byte per tick of the 8 kHz RTP clock (see `Codec::is_telephony`).
            Codec::Pcmu | Codec::Pcma | Codec::G722 => frame.frame.data.len() as i64,
            Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1 => 0,
        };
        packet.set_duration(rescale(duration, self.clock, self.stream_time_base));
        if frame.frame.keyframe || !self.codec.is_video() {
            packet.set_flags(ffmpeg::codec::packet::Flags::KEY);
        }
        packet.write(&mut self.output).map_err(|e| ff("write frame", e))?;
        self.last_pts = Some(pts);
        self.last_dts = Some(dts);
        self.last_timestamp = if self.num_frames == 0 {
            frame.timestamp
        } else {
            self.last_timestamp.max(frame.timestamp)
        };
        self.last_duration = duration;
        self.num_frames += 1;
        self.num_bytes += frame.frame.data.len() as u64;
        Ok(())
    }

    fn duration_micros(&self) -> i64 {
        let Some(first) = self.first_timestamp else { return 0 };
        let ticks = self.last_timestamp - first + self.last_duration;
        ticks * 1_000_000 / i64::from(self.codec.clock_rate())
    }

    /// Closes the current cluster and writes FFmpeg's buffers to the file (the pool's sync
    /// thread fsyncs it when due).
    fn flush(&mut self) -> Result<(), MediaError> {
        // SAFETY: the context is valid and its header was written; a NULL packet asks a muxer
        // with AVFMT_ALLOW_FLUSH (Matroska) to flush its buffered cluster; pb is the open file.
        unsafe {
            let ctx = self.output.as_mut_ptr();
            let rc = ffi::av_write_frame(ctx, std::ptr::null_mut());
            if rc < 0 {
                return Err(ff("flush muxer", ffmpeg::Error::from(rc)));
            }
            if !(*ctx).pb.is_null() {
                ffi::avio_flush((*ctx).pb);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), MediaError> {
        self.output.write_trailer().map_err(|e| ff("write trailer", e))?;
        drop(self.output);
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(|e| MediaError::Io(format!("fsync {}: {e}", self.path.display())))
    }
}

/// How far an H.264 frame's decode time is put before its presentation time: more than any
/// encoder's B-frame delay (90 kHz ticks: one second), so a B-frame, shown before the frames
/// decoded ahead of it, still gets a decode time after theirs and no later than its own.
const H264_DTS_LAG_TICKS: i64 = 90_000;

fn rescale(value: i64, from: ffmpeg::Rational, to: ffmpeg::Rational) -> i64 {
    // SAFETY: pure arithmetic on plain values.
    unsafe { ffi::av_rescale_q(value, from.into(), to.into()) }
}

/// The `OpusHead` identification header (RFC 7845 §5.1) WebM keeps as CodecPrivate. Pre-skip is 0:
/// WebRTC Opus streams have no encoder delay to trim that the RTP stream would tell us about.
pub fn opus_head(channels: u8) -> [u8; 19] {
    let mut head = [0u8; 19];
    head[..8].copy_from_slice(b"OpusHead");
    head[8] = 1;
    head[9] = channels;
    head[12..16].copy_from_slice(&48_000u32.to_le_bytes());
    head
}

/// Samples (at 48 kHz) in one Opus packet, from its TOC byte (RFC 6716 §3.1).
pub fn opus_packet_samples(packet: &[u8]) -> Option<i64> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let count = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => i64::from(*packet.get(1)? & 0x3f),
    };
    Some(frame * count)
}

/// SPS and PPS NAL units of an Annex B access unit, kept in Annex B form: FFmpeg's Matroska muxer
/// turns them into the avcC record.
pub fn h264_parameter_sets(access_unit: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for nal in annex_b_nals(access_unit) {
        if matches!(nal.first().map(|h| h & 0x1f), Some(7) | Some(8)) {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
    }
    out
}

fn annex_b_nals(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map(|next| next - 3).unwrap_or(data.len());
        while end > start && data[end - 1] == 0 {
            end -= 1;
        }
        nals.push(&data[start..end]);
    }
    nals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_durations_come_from_the_toc() {
        assert_eq!(opus_packet_samples(&[0xfc]), Some(960), "CELT FB 20 ms, one frame");
        assert_eq!(opus_packet_samples(&[0x78]), Some(960), "SILK WB 20 ms");
        assert_eq!(opus_packet_samples(&[0xfd, 0]), Some(1920), "two frames");
        assert_eq!(opus_packet_samples(&[0xfb, 0x03]), Some(3 * 960));
        assert_eq!(opus_packet_samples(&[]), None);
    }

    #[test]
    fn parameter_sets_are_picked_from_an_access_unit() {
        let au = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9, 9];
        assert_eq!(
            h264_parameter_sets(&au),
            vec![0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3]
        );
        assert!(h264_parameter_sets(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn the_opus_head_is_well_formed() {
        let head = opus_head(2);
        assert_eq!(&head[..8], b"OpusHead");
        assert_eq!(head[9], 2);
        assert_eq!(u32::from_le_bytes([head[12], head[13], head[14], head[15]]), 48_000);
    }
}
