//! Shared by the benches: the fixture timeline, decoded once.

use kcaudit::decode::{decode_body, Context, Decoded, DecodeOptions, Format};
use kcaudit::event::{AuditEvent, Origin};

/// Every event of the native fixture timeline, decoded.
pub fn fixture_events() -> Vec<AuditEvent> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keycloak/keycloak-native-events.jsonl");
    let body = std::fs::read(path).unwrap();
    let opts = DecodeOptions::default();
    let ctx = Context { opts: &opts, tz: opts.time_zone().unwrap(), deliveries: None, lines_may_be_noise: false };
    let mut items = Vec::new();
    decode_body(&body, Format::Auto, &Origin::default(), &ctx, &mut items);
    items.into_iter().filter_map(|i| if let Decoded::Event(e) = i.decoded { Some(*e) } else { None }).collect()
}
