//! FGAP v1 ("legacy fine-grained admin permissions"): who may exchange or impersonate, as the
//! `realm-management` client's `authorizationSettings` say.
//!
//! Why a small evaluator instead of pattern matching: the question a reviewer asks is "which clients
//! does this permission let through?", and the answer depends on the applied policies, their
//! `logic`, the permission's `decisionStrategy` and nested aggregates. Evaluating each client of the
//! realm (plus one stand-in for "any other client") against the policies answers it directly and
//! keeps the rules in `rules.rs` simple.
//!
//! What Keycloak does, and therefore what this mirrors:
//! - Legacy token exchange asks `ClientPermissions.canExchangeTo(exchanger, target)` (or the
//!   identity-provider variant). The permission lives on the **target**: resource
//!   `client.resource.<target-uuid>` with scope `token-exchange` and the scope permission
//!   `token-exchange.permission.client.<target-uuid>`. Its applied policies name the clients allowed to
//!   exchange *to* that target. The identity evaluated is a `ClientModelIdentity`: the requesting
//!   client, with `kc.client.id` = its clientId and roles = its service account's roles.
//! - A permission with **no applied policies** grants nothing: `canExchangeTo` returns false with
//!   "No policies set up for permission on target client" (same for impersonation). Keycloak creates
//!   such empty permissions for every scope when permissions are switched on for a client, so they
//!   are the normal resting state and are not reported.
//! - Exported client policies list clientIds (`ClientPolicyProviderFactory.onExport` maps ids to
//!   clientIds); imports accept either, so both are matched.
//! - With `adminPermissionsEnabled: true` the realm uses FGAP v2, whose permissions live on the
//!   `admin-permissions` client, and "version 2 (FGAP:v2) does not have support for token
//!   exchange" (keycloak.org, "Using token exchange"); the v1 settings on `realm-management` are
//!   then not consulted and [`analyze`] returns `None`.
//!
//! What cannot be decided from a file is kept as "unknown" with a reason: group, user, regex and
//! client-scope policies, non-trivial JS policies, policies referenced but not defined, service
//! accounts whose user is not in the file, and `$placeholder` resource names (keycloak-config-cli
//! resolves those at import time).

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

use crate::directory::model::{value_str, RealmRep};

use super::pointer;

/// Scope names of the FGAP v1 permissions this module cares about.
pub const TOKEN_EXCHANGE_SCOPE: &str = "token-exchange";
pub const IMPERSONATE_SCOPE: &str = "impersonate";

/// Deeper aggregate nesting than this is treated as unknown: it is either a cycle or a realm
/// nobody can review by hand anyway.
const MAX_POLICY_DEPTH: usize = 16;

/// Policy / permission decision strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Unanimous,
    Affirmative,
    Consensus,
}

impl Strategy {
    /// Keycloak's default is UNANIMOUS for policies, permissions and resource servers alike.
    fn parse(v: Option<&Value>) -> Strategy {
        match v.and_then(value_str).map(|s| s.to_ascii_uppercase()).as_deref() {
            Some("AFFIRMATIVE") => Strategy::Affirmative,
            Some("CONSENSUS") => Strategy::Consensus,
            _ => Strategy::Unanimous,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Unanimous => "UNANIMOUS",
            Strategy::Affirmative => "AFFIRMATIVE",
            Strategy::Consensus => "CONSENSUS",
        }
    }
}

/// Three-valued outcome of evaluating a policy for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Grant,
    Deny,
    Unknown,
}

impl Tri {
    fn negate(self) -> Tri {
        match self {
            Tri::Grant => Tri::Deny,
            Tri::Deny => Tri::Grant,
            Tri::Unknown => Tri::Unknown,
        }
    }
}

/// Combine policy outcomes the way Keycloak's decision collector does (grant/deny counts per
/// strategy), keeping "unknown" wherever an unknown outcome could change the result.
fn combine(strategy: Strategy, results: &[Tri]) -> Tri {
    let grants = results.iter().filter(|r| **r == Tri::Grant).count();
    let denies = results.iter().filter(|r| **r == Tri::Deny).count();
    let unknown = results.len() - grants - denies;
    match strategy {
        Strategy::Unanimous => {
            if denies > 0 {
                Tri::Deny
            } else if unknown > 0 {
                Tri::Unknown
            } else {
                Tri::Grant
            }
        }
        Strategy::Affirmative => {
            if grants > 0 {
                Tri::Grant
            } else if unknown > 0 {
                Tri::Unknown
            } else {
                Tri::Deny
            }
        }
        Strategy::Consensus => {
            if grants > denies + unknown {
                Tri::Grant
            } else if grants + unknown <= denies {
                Tri::Deny
            } else {
                Tri::Unknown
            }
        }
    }
}

/// What a permission protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A client of this realm (`client.resource.<uuid>`).
    Client { client_id: String, index: usize },
    /// An identity provider (`idp.resource.<internalId>`): exchanges to or from that IdP.
    Idp { alias: String },
    /// The `Users` resource (impersonation).
    Users,
    /// A permission without resources applies to every resource that carries its scope.
    AllResources,
    /// A resource this file cannot resolve: a `$placeholder` or an id defined elsewhere.
    Unresolved(String),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::Client { client_id, .. } => format!("client '{client_id}'"),
            Target::Idp { alias } => format!("identity provider '{alias}'"),
            Target::Users => "the Users resource".to_string(),
            Target::AllResources => "every resource carrying the scope".to_string(),
            Target::Unresolved(name) => format!("unresolved resource '{name}'"),
        }
    }
}

/// Which FGAP v1 capability a permission controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionKind {
    TokenExchange,
    Impersonate,
}

/// One evaluated permission.
#[derive(Debug, Clone)]
pub struct PermissionEval {
    pub name: String,
    pub kind: PermissionKind,
    /// JSON pointer to the permission in the file.
    pub pointer: String,
    pub targets: Vec<Target>,
    /// clientIds of this realm the permission certainly lets through.
    pub granted: BTreeSet<String>,
    /// A client that is named nowhere (any other or future client) is let through.
    pub any_client: bool,
    /// Some client's outcome could not be decided from the file.
    pub undecided: bool,
    /// Why something could not be decided (policies, service accounts, placeholder targets).
    pub reasons: BTreeSet<String>,
    /// Names of the applied policies, for messages.
    pub applied: Vec<String>,
    /// The permission's own decision strategy.
    pub strategy: Strategy,
}

impl PermissionEval {
    /// Some target cannot be resolved, so grant-based findings would be guesses.
    pub fn has_unresolved_target(&self) -> bool {
        self.targets.iter().any(|t| matches!(t, Target::Unresolved(_)))
    }
}

/// Result of [`analyze`].
#[derive(Debug, Clone)]
pub struct V1Analysis {
    /// The resource server's decision strategy (how several permissions on one resource combine).
    pub server_strategy: Strategy,
    /// Token-exchange and impersonation permissions that have at least one applied policy.
    pub permissions: Vec<PermissionEval>,
}

#[derive(Debug)]
struct PolicyDef<'a> {
    index: usize,
    id: Option<String>,
    name: String,
    kind: String,
    negative: bool,
    strategy: Strategy,
    config: Option<&'a Map<String, Value>>,
    raw: &'a Value,
}

impl PolicyDef<'_> {
    /// A list-valued setting, from `config` (exports store JSON-encoded strings there) or from the
    /// top level (admin-API representations use real arrays).
    fn list(&self, config_key: &str, top_key: &str) -> Vec<String> {
        let from_config = self.config.and_then(|c| c.get(config_key)).map(string_list);
        match from_config {
            Some(v) if !v.is_empty() => v,
            _ => self.raw.get(top_key).map(string_list).unwrap_or_default(),
        }
    }

    fn config_str(&self, key: &str) -> Option<String> {
        self.config.and_then(|c| c.get(key)).and_then(value_str)
    }
}

#[derive(Debug)]
struct ResourceDef {
    name: String,
    scopes: Vec<String>,
}

/// Facts about one client that the evaluator needs.
#[derive(Debug)]
struct ClientFacts {
    client_id: String,
    id: Option<String>,
    index: usize,
    service_account: bool,
}

/// Service-account users found in the file, keyed by clientId.
#[derive(Debug, Default)]
struct ServiceAccount {
    /// Effective roles: realm roles by name, client roles as `clientId/role`, composites expanded.
    roles: BTreeSet<String>,
    in_groups: bool,
}

/// The candidate whose access is being decided.
#[derive(Clone, Copy)]
enum Candidate<'a> {
    Client(&'a ClientFacts),
    /// Any client the file names nowhere (including clients created later).
    Other,
}

struct Evaluator<'a> {
    policies: Vec<PolicyDef<'a>>,
    by_name: HashMap<String, usize>,
    clients: Vec<ClientFacts>,
    service_accounts: HashMap<String, ServiceAccount>,
}

/// Evaluate the FGAP v1 token-exchange and impersonation permissions of a realm. `None` when the
/// realm has no `realm-management` authorization settings, or uses FGAP v2.
pub fn analyze(realm: &RealmRep, raw: &Value) -> Option<V1Analysis> {
    if realm.admin_permissions_enabled == Some(true) {
        return None;
    }
    let clients_raw = raw.get("clients").and_then(Value::as_array)?;
    let (rm_index, settings) = clients_raw.iter().enumerate().find_map(|(i, c)| {
        let is_rm = c.get("clientId").and_then(Value::as_str) == Some("realm-management");
        let settings = c.get("authorizationSettings").filter(|s| s.is_object());
        if is_rm {
            settings.map(|s| (i, s))
        } else {
            None
        }
    })?;
    let base = vec![
        "clients".to_string(),
        rm_index.to_string(),
        "authorizationSettings".to_string(),
    ];

    let resources: Vec<ResourceDef> = settings
        .get("resources")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .filter_map(|r| {
                    let name = r.get("name").and_then(Value::as_str)?.to_string();
                    let scopes = r
                        .get("scopes")
                        .and_then(Value::as_array)
                        .map(|ss| {
                            ss.iter()
                                .filter_map(|s| s.get("name").and_then(Value::as_str).or(s.as_str()))
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default();
                    Some(ResourceDef { name, scopes })
                })
                .collect()
        })
        .unwrap_or_default();

    let policies: Vec<PolicyDef> = settings
        .get("policies")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .enumerate()
                .filter_map(|(index, p)| {
                    let name = p.get("name").and_then(Value::as_str)?.to_string();
                    Some(PolicyDef {
                        index,
                        id: p.get("id").and_then(Value::as_str).map(str::to_string),
                        name,
                        kind: p.get("type").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase(),
                        negative: p
                            .get("logic")
                            .and_then(Value::as_str)
                            .is_some_and(|l| l.eq_ignore_ascii_case("NEGATIVE")),
                        strategy: Strategy::parse(p.get("decisionStrategy")),
                        config: p.get("config").and_then(Value::as_object),
                        raw: p,
                    })
                })
                .collect()
        })
        .unwrap_or_default();

    let mut by_name = HashMap::new();
    for (i, p) in policies.iter().enumerate() {
        by_name.entry(p.name.clone()).or_insert(i);
        if let Some(id) = &p.id {
            by_name.entry(id.clone()).or_insert(i);
        }
    }

    let clients: Vec<ClientFacts> = realm
        .clients
        .iter()
        .enumerate()
        .filter_map(|(index, c)| {
            Some(ClientFacts {
                client_id: c.client_id.clone()?,
                id: c.id.clone(),
                index,
                service_account: c.service_accounts_enabled == Some(true),
            })
        })
        .collect();

    let evaluator = Evaluator {
        policies,
        by_name,
        clients,
        service_accounts: service_accounts(realm, raw),
    };
    let idps = idp_ids(raw);

    let mut permissions = Vec::new();
    for p in &evaluator.policies {
        if p.kind != "scope" && p.kind != "resource" {
            continue;
        }
        let resource_names = p.list("resources", "resources");
        let scope_names = p.list("scopes", "scopes");
        let kind = permission_kind(p, &resource_names, &scope_names, &resources);
        let Some(kind) = kind else { continue };
        let applied = p.list("applyPolicies", "policies");
        if applied.is_empty() {
            // Keycloak denies when a permission has no policies (see module docs).
            continue;
        }
        let targets = if resource_names.is_empty() {
            vec![Target::AllResources]
        } else {
            resource_names
                .iter()
                .map(|r| resolve_target(r, &evaluator.clients, &idps))
                .collect()
        };
        let mut eval = PermissionEval {
            name: p.name.clone(),
            kind,
            pointer: pointer(&[base.clone(), vec!["policies".to_string(), p.index.to_string()]].concat()),
            targets,
            granted: BTreeSet::new(),
            any_client: false,
            undecided: false,
            reasons: BTreeSet::new(),
            applied: applied.clone(),
            strategy: p.strategy,
        };
        for t in &eval.targets {
            if let Target::Unresolved(name) = t {
                eval.reasons.insert(unresolved_reason(name));
            }
        }
        let mut reasons = BTreeSet::new();
        for c in &evaluator.clients {
            match evaluator.permission(p, &applied, Candidate::Client(c), &mut reasons) {
                Tri::Grant => {
                    eval.granted.insert(c.client_id.clone());
                }
                Tri::Unknown => eval.undecided = true,
                Tri::Deny => {}
            }
        }
        match evaluator.permission(p, &applied, Candidate::Other, &mut reasons) {
            Tri::Grant => eval.any_client = true,
            Tri::Unknown => eval.undecided = true,
            Tri::Deny => {}
        }
        if eval.undecided {
            eval.reasons.extend(reasons);
        }
        permissions.push(eval);
    }

    Some(V1Analysis {
        server_strategy: Strategy::parse(settings.get("decisionStrategy")),
        permissions,
    })
}

/// Token-exchange or impersonation permission? Scope permissions name their scopes; resource
/// permissions cover every scope of their resources.
fn permission_kind(
    p: &PolicyDef,
    resource_names: &[String],
    scope_names: &[String],
    resources: &[ResourceDef],
) -> Option<PermissionKind> {
    let has_scope = |scope: &str| -> bool {
        if p.kind == "scope" {
            scope_names.iter().any(|s| s == scope)
        } else {
            resource_names.iter().any(|r| {
                resources
                    .iter()
                    .any(|d| &d.name == r && d.scopes.iter().any(|s| s == scope))
            })
        }
    };
    if has_scope(TOKEN_EXCHANGE_SCOPE) {
        Some(PermissionKind::TokenExchange)
    } else if has_scope(IMPERSONATE_SCOPE) {
        Some(PermissionKind::Impersonate)
    } else {
        None
    }
}

fn unresolved_reason(name: &str) -> String {
    if name.contains('$') {
        format!("resource '{name}' is a keycloak-config-cli placeholder that is resolved only at import time")
    } else {
        format!("resource '{name}' refers to a client or identity provider that this file does not define (partial import?)")
    }
}

fn resolve_target(name: &str, clients: &[ClientFacts], idps: &HashMap<String, String>) -> Target {
    if name == "Users" {
        return Target::Users;
    }
    if let Some(id) = name.strip_prefix("client.resource.") {
        if id.starts_with('$') {
            return Target::Unresolved(name.to_string());
        }
        return clients
            .iter()
            .find(|c| c.id.as_deref() == Some(id))
            .map(|c| Target::Client {
                client_id: c.client_id.clone(),
                index: c.index,
            })
            .unwrap_or_else(|| Target::Unresolved(name.to_string()));
    }
    if let Some(id) = name.strip_prefix("idp.resource.") {
        if id.starts_with('$') {
            return Target::Unresolved(name.to_string());
        }
        return idps
            .get(id)
            .map(|alias| Target::Idp { alias: alias.clone() })
            .unwrap_or_else(|| Target::Unresolved(name.to_string()));
    }
    Target::Unresolved(name.to_string())
}

/// identityProviders: internalId -> alias.
fn idp_ids(raw: &Value) -> HashMap<String, String> {
    raw.get("identityProviders")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    let id = p.get("internalId").and_then(Value::as_str)?;
                    let alias = p.get("alias").and_then(Value::as_str).unwrap_or(id);
                    Some((id.to_string(), alias.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Service-account users with their effective roles (composites expanded from the file's `roles`).
fn service_accounts(realm: &RealmRep, raw: &Value) -> HashMap<String, ServiceAccount> {
    let composites = role_composites(raw);
    let by_lower: HashMap<String, String> = realm
        .clients
        .iter()
        .filter_map(|c| c.client_id.as_ref())
        .map(|id| (id.to_ascii_lowercase(), id.clone()))
        .collect();
    let mut out = HashMap::new();
    for u in &realm.users {
        let owner = u.service_account_client_id.clone().or_else(|| {
            u.username
                .as_deref()
                .and_then(|n| n.strip_prefix("service-account-"))
                .and_then(|rest| by_lower.get(&rest.to_ascii_lowercase()).cloned())
        });
        let Some(owner) = owner else { continue };
        let mut direct: Vec<String> = u.realm_roles.clone();
        for (client, roles) in &u.client_roles {
            direct.extend(roles.iter().map(|r| format!("{client}/{r}")));
        }
        out.insert(
            owner,
            ServiceAccount {
                roles: expand_roles(&direct, &composites),
                in_groups: !u.groups.is_empty(),
            },
        );
    }
    out
}

/// Role key -> the role keys it directly contains, from `roles.realm[]` and `roles.client{}`.
pub(crate) fn role_composites(raw: &Value) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let roles = raw.get("roles");
    let mut add = |key: String, role: &Value| {
        let Some(comp) = role.get("composites") else { return };
        let mut members = Vec::new();
        if let Some(rs) = comp.get("realm").and_then(Value::as_array) {
            members.extend(rs.iter().filter_map(Value::as_str).map(str::to_string));
        }
        if let Some(cs) = comp.get("client").and_then(Value::as_object) {
            for (client, rs) in cs {
                if let Some(rs) = rs.as_array() {
                    members.extend(rs.iter().filter_map(Value::as_str).map(|r| format!("{client}/{r}")));
                }
            }
        }
        out.entry(key).or_default().extend(members);
    };
    if let Some(realm_roles) = roles.and_then(|r| r.get("realm")).and_then(Value::as_array) {
        for role in realm_roles {
            if let Some(name) = role.get("name").and_then(Value::as_str) {
                add(name.to_string(), role);
            }
        }
    }
    if let Some(client_roles) = roles.and_then(|r| r.get("client")).and_then(Value::as_object) {
        for (client, list) in client_roles {
            for role in list.as_array().into_iter().flatten() {
                if let Some(name) = role.get("name").and_then(Value::as_str) {
                    add(format!("{client}/{name}"), role);
                }
            }
        }
    }
    out
}

/// Expand role keys through composites (cycle-safe).
pub(crate) fn expand_roles(direct: &[String], composites: &HashMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<String> = direct.to_vec();
    while let Some(role) = stack.pop() {
        if seen.insert(role.clone()) {
            if let Some(members) = composites.get(&role) {
                stack.extend(members.iter().filter(|m| !seen.contains(*m)).cloned());
            }
        }
    }
    seen
}

impl Evaluator<'_> {
    /// A permission's outcome for one candidate: its applied policies combined by its strategy.
    fn permission(&self, p: &PolicyDef, applied: &[String], who: Candidate, reasons: &mut BTreeSet<String>) -> Tri {
        let results: Vec<Tri> = applied
            .iter()
            .map(|name| self.policy_by_name(name, who, 0, reasons))
            .collect();
        let out = combine(p.strategy, &results);
        if p.negative {
            out.negate()
        } else {
            out
        }
    }

    fn policy_by_name(&self, name: &str, who: Candidate, depth: usize, reasons: &mut BTreeSet<String>) -> Tri {
        match self.by_name.get(name).and_then(|i| self.policies.get(*i)) {
            Some(p) => self.policy(p, who, depth, reasons),
            None => {
                reasons.insert(format!("policy '{name}' is applied but not defined in this file"));
                Tri::Unknown
            }
        }
    }

    fn policy(&self, p: &PolicyDef, who: Candidate, depth: usize, reasons: &mut BTreeSet<String>) -> Tri {
        if depth > MAX_POLICY_DEPTH {
            reasons.insert(format!(
                "policy '{}' nests aggregates too deeply (or in a cycle)",
                p.name
            ));
            return Tri::Unknown;
        }
        let out = match p.kind.as_str() {
            "client" => {
                let listed = p.list("clients", "clients");
                match who {
                    Candidate::Client(c) => {
                        let hit = listed
                            .iter()
                            .any(|l| *l == c.client_id || Some(l.as_str()) == c.id.as_deref());
                        if hit {
                            Tri::Grant
                        } else {
                            Tri::Deny
                        }
                    }
                    Candidate::Other => Tri::Deny,
                }
            }
            "role" => self.role_policy(p, who, reasons),
            // A time policy checks only the clock: inside its window it grants every caller.
            "time" => Tri::Grant,
            "aggregate" => {
                let members = p.list("applyPolicies", "policies");
                if members.is_empty() {
                    Tri::Deny
                } else {
                    let results: Vec<Tri> = members
                        .iter()
                        .map(|m| self.policy_by_name(m, who, depth + 1, reasons))
                        .collect();
                    combine(p.strategy, &results)
                }
            }
            kind if kind == "js" || kind.starts_with("script-") => {
                if p.config_str("code").is_some_and(|code| is_trivial_grant(&code)) {
                    Tri::Grant
                } else {
                    reasons.insert(format!(
                        "policy '{}' is a JavaScript policy whose decision depends on code kcaudit does not run",
                        p.name
                    ));
                    Tri::Unknown
                }
            }
            kind => {
                let kind = if kind.is_empty() { "untyped" } else { kind };
                reasons.insert(format!(
                    "policy '{}' is a {kind} policy, which cannot be evaluated for a client from the file",
                    p.name
                ));
                Tri::Unknown
            }
        };
        if p.negative {
            out.negate()
        } else {
            out
        }
    }

    /// Keycloak's RolePolicyProvider: deny if a required role is missing, grant if any listed role
    /// is held. A client identity holds its service account's roles, or none without one.
    fn role_policy(&self, p: &PolicyDef, who: Candidate, reasons: &mut BTreeSet<String>) -> Tri {
        let Candidate::Client(c) = who else { return Tri::Deny };
        if !c.service_account {
            return Tri::Deny;
        }
        let Some(sa) = self.service_accounts.get(&c.client_id) else {
            reasons.insert(format!(
                "role policy '{}' depends on the service account of '{}', whose user is not in this file",
                p.name, c.client_id
            ));
            return Tri::Unknown;
        };
        let defs = role_definitions(p);
        let mut any = false;
        for (role, required) in &defs {
            let held = sa.roles.contains(role);
            if !held && *required {
                return Tri::Deny;
            }
            any |= held;
        }
        if any {
            Tri::Grant
        } else if sa.in_groups {
            reasons.insert(format!(
                "role policy '{}' may match roles that the service account of '{}' inherits from groups",
                p.name, c.client_id
            ));
            Tri::Unknown
        } else {
            Tri::Deny
        }
    }
}

/// `roles` config: `[{"id":"name or clientId/role","required":bool}]` (a JSON-encoded string in exports).
fn role_definitions(p: &PolicyDef) -> Vec<(String, bool)> {
    let value = p.config.and_then(|c| c.get("roles")).or_else(|| p.raw.get("roles"));
    let parsed = match value {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).unwrap_or(Value::Null),
        Some(other) => other.clone(),
        None => Value::Null,
    };
    parsed
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| match item {
                    Value::String(s) => Some((s.clone(), false)),
                    Value::Object(o) => {
                        let id = o.get("id").and_then(Value::as_str)?.to_string();
                        let required = o.get("required").and_then(Value::as_bool).unwrap_or(false);
                        Some((id, required))
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A JS policy whose whole body is `$evaluation.grant()` grants everyone.
fn is_trivial_grant(code: &str) -> bool {
    let mut stripped = String::new();
    let mut rest = code;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            let mut chars = rest.chars();
            if let Some(ch) = chars.next() {
                if !ch.is_whitespace() {
                    stripped.push(ch);
                }
            }
            rest = chars.as_str();
        }
    }
    let body = stripped.trim_end_matches(';');
    body == "$evaluation.grant()"
}

/// A list from a value that is a JSON-encoded array string (exports), a real array, or one string.
pub(crate) fn string_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => {
            let t = s.trim();
            if t.starts_with('[') {
                match serde_json::from_str::<Value>(t) {
                    Ok(Value::Array(items)) => items.iter().filter_map(value_str).collect(),
                    _ => Vec::new(),
                }
            } else if t.is_empty() {
                Vec::new()
            } else {
                vec![t.to_string()]
            }
        }
        Value::Array(items) => items.iter().filter_map(value_str).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trivial_grant_detection() {
        assert!(is_trivial_grant("$evaluation.grant();"));
        assert!(is_trivial_grant("// allow all\n$evaluation.grant();\n"));
        assert!(is_trivial_grant(" /* x */ $evaluation.grant() "));
        assert!(!is_trivial_grant("if (x) { $evaluation.grant(); }"));
        assert!(!is_trivial_grant(""));
    }

    #[test]
    fn combine_matches_keycloak_counts() {
        use Tri::*;
        assert_eq!(combine(Strategy::Unanimous, &[Grant, Grant]), Grant);
        assert_eq!(combine(Strategy::Unanimous, &[Grant, Deny]), Deny);
        assert_eq!(combine(Strategy::Unanimous, &[Grant, Unknown]), Unknown);
        assert_eq!(combine(Strategy::Affirmative, &[Deny, Grant]), Grant);
        assert_eq!(combine(Strategy::Affirmative, &[Deny, Unknown]), Unknown);
        assert_eq!(combine(Strategy::Consensus, &[Grant, Grant, Deny]), Grant);
        assert_eq!(combine(Strategy::Consensus, &[Grant, Deny]), Deny);
        assert_eq!(combine(Strategy::Consensus, &[Grant, Unknown]), Unknown);
    }

    #[test]
    fn string_lists_in_all_shapes() {
        assert_eq!(string_list(&Value::String("[\"a\",\"b\"]".into())), vec!["a", "b"]);
        assert_eq!(string_list(&serde_json::json!(["a"])), vec!["a"]);
        assert_eq!(string_list(&Value::String("a".into())), vec!["a"]);
        assert!(string_list(&Value::String("[broken".into())).is_empty());
        assert!(string_list(&Value::Null).is_empty());
    }
}
