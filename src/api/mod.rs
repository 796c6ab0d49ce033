//! The HTTP front. Handlers authenticate, parse input into checked values, send one message to
//! the engine's registry and render the reply; the front keeps no state of its own.

pub mod auth;
pub mod body;
mod cluster;
mod cobrowse;
pub mod dto;
pub mod error;
mod lookup;
mod media;
mod ops;
mod recordings;
pub mod requests;
mod review;
mod signed;
mod storage;
mod tracks;

use actix_web::dev::Service;
use actix_web::middleware::{ErrorHandlers, Logger};
use actix_web::{web, HttpResponse};
use futures_util::FutureExt;
use recorder_actors::actors::Registry;
use recorder_actors::snapshot::Mailbox;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use self::error::ApiError;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::publish_token::PublishTokens;
use crate::signing::UrlSigner;

pub const BASE_PATH: &str = "/auvious.video/rtc-recorder/api";

/// What every handler needs: the engine's address and read-only configuration.
pub struct AppState {
    pub registry: Mailbox<Registry>,
    /// Read-only questions answered from the store, without a mailbox hop.
    pub queries: recorder_actors::queries::Queries,
    pub keys: auth::KeyRing,
    pub settings: Settings,
    pub signer: UrlSigner,
    pub publish_tokens: PublishTokens,
    /// Absolute base URL (no trailing slash) used in signed URLs.
    pub public_url: String,
    pub metrics: Metrics,
    /// Cluster mode (`None`: a single node).
    pub cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Auvious Recorder API", version = "1.0", description = "Recorder API v1.0 as implemented by rtc-recorder."),
    paths(
        storage::composition,
        cobrowse::attachment,
        tracks::attachment,
        tracks::composition_attachment,
        tracks::stereo_attachment,
        recordings::add_transcript,
        cobrowse::add_event,
        recordings::start,
        recordings::conversation,
        recordings::active,
        cobrowse::sessions,
        recordings::instance,
        cobrowse::signed_url,
        review::review_url,
        recordings::instance_state,
        recordings::stop,
        recordings::pause,
        recordings::resume,
        recordings::erase_conversation,
        recordings::erase_instance,
        recordings::storage_info,
        storage::verify,
        ops::debug_actors,
        media::publish_rtp,
        media::publish_whip,
        media::end_session,
        media::publish_token,
    ),
    components(schemas(
        error::ErrorBody,
        requests::AddChatTranscriptCmd,
        requests::AddCobrowseEventCmd,
        dto::ChatTranscriptData,
        requests::ChatTranscriptEntry,
        requests::CobrowseEvent,
        dto::CobrowseSessionDataMessage,
        dto::ConversationCobrowseSessionDataMessage,
        dto::ConversationMessage,
        dto::ConversationRecordingData,
        dto::ConversationStreamData,
        dto::ConversationTrackData,
        dto::ConversationTrackStorageData,
        dto::InputStream,
        dto::LocalFileDataMessage,
        dto::RecordingDataEvent,
        dto::RecordingDataMessage,
        dto::PauseIntervalMessage,
        dto::ErasureMessage,
        recordings::ErasureAccepted,
        dto::Resource,
        requests::StartRecording,
        dto::StorageProfileDataMessage,
        dto::StorageTestResult,
        dto::StorageVerificationStatusMessage,
        dto::StreamDataMessage,
        dto::TrackDataMessage,
        dto::TrackStorageDataMessage,
        dto::URLResourceMessage,
        dto::UploadDataMessage,
        requests::PublishTokenRequest,
        media::PublishTokenMessage,
    )),
    modifiers(&ApiKeyAuth),
    tags(
        (name = "Composition Controller", description = "Media Composition"),
        (name = "Recorder Controller", description = "Media Recording"),
        (name = "Provider Controller", description = "Media Storage"),
        (name = "Operations", description = "This project's ops endpoints"),
        (name = "Media Ingest", description = "This project's media ingest: WHIP and plain RTP"),
    )
)]
pub struct ApiDoc;

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "The API key, as `<key>` or `Bearer <key>`.",
            ))),
        );
    }
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// Answers paths no route matches; the error renderer turns the empty 404 into the
/// `ROUTE_NOT_FOUND` error body.
async fn unknown_route() -> HttpResponse {
    HttpResponse::NotFound().finish()
}

/// Registers every route. Static paths come before parameterised ones with the same shape, and
/// each route carries its method guard, so `POST /recordings/start` never reads as a
/// conversation named `start`.
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.app_data(web::PayloadConfig::new(max_body_bytes))
        .app_data(
            web::QueryConfig::default()
                .error_handler(|err, _req| ApiError::bad_field("query", format!("invalid query string: {err}")).into()),
        )
        .app_data(
            web::PathConfig::default()
                .error_handler(|err, _req| ApiError::bad_field("path", format!("invalid path: {err}")).into()),
        )
        .route("/health", web::get().to(ops::health))
        .route("/ready", web::get().to(ops::ready))
        .route("/metrics", web::get().to(ops::metrics))
        .service(
            web::scope(BASE_PATH)
                .route("/openapi.json", web::get().to(openapi_json))
                .route("/debug/actors", web::get().to(ops::debug_actors))
                .route("/compositions/{conversationId}", web::get().to(storage::composition))
                .route(
                    "/storageproviders/{applicationId}/verify",
                    web::post().to(storage::verify),
                )
                .route("/media/rtp/{conferenceId}", web::post().to(media::publish_rtp))
                .route(
                    "/media/rtp/{conferenceId}/{sessionId}",
                    web::delete().to(media::end_session),
                )
                .route("/media/whip/{conferenceId}", web::post().to(media::publish_whip))
                .route(
                    "/media/whip/{conferenceId}/{sessionId}",
                    web::delete().to(media::end_session),
                )
                .route(
                    "/media/whip/{conferenceId}/{sessionId}",
                    web::patch().to(media::patch_whip),
                )
                .route("/recordings/start", web::post().to(recordings::start))
                .route(
                    "/recordings/chat/transcript/add",
                    web::post().to(recordings::add_transcript),
                )
                .route("/recordings/cobrowse/event", web::post().to(cobrowse::add_event))
                .route(
                    "/recordings/attachment/cobrowse/{conversationId}/{recorderId}/{instanceId}/{sessionId}/{fileName}",
                    web::get().to(cobrowse::attachment),
                )
                .route(
                    "/recordings/attachment/track/{conversationId}/{recorderId}/{instanceId}/{streamId}/{trackId}",
                    web::get().to(tracks::attachment),
                )
                .route(
                    "/recordings/attachment/composition/{organizationId}/{applicationId}/{conversationId}",
                    web::get().to(tracks::composition_attachment),
                )
                .route(
                    "/recordings/attachment/composition/{organizationId}/{applicationId}/{conversationId}/stereo",
                    web::get().to(tracks::stereo_attachment),
                )
                .route("/review-assets/{file}", web::get().to(review::asset))
                .route("/review/{conversationId}", web::get().to(review::page))
                .route("/review/{conversationId}/data", web::get().to(review::data))
                .route(
                    "/review/{conversationId}/composition",
                    web::get().to(review::composition),
                )
                .route("/review/{conversationId}/stereo", web::get().to(review::stereo))
                .route(
                    "/review/{conversationId}/track/{recorderId}/{instanceId}/{streamId}/{trackId}",
                    web::get().to(review::track),
                )
                .route(
                    "/review/{conversationId}/cobrowse/{instanceId}/{sessionId}",
                    web::get().to(review::cobrowse_events),
                )
                .route(
                    "/recordings/{conversationId}/url/review",
                    web::get().to(review::review_url),
                )
                .route("/recordings/{conversationId}/active", web::get().to(recordings::active))
                .route(
                    "/recordings/{conversationId}/cobrowse",
                    web::get().to(cobrowse::sessions),
                )
                .route("/recordings/{conversationId}", web::get().to(recordings::conversation))
                .route(
                    "/recordings/{conversationId}",
                    web::delete().to(recordings::erase_conversation),
                )
                .route(
                    "/recordings/{conversationId}/{recorderId}/{instanceId}/state",
                    web::get().to(recordings::instance_state),
                )
                .route(
                    "/recordings/{conversationId}/{recorderId}/{instanceId}/stop",
                    web::post().to(recordings::stop),
                )
                .route(
                    "/recordings/{conversationId}/{recorderId}/{instanceId}/pause",
                    web::post().to(recordings::pause),
                )
                .route(
                    "/recordings/{conversationId}/{recorderId}/{instanceId}/resume",
                    web::post().to(recordings::resume),
                )
                .route(
                    "/recordings/{conversationId}/{recorderId}/{instanceId}/storage/info",
                    web::get().to(recordings::storage_info),
                )
                .route(
                    "/recordings/{conversationId}/{recorderId}/{instanceId}/publish-token",
                    web::post().to(media::publish_token),
                )
                .route(
                    "/recordings/{conversationId}/{recorderId}/{instanceId}/cobrowse/{sessionId}/url/attachment",
                    web::get().to(cobrowse::signed_url),
                )
                .route(
                    "/recordings/{conversationId}/{recorderId}/{instanceId}",
                    web::get().to(recordings::instance),
                )
                .route(
                    "/recordings/{conversationId}/{recorderId}/{instanceId}",
                    web::delete().to(recordings::erase_instance),
                ),
        )
        .default_service(web::to(unknown_route));
}

/// The whole application: routes, error rendering, request metrics and access logs.
pub fn app(
    state: web::Data<AppState>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let max_body = state.settings.limits.max_body_bytes;
    actix_web::App::new()
        .app_data(state.clone())
        .configure(|cfg| configure(cfg, max_body))
        .wrap(ErrorHandlers::new().default_handler(error::render_foreign_error))
        .wrap_fn(move |req, srv| {
            let method = req.method().to_string();
            let state = state.clone();
            srv.call(req).map(move |res| {
                let status = match &res {
                    Ok(res) => res.status().as_u16(),
                    Err(err) => err.as_response_error().status_code().as_u16(),
                };
                state.metrics.observe_request(&method, status);
                res
            })
        })
        .wrap(actix_web::middleware::from_fn(cluster::route))
        .wrap(Logger::new("%a \"%m %U\" %s %b %Dms").log_target("rtc_recorder::access"))
}
