//! Aggregate versions out of order, written by another client: one rule, as the README's
//! "hostile input" table says. A load (which sees every event of the aggregate) fails at the
//! first version that does not follow; readers in stream order (which may see only some of an
//! aggregate's events) name an event whose version is not above the previous one of its
//! aggregate, and take a gap as it is.

mod support;

use std::time::Duration;

use async_nats::HeaderMap;
use cim_nats::jetstream::subscriber::dead_letter as dl;
use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
use cim_nats::jetstream::{JetStreamEventStore, ProjectionOptions, ProjectionRunner, StoreConfig};
use cim_nats::{
    AggregateId, EventId, EventStore, FnEventHandler, NewEvent, OnUnreadable, ReadFrom,
    StoreErrorKind, StoredEvent,
};
use futures::StreamExt;
use support::bank::AccountEvent;

/// Stores `Opened` events of aggregate `id` with the given versions, as a foreign client would;
/// their sequences.
async fn foreign(client: &async_nats::Client, id: &str, versions: &[u64]) -> Vec<u64> {
    let js = async_nats::jetstream::new(client.clone());
    let mut out = Vec::new();
    for v in versions {
        let payload = NewEvent::from_event(&AccountEvent::Deposited {
            id: EventId::new(),
            amount: *v,
        })
        .unwrap()
        .payload;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
        headers.insert("Cim-Event-Type", "Deposited");
        headers.insert("Cim-Aggregate-Version", v.to_string().as_str());
        let ack = js
            .publish_with_headers(format!("bank.account.deposited.{id}"), headers, payload)
            .await
            .unwrap()
            .await
            .unwrap();
        out.push(ack.sequence);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reader_names_a_version_that_steps_back_and_loads_refuse_gaps() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    // Versions 1, 2, 5 (a gap), 3 (a step back), 6.
    let seqs = foreign(&client, "a", &[1, 2, 5, 3, 6]).await;
    let (gap, back) = (seqs[2], seqs[3]);

    // A load sees the gap first.
    let err = store
        .read_aggregate(&AggregateId::new("a").unwrap(), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), StoreErrorKind::Decode { sequence, .. } if *sequence == gap),
        "{err}"
    );

    // The stream read names the step back only.
    let items: Vec<_> = store.stream(ReadFrom::Start).collect().await;
    let failed: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Err(e) => match e.kind() {
                StoreErrorKind::Decode { sequence, reason } => {
                    assert!(reason.contains("version 3 after version 5"), "{reason}");
                    Some(*sequence)
                }
                _ => None,
            },
            Ok(_) => None,
        })
        .collect();
    assert_eq!(failed, vec![back]);
    assert_eq!(items.len(), 5);

    // A projection that skips records it.
    #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    struct Count(u64);
    #[async_trait::async_trait]
    impl cim_nats::Projection for Count {
        type Event = AccountEvent;
        const NAME: &'static str = "count";
        async fn apply(
            &mut self,
            _: &cim_nats::Envelope<AccountEvent>,
        ) -> Result<(), cim_nats::ProjectionError> {
            self.0 += 1;
            Ok(())
        }
    }
    let runner = ProjectionRunner::start::<Count>(
        &store,
        ProjectionOptions {
            on_unreadable: OnUnreadable::SkipAndRecord,
            ..ProjectionOptions::default()
        },
    )
    .await
    .unwrap();
    runner
        .wait_for(cim_nats::StreamSequence(seqs[4]), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(runner.read().await.0, 4);
    assert_eq!(
        runner
            .skipped()
            .iter()
            .map(|s| s.sequence)
            .collect::<Vec<_>>(),
        vec![back]
    );
    runner.shutdown().await.unwrap();

    // A subscriber sends it to the dead letter, with its reason, and handles the others.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("bank.>")
        .deliver_policy(DeliverPolicy::All)
        .handler(FnEventHandler::new(move |e: StoredEvent| {
            let _ = tx.send(e.stream_sequence.0);
            Ok(())
        }))
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    let mut handled = Vec::new();
    while handled.len() < 4 {
        handled.push(
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    handled.sort_unstable();
    assert_eq!(handled, vec![seqs[0], seqs[1], seqs[2], seqs[4]]);
    let js = async_nats::jetstream::new(client.clone());
    support::wait_until(Duration::from_secs(5), "the dead letter", || {
        let js = js.clone();
        async move {
            match js.get_stream("DLQ").await {
                Ok(mut s) => s.info().await.unwrap().state.messages == 1,
                Err(_) => false,
            }
        }
    })
    .await;
    let letter = js
        .get_stream("DLQ")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert_eq!(
        letter.headers.get(dl::REASON).unwrap().as_str(),
        dl::REASON_OUT_OF_ORDER
    );
    assert_eq!(
        letter.headers.get(dl::ORIGINAL_SEQUENCE).unwrap().as_str(),
        back.to_string()
    );
    handle.shutdown().await.unwrap();
}
