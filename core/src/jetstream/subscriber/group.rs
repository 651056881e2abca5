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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio::sync::watch;

use crate::jetstream::group::{GroupMember, GroupOptions, PartitionWork, StopSignal};
use crate::jetstream::subscriber::builder::Options;
use crate::jetstream::subscriber::parked::Parking;
use crate::jetstream::subscriber::partition::{Floor, PartitionContext};
use crate::jetstream::subscriber::process::{ConsumerContext, DeadLetterTarget, Held};
use crate::jetstream::subscriber::run::{self, Ended};
use crate::jetstream::subscriber::{setup, SubscriberError, SubscriberErrorKind};
use crate::jetstream::{JetStreamEventStore, PartitionedView, PARTITION_PREFIX};
use crate::subscriber::{EventHandler, Lease};

use crate::jetstream::group::partition_consumer as consumer_name;

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
    /// Per partition, the highest view sequence this member received, in any epoch: what an
    /// epoch it takes again marks as redeliveries even when the consumer's replicated state
    /// lags what its lost leader delivered.
    pub(crate) seen: Mutex<HashMap<u32, Arc<AtomicU64>>>,
    /// The handlers this member runs at once across its partitions (`max_in_flight`).
    pub(crate) budget: Arc<tokio::sync::Semaphore>,
    /// Sequenced dead letters: the bucket of parked aggregates.
    pub(crate) parked: Option<async_nats::jetstream::kv::Store>,
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

/// The first pause before a partition's consumer is created again after a loss (doubled for
/// each loss that follows within [`REWIND_QUIET`]).
const REWIND_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);
/// A run of a partition's consumer this long resets the count of losses.
const REWIND_QUIET: std::time::Duration = std::time::Duration::from_secs(30);

/// What a member knows of the partition's consumer it worked, after deliveries were lost on
/// the way (`run::Ended::Rewind`).
#[derive(Debug, Clone, Copy)]
struct Known {
    /// Every event of the partition up to this view sequence was handled and settled.
    through: u64,
}

/// A partition's consumer, ready to be run.
struct Opened {
    consumer: consumer::PullConsumer,
    name: String,
    filters: Vec<String>,
    start: u64,
    redelivered_upto: u64,
}

/// Works one partition until its stop signal: creates this epoch's consumer after the
/// previous one's floor, deletes the previous ones, and runs the subscriber's loop on it. When
/// deliveries were lost on the way, creates the consumer again right after what it handled.
async fn run_partition(
    setup: Arc<GroupSetup>,
    lease: Lease,
    stop: StopSignal,
) -> Result<(), SubscriberError> {
    let mut stop: watch::Receiver<bool> = stop.into_inner();
    let mut known: Option<Known> = None;
    let mut rewinds: u32 = 0;
    let seen = Arc::clone(
        setup
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(lease.partition)
            .or_default(),
    );
    loop {
        let opened = match open_consumer(&setup, &lease, known, seen.load(Ordering::Relaxed)).await
        {
            Ok(Some(opened)) => opened,
            Ok(None) => return Ok(()),
            // Before the first run, the group starts the work again; after a loss, this
            // member knows more than a new start would: it tries again itself.
            Err(e) if known.is_some() => {
                tracing::warn!(group = %lease.group, partition = lease.partition, error = %e,
                    "the partition's consumer could not be created again; trying again");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                }
            }
            Err(e) => return Err(e),
        };
        let partition = Arc::new(PartitionContext {
            origin: Arc::clone(&setup.origin),
            lease: lease.clone(),
            redelivered_upto: opened.redelivered_upto,
            seen: Arc::clone(&seen),
            state: Mutex::new(Floor::starting_at(opened.start)),
            sending: tokio::sync::Mutex::new(()),
        });
        // The aggregates parked for the group, as they are now: whoever parked them.
        let parking = match &setup.parked {
            Some(kv) => Some(Arc::new(
                Parking::load(
                    kv.clone(),
                    Arc::clone(&setup.origin),
                    Arc::clone(&lease.group),
                )
                .await?,
            )),
            None => None,
        };
        let ctx = Arc::new(ConsumerContext {
            client: crate::jetstream::api::Conn::new(setup.client.clone()),
            stream: Arc::from(setup.view.stream_name()),
            consumer: Arc::from(opened.name.as_str()),
            subjects: Arc::from(opened.filters),
            handler: Arc::clone(&setup.handler),
            options: Arc::clone(&setup.options),
            dead_letter: setup.dead_letter.clone(),
            held: Held::default(),
            order: std::sync::Mutex::default(),
            partition: Some(Arc::clone(&partition)),
            budget: Some(Arc::clone(&setup.budget)),
            parking,
        });
        let began = std::time::Instant::now();
        match run::run(ctx, setup.js.clone(), opened.consumer, stop.clone()).await? {
            Ended::Stopped => return Ok(()),
            Ended::Rewind => {
                known = Some(Known {
                    through: partition.through(),
                });
                // Losses one after another (a connection that keeps breaking): wait a little
                // longer each time before creating the consumer again, up to 5 s; a run that
                // lasted starts the count again.
                rewinds = if began.elapsed() > REWIND_QUIET {
                    1
                } else {
                    rewinds + 1
                };
                let pause = REWIND_PAUSE
                    .saturating_mul(1 << rewinds.min(8))
                    .min(std::time::Duration::from_secs(5));
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Creates the consumer of `lease`'s partition and epoch, starting right after the previous
/// consumer's acknowledgement floor (or what this member `known`s it handled, if more), and
/// deletes the previous ones; what was delivered before (up to `seen` or the previous
/// consumer's last delivery) is marked as redelivered. `None`: a newer epoch of the partition
/// exists.
async fn open_consumer(
    setup: &GroupSetup,
    lease: &Lease,
    known: Option<Known>,
    seen: u64,
) -> Result<Option<Opened>, SubscriberError> {
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
                return Ok(None);
            }
            earlier.push((epoch, name));
        }
    }
    earlier.sort();
    let name = consumer_name(&group, partition, lease.epoch);
    let mut redelivered_upto = seen;
    let deliver_policy = match (earlier.last(), known) {
        (Some((_, previous)), _) => {
            let info = stream
                .consumer_info(previous)
                .await
                .map_err(|e| setup_error(format!("reading consumer {previous}: {e}")))?;
            redelivered_upto = redelivered_upto.max(info.delivered.stream_sequence);
            if *previous == name {
                stream
                    .delete_consumer(previous)
                    .await
                    .map_err(|e| setup_error(format!("replacing consumer {previous}: {e}")))?;
            }
            let floor = info
                .ack_floor
                .stream_sequence
                .max(known.map_or(0, |k| k.through));
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            }
        }
        (None, Some(known)) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: known.through + 1,
        },
        (None, None) => setup::deliver_policy(setup.options.deliver)?,
    };
    let start = match deliver_policy {
        consumer::DeliverPolicy::ByStartSequence { start_sequence } => start_sequence,
        _ => 1,
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
    Ok(Some(Opened {
        consumer,
        name,
        filters,
        start,
        redelivered_upto,
    }))
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
    parked: Option<async_nats::jetstream::kv::Store>,
    group: &str,
    mut group_options: GroupOptions,
) -> Result<GroupMember, SubscriberError> {
    let store = JetStreamEventStore::attach(client.clone(), stream)
        .await
        .map_err(|e| {
            SubscriberError::new(SubscriberErrorKind::ConsumerSetup {
                stream: stream.to_owned(),
                description: e.to_string(),
            })
        })?;
    if group_options.replicas.is_none() {
        group_options.replicas = Some(store.config().replicas);
    }
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
    let budget = Arc::new(tokio::sync::Semaphore::new(options.max_in_flight));
    let setup = GroupSetup {
        js: jetstream::new(client.clone()),
        client: client.clone(),
        view,
        origin: Arc::from(stream),
        subjects,
        handler,
        options,
        dead_letter,
        seen: Mutex::default(),
        budget,
        parked,
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
