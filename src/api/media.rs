//! Media ingest: how a publisher's media reaches a live recorder instance. Two ways in, both
//! addressed by the instance's conferenceId and answered with SDP:
//!
//! - `POST /media/whip/{conferenceId}` — WHIP (RFC 9725): WebRTC publishers.
//! - `POST /media/rtp/{conferenceId}` — plain RTP: the sender's SDP offer lists its m-lines, the
//!   answer gives each accepted one a UDP port (port 0 = refused).
//!
//! The publisher names itself with the query parameters `userId` and `type` (CAM, MIC, SCREEN,
//! HOLD, VIDEO, UNKNOWN; default UNKNOWN), or the headers `X-User-Id` and `X-Stream-Type`, and
//! may declare its `role` (`agent` or `customer`, header `X-Participant-Role`): its channel in
//! the conversation's stereo audio. It
//! authenticates with `Authorization: Bearer` and either an API key of the instance's
//! organization or a publish token issued by `POST .../{instanceId}/publish-token`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use recorder_actors::domain::OrganizationId;
use recorder_actors::domain::{ParticipantRole, StreamType};
use recorder_actors::messages::{Applications, IngestTransport, Publish, Unpublish};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{timestamp, ApiError, ErrorBody};
use super::lookup::{instance_ref, visible_instance, InstancePath};
use super::requests::{self, check_id};
use super::{AppState, BASE_PATH};
use crate::config::Scope;
use crate::publish_token::{PublishGrant, PublishTokens, TokenError, MAX_TOKEN_TTL_SECS};

/// Default lifetime of a publish token.
const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

/// Who is publishing, after authentication.
struct Publisher {
    organization_id: OrganizationId,
    /// A publish token pins the instance (and maybe the user).
    instance_id_opt: Option<String>,
    user_id_opt: Option<String>,
    /// A publish token may fix the publisher's role.
    role_opt: Option<ParticipantRole>,
    conference_id_opt: Option<String>,
    /// The applications an API key may use; a token is pinned to its instance instead.
    applications: Applications,
    /// Plain RTP: offers may leave out the sender's address (`api_keys.<name>.rtp_any_source`).
    rtp_any_source: bool,
}

fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Publisher, ApiError> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
        });
    if let Some(token) = bearer.filter(|t| PublishTokens::looks_like_token(t)) {
        let grant = state.publish_tokens.verify(token, Utc::now()).map_err(|e| match e {
            TokenError::Expired | TokenError::BadSignature | TokenError::Malformed | TokenError::NotAToken => {
                ApiError::Unauthorized(e.to_string())
            }
        })?;
        // A token the recorder signed names a valid organization; anything else is not one.
        let organization_id = OrganizationId::parse(grant.organization_id)
            .map_err(|_| ApiError::Unauthorized("the publish token names no organization".into()))?;
        return Ok(Publisher {
            organization_id,
            instance_id_opt: Some(grant.instance_id),
            user_id_opt: grant.user_id_opt,
            role_opt: grant.role_opt,
            conference_id_opt: Some(grant.conference_id),
            applications: None,
            rtp_any_source: false,
        });
    }
    let grant = state.keys.authorize(req, Scope::Global)?;
    Ok(Publisher {
        applications: grant.applications().clone(),
        rtp_any_source: grant.rtp_any_source,
        organization_id: grant.organization_id,
        instance_id_opt: None,
        user_id_opt: None,
        role_opt: None,
        conference_id_opt: None,
    })
}

/// The organization a publish request is made for (its API key's or its publish token's), if
/// its credentials are good: what cluster routing needs to find the conference's owner.
pub(super) fn organization_of(req: &HttpRequest, state: &AppState) -> Option<String> {
    authenticate(req, state).ok().map(|p| p.organization_id.into_string())
}

#[derive(Debug, Deserialize)]
pub struct PublishQuery {
    #[serde(rename = "userId")]
    user_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// `agent` or `customer`: the publisher's stereo channel.
    role: Option<String>,
}

fn parse_stream_type(text: &str) -> Result<StreamType, ApiError> {
    Ok(match text.to_ascii_uppercase().as_str() {
        "CAM" => StreamType::Cam,
        "HOLD" => StreamType::Hold,
        "MIC" => StreamType::Mic,
        "SCREEN" => StreamType::Screen,
        "UNKNOWN" => StreamType::Unknown,
        "VIDEO" => StreamType::Video,
        _ => {
            return Err(ApiError::bad_field(
                "type",
                "must be one of CAM, HOLD, MIC, SCREEN, UNKNOWN, VIDEO",
            ))
        }
    })
}

fn header_text(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

async fn publish(
    req: HttpRequest,
    state: web::Data<AppState>,
    conference_id: String,
    query: PublishQuery,
    payload: web::Payload,
    transport: IngestTransport,
) -> Result<HttpResponse, ApiError> {
    let publisher = authenticate(&req, &state)?;
    let body = super::body::read_body(&req, payload, &state.settings.limits).await?;
    let max = state.settings.limits.max_id_len;
    check_id("conferenceId", &conference_id, max)?;
    let content_type = header_text(&req, "content-type").unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/sdp" {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be application/sdp, not {content_type:?}"
        )));
    }
    let user_id = query
        .user_id
        .or_else(|| header_text(&req, "x-user-id"))
        .or_else(|| publisher.user_id_opt.clone())
        .ok_or_else(|| {
            ApiError::bad_field(
                "userId",
                "the publisher's userId is required (query userId or X-User-Id)",
            )
        })?;
    check_id("userId", &user_id, max)?;
    if publisher
        .user_id_opt
        .as_ref()
        .is_some_and(|allowed| *allowed != user_id)
    {
        return Err(ApiError::Forbidden(format!(
            "this publish token may not publish as userId {user_id}"
        )));
    }
    if publisher
        .conference_id_opt
        .as_ref()
        .is_some_and(|allowed| *allowed != conference_id)
    {
        return Err(ApiError::Forbidden(
            "this publish token is for another conference".into(),
        ));
    }
    let kind = match query.kind.or_else(|| header_text(&req, "x-stream-type")) {
        Some(text) => parse_stream_type(&text)?,
        None => StreamType::Unknown,
    };
    let role = match query.role.or_else(|| header_text(&req, "x-participant-role")) {
        Some(text) => Some(
            ParticipantRole::parse(&text).ok_or_else(|| ApiError::bad_field("role", "must be agent or customer"))?,
        ),
        None => publisher.role_opt,
    };
    if publisher.role_opt.is_some_and(|allowed| Some(allowed) != role) {
        return Err(ApiError::Forbidden(
            "this publish token is for a publisher of another role".into(),
        ));
    }
    let offer_sdp = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_field("sdp", "the offer is not UTF-8 text"))?
        .to_string();
    if offer_sdp.trim().is_empty() {
        return Err(ApiError::bad_field("sdp", "the offer is empty"));
    }
    let answer = state
        .registry
        .send(Publish {
            organization_id: publisher.organization_id,
            conference_id: conference_id.clone(),
            instance_id_opt: publisher.instance_id_opt,
            applications: publisher.applications,
            rtp_any_source: publisher.rtp_any_source,
            permit: None,
            user_id,
            kind,
            role,
            transport,
            offer_sdp,
        })
        .await??;
    let segment = match transport {
        IngestTransport::Rtp => "rtp",
        IngestTransport::Whip => "whip",
    };
    let location = format!("{BASE_PATH}/media/{segment}/{conference_id}/{}", answer.session_id);
    Ok(HttpResponse::Created()
        .content_type("application/sdp")
        .insert_header((header::LOCATION, location))
        .insert_header(("X-Recorder-Instance-Id", answer.instance_id))
        .insert_header(("X-Recorder-Stream-Id", answer.stream_id))
        .body(answer.answer_sdp))
}

#[utoipa::path(
    post,
    path = "/auvious.video/rtc-recorder/api/media/rtp/{conferenceId}",
    tag = "Media Ingest",
    operation_id = "publishRtp",
    summary = "Publish a stream over plain RTP.",
    description = "The body is an SDP offer (Content-Type application/sdp) listing the sender's m-lines. The answer (201, application/sdp) gives each accepted m-line a UDP port on the recorder (RTP on an even port, RTCP on the next unless the offer has a=rtcp-mux); m-lines it will not record are answered with port 0 (unsupported codec, or audio/video off for the instance). The offer must name the sender's address (c=), unless the key has rtp_any_source; the first RTP packet of the accepted payload type from that address latches each port to its source, and datagrams from elsewhere (or noise before it) are dropped. Ports are drawn at random from the range. Location names the session; DELETE it to end the publisher.",
    params(
        ("conferenceId" = String, Path, description = "conferenceId of a live recorder instance"),
        ("userId" = Option<String>, Query, description = "the publisher (or header X-User-Id)"),
        ("type" = Option<String>, Query, description = "CAM, MIC, SCREEN, HOLD, VIDEO or UNKNOWN (or header X-Stream-Type)"),
        ("role" = Option<String>, Query, description = "agent or customer (or header X-Participant-Role; a token may fix it): the publisher's channel in the conversation's stereo audio, agents left, customers right"),
    ),
    request_body(content = String, content_type = "application/sdp"),
    responses(
        (status = 201, description = "Created: the SDP answer", content_type = "application/sdp", body = String),
        (status = 400, description = "Bad Request: malformed SDP, no recordable m-line, missing userId", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found: no live instance for the conference", body = ErrorBody),
        (status = 409, description = "Conflict: the instance is stopping", body = ErrorBody),
        (status = 415, description = "Unsupported Media Type", body = ErrorBody),
        (status = 503, description = "Service Unavailable: this node is at its capacity or draining before it stops (code AT_CAPACITY, `field` the limit or `draining`); Retry-After says when to try again", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn publish_rtp(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<PublishQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    publish(
        req,
        state,
        path.into_inner(),
        query.into_inner(),
        payload,
        IngestTransport::Rtp,
    )
    .await
}

#[utoipa::path(
    post,
    path = "/auvious.video/rtc-recorder/api/media/whip/{conferenceId}",
    tag = "Media Ingest",
    operation_id = "publishWhip",
    summary = "Publish a stream over WebRTC (WHIP, RFC 9725).",
    description = "The body is the publisher's SDP offer (application/sdp); the answer (201) carries the recorder's ICE candidates (no trickle). Location names the WHIP session: DELETE ends it; PATCH (trickle ICE, ICE restart) is not supported (405). Authorization: Bearer with an API key of the instance's organization or a publish token.",
    params(
        ("conferenceId" = String, Path, description = "conferenceId of a live recorder instance"),
        ("userId" = Option<String>, Query, description = "the publisher (or header X-User-Id; a token may fix it)"),
        ("type" = Option<String>, Query, description = "CAM, MIC, SCREEN, HOLD, VIDEO or UNKNOWN (or header X-Stream-Type)"),
        ("role" = Option<String>, Query, description = "agent or customer (or header X-Participant-Role; a token may fix it): the publisher's channel in the conversation's stereo audio, agents left, customers right"),
    ),
    request_body(content = String, content_type = "application/sdp"),
    responses(
        (status = 201, description = "Created: the SDP answer", content_type = "application/sdp", body = String),
        (status = 400, description = "Bad Request: malformed SDP or nothing recordable in it", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found: no live instance for the conference", body = ErrorBody),
        (status = 415, description = "Unsupported Media Type", body = ErrorBody),
        (status = 503, description = "Service Unavailable: this node is at its capacity or draining before it stops (code AT_CAPACITY, `field` the limit or `draining`); Retry-After says when to try again", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn publish_whip(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<PublishQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    publish(
        req,
        state,
        path.into_inner(),
        query.into_inner(),
        payload,
        IngestTransport::Whip,
    )
    .await
}

#[utoipa::path(
    delete,
    path = "/auvious.video/rtc-recorder/api/media/whip/{conferenceId}/{sessionId}",
    tag = "Media Ingest",
    operation_id = "endPublishSession",
    summary = "End a publisher's session (WHIP or plain RTP: /media/rtp/{conferenceId}/{sessionId} too).",
    description = "The session's segment is finalized; the stream continues if the same publisher returns within the reconnect grace period.",
    params(
        ("conferenceId" = String, Path, description = "conferenceId"),
        ("sessionId" = String, Path, description = "from the Location of the publish answer"),
    ),
    responses(
        (status = 200, description = "OK: the session ended"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn end_session(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let publisher = authenticate(&req, &state)?;
    let (conference_id, session_id) = path.into_inner();
    let max = state.settings.limits.max_id_len;
    check_id("conferenceId", &conference_id, max)?;
    check_id("sessionId", &session_id, max)?;
    state
        .registry
        .send(Unpublish {
            organization_id: publisher.organization_id,
            conference_id,
            instance_id_opt: publisher.instance_id_opt,
            applications: publisher.applications,
            session_id,
        })
        .await??;
    Ok(HttpResponse::Ok().finish())
}

/// `PATCH` on a WHIP session: trickle ICE / ICE restart are not supported, so 405 (RFC 9725
/// §4.3.1 allows it). Routed but not in the OpenAPI document, which lists what a client can use.
pub async fn patch_whip() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed {
        message: "trickle ICE and ICE restart are not supported: the answer carries every candidate".into(),
        allow: "DELETE",
    })
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishTokenMessage {
    /// Send as `Authorization: Bearer <token>` to the WHIP / RTP endpoints.
    pub token: String,
    pub valid_until: String,
    /// Path of the WHIP endpoint for the instance's conference.
    pub whip_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

#[utoipa::path(
    post,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}/publish-token",
    tag = "Media Ingest",
    operation_id = "issuePublishToken",
    summary = "Issue a short-lived publish token for one live instance.",
    description = "Lets a browser publish (WHIP) without holding an API key. The token is HMAC-signed, scoped to this instance (and, with userId, to one publisher) and expires after ttlSecs.",
    params(
        ("conversationId" = String, Path, description = "conversationId"),
        ("recorderId" = String, Path, description = "recorderId"),
        ("instanceId" = String, Path, description = "instanceId"),
    ),
    request_body(content = requests::PublishTokenRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "OK", body = PublishTokenMessage),
        (status = 400, description = "Bad Request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
        (status = 409, description = "Conflict: the instance is no longer live", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn publish_token(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: InstancePath,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let body = super::body::read_body(&req, payload, &state.settings.limits).await?;
    let at = instance_ref(&state, &grant.organization_id, &path)?;
    // Another application's instance is missing for a key limited to some applications.
    let record = visible_instance(&state, &grant, at).await?;
    let request: requests::PublishTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        requests::PublishTokenRequest::default()
    } else {
        requests::parse(&body)?
    };
    request.check(&state.settings.limits, MAX_TOKEN_TTL_SECS)?;
    let user_id_opt = request.user_id.map(|u| u.into_string());
    let ttl = request.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if !record.state.is_live() {
        return Err(ApiError::Conflict(format!(
            "recorder instance {} is {}",
            record.instance_id, record.state
        )));
    }
    let valid_until = Utc::now() + chrono::Duration::seconds(ttl as i64);
    let token = state.publish_tokens.issue(&PublishGrant {
        organization_id: record.organization_id.clone(),
        instance_id: record.instance_id.clone(),
        conference_id: record.conference_id.clone(),
        user_id_opt: user_id_opt.clone(),
        role_opt: request.role.map(|r| r.0),
        expires: valid_until.timestamp(),
    });
    Ok(HttpResponse::Ok().json(PublishTokenMessage {
        token,
        valid_until: timestamp(valid_until),
        whip_url: format!("{BASE_PATH}/media/whip/{}", record.conference_id),
        user_id: user_id_opt,
    }))
}
