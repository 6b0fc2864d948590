//! Real services for the integration tests: a ClickHouse server (Debian's package, started per test
//! in a temp dir on free loopback ports) and the chdb engine (Python, in the venv `scripts/test.sh`
//! creates).
//!
//! `scripts/test.sh` installs both and sets `KCAUDIT_REQUIRE_SERVICES=1`: then a missing service fails
//! the test. A bare `cargo test` on a machine without them prints a loud notice and skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether service tests must run (set by `scripts/test.sh`).
pub fn services_required() -> bool {
    std::env::var("KCAUDIT_REQUIRE_SERVICES").map(|v| v == "1").unwrap_or(false)
}

/// Return `None` (skip) or panic (required), with the reason.
fn missing<T>(what: &str) -> Option<T> {
    if services_required() {
        panic!("{what} (scripts/test.sh installs it; KCAUDIT_REQUIRE_SERVICES=1 makes this a failure)");
    }
    eprintln!("\n*** SKIPPED: {what}. Run scripts/test.sh to install the services and run this test. ***\n");
    None
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]).map(|d| d.join(bin)).find(|f| f.is_file()))
}

/// A loopback port for a child process (kcaudit, ClickHouse, rsyslog, tansu) to listen on. Taken
/// below Linux's ephemeral range (32768-60999), from a sequence of this process: a port found by
/// binding port 0 is released before the child binds it, and meanwhile the kernel may give the same
/// port to another test's bind to port 0 (CI saw a spool test's kcaudit fail with "Address already
/// in use" while the other test's destination, on that port, received its events).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Processes started together (test binaries) begin at different places in the span.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(7_919);
    for _ in 0..SPAN {
        let port = (FIRST + offset.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + SPAN);
}

/// Password of the extra `kcaudit` user the test server has (the `default` user has none).
pub const CH_PASSWORD: &str = "kcaudit-test-pw";

/// A private ClickHouse server.
pub struct ClickHouseServer {
    pub dir: tempfile::TempDir,
    pub http_port: u16,
    /// Serves HTTPS only when started with [`ClickHouseServer::start_tls`].
    pub https_port: u16,
    binary: PathBuf,
    child: Option<Child>,
}

/// Certificates made for a TLS test: a CA, a server certificate for 127.0.0.1, a client certificate.
pub struct TestPki {
    pub dir: tempfile::TempDir,
}

impl TestPki {
    /// Generate with the `openssl` command line (part of every Debian install).
    pub fn generate() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir.path()).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=kcaudit test CA"]);
        for (name, cn, ext) in [("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"), ("client", "kcaudit", "extendedKeyUsage=clientAuth\n")] {
            std::fs::write(dir.path().join(format!("{name}.ext")), ext).unwrap();
            run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={cn}")]);
            run(&["x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", &format!("{name}.crt"), "-days", "30", "-extfile", &format!("{name}.ext")]);
        }
        TestPki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

impl ClickHouseServer {
    /// Start a server, or skip/fail when none is installed.
    pub fn start() -> Option<ClickHouseServer> {
        Self::start_with(None)
    }

    /// Start a server that also serves HTTPS (port in `https_port`) with `pki`'s server certificate
    /// and requires a client certificate signed by its CA.
    pub fn start_tls(pki: &TestPki) -> Option<ClickHouseServer> {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&TestPki>) -> Option<ClickHouseServer> {
        let binary = match std::env::var_os("KCAUDIT_CLICKHOUSE_SERVER").map(PathBuf::from).or_else(|| which("clickhouse-server")) {
            Some(b) => b,
            None => return missing("clickhouse-server is not installed"),
        };
        let etc = Path::new("/etc/clickhouse-server");
        if !etc.join("config.xml").is_file() {
            return missing("/etc/clickhouse-server/config.xml is missing (install the clickhouse-server package)");
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let http_port = free_port();
        let https_port = free_port();
        // The package's https_port sits in a comment: add ours next to http_port.
        let https = if pki.is_some() { format!("<https_port>{https_port}</https_port>") } else { String::new() };
        let mut config = std::fs::read_to_string(etc.join("config.xml"))
            .unwrap()
            .replace("/var/lib/clickhouse/", &format!("{root}/data/"))
            .replace("/var/log/clickhouse-server/", &format!("{root}/log/"))
            .replace("<listen_host>::1</listen_host>", "")
            .replace("<http_port>8123</http_port>", &format!("<http_port>{http_port}</http_port>{https}"))
            .replace("<tcp_port>9000</tcp_port>", &format!("<tcp_port>{}</tcp_port>", free_port()))
            .replace("<tcp_port_secure>9440</tcp_port_secure>", "")
            .replace("<interserver_http_port>9009</interserver_http_port>", &format!("<interserver_http_port>{}</interserver_http_port>", free_port()));
        if let Some(p) = pki {
            config = config
                .replace("/etc/clickhouse-server/server.crt", &p.path("server.crt").display().to_string())
                .replace("/etc/clickhouse-server/server.key", &p.path("server.key").display().to_string())
                .replace("<dhParamsFile>/etc/clickhouse-server/dhparam.pem</dhParamsFile>", "")
                .replacen("<verificationMode>none</verificationMode>", &format!("<verificationMode>strict</verificationMode><caConfig>{}</caConfig>", p.path("ca.crt").display()), 1);
        }
        let users = std::fs::read_to_string(etc.join("users.xml")).unwrap().replacen(
            "<users>",
            &format!("<users><kcaudit><password>{CH_PASSWORD}</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></kcaudit>"),
            1,
        );
        std::fs::write(dir.path().join("config.xml"), config).unwrap();
        std::fs::write(dir.path().join("users.xml"), users).unwrap();
        let mut s = ClickHouseServer { dir, http_port, https_port, binary, child: None };
        s.resume();
        Some(s)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// (Re)start the server process on the same data and ports, and wait until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("stdout.log")).unwrap();
        let child = Command::new(&self.binary)
            .arg(format!("--config-file={}", self.dir.path().join("config.xml").display()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start clickhouse-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.query("SELECT 1").map(|r| r.trim() == "1").unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("clickhouse-server did not answer within 60 s; see {}", self.dir.path().join("log").display());
    }

    /// Kill the server the hard way (SIGKILL: no flush, no goodbye), as a crash or power loss would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run one query over HTTP as `default`; the body on 200, the error text otherwise.
    pub fn query(&self, sql: &str) -> Result<String, String> {
        http_post(self.http_port, sql)
    }

    pub fn exec(&self, sql: &str) {
        if let Err(e) = self.query(sql) {
            panic!("{sql}\nfailed: {e}");
        }
    }

    /// The server process id (for CPU accounting in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Create `database` and an events table this (old) server supports: see [`legacy_events_ddl`].
    pub fn create_legacy_events_table(&self, database: &str, table: &str) {
        self.exec(&format!("CREATE DATABASE IF NOT EXISTS {database}"));
        self.exec(&legacy_events_ddl(database, table));
        self.exec(&legacy_dead_letters_ddl(database).replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"));
    }

    pub fn count(&self, sql: &str) -> u64 {
        self.query(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).trim().parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// The columns of the first table a shipped migration creates, in types an 18.16 server has that
/// take the same RowBinary bytes (Int64 milliseconds for DateTime64, UInt8 for Bool, String for
/// LowCardinality(String)), with `details` as a JSON string (the sink's encoding without Map).
fn legacy_columns(migration: usize) -> Vec<String> {
    let sql = kcaudit::sinks::clickhouse::schema::MIGRATIONS[migration].sql;
    let body = &sql[sql.find("\n(\n").unwrap() + 3..sql.find("\n)\n").unwrap()];
    let mut cols = Vec::new();
    for line in body.lines() {
        let line = line.trim().trim_end_matches(',');
        if line.is_empty() || line.starts_with("INDEX") || line.starts_with("--") {
            continue;
        }
        let (name, ty) = line.split_once(char::is_whitespace).unwrap();
        let ty = ty.trim().split(" CODEC(").next().unwrap();
        let ty = match ty {
            "Bool" => "UInt8".to_string(),
            "DateTime64(3, 'UTC')" => "Int64".to_string(),
            "Map(String, String)" => "String".to_string(),
            other => other.replace("LowCardinality(String)", "String"),
        };
        cols.push(format!("{name} {ty}"));
    }
    cols
}

/// The events table (migration 0001) for an 18.16 server.
pub fn legacy_events_ddl(database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE {database}.{table} ({}) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(toDateTime(intDiv(event_time, 1000))) ORDER BY (realm, client_id, event_time, event_id)",
        legacy_columns(0).join(", ")
    )
}

/// The dead-letter table (migration 0004) for an 18.16 server.
pub fn legacy_dead_letters_ddl(database: &str) -> String {
    format!("CREATE TABLE {database}.dead_letters ({}) ENGINE = MergeTree() ORDER BY (dead_lettered_at, event_id)", legacy_columns(3).join(", "))
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tiny blocking HTTP/1.0 POST (the tests' side channel to the server; the sink under test uses
/// the real client).
fn http_post(port: u16, body: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    write!(s, "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP response: {text}"))?;
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(body.to_string())
    }
}

/// The chdb Python (from `KCAUDIT_CHDB_PYTHON`, or the venv `scripts/test.sh` makes), or skip/fail.
pub fn chdb_python() -> Option<PathBuf> {
    let candidates = std::env::var_os("KCAUDIT_CHDB_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/kcaudit/venv-chdb/bin/python")));
    for p in candidates {
        if p.is_file() {
            return Some(p);
        }
    }
    missing("the chdb venv is missing (KCAUDIT_CHDB_PYTHON or ~/.cache/kcaudit/venv-chdb)")
}

/// The result of one chdb step.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StepResult {
    pub ok: bool,
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub error: String,
}

/// Run SQL steps `(sql, format)` in one chdb session whose databases live in `path`.
pub fn chdb(python: &Path, path: &Path, steps: &[(String, &str)]) -> Vec<StepResult> {
    use std::io::Write;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chdb/run_steps.py");
    let job = serde_json::json!({
        "path": path.display().to_string(),
        "steps": steps.iter().map(|(sql, fmt)| serde_json::json!({"sql": sql, "format": fmt})).collect::<Vec<_>>(),
    });
    let mut child = Command::new(python).arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run chdb python");
    child.stdin.take().unwrap().write_all(job.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "chdb runner failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("chdb runner output: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A private rsyslog (Debian's rsyslog, rsyslog-gnutls, rsyslog-relp) on free loopback ports with
/// one input per transport, each writing the raw messages it receives (`%rawmsg%`, one per line)
/// to its own file: `udp.log`, `tcp.log` (imptcp, octet counting or LF), `tls.log` (imtcp with
/// gtls, RFC 5425) and `relp.log` (imrelp).
pub struct Rsyslog {
    pub dir: tempfile::TempDir,
    pub udp: u16,
    pub tcp: u16,
    pub tls: u16,
    pub relp: u16,
    child: Option<Child>,
}

impl Rsyslog {
    pub fn start(pki: &TestPki) -> Option<Rsyslog> {
        let Some(bin) = std::env::var_os("KCAUDIT_RSYSLOGD").map(PathBuf::from).or_else(|| which("rsyslogd")) else {
            return missing("rsyslogd is not installed");
        };
        // Debian keeps the modules in /usr/lib/<triplet>/rsyslog.
        let module_dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib").map(|d| d.flatten().map(|e| e.path().join("rsyslog")).chain([PathBuf::from("/usr/lib/rsyslog")]).collect()).unwrap_or_default();
        for module in ["imrelp.so", "lmnsd_gtls.so"] {
            if !module_dirs.iter().any(|d| d.join(module).is_file()) {
                return missing(&format!("rsyslog's {module} is missing (packages rsyslog-relp, rsyslog-gnutls)"));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let (udp, tcp, tls, relp) = (free_port(), free_port(), free_port(), free_port());
        // A long main-queue shutdown timeout: a stopped rsyslog writes out what it acknowledged.
        let conf = format!(
            r#"main_queue(queue.timeoutShutdown="20000")
global(workDirectory="{d}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{crt}" defaultNetstreamDriverKeyFile="{key}")
module(load="imudp")
module(load="imptcp")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
module(load="imrelp")
template(name="raw" type="string" string="%rawmsg%\n")
input(type="imudp" port="{udp}" address="127.0.0.1" ruleset="udp")
input(type="imptcp" port="{tcp}" address="127.0.0.1" ruleset="tcp")
input(type="imtcp" port="{tls}" address="127.0.0.1" ruleset="tls")
input(type="imrelp" port="{relp}" address="127.0.0.1" ruleset="relp")
ruleset(name="udp") {{ action(type="omfile" file="{d}/udp.log" template="raw") }}
ruleset(name="tcp") {{ action(type="omfile" file="{d}/tcp.log" template="raw") }}
ruleset(name="tls") {{ action(type="omfile" file="{d}/tls.log" template="raw") }}
ruleset(name="relp") {{ action(type="omfile" file="{d}/relp.log" template="raw") }}
"#,
            ca = pki.path("ca.crt").display(),
            crt = pki.path("server.crt").display(),
            key = pki.path("server.key").display(),
        );
        std::fs::write(dir.path().join("rsyslog.conf"), conf).unwrap();
        let mut r = Rsyslog { dir, udp, tcp, tls, relp, child: None };
        r.binary_start(&bin);
        Some(r)
    }

    fn binary_start(&mut self, bin: &Path) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("rsyslogd.out")).unwrap();
        let child = Command::new(bin)
            .args(["-n", "-f"])
            .arg(d.join("rsyslog.conf"))
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start rsyslogd");
        self.child = Some(child);
        // Ready when every TCP port accepts.
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [self.tcp, self.tls, self.relp] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "rsyslogd did not listen on {port}: {}", std::fs::read_to_string(d.join("rsyslogd.out")).unwrap_or_default());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Stop (SIGKILL: like a crash, nothing flushed to senders).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop gracefully (SIGTERM): rsyslog finishes writing what it has accepted, then exits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// Start again on the same ports and files.
    pub fn resume(&mut self) {
        assert!(self.child.is_none());
        let bin = std::env::var_os("KCAUDIT_RSYSLOGD").map(PathBuf::from).or_else(|| which("rsyslogd")).unwrap();
        self.binary_start(&bin);
    }

    /// The messages one input wrote so far (one per line).
    pub fn lines(&self, input: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(format!("{input}.log"))).unwrap_or_default().lines().map(String::from).collect()
    }

    /// Wait until `input` has at least `n` messages (or `secs` pass); returns them.
    pub fn wait_for(&self, input: &str, n: usize, secs: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let l = self.lines(input);
            if l.len() >= n || Instant::now() > deadline {
                return l;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Kafka-protocol broker: `tansu` (crates.io), in-memory storage, on a free loopback port.
/// `scripts/test.sh` builds it once into `~/.cache/kcaudit/tansu`.
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Option<Broker> {
        let bin = std::env::var_os("KCAUDIT_TANSU")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/kcaudit/tansu/bin/tansu")))
            .filter(|p| p.is_file());
        let Some(bin) = bin else { return missing("the tansu broker is not built (KCAUDIT_TANSU or ~/.cache/kcaudit/tansu/bin/tansu)") };
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Broker { port, child: Some(child) })
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
