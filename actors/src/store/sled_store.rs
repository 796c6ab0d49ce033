//! sled implementation of the state store. Trees:
//!
//! | tree          | key                                        | value            |
//! |---------------|--------------------------------------------|------------------|
//! | `meta`        | setting name                               | bytes            |
//! | `instances`   | instanceId                                 | `InstanceRecord` |
//! | `conv_index`  | org \0 conversation \0 created(be) \0 id   | instanceId       |
//! | `transcripts` | instanceId \0 entry number (be u64)        | `ChatEntry`      |
//! | `transcript_counts` | instanceId                           | entries (be u64) |
//! | `cobrowse`    | instanceId \0 sessionId \0 sequence (be)   | `CobrowseEvent`  |
//! | `jobs`        | object key                                 | `UploadJob`      |
//! | `compositions`| org \0 conversation \0 application          | `CompositionRecord` |
//! | `compositions_pending` | the same keys                     | empty            |
//! | `outbox`      | org \0 application \0 sequence (be u128)   | `OutboxEvent`    |
//!
//! Ids never contain NUL (the API refuses them), so NUL separates key parts and prefix scans
//! are exact.
//!
//! Why one file (~1,000 lines of code): the only module that imports sled; the trees above, their
//! transactions and the indexes moved with them must change together (one command, one commit), so
//! they are kept in one place.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;

use super::{
    CompositionId, CompositionRecord, CompositionState, OutboxEvent, StateStore, StoreError, StoreResult, StoreTx,
    UploadJob,
};
use crate::domain::{ChatEntry, CobrowseEvent, InstanceRecord, InstanceState, RECORD_SCHEMA_VERSION};

const STORE_FORMAT_KEY: &str = "store_format";
/// Layout version of the trees above; a store written by a newer layout is refused at open.
/// 1: compositions keyed by org \0 conversation; 2: by org \0 conversation \0 application
/// (migrated at open).
const STORE_FORMAT: u32 = 2;

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    committer: Arc<Committer>,
    meta: sled::Tree,
    instances: sled::Tree,
    conv_index: sled::Tree,
    transcripts: sled::Tree,
    transcript_counts: sled::Tree,
    cobrowse: sled::Tree,
    jobs: sled::Tree,
    compositions: sled::Tree,
    /// Keys of compositions that may still need to run, written in the same transaction as the
    /// record; rebuilt from `compositions` at open all the same, and readers skip a key whose
    /// record is not pending.
    compositions_pending: sled::Tree,
    /// Events for the applications' webhooks, in order per application.
    outbox: sled::Tree,
    /// Sequences of outbox events: `Db::generate_id` once at open (it only grows, across
    /// restarts too) in the high 64 bits, a counter in the low ones — `generate_id` itself must
    /// not run inside a transaction (it may write, and wait on the transaction).
    sequences: Arc<Sequences>,
    /// Instances per state (in `InstanceState::ALL` order): counted once at open, then moved
    /// by every insert and update that changes a state. This process holds the store's lock,
    /// so no write goes around them.
    state_counts: Arc<[AtomicU64; InstanceState::ALL.len()]>,
    /// Keys of the queued jobs per storage profile (organization, application): built at open
    /// from `jobs`, moved by every enqueue and finish (after a transaction's commit).
    job_index: Arc<Mutex<JobIndex>>,
}

struct Sequences {
    base: u64,
    next: AtomicU64,
}

impl Sequences {
    fn next(&self) -> u128 {
        (u128::from(self.base) << 64) | u128::from(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

type JobIndex = std::collections::HashMap<(String, String), std::collections::BTreeSet<String>>;

/// One change to the job index, applied once its write is committed.
enum JobIndexMove {
    Queued { profile: (String, String), key: String },
    Finished { profile: (String, String), key: String },
}

fn profile_of(job: &UploadJob) -> (String, String) {
    (job.organization_id.clone(), job.application_id.clone())
}

fn state_slot(state: InstanceState) -> usize {
    InstanceState::ALL
        .iter()
        .position(|s| *s == state)
        .expect("ALL lists every state")
}

impl SledStore {
    pub fn open(path: &Path) -> StoreResult<Self> {
        let db = open_db(path)?;
        let store = Self {
            db: db.clone(),
            committer: Committer::start(db.clone())?,
            meta: db.open_tree("meta").map_err(io)?,
            instances: db.open_tree("instances").map_err(io)?,
            conv_index: db.open_tree("conv_index").map_err(io)?,
            transcripts: db.open_tree("transcripts").map_err(io)?,
            transcript_counts: db.open_tree("transcript_counts").map_err(io)?,
            cobrowse: db.open_tree("cobrowse").map_err(io)?,
            jobs: db.open_tree("jobs").map_err(io)?,
            compositions: db.open_tree("compositions").map_err(io)?,
            compositions_pending: db.open_tree("compositions_pending").map_err(io)?,
            outbox: db.open_tree("outbox").map_err(io)?,
            sequences: Arc::new(Sequences {
                base: db.generate_id().map_err(io)?,
                next: AtomicU64::new(0),
            }),
            state_counts: Arc::new(Default::default()),
            job_index: Default::default(),
        };
        let format = store.meta_get_or_insert(STORE_FORMAT_KEY, &STORE_FORMAT.to_be_bytes())?;
        let found = u32::from_be_bytes(format.as_slice().try_into().map_err(|_| StoreError::Corrupt {
            tree: "meta",
            key: STORE_FORMAT_KEY.into(),
            message: "not a u32".into(),
        })?);
        if found > STORE_FORMAT {
            return Err(StoreError::FutureSchema {
                found,
                supported: STORE_FORMAT,
            });
        }
        if found < 2 {
            store.migrate_compositions_to_applications()?;
            store
                .meta
                .insert(STORE_FORMAT_KEY, &STORE_FORMAT.to_be_bytes())
                .map_err(io)?;
            store.meta.flush().map_err(io)?;
        }
        store.rebuild_pending_compositions()?;
        store.build_job_index()?;
        store.count_states()?;
        Ok(store)
    }

    /// Indexes the queued jobs per profile (see `job_index`).
    fn build_job_index(&self) -> StoreResult<()> {
        let mut index = JobIndex::new();
        for item in self.jobs.iter() {
            let (key, value) = item.map_err(io)?;
            let job: UploadJob = decode("jobs", &key, &value)?;
            index.entry(profile_of(&job)).or_default().insert(job.key);
        }
        *self.job_index.lock().unwrap_or_else(|p| p.into_inner()) = index;
        Ok(())
    }

    fn move_jobs(&self, moves: Vec<JobIndexMove>) {
        let mut index = self.job_index.lock().unwrap_or_else(|p| p.into_inner());
        for m in moves {
            match m {
                JobIndexMove::Queued { profile, key } => {
                    index.entry(profile).or_default().insert(key);
                }
                JobIndexMove::Finished { profile, key } => {
                    if let Some(keys) = index.get_mut(&profile) {
                        keys.remove(&key);
                        if keys.is_empty() {
                            index.remove(&profile);
                        }
                    }
                }
            }
        }
    }

    /// Counts the instances per state (see `state_counts`).
    fn count_states(&self) -> StoreResult<()> {
        for item in self.instances.iter() {
            let (key, value) = item.map_err(io)?;
            let record: InstanceRecord = decode("instances", &key, &value)?;
            self.state_counts[state_slot(record.state)].fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn count_move(&self, from: Option<InstanceState>, to: InstanceState) {
        if from == Some(to) {
            return;
        }
        if let Some(from) = from {
            self.state_counts[state_slot(from)].fetch_sub(1, Ordering::Relaxed);
        }
        self.state_counts[state_slot(to)].fetch_add(1, Ordering::Relaxed);
    }

    /// Format 1 kept one composition per (organization, conversation): each is moved to the key
    /// of the application it names. Idempotent: a crash in the middle leaves old keys that the
    /// next open moves again (the format is bumped only after).
    fn migrate_compositions_to_applications(&self) -> StoreResult<()> {
        for item in self.compositions.iter() {
            let (key, value) = item.map_err(io)?;
            if key.iter().filter(|b| **b == 0).count() != 1 {
                continue;
            }
            let record: CompositionRecord = decode("compositions", &key, &value)?;
            self.compositions
                .insert(composition_key(&CompositionId::of(&record)), value)
                .map_err(io)?;
            self.compositions.remove(&key).map_err(io)?;
            self.compositions_pending.remove(&key).map_err(io)?;
        }
        Ok(())
    }

    /// Rebuilds the index of pending compositions from the records (see `compositions_pending`).
    fn rebuild_pending_compositions(&self) -> StoreResult<()> {
        self.compositions_pending.clear().map_err(io)?;
        for item in self.compositions.iter() {
            let (key, value) = item.map_err(io)?;
            let record: CompositionRecord = decode("compositions", &key, &value)?;
            if is_pending(&record) {
                self.compositions_pending.insert(key, &[]).map_err(io)?;
            }
        }
        Ok(())
    }
}

/// Group commit. Every `flush` takes a ticket after its writes; one thread fsyncs the database
/// for all tickets taken so far, so N concurrent commands cost one fsync, not N, and no caller's
/// executor thread ever blocks on the disk. (sled's own `flush_async` can lock up when called
/// concurrently — sled issues 1241 and 1308 — which is why it is not used.)
struct Committer {
    requested: Arc<AtomicU64>,
    kick: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Highest ticket covered by a finished flush, and that flush's error if it failed.
    flushed: tokio::sync::watch::Receiver<(u64, Option<String>)>,
}

impl Committer {
    fn start(db: sled::Db) -> StoreResult<Arc<Self>> {
        let (kick, kicks) = mpsc::channel::<()>();
        let (done, flushed) = tokio::sync::watch::channel((0u64, None));
        let requested = Arc::new(AtomicU64::new(0));
        let seen = requested.clone();
        let thread = std::thread::Builder::new()
            .name("state-store-commit".into())
            .spawn(move || {
                // Ends when the store is dropped (the kick sender with it); a last flush then
                // leaves nothing behind.
                while kicks.recv().is_ok() {
                    while kicks.try_recv().is_ok() {}
                    let target = seen.load(Ordering::SeqCst);
                    let result = db.flush();
                    done.send_replace((target, result.err().map(|e| e.to_string())));
                }
                let _ = db.flush();
            })
            .map_err(|e| StoreError::Io(format!("cannot start the commit thread: {e}")))?;
        Ok(Arc::new(Committer {
            requested,
            kick: Mutex::new(Some(kick)),
            thread: Mutex::new(Some(thread)),
            flushed,
        }))
    }

    fn flush(&self) -> BoxFuture<'static, StoreResult<()>> {
        // The ticket is taken now, after the caller's writes, not when the future is polled.
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let sent = self
            .kick
            .lock()
            .map(|k| k.as_ref().is_some_and(|k| k.send(()).is_ok()))
            .unwrap_or(false);
        let mut flushed = self.flushed.clone();
        async move {
            if !sent {
                return Err(StoreError::Io("the commit thread has stopped".into()));
            }
            loop {
                {
                    let (covered, error) = &*flushed.borrow_and_update();
                    if *covered >= ticket {
                        // A later successful flush also covers this ticket's writes, so the
                        // newest result is the one that matters.
                        return match error {
                            Some(e) => Err(StoreError::Io(e.clone())),
                            None => Ok(()),
                        };
                    }
                }
                flushed
                    .changed()
                    .await
                    .map_err(|_| StoreError::Io("the commit thread has stopped".into()))?;
            }
        }
        .boxed()
    }
}

impl Drop for Committer {
    /// Waits for the commit thread so the database is closed (and its lock released) when the
    /// last handle of the store goes.
    fn drop(&mut self) {
        if let Ok(mut kick) = self.kick.lock() {
            kick.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

/// How long opening waits for the database's file lock: a store handle just dropped in this
/// process (a restarted engine, a test reopening its store) releases it only when sled's
/// background threads have let go of it, a few milliseconds later; a lock still held after this
/// long belongs to another live process.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn open_db(path: &Path) -> StoreResult<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::Io(format!(
                        "the state store at {} is in use by another process (its lock was not released within {} s): {e}",
                        path.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => return Err(io(e)),
        }
    }
}

fn is_pending(record: &CompositionRecord) -> bool {
    matches!(record.state, CompositionState::Queued | CompositionState::Composing)
}

fn io(err: sled::Error) -> StoreError {
    StoreError::Io(err.to_string())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records are plain data and always serialize")
}

fn decode<T: DeserializeOwned>(tree: &'static str, key: &[u8], bytes: &[u8]) -> StoreResult<T> {
    // Read the version first so a newer record is reported as such, not as a parse error.
    #[derive(serde::Deserialize)]
    struct Versioned {
        schema_version: Option<u32>,
    }
    if let Ok(Versioned {
        schema_version: Some(found),
    }) = serde_json::from_slice::<Versioned>(bytes)
    {
        if found > RECORD_SCHEMA_VERSION {
            return Err(StoreError::FutureSchema {
                found,
                supported: RECORD_SCHEMA_VERSION,
            });
        }
    }
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        message: err.to_string(),
    })
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len() + 1);
    key.extend_from_slice(a.as_bytes());
    key.push(0);
    key.extend_from_slice(b.as_bytes());
    key
}

fn composition_key(id: &CompositionId) -> Vec<u8> {
    let mut key = key2(&id.organization_id, &id.conversation_id);
    key.push(0);
    key.extend_from_slice(id.application_id.as_bytes());
    key
}

fn prefix(a: &str) -> Vec<u8> {
    let mut key = a.as_bytes().to_vec();
    key.push(0);
    key
}

fn conv_index_key(record: &InstanceRecord) -> Vec<u8> {
    let mut key = key2(&record.organization_id, &record.conversation_id);
    key.push(0);
    let micros = record.created.timestamp_micros().max(0) as u64;
    key.extend_from_slice(&micros.to_be_bytes());
    key.push(0);
    key.extend_from_slice(record.instance_id.as_bytes());
    key
}

/// Maps an i32 to a u32 whose big-endian bytes sort like the signed numbers.
/// `org \0 application \0 sequence (be u128)`: an application's events in order.
fn outbox_key(organization_id: &str, application_id: &str, sequence: u128) -> Vec<u8> {
    let mut key = key2(organization_id, application_id);
    key.push(0);
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

fn sortable_sequence(sequence_id: i32) -> [u8; 4] {
    ((sequence_id as u32) ^ 0x8000_0000).to_be_bytes()
}

/// The view of one transaction (see [`StoreTx`]). State-count moves are collected and applied
/// only once the transaction committed.
struct SledTx<'a> {
    db: &'a sled::Db,
    instances: &'a TransactionalTree,
    jobs: &'a TransactionalTree,
    compositions: &'a TransactionalTree,
    compositions_pending: &'a TransactionalTree,
    transcripts: &'a TransactionalTree,
    transcript_counts: &'a TransactionalTree,
    cobrowse: &'a TransactionalTree,
    outbox: &'a TransactionalTree,
    sequences: &'a Sequences,
    moves: std::cell::RefCell<Vec<(Option<InstanceState>, InstanceState)>>,
    job_moves: std::cell::RefCell<Vec<JobIndexMove>>,
}

fn txe(err: UnabortableTransactionError) -> StoreError {
    match err {
        UnabortableTransactionError::Conflict => StoreError::TxConflict,
        UnabortableTransactionError::Storage(e) => io(e),
    }
}

impl SledTx<'_> {
    fn composition(&self, key: &[u8]) -> StoreResult<Option<CompositionRecord>> {
        match self.compositions.get(key).map_err(txe)? {
            Some(bytes) => Ok(Some(decode("compositions", key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn put_composition(&self, key: &[u8], record: &CompositionRecord) -> StoreResult<()> {
        self.compositions.insert(key, encode(record)).map_err(txe)?;
        if is_pending(record) {
            self.compositions_pending.insert(key, &[]).map_err(txe)?;
        } else {
            self.compositions_pending.remove(key).map_err(txe)?;
        }
        Ok(())
    }
}

impl StoreTx for SledTx<'_> {
    fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceRecord>> {
        match self.instances.get(instance_id.as_bytes()).map_err(txe)? {
            Some(bytes) => Ok(Some(decode("instances", instance_id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    fn update_instance(
        &self,
        instance_id: &str,
        change: &mut dyn FnMut(&mut InstanceRecord) -> StoreResult<()>,
    ) -> StoreResult<InstanceRecord> {
        let mut record = self
            .get_instance(instance_id)?
            .ok_or_else(|| StoreError::NotFound(instance_id.to_string()))?;
        let before = record.state;
        change(&mut record)?;
        self.instances
            .insert(instance_id.as_bytes(), encode(&record))
            .map_err(txe)?;
        if let Some(event) = OutboxEvent::state_changed(Some(before), &record) {
            self.put_event(&event)?;
        }
        self.moves.borrow_mut().push((Some(before), record.state));
        Ok(record)
    }

    fn put_event(&self, event: &OutboxEvent) -> StoreResult<()> {
        let sequence = self.sequences.next();
        self.outbox
            .insert(
                outbox_key(&event.organization_id, &event.application_id, sequence),
                encode(event),
            )
            .map_err(txe)?;
        Ok(())
    }

    fn enqueue_job(&self, job: &UploadJob) -> StoreResult<UploadJob> {
        let next = match self.jobs.get(job.key.as_bytes()).map_err(txe)? {
            Some(bytes) => {
                let mut existing: UploadJob = decode("jobs", job.key.as_bytes(), &bytes)?;
                existing.generation += 1;
                existing
            }
            None => job.clone(),
        };
        self.jobs.insert(job.key.as_bytes(), encode(&next)).map_err(txe)?;
        self.job_moves.borrow_mut().push(JobIndexMove::Queued {
            profile: profile_of(&next),
            key: next.key.clone(),
        });
        Ok(next)
    }

    fn finish_job(&self, key: &str, generation: u64) -> StoreResult<bool> {
        let Some(bytes) = self.jobs.get(key.as_bytes()).map_err(txe)? else {
            return Ok(false);
        };
        let job: UploadJob = decode("jobs", key.as_bytes(), &bytes)?;
        if job.generation != generation {
            return Ok(false);
        }
        self.jobs.remove(key.as_bytes()).map_err(txe)?;
        self.job_moves.borrow_mut().push(JobIndexMove::Finished {
            profile: profile_of(&job),
            key: job.key,
        });
        Ok(true)
    }

    fn queue_composition(
        &self,
        id: &CompositionId,
        instance_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<CompositionRecord> {
        let key = composition_key(id);
        let next = match self.composition(&key)? {
            Some(mut record) => {
                record.generation += 1;
                record.state = CompositionState::Queued;
                record.instance_id = instance_id.to_string();
                record.queued = now;
                record
            }
            None => new_composition(id, instance_id, now),
        };
        self.put_composition(&key, &next)?;
        Ok(next)
    }

    fn update_composition(
        &self,
        id: &CompositionId,
        change: &mut dyn FnMut(&mut CompositionRecord) -> StoreResult<()>,
    ) -> StoreResult<CompositionRecord> {
        let key = composition_key(id);
        let mut record = self
            .composition(&key)?
            .ok_or_else(|| StoreError::NotFound(format!("composition of {}", id.conversation_id)))?;
        change(&mut record)?;
        self.put_composition(&key, &record)?;
        Ok(record)
    }

    fn append_transcript(&self, instance_id: &str, entries: &[ChatEntry]) -> StoreResult<u64> {
        let first = self
            .transcript_counts
            .get(instance_id.as_bytes())
            .map_err(txe)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        for (i, entry) in entries.iter().enumerate() {
            let mut key = prefix(instance_id);
            key.extend_from_slice(&(first + i as u64).to_be_bytes());
            self.transcripts.insert(key, encode(entry)).map_err(txe)?;
        }
        let total = first + entries.len() as u64;
        self.transcript_counts
            .insert(instance_id.as_bytes(), &total.to_be_bytes())
            .map_err(txe)?;
        Ok(total)
    }

    fn put_cobrowse_event(&self, instance_id: &str, event: &CobrowseEvent) -> StoreResult<bool> {
        let key = cobrowse_key(instance_id, event);
        if self.cobrowse.get(key.as_slice()).map_err(txe)?.is_some() {
            return Ok(false);
        }
        self.cobrowse.insert(key, encode(event)).map_err(txe)?;
        Ok(true)
    }

    fn step(&self, command: &str, step: &str, instance_id: &str) {
        let scope = format!("{command} {step} {instance_id}");
        if crate::fault::point_in(crate::fault::COMMAND_STEP, &scope).is_err() {
            tracing::error!(
                command,
                step,
                instance_id,
                "injected crash between two writes of a command"
            );
            // Whatever was written before this point outside the transaction becomes durable (as
            // it would a moment later by itself): that is what a crash here leaves behind. A
            // flush that waits on this very transaction is given up after a second. Then the
            // process ends at once, like a kill: no unwinding, no destructors, no core dump.
            let (done, flushed) = mpsc::channel();
            let db = self.db.clone();
            std::thread::spawn(move || {
                let _ = db.flush();
                let _ = done.send(());
            });
            let _ = flushed.recv_timeout(std::time::Duration::from_secs(1));
            // SAFETY: `_exit` only ends the process.
            unsafe { libc::_exit(134) };
        }
    }
}

fn cobrowse_key(instance_id: &str, event: &CobrowseEvent) -> Vec<u8> {
    let mut key = key2(instance_id, &event.session_id);
    key.push(0);
    key.extend_from_slice(&sortable_sequence(event.sequence_id));
    key
}

fn new_composition(id: &CompositionId, instance_id: &str, now: chrono::DateTime<chrono::Utc>) -> CompositionRecord {
    CompositionRecord {
        schema_version: RECORD_SCHEMA_VERSION,
        organization_id: id.organization_id.clone(),
        conversation_id: id.conversation_id.clone(),
        application_id: id.application_id.clone(),
        instance_id: instance_id.to_string(),
        state: CompositionState::Queued,
        generation: 1,
        queued: now,
        started: None,
        stopped: None,
        error: None,
        problems: Vec::new(),
        has_video: false,
        local_path: None,
        key: None,
        location: None,
        size: None,
        uploaded: None,
        backup: false,
        stereo: None,
    }
}

impl StateStore for SledStore {
    fn watch_instances(&self) -> Option<Box<dyn Iterator<Item = String> + Send>> {
        let subscriber = self.instances.watch_prefix(Vec::new());
        Some(Box::new(subscriber.filter_map(|event| {
            let key = match event {
                sled::Event::Insert { key, .. } | sled::Event::Remove { key } => key,
            };
            String::from_utf8(key.to_vec()).ok()
        })))
    }

    fn transaction(&self, command: &mut dyn FnMut(&dyn StoreTx) -> StoreResult<()>) -> StoreResult<()> {
        crate::fault::point(crate::fault::STATE_COMMIT).map_err(|e| StoreError::Io(e.to_string()))?;
        let command = std::cell::RefCell::new(command);
        let moves = std::cell::RefCell::new((Vec::new(), Vec::new()));
        let result = (
            &self.instances,
            &self.jobs,
            &self.compositions,
            &self.compositions_pending,
            &self.transcripts,
            &self.transcript_counts,
            &self.cobrowse,
            &self.outbox,
        )
            .transaction(
                |(
                    instances,
                    jobs,
                    compositions,
                    compositions_pending,
                    transcripts,
                    transcript_counts,
                    cobrowse,
                    outbox,
                )| {
                    let tx = SledTx {
                        db: &self.db,
                        instances,
                        jobs,
                        compositions,
                        compositions_pending,
                        transcripts,
                        transcript_counts,
                        cobrowse,
                        outbox,
                        sequences: &self.sequences,
                        moves: Default::default(),
                        job_moves: Default::default(),
                    };
                    let outcome = (command.borrow_mut())(&tx);
                    match outcome {
                        Ok(()) => {
                            *moves.borrow_mut() = (tx.moves.into_inner(), tx.job_moves.into_inner());
                            Ok(())
                        }
                        Err(StoreError::TxConflict) => Err(ConflictableTransactionError::Conflict),
                        Err(err) => Err(ConflictableTransactionError::Abort(err)),
                    }
                },
            );
        match result {
            Ok(()) => {
                let (state_moves, job_moves) = moves.into_inner();
                for (from, to) in state_moves {
                    self.count_move(from, to);
                }
                self.move_jobs(job_moves);
                Ok(())
            }
            Err(TransactionError::Abort(err)) => Err(err),
            Err(TransactionError::Storage(err)) => Err(io(err)),
        }
    }
    fn meta_get_or_insert(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        match self
            .meta
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))
            .map_err(io)?
        {
            Ok(()) => Ok(value.to_vec()),
            Err(cas) => Ok(cas.current.map(|v| v.to_vec()).unwrap_or_default()),
        }
    }

    fn get_instance(&self, instance_id: &str) -> StoreResult<Option<InstanceRecord>> {
        match self.instances.get(instance_id).map_err(io)? {
            Some(bytes) => Ok(Some(decode("instances", instance_id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    fn insert_instance(&self, record: &InstanceRecord) -> StoreResult<()> {
        crate::fault::point(crate::fault::STATE_COMMIT).map_err(|e| StoreError::Io(e.to_string()))?;
        let value = encode(record);
        let index_key = conv_index_key(record);
        let created = OutboxEvent::state_changed(None, record).map(|event| encode(&event));
        let sequence = self.sequences.next();
        let event_key = outbox_key(&record.organization_id, &record.application_id, sequence);
        let replaced = (&self.instances, &self.conv_index, &self.outbox)
            .transaction(|(instances, conv_index, outbox)| {
                let replaced = instances.insert(record.instance_id.as_bytes(), value.as_slice())?;
                conv_index.insert(index_key.as_slice(), record.instance_id.as_bytes())?;
                if let Some(event) = &created {
                    outbox.insert(event_key.as_slice(), event.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(replaced)
            })
            .map_err(|err: TransactionError<()>| StoreError::Io(format!("{err:?}")))?;
        let previous = replaced
            .and_then(|bytes| decode::<InstanceRecord>("instances", record.instance_id.as_bytes(), &bytes).ok())
            .map(|r| r.state);
        self.count_move(previous, record.state);
        Ok(())
    }

    fn update_instance(
        &self,
        instance_id: &str,
        change: &mut dyn FnMut(&mut InstanceRecord) -> StoreResult<()>,
    ) -> StoreResult<InstanceRecord> {
        crate::fault::point_in(crate::fault::STATE_COMMIT, instance_id).map_err(|e| StoreError::Io(e.to_string()))?;
        loop {
            let current = self
                .instances
                .get(instance_id)
                .map_err(io)?
                .ok_or_else(|| StoreError::NotFound(instance_id.to_string()))?;
            let mut record: InstanceRecord = decode("instances", instance_id.as_bytes(), &current)?;
            let before = record.state;
            change(&mut record)?;
            let next = encode(&record);
            let swapped = match OutboxEvent::state_changed(Some(before), &record) {
                // Most updates change no state: one compare-and-swap.
                None => self
                    .instances
                    .compare_and_swap(instance_id, Some(&current), Some(next))
                    .map_err(io)?
                    .is_ok(),
                // A state change and its event commit together.
                Some(event) => {
                    let event = encode(&event);
                    let event_key = outbox_key(&record.organization_id, &record.application_id, self.sequences.next());
                    (&self.instances, &self.outbox)
                        .transaction(|(instances, outbox)| {
                            if instances.get(instance_id)?.as_deref() != Some(&current[..]) {
                                return Ok(false);
                            }
                            instances.insert(instance_id, next.as_slice())?;
                            outbox.insert(event_key.as_slice(), event.as_slice())?;
                            Ok::<_, ConflictableTransactionError<()>>(true)
                        })
                        .map_err(|err: TransactionError<()>| StoreError::Io(format!("{err:?}")))?
                }
            };
            if swapped {
                self.count_move(Some(before), record.state);
                return Ok(record);
            }
            // Another writer won the race: re-read and re-apply.
        }
    }

    fn conversation_instances(&self, organization_id: &str, conversation_id: &str) -> StoreResult<Vec<InstanceRecord>> {
        let mut scan = key2(organization_id, conversation_id);
        scan.push(0);
        let mut out = Vec::new();
        for item in self.conv_index.scan_prefix(scan) {
            let (_, instance_id) = item.map_err(io)?;
            let id = String::from_utf8_lossy(&instance_id).into_owned();
            if let Some(record) = self.get_instance(&id)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn all_instances(&self) -> StoreResult<Vec<InstanceRecord>> {
        self.instances
            .iter()
            .map(|item| {
                let (key, value) = item.map_err(io)?;
                decode("instances", &key, &value)
            })
            .collect()
    }

    fn for_each_instance(&self, visit: &mut dyn FnMut(InstanceRecord) -> StoreResult<()>) -> StoreResult<()> {
        for item in self.instances.iter() {
            let (key, value) = item.map_err(io)?;
            visit(decode("instances", &key, &value)?)?;
        }
        Ok(())
    }

    fn live_instances(&self) -> StoreResult<Vec<InstanceRecord>> {
        let mut out = Vec::new();
        for item in self.instances.iter() {
            let (key, value) = item.map_err(io)?;
            let record: InstanceRecord = decode("instances", &key, &value)?;
            if record.state.is_live() {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn instance_counts(&self) -> Vec<(InstanceState, u64)> {
        InstanceState::ALL
            .iter()
            .map(|s| (*s, self.state_counts[state_slot(*s)].load(Ordering::Relaxed)))
            .collect()
    }

    fn append_transcript(&self, instance_id: &str, entries: &[ChatEntry]) -> StoreResult<u64> {
        // One transaction reads the instance's entry count, writes the entries under the next
        // numbers and stores the new count: order is arrival order, and a crash keeps all of a
        // request's lines or none.
        let mut total = 0;
        self.transaction(&mut |tx| {
            total = tx.append_transcript(instance_id, entries)?;
            Ok(())
        })?;
        Ok(total)
    }

    fn transcript(&self, instance_id: &str) -> StoreResult<Vec<ChatEntry>> {
        let mut entries = Vec::new();
        self.for_each_transcript_entry(instance_id, &mut |entry| {
            entries.push(entry);
            Ok(())
        })?;
        Ok(entries)
    }

    fn for_each_transcript_entry(
        &self,
        instance_id: &str,
        visit: &mut dyn FnMut(ChatEntry) -> StoreResult<()>,
    ) -> StoreResult<()> {
        for item in self.transcripts.scan_prefix(prefix(instance_id)) {
            let (key, value) = item.map_err(io)?;
            visit(decode("transcripts", &key, &value)?)?;
        }
        Ok(())
    }

    fn for_each_cobrowse_event(
        &self,
        instance_id: &str,
        session_id: &str,
        visit: &mut dyn FnMut(CobrowseEvent) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let mut scan = key2(instance_id, session_id);
        scan.push(0);
        for item in self.cobrowse.scan_prefix(scan) {
            let (key, value) = item.map_err(io)?;
            visit(decode("cobrowse", &key, &value)?)?;
        }
        Ok(())
    }

    fn put_cobrowse_event(&self, instance_id: &str, event: &CobrowseEvent) -> StoreResult<bool> {
        let mut inserted = false;
        self.transaction(&mut |tx| {
            inserted = tx.put_cobrowse_event(instance_id, event)?;
            Ok(())
        })?;
        Ok(inserted)
    }

    fn cobrowse_events(&self, instance_id: &str, session_id: &str) -> StoreResult<Vec<CobrowseEvent>> {
        let mut events = Vec::new();
        self.for_each_cobrowse_event(instance_id, session_id, &mut |event| {
            events.push(event);
            Ok(())
        })?;
        Ok(events)
    }

    fn enqueue_job(&self, job: &UploadJob) -> StoreResult<UploadJob> {
        let mut queued = None;
        self.transaction(&mut |tx| {
            queued = Some(tx.enqueue_job(job)?);
            Ok(())
        })?;
        Ok(queued.expect("a committed transaction set it"))
    }

    fn profile_jobs(&self, organization_id: &str, application_id: &str) -> StoreResult<Vec<UploadJob>> {
        let keys: Vec<String> = {
            let index = self.job_index.lock().unwrap_or_else(|p| p.into_inner());
            index
                .get(&(organization_id.to_string(), application_id.to_string()))
                .map(|keys| keys.iter().cloned().collect())
                .unwrap_or_default()
        };
        let mut jobs = Vec::with_capacity(keys.len());
        for key in keys {
            // A key finished between the index read and this one is simply gone.
            if let Some(job) = self.job(&key)? {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    fn update_job(&self, job: &UploadJob) -> StoreResult<()> {
        // Only progress fields change here; a concurrent re-queue keeps its newer generation.
        loop {
            let Some(current) = self.jobs.get(&job.key).map_err(io)? else {
                return Ok(());
            };
            let mut stored: UploadJob = decode("jobs", job.key.as_bytes(), &current)?;
            stored.num_attempts = job.num_attempts;
            stored.last_error = job.last_error.clone();
            stored.first_failure = stored.first_failure.or(job.first_failure);
            // Progress only moves forward: a caller holding an older copy of the job (the
            // uploader recording an attempt) leaves the recorded parts alone.
            if job.multipart_opt.is_some() {
                stored.multipart_opt = job.multipart_opt.clone();
            }
            if self
                .jobs
                .compare_and_swap(&job.key, Some(current), Some(encode(&stored)))
                .map_err(io)?
                .is_ok()
            {
                return Ok(());
            }
        }
    }

    fn job(&self, key: &str) -> StoreResult<Option<UploadJob>> {
        self.jobs
            .get(key)
            .map_err(io)?
            .map(|bytes| decode("jobs", key.as_bytes(), &bytes))
            .transpose()
    }

    fn jobs(&self) -> StoreResult<Vec<UploadJob>> {
        self.jobs
            .iter()
            .map(|item| {
                let (key, value) = item.map_err(io)?;
                decode("jobs", &key, &value)
            })
            .collect()
    }

    fn finish_job(&self, key: &str, generation: u64) -> StoreResult<bool> {
        let mut finished = false;
        self.transaction(&mut |tx| {
            finished = tx.finish_job(key, generation)?;
            Ok(())
        })?;
        Ok(finished)
    }

    fn queue_composition(
        &self,
        id: &CompositionId,
        instance_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<CompositionRecord> {
        let mut queued = None;
        self.transaction(&mut |tx| {
            queued = Some(tx.queue_composition(id, instance_id, now)?);
            Ok(())
        })?;
        Ok(queued.expect("a committed transaction set it"))
    }

    fn get_composition(&self, id: &CompositionId) -> StoreResult<Option<CompositionRecord>> {
        let key = composition_key(id);
        match self.compositions.get(&key).map_err(io)? {
            Some(bytes) => Ok(Some(decode("compositions", &key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn conversation_compositions(
        &self,
        organization_id: &str,
        conversation_id: &str,
    ) -> StoreResult<Vec<CompositionRecord>> {
        let mut scan = key2(organization_id, conversation_id);
        scan.push(0);
        self.compositions
            .scan_prefix(&scan)
            .map(|item| {
                let (key, value) = item.map_err(io)?;
                decode("compositions", &key, &value)
            })
            .collect()
    }

    fn update_composition(
        &self,
        id: &CompositionId,
        change: &mut dyn FnMut(&mut CompositionRecord) -> StoreResult<()>,
    ) -> StoreResult<CompositionRecord> {
        let mut updated = None;
        self.transaction(&mut |tx| {
            updated = Some(tx.update_composition(id, change)?);
            Ok(())
        })?;
        Ok(updated.expect("a committed transaction set it"))
    }

    fn pending_compositions(&self) -> StoreResult<Vec<CompositionRecord>> {
        let mut out = Vec::new();
        for item in self.compositions_pending.iter() {
            let (key, _) = item.map_err(io)?;
            if let Some(bytes) = self.compositions.get(&key).map_err(io)? {
                let record: CompositionRecord = decode("compositions", &key, &bytes)?;
                if is_pending(&record) {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    fn compositions(&self) -> StoreResult<Vec<CompositionRecord>> {
        self.compositions
            .iter()
            .map(|item| {
                let (key, value) = item.map_err(io)?;
                decode("compositions", &key, &value)
            })
            .collect()
    }

    fn delete_captures(&self, instance_id: &str) -> StoreResult<()> {
        for tree in [&self.transcripts, &self.cobrowse] {
            for item in tree.scan_prefix(prefix(instance_id)) {
                let (key, _) = item.map_err(io)?;
                tree.remove(key).map_err(io)?;
            }
        }
        self.transcript_counts.remove(instance_id).map_err(io)?;
        Ok(())
    }

    fn put_event(&self, event: &OutboxEvent) -> StoreResult<()> {
        let sequence = self.sequences.next();
        self.outbox
            .insert(
                outbox_key(&event.organization_id, &event.application_id, sequence),
                encode(event),
            )
            .map_err(io)?;
        Ok(())
    }

    fn outbox(
        &self,
        organization_id: &str,
        application_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<(u128, OutboxEvent)>> {
        let mut prefix = key2(organization_id, application_id);
        prefix.push(0);
        self.outbox
            .scan_prefix(&prefix)
            .take(limit)
            .map(|item| {
                let (key, value) = item.map_err(io)?;
                let sequence =
                    key[prefix.len()..]
                        .try_into()
                        .map(u128::from_be_bytes)
                        .map_err(|_| StoreError::Corrupt {
                            tree: "outbox",
                            key: String::from_utf8_lossy(&key).into_owned(),
                            message: "not a sequence".into(),
                        })?;
                Ok((sequence, decode("outbox", &key, &value)?))
            })
            .collect()
    }

    fn remove_event(&self, organization_id: &str, application_id: &str, sequence: u128) -> StoreResult<()> {
        self.outbox
            .remove(outbox_key(organization_id, application_id, sequence))
            .map_err(io)?;
        Ok(())
    }

    fn flush(&self) -> BoxFuture<'static, StoreResult<()>> {
        self.committer.flush()
    }

    fn check(&self) -> StoreResult<()> {
        self.meta.get(STORE_FORMAT_KEY).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;
    use crate::store::ArtefactKind;
    use chrono::Utc;
    use std::collections::BTreeMap;

    fn instance(id: &str, org: &str, conv: &str) -> InstanceRecord {
        InstanceRecord {
            schema_version: RECORD_SCHEMA_VERSION,
            instance_id: id.into(),
            recorder_id: "node".into(),
            organization_id: org.into(),
            application_id: "app".into(),
            conversation_id: conv.into(),
            conference_id: "conf".into(),
            audio: true,
            video: false,
            state: InstanceState::Initialised,
            created: Utc::now(),
            started: None,
            stopped: None,
            recovered: None,
            error: None,
            provider: Provider::Local,
            storage_url: "file:///x".into(),
            streams: vec![],
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

    fn event(session: &str, seq: i32, payload: &str) -> CobrowseEvent {
        CobrowseEvent {
            payload: payload.into(),
            sequence_id: seq,
            session_id: session.into(),
            timestamp: 1,
        }
    }

    #[test]
    fn instances_survive_reopen_and_are_indexed_per_organization() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.insert_instance(&instance("i1", "org-a", "conv")).unwrap();
            store.insert_instance(&instance("i2", "org-b", "conv")).unwrap();
            store.insert_instance(&instance("i3", "org-a", "conv")).unwrap();
            futures_executor::block_on(store.flush()).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let ids: Vec<_> = store
            .conversation_instances("org-a", "conv")
            .unwrap()
            .into_iter()
            .map(|r| r.instance_id)
            .collect();
        assert_eq!(ids, vec!["i1", "i3"]);
        let ids: Vec<_> = store
            .conversation_instances("org-b", "conv")
            .unwrap()
            .into_iter()
            .map(|r| r.instance_id)
            .collect();
        assert_eq!(ids, vec!["i2"]);
        assert!(
            store.conversation_instances("org-a", "con").unwrap().is_empty(),
            "prefix scans are exact"
        );
        assert_eq!(store.all_instances().unwrap().len(), 3);
    }

    #[test]
    fn update_applies_the_state_machine_and_keeps_refused_changes_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.insert_instance(&instance("i1", "o", "c")).unwrap();
        let updated = store
            .update_instance("i1", &mut |r| {
                r.transition(InstanceState::Stopped, Utc::now())
                    .map_err(|e| StoreError::Rejected {
                        code: "CONFLICT",
                        message: e.to_string(),
                    })
            })
            .unwrap();
        assert_eq!(updated.state, InstanceState::Stopped);
        let refused = store.update_instance("i1", &mut |r| {
            r.transition(InstanceState::Active, Utc::now())
                .map_err(|e| StoreError::Rejected {
                    code: "CONFLICT",
                    message: e.to_string(),
                })
        });
        assert!(matches!(refused, Err(StoreError::Rejected { .. })));
        assert_eq!(store.get_instance("i1").unwrap().unwrap().state, InstanceState::Stopped);
        assert!(matches!(
            store.update_instance("nope", &mut |_| Ok(())),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn instance_counts_follow_every_change_and_agree_with_a_scan_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let counts = |store: &SledStore| -> BTreeMap<&'static str, u64> {
            store
                .instance_counts()
                .into_iter()
                .map(|(s, n)| (s.as_str(), n))
                .collect()
        };
        let scanned = |store: &SledStore| -> BTreeMap<&'static str, u64> {
            let mut out: BTreeMap<&'static str, u64> = InstanceState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
            for r in store.all_instances().unwrap() {
                *out.get_mut(r.state.as_str()).unwrap() += 1;
            }
            out
        };
        let to = |state: InstanceState| {
            move |r: &mut InstanceRecord| {
                r.transition(state, Utc::now()).map_err(|e| StoreError::Rejected {
                    code: "CONFLICT",
                    message: e.to_string(),
                })
            }
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert!(counts(&store).values().all(|n| *n == 0), "{:?}", counts(&store));
            for i in 0..5 {
                store.insert_instance(&instance(&format!("i{i}"), "o", "c")).unwrap();
            }
            store.update_instance("i0", &mut to(InstanceState::Active)).unwrap();
            store.update_instance("i1", &mut to(InstanceState::Active)).unwrap();
            store.update_instance("i1", &mut to(InstanceState::Stopped)).unwrap();
            // A refused change and a change that keeps the state move nothing.
            assert!(store.update_instance("i1", &mut to(InstanceState::Active)).is_err());
            store
                .update_instance("i2", &mut |r| {
                    r.num_transcript_entries += 1;
                    Ok(())
                })
                .unwrap();
            let now = counts(&store);
            assert_eq!(now["INITIALISED"], 3, "{now:?}");
            assert_eq!(now["ACTIVE"], 1, "{now:?}");
            assert_eq!(now["STOPPED"], 1, "{now:?}");
            assert_eq!(now, scanned(&store));
        }
        let reopened = SledStore::open(dir.path()).unwrap();
        assert_eq!(counts(&reopened), scanned(&reopened));
        assert_eq!(counts(&reopened)["STOPPED"], 1);
        // What boot rebuilds: every instance but the stopped one.
        let mut live: Vec<String> = reopened
            .live_instances()
            .unwrap()
            .into_iter()
            .map(|r| r.instance_id)
            .collect();
        live.sort();
        assert_eq!(live, ["i0", "i2", "i3", "i4"]);
    }

    #[test]
    fn transcript_keeps_arrival_order_per_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let entry = |text: &str| ChatEntry {
            time_stamp: Utc::now(),
            transcript: text.into(),
            user_display_name: None,
            user_id: "u".into(),
        };
        store.append_transcript("i1", &[entry("a"), entry("b")]).unwrap();
        store.append_transcript("i2", &[entry("other")]).unwrap();
        assert_eq!(store.append_transcript("i1", &[entry("c")]).unwrap(), 3);
        let texts: Vec<_> = store
            .transcript("i1")
            .unwrap()
            .into_iter()
            .map(|e| e.transcript)
            .collect();
        assert_eq!(texts, vec!["a", "b", "c"]);
    }

    #[test]
    fn cobrowse_events_iterate_in_sequence_order_and_repeats_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for seq in [5, -3, 0, i32::MAX, i32::MIN, 2] {
            assert!(store
                .put_cobrowse_event("i", &event("s", seq, &format!("p{seq}")))
                .unwrap());
        }
        assert!(!store.put_cobrowse_event("i", &event("s", 5, "changed")).unwrap());
        store.put_cobrowse_event("i", &event("s2", 1, "x")).unwrap();
        let events = store.cobrowse_events("i", "s").unwrap();
        let seqs: Vec<_> = events.iter().map(|e| e.sequence_id).collect();
        assert_eq!(seqs, vec![i32::MIN, -3, 0, 2, 5, i32::MAX]);
        assert_eq!(events[4].payload, "p5", "the first copy of a repeated sequenceId wins");
    }

    #[test]
    fn jobs_are_requeued_by_generation_and_finish_only_when_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let job = UploadJob {
            schema_version: RECORD_SCHEMA_VERSION,
            key: "k".into(),
            instance_id: "i".into(),
            organization_id: "o".into(),
            application_id: "a".into(),
            artefact: ArtefactKind::ChatTranscript,
            generation: 0,
            num_attempts: 0,
            last_error: None,
            multipart_opt: None,
            first_failure: None,
        };
        assert_eq!(store.enqueue_job(&job).unwrap().generation, 0);
        assert_eq!(store.enqueue_job(&job).unwrap().generation, 1);
        assert!(!store.finish_job("k", 0).unwrap(), "a re-queued job must run again");
        assert_eq!(store.jobs().unwrap().len(), 1);
        assert!(store.finish_job("k", 1).unwrap());
        assert!(store.jobs().unwrap().is_empty());
    }

    #[test]
    fn opening_waits_for_a_lock_being_released_and_names_one_that_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStore::open(dir.path()).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let second = SledStore::open(dir.path()).expect("opened once the first handle let go");
        releaser.join().unwrap();
        let Err(StoreError::Io(message)) = SledStore::open(dir.path()) else {
            panic!("a store held by a live handle must not open twice");
        };
        assert!(message.contains("in use by another process"), "{message}");
        drop(second);
    }

    #[tokio::test]
    async fn multipart_progress_is_kept_until_replaced_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let progress = crate::storage::MultipartProgress {
            upload_id: "u-1".into(),
            file_len: 42,
            parts: vec![crate::storage::UploadedPart {
                number: 1,
                etag: "\"abc\"".into(),
            }],
            offset: 0,
        };
        let job = {
            let store = SledStore::open(dir.path()).unwrap();
            let job = store
                .enqueue_job(&UploadJob {
                    schema_version: RECORD_SCHEMA_VERSION,
                    key: "k".into(),
                    instance_id: "i".into(),
                    organization_id: "o".into(),
                    application_id: "a".into(),
                    artefact: ArtefactKind::ChatTranscript,
                    generation: 0,
                    num_attempts: 0,
                    last_error: None,
                    multipart_opt: None,
                    first_failure: None,
                })
                .unwrap();
            let mut with_progress = job.clone();
            with_progress.multipart_opt = Some(progress.clone());
            store.update_job(&with_progress).unwrap();
            // An attempt recorded from a copy without progress leaves the parts alone.
            let mut attempt = job.clone();
            attempt.num_attempts = 1;
            store.update_job(&attempt).unwrap();
            store.flush().await.unwrap();
            job
        };
        let store = SledStore::open(dir.path()).unwrap();
        let stored = store.job(&job.key).unwrap().unwrap();
        assert_eq!(stored.num_attempts, 1);
        assert_eq!(stored.multipart_opt, Some(progress));
        assert!(store.job("other").unwrap().is_none());
    }

    #[test]
    fn records_from_a_newer_schema_are_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut value = serde_json::to_value(instance("i1", "o", "c")).unwrap();
        value["schema_version"] = serde_json::json!(RECORD_SCHEMA_VERSION + 1);
        store
            .instances
            .insert("i1", serde_json::to_vec(&value).unwrap())
            .unwrap();
        assert!(matches!(store.get_instance("i1"), Err(StoreError::FutureSchema { .. })));
        store.instances.insert("i2", b"{not json".to_vec()).unwrap();
        assert!(matches!(store.get_instance("i2"), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn concurrent_flushes_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for n in 0..20 {
                        store
                            .insert_instance(&instance(&format!("i-{t}-{n}"), "o", &format!("c{t}")))
                            .unwrap();
                        futures_executor::block_on(store.flush()).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.all_instances().unwrap().len(), 320);
    }

    #[test]
    fn pending_compositions_follow_their_state_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let now = Utc::now();
            let (c1, c2) = (CompositionId::new("o", "a", "c1"), CompositionId::new("o", "a", "c2"));
            store.queue_composition(&c1, "i1", now).unwrap();
            store.queue_composition(&c2, "i2", now).unwrap();
            store
                .update_composition(&c1, &mut |c| {
                    c.state = CompositionState::Done;
                    Ok(())
                })
                .unwrap();
            let pending: Vec<_> = store
                .pending_compositions()
                .unwrap()
                .into_iter()
                .map(|c| c.conversation_id)
                .collect();
            assert_eq!(pending, vec!["c2"]);
            // A finished record queued again is pending again.
            store.queue_composition(&c1, "i3", now).unwrap();
            assert_eq!(store.pending_compositions().unwrap().len(), 2);
            // A key left behind (a crash between the two trees) is skipped by state.
            store
                .update_composition(&c2, &mut |c| {
                    c.state = CompositionState::Failed;
                    Ok(())
                })
                .unwrap();
            store.compositions_pending.insert(composition_key(&c2), &[]).unwrap();
            let pending: Vec<_> = store
                .pending_compositions()
                .unwrap()
                .into_iter()
                .map(|c| c.conversation_id)
                .collect();
            assert_eq!(pending, vec!["c1"]);
        }
        let store = SledStore::open(dir.path()).unwrap();
        let pending: Vec<_> = store
            .pending_compositions()
            .unwrap()
            .into_iter()
            .map(|c| c.conversation_id)
            .collect();
        assert_eq!(pending, vec!["c1"], "the index is rebuilt from the records at open");
        assert_eq!(store.compositions().unwrap().len(), 2);
    }

    #[test]
    fn compositions_are_per_application_and_format_1_stores_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let (a, b) = (
            CompositionId::new("o", "app-a", "c"),
            CompositionId::new("o", "app-b", "c"),
        );
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.queue_composition(&a, "ia", now).unwrap();
            store.queue_composition(&b, "ib", now).unwrap();
            store.queue_composition(&b, "ib2", now).unwrap();
            assert_eq!(store.get_composition(&a).unwrap().unwrap().instance_id, "ia");
            assert_eq!(store.get_composition(&a).unwrap().unwrap().generation, 1);
            let b_record = store.get_composition(&b).unwrap().unwrap();
            assert_eq!((b_record.instance_id.as_str(), b_record.generation), ("ib2", 2));
            let listed: Vec<_> = store
                .conversation_compositions("o", "c")
                .unwrap()
                .into_iter()
                .map(|c| c.application_id)
                .collect();
            assert_eq!(listed, vec!["app-a", "app-b"]);
            assert!(store.conversation_compositions("o", "c2").unwrap().is_empty());
            // A format-1 store: one record under org \0 conversation, pending.
            let mut old = store.get_composition(&a).unwrap().unwrap();
            old.conversation_id = "old".into();
            old.application_id = "app-x".into();
            store.compositions.insert(key2("o", "old"), encode(&old)).unwrap();
            store.compositions_pending.insert(key2("o", "old"), &[]).unwrap();
            store.meta.insert(STORE_FORMAT_KEY, &1u32.to_be_bytes()).unwrap();
            store.meta.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let moved = store
            .get_composition(&CompositionId::new("o", "app-x", "old"))
            .unwrap()
            .expect("migrated to its application's key");
        assert_eq!(moved.instance_id, "ia");
        assert!(store.compositions.get(key2("o", "old")).unwrap().is_none());
        let pending: Vec<_> = store
            .pending_compositions()
            .unwrap()
            .into_iter()
            .map(|c| (c.application_id, c.conversation_id))
            .collect();
        assert_eq!(pending.len(), 3, "{pending:?}");
        assert!(pending.contains(&("app-x".to_string(), "old".to_string())));
        let format = store.meta.get(STORE_FORMAT_KEY).unwrap().unwrap();
        assert_eq!(format.as_ref(), &STORE_FORMAT.to_be_bytes());
    }

    #[test]
    fn a_transaction_commits_all_its_writes_or_none_and_counts_states_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.insert_instance(&instance("i1", "o", "c")).unwrap();
        let job = |key: &str| UploadJob {
            schema_version: RECORD_SCHEMA_VERSION,
            key: key.into(),
            instance_id: "i1".into(),
            organization_id: "o".into(),
            application_id: "a".into(),
            artefact: crate::store::ArtefactKind::Manifest,
            generation: 0,
            num_attempts: 0,
            last_error: None,
            multipart_opt: None,
            first_failure: None,
        };
        let id = CompositionId::new("o", "a", "c");
        let entry = ChatEntry {
            time_stamp: Utc::now(),
            transcript: "x".into(),
            user_display_name: None,
            user_id: "u".into(),
        };
        let counts = |store: &SledStore| {
            store
                .instance_counts()
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>()
        };
        // A command that fails after some writes leaves none of them.
        let refused = store.transaction(&mut |tx| {
            tx.update_instance("i1", &mut |r| {
                r.transition(InstanceState::Stopped, Utc::now())
                    .map_err(|e| StoreError::Rejected {
                        code: "T",
                        message: e.to_string(),
                    })
            })?;
            tx.enqueue_job(&job("k1"))?;
            tx.queue_composition(&id, "i1", Utc::now())?;
            tx.append_transcript("i1", std::slice::from_ref(&entry))?;
            Err(StoreError::Rejected {
                code: "LATER_STEP",
                message: "a later step refused".into(),
            })
        });
        assert!(matches!(refused, Err(StoreError::Rejected { code: "LATER_STEP", .. })));
        assert_eq!(
            store.get_instance("i1").unwrap().unwrap().state,
            InstanceState::Initialised
        );
        assert!(store.jobs().unwrap().is_empty());
        assert!(store.get_composition(&id).unwrap().is_none());
        assert!(store.pending_compositions().unwrap().is_empty());
        assert!(store.transcript("i1").unwrap().is_empty());
        assert_eq!(counts(&store)[&InstanceState::Stopped], 0);
        assert_eq!(counts(&store)[&InstanceState::Initialised], 1);
        // The same command succeeding lands whole, and the state counts move once.
        store
            .transaction(&mut |tx| {
                tx.update_instance("i1", &mut |r| {
                    r.transition(InstanceState::Stopped, Utc::now())
                        .map_err(|e| StoreError::Rejected {
                            code: "T",
                            message: e.to_string(),
                        })
                })?;
                tx.enqueue_job(&job("k1"))?;
                tx.queue_composition(&id, "i1", Utc::now())?;
                assert_eq!(tx.append_transcript("i1", std::slice::from_ref(&entry))?, 1);
                assert!(tx.put_cobrowse_event("i1", &event("s", 1, "{}"))?);
                assert!(!tx.put_cobrowse_event("i1", &event("s", 1, "{}"))?);
                Ok(())
            })
            .unwrap();
        assert_eq!(store.get_instance("i1").unwrap().unwrap().state, InstanceState::Stopped);
        assert_eq!(store.jobs().unwrap().len(), 1);
        assert_eq!(store.pending_compositions().unwrap().len(), 1);
        assert_eq!(store.transcript("i1").unwrap().len(), 1);
        assert_eq!(store.cobrowse_events("i1", "s").unwrap().len(), 1);
        assert_eq!(counts(&store)[&InstanceState::Stopped], 1);
        assert_eq!(counts(&store)[&InstanceState::Initialised], 0);
        // A finished job leaves within a transaction too, unless it was re-queued.
        store
            .transaction(&mut |tx| tx.enqueue_job(&job("k1")).map(|_| ()))
            .unwrap();
        let mut finished = true;
        store
            .transaction(&mut |tx| {
                finished = tx.finish_job("k1", 0)?;
                Ok(())
            })
            .unwrap();
        assert!(!finished, "generation 1 is newer than the run that finished");
        store
            .transaction(&mut |tx| {
                finished = tx.finish_job("k1", 1)?;
                Ok(())
            })
            .unwrap();
        assert!(finished && store.jobs().unwrap().is_empty());
    }

    #[test]
    fn the_job_index_per_profile_follows_every_enqueue_and_finish_and_is_rebuilt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let job = |org: &str, app: &str, key: &str| UploadJob {
            schema_version: RECORD_SCHEMA_VERSION,
            key: key.into(),
            instance_id: "i".into(),
            organization_id: org.into(),
            application_id: app.into(),
            artefact: crate::store::ArtefactKind::Manifest,
            generation: 0,
            num_attempts: 0,
            last_error: None,
            multipart_opt: None,
            first_failure: None,
        };
        let keys = |store: &SledStore, org: &str, app: &str| -> Vec<String> {
            store
                .profile_jobs(org, app)
                .unwrap()
                .into_iter()
                .map(|j| j.key)
                .collect()
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.enqueue_job(&job("o", "a", "k1")).unwrap();
            store.enqueue_job(&job("o", "b", "k2")).unwrap();
            store
                .transaction(&mut |tx| tx.enqueue_job(&job("o", "a", "k3")).map(|_| ()))
                .unwrap();
            // A refused transaction moves nothing.
            let _ = store.transaction(&mut |tx| {
                tx.enqueue_job(&job("o", "a", "k4"))?;
                Err(StoreError::Rejected {
                    code: "X",
                    message: "no".into(),
                })
            });
            assert_eq!(keys(&store, "o", "a"), vec!["k1", "k3"]);
            assert_eq!(keys(&store, "o", "b"), vec!["k2"]);
            assert!(store.finish_job("k1", 0).unwrap());
            store.transaction(&mut |tx| tx.finish_job("k2", 0).map(|_| ())).unwrap();
            assert_eq!(keys(&store, "o", "a"), vec!["k3"]);
            assert!(keys(&store, "o", "b").is_empty());
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(keys(&store, "o", "a"), vec!["k3"]);
        assert!(keys(&store, "o", "c").is_empty());
    }

    #[test]
    fn meta_values_are_set_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.meta_get_or_insert("node", b"first").unwrap(), b"first");
        assert_eq!(store.meta_get_or_insert("node", b"second").unwrap(), b"first");
    }
}
