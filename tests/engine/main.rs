//! The engine in process ([`testkit::engine::EngineHarness`]): the real actor tree, state store,
//! local storage and UDP ingest on loopback, on a clock the tests move. Timers (recovery window,
//! reconnect grace, restart budget, upload retries, flushes) are passed by moving the clock, not
//! by sleeping; media is replayed from recorded FFmpeg RTP and the files are checked with ffprobe.

// The media lock only serializes tests across the test harness's threads (each test runs on a
// runtime of its own): holding it across awaits is what it is for.
#![allow(clippy::await_holding_lock)]

mod fidelity;
mod support;
mod timers;
mod webhooks;
