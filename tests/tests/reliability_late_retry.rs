//! A retry that comes back after the server's dedupe window, when its aggregate has moved on
//! and other aggregates' events lie in between: the store still recognises the stored events
//! (reading back from the aggregate's last event, not its whole history), and tells a real
//! conflict and a reused event id apart from it.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::testing::{wait_until, NatsServer};
use cim_nats::{EventId, EventStore, ExpectedVersion, StoreErrorKind};
use support::reliability::{self as rs, Plan, Progress};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_dedupe_window_is_recognised_deep_in_a_busy_stream() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let client = server.connect().await.expect("connect");
    let config = StoreConfig {
        duplicate_window: Duration::from_millis(200),
        ..StoreConfig::for_domain(rs::DOMAIN)
    };
    let store = JetStreamEventStore::new(client.clone(), config)
        .await
        .expect("store");
    // 101 aggregates appended round-robin: consecutive versions of one aggregate lie about 100
    // stream sequences apart.
    let plan = Plan {
        domain: rs::DOMAIN.to_owned(),
        aggregates: 101,
        per_aggregate: 100,
        in_flight: 64,
        attempt_timeout: Duration::from_secs(10),
        give_up: Duration::from_secs(60),
    };
    let acked = rs::run_load(store.clone(), plan.clone(), Arc::new(Progress::default())).await;
    let sequence_of = |version: u64| {
        acked
            .iter()
            .find(|a| a.aggregate == 0 && a.version == version)
            .and_then(|a| a.result.last_sequence())
            .expect("acknowledged")
    };

    // Wait until the server has forgotten the ids: a probe id stops being a duplicate.
    let js = async_nats::jetstream::new(client.clone());
    let probe_id = EventId::new().to_string();
    let probe = || {
        let js = js.clone();
        let probe_id = probe_id.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", probe_id.as_str());
            js.publish_with_headers(format!("{}.probe.sent.probe", rs::DOMAIN), h, "{}".into())
                .await
                .expect("publish")
                .await
                .expect("stored")
                .duplicate
        }
    };
    assert!(!probe().await);
    wait_until(
        Duration::from_secs(20),
        "the dedupe window to pass",
        || async { !probe().await },
    )
    .await;

    let id = rs::aggregate(0);
    let mut timings = Vec::new();
    // Retries of appends stored 10 and 99 versions ago.
    for version in [90, 1] {
        let started = Instant::now();
        let again = store
            .append(
                &id,
                ExpectedVersion::Exact(version - 1),
                vec![rs::event(rs::DOMAIN, 0, version)],
            )
            .await
            .expect("a retry succeeds");
        timings.push((version, started.elapsed()));
        assert!(again.duplicate, "version {version} recognised as stored");
        assert_eq!(again.version, version);
        assert_eq!(again.last_sequence(), Some(sequence_of(version)));
    }
    // A new event at a stale version is a conflict.
    let stale = rs::event(rs::DOMAIN, 0, 90).with_event_id(EventId::new());
    let started = Instant::now();
    let err = store
        .append(&id, ExpectedVersion::Exact(89), vec![stale])
        .await
        .expect_err("a conflict");
    timings.push((0, started.elapsed()));
    assert_eq!(
        *err.kind(),
        StoreErrorKind::WrongExpectedVersion {
            aggregate_id: id.clone(),
            expected: ExpectedVersion::Exact(89),
            actual: Some(100)
        }
    );
    // The id of a stored event on another payload is a reused id, not a retry.
    let mut reused = rs::event(rs::DOMAIN, 0, 90);
    reused.payload = "{\"Noted\":{\"aggregate\":0,\"version\":90,\"note\":\"other\"}}".into();
    let err = store
        .append(&id, ExpectedVersion::Exact(89), vec![reused])
        .await
        .expect_err("a reused id");
    assert!(
        matches!(err.kind(), StoreErrorKind::InvalidAppend(_)),
        "{err}"
    );
    // Nothing was written by any of it.
    assert_eq!(
        store.last_sequence().await.expect("last sequence").0,
        plan.total() + 2
    );
    println!(
        "late retries in a stream of {} events: {}",
        plan.total(),
        timings
            .iter()
            .map(|(v, d)| match v {
                0 => format!("conflict {:.1} ms", d.as_secs_f64() * 1e3),
                v => format!("retry of version {v} {:.1} ms", d.as_secs_f64() * 1e3),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
}
