//! Assembling a running kcaudit from a config: sinks, dead-letter store, pipeline, webhook.
//! Used by `kcaudit serve` and by the integration tests (which bind port 0).

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{Config, Role};
use crate::dead_letter::DeadLetterStore;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineHandle, SinkSpec};
use crate::sinks::clickhouse::ClickHouseSink;
use crate::sinks::file::FileSink;
use crate::sinks::stdout::StdoutSink;
use crate::sources::webhook::{self, WebhookState};

pub struct Running {
    /// Where the webhook listens (None when `webhook.enabled = false`).
    pub webhook_addr: Option<SocketAddr>,
    pub pipeline: PipelineHandle,
    sources: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    stop: tokio::sync::watch::Sender<bool>,
    pipeline_owner: Pipeline,
    /// What a hot reload starts from: the configuration in force and the shared admin API client.
    config: Config,
    api: Option<std::sync::Arc<crate::keycloak_api::AdminApi>>,
}

/// The sinks a config enables.
pub fn sinks(config: &Config) -> anyhow::Result<Vec<SinkSpec>> {
    sinks_named(config, |_| true)
}

/// The enabled sinks whose name `want` takes (a hot reload builds only the sinks that changed).
pub fn sinks_named(config: &Config, want: impl Fn(&str) -> bool) -> anyhow::Result<Vec<SinkSpec>> {
    let mut sinks = Vec::new();
    let a = &config.sinks.audit_log;
    if a.enabled && want("audit_log") {
        let path = config.data_path(&a.path);
        sinks.push(SinkSpec { sink: Box::new(FileSink::open("audit_log", &path, a)?), batch: a.batch.clone(), retry: a.retry.clone() });
    }
    let s = &config.sinks.stdout;
    if s.enabled && want("stdout") {
        sinks.push(SinkSpec { sink: Box::new(StdoutSink { format: s.format, ..Default::default() }), batch: s.batch.clone(), retry: s.retry.clone() });
    }
    let c = &config.sinks.clickhouse;
    if c.enabled && want("clickhouse") {
        sinks.push(SinkSpec { sink: Box::new(ClickHouseSink::new("clickhouse", c)?), batch: c.batch.clone(), retry: c.retry.clone() });
    }
    let h = &config.sinks.splunk_hec;
    if h.enabled && want("splunk_hec") {
        sinks.push(SinkSpec { sink: Box::new(crate::sinks::splunk_hec::SplunkHecSink::new("splunk_hec", h)?), batch: h.batch.clone(), retry: h.retry.clone() });
    }
    let es = &config.sinks.elasticsearch;
    if es.enabled && want("elasticsearch") {
        sinks.push(SinkSpec { sink: Box::new(crate::sinks::elasticsearch::ElasticsearchSink::new("elasticsearch", es)?), batch: es.batch.clone(), retry: es.retry.clone() });
    }
    let az = &config.sinks.sentinel;
    if az.enabled && want("sentinel") {
        sinks.push(SinkSpec { sink: Box::new(crate::sinks::sentinel::SentinelSink::new("sentinel", az)?), batch: az.batch.clone(), retry: az.retry.clone() });
    }
    let k = &config.sinks.kafka;
    if k.enabled && want("kafka") {
        sinks.push(SinkSpec { sink: Box::new(crate::sinks::kafka::KafkaSink::new("kafka", k)?), batch: k.batch.clone(), retry: k.retry.clone() });
    }
    for h in config.sinks.http.iter().filter(|h| h.enabled && want(&h.name)) {
        sinks.push(SinkSpec { sink: Box::new(crate::sinks::http::HttpSink::new(h)?), batch: h.batch.clone(), retry: h.retry.clone() });
    }
    let l = &config.sinks.syslog;
    if l.enabled && want("syslog") {
        let format = crate::sinks::syslog::formatter(l);
        sinks.push(SinkSpec { sink: Box::new(crate::sinks::syslog::SyslogSink::new("syslog", l, format)?), batch: l.batch.clone(), retry: l.retry.clone() });
    }
    let b = &config.sinks.blackhole;
    if b.enabled && want("blackhole") {
        sinks.push(SinkSpec { sink: Box::new(crate::sinks::blackhole::BlackholeSink), batch: b.batch.clone(), retry: b.retry.clone() });
    }
    Ok(sinks)
}

/// Start the pipeline and the enabled sources (webhook listener, admin-API poller, Kafka consumer).
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let dlq = DeadLetterStore::open(&config.data_path(&config.dead_letter.path))?.with_topic(&config.dead_letter.kafka)?;
    if config.sinks.clickhouse.enabled && config.sinks.clickhouse.migrate_on_start {
        let (url, report) = crate::sinks::clickhouse::migrate(&config.sinks.clickhouse).await?;
        tracing::info!(url = %url, applied = ?report.applied, "ClickHouse schema is up to date.");
    }
    let metrics = Metrics::new();
    // The same counters through OpenTelemetry, when `[telemetry]` exports metrics.
    crate::telemetry::bridge(&metrics);
    metrics.config_generation.set(1);
    metrics.config_last_applied.set(chrono::Utc::now().timestamp());
    let api = config.admin_api_client()?;
    let stages = config.stages(api.clone(), metrics.clone(), Some(&config.data_path(&config.detect.state_file)))?;
    let detector = stages.detector.clone();
    let pipeline = Pipeline::start_with(sinks(config)?, stages, dlq, metrics, &config.dedup, &config.pipeline);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut sources = Vec::new();
    let mut webhook_addr = None;
    let mut spool_drainer = None;
    if config.webhook.enabled {
        let mut state = WebhookState::new(&config.webhook, &config.decode, pipeline.handle())?;
        if let Some(s) = std::sync::Arc::get_mut(&mut state) {
            s.ingest = config.role != Role::Worker;
            if config.spool.enabled {
                let dir = config.data_path(&config.spool.path);
                let (spool, drainer, _) = crate::spool::Spool::start(&config.spool, &dir, pipeline.handle())?;
                s.spool = Some(spool);
                spool_drainer = Some(drainer);
            }
        }
        let listener = tokio::net::TcpListener::bind(&config.webhook.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.webhook.listen))?;
        webhook_addr = Some(listener.local_addr()?);
        let grace = Duration::from_secs(config.webhook.shutdown_grace_secs);
        sources.push(("webhook", tokio::spawn(webhook::serve(listener, state, stopped(), grace))));
        if let Some(drainer) = spool_drainer {
            // Ends at shutdown, once the spooled requests in flight are through (the rest stays on disk).
            sources.push(("spool", tokio::spawn(async move { drainer.await.map_err(|e| anyhow::anyhow!("spool drainer: {e}")) })));
        }
    }
    if config.poll.enabled {
        let api = api.clone().ok_or_else(|| anyhow::anyhow!("poll.enabled needs [admin_api] url"))?;
        let poller = crate::sources::admin_poll::Poller {
            api,
            opts: config.poll.clone(),
            decode: config.decode.clone(),
            cursor_path: config.data_path(&config.poll.cursor_file),
            pipeline: pipeline.handle(),
        };
        sources.push(("admin_poll", tokio::spawn(poller.run(stopped()))));
    }
    if config.kafka.enabled {
        let metrics = pipeline.handle().metrics.clone();
        let mut source = crate::sources::kafka::KafkaSource::new(&config.kafka, &config.decode, metrics.clone())?;
        // The worker's detector keeps one state per owned partition: it follows the assignment.
        let changelog = detector.as_ref().and_then(|d| d.lock().ok().and_then(|d| d.partitions.as_ref().and_then(|p| p.changelog.clone())));
        if let (Some(detector), Some(changelog)) = (detector, changelog) {
            let hooks = crate::detect::partitioned::PartitionedDetection { detector, changelog, metrics, flush_timeout: Duration::from_secs(30) };
            source = source.with_hooks(std::sync::Arc::new(hooks));
        }
        sources.push(("kafka", tokio::spawn(source.run(pipeline.handle(), stopped()))));
    }
    Ok(Running { webhook_addr, pipeline: pipeline.handle(), sources, stop, pipeline_owner: pipeline, config: config.clone(), api })
}

impl Running {
    /// The hot-reload handle: re-reads `file` with the same `sets` the running config came from.
    pub fn reloader(&self, file: Option<std::path::PathBuf>, sets: Vec<String>) -> crate::reload::Reloader {
        crate::reload::Reloader::new(file, sets, self.config.clone(), self.api.clone(), self.pipeline_owner.control(), self.pipeline.metrics.clone())
    }

    /// Run until `signal`, then shut down gracefully: stop the sources (the webhook drains in-flight
    /// requests for up to `webhook.shutdown_grace_secs`), then flush the sinks.
    pub async fn wait(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let Running { sources, stop, pipeline_owner, pipeline, .. } = self;
        let mut watch: futures::stream::FuturesUnordered<_> =
            sources.into_iter().map(|(name, h)| async move { (name, h.await) }).collect();
        use futures::StreamExt;
        tokio::pin!(signal);
        let mut failure = None;
        tokio::select! {
            Some((name, r)) = watch.next() => {
                failure = Some(match r {
                    Ok(Ok(())) => anyhow::anyhow!("the {name} source stopped unexpectedly"),
                    Ok(Err(e)) => e.context(format!("the {name} source failed")),
                    Err(e) => anyhow::anyhow!("the {name} source panicked: {e}"),
                });
            }
            _ = &mut signal => {}
        }
        pipeline.begin_shutdown();
        let _ = stop.send(true);
        while let Some((name, r)) = watch.next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(source = name, error = format!("{e:#}"), "Source failed while stopping."),
                Err(e) => tracing::error!(source = name, error = %e, "Source task failed while stopping."),
            }
        }
        drop(pipeline);
        pipeline_owner.shutdown().await;
        failure.map_or(Ok(()), Err)
    }

    /// Shut down now (tests).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.wait(async {}).await
    }
}
