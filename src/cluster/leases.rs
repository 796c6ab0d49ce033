//! Live leases: one live instance per `(organization, conversationId)` and one owner per
//! `(organization, conferenceId)`, cluster-wide. A start takes both with compare-and-set before
//! its node creates the instance; they name the instance once it exists, and the owner's
//! catalogue releases them when the instance ends. A lease whose instance has ended (its owner
//! crashed between the end and the release) or whose start never finished is taken over, again
//! with compare-and-set, so two starts can never both win.

use std::sync::Arc;

use async_nats::jetstream::kv;
use recorder_actors::domain::InstanceRecord;
use serde::{Deserialize, Serialize};

use super::{key_part, now_millis, Buckets, Cluster, ClusterError};

/// A lease that names no instance yet is a start under way for this long; past it, a start that
/// never finished (its node crashed) leaves the lease to be taken over.
const START_GRACE_MS: i64 = 30_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Lease {
    recorder_id: String,
    organization_id: String,
    conversation_id: String,
    instance_id: Option<String>,
    /// Milliseconds since the epoch.
    taken: i64,
}

fn conversation_key(organization_id: &str, conversation_id: &str) -> String {
    format!(
        "conversation.{}.{}",
        key_part(organization_id),
        key_part(conversation_id)
    )
}

fn conference_key(organization_id: &str, conference_id: &str) -> String {
    format!("conference.{}.{}", key_part(organization_id), key_part(conference_id))
}

fn unavailable(err: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(err.to_string())
}

/// The leases a start holds while its node creates the instance: [`StartLeases::bind`] them to
/// it, or [`StartLeases::release`] them when the start fails.
pub struct StartLeases {
    cluster: Arc<Cluster>,
    lease: Lease,
    held: Vec<(String, u64)>,
}

impl Cluster {
    /// Takes the conversation's and the conference's leases for a start on this node; 409
    /// (`Conflict`) when a live instance holds either, 503 when the cluster is unreachable.
    pub async fn take_start_leases(
        self: &Arc<Self>,
        organization_id: &str,
        conversation_id: &str,
        conference_id: &str,
    ) -> Result<StartLeases, ClusterError> {
        let buckets = self.buckets()?;
        let lease = Lease {
            recorder_id: self.node_id.clone(),
            organization_id: organization_id.to_string(),
            conversation_id: conversation_id.to_string(),
            instance_id: None,
            taken: now_millis(),
        };
        let mut leases = StartLeases {
            cluster: self.clone(),
            lease,
            held: Vec::new(),
        };
        let wanted = [
            (
                conversation_key(organization_id, conversation_id),
                format!("conversation {conversation_id} already has a live recorder instance"),
            ),
            (
                conference_key(organization_id, conference_id),
                format!("conference {conference_id} is already recorded by a live recorder instance"),
            ),
        ];
        for (key, conflict) in wanted {
            match self.take(buckets, &key, &leases.lease, &conflict).await {
                Ok(revision) => leases.held.push((key, revision)),
                Err(err) => {
                    leases.release().await;
                    return Err(err);
                }
            }
        }
        Ok(leases)
    }

    async fn take(&self, buckets: &Buckets, key: &str, lease: &Lease, conflict: &str) -> Result<u64, ClusterError> {
        let value = bytes::Bytes::from(serde_json::to_vec(lease).expect("plain data"));
        for _ in 0..3 {
            match buckets.leases.create(key, value.clone()).await {
                Ok(revision) => return Ok(revision),
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(err) => return Err(unavailable(err)),
            }
            let Some(entry) = buckets.leases.entry(key).await.map_err(unavailable)? else {
                continue;
            };
            if entry.operation == kv::Operation::Put {
                if let Ok(held) = serde_json::from_slice::<Lease>(&entry.value) {
                    if self.lease_is_live(&held).await? {
                        return Err(ClusterError::Conflict(conflict.to_string()));
                    }
                }
            }
            // Stale: taken over unless someone else changed it first.
            if let Ok(revision) = buckets.leases.update(key, value.clone(), entry.revision).await {
                return Ok(revision);
            }
        }
        Err(ClusterError::Conflict(format!(
            "{conflict} (a start of it is under way elsewhere; try again)"
        )))
    }

    async fn lease_is_live(&self, lease: &Lease) -> Result<bool, ClusterError> {
        let young = now_millis() - lease.taken < START_GRACE_MS;
        let Some(instance_id) = &lease.instance_id else {
            return Ok(young);
        };
        match self
            .catalogue_record(&lease.organization_id, &lease.conversation_id, instance_id)
            .await?
        {
            Some(record) => Ok(record.state.is_live()),
            // The catalogue has not caught up with a start just made.
            None => Ok(young),
        }
    }

    /// Releases the leases that name `record`'s instance, once it has ended.
    pub async fn release_ended(&self, record: &InstanceRecord) -> Result<(), ClusterError> {
        let buckets = self.buckets()?;
        for key in [
            conversation_key(&record.organization_id, &record.conversation_id),
            conference_key(&record.organization_id, &record.conference_id),
        ] {
            let Some(entry) = buckets.leases.entry(&key).await.map_err(unavailable)? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let Ok(lease) = serde_json::from_slice::<Lease>(&entry.value) else {
                continue;
            };
            if lease.instance_id.as_deref() == Some(record.instance_id.as_str()) {
                buckets
                    .leases
                    .delete_expect_revision(&key, Some(entry.revision))
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }
}

impl StartLeases {
    /// The start made `instance_id`: the leases name it from now on.
    pub async fn bind(mut self, instance_id: &str) {
        self.lease.instance_id = Some(instance_id.to_string());
        let value = bytes::Bytes::from(serde_json::to_vec(&self.lease).expect("plain data"));
        let Ok(buckets) = self.cluster.buckets() else { return };
        for (key, revision) in std::mem::take(&mut self.held) {
            if let Err(err) = buckets.leases.update(&key, value.clone(), revision).await {
                // The lease still names this node: it is held until its start grace passes,
                // and then only taken over if this node's catalogue says nothing live.
                tracing::warn!(key, error = %err, "cluster: a lease could not name its instance");
            }
        }
    }

    /// The start failed: the leases are given back.
    pub async fn release(&mut self) {
        let Ok(buckets) = self.cluster.buckets() else { return };
        for (key, revision) in std::mem::take(&mut self.held) {
            if let Err(err) = buckets.leases.delete_expect_revision(&key, Some(revision)).await {
                tracing::warn!(key, error = %err, "cluster: a lease of a failed start was not released");
            }
        }
    }
}

/// A composition lease held for this long is stale even if its holder still heartbeats (a
/// composition whose upload can never finish must not stop the others for good).
const COMPOSITION_MAX_HOLD_MS: i64 = 6 * 3600 * 1000;

/// The composition lease of one application's conversation: one node at a time composes it
/// and uploads the result (see `PeerInstances::take_composition_lease`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompositionHold {
    recorder_id: String,
    /// Milliseconds since the epoch.
    taken: i64,
}

fn composition_key(organization_id: &str, application_id: &str, conversation_id: &str) -> String {
    format!(
        "composition.{}.{}.{}",
        key_part(organization_id),
        key_part(application_id),
        key_part(conversation_id)
    )
}

/// Pure: whether a composition lease held by `holder` keeps `me` from taking it: held by
/// another node whose heartbeat is recent, for less than the longest hold.
fn composition_lease_blocks(holder: &CompositionHold, me: &str, holder_alive: bool, now: i64) -> bool {
    holder.recorder_id != me && holder_alive && now - holder.taken < COMPOSITION_MAX_HOLD_MS
}

impl Cluster {
    /// Takes the composition lease of a conversation for this node, keeps it if this node holds
    /// it already (from before a restart, say), or takes it over from a node whose heartbeat
    /// has lapsed; `HeldBy` names the live node holding it.
    pub async fn take_composition_lease(
        &self,
        organization_id: &str,
        application_id: &str,
        conversation_id: &str,
    ) -> Result<recorder_actors::engine::CompositionLease, ClusterError> {
        use recorder_actors::engine::CompositionLease;
        let buckets = self.buckets()?;
        let key = composition_key(organization_id, application_id, conversation_id);
        let mine = CompositionHold {
            recorder_id: self.node_id.clone(),
            taken: now_millis(),
        };
        let value = bytes::Bytes::from(serde_json::to_vec(&mine).expect("plain data"));
        for _ in 0..3 {
            match buckets.leases.create(&key, value.clone()).await {
                Ok(_) => return Ok(CompositionLease::Held),
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(err) => return Err(unavailable(err)),
            }
            let Some(entry) = buckets.leases.entry(&key).await.map_err(unavailable)? else {
                continue;
            };
            if entry.operation == kv::Operation::Put {
                if let Ok(held) = serde_json::from_slice::<CompositionHold>(&entry.value) {
                    if held.recorder_id == self.node_id {
                        return Ok(CompositionLease::Held);
                    }
                    let alive = self.alive(&held.recorder_id).is_some();
                    if composition_lease_blocks(&held, &self.node_id, alive, now_millis()) {
                        return Ok(CompositionLease::HeldBy(held.recorder_id));
                    }
                    tracing::info!(key, holder = %held.recorder_id, "cluster: taking over a stale composition lease");
                }
            }
            if buckets.leases.update(&key, value.clone(), entry.revision).await.is_ok() {
                return Ok(CompositionLease::Held);
            }
        }
        Err(ClusterError::Unavailable(
            "the composition lease kept changing; try again".into(),
        ))
    }

    /// Gives the composition lease of a conversation back if this node holds it.
    pub async fn release_composition_lease(
        &self,
        organization_id: &str,
        application_id: &str,
        conversation_id: &str,
    ) -> Result<(), ClusterError> {
        let buckets = self.buckets()?;
        let key = composition_key(organization_id, application_id, conversation_id);
        let Some(entry) = buckets.leases.entry(&key).await.map_err(unavailable)? else {
            return Ok(());
        };
        let mine = entry.operation == kv::Operation::Put
            && serde_json::from_slice::<CompositionHold>(&entry.value).is_ok_and(|h| h.recorder_id == self.node_id);
        if mine {
            buckets
                .leases
                .delete_expect_revision(&key, Some(entry.revision))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

impl Cluster {
    /// The node whose live instance records `conference_id`, as its lease says (`None`: no
    /// live instance holds it).
    pub async fn conference_owner(
        &self,
        organization_id: &str,
        conference_id: &str,
    ) -> Result<Option<String>, ClusterError> {
        let buckets = self.buckets()?;
        let entry = buckets
            .leases
            .entry(conference_key(organization_id, conference_id))
            .await
            .map_err(unavailable)?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice::<Lease>(&e.value).ok())
            .map(|lease| lease.recorder_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_composition_lease_blocks_only_while_another_live_node_holds_it_not_too_long() {
        let now = 10 * COMPOSITION_MAX_HOLD_MS;
        let hold = |node: &str, age: i64| CompositionHold {
            recorder_id: node.into(),
            taken: now - age,
        };
        assert!(composition_lease_blocks(&hold("b", 1_000), "a", true, now));
        // This node's own lease (from before its restart) never blocks it.
        assert!(!composition_lease_blocks(&hold("a", 1_000), "a", true, now));
        // The holder's heartbeat lapsed: taken over.
        assert!(!composition_lease_blocks(&hold("b", 1_000), "a", false, now));
        // Held too long: taken over.
        assert!(!composition_lease_blocks(
            &hold("b", COMPOSITION_MAX_HOLD_MS),
            "a",
            true,
            now
        ));
        // Keys of different applications or conversations differ.
        assert_ne!(composition_key("o", "a1", "c"), composition_key("o", "a2", "c"));
        assert_ne!(composition_key("o", "a", "c.1"), composition_key("o", "a.c", "1"));
    }
}
