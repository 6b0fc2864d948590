//! Exchange policy: does the realm configuration allow this exchanger these audiences?
//!
//! Standard V2 grants an exchanger the audiences its token could carry: the audience mappers on the
//! client and on its default/optional client scopes, plus role-based audiences (the `roles` scope's
//! audience resolver) that depend on the subject's roles and cannot be read from configuration alone.
//! Legacy V1 grants audiences through fine-grained permissions that a directory snapshot does not show.
//! So the verdict is `yes` only when configuration proves it, `no` only when configuration rules it out,
//! and `unknown` otherwise, with the reason. It never guesses.

use crate::directory::model::{audience_mapper_audiences, ClientRep, ClientScopeRep};
use crate::directory::V1Grants;
use crate::event::{AudienceInfo, PolicyVerdict, Text, TokenExchange, Within};

/// The verdict for one exchange. `exchanger` is the resolved client (None: not resolvable);
/// `audiences` are the resolved audiences; `scope` looks up client-scope definitions (None when the
/// sources do not carry them).
pub fn verdict(
    realm: &str,
    name: &str,
    exchanger: Option<&ClientRep>,
    audiences: &[AudienceInfo],
    scope: impl Fn(&str) -> Option<ClientScopeRep>,
    v1: Option<&V1Grants>,
    te: &TokenExchange,
) -> PolicyVerdict {
    let unknown = |reason: String| PolicyVerdict { within_policy: Within::Unknown, reason, allowed_audiences: None };
    let Some(client) = exchanger else { return unknown(format!("exchanger {name} could not be resolved")) };
    if let Some(missing) = audiences.iter().find(|a| a.known == Some(false)) {
        return PolicyVerdict { within_policy: Within::No, reason: format!("audience {} is not a client of realm {realm}", missing.audience), allowed_audiences: None };
    }
    if te.requested_subject.is_some() {
        return match v1.map(|g| g.may_impersonate(name)) {
            Some(Some(true)) => PolicyVerdict { within_policy: Within::Yes, reason: format!("an impersonation permission (FGAP v1) lets {name} impersonate users"), allowed_audiences: None },
            Some(Some(false)) => PolicyVerdict { within_policy: Within::No, reason: format!("no impersonation permission (FGAP v1) in realm {realm} lets {name} impersonate users"), allowed_audiences: None },
            Some(None) => unknown(format!("the impersonation permissions of realm {realm} cannot be decided from its configuration")),
            None => unknown(format!("{name} requested impersonation; impersonation permissions (fine-grained admin permissions) are not in these sources")),
        };
    }
    if !client.standard_token_exchange_enabled() {
        let Some(g) = v1 else {
            return unknown(format!("{name} does not have standard token exchange enabled, so legacy V1 permissions govern it; they are not in these sources"));
        };
        if te.audiences.is_empty() {
            return unknown("the event records no audience".into());
        }
        let answers: Vec<(&str, Option<bool>)> = te.audiences.iter().map(|a| (a.as_str(), g.may_exchange(name, a))).collect();
        if let Some((a, _)) = answers.iter().find(|(_, r)| *r == Some(false)) {
            return PolicyVerdict { within_policy: Within::No, reason: format!("no token-exchange permission (FGAP v1) on {a} lets {name} exchange to it"), allowed_audiences: None };
        }
        if answers.iter().all(|(_, r)| *r == Some(true)) {
            return PolicyVerdict { within_policy: Within::Yes, reason: format!("token-exchange permissions (FGAP v1) let {name} exchange to {}", te.audiences.join(", ")), allowed_audiences: None };
        }
        return unknown(format!("the token-exchange permissions for {} cannot be decided from the realm configuration", te.audiences.join(", ")));
    }
    let mut allowed = client.audience_mapper_audiences();
    let mut complete = true;
    for name in client.default_client_scopes.iter().chain(&client.optional_client_scopes) {
        match scope(name) {
            Some(s) => {
                allowed.extend(audience_mapper_audiences(&s.protocol_mappers));
                if s.protocol_mappers.iter().any(|m| m.protocol_mapper.as_deref() == Some("oidc-audience-resolve-mapper")) {
                    complete = false; // audiences from the subject's client roles
                }
            }
            None => complete = false,
        }
    }
    allowed.sort();
    allowed.dedup();
    let outside: Vec<&str> = te.audiences.iter().map(Text::as_str).filter(|a| !allowed.iter().any(|x| x == a)).collect();
    if outside.is_empty() && !te.audiences.is_empty() {
        return PolicyVerdict {
            within_policy: Within::Yes,
            reason: format!("{name} has standard token exchange enabled and its audience mappers grant {}", te.audiences.join(", ")),
            allowed_audiences: Some(allowed),
        };
    }
    if te.audiences.is_empty() {
        return unknown("the event records no audience".into());
    }
    let list = outside.join(", ");
    if complete {
        PolicyVerdict {
            within_policy: Within::No,
            reason: format!(
                "{name}'s audience mappers grant only {}; {list} is not among them",
                if allowed.is_empty() { "no audience".to_string() } else { allowed.join(", ") }
            ),
            allowed_audiences: Some(allowed),
        }
    } else {
        unknown(format!(
            "{list} is not granted by {name}'s audience mappers{}, but role-based audiences or client scopes not in this directory may grant it",
            if allowed.is_empty() { String::new() } else { format!(" ({})", allowed.join(", ")) }
        ))
    }
}
