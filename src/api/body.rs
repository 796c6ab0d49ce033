//! Request bodies, read only after the request is authenticated: a client without a key cannot
//! make the server buffer `limits.max_body_bytes` per connection, and a slow sender is cut off.

use std::time::Duration;

use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use super::error::ApiError;
use crate::config::Limits;

/// Reads the body of `req` (at most `limits.max_body_bytes`: 413 beyond, before anything is read
/// when `Content-Length` says so; 408 when it does not arrive within `limits.body_timeout_secs`,
/// counted from the moment the handler starts reading; actix's own `client_request_timeout`
/// covers the headers).
pub async fn read_body(req: &HttpRequest, mut payload: web::Payload, limits: &Limits) -> Result<web::Bytes, ApiError> {
    let max = limits.max_body_bytes;
    let timeout = Duration::from_secs(limits.body_timeout_secs as u64);
    let too_large = || ApiError::PayloadTooLarge {
        field: "body".into(),
        message: format!("the body is larger than {max} bytes"),
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut body = web::BytesMut::with_capacity(declared.map_or(0, |len| len as usize));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_field("body", format!("the body could not be read: {e}")))?;
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::RequestTimeout(format!(
            "the body did not arrive within {} s (limits.body_timeout_secs)",
            timeout.as_secs()
        ))
    })?
}
