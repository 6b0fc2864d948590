//! # kcaudit
//!
//! Turns Keycloak events (above all OAuth 2.0 token exchange, RFC 8693) into an audit trail: ingest
//! from any Keycloak wire format, normalise into one event model, deduplicate, count everything, and
//! deliver to sinks with end-to-end acknowledgement. Nothing is lost: a record is either delivered,
//! or in the dead-letter store with its reason.
//!
//! ## Layout
//!
//! - [`event`]: the canonical [`event::AuditEvent`] every format decodes into (JSON Schema in `schemas/`);
//!   [`json_line`] writes it as JSON fast (byte-identical to serde, tested).
//! - [`decode`]: one decoder per wire format plus auto-detection; the shared interpretation in
//!   `decode::draft` (token-exchange facts, V1/V2 inference, caps, derived ids).
//! - [`sources`]: the HTTP webhook (`sources::webhook`), file replay (`sources::replay`), the admin
//!   events poller and the Kafka consumer (`sources::kafka`, offsets committed behind delivery).
//! - [`directory`]: Keycloak realms, clients and users (snapshot folders, realm exports), indexed.
//! - [`keycloak_api`]: the Keycloak Admin REST API client (token, cache, rate limit, circuit breaker).
//! - [`enrich`]: the enrichment stage (exchanger, subject, audiences, exchange policy).
//! - [`realm_audit`]: `kcaudit audit-realm`, token-exchange misconfigurations in realm exports (text, JSON, SARIF).
//! - [`detect`]: stateful detection rules (findings with reasons, ATT&CK ids, related events); state in
//!   redb, or per Kafka partition with a changelog topic in the worker role (`detect::partitioned`).
//! - [`pipeline`]: bounded stages, deduplication, acknowledgements, per-batch reports.
//! - [`sinks`]: the [`sinks::Sink`] trait and its driver (batching, retry, dead-lettering); the audit
//!   log file and stdout.
//! - [`spool`]: the optional durable ingest spool (webhook → disk with group commit → pipeline).
//! - [`dead_letter`]: the durable store for everything that could not be delivered.
//! - [`config`]: the TOML configuration (every option defaulted, unknown keys refused).
//! - [`reload`]: hot reload on SIGHUP or a file change (validate fully, then swap between batches).
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`telemetry`]: OpenTelemetry traces and metrics over OTLP (`[telemetry]`, off by default).
//! - [`loadgen`]: `kcaudit loadgen`, repeatable token-exchange traffic for benchmarks (loopback only).
//! - [`process_memory`]: allocator settings made first thing in `main` (glibc's mmap threshold for
//!   librdkafka, no transparent huge pages).
//! - [`server`]: assembles a running instance; [`cli`]: the `kcaudit` command line; [`schema`]: JSON Schemas.

pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod detect;
pub mod directory;
pub mod enrich;
pub mod keycloak_api;
pub mod loadgen;
pub mod event;
pub mod json_line;
pub mod metrics;
pub mod pipeline;
pub mod process_memory;
pub mod realm_audit;
pub mod reload;
pub mod schema;
pub mod server;
pub mod sinks;
pub mod sources;
pub mod spool;
pub mod telemetry;
