//! A client for Keycloak's Admin REST API, built so an event storm can never hammer Keycloak.
//!
//! - Authenticates with its own confidential client (client-credentials grant); the token is cached
//!   and refreshed before it expires, and once more on a 401.
//! - Every lookup goes through a bounded cache (moka): hits for `cache_ttl_secs`, 404s ("deleted
//!   user") for the shorter `negative_ttl_secs`; concurrent lookups of the same key are coalesced into
//!   one request. Failures are not cached.
//! - A rate limiter (governor) caps requests per second; a circuit breaker stops calling Keycloak for
//!   `breaker_open_secs` after `breaker_failures` consecutive failures, so lookups fail fast
//!   ("admin API unavailable") and enrichment falls back to the next source instead of queueing.
//! - Client secrets returned to a manage-clients caller are dropped on arrival.

pub mod config;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::future::Cache;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument;

use crate::directory::model::{ClientRep, RealmRep, UserRep};
pub use config::AdminApiOptions;

/// Why a lookup could not be answered (as opposed to "answered: not found").
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("admin API unavailable: {0}")]
    Unavailable(String),
    #[error("admin API refused kcaudit's credentials: {0}")]
    Unauthorized(String),
}

/// What the cache holds for a key.
#[derive(Debug, Clone)]
pub enum Fetched {
    Realms(Arc<Vec<RealmRep>>),
    Client(Arc<ClientRep>),
    User(Arc<UserRep>),
    /// Keycloak answered 404 (or an empty search): cached for the negative TTL.
    NotFound,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
enum Key {
    Realms,
    Client(String, String),
    ClientUuid(String, String),
    User(String, String),
    Username(String, String),
}

struct Expiry {
    hit: Duration,
    miss: Duration,
}

impl moka::Expiry<Key, Fetched> for Expiry {
    fn expire_after_create(&self, _k: &Key, v: &Fetched, _now: std::time::Instant) -> Option<Duration> {
        Some(if matches!(v, Fetched::NotFound) { self.miss } else { self.hit })
    }
}

/// Closed → (failures ≥ threshold) → open until `until` → half-open: one call decides.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

pub struct AdminApi {
    http: reqwest::Client,
    base: String,
    /// `server.address` of the trace spans.
    host: String,
    opts: AdminApiOptions,
    secret: Vec<u8>,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
    cache: Cache<Key, Fetched>,
    limiter: DefaultDirectRateLimiter,
    breaker: Mutex<Breaker>,
    want_roles: bool,
}

impl AdminApi {
    /// `want_roles`: also fetch each user's role mappings and groups (needed for role- or group-based
    /// privilege rules; one extra request per user, cached with the user).
    pub fn new(opts: &AdminApiOptions, want_roles: bool) -> anyhow::Result<AdminApi> {
        let base = opts.url.clone().ok_or_else(|| anyhow::anyhow!("admin_api.url is not set"))?.trim_end_matches('/').to_string();
        let secret = opts.secret().map_err(|e| anyhow::anyhow!("admin_api client secret: {e}"))?;
        let mut http = reqwest::Client::builder().timeout(Duration::from_millis(opts.timeout_ms)).user_agent(concat!("kcaudit/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &opts.ca_file {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?;
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let rps = NonZeroU32::new(opts.requests_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let host = reqwest::Url::parse(&base).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
        Ok(AdminApi {
            http: http.build()?,
            host,
            base,
            secret,
            token: tokio::sync::Mutex::new(None),
            cache: Cache::builder()
                .max_capacity(opts.cache_max_entries)
                .expire_after(Expiry { hit: Duration::from_secs(opts.cache_ttl_secs), miss: Duration::from_secs(opts.negative_ttl_secs) })
                .build(),
            limiter: RateLimiter::direct(Quota::per_second(rps)),
            breaker: Mutex::new(Breaker::default()),
            opts: opts.clone(),
            want_roles,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// All realms (`GET /admin/realms`).
    pub async fn realms(&self) -> Result<Arc<Vec<RealmRep>>, ApiError> {
        match self.cached(Key::Realms).await? {
            Fetched::Realms(r) => Ok(r),
            _ => Ok(Arc::new(Vec::new())),
        }
    }

    /// The realm whose id or name is `key`.
    pub async fn realm(&self, key: &str) -> Result<Option<RealmRep>, ApiError> {
        let realms = self.realms().await?;
        Ok(realms.iter().find(|r| r.id.as_deref() == Some(key)).or_else(|| realms.iter().find(|r| r.realm.as_deref() == Some(key))).cloned())
    }

    pub async fn client(&self, realm: &str, client_id: &str) -> Result<Option<Arc<ClientRep>>, ApiError> {
        self.cached_client(Key::Client(realm.into(), client_id.into())).await
    }

    pub async fn client_by_uuid(&self, realm: &str, uuid: &str) -> Result<Option<Arc<ClientRep>>, ApiError> {
        self.cached_client(Key::ClientUuid(realm.into(), uuid.into())).await
    }

    pub async fn user(&self, realm: &str, id: &str) -> Result<Option<Arc<UserRep>>, ApiError> {
        self.cached_user(Key::User(realm.into(), id.into())).await
    }

    pub async fn user_by_username(&self, realm: &str, username: &str) -> Result<Option<Arc<UserRep>>, ApiError> {
        self.cached_user(Key::Username(realm.into(), username.to_lowercase())).await
    }

    async fn cached_client(&self, key: Key) -> Result<Option<Arc<ClientRep>>, ApiError> {
        Ok(match self.cached(key).await? {
            Fetched::Client(c) => Some(c),
            _ => None,
        })
    }

    async fn cached_user(&self, key: Key) -> Result<Option<Arc<UserRep>>, ApiError> {
        Ok(match self.cached(key).await? {
            Fetched::User(u) => Some(u),
            _ => None,
        })
    }

    /// One page of stored events (`admin = false`: `GET /events`; true: `GET /admin-events`), oldest
    /// first, from `from_ms` inclusive. Never cached.
    pub async fn events_page(&self, realm: &str, admin: bool, from_ms: i64, first: usize, max: usize, filters: &[(&str, String)]) -> Result<Vec<Value>, ApiError> {
        let mut path = format!(
            "/admin/realms/{}/{}?dateFrom={from_ms}&direction=asc&first={first}&max={max}",
            urlencoding::encode(realm),
            if admin { "admin-events" } else { "events" }
        );
        for (k, v) in filters {
            path.push_str(&format!("&{k}={}", urlencoding::encode(v)));
        }
        match self.get::<Vec<Value>>(if admin { "/admin/realms/{realm}/admin-events" } else { "/admin/realms/{realm}/events" }, &path).await? {
            Some(v) => Ok(v),
            None => Err(ApiError::Unavailable(format!("realm {realm} not found (HTTP 404 on {path})"))),
        }
    }

    /// Every client of a realm (for `kcaudit directory sync`), secrets dropped.
    pub async fn all_clients(&self, realm: &str) -> Result<Vec<ClientRep>, ApiError> {
        let mut out = Vec::new();
        let page = 100;
        loop {
            let path = format!("/admin/realms/{}/clients?first={}&max={page}", urlencoding::encode(realm), out.len());
            let batch: Vec<ClientRep> = self.get("/admin/realms/{realm}/clients", &path).await?.unwrap_or_default();
            let n = batch.len();
            out.extend(batch.into_iter().map(|mut c| {
                c.secret = None;
                c
            }));
            if n < page {
                return Ok(out);
            }
        }
    }

    /// Every user of a realm (for `kcaudit directory sync`), paged.
    pub async fn all_users(&self, realm: &str) -> Result<Vec<UserRep>, ApiError> {
        let mut out = Vec::new();
        let page = 200;
        loop {
            let path = format!("/admin/realms/{}/users?first={}&max={page}&briefRepresentation=false", urlencoding::encode(realm), out.len());
            let batch: Vec<UserRep> = self.get("/admin/realms/{realm}/users", &path).await?.unwrap_or_default();
            let n = batch.len();
            out.extend(batch);
            if n < page {
                return Ok(out);
            }
        }
    }

    /// A realm's client scopes (`None` when the endpoint is not there).
    pub async fn client_scopes(&self, realm: &str) -> Result<Option<Vec<crate::directory::model::ClientScopeRep>>, ApiError> {
        self.get("/admin/realms/{realm}/client-scopes", &format!("/admin/realms/{}/client-scopes", urlencoding::encode(realm))).await
    }

    /// Cache with coalescing: concurrent callers of one key share one request.
    async fn cached(&self, key: Key) -> Result<Fetched, ApiError> {
        let k = key.clone();
        self.cache.try_get_with(key, async move { self.fetch(&k).await }).await.map_err(|e: Arc<ApiError>| (*e).clone())
    }

    async fn fetch(&self, key: &Key) -> Result<Fetched, ApiError> {
        let enc = |s: &str| urlencoding::encode(s).into_owned();
        match key {
            Key::Realms => Ok(self.get::<Vec<RealmRep>>("/admin/realms", "/admin/realms").await?.map(|r| Fetched::Realms(Arc::new(r))).unwrap_or(Fetched::NotFound)),
            Key::Client(realm, client_id) => {
                let list: Option<Vec<ClientRep>> = self.get("/admin/realms/{realm}/clients", &format!("/admin/realms/{}/clients?clientId={}", enc(realm), enc(client_id))).await?;
                // `clientId=` is an exact match unless `search=true`; still, check.
                Ok(list.and_then(|l| l.into_iter().find(|c| c.client_id.as_deref() == Some(client_id))).map(without_secret).unwrap_or(Fetched::NotFound))
            }
            Key::ClientUuid(realm, uuid) => {
                let c: Option<ClientRep> = self.get("/admin/realms/{realm}/clients/{id}", &format!("/admin/realms/{}/clients/{}", enc(realm), enc(uuid))).await?;
                Ok(c.map(without_secret).unwrap_or(Fetched::NotFound))
            }
            Key::User(realm, id) => {
                let u: Option<UserRep> = self.get("/admin/realms/{realm}/users/{id}", &format!("/admin/realms/{}/users/{}", enc(realm), enc(id))).await?;
                match u {
                    Some(u) => Ok(Fetched::User(Arc::new(self.with_roles(realm, u).await?))),
                    None => Ok(Fetched::NotFound),
                }
            }
            Key::Username(realm, name) => {
                let l: Option<Vec<UserRep>> = self.get("/admin/realms/{realm}/users", &format!("/admin/realms/{}/users?username={}&exact=true", enc(realm), enc(name))).await?;
                match l.and_then(|l| l.into_iter().find(|u| u.username.as_deref().map(str::to_lowercase).as_deref() == Some(name.as_str()))) {
                    Some(u) => Ok(Fetched::User(Arc::new(self.with_roles(realm, u).await?))),
                    None => Ok(Fetched::NotFound),
                }
            }
        }
    }

    async fn with_roles(&self, realm: &str, mut u: UserRep) -> Result<UserRep, ApiError> {
        if !self.want_roles {
            return Ok(u);
        }
        let Some(id) = u.id.clone() else { return Ok(u) };
        let enc = |s: &str| urlencoding::encode(s).into_owned();
        if let Some(m) = self.get::<Value>("/admin/realms/{realm}/users/{id}/role-mappings", &format!("/admin/realms/{}/users/{}/role-mappings", enc(realm), enc(&id))).await? {
            let names = |v: &Value| v.as_array().map(|a| a.iter().filter_map(|r| r["name"].as_str().map(str::to_string)).collect::<Vec<_>>()).unwrap_or_default();
            u.realm_roles = names(&m["realmMappings"]);
            if let Some(cm) = m["clientMappings"].as_object() {
                for (client, v) in cm {
                    u.client_roles.insert(client.clone(), names(&v["mappings"]));
                }
            }
        }
        if let Some(groups) = self.get::<Vec<Value>>("/admin/realms/{realm}/users/{id}/groups", &format!("/admin/realms/{}/users/{}/groups", enc(realm), enc(&id))).await? {
            u.groups = groups.iter().filter_map(|g| g["path"].as_str().map(str::to_string)).collect();
        }
        Ok(u)
    }

    /// One GET with rate limit, breaker, token and one retry after a 401. `Ok(None)` is a 404.
    /// `route` is the path's template (`/admin/realms/{realm}/users/{id}`), for the trace span.
    async fn get<T: DeserializeOwned>(&self, route: &'static str, path: &str) -> Result<Option<T>, ApiError> {
        self.breaker_check()?;
        self.limiter.until_ready().await;
        let mut refreshed = false;
        loop {
            let token = self.token(refreshed).await?;
            let url = format!("{}{}", self.base, path);
            let span = self.call_span("GET", route, path);
            let resp = match self.http.get(&url).bearer_auth(&token).send().instrument(span.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    span.record("error.type", error_type(&e));
                    return Err(self.failed(format!("GET {path}: {}", describe(&e))));
                }
            };
            let status = resp.status();
            span.record("http.response.status_code", status.as_u16());
            if status == reqwest::StatusCode::UNAUTHORIZED && !refreshed {
                refreshed = true;
                continue;
            }
            if status == reqwest::StatusCode::NOT_FOUND {
                self.succeeded();
                return Ok(None);
            }
            if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                self.failed(format!("GET {path}: HTTP {status}"));
                return Err(ApiError::Unauthorized(format!("GET {path}: HTTP {status} (does the service account have view-users and view-clients?)")));
            }
            if !status.is_success() {
                return Err(self.failed(format!("GET {path}: HTTP {status}")));
            }
            let body = resp.bytes().await.map_err(|e| self.failed(format!("GET {path}: {}", describe(&e))))?;
            let parsed = serde_json::from_slice(&body).map_err(|e| self.failed(format!("GET {path}: unexpected response: {e}")))?;
            self.succeeded();
            return Ok(Some(parsed));
        }
    }

    /// A cached access token, fetched or refreshed when missing, near expiry, or after a 401.
    async fn token(&self, force: bool) -> Result<String, ApiError> {
        let mut guard = self.token.lock().await;
        if let Some((t, until)) = guard.as_ref() {
            if !force && Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let url = format!("{}/realms/{}/protocol/openid-connect/token", self.base, urlencoding::encode(&self.opts.auth_realm));
        let secret = String::from_utf8_lossy(&self.secret).into_owned();
        let form = [("grant_type", "client_credentials"), ("client_id", self.opts.client_id.as_str()), ("client_secret", secret.as_str())];
        let route = "/realms/{realm}/protocol/openid-connect/token";
        let span = self.call_span("POST", route, &url[self.base.len()..]);
        let resp = self.http.post(&url).form(&form).send().instrument(span.clone()).await.map_err(|e| {
            span.record("error.type", error_type(&e));
            self.failed(format!("token request: {}", describe(&e)))
        })?;
        let status = resp.status();
        span.record("http.response.status_code", status.as_u16());
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::BAD_REQUEST {
            self.failed(format!("token request: HTTP {status}"));
            return Err(ApiError::Unauthorized(format!("token request for client {} in realm {}: HTTP {status}", self.opts.client_id, self.opts.auth_realm)));
        }
        if !status.is_success() {
            return Err(self.failed(format!("token request: HTTP {status}")));
        }
        let v: Value = resp.json().await.map_err(|e| self.failed(format!("token response: {}", describe(&e))))?;
        let token = v["access_token"].as_str().ok_or_else(|| self.failed("token response without access_token".into()))?.to_string();
        let lifetime = v["expires_in"].as_u64().unwrap_or(60);
        // Refresh at 80 % of the lifetime, and at least 5 s early.
        let early = (lifetime / 5).max(5).min(lifetime);
        *guard = Some((token.clone(), Instant::now() + Duration::from_secs(lifetime - early)));
        Ok(token)
    }

    /// The client span of one admin-API request, a child of the current span (enrichment or a poll
    /// round; none outside a trace, so background calls do not start traces of their own). Method,
    /// route template, the URL without its query (it can name users) and the status; the bearer token
    /// and the client secret are never recorded.
    fn call_span(&self, method: &'static str, route: &'static str, path: &str) -> tracing::Span {
        if tracing::Span::current().is_disabled() {
            return tracing::Span::none();
        }
        let path = path.split('?').next().unwrap_or_default();
        tracing::info_span!(
            target: "kcaudit_otel",
            "admin_api.request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "client",
            http.request.method = method,
            http.route = route,
            url.full = %format_args!("{}{path}", self.base),
            server.address = self.host.as_str(),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        )
    }

    fn breaker_check(&self) -> Result<(), ApiError> {
        let Ok(mut b) = self.breaker.lock() else { return Ok(()) };
        match b.open_until {
            Some(t) if Instant::now() < t => Err(ApiError::Unavailable(format!("circuit open after {} consecutive failures; retrying in {} s", b.failures, (t - Instant::now()).as_secs() + 1))),
            Some(_) => {
                // Half-open: let this call through; its outcome closes or re-opens the circuit.
                b.open_until = None;
                b.failures = self.opts.breaker_failures.saturating_sub(1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn failed(&self, why: String) -> ApiError {
        if let Ok(mut b) = self.breaker.lock() {
            b.failures += 1;
            if b.failures >= self.opts.breaker_failures.max(1) && b.open_until.is_none() {
                tracing::warn!(failures = b.failures, open_secs = self.opts.breaker_open_secs, last_error = %why, "Keycloak admin API failing; circuit opened.");
                b.open_until = Some(Instant::now() + Duration::from_secs(self.opts.breaker_open_secs));
            }
        }
        ApiError::Unavailable(why)
    }

    fn succeeded(&self) {
        if let Ok(mut b) = self.breaker.lock() {
            if b.failures > 0 {
                tracing::info!("Keycloak admin API answering again.");
            }
            *b = Breaker::default();
        }
    }
}

fn without_secret(mut c: ClientRep) -> Fetched {
    c.secret = None;
    Fetched::Client(Arc::new(c))
}

/// `error.type` of a request that got no response (semantic conventions: a short, low-cardinality name).
fn error_type(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        e.to_string()
    }
}
