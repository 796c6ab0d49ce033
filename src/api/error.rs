//! The API's one error type. Its status comes from a single exhaustive match, and every error
//! response, including those actix produces on its own (oversized bodies, unknown routes), is the
//! spec's `Error {code, message, occurred}`.

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};
use recorder_actors::store::StoreError;
use recorder_actors::EngineError;
use serde::Serialize;
use utoipa::ToSchema;

/// The API's one date format: RFC 3339 in UTC with milliseconds (`occurred`, and every date of
/// the spec's messages).
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {message}")]
    PayloadTooLarge { field: String, message: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// `allow` lists the methods the resource does take.
    #[error("{message}")]
    MethodNotAllowed { message: String, allow: &'static str },
    /// The client did not send its body in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// A tenant limit was reached; `limit` is its configuration key (`limits.max_...`), also
    /// given as the body's `field`. `retry_after_secs` becomes `Retry-After` when set.
    #[error("{limit}: {message}")]
    TooManyRequests {
        limit: String,
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// The node is at its capacity (503 with `Retry-After`); `limit` is the configuration key
    /// that refused (`capacity.budget`, `capacity.max_cpu_percent`), given as the body's `field`.
    #[error("{limit}: {message}")]
    AtCapacity {
        limit: String,
        message: String,
        retry_after_secs: u64,
    },
}

/// The spec's `Error` schema. `field` is this project's addition: the input that was refused.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    pub occurred: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "BAD_REQUEST",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::Unavailable(_) => "UNAVAILABLE",
            ApiError::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            ApiError::TooManyRequests { .. } => "LIMIT_EXCEEDED",
            ApiError::RequestTimeout(_) => "REQUEST_TIMEOUT",
            ApiError::AtCapacity { .. } => "AT_CAPACITY",
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::BadRequest { field, .. } | ApiError::PayloadTooLarge { field, .. } => Some(field.clone()),
            ApiError::TooManyRequests { limit, .. } | ApiError::AtCapacity { limit, .. } => Some(limit.clone()),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::AtCapacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized(_) = self {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            response.insert_header((header::ALLOW, *allow));
        }
        if let ApiError::TooManyRequests {
            retry_after_secs: Some(secs),
            ..
        } = self
        {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        // Unavailable is transient (the state store, the cluster): say when to ask again.
        if let ApiError::Unavailable(_) = self {
            response.insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER_SECS.to_string()));
        }
        if let ApiError::AtCapacity { retry_after_secs, .. } = self {
            response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        let mut response = response.json(ErrorBody {
            code: self.code().into(),
            message: self.to_string(),
            occurred: timestamp(chrono::Utc::now()),
            field: self.field(),
        });
        response.extensions_mut().insert(Rendered);
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::NotFound { message } => ApiError::NotFound(message),
            EngineError::Conflict { message } => ApiError::Conflict(message),
            EngineError::Invalid { field, message } => ApiError::bad_field(field, message),
            EngineError::Store(StoreError::Rejected { message, .. }) => ApiError::Conflict(message),
            EngineError::Store(StoreError::NotFound(id)) => ApiError::NotFound(format!("no recorder instance {id}")),
            // Store and storage errors name paths, hosts and buckets: they go to the log, and the
            // client (maybe unauthenticated, on a signed URL) gets only their kind.
            EngineError::Store(err) => {
                tracing::error!(error = %err, "state store failure");
                ApiError::Unavailable("the state store is unavailable; the recorder's log has the details".into())
            }
            EngineError::Storage(err) => {
                tracing::error!(error = %err, "storage failure");
                ApiError::Unavailable(format!(
                    "the storage profile is unavailable ({}); the recorder's log has the details",
                    err.code()
                ))
            }
            EngineError::Unavailable(message) => ApiError::Unavailable(message),
            EngineError::Limit {
                limit,
                message,
                retry_after_secs,
            } => ApiError::TooManyRequests {
                limit: format!("limits.{limit}"),
                message,
                retry_after_secs,
            },
            EngineError::AtCapacity {
                limit,
                message,
                retry_after_secs,
            } => ApiError::AtCapacity {
                limit: limit.to_string(),
                message,
                retry_after_secs,
            },
        }
    }
}

/// Cluster mode: NATS away is 503, a lease held elsewhere 409, no capacity anywhere 503
/// `AT_CAPACITY` (field `cluster`).
/// `Retry-After` of a 503 `UNAVAILABLE`.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

impl From<crate::cluster::ClusterError> for ApiError {
    fn from(err: crate::cluster::ClusterError) -> Self {
        use crate::cluster::ClusterError;
        match err {
            ClusterError::Unavailable(message) => ApiError::Unavailable(message),
            ClusterError::Conflict(message) => ApiError::Conflict(message),
            ClusterError::NoCapacity => ApiError::AtCapacity {
                limit: "cluster".into(),
                message: err.to_string(),
                retry_after_secs: 5,
            },
            ClusterError::TooLarge { .. } => ApiError::PayloadTooLarge {
                field: "body".into(),
                message: err.to_string(),
            },
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(err: actix::MailboxError) -> Self {
        ApiError::Unavailable(format!("engine unavailable: {err}"))
    }
}

/// Marks a response whose body already is an `ErrorBody` (or a page rendered for a browser).
#[derive(Clone, Copy)]
pub struct Rendered;

/// Rewrites error responses that did not come from [`ApiError`] (actix's own 404, 405, 413,
/// payload and range errors) into the `Error` body, keeping their status and headers.
pub fn render_foreign_error<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    if res.response().extensions().get::<Rendered>().is_some() {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (
            "ROUTE_NOT_FOUND",
            format!("no route for {} {}", res.request().method(), res.request().path()),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "METHOD_NOT_ALLOWED",
            format!("{} is not allowed here", res.request().method()),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "PAYLOAD_TOO_LARGE",
            "body: the request body is larger than the configured limit".into(),
        ),
        StatusCode::RANGE_NOT_SATISFIABLE => (
            "RANGE_NOT_SATISFIABLE",
            "Range: the requested range is not satisfiable".into(),
        ),
        s if s.is_client_error() => (
            "BAD_REQUEST",
            format!("request refused: {}", s.canonical_reason().unwrap_or("client error")),
        ),
        s => (
            "UNAVAILABLE",
            format!("server error: {}", s.canonical_reason().unwrap_or("error")),
        ),
    };
    let field = match status {
        StatusCode::PAYLOAD_TOO_LARGE => Some("body".to_string()),
        StatusCode::RANGE_NOT_SATISFIABLE => Some("Range".to_string()),
        _ => None,
    };
    let body = serde_json::to_vec(&ErrorBody {
        code: code.into(),
        message,
        occurred: timestamp(chrono::Utc::now()),
        field,
    })
    .expect("error bodies serialize");
    let (req, res) = res.into_parts();
    let mut res = res.set_body(BoxBody::new(body));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().remove(header::CONTENT_LENGTH);
    res.headers_mut().remove(header::CONTENT_DISPOSITION);
    let res: ServiceResponse<EitherBody<B, BoxBody>> = ServiceResponse::new(req, res).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}

#[cfg(test)]
mod tests {
    use super::*;
    use recorder_actors::storage::StorageError;

    #[test]
    fn store_and_storage_errors_reach_clients_without_hosts_paths_or_buckets() {
        let secrets = ["sftp.internal.example", "10.1.2.3", "/var/lib/recorder", "acme-bucket"];
        let detail = "sftp.internal.example:22 (10.1.2.3) /var/lib/recorder/x in acme-bucket";
        let errors = [
            EngineError::Storage(StorageError::Service(detail.into())),
            EngineError::Storage(StorageError::Io(detail.into())),
            EngineError::Storage(StorageError::Timeout(detail.into())),
            EngineError::Store(StoreError::Io(detail.into())),
        ];
        for err in errors {
            let api = ApiError::from(err);
            assert_eq!(api.status_code(), StatusCode::SERVICE_UNAVAILABLE);
            let text = api.to_string();
            for secret in secrets {
                assert!(!text.contains(secret), "{secret:?} leaks: {text}");
            }
        }
    }

    #[test]
    fn a_reached_limit_is_429_naming_the_limit() {
        let api = ApiError::from(EngineError::limit("max_streams_per_instance", "32 streams"));
        assert_eq!(api.status_code(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(api.field().as_deref(), Some("limits.max_streams_per_instance"));
        assert!(api.to_string().contains("limits.max_streams_per_instance"));
    }
}
