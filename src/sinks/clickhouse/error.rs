//! What a ClickHouse failure means for the batch: retry it, fail over to another replica, or
//! dead-letter it with the server's words.
//!
//! The lesson from Vector (pipeline-anchors item 3): a missing table was classified "non-retriable"
//! and the batches were *dropped* while Kafka offsets moved on, 1.4M events lost with healthy-looking
//! lag. Here nothing is ever dropped: permanent errors go to the dead-letter store with the reason and
//! a metric, and the source's acknowledgement reports them as dead-lettered, never as delivered.

use crate::sinks::SinkError;

/// How to treat one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The server's exception code (`Code: N`), when it sent one.
    pub code: Option<i32>,
    /// Retry (with backoff) rather than dead-letter.
    pub transient: bool,
    /// The replica itself looks unhealthy (connection, timeout, 5xx without a code): try the next URL.
    pub fail_over: bool,
    /// One line for logs and dead letters.
    pub message: String,
}

impl Classified {
    pub fn into_sink_error(self) -> SinkError {
        if self.transient {
            SinkError::Transient(self.message)
        } else {
            SinkError::Permanent(self.message)
        }
    }
}

/// ClickHouse exception codes worth retrying: the server is busy, overloaded, restarting, or the
/// outcome of the insert is unknown. Everything else with a code is a property of the request (auth,
/// schema, data) that a retry cannot fix.
const TRANSIENT_CODES: &[(i32, &str)] = &[
    (159, "TIMEOUT_EXCEEDED"),
    (160, "TOO_SLOW"),
    (202, "TOO_MANY_SIMULTANEOUS_QUERIES"),
    (203, "NO_FREE_CONNECTION"),
    (209, "SOCKET_TIMEOUT"),
    (210, "NETWORK_ERROR"),
    (241, "MEMORY_LIMIT_EXCEEDED"),
    (242, "TABLE_IS_READ_ONLY"),
    (252, "TOO_MANY_PARTS"),
    (285, "TOO_FEW_LIVE_REPLICAS"),
    (286, "UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE"),
    (319, "UNKNOWN_STATUS_OF_INSERT"),
    (394, "QUERY_WAS_CANCELLED"),
    (425, "SYSTEM_ERROR"),
    (439, "CANNOT_SCHEDULE_TASK"),
    (999, "KEEPER_EXCEPTION"),
];

/// Codes that mean "check the credentials or grants": these deserve an alarm, not just a dead letter.
pub const AUTH_CODES: &[i32] = &[192, 193, 194, 195, 516, 497];

/// Classify an error from the `clickhouse` crate.
pub fn classify(err: &clickhouse::error::Error) -> Classified {
    use clickhouse::error::Error as E;
    let text = one_line(&crate::sinks::text::error_chain(err));
    match err {
        E::Network(_) => Classified { code: None, transient: true, fail_over: true, message: format!("cannot reach ClickHouse: {text}") },
        E::TimedOut => Classified { code: None, transient: true, fail_over: true, message: "ClickHouse did not answer in time".into() },
        E::BadResponse(body) => classify_response(body),
        // The client refused the rows before sending (validation against the table's columns).
        E::SchemaMismatch(_) | E::InvalidColumnsHeader(_) => Classified { code: None, transient: false, fail_over: false, message: format!("the events table does not match kcaudit's row: {text}") },
        _ => Classified { code: None, transient: false, fail_over: false, message: text },
    }
}

/// Classify a ClickHouse error response body (`Code: 60. DB::Exception: ...`) or a bare HTTP status.
pub fn classify_response(body: &str) -> Classified {
    let message = one_line(body);
    match exception_code(body) {
        Some(code) => {
            let transient = TRANSIENT_CODES.iter().any(|(c, _)| *c == code);
            let fail_over = matches!(code, 210 | 209 | 242 | 285 | 999);
            Classified { code: Some(code), transient, fail_over, message }
        }
        None => {
            // No exception code: a proxy or load balancer answered. 5xx, 429 and 408 are the
            // infrastructure's; other statuses are about the request.
            let status: u16 = body.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let transient = status >= 500 || status == 429 || status == 408 || status == 0;
            Classified { code: None, transient, fail_over: transient, message }
        }
    }
}

/// `Code: 60.` (current servers) or `Code: 60,` (old ones) at the start of the exception text.
pub fn exception_code(body: &str) -> Option<i32> {
    let i = body.find("Code: ")?;
    let digits: String = body[i + 6..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Error bodies can be long and multi-line (stack traces on old servers); keep the first 2 KiB on one line.
fn one_line(s: &str) -> String {
    crate::sinks::text::one_line(s, 2048)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_from_current_and_old_servers() {
        assert_eq!(exception_code("Code: 60. DB::Exception: Table kcaudit.events does not exist. (UNKNOWN_TABLE)"), Some(60));
        assert_eq!(exception_code("Code: 193, e.displayText() = DB::Exception: Wrong password for user default"), Some(193));
        assert_eq!(exception_code("502 Bad Gateway"), None);
    }

    #[test]
    fn missing_table_auth_and_type_errors_are_permanent() {
        for body in [
            "Code: 60. DB::Exception: Table kcaudit.events does not exist. (UNKNOWN_TABLE)",
            "Code: 516. DB::Exception: default: Authentication failed: password is incorrect. (AUTHENTICATION_FAILED)",
            "Code: 193, e.displayText() = DB::Exception: Wrong password for user default",
            "Code: 53. DB::Exception: Type mismatch in IN or VALUES section. (TYPE_MISMATCH)",
            "Code: 33. DB::Exception: Cannot read all data. (CANNOT_READ_ALL_DATA)",
            "404 Not Found",
        ] {
            let c = classify_response(body);
            assert!(!c.transient, "{body} must not be retried");
            assert!(c.message.contains(body.split_whitespace().next().unwrap()), "the server's words are kept: {}", c.message);
        }
    }

    #[test]
    fn busy_servers_and_proxies_are_transient() {
        for body in [
            "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)",
            "Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)",
            "Code: 319. DB::Exception: Unknown status of insert. (UNKNOWN_STATUS_OF_INSERT)",
            "503 Service Unavailable",
            "502 Bad Gateway",
            "429 Too Many Requests",
        ] {
            assert!(classify_response(body).transient, "{body} should be retried");
        }
        assert!(classify_response("503 Service Unavailable").fail_over);
        assert!(!classify_response("Code: 252. DB::Exception: Too many parts").fail_over, "too many parts is the cluster's state, not one replica's");
    }

    #[test]
    fn long_multiline_bodies_become_one_bounded_line() {
        let body = format!("Code: 60. DB::Exception: x\n{}", "stack frame\n".repeat(1000));
        let c = classify_response(&body);
        assert!(!c.message.contains('\n'));
        assert!(c.message.len() <= 2048 + '…'.len_utf8());
    }
}
