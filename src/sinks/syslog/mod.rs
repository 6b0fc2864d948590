//! The syslog sink: events as RFC 5424 (default) or RFC 3164 messages carrying JSON, CEF or LEEF,
//! over UDP, TCP (RFC 6587 octet counting, or LF framing for receivers that need it), TLS (RFC 5425)
//! or RELP (rsyslog's acknowledged transport).
//!
//! What "delivered" means depends on the transport, and the docs say so plainly:
//! - **RELP**: the receiver answered `200 OK` for the message. Messages without an answer when the
//!   connection drops are re-sent (at least once; duplicates carry the same event id).
//! - **TCP / TLS**: the bytes were handed to the kernel. If the receiver dies, what sat in the socket
//!   buffers and in flight is lost without any signal (the "loss window"); kcaudit notices the dead
//!   connection on the next write or by the peer's FIN, and reconnects. `tests/syslog.rs` measures it.
//! - **UDP**: sent; no confirmation at all.

pub mod relp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::route::RouteFilter;
use super::tls::TlsOptions;
use super::{BatchOptions, BoxFuture, RetryOptions, Sink, SinkError, WriteReport};
use crate::config::Problem;
use crate::event::AuditEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Relp,
}

/// Framing on TCP (RFC 6587). TLS always uses octet counting (RFC 5425); RELP has its own frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// `LEN SP MSG`: safe for any message content (the default).
    OctetCounting,
    /// `MSG LF`: for receivers that only know this; kcaudit's messages never contain a raw LF.
    NonTransparent,
}

/// The syslog message format (`rfc5424` or `rfc3164`).
pub use crate::sinks::encode::syslog::Framing as MessageFormat;
/// What the message carries: `json` (the canonical event), `cef`, `leef`, `ocsf` (the event record,
/// then one Detection Finding message per finding) or `text` (a one-line summary).
pub use crate::sinks::encode::syslog::Payload;

/// `[sinks.syslog]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogOptions {
    pub enabled: bool,
    pub transport: Transport,
    /// `host:port` of the receiver.
    pub address: String,
    /// Name checked against the receiver's certificate with `transport = "tls"` (default: the host
    /// part of `address`).
    pub server_name: Option<String>,
    pub framing: Framing,
    pub format: MessageFormat,
    pub payload: Payload,
    /// Syslog facility (default 10, security/authorization "authpriv").
    pub facility: u8,
    /// HOSTNAME field (default: this machine's name).
    pub hostname: Option<String>,
    /// APP-NAME / TAG.
    pub app_name: String,
    /// LEEF attribute delimiter (one character).
    pub leef_delimiter: char,
    /// Longest message; longer ones are dead-lettered with the reason (UDP receivers truncate
    /// silently otherwise; rsyslog's default maxMessageSize is 8 KiB).
    pub max_message_bytes: usize,
    /// RELP: messages sent before waiting for answers.
    pub relp_window: usize,
    /// Connect and write time limit, in milliseconds.
    pub timeout_ms: u64,
    pub tls: TlsOptions,
    pub route: RouteFilter,
    pub batch: BatchOptions,
    pub retry: RetryOptions,
}

impl Default for SyslogOptions {
    fn default() -> Self {
        SyslogOptions {
            enabled: false,
            transport: Transport::Tcp,
            address: "127.0.0.1:514".into(),
            server_name: None,
            framing: Framing::OctetCounting,
            format: MessageFormat::Rfc5424,
            payload: Payload::Json,
            facility: 10,
            hostname: None,
            app_name: "kcaudit".into(),
            leef_delimiter: '^',
            max_message_bytes: 8192,
            relp_window: 128,
            timeout_ms: 10_000,
            tls: TlsOptions::default(),
            route: RouteFilter::default(),
            batch: BatchOptions { max_events: 500, max_wait_ms: 50, queue_capacity: 4096 },
            retry: RetryOptions::default(),
        }
    }
}

impl SyslogOptions {
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        let err = |key: &str, message: String| Problem { key: format!("sinks.syslog.{key}"), message, is_error: true };
        if host_port(&self.address).is_none() {
            p.push(err("address", format!("{:?} is not host:port", self.address)));
        }
        if self.facility > 23 {
            p.push(err("facility", "syslog facilities are 0..=23".into()));
        }
        if self.transport == Transport::Tls && self.framing == Framing::NonTransparent {
            p.push(err("framing", "RFC 5425 (syslog over TLS) requires octet counting".into()));
        }
        let leef = crate::sinks::encode::leef::LeefOptions { delimiter: self.leef_delimiter, ..Default::default() };
        if let Err(e) = leef.check() {
            p.push(err("leef_delimiter", e));
        }
        if !self.tls.is_default() {
            if let Err(e) = self.tls.client_config() {
                p.push(err("tls", e));
            }
        }
        p
    }
}

fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.trim_matches(|c| c == '[' || c == ']').to_string(), port.parse().ok()?))
}

/// Builds the message bytes (without transport framing) for one event; one event may give several
/// messages (OCSF findings).
pub type Formatter = Arc<dyn Fn(&AuditEvent) -> Vec<Vec<u8>> + Send + Sync>;

/// The formatter `opts` describe: the header and payload encoders of [`crate::sinks::encode`].
pub fn formatter(opts: &SyslogOptions) -> Formatter {
    use crate::sinks::encode::{leef::LeefOptions, syslog as enc};
    let hostname = opts.hostname.clone().unwrap_or_else(crate::sinks::clickhouse::instance_name);
    let header = enc::SyslogHeader { facility: opts.facility, hostname, app_name: opts.app_name.clone(), procid: std::process::id().to_string(), msgid: String::new() };
    let f = enc::SyslogFormat {
        header,
        framing: opts.format,
        payload: opts.payload,
        leef: LeefOptions { delimiter: opts.leef_delimiter, ..Default::default() },
        // The 1024-byte cap of RFC 3164 is for UDP; stream receivers take the configured maximum.
        rfc3164_max_bytes: Some(if opts.transport == Transport::Udp { enc::RFC3164_MAX_BYTES } else { opts.max_message_bytes }),
        ..Default::default()
    };
    Arc::new(move |e: &AuditEvent| enc::messages(&f, e).into_iter().map(String::into_bytes).collect())
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

enum Conn {
    Udp(tokio::net::UdpSocket),
    Stream(Box<dyn Stream>),
    Relp(relp::Session<Box<dyn Stream>>),
}

/// Writes events to a syslog receiver.
pub struct SyslogSink {
    name: String,
    opts: SyslogOptions,
    format: Formatter,
    conn: Option<Conn>,
}

fn transient(what: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Transient(format!("{what}: {e}"))
}

impl SyslogSink {
    pub fn new(name: &str, opts: &SyslogOptions, format: Formatter) -> anyhow::Result<SyslogSink> {
        let problems: Vec<String> = opts.problems().iter().filter(|p| p.is_error).map(|p| p.to_string()).collect();
        anyhow::ensure!(problems.is_empty(), "invalid [sinks.syslog]: {}", problems.join("; "));
        Ok(SyslogSink { name: name.to_string(), opts: opts.clone(), format, conn: None })
    }

    async fn resolve(&self) -> Result<SocketAddr, SinkError> {
        tokio::net::lookup_host(&self.opts.address)
            .await
            .map_err(|e| transient(&self.opts.address, e))?
            .next()
            .ok_or_else(|| SinkError::Transient(format!("{}: no address", self.opts.address)))
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        let addr = self.resolve().await?;
        let limit = Duration::from_millis(self.opts.timeout_ms);
        let tcp = || async {
            let s = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| SinkError::Transient(format!("{addr}: connect timed out")))?
                .map_err(|e| transient(&addr.to_string(), e))?;
            let _ = s.set_nodelay(true);
            Ok::<_, SinkError>(s)
        };
        let tls = |s: tokio::net::TcpStream| async move {
            let config = self.opts.tls.client_config().map_err(SinkError::Permanent)?;
            let host = self.opts.server_name.clone().or_else(|| host_port(&self.opts.address).map(|h| h.0)).unwrap_or_default();
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| SinkError::Permanent(format!("server name {host:?}: {e}")))?;
            let s = tokio::time::timeout(limit, tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, s))
                .await
                .map_err(|_| SinkError::Transient(format!("{addr}: TLS handshake timed out")))?
                .map_err(|e| transient(&format!("{addr}: TLS handshake"), e))?;
            Ok::<Box<dyn Stream>, SinkError>(Box::new(s))
        };
        Ok(match self.opts.transport {
            Transport::Udp => {
                let local: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse().expect("valid") } else { "[::]:0".parse().expect("valid") };
                let s = tokio::net::UdpSocket::bind(local).await.map_err(|e| transient("udp bind", e))?;
                s.connect(addr).await.map_err(|e| transient(&addr.to_string(), e))?;
                Conn::Udp(s)
            }
            Transport::Tcp => Conn::Stream(Box::new(tcp().await?)),
            Transport::Tls => Conn::Stream(tls(tcp().await?).await?),
            Transport::Relp => {
                let stream: Box<dyn Stream> = if self.opts.tls.is_default() { Box::new(tcp().await?) } else { tls(tcp().await?).await? };
                let session = tokio::time::timeout(limit, relp::Session::open(stream))
                    .await
                    .map_err(|_| SinkError::Transient(format!("{addr}: RELP open timed out")))?
                    .map_err(|e| transient(&addr.to_string(), e))?;
                Conn::Relp(session)
            }
        })
    }

}

/// Frame one message for a stream transport (RFC 6587 octet counting, or LF).
pub fn frame(transport: Transport, framing: Framing, msg: &[u8]) -> Vec<u8> {
    {
        match (transport, framing) {
            (Transport::Tcp, Framing::NonTransparent) => {
                let mut v = msg.to_vec();
                v.push(b'\n');
                v
            }
            _ => {
                let mut v = format!("{} ", msg.len()).into_bytes();
                v.extend_from_slice(msg);
                v
            }
        }
    }
}

impl SyslogSink {
    async fn write_batch(&mut self, events: &[Arc<AuditEvent>]) -> Result<WriteReport, SinkError> {
        let mut report = WriteReport::default();
        // Build every message first; an event whose message cannot be sent is dead-lettered alone.
        let mut messages: Vec<Vec<u8>> = Vec::with_capacity(events.len());
        let mut owner: Vec<usize> = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            for m in (self.format)(e) {
                if m.len() > self.opts.max_message_bytes {
                    report.rejected.push((i, format!("the syslog message is {} bytes, over max_message_bytes = {}", m.len(), self.opts.max_message_bytes)));
                    break;
                }
                messages.push(m);
                owner.push(i);
            }
        }
        let refused: std::collections::HashSet<usize> = report.rejected.iter().map(|(i, _)| *i).collect();
        let keep: Vec<usize> = (0..messages.len()).filter(|k| !refused.contains(&owner[*k])).collect();
        if keep.is_empty() {
            return Ok(report);
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let limit = Duration::from_millis(self.opts.timeout_ms);
        let outcome: Result<(), SinkError> = match self.conn.as_mut().expect("connected above") {
            Conn::Udp(s) => {
                for &k in &keep {
                    if let Err(e) = s.send(&messages[k]).await {
                        self.conn = None;
                        return Err(transient("udp send", e));
                    }
                }
                Ok(())
            }
            Conn::Stream(s) => {
                let mut buf = Vec::with_capacity(keep.iter().map(|&k| messages[k].len() + 8).sum());
                for &k in &keep {
                    buf.extend_from_slice(&frame(self.opts.transport, self.opts.framing, &messages[k]));
                }
                let w = async {
                    peer_alive(s).await?;
                    s.write_all(&buf).await?;
                    s.flush().await
                };
                match tokio::time::timeout(limit, w).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(transient(&format!("{} write", self.opts.address), e)),
                    Err(_) => Err(SinkError::Transient(format!("{}: write timed out", self.opts.address))),
                }
            }
            Conn::Relp(session) => {
                let batch: Vec<Vec<u8>> = keep.iter().map(|&k| messages[k].clone()).collect();
                let out = match tokio::time::timeout(limit * 4, session.send_all(&batch, self.opts.relp_window)).await {
                    Ok(out) => out,
                    Err(_) => relp::Outcome { unanswered: (0..batch.len()).collect(), error: Some("RELP answers timed out".into()), ..Default::default() },
                };
                for (j, why) in &out.refused {
                    report.rejected.push((owner[keep[*j]], why.clone()));
                }
                if !out.unanswered.is_empty() {
                    let mut retry: Vec<usize> = out.unanswered.iter().map(|&j| owner[keep[j]]).collect();
                    retry.sort_unstable();
                    retry.dedup();
                    self.conn = None;
                    if out.acked.is_empty() && out.refused.is_empty() {
                        return Err(SinkError::Transient(out.error.unwrap_or_else(|| "RELP session lost".into())));
                    }
                    report.retry = retry;
                    report.error = out.error;
                }
                Ok(())
            }
        };
        if let Err(e) = outcome {
            self.conn = None;
            return Err(e);
        }
        Ok(report)
    }
}

/// Before writing on a reused stream, notice a receiver that has gone away (its FIN or RST is
/// waiting to be read): writing first would hand the batch to a dead socket and lose it.
async fn peer_alive(s: &mut Box<dyn Stream>) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(0), s.read(&mut b)).await {
        Err(_) => Ok(()), // nothing to read: alive as far as we can tell
        Ok(Ok(0)) => Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the receiver closed the connection")),
        Ok(Ok(_)) => Ok(()), // syslog receivers do not talk; ignore
        Ok(Err(e)) => Err(e),
    }
}

impl Sink for SyslogSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn accepts(&self, event: &AuditEvent) -> bool {
        self.opts.route.matches(event)
    }

    fn write<'a>(&'a mut self, events: &'a [Arc<AuditEvent>]) -> BoxFuture<'a, Result<WriteReport, SinkError>> {
        Box::pin(self.write_batch(events))
    }

    fn close<'a>(&'a mut self) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            match self.conn.take() {
                Some(Conn::Relp(s)) => s.close().await,
                Some(Conn::Stream(mut s)) => {
                    let _ = s.shutdown().await;
                }
                _ => {}
            }
            Ok(())
        })
    }
}
