//! The rule catalogue and the checks.
//!
//! Every rule has a stable id (never renumbered: SARIF consumers and suppressions key on it), a
//! default severity with the reason for it, and a one-line help text. A rule may raise or lower the
//! severity of a single finding when the case is clearly worse or milder than the default (noted
//! per rule below).
//!
//! Rules look only at what the file says. Fields a partial keycloak-config-cli file leaves out are
//! "unknown", not "false": a rule that needs them stays silent rather than guessing.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::directory::model::{value_str, ClientRep, RealmRep};

use super::fgap::{self, PermissionEval, PermissionKind, Strategy, Target, V1Analysis};
use super::{pointer, AuditOptions, Finding, Severity};

/// One entry of the rule catalogue.
#[derive(Debug, Clone, Copy)]
pub struct RuleInfo {
    pub id: &'static str,
    /// Default severity; see `rationale` for why.
    pub severity: Severity,
    /// Short description (SARIF `shortDescription`).
    pub title: &'static str,
    /// Why the severity is what it is (SARIF `fullDescription`).
    pub rationale: &'static str,
    /// How to fix it in general (SARIF `help`).
    pub help: &'static str,
}

pub const TE000: &str = "TE000-unresolved-permission";
pub const TE001: &str = "TE001-public-client-exchange";
pub const TE002: &str = "TE002-exchanger-without-credentials";
pub const TE003: &str = "TE003-exchange-enabled-everywhere";
pub const TE004: &str = "TE004-permission-on-exchanger";
pub const TE005: &str = "TE005-permissive-exchange-permission";
pub const TE006: &str = "TE006-impersonation-without-need";
pub const TE007: &str = "TE007-inline-secret";
pub const TE008: &str = "TE008-long-lived-exchanged-tokens";
pub const TE009: &str = "TE009-legacy-v1-exchange";

/// The catalogue, in id order.
pub const RULES: &[RuleInfo] = &[
    RuleInfo {
        id: TE000,
        severity: Severity::Info,
        title: "An FGAP v1 exchange or impersonation permission could not be resolved from the file",
        rationale: "Info: nothing is known to be wrong, but the reviewer must check by hand who the permission lets through (placeholder ids, partial imports, group/user/regex/JS policies, users exported elsewhere).",
        help: "Review the permission in the admin console, or audit a full export that contains the referenced clients, policies and service-account users.",
    },
    RuleInfo {
        id: TE001,
        severity: Severity::High,
        title: "Token exchange is enabled for a public client",
        rationale: "High: a public client has no secret, so anyone can act as it; Keycloak refuses public exchangers at runtime (V2: 'Public client is not allowed to exchange token'; V1: 'public clients not allowed'), but the setting shows a design that expects a credential-less client to mint tokens for other audiences, and one config change (making the client confidential with a leaked or shared secret) away from working.",
        help: "Turn token exchange off for the public client and let a confidential backend client (with a secret or signed JWT) do the exchange.",
    },
    RuleInfo {
        id: TE002,
        severity: Severity::Medium,
        title: "A token exchanger has no way to authenticate",
        rationale: "Medium: a confidential V2 exchanger with no service account and no configured credential (or bearer-only) cannot authenticate to the token endpoint, so exchange fails; the usual 'fix' under pressure is to make the client public or share another client's secret, which is worse.",
        help: "Give the exchanger a credential (client secret via ${ENV} substitution, or signed JWT keys) and a service account, or turn standard token exchange off for it.",
    },
    RuleInfo {
        id: TE003,
        severity: Severity::Medium,
        title: "Standard token exchange is enabled on every custom client of the realm",
        rationale: "Medium: a blanket setting means no client was chosen as an exchanger on purpose; every client credential that leaks becomes a way to trade user tokens for other audiences. Audience checks still apply in V2, hence not high.",
        help: "Enable standard.token.exchange.enabled only on the clients that need to exchange, and turn it off everywhere else.",
    },
    RuleInfo {
        id: TE004,
        severity: Severity::Medium,
        title: "FGAP v1 token-exchange permission granted on the exchanger instead of the target",
        rationale: "Medium: in FGAP v1 the token-exchange permission lives on the target (audience) client and lists who may exchange to it; a permission on client X that lets X itself through grants nothing (exchanging to yourself needs no permission), so the intended exchange is either broken or configured elsewhere more broadly.",
        help: "Delete the permission on the exchanger and create it on the target client's Permissions tab, with a client policy that lists the exchanger.",
    },
    RuleInfo {
        id: TE005,
        severity: Severity::High,
        title: "FGAP v1 token-exchange permission lets any client exchange",
        rationale: "High: the permission's policies (time, allow-all JS, NEGATIVE logic, AFFIRMATIVE with a permissive member) let every client, including ones created later, exchange to the target. Critical when the permission has no resources and the resource server is AFFIRMATIVE: any client to any audience. Medium when named clients get every audience.",
        help: "Replace the permissive policy with a client policy listing the exchangers that need this target, and use a UNANIMOUS decision strategy.",
    },
    RuleInfo {
        id: TE006,
        severity: Severity::High,
        title: "A client may impersonate users without a recorded need",
        rationale: "High: impersonation mints tokens for arbitrary users without their involvement (V1 'requested_subject', admin impersonation); a compromised client secret becomes account takeover. Critical when any client may impersonate.",
        help: "Remove the client from the impersonate permission / the impersonation role from its service account, or record the need with --allow-impersonation CLIENT.",
    },
    RuleInfo {
        id: TE007,
        severity: Severity::High,
        title: "A secret is written inline instead of an environment placeholder",
        rationale: "High: realm files are committed, copied and attached to tickets; an inline client secret lets anyone who reads the file authenticate as the client (and, for an exchanger, trade captured user tokens for other audiences).",
        help: "Replace the value with a ${ENV_VAR} placeholder (or config-cli's $(env:VAR)), inject it at import time, and rotate the exposed secret.",
    },
    RuleInfo {
        id: TE008,
        severity: Severity::Medium,
        title: "Exchanged tokens are long-lived",
        rationale: "Medium: an exchanged token carries a user's identity to another audience; the longer it lives, the longer a leaked one is useful, and exchanged access tokens cannot be refreshed-and-checked like sessions. Not high: it widens exposure rather than creating it.",
        help: "Lower access.token.lifespan on the exchanger (or the realm's accessTokenLifespan) to at most the threshold; minutes, not hours.",
    },
    RuleInfo {
        id: TE009,
        severity: Severity::Low,
        title: "Legacy (V1) token exchange used where standard V2 would serve",
        rationale: "Low: plain client-to-client exchange is supported by standard token exchange V2 (on by default since Keycloak 26.2); V1 is a preview feature that needs FGAP v1 and the token-exchange preview feature switched on server-wide, which also enables impersonation and external exchange paths.",
        help: "Set standard.token.exchange.enabled=true on the exchanger, add the target as an audience (audience mapper / client scope), and drop the V1 permission.",
    },
];

/// Look up a rule by id.
pub fn rule(id: &str) -> Option<&'static RuleInfo> {
    RULES.iter().find(|r| r.id == id)
}

/// The default severity of a rule id (Info for unknown ids, which do not occur).
fn default_severity(id: &str) -> Severity {
    rule(id).map(|r| r.severity).unwrap_or(Severity::Info)
}

/// Keycloak's built-in clients: never counted by TE003.
const BUILTIN_CLIENTS: [&str; 6] = [
    "account",
    "account-console",
    "admin-cli",
    "broker",
    "realm-management",
    "security-admin-console",
];

/// Keycloak's default access-token lifespan, used when the file does not say.
const KEYCLOAK_DEFAULT_ACCESS_TOKEN_LIFESPAN: i64 = 300;

/// TE003 needs at least this many custom clients: with one or two, "all of them" says nothing.
const EVERYWHERE_MIN_CLIENTS: usize = 3;

struct Ctx<'a> {
    realm: &'a RealmRep,
    raw: &'a Value,
    file: &'a str,
    opts: &'a AuditOptions,
    v1: Option<V1Analysis>,
}

impl Ctx<'_> {
    fn finding(
        &self,
        rule: &str,
        severity: Severity,
        client: Option<&str>,
        location: Option<String>,
        message: String,
        fix: String,
    ) -> Finding {
        Finding {
            rule: rule.to_string(),
            severity,
            file: self.file.to_string(),
            realm: self.realm.realm.clone(),
            client: client.map(str::to_string),
            location,
            message,
            fix,
        }
    }

    /// The raw JSON of client `i` (for "does the file state this field?").
    fn raw_client(&self, i: usize) -> Option<&Value> {
        self.raw.get("clients").and_then(|c| c.get(i))
    }

    /// V1 permissions whose targets are all resolved and which name their exchangers (not
    /// "any client": TE005/TE006 report those once instead of once per client of the realm).
    fn named_grants_v1(&self, kind: PermissionKind) -> Vec<&PermissionEval> {
        self.resolved_v1(kind).into_iter().filter(|p| !p.any_client).collect()
    }

    /// V1 permissions whose targets are all resolved.
    fn resolved_v1(&self, kind: PermissionKind) -> Vec<&PermissionEval> {
        self.v1
            .as_ref()
            .map(|a| {
                a.permissions
                    .iter()
                    .filter(|p| p.kind == kind && !p.has_unresolved_target())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Run every rule.
pub(crate) fn run_all(realm: &RealmRep, raw: &Value, file: &str, opts: &AuditOptions) -> Vec<Finding> {
    let ctx = Ctx {
        realm,
        raw,
        file,
        opts,
        v1: fgap::analyze(realm, raw),
    };
    let mut out = Vec::new();
    unresolved_permissions(&ctx, &mut out);
    public_exchangers(&ctx, &mut out);
    exchangers_without_credentials(&ctx, &mut out);
    exchange_everywhere(&ctx, &mut out);
    permission_on_exchanger(&ctx, &mut out);
    permissive_permissions(&ctx, &mut out);
    impersonation(&ctx, &mut out);
    inline_secrets(&ctx, &mut out);
    long_lived_tokens(&ctx, &mut out);
    legacy_v1(&ctx, &mut out);
    out
}

fn is_true(v: Option<bool>) -> bool {
    v == Some(true)
}

fn te_attr_pointer(i: usize) -> String {
    pointer(&[
        "clients",
        &i.to_string(),
        "attributes",
        "standard.token.exchange.enabled",
    ])
}

/// clientIds that a V1 token-exchange permission lets through to a *different* resolved target.
/// A grant to the permission's own client is excluded: exchanging to yourself needs no permission,
/// so such a grant confers nothing (TE004 reports it).
fn v1_grants(p: &PermissionEval) -> BTreeSet<String> {
    p.granted
        .iter()
        .filter(|c| {
            !p.targets
                .iter()
                .all(|t| matches!(t, Target::Client { client_id, .. } if client_id == *c))
        })
        .cloned()
        .collect()
}

/// The single client a permission targets, if it targets exactly one.
fn single_client_target(p: &PermissionEval) -> Option<&str> {
    match p.targets.as_slice() {
        [Target::Client { client_id, .. }] => Some(client_id.as_str()),
        _ => None,
    }
}

fn describe_targets(p: &PermissionEval) -> String {
    p.targets.iter().map(Target::describe).collect::<Vec<_>>().join(", ")
}

/// TE000: permissions whose subjects or targets the file cannot tell.
fn unresolved_permissions(ctx: &Ctx, out: &mut Vec<Finding>) {
    let Some(v1) = &ctx.v1 else { return };
    for p in &v1.permissions {
        if !(p.undecided || p.has_unresolved_target()) {
            continue;
        }
        let what = match p.kind {
            PermissionKind::TokenExchange => "token-exchange",
            PermissionKind::Impersonate => "impersonate",
        };
        let reasons = p.reasons.iter().cloned().collect::<Vec<_>>().join("; ");
        out.push(ctx.finding(
            TE000,
            Severity::Info,
            single_client_target(p),
            Some(p.pointer.clone()),
            format!(
                "Could not tell from this file which clients the {what} permission '{}' (on {}) lets through: {reasons}.",
                p.name,
                describe_targets(p)
            ),
            "Review this permission's policies by hand, or audit a full export that defines what it references.".to_string(),
        ));
    }
}

/// TE001: public clients as exchangers (V2 attribute, or a V1 grant).
fn public_exchangers(ctx: &Ctx, out: &mut Vec<Finding>) {
    for (i, c) in ctx.realm.clients.iter().enumerate() {
        if is_true(c.public_client) && c.standard_token_exchange_enabled() {
            let id = c.client_id.as_deref().unwrap_or("?");
            out.push(ctx.finding(
                TE001,
                default_severity(TE001),
                c.client_id.as_deref(),
                Some(te_attr_pointer(i)),
                format!(
                    "Public client '{id}' has standard token exchange enabled, but a public client has no credential, so anyone holding a user token for it could trade that token for other audiences if Keycloak did not refuse public exchangers at runtime."
                ),
                format!("Set standard.token.exchange.enabled to false on '{id}' and exchange from a confidential backend client instead."),
            ));
        }
    }
    let public: BTreeSet<&str> = ctx
        .realm
        .clients
        .iter()
        .filter(|c| is_true(c.public_client))
        .filter_map(|c| c.client_id.as_deref())
        .collect();
    for p in ctx.named_grants_v1(PermissionKind::TokenExchange) {
        for c in v1_grants(p) {
            if public.contains(c.as_str()) {
                out.push(ctx.finding(
                    TE001,
                    default_severity(TE001),
                    Some(&c),
                    Some(p.pointer.clone()),
                    format!(
                        "FGAP v1 permission '{}' lets public client '{c}' exchange tokens to {}, but a public client has no credential, so the grant names an exchanger that anyone can impersonate.",
                        p.name,
                        describe_targets(p)
                    ),
                    format!("Remove '{c}' from the policies of '{}' and grant a confidential backend client instead.", p.name),
                ));
            }
        }
    }
}

/// Whether a confidential client has no usable credential. `None` when the file cannot tell:
/// Keycloak generates a secret on import when none is given, and partial files omit attributes.
fn credential_missing(c: &ClientRep, raw: Option<&Value>) -> Option<bool> {
    let authenticator = c.client_authenticator_type.as_deref().unwrap_or("client-secret");
    let attrs_present = raw.and_then(|r| r.get("attributes")).is_some_and(Value::is_object);
    let attr_set = |k: &str| c.attr(k).is_some_and(|v| !v.trim().is_empty());
    match authenticator {
        "client-secret" | "client-secret-jwt" => c.secret.as_ref().map(|s| s.trim().is_empty()),
        "client-jwt" => {
            if !attrs_present {
                return None;
            }
            let jwks = c.attr("use.jwks.url").is_some_and(|v| v.eq_ignore_ascii_case("true")) && attr_set("jwks.url");
            Some(!(jwks || attr_set("jwt.credential.certificate") || attr_set("jwks.string")))
        }
        "client-x509" => {
            if !attrs_present {
                return None;
            }
            Some(!attr_set("x509.subjectdn"))
        }
        _ => None,
    }
}

/// TE002: V2 exchangers that cannot authenticate.
fn exchangers_without_credentials(ctx: &Ctx, out: &mut Vec<Finding>) {
    for (i, c) in ctx.realm.clients.iter().enumerate() {
        if c.public_client != Some(false) || !c.standard_token_exchange_enabled() {
            continue;
        }
        let id = c.client_id.as_deref().unwrap_or("?");
        if is_true(c.bearer_only) {
            out.push(ctx.finding(
                TE002,
                default_severity(TE002),
                c.client_id.as_deref(),
                Some(pointer(&["clients", &i.to_string(), "bearerOnly"])),
                format!(
                    "Client '{id}' has standard token exchange enabled but is bearer-only, so it can never authenticate to the token endpoint and every exchange it attempts fails."
                ),
                format!("Make '{id}' a confidential client with a credential, or turn standard token exchange off for it."),
            ));
            continue;
        }
        if c.service_accounts_enabled == Some(false) && credential_missing(c, ctx.raw_client(i)) == Some(true) {
            let authenticator = c.client_authenticator_type.as_deref().unwrap_or("client-secret");
            // Secret-based authenticators only get here with an explicitly empty `secret`.
            let field = if authenticator.starts_with("client-secret") {
                "secret"
            } else {
                "clientAuthenticatorType"
            };
            out.push(ctx.finding(
                TE002,
                default_severity(TE002),
                c.client_id.as_deref(),
                Some(pointer(&["clients", &i.to_string(), field])),
                format!(
                    "Client '{id}' has standard token exchange enabled but neither a service account nor a credential for its '{authenticator}' authenticator, so it cannot authenticate as an exchanger."
                ),
                format!("Configure a credential for '{id}' (secret via ${{ENV}} placeholder, or JWKS URL / certificate for client-jwt) or turn standard token exchange off."),
            ));
        }
    }
}

/// Keycloak's own clients, which TE003 ignores.
fn is_builtin(c: &ClientRep, realm_name: Option<&str>) -> bool {
    let id = c.client_id.as_deref().unwrap_or("");
    BUILTIN_CLIENTS.contains(&id)
        || c.name.as_deref().is_some_and(|n| n.trim_start().starts_with("${"))
        || c.attr("realm_client").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || (realm_name == Some("master") && id.ends_with("-realm"))
}

/// TE003: every custom OIDC client is a V2 exchanger.
fn exchange_everywhere(ctx: &Ctx, out: &mut Vec<Finding>) {
    let realm_name = ctx.realm.realm.as_deref();
    let custom: Vec<&ClientRep> = ctx
        .realm
        .clients
        .iter()
        .filter(|c| c.client_id.is_some() && !is_builtin(c, realm_name))
        .filter(|c| matches!(c.protocol.as_deref(), None | Some("openid-connect")))
        .collect();
    if custom.len() >= EVERYWHERE_MIN_CLIENTS && custom.iter().all(|c| c.standard_token_exchange_enabled()) {
        out.push(ctx.finding(
            TE003,
            default_severity(TE003),
            None,
            Some(pointer(&["clients"])),
            format!(
                "All {} custom clients of realm '{}' have standard token exchange enabled, so no exchanger was chosen on purpose and any leaked client credential can trade user tokens for other audiences.",
                custom.len(),
                realm_name.unwrap_or("?")
            ),
            "Keep standard.token.exchange.enabled=true only on the clients that must exchange and set it to false on the rest.".to_string(),
        ));
    }
}

/// TE004: a token-exchange permission on client X that lets X itself through.
fn permission_on_exchanger(ctx: &Ctx, out: &mut Vec<Finding>) {
    for p in ctx.named_grants_v1(PermissionKind::TokenExchange) {
        for t in &p.targets {
            let Target::Client { client_id, .. } = t else { continue };
            if p.granted.contains(client_id) {
                out.push(ctx.finding(
                    TE004,
                    default_severity(TE004),
                    Some(client_id),
                    Some(p.pointer.clone()),
                    format!(
                        "FGAP v1 permission '{}' sits on client '{client_id}' and lets '{client_id}' itself exchange to it, but the token-exchange permission belongs on the target (audience) client and lists the exchangers, so this grant confers nothing and the intended exchange is configured wrongly or elsewhere.",
                        p.name
                    ),
                    format!("Remove '{client_id}' from '{}'; grant it on the target client's token-exchange permission instead.", p.name),
                ));
            }
        }
    }
}

/// TE005: permissive token-exchange permissions.
///
/// A permission without resources is a scope permission over every resource with the
/// `token-exchange` scope. `canExchangeTo` still requires the target's own named permission to have
/// policies, then evaluates every permission on (target, token-exchange) and combines them by the
/// resource server's decision strategy: under UNANIMOUS the extra permission can only narrow, under
/// AFFIRMATIVE/CONSENSUS it widens every target whose own permission is active.
fn permissive_permissions(ctx: &Ctx, out: &mut Vec<Finding>) {
    let Some(v1) = &ctx.v1 else { return };
    let server_broadens = v1.server_strategy != Strategy::Unanimous;
    let exchange = ctx.resolved_v1(PermissionKind::TokenExchange);
    let active_targets: BTreeSet<String> = exchange
        .iter()
        .filter(|p| !p.any_client && !p.granted.is_empty())
        .flat_map(|p| p.targets.iter())
        .filter_map(|t| match t {
            Target::Client { client_id, .. } => Some(format!("client '{client_id}'")),
            Target::Idp { alias } => Some(format!("identity provider '{alias}'")),
            _ => None,
        })
        .collect();
    let active = if active_targets.is_empty() {
        "none yet, so it takes effect as soon as one is set up".to_string()
    } else {
        active_targets.iter().cloned().collect::<Vec<_>>().join(", ")
    };
    for p in exchange {
        let all_resources = p.targets.contains(&Target::AllResources);
        if all_resources && !server_broadens {
            continue;
        }
        if p.any_client {
            let (severity, whom) = if all_resources {
                let severity = if active_targets.is_empty() {
                    Severity::High
                } else {
                    Severity::Critical
                };
                (
                    severity,
                    format!("any client exchange to every target with an active token-exchange permission ({active})"),
                )
            } else {
                (
                    Severity::High,
                    format!("any client exchange to {}", describe_targets(p)),
                )
            };
            out.push(ctx.finding(
                TE005,
                severity,
                single_client_target(p),
                Some(p.pointer.clone()),
                format!(
                    "FGAP v1 permission '{}' ({} over policies {}) lets {whom}, including clients created later, so one stolen credential of any client is enough to obtain tokens for that audience.",
                    p.name,
                    p.strategy.name(),
                    quoted_list(&p.applied)
                ),
                format!("Replace the permissive policy in '{}' with a client policy that lists only the exchangers that need it.", p.name),
            ));
        } else if all_resources && !p.granted.is_empty() {
            let clients = quoted_list(&p.granted.iter().cloned().collect::<Vec<_>>());
            out.push(ctx.finding(
                TE005,
                Severity::Medium,
                None,
                Some(p.pointer.clone()),
                format!(
                    "FGAP v1 permission '{}' has no resources and the resource server decides {}, so it lets {clients} exchange to every target with an active token-exchange permission ({active}) rather than to named targets.",
                    p.name,
                    v1.server_strategy.name()
                ),
                format!("Give '{}' the specific target resources (client.resource.<uuid>) it is meant for.", p.name),
            ));
        }
    }
}

/// TE006: impersonation via FGAP v1 permissions or the `impersonation` role on a service account.
fn impersonation(ctx: &Ctx, out: &mut Vec<Finding>) {
    let allowed = |c: &str| ctx.opts.impersonation_allowed_clients.iter().any(|a| a == c);
    for p in ctx.resolved_v1(PermissionKind::Impersonate) {
        if p.any_client {
            out.push(ctx.finding(
                TE006,
                Severity::Critical,
                None,
                Some(p.pointer.clone()),
                format!(
                    "FGAP v1 impersonate permission '{}' lets any client impersonate users, so any client credential can mint tokens for arbitrary users.",
                    p.name
                ),
                format!("Replace the permissive policy in '{}' with a client policy listing only clients with a recorded need.", p.name),
            ));
            continue;
        }
        for c in &p.granted {
            if allowed(c) {
                continue;
            }
            out.push(ctx.finding(
                TE006,
                default_severity(TE006),
                Some(c),
                Some(p.pointer.clone()),
                format!(
                    "FGAP v1 impersonate permission '{}' lets client '{c}' impersonate users, and no need for that is recorded, so a leaked '{c}' credential is enough to act as any user.",
                    p.name
                ),
                format!("Remove '{c}' from the policies of '{}', or record the need with --allow-impersonation {c}.", p.name),
            ));
        }
    }

    // Service accounts holding realm-management/impersonation, directly or through composites.
    let composites = fgap::role_composites(ctx.raw);
    const IMPERSONATION: &str = "realm-management/impersonation";
    for (ui, u) in ctx.realm.users.iter().enumerate() {
        let Some(owner) = u.service_account_client_id.as_deref() else {
            continue;
        };
        if allowed(owner) {
            continue;
        }
        let mut location = None;
        for (ri, r) in u.realm_roles.iter().enumerate() {
            if fgap::expand_roles(std::slice::from_ref(r), &composites).contains(IMPERSONATION) {
                location = Some((
                    pointer(&["users", &ui.to_string(), "realmRoles", &ri.to_string()]),
                    r.clone(),
                ));
                break;
            }
        }
        if location.is_none() {
            'outer: for (client, roles) in &u.client_roles {
                for (ri, r) in roles.iter().enumerate() {
                    let key = format!("{client}/{r}");
                    if fgap::expand_roles(std::slice::from_ref(&key), &composites).contains(IMPERSONATION) {
                        location = Some((
                            pointer(&["users", &ui.to_string(), "clientRoles", client, &ri.to_string()]),
                            key,
                        ));
                        break 'outer;
                    }
                }
            }
        }
        let Some((ptr, via)) = location else { continue };
        let how = if via == IMPERSONATION {
            String::new()
        } else {
            format!(" (through role '{via}')")
        };
        out.push(ctx.finding(
            TE006,
            default_severity(TE006),
            Some(owner),
            Some(ptr),
            format!(
                "The service account of client '{owner}' holds the realm-management 'impersonation' role{how}, and no need for that is recorded, so a leaked '{owner}' credential is enough to act as any user."
            ),
            format!("Remove the impersonation role from service-account-{owner}, or record the need with --allow-impersonation {owner}."),
        ));
    }
}

/// A value that is not a secret: a `${ENV}` / `${vault.x}` placeholder (Keycloak and config-cli),
/// a config-cli `$(env:VAR)` substitution, or an admin-API mask of asterisks.
fn is_placeholder_or_masked(v: &str) -> bool {
    let t = v.trim();
    (t.starts_with("${") && t.ends_with('}'))
        || (t.starts_with("$(") && t.ends_with(')'))
        || (!t.is_empty() && t.chars().all(|c| c == '*'))
}

fn inline_secret(v: Option<&Value>) -> bool {
    v.and_then(value_str)
        .is_some_and(|s| !s.trim().is_empty() && !is_placeholder_or_masked(&s))
}

/// TE007: inline secrets.
fn inline_secrets(ctx: &Ctx, out: &mut Vec<Finding>) {
    let fix = "Replace the value with a ${ENV_VAR} placeholder injected at import time, and rotate the exposed secret."
        .to_string();
    for (i, c) in ctx.realm.clients.iter().enumerate() {
        let raw_secret = ctx.raw_client(i).and_then(|r| r.get("secret"));
        if inline_secret(raw_secret) {
            let id = c.client_id.as_deref().unwrap_or("?");
            out.push(ctx.finding(
                TE007,
                default_severity(TE007),
                c.client_id.as_deref(),
                Some(pointer(&["clients", &i.to_string(), "secret"])),
                format!("Client '{id}' has its secret written inline in the file, so anyone who can read the file can authenticate as '{id}'."),
                fix.clone(),
            ));
        }
    }
    if let Some(idps) = ctx.raw.get("identityProviders").and_then(Value::as_array) {
        for (k, idp) in idps.iter().enumerate() {
            if inline_secret(idp.get("config").and_then(|c| c.get("clientSecret"))) {
                let alias = idp.get("alias").and_then(Value::as_str).unwrap_or("?");
                out.push(ctx.finding(
                    TE007,
                    default_severity(TE007),
                    None,
                    Some(pointer(&["identityProviders", &k.to_string(), "config", "clientSecret"])),
                    format!("Identity provider '{alias}' has its client secret written inline in the file, so anyone who can read the file can act as this realm towards '{alias}'."),
                    fix.clone(),
                ));
            }
        }
    }
    if inline_secret(ctx.raw.get("smtpServer").and_then(|s| s.get("password"))) {
        out.push(ctx.finding(
            TE007,
            default_severity(TE007),
            None,
            Some(pointer(&["smtpServer", "password"])),
            "The SMTP password is written inline in the file, so anyone who can read the file can send mail as the realm (password-reset and verification mail included).".to_string(),
            fix,
        ));
    }
}

/// Seconds from a number or numeric string.
fn seconds(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        other => value_str(other).and_then(|s| s.trim().parse::<i64>().ok()),
    }
}

/// Every exchanger that can really exchange: confidential V2 clients and clients a resolved V1
/// permission lets through (a grant to the permission's own client excluded).
fn exchangers(ctx: &Ctx) -> BTreeMap<String, usize> {
    let index: BTreeMap<&str, usize> = ctx
        .realm
        .clients
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.client_id.as_deref().map(|id| (id, i)))
        .collect();
    let mut out = BTreeMap::new();
    for (i, c) in ctx.realm.clients.iter().enumerate() {
        if c.standard_token_exchange_enabled() && !is_true(c.public_client) {
            if let Some(id) = &c.client_id {
                out.insert(id.clone(), i);
            }
        }
    }
    for p in ctx.named_grants_v1(PermissionKind::TokenExchange) {
        for c in v1_grants(p) {
            if let Some(i) = index.get(c.as_str()) {
                if !is_true(ctx.realm.clients.get(*i).and_then(|c| c.public_client)) {
                    out.insert(c, *i);
                }
            }
        }
    }
    out
}

/// TE008: exchangers whose access tokens outlive the threshold.
fn long_lived_tokens(ctx: &Ctx, out: &mut Vec<Finding>) {
    let max = ctx.opts.max_access_token_lifespan_secs;
    let realm_lifespan = ctx.realm.access_token_lifespan.as_ref().and_then(seconds);
    for (id, i) in exchangers(ctx) {
        let Some(c) = ctx.realm.clients.get(i) else { continue };
        let client_lifespan = c
            .attributes
            .get("access.token.lifespan")
            .and_then(seconds)
            .filter(|s| *s > 0);
        let (lifespan, location, source) = match (client_lifespan, realm_lifespan) {
            (Some(s), _) => (
                s,
                pointer(&["clients", &i.to_string(), "attributes", "access.token.lifespan"]),
                "its access.token.lifespan",
            ),
            (None, Some(s)) => (s, pointer(&["accessTokenLifespan"]), "the realm's accessTokenLifespan"),
            // The file sets neither: Keycloak's default applies; point at the client, which is
            // where an override would go.
            (None, None) => (
                KEYCLOAK_DEFAULT_ACCESS_TOKEN_LIFESPAN,
                pointer(&["clients", &i.to_string()]),
                "Keycloak's default access-token lifespan (the file sets none)",
            ),
        };
        if lifespan > max {
            out.push(ctx.finding(
                TE008,
                default_severity(TE008),
                Some(&id),
                Some(location),
                format!(
                    "Exchanger '{id}' gets access tokens that live {lifespan} s through {source}, above the {max} s threshold, so a leaked exchanged token keeps working for {} against its new audience.",
                    human_duration(lifespan)
                ),
                format!("Set access.token.lifespan on '{id}' to {max} seconds or less."),
            ));
        }
    }
}

fn human_duration(secs: i64) -> String {
    if secs >= 86_400 && secs % 3600 == 0 {
        format!("{} hours", secs / 3600)
    } else if secs >= 3600 {
        format!("{:.1} hours", secs as f64 / 3600.0)
    } else {
        format!("{} minutes", secs / 60)
    }
}

/// TE009: V1 client-to-client exchange for a client that needs nothing V1-only.
fn legacy_v1(ctx: &Ctx, out: &mut Vec<Finding>) {
    let exchange = ctx.named_grants_v1(PermissionKind::TokenExchange);
    let mut needs_v1: BTreeSet<String> = BTreeSet::new();
    for p in &exchange {
        if p.targets.iter().any(|t| matches!(t, Target::Idp { .. })) {
            needs_v1.extend(p.granted.iter().cloned());
        }
    }
    for p in ctx.named_grants_v1(PermissionKind::Impersonate) {
        needs_v1.extend(p.granted.iter().cloned());
    }
    let composites = fgap::role_composites(ctx.raw);
    for u in &ctx.realm.users {
        let Some(owner) = &u.service_account_client_id else {
            continue;
        };
        let mut direct = u.realm_roles.clone();
        for (client, roles) in &u.client_roles {
            direct.extend(roles.iter().map(|r| format!("{client}/{r}")));
        }
        if fgap::expand_roles(&direct, &composites).contains("realm-management/impersonation") {
            needs_v1.insert(owner.clone());
        }
    }
    let public: BTreeSet<&str> = ctx
        .realm
        .clients
        .iter()
        .filter(|c| is_true(c.public_client))
        .filter_map(|c| c.client_id.as_deref())
        .collect();
    for p in exchange {
        if !p.targets.iter().all(|t| matches!(t, Target::Client { .. })) {
            continue;
        }
        for c in v1_grants(p) {
            if needs_v1.contains(&c) || public.contains(c.as_str()) {
                continue;
            }
            out.push(ctx.finding(
                TE009,
                default_severity(TE009),
                Some(&c),
                Some(p.pointer.clone()),
                format!(
                    "Client '{c}' exchanges to {} through legacy V1 permission '{}' although it needs no impersonation or external-IdP exchange, so the realm depends on the preview V1 feature (and FGAP v1) where standard V2 exchange would serve.",
                    describe_targets(p),
                    p.name
                ),
                format!("Enable standard.token.exchange.enabled on '{c}', make the target an audience of its tokens, and delete '{}'.", p.name),
            ));
        }
    }
}

fn quoted_list(items: &[String]) -> String {
    items.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
}
