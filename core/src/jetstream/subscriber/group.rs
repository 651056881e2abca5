//! A subscriber as a member of a consumer group: one consumer of the stream's partitioned view
//! per held partition and lease epoch, acknowledged in stream order.
//!
//! - **One consumer per epoch.** The member that takes partition `p` with epoch `e` creates
//!   `{group}_p{p}_e{e}` starting right after the acknowledgement floor of the partition's
//!   previous consumer, then deletes the previous ones. A deposed member's late
//!   acknowledgement goes to a consumer that no longer exists: harmless. Events its consumer
//!   had delivered and not acknowledged come again at once (not after the ack wait), in stream
//!   order, counted as redeliveries.
//! - **Acknowledged in order.** Within a partition, an event's acknowledgement (or
//!   termination, after its dead letter) is sent only once every earlier event of the
//!   partition is settled, so the floor is exact: nothing acknowledged is delivered again by
//!   the next epoch. Events of other aggregates still run concurrently.

use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio::sync::watch;

use crate::jetstream::group::{GroupMember, GroupOptions, PartitionWork, StopSignal};
use crate::jetstream::subscriber::builder::Options;
use crate::jetstream::subscriber::partition::PartitionContext;
use crate::jetstream::subscriber::process::{ConsumerContext, DeadLetterTarget, Held};
use crate::jetstream::subscriber::{run, setup, SubscriberError, SubscriberErrorKind};
use crate::jetstream::{JetStreamEventStore, PartitionedView, PARTITION_PREFIX};
use crate::subscriber::{EventHandler, Lease};

/// The consumer name of partition `partition`'s epoch `epoch` in group `group`.
fn consumer_name(group: &str, partition: u32, epoch: u64) -> String {
    format!("{group}_p{partition}_e{epoch}")
}

/// The epoch of a consumer of `group`'s partition `partition`, from its name.
fn epoch_of(name: &str, group: &str, partition: u32) -> Option<u64> {
    name.strip_prefix(&format!("{group}_p{partition}_e"))?
        .parse()
        .ok()
}

/// What every partition of one stream's group shares.
pub(crate) struct GroupSetup {
    pub(crate) js: jetstream::Context,
    pub(crate) client: async_nats::Client,
    pub(crate) view: PartitionedView,
    pub(crate) origin: Arc<str>,
    pub(crate) subjects: Vec<String>,
    pub(crate) handler: Arc<dyn EventHandler>,
    pub(crate) options: Arc<Options>,
    pub(crate) dead_letter: Option<DeadLetterTarget>,
}

/// Joins the group of `setup`'s stream.
pub(crate) async fn join(
    setup: GroupSetup,
    group: &str,
    options: GroupOptions,
) -> Result<GroupMember, SubscriberError> {
    let client = setup.client.clone();
    let setup = Arc::new(setup);
    let work: PartitionWork = Arc::new(move |lease, stop| {
        let setup = Arc::clone(&setup);
        Box::pin(async move {
            run_partition(setup, lease, stop)
                .await
                .map_err(|e| e.to_string())
        })
    });
    GroupMember::start(client, group, options, work)
        .await
        .map_err(|e| SubscriberError::new(SubscriberErrorKind::Group(e)))
}

/// Works one partition until its stop signal: creates this epoch's consumer after the
/// previous one's floor, deletes the previous ones, and runs the subscriber's loop on it.
async fn run_partition(
    setup: Arc<GroupSetup>,
    lease: Lease,
    stop: StopSignal,
) -> Result<(), SubscriberError> {
    let group = lease.group.to_string();
    let partition = lease.partition;
    let view_stream = setup.view.stream_name().to_owned();
    let setup_error = |description: String| {
        SubscriberError::new(SubscriberErrorKind::ConsumerSetup {
            stream: view_stream.clone(),
            description,
        })
    };
    let stream = setup
        .js
        .get_stream_no_info(&view_stream)
        .await
        .map_err(|e| setup_error(e.to_string()))?;
    // The partition's consumers of this epoch and earlier ones (a later one: this lease is
    // stale). This epoch's own consumer exists when its work is started again: it is replaced
    // like an earlier one.
    let mut earlier: Vec<(u64, String)> = Vec::new();
    let mut names = stream.consumer_names();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| setup_error(format!("listing consumers: {e}")))?;
        if let Some(epoch) = epoch_of(&name, &group, partition) {
            if epoch > lease.epoch {
                tracing::info!(
                    group,
                    partition,
                    epoch = lease.epoch,
                    newer = epoch,
                    "a newer epoch of the partition exists; not working it"
                );
                return Ok(());
            }
            earlier.push((epoch, name));
        }
    }
    earlier.sort();
    let name = consumer_name(&group, partition, lease.epoch);
    let mut redelivered_upto = 0;
    let deliver_policy = match earlier.last() {
        Some((_, previous)) => {
            let info = stream
                .consumer_info(previous)
                .await
                .map_err(|e| setup_error(format!("reading consumer {previous}: {e}")))?;
            redelivered_upto = info.delivered.stream_sequence;
            if *previous == name {
                stream
                    .delete_consumer(previous)
                    .await
                    .map_err(|e| setup_error(format!("replacing consumer {previous}: {e}")))?;
            }
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: info.ack_floor.stream_sequence + 1,
            }
        }
        None => setup::deliver_policy(setup.options.deliver)?,
    };
    let filters: Vec<String> = setup
        .subjects
        .iter()
        .map(|s| format!("{PARTITION_PREFIX}.{partition}.{s}"))
        .collect();
    // The subscriber's consumer settings, named for this partition and epoch, durable.
    let mut config = setup::consumer_config(&filters, &setup.options)?;
    config.durable_name = Some(name.clone());
    config.name = Some(name.clone());
    config.description = Some(format!(
        "cim-nats group {group}, partition {partition}, epoch {}",
        lease.epoch
    ));
    config.deliver_policy = deliver_policy;
    config.inactive_threshold = std::time::Duration::ZERO;
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| setup_error(format!("creating consumer {name}: {e}")))?;
    for (_, previous) in earlier.iter().filter(|(_, n)| *n != name) {
        if let Err(e) = stream.delete_consumer(previous).await {
            tracing::debug!(consumer = %previous, error = %e, "earlier epoch's consumer not deleted");
        }
    }
    tracing::info!(
        group,
        partition,
        epoch = lease.epoch,
        consumer = %name,
        start = ?deliver_policy,
        pending = consumer.cached_info().num_pending,
        redelivered_upto,
        "working the partition"
    );
    let ctx = Arc::new(ConsumerContext {
        client: crate::jetstream::api::Conn::new(setup.client.clone()),
        stream: Arc::from(view_stream.as_str()),
        consumer: Arc::from(name.as_str()),
        subjects: Arc::from(filters),
        handler: Arc::clone(&setup.handler),
        options: Arc::clone(&setup.options),
        dead_letter: setup.dead_letter.clone(),
        held: Held::default(),
        order: std::sync::Mutex::default(),
        partition: Some(Arc::new(PartitionContext {
            origin: Arc::clone(&setup.origin),
            lease,
            redelivered_upto,
            state: Mutex::default(),
            sending: tokio::sync::Mutex::new(()),
        })),
    });
    let stop: watch::Receiver<bool> = stop.into_inner();
    run::run(ctx, setup.js.clone(), consumer, stop).await
}

/// The partitioned view and group member of one stream of a subscriber.
#[allow(clippy::too_many_arguments)] // the parts of one subscriber's setup, each used once
pub(crate) async fn start_member(
    client: &async_nats::Client,
    stream: &str,
    subjects: Vec<String>,
    handler: Arc<dyn EventHandler>,
    options: Arc<Options>,
    dead_letter: Option<DeadLetterTarget>,
    group: &str,
    group_options: GroupOptions,
) -> Result<GroupMember, SubscriberError> {
    let store = JetStreamEventStore::attach(client.clone(), stream)
        .await
        .map_err(|e| {
            SubscriberError::new(SubscriberErrorKind::ConsumerSetup {
                stream: stream.to_owned(),
                description: e.to_string(),
            })
        })?;
    // The group's partition count first: a member started with another one is told so.
    crate::jetstream::group::check_partitions(client, group, &group_options)
        .await
        .map_err(|e| SubscriberError::new(SubscriberErrorKind::Group(e)))?;
    let view = PartitionedView::ensure(&store, group_options.partitions)
        .await
        .map_err(|e| {
            SubscriberError::new(SubscriberErrorKind::ConsumerSetup {
                stream: stream.to_owned(),
                description: e.to_string(),
            })
        })?;
    let setup = GroupSetup {
        js: jetstream::new(client.clone()),
        client: client.clone(),
        view,
        origin: Arc::from(stream),
        subjects,
        handler,
        options,
        dead_letter,
    };
    join(setup, group, group_options).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_carry_partition_and_epoch() {
        let name = consumer_name("audit", 3, 42);
        assert_eq!(name, "audit_p3_e42");
        assert_eq!(epoch_of(&name, "audit", 3), Some(42));
        assert_eq!(epoch_of(&name, "audit", 33), None);
        assert_eq!(epoch_of("audit_p3_e42", "aud", 3), None);
    }
}
