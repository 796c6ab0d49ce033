//! The end of a recorder instance: a client's stop or the recorder's own abort. Every stream is
//! finished (files finalized and joined) before anything is committed; then [`plan_end`] decides
//! the terminal record and what to queue, and one transaction writes it all.

use super::*;

impl Handler<AbortRecorder> for Recorder {
    type Result = ResponseActFuture<Self, Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, msg: AbortRecorder, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, "AbortRecorder", |act, ctx| act.finalize(Ending::Abort(msg.0), ctx))
            .unwrap_or_else(|| Box::pin(fut::ready(Err(restarting()))))
    }
}
impl Handler<StopRecorder> for Recorder {
    type Result = ResponseActFuture<Self, Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, _msg: StopRecorder, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, "StopRecorder", |act, ctx| act.finalize(Ending::Stop, ctx))
            .unwrap_or_else(|| Box::pin(fut::ready(Err(restarting()))))
    }
}

impl Recorder {
    /// Finishes every stream (files finalized and joined), commits the terminal state with every
    /// artefact queued for upload, tells the registry and ends the actor. A second call while
    /// one runs waits for it and answers what it committed.
    pub(super) fn finalize(
        &mut self,
        ending: Ending,
        _ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<InstanceRecord, EngineError>> {
        let handler = ending.handler();
        if let Phase::Stopping(finalized) = &self.phase {
            let finalized = finalized.clone();
            let store = self.store.clone();
            let instance_id = self.instance_id.clone();
            // If the finalization it waits for fails by a panic, this actor ends and the waiter
            // with it: its caller gets an error (a closed mailbox), never a hang.
            return Box::pin(
                async move {
                    let _ = finalized.await;
                    match store.get_instance(&instance_id)? {
                        Some(record) if record.state.is_terminal() => Ok(record),
                        _ => Err(EngineError::Unavailable(
                            "the recorder instance could not be stopped".into(),
                        )),
                    }
                }
                .into_actor(self),
            );
        }
        let (done_tx, done_rx) = oneshot::channel();
        self.phase = Phase::Stopping(done_rx.shared());
        let streams: Vec<_> = self
            .streams
            .iter()
            .map(|s| (s.mailbox.clone(), s.quiesce.clone()))
            .collect();
        let store = self.store.clone();
        let instance_id = self.instance_id.clone();
        let compose = self.compose;
        let clock = self.media.clock.clone();
        // A stop is marked durably before any file is touched: if the process ends while the
        // files are finalized, boot finishes this stop (see `started`) instead of waiting for
        // media that will not come.
        let marked = match ending {
            Ending::Stop | Ending::Expire => {
                let expired = ending == Ending::Expire;
                store
                    .update_instance(&instance_id, &mut |r| {
                        r.stop_requested.get_or_insert_with(|| clock.utc());
                        // Durable with the marker: a stop finished after a restart keeps it.
                        if expired {
                            r.stop_reason = Some(crate::domain::STOP_REASON_MAX_DURATION.into());
                        }
                        Ok(())
                    })
                    .map(|_| ())
            }
            Ending::Abort(_) => Ok(()),
        };
        let marker_flush = store.flush();
        // Every file is finalized (trailer, cues, segments joined) before the stop commits:
        // STOPPED means the recording on disk is complete.
        let finishing = async move {
            marked?;
            marker_flush.await?;
            let finished = join_all(streams.iter().map(|(s, _)| s.send(FinishStream))).await;
            // A stream actor that failed (before or during its finish) is gone, but its writer
            // threads are still completing its files: wait for that before this stop goes on —
            // a failed finish makes this recorder crash and its rebuild read those files.
            for ((_, slot), answer) in streams.iter().zip(&finished) {
                if !matches!(answer, Ok(Ok(_))) {
                    let quiescing = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Some(quiescing) = quiescing {
                        quiescing.await;
                    }
                }
            }
            // After the files, before the commit: the step a crash during stop interrupts.
            crate::fault::point(crate::fault::FINALIZE).map_err(|e| EngineError::Unavailable(e.to_string()))?;
            Ok::<_, EngineError>(finished)
        };
        // The continuation is supervised (`supervision::guard`): a panic anywhere in it crashes
        // this recorder and answers `restarting()`. The conversation rebuilds the recorder from
        // the record, whose `stop_requested` makes the new actor finish the stop from the files
        // on disk (see `started`) — the path of a process killed during a stop — so the stop is
        // committed once, by whichever actor gets through it.
        let continuation = finishing.into_actor(self).then(move |finished, act, ctx| {
            act.continuation_point(handler);
            // A stream whose finish failed (its actor crashed in its continuation) left its
            // files complete on disk but its record does not name them: committing now would
            // drop its tracks. The recorder crashes instead and its rebuild finishes the stop
            // from the files, as after a restart.
            let lost: Vec<String> = match &finished {
                Ok(finished) => finished
                    .iter()
                    .filter_map(|f| match f {
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(e) => Some(e.to_string()),
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            if !lost.is_empty() {
                act.crash(ctx, handler, format!("a stream could not finish: {}", lost.join("; ")));
            }
            let crashed = act.supervision.has_crashed();
            let result = if crashed {
                Err(restarting())
            } else {
                finished.and_then(|finished| {
                    let finished: Vec<StreamRecord> = finished.into_iter().flatten().flatten().collect();
                    commit_end(store.as_ref(), &instance_id, &finished, &ending, compose, &clock)
                })
            };
            let flush = store.flush();
            async move {
                let record = result?;
                flush.await?;
                Ok(record)
            }
            .into_actor(act)
            .map(move |result: Result<InstanceRecord, EngineError>, act, ctx| {
                match &result {
                    Ok(record) => {
                        act.state = record.state;
                        tracing::info!(instance_id = %record.instance_id, state = record.state.as_str(), "recorder instance ended");
                        if let Some(uploader) = &act.uploader {
                            uploader.do_send(Kick);
                        }
                        if let Some(ended) = &act.ended {
                            ended.do_send(InstanceEnded {
                                organization_id: act.organization_id.clone(),
                                conversation_id: act.conversation_id.clone(),
                                instance_id: act.instance_id.clone(),
                            });
                        }
                        ctx.stop();
                    }
                    Err(_) => {
                        act.phase = Phase::Running { resume_stop: false };
                    }
                }
                let _ = done_tx.send(());
                result
            })
        });
        Box::pin(supervision::guard(handler, Box::pin(continuation), Err(restarting())))
    }
}
/// Commits the end of an instance in one transaction: the terminal state with the streams' final
/// records, the composition job and every upload job, as `plan_end` decides from the record the
/// transaction reads (a retried transaction plans again). A crash anywhere before its commit
/// leaves the instance live with `stop_requested`, and the next recorder stops it again.
fn commit_end(
    store: &dyn StateStore,
    instance_id: &str,
    finished: &[StreamRecord],
    ending: &Ending,
    compose: bool,
    clock: &crate::clock::Clock,
) -> Result<InstanceRecord, EngineError> {
    // Read before the transaction: whether an earlier instance of the composition
    // recorded media (this one's tracks are in the record the transaction reads).
    let others_have_media = compose && conversation_has_media(store, instance_id)?;
    let mut committed = None;
    // One transaction: the terminal state with the streams' final records, the
    // composition job and every upload job. A crash anywhere before its commit leaves
    // the instance live with `stop_requested`, and the next recorder stops it again.
    let context = EndContext {
        compose,
        others_have_media,
    };
    store.transaction(&mut |tx| {
        // The plan is made from the record the transaction reads (a retried
        // transaction plans again) and carried out here in full.
        let mut plan = EndPlan::AlreadyEnded;
        let record = tx.update_instance(instance_id, &mut |r| {
            plan = plan_end(r, finished, ending, context, clock.utc())?;
            if let EndPlan::Commit { record, .. } = &plan {
                *r = (**record).clone();
            }
            Ok(())
        })?;
        tx.step("stop", "terminal_state_written", instance_id);
        let EndPlan::Commit {
            artefacts, composition, ..
        } = std::mem::replace(&mut plan, EndPlan::AlreadyEnded)
        else {
            // A stop that queued behind another one: the first already did the work.
            committed = Some(record);
            return Ok(());
        };
        // The composition job goes with the upload jobs: an uploader that sees it
        // pending keeps the local track files for the compositor.
        if composition != CompositionPlan::None {
            let now = clock.utc();
            let id = CompositionId::of_instance(&record);
            tx.queue_composition(&id, &record.instance_id, now)?;
            if let CompositionPlan::QueueFailed(error) = &composition {
                // The outcome is known now: the compositor gets no job.
                tx.update_composition(&id, &mut |c| {
                    c.state = CompositionState::Failed;
                    c.started = Some(now);
                    c.stopped = Some(now);
                    c.error = Some(error.clone());
                    Ok(())
                })?;
                tx.put_event(&OutboxEvent::of(
                    &record,
                    EventKind::CompositionFailed,
                    now,
                    serde_json::json!({ "error": { "code": error.code, "message": error.message } }),
                ))?;
            }
            tx.step("stop", "composition_queued", instance_id);
        }
        for (n, artefact) in artefacts.into_iter().enumerate() {
            enqueue_artefact(tx, &record, artefact)?;
            if n == 0 {
                tx.step("stop", "first_job_queued", instance_id);
            }
        }
        committed = Some(record);
        Ok(())
    })?;
    Ok(committed.expect("a committed transaction set it"))
}

/// Whether an ended instance of the composition of `instance_id` other than itself (its
/// application's instances of its conversation) has a track file.
pub(super) fn conversation_has_media(store: &dyn StateStore, instance_id: &str) -> Result<bool, EngineError> {
    let Some(record) = store.get_instance(instance_id)? else {
        return Ok(false);
    };
    let composition = CompositionId::of_instance(&record);
    Ok(store
        .conversation_instances(&record.organization_id, &record.conversation_id)?
        .iter()
        .filter(|i| i.instance_id != instance_id && i.state.is_terminal() && composition.includes(i))
        .any(has_media))
}

/// The process is going down (a SIGTERM drain): ingest ends and every stream completes its
/// files and ends, and nothing is committed. The instance stays live in the store, so the next
/// start of the node resumes it as after a crash (plain-RTP sessions re-bound on their ports,
/// WHIP publishers reconnecting), from files that are now complete. A stop under way is let
/// finish first: it commits as one transaction either way.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownRecorder;

impl Handler<ShutdownRecorder> for Recorder {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: ShutdownRecorder, _ctx: &mut Self::Context) -> Self::Result {
        let stopping = match &self.phase {
            Phase::Stopping(finalized) => Some(finalized.clone()),
            Phase::Running { .. } => None,
        };
        // From here the recorder takes no publisher and its own timers (recovery window,
        // maximum duration) end nothing: a stop they begin waits for this and finds the
        // instance still live.
        let (shut_tx, shut_rx) = oneshot::channel();
        self.phase = Phase::Stopping(shut_rx.shared());
        Box::pin(
            async move {
                if let Some(finalized) = stopping {
                    let _ = finalized.await;
                }
            }
            .into_actor(self)
            .then(|(), act, _ctx| {
                let streams: Vec<_> = act.streams.iter().map(|s| s.mailbox.addr().clone()).collect();
                retire_streams(streams).into_actor(act)
            })
            .map(move |(), _act, ctx| {
                drop(shut_tx);
                ctx.stop();
            }),
        )
    }
}
