//! One per application: delivers the application's events (the durable outbox of the state
//! store, written in the same commit as the change each reports) to its webhook, in order, at
//! least once. A delivery that fails (no answer within the timeout, a non-2xx answer) is retried
//! with backoff on the engine's clock, the same event first, so a receiver that was down for
//! minutes gets everything afterwards, in order. An event leaves the outbox only once its
//! receiver answered 2xx; a crash between the answer and the removal delivers it again, with the
//! same id (receivers deduplicate by `X-Recorder-Event-Id`). An application without a webhook
//! has its events discarded.
//!
//! Each request: `POST <url>`, `Content-Type: application/json`, the headers
//! `X-Recorder-Event-Id`, `X-Recorder-Event-Type` and `X-Recorder-Signature: t=<unix seconds>,
//! v1=<hex HMAC-SHA256 of "<t>.<body>" with the application's secret>`; the body is
//! `{id, type, occurred, organizationId, applicationId, conversationId, recorderId, instanceId,
//! data, recording}` where `recording` is the instance as `recording.json` shows it now.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::ErrorInfo;
use crate::engine::{ApplicationProfile, EngineConfig, Webhook};
use crate::snapshot::{ActorSnapshot, Counters, NotifierCounters, Snapshot};
use crate::store::{OutboxEvent, StateStore};

/// Events read from the outbox at a time.
const BATCH: usize = 64;

pub struct Notifier {
    store: Arc<dyn StateStore>,
    profile: Arc<ApplicationProfile>,
    config: Arc<EngineConfig>,
    client: reqwest::Client,
    /// A delivery is under way (one at a time: order per application).
    sending: bool,
    /// Failed attempts at the event in front of the queue.
    attempts: u32,
    num_delivered: u64,
    num_failures: u64,
    num_discarded: u64,
    last_error: Option<ErrorInfo>,
}

impl Notifier {
    pub fn new(store: Arc<dyn StateStore>, profile: Arc<ApplicationProfile>, config: Arc<EngineConfig>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(config.webhooks.timeout)
            .build()
            .expect("a client with a timeout and the default TLS builds");
        Self {
            store,
            profile,
            config,
            client,
            sending: false,
            attempts: 0,
            num_delivered: 0,
            num_failures: 0,
            num_discarded: 0,
            last_error: None,
        }
    }

    fn later(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        crate::clock::run_later(&self.config.clock().clone(), ctx, delay, |act, ctx| act.pump(ctx));
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.sending {
            return;
        }
        let (org, app) = (&self.profile.organization_id, &self.profile.application_id);
        let events = match self.store.outbox(org, app, BATCH) {
            Ok(events) => events,
            Err(err) => {
                tracing::error!(error = %err, "webhook outbox unreadable");
                self.last_error = Some(ErrorInfo::new("STATE_STORE", err.to_string()));
                let delay = self.config.webhooks.retry_max;
                return self.later(ctx, delay);
            }
        };
        let Some((sequence, event)) = events.first().cloned() else {
            let delay = self.config.webhooks.poll_interval;
            return self.later(ctx, delay);
        };
        let Some(webhook) = self.profile.policy.webhook.clone() else {
            // Nobody listens: the events go.
            for (sequence, _) in &events {
                if let Err(err) = self.store.remove_event(org, app, *sequence) {
                    tracing::error!(error = %err, "cannot discard an event");
                }
                self.num_discarded += 1;
            }
            return self.later(ctx, Duration::ZERO);
        };
        let body = self.body(&event);
        let timestamp = self.config.clock().utc().timestamp();
        let request = deliver(self.client.clone(), webhook, event.clone(), body, timestamp);
        self.sending = true;
        ctx.spawn(request.into_actor(self).map(move |result, act, ctx| {
            act.sending = false;
            match result {
                Ok(()) => {
                    act.attempts = 0;
                    act.num_delivered += 1;
                    let (org, app) = (&act.profile.organization_id, &act.profile.application_id);
                    if let Err(err) = act.store.remove_event(org, app, sequence) {
                        // Delivered again later: at least once.
                        tracing::error!(error = %err, event_id = %event.id, "cannot remove a delivered event");
                    }
                    act.pump(ctx);
                }
                Err(error) => {
                    act.attempts += 1;
                    act.num_failures += 1;
                    let delay = retry_delay(&act.config, act.attempts);
                    tracing::warn!(
                        event_id = %event.id,
                        kind = event.kind.as_str(),
                        attempt = act.attempts,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %error,
                        "webhook delivery failed, will retry"
                    );
                    act.last_error = Some(ErrorInfo::new("WEBHOOK_DELIVERY", error));
                    act.later(ctx, delay);
                }
            }
        }));
    }

    /// The event as its receiver reads it, with the instance as `recording.json` shows it now.
    fn body(&self, event: &OutboxEvent) -> Vec<u8> {
        let recording = self
            .store
            .get_instance(&event.instance_id)
            .ok()
            .flatten()
            .and_then(|record| {
                serde_json::from_slice::<serde_json::Value>(&(self.config.render_manifest)(&record)).ok()
            });
        let body = serde_json::json!({
            "id": event.id,
            "type": event.kind.as_str(),
            "occurred": event.occurred.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "organizationId": event.organization_id,
            "applicationId": event.application_id,
            "conversationId": event.conversation_id,
            "recorderId": event.recorder_id,
            "instanceId": event.instance_id,
            "data": event.data,
            "recording": recording,
        });
        serde_json::to_vec(&body).expect("JSON values always serialize")
    }
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(
    client: reqwest::Client,
    webhook: Webhook,
    event: OutboxEvent,
    body: Vec<u8>,
    timestamp: i64,
) -> Result<(), String> {
    let signature = signature(webhook.secret.expose(), timestamp, &body);
    let response = client
        .post(&webhook.url)
        .header("Content-Type", "application/json")
        .header("X-Recorder-Event-Id", &event.id)
        .header("X-Recorder-Event-Type", event.kind.as_str())
        .header("X-Recorder-Signature", signature)
        .body(body)
        .send()
        .await
        // Without the URL: it may carry a token of the receiver's.
        .map_err(|e| format!("no answer: {}", e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

fn retry_delay(config: &EngineConfig, attempts: u32) -> Duration {
    let base = config.webhooks.retry_base;
    let exp = base.saturating_mul(1u32.checked_shl(attempts.saturating_sub(1).min(20)).unwrap_or(u32::MAX));
    exp.min(config.webhooks.retry_max)
}

impl Actor for Notifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Snapshots only; events are found by polling the outbox.
        ctx.set_mailbox_capacity(16);
        self.pump(ctx);
    }
}

impl Handler<Snapshot> for Notifier {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let num_pending = self
            .store
            .outbox(&self.profile.organization_id, &self.profile.application_id, usize::MAX)
            .map(|events| events.len() as u64)
            .unwrap_or(0);
        MessageResult(ActorSnapshot {
            kind: "Notifier",
            id: format!("{}/{}", self.profile.organization_id, self.profile.application_id),
            state: match (&self.profile.policy.webhook, self.attempts) {
                (None, _) => "NO_WEBHOOK",
                (Some(_), 0) => "DELIVERING",
                (Some(_), _) => "RETRYING",
            }
            .into(),
            mailbox_depth: 0,
            restarts: 0,
            last_error: self.last_error.clone(),
            counters: Counters::Notifier(NotifierCounters {
                num_pending,
                num_delivered: self.num_delivered,
                num_failures: self.num_failures,
                num_discarded: self.num_discarded,
            }),
            children: vec![],
        })
    }
}

impl Handler<crate::messages::Halt> for Notifier {
    type Result = ();

    /// The node's shutdown: work in flight is dropped, its job stays queued in the store.
    fn handle(&mut self, _msg: crate::messages::Halt, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_the_hmac_of_the_timestamp_and_the_body() {
        // echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature("secret", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
