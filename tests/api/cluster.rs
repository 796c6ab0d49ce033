//! Cluster mode, black box: three recorder nodes and a three-server NATS JetStream cluster
//! (`nats-server`, R3 buckets), everything on loopback. Any node takes any request; the nodes
//! agree on leases (409 across nodes), the catalogue (listings and states from every node),
//! placement (a start lands on the node with the most capacity), and forward what needs the
//! owner (stop, transcript add, plain-RTP publish) or redirect it (WHIP). A node that dies shows
//! its live instances PENDING_RECOVERY on the others; NATS losing one server loses nothing, and
//! losing all of them makes cluster commands 503 while each node goes on, its catalogue caught
//! up when NATS is back. The nodes share one object store (an Azure Blob container on Azurite,
//! which takes the real object keys).

use std::time::Duration;

use serde_json::{json, Value};
use testkit::azurite::Container;
use testkit::nats::NatsCluster;

use crate::helpers::*;

/// Node name, admission budget (the placement's "capacity available"), plain-RTP port range.
const NODES: [(&str, u64, u16); 3] = [("node-a", 200, 47000), ("node-b", 300, 47200), ("node-c", 900, 47400)];

/// The environment variable the nodes read the Azure connection string from.
const AZURE_CONNECTION_VAR: &str = "RTC_TEST_AZURE_CONNECTION";

struct Cluster {
    nats: NatsCluster,
    store: Container,
    nodes: Vec<TestApp>,
    _dir: tempfile::TempDir,
}

fn node_config(nats: &NatsCluster, budget: u64, rtp_port_min: u16, bucket_name: &str) -> String {
    let urls: Vec<String> = nats.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"[cluster]
enabled = true
nats_urls = [{}]
replicas = 3
name = "{bucket_name}"
heartbeat_ms = 200
node_ttl_secs = 2
request_timeout_ms = 2000

[capacity]
budget = {budget}
max_cpu_percent = 0

[media]
rtp_port_min = {rtp_port_min}
rtp_port_max = {}

[signing]
secret = "one-secret-shared-by-every-node-of-the-cluster"
url_ttl_secs = 3600
"#,
        urls.join(", "),
        rtp_port_min + 199
    )
}

fn cluster_status(node: &TestApp) -> Value {
    node.get_root("/ready", KEY_A).json()["cluster"].clone()
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = NatsCluster::start(dir.path(), 3);
        let bucket_name = format!("rtc_test_{}", uuid::Uuid::new_v4().simple());
        let store = Container::on_services();
        let nodes = NODES
            .iter()
            .map(|(name, budget, ports)| {
                let extra = node_config(&nats, *budget, *ports, &bucket_name);
                let profile = store.profile(AZURE_CONNECTION_VAR);
                TestApp::spawn_config(
                    |root| {
                        let local = format!("provider = \"LOCAL\"\npath = \"{}/storage-a\"\n", root.display());
                        let config = base_config(root, &extra);
                        assert!(config.contains(&local), "app-a's storage in {config}");
                        config.replacen(&local, &format!("{profile}\n"), 1)
                    },
                    &[
                        ("RECORDER_RECORDER_ID", name),
                        ("RECORDER_OPS__DRAIN_TIMEOUT_SECS", "2"),
                        (AZURE_CONNECTION_VAR, &store.connection_string),
                    ],
                )
            })
            .collect();
        let cluster = Cluster {
            nats,
            store,
            nodes,
            _dir: dir,
        };
        cluster.wait_all_see(3);
        cluster
    }

    fn wait_all_see(&self, num_nodes: u64) {
        for node in &self.nodes {
            poll(
                Duration::from_secs(60),
                "every node connected and seeing the others",
                || {
                    let status = cluster_status(node);
                    (status["connected"] == true && status["nodes"] == num_nodes).then_some(())
                },
            );
        }
    }

    fn node(&self, name: &str) -> &TestApp {
        let at = NODES.iter().position(|(n, _, _)| *n == name).expect("a node of NODES");
        &self.nodes[at]
    }
}

fn start_body(conversation_id: &str, conference_id: &str) -> Value {
    json!({"applicationId": APP_A, "conversationId": conversation_id, "conferenceId": conference_id})
}

fn ids(listing: &Value) -> Vec<(String, String)> {
    listing["recordings"]
        .as_array()
        .unwrap_or_else(|| panic!("a listing: {listing:#}"))
        .iter()
        .map(|r| {
            (
                r["instanceId"].as_str().unwrap_or_default().to_string(),
                r["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn three_nodes_serve_as_one_with_leases_a_catalogue_placement_and_forwarding() {
    let cluster = Cluster::start();
    let (a, b, c) = (cluster.node("node-a"), cluster.node("node-b"), cluster.node("node-c"));

    // A start through B lands on C, the node with the most capacity available.
    let conversation = conv("cluster");
    let event = b.start(KEY_A, APP_A, &conversation);
    assert_eq!(event["recorderId"], "node-c", "{event:#}");

    // One live instance per conversation and one owner per conference, cluster-wide.
    a.post_json("/recordings/start", KEY_A, &start_body(&conversation, "another-room"))
        .assert_error(409);
    b.post_json(
        "/recordings/start",
        KEY_A,
        &start_body(&conv("other"), &format!("conf-{conversation}")),
    )
    .assert_error(409);

    // Every node answers the same listing, state and instance.
    let path = instance_path(&event);
    for node in [a, b, c] {
        let listing = node
            .get(&format!("/recordings/{conversation}"), KEY_A)
            .ok_json("ConversationMessage");
        assert_eq!(
            ids(&listing),
            vec![(
                event["instanceId"].as_str().unwrap().to_string(),
                "INITIALISED".to_string()
            )]
        );
        assert_eq!(node.get(&format!("{path}/state"), KEY_A).json()["state"], "INITIALISED");
        let active = node.get(&format!("/recordings/{conversation}/active"), KEY_A);
        assert_eq!(
            active.json()["instanceId"],
            event["instanceId"],
            "{}",
            active.describe()
        );
    }

    // What needs the owner is forwarded: a transcript line through A...
    let line = json!({"chatTranscriptList": [chat("2024-06-01T10:00:00Z", "hello from A", "u1")],
        "conversationId": conversation, "instanceId": event["instanceId"], "recorderId": event["recorderId"]});
    a.post_json("/recordings/chat/transcript/add", KEY_A, &line)
        .ok_json("RecordingDataEvent");
    // A body under the node's limit (1 MiB) but too large for one NATS message (base64 in
    // JSON) cannot reach the owner: 413 naming the body at once, not a 503 after the forward's
    // minute of retries.
    let lines: Vec<Value> = (0..90)
        .map(|i| chat("2024-06-01T10:00:01Z", &format!("{i} {}", "x".repeat(10_000)), "u1"))
        .collect();
    let big = json!({"chatTranscriptList": lines, "conversationId": conversation,
        "instanceId": event["instanceId"], "recorderId": event["recorderId"]});
    let refused = a.post_json("/recordings/chat/transcript/add", KEY_A, &big);
    let error = refused.assert_error_naming(413, "body");
    assert!(
        error["message"].as_str().unwrap_or_default().contains("node-c"),
        "the refusal names the owner: {}",
        refused.describe()
    );
    // ... a plain-RTP publish through A gets the owner's ports ...
    let published = publish_opus(a, KEY_A, "rtp", &event, "agent");
    assert_eq!(published.status, 201, "{}", published.describe());
    let port: u16 = published
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("an audio port in {}", published.text()));
    assert!((47400..47600).contains(&port), "node-c's port range, not {port}");
    // ... and a WHIP publish through B is redirected to the owner.
    let whip = publish_opus(b, KEY_A, "whip", &event, "customer");
    assert_eq!(whip.status, 307, "{}", whip.describe());
    let location = whip.header("location").unwrap_or_default().to_string();
    assert!(
        location.starts_with(&c.base_url) && location.contains(&format!("/media/whip/conf-{conversation}")),
        "{location} is not on node-c ({})",
        c.base_url
    );

    // A stop through B; every node sees it, and the conversation can start again anywhere.
    let stopped = b.stop(KEY_A, &event);
    assert_eq!(stopped["state"], "STOPPED");
    // The transcript added through A is in the store the nodes share, as every node says.
    let container_url = format!(
        "{}/{}/",
        testkit::services_env()["RTC_AZURE_ENDPOINT"],
        cluster.store.name
    );
    for node in [a, b, c] {
        poll(Duration::from_secs(20), "the transcript in the shared store", || {
            let instance = node.get(&path, KEY_A).json();
            let location = instance["chatTranscript"]["location"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            location.starts_with(&container_url).then_some(())
        });
    }
    // The stop's answer came after its leases were released: a new start right away is taken.
    let again = a
        .post_json(
            "/recordings/start",
            KEY_A,
            &start_body(&conversation, &format!("conf-{conversation}")),
        )
        .ok_json("RecordingDataEvent");
    for node in [a, b, c] {
        poll(Duration::from_secs(10), "the stop in every node's listing", || {
            let listing = node.get(&format!("/recordings/{conversation}"), KEY_A).json();
            (ids(&listing).first().map(|(_, s)| s.as_str()) == Some("STOPPED")).then_some(())
        });
    }
    poll(Duration::from_secs(10), "both instances in A's listing", || {
        let listing = a.get(&format!("/recordings/{conversation}"), KEY_A).json();
        (ids(&listing).len() == 2).then_some(())
    });
    let second_path = instance_path(&again);
    let owner = NODES
        .iter()
        .position(|(n, _, _)| again["recorderId"] == *n)
        .expect("the owner is a node of the cluster");
    let other = &cluster.nodes[(owner + 1) % 3];
    assert_eq!(
        other.get(&format!("{second_path}/state"), KEY_A).json()["state"],
        "INITIALISED"
    );

    // SIGTERM to node-c, which records `again`: it drains, placement skips it at once (starts
    // land on node-b, the next most capacity), and it exits 0 after its drain (2 s: `again`
    // stays live); restarted, it resumes `again` and takes work again.
    assert_eq!(again["recorderId"], "node-c", "{again:#}");
    let mut cluster = cluster;
    cluster.nodes[2].send_sigterm();
    let elsewhere = poll(
        Duration::from_secs(10),
        "a start placed beside the draining node",
        || {
            let resp =
                cluster.nodes[0].post_json("/recordings/start", KEY_A, &start_body(&conv("drain"), &conv("room")));
            (resp.status == 200).then(|| resp.json())
        },
    );
    assert_eq!(elsewhere["recorderId"], "node-b", "{elsewhere:#}");
    let status = cluster.nodes[2].wait_exit(Duration::from_secs(30));
    assert!(status.success(), "node-c after its drain: {status:?}");
    poll(
        Duration::from_secs(10),
        "the drained node's instance PENDING_RECOVERY on A",
        || {
            let state = cluster.nodes[0].get(&format!("{second_path}/state"), KEY_A).json();
            (state["state"] == "PENDING_RECOVERY").then_some(())
        },
    );
    cluster.nodes[2].restart();
    cluster.wait_all_see(3);
    poll(
        Duration::from_secs(20),
        "the drained node's instance live again on A",
        || {
            let state = cluster.nodes[0].get(&format!("{second_path}/state"), KEY_A).json();
            (state["state"] == "INITIALISED").then_some(())
        },
    );
    let resumed = cluster.nodes[0].stop(KEY_A, &again);
    assert_eq!(resumed["state"], "STOPPED", "{resumed:#}");
    let back = cluster.nodes[0].start(KEY_A, APP_A, &conv("back"));
    assert_eq!(back["recorderId"], "node-c", "{back:#}");
}

#[test]
fn a_dead_node_shows_pending_recovery_and_nats_outages_lose_nothing() {
    let mut cluster = Cluster::start();
    let event = cluster.node("node-a").start(KEY_A, APP_A, &conv("outage"));
    let owner = NODES
        .iter()
        .position(|(n, _, _)| event["recorderId"] == *n)
        .expect("placed on a node of the cluster");
    let witness = (owner + 1) % 3;
    let path = instance_path(&event);

    // The witness has the instance in its catalogue (the owner writes it just after the start
    // answers; a kill before that would leave nothing to show).
    let conversation_path = format!("/recordings/{}", event["conversationId"].as_str().unwrap());
    poll(
        Duration::from_secs(10),
        "the instance in the witness's catalogue",
        || {
            let resp = cluster.nodes[witness].get(&conversation_path, KEY_A);
            (resp.status == 200
                && ids(&resp.json())
                    .iter()
                    .any(|(id, _)| event["instanceId"] == *id.as_str()))
            .then_some(())
        },
    );
    // The owner dies: the others show its live instance PENDING_RECOVERY and refuse its commands.
    cluster.nodes[owner].kill9();
    poll(Duration::from_secs(10), "PENDING_RECOVERY on the other nodes", || {
        (cluster.nodes[witness].get(&format!("{path}/state"), KEY_A).json()["state"] == "PENDING_RECOVERY")
            .then_some(())
    });
    let refused = cluster.nodes[witness].post_empty(&format!("{path}/stop"), KEY_A);
    refused.assert_error(503);
    assert!(refused.header("retry-after").is_some(), "{}", refused.describe());
    cluster.nodes[owner].restart();
    poll(
        Duration::from_secs(20),
        "the owner back, its instance live again",
        || (cluster.nodes[witness].get(&format!("{path}/state"), KEY_A).json()["state"] == "INITIALISED").then_some(()),
    );

    // One NATS server down: nothing is lost.
    cluster.nats.kill(0);
    let stopped = cluster.nodes[witness].stop(KEY_A, &event);
    assert_eq!(stopped["state"], "STOPPED");
    let next = poll(Duration::from_secs(20), "a start with one NATS server down", || {
        let resp = cluster.nodes[witness].post_json(
            "/recordings/start",
            KEY_A,
            &start_body(&conv("one-down"), &conv("room")),
        );
        (resp.status == 200).then(|| resp.json())
    });
    cluster.nats.start_server(0);

    // Every NATS server down: cluster commands answer 503, each node still answers for its own.
    for i in 0..3 {
        cluster.nats.kill(i);
    }
    let next_owner = NODES
        .iter()
        .position(|(n, _, _)| next["recorderId"] == *n)
        .expect("placed on a node of the cluster");
    let owner_node = &cluster.nodes[next_owner];
    poll(Duration::from_secs(20), "a start refused without NATS", || {
        let resp = owner_node.post_json("/recordings/start", KEY_A, &start_body(&conv("no-nats"), &conv("room")));
        (resp.status == 503).then_some(())
    });
    let direct = owner_node.stop(KEY_A, &next);
    assert_eq!(
        direct["state"], "STOPPED",
        "the owner stops its own instance without NATS"
    );
    // NATS back: the catalogue catches up, and the other nodes see the stop made meanwhile.
    for i in 0..3 {
        cluster.nats.start_server(i);
    }
    let other = &cluster.nodes[(next_owner + 1) % 3];
    // The listing of another node reads the owner's instances from the catalogue.
    let conversation = next["conversationId"].as_str().unwrap();
    poll(Duration::from_secs(60), "the catalogue caught up", || {
        let resp = other.get(&format!("/recordings/{conversation}"), KEY_A);
        (resp.status == 200 && ids(&resp.json()).first().map(|(_, s)| s.as_str()) == Some("STOPPED")).then_some(())
    });

    // Every NATS server loses its store: the nodes make the buckets again, see each other again,
    // and write their whole catalogue again.
    for i in 0..3 {
        cluster.nats.kill(i);
        cluster.nats.wipe_store(i);
    }
    for i in 0..3 {
        cluster.nats.start_server(i);
    }
    cluster.wait_all_see(3);
    poll(Duration::from_secs(60), "the catalogue written again", || {
        let resp = other.get(&format!("/recordings/{conversation}"), KEY_A);
        (resp.status == 200 && ids(&resp.json()).first().map(|(_, s)| s.as_str()) == Some("STOPPED")).then_some(())
    });
    let after = poll(Duration::from_secs(20), "a start once the buckets are back", || {
        let resp = other.post_json("/recordings/start", KEY_A, &start_body(&conv("wiped"), &conv("room")));
        (resp.status == 200).then(|| resp.json())
    });
    let conflict = cluster.nodes[witness].post_json(
        "/recordings/start",
        KEY_A,
        &start_body(after["conversationId"].as_str().unwrap(), &conv("room")),
    );
    conflict.assert_error(409);
}
