//! Co-browse events, their sessions, and signed downloads of their artefacts.

use actix_files::NamedFile;
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{web, HttpRequest, HttpResponse};
use recorder_actors::domain::CobrowseEvent as EngineCobrowseEvent;
use recorder_actors::messages::{AddCobrowseEvent, ArtefactSource, ProviderCobrowseUrl, ResolveCobrowseFile};
use serde::Deserialize;

use super::dto::*;
use super::error::{timestamp, ApiError, ErrorBody};
use super::lookup::{instance_ref, visible_conversation, visible_instance};
use super::requests::{self, check_id};
use super::signed::{attachment_path, unlinked_file, verify_signature, SignatureQuery};
use super::AppState;
use crate::config::Scope;

#[utoipa::path(
    post,
    path = "/auvious.video/rtc-recorder/api/recordings/cobrowse/event",
    tag = "Recorder Controller",
    operation_id = "addCobrowseEvent",
    summary = "Send a cobrowse session event to an existing recorder instance.",
    description = "Events are kept per session in sequenceId order whatever their arrival order; a repeated sequenceId is accepted and changes nothing. A payload over the configured size is 413. On stop each session is written to storage as `cobrowse/{sessionId}/events.json`.",
    request_body = requests::AddCobrowseEventCmd,
    responses(
        (status = 200, description = "OK", body = RecordingDataEvent),
        (status = 400, description = "Bad Request: a field is missing or invalid", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
        (status = 413, description = "Payload Too Large", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn add_event(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let body = super::body::read_body(&req, payload, &state.settings.limits).await?;
    let request: requests::AddCobrowseEventCmd = requests::parse(&body)?;
    request.check(&state.settings.limits)?;
    let path = (
        request.conversation_id.into_string(),
        request.recorder_id.into_string(),
        request.instance_id.into_string(),
    );
    let event = EngineCobrowseEvent {
        payload: request.event.payload,
        sequence_id: request.event.sequence_id,
        session_id: request.event.session_id.into_string(),
        timestamp: request.event.timestamp,
    };
    let instance = instance_ref(&state, &grant.organization_id, &path)?;
    visible_instance(&state, &grant, instance.clone()).await?;
    let accepted = state.registry.send(AddCobrowseEvent { instance, event }).await??;
    Ok(HttpResponse::Ok().json(RecordingDataEvent::from(&accepted.instance)))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/cobrowse",
    tag = "Recorder Controller",
    operation_id = "getCobrowseSessions",
    summary = "Get all cobrowse sessions for a given conversationId.",
    description = "`uploaded` is set once the session's events are in storage.",
    params(("conversationId" = String, Path, description = "conversationId")),
    responses(
        (status = 200, description = "OK", body = ConversationCobrowseSessionDataMessage),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn sessions(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    check_id("conversationId", &path, state.settings.limits.max_id_len)?;
    let conversation_id = path.into_inner();
    let instances = visible_conversation(&state, &grant, conversation_id.clone()).await?;
    Ok(HttpResponse::Ok().json(ConversationCobrowseSessionDataMessage::new(
        &conversation_id,
        &instances,
    )))
}

#[derive(Debug, Deserialize)]
pub struct UrlQuery {
    #[serde(rename = "conversationId")]
    conversation_id: Option<String>,
    id: Option<String>,
    #[serde(rename = "instanceId")]
    instance_id: Option<String>,
}

fn required_query<'a>(value: &'a Option<String>, name: &str, path_value: &str) -> Result<&'a str, ApiError> {
    let value = value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_field(name, "query parameter is required"))?;
    if value != path_value {
        return Err(ApiError::bad_field(name, "query parameter does not match the path"));
    }
    Ok(value)
}

/// Whether `referer`'s origin is one of `allowed` (`*` allows any).
fn referer_allowed(referer: &str, allowed: &[String]) -> Result<bool, ApiError> {
    let url = url::Url::parse(referer).map_err(|_| ApiError::bad_field("referer", "header is not a URL"))?;
    let origin = url.origin().ascii_serialization();
    Ok(allowed.iter().any(|a| a == "*" || *a == origin))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/{recorderId}/{instanceId}/cobrowse/{sessionId}/url/attachment",
    tag = "Recorder Controller",
    operation_id = "getCobrowseSessionSignedUrl",
    summary = "Get a signed URL for a given cobrowse session file",
    description = "Returns an absolute URL to the session's `events.json` under `/recordings/attachment/cobrowse/...`, signed with `Date`, `Expires` and `Signature`, valid until `validUntil` without an API key. The query's `conversationId`, `id` (the recorderId) and `instanceId` must match the path. The `referer` header's origin must be one the application allows (403 otherwise).",
    params(
        ("conversationId" = String, Query, description = "conversationId (equal to the path's)"),
        ("id" = String, Query, description = "recorderId (equal to the path's)"),
        ("instanceId" = String, Query, description = "instanceId (equal to the path's)"),
        ("referer" = String, Header, description = "referer"),
        ("sessionId" = String, Path, description = "sessionId"),
    ),
    responses(
        (status = 200, description = "OK", body = URLResourceMessage),
        (status = 400, description = "Bad Request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn signed_url(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String, String)>,
    query: web::Query<UrlQuery>,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let (conversation_id, recorder_id, instance_id, session_id) = path.into_inner();
    let at = instance_ref(
        &state,
        &grant.organization_id,
        &(conversation_id, recorder_id, instance_id),
    )?;
    check_id("sessionId", &session_id, state.settings.limits.max_id_len)?;
    required_query(&query.conversation_id, "conversationId", &at.conversation_id)?;
    required_query(&query.id, "id", &at.recorder_id)?;
    required_query(&query.instance_id, "instanceId", &at.instance_id)?;
    let referer = req
        .headers()
        .get(header::REFERER)
        .ok_or_else(|| ApiError::bad_field("referer", "header is required"))?
        .to_str()
        .map_err(|_| ApiError::bad_field("referer", "header is not valid text"))?
        .to_string();

    let record = visible_instance(&state, &grant, at.clone()).await?;
    let application = state
        .settings
        .application(&record.organization_id, &record.application_id)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "applicationId {} is no longer configured",
                record.application_id
            ))
        })?;
    if !referer_allowed(&referer, &application.allowed_origins)? {
        return Err(ApiError::Forbidden(
            "referer: origin not allowed for this application".into(),
        ));
    }
    let Some(session) = record.cobrowse_sessions.get(&session_id) else {
        return Err(ApiError::NotFound(format!(
            "no co-browse session {session_id} in instance {}",
            record.instance_id
        )));
    };
    // A session not stored yet is rendered from the state store when its URL is fetched, so
    // the URL works at once. An encrypting application's file is the ciphertext it stores
    // (a render would differ on every fetch, and Range with it): after a stop its URL waits,
    // bounded, for that upload; before the stop there is nothing to serve yet.
    if application.encryption.is_some() && session.uploaded.is_none() {
        if !record.state.is_terminal() {
            return Err(ApiError::NotFound(format!(
                "co-browse session {session_id} is stored, encrypted, when the recording stops"
            )));
        }
        wait_stored(&state, &grant, &at, &session_id).await?;
    }
    // Cloud profiles answer with the provider's own signed URL once the file is stored there;
    // local and SFTP profiles (and files not uploaded yet) with the recorder's.
    let ttl = std::time::Duration::from_secs(state.settings.url_ttl_secs);
    let now = chrono::Utc::now();
    let provider_url = state
        .queries
        .cobrowse_url(ProviderCobrowseUrl {
            instance: at,
            session_id: session_id.clone(),
            ttl,
        })
        .await?;
    if let Some(url) = provider_url {
        return Ok(HttpResponse::Ok().json(URLResourceMessage {
            url,
            valid_until: timestamp(now + chrono::Duration::seconds(ttl.as_secs() as i64)),
        }));
    }
    let path = attachment_path(
        &record.conversation_id,
        &record.recorder_id,
        &record.instance_id,
        &session_id,
        "events.json",
    );
    let signed = state.signer.sign("GET", &path, now);
    Ok(HttpResponse::Ok().json(URLResourceMessage {
        url: format!("{}{path}?{}", state.public_url, signed.to_query()),
        valid_until: timestamp(signed.valid_until),
    }))
}

/// Waits until the session's upload is recorded (the settle time and an upload), at most
/// `uploads.render_settle_ms` + 10 s; a 404 saying so after that.
async fn wait_stored(
    state: &AppState,
    grant: &crate::api::auth::Grant,
    at: &recorder_actors::messages::InstanceRef,
    session_id: &str,
) -> Result<(), ApiError> {
    let patience =
        std::time::Duration::from_millis(state.settings.uploads.render_settle_ms) + std::time::Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let record = visible_instance(state, grant, at.clone()).await?;
        if record
            .cobrowse_sessions
            .get(session_id)
            .is_some_and(|s| s.uploaded.is_some())
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::NotFound(format!(
                "co-browse session {session_id} is not stored yet; ask again later"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A file name inside one artefact folder: no separators, no dot segments, nothing encoded.
fn check_file_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(ApiError::bad_field(
            "fileName",
            "must be a plain file name in the session's folder",
        ));
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/attachment/cobrowse/{conversationId}/{recorderId}/{instanceId}/{sessionId}/{fileName}",
    tag = "Recorder Controller",
    operation_id = "getCobrowseSessionResourceAsAttachment",
    summary = "getCobrowseSessionResourceAsAttachment",
    description = "Downloads a co-browse artefact through a URL signed by `.../url/attachment`. The signature is the authority: no API key is needed. Supports `Range` (206 with `Content-Range`; 416 for unsatisfiable ranges). A tampered, expired or foreign signature is 403; a `fileName` that is not a plain name is 400.",
    params(
        ("conversationId" = String, Path, description = "conversationId"),
        ("recorderId" = String, Path, description = "recorderId"),
        ("instanceId" = String, Path, description = "instanceId"),
        ("sessionId" = String, Path, description = "sessionId"),
        ("fileName" = String, Path, description = "fileName"),
        ("Date" = String, Query, description = "Date"),
        ("Expires" = String, Query, description = "Expires"),
        ("Signature" = String, Query, description = "Signature"),
        ("Range" = Option<String>, Header, description = "Range"),
    ),
    responses(
        (status = 200, description = "OK", body = Resource, content_type = "application/octet-stream"),
        (status = 206, description = "Partial Content"),
        (status = 400, description = "Bad Request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
        (status = 416, description = "Range Not Satisfiable", body = ErrorBody),
    ),
    security((), ("apiKey" = ["global"]))
)]
pub async fn attachment(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String, String, String)>,
    query: web::Query<SignatureQuery>,
) -> Result<HttpResponse, ApiError> {
    let (conversation_id, recorder_id, instance_id, session_id, file_name) = path.into_inner();
    check_file_name(&file_name)?;
    let max = state.settings.limits.max_id_len;
    for (field, value) in [
        ("conversationId", &conversation_id),
        ("recorderId", &recorder_id),
        ("instanceId", &instance_id),
        ("sessionId", &session_id),
    ] {
        check_id(field, value, max)?;
    }
    let signed_path = attachment_path(&conversation_id, &recorder_id, &instance_id, &session_id, &file_name);
    verify_signature(&state, &signed_path, &query)?;
    let source = state
        .queries
        .cobrowse_file(ResolveCobrowseFile {
            conversation_id,
            recorder_id,
            instance_id,
            session_id,
            file_name: file_name.clone(),
        })
        .await?;
    let named = match source {
        ArtefactSource::File(path) => NamedFile::open_async(&path).await,
        // The open file stays readable after its name is gone; nothing is left behind.
        ArtefactSource::Downloaded(path) => {
            let named = NamedFile::open_async(&path).await;
            let _ = tokio::fs::remove_file(&path).await;
            named
        }
        // Fetched from the store (SFTP): served from an unlinked temp file so that Range works
        // exactly as for local files.
        ArtefactSource::Bytes(bytes) => web::block(move || unlinked_file(&bytes))
            .await
            .map_err(|e| ApiError::Unavailable(format!("serving the file: {e}")))?,
    };
    let named = named
        .map_err(|_| ApiError::NotFound(format!("{file_name} is not available")))?
        .set_content_type(actix_files::file_extension_to_mime("json"))
        .set_content_disposition(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(file_name)],
        });
    Ok(named.into_response(&req))
}
