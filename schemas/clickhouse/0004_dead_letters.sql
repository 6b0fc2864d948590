-- kcaudit migration 0004: batches ClickHouse itself refused (authentication is fine but the events
-- table rejected the rows: a type mismatch, a dropped column, a constraint). The local dead-letter
-- store always has them too; this table puts them next to the data, on the pipeline-health dashboard.
CREATE TABLE IF NOT EXISTS ${database}.dead_letters ${on_cluster}
(
    dead_lettered_at DateTime64(3, 'UTC'),
    instance         LowCardinality(String),
    sink             LowCardinality(String),
    reason           String,
    error_code       Int32,
    event_id         String,
    event_time       DateTime64(3, 'UTC'),
    realm            LowCardinality(String),
    client_id        LowCardinality(String),
    event_json       String CODEC(ZSTD(3))
)
ENGINE = ${engine_prefix}MergeTree
PARTITION BY toYYYYMM(dead_lettered_at)
ORDER BY (dead_lettered_at, event_id)
${dead_letter_ttl_clause};
