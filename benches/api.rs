//! Control-plane benchmark: what durability costs the API.
//!
//! Starts the real binary on loopback with a fresh data dir and measures, in one run:
//! - `health`:     GET /health — the HTTP floor (no engine, no store);
//! - `start+stop`: POST start then POST stop — two durable commands (fsync each);
//! - `transcript`: POST chat/transcript/add to a live instance — one durable append;
//! - `store`:      the state store alone, in this process: insert + fsync, one at a time.
//!
//! Run: `cargo bench --bench api --profile dev -- [seconds] [clients]` (defaults 5 s, 8 clients).
//! Prints a Markdown table for BENCHMARKS.md, with ratios against the floors of the same run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recorder_actors::domain::*;
use recorder_actors::store::{SledStore, StateStore};

const KEY: &str = "bench-key-0123456789abcdef";

struct Server {
    _service: testkit::Service,
    base: String,
    _dir: tempfile::TempDir,
}

fn start_server() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = testkit::Launch::new(env!("CARGO_BIN_EXE_rtc-recorder"), dir.path())
        .env("RECORDER_API_KEY", KEY)
        .start();
    let base = service.base_url().to_string();
    Server {
        _service: service,
        base,
        _dir: dir,
    }
}

struct Outcome {
    num_ops: u64,
    secs: f64,
    latencies_us: Vec<u64>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.num_ops as f64 / self.secs
    }
    fn percentile(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }
}

/// Runs `op` from `clients` threads for `secs`; each call is one operation.
fn drive(clients: usize, secs: u64, op: impl Fn(usize, u64) + Send + Sync + 'static) -> Outcome {
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|client| {
            let (op, stop) = (op.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    op(client, n);
                    latencies.push(t.elapsed().as_micros() as u64);
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    for h in handles {
        latencies_us.extend(h.join().expect("client thread"));
    }
    Outcome {
        num_ops: latencies_us.len() as u64,
        secs: started.elapsed().as_secs_f64(),
        latencies_us,
    }
}

fn post(agent: &ureq::Agent, url: &str, body: &str) -> serde_json::Value {
    agent
        .post(url)
        .set("Authorization", KEY)
        .set("Content-Type", "application/json")
        .send_string(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
        .into_json()
        .expect("json answer")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let clients: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let server = start_server();
    let api = format!("{}/auvious.video/rtc-recorder/api", server.base);
    let agent = ureq::AgentBuilder::new()
        .max_idle_connections_per_host(clients * 2)
        .build();

    let health_url = format!("{}/health", server.base);
    let a = agent.clone();
    let mut health = drive(clients, secs, move |_, _| {
        a.get(&health_url).call().expect("health");
    });

    let (a, api_s) = (agent.clone(), api.clone());
    let mut start_stop = drive(clients, secs, move |client, n| {
        let started = post(
            &a,
            &format!("{api_s}/recordings/start"),
            &format!(
                r#"{{"applicationId":"default","conferenceId":"room-{client}-{n}","conversationId":"bench-{client}-{n}"}}"#
            ),
        );
        let (r, i) = (
            started["recorderId"].as_str().unwrap(),
            started["instanceId"].as_str().unwrap(),
        );
        post(&a, &format!("{api_s}/recordings/bench-{client}-{n}/{r}/{i}/stop"), "");
    });

    let live = post(
        &agent,
        &format!("{api}/recordings/start"),
        r#"{"applicationId":"default","conferenceId":"room","conversationId":"bench-transcript"}"#,
    );
    let body = format!(
        r#"{{"conversationId":"bench-transcript","recorderId":"{}","instanceId":"{}","chatTranscriptList":[{{"timeStamp":"2026-01-01T00:00:00Z","transcript":"hello, how can I help?","userId":"agent"}}]}}"#,
        live["recorderId"].as_str().unwrap(),
        live["instanceId"].as_str().unwrap()
    );
    let (a, api_t) = (agent.clone(), api.clone());
    let mut transcript = drive(clients, secs, move |_, _| {
        post(&a, &format!("{api_t}/recordings/chat/transcript/add"), &body);
    });
    drop(server);

    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn StateStore> = Arc::new(SledStore::open(dir.path()).expect("open store"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let s = store.clone();
    let mut raw = drive(1, secs, move |_, n| {
        let mut record = sample_record();
        record.instance_id = format!("bench-{n}");
        s.insert_instance(&record).expect("insert");
        rt.block_on(s.flush()).expect("flush");
    });

    println!("| workload | clients | ops/s | p50 ms | p99 ms | ratio |");
    println!("|---|---|---|---|---|---|");
    let floor = health.rate();
    let commit_floor = raw.rate();
    let (h50, h99) = (health.percentile(0.5), health.percentile(0.99));
    println!(
        "| GET /health (HTTP floor) | {clients} | {:.0} | {h50:.2} | {h99:.2} | 1.00 × health |",
        floor
    );
    let (r50, r99) = (raw.percentile(0.5), raw.percentile(0.99));
    println!(
        "| store insert+fsync, in process (commit floor) | 1 | {:.0} | {r50:.2} | {r99:.2} | 1.00 × commit |",
        commit_floor
    );
    let (s50, s99) = (start_stop.percentile(0.5), start_stop.percentile(0.99));
    println!(
        "| start + stop (2 durable commands) | {clients} | {:.0} | {s50:.2} | {s99:.2} | {:.3} × health, {:.2} × commit (per command) |",
        start_stop.rate(),
        start_stop.rate() / floor,
        2.0 * start_stop.rate() / commit_floor
    );
    let (t50, t99) = (transcript.percentile(0.5), transcript.percentile(0.99));
    println!(
        "| chat/transcript/add (1 durable append) | {clients} | {:.0} | {t50:.2} | {t99:.2} | {:.3} × health, {:.2} × commit |",
        transcript.rate(),
        transcript.rate() / floor,
        transcript.rate() / commit_floor
    );
}

fn sample_record() -> InstanceRecord {
    let now = chrono::Utc::now();
    InstanceRecord {
        schema_version: RECORD_SCHEMA_VERSION,
        instance_id: String::new(),
        recorder_id: "node".into(),
        organization_id: "default".into(),
        application_id: "default".into(),
        conversation_id: "bench".into(),
        conference_id: "room".into(),
        audio: true,
        video: true,
        state: InstanceState::Initialised,
        created: now,
        started: None,
        stopped: None,
        recovered: None,
        error: None,
        provider: Provider::Local,
        storage_url: String::new(),
        streams: vec![],
        transcript: None,
        num_transcript_entries: 0,
        cobrowse_sessions: Default::default(),
        history: vec![(InstanceState::Initialised, now)],
        stop_requested: None,
        pauses: Vec::new(),
        num_discarded_while_paused: 0,
        stop_reason: None,
        erasure: None,
    }
}
