//! `kcaudit audit-realm`: a static audit of Keycloak realm exports (`kc.sh export`) and
//! keycloak-config-cli files for token-exchange (RFC 8693) misconfigurations.
//!
//! Why a static audit: the event pipeline sees what exchanges *happened*; this module tells what the
//! realm *allows* before anything happens, so a risky grant is caught in review or CI rather than in
//! an incident. It reads only the file: it never calls Keycloak, so what Keycloak decides at runtime
//! from state that is not in the file (server features, users exported to separate files, deployed
//! JS policies) is reported as "could not be resolved" (`TE000`) instead of being guessed.
//!
//! Layout, one concern per file:
//! - [`rules`]: the rule catalogue (ids, severities and why) and the checks themselves;
//! - [`fgap`]: FGAP v1 (`realm-management.authorizationSettings`) parsing and policy evaluation;
//! - [`render`]: text and JSON output;
//! - [`sarif`]: SARIF 2.1.0 output.
//!
//! "Exchanger" throughout means a client that can *request* a token exchange: either it has the
//! standard (V2) attribute `standard.token.exchange.enabled=true`, or an FGAP v1 `token-exchange`
//! permission (on a target client or identity provider) grants it, as evaluated by [`fgap`].

pub mod fgap;
pub mod render;
pub mod rules;
pub mod sarif;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::directory::model::RealmRep;

pub use render::{render_json, render_text};
pub use rules::{RuleInfo, RULES};
pub use sarif::render_sarif;

pub use crate::event::Severity;

/// One problem found in one file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Finding {
    /// Stable id, e.g. "TE001-public-client-exchange" (see [`RULES`]).
    pub rule: String,
    pub severity: Severity,
    pub file: String,
    pub realm: Option<String>,
    /// The clientId the finding is about. For permission-level findings (TE005, TE000) it is the
    /// permission's target client when there is one.
    pub client: Option<String>,
    /// JSON pointer (RFC 6901) into the file, e.g. "/clients/3/attributes/standard.token.exchange.enabled".
    pub location: Option<String>,
    /// One sentence: what is wrong and why it matters.
    pub message: String,
    /// One line: how to fix it.
    pub fix: String,
}

/// Knobs of the audit.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Access-token lifespan (seconds) above which exchanged tokens count as long-lived. Default 3600.
    pub max_access_token_lifespan_secs: i64,
    /// clientIds allowed to impersonate (a recorded need). Default empty.
    pub impersonation_allowed_clients: Vec<String>,
}

impl Default for AuditOptions {
    /// One hour: longer than Keycloak's 5-minute default by a wide margin, so only deliberate
    /// long lifespans are flagged; nobody has a recorded need to impersonate until they say so.
    fn default() -> Self {
        AuditOptions {
            max_access_token_lifespan_secs: 3600,
            impersonation_allowed_clients: Vec::new(),
        }
    }
}

/// Read one realm export / keycloak-config-cli file. Err with a clear message (file name, what is
/// wrong) when it is not JSON or not a realm object.
///
/// A realm object is a JSON object with a string `realm` (every `kc.sh export` file and every
/// config-cli file has one); an array is refused with a hint, because `kc.sh export --file` without
/// `--realm` writes all realms into one array and the audit is per realm.
pub fn load(path: &Path) -> Result<(RealmRep, Value), String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("{shown}: cannot read file: {e}"))?;
    let raw: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{shown}: not JSON: {e} (line {}, column {})", e.line(), e.column()))?;
    match &raw {
        Value::Object(map) => match map.get("realm") {
            Some(Value::String(name)) if !name.trim().is_empty() => {}
            Some(Value::String(_)) => {
                return Err(format!("{shown}: not a realm object: \"realm\" is empty"));
            }
            Some(other) => {
                return Err(format!(
                    "{shown}: not a realm object: \"realm\" is {} instead of the realm's name",
                    json_kind(other)
                ));
            }
            None => {
                return Err(format!(
                    "{shown}: not a realm object: no \"realm\" field (is this a client or user list from the admin API?)"
                ));
            }
        },
        Value::Array(items) => {
            return Err(format!(
                "{shown}: not a realm object: the file is a JSON array of {} item(s); export one realm per file (kc.sh export --realm NAME, or --dir)",
                items.len()
            ));
        }
        other => {
            return Err(format!("{shown}: not a realm object: the file is {}", json_kind(other)));
        }
    }
    let realm: RealmRep =
        serde_json::from_value(raw.clone()).map_err(|e| format!("{shown}: not a realm object: {e}"))?;
    Ok((realm, raw))
}

/// Audit one realm. `raw` is the same file as JSON (for JSON pointers and for fields the typed
/// model lacks). Findings come back sorted worst first, then by rule, client and location, so the
/// output is stable from run to run.
pub fn audit(realm: &RealmRep, raw: &Value, file: &str, opts: &AuditOptions) -> Vec<Finding> {
    let mut findings = rules::run_all(realm, raw, file, opts);
    sort_findings(&mut findings);
    findings.dedup();
    findings
}

/// CLI body for `kcaudit audit-realm [--format text|json|sarif] [--fail-on SEVERITY]
/// [--max-token-lifespan SECS] [--allow-impersonation CLIENT]... FILE...`: returns (output text,
/// exit code).
///
/// Exit codes: 0 when no finding is at or above `fail_on`; 1 when one is; 2 when an input could not
/// be read or parsed (every other file is still audited and reported, and 2 wins over 1 because a
/// clean result over a partial input set must not pass CI), or when `format` is unknown or no file
/// was given. Unreadable files appear as `error:` lines in text, an `errors` array in JSON, and
/// tool-execution notifications (with `executionSuccessful: false`) in SARIF, so every format stays
/// machine-readable.
pub fn run(files: &[PathBuf], format: &str, fail_on: Severity, opts: &AuditOptions) -> (String, i32) {
    let format = format.trim().to_ascii_lowercase();
    if !matches!(format.as_str(), "text" | "json" | "sarif") {
        return (
            format!("error: unknown --format '{format}' (expected text, json or sarif)\n"),
            2,
        );
    }
    if files.is_empty() {
        return ("error: audit-realm needs at least one realm file\n".to_string(), 2);
    }

    let mut findings = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        match load(path) {
            Ok((realm, raw)) => {
                findings.extend(audit(&realm, &raw, &path.display().to_string(), opts));
            }
            Err(e) => errors.push(e),
        }
    }

    let output = match format.as_str() {
        "json" => render::render_json_with_errors(&findings, &errors),
        "sarif" => {
            let mut log = render_sarif(&findings, env!("CARGO_PKG_VERSION"));
            sarif::attach_invocation(&mut log, &errors);
            serde_json::to_string_pretty(&log).unwrap_or_default() + "\n"
        }
        _ => {
            let mut out = String::new();
            for e in &errors {
                out.push_str("error: ");
                out.push_str(e);
                out.push('\n');
            }
            out.push_str(&render_text(&findings));
            out
        }
    };

    let code = if !errors.is_empty() {
        2
    } else if findings.iter().any(|f| f.severity >= fail_on) {
        1
    } else {
        0
    };
    (output, code)
}

/// Worst first, then rule, file, client and location: the order a reviewer works through.
pub(crate) fn sort_findings(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.file.cmp(&b.file))
            .then_with(|| a.rule.cmp(&b.rule))
            .then_with(|| a.client.cmp(&b.client))
            .then_with(|| a.location.cmp(&b.location))
            .then_with(|| a.message.cmp(&b.message))
    });
}

/// Count findings per severity, in [`Severity::DESCENDING`] order.
pub(crate) fn counts(findings: &[Finding]) -> [(Severity, usize); 5] {
    Severity::DESCENDING.map(|s| (s, findings.iter().filter(|f| f.severity == s).count()))
}

/// Build a JSON pointer (RFC 6901) from path segments, escaping `~` and `/` inside them.
pub(crate) fn pointer<S: AsRef<str>>(segments: &[S]) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.push_str(&s.as_ref().replace('~', "~0").replace('/', "~1"));
    }
    out
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
