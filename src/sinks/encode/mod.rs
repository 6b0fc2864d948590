//! Wire encodings of canonical events for SIEMs: CEF and LEEF (syslog payloads), RFC 5424 / 3164
//! syslog messages and RFC 6587 framing, OCSF and ECS JSON. Pure functions, shared by the sinks
//! (syslog, HTTP, Kafka, file), each escaping every field for the format it enters.

pub mod cef;
pub mod ecs;
pub mod leef;
pub mod ocsf;
pub mod syslog;
