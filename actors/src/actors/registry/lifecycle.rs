//! The life of a recording as the Registry routes it: start (one live instance per
//! conversation, one owner per conference), stop, the end of an instance, and publishers routed
//! to the conversation that records their conference.

use super::*;

impl Handler<StartRecording> for Registry {
    type Result = ResponseFuture<Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, msg: StartRecording, _ctx: &mut Self::Context) -> Self::Result {
        let result = self.start(msg);
        let flush = self.store.flush();
        async move {
            let record = result?;
            flush.await?;
            Ok(record)
        }
        .boxed_local()
    }
}

impl Registry {
    /// Creates the instance (one live instance per conversation, one owner per conference,
    /// within the organization's live-instance limit) and its actors; durable once the caller
    /// has awaited the store's flush.
    fn start(&mut self, msg: StartRecording) -> Result<InstanceRecord, EngineError> {
        let profile = self
            .config
            .application(&msg.organization_id, &msg.application_id)
            .ok_or_else(|| {
                EngineError::not_found(format!(
                    "applicationId {} is not configured for this organization",
                    msg.application_id
                ))
            })?;
        let key = (msg.organization_id.to_string(), msg.conversation_id.to_string());
        if let Some(live) = self.live.get(&key) {
            // Another application's instance id is not the caller's to know.
            let id = if live.application_id == msg.application_id {
                format!(" {}", live.instance_id)
            } else {
                String::new()
            };
            return Err(EngineError::conflict(format!(
                "conversation {} already has a live recorder instance{id}",
                msg.conversation_id
            )));
        }
        let max_live = self.config.limits.max_live_instances_per_organization;
        if self.live.keys().filter(|(org, _)| *org == msg.organization_id).count() >= max_live {
            return Err(EngineError::limit(
                "max_live_instances_per_organization",
                format!("the organization has {max_live} live recorder instances on this node; stop one first"),
            ));
        }
        let conference = (msg.organization_id.to_string(), msg.conference_id.to_string());
        if self
            .by_conference
            .get(&conference)
            .is_some_and(|owner| self.live.contains_key(owner))
        {
            return Err(EngineError::conflict(format!(
                "conference {} is already recorded by a live recorder instance",
                msg.conference_id
            )));
        }
        // A node at its capacity takes no new instance (nothing is created or stored).
        self.config.media.capacity.check_start()?;
        let now = self.config.clock().utc();
        let record = InstanceRecord {
            schema_version: RECORD_SCHEMA_VERSION,
            instance_id: uuid::Uuid::new_v4().to_string(),
            recorder_id: self.config.recorder_id.clone(),
            organization_id: msg.organization_id.into_string(),
            application_id: msg.application_id.into_string(),
            conversation_id: msg.conversation_id.into_string(),
            conference_id: msg.conference_id.into_string(),
            audio: msg.audio,
            video: msg.video,
            state: InstanceState::Initialised,
            created: now,
            started: None,
            stopped: None,
            recovered: None,
            error: None,
            provider: profile.backend.provider(),
            storage_url: profile.backend.url(),
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
        };
        self.store.insert_instance(&record)?;
        self.spawn_conversation(&record);
        self.num_started += 1;
        tracing::info!(instance_id = %record.instance_id, conversation_id = %record.conversation_id, "recorder instance created");
        Ok(record)
    }
}

impl Handler<StopRecording> for Registry {
    type Result = ResponseActFuture<Self, Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, msg: StopRecording, _ctx: &mut Self::Context) -> Self::Result {
        let record = match self.find(&msg.0) {
            Ok(record) => record,
            Err(err) => return Box::pin(fut::ready(Err(err))),
        };
        let key = (record.organization_id.clone(), record.conversation_id.clone());
        if record.state.is_terminal() {
            // Already ended (a stop that finished by itself after a failure, or a stop before
            // this one), even if its actors have not told this registry yet: stopping again is
            // idempotent and answers the state it ended in, without asking actors on their way out.
            return Box::pin(fut::ready(Ok(record)));
        }
        let conversation = match self.live.get(&key) {
            Some(live) if live.instance_id == record.instance_id => live.conversation.clone(),
            // Not live: stopping again is idempotent and answers the state it ended in.
            _ => return Box::pin(fut::ready(Ok(record))),
        };
        let instance_id = record.instance_id.clone();
        let store = self.store.clone();
        Box::pin(
            async move {
                match conversation.send(StopInstance).await {
                    // The recorder committed STOPPED, the upload jobs and the composition job in
                    // one durable update before answering.
                    Ok(result) => result,
                    // The conversation ended between our lookup and this send: a concurrent
                    // stop won, and its result is in the store.
                    Err(_) => match store.get_instance(&instance_id)? {
                        Some(record) if record.state.is_terminal() => Ok(record),
                        _ => Err(EngineError::Unavailable(
                            "the recorder instance is not answering".into(),
                        )),
                    },
                }
            }
            .into_actor(self)
            .map(move |result, act, _ctx| {
                if let Ok(stopped) = &result {
                    if act.end_live(&key, &stopped.instance_id) {
                        act.num_stopped += 1;
                    }
                    act.kick_uploader(stopped);
                    act.compositor.do_send(CompositionQueued);
                }
                result
            }),
        )
    }
}

impl Handler<EraseRecordings> for Registry {
    type Result = ResponseFuture<Result<Vec<InstanceRecord>, EngineError>>;

    fn handle(&mut self, msg: EraseRecordings, _ctx: &mut Self::Context) -> Self::Result {
        let result = self.erase(&msg);
        let flush = self.store.flush();
        let uploaders: Vec<_> = match &result {
            Ok(records) => records
                .iter()
                .filter_map(|r| {
                    self.uploaders
                        .get(&(r.organization_id.clone(), r.application_id.clone()))
                        .cloned()
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        Box::pin(async move {
            let records = result?;
            flush.await?;
            for uploader in uploaders {
                uploader.do_send(Kick);
            }
            Ok(records)
        })
    }
}

impl Registry {
    /// Marks the instances erased (asked for) and queues their erasure jobs, cancelling their
    /// uploads, in one transaction.
    fn erase(&mut self, msg: &EraseRecordings) -> Result<Vec<InstanceRecord>, EngineError> {
        let instances: Vec<InstanceRecord> = self
            .store
            .conversation_instances(&msg.organization_id, &msg.conversation_id)?
            .into_iter()
            .filter(|r| may_use(&msg.applications, &r.application_id))
            .filter(|r| {
                msg.instance_opt
                    .as_ref()
                    .is_none_or(|(recorder, instance)| r.recorder_id == *recorder && r.instance_id == *instance)
            })
            .collect();
        if instances.is_empty() {
            return Err(EngineError::not_found(match &msg.instance_opt {
                Some((_, instance)) => format!(
                    "no recorder instance {instance} in conversation {}",
                    msg.conversation_id
                ),
                None => format!("no recordings for conversation {}", msg.conversation_id),
            }));
        }
        if let Some(live) = instances.iter().find(|r| r.state.is_live()) {
            return Err(EngineError::conflict(format!(
                "recorder instance {} is {}: stop it before erasing its recordings",
                live.instance_id, live.state
            )));
        }
        let now = self.config.clock().utc();
        // The uploads still queued for these instances are cancelled with the request.
        let mut queued = Vec::new();
        for record in &instances {
            queued.extend(
                self.store
                    .profile_jobs(&record.organization_id, &record.application_id)?
                    .into_iter()
                    .filter(|j| j.instance_id == record.instance_id && j.artefact != ArtefactKind::Erasure),
            );
        }
        let mut erased = Vec::new();
        self.store.transaction(&mut |tx| {
            erased.clear();
            for record in &instances {
                let updated = tx.update_instance(&record.instance_id, &mut |r| {
                    if r.state.is_live() {
                        return Err(StoreError::Rejected {
                            code: "LIVE",
                            message: format!("recorder instance {} is live", r.instance_id),
                        });
                    }
                    if r.erasure.is_none() {
                        r.erasure = Some(ErasureRecord {
                            requested: now,
                            erased: None,
                        });
                    }
                    Ok(())
                })?;
                if updated.erasure.is_some_and(|e| e.erased.is_none()) {
                    for job in queued.iter().filter(|j| j.instance_id == updated.instance_id) {
                        tx.finish_job(&job.key, job.generation)?;
                    }
                    tx.step("erase", "jobs_cancelled", &updated.instance_id);
                    crate::store::artefacts::enqueue_artefact(tx, &updated, ArtefactKind::Erasure)?;
                }
                erased.push(updated);
            }
            Ok(())
        })?;
        tracing::info!(conversation_id = %msg.conversation_id, num_instances = erased.len(), "erasure requested");
        Ok(erased)
    }
}

impl Handler<SetPaused> for Registry {
    type Result = ResponseFuture<Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, msg: SetPaused, _ctx: &mut Self::Context) -> Self::Result {
        let record = match self.find(&msg.instance) {
            Ok(record) => record,
            Err(err) => return Box::pin(fut::ready(Err(err))),
        };
        let key = (record.organization_id.clone(), record.conversation_id.clone());
        let conversation = match self.live.get(&key) {
            Some(live) if live.instance_id == record.instance_id => live.conversation.clone(),
            _ => {
                return Box::pin(fut::ready(Err(EngineError::conflict(format!(
                    "recorder instance {} is {}: only a live instance is paused or resumed",
                    record.instance_id, record.state
                )))))
            }
        };
        Box::pin(async move {
            conversation
                .send(PauseRecorder { paused: msg.paused })
                .await
                .map_err(|_| EngineError::conflict("the recorder instance ended meanwhile"))?
        })
    }
}

impl Registry {
    /// The live conversation recording `conference_id` for `organization_id`; with a publish
    /// token, only if its live instance is the token's; with a key limited to some applications,
    /// only if the instance is of one of them.
    fn conference(
        &self,
        organization_id: &str,
        conference_id: &str,
        instance_id_opt: Option<&str>,
        applications: &Applications,
    ) -> Result<Mailbox<Conversation>, EngineError> {
        let missing = || EngineError::not_found(format!("no live recorder instance for conference {conference_id}"));
        let key = self
            .by_conference
            .get(&(organization_id.to_string(), conference_id.to_string()))
            .ok_or_else(missing)?;
        let live = self.live.get(key).ok_or_else(missing)?;
        if instance_id_opt.is_some_and(|id| id != live.instance_id) || !may_use(applications, &live.application_id) {
            return Err(missing());
        }
        Ok(live.conversation.clone())
    }
}

impl Handler<InstanceEnded> for Registry {
    type Result = ();

    fn handle(&mut self, msg: InstanceEnded, _ctx: &mut Self::Context) {
        let key = (msg.organization_id, msg.conversation_id);
        if self.end_live(&key, &msg.instance_id) {
            tracing::info!(instance_id = %msg.instance_id, "recorder instance ended by itself");
        }
        // An instance that ended by itself (aborted) queued its conversation's composition.
        self.compositor.do_send(CompositionQueued);
    }
}

impl Handler<Publish> for Registry {
    type Result = ResponseFuture<Result<PublishAnswer, EngineError>>;

    fn handle(&mut self, mut msg: Publish, _ctx: &mut Self::Context) -> Self::Result {
        let (limit, max) = match msg.transport {
            IngestTransport::Rtp => (
                "max_rtp_sessions_per_organization",
                self.config.limits.max_rtp_sessions_per_organization,
            ),
            IngestTransport::Whip => (
                "max_whip_sessions_per_organization",
                self.config.limits.max_whip_sessions_per_organization,
            ),
        };
        let permit = self.sessions.try_acquire(&msg.organization_id, msg.transport, max);
        let Some(permit) = permit else {
            return async move {
                Err(EngineError::limit(
                    limit,
                    format!("the organization has {max} sessions of this transport open on this node"),
                ))
            }
            .boxed_local();
        };
        // Admission: the session's cost against the node's budget, held as long as the session.
        let permit = match self.config.media.capacity.admit(msg.transport) {
            Ok(capacity) => permit.with_capacity(capacity),
            Err(refused) => return async move { Err(refused.into()) }.boxed_local(),
        };
        msg.permit = Some(Arc::new(permit));
        let conversation = self.conference(
            &msg.organization_id,
            &msg.conference_id,
            msg.instance_id_opt.as_deref(),
            &msg.applications,
        );
        async move { conversation?.send(msg).await? }.boxed_local()
    }
}

impl Handler<Unpublish> for Registry {
    type Result = ResponseFuture<Result<(), EngineError>>;

    fn handle(&mut self, msg: Unpublish, _ctx: &mut Self::Context) -> Self::Result {
        let conversation = self.conference(
            &msg.organization_id,
            &msg.conference_id,
            msg.instance_id_opt.as_deref(),
            &msg.applications,
        );
        async move { conversation?.send(msg).await? }.boxed_local()
    }
}

impl Handler<GetActive> for Registry {
    type Result = Result<InstanceRecord, EngineError>;

    fn handle(&mut self, msg: GetActive, _ctx: &mut Self::Context) -> Self::Result {
        let live = self
            .live
            .get(&(msg.organization_id.to_string(), msg.conversation_id.clone()))
            .ok_or_else(|| {
                EngineError::not_found(format!(
                    "conversation {} has no live recorder instance",
                    msg.conversation_id
                ))
            })?;
        self.store.get_instance(&live.instance_id)?.ok_or_else(|| {
            EngineError::not_found(format!(
                "conversation {} has no live recorder instance",
                msg.conversation_id
            ))
        })
    }
}

impl Handler<CountLive> for Registry {
    type Result = usize;

    fn handle(&mut self, _msg: CountLive, _ctx: &mut Self::Context) -> usize {
        self.live.len()
    }
}

impl Handler<ShutdownNode> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: ShutdownNode, _ctx: &mut Self::Context) -> Self::Result {
        // Nothing new from here, whoever asks.
        self.config.media.capacity.set_draining();
        let conversations: Vec<_> = self.live.values().map(|l| l.conversation.clone()).collect();
        let mut others: Vec<Recipient<Halt>> = Vec::new();
        others.extend(self.uploaders.values().map(|u| u.addr().clone().recipient()));
        others.extend(self.notifiers.values().map(|n| n.addr().clone().recipient()));
        others.push(self.compositor.addr().clone().recipient());
        tracing::info!(
            num_live = conversations.len(),
            "shutting down: live instances complete their files and resume at the next start"
        );
        Box::pin(
            async move {
                join_all(conversations.iter().map(|c| c.send(ShutdownConversation))).await;
                join_all(others.iter().map(|o| o.send(Halt))).await;
            }
            .into_actor(self)
            .map(|(), act, _ctx| {
                act.live.clear();
                act.by_conference.clear();
            }),
        )
    }
}
