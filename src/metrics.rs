//! Prometheus metrics for the pipeline, served at `/metrics`.
//!
//! One registry per pipeline (not a global), so tests can run several pipelines side by side and read
//! exact counts. Names follow Prometheus conventions (`_total` counters, `_seconds` histograms).
//! The counting invariant the tests check: `received = accepted + duplicates + rejected + skipped`.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub received: IntCounterVec,
    pub accepted: IntCounter,
    pub duplicates: IntCounterVec,
    pub rejected: IntCounterVec,
    pub skipped: IntCounter,
    pub warnings: IntCounterVec,
    pub delivered: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub sink_retries: IntCounterVec,
    pub sink_errors: IntCounterVec,
    pub filtered: IntCounterVec,
    pub kafka_lag: IntGaugeVec,
    /// Partitions this consumer currently owns.
    pub kafka_assigned: IntGauge,
    pub requests: IntCounterVec,
    pub enrichment: IntCounterVec,
    pub request_seconds: HistogramVec,
    /// Spool: bytes on disk not yet drained to the sinks.
    pub spool_bytes: IntGauge,
    /// Spool: requests appended, and the fsyncs that covered them (group commit: fewer fsyncs).
    pub spool_appends: IntCounter,
    pub spool_fsyncs: IntCounter,
    /// Spool: requests refused because the spool was full (answered 503).
    pub spool_full: IntCounter,
    /// Spool: bytes of torn or corrupt frames moved to the quarantine at start.
    pub spool_quarantined: IntCounter,
    /// Worker role: detection-state rows sent to the changelog topic.
    pub detect_changelog_records: IntCounter,
    /// Worker role: rows read back from the changelog when partitions were assigned.
    pub detect_rows_restored: IntCounter,
    /// Worker role: assignments whose state could not be restored (they start learning again).
    pub detect_restore_failures: IntCounter,
    /// `kcaudit dlq replay`: dead letters re-submitted, by outcome (delivered, failed_again, failed, skipped).
    pub dead_letters_replayed: IntCounterVec,
    /// `kcaudit dlq purge`: dead letters marked purged.
    pub dead_letters_purged: IntCounter,
    /// Configuration reloads (SIGHUP, file watch), by outcome: applied, rejected.
    pub config_reloads: IntCounterVec,
    /// The configuration generation in force: 1 at start, +1 per applied reload.
    pub config_generation: IntGauge,
    /// Unix time of the last configuration applied (start or reload).
    pub config_last_applied: IntGauge,
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    r.register(Box::new(g.clone())).expect("metric registered once");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let accepted = counter(&r, "kcaudit_events_accepted_total", "Events decoded and passed on to the sinks.");
        let skipped = counter(&r, "kcaudit_records_skipped_total", "Records that are not events (blank lines, non-event log lines).");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("kcaudit_webhook_request_duration_seconds", "Webhook request latency, from body received to response, including sink acknowledgement.")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route"],
        )
        .expect("valid");
        r.register(Box::new(request_seconds.clone())).expect("registered once");
        Metrics {
            received: counter_vec(&r, "kcaudit_records_received_total", "Records received, by source.", &["source"]),
            accepted,
            duplicates: counter_vec(&r, "kcaudit_events_duplicate_total", "Events dropped as repeats of an event id; conflict=true when the content differed.", &["conflict"]),
            rejected: counter_vec(&r, "kcaudit_records_rejected_total", "Records rejected, by reason.", &["reason"]),
            skipped,
            warnings: counter_vec(&r, "kcaudit_decode_warnings_total", "Warnings raised while decoding accepted events, by code.", &["code"]),
            delivered: counter_vec(&r, "kcaudit_events_delivered_total", "Events a sink accepted durably.", &["sink"]),
            dead_lettered: counter_vec(&r, "kcaudit_dead_letters_total", "Records written to the dead-letter store, by stage and sink.", &["stage", "sink"]),
            sink_retries: counter_vec(&r, "kcaudit_sink_retries_total", "Batch retries after transient sink failures.", &["sink"]),
            sink_errors: counter_vec(&r, "kcaudit_sink_errors_total", "Failed sink writes, by sink and kind (transient: retried; permanent: dead-lettered).", &["sink", "kind"]),
            kafka_lag: {
                let g = IntGaugeVec::new(Opts::new("kcaudit_kafka_consumer_lag", "Records between the committable position and the partition's high watermark."), &["topic", "partition"]).expect("valid");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            kafka_assigned: {
                let g = IntGauge::new("kcaudit_kafka_assigned_partitions", "Partitions this instance's consumer owns.").expect("valid");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            filtered: counter_vec(&r, "kcaudit_events_filtered_total", "Events a sink's route did not take (resolved at once for that sink).", &["sink"]),
            requests: counter_vec(&r, "kcaudit_webhook_requests_total", "Webhook requests by HTTP status.", &["status"]),
            enrichment: counter_vec(&r, "kcaudit_enrichment_total", "Events enriched, by status (enriched, partial, not_enriched).", &["status"]),
            request_seconds,
            spool_bytes: {
                let g = IntGauge::new("kcaudit_spool_bytes", "Bytes in the ingest spool not yet drained to the sinks.").expect("valid");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            spool_appends: counter(&r, "kcaudit_spool_appends_total", "Webhook requests written to the ingest spool."),
            spool_fsyncs: counter(&r, "kcaudit_spool_fsyncs_total", "fsyncs of the ingest spool (one covers every request waiting: group commit)."),
            spool_full: counter(&r, "kcaudit_spool_full_total", "Webhook requests refused with 503 because the spool was full."),
            spool_quarantined: counter(&r, "kcaudit_spool_quarantined_bytes_total", "Bytes of torn or corrupt spool frames moved to the quarantine at start."),
            detect_changelog_records: counter(&r, "kcaudit_detect_changelog_records_total", "Detection-state rows written to the changelog topic (worker role)."),
            detect_rows_restored: counter(&r, "kcaudit_detect_state_rows_restored_total", "Detection-state rows restored from the changelog on partition assignment (worker role)."),
            detect_restore_failures: counter(&r, "kcaudit_detect_state_restore_failures_total", "Partition assignments whose detection state could not be restored (worker role)."),
            dead_letters_replayed: counter_vec(&r, "kcaudit_dead_letters_replayed_total", "Dead letters re-submitted by `kcaudit dlq replay`, by outcome (delivered, failed_again, failed, skipped).", &["outcome"]),
            dead_letters_purged: counter(&r, "kcaudit_dead_letters_purged_total", "Dead letters marked purged by `kcaudit dlq purge`."),
            config_reloads: counter_vec(&r, "kcaudit_config_reloads_total", "Configuration reloads (SIGHUP, file watch), by outcome (applied, rejected).", &["outcome"]),
            config_generation: gauge(&r, "kcaudit_config_generation", "The configuration generation in force: 1 at start, one more per applied reload."),
            config_last_applied: gauge(&r, "kcaudit_config_last_applied_timestamp_seconds", "Unix time the configuration in force was applied (start or reload)."),
            registry: r,
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A short, bounded label for a rejection reason (metric labels must not carry free text).
pub fn reason_label(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.starts_with("truncated json") {
        "truncated_json"
    } else if r.starts_with("invalid json") || r.contains("json array could not") {
        "invalid_json"
    } else if r.contains("recursion limit") {
        "too_deep"
    } else if r.contains("over decode.max_record_bytes") {
        "too_large"
    } else if r.starts_with("authentication failed") {
        "auth"
    } else if r.contains("not a keycloak event") || r.contains("no event type") || r.contains("neither json") || r.contains("expected an event object") || r.contains("expected a json object") {
        "not_an_event"
    } else {
        "other"
    }
}
