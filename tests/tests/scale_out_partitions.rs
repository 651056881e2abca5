//! The partitioned view of a domain's stream that consumer groups work from: a stream sourced
//! from the event stream through the server's `partition()` subject transform. Checks what the
//! server does: every event lands in the partition `cim_nats::jetstream::partition_of` computes
//! (FNV-1a-32 of the aggregate id token, modulo the partition count), in the event stream's
//! order, with its origin's sequence readable.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use cim_nats::jetstream::{partition_of, JetStreamEventStore, PartitionedView, StoreConfig};
use cim_nats::{AggregateId, Repository};
use futures::StreamExt;
use support::bank::{Account, AccountCommand};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_partitions_follow_the_documented_hash_and_keep_the_stream_order() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .expect("store");
    let repo = Repository::<Account>::new(store.clone());
    const ACCOUNTS: usize = 200;
    const PARTITIONS: u32 = 16;
    for round in 0..3 {
        for i in 0..ACCOUNTS {
            let id = AggregateId::new(format!("acc-{i}")).unwrap();
            let command = if round == 0 {
                AccountCommand::Open {
                    owner: format!("owner {i}"),
                }
            } else {
                AccountCommand::Deposit(1)
            };
            repo.execute(&id, command).await.expect("command");
        }
    }
    let total = (3 * ACCOUNTS) as u64;

    let view = PartitionedView::ensure(&store, PARTITIONS)
        .await
        .expect("view");
    assert_eq!(view.partitions(), PARTITIONS);
    // Opened again with the same count: the same view; with another: a clear error.
    PartitionedView::ensure(&store, PARTITIONS)
        .await
        .expect("again");
    let other = PartitionedView::ensure(&store, 8)
        .await
        .expect_err("another count");
    assert!(other.to_string().contains("16 partitions"), "{other}");

    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js
        .get_stream(view.stream_name())
        .await
        .expect("view stream");
    support::wait_until(
        Duration::from_secs(20),
        "the view to hold every event",
        || {
            let mut stream = stream.clone();
            async move { stream.info().await.map(|i| i.state.messages).unwrap_or(0) >= total }
        },
    )
    .await;
    assert_eq!(stream.info().await.expect("info").state.messages, total);

    // Each partition, read in order: every event where the hash puts it, origin sequences
    // rising, each aggregate's versions in order.
    let mut seen = 0;
    let mut per_partition: HashMap<u32, u64> = HashMap::new();
    for partition in 0..PARTITIONS {
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: view.partition_filter(partition),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let pending = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.expect("messages");
        let mut last_origin = 0;
        let mut versions: HashMap<String, u64> = HashMap::new();
        for _ in 0..pending {
            let message = messages.next().await.expect("a message").expect("ok");
            let (origin, subject) = view.origin(&message).expect("an event of the stream");
            let id = subject.rsplit('.').next().unwrap().to_owned();
            assert_eq!(
                partition_of(&AggregateId::new(&id).unwrap(), PARTITIONS),
                partition,
                "{subject}"
            );
            assert!(origin.0 > last_origin, "stream order within the partition");
            last_origin = origin.0;
            let version: u64 = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Cim-Aggregate-Version"))
                .unwrap()
                .as_str()
                .parse()
                .unwrap();
            let previous = versions.insert(id, version).unwrap_or(0);
            assert_eq!(version, previous + 1, "versions in order");
            seen += 1;
            *per_partition.entry(partition).or_default() += 1;
        }
    }
    assert_eq!(seen, total);
    // The hash spreads 200 ids over the 16 partitions.
    assert_eq!(per_partition.len(), PARTITIONS as usize);
}
