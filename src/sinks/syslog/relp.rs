//! A RELP client (the Reliable Event Logging Protocol of rsyslog/librelp): syslog messages with a
//! per-message acknowledgement, so delivery to a syslog receiver can be confirmed.
//!
//! Wire format (librelp `doc/relp.html`): every frame is `TXNR SP COMMAND SP DATALEN [SP DATA] LF`,
//! DATALEN the byte length of DATA (no SP and no DATA when 0). The client opens with
//! `1 open N relp_version=0\nrelp_software=...\ncommands=syslog`, sends `txnr syslog N <message>`,
//! and the server answers each transaction with `txnr rsp N 200 OK` (or another status); a server
//! going down announces `0 serverclose 0`. Transactions may be pipelined up to a window; the answer
//! names the txnr it belongs to. There is no crate for this, so it lives here, small and tested
//! against a real rsyslog `imrelp`.

use std::collections::HashMap;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// One parsed RELP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub txnr: u64,
    pub command: String,
    pub data: Vec<u8>,
}

/// Encode a frame.
pub fn encode(txnr: u64, command: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    out.extend_from_slice(format!("{txnr} {command} {}", data.len()).as_bytes());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
    out
}

/// Read one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> std::io::Result<Option<Frame>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("RELP: {m}"));
    // Header: TXNR SP COMMAND SP DATALEN, then SP or LF.
    let mut head = Vec::new();
    let mut fields = 0;
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return if head.is_empty() { Ok(None) } else { Err(bad("connection closed inside a frame")) };
        }
        if b[0] == b' ' {
            fields += 1;
            if fields == 3 {
                break;
            }
        } else if b[0] == b'\n' && fields == 2 {
            // DATALEN 0 frames end right after the length.
            head.push(b' ');
            let f = parse_head(&head).ok_or_else(|| bad("malformed header"))?;
            if f.2 != 0 {
                return Err(bad("missing data"));
            }
            return Ok(Some(Frame { txnr: f.0, command: f.1, data: Vec::new() }));
        }
        head.push(b[0]);
        if head.len() > 64 {
            return Err(bad("header too long"));
        }
    }
    let (txnr, command, len) = parse_head(&head).ok_or_else(|| bad("malformed header"))?;
    if len > 128 * 1024 * 1024 {
        return Err(bad("frame too large"));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    let mut trailer = Vec::new();
    r.read_until(b'\n', &mut trailer).await?;
    Ok(Some(Frame { txnr, command, data }))
}

fn parse_head(head: &[u8]) -> Option<(u64, String, usize)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut it = text.split(' ');
    let txnr = it.next()?.parse().ok()?;
    let command = it.next()?.to_string();
    let len = it.next()?.trim().parse().ok()?;
    Some((txnr, command, len))
}

/// The status of a `rsp` frame: (code, text).
pub fn response_status(data: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(data);
    let first = text.lines().next().unwrap_or("");
    let (code, rest) = first.split_once(' ').unwrap_or((first, ""));
    (code.parse().unwrap_or(0), rest.to_string())
}

/// What happened to each message of a send.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Indexes the server answered 200.
    pub acked: Vec<usize>,
    /// Indexes the server refused, with its status line.
    pub refused: Vec<(usize, String)>,
    /// Indexes without an answer (connection lost): their fate is unknown, so they must be re-sent.
    pub unanswered: Vec<usize>,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

/// An open RELP session over any byte stream (TCP, or TLS for `imrelp` with `tls="on"`).
pub struct Session<S> {
    stream: BufReader<S>,
    next_txnr: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Open a session (the `open` handshake).
    pub async fn open(stream: S) -> std::io::Result<Session<S>> {
        let mut s = Session { stream: BufReader::new(stream), next_txnr: 1 };
        let offer = format!("relp_version=0\nrelp_software=kcaudit,{},https://github.com/kcaudit\ncommands=syslog", env!("CARGO_PKG_VERSION"));
        let txnr = s.txnr();
        s.stream.get_mut().write_all(&encode(txnr, "open", offer.as_bytes())).await?;
        s.stream.get_mut().flush().await?;
        match read_frame(&mut s.stream).await? {
            Some(f) if f.command == "rsp" && f.txnr == txnr => {
                let (code, text) = response_status(&f.data);
                if code != 200 {
                    return Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, format!("RELP open refused: {code} {text}")));
                }
                let offers = String::from_utf8_lossy(&f.data);
                if !offers.lines().any(|l| l.starts_with("commands=") && l.contains("syslog")) {
                    return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "RELP server does not offer the syslog command"));
                }
                Ok(s)
            }
            Some(f) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("RELP open: unexpected {} frame {}", f.command, f.txnr))),
            None => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "RELP server closed the connection during open")),
        }
    }

    fn txnr(&mut self) -> u64 {
        let t = self.next_txnr;
        // librelp wraps after 999,999,999 back to 1.
        self.next_txnr = if t >= 999_999_999 { 1 } else { t + 1 };
        t
    }

    /// Send `messages` with at most `window` unanswered at a time; returns each message's fate.
    /// After an error the session is unusable (drop it and open a new one).
    pub async fn send_all(&mut self, messages: &[Vec<u8>], window: usize) -> Outcome {
        let mut out = Outcome::default();
        let mut in_flight: HashMap<u64, usize> = HashMap::new();
        let mut next = 0usize;
        let window = window.max(1);
        let fail = |out: &mut Outcome, in_flight: &HashMap<u64, usize>, next: usize, e: String| {
            let mut lost: Vec<usize> = in_flight.values().copied().collect();
            lost.extend(next..messages.len());
            lost.sort_unstable();
            out.unanswered = lost;
            out.error = Some(e);
        };
        // A failed write does not end the exchange at once: answers already on their way (for
        // messages sent before the failure) are still read, so nothing acknowledged is re-sent.
        let mut write_error: Option<String> = None;
        while (next < messages.len() && write_error.is_none()) || !in_flight.is_empty() {
            let mut wrote = false;
            while write_error.is_none() && next < messages.len() && in_flight.len() < window {
                let txnr = self.txnr();
                match self.stream.get_mut().write_all(&encode(txnr, "syslog", &messages[next])).await {
                    Ok(()) => {
                        in_flight.insert(txnr, next);
                        next += 1;
                        wrote = true;
                    }
                    Err(e) => write_error = Some(format!("RELP send failed: {e}")),
                }
            }
            if wrote {
                if let Err(e) = self.stream.get_mut().flush().await {
                    write_error.get_or_insert(format!("RELP send failed: {e}"));
                }
            }
            if in_flight.is_empty() {
                break;
            }
            match read_frame(&mut self.stream).await {
                Ok(Some(f)) if f.command == "rsp" => {
                    if let Some(i) = in_flight.remove(&f.txnr) {
                        let (code, text) = response_status(&f.data);
                        if code == 200 {
                            out.acked.push(i);
                        } else {
                            out.refused.push((i, format!("RELP {code} {text}")));
                        }
                    }
                }
                Ok(Some(f)) if f.command == "serverclose" => {
                    fail(&mut out, &in_flight, next, "the RELP server is closing the session (serverclose)".into());
                    return out;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    fail(&mut out, &in_flight, next, write_error.unwrap_or_else(|| "the RELP server closed the connection".into()));
                    return out;
                }
                Err(e) => {
                    fail(&mut out, &in_flight, next, write_error.unwrap_or_else(|| format!("RELP receive failed: {e}")));
                    return out;
                }
            }
        }
        if let Some(e) = write_error {
            fail(&mut out, &in_flight, next, e);
        }
        out
    }

    /// Close politely (best effort).
    pub async fn close(mut self) {
        let txnr = self.txnr();
        if self.stream.get_mut().write_all(&encode(txnr, "close", b"")).await.is_ok() && self.stream.get_mut().flush().await.is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), read_frame(&mut self.stream)).await;
        }
        let _ = self.stream.get_mut().shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_with_and_without_data() {
        assert_eq!(encode(2, "syslog", b"<86>1 - x"), b"2 syslog 9 <86>1 - x\n".to_vec());
        assert_eq!(encode(7, "close", b""), b"7 close 0\n".to_vec());
    }

    #[tokio::test]
    async fn frames_parse_including_zero_length_and_binary_data() {
        let wire = b"1 rsp 6 200 OK\n0 serverclose 0\n3 rsp 11 500 a\nb c d\n".to_vec();
        let mut r = BufReader::new(&wire[..]);
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), Frame { txnr: 1, command: "rsp".into(), data: b"200 OK".to_vec() });
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), Frame { txnr: 0, command: "serverclose".into(), data: vec![] });
        let f = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(f.data, b"500 a\nb c d".to_vec(), "DATALEN, not LF, delimits the data");
        assert_eq!(response_status(&f.data), (500, "a".into()));
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error_not_a_message() {
        let mut r = BufReader::new(&b"4 rsp 20 200 O"[..]);
        assert!(read_frame(&mut r).await.is_err());
    }

    /// A scripted server: answers the open, acks message 0, refuses 1, then drops the connection.
    #[tokio::test]
    async fn outcomes_distinguish_acked_refused_and_unanswered() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let mut r = BufReader::new(server);
            let open = read_frame(&mut r).await.unwrap().unwrap();
            assert_eq!(open.command, "open");
            r.get_mut().write_all(&encode(open.txnr, "rsp", b"200 OK\nrelp_version=0\ncommands=syslog")).await.unwrap();
            let m0 = read_frame(&mut r).await.unwrap().unwrap();
            let m1 = read_frame(&mut r).await.unwrap().unwrap();
            let _m2 = read_frame(&mut r).await.unwrap().unwrap();
            r.get_mut().write_all(&encode(m1.txnr, "rsp", b"500 queue full")).await.unwrap();
            r.get_mut().write_all(&encode(m0.txnr, "rsp", b"200 OK")).await.unwrap();
            drop(r);
        });
        let mut s = Session::open(client).await.unwrap();
        let out = s.send_all(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()], 3).await;
        srv.await.unwrap();
        assert_eq!(out.acked, vec![0]);
        assert_eq!(out.refused, vec![(1, "RELP 500 queue full".to_string())]);
        assert_eq!(out.unanswered, vec![2, 3], "in flight and never sent are both unknown");
        assert!(out.error.is_some());
    }
}
