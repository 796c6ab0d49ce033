//! Prometheus metrics of the service.

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use recorder_actors::actors::supervision::SupervisionTotals;
use recorder_actors::domain::InstanceState;
use recorder_actors::snapshot::{ActorSnapshot, Counters, MediaCounters, StreamCounters};

pub struct Metrics {
    registry: Registry,
    instances: IntGaugeVec,
    media: IntGaugeVec,
    requests: IntCounterVec,
    state_seconds: GaugeVec,
    restarts: IntGaugeVec,
    restarts_total: IntCounterVec,
    failures_total: IntCounterVec,
    stalls_total: IntCounterVec,
    stalled: IntGaugeVec,
    errors: IntGaugeVec,
    capacity: IntGaugeVec,
    capacity_refused_total: prometheus::IntCounter,
    cpu: prometheus::Gauge,
    draining: prometheus::IntGauge,
}

/// Actor kinds whose restart and error gauges are always exported (0 when none is live).
const SUPERVISED_KINDS: [&str; 2] = ["Recorder", "Stream"];

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
        let state_seconds = GaugeVec::new(
            Opts::new(
                "recorder_instance_state_seconds",
                "Seconds the live instances have spent in their current state, summed per state",
            ),
            &["state"],
        )
        .expect("metric definitions are valid");
        // A gauge over live actors, not a `_total` counter: an actor that ends takes its
        // restarts out of the sum, like the other live gauges.
        let restarts = IntGaugeVec::new(
            Opts::new(
                "recorder_actor_restarts",
                "Supervised restarts counted by live actors (Recorder: stream restarts of its instance; Stream: its own)",
            ),
            &["kind"],
        )
        .expect("metric definitions are valid");
        // Counted by the engine since the process started: outlives the actors and instances.
        let restarts_total = IntCounterVec::new(
            Opts::new(
                "recorder_actor_restarts_total",
                "Supervised restarts since the process started (Stream: writer restarts and rebuilt stream actors; Recorder: rebuilt recorder actors)",
            ),
            &["kind"],
        )
        .expect("metric definitions are valid");
        let failures_total = IntCounterVec::new(
            Opts::new(
                "recorder_actor_failures_total",
                "Supervised handler bodies or continuations that panicked or whose fault point failed, since the process started",
            ),
            &["kind"],
        )
        .expect("metric definitions are valid");
        let stalls_total = IntCounterVec::new(
            Opts::new(
                "recorder_actor_stalls_total",
                "Handler bodies the supervision watchdog found running longer than its stall limit (10 s), since the process started",
            ),
            &["kind"],
        )
        .expect("metric definitions are valid");
        let stalled = IntGaugeVec::new(
            Opts::new(
                "recorder_actors_stalled",
                "Supervised actors inside one handler body for longer than the stall limit right now",
            ),
            &["kind"],
        )
        .expect("metric definitions are valid");
        let errors = IntGaugeVec::new(
            Opts::new("recorder_actors_with_last_error", "Live actors whose last error is set"),
            &["kind"],
        )
        .expect("metric definitions are valid");
        for metric in [restarts.clone(), errors.clone(), stalled.clone()] {
            registry.register(Box::new(metric)).expect("metrics register once");
        }
        for metric in [restarts_total.clone(), failures_total.clone(), stalls_total.clone()] {
            registry.register(Box::new(metric)).expect("metrics register once");
        }
        registry
            .register(Box::new(state_seconds.clone()))
            .expect("metrics register once");
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
            state_seconds.with_label_values(&[state.as_str()]).set(0.0);
        }
        for kind in SUPERVISED_KINDS {
            restarts.with_label_values(&[kind]).set(0);
            errors.with_label_values(&[kind]).set(0);
            stalled.with_label_values(&[kind]).set(0);
            for counter in [&restarts_total, &failures_total, &stalls_total] {
                counter.with_label_values(&[kind]).reset();
            }
        }
        // Admission control: what an autoscaler and a cluster's placement read.
        let capacity = IntGaugeVec::new(
            Opts::new(
                "recorder_capacity_units",
                "Admission control, in thousandths of a core: budget, used_live, used_composition, available_live, available_composition",
            ),
            &["what"],
        )
        .expect("metric definitions are valid");
        let capacity_refused_total = prometheus::IntCounter::new(
            "recorder_capacity_refused_total",
            "Starts and publishes refused with 503 because the node was at its capacity",
        )
        .expect("metric definitions are valid");
        let cpu = prometheus::Gauge::new(
            "recorder_process_cpu_ratio",
            "CPU the recorder process used over the last seconds, as a share of the node's cores (0-1)",
        )
        .expect("metric definitions are valid");
        registry
            .register(Box::new(capacity.clone()))
            .expect("metrics register once");
        registry
            .register(Box::new(capacity_refused_total.clone()))
            .expect("metrics register once");
        registry.register(Box::new(cpu.clone())).expect("metrics register once");
        let draining = prometheus::IntGauge::new(
            "recorder_draining",
            "1 while the node drains before it stops (SIGTERM): it takes no new starts or publishes",
        )
        .expect("metric definitions are valid");
        registry
            .register(Box::new(draining.clone()))
            .expect("metrics register once");
        Self {
            capacity,
            capacity_refused_total,
            cpu,
            draining,
            registry,
            instances,
            media,
            requests,
            state_seconds,
            restarts,
            restarts_total,
            failures_total,
            stalls_total,
            stalled,
            errors,
        }
    }

    /// Brings the supervision counters (`recorder_actor_{restarts,failures,stalls}_total`) up to
    /// the engine's counts, which only grow, and sets the stalled-now gauge.
    pub fn set_supervision_totals(&self, totals: &[(&str, SupervisionTotals)]) {
        for (kind, totals) in totals {
            for (counter, count) in [
                (&self.restarts_total, totals.restarts),
                (&self.failures_total, totals.failures),
                (&self.stalls_total, totals.stalls),
            ] {
                let counter = counter.with_label_values(&[kind]);
                counter.inc_by(count.saturating_sub(counter.get()));
            }
            self.stalled.with_label_values(&[kind]).set(totals.stalled_now as i64);
        }
    }

    pub fn observe_request(&self, method: &str, status: u16) {
        let method = match method {
            "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" => method,
            _ => "OTHER",
        };
        self.requests.with_label_values(&[method, &status.to_string()]).inc();
    }

    /// The node's admission control (see `recorder_actors::capacity`).
    pub fn set_capacity(&self, usage: &recorder_actors::capacity::CapacityUse) {
        for (what, value) in [
            ("budget", usage.budget),
            ("used_live", usage.live),
            ("used_composition", usage.composition),
            ("available_live", usage.available_live()),
            ("available_composition", usage.available_composition()),
        ] {
            self.capacity.with_label_values(&[what]).set(value as i64);
        }
        self.capacity_refused_total
            .inc_by(usage.num_refused.saturating_sub(self.capacity_refused_total.get()));
        self.cpu.set(usage.cpu_permille as f64 / 1000.0);
        self.draining.set(i64::from(usage.draining));
    }

    pub fn set_instances(&self, counts: &[(InstanceState, u64)]) {
        for (state, count) in counts {
            self.instances.with_label_values(&[state.as_str()]).set(*count as i64);
        }
    }

    /// Sums the counters of every `Stream` in the actor tree into `recorder_media_live`, one
    /// label per counter of [`MediaCounters`] and [`StreamCounters`] (their field names).
    pub fn set_media(&self, tree: &ActorSnapshot) {
        fn walk(node: &ActorSnapshot, media: &mut MediaCounters, streams: &mut StreamCounters) {
            if let Counters::Stream {
                media: m, stream: s, ..
            } = &node.counters
            {
                media.add(m);
                streams.add(s);
            }
            for child in &node.children {
                walk(child, media, streams);
            }
        }
        let (mut media, mut streams) = (MediaCounters::default(), StreamCounters::default());
        walk(tree, &mut media, &mut streams);
        for (name, value) in media.values().into_iter().chain(streams.values()) {
            self.media.with_label_values(&[name]).set(value as i64);
        }
    }

    /// Supervision figures from the actor tree: time in state summed per state over the live
    /// Recorders (`millis_in_state`, from the record's history), restarts summed per actor kind,
    /// and the live actors per kind whose last error is set.
    pub fn set_supervision(&self, tree: &ActorSnapshot) {
        use std::collections::BTreeMap;
        #[derive(Default)]
        struct Sums {
            millis: BTreeMap<String, u64>,
            restarts: BTreeMap<&'static str, u64>,
            errors: BTreeMap<&'static str, u64>,
        }
        fn walk(node: &ActorSnapshot, sums: &mut Sums) {
            if let Counters::Recorder(recorder) = &node.counters {
                *sums.millis.entry(node.state.clone()).or_default() += recorder.millis_in_state;
            }
            *sums.restarts.entry(node.kind).or_default() += u64::from(node.restarts);
            *sums.errors.entry(node.kind).or_default() += u64::from(node.last_error.is_some());
            for child in &node.children {
                walk(child, sums);
            }
        }
        let mut sums = Sums::default();
        walk(tree, &mut sums);
        for state in InstanceState::ALL {
            let millis = sums.millis.get(state.as_str()).copied().unwrap_or(0);
            self.state_seconds
                .with_label_values(&[state.as_str()])
                .set(millis as f64 / 1000.0);
        }
        // Kinds no longer live fall back to 0 (the supervised ones) or leave the output.
        self.restarts.reset();
        self.errors.reset();
        for kind in SUPERVISED_KINDS {
            self.restarts.with_label_values(&[kind]).set(0);
            self.errors.with_label_values(&[kind]).set(0);
        }
        for (kind, value) in sums.restarts {
            if value > 0 || SUPERVISED_KINDS.contains(&kind) {
                self.restarts.with_label_values(&[kind]).set(value as i64);
            }
        }
        for (kind, value) in sums.errors {
            if value > 0 || SUPERVISED_KINDS.contains(&kind) {
                self.errors.with_label_values(&[kind]).set(value as i64);
            }
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

    #[test]
    fn renders_time_in_state_restarts_and_errors_from_the_tree() {
        use recorder_actors::domain::ErrorInfo;
        use recorder_actors::snapshot::RecorderCounters;
        let node = |kind, state: &str, restarts, error: bool, millis: Option<u64>, children| ActorSnapshot {
            kind,
            id: "x".into(),
            state: state.into(),
            mailbox_depth: 0,
            restarts,
            last_error: error.then(|| ErrorInfo::new("MEDIA_WRITE", "boom")),
            counters: millis
                .map(|millis_in_state| {
                    Counters::Recorder(RecorderCounters {
                        millis_in_state,
                        ..Default::default()
                    })
                })
                .unwrap_or_default(),
            children,
        };
        let tree = node(
            "Registry",
            "",
            0,
            false,
            None,
            vec![
                node(
                    "Recorder",
                    "ACTIVE",
                    1,
                    true,
                    Some(1500),
                    vec![node("Stream", "RECORDING", 1, true, None, vec![])],
                ),
                node("Recorder", "ACTIVE", 0, false, Some(2000), vec![]),
                node("Recorder", "PENDING_RECOVERY", 0, false, Some(250), vec![]),
            ],
        );
        let metrics = Metrics::new();
        metrics.set_supervision(&tree);
        let text = metrics.render();
        assert!(
            text.contains("recorder_instance_state_seconds{state=\"ACTIVE\"} 3.5"),
            "{text}"
        );
        assert!(
            text.contains("recorder_instance_state_seconds{state=\"PENDING_RECOVERY\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains("recorder_instance_state_seconds{state=\"STOPPED\"} 0"),
            "{text}"
        );
        assert!(text.contains("recorder_actor_restarts{kind=\"Recorder\"} 1"), "{text}");
        assert!(text.contains("recorder_actor_restarts{kind=\"Stream\"} 1"), "{text}");
        assert!(!text.contains("recorder_actor_restarts{kind=\"Registry\"}"), "{text}");
        assert!(
            text.contains("recorder_actors_with_last_error{kind=\"Stream\"} 1"),
            "{text}"
        );
        metrics.set_supervision(&node("Registry", "", 0, false, None, vec![]));
        let text = metrics.render();
        assert!(text.contains("recorder_actor_restarts{kind=\"Stream\"} 0"), "{text}");
        // The counter keeps what it counted.
        let totals = |restarts, failures, stalls, stalled_now| SupervisionTotals {
            restarts,
            failures,
            stalls,
            stalled_now,
        };
        metrics.set_supervision_totals(&[("Stream", totals(3, 2, 1, 1)), ("Recorder", totals(1, 1, 0, 0))]);
        metrics.set_supervision_totals(&[("Stream", totals(3, 2, 1, 0))]);
        let text = metrics.render();
        for line in [
            "recorder_actor_failures_total{kind=\"Stream\"} 2",
            "recorder_actor_failures_total{kind=\"Recorder\"} 1",
            "recorder_actor_stalls_total{kind=\"Stream\"} 1",
            "recorder_actor_stalls_total{kind=\"Recorder\"} 0",
            "recorder_actors_stalled{kind=\"Stream\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            text.contains("recorder_actor_restarts_total{kind=\"Stream\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("recorder_actor_restarts_total{kind=\"Recorder\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("recorder_instance_state_seconds{state=\"ACTIVE\"} 0"),
            "{text}"
        );
    }
}
