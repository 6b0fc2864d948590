//! Integration tests for `realm_audit`: planted mistakes, the clean realm, the six public
//! realm-config samples, rendering, `run` exit codes, SARIF schema validity, and no panics on
//! malformed input.
//!
//! Fixtures live in tests/fixtures/realm-audit/ (see its README.md for what each file plants).

use std::path::{Path, PathBuf};

use serde_json::Value;

use kcaudit::directory::model::RealmRep;
use kcaudit::realm_audit::{
    audit, load, render_json, render_sarif, render_text, run, AuditOptions, Finding, Severity, RULES,
};

const TE000: &str = "TE000-unresolved-permission";
const TE001: &str = "TE001-public-client-exchange";
const TE002: &str = "TE002-exchanger-without-credentials";
const TE003: &str = "TE003-exchange-enabled-everywhere";
const TE004: &str = "TE004-permission-on-exchanger";
const TE005: &str = "TE005-permissive-exchange-permission";
const TE006: &str = "TE006-impersonation-without-need";
const TE007: &str = "TE007-inline-secret";
const TE008: &str = "TE008-long-lived-exchanged-tokens";
const TE009: &str = "TE009-legacy-v1-exchange";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/realm-audit")
        .join(name)
}

fn public(name: &str) -> PathBuf {
    fixture("public").join(name)
}

fn audit_path(path: &Path, opts: &AuditOptions) -> (Vec<Finding>, Value) {
    let (realm, raw) = load(path).unwrap_or_else(|e| panic!("{e}"));
    (audit(&realm, &raw, &path.display().to_string(), opts), raw)
}

fn audit_fixture(name: &str) -> Vec<Finding> {
    audit_path(&fixture(name), &AuditOptions::default()).0
}

type Row = (String, Option<String>, Severity, Option<String>);

/// (rule, client, severity, location), sorted, for exact comparisons.
fn rows(findings: &[Finding]) -> Vec<Row> {
    let mut out: Vec<Row> = findings
        .iter()
        .map(|f| (f.rule.clone(), f.client.clone(), f.severity, f.location.clone()))
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1, &a.3).cmp(&(&b.0, &b.1, &b.3)));
    out
}

fn row(rule: &str, client: Option<&str>, severity: Severity, location: &str) -> Row {
    (
        rule.to_string(),
        client.map(str::to_string),
        severity,
        Some(location.to_string()),
    )
}

fn expect(findings: &[Finding], mut expected: Vec<Row>) {
    expected.sort_by(|a, b| (&a.0, &a.1, &a.3).cmp(&(&b.0, &b.1, &b.3)));
    assert_eq!(rows(findings), expected, "findings:\n{}", render_text(findings));
}

/// Every finding names a place that exists in the file, a realm, a one-sentence message and a fix.
fn assert_well_formed(findings: &[Finding], raw: &Value) {
    for f in findings {
        let loc = f.location.as_deref().expect("every rule sets a location");
        assert!(
            raw.pointer(loc).is_some(),
            "{} points at {loc}, which is not in the file",
            f.rule
        );
        assert!(f.realm.is_some(), "{}: realm missing", f.rule);
        assert!(!f.message.is_empty() && !f.fix.is_empty());
        assert!(!f.fix.contains('\n') && !f.message.contains('\n'));
        assert!(RULES.iter().any(|r| r.id == f.rule), "unknown rule id {}", f.rule);
    }
}

// ------------------------------------------------------------------ planted mistakes

#[test]
fn te001_public_v2_exchanger() {
    expect(
        &audit_fixture("te001-public-exchanger.json"),
        vec![row(
            TE001,
            Some("mobile-app"),
            Severity::High,
            "/clients/6/attributes/standard.token.exchange.enabled",
        )],
    );
}

#[test]
fn te002_exchangers_without_credentials() {
    expect(
        &audit_fixture("te002-exchanger-without-credentials.json"),
        vec![
            row(
                TE002,
                Some("report-exporter"),
                Severity::Medium,
                "/clients/6/clientAuthenticatorType",
            ),
            row(
                TE002,
                Some("legacy-soap-bridge"),
                Severity::Medium,
                "/clients/7/bearerOnly",
            ),
        ],
    );
}

#[test]
fn te003_exchange_everywhere() {
    expect(
        &audit_fixture("te003-exchange-everywhere.json"),
        vec![row(TE003, None, Severity::Medium, "/clients")],
    );
}

#[test]
fn te004_permission_on_the_exchanger() {
    expect(
        &audit_fixture("te004-permission-on-exchanger.json"),
        vec![row(
            TE004,
            Some("reports-service"),
            Severity::Medium,
            "/clients/4/authorizationSettings/policies/1",
        )],
    );
}

#[test]
fn te005_time_policy_lets_any_client_through() {
    expect(
        &audit_fixture("te005-permissive-permission.json"),
        vec![row(
            TE005,
            Some("ledger-api"),
            Severity::High,
            "/clients/4/authorizationSettings/policies/1",
        )],
    );
}

#[test]
fn te005_resourceless_negative_policy_under_affirmative_server() {
    expect(
        &audit_fixture("te005-any-audience.json"),
        vec![
            row(
                TE005,
                None,
                Severity::Critical,
                "/clients/4/authorizationSettings/policies/3",
            ),
            row(
                TE009,
                Some("payroll-service"),
                Severity::Low,
                "/clients/4/authorizationSettings/policies/2",
            ),
        ],
    );
}

#[test]
fn te006_impersonation() {
    expect(
        &audit_fixture("te006-impersonation.json"),
        vec![
            row(
                TE006,
                Some("support-console"),
                Severity::High,
                "/clients/4/authorizationSettings/policies/1",
            ),
            row(
                TE006,
                Some("hr-sync"),
                Severity::High,
                "/users/1/clientRoles/realm-management/1",
            ),
            row(TE006, Some("ops-automation"), Severity::High, "/users/2/realmRoles/1"),
        ],
    );
}

#[test]
fn te006_recorded_need_suppresses() {
    let opts = AuditOptions {
        impersonation_allowed_clients: vec!["support-console".into(), "hr-sync".into()],
        ..AuditOptions::default()
    };
    let (findings, _) = audit_path(&fixture("te006-impersonation.json"), &opts);
    expect(
        &findings,
        vec![row(
            TE006,
            Some("ops-automation"),
            Severity::High,
            "/users/2/realmRoles/1",
        )],
    );
}

#[test]
fn te007_inline_secrets() {
    let findings = audit_fixture("te007-inline-secrets.json");
    expect(
        &findings,
        vec![
            row(TE007, Some("crm-connector"), Severity::High, "/clients/6/secret"),
            row(TE007, None, Severity::High, "/identityProviders/0/config/clientSecret"),
            row(TE007, None, Severity::High, "/smtpServer/password"),
        ],
    );
    // The placeholder (${...}, $(env:...), ${vault.*}) and masked values are not reported.
    let text = render_text(&findings);
    for quiet in ["billing-api", "reporting-api", "marketing-sync", "partner-oidc"] {
        assert!(!text.contains(quiet), "{quiet} must not be reported");
    }
}

#[test]
fn te008_long_lived_tokens_and_threshold() {
    expect(
        &audit_fixture("te008-long-lived-tokens.json"),
        vec![
            row(TE008, Some("api-gateway"), Severity::Medium, "/accessTokenLifespan"),
            row(
                TE008,
                Some("partner-bridge"),
                Severity::Medium,
                "/clients/7/attributes/access.token.lifespan",
            ),
        ],
    );
    let strict = AuditOptions {
        max_access_token_lifespan_secs: 500,
        ..AuditOptions::default()
    };
    let (findings, _) = audit_path(&fixture("te008-long-lived-tokens.json"), &strict);
    let clients: Vec<_> = findings.iter().filter_map(|f| f.client.as_deref()).collect();
    assert_eq!(clients, ["api-gateway", "partner-bridge", "short-exchanger"]);
    let lax = AuditOptions {
        max_access_token_lifespan_secs: 100_000,
        ..AuditOptions::default()
    };
    assert!(audit_path(&fixture("te008-long-lived-tokens.json"), &lax).0.is_empty());
}

#[test]
fn te009_legacy_v1_and_public_v1_exchanger() {
    expect(
        &audit_fixture("te009-legacy-v1.json"),
        vec![
            row(
                TE001,
                Some("store-app"),
                Severity::High,
                "/clients/4/authorizationSettings/policies/2",
            ),
            row(
                TE009,
                Some("stock-sync"),
                Severity::Low,
                "/clients/4/authorizationSettings/policies/2",
            ),
        ],
    );
}

#[test]
fn te000_unresolved_permissions_are_info_only() {
    let findings = audit_fixture("te000-unresolved.json");
    expect(
        &findings,
        vec![
            row(
                TE000,
                None,
                Severity::Info,
                "/clients/1/authorizationSettings/policies/2",
            ),
            row(
                TE000,
                Some("catalog-api"),
                Severity::Info,
                "/clients/1/authorizationSettings/policies/3",
            ),
        ],
    );
    assert!(findings[0].message.contains("placeholder") || findings[1].message.contains("placeholder"));
    assert!(findings.iter().any(|f| f.message.contains("group policy")));
}

#[test]
fn clean_realm_has_no_findings() {
    let (findings, _) = audit_path(&fixture("clean-v2.json"), &AuditOptions::default());
    assert!(findings.is_empty(), "{}", render_text(&findings));
}

#[test]
fn every_fixture_finding_is_well_formed() {
    for name in [
        "te000-unresolved.json",
        "te001-public-exchanger.json",
        "te002-exchanger-without-credentials.json",
        "te003-exchange-everywhere.json",
        "te004-permission-on-exchanger.json",
        "te005-any-audience.json",
        "te005-permissive-permission.json",
        "te006-impersonation.json",
        "te007-inline-secrets.json",
        "te008-long-lived-tokens.json",
        "te009-legacy-v1.json",
    ] {
        let (findings, raw) = audit_path(&fixture(name), &AuditOptions::default());
        assert!(!findings.is_empty(), "{name} plants at least one mistake");
        assert_well_formed(&findings, &raw);
    }
}

#[test]
fn partial_files_are_not_guessed_about() {
    let audit_doc = |doc: Value, opts: &AuditOptions| -> Vec<Finding> {
        let realm: RealmRep = serde_json::from_value(doc.clone()).expect("realm");
        audit(&realm, &doc, "inline.json", opts)
    };
    // publicClient, serviceAccountsEnabled and the secret are not stated: nothing to say.
    let partial = serde_json::json!({"realm": "r", "clients": [
        {"clientId": "a", "attributes": {"standard.token.exchange.enabled": "true"}}]});
    assert!(audit_doc(partial.clone(), &AuditOptions::default()).is_empty());
    // With a threshold below Keycloak's default (300 s) the default applies and the finding points
    // at the client, because the file has no accessTokenLifespan to point at.
    let strict = AuditOptions {
        max_access_token_lifespan_secs: 100,
        ..AuditOptions::default()
    };
    expect(
        &audit_doc(partial, &strict),
        vec![row(TE008, Some("a"), Severity::Medium, "/clients/0")],
    );
    // An explicitly emptied secret on a secret-authenticated exchanger without service account.
    let emptied = serde_json::json!({"realm": "r", "clients": [
        {"clientId": "a", "publicClient": false, "serviceAccountsEnabled": false, "secret": "",
         "attributes": {"standard.token.exchange.enabled": "true"}}]});
    expect(
        &audit_doc(emptied, &AuditOptions::default()),
        vec![row(TE002, Some("a"), Severity::Medium, "/clients/0/secret")],
    );
    // The same without a secret key: Keycloak generates one on import, so no finding.
    let generated = serde_json::json!({"realm": "r", "clients": [
        {"clientId": "a", "publicClient": false, "serviceAccountsEnabled": false,
         "attributes": {"standard.token.exchange.enabled": "true"}}]});
    assert!(audit_doc(generated, &AuditOptions::default()).is_empty());
}

// ------------------------------------------------------------------ the six public samples

#[test]
fn public_fgap_v2_sample_has_no_findings() {
    // FGAP v2 realm: the v1 `client.resource.$test-client` resource is not consulted, and it has
    // only a `manage` permission anyway.
    let (findings, _) = audit_path(
        &public("adorsys-keycloak-config-cli__00_create_realm_with_authorization_fgap_v2.json"),
        &AuditOptions::default(),
    );
    expect(&findings, vec![]);
}

#[test]
fn public_partial_standard_exchange_sample_has_no_findings() {
    // moped-client enables V2 exchange, but the partial file says nothing about publicClient,
    // credentials or lifespans, so nothing may be concluded.
    let (findings, _) = audit_path(
        &public("adorsys-keycloak-config-cli__27_update_realm__enable_standard_token_exchange.json"),
        &AuditOptions::default(),
    );
    expect(&findings, vec![]);
}

#[test]
fn public_fgap_v1_sample_with_empty_permission_has_no_findings() {
    // The token-exchange permission has no applyPolicies: Keycloak's canExchangeTo denies, so the
    // public client it sits on is a target nobody can exchange to, not an exchanger.
    let (findings, _) = audit_path(
        &public("adorsys-keycloak-config-cli__41_update_realm_add_authz_policy_realm-management.json"),
        &AuditOptions::default(),
    );
    expect(&findings, vec![]);
}

#[test]
fn public_idp_permission_sample_is_unresolved_info() {
    // The IdP permission applies a group policy ('clientadmin-policy'), which cannot be evaluated
    // for a client identity from the file. The IdP secret is masked (**********), not inline.
    let path = public("adorsys-keycloak-config-cli__45_update_realm_update_authz_policy_for_idp_realm-management.json");
    let (findings, raw) = audit_path(&path, &AuditOptions::default());
    expect(
        &findings,
        vec![row(
            TE000,
            None,
            Severity::Info,
            "/clients/0/authorizationSettings/policies/1",
        )],
    );
    assert!(findings[0].message.contains("clientadmin-policy"));
    assert_eq!(
        raw.pointer("/clients/0/authorizationSettings/policies/1/name")
            .and_then(Value::as_str),
        Some("token-exchange.permission.idp.1dcbfbe7-1cee-4d42-8c39-d8ed74b4cf22")
    );
    assert_well_formed(&findings, &raw);
}

#[test]
fn public_idp_placeholder_sample_is_unresolved_info() {
    let path = public(
        "adorsys-keycloak-config-cli__46_update_realm_update_authz_policy_for_idp_with_placeholder_realm-management.json",
    );
    let (findings, raw) = audit_path(&path, &AuditOptions::default());
    expect(
        &findings,
        vec![
            row(
                TE000,
                None,
                Severity::Info,
                "/clients/0/authorizationSettings/policies/1",
            ),
            row(
                TE000,
                None,
                Severity::Info,
                "/clients/0/authorizationSettings/policies/2",
            ),
        ],
    );
    assert_eq!(
        raw.pointer("/clients/0/authorizationSettings/policies/2/name")
            .and_then(Value::as_str),
        Some("token-exchange.permission.idp.$provider-without-id")
    );
    assert!(findings
        .iter()
        .any(|f| f.message.contains("$provider-without-id") && f.message.contains("placeholder")));
    assert_well_formed(&findings, &raw);
}

#[test]
fn public_keycloak_v2_test_realm() {
    // requester-client-public is public with "standard.token.exchange.enabled":"true"; seven
    // clients carry inline secrets ("secret", and generated ones on realm-management and
    // target-client3). Checked by reading the file: indices below are the clients' array positions.
    let path = public("keycloak-keycloak__testrealm-token-exchange-v2.excerpt.json");
    let (findings, raw) = audit_path(&path, &AuditOptions::default());
    let mut expected = vec![row(
        TE001,
        Some("requester-client-public"),
        Severity::High,
        "/clients/9/attributes/standard.token.exchange.enabled",
    )];
    for (i, c) in [
        (4, "invalid-requester-client"),
        (5, "disabled-requester-client"),
        (6, "realm-management"),
        (7, "requester-client"),
        (8, "requester-client-2"),
        (11, "subject-client"),
        (14, "target-client3"),
    ] {
        expected.push(row(TE007, Some(c), Severity::High, &format!("/clients/{i}/secret")));
    }
    expect(&findings, expected);
    for f in &findings {
        let loc = f.location.as_deref().unwrap_or_default();
        let value = raw.pointer(loc).and_then(Value::as_str).unwrap_or_default();
        let client_id = raw
            .pointer(&format!(
                "/clients/{}/clientId",
                loc.split('/').nth(2).unwrap_or_default()
            ))
            .and_then(Value::as_str);
        assert_eq!(client_id, f.client.as_deref(), "{loc}");
        match f.rule.as_str() {
            TE001 => {
                assert_eq!(value, "true");
                let i = loc.split('/').nth(2).unwrap_or_default();
                assert_eq!(
                    raw.pointer(&format!("/clients/{i}/publicClient")),
                    Some(&Value::Bool(true))
                );
            }
            TE007 => assert!(!value.is_empty() && !value.starts_with("${") && !value.starts_with('*')),
            other => panic!("unexpected {other}"),
        }
    }
}

#[test]
fn all_public_samples_load() {
    let dir = fixture("public");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("public dir") {
        let path = entry.expect("entry").path();
        let (realm, raw) = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(realm.realm.is_some());
        let findings = audit(&realm, &raw, &path.display().to_string(), &AuditOptions::default());
        assert_well_formed(&findings, &raw);
        n += 1;
    }
    assert_eq!(n, 6);
}

// ------------------------------------------------------------------ load errors

#[test]
fn load_reports_file_and_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &str, &str)] = &[
        ("broken.json", "{\"realm\": \"x\", ", "not JSON"),
        ("array.json", "[{\"realm\":\"a\"},{\"realm\":\"b\"}]", "JSON array of 2"),
        ("clients.json", "{\"clientId\": \"x\"}", "no \"realm\" field"),
        ("number.json", "42", "the file is a number"),
        ("realm-number.json", "{\"realm\": 7}", "\"realm\" is a number"),
        (
            "bad-clients.json",
            "{\"realm\": \"x\", \"clients\": {\"a\": 1}}",
            "not a realm object",
        ),
    ];
    for (name, body, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("write");
        let err = load(&path).expect_err(name);
        assert!(err.contains(name), "{err}");
        assert!(err.contains(expected), "{name}: {err}");
    }
    let missing = dir.path().join("missing.json");
    let err = load(&missing).expect_err("missing");
    assert!(err.contains("missing.json") && err.contains("cannot read"), "{err}");
}

// ------------------------------------------------------------------ rendering

fn all_findings() -> Vec<Finding> {
    let mut out = Vec::new();
    for dir in [fixture(""), fixture("public")] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("sarif-schema-2.1.0.json"))
            .collect();
        paths.sort();
        for p in paths {
            out.extend(audit_path(&p, &AuditOptions::default()).0);
        }
    }
    out
}

#[test]
fn text_report_is_grouped_and_summarised() {
    let findings = audit_fixture("te009-legacy-v1.json");
    let text = render_text(&findings);
    assert!(text.contains("te009-legacy-v1.json (realm acme-legacy)"), "{text}");
    let high = text.find("HIGH").expect("high line");
    let low = text.find("LOW").expect("low line");
    assert!(high < low, "worst first");
    assert!(text.contains("client=store-app") && text.contains("client=stock-sync"));
    assert!(text.contains("at /clients/4/authorizationSettings/policies/2"));
    assert!(text.contains("fix: "));
    assert!(text
        .trim_end()
        .ends_with("kcaudit audit-realm: 2 findings in 1 file: 0 critical, 1 high, 0 medium, 1 low, 0 info"));
    assert_eq!(render_text(&[]).trim(), "kcaudit audit-realm: no findings");
}

#[test]
fn text_report_keeps_hostile_values_on_one_line() {
    let mut f = audit_fixture("te001-public-exchanger.json").remove(0);
    f.client = Some("evil\nHIGH FAKE-RULE".into());
    let text = render_text(&[f]);
    assert!(!text.lines().any(|l| l.starts_with("HIGH FAKE-RULE")), "{text}");
}

#[test]
fn json_report_has_findings_and_counts() {
    let findings = all_findings();
    let json: Value = serde_json::from_str(&render_json(&findings)).expect("valid JSON");
    let items = json["findings"].as_array().expect("findings array");
    assert_eq!(items.len(), findings.len());
    let counts = json["counts"].as_object().expect("counts");
    assert_eq!(counts.len(), 5);
    let total: u64 = counts.values().filter_map(Value::as_u64).sum();
    assert_eq!(total as usize, findings.len());
    for s in ["critical", "high", "medium", "low", "info"] {
        let expected = findings.iter().filter(|f| f.severity.name() == s).count() as u64;
        assert_eq!(counts[s].as_u64(), Some(expected), "{s}");
    }
    let first = &items[0];
    for key in [
        "rule", "severity", "file", "realm", "client", "location", "message", "fix",
    ] {
        assert!(first.get(key).is_some(), "finding lacks {key}");
    }
    assert_eq!(first["severity"], "critical", "worst first");
    let empty: Value = serde_json::from_str(&render_json(&[])).expect("valid JSON");
    assert_eq!(empty["findings"], serde_json::json!([]));
    assert_eq!(empty["counts"]["info"], 0);
}

#[test]
fn severity_parse_and_order() {
    assert_eq!(Severity::parse("HIGH"), Ok(Severity::High));
    assert_eq!(Severity::parse(" info "), Ok(Severity::Info));
    assert!(Severity::parse("severe").unwrap_err().contains("severe"));
    assert!(Severity::Critical > Severity::High && Severity::Low > Severity::Info);
    for s in [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ] {
        assert_eq!(Severity::parse(s.name()), Ok(s));
        assert_eq!(serde_json::to_value(s).expect("ser"), Value::String(s.name().into()));
    }
}

// ------------------------------------------------------------------ run

fn opts() -> AuditOptions {
    AuditOptions::default()
}

#[test]
fn run_exit_codes_follow_fail_on() {
    let te001 = vec![fixture("te001-public-exchanger.json")];
    assert_eq!(run(&te001, "text", Severity::High, &opts()).1, 1);
    assert_eq!(run(&te001, "text", Severity::Critical, &opts()).1, 0);
    assert_eq!(run(&te001, "text", Severity::Info, &opts()).1, 1);

    let critical = vec![fixture("te005-any-audience.json")];
    assert_eq!(run(&critical, "json", Severity::Critical, &opts()).1, 1);

    let low_only = vec![fixture("te000-unresolved.json")];
    assert_eq!(
        run(&low_only, "text", Severity::Low, &opts()).1,
        0,
        "info findings stay below low"
    );
    assert_eq!(run(&low_only, "text", Severity::Info, &opts()).1, 1);

    let clean = vec![fixture("clean-v2.json")];
    let (out, code) = run(&clean, "text", Severity::Info, &opts());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no findings"));
}

#[test]
fn run_reports_unreadable_files_and_still_audits_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{ not json").expect("write");
    let files = vec![
        broken.clone(),
        fixture("te001-public-exchanger.json"),
        dir.path().join("absent.json"),
    ];

    let (text, code) = run(&files, "text", Severity::High, &opts());
    assert_eq!(code, 2);
    assert!(
        text.contains("error: ") && text.contains("broken.json") && text.contains("absent.json"),
        "{text}"
    );
    assert!(text.contains(TE001), "other files are still audited: {text}");

    let (json, code) = run(&files, "json", Severity::High, &opts());
    assert_eq!(code, 2);
    let v: Value = serde_json::from_str(&json).expect("valid JSON even with errors");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["findings"].as_array().map(Vec::len), Some(1));

    let (sarif, code) = run(&files, "sarif", Severity::High, &opts());
    assert_eq!(code, 2);
    let log: Value = serde_json::from_str(&sarif).expect("valid SARIF JSON");
    assert_eq!(log["runs"][0]["invocations"][0]["executionSuccessful"], false);
    assert_eq!(
        log["runs"][0]["invocations"][0]["toolExecutionNotifications"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_valid_sarif(&log);

    // Only clean input, nothing unreadable: 0.
    assert_eq!(run(&[fixture("clean-v2.json")], "sarif", Severity::Info, &opts()).1, 0);
}

#[test]
fn run_rejects_bad_usage() {
    let (out, code) = run(&[fixture("clean-v2.json")], "yaml", Severity::High, &opts());
    assert_eq!(code, 2);
    assert!(out.contains("yaml"));
    assert_eq!(run(&[], "text", Severity::High, &opts()).1, 2);
}

// ------------------------------------------------------------------ SARIF

fn sarif_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(fixture("sarif-schema-2.1.0.json")).expect("schema file");
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles")
}

fn assert_valid_sarif(log: &Value) {
    let validator = sarif_validator();
    let errors: Vec<String> = validator
        .iter_errors(log)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "SARIF does not validate:\n{}", errors.join("\n"));
}

#[test]
fn sarif_validates_against_the_official_schema() {
    let findings = all_findings();
    assert!(findings.len() > 20);
    let log = render_sarif(&findings, "0.1.0");
    assert_valid_sarif(&log);
    assert_valid_sarif(&render_sarif(&[], "0.1.0"));
    assert_valid_sarif(&render_sarif(&findings, ""));

    // Negative controls: the schema really is enforced.
    let validator = sarif_validator();
    let mut bad_level = log.clone();
    bad_level["runs"][0]["results"][0]["level"] = Value::String("fatal".into());
    assert!(validator.iter_errors(&bad_level).next().is_some());
    let mut no_message = log.clone();
    if let Some(r) = no_message["runs"][0]["results"][0].as_object_mut() {
        r.remove("message");
    }
    assert!(validator.iter_errors(&no_message).next().is_some());
    let mut no_driver_name = log.clone();
    if let Some(d) = no_driver_name["runs"][0]["tool"]["driver"].as_object_mut() {
        d.remove("name");
    }
    assert!(validator.iter_errors(&no_driver_name).next().is_some());
}

#[test]
fn sarif_content() {
    let findings = all_findings();
    let log = render_sarif(&findings, "1.2.3");
    assert_eq!(log["version"], "2.1.0");
    let runs = log["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1);
    let driver = &runs[0]["tool"]["driver"];
    assert_eq!(driver["name"], "kcaudit");
    assert_eq!(driver["version"], "1.2.3");
    let rules = driver["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), RULES.len());
    for r in rules {
        assert!(r["id"].is_string() && r["shortDescription"]["text"].is_string() && r["help"]["text"].is_string());
    }
    let results = runs[0]["results"].as_array().expect("results");
    assert_eq!(results.len(), findings.len());
    for (res, f) in results.iter().zip(&findings) {
        assert_eq!(res["ruleId"], f.rule.as_str());
        let idx = res["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(rules[idx]["id"], f.rule.as_str());
        let level = match f.severity {
            Severity::Critical | Severity::High => "error",
            Severity::Medium => "warning",
            Severity::Low | Severity::Info => "note",
        };
        assert_eq!(res["level"], level);
        assert_eq!(res["properties"]["severity"], f.severity.name());
        assert!(res["message"]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(&f.message)));
        let uri = res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            .as_str()
            .expect("uri");
        assert!(uri.ends_with(".json"));
        assert_eq!(res["properties"]["jsonPointer"].as_str(), f.location.as_deref());
        if let Some(client) = &f.client {
            assert_eq!(res["locations"][0]["logicalLocations"][0]["name"], client.as_str());
        }
    }
}

#[test]
fn sarif_uri_for_awkward_paths_validates() {
    let mut f = audit_fixture("te001-public-exchanger.json").remove(0);
    f.file = "/tmp/my realms/acme #1/réalm?.json".into();
    let log = render_sarif(&[f], "0.1.0");
    assert_valid_sarif(&log);
    assert_eq!(
        log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "/tmp/my%20realms/acme%20%231/r%C3%A9alm%3F.json"
    );
}

// ------------------------------------------------------------------ robustness

/// Replace every value under `root` (one at a time) with values of other JSON types and audit the
/// result whenever it still deserialises: no input may make the audit panic.
#[test]
fn no_panic_on_mutated_realms() {
    let odd = [
        Value::Null,
        serde_json::json!(-1),
        Value::String("[\"x\", {\"id\": 5}]".into()),
        Value::String("${X}".into()),
        serde_json::json!([null, 1, "a", {"name": "token-exchange"}]),
        serde_json::json!({}),
    ];
    // The parts the rules read: FGAP settings, service-account users and roles, identity providers,
    // and the custom clients' top-level fields.
    let keep = |name: &str, ptr: &str| -> bool {
        if name == "te000-unresolved.json" {
            return true;
        }
        if ptr.contains("authorizationSettings") {
            return !ptr.contains("/scopes/");
        }
        match name {
            "te006-impersonation.json" => ptr.starts_with("/users") || ptr.starts_with("/roles/realm"),
            "te009-legacy-v1.json" => {
                ptr.starts_with("/identityProviders")
                    || (ptr.starts_with("/clients/")
                        && ptr.matches('/').count() == 3
                        && ptr
                            .split('/')
                            .nth(2)
                            .and_then(|i| i.parse::<usize>().ok())
                            .is_some_and(|i| i >= 6))
            }
            _ => false,
        }
    };
    let mut audited = 0usize;
    for name in [
        "te009-legacy-v1.json",
        "te006-impersonation.json",
        "te005-any-audience.json",
        "te000-unresolved.json",
    ] {
        let (_, raw) = load(&fixture(name)).expect("fixture");
        let mut pointers = Vec::new();
        collect_pointers(&raw, String::new(), &mut pointers);
        for ptr in pointers.iter().filter(|p| keep(name, p)) {
            for v in &odd {
                let mut doc = raw.clone();
                if let Some(slot) = doc.pointer_mut(ptr) {
                    *slot = v.clone();
                }
                if let Ok(realm) = serde_json::from_value::<RealmRep>(doc.clone()) {
                    let findings = audit(&realm, &doc, "mutated.json", &AuditOptions::default());
                    if audited % 25 == 0 {
                        let _ = render_text(&findings);
                        let _ = render_json(&findings);
                        let _ = render_sarif(&findings, "x");
                    }
                    audited += 1;
                }
            }
        }
    }
    assert!(audited > 1000, "only {audited} mutations were auditable");

    // Hand-made oddities: cycles of aggregates, self-referencing composites, huge lifespans.
    let doc = serde_json::json!({
        "realm": "odd",
        "accessTokenLifespan": "9223372036854775807",
        "roles": {"realm": [
            {"name": "a", "composites": {"realm": ["b"]}},
            {"name": "b", "composites": {"realm": ["a"], "client": {"realm-management": ["impersonation"]}}}
        ]},
        "users": [{"username": "service-account-x", "serviceAccountClientId": "x", "realmRoles": ["a"]}],
        "clients": [
            {"id": "1", "clientId": "x", "publicClient": false, "serviceAccountsEnabled": true,
             "attributes": {"standard.token.exchange.enabled": ["TRUE"], "access.token.lifespan": 1e20}},
            {"clientId": "realm-management", "authorizationSettings": {
                "decisionStrategy": 7,
                "resources": [{"name": "client.resource.1", "scopes": ["token-exchange", {"name": 3}]}],
                "policies": [
                    {"name": "p1", "type": "aggregate", "config": {"applyPolicies": "[\"p2\"]"}},
                    {"name": "p2", "type": "aggregate", "config": {"applyPolicies": "[\"p1\"]"}},
                    {"name": "perm", "type": "scope", "logic": "NEGATIVE",
                     "config": {"resources": "[\"client.resource.1\"]", "scopes": "[\"token-exchange\"]", "applyPolicies": "[\"p1\",\"missing\"]"}}
                ]}}
        ]
    });
    let realm: RealmRep = serde_json::from_value(doc.clone()).expect("odd realm deserialises");
    let findings = audit(&realm, &doc, "odd.json", &AuditOptions::default());
    assert!(findings
        .iter()
        .any(|f| f.rule == TE006 && f.client.as_deref() == Some("x")));
    assert!(findings.iter().any(|f| f.rule == TE000));
    assert!(findings.iter().any(|f| f.rule == TE008), "{}", render_text(&findings));
}

fn collect_pointers(v: &Value, here: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{here}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                collect_pointers(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{here}/{i}");
                out.push(p.clone());
                collect_pointers(child, p, out);
            }
        }
        _ => {}
    }
}
