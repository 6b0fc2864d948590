-- kcaudit migration 0003: pre-aggregated tables that keep dashboards fast over a year of data.
--
-- first_seen/last_seen are exact whatever the delivery guarantees (min/max ignore copies). The counts
-- are exact for batches the sink retried on servers with insert_deduplication_token (a deduplicated
-- insert is not passed to the views); an at-least-once redelivery of an already written event (a Kafka
-- replay after a crash) can count it twice here, never in the events table once merged.

-- Exchanger -> audience pairs: "an audience this client never used before".
CREATE TABLE IF NOT EXISTS ${database}.exchanger_audience_pairs ${on_cluster}
(
    realm          LowCardinality(String),
    exchanger      LowCardinality(String),
    audience       LowCardinality(String),
    first_seen     SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen      SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    first_event_id AggregateFunction(argMin, String, DateTime64(3, 'UTC')),
    exchanges      AggregateFunction(count),
    failures       AggregateFunction(countIf, UInt8),
    subjects       AggregateFunction(uniq, String)
)
ENGINE = ${engine_prefix}AggregatingMergeTree
ORDER BY (realm, exchanger, audience);

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.exchanger_audience_pairs_mv ${on_cluster}
TO ${database}.exchanger_audience_pairs AS
SELECT
    realm, exchanger, audience,
    min(event_time) AS first_seen,
    max(event_time) AS last_seen,
    argMinState(event_id, event_time) AS first_event_id,
    countState() AS exchanges,
    countIfState(outcome != 'success') AS failures,
    uniqState(if(subject_username != '', subject_username, user_id)) AS subjects
FROM ${database}.events
ARRAY JOIN audiences AS audience
WHERE exchanger != ''
GROUP BY realm, exchanger, audience;

-- Exchanger -> subject origin client (the client the subject token was issued to), for chained and
-- cross-client exchanges: "a client exchanging tokens that come from somewhere new".
CREATE TABLE IF NOT EXISTS ${database}.exchanger_subject_client_pairs ${on_cluster}
(
    realm                LowCardinality(String),
    exchanger            LowCardinality(String),
    subject_token_client LowCardinality(String),
    first_seen           SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen            SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    first_event_id       AggregateFunction(argMin, String, DateTime64(3, 'UTC')),
    exchanges            AggregateFunction(count)
)
ENGINE = ${engine_prefix}AggregatingMergeTree
ORDER BY (realm, exchanger, subject_token_client);

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.exchanger_subject_client_pairs_mv ${on_cluster}
TO ${database}.exchanger_subject_client_pairs AS
SELECT
    realm, exchanger, subject_token_client,
    min(event_time) AS first_seen,
    max(event_time) AS last_seen,
    argMinState(event_id, event_time) AS first_event_id,
    countState() AS exchanges
FROM ${database}.events
WHERE exchanger != '' AND subject_token_client != ''
GROUP BY realm, exchanger, subject_token_client;

-- Per-client hourly counts by event type and outcome: volume, failure rate and baselines.
CREATE TABLE IF NOT EXISTS ${database}.client_hourly ${on_cluster}
(
    realm       LowCardinality(String),
    client_id   LowCardinality(String),
    hour        DateTime('UTC'),
    kind        LowCardinality(String),
    event_type  LowCardinality(String),
    outcome     LowCardinality(String),
    error       LowCardinality(String),
    events      AggregateFunction(count),
    subjects    AggregateFunction(uniq, String),
    source_ips  AggregateFunction(uniq, String),
    audiences   AggregateFunction(uniqArray, Array(LowCardinality(String))),
    findings    AggregateFunction(sum, UInt64)
)
ENGINE = ${engine_prefix}AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (realm, client_id, hour, kind, event_type, outcome, error)
${ttl_hourly_clause};

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.client_hourly_mv ${on_cluster} TO ${database}.client_hourly AS
SELECT
    realm, client_id,
    toStartOfHour(event_time) AS hour,
    kind, event_type, outcome, error,
    countState() AS events,
    uniqState(if(subject_username != '', subject_username, user_id)) AS subjects,
    uniqState(ip_address) AS source_ips,
    uniqArrayState(audiences) AS audiences,
    sumState(toUInt64(length(finding_rules))) AS findings
FROM ${database}.events
GROUP BY realm, client_id, hour, kind, event_type, outcome, error;
