//! Provider Controller and Composition Controller.

use actix_web::{web, HttpRequest, HttpResponse};
use recorder_actors::messages::{GetComposition, VerifyStorage};

use super::dto::*;
use super::error::{ApiError, ErrorBody};
use super::requests::check_id;
use super::AppState;
use crate::config::Scope;

#[utoipa::path(
    post,
    path = "/auvious.video/rtc-recorder/api/storageproviders/{applicationId}/verify",
    tag = "Provider Controller",
    operation_id = "verifyStorageProvider",
    summary = "Verify the validity of a given storage provider profile.",
    description = "Runs real checks against the application's store: the bucket (container, directory) exists, an object can be written, read back with the same content, overwritten, and deleted. Each check reports `passed` and a message; a check whose precondition failed says it was not run. `writeThroughputMibPerSec` is this project's addition.",
    params(("applicationId" = String, Path, description = "applicationId")),
    responses(
        (status = 200, description = "OK", body = StorageVerificationStatusMessage),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found: unknown applicationId", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let application_id = path.into_inner();
    check_id("applicationId", &application_id, state.settings.limits.max_id_len)?;
    if state
        .settings
        .application(&grant.organization_id, &application_id)
        .is_some()
        && !grant.may_use_application(&application_id)
    {
        return Err(ApiError::Forbidden(format!(
            "this API key may not use applicationId {application_id}"
        )));
    }
    let report = state
        .registry
        .send(VerifyStorage {
            organization_id: grant.organization_id,
            application_id,
        })
        .await??;
    Ok(HttpResponse::Ok().json(StorageVerificationStatusMessage::from(&report)))
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/compositions/{conversationId}",
    tag = "Composition Controller",
    operation_id = "getComposition",
    summary = "Get recording information for a given conversationId.",
    description = "One MP4 per conversation: every ended instance (stopped or aborted) in time order, the time between instances cut; cameras in a grid, a SCREEN stream in a large tile with the cameras in a strip, all audio mixed; H.264 + AAC (audio-only conversations: AAC only). Composed when an instance stops or is aborted, again when a later instance of the conversation ends. `state`: queued → INITIALISED, composing → ACTIVE, done → STOPPED, failed → FAILED (with `error`); a composition that had to leave a corrupt or empty track out is STOPPED with `error` code COMPOSITION_PARTIAL naming the track. `instanceId`, `recorderId`, `conferenceId` and `storageProfile` are the newest ended (stopped or aborted) instance's; `started`/`stopped` are the composition run's. One stream (`id` \"composition\", type VIDEO) with one track (VIDEO, or AUDIO when audio-only) carrying `storage` (local file, upload to `{organizationId}/{applicationId}/{conversationId}/composition.mp4`; one composition per application of the conversation, of that application's instances only) and, once uploaded, `url`: the provider's signed URL (S3, Azure, GCS), or for local and SFTP profiles a recorder-served signed URL (`getCompositionAsAttachment`, no API key, `Range` supported). 404 while the conversation has no ended instance, and for another organization's conversation.",
    params(
        ("conversationId" = String, Path, description = "conversationId"),
        ("applicationId" = Option<String>, Query, description = "Each application of an organization has its own composition of a conversation (of its own instances only). This one's; without it, the one queued last among the applications the key may use."),
    ),
    responses(
        (status = 200, description = "OK", body = RecordingDataMessage),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn composition(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<CompositionQuery>,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let conversation_id = path.into_inner();
    let max = state.settings.limits.max_id_len;
    check_id("conversationId", &conversation_id, max)?;
    let application_id_opt = query.into_inner().application_id;
    if let Some(application_id) = &application_id_opt {
        check_id("applicationId", application_id, max)?;
    }
    // An unknown conversation, another organization's, one without a stopped instance and one
    // whose application the key may not use all read the same 404: nothing leaks.
    let missing = || ApiError::NotFound(format!("no composition for conversation {conversation_id}"));
    let ttl = std::time::Duration::from_secs(state.settings.url_ttl_secs);
    let view = state
        .queries
        .composition(GetComposition {
            organization_id: grant.organization_id.clone(),
            conversation_id: conversation_id.clone(),
            applications: grant.applications().clone(),
            application_id_opt,
            ttl,
        })
        .await?
        .ok_or_else(missing)?;
    if !grant.may_use_application(&view.composition.application_id) {
        return Err(missing());
    }
    // Profiles without provider URLs (local, SFTP): the recorder serves the uploaded composition
    // itself behind its own signed URL.
    let recorder_url = |suffix: &str| {
        let path = format!(
            "{}{suffix}",
            super::signed::composition_attachment_path(
                &view.composition.organization_id,
                &view.composition.application_id,
                &conversation_id,
            )
        );
        let signed = state.signer.sign("GET", &path, chrono::Utc::now());
        format!("{}{path}?{}", state.public_url, signed.to_query())
    };
    let url = view
        .url
        .clone()
        .or_else(|| view.composition.uploaded.map(|_| recorder_url("")));
    let stereo_url = view.stereo_url.clone().or_else(|| {
        view.composition
            .stereo
            .as_ref()
            .and_then(|s| s.uploaded)
            .map(|_| recorder_url("/stereo"))
    });
    Ok(HttpResponse::Ok().json(composition_message(&view.composition, &view.instance, url, stereo_url)))
}

#[derive(Debug, serde::Deserialize)]
pub struct CompositionQuery {
    /// One application's composition of the conversation.
    #[serde(rename = "applicationId")]
    application_id: Option<String>,
}
