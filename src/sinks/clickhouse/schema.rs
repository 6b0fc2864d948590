//! The ClickHouse schema: numbered migration files in `schemas/clickhouse/`, compiled into the binary,
//! rendered with the deployment's parameters, and applied by `kcaudit clickhouse migrate`.
//!
//! Migrations are tracked in `<database>.kcaudit_migrations` (version, file name, checksum). Every
//! statement is idempotent (`IF NOT EXISTS`), so two instances migrating at the same moment both
//! succeed and the tracking table (a ReplacingMergeTree on the version) ends with one row per
//! migration. A migration whose file changed after it was applied is refused: edit the schema by
//! adding a new numbered file, never by rewriting an applied one.

use sha2::{Digest, Sha256};

use super::config::SchemaOptions;

/// One numbered migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub file: &'static str,
    pub sql: &'static str,
}

macro_rules! migrations {
    ($($v:literal => $f:literal),* $(,)?) => {
        &[$(Migration { version: $v, file: $f, sql: include_str!(concat!("../../../schemas/clickhouse/", $f)) }),*]
    };
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = migrations![
    1 => "0001_events.sql",
    2 => "0002_findings.sql",
    3 => "0003_aggregates.sql",
    4 => "0004_dead_letters.sql",
];

impl Migration {
    /// Checksum of the file as shipped (before rendering), to notice edited migrations.
    pub fn checksum(&self) -> String {
        hex::encode(&Sha256::digest(self.sql.as_bytes())[..16])
    }
}

/// The values substituted into the migration files.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaParams {
    pub database: String,
    pub options: SchemaOptions,
}

impl SchemaParams {
    fn ttl(days: u32, expr: &str) -> String {
        if days == 0 {
            String::new()
        } else {
            format!("TTL {expr} + INTERVAL {days} DAY")
        }
    }

    fn on_cluster(&self) -> String {
        if self.options.cluster.is_empty() {
            String::new()
        } else {
            format!("ON CLUSTER {}", self.options.cluster)
        }
    }

    /// Fill the `${...}` placeholders of one migration file (comment lines are left as written, so
    /// the rendered script still documents the placeholders).
    pub fn render(&self, sql: &str) -> String {
        let o = &self.options;
        let (on_cluster, engine_prefix) = (self.on_cluster(), if o.replicated { "Replicated" } else { "" });
        let ttl = Self::ttl(o.ttl_days, "toDateTime(event_time)");
        let ttl_hourly = Self::ttl(o.hourly_ttl_days, "hour");
        let ttl_dead = Self::ttl(o.dead_letter_ttl_days, "toDateTime(dead_lettered_at)");
        let mut out = String::with_capacity(sql.len());
        for line in sql.lines() {
            if line.trim_start().starts_with("--") {
                out.push_str(line);
            } else {
                out.push_str(
                    &line
                        .replace("${database}", &self.database)
                        .replace("${on_cluster}", &on_cluster)
                        .replace("${engine_prefix}", engine_prefix)
                        .replace("${ttl_clause}", &ttl)
                        .replace("${ttl_hourly_clause}", &ttl_hourly)
                        .replace("${dead_letter_ttl_clause}", &ttl_dead),
                );
            }
            out.push('\n');
        }
        out
    }

    /// Statements that come before any migration: the database and the tracking table.
    pub fn bootstrap(&self) -> Vec<String> {
        let oc = self.on_cluster();
        let engine = if self.options.replicated { "ReplicatedReplacingMergeTree" } else { "ReplacingMergeTree" };
        vec![
            format!("CREATE DATABASE IF NOT EXISTS {} {oc}", self.database),
            format!(
                "CREATE TABLE IF NOT EXISTS {}.kcaudit_migrations {oc} (version UInt32, file String, checksum String, \
                 applied_at DateTime, applied_by String) ENGINE = {engine} ORDER BY version",
                self.database
            ),
        ]
    }

    /// The whole schema as one SQL script (what `kcaudit schema clickhouse` prints).
    pub fn script(&self) -> String {
        let mut out = String::from("-- kcaudit ClickHouse schema (rendered). Apply with `kcaudit clickhouse migrate`,\n-- which also records what it applied; running this script by hand records nothing.\n\n");
        for s in self.bootstrap() {
            out.push_str(&s);
            out.push_str(";\n\n");
        }
        for m in MIGRATIONS {
            out.push_str(&format!("-- ===== {} =====\n", m.file));
            out.push_str(self.render(m.sql).trim());
            out.push_str("\n\n");
        }
        out
    }
}

/// Split a rendered migration into statements: comment lines dropped, statements end with `;` at the
/// end of a line (the migration files are written that way; no `;` inside string literals at a line end).
pub fn statements(rendered: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in rendered.lines() {
        let t = line.trim();
        if t.starts_with("--") || t.is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if t.ends_with(';') {
            let stmt = cur.trim().trim_end_matches(';').trim().to_string();
            if !stmt.is_empty() {
                out.push(stmt);
            }
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// What `migrate` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Migrations applied by this run.
    pub applied: Vec<String>,
    /// Migrations that were already recorded.
    pub already: Vec<String>,
}

/// Apply pending migrations on one server (or, with a cluster configured, on the whole cluster).
pub async fn migrate(client: &clickhouse::Client, params: &SchemaParams, applied_by: &str) -> anyhow::Result<MigrateReport> {
    migrate_with(client, params, applied_by, MIGRATIONS).await
}

/// [`migrate`] with a given list of migrations (tests use DDL an old server understands).
pub async fn migrate_with(client: &clickhouse::Client, params: &SchemaParams, applied_by: &str, migrations: &[Migration]) -> anyhow::Result<MigrateReport> {
    use anyhow::Context as _;
    for s in params.bootstrap() {
        client.query(&s).execute().await.with_context(|| format!("bootstrap statement failed: {s}"))?;
    }
    let recorded: Vec<(u32, String)> = client
        .query(&format!("SELECT version, checksum FROM {}.kcaudit_migrations FINAL ORDER BY version", params.database))
        .fetch_all::<(u32, String)>()
        .await
        .context("cannot read the migrations table")?;
    let mut report = MigrateReport::default();
    for m in migrations {
        if let Some((_, sum)) = recorded.iter().find(|(v, _)| *v == m.version) {
            if *sum != m.checksum() {
                anyhow::bail!(
                    "migration {} was applied with checksum {sum} but the shipped file has {}: applied migrations must not be edited (add a new numbered file instead)",
                    m.file,
                    m.checksum()
                );
            }
            report.already.push(m.file.to_string());
            continue;
        }
        for stmt in statements(&params.render(m.sql)) {
            client.query(&stmt).execute().await.with_context(|| format!("{} failed at:\n{stmt}", m.file))?;
        }
        client
            .query(&format!("INSERT INTO {}.kcaudit_migrations (version, file, checksum, applied_at, applied_by) VALUES (?, ?, ?, now(), ?)", params.database))
            .bind(m.version)
            .bind(m.file)
            .bind(m.checksum())
            .bind(applied_by)
            .execute()
            .await
            .with_context(|| format!("cannot record migration {}", m.file))?;
        report.applied.push(m.file.to_string());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SchemaParams {
        SchemaParams { database: "audit".into(), options: SchemaOptions::default() }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let p = SchemaParams { database: "audit".into(), options: SchemaOptions { cluster: "prod".into(), replicated: true, ..Default::default() } };
        for m in MIGRATIONS {
            let r = p.render(m.sql);
            let code: String = r.lines().filter(|l| !l.trim_start().starts_with("--")).collect();
            assert!(!code.contains("${"), "{} keeps a placeholder: {r}", m.file);
        }
        let script = p.script();
        assert!(script.contains("ON CLUSTER prod"));
        assert!(script.contains("ReplicatedReplacingMergeTree"));
        assert!(script.contains("TTL toDateTime(event_time) + INTERVAL 395 DAY"));
    }

    #[test]
    fn zero_ttl_means_no_ttl_clause() {
        let p = SchemaParams { database: "audit".into(), options: SchemaOptions { ttl_days: 0, dead_letter_ttl_days: 0, ..Default::default() } };
        let code: String = p.script().lines().filter(|l| !l.trim_start().starts_with("--")).collect();
        assert!(!code.contains("TTL "));
    }

    #[test]
    fn statements_split_at_line_end_semicolons_and_drop_comments() {
        let s = statements("-- a comment; with a semicolon;\nCREATE TABLE a (x String)\nENGINE = Log;\n\nCREATE VIEW b AS SELECT ';' AS x FROM a;\n");
        assert_eq!(s, vec!["CREATE TABLE a (x String)\nENGINE = Log".to_string(), "CREATE VIEW b AS SELECT ';' AS x FROM a".to_string()]);
        let all: usize = MIGRATIONS.iter().map(|m| statements(&params().render(m.sql)).len()).sum();
        assert_eq!(all, 10, "events, findings + view, 3 aggregate tables + 3 views, dead letters (update when adding a migration)");
    }

    #[test]
    fn migrations_are_numbered_in_order_with_matching_file_names() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.file.starts_with(&format!("{:04}_", m.version)));
        }
        // Every file in the folder is compiled in.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/clickhouse");
        let mut files: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|f| f.ends_with(".sql")).collect();
        files.sort();
        assert_eq!(files, MIGRATIONS.iter().map(|m| m.file.to_string()).collect::<Vec<_>>());
    }
}
