//! The command line: `serve`, `replay`, `validate`, `schema`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat, Problem};
use crate::decode::Format;

#[derive(Parser, Debug)]
#[command(name = "kcaudit", version, about = "Audit trail for Keycloak token-exchange events", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command that runs the pipeline.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// TOML configuration file (every option has a default; see deploy/kcaudit.example.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override any key: --set webhook.listen=0.0.0.0:8787 (dotted path, repeatable; values parse as TOML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the webhook listener and deliver events to the configured sinks until SIGINT/SIGTERM.
    /// SIGHUP reloads the configuration (rules, routes, enrichment, sinks; see README "Hot reload").
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Reload when the --config file changes (same as --set reload.watch=true).
        #[arg(long)]
        watch_config: bool,
    },
    /// Run recorded files through the pipeline and print normalised events as JSON lines.
    Replay {
        #[command(flatten)]
        config: ConfigArgs,
        /// Input format (default: detect per record): auto, keycloak, p2inc, keycloak-kafka, jboss-logging, recording.
        #[arg(long, short = 'f', default_value = "auto", value_parser = parse_format)]
        format: Format,
        /// Write events here instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        /// Deliver to the sinks the configuration enables ([sinks.audit_log], [sinks.clickhouse], ...)
        /// instead of standard output: backfill a store from recordings.
        #[arg(long, conflicts_with = "out")]
        to_sinks: bool,
        /// Write a JSON summary: counts per input and every rejected, duplicate, skipped and warned record.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Enrich from a directory snapshot folder (same as --set enrich.directory=DIR).
        #[arg(long, value_name = "DIR")]
        directory: Option<PathBuf>,
        /// Enrich from realm export / keycloak-config-cli files (repeatable).
        #[arg(long = "realm-export", value_name = "FILE")]
        realm_export: Vec<PathBuf>,
        /// Detection state (redb) to start from and save to: seed a baseline from history, or resume an
        /// interrupted replay. Without it a replay starts fresh and keeps nothing.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Exit with status 2 when any record was rejected.
        #[arg(long)]
        fail_on_reject: bool,
        /// No progress bar even on a terminal.
        #[arg(long)]
        quiet: bool,
        /// Input files; `-` for standard input; `.gz` is read transparently.
        #[arg(required = true, value_name = "FILE")]
        inputs: Vec<String>,
    },
    /// Audit realm exports / keycloak-config-cli files for token-exchange misconfigurations.
    AuditRealm {
        /// Output: text (people), json, or sarif (code-scanning tools).
        #[arg(long, default_value = "text", value_parser = ["text", "json", "sarif"])]
        format: String,
        /// Exit 1 when a finding at or above this severity exists: info, low, medium, high, critical.
        #[arg(long, default_value = "high")]
        fail_on: String,
        /// Access-token lifespan (seconds) above which exchanged tokens count as long-lived.
        #[arg(long, default_value_t = 3600)]
        max_token_lifespan: i64,
        /// A client with a recorded need to impersonate (repeatable).
        #[arg(long = "allow-impersonation", value_name = "CLIENT")]
        allow_impersonation: Vec<String>,
        /// Realm export or keycloak-config-cli JSON files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Detection state: inspect, export or import it (e.g. to seed a baseline from a month of history).
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// Detection rules: run the rule unit tests (fixture streams) or export Sigma rules.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Generate realistic token-exchange traffic: to a file, or against a kcaudit webhook on loopback.
    /// Against a webhook it prints a JSON report (rate, latency percentiles, statuses) and exits 1
    /// if any request failed.
    Loadgen {
        /// Webhook URL (loopback only), e.g. http://127.0.0.1:8787/v1/events. Omit with --out.
        #[arg(long)]
        target: Option<String>,
        /// Write the events as NDJSON to this file (`-` for stdout) instead of sending them.
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
        /// Also write a directory snapshot naming every client, user and audience of the traffic
        /// (for `enrich.directory`), so enrichment finds what it looks up, as in production.
        #[arg(long)]
        directory: Option<PathBuf>,
        /// Events to generate.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Events per request (1: one event per request, as p2-inc's sender does).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Concurrent connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Target events per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Stop after this many seconds even if --count is not reached.
        #[arg(long, default_value_t = 60)]
        max_seconds: u64,
        /// Wire format: keycloak or p2inc.
        #[arg(long, default_value = "keycloak", value_parser = ["keycloak", "p2inc"])]
        format: String,
        /// Share of TOKEN_EXCHANGE_ERROR events.
        #[arg(long, default_value_t = 0.02)]
        error_share: f64,
        /// Distinct clients / users / audiences.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        #[arg(long, default_value_t = 5000)]
        users: usize,
        #[arg(long, default_value_t = 50)]
        audiences: usize,
        /// RNG seed (same seed, same events).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Environment variable with the HMAC secret to sign requests with (p2-inc style).
        #[arg(long)]
        secret_env: Option<String>,
    },
    /// Directory snapshots for enrichment.
    Directory {
        #[command(subcommand)]
        action: DirectoryAction,
    },
    /// Check a configuration and explain every problem.
    Validate(ConfigArgs),
    /// Print a schema: the JSON Schema of `event` (the canonical audit event), `config` or
    /// `dead-letter`, or the `clickhouse` DDL rendered with the config's [sinks.clickhouse] settings.
    Schema {
        #[arg(value_parser = ["event", "config", "dead-letter", "clickhouse"])]
        which: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// ClickHouse administration.
    Clickhouse {
        #[command(subcommand)]
        action: ClickhouseAction,
    },
    /// Dead letters: list, show, replay (once the cause is fixed), purge, compact (docs/dead-letters.md).
    Dlq {
        #[command(subcommand)]
        action: crate::dead_letter::workflow::DlqAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClickhouseAction {
    /// Create the database and apply pending migrations from schemas/clickhouse/ (idempotent; safe to
    /// run from several instances at once).
    Migrate {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum StateAction {
    /// Summarise the state: realms, clients, keys, size, newest event time.
    Inspect {
        /// The state file (default: detect.state_file under data_dir).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Write the state as JSON to standard output.
    Export {
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Replace the state with a JSON export.
    Import {
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
        /// The JSON written by `kcaudit state export`.
        #[arg(value_name = "JSON")]
        input: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum RulesAction {
    /// Run every test case (*.yml) in a folder through the replay pipeline and compare the findings;
    /// exit 1 when any case fails (format: rules/README.md).
    Test {
        /// Folder of test cases.
        #[arg(default_value = "rules/tests", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Write one Sigma rule per detection rule, alerting on the findings kcaudit stamps on events.
    Export {
        /// Export as Sigma rules (the only format so far; required so a later format is not a surprise).
        #[arg(long, required = true)]
        sigma: bool,
        /// Output folder (created if missing); one .yml per rule.
        #[arg(long, short = 'o', value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum DirectoryAction {
    /// Write a snapshot (realms.json, <realm>.clients.json, <realm>.users.json) from the live admin API.
    Sync {
        #[command(flatten)]
        config: ConfigArgs,
        /// Output folder (use it as enrich.directory).
        #[arg(long, short = 'o', value_name = "DIR")]
        out: PathBuf,
        /// Only these realms (repeatable; default: every realm the service account can see).
        #[arg(long = "realm", value_name = "NAME")]
        realms: Vec<String>,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s)
}

/// Command output on stdout, without `print!`'s panic when stdout is gone: a reader that closed the
/// pipe (`kcaudit schema event | head`) asked for no more, so the rest is dropped quietly; any other
/// write error is said on stderr.
fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("kcaudit: writing to stdout: {e}");
        }
    }
}

/// Entry point used by the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Schema { which, config } if which == "clickhouse" => with_config(&config, |c| {
            let ch = &c.sinks.clickhouse;
            emit(format_args!("{}", crate::sinks::clickhouse::schema::SchemaParams { database: ch.database.clone(), options: ch.schema.clone() }.script()));
            Ok(ExitCode::SUCCESS)
        }),
        Command::Schema { which, .. } => {
            emit(format_args!("{}\n", crate::schema::render(&which)));
            ExitCode::SUCCESS
        }
        Command::Clickhouse { action: ClickhouseAction::Migrate { config } } => with_config(&config, |c| {
            let (url, report) = runtime()?.block_on(crate::sinks::clickhouse::migrate(&c.sinks.clickhouse))?;
            for f in &report.already {
                eprintln!("kcaudit clickhouse migrate: {f}: already applied");
            }
            for f in &report.applied {
                eprintln!("kcaudit clickhouse migrate: {f}: applied");
            }
            eprintln!("kcaudit clickhouse migrate: {url}: database {} is up to date ({} applied now, {} before)", c.sinks.clickhouse.database, report.applied.len(), report.already.len());
            Ok(ExitCode::SUCCESS)
        }),
        Command::Validate(args) => validate(&args),
        Command::Loadgen { target, out, directory, count, batch, connections, rate, max_seconds, format, error_share, clients, users, audiences, seed, secret_env } => {
            let gen = crate::loadgen::GenOptions { seed, clients, users, audiences, error_share, format, ..Default::default() };
            let result: anyhow::Result<()> = (|| {
                if let Some(dir) = &directory {
                    crate::loadgen::write_directory(&gen, dir).map_err(|e| anyhow::anyhow!("writing the directory snapshot {}: {e}", dir.display()))?;
                    if out.is_none() && target.is_none() {
                        return Ok(());
                    }
                }
                if let Some(path) = out {
                    let mut w: Box<dyn std::io::Write> = if path.as_os_str() == "-" { Box::new(std::io::stdout().lock()) } else { Box::new(std::fs::File::create(&path)?) };
                    let mut w = std::io::BufWriter::new(&mut w);
                    crate::loadgen::write_file(gen, count, &mut w)?;
                    return Ok(());
                }
                let target = target.ok_or_else(|| anyhow::anyhow!("give --target URL (loopback) or --out FILE"))?;
                let secret = match secret_env {
                    Some(v) => Some(std::env::var(&v).map_err(|_| anyhow::anyhow!("environment variable {v} is not set"))?.into_bytes()),
                    None => None,
                };
                let o = crate::loadgen::DriveOptions { target, batch, connections, count, max_duration: std::time::Duration::from_secs(max_seconds), rate, secret };
                let rep = runtime()?.block_on(crate::loadgen::drive(gen, o))?;
                emit(format_args!("{}\n", serde_json::to_string_pretty(&rep)?));
                // A run with failed requests measured something else than it meant to: say so, and
                // exit non-zero so that no script takes its numbers for a clean run.
                anyhow::ensure!(
                    rep.errors == 0,
                    "{} of {} requests failed ({} of {} events accepted); statuses {:?} (0: no answer)",
                    rep.errors,
                    rep.requests,
                    rep.events_accepted,
                    rep.events_sent,
                    rep.status_counts
                );
                Ok(())
            })();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kcaudit loadgen: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::State { action } => state_command(action),
        Command::Rules { action } => rules_command(action),
        Command::AuditRealm { format, fail_on, max_token_lifespan, allow_impersonation, files } => {
            let fail_on = match crate::realm_audit::Severity::parse(&fail_on) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("kcaudit audit-realm: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = crate::realm_audit::AuditOptions { max_access_token_lifespan_secs: max_token_lifespan, impersonation_allowed_clients: allow_impersonation };
            let (out, code) = crate::realm_audit::run(&files, &format, fail_on, &opts);
            emit(format_args!("{out}"));
            ExitCode::from(u8::try_from(code).unwrap_or(2))
        }
        Command::Directory { action: DirectoryAction::Sync { config, out, realms } } => with_config(&config, |c| {
            let api = c.admin_api_client()?.ok_or_else(|| anyhow::anyhow!("set admin_api.url (and its credentials) to sync from Keycloak"))?;
            let summary = runtime()?.block_on(crate::directory::sync::sync(&api, &out, &realms))?;
            for r in &summary.realms {
                eprintln!("kcaudit directory sync: {}: {} clients, {} users{}", r.realm, r.clients, r.users, r.client_scopes.map(|n| format!(", {n} client scopes")).unwrap_or_default());
            }
            eprintln!("kcaudit directory sync: snapshot written to {} (use it with --set enrich.directory={})", out.display(), out.display());
            Ok(ExitCode::SUCCESS)
        }),
        Command::Dlq { action } => {
            let args = action.config_args().clone();
            with_config(&args, |c| crate::dead_letter::workflow::run(c, action))
        }
        Command::Serve { config: mut args, watch_config } => {
            if watch_config {
                // As an override, so every reload re-applies it like the other --set values.
                args.set.push("reload.watch=true".into());
            }
            let (file, sets) = (args.config.clone(), args.set.clone());
            run_configured(&args, true, |c| runtime()?.block_on(serve(c, file, sets)))
        }
        Command::Replay { mut config, format, out, report, directory, realm_export, state, fail_on_reject, quiet, to_sinks, inputs } => {
            if let Some(d) = directory {
                config.set.push(format!("enrich.directory={:?}", d.display().to_string()));
            }
            if !realm_export.is_empty() {
                let list: Vec<String> = realm_export.iter().map(|f| format!("{:?}", f.display().to_string())).collect();
                config.set.push(format!("enrich.realm_exports=[{}]", list.join(",")));
            }
            with_config(&config, |c| {
            let req = crate::sources::replay::ReplayRequest { inputs, format, out, progress: !quiet, state, to_sinks };
            let rep = runtime()?.block_on(crate::sources::replay::run(&c, &req))?;
            if let Some(path) = report {
                let text = serde_json::to_string_pretty(&rep)?;
                std::fs::write(&path, text + "\n").map_err(|e| anyhow::anyhow!("cannot write report {}: {e}", path.display()))?;
            }
            let t = rep.totals;
            tracing::info!(
                received = t.received, accepted = t.accepted, duplicates = t.duplicates, rejected = t.rejected, skipped = t.skipped, warned = t.warned,
                "Replay finished."
            );
            eprintln!(
                "kcaudit replay: {} records: {} accepted ({} with warnings), {} duplicates, {} rejected, {} skipped{}",
                t.received,
                t.accepted,
                t.warned,
                t.duplicates,
                t.rejected,
                t.skipped,
                if t.rejected > 0 { format!("; rejected records are in {}", rep.dead_letter_file) } else { String::new() }
            );
            if fail_on_reject && t.rejected > 0 {
                return Ok(ExitCode::from(2));
            }
            Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn state_command(action: StateAction) -> ExitCode {
    use crate::detect::store::StateStore;
    let (config, state) = match &action {
        StateAction::Inspect { config, state } | StateAction::Export { config, state } | StateAction::Import { config, state, .. } => (config.clone(), state.clone()),
    };
    with_config(&config, |c| {
        let path = state.unwrap_or_else(|| c.data_path(&c.detect.state_file));
        match action {
            StateAction::Inspect { .. } => {
                let st = StateStore::open(&path)?.load()?.unwrap_or_default();
                let clients: usize = st.realms.values().map(|r| r.clients.len()).sum();
                let newest = chrono::DateTime::from_timestamp_millis(st.newest_ms).map(|t| crate::event::format_time(&t)).unwrap_or_else(|| "-".into());
                emit(format_args!("state: {}\n", path.display()));
                emit(format_args!("realms: {}  clients: {}  keys: {}  size: {} bytes  newest event: {}\n", st.realms.len(), clients, st.key_count(), st.approx_bytes(), newest));
                for (name, r) in &st.realms {
                    emit(format_args!("  {name}: {} clients\n", r.clients.len()));
                }
            }
            StateAction::Export { .. } => {
                let st = StateStore::open(&path)?.load()?.unwrap_or_default();
                emit(format_args!("{}\n", serde_json::to_string_pretty(&st)?));
            }
            StateAction::Import { input, .. } => {
                let st: crate::detect::state::State = serde_json::from_slice(&std::fs::read(&input)?).map_err(|e| anyhow::anyhow!("{}: not a state export: {e}", input.display()))?;
                StateStore::open(&path)?.save(&st)?;
                eprintln!("kcaudit state import: {} keys written to {}", st.key_count(), path.display());
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn rules_command(action: RulesAction) -> ExitCode {
    match action {
        RulesAction::Test { dir } => match runtime().and_then(|rt| rt.block_on(crate::detect::rules_test::run_dir(&dir))) {
            Ok(report) => {
                emit(format_args!("{}", report.render()));
                if report.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("kcaudit rules test: {e:#}");
                ExitCode::FAILURE
            }
        },
        RulesAction::Export { sigma: _, out } => match crate::detect::sigma::write_sigma(&out) {
            Ok(n) => {
                eprintln!("kcaudit rules export: {n} Sigma rules written to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kcaudit rules export: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn with_config(args: &ConfigArgs, f: impl FnOnce(Config) -> anyhow::Result<ExitCode>) -> ExitCode {
    run_configured(args, false, f)
}

/// Load the configuration, set up logging (and, with `telemetry`, OpenTelemetry export, flushed
/// before returning), then run `f`.
fn run_configured(args: &ConfigArgs, telemetry: bool, f: impl FnOnce(Config) -> anyhow::Result<ExitCode>) -> ExitCode {
    let (config, warnings) = match Config::load_checked(args.config.as_deref(), &args.set) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kcaudit: configuration error:\n{e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    if let Err(e) = init_logging(&config, telemetry) {
        eprintln!("kcaudit: configuration error:\n{e}");
        return ExitCode::from(78);
    }
    for w in warnings {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    let code = match f(config) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "kcaudit failed.");
            eprintln!("kcaudit: {e:#}");
            ExitCode::FAILURE
        }
    };
    // The last spans and metric points of a graceful stop.
    crate::telemetry::shutdown();
    code
}

fn validate(args: &ConfigArgs) -> ExitCode {
    let source = args.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into());
    let problems: Vec<Problem> = match Config::load(args.config.as_deref(), &args.set) {
        Ok(c) => c.problems(),
        Err(crate::config::ConfigError::Invalid(p)) => p,
        Err(e) => {
            eprintln!("{source}: error: {e}");
            return ExitCode::from(78);
        }
    };
    for p in &problems {
        eprintln!("{source}: {p}");
    }
    let errors = problems.iter().filter(|p| p.is_error).count();
    if errors > 0 {
        eprintln!("{source}: {errors} error(s); kcaudit would not start with this configuration");
        ExitCode::from(78)
    } else {
        emit(format_args!("{source}: OK ({} warning(s))\n", problems.len()));
        ExitCode::SUCCESS
    }
}

/// Diagnostics on stderr, filtered by `log.level` / `RUST_LOG`; with `telemetry` and `[telemetry]`
/// on, also the OpenTelemetry layer, and JSON lines carry the current `trace_id` and `span_id`.
/// kcaudit's trace spans (target `kcaudit_otel`) never reach the log output, whatever the filter.
fn init_logging(c: &Config, telemetry: bool) -> Result<(), crate::telemetry::TelemetryError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&c.log.level));
    let filter = match format!("{}=off", crate::telemetry::TARGET).parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let json = match c.log.format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let otel = if telemetry && c.telemetry.is_enabled() { crate::telemetry::init(&c.telemetry)? } else { None };
    let output = if json {
        let format = crate::telemetry::WithTraceIds(fmt::format().json().flatten_event(true));
        fmt::layer().with_writer(std::io::stderr).fmt_fields(fmt::format::JsonFields::new()).event_format(format).with_filter(filter).boxed()
    } else {
        fmt::layer().with_writer(std::io::stderr).with_filter(filter).boxed()
    };
    let _ = tracing_subscriber::registry().with(output).with(otel).try_init();
    Ok(())
}

async fn serve(config: Config, file: Option<PathBuf>, sets: Vec<String>) -> anyhow::Result<ExitCode> {
    let running = crate::server::start(&config).await?;
    // Reloads run beside the instance and stop with it.
    let reloads = tokio::spawn(running.reloader(file, sets).run());
    match running.webhook_addr {
        Some(addr) => tracing::info!(
            listen = %addr,
            audit_log = %config.data_path(&config.sinks.audit_log.path).display(),
            dead_letters = %config.data_path(&config.dead_letter.path).display(),
            "kcaudit is listening: POST Keycloak events to http://{addr}/v1/events"
        ),
        None => tracing::info!(audit_log = %config.data_path(&config.sinks.audit_log.path).display(), "kcaudit is running (webhook disabled)."),
    }
    if config.poll.enabled {
        tracing::info!(realms = ?config.poll.realms, every_secs = config.poll.interval_secs, "Polling stored events through the admin API.");
    }
    let stopped = running.wait(shutdown_signal()).await;
    reloads.abort();
    stopped?;
    tracing::info!("kcaudit stopped; every accepted event was delivered or dead-lettered.");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("Shutdown requested; draining in-flight requests.");
}
