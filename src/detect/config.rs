//! `[detect]`: thresholds, windows and per-rule overrides. Every default is justified in its doc
//! comment and in the rule's page under `rules/`.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::Severity;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DetectOptions {
    /// Run detection at all.
    pub enabled: bool,
    /// How long after the first event of a realm kcaudit only learns (no "first time" findings). Rules
    /// that need no baseline (privileged impersonation, naked impersonation by a service client,
    /// bursts) fire from the start. `"1d"`, `"7d"`, `"12h"`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub learning_period: Duration,
    /// A client needs at least this many events before its own baseline (audiences, networks,
    /// origins) is trusted: "first time" means little for a client seen twice.
    pub min_observations: u32,
    /// After a client first uses a new audience, network or origin, its further events within this
    /// span are reported too, so the whole episode is visible (not just its first event).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub novelty_window: Duration,
    /// TOKEN_EXCHANGE_ERROR events per client (or per source IP) within `error_burst_window` that make
    /// a burst. 5 in a minute is far above the occasional expired token and far below a scripted probe.
    pub error_burst_threshold: usize,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub error_burst_window: Duration,
    /// Distinct audiences (successful or not) one client asks for within `spray_window` that count as
    /// audience spraying.
    pub spray_threshold: usize,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub spray_window: Duration,
    /// Failures of a client before a success, within `error_burst_window`, that make "failures then
    /// success".
    pub failures_before_success: usize,
    /// A configuration change on a client is linked to that client's findings for this long.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub precursor_window: Duration,
    /// An admin action by a user within this span after a token exchange impersonated that user is
    /// reported (the impersonated identity is being used to change the realm).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub impersonation_followup_window: Duration,
    /// A client silent this long and then active again is "reactivated".
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub dormant_after: Duration,
    /// Events a client needs before its usual hours are known.
    pub hours_min_observations: u32,
    /// An hour-of-day slot (±1 h) holding less than this share of a client's events is unusual.
    pub hours_rare_share: f64,
    /// Events per hour above this multiple of the client's usual hourly volume (and above
    /// `volume_min_per_hour`) are an outlier.
    pub volume_factor: f64,
    pub volume_min_per_hour: u64,
    /// Token-exchange chains longer than this many hops (subject-token origin → exchanger → ...) are
    /// reported.
    pub max_chain_hops: u32,
    /// IPv4 prefix length (and IPv6) that counts as "the same network".
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Events older than the newest seen minus this are "late": evaluated, but they do not teach the
    /// baselines (so a replayed backlog cannot rewrite history).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub allowed_lateness: Duration,
    /// Baseline entries (audiences, networks, origins) and whole clients unused this long are
    /// forgotten, which bounds memory and disk; longer than `dormant_after` so dormancy stays visible.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub baseline_retention: Duration,
    /// Realms whose findings are lowered one severity level (development, test).
    pub dev_realms: Vec<String>,
    /// Per-rule overrides, keyed by rule id.
    pub rules: BTreeMap<String, RuleOverride>,
    /// Where `kcaudit serve` persists detection state (redb); relative paths are under `data_dir`.
    /// Replay keeps state in memory unless given `--state FILE`, so a replay is a function of its input.
    pub state_file: std::path::PathBuf,
    /// How often the state is saved while running (it is always saved at shutdown).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub state_save_every: Duration,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            enabled: true,
            learning_period: Duration::from_secs(7 * 86400),
            min_observations: 5,
            novelty_window: Duration::from_secs(3600),
            error_burst_threshold: 5,
            error_burst_window: Duration::from_secs(60),
            spray_threshold: 4,
            spray_window: Duration::from_secs(600),
            failures_before_success: 3,
            precursor_window: Duration::from_secs(7 * 86400),
            impersonation_followup_window: Duration::from_secs(3600),
            dormant_after: Duration::from_secs(30 * 86400),
            hours_min_observations: 10,
            hours_rare_share: 0.02,
            volume_factor: 10.0,
            volume_min_per_hour: 100,
            max_chain_hops: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            allowed_lateness: Duration::from_secs(300),
            baseline_retention: Duration::from_secs(90 * 86400),
            dev_realms: Vec::new(),
            rules: BTreeMap::new(),
            state_file: std::path::PathBuf::from("detect-state.redb"),
            state_save_every: Duration::from_secs(10),
        }
    }
}

/// `[detect.rules.<id>]`: switch a rule off, re-level it, or scope it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RuleOverride {
    /// `false` disables the rule.
    pub enabled: Option<bool>,
    /// Replace the rule's severity.
    pub severity: Option<Severity>,
    /// Only these realms (names or ids); empty: all.
    pub realms: Vec<String>,
    /// Only these clients; empty: all.
    pub clients: Vec<String>,
    /// Never for these clients.
    pub exclude_clients: Vec<String>,
}
