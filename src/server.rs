//! Assembling a running kcaudit from a config: sinks, dead-letter store, pipeline, webhook.
//! Used by `kcaudit serve` and by the integration tests (which bind port 0).

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use crate::dead_letter::DeadLetterStore;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineHandle, SinkSpec};
use crate::sinks::file::FileSink;
use crate::sinks::stdout::StdoutSink;
use crate::sources::webhook::{self, WebhookState};

pub struct Running {
    pub addr: SocketAddr,
    pub pipeline: PipelineHandle,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
    pipeline_owner: Pipeline,
}

/// The sinks a config enables.
pub fn sinks(config: &Config) -> anyhow::Result<Vec<SinkSpec>> {
    let mut sinks = Vec::new();
    let a = &config.sinks.audit_log;
    if a.enabled {
        let path = config.data_path(&a.path);
        sinks.push(SinkSpec { sink: Box::new(FileSink::open("audit_log", &path, a)?), batch: a.batch.clone(), retry: a.retry.clone() });
    }
    let s = &config.sinks.stdout;
    if s.enabled {
        sinks.push(SinkSpec { sink: Box::new(StdoutSink), batch: s.batch.clone(), retry: s.retry.clone() });
    }
    Ok(sinks)
}

/// Start the pipeline and the webhook listener.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let dlq = DeadLetterStore::open(&config.data_path(&config.dead_letter.path))?;
    let metrics = Metrics::new();
    let enricher = crate::enrich::Enricher::from_options(&config.enrich, metrics.clone())?;
    let pipeline = Pipeline::start_with(sinks(config)?, enricher, dlq, metrics, &config.dedup, &config.pipeline);
    let state = WebhookState::new(&config.webhook, &config.decode, pipeline.handle())?;
    let listener = tokio::net::TcpListener::bind(&config.webhook.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.webhook.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grace = Duration::from_secs(config.webhook.shutdown_grace_secs);
    let server = tokio::spawn(webhook::serve(listener, state, async move { let _ = stop_rx.await; }, grace));
    Ok(Running { addr, pipeline: pipeline.handle(), server, stop, pipeline_owner: pipeline })
}

impl Running {
    /// Run until `signal`, then shut down gracefully: stop accepting, drain requests (up to
    /// `webhook.shutdown_grace_secs`), flush sinks.
    pub async fn wait(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let Running { server, stop, pipeline_owner, pipeline, .. } = self;
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => { r??; anyhow::bail!("the webhook server stopped unexpectedly"); }
            _ = signal => {}
        }
        let _ = stop.send(());
        server.await??;
        drop(pipeline);
        pipeline_owner.shutdown().await;
        Ok(())
    }

    /// Shut down now (tests).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.wait(async {}).await
    }
}
