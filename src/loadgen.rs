//! `kcaudit loadgen`: realistic token-exchange traffic for benchmarks, against loopback only.
//!
//! Events follow the shapes of the shared timeline (V2 exchanges with `subject_token_client_id`, V1
//! service exchanges, impersonation, errors) over many realms' worth of clients, users and audiences,
//! generated from a seeded RNG so runs are repeatable. It either writes them to a file (for replay
//! benchmarks) or drives a kcaudit webhook with N connections, as NDJSON batches or one event per
//! request (how p2-inc's sender delivers), flat out or at a fixed rate, bounded in count and time,
//! and reports the achieved rate, latency percentiles (HDR histogram) and errors.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The realm every generated event happens in (the shared fixtures' `acme-prod`, so the fixture
/// directory resolves it too).
pub const REALM_ID: &str = "4f660473-c22b-4858-a484-cd314a37e778";
pub const REALM_NAME: &str = "acme-prod";
/// The client V2 subject tokens were issued to.
const PORTAL: &str = "web-portal";

fn client_name(c: usize) -> String {
    format!("client-{c}")
}
fn audience_name(a: usize) -> String {
    format!("api-{a}")
}
fn user_id(u: usize) -> String {
    format!("00000000-0000-4000-8000-{u:012}")
}
fn username(u: usize) -> String {
    format!("user{u}")
}
/// Every fifth client uses legacy V1 token exchange.
fn is_v1(c: usize) -> bool {
    c % 5 == 0
}
/// The audiences client `c` exchanges to (each client has a few of its own, so first-seen baselines
/// are realistic).
fn audience_of(c: usize, pick: usize, audiences: usize) -> usize {
    (c * 7 + pick) % audiences.max(1)
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub seed: u64,
    pub clients: usize,
    pub users: usize,
    pub audiences: usize,
    /// Share of TOKEN_EXCHANGE_ERROR events (0.0–1.0).
    pub error_share: f64,
    /// `keycloak` (EventRepresentation) or `p2inc` (webhook body).
    pub format: String,
    /// Event time of the first event (epoch ms); events are 10 ms apart.
    pub start_ms: i64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions { seed: 7, clients: 200, users: 5000, audiences: 50, error_share: 0.02, format: "keycloak".into(), start_ms: 1_773_043_084_120 }
    }
}

/// A deterministic stream of events as JSON text.
pub struct Generator {
    opts: GenOptions,
    rng: StdRng,
    n: u64,
}

impl Generator {
    pub fn new(opts: GenOptions) -> Generator {
        Generator { rng: StdRng::seed_from_u64(opts.seed), opts, n: 0 }
    }

    /// The next event (one line of JSON, no newline).
    pub fn next_event(&mut self) -> String {
        let o = &self.opts;
        let i = self.n;
        self.n += 1;
        let rng = &mut self.rng;
        let client = rng.gen_range(0..o.clients.max(1));
        let user = rng.gen_range(0..o.users.max(1));
        let aud = audience_of(client, rng.gen_range(0..3), o.audiences);
        let error = rng.gen_bool(o.error_share.clamp(0.0, 1.0));
        let v1 = is_v1(client);
        let p2inc = o.format == "p2inc";
        let id = format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", (o.seed as u32).wrapping_add(i as u32), (i >> 32) as u16, client % 4096, user % 4096, i);
        let (client_id, ip, audience) = (client_name(client), format!("10.42.{}.{}", client % 250, 1 + client % 200), audience_name(aud));
        let (uid, session, name) = (user_id(user), format!("10000000-0000-4000-8000-{user:012}"), username(user));
        let token_id = format!("{}:{id}", if v1 { "onrtna" } else { "onrtte" });
        let p2inc_uid = format!("d-{id}");
        let event_type = match (p2inc, error) {
            (false, false) => "TOKEN_EXCHANGE",
            (false, true) => "TOKEN_EXCHANGE_ERROR",
            (true, false) => "access.TOKEN_EXCHANGE",
            (true, true) => "access.TOKEN_EXCHANGE_ERROR",
        };
        let user_id = (!error).then_some(uid.as_str());
        let ev = Wire {
            auth_details: p2inc.then_some(WireAuth { client_id: &client_id, ip_address: &ip, realm_id: REALM_NAME, user_id }),
            client_id: (!p2inc).then_some(&client_id),
            details: WireDetails {
                audience: &audience,
                auth_method: "token_exchange",
                client_auth_method: "client-secret",
                grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
                reason: error.then_some("client not allowed to exchange to audience"),
                requested_token_type: if v1 { "urn:ietf:params:oauth:token-type:refresh_token" } else { "urn:ietf:params:oauth:token-type:access_token" },
                scope: "profile email",
                subject_token_client_id: (!v1).then_some(PORTAL),
                token_id: &token_id,
                username: (!v1).then_some(&name),
            },
            error: error.then_some("not_allowed"),
            id: &id,
            ip_address: (!p2inc).then_some(&ip),
            realm_id: REALM_ID,
            realm_name: p2inc.then_some(REALM_NAME),
            session_id: (!p2inc && !error).then_some(&session),
            time: o.start_ms + (i as i64) * 10,
            event_type,
            uid: p2inc.then_some(&p2inc_uid),
            user_id: if p2inc { None } else { user_id },
        };
        serde_json::to_string(&ev).unwrap_or_default()
    }
}

/// One generated event on the wire. Fields are in key order (what a `serde_json::Value` object
/// writes), and typed, not built as a `Value`: that took 5 µs per event, which the load tool spent on
/// the machine it measures (issue #9). Keycloak's `EventRepresentation`, or with `auth_details`,
/// `realm_name` and `uid` p2-inc's webhook body.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_details: Option<WireAuth<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    details: WireDetails<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_address: Option<&'a str>,
    realm_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    realm_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    time: i64,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

/// p2-inc's `authDetails` (its `userId` is `null` on errors).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WireAuth<'a> {
    client_id: &'a str,
    ip_address: &'a str,
    realm_id: &'a str,
    user_id: Option<&'a str>,
}

/// A token exchange's details, in key order.
#[derive(serde::Serialize)]
struct WireDetails<'a> {
    audience: &'a str,
    auth_method: &'a str,
    client_auth_method: &'a str,
    grant_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    requested_token_type: &'a str,
    scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject_token_client_id: Option<&'a str>,
    token_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
}

/// How to drive the webhook.
#[derive(Debug, Clone)]
pub struct DriveOptions {
    pub target: String,
    /// Events per request (1 = single-event requests).
    pub batch: usize,
    pub connections: usize,
    pub count: u64,
    pub max_duration: Duration,
    /// Events per second across all connections (0 = flat out).
    pub rate: u64,
    /// HMAC secret for `X-Keycloak-Signature` (p2-inc style), if the target checks it.
    pub secret: Option<Vec<u8>>,
}

/// What a run achieved. A request that failed (no answer, or a status outside 2xx) counts in
/// `errors` and `status_counts` (status 0: no answer at all), its events in `events_sent` but not in
/// `events_accepted`; the rates and latencies are of accepted requests only, so a server that
/// answers 413 or 503 quickly cannot look fast.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DriveReport {
    /// Events in every request sent, answered or not.
    pub events_sent: u64,
    /// Events in requests answered 2xx: what the server acknowledged.
    pub events_accepted: u64,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Accepted events per second.
    pub events_per_sec: f64,
    /// Accepted requests per second.
    pub requests_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    pub status_counts: std::collections::BTreeMap<u16, u64>,
}

/// Refuse anything but loopback: a load test never leaves the machine.
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("bad --target {url}: {e}"))?;
    let host = parsed.host_str().unwrap_or("");
    let ok = host == "localhost" || host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(ok, "loadgen only targets loopback addresses (127.0.0.0/8, ::1, localhost); {host} is not one");
    Ok(())
}

/// Drive the webhook; bounded by `count` and `max_duration`, whichever comes first.
///
/// Each connection is one task speaking HTTP/1.1 through hyper's connection-level client, with its
/// own histogram and counts (merged at the end): the load tool shares the machine with the server,
/// and with a pooled general-purpose client (reqwest) it spent as much CPU per single-event request
/// as the server did (issue #9), so it measured itself as much as the server.
pub async fn drive(gen: GenOptions, o: DriveOptions) -> anyhow::Result<DriveReport> {
    check_loopback(&o.target)?;
    let target = Target::parse(&o.target).await?;
    let generator = Arc::new(Mutex::new(Generator::new(gen)));
    let claimed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + o.max_duration;
    let batch = o.batch.max(1) as u64;
    let mut tasks = Vec::new();
    for _ in 0..o.connections.max(1) {
        let (target, generator, claimed, o) = (target.clone(), generator.clone(), claimed.clone(), o.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new()?;
            let mut conn: Option<Connection> = None;
            loop {
                let first = claimed.fetch_add(batch, Ordering::SeqCst);
                if first >= o.count || Instant::now() >= deadline {
                    break;
                }
                let n = batch.min(o.count - first);
                if o.rate > 0 {
                    // Open-loop pacing: request k is due at k / rate.
                    let due = started + Duration::from_secs_f64(first as f64 / o.rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let body = {
                    let mut g = generator.lock().unwrap_or_else(|p| p.into_inner());
                    let mut b = Vec::with_capacity(n as usize * 700);
                    for k in 0..n {
                        if k > 0 {
                            b.push(b'\n');
                        }
                        b.extend_from_slice(g.next_event().as_bytes());
                    }
                    b
                };
                let signature = o.secret.as_ref().map(|s| crate::sources::webhook::auth::sign_sha256(s, &body));
                let t = Instant::now();
                let status = match tokio::time::timeout(REQUEST_TIMEOUT, target.send(&mut conn, body, signature)).await {
                    Ok(Ok(status)) => status,
                    // No answer (refused, reset, timed out): the next request opens a new connection.
                    Ok(Err(_)) | Err(_) => {
                        conn = None;
                        0
                    }
                };
                tally.record(status, n, t.elapsed());
            }
            anyhow::Ok(tally)
        }));
    }
    let mut total = Tally::new()?;
    for t in tasks {
        total.merge(t.await??)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests: u64 = total.statuses.values().sum();
    let ok: u64 = total.statuses.iter().filter(|(s, _)| (200..300).contains(*s)).map(|(_, n)| n).sum();
    let h = &total.latency_us;
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    Ok(DriveReport {
        events_sent: total.events_sent,
        events_accepted: total.events_accepted,
        requests,
        errors: requests - ok,
        seconds,
        events_per_sec: total.events_accepted as f64 / seconds,
        requests_per_sec: ok as f64 / seconds,
        latency_ms_p50: q(0.5),
        latency_ms_p90: q(0.9),
        latency_ms_p99: q(0.99),
        latency_ms_max: h.max() as f64 / 1000.0,
        status_counts: total.statuses,
    })
}

/// How long one request may take before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection's results (the run's, once merged).
struct Tally {
    latency_us: hdrhistogram::Histogram<u64>,
    statuses: std::collections::BTreeMap<u16, u64>,
    events_sent: u64,
    events_accepted: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally { latency_us: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)?, statuses: Default::default(), events_sent: 0, events_accepted: 0 })
    }

    fn record(&mut self, status: u16, events: u64, took: Duration) {
        *self.statuses.entry(status).or_default() += 1;
        self.events_sent += events;
        if (200..300).contains(&status) {
            self.events_accepted += events;
            let _ = self.latency_us.record((took.as_micros() as u64).max(1));
        }
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.latency_us.add(&other.latency_us)?;
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.events_sent += other.events_sent;
        self.events_accepted += other.events_accepted;
        Ok(())
    }
}

/// The webhook to drive: plain HTTP/1.1 on loopback.
#[derive(Clone)]
struct Target {
    addr: std::net::SocketAddr,
    host: http::HeaderValue,
    path: http::Uri,
}

impl Target {
    async fn parse(url: &str) -> anyhow::Result<Target> {
        let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("bad --target {url}: {e}"))?;
        anyhow::ensure!(parsed.scheme() == "http", "loadgen speaks plain HTTP to loopback; {url} is not an http:// URL");
        let addr = tokio::net::lookup_host((parsed.host_str().unwrap_or("").trim_matches(|c| c == '[' || c == ']'), parsed.port_or_known_default().unwrap_or(80)))
            .await
            .map_err(|e| anyhow::anyhow!("resolving --target {url}: {e}"))?
            .find(|a| a.ip().is_loopback())
            .ok_or_else(|| anyhow::anyhow!("--target {url} resolves to no loopback address"))?;
        let path = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_string(),
        };
        let host = match parsed.port() {
            Some(port) => format!("{}:{port}", parsed.host_str().unwrap_or("")),
            None => parsed.host_str().unwrap_or("").to_string(),
        };
        Ok(Target { addr, host: http::HeaderValue::from_str(&host)?, path: path.parse()? })
    }

    /// POST one body on the connection (opened first if there is none); the answer's status once its
    /// body has been read.
    async fn send(&self, conn: &mut Option<Connection>, body: Vec<u8>, signature: Option<String>) -> anyhow::Result<u16> {
        use http_body_util::BodyExt;
        use futures::FutureExt;
        // A connection the server has closed since the last request (idle timeout, shutdown) is
        // noticed here, by driving it once, and replaced: that is not a failed request.
        let open = conn.as_mut().is_some_and(|c| !c.sender.is_closed() && c.driver.as_mut().now_or_never().is_none());
        let c = match conn {
            Some(c) if open => c,
            _ => {
                let stream = tokio::net::TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                let (sender, driver) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                conn.insert(Connection { sender, driver: Box::pin(driver) })
            }
        };
        let mut req = http::Request::post(self.path.clone())
            .header(http::header::HOST, self.host.clone())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(sig) = signature {
            req = req.header("X-Keycloak-Signature", sig);
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        let (status, closing) = {
            let Connection { sender, driver } = c;
            let exchange = async {
                sender.ready().await?;
                let resp = sender.send_request(req).await?;
                let status = resp.status().as_u16();
                let closing = resp.headers().get(http::header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                resp.into_body().collect().await?;
                anyhow::Ok((status, closing))
            };
            // The connection is driven here, in the same task, rather than by a task of its own, which
            // would take two cross-task wake-ups per request (no measurable CPU difference here).
            let mut exchange = std::pin::pin!(exchange);
            tokio::select! {
                biased;
                r = &mut exchange => r?,
                r = driver => {
                    // The connection ended (the server closed it): whatever it delivered is in the
                    // exchange's channels, so finish reading; a request it never sent fails here.
                    r?;
                    let (status, _) = exchange.await?;
                    (status, true)
                }
            }
        };
        if closing {
            *conn = None;
        }
        Ok(status)
    }
}

/// One open HTTP/1.1 connection: the request half and the future that drives the socket.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    driver: std::pin::Pin<Box<hyper::client::conn::http1::Connection<hyper_util::rt::TokioIo<tokio::net::TcpStream>, http_body_util::Full<bytes::Bytes>>>>,
}

/// Write `count` events as NDJSON.
pub fn write_file(gen: GenOptions, count: u64, out: &mut dyn Write) -> std::io::Result<()> {
    let mut g = Generator::new(gen);
    for _ in 0..count {
        out.write_all(g.next_event().as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Write a directory snapshot (`realms.json`, `<realm>.clients.json`, `<realm>.users.json`, the layout
/// `kcaudit directory sync` writes) in which every client, audience and user the generated events
/// name exists, so a benchmark measures enrichment that finds what it looks up (as in production),
/// not a miss per event. V2 clients have standard token exchange enabled and an audience mapper for
/// each audience they use; V1 clients have neither (their permissions are not in a snapshot).
pub fn write_directory(gen: &GenOptions, dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let uuid = |kind: u8, n: usize| format!("{kind:08x}-0000-4000-8000-{n:012}");
    let mut clients: Vec<serde_json::Value> = (0..gen.clients.max(1))
        .map(|c| {
            let mut rep = json!({
                "id": uuid(1, c), "clientId": client_name(c), "name": format!("Service {c}"), "enabled": true,
                "publicClient": false, "bearerOnly": false, "serviceAccountsEnabled": true, "protocol": "openid-connect",
                "attributes": {}, "defaultClientScopes": [], "optionalClientScopes": [], "protocolMappers": [],
            });
            if !is_v1(c) {
                rep["attributes"]["standard.token.exchange.enabled"] = json!("true");
                let mut mine: Vec<usize> = (0..3).map(|p| audience_of(c, p, gen.audiences)).collect();
                mine.dedup();
                rep["protocolMappers"] = mine
                    .into_iter()
                    .map(|a| json!({"name": format!("aud-{a}"), "protocol": "openid-connect", "protocolMapper": "oidc-audience-mapper",
                                    "config": {"included.client.audience": audience_name(a), "access.token.claim": "true"}}))
                    .collect();
            }
            rep
        })
        .collect();
    clients.extend((0..gen.audiences.max(1)).map(|a| {
        json!({"id": uuid(2, a), "clientId": audience_name(a), "enabled": true, "publicClient": false, "bearerOnly": true, "protocol": "openid-connect", "attributes": {}})
    }));
    clients.push(json!({"id": uuid(3, 0), "clientId": PORTAL, "name": "Web portal", "enabled": true, "publicClient": true, "protocol": "openid-connect", "attributes": {}}));
    let users: Vec<serde_json::Value> = (0..gen.users.max(1)).map(|u| json!({"id": user_id(u), "username": username(u), "enabled": true, "attributes": {}})).collect();
    let write = |name: &str, v: &serde_json::Value| std::fs::write(dir.join(name), serde_json::to_vec(v)?);
    write("realms.json", &json!([{"id": REALM_ID, "realm": REALM_NAME, "enabled": true}]))?;
    write(&format!("{REALM_NAME}.clients.json"), &serde_json::Value::Array(clients))?;
    write(&format!("{REALM_NAME}.users.json"), &serde_json::Value::Array(users))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_body, Context, Decoded, DecodeOptions, Format};
    use crate::directory::Directory;
    use crate::event::Origin;

    #[tokio::test]
    async fn targets_are_plain_http_on_loopback_with_the_host_header_of_the_url() {
        let t = Target::parse("http://127.0.0.1:8787/v1/events?x=1").await.unwrap();
        assert_eq!((t.addr.to_string().as_str(), t.host.to_str().unwrap(), t.path.to_string().as_str()), ("127.0.0.1:8787", "127.0.0.1:8787", "/v1/events?x=1"));
        let t = Target::parse("http://[::1]/hook").await.unwrap();
        assert_eq!((t.addr.port(), t.host.to_str().unwrap(), t.path.to_string().as_str()), (80, "[::1]", "/hook"));
        assert!(Target::parse("http://localhost:9/").await.unwrap().addr.ip().is_loopback());
        let e = Target::parse("https://127.0.0.1:8787/v1/events").await.err().unwrap().to_string();
        assert!(e.contains("plain HTTP"), "{e}");
    }

    /// Nobody listening: every request is an error with status 0 (no answer), none is accepted, and
    /// the run ends instead of hanging.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_target_that_does_not_answer_gives_errors_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // closed again
        let o = DriveOptions { target: format!("http://127.0.0.1:{port}/v1/events"), batch: 3, connections: 2, count: 30, max_duration: Duration::from_secs(60), rate: 0, secret: None };
        let rep = drive(GenOptions::default(), o).await.unwrap();
        assert_eq!((rep.requests, rep.errors, rep.events_sent, rep.events_accepted), (10, 10, 30, 0), "{rep:?}");
        assert_eq!(rep.status_counts.get(&0), Some(&10));
        assert_eq!(rep.events_per_sec, 0.0);
    }

    /// A server that answers `Connection: close` (one request per connection): the tool opens a new
    /// connection for the next request instead of failing it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_closes_after_each_answer_gets_a_new_connection_each_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Headers, then as many body bytes as Content-Length says.
                    loop {
                        let n = sock.read(&mut buf).await.unwrap();
                        assert!(n > 0, "request cut short");
                        req.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&req).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len: usize = text.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())).unwrap();
                            if req.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    sock.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}").await.unwrap();
                    sock.shutdown().await.unwrap();
                });
            }
        });
        let o = DriveOptions { target: format!("http://127.0.0.1:{port}/v1/events"), batch: 2, connections: 1, count: 20, max_duration: Duration::from_secs(60), rate: 0, secret: None };
        let rep = drive(GenOptions::default(), o).await.unwrap();
        assert_eq!((rep.requests, rep.errors, rep.events_accepted), (10, 0, 20), "{rep:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 10, "one connection per request");
    }

    /// Everything the generated events name is in the generated directory: the exchanger, the
    /// subject, every audience, the subject token's client; V2 exchangers grant their audiences.
    #[test]
    fn the_generated_directory_knows_every_client_user_and_audience_the_events_name() {
        let gen = GenOptions { clients: 40, users: 300, audiences: 12, error_share: 0.1, ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        write_directory(&gen, dir.path()).unwrap();
        let directory = Directory::load_snapshot(dir.path()).unwrap();
        let realm = directory.realm(REALM_NAME).expect("realm");
        let mut body = Vec::new();
        write_file(gen, 2000, &mut body).unwrap();
        let opts = DecodeOptions::default();
        let ctx = Context { opts: &opts, tz: chrono_tz::UTC, deliveries: None, lines_may_be_noise: false };
        let mut items = Vec::new();
        decode_body(&body, Format::Auto, &Origin::default(), &ctx, &mut items);
        assert_eq!(items.len(), 2000);
        let (mut v2_granted, mut users) = (0, 0);
        for item in &items {
            let Decoded::Event(e) = &item.decoded else { panic!("{:?}", item.decoded) };
            assert_eq!(e.realm.id.as_deref(), Some(REALM_ID));
            let exchanger = realm.client(e.client_id.as_deref().unwrap()).expect("exchanger in the directory");
            let te = e.token_exchange.as_ref().unwrap();
            for a in &te.audiences {
                assert!(realm.client(a).is_some(), "audience {a}");
                if exchanger.standard_token_exchange_enabled() {
                    assert!(exchanger.audience_mapper_audiences().iter().any(|x| x == a), "{:?} does not grant {a}", exchanger.client_id);
                    v2_granted += 1;
                }
            }
            if let Some(stc) = &te.subject_token_client_id {
                assert!(realm.client(stc).is_some(), "{stc}");
            }
            if let Some(u) = &e.subject.id {
                assert!(realm.user(u).is_some(), "user {u}");
                users += 1;
            }
        }
        assert!(v2_granted > 1000 && users > 1500, "{v2_granted} V2 audiences, {users} users checked");
    }
}
