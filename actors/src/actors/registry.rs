//! The root actor: owns the index of live conversations, answers the front's queries from the
//! state store, and on boot rebuilds the live part of the tree from what the store kept.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use futures_util::future::join_all;
use futures_util::FutureExt;

use super::compositor::{CompositionQueued, Compositor};
use super::conversation::{Conversation, StopInstance};
use super::recorder::{InstanceEnded, RecorderLinks};
use super::uploader::{Kick, Uploader};
use crate::domain::*;
use crate::messages::*;
use crate::snapshot::{snapshot_of, ActorSnapshot, Mailbox, Snapshot};
use crate::storage::{verify, StorageError, VerificationReport};
use crate::store::artefacts::{enqueue_with_manifest, reconcile_ended};
use crate::store::{ArtefactKind, CompositionId, StateStore, StoreError};
use crate::{ApplicationProfile, EngineConfig, EngineError};

type ProfileKey = (String, String);
type ConversationKey = (String, String);

struct LiveConversation {
    instance_id: String,
    application_id: String,
    conference_id: String,
    conversation: Mailbox<Conversation>,
}

pub struct Registry {
    store: Arc<dyn StateStore>,
    config: Arc<EngineConfig>,
    live: HashMap<ConversationKey, LiveConversation>,
    /// (organization, conferenceId) → the conversation whose live instance records it. One owner
    /// per conference: a start naming a conference that is recorded already is refused (409), and
    /// only the owner's end removes the entry, so no other instance can take a conference's
    /// publishers.
    by_conference: HashMap<(String, String), ConversationKey>,
    uploaders: HashMap<ProfileKey, Mailbox<Uploader>>,
    compositor: Mailbox<Compositor>,
    /// This actor's own address, handed to recorders so an instance that ends by itself (a
    /// recovery window that expired) leaves the live index.
    ended: Recipient<InstanceEnded>,
    num_started: u64,
    num_stopped: u64,
    num_recovered_on_boot: u64,
    /// Each profile's last background reachability check (`None`: not checked yet), what
    /// `/ready` reports; a readiness probe itself opens no connection.
    reachability: HashMap<ProfileKey, Option<bool>>,
    checking_profiles: bool,
    /// Open ingest sessions per organization (see `TenantLimits`).
    sessions: Arc<crate::limits::SessionGauge>,
    /// Storage verifications per organization in the current minute (see `TenantLimits`).
    verify_window: HashMap<String, (std::time::Instant, u32)>,
}

/// Longest a background reachability check of one profile may take before it counts as down.
const PROFILE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Registry {
    /// Builds the registry from the store: every live instance gets its conversation and
    /// recorder back, and every storage profile its uploader, which resumes queued jobs.
    /// Instances that were `ACTIVE` had media flowing when the process ended, so they come back
    /// as `PENDING_RECOVERY`; `INITIALISED` ones had nothing to lose and stay as they were.
    pub fn boot(store: Arc<dyn StateStore>, config: Arc<EngineConfig>) -> Result<Addr<Registry>, EngineError> {
        // One pass over the store: live instances are rebuilt below; ended ones get back any
        // upload or composition job they lack (a store written by a build whose stop was not
        // one transaction could hold a STOPPED instance without its jobs).
        let mut instances = Vec::new();
        let mut num_reconciled = 0u64;
        store.for_each_instance(&mut |record| {
            if record.state.is_live() {
                instances.push(record);
            } else if reconcile_ended(store.as_ref(), &record, config.composition.enabled)? {
                num_reconciled += 1;
            }
            Ok(())
        })?;
        if num_reconciled > 0 {
            tracing::warn!(
                num_reconciled,
                "ended instances without their upload jobs were queued again"
            );
        }
        let mut uploaders = HashMap::new();
        for profile in config.applications.values() {
            let key = (profile.organization_id.clone(), profile.application_id.clone());
            let uploader = Uploader::new(store.clone(), profile.clone(), config.clone()).start();
            uploaders.insert(key, Mailbox::new(uploader));
        }
        let kicks = uploaders
            .iter()
            .map(|(key, mailbox): (&ProfileKey, &Mailbox<Uploader>)| (key.clone(), mailbox.addr().clone().recipient()))
            .collect();
        let compositor = Mailbox::new(Compositor::new(store.clone(), config.clone(), kicks).start());
        // The context exists before the actor, so the recorders rebuilt below know where to
        // report an instance that ends by itself.
        let ctx: Context<Registry> = Context::new();
        let mut registry = Registry {
            store: store.clone(),
            config: config.clone(),
            live: HashMap::new(),
            by_conference: HashMap::new(),
            uploaders,
            compositor,
            ended: ctx.address().recipient(),
            num_started: 0,
            num_stopped: 0,
            num_recovered_on_boot: 0,
            reachability: config.applications.keys().map(|key| (key.clone(), None)).collect(),
            checking_profiles: false,
            sessions: Default::default(),
            verify_window: HashMap::new(),
        };
        for mut record in instances {
            if record.state == InstanceState::Active {
                record = store.update_instance(&record.instance_id, &mut |r| {
                    r.transition(InstanceState::PendingRecovery, Utc::now())
                        .map_err(StoreError::from)
                })?;
            }
            registry.spawn_conversation(&record);
            registry.num_recovered_on_boot += 1;
        }
        futures_executor::block_on(store.flush())?;
        Ok(ctx.run(registry))
    }

    fn spawn_conversation(&mut self, record: &InstanceRecord) {
        let uploader = self
            .uploaders
            .get(&(record.organization_id.clone(), record.application_id.clone()))
            .map(|m| m.addr().clone().recipient());
        let links = RecorderLinks {
            uploader,
            ended: Some(self.ended.clone()),
            media: self.config.media.clone(),
            recovery: self.config.recovery,
            crashed: None,
            compose: self.config.composition.enabled,
            max_streams: self.config.limits.max_streams_per_instance,
        };
        let store = self.store.clone();
        let conversation = Conversation::create(|ctx| Conversation::new(store, record, links, ctx));
        let conference = (record.organization_id.clone(), record.conference_id.clone());
        let key = (record.organization_id.clone(), record.conversation_id.clone());
        // Boot of a store written before conferences had one owner may find two live instances
        // of one conference: the first keeps it.
        if self
            .by_conference
            .get(&conference)
            .is_none_or(|owner| !self.live.contains_key(owner))
        {
            self.by_conference.insert(conference, key.clone());
        }
        self.live.insert(
            key,
            LiveConversation {
                instance_id: record.instance_id.clone(),
                application_id: record.application_id.clone(),
                conference_id: record.conference_id.clone(),
                conversation: Mailbox::new(conversation),
            },
        );
    }

    /// Takes the conversation `key` out of the live index if `instance_id` is its live instance,
    /// and its conference out of the conference index if the conference is still its own.
    /// Returns whether it was live.
    fn end_live(&mut self, key: &ConversationKey, instance_id: &str) -> bool {
        if self.live.get(key).is_none_or(|l| l.instance_id != instance_id) {
            return false;
        }
        let live = self.live.remove(key).expect("checked above");
        let conference = (key.0.clone(), live.conference_id);
        if self.by_conference.get(&conference) == Some(key) {
            self.by_conference.remove(&conference);
        }
        true
    }

    /// Finds an instance the way the API addresses it; anything that does not match, including
    /// another organization's instance, is the same `NotFound`.
    fn find(&self, at: &InstanceRef) -> Result<InstanceRecord, EngineError> {
        let missing = || {
            EngineError::not_found(format!(
                "no recorder instance {} in conversation {}",
                at.instance_id, at.conversation_id
            ))
        };
        let record = self.store.get_instance(&at.instance_id)?.ok_or_else(missing)?;
        if record.organization_id != at.organization_id
            || record.conversation_id != at.conversation_id
            || record.recorder_id != at.recorder_id
        {
            return Err(missing());
        }
        Ok(record)
    }

    fn kick_uploader(&self, record: &InstanceRecord) {
        if let Some(uploader) = self
            .uploaders
            .get(&(record.organization_id.clone(), record.application_id.clone()))
        {
            uploader.do_send(Kick);
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The front may queue many requests at once; they are answered quickly, and a full
        // mailbox would make senders wait rather than fail.
        ctx.set_mailbox_capacity(1024);
        tracing::info!(num_live = self.live.len(), recorder_id = %self.config.recorder_id, "registry started");
        self.check_profiles(ctx);
        ctx.run_interval(self.config.ready_check_interval, |act, ctx| act.check_profiles(ctx));
    }
}

impl Registry {
    /// Checks every storage profile's reachability once, in the background (one round at a
    /// time), and keeps the outcome for `/ready`.
    fn check_profiles(&mut self, ctx: &mut Context<Self>) {
        if self.checking_profiles {
            return;
        }
        self.checking_profiles = true;
        let checks: Vec<_> = self
            .config
            .applications
            .iter()
            .map(|(key, profile)| {
                let key = key.clone();
                let check = profile.backend.check_bucket();
                async move {
                    let outcome = match tokio::time::timeout(PROFILE_CHECK_TIMEOUT, check).await {
                        Ok(Ok(())) => true,
                        Ok(Err(err)) => {
                            tracing::warn!(organization_id = %key.0, application_id = %key.1, error = %err, "storage profile unreachable");
                            false
                        }
                        Err(_) => {
                            tracing::warn!(organization_id = %key.0, application_id = %key.1, "storage profile check timed out");
                            false
                        }
                    };
                    (key, outcome)
                }
            })
            .collect();
        ctx.spawn(join_all(checks).into_actor(self).map(|outcomes, act, _ctx| {
            for (key, reachable) in outcomes {
                act.reachability.insert(key, Some(reachable));
            }
            act.checking_profiles = false;
        }));
    }
}

impl Handler<StartRecording> for Registry {
    type Result = ResponseFuture<Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, msg: StartRecording, _ctx: &mut Self::Context) -> Self::Result {
        let result = (|| {
            let profile = self
                .config
                .application(&msg.organization_id, &msg.application_id)
                .ok_or_else(|| {
                    EngineError::not_found(format!(
                        "applicationId {} is not configured for this organization",
                        msg.application_id
                    ))
                })?;
            let key = (msg.organization_id.clone(), msg.conversation_id.clone());
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
            let conference = (msg.organization_id.clone(), msg.conference_id.clone());
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
            let now = Utc::now();
            let record = InstanceRecord {
                schema_version: RECORD_SCHEMA_VERSION,
                instance_id: uuid::Uuid::new_v4().to_string(),
                recorder_id: self.config.recorder_id.clone(),
                organization_id: msg.organization_id,
                application_id: msg.application_id,
                conversation_id: msg.conversation_id,
                conference_id: msg.conference_id,
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
            };
            self.store.insert_instance(&record)?;
            self.spawn_conversation(&record);
            self.num_started += 1;
            tracing::info!(instance_id = %record.instance_id, conversation_id = %record.conversation_id, "recorder instance created");
            Ok(record)
        })();
        let flush = self.store.flush();
        async move {
            let record = result?;
            flush.await?;
            Ok(record)
        }
        .boxed_local()
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

impl Handler<GetInstance> for Registry {
    type Result = Result<InstanceRecord, EngineError>;

    fn handle(&mut self, msg: GetInstance, _ctx: &mut Self::Context) -> Self::Result {
        self.find(&msg.0)
    }
}

impl Handler<GetActive> for Registry {
    type Result = Result<InstanceRecord, EngineError>;

    fn handle(&mut self, msg: GetActive, _ctx: &mut Self::Context) -> Self::Result {
        let live = self
            .live
            .get(&(msg.organization_id.clone(), msg.conversation_id.clone()))
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

impl Handler<ListConversation> for Registry {
    type Result = Result<Vec<InstanceRecord>, EngineError>;

    fn handle(&mut self, msg: ListConversation, _ctx: &mut Self::Context) -> Self::Result {
        let instances = self
            .store
            .conversation_instances(&msg.organization_id, &msg.conversation_id)?;
        if instances.is_empty() {
            return Err(EngineError::not_found(format!(
                "no recordings for conversation {}",
                msg.conversation_id
            )));
        }
        Ok(instances)
    }
}

impl Handler<AddTranscript> for Registry {
    type Result = ResponseFuture<Result<InstanceRecord, EngineError>>;

    fn handle(&mut self, msg: AddTranscript, _ctx: &mut Self::Context) -> Self::Result {
        let result = (|| {
            let record = self.find(&msg.instance)?;
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
            self.store.transaction(&mut |tx| {
                let num_entries = tx.append_transcript(&record.instance_id, &msg.entries)?;
                tx.step("transcript_add", "lines_written", &record.instance_id);
                let record = tx.update_instance(&record.instance_id, &mut |r| {
                    r.num_transcript_entries = num_entries;
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
            Ok::<_, EngineError>((record, needs_upload))
        })();
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
        let result = (|| {
            let record = self.find(&msg.instance)?;
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
            Ok::<_, EngineError>((record, was_new, needs_upload))
        })();
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

impl Handler<VerifyStorage> for Registry {
    type Result = ResponseFuture<Result<VerificationReport, EngineError>>;

    fn handle(&mut self, msg: VerifyStorage, _ctx: &mut Self::Context) -> Self::Result {
        let max = self.config.limits.max_verify_per_minute;
        let now = std::time::Instant::now();
        let window = self
            .verify_window
            .entry(msg.organization_id.clone())
            .or_insert((now, 0));
        if now.duration_since(window.0) >= std::time::Duration::from_secs(60) {
            *window = (now, 0);
        }
        if window.1 >= max {
            let retry_after = 60u64.saturating_sub(now.duration_since(window.0).as_secs()).max(1);
            return async move {
                Err(EngineError::Limit {
                    limit: "max_verify_per_minute",
                    message: format!("at most {max} storage verifications a minute; try again in {retry_after} s"),
                    retry_after_secs: Some(retry_after),
                })
            }
            .boxed_local();
        }
        window.1 += 1;
        let profile = self
            .config
            .application(&msg.organization_id, &msg.application_id)
            .cloned();
        async move {
            let profile = profile.ok_or_else(|| {
                EngineError::not_found(format!(
                    "applicationId {} is not configured for this organization",
                    msg.application_id
                ))
            })?;
            let prefix = format!("{}/{}", profile.organization_id, profile.application_id);
            Ok(verify(profile.backend.as_ref(), &prefix).await)
        }
        .boxed_local()
    }
}

impl Handler<ResolveCobrowseFile> for Registry {
    type Result = ResponseFuture<Result<ArtefactSource, EngineError>>;

    fn handle(&mut self, msg: ResolveCobrowseFile, _ctx: &mut Self::Context) -> Self::Result {
        let message = format!("no file {} in co-browse session {}", msg.file_name, msg.session_id);
        let missing = move || EngineError::not_found(message.clone());
        let resolved = (|| {
            let record = self.store.get_instance(&msg.instance_id)?.ok_or_else(missing.clone())?;
            if record.conversation_id != msg.conversation_id || record.recorder_id != msg.recorder_id {
                return Err(missing());
            }
            let session = record
                .cobrowse_sessions
                .get(&msg.session_id)
                .ok_or_else(missing.clone())?;
            if msg.file_name != "events.json" || session.uploaded.is_none() {
                return Err(missing());
            }
            let profile = self
                .config
                .application(&record.organization_id, &record.application_id)
                .ok_or_else(missing.clone())?
                .clone();
            Ok((profile, record.cobrowse_key(&msg.session_id)))
        })();
        async move {
            let (profile, key) = resolved?;
            if let Some(path) = profile.backend.local_path(&key) {
                return Ok(ArtefactSource::File(path));
            }
            match profile.backend.get(&key).await {
                Ok(bytes) => Ok(ArtefactSource::Bytes(bytes)),
                Err(StorageError::NotFound(_)) => Err(missing()),
                Err(err) => Err(err.into()),
            }
        }
        .boxed_local()
    }
}

impl Handler<ResolveTrackFile> for Registry {
    type Result = ResponseFuture<Result<TrackFile, EngineError>>;

    fn handle(&mut self, msg: ResolveTrackFile, _ctx: &mut Self::Context) -> Self::Result {
        let message = format!("no uploaded track {} in stream {}", msg.track_id, msg.stream_id);
        let missing = move || EngineError::not_found(message.clone());
        let resolved = (|| {
            let record = self.store.get_instance(&msg.instance_id)?.ok_or_else(missing.clone())?;
            if record.conversation_id != msg.conversation_id || record.recorder_id != msg.recorder_id {
                return Err(missing());
            }
            // Only a key the recorder itself recorded for this track is read: the path's ids
            // select a track, they never become part of a file path.
            let key = record
                .streams
                .iter()
                .find(|s| s.id == msg.stream_id)
                .and_then(|s| s.tracks.iter().find(|t| t.id == msg.track_id))
                .and_then(|t| t.object.key.clone().filter(|_| t.object.uploaded.is_some()))
                .ok_or_else(missing.clone())?;
            let profile = self
                .config
                .application(&record.organization_id, &record.application_id)
                .ok_or_else(missing.clone())?
                .clone();
            Ok((profile, key))
        })();
        async move {
            let (profile, key) = resolved?;
            fetch_for_download(profile, key, missing).await
        }
        .boxed_local()
    }
}

/// An uploaded object ready to serve: the file itself for backends on this node, else a copy
/// streamed to a temp file (never into memory: tracks and compositions can be large).
async fn fetch_for_download(
    profile: Arc<ApplicationProfile>,
    key: String,
    missing: impl Fn() -> EngineError,
) -> Result<TrackFile, EngineError> {
    let file_name = key.rsplit('/').next().unwrap_or(&key).to_string();
    if let Some(path) = profile.backend.local_path(&key) {
        return Ok(TrackFile {
            source: ArtefactSource::File(path),
            file_name,
        });
    }
    let temp = std::env::temp_dir().join(format!("rtc-recorder-download-{}", uuid::Uuid::new_v4().simple()));
    match crate::storage::download_to_file(profile.backend.as_ref(), &key, &temp).await {
        Ok(_) => Ok(TrackFile {
            source: ArtefactSource::Downloaded(temp),
            file_name,
        }),
        Err(err) => {
            let _ = tokio::fs::remove_file(&temp).await;
            match err {
                StorageError::NotFound(_) => Err(missing()),
                err => Err(err.into()),
            }
        }
    }
}

impl Handler<ResolveCompositionFile> for Registry {
    type Result = ResponseFuture<Result<TrackFile, EngineError>>;

    fn handle(&mut self, msg: ResolveCompositionFile, _ctx: &mut Self::Context) -> Self::Result {
        let message = format!("no uploaded composition for conversation {}", msg.conversation_id);
        let missing = move || EngineError::not_found(message.clone());
        let resolved = (|| {
            let id = CompositionId::new(&msg.organization_id, &msg.application_id, &msg.conversation_id);
            let composition = self.store.get_composition(&id)?.ok_or_else(missing.clone())?;
            // Only the key the recorder itself recorded is read.
            let key = composition
                .key
                .clone()
                .filter(|_| composition.uploaded.is_some())
                .ok_or_else(missing.clone())?;
            let profile = self
                .config
                .application(&composition.organization_id, &composition.application_id)
                .ok_or_else(missing.clone())?
                .clone();
            Ok::<_, EngineError>((profile, key))
        })();
        async move {
            let (profile, key) = resolved?;
            fetch_for_download(profile, key, missing).await
        }
        .boxed_local()
    }
}

impl Handler<ProviderCobrowseUrl> for Registry {
    type Result = ResponseFuture<Result<Option<String>, EngineError>>;

    fn handle(&mut self, msg: ProviderCobrowseUrl, _ctx: &mut Self::Context) -> Self::Result {
        let target = (|| {
            let record = self.find(&msg.instance)?;
            let uploaded = record
                .cobrowse_sessions
                .get(&msg.session_id)
                .is_some_and(|s| s.uploaded.is_some());
            if !uploaded {
                return Ok(None);
            }
            let profile = self
                .config
                .application(&record.organization_id, &record.application_id)
                .cloned();
            Ok::<_, EngineError>(profile.map(|p| (p, record.cobrowse_key(&msg.session_id))))
        })();
        async move {
            let Some((profile, key)) = target? else {
                return Ok(None);
            };
            Ok(profile.backend.signed_url(&key, msg.ttl).await?)
        }
        .boxed_local()
    }
}

impl Handler<GetComposition> for Registry {
    type Result = ResponseFuture<Result<Option<CompositionView>, EngineError>>;

    fn handle(&mut self, msg: GetComposition, _ctx: &mut Self::Context) -> Self::Result {
        let found = (|| {
            // Each application has its own composition of the conversation; the caller sees only
            // those of its applications, and without a choice the one queued last.
            let Some(composition) = self
                .store
                .conversation_compositions(&msg.organization_id, &msg.conversation_id)?
                .into_iter()
                .filter(|c| may_use(&msg.applications, &c.application_id))
                .filter(|c| msg.application_id_opt.as_ref().is_none_or(|a| *a == c.application_id))
                .max_by_key(|c| c.queued)
            else {
                return Ok::<_, EngineError>(None);
            };
            let Some(instance) = self.store.get_instance(&composition.instance_id)? else {
                return Ok(None);
            };
            let profile = self
                .config
                .application(&instance.organization_id, &instance.application_id)
                .cloned();
            Ok(Some((composition, instance, profile)))
        })();
        async move {
            let Some((composition, instance, profile)) = found? else {
                return Ok(None);
            };
            let url = match (&composition.key, &composition.uploaded, profile) {
                (Some(key), Some(_), Some(profile)) => profile.backend.signed_url(key, msg.ttl).await?,
                _ => None,
            };
            Ok(Some(CompositionView {
                composition,
                instance,
                url,
            }))
        }
        .boxed_local()
    }
}

impl Handler<TrackUrls> for Registry {
    type Result = ResponseFuture<Result<Vec<TrackUrl>, EngineError>>;

    fn handle(&mut self, msg: TrackUrls, _ctx: &mut Self::Context) -> Self::Result {
        let target = (|| {
            let record = self.find(&msg.instance)?;
            let profile = self
                .config
                .application(&record.organization_id, &record.application_id)
                .cloned();
            let tracks: Vec<(String, String, String)> = record
                .streams
                .iter()
                .flat_map(|s| {
                    s.tracks.iter().filter_map(|t| {
                        let key = t.object.key.clone().filter(|_| t.object.uploaded.is_some())?;
                        Some((s.id.clone(), t.id.clone(), key))
                    })
                })
                .collect();
            Ok::<_, EngineError>((profile, tracks))
        })();
        async move {
            let (profile, tracks) = target?;
            let Some(profile) = profile else {
                return Ok(vec![]);
            };
            let mut urls = Vec::new();
            for (stream_id, track_id, key) in tracks {
                match profile.backend.signed_url(&key, msg.ttl).await {
                    Ok(Some(url)) => urls.push(TrackUrl {
                        stream_id,
                        track_id,
                        url,
                    }),
                    Ok(None) => {}
                    // One track the provider cannot sign for is shown without its `url`, not
                    // a failed answer for the whole instance.
                    Err(e) => tracing::warn!(key = %key, error = %e, "cannot sign a track url"),
                }
            }
            Ok(urls)
        }
        .boxed_local()
    }
}

impl Handler<CountInstances> for Registry {
    type Result = Result<Vec<(InstanceState, u64)>, EngineError>;

    fn handle(&mut self, _msg: CountInstances, _ctx: &mut Self::Context) -> Self::Result {
        // Kept by the store as instances change: a scrape does not read the instances.
        Ok(self.store.instance_counts())
    }
}

impl Handler<CheckReady> for Registry {
    type Result = Result<ReadyReport, EngineError>;

    fn handle(&mut self, _msg: CheckReady, _ctx: &mut Self::Context) -> Self::Result {
        let values = self.reachability.values();
        Ok(ReadyReport {
            store_ok: self.store.check().is_ok(),
            num_profiles: self.reachability.len(),
            num_reachable: values.clone().filter(|r| **r == Some(true)).count(),
            num_unreachable: values.filter(|r| **r == Some(false)).count(),
        })
    }
}

impl Handler<Snapshot> for Registry {
    type Result = ResponseFuture<ActorSnapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        self.tree(None)
    }
}

impl Handler<DebugTree> for Registry {
    type Result = ResponseFuture<ActorSnapshot>;

    fn handle(&mut self, msg: DebugTree, _ctx: &mut Self::Context) -> Self::Result {
        self.tree(msg.organization_id_opt)
    }
}

impl Registry {
    /// The actor tree; with an organization, only its conversations and uploaders (the
    /// compositor and the node-wide counters are the operators').
    fn tree(
        &self,
        organization_id_opt: Option<String>,
    ) -> futures_util::future::LocalBoxFuture<'static, ActorSnapshot> {
        let ours = |org: &String| organization_id_opt.as_ref().is_none_or(|o| o == org);
        let conversations: Vec<_> = self
            .live
            .iter()
            .filter(|(key, _)| ours(&key.0))
            .map(|(_, l)| l.conversation.clone())
            .collect();
        let uploaders: Vec<_> = self
            .uploaders
            .iter()
            .filter(|(key, _)| ours(&key.0))
            .map(|(_, u)| u.clone())
            .collect();
        let compositor = organization_id_opt.is_none().then(|| self.compositor.clone());
        let mut counters = std::collections::BTreeMap::new();
        counters.insert("num_live_conversations", conversations.len() as u64);
        if organization_id_opt.is_none() {
            counters.insert("num_started", self.num_started);
            counters.insert("num_stopped", self.num_stopped);
            counters.insert("num_recovered_on_boot", self.num_recovered_on_boot);
        }
        let id = self.config.recorder_id.clone();
        async move {
            let mut children = Vec::new();
            for child in join_all(conversations.iter().map(snapshot_of)).await {
                children.extend(child);
            }
            for child in join_all(uploaders.iter().map(snapshot_of)).await {
                children.extend(child);
            }
            if let Some(compositor) = compositor {
                children.extend(snapshot_of(&compositor).await);
            }
            ActorSnapshot {
                kind: "Registry",
                id,
                state: "RUNNING".into(),
                mailbox_depth: 0,
                restarts: 0,
                last_error: None,
                counters,
                children,
            }
        }
        .boxed_local()
    }
}
