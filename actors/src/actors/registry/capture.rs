//! Capture beside the media: chat transcript lines and co-browse events, to the live instance or,
//! after stop, to the ended one (with its upload jobs), each one command in one transaction.

use super::*;

impl Handler<AddTranscript> for Registry {
    type Result = ResponseFuture<Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, msg: AddTranscript, _ctx: &mut Self::Context) -> Self::Result {
        let result = self.add_transcript(&msg);
        let flush = self.store.flush();
        let uploader = result.as_ref().ok().and_then(|(r, _)| {
            self.uploaders
                .get(&(r.organization_id.clone(), r.application_id.clone()))
                .cloned()
        });
        async move {
            let (record, needs_upload) = result?;
            flush.await?;
            if needs_upload {
                if let Some(uploader) = uploader {
                    uploader.do_send(Kick);
                }
            }
            Ok(record)
        }
        .boxed_local()
    }
}

impl Handler<AddCobrowseEvent> for Registry {
    type Result = ResponseFuture<Result<CobrowseAccepted, EngineError>>;

    fn handle(&mut self, msg: AddCobrowseEvent, _ctx: &mut Self::Context) -> Self::Result {
        let result = self.add_cobrowse_event(&msg);
        let flush = self.store.flush();
        let uploader = result.as_ref().ok().and_then(|(r, _, _)| {
            self.uploaders
                .get(&(r.organization_id.clone(), r.application_id.clone()))
                .cloned()
        });
        async move {
            let (instance, was_new, needs_upload) = result?;
            flush.await?;
            if needs_upload {
                if let Some(uploader) = uploader {
                    uploader.do_send(Kick);
                }
            }
            Ok(CobrowseAccepted { instance, was_new })
        }
        .boxed_local()
    }
}

impl Registry {
    /// Appends the lines in one transaction; the instance after it, and whether its transcript
    /// must be uploaded (again).
    fn add_transcript(&mut self, msg: &AddTranscript) -> Result<(InstanceRecord, bool), EngineError> {
        let record = self.find(&msg.instance)?;
        if self.discards_while_paused(&record) {
            return Ok((self.discard(&record, msg.entries.len() as u64)?, false));
        }
        // The registry handles one add at a time, so the check and the append cannot race.
        let max = self.config.limits.max_transcript_entries_per_instance;
        if record.num_transcript_entries.saturating_add(msg.entries.len() as u64) > max {
            return Err(EngineError::limit(
                "max_transcript_entries_per_instance",
                format!(
                    "the recorder instance has {} chat lines; {} more would pass {max}",
                    record.num_transcript_entries,
                    msg.entries.len()
                ),
            ));
        }
        // One transaction: the lines, the instance's count and (after stop) the upload job
        // land together. Decided inside it: if a stop commits first this add sees it, and if
        // this add commits first the stop sees the entries; either way the artefact is queued.
        let mut needs_upload = false;
        let mut updated = None;
        // Where the transcript will be stored (the API shows it from the first line on).
        let location = self
            .config
            .application(&record.organization_id, &record.application_id)
            .map(|p| {
                let key = p.stored_key(&record.transcript_key(), &ArtefactKind::ChatTranscript);
                p.store_of(false).location(&key)
            })
            .unwrap_or_default();
        self.store.transaction(&mut |tx| {
            let num_entries = tx.append_transcript(&record.instance_id, &msg.entries)?;
            tx.step("transcript_add", "lines_written", &record.instance_id);
            let now = self.config.clock().utc();
            let record = tx.update_instance(&record.instance_id, &mut |r| {
                r.num_transcript_entries = num_entries;
                r.transcript
                    .get_or_insert_with(|| TranscriptArtefact::new(now, location.clone()));
                Ok(())
            })?;
            needs_upload = record.state.is_terminal();
            if needs_upload {
                tx.step("transcript_add", "count_written", &record.instance_id);
                enqueue_with_manifest(tx, &record, ArtefactKind::ChatTranscript)?;
            }
            updated = Some(record);
            Ok(())
        })?;
        let record = updated.expect("a committed transaction set it");
        Ok((record, needs_upload))
    }

    /// Keeps the event in one transaction (a repeated `sequenceId` changes nothing); the instance
    /// after it, whether the event was new, and whether its session must be uploaded (again).
    fn add_cobrowse_event(&mut self, msg: &AddCobrowseEvent) -> Result<(InstanceRecord, bool, bool), EngineError> {
        let record = self.find(&msg.instance)?;
        if self.discards_while_paused(&record) {
            return Ok((self.discard(&record, 1)?, false, false));
        }
        let limits = &self.config.limits;
        if !record.cobrowse_sessions.contains_key(&msg.event.session_id)
            && record.cobrowse_sessions.len() >= limits.max_cobrowse_sessions_per_instance
        {
            return Err(EngineError::limit(
                "max_cobrowse_sessions_per_instance",
                format!(
                    "the recorder instance has {} co-browse sessions",
                    record.cobrowse_sessions.len()
                ),
            ));
        }
        let num_events: u64 = record.cobrowse_sessions.values().map(|s| s.num_events).sum();
        if num_events >= limits.max_cobrowse_events_per_instance {
            return Err(EngineError::limit(
                "max_cobrowse_events_per_instance",
                format!("the recorder instance has {num_events} co-browse events"),
            ));
        }
        // One transaction: the event, the session's count and (after stop) the upload job.
        let session_id = msg.event.session_id.clone();
        let (mut was_new, mut needs_upload, mut updated) = (false, false, None);
        self.store.transaction(&mut |tx| {
            was_new = tx.put_cobrowse_event(&record.instance_id, &msg.event)?;
            tx.step("cobrowse_event", "event_written", &record.instance_id);
            let record = tx.update_instance(&record.instance_id, &mut |r| {
                let session = r.cobrowse_sessions.entry(session_id.clone()).or_default();
                if was_new {
                    session.num_events += 1;
                }
                Ok(())
            })?;
            needs_upload = was_new && record.state.is_terminal();
            if needs_upload {
                tx.step("cobrowse_event", "count_written", &record.instance_id);
                enqueue_with_manifest(
                    tx,
                    &record,
                    ArtefactKind::CobrowseSession {
                        session_id: session_id.clone(),
                    },
                )?;
            }
            updated = Some(record);
            Ok(())
        })?;
        let record = updated.expect("a committed transaction set it");
        Ok((record, was_new, needs_upload))
    }

    /// Whether what is captured now is discarded: the instance is paused and its application
    /// keeps no chat or co-browse while paused.
    fn discards_while_paused(&self, record: &InstanceRecord) -> bool {
        record.is_paused()
            && self
                .config
                .application(&record.organization_id, &record.application_id)
                .is_some_and(|p| p.policy.pause_capture == PauseCapture::Drop)
    }

    /// Counts `n` discarded items on the instance (durable with the caller's flush).
    fn discard(&self, record: &InstanceRecord, n: u64) -> Result<InstanceRecord, EngineError> {
        Ok(self.store.update_instance(&record.instance_id, &mut |r| {
            r.num_discarded_while_paused += n;
            Ok(())
        })?)
    }
}
