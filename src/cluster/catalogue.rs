//! The catalogue: every instance record of every node, under
//! `instance.<organization>.<conversation>.<instanceId>`, written by the owner from its own store
//! each time the record changes (the store's change feed), so any node can list a conversation or
//! show an instance. Records the owner could not write while NATS was away stay marked and are
//! written once it is back; at start-up the node writes all of its records again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{consumer, kv};
use futures_util::StreamExt;
use recorder_actors::domain::InstanceRecord;
use recorder_actors::store::StateStore;

use super::{key_part, Cluster, ClusterError};

/// How long a write waits before it is tried again while NATS is away.
const RETRY: Duration = Duration::from_millis(500);

fn instance_key(organization_id: &str, conversation_id: &str, instance_id: &str) -> String {
    format!(
        "instance.{}.{}.{}",
        key_part(organization_id),
        key_part(conversation_id),
        key_part(instance_id)
    )
}

/// Follows `store` and writes each changed record to the catalogue (and releases the leases of
/// an instance that ended). Runs for the life of the process.
pub(super) async fn publish(cluster: Arc<Cluster>, store: Arc<dyn StateStore>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    match store.watch_instances() {
        Some(changes) => {
            // The feed blocks: it has a thread of its own.
            std::thread::Builder::new()
                .name("catalogue-feed".into())
                .spawn(move || {
                    for id in changes {
                        if tx.send(id).is_err() {
                            break;
                        }
                    }
                })
                .expect("a thread for the catalogue feed");
        }
        None => tracing::error!("cluster: this state store has no change feed; the catalogue stays empty"),
    }
    // Everything once, then what changes; everything again when the catalogue was re-created.
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let everything = |dirty: &mut BTreeSet<String>| {
        let _ = store.for_each_instance(&mut |record| {
            dirty.insert(record.instance_id);
            Ok(())
        });
    };
    everything(&mut dirty);
    let mut recreated = cluster.recreated.subscribe();
    loop {
        while let Ok(id) = rx.try_recv() {
            dirty.insert(id);
        }
        if recreated.has_changed().unwrap_or(false) {
            recreated.borrow_and_update();
            everything(&mut dirty);
        }
        let mut failed = false;
        while let Some(id) = dirty.first().cloned() {
            match write(&cluster, store.as_ref(), &id).await {
                Ok(()) => {
                    dirty.remove(&id);
                }
                Err(err) => {
                    tracing::debug!(error = %err, "cluster: catalogue write deferred");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        tokio::select! {
            id = rx.recv() => match id {
                Some(id) => {
                    dirty.insert(id);
                }
                None => return,
            },
            // `changed` marks the new value seen: everything is queued here, not at the top.
            _ = recreated.changed() => everything(&mut dirty),
        }
    }
}

async fn write(cluster: &Cluster, store: &dyn StateStore, instance_id: &str) -> Result<(), ClusterError> {
    let Some(record) = store
        .get_instance(instance_id)
        .map_err(|e| ClusterError::Unavailable(format!("state store: {e}")))?
    else {
        return Ok(());
    };
    write_record(cluster, &record).await
}

/// Only the feed writes records (each put reads the store's newest), so an older copy can never
/// land after a newer one.
async fn write_record(cluster: &Cluster, record: &InstanceRecord) -> Result<(), ClusterError> {
    let buckets = cluster.buckets()?;
    let key = instance_key(&record.organization_id, &record.conversation_id, &record.instance_id);
    let value = serde_json::to_vec(&record).expect("records always serialize");
    buckets
        .catalogue
        .put(key, value.into())
        .await
        .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
    if record.state.is_terminal() {
        cluster.release_ended(record).await?;
    }
    Ok(())
}

impl Cluster {
    /// One instance as the catalogue has it (as the owner last wrote it).
    pub async fn catalogue_record(
        &self,
        organization_id: &str,
        conversation_id: &str,
        instance_id: &str,
    ) -> Result<Option<InstanceRecord>, ClusterError> {
        let buckets = self.buckets()?;
        let key = instance_key(organization_id, conversation_id, instance_id);
        let value = buckets
            .catalogue
            .get(key)
            .await
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every instance of a conversation the catalogue has, from every node, oldest first.
    pub async fn catalogue_conversation(
        &self,
        organization_id: &str,
        conversation_id: &str,
    ) -> Result<Vec<InstanceRecord>, ClusterError> {
        let buckets = self.buckets()?;
        let prefix = format!("instance.{}.{}.", key_part(organization_id), key_part(conversation_id));
        let mut records: Vec<InstanceRecord> = latest_under(self, &buckets.catalogue, &prefix)
            .await?
            .iter()
            .filter_map(|v| serde_json::from_slice(v).ok())
            .collect();
        records.sort_by(|a, b| (a.created, &a.instance_id).cmp(&(b.created, &b.instance_id)));
        Ok(records)
    }
}

/// The latest value of every key under `prefix` (what `kv::Store::keys` reads, with values and a
/// subject filter): an ordered consumer delivering the last message per subject.
async fn latest_under(cluster: &Cluster, store: &kv::Store, prefix: &str) -> Result<Vec<bytes::Bytes>, ClusterError> {
    let unavailable = |e: &dyn std::fmt::Display| ClusterError::Unavailable(e.to_string());
    let consumer = store
        .stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: cluster.client().new_inbox(),
            filter_subject: format!("{}{prefix}>", store.prefix),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&e))?;
    let mut remaining = consumer.cached_info().num_pending;
    let mut values = Vec::new();
    if remaining == 0 {
        return Ok(values);
    }
    let mut messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
    while remaining > 0 {
        let next = tokio::time::timeout(cluster.settings.request_timeout, messages.next())
            .await
            .map_err(|_| ClusterError::Unavailable("the catalogue did not answer in time".into()))?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| unavailable(&e))?;
        remaining -= 1;
        let deleted = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        if !deleted {
            values.push(message.payload.clone());
        }
    }
    Ok(values)
}

/// What the engine reads of the catalogue: a composition on this node covers the conversation's
/// instances on the other nodes too.
pub struct PeerCatalogue(pub Arc<Cluster>);

impl recorder_actors::engine::PeerInstances for PeerCatalogue {
    fn conversation_instances(
        &self,
        organization_id: &str,
        conversation_id: &str,
    ) -> futures_util::future::BoxFuture<'static, Result<Vec<InstanceRecord>, String>> {
        let (organization_id, conversation_id) = (organization_id.to_string(), conversation_id.to_string());
        let this = self.0.clone();
        Box::pin(async move {
            let records = this
                .catalogue_conversation(&organization_id, &conversation_id)
                .await
                .map_err(|e| e.to_string())?;
            Ok(records.into_iter().filter(|r| r.recorder_id != this.node_id).collect())
        })
    }

    fn take_composition_lease(
        &self,
        organization_id: &str,
        application_id: &str,
        conversation_id: &str,
    ) -> futures_util::future::BoxFuture<'static, Result<recorder_actors::engine::CompositionLease, String>> {
        let ids = (
            organization_id.to_string(),
            application_id.to_string(),
            conversation_id.to_string(),
        );
        let this = self.0.clone();
        Box::pin(async move {
            this.take_composition_lease(&ids.0, &ids.1, &ids.2)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn release_composition_lease(
        &self,
        organization_id: &str,
        application_id: &str,
        conversation_id: &str,
    ) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
        let ids = (
            organization_id.to_string(),
            application_id.to_string(),
            conversation_id.to_string(),
        );
        let this = self.0.clone();
        Box::pin(async move {
            this.release_composition_lease(&ids.0, &ids.1, &ids.2)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
