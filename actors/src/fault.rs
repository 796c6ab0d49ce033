//! Fault injection points, compiled in only with the `fault-injection` feature (on for the
//! project's own tests through a dev-dependency, off in every normal build, where `point` is an
//! empty inline function).
//!
//! `RTC_RECORDER_FAULTS="name=action[*count][+skip],..."` arms points by name; actions:
//! `abort` ends the process at once (SIGABRT: no unwinding, no flush — as a crash at exactly that
//! step), `stall` blocks the calling thread for good (the process hangs there, so a test can
//! `kill -9` it in the middle of that step), `panic` panics on the calling thread, `error` makes
//! the point return an error, `sleepN` holds the calling thread N milliseconds (a slow disk, say). `*count` limits how many times the
//! point fires (default: every time); `+skip` lets that many hits pass first. `name@text=...` arms the point only where its scope (e.g.
//! the file a writer writes, which names the instance) contains `text`. The variable is read
//! once, at the first point reached.

/// The points the engine has.
pub const MUXER_WRITE: &str = "muxer_write";
pub const STATE_COMMIT: &str = "state_commit";
/// Between two writes of one state-store transaction (`StoreTx::step`), scoped by
/// `"<command> <step> <instanceId>"`. Armed with `error`, the point makes whatever was written
/// outside the transaction durable (a flush, given up after a second if it waits on the
/// transaction) and ends the process at once (`_exit`, as a kill would): a crash at exactly that
/// step. The transaction's own writes so far are not committed, so none of them survive.
pub const COMMAND_STEP: &str = "command_step";
pub const UPLOAD_PART: &str = "upload_part";
/// After each object an erasure deleted, scoped by the instance id.
pub const ERASE_STEP: &str = "erase_step";
pub const FINALIZE: &str = "finalize";
/// As a recovered stream begins to read its files back (on its restore thread), scoped by the
/// stream's folder.
pub const STREAM_RESTORE: &str = "stream_restore";
/// At the start of every message handler of a Stream actor but `Snapshot` (among them its
/// supervision tick, every 200 ms), scoped by `"<conversationId> <userId>/<TYPE> <Handler>"`, and
/// in the continuation of its FinishStream handler (after its files are final, before its record
/// names them), scoped by `"<conversationId> <userId>/<TYPE> continuation FinishStream"`.
pub const STREAM_HANDLER: &str = "stream_handler";
/// At the start of every message handler of a Recorder actor but `Snapshot`, scoped by
/// `"<conversationId> <Handler>"`; in the continuation of its Publish handler (after the stream
/// answered), scoped by `"<conversationId> continuation Publish"`; and at the start of the
/// continuation of a stop or an abort (after the streams finished, before the terminal state is
/// committed), scoped by `"<conversationId> continuation StopRecorder"` (or `AbortRecorder`).
pub const RECORDER_HANDLER: &str = "recorder_handler";

/// An injected failure, for points whose caller turns it into its own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault(pub &'static str);

impl std::fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "injected fault at {}", self.0)
    }
}

pub fn point(name: &'static str) -> Result<(), InjectedFault> {
    point_in(name, "")
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point_in(_name: &'static str, _scope: &str) -> Result<(), InjectedFault> {
    Ok(())
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    #[derive(Clone, Copy)]
    pub(super) enum Action {
        Abort,
        Stall,
        Panic,
        Error,
        Sleep(u64),
    }

    /// (action, times it may still fire (`None`: always), hits to let pass first).
    pub(super) type Armed = (Action, Option<u64>, u64);

    /// `name[@scope]=action[*count][+skip]` → (key, what is armed).
    fn parse(item: &str) -> Option<(String, Armed)> {
        let (point, action) = item.trim().split_once('=')?;
        let (action, skip) = match action.split_once('+') {
            Some((a, n)) => (a, n.parse::<u64>().unwrap_or(0)),
            None => (action, 0),
        };
        let (action, count) = match action.split_once('*') {
            Some((a, n)) => (a, n.parse::<u64>().ok()),
            None => (action, None),
        };
        let action = match action {
            "abort" => Action::Abort,
            "stall" => Action::Stall,
            "panic" => Action::Panic,
            "error" => Action::Error,
            other => Action::Sleep(other.strip_prefix("sleep")?.parse().ok()?),
        };
        Some((point.to_string(), (action, count, skip)))
    }

    pub(super) fn points() -> &'static Mutex<HashMap<String, Armed>> {
        static ARMED: OnceLock<Mutex<HashMap<String, Armed>>> = OnceLock::new();
        ARMED.get_or_init(|| {
            let spec = std::env::var("RTC_RECORDER_FAULTS").unwrap_or_default();
            Mutex::new(
                spec.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .filter_map(parse)
                    .collect(),
            )
        })
    }

    pub(super) fn arm(item: &str) -> bool {
        match parse(item) {
            Some((key, armed)) => {
                points().lock().unwrap_or_else(|p| p.into_inner()).insert(key, armed);
                true
            }
            None => false,
        }
    }
}

/// Arms a point from inside the process, in the syntax of one item of `RTC_RECORDER_FAULTS`
/// (for the in-process engine harness, whose tests share one process: scope each item by an id of
/// the test's own, `name@<conversationId>=...`). `false` when the item does not parse.
#[cfg(feature = "fault-injection")]
pub fn arm(item: &str) -> bool {
    armed::arm(item)
}

#[cfg(feature = "fault-injection")]
pub fn point_in(name: &'static str, scope: &str) -> Result<(), InjectedFault> {
    use armed::Action;
    let action = {
        let mut points = armed::points().lock().unwrap_or_else(|p| p.into_inner());
        let armed = points.iter_mut().find(|(key, _)| match key.split_once('@') {
            Some((point, filter)) => point == name && scope.contains(filter),
            None => key.as_str() == name,
        });
        match armed.map(|(_, v)| v) {
            None => return Ok(()),
            Some((_, Some(0), _)) => return Ok(()),
            Some((_, _, skip)) if *skip > 0 => {
                *skip -= 1;
                return Ok(());
            }
            Some((action, count, _)) => {
                if let Some(n) = count {
                    *n -= 1;
                }
                *action
            }
        }
    };
    tracing::warn!(point = name, "fault injected");
    match action {
        Action::Abort => std::process::abort(),
        Action::Stall => loop {
            std::thread::park();
        },
        Action::Panic => panic!("injected panic at {name}"),
        Action::Error => Err(InjectedFault(name)),
        Action::Sleep(millis) => {
            std::thread::sleep(std::time::Duration::from_millis(millis));
            Ok(())
        }
    }
}
