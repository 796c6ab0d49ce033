//! What a recorder hears from its streams: first media, disconnects, writer restarts, failures,
//! and the rebuild of a stream actor that crashed (within the restart budget).

use super::*;
use crate::store::{EventKind, OutboxEvent};

/// The error of a track that receives packets and writes no frame.
const NO_DECODABLE_MEDIA: &str = "NO_DECODABLE_MEDIA";

impl Recorder {
    /// A stream that cannot record any more: `FAILED` in the record; an instance left without a
    /// stream that can record is aborted, and what it recorded is finalized and uploaded.
    pub(super) fn stream_failed(&mut self, stream_id: &str, error: ErrorInfo, ctx: &mut Context<Self>) {
        self.last_error = Some(error.clone());
        if let Some(entry) = self.streams.iter_mut().find(|s| s.id == stream_id) {
            entry.link = StreamLink::Failed;
        }
        let result = self.store.update_instance(&self.instance_id, &mut |r| {
            if let Some(stream) = r.streams.iter_mut().find(|s| s.id == stream_id) {
                stream.state = StreamState::Failed;
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::error!(instance_id = %self.instance_id, error = %e, "cannot record a failed stream");
        }
        if !self.is_stopping() && self.streams.iter().all(|s| s.link.is_failed()) {
            let aborting = self.finalize(Ending::Abort(error), ctx).map(|result, act, _ctx| {
                if let Err(e) = result {
                    tracing::error!(instance_id = %act.instance_id, error = %e, "abort failed");
                }
            });
            ctx.spawn(aborting);
        } else {
            let flush = self.store.flush();
            actix::spawn(async move {
                let _ = flush.await;
            });
        }
    }

    /// Rebuilds a stream whose actor failed from its record in the store, once the failed actor
    /// released its ports and completed its files. Within the budget it records on (plain RTP
    /// re-binds its ports; a WHIP publisher must connect again, its connection ended with the
    /// actor); beyond it the stream is rebuilt only to finish its files and is `FAILED`.
    pub(super) fn restart_stream(&mut self, msg: StreamCrashed, ctx: &mut Context<Self>) {
        let StreamCrashed {
            stream_id,
            error,
            quiesced,
        } = msg;
        if self.is_stopping() || self.state.is_terminal() {
            return;
        }
        let recovery = self.recovery;
        let clock = self.media.clock.clone();
        let Some(entry) = self.streams.iter_mut().find(|s| s.id == stream_id) else {
            return;
        };
        let admitted = supervision::admit_restart(&mut entry.restart_times, clock.now(), &recovery);
        self.last_error = Some(error.clone());
        if admitted {
            entry.restarts += 1;
            self.restarts += 1;
            supervision::count_restart(SupervisedKind::Stream);
            self.enter_recovery();
        }
        tracing::warn!(instance_id = %self.instance_id, stream_id = %stream_id, admitted, "stream actor failed: rebuilding it from its record");
        // Nothing reaches the recorder until the replacement is in place: a stop meanwhile
        // would finish a dead stream.
        // Supervised like the handler's body: a panic while rebuilding crashes this recorder.
        let rebuilding = quiesced.into_actor(self).map(move |(), act, ctx| {
            let record = act
                .store
                .get_instance(&act.instance_id)
                .ok()
                .flatten()
                .and_then(|r| r.streams.into_iter().find(|s| s.id == stream_id));
            let Some(record) = record else {
                tracing::error!(instance_id = %act.instance_id, stream_id = %stream_id, "failed stream not in the record");
                return;
            };
            let is_rtp = record.rtp_session.is_some();
            let (stream, slot) = act.new_stream(record, true, ctx);
            let Some(entry) = act.streams.iter_mut().find(|s| s.id == stream_id) else {
                return;
            };
            entry.quiesce = slot;
            let stream = stream.after_restart(entry.restarts, entry.restart_times.clone(), error.clone());
            let exhausted = ErrorInfo::new(
                "RESTART_BUDGET_EXHAUSTED",
                format!(
                    "stream failed {} times within {} s; it is not restarted again (last: {})",
                    entry.restart_times.len(),
                    recovery.restart_window.as_secs(),
                    error.message
                ),
            );
            let stream = if admitted {
                stream
            } else {
                stream.failed_with(exhausted.clone())
            };
            entry.mailbox = Mailbox::new(stream.start());
            if !is_rtp || !admitted {
                entry.link = entry.link.disconnected(act.media.clock.now());
            }
            if !admitted {
                act.stream_failed(&stream_id, exhausted, ctx);
            }
        });
        ctx.wait(supervision::guard("StreamCrashed", Box::pin(rebuilding), ()));
    }
}

impl Handler<StreamNotice> for Recorder {
    type Result = ();

    fn handle(&mut self, msg: StreamNotice, ctx: &mut Self::Context) {
        self.guarded(ctx, "StreamNotice", |act, ctx| act.stream_notice(msg, ctx));
    }
}

impl Handler<StreamCrashed> for Recorder {
    type Result = ();

    fn handle(&mut self, msg: StreamCrashed, ctx: &mut Self::Context) {
        self.guarded(ctx, "StreamCrashed", |act, ctx| act.restart_stream(msg, ctx));
    }
}
impl Recorder {
    pub(super) fn stream_notice(&mut self, msg: StreamNotice, ctx: &mut Context<Self>) {
        match msg {
            StreamNotice::TrackWriting {
                stream_id,
                track_id,
                error,
            } => self.track_writing(&stream_id, &track_id, error),
            StreamNotice::MediaStarted {
                stream_id,
                track_id,
                at,
            } => self.media_arrived(Some((&stream_id, &track_id, at))),
            // Recording is paused, yet the publisher is there: the instance is live (a recovering
            // one is recovered), though nothing is written.
            StreamNotice::MediaWhilePaused { .. } => self.media_arrived(None),
            StreamNotice::Silences { stream_id, silences } => {
                let result = self.store.update_instance(&self.instance_id, &mut |r| {
                    if let Some(stream) = r.streams.iter_mut().find(|s| s.id == stream_id) {
                        stream.silences = silences.clone();
                    }
                    Ok(())
                });
                if let Err(e) = result {
                    tracing::error!(instance_id = %self.instance_id, error = %e, "cannot record a silence");
                }
            }
            StreamNotice::Orientation {
                stream_id,
                track_id,
                rotation,
            } => {
                let result = self.store.update_instance(&self.instance_id, &mut |r| {
                    let stream = r.streams.iter_mut().find(|s| s.id == stream_id);
                    if let Some(track) = stream.and_then(|s| s.tracks.iter_mut().find(|t| t.id == track_id)) {
                        track.rotation = Some(rotation);
                    }
                    Ok(())
                });
                if let Err(e) = result {
                    tracing::error!(instance_id = %self.instance_id, error = %e, "cannot record a video orientation");
                }
            }
            StreamNotice::SessionChanged { stream_id, rtp_session } => {
                let result = self.store.update_instance(&self.instance_id, &mut |r| {
                    if let Some(stream) = r.streams.iter_mut().find(|s| s.id == stream_id) {
                        stream.rtp_session = rtp_session.clone();
                    }
                    Ok(())
                });
                match result {
                    // Not acknowledged to anyone: written with the next flush (at most one group
                    // commit later); a crash before that re-binds with what was known.
                    Ok(_) => {
                        let flush = self.store.flush();
                        actix::spawn(async move {
                            let _ = flush.await;
                        });
                    }
                    Err(e) => {
                        tracing::error!(instance_id = %self.instance_id, error = %e, "cannot record the rtp session")
                    }
                }
            }
            StreamNotice::Restarting { stream_id } => {
                self.restarts += 1;
                self.last_error = Some(ErrorInfo::new(
                    "STREAM_RESTARTED",
                    format!("stream {stream_id} restarted after a writer failure"),
                ));
                let recovery = self.recovery;
                let clock = self.media.clock.clone();
                if let Some(entry) = self.streams.iter_mut().find(|s| s.id == stream_id) {
                    // The stream judged its budget itself; the entry keeps the history for a
                    // rebuilt actor.
                    entry.restarts += 1;
                    supervision::admit_restart(&mut entry.restart_times, clock.now(), &recovery);
                }
                self.enter_recovery();
            }
            StreamNotice::Failed { stream_id, error } => self.stream_failed(&stream_id, error, ctx),
            StreamNotice::Disconnected { stream_id, session_id } => {
                if let Some(entry) = self.streams.iter_mut().find(|s| s.id == stream_id) {
                    if entry.sessions.last() == Some(&session_id) {
                        entry.link = entry.link.disconnected(self.media.clock.now());
                    }
                }
            }
        }
    }
}

impl Recorder {
    /// A track that cannot write (or writes again): its `localStorage.error`, the instance's
    /// `error` while one of its tracks has this one, and the webhook's event, in one commit.
    fn track_writing(&mut self, stream_id: &str, track_id: &str, error: Option<ErrorInfo>) {
        let now = self.media.clock.utc();
        if let Some(e) = &error {
            self.last_error = Some(e.clone());
        }
        let result = self.store.transaction(&mut |tx| {
            let record = tx.update_instance(&self.instance_id, &mut |r| {
                let Some(track) = r
                    .streams
                    .iter_mut()
                    .find(|s| s.id == stream_id)
                    .and_then(|s| s.tracks.iter_mut().find(|t| t.id == track_id))
                else {
                    return Ok(());
                };
                track.local.error = error.clone();
                let still_failing = r
                    .streams
                    .iter()
                    .flat_map(|s| s.tracks.iter())
                    .find_map(|t| t.local.error.clone().filter(|e| e.code == NO_DECODABLE_MEDIA));
                let owned = r.error.as_ref().is_none_or(|e| e.code == NO_DECODABLE_MEDIA);
                if owned && !r.state.is_terminal() {
                    r.error = still_failing;
                }
                Ok(())
            })?;
            let (kind, mut data) = match &error {
                Some(e) => (
                    EventKind::TrackError,
                    serde_json::json!({"code": e.code, "message": e.message}),
                ),
                None => (EventKind::TrackRecovered, serde_json::json!({})),
            };
            data["streamId"] = stream_id.into();
            data["trackId"] = track_id.into();
            tx.put_event(&OutboxEvent::of(&record, kind, now, data))?;
            Ok(())
        });
        match result {
            Ok(()) => {
                let flush = self.store.flush();
                actix::spawn(async move {
                    let _ = flush.await;
                });
            }
            Err(e) => {
                tracing::error!(instance_id = %self.instance_id, error = %e, "cannot record a track that cannot write")
            }
        }
    }

    /// Media arrived: the instance is `ACTIVE` (from `INITIALISED`, or from `PENDING_RECOVERY`
    /// with `recovered`); `written` names the track whose first frame went into its file (its
    /// and its stream's start), `None` when the media is dropped by a pause.
    fn media_arrived(&mut self, written: Option<(&str, &str, chrono::DateTime<chrono::Utc>)>) {
        let mut became_active = false;
        let now = self.media.clock.utc();
        let result = self.store.update_instance(&self.instance_id, &mut |r| {
            became_active = false;
            match r.state {
                InstanceState::Initialised => {
                    r.transition(InstanceState::Active, now)?;
                    became_active = true;
                }
                InstanceState::PendingRecovery => {
                    r.transition(InstanceState::Active, now)?;
                    r.recovered = Some(now);
                    became_active = true;
                }
                _ => {}
            }
            if let Some((stream_id, track_id, at)) = written {
                if let Some(stream) = r.streams.iter_mut().find(|s| s.id == stream_id) {
                    stream.started.get_or_insert(at);
                    if let Some(track) = stream.tracks.iter_mut().find(|t| t.id == track_id) {
                        track.started.get_or_insert(at);
                        track.local.created.get_or_insert(now);
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(record) => {
                self.state = record.state;
                if became_active {
                    tracing::info!(instance_id = %self.instance_id, "recorder instance active: first media");
                }
                let flush = self.store.flush();
                let instance_id = self.instance_id.clone();
                actix::spawn(async move {
                    if let Err(e) = flush.await {
                        tracing::error!(instance_id = %instance_id, error = %e, "state store flush failed");
                    }
                });
            }
            Err(e) => tracing::error!(instance_id = %self.instance_id, error = %e, "cannot record first media"),
        }
    }
}
