-- kcaudit migration 0002: one row per finding, for alert queries and the triage dashboard.
-- Filled by a materialized view from the events table, so the sink writes each event once.
-- Keyed by (rule, event_id) at the end of the sorting key so redelivered copies collapse like events.
CREATE TABLE IF NOT EXISTS ${database}.findings ${on_cluster}
(
    event_id          String,
    event_time        DateTime64(3, 'UTC'),
    inserted_at       DateTime64(3, 'UTC'),
    realm             LowCardinality(String),
    kind              LowCardinality(String),
    event_type        LowCardinality(String),
    outcome           LowCardinality(String),
    error             LowCardinality(String),
    client_id         LowCardinality(String),
    exchanger         LowCardinality(String),
    audiences         Array(LowCardinality(String)),
    user_id           String,
    subject_username  String,
    requested_subject String,
    ip_address        String,
    rule              LowCardinality(String),
    severity          LowCardinality(String),
    severity_rank     UInt8,
    title             String,
    reason            String,
    attack            Array(String)
)
ENGINE = ${engine_prefix}ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (rule, event_time, event_id)
${ttl_clause}
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.findings_mv ${on_cluster} TO ${database}.findings AS
SELECT
    event_id, event_time, inserted_at, realm, kind, event_type, outcome, error, client_id, exchanger, audiences,
    user_id, subject_username, requested_subject, ip_address,
    f.1 AS rule,
    f.2 AS severity,
    toUInt8(indexOf(['info', 'low', 'medium', 'high', 'critical'], f.2)) AS severity_rank,
    f.3 AS title,
    f.4 AS reason,
    f.5 AS attack
FROM ${database}.events
ARRAY JOIN arrayZip(finding_rules, finding_severities, finding_titles, finding_reasons, finding_attack) AS f;
