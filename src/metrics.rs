//! Prometheus metrics. The recorder is built by `startup` and its handles are
//! passed down (no global recorder); `/metrics` renders it, refreshing the
//! backlog gauges from the database at scrape time.
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    handle: PrometheusHandle,
    pub delivered: Counter,
    pub retry_scheduled: Counter,
    pub failed: Counter,
    pub attempt_seconds: Histogram,
    pub events_dispatched: Counter,
    pub deliveries_created: Counter,
    pub fan_out_failures: Counter,
    pub deliveries_leased_at_fan_out: Counter,
    pub events_set_aside: Counter,
    /// Events set aside now (all instances), from the background refresh.
    pub events_set_aside_now: Gauge,
    pub events_published_http: Counter,
    pub in_flight: Gauge,
    pub listener_reconnects: Counter,
    pub due_backlog: Gauge,
    pub oldest_due_age_seconds: Gauge,
    pub circuits_open: Gauge,
    disabled_gone: Counter,
    disabled_circuit_open: Counter,
    /// The loops' liveness and the cached backlog, for `/health` and here.
    pub pipeline: crate::pipeline::PipelineHealth,
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("non-empty buckets")
            .build_recorder();
        let meta = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let key = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            Key::from_parts(
                name,
                labels
                    .iter()
                    .map(|(k, v)| Label::new(*k, *v))
                    .collect::<Vec<_>>(),
            )
        };
        let counter = |name, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &meta)
        };
        let gauge = |name| recorder.register_gauge(&key(name, &[]), &meta);
        let describe = |name: &'static str, help: &'static str| {
            recorder.describe_counter(name.into(), None, help.into());
        };
        describe(
            "webhook_deliveries_total",
            "Delivery attempts by outcome: success, retry (scheduled), failed (final).",
        );
        describe("webhook_events_dispatched_total", "Events fanned out.");
        describe(
            "webhook_deliveries_created_total",
            "Deliveries created by fan-out.",
        );
        describe(
            "webhook_fan_out_failures_total",
            "Fan-out transactions that failed on something about the events (not the connection).",
        );
        describe(
            "webhook_deliveries_leased_at_fan_out_total",
            "Fresh deliveries leased in the fan-out transaction and sent without a claim.",
        );
        describe(
            "webhook_events_set_aside_total",
            "Events set aside after repeated fan-out failures.",
        );
        recorder.describe_gauge(
            "webhook_events_set_aside".into(),
            None,
            "Events set aside now, waiting for webhook_retry_fan_out (all instances).".into(),
        );
        describe(
            "webhook_events_published_total",
            "Events published through POST /api/v1/events.",
        );
        describe(
            "webhook_listener_reconnects_total",
            "Reconnects of the LISTEN connection.",
        );
        describe(
            "webhook_disabled_total",
            "Webhooks disabled by the service, by reason: gone (410), circuit_open (open too long).",
        );
        recorder.describe_gauge(
            "webhook_circuit_open".into(),
            None,
            "Active webhooks whose circuit is open or half-open (all instances).".into(),
        );
        recorder.describe_histogram(
            "webhook_attempt_duration_seconds".into(),
            Some(metrics::Unit::Seconds),
            "Duration of delivery attempts, connect to last byte read.".into(),
        );
        recorder.describe_gauge(
            "webhook_in_flight_deliveries".into(),
            None,
            "Sends in progress.".into(),
        );
        recorder.describe_gauge(
            "webhook_due_backlog".into(),
            None,
            "Pending deliveries that are due now.".into(),
        );
        recorder.describe_gauge(
            "webhook_oldest_due_age_seconds".into(),
            Some(metrics::Unit::Seconds),
            "How long the oldest due delivery has waited.".into(),
        );
        Self {
            delivered: counter("webhook_deliveries_total", &[("outcome", "success")]),
            retry_scheduled: counter("webhook_deliveries_total", &[("outcome", "retry")]),
            failed: counter("webhook_deliveries_total", &[("outcome", "failed")]),
            attempt_seconds: recorder
                .register_histogram(&key("webhook_attempt_duration_seconds", &[]), &meta),
            events_dispatched: counter("webhook_events_dispatched_total", &[]),
            deliveries_created: counter("webhook_deliveries_created_total", &[]),
            fan_out_failures: counter("webhook_fan_out_failures_total", &[]),
            deliveries_leased_at_fan_out: counter(
                "webhook_deliveries_leased_at_fan_out_total",
                &[],
            ),
            events_set_aside: counter("webhook_events_set_aside_total", &[]),
            events_set_aside_now: gauge("webhook_events_set_aside"),
            events_published_http: counter("webhook_events_published_total", &[("source", "http")]),
            in_flight: gauge("webhook_in_flight_deliveries"),
            listener_reconnects: counter("webhook_listener_reconnects_total", &[]),
            due_backlog: gauge("webhook_due_backlog"),
            oldest_due_age_seconds: gauge("webhook_oldest_due_age_seconds"),
            circuits_open: gauge("webhook_circuit_open"),
            disabled_gone: counter("webhook_disabled_total", &[("reason", "gone")]),
            disabled_circuit_open: counter("webhook_disabled_total", &[("reason", "circuit_open")]),
            pipeline: crate::pipeline::PipelineHealth::new(),
            handle: recorder.handle(),
        }
    }

    /// Counts a webhook the service disabled; `kind` is `DisableReason::kind`.
    pub fn disabled(&self, kind: &str) {
        match kind {
            "gone" => self.disabled_gone.increment(1),
            _ => self.disabled_circuit_open.increment(1),
        }
    }

    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
