//! SARIF 2.1.0 output, so findings show up in code-scanning UIs (GitHub, GitLab, Azure DevOps)
//! next to the realm files they are about.
//!
//! Shape: one run; `tool.driver` is "kcaudit" with the whole rule catalogue (so a consumer knows
//! every rule, not only the ones that fired); each result has `ruleId`/`ruleIndex`, a `level`
//! (error for high/critical, warning for medium, note for low/info), the message with the fix
//! appended, a physical location (the file, as a URI reference) plus a logical location (the
//! client, or the realm), and `properties` with the kcaudit severity, realm, client and JSON
//! pointer. A JSON pointer is not a SARIF region (regions are lines/columns or offsets), so it
//! travels in the properties instead of being approximated.

use serde_json::{json, Value};

use super::rules::RULES;
use super::{Finding, Severity};

/// The schema URI written into the log: the OASIS errata-01 location of the 2.1.0 schema.
pub const SARIF_SCHEMA_URI: &str =
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json";

/// SARIF level for a severity.
pub fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    }
}

/// Render findings as a SARIF 2.1.0 log with one run.
pub fn render_sarif(findings: &[Finding], tool_version: &str) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": rule_name(r.id),
                "shortDescription": { "text": r.title },
                "fullDescription": { "text": r.rationale },
                "help": { "text": r.help },
                "defaultConfiguration": { "level": level(r.severity) },
                "properties": {
                    "severity": r.severity.name(),
                    "tags": ["security", "keycloak", "token-exchange"],
                },
            })
        })
        .collect();

    let results: Vec<Value> = findings.iter().map(result).collect();

    let mut driver = json!({
        "name": "kcaudit",
        "rules": rules,
    });
    if !tool_version.trim().is_empty() {
        driver["version"] = json!(tool_version);
    }

    json!({
        "$schema": SARIF_SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": driver },
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    })
}

/// Add an invocation to the run, with one notification per unreadable input; `executionSuccessful`
/// is false when any input failed, so consumers do not read an empty result list as "clean".
pub(crate) fn attach_invocation(log: &mut Value, errors: &[String]) {
    let notifications: Vec<Value> = errors
        .iter()
        .map(|e| json!({ "level": "error", "message": { "text": e } }))
        .collect();
    let mut invocation = json!({ "executionSuccessful": errors.is_empty() });
    if !notifications.is_empty() {
        invocation["toolExecutionNotifications"] = json!(notifications);
    }
    if let Some(run) = log.get_mut("runs").and_then(|r| r.get_mut(0)) {
        run["invocations"] = json!([invocation]);
    }
}

fn result(f: &Finding) -> Value {
    let mut location = json!({
        "physicalLocation": { "artifactLocation": { "uri": path_to_uri(&f.file) } },
    });
    let (name, kind) = match (&f.client, &f.realm) {
        (Some(client), _) => (client.clone(), "client"),
        (None, Some(realm)) => (realm.clone(), "realm"),
        (None, None) => (String::new(), ""),
    };
    if !name.is_empty() {
        let fqn = match (&f.realm, &f.client) {
            (Some(realm), Some(client)) => format!("{realm}/{client}"),
            _ => name.clone(),
        };
        location["logicalLocations"] = json!([{ "name": name, "fullyQualifiedName": fqn, "kind": kind }]);
    }

    let mut properties = json!({ "severity": f.severity.name(), "fix": f.fix });
    if let Some(realm) = &f.realm {
        properties["realm"] = json!(realm);
    }
    if let Some(client) = &f.client {
        properties["client"] = json!(client);
    }
    if let Some(ptr) = &f.location {
        properties["jsonPointer"] = json!(ptr);
    }

    let mut out = json!({
        "ruleId": f.rule,
        "level": level(f.severity),
        "message": { "text": format!("{} Fix: {}", f.message, f.fix) },
        "locations": [location],
        "properties": properties,
    });
    if let Some(index) = RULES.iter().position(|r| r.id == f.rule) {
        out["ruleIndex"] = json!(index);
    }
    out
}

/// "TE001-public-client-exchange" -> "PublicClientExchange" (SARIF's readable rule name).
fn rule_name(id: &str) -> String {
    id.split('-')
        .skip(1)
        .map(|w| {
            let mut cs = w.chars();
            match cs.next() {
                Some(first) => first.to_uppercase().chain(cs).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

/// A file path as a URI reference (SARIF `artifactLocation.uri` has format `uri-reference`):
/// forward slashes, Windows drive paths as `file:///C:/...`, and every byte outside the unreserved
/// and path characters percent-encoded (spaces, `%`, `#`, `?`, non-ASCII).
pub fn path_to_uri(path: &str) -> String {
    let forward = path.replace('\\', "/");
    let bytes = forward.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    let mut out = String::new();
    if drive {
        out.push_str("file:///");
    }
    for (i, b) in forward.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'/'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'@'
            )
            || (b == b':' && drive && i == 1);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(path_to_uri("tests/fixtures/a.json"), "tests/fixtures/a.json");
        assert_eq!(path_to_uri("/tmp/my realm#1.json"), "/tmp/my%20realm%231.json");
        assert_eq!(path_to_uri("C:\\realms\\acme.json"), "file:///C:/realms/acme.json");
        assert_eq!(path_to_uri("a:b.json"), "file:///a:b.json");
        assert_eq!(path_to_uri("réalm.json"), "r%C3%A9alm.json");
        // A colon in the first segment would make a relative path look like a scheme.
        assert_eq!(path_to_uri("x/ab:c.json"), "x/ab%3Ac.json");
    }

    #[test]
    fn rule_names() {
        assert_eq!(rule_name("TE001-public-client-exchange"), "PublicClientExchange");
    }
}
