//! Storage verification on demand, within the organization's rate limit.

use super::*;

impl Handler<VerifyStorage> for Registry {
    type Result = ResponseFuture<Result<VerificationReport, EngineError>>;

    fn handle(&mut self, msg: VerifyStorage, _ctx: &mut Self::Context) -> Self::Result {
        let max = self.config.limits.max_verify_per_minute;
        let now = self.config.clock().now();
        let window = self
            .verify_window
            .entry(msg.organization_id.to_string())
            .or_insert((now, 0));
        if now.duration_since(window.0) >= std::time::Duration::from_secs(60) {
            *window = (now, 0);
        }
        if window.1 >= max {
            let retry_after = 60u64.saturating_sub(now.duration_since(window.0).as_secs()).max(1);
            return async move {
                Err(EngineError::Limit {
                    limit: "max_verify_per_minute",
                    message: format!("at most {max} storage verifications a minute; try again in {retry_after} s"),
                    retry_after_secs: Some(retry_after),
                })
            }
            .boxed_local();
        }
        window.1 += 1;
        let profile = self
            .config
            .application(&msg.organization_id, &msg.application_id)
            .cloned();
        async move {
            let profile = profile.ok_or_else(|| {
                EngineError::not_found(format!(
                    "applicationId {} is not configured for this organization",
                    msg.application_id
                ))
            })?;
            let prefix = format!("{}/{}", profile.organization_id, profile.application_id);
            Ok(verify(profile.backend.as_ref(), &prefix).await)
        }
        .boxed_local()
    }
}
