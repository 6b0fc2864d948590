-- kcaudit migration 0001: the events table, one row per canonical audit event.
--
-- Placeholders (filled by `kcaudit schema clickhouse` / `kcaudit clickhouse migrate`):
--   ${database}     database name                       ${on_cluster}  "" or "ON CLUSTER <name>"
--   ${engine_prefix} "" or "Replicated"                 ${ttl_clause}  "" or "TTL ... DELETE"
-- Every statement must be idempotent (IF NOT EXISTS): several kcaudit instances may migrate at once.
--
-- Why ReplacingMergeTree keyed by event id: delivery is at-least-once end to end (a sink retry after a
-- lost response, a Kafka redelivery after a crash, two instances that both received a webhook retry).
-- The sorting key ends with event_id, and one event id always has the same realm, client and time, so
-- every copy of an event collapses into one row at merge time. Queries that must be exact before the
-- merge use FINAL or uniqExact(event_id). On servers with insert_deduplication_token the sink also
-- tags each batch, so a retried batch is dropped at insert time and the materialized views never see it.
CREATE TABLE IF NOT EXISTS ${database}.events ${on_cluster}
(
    event_id             String,
    id_derived           Bool,
    event_time           DateTime64(3, 'UTC'),
    time_source          LowCardinality(String),
    received_at          DateTime64(3, 'UTC'),
    inserted_at          DateTime64(3, 'UTC'),
    kind                 LowCardinality(String),
    event_type           LowCardinality(String),
    outcome              LowCardinality(String),
    error                LowCardinality(String),
    realm_id             LowCardinality(String),
    realm                LowCardinality(String),
    client_id            LowCardinality(String),
    user_id              String,
    username             String,
    session_id           String,
    ip_address           String,
    exchanger            LowCardinality(String),
    audiences            Array(LowCardinality(String)),
    subject_token_client LowCardinality(String),
    requested_subject    String,
    impersonator         String,
    requested_token_type LowCardinality(String),
    scope                String,
    requested_issuer     LowCardinality(String),
    subject_issuer       LowCardinality(String),
    actor                String,
    flavour              LowCardinality(String),
    flavour_reason       String,
    admin_operation      LowCardinality(String),
    admin_resource_type  LowCardinality(String),
    admin_resource_path  String,
    admin_actor_user_id  String,
    admin_actor_username String,
    admin_actor_client   LowCardinality(String),
    admin_actor_ip       String,
    details              Map(String, String),
    enrichment_status    LowCardinality(String),
    exchanger_name       String,
    exchanger_access_type LowCardinality(String),
    subject_username     String,
    subject_service_account Bool,
    subject_privileged   Bool,
    subject_privileged_reason String,
    requested_subject_username String,
    requested_subject_privileged Bool,
    audiences_unknown    Array(LowCardinality(String)),
    policy_verdict       LowCardinality(String),
    policy_reason        String,
    severity             LowCardinality(String),
    severity_rank        UInt8,
    finding_rules        Array(LowCardinality(String)),
    finding_severities   Array(LowCardinality(String)),
    finding_titles       Array(String),
    finding_reasons      Array(String),
    finding_attack       Array(Array(String)),
    warnings             Array(LowCardinality(String)),
    origin_input         String,
    origin_format        LowCardinality(String),
    event_json           String CODEC(ZSTD(3)),
    INDEX idx_user_id user_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_username subject_username TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 4,
    INDEX idx_ip ip_address TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_finding_rules finding_rules TYPE set(64) GRANULARITY 4
)
ENGINE = ${engine_prefix}ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (realm, client_id, event_time, event_id)
${ttl_clause}
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000;
