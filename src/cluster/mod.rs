//! Cluster mode: many recorder nodes as one service, on NATS JetStream (off by default: a single
//! node with its embedded store needs none of this).
//!
//! Each node stays the authority for the instances it owns (its sled store, its `recorderId`);
//! JetStream adds what the nodes share, in three key-value buckets (replicated as
//! `cluster.replicas` says, R3 in production):
//!
//! - **nodes**: every node's heartbeat (public URL, capacity available, draining), which lapses
//!   when the node stops heartbeating (`node_ttl_secs`);
//! - **leases**: one live instance per `(organization, conversationId)` and one owner per
//!   `(organization, conferenceId)` cluster-wide, taken with compare-and-set (a start that
//!   finds one held answers 409, as on one node);
//! - **catalogue**: every instance record, written from the owner's store as it changes, so any
//!   node answers listings and states, even while the owner is down.
//!
//! Any node takes any request: what needs the owner is forwarded to it by `recorderId` over
//! NATS request/reply (`forward`), WHIP publishes are redirected to the owner (307), and a start
//! goes to the node with the most capacity available (`place`). When NATS is unreachable the
//! commands that need it answer 503; live recordings go on, and the catalogue catches up.

mod catalogue;
pub use catalogue::PeerCatalogue;
pub mod forward;
mod leases;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use recorder_actors::capacity::Capacity;
use recorder_actors::domain::InstanceRecord;
use recorder_actors::store::StateStore;
use serde::{Deserialize, Serialize};

/// `[cluster]` settings, checked.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub nats_urls: Vec<String>,
    pub replicas: usize,
    /// Buckets and subjects are named after this (several deployments may share one NATS).
    pub name: String,
    pub heartbeat: Duration,
    pub node_ttl: Duration,
    pub request_timeout: Duration,
}

/// What a node says of itself in the registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub recorder_id: String,
    pub public_url: String,
    pub available_live: u64,
    pub draining: bool,
    /// Milliseconds since the epoch of this heartbeat.
    pub heartbeat: i64,
}

/// Why a cluster command cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the cluster is unavailable (NATS: {0}); try again later")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no recorder node has capacity for a new instance; try again later")]
    NoCapacity,
    /// A request too large for one NATS message (the server's `max_payload`) to reach the node
    /// that must run it; `body_limit` is the largest body that would.
    #[error("the body is too large to forward to recorder node {node}, which records this: at most {body_limit} bytes go through the cluster (NATS max_payload)")]
    TooLarge { node: String, body_limit: usize },
}

struct Buckets {
    nodes: kv::Store,
    leases: kv::Store,
    catalogue: kv::Store,
}

pub struct Cluster {
    pub settings: ClusterSettings,
    pub node_id: String,
    client: async_nats::Client,
    buckets: tokio::sync::OnceCell<Buckets>,
    /// Bumped each time a bucket had to be created again (its stream lost from JetStream, as
    /// after every server of a cluster lost its store), by this node or another (seen when the
    /// heartbeat works again): the catalogue then writes every record again.
    recreated: tokio::sync::watch::Sender<u64>,
    /// When the catalogue's stream was created, as last seen (see `check_catalogue_identity`).
    catalogue_created: Mutex<Option<i128>>,
    /// The registry as last seen by the watcher: recorderId → its last heartbeat.
    nodes: Mutex<HashMap<String, NodeInfo>>,
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A key part for any id: ids may hold characters a NATS subject cannot.
pub(crate) fn key_part(id: &str) -> String {
    hex::encode(id.as_bytes())
}

impl Cluster {
    /// Connects (in the background: a node starts, and records, while NATS is down) and opens
    /// the buckets as soon as it can.
    pub async fn connect(settings: ClusterSettings, node_id: String) -> anyhow::Result<Arc<Cluster>> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("rtc-recorder {node_id}"))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(settings.request_timeout))
            .connect(settings.nats_urls.clone())
            .await?;
        Ok(Arc::new(Cluster {
            settings,
            node_id,
            client,
            buckets: tokio::sync::OnceCell::new(),
            recreated: tokio::sync::watch::Sender::new(0),
            catalogue_created: Mutex::new(None),
            nodes: Mutex::new(HashMap::new()),
        }))
    }

    fn bucket_name(&self, what: &str) -> String {
        format!("{}_{what}", self.settings.name)
    }

    /// The subject a node's forwarded requests arrive on.
    pub(crate) fn forward_subject(&self, node_id: &str) -> String {
        format!("{}.forward.{}", self.settings.name, key_part(node_id))
    }

    /// The bucket `what`, created when JetStream has no such stream; `true` with it when it
    /// had to be created.
    async fn open_bucket(&self, what: &str, max_age: Duration) -> anyhow::Result<(kv::Store, bool)> {
        let js = jetstream::new(self.client.clone());
        let bucket = self.bucket_name(what);
        if let Ok(store) = js.get_key_value(&bucket).await {
            return Ok((store, false));
        }
        let store = js
            .create_key_value(kv::Config {
                bucket,
                history: 1,
                max_age,
                num_replicas: self.settings.replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        Ok((store, true))
    }

    /// The three buckets and their lifetimes.
    fn bucket_specs(&self) -> [(&'static str, Duration); 3] {
        [
            ("nodes", self.settings.node_ttl * 3),
            ("leases", Duration::ZERO),
            ("catalogue", Duration::ZERO),
        ]
    }

    async fn open_buckets(&self) -> anyhow::Result<Buckets> {
        let [nodes, leases, catalogue] = self.bucket_specs();
        Ok(Buckets {
            nodes: self.open_bucket(nodes.0, nodes.1).await?.0,
            leases: self.open_bucket(leases.0, leases.1).await?.0,
            catalogue: self.open_bucket(catalogue.0, catalogue.1).await?.0,
        })
    }

    /// When the catalogue's stream is another one than the one this node last wrote to (its
    /// creation time differs: it was lost and made again), bumps `recreated`.
    async fn check_catalogue_identity(&self) {
        let js = jetstream::new(self.client.clone());
        let name = format!("KV_{}", self.bucket_name("catalogue"));
        let created = match js.get_stream(&name).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) => info.created.unix_timestamp_nanos(),
                Err(_) => return,
            },
            Err(_) => return,
        };
        let changed = {
            let mut seen = self.catalogue_created.lock().unwrap_or_else(|p| p.into_inner());
            let changed = seen.is_some_and(|before| before != created);
            *seen = Some(created);
            changed
        };
        if changed {
            tracing::warn!("cluster: the catalogue was made again; writing every record again");
            self.recreated.send_modify(|n| *n += 1);
        }
    }

    /// Creates again any bucket whose stream JetStream no longer has (the handles in `buckets`
    /// name the bucket, so they work again once it exists). Returns how many were created.
    async fn recreate_missing_buckets(&self) -> usize {
        let mut created = 0;
        for (what, max_age) in self.bucket_specs() {
            match self.open_bucket(what, max_age).await {
                Ok((_, true)) => {
                    tracing::warn!(bucket = %self.bucket_name(what), "cluster: a bucket was gone from JetStream; created it again");
                    created += 1;
                }
                Ok((_, false)) => {}
                Err(err) => tracing::debug!(error = %err, bucket = what, "cluster: cannot check a bucket yet"),
            }
        }
        if created > 0 {
            self.recreated.send_modify(|n| *n += 1);
        }
        created
    }

    fn buckets(&self) -> Result<&Buckets, ClusterError> {
        self.buckets
            .get()
            .ok_or_else(|| ClusterError::Unavailable("not connected yet".into()))
    }

    /// Starts the node's cluster work: opening the buckets, the heartbeat, the registry
    /// watcher, the catalogue of `store` and the forwarded-request server (replayed against
    /// `local_base`, this node's own API listener).
    pub fn start(
        self: &Arc<Self>,
        capacity: Arc<Capacity>,
        store: Arc<dyn StateStore>,
        public_url: String,
        local_base: String,
    ) {
        let cluster = self.clone();
        tokio::spawn(async move {
            loop {
                match cluster.open_buckets().await {
                    Ok(buckets) => {
                        let _ = cluster.buckets.set(buckets);
                        cluster.check_catalogue_identity().await;
                        tracing::info!(node_id = %cluster.node_id, "cluster buckets open");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cluster: cannot open the buckets yet; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            let heartbeat = tokio::spawn(cluster.clone().heartbeat(capacity, public_url));
            let watcher = tokio::spawn(cluster.clone().watch_nodes());
            let _ = tokio::join!(heartbeat, watcher);
        });
        tokio::spawn(catalogue::publish(self.clone(), store));
        tokio::spawn(forward::serve(self.clone(), local_base));
    }

    async fn heartbeat(self: Arc<Self>, capacity: Arc<Capacity>, public_url: String) {
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        // After a stall (NATS away, a busy runtime) one heartbeat, not a burst of them.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            tick.tick().await;
            let usage = capacity.usage();
            let info = NodeInfo {
                recorder_id: self.node_id.clone(),
                public_url: public_url.clone(),
                available_live: usage.available_live(),
                draining: usage.draining,
                heartbeat: now_millis(),
            };
            let value = serde_json::to_vec(&info).expect("plain data");
            // Seen at once by this node, whatever NATS does.
            self.lock_nodes().insert(info.recorder_id.clone(), info);
            if let Ok(buckets) = self.buckets() {
                match buckets.nodes.put(key_part(&self.node_id), value.into()).await {
                    Ok(_) => {
                        if failures > 0 {
                            // Back after an outage: the catalogue may be a new one (made again
                            // by another node), and then this node's records are written again.
                            self.check_catalogue_identity().await;
                        }
                        failures = 0;
                    }
                    Err(err) => {
                        failures += 1;
                        tracing::warn!(error = %err, failures, "cluster: heartbeat not written");
                        // Connected, yet no stream takes the put: the buckets may be gone (every
                        // server lost its store); a few heartbeats of it, and they are made again.
                        if failures >= 3 && self.client.connection_state() == async_nats::connection::State::Connected {
                            self.recreate_missing_buckets().await;
                        }
                    }
                }
            }
        }
    }

    /// Keeps `nodes` as the registry says, re-watching after any error, and after a silence:
    /// this node's own heartbeat comes through a working watch every `heartbeat`, so a watch
    /// quiet for three of them (its consumer lost in a NATS outage, not re-created) is dropped
    /// and opened again.
    async fn watch_nodes(self: Arc<Self>) {
        let silence = (self.settings.heartbeat * 3).max(Duration::from_secs(3));
        loop {
            let Ok(buckets) = self.buckets() else { return };
            match buckets.nodes.watch_all().await {
                Ok(mut watch) => loop {
                    let entry = match tokio::time::timeout(silence, watch.next()).await {
                        Ok(Some(entry)) => entry,
                        Ok(None) => break,
                        Err(_) => {
                            tracing::warn!("cluster: the node registry's watch went quiet; watching again");
                            break;
                        }
                    };
                    let Ok(entry) = entry else { break };
                    if entry.operation != kv::Operation::Put {
                        continue;
                    }
                    if let Ok(info) = serde_json::from_slice::<NodeInfo>(&entry.value) {
                        if info.recorder_id != self.node_id {
                            self.lock_nodes().insert(info.recorder_id.clone(), info);
                        }
                    }
                },
                Err(err) => tracing::warn!(error = %err, "cluster: cannot watch the node registry"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeInfo>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node `recorder_id` if its heartbeat is recent.
    pub fn alive(&self, recorder_id: &str) -> Option<NodeInfo> {
        let ttl = self.settings.node_ttl.as_millis() as i64;
        self.lock_nodes()
            .get(recorder_id)
            .filter(|n| now_millis() - n.heartbeat <= ttl)
            .cloned()
    }

    /// Every node whose heartbeat is recent, this one included.
    pub fn alive_nodes(&self) -> Vec<NodeInfo> {
        let ttl = self.settings.node_ttl.as_millis() as i64;
        let now = now_millis();
        let mut nodes: Vec<_> = self
            .lock_nodes()
            .values()
            .filter(|n| now - n.heartbeat <= ttl)
            .cloned()
            .collect();
        nodes.sort_by(|a, b| a.recorder_id.cmp(&b.recorder_id));
        nodes
    }

    /// Where a new instance goes: the node with the most capacity available (this one on a
    /// tie), never one that is draining or has none. Needs the cluster (a start must take its
    /// leases there).
    pub fn place(&self) -> Result<NodeInfo, ClusterError> {
        self.buckets()?;
        choose_node(&self.alive_nodes(), &self.node_id).ok_or(ClusterError::NoCapacity)
    }

    /// A record as another node should show it: a live instance whose owner's heartbeat has
    /// lapsed is `PENDING_RECOVERY` (it resumes when the owner comes back).
    pub fn as_seen(&self, mut record: InstanceRecord) -> InstanceRecord {
        if record.state.is_live() && record.recorder_id != self.node_id && self.alive(&record.recorder_id).is_none() {
            record.state = recorder_actors::domain::InstanceState::PendingRecovery;
        }
        record
    }

    /// The buckets are open and the connection is up.
    pub fn is_connected(&self) -> bool {
        self.buckets.get().is_some() && self.client.connection_state() == async_nats::connection::State::Connected
    }

    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The largest message the NATS server takes (its `max_payload`), once it said it.
    pub(crate) fn max_payload(&self) -> Option<usize> {
        Some(self.client.server_info().max_payload).filter(|max| *max > 0)
    }
}

/// Pure: the node with the most capacity available among `nodes` (`me` on a tie), skipping the
/// draining ones and those with none.
fn choose_node(nodes: &[NodeInfo], me: &str) -> Option<NodeInfo> {
    nodes
        .iter()
        .filter(|n| !n.draining && n.available_live > 0)
        .max_by_key(|n| (n.available_live, n.recorder_id == me))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, available_live: u64, draining: bool) -> NodeInfo {
        NodeInfo {
            recorder_id: id.into(),
            public_url: format!("http://{id}"),
            available_live,
            draining,
            heartbeat: 0,
        }
    }

    #[test]
    fn a_start_goes_to_the_node_with_the_most_capacity_and_never_to_a_draining_or_full_one() {
        let nodes = [
            node("a", 100, false),
            node("b", 900, true),
            node("c", 300, false),
            node("d", 0, false),
        ];
        assert_eq!(choose_node(&nodes, "a").unwrap().recorder_id, "c");
        let tie = [node("a", 300, false), node("c", 300, false)];
        assert_eq!(choose_node(&tie, "a").unwrap().recorder_id, "a");
        assert_eq!(choose_node(&tie, "c").unwrap().recorder_id, "c");
        assert!(choose_node(&[node("b", 900, true), node("d", 0, false)], "b").is_none());
    }

    #[test]
    fn key_parts_are_subject_safe_for_any_id() {
        let part = key_part("conv.with spaces/and*wild>cards");
        assert!(part.chars().all(|c| c.is_ascii_hexdigit()), "{part}");
        assert_ne!(key_part("a.b"), key_part("a_b"));
    }
}
