//! Cluster mode: the composition lease (see `PeerInstances::take_composition_lease`). A
//! queued composition is claimed only once this node holds its conversation's lease; the lease
//! is given back once the composition is settled (uploaded, failed or gone), so one node at a
//! time composes a conversation and uploads its one MP4.

use std::time::Duration;

use actix::prelude::*;

use super::Compositor;
use crate::engine::CompositionLease;
use crate::store::{CompositionId, CompositionRecord, CompositionState};

/// Cluster mode: how often a composition waiting for the conversation's composition lease
/// (another node composes it, or the cluster is unreachable) asks again.
const LEASE_RETRY: Duration = Duration::from_secs(1);
/// Cluster mode: how often the leases this node holds are looked at, to give back those whose
/// composition is uploaded (or failed).
const LEASE_CHECK: Duration = Duration::from_millis(500);

impl Compositor {
    /// Asks the cluster for the composition lease of `key`; the pump runs the composition once
    /// it is held, and asks again later while another node holds it or the cluster is out of
    /// reach (the composition stays queued, durable, meanwhile).
    pub(super) fn take_lease(&mut self, key: CompositionId, ctx: &mut Context<Self>) {
        let Some(peers) = self.config.peers.clone() else { return };
        if !self.acquiring.insert(key.clone()) {
            return;
        }
        let asked = peers.take_composition_lease(&key.organization_id, &key.application_id, &key.conversation_id);
        ctx.spawn(asked.into_actor(self).map(move |answer, act, ctx| {
            act.acquiring.remove(&key);
            let why = match answer {
                Ok(CompositionLease::Held) => {
                    if act.waiting_for_lease.remove(&key).is_some() {
                        tracing::info!(conversation_id = %key.conversation_id, "composition lease taken");
                    }
                    act.leases.insert(key);
                    act.schedule_lease_check(ctx);
                    act.pump(ctx);
                    return;
                }
                Ok(CompositionLease::HeldBy(node)) => format!("node {node} is composing the conversation"),
                Err(err) => format!("the cluster is unreachable ({err})"),
            };
            if act.waiting_for_lease.get(&key) != Some(&why) {
                tracing::info!(conversation_id = %key.conversation_id, why = %why, "composition waits for the conversation's composition lease");
            }
            act.waiting_for_lease.insert(key, why);
            if !act.lease_retry_scheduled {
                act.lease_retry_scheduled = true;
                crate::clock::run_later(&act.config.clock().clone(), ctx, LEASE_RETRY, |act, ctx| {
                    act.lease_retry_scheduled = false;
                    act.pump(ctx);
                });
            }
        }));
    }

    pub(super) fn schedule_lease_check(&mut self, ctx: &mut Context<Self>) {
        if self.lease_check_scheduled || self.leases.is_empty() {
            return;
        }
        self.lease_check_scheduled = true;
        crate::clock::run_later(&self.config.clock().clone(), ctx, LEASE_CHECK, |act, ctx| {
            act.lease_check_scheduled = false;
            act.release_settled_leases(ctx);
        });
    }

    /// Gives back the leases whose composition is settled: uploaded, failed or gone. One queued
    /// again meanwhile keeps its lease and runs under it.
    fn release_settled_leases(&mut self, ctx: &mut Context<Self>) {
        let Some(peers) = self.config.peers.clone() else { return };
        for key in self.leases.clone() {
            if self.running.contains(&key) || self.releasing.contains(&key) {
                continue;
            }
            let settled = match self.store.get_composition(&key) {
                Ok(record) => record.as_ref().is_none_or(is_settled),
                Err(_) => false,
            };
            if !settled {
                continue;
            }
            self.releasing.insert(key.clone());
            let released =
                peers.release_composition_lease(&key.organization_id, &key.application_id, &key.conversation_id);
            ctx.spawn(released.into_actor(self).map(move |result, act, ctx| {
                act.releasing.remove(&key);
                match result {
                    Ok(()) => {
                        act.leases.remove(&key);
                    }
                    Err(err) => {
                        tracing::warn!(conversation_id = %key.conversation_id, error = %err, "composition lease not given back yet")
                    }
                }
                // A composition queued again while the lease was being given back takes it again.
                act.pump(ctx);
            }));
        }
        self.schedule_lease_check(ctx);
    }
}

/// A composition whose lease may go: uploaded (with its stereo audio), or failed.
pub(super) fn is_settled(c: &CompositionRecord) -> bool {
    match c.state {
        CompositionState::Queued | CompositionState::Composing => false,
        CompositionState::Failed => true,
        CompositionState::Done => c.uploaded.is_some() && c.stereo.as_ref().is_none_or(|s| s.uploaded.is_some()),
    }
}
