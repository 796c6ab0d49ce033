//! What the engine tests share: ids, a publisher replaying fixtures to the ports an answer
//! gives, and the stream counters of the live tree.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use recorder_actors::domain::{InstanceRecord, InstanceState, StreamType};
use recorder_actors::messages::PublishAnswer;
use testkit::engine::EngineHarness;
use testkit::rtp::{answer_ports, offer, replay_until, Fixture, Sent};

/// How long a condition the engine reaches by itself may take on a loaded machine before a test
/// gives up (a bound on waiting, never a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Tests that replay media in real time run one at a time: their figures (frames, first
/// keyframe) should not depend on how many others share the two cores.
static MEDIA: Mutex<()> = Mutex::new(());

pub fn media_lock() -> MutexGuard<'static, ()> {
    MEDIA.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn unique(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A publisher replaying fixtures, one per m-line, each on its own thread.
pub struct Publisher {
    pub answer: PublishAnswer,
    stop: Arc<AtomicBool>,
    senders: Vec<JoinHandle<Sent>>,
}

impl Publisher {
    /// Offers one m-line per fixture as (user, kind) of `conference`, and replays each `passes`
    /// times (2 s a pass) to the port the answer gives it.
    pub async fn start(
        engine: &EngineHarness,
        conference: &str,
        user: &str,
        kind: StreamType,
        fixtures: &[&str],
        passes: u32,
    ) -> Publisher {
        let fixtures: Vec<Fixture> = fixtures.iter().map(|f| Fixture::load(f)).collect();
        let lines: Vec<_> = fixtures.iter().map(Fixture::offer_lines).collect();
        let answer = engine
            .publish_rtp(conference, user, kind, &offer(&lines))
            .await
            .unwrap_or_else(|e| panic!("publish {user}/{kind:?}: {e}"));
        let ports = answer_ports(&answer.answer_sdp);
        assert_eq!(ports.len(), fixtures.len(), "{}", answer.answer_sdp);
        let stop = Arc::new(AtomicBool::new(false));
        let senders = fixtures
            .into_iter()
            .zip(ports)
            .map(|(fixture, (rtp, rtcp))| {
                assert_ne!(rtp, 0, "m-line refused: {}", answer.answer_sdp);
                let stop = stop.clone();
                let clock = engine.clock().clone();
                std::thread::spawn(move || {
                    replay_until(
                        &fixture,
                        loopback(rtp),
                        rtcp.map(loopback),
                        passes,
                        || clock.utc_micros(),
                        || stop.load(Ordering::Relaxed),
                    )
                })
            })
            .collect();
        Publisher { answer, stop, senders }
    }

    /// Waits for every sender to finish its passes; what each sent, in m-line order.
    pub fn finish(self) -> Vec<Sent> {
        self.senders
            .into_iter()
            .map(|s| s.join().expect("sender thread"))
            .collect()
    }

    /// Stops sending at the next packet.
    pub fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.finish()
    }
}

/// The counters of the one live stream of the tree (panics if there is not exactly one).
pub async fn only_stream(engine: &EngineHarness) -> recorder_actors::snapshot::ActorSnapshot {
    let streams = engine.streams().await;
    assert_eq!(streams.len(), 1, "{streams:#?}");
    streams.into_iter().next().unwrap()
}

pub fn counter(snapshot: &recorder_actors::snapshot::ActorSnapshot, name: &str) -> u64 {
    snapshot
        .counters
        .get(name)
        .unwrap_or_else(|| panic!("no counter {name} in {snapshot:#?}"))
}

pub async fn wait_state(engine: &EngineHarness, instance: &InstanceRecord, state: InstanceState) -> InstanceRecord {
    engine
        .wait_for(PATIENCE, &format!("instance {state}"), || {
            Some(engine.instance(instance)).filter(|r| r.state == state)
        })
        .await
}
