//! The root actor: owns the index of live conversations (and of the conferences they record),
//! routes the commands that need a live actor, and on boot rebuilds the live part of the tree
//! from what the store kept. Questions that need no actor state are not here: they are plain
//! functions over the store (`crate::queries`).

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;
use futures_util::FutureExt;

use super::compositor::{CompositionQueued, Compositor};
use super::conversation::{Conversation, ShutdownConversation, StopInstance};
use super::notifier::Notifier;
use super::recorder::{InstanceEnded, PauseRecorder, RecorderLinks};
use super::uploader::{Kick, Uploader};
use crate::domain::*;
use crate::engine::PauseCapture;
use crate::messages::*;
use crate::snapshot::{
    snapshot_of, ActorSnapshot, Counters, Mailbox, RegistryCounters, Snapshot, TenantRegistryCounters,
};
use crate::storage::{verify, VerificationReport};
use crate::store::artefacts::{enqueue_with_manifest, reconcile_ended};
use crate::store::{ArtefactKind, StateStore, StoreError};
use crate::{EngineConfig, EngineError};

mod capture;
mod lifecycle;
mod storage;

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
    notifiers: HashMap<ProfileKey, Mailbox<Notifier>>,
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
        let mut notifiers = HashMap::new();
        for profile in config.applications.values() {
            let key = (profile.organization_id.clone(), profile.application_id.clone());
            let uploader = Uploader::new(store.clone(), profile.clone(), config.clone()).start();
            uploaders.insert(key.clone(), Mailbox::new(uploader));
            let notifier = Notifier::new(store.clone(), profile.clone(), config.clone()).start();
            notifiers.insert(key, Mailbox::new(notifier));
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
            notifiers,
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
                    r.transition(InstanceState::PendingRecovery, config.clock().utc())
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
            max_duration: self
                .config
                .application(&record.organization_id, &record.application_id)
                .and_then(|p| Some((p.policy.max_instance_duration?, p.policy.duration_warning))),
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
        crate::queries::find_instance(self.store.as_ref(), at)
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

impl Handler<CheckReady> for Registry {
    type Result = Result<ReadyReport, EngineError>;

    fn handle(&mut self, _msg: CheckReady, _ctx: &mut Self::Context) -> Self::Result {
        let values = self.reachability.values();
        Ok(ReadyReport {
            store_ok: self.store.check().is_ok(),
            num_profiles: self.reachability.len(),
            num_reachable: values.clone().filter(|r| **r == Some(true)).count(),
            num_unreachable: values.filter(|r| **r == Some(false)).count(),
            draining: self.config.media.capacity.is_draining(),
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
        self.tree(msg.organization_id_opt.map(OrganizationId::into_string))
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
        let notifiers: Vec<_> = self
            .notifiers
            .iter()
            .filter(|(key, _)| ours(&key.0))
            .map(|(_, n)| n.clone())
            .collect();
        let compositor = organization_id_opt.is_none().then(|| self.compositor.clone());
        let num_live_conversations = conversations.len() as u64;
        let counters = match organization_id_opt {
            Some(_) => Counters::TenantRegistry(TenantRegistryCounters { num_live_conversations }),
            None => Counters::Registry(RegistryCounters {
                num_live_conversations,
                num_started: self.num_started,
                num_stopped: self.num_stopped,
                num_recovered_on_boot: self.num_recovered_on_boot,
            }),
        };
        let id = self.config.recorder_id.clone();
        async move {
            let mut children = Vec::new();
            for child in join_all(conversations.iter().map(snapshot_of)).await {
                children.extend(child);
            }
            for child in join_all(uploaders.iter().map(snapshot_of)).await {
                children.extend(child);
            }
            for child in join_all(notifiers.iter().map(snapshot_of)).await {
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
