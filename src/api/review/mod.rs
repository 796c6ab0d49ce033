//! The review page: one conversation's recording, chat and co-browse on one timeline, in the
//! browser, opened through a signed link (no API key in the browser).
//!
//! `GET .../recordings/{conversationId}/url/review` (API key) returns the link:
//! `.../review/{conversationId}?organizationId=..&applicationId=..&Date=..&Expires=..&Signature=..`,
//! signed for the canonical path `.../review/{organizationId}/{applicationId}/{conversationId}`,
//! so it is bound to the organization, the application and the conversation. The page and
//! everything it loads (`/data`, the composition, the tracks, co-browse events) are checked
//! against that one signature; the static assets (`.../review-assets/*`) hold no data and are
//! public. The page's HTML, CSS and JS are compiled into the binary (no CDN: it works offline),
//! with rrweb's replayer (MIT, its licence beside it) for co-browse sessions recorded as rrweb
//! events.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use recorder_actors::domain::OrganizationId;
use recorder_actors::messages::{ResolveCompositionFile, ResolveTrackFile};
use serde::Deserialize;
use utoipa::IntoParams;

use super::dto::URLResourceMessage;
use super::error::{timestamp, ApiError, ErrorBody};
use super::lookup::visible_conversation;
use super::requests::{check_id, path_id};
use super::signed::{verify_signature, SignatureQuery};
use super::tracks::serve_file;
use super::{AppState, BASE_PATH};
use crate::config::Scope;
use data::review_data;

mod data;

/// How often the page asks again while an instance is live.
const LIVE_REFRESH_SECS: u64 = 5;

/// The canonical path a review link is signed for.
pub fn review_signed_path(organization: &str, application: &str, conversation: &str) -> String {
    format!("{BASE_PATH}/review/{organization}/{application}/{conversation}")
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ReviewUrlQuery {
    /// The application whose instances the page shows; without it, the application of the
    /// conversation's newest instance the key may see.
    application_id: Option<String>,
    /// How long the link stays valid, in seconds (default: `signing.url_ttl_secs`; at most 7 days).
    ttl_secs: Option<String>,
}

#[utoipa::path(
    get,
    path = "/auvious.video/rtc-recorder/api/recordings/{conversationId}/url/review",
    tag = "Recorder Controller",
    operation_id = "getReviewPageSignedUrl",
    summary = "Get a signed link to the conversation's review page",
    description = "Returns an absolute link to the review page of the conversation (`/review/{conversationId}`): the composition (or the per-track files before it exists), a timeline of the instances with their pauses and the gaps between them, every chat line at its time (click to seek), and the co-browse sessions (replayed when they are rrweb events). The link is signed (`Date`, `Expires`, `Signature`), bound to the organization, the application and the conversation, and expires at `validUntil`; no API key is needed or shown in the page. 404 when the key sees no instance of the conversation (in that application).",
    params(("conversationId" = String, Path, description = "conversationId"), ReviewUrlQuery),
    responses(
        (status = 200, description = "OK", body = URLResourceMessage),
        (status = 400, description = "Bad Request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not Found", body = ErrorBody),
    ),
    security(("apiKey" = ["global"]))
)]
pub async fn review_url(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ReviewUrlQuery>,
) -> Result<HttpResponse, ApiError> {
    let grant = state.keys.authorize(&req, Scope::Global)?;
    let conversation_id = path.into_inner();
    let max = state.settings.limits.max_id_len;
    check_id("conversationId", &conversation_id, max)?;
    let query = query.into_inner();
    let ttl = match &query.ttl_secs {
        None => state.signer.ttl_secs(),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|t| (1..=crate::signing::UrlSigner::max_lifetime_secs()).contains(t))
            .ok_or_else(|| {
                ApiError::bad_field(
                    "ttlSecs",
                    format!(
                        "must be a whole number of seconds from 1 to {}",
                        crate::signing::UrlSigner::max_lifetime_secs()
                    ),
                )
            })?,
    };
    if let Some(application_id) = &query.application_id {
        check_id("applicationId", application_id, max)?;
    }
    let instances = visible_conversation(&state, &grant, conversation_id.clone()).await?;
    let application_id = match query.application_id {
        Some(application_id) => {
            if !instances.iter().any(|i| i.application_id == application_id) {
                return Err(ApiError::NotFound(format!(
                    "no recordings for conversation {conversation_id} in application {application_id}"
                )));
            }
            application_id
        }
        None => instances
            .iter()
            .max_by_key(|i| i.started.unwrap_or(i.created))
            .map(|i| i.application_id.clone())
            .expect("visible_conversation answers at least one instance"),
    };
    let now = Utc::now();
    let signed = state.signer.sign_for(
        "GET",
        &review_signed_path(&grant.organization_id, &application_id, &conversation_id),
        now,
        ttl,
    );
    let mut url = url::form_urlencoded::Serializer::new(String::new());
    url.append_pair("organizationId", &grant.organization_id)
        .append_pair("applicationId", &application_id);
    let url = format!(
        "{}{BASE_PATH}/review/{conversation_id}?{}&{}",
        state.public_url,
        url.finish(),
        signed.to_query()
    );
    Ok(HttpResponse::Ok().json(URLResourceMessage {
        url,
        valid_until: timestamp(signed.valid_until),
    }))
}

/// The query of every request the page makes: which organization and application, and the
/// link's signature.
#[derive(Debug, Deserialize)]
pub struct ReviewQuery {
    #[serde(rename = "organizationId")]
    organization_id: Option<String>,
    #[serde(rename = "applicationId")]
    application_id: Option<String>,
    #[serde(flatten)]
    signature: SignatureQuery,
}

/// What a checked review link names.
struct ReviewLink {
    organization_id: OrganizationId,
    application_id: String,
    conversation_id: String,
    /// The link's query as received, to append to the URLs the page loads.
    query: String,
}

/// Checks the link: ids well formed, signature valid for this organization, application and
/// conversation, not expired.
fn check_link(
    req: &HttpRequest,
    state: &AppState,
    conversation_id: &str,
    query: &ReviewQuery,
) -> Result<ReviewLink, ApiError> {
    let max = state.settings.limits.max_id_len;
    check_id("conversationId", conversation_id, max)?;
    let organization = query
        .organization_id
        .as_deref()
        .ok_or_else(|| ApiError::bad_field("organizationId", "query parameter is required"))?;
    let organization_id: OrganizationId = path_id("organizationId", organization, max)?;
    let application_id = query
        .application_id
        .clone()
        .ok_or_else(|| ApiError::bad_field("applicationId", "query parameter is required"))?;
    check_id("applicationId", &application_id, max)?;
    let signed_path = review_signed_path(&organization_id, &application_id, conversation_id);
    verify_signature(state, &signed_path, &query.signature)?;
    Ok(ReviewLink {
        organization_id,
        application_id,
        conversation_id: conversation_id.to_string(),
        query: req.query_string().to_string(),
    })
}

/// The page itself. A refused link is answered with a small HTML page saying why (a reviewer
/// opens it in a browser), with the same status the API would give.
pub async fn page(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ReviewQuery>,
) -> HttpResponse {
    let conversation_id = path.into_inner();
    match check_link(&req, &state, &conversation_id, &query) {
        Ok(_) => html_response(actix_web::http::StatusCode::OK, page_html(&conversation_id)),
        Err(err) => {
            use actix_web::ResponseError;
            let status = err.status_code();
            let body = REFUSED_HTML
                .replace("{{STATUS}}", status.as_str())
                .replace("{{MESSAGE}}", &escape_html(&err.to_string()));
            let mut response = html_response(status, body);
            // Already rendered for its reader: the JSON error renderer leaves it as it is.
            response.extensions_mut().insert(super::error::Rendered);
            response
        }
    }
}

fn page_html(conversation_id: &str) -> String {
    PAGE_HTML
        .replace("{{ASSETS}}", &format!("{BASE_PATH}/review-assets"))
        .replace("{{CONVERSATION}}", &escape_html(conversation_id))
}

fn html_response(status: actix_web::http::StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // The link's signature is in the page's URL: never send it to another site.
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "SAMEORIGIN"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            // Scripts only from the recorder; media also from the storage provider's signed
            // URLs; the co-browse replay may show the recorded site's images and styles.
            "default-src 'self'; script-src 'self'; connect-src 'self' https: http:; \
             media-src 'self' https: http: blob:; img-src 'self' https: http: data: blob:; \
             style-src 'self' 'unsafe-inline' https: http:; font-src 'self' https: http: data:; \
             frame-src 'self' blob: about:; object-src 'none'; base-uri 'none'; form-action 'none'",
        ))
        .body(body)
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const PAGE_HTML: &str = include_str!("page.html");
const REFUSED_HTML: &str = include_str!("refused.html");

/// The page's static files, compiled in.
const ASSETS: &[(&str, &str, &str)] = &[
    ("review.js", "text/javascript; charset=utf-8", include_str!("review.js")),
    ("review.css", "text/css; charset=utf-8", include_str!("review.css")),
    (
        "rrweb-replay.min.js",
        "text/javascript; charset=utf-8",
        include_str!("rrweb-replay.min.js"),
    ),
    (
        "rrweb-replay.min.css",
        "text/css; charset=utf-8",
        include_str!("rrweb-replay.min.css"),
    ),
    (
        "LICENSE.rrweb.txt",
        "text/plain; charset=utf-8",
        include_str!("LICENSE.rrweb.txt"),
    ),
];

/// A static file of the page (no data in it; no signature needed).
pub async fn asset(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::NotFound(format!("no review asset {name}")))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, *content_type))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(*body))
}

/// The page's data.
pub async fn data(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ReviewQuery>,
) -> Result<HttpResponse, ApiError> {
    let link = check_link(&req, &state, &path.into_inner(), &query)?;
    let now = Utc::now();
    let ttl = std::time::Duration::from_secs(state.signer.ttl_secs());
    let view = state
        .queries
        .review(
            &link.organization_id,
            &link.application_id,
            &link.conversation_id,
            ttl,
            now,
        )
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(review_data(&state, &link, view, now)))
}

/// The composition (or its stereo audio), for storage profiles without provider URLs.
pub async fn composition(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ReviewQuery>,
) -> Result<HttpResponse, ApiError> {
    serve_composition(req, state, path.into_inner(), query.into_inner(), false).await
}

pub async fn stereo(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ReviewQuery>,
) -> Result<HttpResponse, ApiError> {
    serve_composition(req, state, path.into_inner(), query.into_inner(), true).await
}

async fn serve_composition(
    req: HttpRequest,
    state: web::Data<AppState>,
    conversation_id: String,
    query: ReviewQuery,
    stereo: bool,
) -> Result<HttpResponse, ApiError> {
    let link = check_link(&req, &state, &conversation_id, &query)?;
    refuse_encrypted(&state, &link)?;
    let file = state
        .queries
        .composition_file(ResolveCompositionFile {
            organization_id: link.organization_id,
            application_id: link.application_id,
            conversation_id: link.conversation_id,
            stereo,
        })
        .await?;
    serve_file(&req, file).await
}

/// An encrypted application's files are ciphertext: the page does not play them.
fn refuse_encrypted(state: &AppState, link: &ReviewLink) -> Result<(), ApiError> {
    let encrypted = state
        .settings
        .application(&link.organization_id, &link.application_id)
        .is_some_and(|a| a.encryption.is_some());
    if encrypted {
        return Err(ApiError::NotFound(
            "this application's recordings are encrypted to the customer's key".into(),
        ));
    }
    Ok(())
}

/// One uploaded track of an instance of the link's conversation.
pub async fn track(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String, String, String)>,
    query: web::Query<ReviewQuery>,
) -> Result<HttpResponse, ApiError> {
    let (conversation_id, recorder_id, instance_id, stream_id, track_id) = path.into_inner();
    let link = check_link(&req, &state, &conversation_id, &query)?;
    refuse_encrypted(&state, &link)?;
    let max = state.settings.limits.max_id_len;
    for (field, value) in [
        ("recorderId", &recorder_id),
        ("instanceId", &instance_id),
        ("streamId", &stream_id),
        ("trackId", &track_id),
    ] {
        check_id(field, value, max)?;
    }
    // The link is for one organization, application and conversation: an instance of anything
    // else is missing, whatever the path says.
    state.queries.review_instance(
        &link.organization_id,
        &link.application_id,
        &link.conversation_id,
        &instance_id,
    )?;
    let file = state
        .queries
        .track_file(ResolveTrackFile {
            conversation_id,
            recorder_id,
            instance_id,
            stream_id,
            track_id,
        })
        .await?;
    serve_file(&req, file).await
}

/// One co-browse session's events, in `sequenceId` order, each payload as JSON when it is JSON.
pub async fn cobrowse_events(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    query: web::Query<ReviewQuery>,
) -> Result<HttpResponse, ApiError> {
    let (conversation_id, instance_id, session_id) = path.into_inner();
    let link = check_link(&req, &state, &conversation_id, &query)?;
    let max = state.settings.limits.max_id_len;
    check_id("instanceId", &instance_id, max)?;
    check_id("sessionId", &session_id, max)?;
    let events = state.queries.review_cobrowse_events(
        &link.organization_id,
        &link.application_id,
        &link.conversation_id,
        &instance_id,
        &session_id,
    )?;
    let body: Vec<serde_json::Value> = events
        .into_iter()
        .map(|e| {
            let payload =
                serde_json::from_str::<serde_json::Value>(&e.payload).unwrap_or(serde_json::Value::String(e.payload));
            serde_json::json!({
                "sequenceId": e.sequence_id,
                "timestamp": e.timestamp,
                "payload": payload,
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn every_asset_is_served_with_a_type() {
        for (name, content_type, body) in ASSETS {
            assert!(!body.is_empty(), "{name}");
            assert!(content_type.contains('/'), "{name}");
        }
        assert!(PAGE_HTML.contains("{{ASSETS}}/review.js"));
    }
}
