//! Requests forwarded to the node that owns what they address, over NATS request/reply: the
//! receiving node sends the HTTP request as it came (method, path, headers, body) to the owner's
//! subject; the owner replays it against its own API listener (marked forwarded, so it is
//! answered there and never sent on) and replies with the response as it went out. Auth,
//! validation and every answer are the owner's own, exactly as if the client had called it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterError};

/// Marks a request replayed by its owner; names the node it came through.
pub const FORWARDED_HEADER: &str = "x-recorder-forwarded";

/// A forwarded command may take as long as a stop's finalization of its files.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

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
        let payload = serde_json::to_vec(request).expect("plain data");
        let message = self
            .client()
            .send_request(
                self.forward_subject(to),
                async_nats::Request::new()
                    .payload(payload.into())
                    .timeout(Some(FORWARD_TIMEOUT)),
            )
            .await
            .map_err(|e| ClusterError::Unavailable(format!("recorder node {to} does not answer: {e}")))?;
        serde_json::from_slice(&message.payload)
            .map_err(|e| ClusterError::Unavailable(format!("recorder node {to} answered garbage: {e}")))
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
    loop {
        match cluster.client().subscribe(subject.clone()).await {
            Ok(mut requests) => {
                while let Some(message) = requests.next().await {
                    let (cluster, http, base) = (cluster.clone(), http.clone(), local_base.clone());
                    tokio::spawn(async move {
                        let Some(reply) = message.reply.clone() else { return };
                        let response = match serde_json::from_slice::<ForwardedRequest>(&message.payload) {
                            Ok(request) => replay(&http, &base, &cluster.node_id, request).await,
                            Err(e) => error_response(400, &format!("malformed forwarded request: {e}")),
                        };
                        let payload = serde_json::to_vec(&response).expect("plain data");
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

async fn replay(http: &reqwest::Client, base: &str, node_id: &str, request: ForwardedRequest) -> ForwardedResponse {
    let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
        return error_response(400, "forwarded request with an unknown method");
    };
    let mut builder = http.request(method, format!("{base}{}", request.uri));
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
