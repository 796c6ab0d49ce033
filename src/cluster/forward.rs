//! Requests forwarded to the node that owns what they address, over NATS request/reply: the
//! receiving node sends the HTTP request as it came (method, path, headers, body) to the owner's
//! subject; the owner replays it against its own API listener (marked forwarded, so it is
//! answered there and never sent on) and replies with the response as it went out. Auth,
//! validation and every answer are the owner's own, exactly as if the client had called it.
//!
//! A request or its reply can be lost on the way (a NATS server dies with it in flight), so the
//! sender asks again, each attempt bounded by `cluster.request_timeout_ms`, until
//! [`FORWARD_TIMEOUT`]; every attempt carries the same id, and the owner runs a request once:
//! an attempt that finds its id running waits for that run, one that finds it done gets its
//! answer again (kept [`ANSWERS_KEPT`]). So a retried stop or transcript add is applied once.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use futures_util::future::{BoxFuture, Shared};
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterError};

/// Marks a request replayed by its owner; names the node it came through.
pub const FORWARDED_HEADER: &str = "x-recorder-forwarded";

/// A forwarded command may take as long as a stop's finalization of its files.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an owner keeps the answer of a forwarded request for a retry of it.
const ANSWERS_KEPT: Duration = Duration::from_secs(120);

/// Headers that belong to one hop and are not carried over.
const HOP_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    FORWARDED_HEADER,
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedRequest {
    /// The same for every attempt of one request: the owner runs it once.
    pub id: String,
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    /// Base64.
    pub body: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Base64.
    pub body: String,
}

pub fn encode_body(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_body(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_default()
}

pub fn carried(name: &str) -> bool {
    !HOP_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h))
}

impl Cluster {
    /// Sends `request` to node `to` and returns its answer; `Unavailable` when the node does not
    /// answer (down, or NATS away).
    pub async fn forward(&self, to: &str, request: &ForwardedRequest) -> Result<ForwardedResponse, ClusterError> {
        let payload = bytes::Bytes::from(serde_json::to_vec(request).expect("plain data"));
        // One NATS message carries the request: a larger one would be refused at every attempt.
        if let Some(max_payload) = self.max_payload().filter(|max| payload.len() > *max) {
            let overhead = payload.len() - request.body.len();
            return Err(ClusterError::TooLarge {
                node: to.to_string(),
                body_limit: max_payload.saturating_sub(overhead) / 4 * 3,
            });
        }
        let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        loop {
            let attempt = self
                .client()
                .send_request(
                    self.forward_subject(to),
                    async_nats::Request::new()
                        .payload(payload.clone())
                        .timeout(Some(self.settings.request_timeout)),
                )
                .await;
            let err = match attempt {
                Ok(message) => {
                    return serde_json::from_slice(&message.payload)
                        .map_err(|e| ClusterError::Unavailable(format!("recorder node {to} answered garbage: {e}")))
                }
                Err(err) => err,
            };
            if tokio::time::Instant::now() >= deadline || self.alive(to).is_none() {
                return Err(ClusterError::Unavailable(format!(
                    "recorder node {to} does not answer: {err}"
                )));
            }
            tracing::debug!(to, id = %request.id, error = %err, "cluster: a forwarded request is sent again");
            // Nobody listening yet (a reconnecting node resubscribes): a moment before the retry.
            if err.kind() == async_nats::client::RequestErrorKind::NoResponders {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Answers the requests forwarded to this node, for the life of the process.
pub(super) async fn serve(cluster: Arc<Cluster>, local_base: String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FORWARD_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let subject = cluster.forward_subject(&cluster.node_id);
    let runs: Runs = Arc::new(Mutex::new(HashMap::new()));
    loop {
        match cluster.client().subscribe(subject.clone()).await {
            Ok(mut requests) => {
                while let Some(message) = requests.next().await {
                    let (cluster, http, base, runs) = (cluster.clone(), http.clone(), local_base.clone(), runs.clone());
                    tokio::spawn(async move {
                        let Some(reply) = message.reply.clone() else { return };
                        let response = match serde_json::from_slice::<ForwardedRequest>(&message.payload) {
                            Ok(request) => {
                                let node_id = cluster.node_id.clone();
                                run_once(&runs, request, move |request| async move {
                                    replay(&http, &base, &node_id, request).await
                                })
                                .await
                            }
                            Err(e) => error_response(400, &format!("malformed forwarded request: {e}")),
                        };
                        let mut payload = serde_json::to_vec(&response).expect("plain data");
                        if let Some(max_payload) = cluster.max_payload().filter(|max| payload.len() > *max) {
                            // Said at once, not left to the asking node's timeout.
                            let message = format!(
                                "the answer of recorder node {} is larger than one NATS message ({} > {max_payload} bytes); ask that node directly",
                                cluster.node_id,
                                payload.len()
                            );
                            payload = serde_json::to_vec(&error_response(503, &message)).expect("plain data");
                        }
                        if let Err(err) = cluster.client().publish(reply, payload.into()).await {
                            tracing::warn!(error = %err, "cluster: a forwarded request's answer was not sent");
                        }
                    });
                }
            }
            Err(err) => tracing::warn!(error = %err, "cluster: cannot take forwarded requests yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Each forwarded request's run by id: running or done, shared by every attempt of it.
type Runs = Arc<Mutex<HashMap<String, Shared<BoxFuture<'static, ForwardedResponse>>>>>;

/// Runs `request` with `run` unless an attempt of it ran or runs already: then that run's answer.
async fn run_once<F, Fut>(runs: &Runs, request: ForwardedRequest, run: F) -> ForwardedResponse
where
    F: FnOnce(ForwardedRequest) -> Fut,
    Fut: std::future::Future<Output = ForwardedResponse> + Send + 'static,
{
    let id = request.id.clone();
    let cleanup = runs.clone();
    let shared = {
        // One lock for the look-up and the insert: two attempts arriving together run it once.
        let mut runs = runs.lock().unwrap_or_else(|p| p.into_inner());
        match runs.get(&id) {
            Some(running) => running.clone(),
            None => {
                // Spawned: the run completes even if every waiting attempt goes away.
                let handle = tokio::spawn(run(request));
                let shared = async move {
                    handle
                        .await
                        .unwrap_or_else(|e| error_response(503, &format!("the request's run failed: {e}")))
                }
                .boxed()
                .shared();
                runs.insert(id.clone(), shared.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(ANSWERS_KEPT).await;
                    cleanup.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                });
                shared
            }
        }
    };
    shared.await
}

/// The URL a forwarded request is replayed at: only an absolute path (one `/`, then not a
/// second) on this node's own listener. Anything else, `@host/...` (which would make the base a
/// user name and send the request to another host) or `//host/...` among them, is refused: a
/// forwarded request can never make the node fetch another address.
fn replay_url(base: &str, uri: &str) -> Option<url::Url> {
    if !uri.starts_with('/') || uri.starts_with("//") || uri.contains('\\') {
        return None;
    }
    let base = url::Url::parse(base).ok()?;
    let url = url::Url::parse(&format!("{}{uri}", base.as_str().trim_end_matches('/'))).ok()?;
    let same = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none();
    same.then_some(url)
}

async fn replay(http: &reqwest::Client, base: &str, node_id: &str, request: ForwardedRequest) -> ForwardedResponse {
    let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
        return error_response(400, "forwarded request with an unknown method");
    };
    let Some(url) = replay_url(base, &request.uri) else {
        tracing::warn!(uri = %request.uri, "cluster: a forwarded request that is not an absolute path was refused");
        return error_response(400, "a forwarded request must name an absolute path of this node");
    };
    let mut builder = http.request(method, url);
    for (name, value) in request.headers.iter().filter(|(n, _)| carried(n)) {
        builder = builder.header(name, value);
    }
    let sent = builder
        .header(FORWARDED_HEADER, node_id)
        .body(decode_body(&request.body))
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .filter(|(n, _)| carried(n.as_str()))
                .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let body = response.bytes().await.unwrap_or_default();
            ForwardedResponse {
                status,
                headers,
                body: encode_body(&body),
            }
        }
        Err(e) => error_response(503, &format!("the owner node could not answer: {e}")),
    }
}

fn error_response(status: u16, message: &str) -> ForwardedResponse {
    let code = if status == 400 { "BAD_REQUEST" } else { "UNAVAILABLE" };
    let body = serde_json::json!({"code": code, "message": message});
    ForwardedResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: encode_body(body.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn request(id: &str) -> ForwardedRequest {
        ForwardedRequest {
            id: id.into(),
            method: "POST".into(),
            uri: "/x".into(),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    #[test]
    fn only_an_absolute_path_on_the_nodes_own_listener_is_replayed() {
        let base = "http://127.0.0.1:8080";
        let ok = replay_url(base, "/auvious.video/rtc-recorder/api/recordings/c/r/i?x=1").unwrap();
        assert_eq!(
            ok.as_str(),
            "http://127.0.0.1:8080/auvious.video/rtc-recorder/api/recordings/c/r/i?x=1"
        );
        for hostile in [
            "@127.0.0.1:9999/latest/api/token",
            "@169.254.169.254/latest/meta-data/",
            "//169.254.169.254/latest",
            ":9999/x",
            ".evil.example/x",
            "\\\\evil/x",
            "",
            "x",
        ] {
            assert!(replay_url(base, hostile).is_none(), "{hostile:?} was replayed");
        }
        // An '@' inside a path is a path.
        assert_eq!(
            replay_url(base, "/a/@169.254.169.254/b").unwrap().host_str(),
            Some("127.0.0.1")
        );
    }

    #[tokio::test]
    async fn every_attempt_of_one_request_gets_the_answer_of_its_one_run() {
        let runs: Runs = Arc::new(Mutex::new(HashMap::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let run = |count: Arc<AtomicUsize>| {
            move |_request: ForwardedRequest| async move {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                ForwardedResponse {
                    status: 200,
                    headers: Vec::new(),
                    body: encode_body(format!("run {n}").as_bytes()),
                }
            }
        };
        let (first, second) = tokio::join!(
            run_once(&runs, request("a"), run(count.clone())),
            run_once(&runs, request("a"), run(count.clone())),
        );
        let late = run_once(&runs, request("a"), run(count.clone())).await;
        for answer in [&first, &second, &late] {
            assert_eq!(decode_body(&answer.body), b"run 1");
        }
        let other = run_once(&runs, request("b"), run(count.clone())).await;
        assert_eq!(decode_body(&other.body), b"run 2");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
