//! Cluster routing (cluster mode only): before a request reaches its handler, this decides which
//! node answers it. Any node takes any request:
//!
//! - a start goes to the node with the most capacity available (`Cluster::place`);
//! - what addresses an instance (`/recordings/{conversationId}/{recorderId}/{instanceId}/...`,
//!   a transcript add or co-browse event naming its `recorderId`) goes to that node;
//! - a publish goes to the node that owns the conference (its lease): WHIP with a 307 to the
//!   owner's URL (RFC 9725 allows redirects), plain RTP forwarded, so the answer carries the
//!   owner's ports;
//! - everything else is answered here (listings and states read the catalogue too).
//!
//! Forwarding is over NATS request/reply (`crate::cluster::forward`). When the owner is down, a
//! read of its instance is answered here from the catalogue, and a command gets 503 with
//! `Retry-After`: its instance resumes when the owner restarts.

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse, ResponseError};
use futures_util::StreamExt;

use super::error::ApiError;
use super::{AppState, BASE_PATH};
use crate::cluster::forward::{self, ForwardedRequest, FORWARDED_HEADER};
use crate::cluster::{Cluster, ClusterError};

/// Where a request is answered, from its method and path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Here,
    /// A start: placed on the node with the most capacity.
    Place,
    /// The node of this `recorderId`.
    Recorder(String),
    /// The node named by the JSON body's `recorderId`.
    BodyRecorder,
    /// The node that owns this conference; `whip_publish`: answered with a redirect.
    Conference {
        conference_id: String,
        whip_publish: bool,
    },
    /// The node that composed this conversation last: the owner of its newest ended instance.
    Composer {
        conversation_id: String,
    },
}

/// Pure: the target of a request.
pub fn target_of(method: &Method, path: &str) -> Target {
    let Some(rest) = path.strip_prefix(BASE_PATH) else {
        return Target::Here;
    };
    let segments: Vec<String> = rest
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["recordings", "start"] if method == Method::POST => Target::Place,
        ["recordings", "chat", "transcript", "add"] | ["recordings", "cobrowse", "event"] if method == Method::POST => {
            Target::BodyRecorder
        }
        ["recordings", conversation, recorder, _instance, ..]
            if !matches!(*conversation, "attachment" | "chat" | "cobrowse" | "start") && *recorder != "url" =>
        {
            Target::Recorder(recorder.to_string())
        }
        ["compositions", conversation] if method == Method::GET => Target::Composer {
            conversation_id: conversation.to_string(),
        },
        ["media", transport @ ("rtp" | "whip"), conference, rest @ ..] => Target::Conference {
            conference_id: conference.to_string(),
            whip_publish: *transport == "whip" && rest.is_empty() && method == Method::POST,
        },
        _ => Target::Here,
    }
}

fn answer(req: ServiceRequest, response: HttpResponse) -> ServiceResponse<BoxBody> {
    req.into_response(response)
}

/// The middleware (wrapped around the whole app; does nothing on a single node).
pub async fn route(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let cluster = state.as_ref().and_then(|s| s.cluster.clone());
    let (Some(state), Some(cluster)) = (state, cluster) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if req.headers().contains_key(FORWARDED_HEADER) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let mut body: Option<web::Bytes> = None;
    let owner = match target_of(req.method(), req.path()) {
        Target::Here => None,
        Target::Place => match cluster.place() {
            Ok(node) => Some(node.recorder_id),
            Err(err) => return Ok(answer(req, ApiError::from(err).error_response())),
        },
        Target::Recorder(recorder_id) => Some(recorder_id),
        Target::Composer { conversation_id } => match state.keys.authorize(req.request(), crate::config::Scope::Global)
        {
            // The composition is where the conversation's newest ended instance was recorded.
            Ok(grant) => cluster
                .catalogue_conversation(grant.organization_id.as_str(), &conversation_id)
                .await
                .ok()
                .and_then(|records| {
                    records
                        .into_iter()
                        .filter(|r| r.state.is_terminal())
                        .max_by_key(|r| r.stopped)
                        .map(|r| r.recorder_id)
                }),
            Err(_) => None,
        },
        Target::BodyRecorder => {
            let bytes = match read_payload(&mut req, state.settings.limits.max_body_bytes).await {
                Ok(bytes) => bytes,
                Err(err) => return Ok(answer(req, err.error_response())),
            };
            let recorder_id = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("recorderId").and_then(|r| r.as_str()).map(str::to_string));
            body = Some(bytes);
            recorder_id
        }
        Target::Conference {
            conference_id,
            whip_publish,
        } => {
            let organization_id = super::media::organization_of(req.request(), &state);
            let owner = match organization_id {
                Some(org) => match cluster.conference_owner(&org, &conference_id).await {
                    Ok(owner) => owner,
                    Err(err) => return Ok(answer(req, ApiError::from(err).error_response())),
                },
                None => None,
            };
            if let (Some(owner), true) = (&owner, whip_publish) {
                if *owner != cluster.node_id {
                    let redirect = redirect_to(&cluster, owner, req.request());
                    return Ok(answer(req, redirect));
                }
            }
            owner
        }
    };
    let owner = owner.filter(|o| *o != cluster.node_id);
    let Some(owner) = owner else {
        if let Some(bytes) = body {
            req.set_payload(bytes_payload(bytes));
        }
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let bytes = match body {
        Some(bytes) => bytes,
        None => match read_payload(&mut req, state.settings.limits.max_body_bytes).await {
            Ok(bytes) => bytes,
            Err(err) => return Ok(answer(req, err.error_response())),
        },
    };
    let down = cluster.alive(&owner).is_none();
    let forwarded = if down {
        Err(ClusterError::Unavailable(format!(
            "recorder node {owner} is down; what it records resumes when it restarts"
        )))
    } else {
        cluster.forward(&owner, &forwarded_request(&req, &bytes)).await
    };
    match forwarded {
        Ok(response) => Ok(answer(req, response_of(response))),
        // A read is answered here from the catalogue (the owner's last durable state).
        Err(_) if req.method() == Method::GET => {
            req.set_payload(bytes_payload(bytes));
            Ok(next.call(req).await?.map_into_boxed_body())
        }
        Err(err @ ClusterError::TooLarge { .. }) => Ok(answer(req, ApiError::from(err).error_response())),
        Err(err) => {
            let mut response = ApiError::from(err).error_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            Ok(answer(req, response))
        }
    }
}

fn bytes_payload(bytes: web::Bytes) -> actix_web::dev::Payload {
    actix_web::dev::Payload::from(bytes)
}

async fn read_payload(req: &mut ServiceRequest, max: usize) -> Result<web::Bytes, ApiError> {
    let mut payload = req.take_payload();
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_field("body", e.to_string()))?;
        if body.len() + chunk.len() > max {
            return Err(ApiError::PayloadTooLarge {
                field: "body".into(),
                message: format!("the body is larger than {max} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn forwarded_request(req: &ServiceRequest, body: &[u8]) -> ForwardedRequest {
    ForwardedRequest {
        id: uuid::Uuid::new_v4().simple().to_string(),
        method: req.method().to_string(),
        uri: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.path().to_string()),
        headers: req
            .headers()
            .iter()
            .filter(|(n, _)| forward::carried(n.as_str()))
            .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: forward::encode_body(body),
    }
}

fn response_of(forwarded: forward::ForwardedResponse) -> HttpResponse {
    let status = StatusCode::from_u16(forwarded.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = HttpResponse::build(status);
    for (name, value) in &forwarded.headers {
        response.append_header((name.as_str(), value.as_str()));
    }
    response.body(forward::decode_body(&forwarded.body))
}

/// 307 to the same path and query on the owner's public URL.
fn redirect_to(cluster: &Arc<Cluster>, owner: &str, req: &actix_web::HttpRequest) -> HttpResponse {
    let Some(node) = cluster.alive(owner) else {
        let mut response = ApiError::Unavailable(format!(
            "recorder node {owner}, which records this conference, is down; try again shortly"
        ))
        .error_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return response;
    };
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(req.path());
    HttpResponse::TemporaryRedirect()
        .insert_header((header::LOCATION, format!("{}{path_and_query}", node.public_url)))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(method: Method, path: &str) -> Target {
        target_of(&method, &format!("{BASE_PATH}{path}"))
    }

    #[test]
    fn requests_go_to_the_node_that_owns_what_they_address() {
        assert_eq!(t(Method::POST, "/recordings/start"), Target::Place);
        assert_eq!(t(Method::POST, "/recordings/chat/transcript/add"), Target::BodyRecorder);
        assert_eq!(t(Method::POST, "/recordings/cobrowse/event"), Target::BodyRecorder);
        for path in [
            "/recordings/c1/node-a/i1",
            "/recordings/c1/node-a/i1/stop",
            "/recordings/c1/node-a/i1/state",
        ] {
            assert_eq!(t(Method::GET, path), Target::Recorder("node-a".into()), "{path}");
        }
        assert_eq!(
            t(Method::GET, "/recordings/c%2F1/node%20a/i1"),
            Target::Recorder("node a".into())
        );
        for path in [
            "/recordings/c1",
            "/recordings/c1/active",
            "/recordings/c1/cobrowse",
            "/recordings/c1/url/review",
            "/recordings/attachment/track/c/r/i/s/t",
            "/openapi.json",
        ] {
            assert_eq!(t(Method::GET, path), Target::Here, "{path}");
        }
        assert_eq!(
            t(Method::POST, "/media/whip/room-1"),
            Target::Conference {
                conference_id: "room-1".into(),
                whip_publish: true
            }
        );
        assert_eq!(
            t(Method::DELETE, "/media/whip/room-1/s1"),
            Target::Conference {
                conference_id: "room-1".into(),
                whip_publish: false
            }
        );
        assert_eq!(
            t(Method::POST, "/media/rtp/room-1"),
            Target::Conference {
                conference_id: "room-1".into(),
                whip_publish: false
            }
        );
        assert_eq!(
            t(Method::GET, "/compositions/c1"),
            Target::Composer {
                conversation_id: "c1".into()
            }
        );
        assert_eq!(target_of(&Method::GET, "/health"), Target::Here);
    }
}
