//! The engine's timers, passed by moving the harness clock: each test shows a timer has not
//! fired just before its time and fires once its time has come, without waiting for it.

use std::time::Duration;

use recorder_actors::domain::{InstanceState, StreamType};
use recorder_actors::engine::RecoveryConfig;
use recorder_actors::media::writer::WriterConfig;
use recorder_actors::snapshot::Counters;
use testkit::engine::{EngineHarness, HarnessSettings};

use crate::support::*;

/// A recorder rebuilt after a restart waits `recovery.window` for media; none comes, and once the
/// clock passes the window the instance is ABORTED with what it recorded before finalized.
#[tokio::test]
async fn a_pending_instance_is_aborted_once_the_clock_passes_the_recovery_window() {
    let _media = media_lock();
    let mut engine = EngineHarness::with(HarnessSettings {
        recovery: RecoveryConfig {
            window: Duration::from_secs(600),
            ..RecoveryConfig::default()
        },
        ..HarnessSettings::default()
    });
    let conference = unique("room");
    let instance = engine.start_recording(&unique("call"), &conference).await;
    let publisher = Publisher::start(&engine, &conference, "agent", StreamType::Cam, &["vp8"], 1).await;
    wait_state(&engine, &instance, InstanceState::Active).await;
    let sent = publisher.finish();
    engine
        .wait_for_async(PATIENCE, "every frame written", || async {
            let stream = only_stream(&engine).await;
            (counter(&stream, "num_frames_written") == sent[0].num_frames).then_some(())
        })
        .await;

    engine.restart();
    assert_eq!(engine.instance(&instance).state, InstanceState::PendingRecovery);
    // A round trip through the rebuilt recorder: it has started, and armed its window, before
    // the clock moves.
    let streams = engine.streams().await;
    assert_eq!(streams.len(), 1, "the recorded stream is restored: {streams:#?}");
    engine.advance(Duration::from_secs(599));
    // Another round trip: its timer, had it been due, ran first.
    engine.streams().await;
    assert_eq!(engine.instance(&instance).state, InstanceState::PendingRecovery);

    engine.advance(Duration::from_secs(2));
    let aborted = wait_state(&engine, &instance, InstanceState::Aborted).await;
    let error = aborted.error.as_ref().expect("an aborted instance says why");
    assert_eq!(error.code, "RECOVERY_WINDOW_EXPIRED", "{aborted:#?}");
    // What was recorded before the restart is finalized: every frame sent is in the file.
    let track = &aborted.streams[0].tracks[0];
    let file = track.local.location.as_ref().expect("the track is finalized");
    let probe = testkit::probe::probe(std::path::Path::new(file));
    assert_eq!(probe.num_frames, sent[0].num_frames, "{probe:?}");
    // The abort happened on the clock: its time is past the window.
    let (_, aborted_at) = aborted.history.last().unwrap();
    let (_, pending_at) = aborted
        .history
        .iter()
        .rev()
        .find(|(state, _)| *state == InstanceState::PendingRecovery)
        .unwrap();
    assert!(
        (*aborted_at - *pending_at) >= chrono::Duration::seconds(600),
        "{:?}",
        aborted.history
    );
}

/// A publisher that leaves and comes back within `media.reconnect_grace` continues its stream;
/// one that comes back after it starts a new stream.
#[tokio::test]
async fn a_publisher_back_within_the_grace_continues_its_stream_and_one_back_after_it_starts_anew() {
    let engine = EngineHarness::with(HarnessSettings {
        reconnect_grace: Duration::from_secs(300),
        ..HarnessSettings::default()
    });
    let conference = unique("room");
    let _instance = engine.start_recording(&unique("call"), &conference).await;
    let offer = testkit::rtp::offer(&[testkit::rtp::Fixture::load("vp8").offer_lines()]);
    let publish = || engine.publish_rtp(&conference, "agent", StreamType::Cam, &offer);
    let disconnected = |stream_id: String| {
        let engine = &engine;
        async move {
            engine
                .wait_for_async(PATIENCE, "the publisher gone", || {
                    let stream_id = stream_id.clone();
                    async move {
                        let streams = engine.streams().await;
                        let stream = streams.iter().find(|s| s.id.starts_with(&stream_id))?;
                        (counter(stream, "connected") == 0).then_some(())
                    }
                })
                .await
        }
    };

    let first = publish().await.unwrap();
    engine.unpublish(&conference, &first.session_id).await.unwrap();
    disconnected(first.stream_id.clone()).await;
    engine.advance(Duration::from_secs(299));
    let again = publish().await.unwrap();
    assert_eq!(
        again.stream_id, first.stream_id,
        "back within the grace: the same stream"
    );
    assert_ne!(again.session_id, first.session_id);

    engine.unpublish(&conference, &again.session_id).await.unwrap();
    disconnected(again.stream_id.clone()).await;
    engine.advance(Duration::from_secs(301));
    let later = publish().await.unwrap();
    assert_ne!(later.stream_id, first.stream_id, "back after the grace: a new stream");
    assert_eq!(engine.streams().await.len(), 2);
}

/// A stream whose writer fails restarts within `max_restarts` failures per `restart_window`:
/// the window slides with the clock (an old failure stops counting), and a failure beyond the
/// budget fails the stream — and the instance, which has no other.
#[tokio::test]
async fn the_restart_budget_refills_as_the_clock_passes_its_window_and_fails_the_stream_beyond_it() {
    let _media = media_lock();
    let engine = EngineHarness::with(HarnessSettings {
        recovery: RecoveryConfig {
            max_restarts: 1,
            restart_window: Duration::from_secs(600),
            ..RecoveryConfig::default()
        },
        ..HarnessSettings::default()
    });
    let conference = unique("room");
    let instance = engine.start_recording(&unique("call"), &conference).await;
    // Long enough for the whole test; stopped at the end.
    let publisher = Publisher::start(&engine, &conference, "agent", StreamType::Cam, &["vp8"], 60).await;
    let written = || async {
        let stream = only_stream(&engine).await;
        (
            counter(&stream, "num_frames_written"),
            counter(&stream, "num_restarts"),
            stream,
        )
    };
    engine
        .wait_for_async(PATIENCE, "frames written", || async {
            (written().await.0 > 0).then_some(())
        })
        .await;
    let fail_next_write = || {
        assert!(recorder_actors::fault::arm(&format!(
            "muxer_write@{}=error*1",
            instance.instance_id
        )));
    };

    fail_next_write();
    engine
        .wait_for_async(PATIENCE, "the first restart", || async {
            (written().await.1 == 1).then_some(())
        })
        .await;
    wait_state(&engine, &instance, InstanceState::Active).await;

    // The first failure leaves the window: the second is within the budget again.
    engine.advance(Duration::from_secs(601));
    fail_next_write();
    engine
        .wait_for_async(PATIENCE, "the second restart", || async {
            (written().await.1 == 2).then_some(())
        })
        .await;
    wait_state(&engine, &instance, InstanceState::Active).await;

    // The third, within the window of the second: beyond the budget.
    fail_next_write();
    let aborted = wait_state(&engine, &instance, InstanceState::Aborted).await;
    publisher.stop();
    assert_eq!(
        aborted.error.as_ref().map(|e| e.code.as_str()),
        Some("RESTART_BUDGET_EXHAUSTED"),
        "{aborted:#?}"
    );
    assert_eq!(aborted.streams.len(), 1);
    assert_eq!(aborted.streams[0].state, recorder_actors::domain::StreamState::Failed);
}

/// A writer flushes its file when the clock passes `flush_interval`: with an hour's interval
/// nothing is flushed while frames are written, and moving the clock an hour makes the flush due.
#[tokio::test]
async fn a_writer_flushes_when_the_clock_passes_its_flush_interval() {
    let _media = media_lock();
    let engine = EngineHarness::with(HarnessSettings {
        writer: WriterConfig {
            flush_interval: Duration::from_secs(3600),
            fsync_interval: Duration::from_secs(3600),
            ..WriterConfig::default()
        },
        ..HarnessSettings::default()
    });
    let conference = unique("room");
    let _instance = engine.start_recording(&unique("call"), &conference).await;
    let publisher = Publisher::start(&engine, &conference, "agent", StreamType::Cam, &["vp8"], 2).await;
    let counters = || async {
        let stream = only_stream(&engine).await;
        (counter(&stream, "num_frames_written"), counter(&stream, "num_flushes"))
    };
    engine
        .wait_for_async(PATIENCE, "30 frames written", || async {
            let (written, flushes) = counters().await;
            assert_eq!(flushes, 0, "flushed before its interval on the clock");
            (written >= 30).then_some(())
        })
        .await;
    engine.advance(Duration::from_secs(3600));
    engine
        .wait_for_async(PATIENCE, "a flush", || async {
            (counters().await.1 >= 1).then_some(())
        })
        .await;
    publisher.stop();
}

/// A failed upload is retried after `uploads.retry_base` on the clock, not before; the retry
/// uploads it, and the counters say exactly what happened.
#[tokio::test]
async fn a_failed_upload_is_retried_once_the_clock_passes_its_backoff() {
    let _media = media_lock();
    let engine = EngineHarness::with(HarnessSettings {
        upload_retry_base: Duration::from_secs(120),
        upload_retry_max: Duration::from_secs(600),
        ..HarnessSettings::default()
    });
    let conference = unique("room");
    let instance = engine.start_recording(&unique("call"), &conference).await;
    Publisher::start(&engine, &conference, "agent", StreamType::Cam, &["vp8"], 1)
        .await
        .finish();
    // The track's first upload fails; the manifest (recording.json) waits for it.
    assert!(recorder_actors::fault::arm(&format!(
        "upload_part@{}=error*1",
        instance.instance_id
    )));
    engine.stop(&instance).await.unwrap();
    let uploader = || async {
        let tree = engine.tree().await;
        tree.children
            .iter()
            .find_map(|c| match c.counters {
                Counters::Uploader(u) => Some(u),
                _ => None,
            })
            .expect("the profile's uploader")
    };
    engine
        .wait_for_async(PATIENCE, "the failed upload", || async {
            (uploader().await.num_failures == 1).then_some(())
        })
        .await;
    engine.advance(Duration::from_secs(119));
    let before = uploader().await;
    assert_eq!(
        (before.num_uploaded, before.num_failures, before.num_queued),
        (0, 1, 2),
        "{before:?}"
    );

    engine.advance(Duration::from_secs(2));
    let after = engine
        .wait_for_async(PATIENCE, "the retried upload and the manifest", || async {
            let u = uploader().await;
            (u.num_uploaded == 2).then_some(u)
        })
        .await;
    assert_eq!(
        (after.num_uploaded, after.num_failures, after.num_queued),
        (2, 1, 0),
        "{after:?}"
    );
    let manifest = engine.storage_dir().join(instance.manifest_key());
    assert!(manifest.is_file(), "{} uploaded", manifest.display());
    let stored = engine.instance(&instance);
    assert!(stored.streams[0].tracks[0].object.uploaded.is_some(), "{stored:#?}");
}

/// An instance reaching the application's maximum duration stops by itself with the stop reason
/// `MAX_DURATION_REACHED`; the duration counts from its creation on the clock, across a restart.
#[tokio::test]
async fn an_instance_stops_by_itself_at_its_maximum_duration_counted_across_a_restart() {
    let mut engine = EngineHarness::with(HarnessSettings {
        policy: recorder_actors::engine::ApplicationPolicy {
            max_instance_duration: Some(Duration::from_secs(4 * 3600)),
            duration_warning: Duration::from_secs(60),
            ..Default::default()
        },
        ..HarnessSettings::default()
    });
    let instance = engine.start_recording(&unique("call"), &unique("room")).await;
    // Armed before the clock moves (a round trip through the recorder).
    engine.tree().await;
    engine.advance(Duration::from_secs(3 * 3600));
    engine.restart();
    engine.tree().await;
    engine.advance(Duration::from_secs(3600 - 2));
    engine.tree().await;
    let live = engine.instance(&instance);
    assert_eq!(live.state, InstanceState::Initialised, "{live:#?}");
    engine.advance(Duration::from_secs(3));
    let stopped = wait_state(&engine, &instance, InstanceState::Stopped).await;
    assert_eq!(
        stopped.stop_reason.as_deref(),
        Some("MAX_DURATION_REACHED"),
        "{stopped:#?}"
    );
    assert!(stopped.error.is_none(), "{stopped:#?}");
    // The conversation may start again: the stop ended its live instance.
    let again = engine
        .try_start(&instance.conversation_id, &unique("room"), true, true)
        .await;
    assert!(again.is_ok(), "{again:?}");
}
