//! The framework's metrics through the `metrics` facade, recorded by a recorder the
//! application installs (here the debugging recorder of `metrics-util`): appends and their
//! conflicts, loads, a subscriber's handlings, failures, redeliveries and dead letters, and a
//! read model's lag; named as `cim_nats::metrics` documents.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
use cim_nats::jetstream::{JetStreamEventStore, ReadModelOptions, ReadModelRunner, StoreConfig};
use cim_nats::metrics as m;
use cim_nats::{AggregateId, Delivery, EventStore, ExpectedVersion, HandlerError};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use support::balances::Balances;
use support::reliability as rs;

/// A metric: its kind, name and labels.
type MetricId = (MetricKind, String, Vec<(String, String)>);

/// What the recorder got, kept across its snapshots (each snapshot drains it): counters
/// summed, histogram samples counted, each gauge's last value.
struct Totals {
    snapshotter: Snapshotter,
    seen: HashMap<MetricId, f64>,
}

impl Totals {
    fn new(snapshotter: Snapshotter) -> Self {
        Self {
            snapshotter,
            seen: HashMap::new(),
        }
    }

    /// Metric `name` of `kind`, over the keys whose labels include `label`.
    fn value(&mut self, kind: MetricKind, name: &str, label: (&str, &str)) -> f64 {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let entry = self
                .seen
                .entry((key.kind(), key.key().name().to_owned(), labels))
                .or_insert(0.0);
            match value {
                DebugValue::Counter(n) => *entry += n as f64,
                DebugValue::Histogram(h) => *entry += h.len() as f64,
                DebugValue::Gauge(g) => *entry = g.into_inner(),
            }
        }
        self.seen
            .iter()
            .filter(|((k, n, labels), _)| {
                *k == kind
                    && n == name
                    && labels.iter().any(|(lk, lv)| lk == label.0 && lv == label.1)
            })
            .map(|(_, v)| *v)
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_loads_handlings_dead_letters_and_lag_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let mut totals = Totals::new(recorder.snapshotter());
    recorder
        .install()
        .expect("the only recorder of this test binary");
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain(rs::DOMAIN))
        .await
        .expect("store");
    let stream = ("stream", "RELIAB_EVENTS");

    // Appends, one of them a conflict; a load.
    for a in 0..3u64 {
        store
            .append(
                &rs::aggregate(a),
                ExpectedVersion::NoStream,
                vec![rs::event(rs::DOMAIN, a, 1)],
            )
            .await
            .expect("append");
    }
    let conflict = store
        .append(
            &rs::aggregate(0),
            ExpectedVersion::NoStream,
            vec![rs::event(rs::DOMAIN, 0, 9)],
        )
        .await;
    let conflict = conflict.expect_err("a conflict");
    assert!(
        matches!(
            conflict.kind(),
            cim_nats::StoreErrorKind::WrongExpectedVersion { .. }
        ),
        "{conflict:?}"
    );
    store
        .read_aggregate(&rs::aggregate(1), 0)
        .await
        .expect("load");
    assert_eq!(
        totals.value(MetricKind::Histogram, m::APPEND_SECONDS, stream),
        4.0
    );
    assert_eq!(
        totals.value(MetricKind::Counter, m::APPEND_CONFLICTS, stream),
        1.0
    );
    assert_eq!(
        totals.value(MetricKind::Counter, m::APPEND_ERRORS, stream),
        0.0
    );
    assert!(totals.value(MetricKind::Histogram, m::LOAD_SECONDS, stream) >= 1.0);

    // A subscriber: aggregate 2's event fails once, then for good (a dead letter); the others
    // are handled at once.
    let attempts = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&attempts);
    let agg2 = rs::aggregate(2);
    let handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject(format!("{}.>", rs::DOMAIN))
        .durable("metered")
        .max_deliveries(2)
        .backoff(vec![Duration::from_millis(50)])
        .handler(cim_nats::AsyncFnHandler::with_delivery(
            move |d: Delivery| {
                let seen = Arc::clone(&seen);
                let failing = d.event.aggregate_id == agg2;
                async move {
                    seen.fetch_add(1, Ordering::Relaxed);
                    if failing {
                        Err(HandlerError::msg("the mail server refused it"))
                    } else {
                        Ok(())
                    }
                }
            },
        ))
        .build()
        .expect("subscriber")
        .subscribe()
        .await
        .expect("subscribe");
    let consumer = ("consumer", "metered");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while totals.value(MetricKind::Counter, m::DEAD_LETTERS, consumer) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown().await.expect("shutdown");
    assert_eq!(
        totals.value(MetricKind::Histogram, m::HANDLER_SECONDS, consumer),
        4.0
    );
    assert_eq!(
        totals.value(MetricKind::Counter, m::HANDLER_FAILURES, consumer),
        2.0
    );
    assert_eq!(
        totals.value(MetricKind::Counter, m::REDELIVERIES, consumer),
        1.0
    );
    assert_eq!(
        totals.value(MetricKind::Counter, m::DEAD_LETTERS, consumer),
        1.0
    );

    // A read model's lag at its commits: 0 once it has caught up.
    let bank = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .expect("store");
    let repo = cim_nats::Repository::<support::bank::Account>::new(bank.clone());
    let mut last = cim_nats::StreamSequence(0);
    for i in 0..5 {
        let id = AggregateId::new(format!("acc-{i}")).expect("id");
        last = repo
            .execute(
                &id,
                support::bank::AccountCommand::Open {
                    owner: format!("o{i}"),
                },
            )
            .await
            .expect("open")
            .last_sequence();
    }
    let model = ReadModelRunner::start(&bank, Balances, ReadModelOptions::default())
        .await
        .expect("model");
    model
        .wait_for(last, Duration::from_secs(10))
        .await
        .expect("caught up");
    // One snapshot after the commit of the last event: the gauge as that commit set it.
    let projection = ("projection", "balances");
    assert_eq!(
        totals.value(MetricKind::Gauge, m::PROJECTION_LAG, projection),
        0.0
    );
    assert!(
        totals
            .seen
            .keys()
            .any(|(k, n, labels)| *k == MetricKind::Gauge
                && n == m::PROJECTION_LAG
                && labels.contains(&("partition".to_owned(), "0".to_owned()))),
        "the lag gauge names its partition (0: a model run as one)"
    );
    assert!(
        totals
            .seen
            .keys()
            .any(|(k, n, _)| *k == MetricKind::Gauge && n == m::PROJECTION_LAG),
        "the lag gauge was recorded"
    );
    model.shutdown().await.expect("shutdown");
}
