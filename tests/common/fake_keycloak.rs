//! A local stand-in for Keycloak's Admin REST API (Keycloak itself cannot run here). It serves the
//! admin-api fixtures in the real endpoints' shapes, including the token endpoint, 401 for a bad token
//! or secret, 404 for a missing user or client, client secrets (which kcaudit must drop), slow
//! responses on demand, and per-path request counts.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};

pub const CLIENT_ID: &str = "kcaudit";
pub const CLIENT_SECRET: &str = "fake-keycloak-secret";

#[derive(Default)]
pub struct FakeState {
    pub dir: PathBuf,
    pub delay_ms: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub hits: Mutex<HashMap<String, u64>>,
    /// Admin events / events per realm for the polling source: replaced by tests between polls.
    pub events: Mutex<HashMap<String, Vec<Value>>>,
    pub admin_events: Mutex<HashMap<String, Vec<Value>>>,
}

impl FakeState {
    pub fn hits(&self, path_prefix: &str) -> u64 {
        self.hits.lock().unwrap().iter().filter(|(k, _)| k.starts_with(path_prefix)).map(|(_, v)| *v).sum()
    }
}

pub struct FakeKeycloak {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKeycloak {
    pub async fn start(dir: PathBuf) -> FakeKeycloak {
        Self::start_on("127.0.0.1:0".parse().unwrap(), Arc::new(FakeState { dir, ..Default::default() })).await
    }

    /// Start (again) on a given address with given state: used to bring the server back after a kill.
    pub async fn start_on(addr: SocketAddr, state: Arc<FakeState>) -> FakeKeycloak {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind fake keycloak");
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/realms/{realm}/protocol/openid-connect/token", post(token))
            .route("/admin/realms", get(realms))
            .route("/admin/realms/{realm}/clients", get(clients))
            .route("/admin/realms/{realm}/clients/{id}", get(client_by_id))
            .route("/admin/realms/{realm}/users", get(users))
            .route("/admin/realms/{realm}/users/{id}", get(user))
            .route("/admin/realms/{realm}/users/{id}/role-mappings", get(role_mappings))
            .route("/admin/realms/{realm}/users/{id}/groups", get(groups))
            .route("/admin/realms/{realm}/events", get(events))
            .route("/admin/realms/{realm}/admin-events", get(admin_events))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeKeycloak { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kill the server (connections are refused until it is started again).
    pub fn kill(self) -> (SocketAddr, Arc<FakeState>) {
        self.task.abort();
        (self.addr, self.state)
    }
}

fn load(state: &FakeState, file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(state.dir.join(file)).unwrap_or_else(|_| "[]".into())).unwrap()
}

async fn gate(state: &FakeState, headers: &HeaderMap, path: String) -> Result<(), Response> {
    *state.hits.lock().unwrap().entry(path).or_default() += 1;
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let issued = state.tokens_issued.load(Ordering::SeqCst);
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| issued > 0 && t == format!("token-{issued}"));
    if ok {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, Json(json!({"error": "HTTP 401 Unauthorized"}))).into_response())
    }
}

async fn token(State(s): State<Arc<FakeState>>, Path(_realm): Path<String>, Form(form): Form<HashMap<String, String>>) -> Response {
    *s.hits.lock().unwrap().entry("/token".into()).or_default() += 1;
    let ok = form.get("grant_type").map(String::as_str) == Some("client_credentials")
        && form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
    if !ok {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "unauthorized_client", "error_description": "Invalid client or Invalid client credentials"}))).into_response();
    }
    let n = s.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
    Json(json!({"access_token": format!("token-{n}"), "expires_in": 300, "token_type": "Bearer"})).into_response()
}

async fn realms(State(s): State<Arc<FakeState>>, h: HeaderMap) -> Response {
    if let Err(r) = gate(&s, &h, "/admin/realms".into()).await {
        return r;
    }
    Json(load(&s, "realms.json")).into_response()
}

fn with_secrets(mut clients: Value) -> Value {
    for c in clients.as_array_mut().into_iter().flatten() {
        c["secret"] = json!("super-secret-client-secret");
    }
    clients
}

async fn clients(State(s): State<Arc<FakeState>>, h: HeaderMap, Path(realm): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = gate(&s, &h, format!("/admin/realms/{realm}/clients")).await {
        return r;
    }
    let all = with_secrets(load(&s, &format!("{realm}.clients.json")));
    let list: Vec<Value> = all.as_array().cloned().unwrap_or_default().into_iter().filter(|c| q.get("clientId").is_none_or(|id| c["clientId"] == json!(id))).collect();
    Json(list).into_response()
}

async fn client_by_id(State(s): State<Arc<FakeState>>, h: HeaderMap, Path((realm, id)): Path<(String, String)>) -> Response {
    if let Err(r) = gate(&s, &h, format!("/admin/realms/{realm}/clients/{id}")).await {
        return r;
    }
    let all = with_secrets(load(&s, &format!("{realm}.clients.json")));
    match all.as_array().and_then(|a| a.iter().find(|c| c["id"] == json!(id))) {
        Some(c) => Json(c.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "Could not find client"}))).into_response(),
    }
}

async fn users(State(s): State<Arc<FakeState>>, h: HeaderMap, Path(realm): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = gate(&s, &h, format!("/admin/realms/{realm}/users?username")).await {
        return r;
    }
    let all = load(&s, &format!("{realm}.users.json"));
    let list: Vec<Value> = all.as_array().cloned().unwrap_or_default().into_iter().filter(|u| q.get("username").is_none_or(|n| u["username"] == json!(n.to_lowercase()))).collect();
    Json(list).into_response()
}

async fn user(State(s): State<Arc<FakeState>>, h: HeaderMap, Path((realm, id)): Path<(String, String)>) -> Response {
    if let Err(r) = gate(&s, &h, format!("/admin/realms/{realm}/users/{id}")).await {
        return r;
    }
    let all = load(&s, &format!("{realm}.users.json"));
    match all.as_array().and_then(|a| a.iter().find(|u| u["id"] == json!(id))) {
        Some(u) => Json(u.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "User not found"}))).into_response(),
    }
}

async fn role_mappings(State(s): State<Arc<FakeState>>, h: HeaderMap, Path((realm, id)): Path<(String, String)>) -> Response {
    if let Err(r) = gate(&s, &h, format!("/admin/realms/{realm}/users/{id}/role-mappings")).await {
        return r;
    }
    Json(json!({"realmMappings": [{"name": format!("default-roles-{realm}")}]})).into_response()
}

async fn groups(State(s): State<Arc<FakeState>>, h: HeaderMap, Path((realm, id)): Path<(String, String)>) -> Response {
    if let Err(r) = gate(&s, &h, format!("/admin/realms/{realm}/users/{id}/groups")).await {
        return r;
    }
    Json(json!([])).into_response()
}

/// `GET /events`: filters by `type`, `dateFrom`/`dateTo` (epoch ms or yyyy-MM-dd), pages with
/// `first`/`max`, orders by `direction` (default desc, like Keycloak).
async fn events(State(s): State<Arc<FakeState>>, h: HeaderMap, Path(realm): Path<String>, Query(q): Query<Vec<(String, String)>>) -> Response {
    page(&s, &h, &realm, &q, false).await
}

async fn admin_events(State(s): State<Arc<FakeState>>, h: HeaderMap, Path(realm): Path<String>, Query(q): Query<Vec<(String, String)>>) -> Response {
    page(&s, &h, &realm, &q, true).await
}

async fn page(s: &FakeState, h: &HeaderMap, realm: &str, q: &[(String, String)], admin: bool) -> Response {
    let path = format!("/admin/realms/{realm}/{}", if admin { "admin-events" } else { "events" });
    if let Err(r) = gate(s, h, path).await {
        return r;
    }
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let types: Vec<String> = q.iter().filter(|(n, _)| n == "type").map(|(_, v)| v.clone()).collect();
    let ms = |v: Option<String>, end: bool| -> Option<i64> {
        let v = v?;
        v.parse::<i64>().ok().or_else(|| {
            let d = chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d").ok()?;
            let t = if end { d.and_hms_milli_opt(23, 59, 59, 999)? } else { d.and_hms_opt(0, 0, 0)? };
            Some(t.and_utc().timestamp_millis())
        })
    };
    let from = ms(get("dateFrom"), false);
    let to = ms(get("dateTo"), true);
    let first: usize = get("first").and_then(|v| v.parse().ok()).unwrap_or(0);
    let max: usize = get("max").and_then(|v| v.parse().ok()).unwrap_or(100);
    let asc = match get("direction").as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return (StatusCode::BAD_REQUEST, Json(json!({"error": "Invalid value for direction"}))).into_response(),
    };
    let store = if admin { &s.admin_events } else { &s.events };
    let mut list: Vec<Value> = store.lock().unwrap().get(realm).cloned().unwrap_or_default();
    list.retain(|e| {
        let t = e["time"].as_i64().unwrap_or(0);
        from.is_none_or(|f| t >= f) && to.is_none_or(|x| t <= x) && (types.is_empty() || types.iter().any(|ty| e["type"] == json!(ty)))
    });
    list.sort_by_key(|e| e["time"].as_i64().unwrap_or(0));
    if !asc {
        list.reverse();
    }
    Json(list.into_iter().skip(first).take(max).collect::<Vec<_>>()).into_response()
}
