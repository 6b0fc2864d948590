//! Listener shapes from the wire-format notes that the shared samples do not cover.

mod common;

use common::*;
use kcaudit::decode::Format;
use kcaudit::event::EventKind;

#[tokio::test]
async fn documented_listener_shapes_decode() {
    let dir = tempfile::tempdir().unwrap();
    let (evs, rep) = replay(dir.path(), &[], &[fixture("other-listener-shapes.log")], Format::Auto).await;
    assert_eq!((rep.totals.accepted, rep.totals.skipped, rep.totals.rejected), (5, 0, 0), "{:?}", rep.inputs[0].records);
    let ids: Vec<&str> = evs.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec!["v1", "v2", "m1", "h1", "vy2"]);
    // vymalo over syslog: the JSON inside the syslog frame, Gson's \u003d decoded; envelope kept.
    assert_eq!(evs[0].details.get("redirect_uri"), Some("https://x/?a=b"));
    assert_eq!(evs[0].origin.log.as_ref().unwrap().host.as_deref(), Some("kc-host"));
    // p2-inc MDC logger: details rebuilt from event.detailsJson.
    assert_eq!(evs[2].token_exchange.as_ref().unwrap().subject_token_client_id.as_deref(), Some("web-portal"));
    // vymalo admin events: type "<RESOURCE>-<OPERATION>" without prefix.
    let a = evs[4].admin.as_ref().unwrap();
    assert_eq!((evs[4].kind, a.resource_type.as_deref(), a.operation.as_deref()), (EventKind::Admin, Some("USER"), Some("CREATE")));
    assert!(evs.iter().all(|e| e.time.unwrap().timestamp_millis() == 1773043084120));
}
