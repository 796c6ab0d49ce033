//! Prometheus metrics of the service.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use recorder_actors::domain::InstanceState;

/// Stream counters exported as `recorder_media_live{counter=...}`: sums over the streams of
/// live instances at scrape time (a stopped instance's streams leave the sum).
pub const MEDIA_COUNTERS: [&str; 16] = [
    "connected",
    "num_packets",
    "num_bytes",
    "num_frames",
    "num_lost",
    "num_keyframe_requests",
    "num_refused",
    "num_malformed",
    "bitrate_bps",
    "num_frames_written",
    "num_frames_dropped",
    "num_slow_writes",
    "writer_queue_depth",
    "num_tracks",
    // Supervision: writer failures restarted, and streams whose restart budget ran out.
    "num_restarts",
    "num_failed",
];

pub struct Metrics {
    registry: Registry,
    instances: IntGaugeVec,
    media: IntGaugeVec,
    requests: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let instances = IntGaugeVec::new(
            Opts::new("recorder_instances", "Recorder instances by state"),
            &["state"],
        )
        .expect("metric definitions are valid");
        let requests = IntCounterVec::new(
            Opts::new(
                "recorder_http_requests_total",
                "HTTP requests by method and status class",
            ),
            &["method", "status"],
        )
        .expect("metric definitions are valid");
        let media = IntGaugeVec::new(
            Opts::new(
                "recorder_media_live",
                "Media counters summed over the streams of live instances (slow disks show as num_frames_dropped, num_slow_writes, writer_queue_depth)",
            ),
            &["counter"],
        )
        .expect("metric definitions are valid");
        registry
            .register(Box::new(media.clone()))
            .expect("metrics register once");
        registry
            .register(Box::new(instances.clone()))
            .expect("metrics register once");
        registry
            .register(Box::new(requests.clone()))
            .expect("metrics register once");
        for state in InstanceState::ALL {
            instances.with_label_values(&[state.as_str()]).set(0);
        }
        Self {
            registry,
            instances,
            media,
            requests,
        }
    }

    pub fn observe_request(&self, method: &str, status: u16) {
        let method = match method {
            "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" => method,
            _ => "OTHER",
        };
        self.requests.with_label_values(&[method, &status.to_string()]).inc();
    }

    pub fn set_instances(&self, counts: &[(InstanceState, u64)]) {
        for (state, count) in counts {
            self.instances.with_label_values(&[state.as_str()]).set(*count as i64);
        }
    }

    /// Sums the counters of every `Stream` in the actor tree.
    pub fn set_media(&self, tree: &recorder_actors::snapshot::ActorSnapshot) {
        fn walk(node: &recorder_actors::snapshot::ActorSnapshot, sums: &mut [u64; MEDIA_COUNTERS.len()]) {
            if node.kind == "Stream" {
                for (i, name) in MEDIA_COUNTERS.iter().enumerate() {
                    sums[i] += node.counters.get(name).copied().unwrap_or(0);
                }
            }
            for child in &node.children {
                walk(child, sums);
            }
        }
        let mut sums = [0u64; MEDIA_COUNTERS.len()];
        walk(tree, &mut sums);
        for (name, value) in MEDIA_COUNTERS.iter().zip(sums) {
            self.media.with_label_values(&[name]).set(value as i64);
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_instances_and_requests() {
        let metrics = Metrics::new();
        metrics.set_instances(&[(InstanceState::Active, 3)]);
        metrics.observe_request("POST", 200);
        metrics.observe_request("BREW", 418);
        let text = metrics.render();
        assert!(text.contains("recorder_instances{state=\"ACTIVE\"} 3"), "{text}");
        assert!(text.contains("recorder_instances{state=\"STOPPED\"} 0"), "{text}");
        assert!(
            text.contains("recorder_http_requests_total{method=\"POST\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("method=\"OTHER\""), "{text}");
    }
}
